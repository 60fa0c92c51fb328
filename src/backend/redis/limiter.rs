//! GCRA on Redis: one atomic Lua script per check (one round trip), on
//! Redis's own clock, so that every replica shares one bucket per key and a
//! limit of 10/s means 10/s in total.
//!
//! A bucket is worth nothing after a restart, so the script keeps its write
//! out of the AOF and the replication stream (`REPL_NONE`): with
//! `appendfsync always` a check would otherwise wait for an fsync, which
//! halved GET throughput at 16 connections (`bench/ab.py --redis`).

use std::sync::Arc;
use std::time::Duration;

use super::{Redis, RedisDown};
use crate::config::{RateLimitConfig, RatePeriod};

/// `KEYS[1]`: the bucket; `ARGV[1]`: emission interval (ms); `ARGV[2]`: burst
/// tolerance (ms); `ARGV[3]`: cells that must be left for others after this
/// one (0 for tenants). Returns `{1, 0}` (allowed) or `{0, ms to wait}`.
const GCRA: &str = r#"
redis.set_repl(redis.REPL_NONE)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat + tonumber(ARGV[3]) * interval - now - tolerance
if wait > 0 then return {0, math.ceil(wait)} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"#;

pub struct RedisLimiter {
    redis: Arc<Redis>,
    script: redis::Script,
}

impl RedisLimiter {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self {
            redis,
            script: redis::Script::new(GCRA),
        }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Takes one cell of `bucket`, or says how long until one is free.
    pub async fn check(&self, bucket: &str, limit: &RateLimitConfig) -> Result<Result<(), Duration>, RedisDown> {
        self.check_leaving(bucket, limit, 0).await
    }

    /// Takes one cell only if `reserve` more would still be free after it.
    pub async fn check_leaving(
        &self,
        bucket: &str,
        limit: &RateLimitConfig,
        reserve: u32,
    ) -> Result<Result<(), Duration>, RedisDown> {
        let period_ms = match limit.per {
            RatePeriod::Second => 1_000.0,
            RatePeriod::Minute => 60_000.0,
        };
        let interval = period_ms / f64::from(limit.rate.get());
        let tolerance = interval * f64::from(limit.burst.get() - 1);
        let mut conn = self.redis.conn();
        let (allowed, wait_ms): (i64, i64) = self.redis.observe(
            self.script
                .key(self.redis.key(&format!("rl:{bucket}")))
                .arg(interval)
                .arg(tolerance)
                .arg(reserve)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms.max(1) as u64))
        })
    }
}
