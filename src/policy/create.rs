//! Create: the body is read (bounded) and checked, the create is reserved
//! durably in the ledger, forwarded, and its owner recorded before the
//! tenant gets its answer.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Deserialize;
use tower::ServiceExt;

use super::service::{json_response, upstream_request, Upstream};
use crate::audit::AuditNote;
use crate::error::{GatewayResponse, UpstreamFailure};
use crate::ledger::{now_ms, BeginOutcome, CreateFate, CreateIntent, Ledger, TaskRecord, TaskSource, TaskState};
use crate::request_id::RequestId;
use crate::route::{Operation, TaskId};

use crate::error::GatewayError;
use crate::reload::SpendSettings;
use crate::spend::{day_of, month_of, token_cost_micros, Admission, ArkStatus, Refusal, TaskSpend, Window};
use crate::tenant::Tenant;

/// Reads at most `limit` bytes of body within `timeout`. A declared length over
/// the limit is refused before a byte is read.
pub(super) async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(GatewayError::ClientBodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(GatewayError::BodyTooLarge { limit }),
        Ok(Err(_)) => Err(GatewayError::ClientBodyError),
    }
}

/// The part of a create body the policy looks at. Deserialising into a
/// struct (not a map) makes a repeated `model` key an error rather than a
/// silent "last one wins" that Ark might read differently.
#[derive(Deserialize)]
struct CreateProbe {
    model: Option<String>,
    callback_url: Option<serde_json::Value>,
}

/// Checks that the body is a JSON object with a string `model` the tenant may
/// use, and returns that model.
pub(super) fn check_create_body(body: &[u8], tenant: &Tenant) -> Result<String, GatewayError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(GatewayError::InvalidBody("expected a JSON object"));
    }
    let probe: CreateProbe = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            GatewayError::InvalidBody("`model` must be given once, as a string")
        } else {
            GatewayError::InvalidBody("not valid JSON")
        }
    })?;
    let model = probe
        .model
        .filter(|m| !m.is_empty())
        .ok_or(GatewayError::MissingModel)?;
    if let Some(allowed) = &tenant.models {
        if !allowed.contains(&model) {
            return Err(GatewayError::ModelNotAllowed);
        }
    }
    if let (Some(hosts), Some(url)) = (&tenant.callback_hosts, &probe.callback_url) {
        // Anything but a string on an allowed host is refused, `null` included:
        // Ark's reading of an odd value is not ours to guess.
        if !url.as_str().is_some_and(|url| hosts.allows(url)) {
            return Err(GatewayError::CallbackNotAllowed);
        }
    }
    Ok(model)
}

/// The optional `Idempotency-Key`: 1-255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let visible = |b: &u8| b.is_ascii_graphic();
    if values.next().is_some() || bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(visible) {
        return Err(GatewayError::InvalidIdempotencyKey);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

#[derive(Deserialize)]
struct CreatedTask {
    id: String,
}

/// The slot and reservation a create asks for, and the limits they are checked against.
fn admission(spend: &SpendSettings, tenant: &Tenant, model: &str, body: &[u8], at_ms: u64) -> Admission {
    let pricing = &spend.pricing;
    let reserved_tokens = crate::spend::reserve_tokens(pricing, model, body);
    let per_million_tokens = pricing.price_of(model);
    Admission {
        model: model.to_string(),
        reserved_tokens,
        reserved_cost_micros: token_cost_micros(reserved_tokens, per_million_tokens),
        per_million_tokens,
        day: day_of(at_ms),
        month: month_of(at_ms),
        tenant_max_active: tenant.max_active_tasks,
        account_max_active: spend.account_max_active,
        limits: Window::ALL
            .into_iter()
            .filter_map(|w| Some((w, w.limit(&tenant.budget)?)))
            .collect(),
        lease_until_ms: at_ms + spend.lease.as_millis() as u64,
    }
}

/// How long until a refused create may succeed.
fn refusal_error(refusal: Refusal, now_ms: u64) -> GatewayError {
    match refusal {
        // A slot frees when a task ends: nobody knows when; a reconcile interval is a fair guess.
        Refusal::ActiveTasks => GatewayError::ActiveTaskQuota {
            retry_after: Duration::from_secs(15),
        },
        Refusal::Budget(window) => GatewayError::BudgetExceeded {
            window,
            retry_after: Duration::from_millis(window.resets_at_ms(now_ms).saturating_sub(now_ms)),
        },
    }
}

/// Create: reserve (durably) → forward → record the owner (durably) → answer.
#[allow(clippy::too_many_arguments)]
pub(super) async fn create<S: Upstream>(
    inner: S,
    ledger: &dyn Ledger,
    spend: &SpendSettings,
    tenant: &Tenant,
    note: &AuditNote,
    parts: Parts,
    body: Bytes,
    model: String,
) -> Result<GatewayResponse, GatewayError> {
    let at_ms = now_ms();
    let admission = admission(spend, tenant, &model, &body, at_ms);
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
        at_ms,
        admission: Some(admission.clone()),
    };
    let client_request_id = crate::audit::recorded_id(&parts.headers, &crate::audit::X_CLIENT_REQUEST_ID);
    match ledger.begin_create(intent.clone()).await {
        Err(e) => {
            tracing::error!(error = %e, "ledger unavailable; refusing create before forwarding");
            return Err(GatewayError::LedgerUnavailable);
        }
        Ok(BeginOutcome::Conflict) => return Err(GatewayError::IdempotencyConflict),
        Ok(BeginOutcome::Refused(refusal)) => return Err(refusal_error(refusal, at_ms)),
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
        spend: TaskSpend {
            status: Some(ArkStatus::Queued),
            reserved_tokens: admission.reserved_tokens,
            reserved_cost_micros: admission.reserved_cost_micros,
            per_million_tokens: admission.per_million_tokens,
            holds_slot: true,
            ..TaskSpend::default()
        },
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
