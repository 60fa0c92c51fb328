//! The tenant's request body, as the stack receives it.
//!
//! A refusal is often answered before the body was read (401, 403, 429, a
//! declared length over the limit) or after only part of it (413). If the
//! body were simply dropped, HTTP/2 would reset the stream while the client
//! is still sending, and clients that are still uploading then report a
//! framing error instead of the answer (curl: "Stream error in the HTTP/2
//! framing layer"; h2-based Python and Java clients likewise); HTTP/1.1 would
//! close a socket with unread bytes, and the kernel's reset can destroy the
//! answer in the client's receive buffer. So an unread remainder is read
//! and discarded in the background, at most [`LINGER_BYTES`] within
//! [`LINGER_TIME`], while the answer goes out at once: the client finishes
//! its upload and reads its answer, the stream ends cleanly, and an
//! HTTP/1.1 connection stays usable. Past either bound the body is dropped
//! (HTTP/2: `RST_STREAM(NO_ERROR)` after the complete answer, as RFC 9113
//! §8.1 describes).
//!
//! Nothing read here goes anywhere: the policy has already answered.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Most of an unread body that is read and discarded after an early answer.
pub const LINGER_BYTES: u64 = 8 * 1024 * 1024;
/// Longest time an unread body is read for after an early answer.
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// A request body that drains what nobody read once it is dropped.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` once the end of the body was seen (or it was handed to a drain).
    inner: Option<Incoming>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Seen to the end: nothing is left to drain.
            self.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // A get, a list and a fully read create end here without a task.
        let Some(body) = self.inner.take().filter(|body| !body.is_end_stream()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` until its end, [`LINGER_BYTES`] or [`LINGER_TIME`].
async fn drain(mut body: Incoming) {
    let discard = async {
        let mut left = LINGER_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |data| data.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => return false,
            }
        }
        true
    };
    match tokio::time::timeout(LINGER_TIME, discard).await {
        Ok(true) => tracing::trace!("unread request body drained after an early answer"),
        _ => tracing::debug!("unread request body too long or too slow to drain; dropped"),
    }
}
