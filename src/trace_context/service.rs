use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use tower::Service;

use super::{RequestLog, TraceContext, CURRENT, TRACEPARENT};
use crate::error::GatewayResponse;
use crate::request_id::RequestId;

#[derive(Debug, Clone)]
pub(crate) struct TraceContextService<S> {
    pub(super) inner: S,
}

impl<S, B> Service<Request<B>> for TraceContextService<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let context = TraceContext::from_headers(req.headers());
        // Every diagnostic line logged while the request runs carries both ids.
        let log = RequestLog::new(req.extensions().get::<RequestId>().cloned(), context.clone());
        let traceparent = context.traceparent();
        req.extensions_mut().insert(context);
        let fut = super::sync_in(log.clone(), || self.inner.call(req));
        Box::pin(CURRENT.scope(log, async move {
            let Ok(mut response) = fut.await;
            response.headers_mut().insert(TRACEPARENT.clone(), traceparent);
            Ok(response)
        }))
    }
}
