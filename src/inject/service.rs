use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::Request;
use tower::Service;

use super::outbound_headers;
use crate::secret::ArkApiKey;

#[derive(Debug, Clone)]
pub struct InjectCredentialService<S> {
    pub(super) inner: S,
    pub(super) key: ArkApiKey,
}

impl<S, B> Service<Request<B>> for InjectCredentialService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let headers = req.headers_mut();
        outbound_headers(headers);
        headers.insert(AUTHORIZATION, self.key.authorization_header());
        self.inner.call(req)
    }
}
