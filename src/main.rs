#![forbid(unsafe_code)]

/// mimalloc instead of glibc malloc: many small, short-lived allocations on
/// several threads (see bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use ark_gateway::config::Config;
use ark_gateway::mock_upstream::{MockOptions, MockUpstream};
use ark_gateway::{demo, gateway};

#[derive(Parser)]
#[command(
    name = "ark-gateway",
    version,
    about = "Multi-tenant gateway in front of Volcengine Ark's task API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve tenants.
    Run {
        #[arg(long, default_value = "config/ark-gateway.toml")]
        config: PathBuf,
    },
    /// Validate a config file; print every problem; exit 1 if any.
    Check {
        #[arg(long, default_value = "config/ark-gateway.toml")]
        config: PathBuf,
    },
    /// Read a token on stdin and print its SHA-256 (for `token_sha256`).
    HashToken,
    /// A simulated Ark tasks API, for tests, demos and trying integrations.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9800")]
        listen: SocketAddr,
        #[arg(long)]
        api_key: String,
        /// How long a new task stays queued.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        queued_for: Duration,
        /// How long it then runs before it succeeds.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        running_for: Duration,
        /// Delay before every answer (a slow upstream).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        delay: Duration,
        /// Do not keep a copy of each request (benchmarks).
        #[arg(long)]
        no_record: bool,
    },
    /// Inspect or change the task ownership ledger (`store.path` of the config).
    Tasks {
        #[arg(long, default_value = "config/ark-gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: TasksAction,
    },
    /// Check audit files' hash chain; report the first changed, removed or reordered record.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Start the mock upstream and the gateway with two demo tenants.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Verify one chain spread over FILES, oldest first (rotated files, then the current one).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn audit_command(action: AuditAction) -> ExitCode {
    let AuditAction::Verify { files } = action;
    let mut readers: Vec<(String, Box<dyn std::io::BufRead>)> = Vec::new();
    for path in &files {
        match std::fs::File::open(path) {
            Ok(f) => readers.push((path.display().to_string(), Box::new(std::io::BufReader::new(f)))),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    match ark_gateway::audit::chain::verify_files(readers) {
        Ok(finding @ ark_gateway::audit::chain::Finding::Intact { .. }) => {
            println!("{finding}");
            ExitCode::SUCCESS
        }
        Ok(finding) => {
            println!("{finding}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot read the audit files: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Subcommand)]
enum TasksAction {
    /// Print every ownership record as one JSON object per line.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Give existing task ids to a tenant.
    Grant {
        #[arg(long)]
        tenant: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove task ids from the ledger (no tenant owns them afterwards).
    Revoke {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn tasks_command(config: &std::path::Path, action: TasksAction) -> ExitCode {
    use ark_gateway::config::StoreView;
    use ark_gateway::ledger::{now_ms, Ledger, LedgerError, RedbLedger};
    use ark_gateway::route::TaskId;

    let view = match StoreView::load(config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let ids = match &action {
        TasksAction::Grant { ids, .. } | TasksAction::Revoke { ids } => ids.clone(),
        TasksAction::List { .. } => Vec::new(),
    };
    if let Some(bad) = ids.iter().find(|id| TaskId::parse(id).is_none()) {
        eprintln!("{bad:?} is not a task id (1-128 of letters, digits, '-', '_')");
        return ExitCode::FAILURE;
    }
    if let TasksAction::Grant { tenant, .. } = &action {
        if !view.tenant_names.iter().any(|t| t == tenant) {
            eprintln!("tenant {tenant:?} is not in {}", config.display());
            return ExitCode::FAILURE;
        }
    }
    let runtime = runtime();
    let opened: Result<Box<dyn Ledger>, LedgerError> = match &view.redis {
        Some((url, prefix)) => {
            let _guard = runtime.enter();
            let metrics = std::sync::Arc::new(ark_gateway::metrics::Metrics::new());
            ark_gateway::backend::redis::Redis::connect(url, prefix, metrics)
                .map(|redis| {
                    Box::new(ark_gateway::ledger::RedisLedger::new(
                        redis,
                        std::time::Duration::from_secs(30 * 86400),
                    )) as Box<dyn Ledger>
                })
                .map_err(|e| LedgerError::Unavailable(e.to_string()))
        }
        None => RedbLedger::open(&view.store_path).map(|l| Box::new(l) as Box<dyn Ledger>),
    };
    let ledger = match opened {
        Ok(l) => l,
        Err(LedgerError::InUse) => {
            eprintln!(
                "{} is in use by a running gateway, which holds it exclusively so that no two \
                 writers can corrupt ownership. Stop the gateway (SIGTERM drains it), run this \
                 command, then start it again.",
                view.store_path.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}: {e}", view.store_path.display());
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match action {
            TasksAction::List { tenant } => {
                let records = ledger.all_tasks(tenant.as_deref()).await?;
                let mut out = std::io::stdout().lock();
                for r in &records {
                    let _ = writeln!(out, "{}", serde_json::to_string(r).expect("records serialize"));
                }
                Ok(format!("{} task(s)", records.len()))
            }
            TasksAction::Grant { tenant, ids } => {
                let n = ledger.grant(&tenant, &ids, now_ms()).await?;
                Ok(format!("granted {n} task(s) to {tenant}"))
            }
            TasksAction::Revoke { ids } => {
                let n = ledger.revoke(&ids).await?;
                Ok(format!("revoked {n} of {} task(s)", ids.len()))
            }
        }
    });
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let e: LedgerError = e;
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {} problem(s)", config.display(), e.problems.len());
                for problem in &e.problems {
                    eprintln!("  {problem}");
                }
                ExitCode::FAILURE
            }
        },
        Command::HashToken => {
            let mut token = String::new();
            if std::io::stdin().read_to_string(&mut token).is_err() {
                eprintln!("cannot read the token from stdin");
                return ExitCode::FAILURE;
            }
            let token = token.strip_suffix('\n').unwrap_or(&token);
            let token = token.strip_suffix('\r').unwrap_or(token);
            if token.is_empty() {
                eprintln!("the token on stdin is empty");
                return ExitCode::FAILURE;
            }
            println!("{}", hex::encode(ark_gateway::tenant::token_sha256(token.as_bytes())));
            ExitCode::SUCCESS
        }
        Command::Run { config: path } => {
            init_logging();
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: the gateway will not start:", path.display());
                    for problem in &e.problems {
                        eprintln!("  {problem}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            runtime().block_on(async {
                let running = match gateway::start(config, Some(path)).await {
                    Ok(running) => running,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start");
                        return ExitCode::FAILURE;
                    }
                };
                use tokio::signal::unix::{signal, SignalKind};
                let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
                let stop = stop_signal();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = hangup.recv() => {
                            tracing::info!("SIGHUP: reloading the config");
                            let _ = running.reload();
                        }
                        () = &mut stop => break,
                    }
                }
                running.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::MockUpstream {
            listen,
            api_key,
            queued_for,
            running_for,
            delay,
            no_record,
        } => {
            init_logging();
            runtime().block_on(async {
                let listener = match TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("cannot bind {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let options = MockOptions {
                    api_key,
                    queued_for,
                    running_for,
                    delay,
                    record: !no_record,
                };
                let mock = MockUpstream::start(listener, options).expect("a bound listener has an address");
                println!("mock-upstream listening on {}", mock.base_url());
                let _ = std::io::stdout().flush();
                stop_signal().await;
                mock.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::Tasks { config, action } => tasks_command(&config, action),
        Command::Audit { action } => audit_command(action),
        Command::Demo { listen } => {
            init_logging();
            runtime().block_on(async {
                match demo::start(listen).await {
                    Ok((mock, gateway)) => {
                        eprintln!("{}", demo::instructions(gateway.addr()));
                        gateway.run_until(stop_signal()).await;
                        mock.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}
