use std::sync::Arc;

use tower::Layer;

use super::AuthService;
use crate::tenant::TenantDirectory;

#[derive(Debug, Clone)]
pub struct AuthLayer {
    tenants: Arc<TenantDirectory>,
}

impl AuthLayer {
    pub fn new(tenants: Arc<TenantDirectory>) -> Self {
        Self { tenants }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tenants: self.tenants.clone(),
        }
    }
}
