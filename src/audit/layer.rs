use tower::Layer;

use super::{AuditService, AuditSink};

#[derive(Debug, Clone)]
pub struct AuditLayer {
    sink: AuditSink,
}

impl AuditLayer {
    pub fn new(sink: AuditSink) -> Self {
        Self { sink }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            sink: self.sink.clone(),
        }
    }
}
