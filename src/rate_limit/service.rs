use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::Service;

use super::{LimiterBackend, RateLimits};
use crate::error::{GatewayError, GatewayResponse};
use crate::tenant::Tenant;

#[derive(Clone)]
pub(crate) struct RateLimitService<S> {
    pub(super) inner: S,
    pub(super) limits: Arc<RateLimits>,
}

type Shared = Pin<Box<dyn Future<Output = Result<GatewayResponse, GatewayError>> + Send + 'static>>;
type Checked<F> = Either<Ready<Result<GatewayResponse, GatewayError>>, Either<F, Shared>>;

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Checked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(tenant) = req.extensions().get::<Tenant>() else {
            // Only reachable if the stack were assembled without authentication.
            return Either::Left(ready(Err(GatewayError::UnknownCredential)));
        };
        let LimiterBackend::Redis(redis) = &self.limits.backend else {
            // In-process buckets: decided here, with no await.
            if let Err(retry_after) = tenant.limiter.check() {
                return Either::Left(ready(Err(GatewayError::TenantRateLimited { retry_after })));
            }
            if let Some(global) = &self.limits.global {
                if let Err(retry_after) = global.local.check() {
                    return Either::Left(ready(Err(GatewayError::UpstreamQuotaExceeded { retry_after })));
                }
            }
            return Either::Right(Either::Left(self.inner.call(req)));
        };
        // Shared buckets: one Redis round trip per bucket, then the inner
        // service that was polled ready. (The local path above only borrows
        // the tenant: its reference count is a cache line every worker writes.)
        let (tenant, redis) = (tenant.clone(), redis.clone());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Either::Right(Either::Right(Box::pin(async move {
            let unavailable = |_| GatewayError::RateLimiterUnavailable;
            if let Err(retry_after) = redis
                .check(&format!("tenant:{}", tenant.name), &tenant.rate_limit)
                .await
                .map_err(unavailable)?
            {
                return Err(GatewayError::TenantRateLimited { retry_after });
            }
            if let Some(global) = &limits.global {
                if let Err(retry_after) = redis.check("upstream", &global.config).await.map_err(unavailable)? {
                    return Err(GatewayError::UpstreamQuotaExceeded { retry_after });
                }
            }
            inner.call(req).await
        })))
    }
}
