use tower::Layer;

use super::AuthService;
use crate::reload::SharedSnapshot;

#[derive(Clone)]
pub(crate) struct AuthLayer {
    shared: SharedSnapshot,
}

impl AuthLayer {
    pub(crate) fn new(shared: SharedSnapshot) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}
