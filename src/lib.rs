//! ark-gateway: a multi-tenant gateway in front of Volcengine Ark's
//! content-generation task API. docs/architecture.md has the layer order and why.
#![forbid(unsafe_code)]
// Internals are `pub(crate)`; `pub` is the API the binary, the tests, the
// examples and the fuzz targets use.
#![warn(unreachable_pub)]

pub(crate) mod admin;
pub mod audit;
pub(crate) mod auth;
pub mod backend;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub mod forward;
pub mod gateway;
pub(crate) mod hop;
pub(crate) mod inject;
pub mod ledger;
pub mod log;
pub mod metrics;
pub mod mock_upstream;
pub mod policy;
pub(crate) mod rate_limit;
pub(crate) mod reload;
pub mod request_body;
pub(crate) mod request_id;
pub(crate) mod rescue;
pub mod route;
pub(crate) mod secret;
pub mod server;
pub mod spend;
pub(crate) mod stack;
pub mod tenant;
pub(crate) mod trace_context;
pub(crate) mod ui;
