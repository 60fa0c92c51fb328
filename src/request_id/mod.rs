//! Gives every request an id of the gateway's own, before anything else runs,
//! so that every audit record and every response, even a rejection, carries it.
//!
//! A client-sent `x-request-id` is not trusted as the audit id (a tenant could
//! forge another's); the client's own id travels as `X-Client-Request-Id`.

mod layer;
mod service;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

pub(crate) use layer::RequestIdLayer;
pub(crate) use service::RequestIdService;

/// The gateway's id for one request (32 hex characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(HeaderValue);

/// The response header that always carries the gateway's id. `x-request-id`
/// carries Ark's id when Ark answered, and the gateway's when it answered itself.
pub(crate) const GATEWAY_REQUEST_ID: &str = "x-gateway-request-id";

/// How many numbers a thread takes from the shared counter at a time, so
/// that the workers do not write one shared cache line per request.
const BLOCK: u64 = 1024;

/// The process's request counter, handed out to threads in blocks.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The next number of this thread's block, taking a new block when it is used up.
fn next_number() -> u64 {
    thread_local! {
        /// (next, end) of this thread's block.
        static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        range.set((next + 1, end));
        next
    })
}

impl RequestId {
    /// A new id: a random per-process prefix and a counter, so ids never repeat
    /// within a process and differ between replicas, with no syscall per request.
    pub(crate) fn generate() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        let prefix = *PREFIX.get_or_init(|| {
            let mut seed = [0u8; 8];
            // getrandom only fails where the OS has no randomness source at all;
            // a time-based prefix still keeps ids unique within the process.
            if getrandom::fill(&mut seed).is_err() {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                seed = nanos.to_le_bytes();
            }
            u64::from_le_bytes(seed)
        });
        Self::from_parts(prefix, next_number())
    }

    /// `prefix` and `n` as 16 hex digits each (no formatting machinery per request).
    fn from_parts(prefix: u64, n: u64) -> Self {
        let mut text = [0u8; 32];
        hex::encode_to_slice(prefix.to_be_bytes(), &mut text[..16]).expect("16 hex digits fit");
        hex::encode_to_slice(n.to_be_bytes(), &mut text[16..]).expect("16 hex digits fit");
        Self(HeaderValue::from_bytes(&text).expect("hex is a valid header value"))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().expect("generated ids are ASCII")
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_hex() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        // Same process prefix in the high half.
        assert_eq!(a.as_str()[..16], b.as_str()[..16]);
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..3000).map(|_| RequestId::generate()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .map(|id| id.as_str().to_string())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an id was handed out twice");
    }

    #[test]
    fn ids_are_prefix_then_counter_in_hex() {
        let id = RequestId::from_parts(0x0123_4567_89ab_cdef, 42);
        assert_eq!(id.as_str(), "0123456789abcdef000000000000002a");
    }
}
