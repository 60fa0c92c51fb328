//! The policy service: routes the request, checks the operation, and hands
//! it to the create, get/delete or list path; helpers they share.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceExt};

use super::create::{check_create_body, create, read_body};
use super::list::{list, list_candidates};
use super::task::{authorize_task, record_delete_outcome};
use super::{ListQuery, PolicyLimits, UpstreamQuery};
use crate::audit::AuditNote;
use crate::error::{GatewayError, GatewayResponse};
use crate::ledger::Ledger;
use crate::reload::{SharedSnapshot, Snapshot};
use crate::route::{route, Operation, TaskId};
use crate::tenant::Tenant;

#[derive(Clone)]
pub struct PolicyService<S> {
    pub(super) inner: S,
    pub(super) shared: SharedSnapshot,
    pub(super) ledger: WorkerLedger,
}

/// The shared ledger behind a reference count of this stack's own (each
/// worker builds its stack once): the clone every request takes then writes
/// a cache line of this worker's, not one that every worker writes.
pub(super) type WorkerLedger = Arc<Arc<dyn Ledger>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service the policy forwards to (credential injection + forwarding).
pub(super) trait Upstream:
    Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError, Future: Send> + Clone + Send + 'static
{
}
impl<S> Upstream for S where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError, Future: Send> + Clone + Send + 'static
{
}

impl<S, B> Service<Request<B>> for PolicyService<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, GatewayError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Keep the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limits = match req.extensions().get::<Arc<Snapshot>>() {
            Some(snapshot) => snapshot.limits,
            None => self.shared.load().limits,
        };
        Box::pin(decide(inner, limits, self.ledger.clone(), req))
    }
}

async fn decide<S, B>(
    inner: S,
    limits: PolicyLimits,
    ledger: WorkerLedger,
    req: Request<B>,
) -> Result<GatewayResponse, GatewayError>
where
    S: Upstream,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let routed = route(req.method(), req.uri(), req.version())?;
    let tenant = req
        .extensions()
        .get::<Tenant>()
        .cloned()
        .ok_or(GatewayError::UnknownCredential)?;
    let note = req.extensions().get::<AuditNote>().cloned().unwrap_or_default();
    note.record(|facts| {
        facts.operation = Some(routed.operation);
        facts.task_id = routed.task_id.clone();
    });
    let operation = routed.operation;
    if !tenant.operations.contains(operation) {
        return Err(GatewayError::OperationNotAllowed(operation));
    }
    match (operation, routed.task_id) {
        (Operation::Get, Some(id)) => {
            authorize_task(&**ledger, &tenant, &id).await?;
            let (parts, _unread_body) = req.into_parts();
            inner
                .oneshot(upstream_request(parts, operation, Some(id), None, Bytes::new()))
                .await
        }
        (Operation::Delete, Some(id)) => {
            Box::pin(async {
                authorize_task(&**ledger, &tenant, &id).await?;
                let (parts, _unread_body) = req.into_parts();
                let probe = copy_parts(&parts);
                let response = inner
                    .clone()
                    .oneshot(upstream_request(parts, operation, Some(id.clone()), None, Bytes::new()))
                    .await?;
                if response.status() == StatusCode::OK {
                    record_delete_outcome(inner, probe, &**ledger, &id).await;
                }
                Ok(response)
            })
            .await
        }
        // Create, list and delete are boxed: their states are large, and
        // inlined they would make every get's future (allocated and moved
        // per request) kilobytes larger.
        (Operation::Create, _) => {
            Box::pin(async {
                let (parts, body) = req.into_parts();
                let body = read_body(&parts.headers, body, limits.max_body_bytes, limits.request_timeout).await?;
                let model = check_create_body(&body, &tenant)?;
                create(inner, &**ledger, &tenant, &note, parts, body, model).await
            })
            .await
        }
        (Operation::List, _) => {
            Box::pin(async {
                let query = ListQuery::parse(req.uri().query())?;
                let candidates = list_candidates(&**ledger, &tenant, &query).await?;
                let (parts, _unread_body) = req.into_parts();
                list(inner, parts, &query, candidates, &note).await
            })
            .await
        }
        (Operation::Get | Operation::Delete, None) => Err(GatewayError::NoRoute),
    }
}

/// Builds the request handed to the credential and forwarding layers.
pub(super) fn upstream_request(
    parts: Parts,
    operation: Operation,
    task_id: Option<TaskId>,
    query: Option<UpstreamQuery>,
    body: Bytes,
) -> Request<Bytes> {
    let mut req = Request::from_parts(parts, body);
    let extensions = req.extensions_mut();
    extensions.insert(operation);
    if let Some(id) = task_id {
        extensions.insert(id);
    }
    if let Some(query) = query {
        extensions.insert(query);
    }
    req
}

pub(super) fn copy_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req.into_parts().0
}

pub(super) fn json_response(value: &serde_json::Value) -> GatewayResponse {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
