//! W3C trace context (`traceparent`, `tracestate`): the gateway joins the
//! tenant's trace as one span, so a request can be followed from the tenant
//! through the gateway to Ark, and found again in the audit trail and the
//! diagnostic log by its trace id.
//!
//! A valid `traceparent` is continued: same trace id, the sampled flag as
//! received, `tracestate` passed on unchanged. One that is absent, malformed
//! or all-zero starts a new trace, not sampled, and its `tracestate` is
//! dropped (the specification forbids reading it then).

mod layer;
mod service;

use http::{HeaderMap, HeaderValue};

pub(crate) use layer::TraceContextLayer;

use crate::request_id::RequestId;

/// The request a log line is written in, for `log.rs`. A task-local rather
/// than a `tracing` span: a span costs every request its registration and
/// field formatting (measured: several percent of a request's CPU), while
/// this costs a swap per poll and is read only when a line is written.
#[derive(Debug, Clone)]
pub(crate) struct RequestLog {
    request_id: Option<RequestId>,
    trace: TraceContext,
}

tokio::task_local! {
    static CURRENT: RequestLog;
}

impl RequestLog {
    pub(crate) fn new(request_id: Option<RequestId>, trace: TraceContext) -> Self {
        Self { request_id, trace }
    }
}

/// Runs `f` (synchronous) as part of the request `log` describes.
pub(crate) fn sync_in<R>(log: RequestLog, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(log, f)
}

/// Runs `f` with the request id and trace id of the request being served on
/// this task, if any.
pub(crate) fn with_current<R>(f: impl FnOnce(&str, &str) -> R) -> Option<R> {
    CURRENT
        .try_with(|log| {
            f(
                log.request_id.as_ref().map_or("", RequestId::as_str),
                log.trace.trace_id(),
            )
        })
        .ok()
}
pub(crate) use service::TraceContextService;

pub(crate) static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent`: `00-` 32 `-` 16 `-` 2.
const LEN: usize = 55;

/// The request's place in its trace: the trace id and the gateway's own span.
#[derive(Debug, Clone)]
pub(crate) struct TraceContext {
    /// `00-<trace id>-<gateway span id>-<flags>`: what Ark and the tenant get.
    traceparent: HeaderValue,
    /// Whether the tenant's trace was continued (else a new one was started).
    continued: bool,
}

impl TraceContext {
    /// The context for a request with these headers, with a new span id.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        // Two `traceparent` headers are as invalid as a malformed one.
        let received = match (values.next(), values.next()) {
            (Some(value), None) => parse(value.as_bytes()),
            _ => None,
        };
        let continued = received.is_some();
        let (trace_id, sampled) = received.unwrap_or_else(|| (new_trace_id(), false));
        let mut text = [0u8; LEN];
        text[..3].copy_from_slice(b"00-");
        text[3..35].copy_from_slice(&trace_id);
        text[35] = b'-';
        hex::encode_to_slice(new_span_id().to_be_bytes(), &mut text[36..52]).expect("16 hex digits fit");
        text[52] = b'-';
        text[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
        Self {
            traceparent: HeaderValue::from_bytes(&text).expect("hex and dashes are a valid header value"),
            continued,
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub(crate) fn trace_id(&self) -> &str {
        &self.text()[3..35]
    }

    /// The gateway's span id, 16 lowercase hex digits.
    #[cfg(test)]
    pub(crate) fn span_id(&self) -> &str {
        &self.text()[36..52]
    }

    /// The `traceparent` naming the gateway's span as the parent.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        self.traceparent.clone()
    }

    /// Whether the tenant's `tracestate` may be passed on.
    pub(crate) fn continued(&self) -> bool {
        self.continued
    }

    fn text(&self) -> &str {
        self.traceparent.to_str().expect("built from ASCII")
    }
}

/// A received `traceparent`'s trace id (hex) and sampled flag, if it is valid
/// (W3C Trace Context §3.2: lowercase hex, ids not all zero, version not
/// `ff`; a later version may append fields after a dash).
fn parse(value: &[u8]) -> Option<([u8; 32], bool)> {
    let hex = |bytes: &[u8]| bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |bytes: &[u8]| bytes.iter().all(|&b| b == b'0');
    if value.len() < LEN || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let version_ok = hex(version)
        && version != b"ff"
        && match value.len() {
            LEN => true,
            _ => version != b"00" && value[LEN] == b'-',
        };
    if !version_ok || !hex(trace_id) || zero(trace_id) || !hex(parent_id) || zero(parent_id) || !hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some((trace_id.try_into().ok()?, flags & 1 == 1))
}

/// 128 random bits, in hex, never all zero. Not secret: a trace id only has
/// to be unique, so the per-thread generator serves (no syscall per request).
fn new_trace_id() -> [u8; 32] {
    let id = fastrand::u128(1..);
    let mut text = [0u8; 32];
    hex::encode_to_slice(id.to_be_bytes(), &mut text).expect("32 hex digits fit");
    text
}

fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn context(values: &[&str]) -> TraceContext {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(&TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        TraceContext::from_headers(&headers)
    }

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span_and_its_flag() {
        let ctx = context(&[GOOD]);
        assert!(ctx.continued());
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id(), "00f067aa0ba902b7");
        let sent = ctx.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        let unsampled = context(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"]);
        assert!(unsampled.traceparent().to_str().unwrap().ends_with("-00"));
        // Only the sampled bit is passed on.
        let other_bits = context(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"]);
        assert!(other_bits.traceparent().to_str().unwrap().ends_with("-01"));
        // A later version with a field appended.
        let later = context(&["01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"]);
        assert!(later.continued());
    }

    #[test]
    fn anything_invalid_starts_a_new_unsampled_trace() {
        let cases: &[&[&str]] = &[
            &[],
            &["00-00000000000000000000000000000000-00f067aa0ba902b7-01"],
            &["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"],
            &["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"],
            &["ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"],
            &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"],
            &["00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            &["00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"],
            &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x"],
            &["garbage"],
            &[GOOD, GOOD],
        ];
        for values in cases {
            let ctx = context(values);
            assert!(!ctx.continued(), "{values:?}");
            assert_ne!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{values:?}");
            assert_ne!(ctx.trace_id(), "0".repeat(32));
            assert!(ctx
                .trace_id()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(ctx.traceparent().to_str().unwrap().ends_with("-00"), "{values:?}");
        }
    }

    #[test]
    fn new_ids_differ() {
        let (a, b) = (context(&[]), context(&[]));
        assert_ne!(a.trace_id(), b.trace_id());
        assert_ne!(a.span_id(), b.span_id());
        assert_eq!(a.traceparent().len(), LEN);
    }
}
