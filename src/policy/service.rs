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
use serde::Deserialize;
use tower::{Service, ServiceExt};

use super::create::{check_create_body, idempotency_key, read_body};
use super::list::IDS_PER_UPSTREAM_CALL;
use super::{ListQuery, PolicyLimits, UpstreamQuery};
use crate::audit::AuditNote;
use crate::error::{GatewayError, GatewayResponse, UpstreamFailure};
use crate::ledger::{
    now_ms, BeginOutcome, CreateFate, CreateIntent, Ledger, TaskRecord, TaskSource, TaskState, LIST_WINDOW,
};
use crate::reload::{SharedSnapshot, Snapshot};
use crate::request_id::RequestId;
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
trait Upstream:
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

/// A tenant may touch a task it was granted in the config or owns in the ledger.
/// Static grants are checked first, so they work even while the ledger is down;
/// anything else fails closed when the ledger cannot be read.
async fn authorize_task(ledger: &dyn Ledger, tenant: &Tenant, id: &TaskId) -> Result<(), GatewayError> {
    if tenant.grants.allows(id) {
        return Ok(());
    }
    match ledger.is_owner(id.as_str(), tenant.name.as_str()).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(GatewayError::TaskNotGranted),
        Err(e) => {
            tracing::error!(error = %e, "ledger read failed; refusing");
            Err(GatewayError::LedgerUnavailable)
        }
    }
}

#[derive(Deserialize)]
struct CreatedTask {
    id: String,
}

/// Create: reserve (durably) → forward → record the owner (durably) → answer.
async fn create<S: Upstream>(
    inner: S,
    ledger: &dyn Ledger,
    tenant: &Tenant,
    note: &AuditNote,
    parts: Parts,
    body: Bytes,
    model: String,
) -> Result<GatewayResponse, GatewayError> {
    let intent = CreateIntent {
        intent_id: parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate)
            .as_str()
            .to_string(),
        tenant: tenant.name.as_str().to_string(),
        idempotency_key: idempotency_key(&parts.headers)?,
        at_ms: now_ms(),
    };
    let client_request_id = crate::audit::recorded_id(&parts.headers, &crate::audit::X_CLIENT_REQUEST_ID);
    match ledger.begin_create(intent.clone()).await {
        Err(e) => {
            tracing::error!(error = %e, "ledger unavailable; refusing create before forwarding");
            return Err(GatewayError::LedgerUnavailable);
        }
        Ok(BeginOutcome::Conflict) => return Err(GatewayError::IdempotencyConflict),
        Ok(BeginOutcome::Replay { task_id }) => {
            note.record(|facts| {
                facts.task_id = TaskId::parse(&task_id);
                facts.answered_locally = true;
            });
            let mut response = json_response(&serde_json::json!({ "id": task_id }));
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        Ok(BeginOutcome::Begun) => {}
    }

    let result = inner
        .oneshot(upstream_request(parts, Operation::Create, None, None, body))
        .await;
    let response = match result {
        Ok(response) if response.status() == StatusCode::OK => response,
        Ok(refused) => {
            // Ark refused: nothing was created, so the key is free again.
            abandon(ledger, intent, CreateFate::Failed).await;
            return Ok(refused);
        }
        Err(e) => {
            let fate = match e {
                GatewayError::UpstreamTimeout { fate_unknown: true }
                | GatewayError::UpstreamUnavailable { fate_unknown: true, .. } => CreateFate::Unknown,
                _ => CreateFate::Failed,
            };
            abandon(ledger, intent, fate).await;
            return Err(e);
        }
    };
    let (head, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let created = serde_json::from_slice::<CreatedTask>(&body)
        .ok()
        .and_then(|c| TaskId::parse(&c.id));
    let Some(task_id) = created else {
        tracing::error!(tenant = %tenant.name, "upstream answered a create with 200 but no valid task id");
        abandon(ledger, intent, CreateFate::Unknown).await;
        return Err(GatewayError::UpstreamUnavailable {
            kind: UpstreamFailure::Protocol,
            fate_unknown: true,
        });
    };
    let record = TaskRecord {
        task_id: task_id.as_str().to_string(),
        tenant: tenant.name.as_str().to_string(),
        model: Some(model),
        created_ms: intent.at_ms,
        client_request_id,
        state: TaskState::Active,
        source: TaskSource::Created,
    };
    note.record(|facts| facts.task_id = Some(task_id.clone()));
    if let Err(e) = ledger.complete_create(intent, record).await {
        tracing::error!(
            error = %e,
            tenant = %tenant.name,
            task_id = %task_id,
            "task created upstream but its owner could not be recorded; grant it with `ark-gateway tasks grant`"
        );
        return Err(GatewayError::OwnershipNotRecorded);
    }
    Ok(Response::from_parts(head, Full::new(body)))
}

async fn abandon(ledger: &dyn Ledger, intent: CreateIntent, fate: CreateFate) {
    if let Err(e) = ledger.abandon_create(intent, fate).await {
        tracing::warn!(error = %e, "could not settle a create intent in the ledger");
    }
}

#[derive(Deserialize)]
struct TaskStatusProbe {
    status: String,
}

/// DELETE cancels a queued task and deletes a finished one, with the same `{}`
/// answer. One GET afterwards tells which it was: a task that still exists is
/// cancelled, one that is gone was deleted.
async fn record_delete_outcome<S: Upstream>(inner: S, mut probe: Parts, ledger: &dyn Ledger, id: &TaskId) {
    // The probe is the gateway's own request: it must not overwrite the
    // client's upstream status in the audit record.
    probe.extensions.remove::<AuditNote>();
    probe.method = http::Method::GET;
    let state = match inner
        .oneshot(upstream_request(
            probe,
            Operation::Get,
            Some(id.clone()),
            None,
            Bytes::new(),
        ))
        .await
    {
        Ok(r) if r.status() == StatusCode::NOT_FOUND => Some(TaskState::Deleted),
        Ok(r) if r.status() == StatusCode::OK => {
            let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            match serde_json::from_slice::<TaskStatusProbe>(&body) {
                Ok(p) if p.status == "cancelled" => Some(TaskState::Cancelled),
                _ => None,
            }
        }
        _ => None,
    };
    match state {
        Some(state) => {
            if let Err(e) = ledger.set_state(id.as_str(), state).await {
                tracing::warn!(error = %e, task_id = %id, "could not record the delete in the ledger");
            }
        }
        None => {
            tracing::warn!(task_id = %id, "could not tell whether the delete cancelled or deleted the task")
        }
    }
}

/// A task a list may show. `created_ms` is set for tasks the ledger holds
/// (whose existence and creation time the gateway knows); static grants from
/// the config have neither, and only Ark can say whether they exist.
#[derive(Debug, Clone)]
struct Candidate {
    id: TaskId,
    model: Option<String>,
    created_ms: Option<u64>,
}

/// The tasks a list may show, newest first: those the tenant created through
/// the gateway (within Ark's list window), then its exact static grants. With
/// `filter.task_ids`, only those of the given ids the tenant may see.
async fn list_candidates(
    ledger: &dyn Ledger,
    tenant: &Tenant,
    query: &ListQuery,
) -> Result<Vec<Candidate>, GatewayError> {
    let since = now_ms().saturating_sub(LIST_WINDOW.as_millis() as u64);
    let owned = ledger.owned_tasks(tenant.name.as_str(), since).await.map_err(|e| {
        tracing::error!(error = %e, "ledger read failed; refusing list");
        GatewayError::LedgerUnavailable
    })?;
    let mut candidates: Vec<Candidate> = owned
        .into_iter()
        .filter_map(|t| {
            Some(Candidate {
                id: TaskId::parse(&t.task_id)?,
                model: t.model,
                created_ms: Some(t.created_ms),
            })
        })
        .collect();
    let mut granted: Vec<&TaskId> = tenant.grants.exact.iter().collect();
    granted.sort();
    for id in granted {
        if !candidates.iter().any(|c| &c.id == id) {
            candidates.push(Candidate {
                id: id.clone(),
                model: None,
                created_ms: None,
            });
        }
    }
    if let Some(wanted) = &query.task_ids {
        let known: HashMap<&TaskId, &Candidate> = candidates.iter().map(|c| (&c.id, c)).collect();
        let mut narrowed = Vec::with_capacity(wanted.len());
        for id in wanted {
            if let Some(c) = known.get(id) {
                narrowed.push((*c).clone());
            } else if tenant.grants.allows(id) {
                narrowed.push(Candidate {
                    id: id.clone(),
                    model: None,
                    created_ms: None,
                });
            } else if let Ok(Some(record)) = ledger.owner_of(id.as_str()).await {
                // Owned, but older than the window or deleted: Ark decides.
                if record.tenant == tenant.name.as_str() {
                    narrowed.push(Candidate {
                        id: id.clone(),
                        model: record.model,
                        created_ms: None,
                    });
                }
            }
        }
        candidates = narrowed;
    }
    if let Some(model) = &query.model {
        // Known models are filtered here; unknown ones (grants) are left to Ark.
        candidates.retain(|c| c.model.as_ref().is_none_or(|m| m == model));
    }
    Ok(candidates)
}

/// Builds the request handed to the credential and forwarding layers.
fn upstream_request(
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

fn copy_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req.into_parts().0
}

#[derive(Deserialize)]
struct UpstreamPage {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

fn json_response(value: &serde_json::Value) -> GatewayResponse {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Lists only `candidates`, never naming more than [`IDS_PER_UPSTREAM_CALL`]
/// ids in one upstream URL:
/// - up to that many: one call; Ark filters and pages, its answer passes through;
/// - more, with no status or service-tier filter: the tasks the ledger knows
///   are counted and ordered by the gateway; only the page's tasks, plus any
///   static grants (whose existence only Ark knows), are asked of Ark;
/// - more, with a filter only Ark can decide: all ids are asked for in chunks,
///   and the gateway merges, counts and pages.
async fn list<S: Upstream>(
    inner: S,
    parts: Parts,
    query: &ListQuery,
    candidates: Vec<Candidate>,
    note: &AuditNote,
) -> Result<GatewayResponse, GatewayError> {
    if candidates.is_empty() {
        note.record(|facts| facts.answered_locally = true);
        return Ok(json_response(&serde_json::json!({"total": 0, "items": []})));
    }
    if candidates.len() <= IDS_PER_UPSTREAM_CALL {
        let ids: Vec<TaskId> = candidates.into_iter().map(|c| c.id).collect();
        let upstream = UpstreamQuery(query.upstream_query(&ids, query.page_num(), query.page_size()));
        return inner
            .oneshot(upstream_request(
                parts,
                Operation::List,
                None,
                Some(upstream),
                Bytes::new(),
            ))
            .await;
    }
    let page_size = query.page_size() as usize;
    let start = (query.page_num() as usize - 1).saturating_mul(page_size);

    if query.status.is_some() || query.service_tier.is_some() {
        let mut items = match fetch_items(
            inner.clone(),
            &parts,
            query,
            candidates.into_iter().map(|c| c.id).collect(),
        )
        .await?
        {
            Ok(items) => items,
            Err(refusal) => return Ok(refusal),
        };
        sort_newest_first(&mut items);
        let total = items.len();
        let page: Vec<_> = items.into_iter().skip(start).take(page_size).collect();
        return Ok(json_response(&serde_json::json!({"total": total, "items": page})));
    }

    // Known to the ledger (and, with a model filter, of a known model): counted here.
    let decidable = |c: &Candidate| c.created_ms.is_some() && (query.model.is_none() || c.model.is_some());
    let (local, remote): (Vec<Candidate>, Vec<Candidate>) = candidates.into_iter().partition(decidable);
    let remote_items = if remote.is_empty() {
        Vec::new()
    } else {
        match fetch_items(inner.clone(), &parts, query, remote.into_iter().map(|c| c.id).collect()).await? {
            Ok(items) => items,
            Err(refusal) => return Ok(refusal),
        }
    };
    // (created_ms, id, item if already fetched), newest first.
    let mut merged: Vec<(u64, TaskId, Option<serde_json::Value>)> = local
        .into_iter()
        .map(|c| (c.created_ms.unwrap_or(0), c.id, None))
        .collect();
    for item in remote_items {
        let created_ms = item.get("created_at").and_then(|v| v.as_u64()).unwrap_or(0) * 1000;
        if let Some(id) = item.get("id").and_then(|v| v.as_str()).and_then(TaskId::parse) {
            merged.push((created_ms, id, Some(item)));
        }
    }
    merged.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let total = merged.len();
    let page: Vec<_> = merged.into_iter().skip(start).take(page_size).collect();
    let missing: Vec<TaskId> = page.iter().filter(|e| e.2.is_none()).map(|e| e.1.clone()).collect();
    let mut fetched: HashMap<String, serde_json::Value> = HashMap::new();
    if !missing.is_empty() {
        let items = match fetch_items(inner, &parts, query, missing).await? {
            Ok(items) => items,
            Err(refusal) => return Ok(refusal),
        };
        for item in items {
            if let Some(id) = item.get("id").and_then(|v| v.as_str()) {
                fetched.insert(id.to_string(), item.clone());
            }
        }
    }
    // A task the ledger holds but Ark no longer lists (deleted elsewhere,
    // expired) leaves a gap in its page; see README "Listing".
    let items: Vec<_> = page
        .into_iter()
        .filter_map(|(_, id, item)| item.or_else(|| fetched.remove(id.as_str())))
        .collect();
    Ok(json_response(&serde_json::json!({"total": total, "items": items})))
}

/// Asks Ark for `ids` (with the query's filters) in bounded chunks. The outer
/// error is a failure; the inner `Err` is Ark's own refusal, to pass through.
async fn fetch_items<S: Upstream>(
    inner: S,
    parts: &Parts,
    query: &ListQuery,
    ids: Vec<TaskId>,
) -> Result<Result<Vec<serde_json::Value>, GatewayResponse>, GatewayError> {
    let mut items = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_UPSTREAM_CALL) {
        let upstream = UpstreamQuery(query.upstream_query(chunk, 1, chunk.len() as u32));
        let request = upstream_request(copy_parts(parts), Operation::List, None, Some(upstream), Bytes::new());
        let response = inner.clone().oneshot(request).await?;
        if response.status() != StatusCode::OK {
            return Ok(Err(response));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let page: UpstreamPage = serde_json::from_slice(&body).map_err(|_| GatewayError::UpstreamUnavailable {
            kind: UpstreamFailure::Protocol,
            fate_unknown: false,
        })?;
        items.extend(page.items);
    }
    Ok(Ok(items))
}

/// Ark lists newest first; ties are broken by id so pages are stable.
fn sort_newest_first(items: &mut [serde_json::Value]) {
    fn key(v: &serde_json::Value) -> (i64, &str) {
        (
            v.get("created_at").and_then(|c| c.as_i64()).unwrap_or(0),
            v.get("id").and_then(|i| i.as_str()).unwrap_or(""),
        )
    }
    items.sort_by(|a, b| key(b).cmp(&key(a)));
}
