//! The innermost service: sends the prepared request to Ark over a pooled
//! hyper-util client (rustls, HTTP/1.1 or HTTP/2 by ALPN) and reads the answer.
//!
//! It owns the one piece of capacity in the stack, the `upstream.max_concurrent`
//! slots toward Ark. A request finding none free is refused at once (429),
//! never queued: a queue here would only hide an overloaded upstream quota.

mod client;
mod dial;
mod pool;
mod service;

pub use client::build_pool;
pub use dial::ProxyError;
pub use pool::{ExchangeError, UpstreamPool};
pub use service::{upstream_target, upstream_uri, Forward};
