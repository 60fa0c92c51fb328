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
    /// The W3C trace id (32 hex digits) the request belongs to: the tenant's
    /// `traceparent`, or a trace the gateway started.
    #[serde(default)]
    pub trace_id: Option<S>,
    pub tenant: Option<S>,
    /// The token's name in the config (`null` for `token_sha256`, mTLS and
    /// unauthenticated requests).
    #[serde(default)]
    pub token_name: Option<S>,
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

impl<S: AsRef<str>> AuditRecord<S> {
    /// Appends the record's JSON, byte for byte what `serde_json` writes for
    /// it (fields in declaration order, `null` for none), without serde's
    /// per-field machinery: the keys are constants, and a value is escaped
    /// only if it holds a character JSON requires escaping.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":");
        string(out, &self.ts);
        out.extend_from_slice(b",\"request_id\":");
        string(out, &self.request_id);
        out.extend_from_slice(b",\"trace_id\":");
        optional(out, self.trace_id.as_ref());
        out.extend_from_slice(b",\"tenant\":");
        optional(out, self.tenant.as_ref());
        out.extend_from_slice(b",\"token_name\":");
        optional(out, self.token_name.as_ref());
        out.extend_from_slice(b",\"method\":");
        string(out, &self.method);
        out.extend_from_slice(b",\"operation\":");
        optional(out, self.operation.as_ref());
        out.extend_from_slice(b",\"task_id\":");
        optional(out, self.task_id.as_ref());
        out.extend_from_slice(match self.decision {
            Decision::Allow => b",\"decision\":\"allow\",\"reason\":",
            Decision::Deny => b",\"decision\":\"deny\",\"reason\":",
        });
        string(out, &self.reason);
        out.extend_from_slice(b",\"status\":");
        number(out, self.status);
        out.extend_from_slice(b",\"upstream_status\":");
        match self.upstream_status {
            Some(status) => number(out, status),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"upstream_request_id\":");
        optional(out, self.upstream_request_id.as_ref());
        out.extend_from_slice(b",\"client_request_id\":");
        optional(out, self.client_request_id.as_ref());
        out.extend_from_slice(b",\"duration_ms\":");
        serde_json::to_writer(&mut *out, &self.duration_ms).expect("a number serializes");
        out.extend_from_slice(b",\"remote_addr\":");
        optional(out, self.remote_addr.as_ref());
        out.push(b'}');
    }
}

/// A JSON string. Most values (ids, names, codes) need no escaping and are
/// copied as they are; any other goes through `serde_json`'s own escaping.
fn string(out: &mut Vec<u8>, value: &impl AsRef<str>) {
    let value = value.as_ref();
    // A fold without an early exit, so the compiler checks many bytes per
    // instruction: these strings are short and almost never need escaping.
    let needs_escaping = value
        .bytes()
        .fold(false, |found, b| found | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if needs_escaping {
        serde_json::to_writer(&mut *out, value).expect("a string serializes");
    } else {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

fn optional(out: &mut Vec<u8>, value: Option<&impl AsRef<str>>) {
    match value {
        Some(value) => string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: u16) {
    out.extend_from_slice(super::decimal(u64::from(n), &mut [0; 20]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_with(text: &str, duration_ms: f64, status: u16, some: bool) -> AuditRecord<&str> {
        AuditRecord {
            ts: "2026-11-29T18:00:00.000Z",
            request_id: text,
            trace_id: some.then_some(text),
            tenant: some.then_some(text),
            token_name: some.then_some(text),
            method: "GET",
            operation: some.then_some("get"),
            task_id: some.then_some("cgt-1"),
            decision: if some { Decision::Allow } else { Decision::Deny },
            reason: text,
            status,
            upstream_status: some.then_some(status),
            upstream_request_id: some.then_some(text),
            client_request_id: (!some).then_some(text),
            duration_ms,
            remote_addr: some.then_some("[::1]:4000"),
        }
    }

    #[test]
    fn written_json_is_what_serde_writes() {
        for text in [
            "",
            "plain",
            "quote \" and \\ back",
            "ctl \n\t\r\u{1}\u{1f}\u{7f}",
            "caf\u{e9} \u{1f600}",
        ] {
            for (duration_ms, status, some) in [
                (0.0, 0, true),
                (1.5, 200, false),
                (1234.567, 65535, true),
                (f64::NAN, 9, false),
            ] {
                let record = record_with(text, duration_ms, status, some);
                let mut ours = Vec::new();
                record.write_json(&mut ours);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&record).unwrap()
                );
            }
        }
    }

    proptest! {
        #[test]
        fn written_json_matches_serde_for_any_text(text in any::<String>(), duration_ms in any::<f64>(), status in any::<u16>(), some in any::<bool>()) {
            let record = record_with(&text, duration_ms, status, some);
            let mut ours = Vec::new();
            record.write_json(&mut ours);
            prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&record).unwrap());
        }
    }

    #[test]
    fn borrowed_and_owned_records_serialize_alike() {
        let borrowed = AuditRecord {
            ts: "2026-11-29T18:00:00.000Z",
            request_id: "0123456789abcdef0000000000000001",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            tenant: Some("team-a"),
            token_name: Some("ci"),
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
