use std::sync::Arc;

use tower::Layer;

use super::{PolicyLimits, PolicyService};
use crate::ledger::Ledger;

#[derive(Clone)]
pub struct PolicyLayer {
    limits: PolicyLimits,
    ledger: Arc<dyn Ledger>,
}

impl PolicyLayer {
    pub fn new(limits: PolicyLimits, ledger: Arc<dyn Ledger>) -> Self {
        Self { limits, ledger }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            limits: self.limits,
            ledger: self.ledger.clone(),
        }
    }
}
