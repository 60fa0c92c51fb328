//! The policy service: routes the request, checks the operation, and hands
//! it to the create, get/delete or list path; helpers they share.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

use super::create::{check_create_body, create, read_body};
use super::list::{counted_page, list, list_candidates, plan, ListPlan};
use super::task::{authorize_task, record_delete_outcome};
use super::{ListQuery, PolicyLimits, UpstreamQuery};
use crate::audit::AuditNote;
use crate::error::{GatewayError, GatewayResponse};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reload::SpendSettings;
use crate::reload::{SharedSnapshot, Snapshot};
use crate::route::{route, Operation, TaskId};
use crate::spend::{Observation, TaskSpend};
use crate::tenant::Tenant;

#[derive(Clone)]
pub struct PolicyService<S> {
    pub(super) inner: S,
    pub(super) shared: SharedSnapshot,
    pub(super) ledger: WorkerLedger,
}

/// The shared ledger (and the metrics its settlements count in) behind a
/// reference count of this stack's own (each worker builds its stack once):
/// the clone every request takes then writes a cache line of this worker's,
/// not one that every worker writes.
pub(super) type WorkerLedger = Arc<Book>;

/// The ledger and the metrics of the spend it records.
pub(crate) struct Book {
    pub(super) ledger: Arc<dyn Ledger>,
    pub(super) metrics: Arc<Metrics>,
    /// When this worker last read a get's answer into the mirror, per task.
    pub(super) read_at: std::sync::Mutex<HashMap<TaskId, u64>>,
}

/// A client polling one task many times a second repeats one answer: the
/// mirror reads a get's answer at most this often per task and worker (the
/// reconciler, lists and deletes still see every change).
const GET_READ_EVERY_MS: u64 = 1_000;
/// Tasks whose last read this worker remembers; past it, it starts over.
const READ_AT_CAPACITY: usize = 16_384;

impl Book {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, metrics: Arc<Metrics>) -> Self {
        Self {
            ledger,
            metrics,
            read_at: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether a get's answer for `id` was read within the last second; if
    /// not, it counts as read now.
    fn read_recently(&self, id: &TaskId, now_ms: u64) -> bool {
        let mut read_at = self.read_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match read_at.get_mut(id) {
            Some(at) if now_ms.saturating_sub(*at) < GET_READ_EVERY_MS => true,
            Some(at) => {
                *at = now_ms;
                false
            }
            None => {
                if read_at.len() >= READ_AT_CAPACITY {
                    read_at.clear();
                }
                read_at.insert(id.clone(), now_ms);
                false
            }
        }
    }
}

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
        // The snapshot the request was authenticated under; without one (a
        // stack built without authentication), the live one.
        let (limits, fallback) = match req.extensions().get::<Arc<Snapshot>>() {
            Some(snapshot) => (snapshot.limits, None),
            None => {
                let live = self.shared.load();
                (live.limits, Some(live.spend.clone()))
            }
        };
        Box::pin(decide(inner, limits, fallback, self.ledger.clone(), req))
    }
}

async fn decide<S, B>(
    inner: S,
    limits: PolicyLimits,
    fallback: Option<Arc<SpendSettings>>,
    book: WorkerLedger,
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
    if operation == Operation::Usage {
        note.record(|facts| facts.answered_locally = true);
        let snapshot = req
            .extensions()
            .get::<Arc<Snapshot>>()
            .cloned()
            .ok_or(GatewayError::UnknownCredential)?;
        return crate::spend::report::answer(&*book.ledger, &snapshot, req.uri().query(), Some(tenant.name.as_str()))
            .await;
    }
    if !tenant.operations.contains(operation) {
        return Err(GatewayError::OperationNotAllowed(operation));
    }
    let ledger = &*book.ledger;
    match (operation, routed.task_id) {
        (Operation::Get, Some(id)) => {
            let known = authorize_task(ledger, &tenant, &id).await?;
            let (parts, _unread_body) = req.into_parts();
            let response = inner
                .oneshot(upstream_request(parts, operation, Some(id.clone()), None, Bytes::new()))
                .await?;
            if response.status() == StatusCode::OK && book.read_recently(&id, crate::ledger::now_ms()) {
                return Ok(response);
            }
            Ok(mirror_get(&book, &id, known.as_ref(), response).await)
        }
        (Operation::Delete, Some(id)) => {
            Box::pin(async {
                let known = authorize_task(ledger, &tenant, &id).await?;
                let (parts, _unread_body) = req.into_parts();
                // A finished task is gone after its delete: learn its usage first.
                let settled = match known {
                    Some(spend) => spend.settled,
                    None => !needs_settling(ledger, &id).await,
                };
                if !settled {
                    let probe = probe_parts(&parts);
                    let answer = inner
                        .clone()
                        .oneshot(upstream_request(
                            probe,
                            Operation::Get,
                            Some(id.clone()),
                            None,
                            Bytes::new(),
                        ))
                        .await;
                    if let Ok(answer) = answer {
                        mirror_get(&book, &id, None, answer).await;
                    }
                }
                let probe = copy_parts(&parts);
                let response = inner
                    .clone()
                    .oneshot(upstream_request(parts, operation, Some(id.clone()), None, Bytes::new()))
                    .await?;
                if response.status() == StatusCode::OK {
                    record_delete_outcome(inner, probe, ledger, &id).await;
                    crate::spend::record(ledger, &book.metrics, id.as_str(), Observation::Deleted).await;
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
                let spend = match parts.extensions.get::<Arc<Snapshot>>() {
                    Some(snapshot) => snapshot.spend.clone(),
                    None => fallback.ok_or(GatewayError::UnknownCredential)?,
                };
                let created = create(inner, ledger, &spend, &tenant, &note, parts, body, model).await;
                if let Err(refusal @ (GatewayError::ActiveTaskQuota { .. } | GatewayError::BudgetExceeded { .. })) =
                    &created
                {
                    book.metrics.quota_rejection(&tenant.name, refusal.reason());
                }
                created
            })
            .await
        }
        (Operation::List, _) => {
            Box::pin(async {
                let query = ListQuery::parse(req.uri().query())?;
                let plan = match counted_page(ledger, &tenant, &query).await? {
                    Some(page) => ListPlan::Counted(page),
                    None => plan(list_candidates(ledger, &tenant, &query).await?, &query),
                };
                let (parts, _unread_body) = req.into_parts();
                let response = list(inner, parts, &query, plan, &note).await?;
                if response.status() != StatusCode::OK {
                    return Ok(response);
                }
                let (head, body) = response.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                crate::spend::record_list(ledger, &book.metrics, &body).await;
                Ok(Response::from_parts(head, Full::new(body)))
            })
            .await
        }
        (Operation::Get | Operation::Delete, None) | (Operation::Usage, _) => Err(GatewayError::NoRoute),
    }
}

/// Whether the ledger still waits for this task's final usage.
async fn needs_settling(ledger: &dyn Ledger, id: &TaskId) -> bool {
    match ledger.owner_of(id.as_str()).await {
        Ok(Some(record)) => !record.spend.settled,
        _ => false,
    }
}

/// The gateway's own GET of a task, on the client's connection facts: it must
/// not overwrite the client's upstream status in the audit record.
fn probe_parts(parts: &Parts) -> Parts {
    let mut probe = copy_parts(parts);
    probe.extensions.remove::<AuditNote>();
    probe.method = http::Method::GET;
    probe
}

/// Records a get's answer in the mirror (a 404: Ark no longer knows the task)
/// and hands the answer back unchanged. `known` is the mirror's state as the
/// owner check saw it: an answer that repeats it needs no ledger call.
async fn mirror_get(book: &Book, id: &TaskId, known: Option<&TaskSpend>, response: GatewayResponse) -> GatewayResponse {
    let repeats = |observation| known.is_some_and(|spend| !crate::spend::changes(spend, observation));
    match response.status() {
        StatusCode::OK => {
            let (head, body) = response.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            match crate::spend::observe_task_json(&body) {
                Some(observation) if !repeats(observation) => {
                    crate::spend::record(&*book.ledger, &book.metrics, id.as_str(), observation).await
                }
                _ => {}
            }
            Response::from_parts(head, Full::new(body))
        }
        StatusCode::NOT_FOUND if !repeats(Observation::Gone) => {
            crate::spend::record(&*book.ledger, &book.metrics, id.as_str(), Observation::Gone).await;
            response
        }
        _ => response,
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
