use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::Request;
use tower::Service;

use super::{RequestId, GATEWAY_REQUEST_ID};
use crate::error::GatewayResponse;

#[derive(Debug, Clone)]
pub(crate) struct RequestIdService<S> {
    pub(super) inner: S,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_GATEWAY_REQUEST_ID: HeaderName = HeaderName::from_static(GATEWAY_REQUEST_ID);

impl<S, B> Service<Request<B>> for RequestIdService<S>
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
        let id = RequestId::generate();
        req.extensions_mut().insert(id.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Ok(mut response) = fut.await;
            let headers = response.headers_mut();
            headers.insert(X_GATEWAY_REQUEST_ID.clone(), id.header_value());
            if !headers.contains_key(&X_REQUEST_ID) {
                headers.insert(X_REQUEST_ID.clone(), id.header_value());
            }
            Ok(response)
        })
    }
}
