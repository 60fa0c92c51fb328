use tower::Layer;

use super::InjectCredentialService;
use crate::reload::SharedSnapshot;

#[derive(Clone)]
pub(crate) struct InjectCredentialLayer {
    shared: SharedSnapshot,
}

impl InjectCredentialLayer {
    pub(crate) fn new(shared: SharedSnapshot) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for InjectCredentialLayer {
    type Service = InjectCredentialService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectCredentialService {
            inner,
            shared: std::sync::Arc::new(self.shared.clone()),
        }
    }
}
