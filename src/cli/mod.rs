//! The command line: one module per command; this one parses and dispatches.

mod audit;
mod check;
mod demo;
mod hash_token;
mod mock_upstream;
mod run;
mod tasks;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    MockUpstream(mock_upstream::Args),
    /// Inspect or change the task ownership ledger (`store.path` of the config).
    Tasks {
        #[arg(long, default_value = "config/ark-gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: tasks::TasksAction,
    },
    /// Check audit files' hash chain; report the first changed, removed or reordered record.
    Audit {
        #[command(subcommand)]
        action: audit::AuditAction,
    },
    /// Usage and spend per tenant, model and day (or month), with budgets and active tasks.
    Usage(usage::Args),
    /// Start the mock upstream and the gateway with two demo tenants.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run::run(config),
        Command::Check { config } => check::run(&config),
        Command::HashToken => hash_token::run(),
        Command::MockUpstream(args) => mock_upstream::run(args),
        Command::Tasks { config, action } => tasks::run(&config, action),
        Command::Audit { action } => audit::run(action),
        Command::Usage(args) => usage::run(args),
        Command::Demo { listen } => demo::run(listen),
    }
}

/// The diagnostic log: stderr, `RUST_LOG` (default `info`), text unless the
/// config says `[log] format = "json"`.
fn init_logging(format: ark_gateway::config::LogFormat) {
    ark_gateway::log::init(format);
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}

/// The runtime for the admin listener, reloads and background work (the
/// tenant listener runs on worker threads of its own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// Parses a humantime duration argument.
fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}
