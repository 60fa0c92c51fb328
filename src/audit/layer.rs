use std::sync::Arc;

use tower::Layer;

use super::{AuditService, AuditSink};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct AuditLayer {
    sink: AuditSink,
    metrics: Arc<Metrics>,
}

impl AuditLayer {
    pub fn new(sink: AuditSink, metrics: Arc<Metrics>) -> Self {
        Self { sink, metrics }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
