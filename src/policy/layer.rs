use std::sync::Arc;

use tower::Layer;

use super::service::Book;
use super::PolicyService;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reload::SharedSnapshot;

#[derive(Clone)]
pub struct PolicyLayer {
    shared: SharedSnapshot,
    ledger: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
}

impl PolicyLayer {
    pub fn new(shared: SharedSnapshot, ledger: Arc<dyn Ledger>, metrics: Arc<Metrics>) -> Self {
        Self {
            shared,
            ledger,
            metrics,
        }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            shared: self.shared.clone(),
            ledger: Arc::new(Book::new(self.ledger.clone(), self.metrics.clone())),
        }
    }
}
