use std::sync::Arc;

use tower::Layer;

use super::PolicyService;
use crate::ledger::Ledger;
use crate::reload::SharedSnapshot;

#[derive(Clone)]
pub struct PolicyLayer {
    shared: SharedSnapshot,
    ledger: Arc<dyn Ledger>,
}

impl PolicyLayer {
    pub fn new(shared: SharedSnapshot, ledger: Arc<dyn Ledger>) -> Self {
        Self { shared, ledger }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            shared: self.shared.clone(),
            ledger: Arc::new(self.ledger.clone()),
        }
    }
}
