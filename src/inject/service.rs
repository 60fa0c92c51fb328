use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::Request;
use tower::Service;

use super::outbound_headers;
use crate::reload::{SharedSnapshot, Snapshot};
use crate::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

#[derive(Clone)]
pub(crate) struct InjectCredentialService<S> {
    pub(super) inner: S,
    /// Only for a request without a snapshot (a stack without authentication).
    /// Behind a reference count of this stack's own: the policy clones this
    /// service per request, and the shared handle's count is a cache line
    /// that every worker would write.
    pub(super) shared: Arc<SharedSnapshot>,
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
        // The key of the request's own snapshot: a rotation mid-request never
        // mixes generations, and a key is swapped whole or not at all.
        let key = match req.extensions().get::<Arc<Snapshot>>() {
            Some(snapshot) => snapshot.api_key.authorization_header(),
            None => self.shared.load().api_key.authorization_header(),
        };
        let trace = req
            .extensions()
            .get::<TraceContext>()
            .map(|t| (t.traceparent(), t.continued()));
        let headers = req.headers_mut();
        outbound_headers(headers);
        // Ark sees the gateway's span as the parent; a new trace has no state.
        if let Some((traceparent, continued)) = trace {
            headers.insert(TRACEPARENT.clone(), traceparent);
            if !continued {
                headers.remove(&TRACESTATE);
            }
        }
        headers.insert(AUTHORIZATION, key);
        self.inner.call(req)
    }
}
