use std::future::{ready, Ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::Service;

use crate::rescue::{GatewayError, GatewayResponse};
use crate::tenant::Tenant;

#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    pub(super) inner: S,
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Ready<Result<GatewayResponse, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(tenant) = req.extensions().get::<Tenant>() else {
            // Only reachable if the stack were assembled without authentication.
            return Either::Left(ready(Err(GatewayError::UnknownCredential)));
        };
        match tenant.limiter.check() {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(retry_after) => Either::Left(ready(Err(GatewayError::TenantRateLimited { retry_after }))),
        }
    }
}
