use tower::Layer;

use super::RateLimitService;

/// Applies the authenticated tenant's limiter. Sits after authentication (it
/// needs the tenant) and before any body is read or any policy work is done, so
/// that a tenant over its limit costs the gateway as little as possible.
#[derive(Debug, Clone, Default)]
pub struct RateLimitLayer;

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner }
    }
}
