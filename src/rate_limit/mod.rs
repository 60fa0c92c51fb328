//! Rate limits: each tenant's own (`rate_limit`), and the shared Ark quota
//! (`upstream.requests_per_minute`). State lives in the process (governor's
//! GCRA; limits hold per replica) or in Redis (the same GCRA in one Lua
//! script; limits hold across replicas). Over a limit: 429 with
//! `Retry-After`, never forwarded.

mod layer;
mod limiter;
mod redis;
mod service;

use std::sync::Arc;

pub use layer::RateLimitLayer;
pub use limiter::TenantLimiter;
pub use redis::RedisLimiter;
pub use service::RateLimitService;

use crate::config::RateLimitConfig;

/// Everything the rate-limit layer checks, built once and shared.
#[derive(Default)]
pub struct RateLimits {
    /// `Some`: tenant and global buckets live in Redis.
    pub shared: Option<Arc<RedisLimiter>>,
    /// The shared Ark quota, if configured.
    pub global: Option<GlobalLimit>,
}

pub struct GlobalLimit {
    pub config: RateLimitConfig,
    /// Used when `shared` is `None`.
    pub local: TenantLimiter,
}

impl GlobalLimit {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            local: TenantLimiter::new(&config),
            config,
        }
    }
}
