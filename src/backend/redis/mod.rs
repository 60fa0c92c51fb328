//! The Redis backend, for several replicas: one connection shared by the
//! Redis ledger ([`ledger`]) and the Redis rate limiter ([`limiter`]).
//!
//! The connection manager reconnects in the background; every command has
//! short connect and response time-outs, so that a dead Redis makes requests
//! fail closed quickly instead of hanging. An outage is logged and counted
//! once, when it starts, and once more when Redis answers again.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisUrl;
use crate::metrics::Metrics;

mod ledger;
mod limiter;
mod spend;

pub use ledger::RedisLedger;
pub use limiter::RedisLimiter;

/// The shared connection and its health.
pub struct Redis {
    conn: ConnectionManager,
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
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(down)?;
        metrics.set_redis_up(true);
        Ok(Arc::new(Self {
            conn,
            prefix: prefix.to_string(),
            up: AtomicBool::new(true),
            metrics,
            url: url.clone(),
        }))
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A handle for one command or pipeline (cheap: the manager is shared).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
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
