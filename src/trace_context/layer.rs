use tower::Layer;

use super::TraceContextService;

/// Reads the tenant's trace context, opens the request's span and stamps
/// `traceparent` on every response.
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}
