use std::sync::Arc;

use tower::Layer;

use super::{AuditService, AuditSink};
use crate::config::OnAuditFailure;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct AuditLayer {
    sink: AuditSink,
    metrics: Arc<Metrics>,
    on_failure: OnAuditFailure,
}

impl AuditLayer {
    pub fn new(sink: AuditSink, metrics: Arc<Metrics>, on_failure: OnAuditFailure) -> Self {
        Self {
            sink,
            metrics,
            on_failure,
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            sink: self.sink.clone(),
            // One per stack, so per worker: see `WorkerMetrics`.
            metrics: self.metrics.for_worker(),
            on_failure: self.on_failure,
        }
    }
}
