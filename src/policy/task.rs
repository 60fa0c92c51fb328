//! Get and delete: only a task the tenant created through the gateway or was
//! granted; a delete then learns whether it cancelled or deleted the task.

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;

use super::service::{upstream_request, Upstream};
use crate::audit::AuditNote;
use crate::error::GatewayError;
use crate::ledger::{Ledger, TaskState};
use crate::route::{Operation, TaskId};
use crate::spend::TaskSpend;
use crate::tenant::Tenant;

/// A tenant may touch a task it was granted in the config or owns in the ledger.
/// Static grants are checked first, so they work even while the ledger is down;
/// anything else fails closed when the ledger cannot be read.
///
/// Returns the mirror's spend state where the ledger had it at hand.
pub(super) async fn authorize_task(
    ledger: &dyn Ledger,
    tenant: &Tenant,
    id: &TaskId,
) -> Result<Option<TaskSpend>, GatewayError> {
    if tenant.grants.allows(id) {
        return Ok(None);
    }
    match ledger.owner_check(id.as_str(), tenant.name.as_str()).await {
        Ok(ownership) if ownership.owns => Ok(ownership.spend),
        Ok(_) => Err(GatewayError::TaskNotGranted),
        Err(e) => {
            tracing::error!(error = %e, "ledger read failed; refusing");
            Err(GatewayError::LedgerUnavailable)
        }
    }
}

#[derive(Deserialize)]
struct TaskStatusProbe {
    status: String,
}

/// DELETE cancels a queued task and deletes a finished one, with the same `{}`
/// answer. One GET afterwards tells which it was: a task that still exists is
/// cancelled, one that is gone was deleted.
pub(super) async fn record_delete_outcome<S: Upstream>(inner: S, mut probe: Parts, ledger: &dyn Ledger, id: &TaskId) {
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
