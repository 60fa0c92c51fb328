use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use futures_util::future::Either;
use http::{Method, Request};
use tower::Service;

use super::{timestamp, AuditNote, AuditRecord, AuditSink, Decision};
use crate::config::OnAuditFailure;
use crate::error::{GatewayError, GatewayResponse};
use crate::metrics::WorkerMetrics;
use crate::request_id::RequestId;
use crate::server::RemoteAddr;
use crate::trace_context::TraceContext;

#[derive(Debug, Clone)]
pub struct AuditService<S> {
    pub(super) inner: S,
    pub(super) sink: AuditSink,
    pub(super) metrics: Arc<WorkerMetrics>,
    pub(super) on_failure: OnAuditFailure,
}

impl<S, B> Service<Request<B>> for AuditService<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let note = AuditNote::default();
        req.extensions_mut().insert(note.clone());
        let request_id = req.extensions().get::<RequestId>().cloned();
        let trace = req.extensions().get::<TraceContext>().cloned();
        let remote_addr = req.extensions().get::<RemoteAddr>().cloned();
        let method = req.method().clone();
        let client_request_id = super::recorded_id(req.headers(), &super::X_CLIENT_REQUEST_ID);
        let sink = self.sink.clone();
        let metrics = self.metrics.clone();
        // While the trail cannot be written, calls that change anything are
        // refused before they run (and reads follow `audit.on_failure`): an
        // action nobody can audit must not happen.
        let mutating = matches!(*req.method(), Method::POST | Method::DELETE);
        let refuse = if mutating {
            !self.sink.ready_for_mutation()
        } else {
            self.on_failure == OnAuditFailure::Deny && !self.sink.healthy()
        };
        let fut = if refuse {
            Either::Left(std::future::ready(Err(GatewayError::AuditUnavailable)))
        } else {
            Either::Right(self.inner.call(req))
        };
        Box::pin(async move {
            let result = fut.await;
            let facts = note.take();
            let (decision, reason, status) = match &result {
                Ok(response) => {
                    let reason = if facts.answered_locally {
                        "answered_locally"
                    } else {
                        "forwarded"
                    };
                    (Decision::Allow, reason, response.status().as_u16())
                }
                Err(e) => {
                    let decision = if e.is_denial() { Decision::Deny } else { Decision::Allow };
                    (decision, e.reason(), e.status().as_u16())
                }
            };
            let elapsed = started.elapsed();
            let tenant = facts.tenant.as_ref();
            let operation = facts.operation.map(|op| op.as_str());
            metrics.request(tenant, operation, decision == Decision::Allow, status, elapsed);
            if let (Err(GatewayError::TenantRateLimited { .. }), Some(tenant)) = (&result, tenant) {
                metrics.rate_limited(tenant);
            }
            if let (Decision::Deny, Some(tenant)) = (decision, tenant) {
                metrics.rejected(tenant, reason);
            }
            // Everything is borrowed; only the time is rendered, into a stack buffer.
            let mut ts = [0u8; timestamp::LEN];
            let record = AuditRecord {
                ts: timestamp::rfc3339_millis(SystemTime::now(), &mut ts),
                request_id: request_id.as_ref().map_or("", RequestId::as_str),
                trace_id: trace.as_ref().map(TraceContext::trace_id),
                tenant: facts.tenant.as_ref().map(|t| t.as_str()),
                token_name: facts.token_name.as_deref(),
                method: method.as_str(),
                operation: facts.operation.map(|op| op.as_str()),
                task_id: facts.task_id.as_ref().map(|id| id.as_str()),
                decision,
                reason,
                status,
                upstream_status: facts.upstream_status,
                upstream_request_id: facts.upstream_request_id.as_deref(),
                client_request_id: client_request_id.as_deref(),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                remote_addr: remote_addr.as_ref().map(RemoteAddr::as_str),
            };
            // The record is written (in the kernel) before the client sees the
            // response. If it cannot be, the action has already happened: the
            // answer goes out, the record went to the diagnostic log, and the
            // next mutating call fails closed.
            let written = sink.write(&record);
            let _ = written.await;
            result
        })
    }
}
