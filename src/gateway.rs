//! The composition root: config → ledger, audit, rate limiters, upstream
//! pools, one stack per worker, listeners and background tasks, wired in
//! [`start_with`] step by step, for `run`, `demo` and the tests alike; and an
//! orderly stop that reports not-ready, drains connections and flushes the
//! audit sink.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState, Health};
use crate::audit::{AuditSink, AuditWriter};
use crate::backend::redis::{Redis, RedisDown};
use crate::config::{Config, ConfigError, RateLimitBackend, StoreBackend, UpstreamRoute};
use crate::forward::{build_pool, Forward};
use crate::ledger::{now_ms, Ledger, LedgerError, RedbLedger, RedisLedger, SweepBefore, IDEMPOTENCY_WINDOW};
use crate::metrics::Metrics;
use crate::rate_limit::{GlobalLimit, LimiterBackend, RateLimits, RedisLimiter};
use crate::reload::{Reloader, SharedEnv, SharedSnapshot, Snapshot};
use crate::server::TenantService;
use crate::stack::{self, StackParts};

/// How often the config file (and key file) are checked for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// A gateway serving in the background.
pub struct RunningGateway {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    health: Arc<Health>,
    reloader: Option<Arc<Reloader>>,
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
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot open the task ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("cannot set up redis: {0}")]
    Redis(#[from] RedisDown),
}

/// Everything a gateway is started from. Tests build it by hand to inject a
/// ledger with faults, or to skip the admin listener.
pub struct GatewayParts {
    pub config: Config,
    pub listener: TcpListener,
    pub admin_listener: Option<TcpListener>,
    pub audit: (AuditSink, AuditWriter),
    pub ledger: Arc<dyn Ledger>,
    /// Shared with the ledger when it is on Redis (its outage metrics).
    pub metrics: Arc<Metrics>,
    /// The ledger's Redis connection, reused for rate limits on the same URL.
    pub store_redis: Option<Arc<Redis>>,
    /// Where reloads read the config from (none: no reload, no file watch).
    pub config_path: Option<PathBuf>,
    /// How reloads resolve `upstream.api_key_env`.
    pub env: SharedEnv,
}

/// Opens the ledger and the audit sink, binds both listeners, and serves in
/// the background. `config_path` enables SIGHUP-style and on-change reloads.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<RunningGateway, StartError> {
    let metrics = Arc::new(Metrics::new());
    let (ledger, store_redis) = open_ledger(&config, &metrics)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })
    };
    let listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.admin.listen).await?;
    let audit = AuditSink::start(&config.audit).map_err(StartError::Audit)?;
    start_with(GatewayParts {
        config,
        listener,
        admin_listener: Some(admin_listener),
        audit,
        ledger,
        metrics,
        store_redis,
        config_path,
        env: Arc::new(crate::config::process_env),
    })
}

/// A ledger, and the Redis connection under it when it has one.
pub type OpenedLedger = (Arc<dyn Ledger>, Option<Arc<Redis>>);

/// Opens the ledger `store.backend` names (and returns its Redis connection, if any).
pub fn open_ledger(config: &Config, metrics: &Arc<Metrics>) -> Result<OpenedLedger, StartError> {
    match &config.store.backend {
        StoreBackend::Redb => {
            let ledger = RedbLedger::open(&config.store.path)?;
            match ledger.unsettled_creates() {
                Ok(unsettled) if !unsettled.is_empty() => tracing::warn!(
                    count = unsettled.len(),
                    "creates forwarded before the last stop were never settled; their tasks may exist upstream without an owner (see `ark-gateway tasks list`)"
                ),
                _ => {}
            }
            Ok((Arc::new(ledger), None))
        }
        StoreBackend::Redis(url) => {
            let redis = Redis::connect(url, &config.store.key_prefix, metrics.clone())?;
            Ok((
                Arc::new(
                    RedisLedger::new(redis.clone(), config.store.retention)
                        .with_usage_retention(config.store.usage_retention)
                        .with_owner_cache(),
                ),
                Some(redis),
            ))
        }
    }
}

/// Serves from prepared parts in the background: the one place where the
/// gateway is wired, step by step.
pub fn start_with(parts: GatewayParts) -> Result<RunningGateway, StartError> {
    let GatewayParts {
        config,
        listener,
        admin_listener,
        audit: (audit, writer),
        ledger,
        metrics,
        store_redis,
        config_path,
        env,
    } = parts;
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| StartError::Listen {
            addr: config.server.listen,
            source,
        })
    };
    let addr = local(&listener)?;
    let admin_addr = admin_listener.as_ref().map(local).transpose()?;
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::server::tls_acceptor)
        .transpose()?;
    let health = Arc::new(Health::default());
    let rate_limits = Arc::new(rate_limits(&config, store_redis, &metrics)?);
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::from_config(&config, None)));
    let audit_health = audit.health();
    let (stacks, forward) = worker_stacks(&config, &shared, audit, &ledger, &rate_limits, &metrics, &health)?;
    let (stop_workers, workers_stop) = watch::channel(false);
    let workers = crate::server::spawn_workers(listener, tls.clone(), stacks, &config.server, workers_stop).map_err(
        |source| StartError::Listen {
            addr: config.server.listen,
            source,
        },
    )?;
    let reloader = config_path.map(|path| Arc::new(Reloader::new(path, env, shared.clone(), metrics.clone())));
    let mut background = background_tasks(&config, &ledger, &health, reloader.as_ref());
    background.extend(reconciler(&config, &shared, &ledger, &rate_limits, &metrics, forward));
    let admin_state = AdminState {
        metrics: metrics.clone(),
        health: health.clone(),
        ledger: ledger.clone(),
        limiter_redis: match &rate_limits.backend {
            LimiterBackend::Redis(limiter) => Some(limiter.redis().clone()),
            LimiterBackend::Local => None,
        },
        shared: shared.clone(),
        audit: audit_health,
        token_sha256: config.admin.token_sha256,
        metrics_public: config.admin.metrics_public,
    };
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    let admin = admin_listener.map(|listener| spawn_admin(listener, admin_state, &config, admin_stopped));
    drop(ledger);

    let (stop, stopped) = oneshot::channel::<()>();
    tracing::info!(addr = %addr, tls = tls.is_some(), workers = workers.len(), "tenant listener ready");
    match &config.upstream.route {
        UpstreamRoute::Proxy(proxy) => tracing::info!(
            proxy = %proxy.host_port(),
            from = proxy.source,
            credentials = proxy.credential.is_some(),
            "upstream connections are tunnelled through the egress proxy (CONNECT)"
        ),
        UpstreamRoute::Direct(why) => tracing::info!(why = %why, "upstream connections are direct (no egress proxy)"),
    }
    if let Some(admin) = admin_addr {
        tracing::info!(addr = %admin, "admin listener ready");
    }
    let task = tokio::spawn(supervise(Supervised {
        stopped,
        health: health.clone(),
        stop_workers,
        workers,
        background,
        writer,
        admin_stop,
        admin,
    }));
    Ok(RunningGateway {
        addr,
        admin_addr,
        health,
        reloader,
        stop: Some(stop),
        task,
    })
}

/// The limiter `rate_limit.backend` names, and the shared Ark quota.
fn rate_limits(
    config: &Config,
    store_redis: Option<Arc<Redis>>,
    metrics: &Arc<Metrics>,
) -> Result<RateLimits, StartError> {
    let backend = match &config.rate_limit {
        RateLimitBackend::Local => LimiterBackend::Local,
        // One connection (and one outage count) per Redis: reuse the ledger's.
        RateLimitBackend::Redis(url) => LimiterBackend::Redis(Arc::new(RedisLimiter::new(
            match (&config.store.backend, store_redis) {
                (StoreBackend::Redis(store_url), Some(redis)) if store_url == url => redis,
                _ => Redis::connect(url, &config.store.key_prefix, metrics.clone())?,
            },
        ))),
    };
    Ok(RateLimits {
        backend,
        global: config.upstream.requests_per_minute.map(GlobalLimit::new),
    })
}

/// One stack per worker thread, each forwarding through its own upstream
/// pool; everything else (snapshot, ledger, audit, limits, metrics and the
/// upstream in-flight slots) is shared.
fn worker_stacks(
    config: &Config,
    shared: &SharedSnapshot,
    audit: AuditSink,
    ledger: &Arc<dyn Ledger>,
    rate_limits: &Arc<RateLimits>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> Result<(Vec<impl TenantService>, Forward), StartError> {
    let forward = Forward::new(
        build_pool(&config.upstream)?,
        &config.upstream,
        metrics.clone(),
        health.clone(),
    );
    let mut stacks = Vec::with_capacity(config.server.workers.get());
    for index in 0..config.server.workers.get() {
        let forward = match index {
            0 => forward.clone(),
            _ => forward.with_client(build_pool(&config.upstream)?),
        };
        stacks.push(stack::build(StackParts {
            shared: shared.clone(),
            audit: audit.for_worker(),
            on_audit_failure: config.audit.on_failure,
            metrics: metrics.clone(),
            ledger: ledger.clone(),
            rate_limits: rate_limits.clone(),
            forward,
        }));
    }
    // The reconciler's way to Ark: its own pool, the same in-flight slots.
    let reconciler_forward = forward.with_client(build_pool(&config.upstream)?);
    Ok((stacks, reconciler_forward))
}

/// The reconciler, when governance (or `reconcile.enabled`) asks for it:
/// the gateway's key on every call, and the shared Ark quota counted.
fn reconciler(
    config: &Config,
    shared: &SharedSnapshot,
    ledger: &Arc<dyn Ledger>,
    rate_limits: &Arc<RateLimits>,
    metrics: &Arc<Metrics>,
    forward: Forward,
) -> Option<JoinHandle<()>> {
    if !config.reconcile.enabled {
        return None;
    }
    let limits = rate_limits.clone();
    let quota: crate::spend::reconcile::QuotaCheck = Arc::new(move || {
        let limits = limits.clone();
        Box::pin(async move {
            let Some(global) = &limits.global else { return Ok(()) };
            // Tenants first: the reconciler waits while less than a fifth is left.
            match &limits.backend {
                LimiterBackend::Local => global.local.check_leaving(global.tenant_share()),
                LimiterBackend::Redis(redis) => match redis
                    .check_leaving("upstream", &global.config, global.tenant_share())
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Duration::from_secs(1)),
                },
            }
        })
    });
    let mut holder = [0u8; 8];
    let _ = getrandom::fill(&mut holder);
    let run = crate::spend::reconcile::Reconciler {
        ledger: ledger.clone(),
        upstream: tower::Layer::layer(&crate::inject::InjectCredentialLayer::new(shared.clone()), forward),
        metrics: metrics.clone(),
        config: config.reconcile,
        quota,
        holder: hex::encode(holder),
    }
    .run();
    tracing::info!(interval = ?config.reconcile.interval, max_requests_per_minute = config.reconcile.max_requests_per_minute, "reconciler on");
    Some(tokio::spawn(run))
}

/// The ledger sweep, the upstream probe and the config watcher.
fn background_tasks(
    config: &Config,
    ledger: &Arc<dyn Ledger>,
    health: &Arc<Health>,
    reloader: Option<&Arc<Reloader>>,
) -> Vec<JoinHandle<()>> {
    let mut background = vec![
        tokio::spawn(sweep_forever(
            ledger.clone(),
            config.store.retention,
            config.store.usage_retention,
        )),
        // Behind an egress proxy, Ark is only reachable through it: the probe
        // dials the proxy.
        tokio::spawn(admin::probe_upstream(
            health.clone(),
            match &config.upstream.route {
                UpstreamRoute::Proxy(proxy) => proxy.address.clone(),
                UpstreamRoute::Direct(_) => config.upstream.base_url.clone(),
            },
            config.upstream.connect_timeout,
        )),
    ];
    if let Some(reloader) = reloader {
        background.push(tokio::spawn(reloader.clone().watch(WATCH_EVERY)));
    }
    background
}

/// The admin listener, served until `stopped` resolves.
fn spawn_admin(
    listener: TcpListener,
    state: AdminState,
    config: &Config,
    stopped: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let admin_config = crate::config::ServerConfig {
        tls: None,
        shutdown_grace: Duration::from_secs(1),
        ..config.server.clone()
    };
    tokio::spawn(async move {
        crate::server::serve(
            listener,
            None,
            admin::service(state),
            &admin_config,
            async {
                let _ = stopped.await;
            },
            || {},
        )
        .await;
    })
}

/// What the orderly stop takes down, in order.
struct Supervised {
    stopped: oneshot::Receiver<()>,
    health: Arc<Health>,
    stop_workers: watch::Sender<bool>,
    workers: Vec<crate::server::Worker>,
    background: Vec<JoinHandle<()>>,
    writer: AuditWriter,
    admin_stop: oneshot::Sender<()>,
    admin: Option<JoinHandle<()>>,
}

/// Waits for the stop, then: not ready, stop accepting, drain the workers,
/// end the background tasks, flush the audit sink, close the admin listener.
async fn supervise(s: Supervised) {
    let _ = s.stopped.await;
    // Not ready from the moment the drain starts, so that load
    // balancers stop sending while in-flight requests finish.
    s.health.start_draining();
    let _ = s.stop_workers.send(true);
    let mut finished = Vec::with_capacity(s.workers.len());
    for worker in s.workers {
        let _ = worker.stopped_accepting.await;
        finished.push(worker.finished);
    }
    // Every copy of the listening socket is closed: new connections are refused.
    tracing::info!("stopped accepting; draining in-flight requests");
    for worker in finished {
        let _ = worker.await;
    }
    for task in &s.background {
        task.abort();
    }
    for task in s.background {
        let _ = task.await;
    }
    // Every clone of the stack, and so every audit sender, is gone now:
    // the writer drains what is queued and flushes.
    let writer = s.writer;
    let _ = tokio::task::spawn_blocking(move || writer.finish()).await;
    let _ = s.admin_stop.send(());
    if let Some(admin) = s.admin {
        let _ = admin.await;
    }
    tracing::info!("audit sink flushed; gateway stopped");
}

/// Drops ledger entries older than the retention, and idempotency keys older
/// than their window, so the file does not grow for ever.
async fn sweep_forever(ledger: Arc<dyn Ledger>, retention: Duration, usage_retention: Duration) {
    let every = (retention / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let now = now_ms();
        let before = SweepBefore {
            tasks_ms: now.saturating_sub(retention.as_millis() as u64),
            keys_ms: now.saturating_sub(IDEMPOTENCY_WINDOW.as_millis() as u64),
            usage_ms: now.saturating_sub(usage_retention.as_millis() as u64),
        };
        match ledger.sweep(before).await {
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

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Re-reads the config file now (what SIGHUP does).
    pub fn reload(&self) -> Result<u64, ConfigError> {
        match &self.reloader {
            Some(reloader) => reloader.reload(),
            None => Err(ConfigError {
                problems: vec![crate::config::ConfigProblem {
                    key: "(reload)".into(),
                    message: "this gateway was started without a config file".into(),
                }],
            }),
        }
    }

    /// Stops accepting, reports not-ready, drains, flushes the audit sink, then returns.
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
