//! Rate limits: each tenant's own (`rate_limit`), and the shared Ark quota
//! (`upstream.requests_per_minute`). State lives in the process (governor's
//! GCRA; limits hold per replica) or in Redis (the same GCRA in one Lua
//! script; limits hold across replicas). Over a limit: 429 with
//! `Retry-After`, never forwarded.

mod layer;
mod limiter;
mod service;

use std::sync::Arc;

pub(crate) use crate::backend::redis::RedisLimiter;
pub(crate) use layer::RateLimitLayer;
pub(crate) use limiter::{GlobalLimiter, TenantLimiter};
pub(crate) use service::RateLimitService;

use crate::config::RateLimitConfig;

/// Everything the rate-limit layer checks, built once and shared.
#[derive(Default)]
pub(crate) struct RateLimits {
    /// Where the buckets live (`rate_limit.backend`).
    pub backend: LimiterBackend,
    /// The shared Ark quota, if configured.
    pub global: Option<GlobalLimit>,
}

/// Where tenant and global buckets live, chosen like the ledger is.
#[derive(Default)]
pub(crate) enum LimiterBackend {
    /// In this process: each tenant's own governor bucket (limits hold per replica).
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis(Arc<RedisLimiter>),
}

pub(crate) struct GlobalLimit {
    pub config: RateLimitConfig,
    /// Used with [`LimiterBackend::Local`].
    pub local: GlobalLimiter,
}

impl GlobalLimit {
    pub(crate) fn new(config: RateLimitConfig) -> Self {
        Self {
            local: GlobalLimiter::new(&config),
            config,
        }
    }

    /// The cells a background caller leaves to tenants: a fifth of the burst.
    pub(crate) fn tenant_share(&self) -> u32 {
        self.config.burst.get().div_ceil(5)
    }
}
