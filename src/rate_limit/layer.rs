use std::sync::Arc;

use tower::Layer;

use super::{RateLimitService, RateLimits};

/// Applies the tenant's limit and the shared Ark quota. Sits after
/// authentication (it needs the tenant) and before any body is read or any
/// policy work is done, so that a caller over its limit costs little.
#[derive(Clone, Default)]
pub(crate) struct RateLimitLayer {
    limits: Arc<RateLimits>,
}

impl RateLimitLayer {
    pub(crate) fn new(limits: Arc<RateLimits>) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limits: self.limits.clone(),
        }
    }
}
