use tower::Layer;

use super::InjectCredentialService;
use crate::secret::ArkApiKey;

#[derive(Debug, Clone)]
pub struct InjectCredentialLayer {
    key: ArkApiKey,
}

impl InjectCredentialLayer {
    pub fn new(key: ArkApiKey) -> Self {
        Self { key }
    }
}

impl<S> Layer<S> for InjectCredentialLayer {
    type Service = InjectCredentialService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectCredentialService {
            inner,
            key: self.key.clone(),
        }
    }
}
