use tower::Layer;

use super::RequestIdService;

/// Outermost layer: assigns the [`super::RequestId`] and stamps it on every response.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}
