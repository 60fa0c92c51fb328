use std::sync::{Arc, Mutex, PoisonError};

use crate::config::TenantName;
use crate::route::{Operation, TaskId};

/// Facts about one request, filled in by the layer that learns each of them.
#[derive(Debug, Default, Clone)]
pub struct AuditFacts {
    pub tenant: Option<TenantName>,
    /// The name of the token that authenticated the request (never the token).
    pub token_name: Option<std::sync::Arc<str>>,
    pub operation: Option<Operation>,
    pub task_id: Option<TaskId>,
    pub upstream_status: Option<u16>,
    pub upstream_request_id: Option<String>,
    /// Set when the gateway answered a permitted request without Ark
    /// (for example a list whose filter matched none of the tenant's tasks).
    pub answered_locally: bool,
}

/// A request extension shared between the audit layer and the layers inside it.
/// The lock is per request and never contended in practice.
#[derive(Debug, Default, Clone)]
pub struct AuditNote(Arc<Mutex<AuditFacts>>);

impl AuditNote {
    pub fn record(&self, write: impl FnOnce(&mut AuditFacts)) {
        write(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Takes the facts out (once the request has finished).
    pub fn take(&self) -> AuditFacts {
        std::mem::take(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
