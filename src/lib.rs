//! ark-gateway: a multi-tenant gateway in front of Volcengine Ark's
//! content-generation task API. docs/architecture.md has the layer order and why.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod hop;
pub mod inject;
pub mod ledger;
pub mod metrics;
pub mod mock_upstream;
pub mod policy;
pub mod rate_limit;
pub mod reload;
pub mod request_body;
pub mod request_id;
pub mod rescue;
pub mod route;
pub mod secret;
pub mod server;
pub mod stack;
pub mod tenant;
