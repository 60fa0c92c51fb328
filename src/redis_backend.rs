//! One Redis connection shared by the Redis-backed ledger and rate limits.
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

use crate::metrics::Metrics;

/// A Redis URL whose `Debug`/`Display` hide any password it carries.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
            return Err("must start with redis://, rediss:// (TLS) or redis+unix://".into());
        }
        redis::Client::open(url).map_err(|e| format!("is not a usable Redis URL: {}", e.kind_str()))?;
        Ok(Self(url.to_string()))
    }

    fn redacted(&self) -> String {
        match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://[redacted]@{host}"),
                None => self.0.clone(),
            },
            None => "[redacted]".into(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

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
            kind: e.kind_str(),
        };
        let client = redis::Client::open(url.0.as_str()).map_err(down)?;
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
                    kind: e.kind_str(),
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
