//! Wiring: config → shared state → stack → listener, and an orderly stop that
//! drains connections and flushes the audit sink.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::{AuditSink, AuditWriter};
use crate::config::Config;
use crate::forward::{build_client, Forward};
use crate::ledger::{now_ms, Ledger, LedgerError, RedbLedger, IDEMPOTENCY_WINDOW};
use crate::policy::PolicyLimits;
use crate::stack::{self, StackParts};
use crate::tenant::TenantDirectory;

/// A gateway serving in the background.
pub struct RunningGateway {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the audit sink: {0}")]
    Audit(io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot set up TLS toward the upstream: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot open the task ledger: {0}")]
    Ledger(#[from] LedgerError),
}

/// Everything a gateway is started from. Tests build it by hand to inject a
/// ledger with faults or an in-memory audit writer.
pub struct GatewayParts {
    pub config: Config,
    pub listener: TcpListener,
    pub audit: (AuditSink, AuditWriter),
    pub ledger: Arc<dyn Ledger>,
}

/// Opens the ledger and the audit sink, binds `server.listen`, and serves in the background.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let ledger = RedbLedger::open(&config.store.path)?;
    match ledger.unsettled_creates() {
        Ok(unsettled) if !unsettled.is_empty() => tracing::warn!(
            count = unsettled.len(),
            "creates forwarded before the last stop were never settled; their tasks may exist upstream without an owner (see `ark-gateway tasks list`)"
        ),
        _ => {}
    }
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.server.listen,
            source,
        })?;
    let audit = AuditSink::start(&config.audit.sink).map_err(StartError::Audit)?;
    start_with(GatewayParts {
        config,
        listener,
        audit,
        ledger: Arc::new(ledger),
    })
}

/// Serves from prepared parts in the background.
pub fn start_with(parts: GatewayParts) -> Result<RunningGateway, StartError> {
    let GatewayParts {
        config,
        listener,
        audit: (audit, writer),
        ledger,
    } = parts;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.server.listen,
        source,
    })?;
    let client = build_client(&config.upstream)?;
    let service = stack::build(StackParts {
        tenants: Arc::new(TenantDirectory::from_config(&config.tenants)),
        audit,
        limits: PolicyLimits {
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout,
        },
        ledger: ledger.clone(),
        api_key: config.upstream.api_key.clone(),
        forward: Forward::new(client, &config.upstream),
    });
    let sweeper = tokio::spawn(sweep_forever(ledger, config.store.retention));
    let (stop, stopped) = oneshot::channel::<()>();
    let server_config = config.server.clone();
    let task = tokio::spawn(async move {
        tracing::info!(addr = %addr, "tenant listener ready");
        crate::server::serve(listener, service, &server_config, async {
            let _ = stopped.await;
        })
        .await;
        sweeper.abort();
        let _ = sweeper.await;
        // Every clone of the stack, and so every audit sender, is gone now:
        // the writer drains what is queued and flushes.
        let _ = tokio::task::spawn_blocking(move || writer.finish()).await;
        tracing::info!("audit sink flushed; gateway stopped");
    });
    Ok(RunningGateway {
        addr,
        stop: Some(stop),
        task,
    })
}

/// Drops ledger entries older than the retention, and idempotency keys older
/// than their window, so the file does not grow for ever.
async fn sweep_forever(ledger: Arc<dyn Ledger>, retention: Duration) {
    let every = (retention / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let now = now_ms();
        let tasks_before = now.saturating_sub(retention.as_millis() as u64);
        let keys_before = now.saturating_sub(IDEMPOTENCY_WINDOW.as_millis() as u64);
        match ledger.sweep(tasks_before, keys_before).await {
            Ok(report) if report != Default::default() => tracing::info!(?report, "ledger sweep"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ledger sweep failed"),
        }
    }
}

impl RunningGateway {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drains, flushes the audit sink, then returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Runs until `signal` resolves, then shuts down as [`Self::shutdown`].
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}
