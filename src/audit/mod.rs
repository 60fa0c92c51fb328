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

pub use layer::AuditLayer;
pub use note::{AuditFacts, AuditNote};
pub use record::{AuditRecord, Decision};
pub use service::AuditService;
pub use sink::{AuditSink, AuditWriteError, AuditWriter};
