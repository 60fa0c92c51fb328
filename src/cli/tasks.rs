//! `ark-gateway tasks list|grant|revoke`: inspects or changes the ownership
//! ledger the config names (redb or Redis).

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum TasksAction {
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

pub fn run(config: &std::path::Path, action: TasksAction) -> ExitCode {
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
    let runtime = super::runtime();
    let opened: Result<Box<dyn Ledger>, LedgerError> = match &view.redis {
        Some((url, prefix)) => {
            let _guard = runtime.enter();
            let metrics = std::sync::Arc::new(ark_gateway::metrics::Metrics::new());
            ark_gateway::backend::redis::Redis::connect(url, prefix, metrics)
                .map(|redis| Box::new(ark_gateway::ledger::RedisLedger::new(redis, view.retention)) as Box<dyn Ledger>)
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
