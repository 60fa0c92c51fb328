use serde::{Deserialize, Serialize};

/// Whether the policy let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// One line of the audit stream. No field ever holds a token or the Ark key.
///
/// Generic over the text type: the gateway writes records that borrow what
/// the request already holds (`AuditRecord<&str>`, no copy per field), and
/// readers get owned strings (`AuditRecord`, the default). Both serialize
/// to the same JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord<S = String> {
    /// RFC 3339, UTC, milliseconds.
    pub ts: S,
    pub request_id: S,
    pub tenant: Option<S>,
    pub method: S,
    pub operation: Option<S>,
    pub task_id: Option<S>,
    pub decision: Decision,
    /// `forwarded`, `answered_locally`, or the rejection's reason code.
    pub reason: S,
    /// The status the client received.
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_request_id: Option<S>,
    pub client_request_id: Option<S>,
    pub duration_ms: f64,
    pub remote_addr: Option<S>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_and_owned_records_serialize_alike() {
        let borrowed = AuditRecord {
            ts: "2026-11-29T18:00:00.000Z",
            request_id: "0123456789abcdef0000000000000001",
            tenant: Some("team-a"),
            method: "GET",
            operation: Some("get"),
            task_id: Some("cgt-20250331175019-68d9t"),
            decision: Decision::Allow,
            reason: "forwarded",
            status: 200,
            upstream_status: Some(200),
            upstream_request_id: Some("ark-\"quoted\""),
            client_request_id: None,
            duration_ms: 1.5,
            remote_addr: Some("127.0.0.1:4000"),
        };
        let json = serde_json::to_string(&borrowed).unwrap();
        let owned: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(owned.upstream_request_id.as_deref(), Some("ark-\"quoted\""));
        assert_eq!(serde_json::to_string(&owned).unwrap(), json);
    }
}
