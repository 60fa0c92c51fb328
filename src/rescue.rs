//! The one place where the stack's typed rejections become HTTP: after this
//! layer nothing fails. What each rejection looks like is the table in
//! [`crate::error`]; `x-request-id` is added by the request-id layer, which
//! sits outside this one.

use std::convert::Infallible;

use crate::error::{GatewayError, GatewayResponse};

/// The layer that turns the stack's `Result` into HTTP: after it, nothing fails.
#[derive(Debug, Clone, Default)]
pub(crate) struct RescueLayer;

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner, not_ready: None }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    /// A readiness failure, answered on the next call instead of dropping the connection.
    not_ready: Option<std::sync::Arc<GatewayError>>,
}

impl<S, Req> tower::Service<Req> for Rescue<S>
where
    S: tower::Service<Req, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<GatewayResponse, Infallible>>,
        futures_util::future::Map<
            S::Future,
            fn(Result<GatewayResponse, GatewayError>) -> Result<GatewayResponse, Infallible>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx).map(|ready| {
            if let Err(e) = ready {
                self.not_ready = Some(std::sync::Arc::new(e));
            }
            Ok(())
        })
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use futures_util::FutureExt;
        if let Some(e) = self.not_ready.take() {
            return futures_util::future::Either::Left(std::future::ready(Ok(e.to_response())));
        }
        futures_util::future::Either::Right(self.inner.call(req).map(rescue as fn(_) -> _))
    }
}

/// The one conversion from a rejection to HTTP.
pub(crate) fn rescue(result: Result<GatewayResponse, GatewayError>) -> Result<GatewayResponse, Infallible> {
    Ok(result.unwrap_or_else(|e| e.to_response()))
}
