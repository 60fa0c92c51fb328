//! The Redis backend, for several replicas: the connections shared by the
//! Redis ledger ([`ledger`]) and the Redis rate limiter ([`limiter`]).
//!
//! Each worker thread has its own connection, made on its own runtime, so
//! that a command on the request path is written, read and answered on the
//! thread that serves the request: no wake-up of another thread per command,
//! and the commands of one worker's concurrent requests share its writes.
//! Everything else (the reconciler, the sweep, the admin API) uses one
//! shared connection on the main runtime.
//!
//! The connection manager reconnects in the background; every command has
//! short connect and response time-outs, so that a dead Redis makes requests
//! fail closed quickly instead of hanging. An outage is logged and counted
//! once, when it starts, and once more when Redis answers again.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::config::RedisUrl;
use crate::metrics::Metrics;

mod ledger;
mod limiter;
mod spend;
mod tracking;

pub use ledger::RedisLedger;
pub use limiter::RedisLimiter;

thread_local! {
    /// This worker thread's connections, one per [`Redis`] still alive.
    static WORKER_CONNECTIONS: RefCell<Vec<(Weak<()>, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

/// The connections and their health.
pub struct Redis {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// For the main runtime's tasks.
    shared: ConnectionManager,
    /// Names this instance's entry in each worker's [`WORKER_CONNECTIONS`]
    /// (and lets a worker drop the entries of instances that are gone).
    alive: Arc<()>,
    prefix: String,
    up: AtomicBool,
    metrics: Arc<Metrics>,
    url: RedisUrl,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Redis did not answer (the message never carries a password).
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis at {url} is unavailable ({kind})")]
pub struct RedisDown {
    url: String,
    kind: String,
}

impl Redis {
    /// Connects lazily: the gateway starts even while Redis is down, and is
    /// not ready (and fails closed) until it answers.
    pub fn connect(url: &RedisUrl, prefix: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, RedisDown> {
        let down = |e: redis::RedisError| RedisDown {
            url: url.to_string(),
            kind: format!("{:?}", e.kind()),
        };
        let client = redis::Client::open(url.as_str()).map_err(down)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let shared = ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map_err(down)?;
        metrics.set_redis_up(true);
        Ok(Arc::new(Self {
            client,
            config,
            shared,
            alive: Arc::new(()),
            prefix: prefix.to_string(),
            up: AtomicBool::new(true),
            metrics,
            url: url.clone(),
        }))
    }

    /// The client the connections are made from (for the tracking connection).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A handle for one command or pipeline (cheap: a manager is shared):
    /// on a worker thread (a single-threaded runtime) that worker's own
    /// connection, made on first use; elsewhere the shared one.
    ///
    /// A manager stays bound to the runtime it was made on, which holds
    /// because a worker thread runs one runtime and ends with it.
    pub fn conn(&self) -> ConnectionManager {
        let on_worker = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !on_worker {
            return self.shared.clone();
        }
        WORKER_CONNECTIONS.with_borrow_mut(|conns| {
            if let Some((_, conn)) = conns
                .iter()
                .find(|(owner, _)| owner.as_ptr() == Arc::as_ptr(&self.alive))
            {
                return conn.clone();
            }
            conns.retain(|(owner, _)| owner.strong_count() > 0);
            match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
                Ok(conn) => {
                    conns.push((Arc::downgrade(&self.alive), conn.clone()));
                    conn
                }
                Err(_) => self.shared.clone(),
            }
        })
    }

    /// Drops this worker's connection after it failed, so that the next
    /// command connects afresh (once Redis is back, the first request
    /// succeeds instead of meeting the broken connection).
    fn replace_worker_connection(&self) {
        WORKER_CONNECTIONS.with_borrow_mut(|conns| {
            conns.retain(|(owner, _)| owner.as_ptr() != Arc::as_ptr(&self.alive));
        });
    }

    /// Records the outcome of a command: the first failure of an outage and
    /// the first success after it are logged and counted; nothing per request.
    pub fn observe<T>(&self, result: redis::RedisResult<T>) -> Result<T, RedisDown> {
        match result {
            Ok(value) => {
                if !self.up.swap(true, Ordering::SeqCst) {
                    tracing::warn!(redis = %self.url, "redis answers again; serving resumes");
                    self.metrics.set_redis_up(true);
                }
                Ok(value)
            }
            Err(e) => {
                let err = RedisDown {
                    url: self.url.to_string(),
                    kind: format!("{:?}", e.kind()),
                };
                // A script or type error is a bug, not an outage; still fail closed.
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.replace_worker_connection();
                    if self.up.swap(false, Ordering::SeqCst) {
                        tracing::error!(redis = %self.url, kind = %err.kind, "redis unreachable; failing closed and reconnecting in the background");
                        self.metrics.redis_outage();
                    }
                } else {
                    tracing::error!(redis = %self.url, kind = %err.kind, "redis command failed");
                }
                Err(err)
            }
        }
    }

    /// One PING (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn();
        let result: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        self.observe(result).is_ok()
    }
}
