//! Route + task-id policy: decides what the authenticated tenant may do.
//!
//! This is the only layer that reads the tenant's request body (and only for
//! create, where the `model` must be checked), and the only one that decides
//! which task ids a request may touch. What it lets through is a
//! `Request<Bytes>` carrying typed facts ([`Operation`], [`TaskId`],
//! [`UpstreamQuery`]) from which the forwarder builds the upstream URL, so the
//! id that was authorised is byte for byte the id that is forwarded.

mod create;
mod layer;
mod list;
mod list_query;
mod service;
mod task;

pub use layer::PolicyLayer;
pub use list_query::ListQuery;
pub use service::PolicyService;

use std::time::Duration;

/// The upstream query string for a list call, serialised by the policy from a
/// validated [`ListQuery`] (never copied from the tenant's request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery(pub String);

/// Limits the policy applies while reading a request.
#[derive(Debug, Clone, Copy)]
pub struct PolicyLimits {
    pub max_body_bytes: usize,
    /// How long the tenant has to send its body.
    pub request_timeout: Duration,
}
