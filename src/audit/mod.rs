//! One structured audit record per request, on its own stream (stdout or an
//! append-only file), separate from the diagnostic log on stderr.
//!
//! The audit layer sits just inside the request-id layer, so it sees every
//! request: denied, failed and forwarded alike. Inner layers add what they
//! learn (tenant, operation, task id, upstream status) to the request's
//! [`AuditNote`]; the layer turns note + outcome into one [`AuditRecord`].

pub mod chain;
mod layer;
mod note;
mod record;
mod service;
mod sink;
pub(crate) mod timestamp;

pub use layer::AuditLayer;
pub use note::{AuditFacts, AuditNote};
pub use record::{AuditRecord, Decision};
pub use service::AuditService;
pub use sink::{AuditHealth, AuditSink, AuditWriteError, AuditWriter};

use http::header::{AsHeaderName, HeaderName};
use http::HeaderMap;

/// Longest id (a client's or Ark's request id) copied into a record.
pub const MAX_RECORDED_ID: usize = 128;

/// The client's own request id, recorded (and forwarded) as it came.
pub static X_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");
/// Ark's request id on its answers.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A header's value for the record: visible ASCII only (anything else is left
/// out), at most [`MAX_RECORDED_ID`] bytes. Take the name as a [`HeaderName`]
/// constant on the request path: a `&str` is parsed again on every lookup.
pub fn recorded_id(headers: &HeaderMap, name: impl AsHeaderName) -> Option<String> {
    let text = headers.get(name)?.to_str().ok()?;
    // `to_str` admits visible ASCII only, so any byte index is a char boundary.
    Some(text[..text.len().min(MAX_RECORDED_ID)].to_owned())
}

/// `n` in decimal, written at the end of `buf` (no formatting machinery on
/// the request path).
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn decimals_are_written_as_to_string_writes_them() {
        for n in [0, 7, 10, 99, 65_535, 1_000_001, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn recorded_ids_are_cut_to_the_limit_and_only_visible_ascii() {
        let mut headers = HeaderMap::new();
        headers.insert("x-long", HeaderValue::from_str(&"a".repeat(300)).unwrap());
        headers.insert("x-short", HeaderValue::from_static("req-1"));
        headers.insert("x-binary", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert_eq!(recorded_id(&headers, "x-long").unwrap(), "a".repeat(MAX_RECORDED_ID));
        assert_eq!(recorded_id(&headers, "x-short").as_deref(), Some("req-1"));
        assert_eq!(recorded_id(&headers, "x-binary"), None);
        assert_eq!(recorded_id(&headers, "x-absent"), None);
    }
}
