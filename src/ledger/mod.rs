//! The ownership ledger: which tenant created (or was granted) which task.
//!
//! The policy talks only to the [`Ledger`] trait, which two backends
//! implement: [`RedbLedger`] (one file, no server) and [`RedisLedger`]
//! (shared by several replicas); see `crate::backend`.
//!
//! A create is two durable writes around the upstream call: an *intent* before
//! it (so that a broken store refuses the create before anything reaches Ark,
//! and so that an `Idempotency-Key` is reserved), and the *ownership record*
//! after it, committed before the tenant sees the new id.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::spend::{Admission, ArkStatus, Day, Observation, Refusal, Settlement, TaskSpend, TenantCounts, UsageRow};

pub use crate::backend::redb::RedbLedger;
#[cfg(feature = "fault-injection")]
pub use crate::backend::redb::StoreFaults;
pub use crate::backend::redis::RedisLedger;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Ark lists only the last 7 days of tasks (see API.md); the ledger lists the same window.
pub const LIST_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    /// The store cannot be read or written (I/O error, disk full, closed).
    #[error("the task ledger is unavailable: {0}")]
    Unavailable(String),
    /// Another process (a running gateway) holds the ledger file.
    #[error("the ledger file is in use by another process (is the gateway running?)")]
    InUse,
}

/// What became of a task, as far as the gateway saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Active,
    Cancelled,
    Deleted,
}

/// How the tenant came to own the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskSource {
    Created,
    Granted,
}

/// One ownership record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub tenant: String,
    /// The model it was created with (unknown for grants).
    pub model: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub client_request_id: Option<String>,
    pub state: TaskState,
    pub source: TaskSource,
    /// The mirror of Ark's status and usage, and what the task holds in the counts.
    #[serde(default)]
    pub spend: TaskSpend,
}

/// The answer of an owner check.
#[derive(Debug, Clone, PartialEq)]
pub struct Ownership {
    pub owns: bool,
    /// The mirror's spend state, where the store had it at hand (so a relayed
    /// answer that repeats it needs no second look).
    pub spend: Option<TaskSpend>,
}

impl Ownership {
    pub const NONE: Ownership = Ownership {
        owns: false,
        spend: None,
    };
}

/// A task in a tenant's list index (newest first), without the full record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedTask {
    pub task_id: String,
    pub model: Option<String>,
    pub created_ms: u64,
    /// The mirror's last known status (`None`: never seen since the mirror began).
    pub status: Option<ArkStatus>,
}

/// A page of a tenant's tasks, and how many the whole list holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPage {
    pub total: usize,
    pub tasks: Vec<OwnedTask>,
}

/// A create about to be forwarded.
#[derive(Debug, Clone)]
pub struct CreateIntent {
    /// Unique per request (the gateway's request id).
    pub intent_id: String,
    pub tenant: String,
    pub idempotency_key: Option<String>,
    pub at_ms: u64,
    /// The slot and reservation to hold, checked against the limits with the counts.
    pub admission: Option<Admission>,
}

/// What [`Ledger::begin_create`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginOutcome {
    /// Go ahead and forward.
    Begun,
    /// The same key already created this task: answer with it, do not forward.
    Replay { task_id: String },
    /// The same key is in flight, or its earlier create has an unknown outcome.
    Conflict,
    /// A quota or budget would be exceeded: nothing was held.
    Refused(Refusal),
}

/// How a create that did not produce an owned task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFate {
    /// Ark refused it, or it never reached Ark: the key is released.
    Failed,
    /// It may have reached Ark (time-out after sending): the key stays blocked.
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub tasks: usize,
    /// Write transactions the task sweep took (bounded batches).
    pub batches: usize,
    pub idempotency_keys: usize,
    pub intents: usize,
    pub usage_days: usize,
}

/// What the sweep drops: tasks, keys and intents, and usage aggregates, each
/// older than its own retention (Unix ms).
#[derive(Debug, Clone, Copy)]
pub struct SweepBefore {
    pub tasks_ms: u64,
    pub keys_ms: u64,
    pub usage_ms: u64,
}

/// The state of an Idempotency-Key, as both stores keep it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyStatus {
    Pending,
    Done,
    Unknown,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    pub(crate) status: KeyStatus,
    pub(crate) task_id: Option<String>,
    pub(crate) at_ms: u64,
}

/// The ownership ledger as the policy sees it.
pub trait Ledger: Send + Sync + 'static {
    /// Durably records that a create is about to be forwarded.
    fn begin_create(&self, intent: CreateIntent) -> LedgerFuture<'_, BeginOutcome>;
    /// Durably records the created task's owner (and the key's result).
    fn complete_create(&self, intent: CreateIntent, record: TaskRecord) -> LedgerFuture<'_, ()>;
    /// Closes an intent that produced no owned task.
    fn abandon_create(&self, intent: CreateIntent, fate: CreateFate) -> LedgerFuture<'_, ()>;
    /// The ownership record of a task, if any.
    fn owner_of<'a>(&'a self, task_id: &'a str) -> LedgerFuture<'a, Option<TaskRecord>>;
    /// Whether `tenant` owns the task, and the mirror's spend state: the
    /// check on every get and delete, so a store may answer it without
    /// building the whole record.
    fn owner_check<'a>(&'a self, task_id: &'a str, tenant: &'a str) -> LedgerFuture<'a, Ownership> {
        Box::pin(async move {
            Ok(match self.owner_of(task_id).await? {
                Some(record) if record.tenant == tenant => Ownership {
                    owns: true,
                    spend: Some(record.spend),
                },
                _ => Ownership::NONE,
            })
        })
    }
    /// Whether `tenant` owns the task.
    fn is_owner<'a>(&'a self, task_id: &'a str, tenant: &'a str) -> LedgerFuture<'a, bool> {
        Box::pin(async move { Ok(self.owner_check(task_id, tenant).await?.owns) })
    }
    /// Marks a task cancelled or deleted.
    fn set_state<'a>(&'a self, task_id: &'a str, state: TaskState) -> LedgerFuture<'a, ()>;
    /// The tenant's tasks created at or after `since_ms`, newest first, deleted ones left out.
    fn owned_tasks<'a>(&'a self, tenant: &'a str, since_ms: u64) -> LedgerFuture<'a, Vec<OwnedTask>>;
    /// One page of [`Ledger::owned_tasks`] (`size` tasks after the first
    /// `start`) and how many there are in all, where the store can answer
    /// without reading them all; `None` where it cannot.
    fn owned_page<'a>(
        &'a self,
        tenant: &'a str,
        since_ms: u64,
        start: usize,
        size: usize,
    ) -> LedgerFuture<'a, Option<OwnedPage>> {
        let _ = (tenant, since_ms, start, size);
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Every record, optionally of one tenant (for the admin CLI).
    fn all_tasks<'a>(&'a self, tenant: Option<&'a str>) -> LedgerFuture<'a, Vec<TaskRecord>>;
    /// Gives existing tasks to a tenant (admin). Returns how many were written.
    fn grant<'a>(&'a self, tenant: &'a str, task_ids: &'a [String], at_ms: u64) -> LedgerFuture<'a, usize>;
    /// Removes tasks from the ledger (admin). Returns how many existed.
    fn revoke<'a>(&'a self, task_ids: &'a [String]) -> LedgerFuture<'a, usize>;
    /// Drops what is older than its retention; a dropped task that never
    /// ended is settled as expired first.
    fn sweep(&self, before: SweepBefore) -> LedgerFuture<'_, SweepReport>;
    /// Records what Ark said about an owned task; settles it (exactly once)
    /// when it ended. Writes only when something changed.
    fn observe<'a>(&'a self, task_id: &'a str, observation: Observation) -> LedgerFuture<'a, Option<Settlement>>;
    /// Owned tasks not yet seen to end (what the reconciler asks Ark about), at most `limit`.
    fn open_tasks(&self, limit: usize) -> LedgerFuture<'_, Vec<String>>;
    /// A tenant's active slots and its current day's and month's totals.
    fn tenant_counts<'a>(&'a self, tenant: &'a str, now_ms: u64) -> LedgerFuture<'a, TenantCounts>;
    /// Active slots of the whole account.
    fn account_active(&self) -> LedgerFuture<'_, u64>;
    /// Usage aggregates per tenant, model and day, `from..=to`.
    fn usage_rows<'a>(&'a self, tenant: Option<&'a str>, from: Day, to: Day) -> LedgerFuture<'a, Vec<UsageRow>>;
    /// Whether this process may run the reconciler now (one replica at a time).
    fn reconcile_lease<'a>(&'a self, _holder: &'a str, _ttl: Duration) -> LedgerFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }
    /// Number of ownership records.
    fn task_count(&self) -> Result<u64, LedgerError>;
    /// Whether the store answers (for `/readyz`).
    fn check(&self) -> LedgerFuture<'_, ()> {
        let result = self.task_count().map(|_| ());
        Box::pin(std::future::ready(result))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
