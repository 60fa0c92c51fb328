//! Per-tenant rate limits (governor's GCRA). Each tenant's limiter is built
//! once with the tenant and shared; a request over the limit is answered 429
//! with `Retry-After` and never forwarded.

mod layer;
mod limiter;
mod service;

pub use layer::RateLimitLayer;
pub use limiter::TenantLimiter;
pub use service::RateLimitService;
