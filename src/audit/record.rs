use serde::{Deserialize, Serialize};

/// Whether the policy let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// One line of the audit stream. No field ever holds a token or the Ark key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub request_id: String,
    pub tenant: Option<String>,
    pub method: String,
    pub operation: Option<String>,
    pub task_id: Option<String>,
    pub decision: Decision,
    /// `forwarded`, `answered_locally`, or the rejection's reason code.
    pub reason: String,
    /// The status the client received.
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_request_id: Option<String>,
    pub client_request_id: Option<String>,
    pub duration_ms: f64,
    pub remote_addr: Option<String>,
}
