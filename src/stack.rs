//! The one tower stack. Order matters; each layer says why it sits where it does.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use tower::{Service, ServiceBuilder};

use crate::audit::{AuditLayer, AuditSink};
use crate::auth::AuthLayer;
use crate::config::OnAuditFailure;
use crate::error::GatewayResponse;
use crate::forward::Forward;
use crate::inject::InjectCredentialLayer;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::policy::PolicyLayer;
use crate::rate_limit::{RateLimitLayer, RateLimits};
use crate::reload::SharedSnapshot;
use crate::request_id::RequestIdLayer;
use crate::rescue::RescueLayer;
use crate::trace_context::TraceContextLayer;

/// What the stack is built from.
pub(crate) struct StackParts {
    /// The reloadable configuration (tenants, key, limits).
    pub shared: SharedSnapshot,
    pub audit: AuditSink,
    pub on_audit_failure: OnAuditFailure,
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<dyn Ledger>,
    pub rate_limits: Arc<RateLimits>,
    pub forward: Forward,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn build<B>(
    parts: StackParts,
) -> impl Service<Request<B>, Response = GatewayResponse, Error = Infallible, Future: Send> + Clone + Send + 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        // 1. Request id first, so every response (even a rescued rejection) and
        //    every audit record carries the gateway's id.
        .layer(RequestIdLayer)
        // 2. Trace context next: the request's span (request and trace id on
        //    every log line) covers everything after it, and every response,
        //    a rescued rejection too, carries `traceparent` back.
        .layer(TraceContextLayer)
        // 3. The one place where rejections become Ark-shaped HTTP. Outside
        //    audit, so audit sees the typed error and its reason, not just a status.
        .layer(RescueLayer)
        // 4. Audit (and request metrics) wrap everything that can decide, so
        //    denied, failed and forwarded requests all produce exactly one record.
        .layer(AuditLayer::new(
            parts.audit,
            parts.metrics.clone(),
            parts.on_audit_failure,
        ))
        // 5. Authenticate before anything costs work; takes the request's
        //    configuration snapshot; strips the tenant token.
        .layer(AuthLayer::new(parts.shared.clone()))
        // 6. Per-tenant rate limit: needs the tenant, and runs before any body
        //    is read, so a tenant over its limit is cheap to refuse.
        .layer(RateLimitLayer::new(parts.rate_limits))
        // 7. Route + task-id policy: the only layer that reads bodies and
        //    decides which ids a request may touch.
        .layer(PolicyLayer::new(parts.shared.clone(), parts.ledger, parts.metrics))
        // 8. Only now, with the request fully allowed, attach the Ark key.
        .layer(InjectCredentialLayer::new(parts.shared))
        // 9. Forward to Ark, within the global in-flight limit.
        .service(parts.forward)
}
