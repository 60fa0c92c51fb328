//! The embedded ledger: one redb file. Reads run on the caller (MVCC read
//! transactions never wait for writers); writes go to one writer thread that
//! commits them in groups, one fsync per group, so durable creates scale with
//! concurrency instead of being limited by one fsync per request.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{
    Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, StorageBackend, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[cfg(feature = "fault-injection")]
mod faults;
mod spend;

#[cfg(feature = "fault-injection")]
pub use faults::StoreFaults;

use super::owner_cache::OwnerCache;

use crate::ledger::*;
use crate::spend::ArkStatus;

/// task id → [`TaskRecord`] (JSON).
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// (tenant, created_ms, task id) → [state, has_model, model…]: one range scan lists a tenant.
const BY_TENANT: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("tasks_by_tenant");
/// (tenant, idempotency key) → [`KeyEntry`] (JSON).
const KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency_keys");
/// (created_ms, task id): the retention sweep takes the oldest in bounded batches.
const BY_CREATED: TableDefinition<(u64, &str), ()> = TableDefinition::new("tasks_by_created");
/// (tenant, hour of creation) → how many of that hour's `BY_TENANT` entries
/// are not deleted: a list's total and the start of a deep page without
/// reading the whole index.
const LIST_COUNTS: TableDefinition<(&str, u64), u64> = TableDefinition::new("list_counts");
const HOUR_MS: u64 = 3_600_000;
/// intent id → [`IntentEntry`] (JSON): creates forwarded and not yet settled.
const INTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("create_intents");

/// redb's page cache.
const CACHE_BYTES: usize = 32 << 20;
/// Writes waiting for the writer thread.
const WRITE_QUEUE: usize = 8192;
/// Most operations committed together.
const MAX_GROUP: usize = 512;
/// Most expired tasks one sweep transaction removes, so that a sweep over a
/// million records never holds the writer long enough to stall creates: a
/// removal costs about 60 µs (its spend settled, five tables updated), so a
/// batch holds the writer for about 3 ms (`bench/scale.sh --only tasks sweep`).
pub const SWEEP_BATCH: usize = 50;
/// After each batch the sweep waits this many times as long as the batch
/// took. Its commits skip the fsync, so the next durable commit (a create's)
/// writes their pages out: at full speed a sweep tripled the create p99, and
/// paced to a third of the writer it leaves creates their own disk time.
const SWEEP_PAUSE_FACTOR: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct IntentEntry {
    tenant: String,
    idempotency_key: Option<String>,
    at_ms: u64,
    /// The slot and reservation it holds (given back at most once).
    #[serde(default)]
    held: Option<crate::spend::Hold>,
}

enum Op {
    Begin(CreateIntent),
    Complete(CreateIntent, TaskRecord),
    Abandon(CreateIntent, CreateFate),
    SetState(String, TaskState),
    Observe(String, crate::spend::Observation),
    Grant(String, Vec<String>, u64),
    Revoke(Vec<String>),
    /// One batch of expired tasks (at most [`SWEEP_BATCH`]).
    SweepTasks(u64),
    /// Idempotency keys, intents and usage aggregates past their retention.
    SweepRest(SweepBefore),
}

enum Outcome {
    Begin(BeginOutcome),
    Unit,
    Count(usize),
    /// The ids one sweep batch removed.
    SweptTasks(Vec<String>),
    Swept(SweepReport),
    Settled(Option<crate::spend::Settlement>),
}

struct WriteRequest {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, LedgerError>>,
}

/// The redb-backed ledger. Cheap to share behind an `Arc`.
pub struct RedbLedger {
    db: Arc<Database>,
    /// Owners already read, shared with the writer thread, which forgets the
    /// ones its commits change.
    owners: Arc<OwnerCache>,
    writes: mpsc::Sender<WriteRequest>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbLedger {
    /// Closes the write queue and waits for the writer to finish its last
    /// group, so that the file (and its exclusive lock) is released when the
    /// ledger is dropped, not at some later moment.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writes, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

impl RedbLedger {
    /// Opens (or creates) the ledger file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Self::open_on(path, |file| file)
    }

    /// As [`Self::open`], with a fault switch on the underlying file (tests).
    #[cfg(feature = "fault-injection")]
    pub fn open_with_faults(path: &Path, faults: StoreFaults) -> Result<Self, LedgerError> {
        Self::open_on(path, |inner| faults::FaultableBackend { inner, faults })
    }

    /// Opens the file, through `backend` (the file itself, or a test's wrapper).
    fn open_on<B: StorageBackend>(path: &Path, backend: impl FnOnce(FileBackend) -> B) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let inner = FileBackend::new(file).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse,
            other => unavailable(other),
        })?;
        let warned = std::sync::atomic::AtomicBool::new(false);
        let db = Database::builder()
            // redb's own page cache (1 GiB by default) would keep every page a
            // start-up check or a list read; the OS page cache holds the file anyway.
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(move |session| {
                if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        progress = session.progress(),
                        "the ledger was not closed cleanly; checking it (this reads the whole file)"
                    );
                }
            })
            .create_with_backend(backend(inner))
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => LedgerError::InUse,
                other => unavailable(other),
            })?;
        // Create every table once so that read transactions can always open them.
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(TASKS).map_err(unavailable)?;
            txn.open_table(BY_TENANT).map_err(unavailable)?;
            txn.open_table(KEYS).map_err(unavailable)?;
            txn.open_table(INTENTS).map_err(unavailable)?;
            txn.open_table(BY_CREATED).map_err(unavailable)?;
            txn.open_table(LIST_COUNTS).map_err(unavailable)?;
            spend::open_tables(&txn)?;
            index_by_created(&txn)?;
            count_listed(&txn)?;
            release_dead_intents(&txn)?;
            spend::adopt_unmirrored(&txn)?;
        }
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let owners = Arc::new(OwnerCache::default());
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let (writer_db, writer_owners) = (db.clone(), owners.clone());
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || write_loop(&writer_db, &writer_owners, queue))
            .map_err(unavailable)?;
        Ok(Self {
            db,
            owners,
            writes,
            writer: Some(writer),
        })
    }

    /// Creates that were forwarded but never settled (the process died in
    /// between): their tasks may exist upstream without an owner.
    pub fn unsettled_creates(&self) -> Result<Vec<(String, String, u64)>, LedgerError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(INTENTS).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            if let Ok(intent) = serde_json::from_slice::<IntentEntry>(v.value()) {
                out.push((k.value().to_string(), intent.tenant, intent.at_ms));
            }
        }
        Ok(out)
    }

    async fn write(&self, op: Op) -> Result<Outcome, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| unavailable("the ledger writer has stopped"))?;
        answer.await.map_err(|_| unavailable("the ledger writer has stopped"))?
    }
}

/// The two fields an owner check and a mirror check read, borrowed from the
/// stored bytes where they can be.
#[derive(serde::Deserialize)]
struct OwnerAndSpend<'r> {
    #[serde(borrow)]
    tenant: std::borrow::Cow<'r, str>,
    #[serde(default)]
    spend: crate::spend::TaskSpend,
}

/// The file is locked to one process: every intent in it belongs to a
/// process that died mid-create. Their slots and reservations are given back
/// (the intents stay, reported by [`RedbLedger::unsettled_creates`]).
fn release_dead_intents(txn: &WriteTransaction) -> Result<(), LedgerError> {
    let dead: Vec<(String, IntentEntry)> = {
        let intents = txn.open_table(INTENTS).map_err(unavailable)?;
        let mut dead = Vec::new();
        for entry in intents.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            if let Ok(intent) = serde_json::from_slice::<IntentEntry>(v.value()) {
                if intent.held.is_some() {
                    dead.push((k.value().to_string(), intent));
                }
            }
        }
        dead
    };
    for (id, mut intent) in dead {
        if let Some(held) = intent.held.take() {
            spend::release(txn, &intent.tenant, &held)?;
        }
        let mut intents = txn.open_table(INTENTS).map_err(unavailable)?;
        intents
            .insert(id.as_str(), serde_json::to_vec(&intent).expect("serializes").as_slice())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Once per file: tasks written before the creation-time index join it.
fn index_by_created(txn: &WriteTransaction) -> Result<(), LedgerError> {
    let mut meta = txn.open_table(spend::META).map_err(unavailable)?;
    if meta.get("by_created").map_err(unavailable)?.is_some() {
        return Ok(());
    }
    let tasks = txn.open_table(TASKS).map_err(unavailable)?;
    let mut index = txn.open_table(BY_CREATED).map_err(unavailable)?;
    for entry in tasks.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let created = serde_json::from_slice::<TaskRecord>(v.value()).map_or(0, |r| r.created_ms);
        index.insert((created, k.value()), ()).map_err(unavailable)?;
    }
    meta.insert("by_created", 1).map_err(unavailable)?;
    Ok(())
}

/// Once per file: the list counts of the tasks written before they existed.
fn count_listed(txn: &WriteTransaction) -> Result<(), LedgerError> {
    let mut meta = txn.open_table(spend::META).map_err(unavailable)?;
    if meta.get("list_counts").map_err(unavailable)?.is_some() {
        return Ok(());
    }
    let index = txn.open_table(BY_TENANT).map_err(unavailable)?;
    let mut counts: std::collections::BTreeMap<(String, u64), u64> = Default::default();
    for entry in index.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let (tenant, created_ms, _) = k.value();
        if decode_index(v.value()).0 != TaskState::Deleted {
            *counts.entry((tenant.to_string(), created_ms / HOUR_MS)).or_default() += 1;
        }
    }
    let mut table = txn.open_table(LIST_COUNTS).map_err(unavailable)?;
    table.retain(|_, _| false).map_err(unavailable)?;
    for ((tenant, hour), n) in counts {
        table.insert((tenant.as_str(), hour), n).map_err(unavailable)?;
    }
    meta.insert("list_counts", 1).map_err(unavailable)?;
    Ok(())
}

/// Moves the list count of `record`'s hour by one, if it is listed (not deleted).
fn count_listing(txn: &WriteTransaction, record: &TaskRecord, add: bool) -> Result<(), LedgerError> {
    if record.state == TaskState::Deleted {
        return Ok(());
    }
    let mut counts = txn.open_table(LIST_COUNTS).map_err(unavailable)?;
    let key = (record.tenant.as_str(), record.created_ms / HOUR_MS);
    let n = counts.get(key).map_err(unavailable)?.map_or(0, |v| v.value());
    match (add, n) {
        (true, n) => drop(counts.insert(key, n + 1).map_err(unavailable)?),
        (false, 0 | 1) => drop(counts.remove(key).map_err(unavailable)?),
        (false, n) => drop(counts.insert(key, n - 1).map_err(unavailable)?),
    }
    Ok(())
}

/// Gives back what an intent held, and removes it.
fn close_intent(txn: &WriteTransaction, intent_id: &str, give_back: bool) -> Result<(), LedgerError> {
    let entry = {
        let mut intents = txn.open_table(INTENTS).map_err(unavailable)?;
        let removed = intents.remove(intent_id).map_err(unavailable)?;
        removed.and_then(|v| serde_json::from_slice::<IntentEntry>(v.value()).ok())
    };
    if let Some(IntentEntry {
        tenant,
        held: Some(held),
        ..
    }) = entry
    {
        if give_back {
            spend::release(txn, &tenant, &held)?;
        }
    }
    Ok(())
}

fn write_loop(db: &Arc<Database>, owners: &OwnerCache, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        // Sweep batches commit after the rest, in a transaction of their own
        // and without an fsync (a batch lost to a crash is swept again; the
        // next durable commit makes it durable): a create that arrived beside
        // one never waits for it.
        let (mut sweeps, mut rest): (Vec<_>, Vec<_>) = group
            .drain(..)
            .partition(|request| matches!(request.op, Op::SweepTasks(_)));
        if !rest.is_empty() {
            commit_group(db, owners, &mut rest, Durability::Immediate);
        }
        if !sweeps.is_empty() {
            commit_group(db, owners, &mut sweeps, Durability::Eventual);
        }
    }
}

/// The tasks whose owner (or cached spend) an operation may change.
enum Touches<'a> {
    Nothing,
    Tasks(Vec<&'a str>),
    Every,
}

/// What `op` may have changed, given what applying it returned.
fn touched_owners<'a>(op: &'a Op, result: &'a Result<Outcome, LedgerError>) -> Touches<'a> {
    match op {
        // A create over an id the ledger already had may move it.
        Op::Complete(_, record) => Touches::Tasks(vec![record.task_id.as_str()]),
        Op::Grant(_, ids, _) | Op::Revoke(ids) => Touches::Tasks(ids.iter().map(String::as_str).collect()),
        // The cached spend of the task changes with these.
        Op::SetState(id, _) | Op::Observe(id, _) => Touches::Tasks(vec![id.as_str()]),
        // A batch's ids are known once applied; one that failed part way may
        // have removed some.
        Op::SweepTasks(..) => match result {
            Ok(Outcome::SweptTasks(ids)) => Touches::Tasks(ids.iter().map(String::as_str).collect()),
            _ => Touches::Every,
        },
        Op::Begin(_) | Op::Abandon(..) | Op::SweepRest(..) => Touches::Nothing,
    }
}

/// After a commit (or a failed one: forgetting too much is harmless), and
/// before anyone is answered: the owners the group may have changed.
fn forget_touched(owners: &OwnerCache, group: &[WriteRequest], results: &[Result<Outcome, LedgerError>]) {
    let mut ids = Vec::new();
    for (request, result) in group.iter().zip(results) {
        match touched_owners(&request.op, result) {
            Touches::Nothing => {}
            Touches::Tasks(touched) => ids.extend(touched),
            Touches::Every => return owners.forget_all(),
        }
    }
    if !ids.is_empty() {
        owners.forget(ids);
    }
}

/// Applies a group in one transaction and answers each request only after the
/// commit (and, with `Durability::Immediate`, its fsync) succeeded.
fn commit_group(db: &Database, owners: &OwnerCache, group: &mut Vec<WriteRequest>, durability: Durability) {
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            let e = unavailable(e);
            tracing::error!(error = %e, "ledger write failed");
            for request in group.drain(..) {
                let _ = request.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    txn.set_durability(durability);
    let mut results = Vec::with_capacity(group.len());
    for request in group.iter() {
        results.push(apply(&txn, &request.op));
    }
    let committed = txn.commit();
    forget_touched(owners, group, &results);
    match committed {
        Ok(()) => {
            for (request, result) in group.drain(..).zip(results) {
                let _ = request.reply.send(result);
            }
        }
        Err(e) => {
            let e = unavailable(e);
            tracing::error!(error = %e, "ledger commit failed; the ledger fails closed");
            for request in group.drain(..) {
                let _ = request.reply.send(Err(e.clone()));
            }
        }
    }
}

/// A tenant's tasks created since `since_ms`, newest first, deleted ones left out.
fn owned_since(db: &Database, tenant: &str, since_ms: u64) -> Result<Vec<OwnedTask>, LedgerError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let index = txn.open_table(BY_TENANT).map_err(unavailable)?;
    // '~' sorts after every task-id character, so this covers all ids.
    let range = index
        .range((tenant, since_ms, "")..=(tenant, u64::MAX, "~"))
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in range.rev() {
        let (k, v) = entry.map_err(unavailable)?;
        let (_, created_ms, task_id) = k.value();
        let (state, model, status) = decode_index(v.value());
        if state != TaskState::Deleted {
            out.push(OwnedTask {
                task_id: task_id.to_string(),
                model,
                created_ms,
                status,
            });
        }
    }
    Ok(out)
}

/// One page of [`owned_since`] and its total, reading the list counts, the
/// window's oldest hour and the page's own hours: the cost follows the page
/// number, not the tenant's task count.
fn owned_page(db: &Database, tenant: &str, since_ms: u64, start: usize, size: usize) -> Result<OwnedPage, LedgerError> {
    use std::ops::Bound;
    let txn = db.begin_read().map_err(unavailable)?;
    let index = txn.open_table(BY_TENANT).map_err(unavailable)?;
    let counts = txn.open_table(LIST_COUNTS).map_err(unavailable)?;
    let listed = |v: &[u8]| decode_index(v).0 != TaskState::Deleted;
    // Whole hours after the window's first one are counted; that first
    // hour's tasks from `since_ms` on are read.
    let first_full_hour = since_ms / HOUR_MS + 1;
    let mut hours = Vec::new();
    for entry in counts
        .range((tenant, first_full_hour)..=(tenant, u64::MAX))
        .map_err(unavailable)?
    {
        let (k, v) = entry.map_err(unavailable)?;
        hours.push((k.value().1, v.value() as usize));
    }
    let mut total = hours.iter().map(|(_, n)| n).sum::<usize>();
    for entry in index
        .range((tenant, since_ms, "")..(tenant, first_full_hour * HOUR_MS, ""))
        .map_err(unavailable)?
    {
        let (_, v) = entry.map_err(unavailable)?;
        total += usize::from(listed(v.value()));
    }
    // Skip the newest hours the page starts after.
    let mut skip = start;
    let mut upper = Bound::Included((tenant, u64::MAX, "~"));
    for (hour, n) in hours.iter().rev() {
        if skip < *n {
            break;
        }
        skip -= n;
        upper = Bound::Excluded((tenant, hour * HOUR_MS, ""));
    }
    let mut tasks = Vec::with_capacity(size.min(total.saturating_sub(start)));
    if size > 0 && start < total {
        let range = index
            .range::<(&str, u64, &str)>((Bound::Included((tenant, since_ms, "")), upper))
            .map_err(unavailable)?;
        for entry in range.rev() {
            let (k, v) = entry.map_err(unavailable)?;
            if !listed(v.value()) {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let (_, created_ms, task_id) = k.value();
            let (_, model, status) = decode_index(v.value());
            tasks.push(OwnedTask {
                task_id: task_id.to_string(),
                model,
                created_ms,
                status,
            });
            if tasks.len() == size {
                break;
            }
        }
    }
    Ok(OwnedPage { total, tasks })
}

/// The mirror's statuses in the index, by their place in [`ArkStatus::ALL`] (0: unknown).
const STATUSES: [ArkStatus; 6] = ArkStatus::ALL;
/// Set in the first byte of an index value that carries a status byte
/// (values written before the mirror have none).
const WITH_STATUS: u8 = 0x80;

fn index_value(state: TaskState, model: Option<&str>, status: Option<ArkStatus>) -> Vec<u8> {
    let state = match state {
        TaskState::Active => 0,
        TaskState::Cancelled => 1,
        TaskState::Deleted => 2,
    };
    let status = status
        .and_then(|s| STATUSES.iter().position(|k| *k == s))
        .map_or(0, |i| i as u8 + 1);
    let mut v = vec![state | WITH_STATUS, status, u8::from(model.is_some())];
    v.extend_from_slice(model.unwrap_or("").as_bytes());
    v
}

fn decode_index(v: &[u8]) -> (TaskState, Option<String>, Option<ArkStatus>) {
    let first = v.first().copied().unwrap_or(0);
    let state = match first & !WITH_STATUS {
        1 => TaskState::Cancelled,
        2 => TaskState::Deleted,
        _ => TaskState::Active,
    };
    let (status, rest) = match first & WITH_STATUS {
        0 => (None, v.get(1..).unwrap_or(&[])),
        _ => (
            v.get(1)
                .and_then(|s| s.checked_sub(1))
                .and_then(|i| STATUSES.get(i as usize).copied()),
            v.get(2..).unwrap_or(&[]),
        ),
    };
    let model = (rest.first() == Some(&1)).then(|| String::from_utf8_lossy(&rest[1..]).into_owned());
    (state, model, status)
}

fn put_task(txn: &WriteTransaction, record: &TaskRecord) -> Result<(), LedgerError> {
    let mut tasks = txn.open_table(TASKS).map_err(unavailable)?;
    let mut index = txn.open_table(BY_TENANT).map_err(unavailable)?;
    let mut by_created = txn.open_table(BY_CREATED).map_err(unavailable)?;
    let old = tasks
        .get(record.task_id.as_str())
        .map_err(unavailable)?
        .and_then(|old| serde_json::from_slice::<TaskRecord>(old.value()).ok());
    if let Some(old) = &old {
        // A re-grant may move the task to another tenant: drop the old index entries.
        drop(index.remove((old.tenant.as_str(), old.created_ms, old.task_id.as_str())));
        drop(by_created.remove((old.created_ms, old.task_id.as_str())));
        count_listing(txn, old, false)?;
    }
    count_listing(txn, record, true)?;
    by_created
        .insert((record.created_ms, record.task_id.as_str()), ())
        .map_err(unavailable)?;
    let json = serde_json::to_vec(record).expect("records serialize");
    tasks
        .insert(record.task_id.as_str(), json.as_slice())
        .map_err(unavailable)?;
    index
        .insert(
            (record.tenant.as_str(), record.created_ms, record.task_id.as_str()),
            index_value(record.state, record.model.as_deref(), record.spend.status).as_slice(),
        )
        .map_err(unavailable)?;
    Ok(())
}

/// A record as the write transaction sees it.
fn read_task(txn: &WriteTransaction, task_id: &str) -> Result<Option<TaskRecord>, LedgerError> {
    let tasks = txn.open_table(TASKS).map_err(unavailable)?;
    let value = tasks.get(task_id).map_err(unavailable)?;
    Ok(value.and_then(|v| serde_json::from_slice::<TaskRecord>(v.value()).ok()))
}

fn remove_task(txn: &WriteTransaction, task_id: &str) -> Result<bool, LedgerError> {
    let old: Option<Option<TaskRecord>> = {
        let mut tasks = txn.open_table(TASKS).map_err(unavailable)?;
        let removed = tasks.remove(task_id).map_err(unavailable)?;
        removed.map(|old| serde_json::from_slice(old.value()).ok())
    };
    let Some(old) = old else {
        return Ok(false);
    };
    if let Some(old) = old {
        let mut index = txn.open_table(BY_TENANT).map_err(unavailable)?;
        index
            .remove((old.tenant.as_str(), old.created_ms, old.task_id.as_str()))
            .map_err(unavailable)?;
        let mut by_created = txn.open_table(BY_CREATED).map_err(unavailable)?;
        by_created
            .remove((old.created_ms, old.task_id.as_str()))
            .map_err(unavailable)?;
        count_listing(txn, &old, false)?;
    }
    Ok(true)
}

fn apply(txn: &WriteTransaction, op: &Op) -> Result<Outcome, LedgerError> {
    match op {
        Op::Begin(intent) => {
            if let Some(key) = &intent.idempotency_key {
                let keys = txn.open_table(KEYS).map_err(unavailable)?;
                let existing = keys
                    .get((intent.tenant.as_str(), key.as_str()))
                    .map_err(unavailable)?
                    .and_then(|v| serde_json::from_slice::<KeyEntry>(v.value()).ok());
                let window_start = intent.at_ms.saturating_sub(IDEMPOTENCY_WINDOW.as_millis() as u64);
                if let Some(entry) = existing.filter(|e| e.at_ms >= window_start) {
                    return Ok(Outcome::Begin(match (entry.status, entry.task_id) {
                        (KeyStatus::Done, Some(task_id)) => BeginOutcome::Replay { task_id },
                        _ => BeginOutcome::Conflict,
                    }));
                }
            }
            if let Some(admission) = &intent.admission {
                if let Some(refusal) = spend::admit(txn, &intent.tenant, admission)? {
                    return Ok(Outcome::Begin(BeginOutcome::Refused(refusal)));
                }
            }
            if let Some(key) = &intent.idempotency_key {
                let mut keys = txn.open_table(KEYS).map_err(unavailable)?;
                put_key(&mut keys, intent, key, KeyStatus::Pending, None)?;
            }
            let mut intents = txn.open_table(INTENTS).map_err(unavailable)?;
            let entry = IntentEntry {
                tenant: intent.tenant.clone(),
                idempotency_key: intent.idempotency_key.clone(),
                at_ms: intent.at_ms,
                held: intent.admission.as_ref().map(crate::spend::Hold::of),
            };
            intents
                .insert(
                    intent.intent_id.as_str(),
                    serde_json::to_vec(&entry).expect("serializes").as_slice(),
                )
                .map_err(unavailable)?;
            Ok(Outcome::Begin(BeginOutcome::Begun))
        }
        Op::Complete(intent, record) => {
            put_task(txn, record)?;
            spend::created(txn, record)?;
            // The task takes over the intent's slot and reservation.
            close_intent(txn, &intent.intent_id, false)?;
            settle(txn, intent, KeyStatus::Done, Some(record.task_id.clone()))?;
            Ok(Outcome::Unit)
        }
        Op::Abandon(intent, fate) => {
            // Nothing owned was created (or it cannot be found): give the slot back.
            close_intent(txn, &intent.intent_id, true)?;
            let status = match fate {
                CreateFate::Failed => None,
                CreateFate::Unknown => Some(KeyStatus::Unknown),
            };
            match status {
                Some(status) => settle(txn, intent, status, None)?,
                None => {
                    if let Some(key) = &intent.idempotency_key {
                        let mut keys = txn.open_table(KEYS).map_err(unavailable)?;
                        keys.remove((intent.tenant.as_str(), key.as_str()))
                            .map_err(unavailable)?;
                    }
                    let mut intents = txn.open_table(INTENTS).map_err(unavailable)?;
                    intents.remove(intent.intent_id.as_str()).map_err(unavailable)?;
                }
            }
            Ok(Outcome::Unit)
        }
        Op::Observe(task_id, observation) => {
            let Some(mut record) = read_task(txn, task_id)? else {
                return Ok(Outcome::Settled(None));
            };
            match spend::apply_observation(txn, &mut record, *observation)? {
                None => Ok(Outcome::Settled(None)),
                Some(settled) => {
                    put_task(txn, &record)?;
                    Ok(Outcome::Settled(settled))
                }
            }
        }
        Op::SetState(task_id, state) => {
            if let Some(mut record) = read_task(txn, task_id)? {
                record.state = *state;
                put_task(txn, &record)?;
            }
            Ok(Outcome::Unit)
        }
        Op::Grant(tenant, ids, at_ms) => {
            for id in ids {
                let record = match read_task(txn, id)? {
                    Some(mut r) => {
                        r.tenant = tenant.clone();
                        r
                    }
                    None => TaskRecord {
                        task_id: id.to_string(),
                        tenant: tenant.clone(),
                        model: None,
                        created_ms: *at_ms,
                        client_request_id: None,
                        state: TaskState::Active,
                        source: TaskSource::Granted,
                        spend: Default::default(),
                    },
                };
                put_task(txn, &record)?;
                let mut open = txn.open_table(spend::OPEN).map_err(unavailable)?;
                if !record.spend.settled {
                    open.insert(record.task_id.as_str(), record.created_ms)
                        .map_err(unavailable)?;
                }
            }
            Ok(Outcome::Count(ids.len()))
        }
        Op::Revoke(ids) => {
            let mut removed = 0;
            for id in ids {
                expire_unsettled(txn, id)?;
                removed += usize::from(remove_task(txn, id)?);
            }
            Ok(Outcome::Count(removed))
        }
        Op::SweepTasks(before_ms) => {
            let old: Vec<(u64, String)> = {
                let index = txn.open_table(BY_CREATED).map_err(unavailable)?;
                let range = index.range((0, "")..(*before_ms, "")).map_err(unavailable)?;
                let mut old = Vec::with_capacity(SWEEP_BATCH);
                for entry in range.take(SWEEP_BATCH) {
                    let (key, _) = entry.map_err(unavailable)?;
                    let (created, id) = key.value();
                    old.push((created, id.to_string()));
                }
                old
            };
            for (created, id) in &old {
                expire_unsettled(txn, id)?;
                if !remove_task(txn, id)? {
                    // An index entry without its record: drop it alone.
                    let mut by_created = txn.open_table(BY_CREATED).map_err(unavailable)?;
                    by_created.remove((*created, id.as_str())).map_err(unavailable)?;
                }
            }
            Ok(Outcome::SweptTasks(old.into_iter().map(|(_, id)| id).collect()))
        }
        Op::SweepRest(before) => {
            let keys_before = &before.keys_ms;
            let mut report = SweepReport {
                usage_days: spend::sweep_usage(txn, &crate::spend::day_of(before.usage_ms))?,
                ..SweepReport::default()
            };
            let mut keys = txn.open_table(KEYS).map_err(unavailable)?;
            let before = keys.len().map_err(unavailable)?;
            keys.retain(|_, v| {
                serde_json::from_slice::<KeyEntry>(v)
                    .map(|e| e.at_ms >= *keys_before)
                    .unwrap_or(false)
            })
            .map_err(unavailable)?;
            report.idempotency_keys = (before - keys.len().map_err(unavailable)?) as usize;
            let mut intents = txn.open_table(INTENTS).map_err(unavailable)?;
            let before = intents.len().map_err(unavailable)?;
            intents
                .retain(|_, v| {
                    serde_json::from_slice::<IntentEntry>(v)
                        .map(|e| e.at_ms >= *keys_before)
                        .unwrap_or(false)
                })
                .map_err(unavailable)?;
            report.intents = (before - intents.len().map_err(unavailable)?) as usize;
            Ok(Outcome::Swept(report))
        }
    }
}

/// A task leaving the ledger before it was seen to end is settled as expired,
/// so its slot and reservation do not outlive it.
fn expire_unsettled(txn: &WriteTransaction, task_id: &str) -> Result<(), LedgerError> {
    if let Some(mut record) = read_task(txn, task_id)? {
        if !record.spend.settled && record.source == TaskSource::Created {
            spend::apply_observation(txn, &mut record, crate::spend::Observation::Gone)?;
        }
        let mut open = txn.open_table(spend::OPEN).map_err(unavailable)?;
        open.remove(task_id).map_err(unavailable)?;
    }
    Ok(())
}

/// Records where an intent's `Idempotency-Key` stands.
fn put_key(
    keys: &mut redb::Table<(&str, &str), &[u8]>,
    intent: &CreateIntent,
    key: &str,
    status: KeyStatus,
    task_id: Option<String>,
) -> Result<(), LedgerError> {
    let entry = KeyEntry {
        status,
        task_id,
        at_ms: intent.at_ms,
    };
    keys.insert(
        (intent.tenant.as_str(), key),
        serde_json::to_vec(&entry).expect("serializes").as_slice(),
    )
    .map_err(unavailable)?;
    Ok(())
}

/// Closes an intent and records the key's result.
fn settle(
    txn: &WriteTransaction,
    intent: &CreateIntent,
    status: KeyStatus,
    task_id: Option<String>,
) -> Result<(), LedgerError> {
    if let Some(key) = &intent.idempotency_key {
        let mut keys = txn.open_table(KEYS).map_err(unavailable)?;
        put_key(&mut keys, intent, key, status, task_id)?;
    }
    let mut intents = txn.open_table(INTENTS).map_err(unavailable)?;
    intents.remove(intent.intent_id.as_str()).map_err(unavailable)?;
    Ok(())
}

fn expect_unit(outcome: Outcome) -> Result<(), LedgerError> {
    match outcome {
        Outcome::Unit => Ok(()),
        _ => Err(unavailable("unexpected ledger outcome")),
    }
}

fn expect_count(outcome: Outcome) -> Result<usize, LedgerError> {
    match outcome {
        Outcome::Count(n) => Ok(n),
        _ => Err(unavailable("unexpected ledger outcome")),
    }
}

impl Ledger for RedbLedger {
    fn begin_create(&self, intent: CreateIntent) -> LedgerFuture<'_, BeginOutcome> {
        Box::pin(async move {
            match self.write(Op::Begin(intent)).await? {
                Outcome::Begin(outcome) => Ok(outcome),
                _ => Err(unavailable("unexpected ledger outcome")),
            }
        })
    }

    fn complete_create(&self, intent: CreateIntent, record: TaskRecord) -> LedgerFuture<'_, ()> {
        Box::pin(async move { expect_unit(self.write(Op::Complete(intent, record)).await?) })
    }

    fn abandon_create(&self, intent: CreateIntent, fate: CreateFate) -> LedgerFuture<'_, ()> {
        Box::pin(async move { expect_unit(self.write(Op::Abandon(intent, fate)).await?) })
    }

    fn owner_of<'a>(&'a self, task_id: &'a str) -> LedgerFuture<'a, Option<TaskRecord>> {
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let tasks = txn.open_table(TASKS).map_err(unavailable)?;
            let value = tasks.get(task_id).map_err(unavailable)?;
            Ok(value.and_then(|v| serde_json::from_slice::<TaskRecord>(v.value()).ok()))
        })();
        Box::pin(std::future::ready(result))
    }

    fn owner_check<'a>(&'a self, task_id: &'a str, tenant: &'a str) -> LedgerFuture<'a, Ownership> {
        if let Some(known) = self.owners.check(task_id, tenant) {
            return Box::pin(std::future::ready(Ok(known)));
        }
        let read_under = self.owners.generation();
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let tasks = txn.open_table(TASKS).map_err(unavailable)?;
            let value = tasks.get(task_id).map_err(unavailable)?;
            let Some(value) = value else { return Ok(Ownership::NONE) };
            let Ok(record) = serde_json::from_slice::<OwnerAndSpend>(value.value()) else {
                return Ok(Ownership::NONE);
            };
            let owns = record.tenant == tenant;
            self.owners
                .remember_spend(read_under, task_id, &record.tenant, record.spend.clone());
            Ok(Ownership {
                owns,
                spend: owns.then_some(record.spend),
            })
        })();
        Box::pin(std::future::ready(result))
    }

    fn set_state<'a>(&'a self, task_id: &'a str, state: TaskState) -> LedgerFuture<'a, ()> {
        Box::pin(async move { expect_unit(self.write(Op::SetState(task_id.to_string(), state)).await?) })
    }

    fn owned_tasks<'a>(&'a self, tenant: &'a str, since_ms: u64) -> LedgerFuture<'a, Vec<OwnedTask>> {
        let (db, tenant) = (self.db.clone(), tenant.to_string());
        // A tenant with a million tasks makes this a read of about half a
        // second (bench/scale.sh): off the worker thread, so that the other
        // connections it serves do not wait behind it.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || owned_since(&db, &tenant, since_ms))
                .await
                .map_err(unavailable)?
        })
    }

    fn owned_page<'a>(
        &'a self,
        tenant: &'a str,
        since_ms: u64,
        start: usize,
        size: usize,
    ) -> LedgerFuture<'a, Option<OwnedPage>> {
        let (db, tenant) = (self.db.clone(), tenant.to_string());
        // A deep page still reads its own hours: off the worker thread, as lists are.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || owned_page(&db, &tenant, since_ms, start, size).map(Some))
                .await
                .map_err(unavailable)?
        })
    }

    fn all_tasks<'a>(&'a self, tenant: Option<&'a str>) -> LedgerFuture<'a, Vec<TaskRecord>> {
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let tasks = txn.open_table(TASKS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in tasks.iter().map_err(unavailable)? {
                let (_, v) = entry.map_err(unavailable)?;
                if let Ok(record) = serde_json::from_slice::<TaskRecord>(v.value()) {
                    if tenant.is_none_or(|t| t == record.tenant) {
                        out.push(record);
                    }
                }
            }
            out.sort_by(|a, b| (&a.tenant, a.created_ms, &a.task_id).cmp(&(&b.tenant, b.created_ms, &b.task_id)));
            Ok(out)
        })();
        Box::pin(std::future::ready(result))
    }

    fn grant<'a>(&'a self, tenant: &'a str, task_ids: &'a [String], at_ms: u64) -> LedgerFuture<'a, usize> {
        Box::pin(async move {
            expect_count(
                self.write(Op::Grant(tenant.to_string(), task_ids.to_vec(), at_ms))
                    .await?,
            )
        })
    }

    fn revoke<'a>(&'a self, task_ids: &'a [String]) -> LedgerFuture<'a, usize> {
        Box::pin(async move { expect_count(self.write(Op::Revoke(task_ids.to_vec())).await?) })
    }

    fn sweep(&self, before: SweepBefore) -> LedgerFuture<'_, SweepReport> {
        Box::pin(async move {
            // Expired tasks in bounded batches, each its own transaction, so
            // creates queued meanwhile commit between them.
            let (mut tasks, mut batches) = (0, 0);
            loop {
                let started = std::time::Instant::now();
                let n = match self.write(Op::SweepTasks(before.tasks_ms)).await? {
                    Outcome::SweptTasks(ids) => ids.len(),
                    _ => return Err(unavailable("unexpected ledger outcome")),
                };
                batches += 1;
                tasks += n;
                if n < SWEEP_BATCH {
                    break;
                }
                tokio::time::sleep(started.elapsed() * SWEEP_PAUSE_FACTOR).await;
            }
            match self.write(Op::SweepRest(before)).await? {
                Outcome::Swept(report) => Ok(SweepReport {
                    tasks,
                    batches,
                    ..report
                }),
                _ => Err(unavailable("unexpected ledger outcome")),
            }
        })
    }

    fn observe<'a>(
        &'a self,
        task_id: &'a str,
        observation: crate::spend::Observation,
    ) -> LedgerFuture<'a, Option<crate::spend::Settlement>> {
        // Most answers repeat what the mirror knows: a read (which never waits
        // for the writer) decides whether there is anything to write.
        // Most answers repeat what the mirror knows: the spend kept with the
        // owner, or else a read (which never waits for the writer), decides
        // whether there is anything to write.
        let changes = match self.owners.spend(task_id) {
            Some(spend) => Ok(crate::spend::changes(&spend, observation)),
            None => (|| {
                let read_under = self.owners.generation();
                let txn = self.db.begin_read().map_err(unavailable)?;
                let tasks = txn.open_table(TASKS).map_err(unavailable)?;
                let Some(value) = tasks.get(task_id).map_err(unavailable)? else {
                    return Ok(false);
                };
                let Ok(record) = serde_json::from_slice::<OwnerAndSpend>(value.value()) else {
                    return Ok(false);
                };
                let changes = crate::spend::changes(&record.spend, observation);
                self.owners
                    .remember_spend(read_under, task_id, &record.tenant, record.spend);
                Ok::<_, LedgerError>(changes)
            })(),
        };
        Box::pin(async move {
            if !changes? {
                return Ok(None);
            }
            match self.write(Op::Observe(task_id.to_string(), observation)).await? {
                Outcome::Settled(settled) => Ok(settled),
                _ => Err(unavailable("unexpected ledger outcome")),
            }
        })
    }

    fn open_tasks(&self, limit: usize) -> LedgerFuture<'_, Vec<String>> {
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let open = txn.open_table(spend::OPEN).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in open.iter().map_err(unavailable)?.take(limit) {
                out.push(entry.map_err(unavailable)?.0.value().to_string());
            }
            Ok(out)
        })();
        Box::pin(std::future::ready(result))
    }

    fn tenant_counts<'a>(&'a self, tenant: &'a str, now_ms: u64) -> LedgerFuture<'a, crate::spend::TenantCounts> {
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let active = txn.open_table(spend::ACTIVE).map_err(unavailable)?;
            let windows = txn.open_table(spend::WINDOWS).map_err(unavailable)?;
            let totals = |period: &str| -> Result<crate::spend::WindowTotals, LedgerError> {
                Ok(windows
                    .get((tenant, period))
                    .map_err(unavailable)?
                    .and_then(|v| serde_json::from_slice(v.value()).ok())
                    .unwrap_or_default())
            };
            Ok(crate::spend::TenantCounts {
                active: active.get(tenant).map_err(unavailable)?.map_or(0, |v| v.value()),
                day: totals(&crate::spend::day_of(now_ms))?,
                month: totals(&crate::spend::month_of(now_ms))?,
            })
        })();
        Box::pin(std::future::ready(result))
    }

    fn account_active(&self) -> LedgerFuture<'_, u64> {
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let active = txn.open_table(spend::ACTIVE).map_err(unavailable)?;
            Ok(active.get("").map_err(unavailable)?.map_or(0, |v| v.value()))
        })();
        Box::pin(std::future::ready(result))
    }

    fn usage_rows<'a>(
        &'a self,
        tenant: Option<&'a str>,
        from: crate::spend::Day,
        to: crate::spend::Day,
    ) -> LedgerFuture<'a, Vec<crate::spend::UsageRow>> {
        let result = (|| {
            let txn = self.db.begin_read().map_err(unavailable)?;
            let usage = txn.open_table(spend::USAGE).map_err(unavailable)?;
            let (from, to) = (from.label(), to.label());
            let mut out = Vec::new();
            for entry in usage.iter().map_err(unavailable)? {
                let (k, v) = entry.map_err(unavailable)?;
                let (t, day, model) = k.value();
                if tenant.is_some_and(|want| want != t) || day < from.as_str() || day > to.as_str() {
                    continue;
                }
                if let Ok(counts) = serde_json::from_slice(v.value()) {
                    out.push(crate::spend::UsageRow {
                        tenant: t.to_string(),
                        model: model.to_string(),
                        day: day.to_string(),
                        counts,
                    });
                }
            }
            Ok(out)
        })();
        Box::pin(std::future::ready(result))
    }

    fn task_count(&self) -> Result<u64, LedgerError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let tasks = txn.open_table(TASKS).map_err(unavailable)?;
        tasks.len().map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(task: u8, tenant: u8, created_ms: u64, state: TaskState) -> TaskRecord {
        TaskRecord {
            task_id: format!("cgt-{task:03}"),
            tenant: format!("t{tenant}"),
            model: (task % 2 == 0).then(|| "m".to_string()),
            created_ms,
            client_request_id: None,
            state,
            source: TaskSource::Created,
            spend: Default::default(),
        }
    }

    fn counts(db: &Database) -> Vec<((String, u64), u64)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(LIST_COUNTS).unwrap();
        let rows = table.iter().unwrap().map(|e| {
            let (k, v) = e.unwrap();
            let (tenant, hour) = k.value();
            ((tenant.to_string(), hour), v.value())
        });
        rows.collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any mix of creates, state changes, moves between tenants and
        /// removals: every page and total read through the counts is the
        /// slice of the whole list, and the counts kept by the writes are
        /// the counts built from scratch.
        #[test]
        fn pages_read_through_the_counts_are_slices_of_the_whole_list(
            ops in proptest::collection::vec((0u8..30, 0u8..3, 0u64..(8 * HOUR_MS), 0u8..5), 1..120),
            since in 0u64..(8 * HOUR_MS),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
            let db = ledger.db.clone();
            let txn = db.begin_write().unwrap();
            for (task, tenant, created_ms, action) in ops {
                let state = match action {
                    0 => TaskState::Active,
                    1 => TaskState::Cancelled,
                    2 => TaskState::Deleted,
                    3 => {
                        remove_task(&txn, &format!("cgt-{task:03}")).unwrap();
                        continue;
                    }
                    // A state change keeps the tenant and creation time.
                    _ => match read_task(&txn, &format!("cgt-{task:03}")).unwrap() {
                        Some(mut old) => {
                            old.state = TaskState::Deleted;
                            put_task(&txn, &old).unwrap();
                            continue;
                        }
                        None => TaskState::Active,
                    },
                };
                put_task(&txn, &record(task, tenant, created_ms, state)).unwrap();
            }
            txn.commit().unwrap();
            for tenant in ["t0", "t1", "t2", "t9"] {
                for since_ms in [0, since] {
                    let whole = owned_since(&db, tenant, since_ms).unwrap();
                    for start in 0..=whole.len() + 1 {
                        for size in [0, 1, 3, 50] {
                            let page = owned_page(&db, tenant, since_ms, start, size).unwrap();
                            prop_assert_eq!(page.total, whole.len());
                            let want: Vec<_> = whole.iter().skip(start).take(size).cloned().collect();
                            prop_assert_eq!(page.tasks, want, "{} since {} start {} size {}", tenant, since_ms, start, size);
                        }
                    }
                }
            }
            let kept = counts(&db);
            let txn = db.begin_write().unwrap();
            txn.open_table(spend::META).unwrap().remove("list_counts").unwrap();
            count_listed(&txn).unwrap();
            txn.commit().unwrap();
            prop_assert_eq!(kept, counts(&db));
        }
    }

    #[test]
    fn index_values_carry_the_status_and_read_the_older_layout() {
        for status in [None, Some(ArkStatus::Queued), Some(ArkStatus::Expired)] {
            for model in [None, Some("m-1")] {
                let v = index_value(TaskState::Cancelled, model, status);
                assert_eq!(
                    decode_index(&v),
                    (TaskState::Cancelled, model.map(str::to_string), status)
                );
            }
        }
        // Written before the mirror: [state, has_model, model…].
        assert_eq!(
            decode_index(&[2, 1, b'm']),
            (TaskState::Deleted, Some("m".to_string()), None)
        );
        assert_eq!(decode_index(&[0, 0]), (TaskState::Active, None, None));
    }
}
