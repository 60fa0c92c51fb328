//! The ledger on Redis, for several gateway replicas sharing one Ark key.
//!
//! Keys (under the configured prefix):
//! - `task:{id}`: the [`TaskRecord`] as JSON, expiring after the retention;
//! - `tenant:{name}`: a sorted set of the tenant's task ids scored by creation
//!   time, the index that gives list pages (trimmed by the sweep);
//! - `idem:{tenant}:{key}`: an Idempotency-Key's state, expiring after 24 h;
//! - `intent:{request id}`: a create in flight, expiring after 24 h.
//!
//! Durability is Redis's: run it with `appendonly yes` (docs/operations.md).

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;

use super::spend::{self as counts, Ops};
use super::tracking::{self, TrackedOwners, Tracker};
use super::{Redis, RedisDown};
use crate::ledger::*;
use crate::spend::Hold;
use crate::spend::{
    day_of, month_of, transition, Day, Observation, Settlement, TenantCounts, UsageCounts, UsageRow, WindowTotals,
};

pub struct RedisLedger {
    redis: Arc<Redis>,
    retention: Duration,
    usage_retention: Duration,
    admit: redis::Script,
    /// Records from before the mirror were adopted (checked once per process).
    adopted: std::sync::atomic::AtomicBool,
    /// Owners kept between checks (`with_owner_cache`), and the task that
    /// keeps them true.
    owners: Option<(Arc<TrackedOwners>, Tracker)>,
}

fn unavailable(e: RedisDown) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

impl RedisLedger {
    pub fn new(redis: Arc<Redis>, retention: Duration) -> Self {
        Self {
            redis,
            retention,
            usage_retention: Duration::from_secs(400 * 86_400),
            admit: redis::Script::new(counts::ADMIT),
            adopted: std::sync::atomic::AtomicBool::new(false),
            owners: None,
        }
    }

    /// Keeps owners between checks, invalidated by Redis for every replica's
    /// writes (see `tracking`). Needs a runtime; without one, nothing changes.
    pub fn with_owner_cache(mut self) -> Self {
        let owners = Arc::new(TrackedOwners::new(self.task_key("")));
        if let Some(tracker) = tracking::spawn(self.redis.client(), owners.clone()) {
            self.owners = Some((owners, tracker));
        }
        self
    }

    /// Waits until this replica's owner cache reflects every change any
    /// replica made before the call (at once without a cache). Tracking
    /// bounds this anyway (`tracking::STALE_AFTER`); this is for when a
    /// caller must know.
    pub async fn owners_confirmed(&self) {
        if let Some((owners, _)) = &self.owners {
            owners.confirmed_since(std::time::Instant::now()).await;
        }
    }

    /// After this replica's own write to a task's record.
    fn forget(&self, task_id: &str) {
        if let Some((owners, _)) = &self.owners {
            owners.forget(task_id);
        }
    }

    /// How long usage aggregates live (`store.usage_retention`).
    pub fn with_usage_retention(mut self, usage_retention: Duration) -> Self {
        self.usage_retention = usage_retention;
        self
    }

    fn usage_key(&self, tenant: &str, day: &str) -> String {
        self.redis.key(&format!("usage:{tenant}:{day}"))
    }

    fn window_key(&self, tenant: &str, period: &str) -> String {
        self.redis.key(&format!("win:{tenant}:{period}"))
    }

    fn active_key(&self, tenant: &str) -> String {
        self.redis.key(&format!("active:{tenant}"))
    }

    /// The commands that close an intent: its hold given back, or taken over by its task.
    fn close_intent(&self, pipe: &mut redis::Pipeline, intent_id: &str, take_over: bool) {
        pipe.cmd("EVAL")
            .arg(counts::CLOSE_INTENT)
            .arg(0)
            .arg(self.redis.key(""))
            .arg(intent_id)
            .arg(if take_over { "1" } else { "0" })
            .ignore();
    }

    async fn totals(&self, tenant: &str, period: &str) -> Result<WindowTotals, LedgerError> {
        let mut conn = self.redis.conn();
        let v: Vec<Option<u64>> = self
            .redis
            .observe(
                redis::cmd("HMGET")
                    .arg(self.window_key(tenant, period))
                    .arg(&["ut", "rt", "uc", "rc"])
                    .query_async(&mut conn)
                    .await,
            )
            .map_err(unavailable)?;
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(WindowTotals {
            used_tokens: at(0),
            reserved_tokens: at(1),
            used_cost_micros: at(2),
            reserved_cost_micros: at(3),
        })
    }

    /// Once per store (a marker key): tasks recorded before the mirror
    /// existed join the open set, so the reconciler asks Ark about them.
    async fn adopt_unmirrored(&self) -> Result<(), LedgerError> {
        if self.adopted.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut conn = self.redis.conn();
        let marker: Option<String> = self
            .redis
            .observe(conn.get(self.redis.key("mirror")).await)
            .map_err(unavailable)?;
        if marker.is_none() {
            let strip = self.redis.key("task:");
            let ids: Vec<String> = self
                .scan("task:*")
                .await?
                .into_iter()
                .filter_map(|k| k.strip_prefix(&strip).map(str::to_string))
                .collect();
            for chunk in ids.chunks(500) {
                let records = self.records(chunk).await?;
                let unmirrored: Vec<&str> = records
                    .iter()
                    .filter(|r| r.spend.status.is_none() && !r.spend.settled && r.state == TaskState::Active)
                    .map(|r| r.task_id.as_str())
                    .collect();
                if !unmirrored.is_empty() {
                    let mut conn = self.redis.conn();
                    self.redis
                        .observe(conn.sadd::<_, _, ()>(self.redis.key("open"), unmirrored).await)
                        .map_err(unavailable)?;
                }
            }
            let mut conn = self.redis.conn();
            self.redis
                .observe(conn.set::<_, _, ()>(self.redis.key("mirror"), "1").await)
                .map_err(unavailable)?;
        }
        self.adopted.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The counter changes of an observation's transition.
    fn transition_ops(&self, record: &TaskRecord, change: &crate::spend::Transition) -> Ops {
        let mut ops = Ops::default();
        let tenant = &record.tenant;
        if change.take_slot {
            ops.incr(self.active_key(tenant), 1);
            ops.incr(self.redis.key("account:active"), 1);
        }
        if let Some(s) = &change.settlement {
            let (day, month) = (day_of(record.created_ms), month_of(record.created_ms));
            for period in [&day, &month] {
                let key = self.window_key(tenant, period);
                ops.hincr(
                    &key,
                    "rt",
                    -(record.spend.reserved_tokens as i64),
                    counts::WINDOW_TTL_MS,
                );
                ops.hincr(
                    &key,
                    "rc",
                    -(record.spend.reserved_cost_micros as i64),
                    counts::WINDOW_TTL_MS,
                );
                ops.hincr(&key, "ut", s.tokens as i64, counts::WINDOW_TTL_MS);
                ops.hincr(&key, "uc", s.cost_micros as i64, counts::WINDOW_TTL_MS);
            }
            let usage = self.usage_key(tenant, &day);
            let ttl = self.usage_retention.as_millis() as u64;
            let add = UsageCounts::of_settlement(s);
            for (field, n) in [
                ("succeeded", add.succeeded),
                ("failed", add.failed),
                ("cancelled", add.cancelled),
                ("expired", add.expired),
                ("tokens", add.tokens),
                ("cost_micros", add.cost_micros),
                ("estimated", add.estimated),
            ] {
                if n > 0 {
                    ops.hincr(&usage, &counts::usage_field(&s.model, field), n as i64, ttl);
                }
            }
            ops.sadd(self.redis.key("usage-tenants"), tenant);
            if change.free_slot {
                ops.incr(self.active_key(tenant), -1);
                ops.incr(self.redis.key("account:active"), -1);
            }
            ops.srem(self.redis.key("open"), &record.task_id);
        }
        ops
    }

    fn task_key(&self, id: &str) -> String {
        self.redis.key(&format!("task:{id}"))
    }

    fn tenant_key(&self, tenant: &str) -> String {
        self.redis.key(&format!("tenant:{tenant}"))
    }

    fn idem_key(&self, tenant: &str, key: &str) -> String {
        self.redis.key(&format!("idem:{tenant}:{key}"))
    }

    fn intent_key(&self, id: &str) -> String {
        self.redis.key(&format!("intent:{id}"))
    }

    fn retention_ms(&self) -> u64 {
        self.retention.as_millis() as u64
    }

    fn key_ttl_ms(at_ms: u64) -> u64 {
        (at_ms + IDEMPOTENCY_WINDOW.as_millis() as u64)
            .saturating_sub(now_ms())
            .max(1)
    }

    async fn get_record(&self, id: &str) -> Result<Option<TaskRecord>, LedgerError> {
        let mut conn = self.redis.conn();
        let json: Option<String> = self
            .redis
            .observe(conn.get(self.task_key(id)).await)
            .map_err(unavailable)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn records(&self, ids: &[String]) -> Result<Vec<TaskRecord>, LedgerError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.task_key(id)).collect();
        let mut conn = self.redis.conn();
        let values: Vec<Option<String>> = self
            .redis
            .observe(redis::cmd("MGET").arg(&keys).query_async(&mut conn).await)
            .map_err(unavailable)?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }

    /// Adds the command that records an Idempotency-Key's outcome (for the
    /// rest of its 24 h window), if the create had a key.
    fn settle_key(
        &self,
        pipe: &mut redis::Pipeline,
        intent: &CreateIntent,
        status: KeyStatus,
        task_id: Option<String>,
    ) {
        let Some(key) = &intent.idempotency_key else { return };
        let entry = serde_json::to_string(&KeyEntry {
            status,
            task_id,
            at_ms: intent.at_ms,
        })
        .expect("serializes");
        pipe.cmd("SET")
            .arg(self.idem_key(&intent.tenant, key))
            .arg(entry)
            .arg("PX")
            .arg(Self::key_ttl_ms(intent.at_ms))
            .ignore();
    }

    /// Adds the commands that store a record and index it under its tenant.
    fn store_record(&self, pipe: &mut redis::Pipeline, record: &TaskRecord) {
        let json = serde_json::to_string(record).expect("records serialize");
        pipe.cmd("SET")
            .arg(self.task_key(&record.task_id))
            .arg(json)
            .arg("PX")
            .arg(self.retention_ms())
            .ignore()
            .cmd("ZADD")
            .arg(self.tenant_key(&record.tenant))
            .arg(record.created_ms)
            .arg(&record.task_id)
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.tenant_key(&record.tenant))
            .arg(self.retention_ms())
            .ignore();
    }

    async fn put_record(&self, record: &TaskRecord, previous_tenant: Option<&str>) -> Result<(), LedgerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(old) = previous_tenant.filter(|old| *old != record.tenant) {
            pipe.cmd("ZREM").arg(self.tenant_key(old)).arg(&record.task_id).ignore();
        }
        self.store_record(&mut pipe, record);
        let mut conn = self.redis.conn();
        let stored = self
            .redis
            .observe(pipe.query_async::<()>(&mut conn).await)
            .map_err(unavailable);
        self.forget(&record.task_id);
        stored
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.redis.conn();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .redis
                .observe(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(self.redis.key(pattern))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(unavailable)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

impl Ledger for RedisLedger {
    fn begin_create(&self, intent: CreateIntent) -> LedgerFuture<'_, BeginOutcome> {
        Box::pin(async move {
            let held = intent.admission.as_ref().map(Hold::of);
            let intent_json =
                serde_json::json!({"tenant": intent.tenant, "at_ms": intent.at_ms, "held": held}).to_string();
            let ttl = IDEMPOTENCY_WINDOW.as_millis() as u64;
            let pending = serde_json::to_string(&KeyEntry {
                status: KeyStatus::Pending,
                task_id: None,
                at_ms: intent.at_ms,
            })
            .expect("serializes");
            let idem = intent
                .idempotency_key
                .as_ref()
                .map_or(String::new(), |key| self.idem_key(&intent.tenant, key));
            let mut invocation = self.admit.prepare_invoke();
            invocation
                .key(idem)
                .key(self.intent_key(&intent.intent_id))
                .key(&intent.intent_id)
                .arg(self.redis.key(""))
                // The create's own clock: leases that ended before it are given back.
                .arg(intent.at_ms)
                .arg(pending)
                .arg(intent_json)
                .arg(ttl);
            let limit = |n: Option<u64>| n.map_or(-1, |n| n as i64);
            match &intent.admission {
                Some(a) => {
                    invocation
                        .arg(a.lease_until_ms)
                        .arg(&intent.tenant)
                        .arg(limit(a.tenant_max_active))
                        .arg(limit(a.account_max_active))
                        .arg(a.reserved_tokens)
                        .arg(a.reserved_cost_micros)
                        .arg(&a.day)
                        .arg(&a.month)
                        .arg(counts::WINDOW_TTL_MS);
                    for (window, value) in &a.limits {
                        invocation.arg(window.as_str()).arg(*value);
                    }
                }
                None => {
                    let day = day_of(intent.at_ms);
                    invocation
                        .arg(intent.at_ms + ttl)
                        .arg("")
                        .arg(-1)
                        .arg(-1)
                        .arg(0)
                        .arg(0)
                        .arg(&day)
                        .arg(&day[..7])
                        .arg(counts::WINDOW_TTL_MS);
                }
            }
            let mut conn = self.redis.conn();
            let answer: Vec<String> = self
                .redis
                .observe(invocation.invoke_async(&mut conn).await)
                .map_err(unavailable)?;
            Ok(match answer.first().map(String::as_str) {
                Some("refused") => BeginOutcome::Refused(counts::refusal_of(answer.get(1).map_or("", |s| s.as_str()))),
                Some("key") => match answer.get(1).and_then(|j| serde_json::from_str::<KeyEntry>(j).ok()) {
                    Some(KeyEntry {
                        status: KeyStatus::Done,
                        task_id: Some(task_id),
                        ..
                    }) => BeginOutcome::Replay { task_id },
                    _ => BeginOutcome::Conflict,
                },
                _ => BeginOutcome::Begun,
            })
        })
    }

    fn complete_create(&self, intent: CreateIntent, record: TaskRecord) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            // The task takes over the intent's slot and reservation.
            self.close_intent(&mut pipe, &intent.intent_id, true);
            self.store_record(&mut pipe, &record);
            self.settle_key(&mut pipe, &intent, KeyStatus::Done, Some(record.task_id.clone()));
            let day = day_of(record.created_ms);
            let usage = self.usage_key(&record.tenant, &day);
            pipe.cmd("HINCRBY")
                .arg(&usage)
                .arg(counts::usage_field(record.model.as_deref().unwrap_or(""), "created"))
                .arg(1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&usage)
                .arg(self.usage_retention.as_millis() as u64)
                .ignore()
                .cmd("SADD")
                .arg(self.redis.key("usage-tenants"))
                .arg(&record.tenant)
                .ignore()
                .cmd("SADD")
                .arg(self.redis.key("open"))
                .arg(&record.task_id)
                .ignore();
            let mut conn = self.redis.conn();
            let stored = self
                .redis
                .observe(pipe.query_async::<()>(&mut conn).await)
                .map_err(unavailable);
            self.forget(&record.task_id);
            stored
        })
    }

    fn abandon_create(&self, intent: CreateIntent, fate: CreateFate) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            // Nothing owned was created (or it cannot be found): give the hold back.
            self.close_intent(&mut pipe, &intent.intent_id, false);
            if let Some(key) = &intent.idempotency_key {
                match fate {
                    CreateFate::Failed => {
                        pipe.cmd("DEL").arg(self.idem_key(&intent.tenant, key)).ignore();
                    }
                    CreateFate::Unknown => self.settle_key(&mut pipe, &intent, KeyStatus::Unknown, None),
                }
            }
            let mut conn = self.redis.conn();
            self.redis
                .observe(pipe.query_async::<()>(&mut conn).await)
                .map_err(unavailable)
        })
    }

    fn owner_of<'a>(&'a self, task_id: &'a str) -> LedgerFuture<'a, Option<TaskRecord>> {
        Box::pin(self.get_record(task_id))
    }

    fn owner_check<'a>(&'a self, task_id: &'a str, tenant: &'a str) -> LedgerFuture<'a, Ownership> {
        let owners = self.owners.as_ref().map(|(owners, _)| owners);
        if let Some(known) = owners.and_then(|o| o.check(task_id, tenant, std::time::Instant::now())) {
            return Box::pin(std::future::ready(Ok(known)));
        }
        let read_under = owners.map(|o| (o, o.generation()));
        Box::pin(async move {
            let Some(record) = self.get_record(task_id).await? else {
                return Ok(Ownership::NONE);
            };
            if let Some((owners, read_under)) = read_under {
                let now = std::time::Instant::now();
                owners.remember(read_under, task_id, &record.tenant, record.spend.clone(), now);
            }
            let owns = record.tenant == tenant;
            Ok(Ownership {
                owns,
                spend: owns.then_some(record.spend),
            })
        })
    }

    fn set_state<'a>(&'a self, task_id: &'a str, state: TaskState) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let Some(mut record) = self.get_record(task_id).await? else {
                return Ok(());
            };
            record.state = state;
            let json = serde_json::to_string(&record).expect("records serialize");
            let mut conn = self.redis.conn();
            let set = redis::cmd("SET")
                .arg(self.task_key(task_id))
                .arg(json)
                .arg("KEEPTTL")
                .query_async::<()>(&mut conn)
                .await;
            let stored = self.redis.observe(set).map_err(unavailable);
            self.forget(task_id);
            stored
        })
    }

    fn owned_tasks<'a>(&'a self, tenant: &'a str, since_ms: u64) -> LedgerFuture<'a, Vec<OwnedTask>> {
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let ids: Vec<String> = self
                .redis
                .observe(
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(self.tenant_key(tenant))
                        .arg("+inf")
                        .arg(since_ms)
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(unavailable)?;
            let mut records = self.records(&ids).await?;
            records.retain(|r| r.tenant == tenant && r.state != TaskState::Deleted);
            records.sort_by(|a, b| (b.created_ms, &b.task_id).cmp(&(a.created_ms, &a.task_id)));
            Ok(records
                .into_iter()
                .map(|r| OwnedTask {
                    task_id: r.task_id,
                    model: r.model,
                    created_ms: r.created_ms,
                    status: r.spend.status,
                })
                .collect())
        })
    }

    fn all_tasks<'a>(&'a self, tenant: Option<&'a str>) -> LedgerFuture<'a, Vec<TaskRecord>> {
        Box::pin(async move {
            let ids: Vec<String> = match tenant {
                Some(t) => {
                    let mut conn = self.redis.conn();
                    self.redis
                        .observe(conn.zrange(self.tenant_key(t), 0, -1).await)
                        .map_err(unavailable)?
                }
                None => {
                    let strip = self.redis.key("task:");
                    self.scan("task:*")
                        .await?
                        .into_iter()
                        .filter_map(|k| k.strip_prefix(&strip).map(str::to_string))
                        .collect()
                }
            };
            let mut records = self.records(&ids).await?;
            records.sort_by(|a, b| (&a.tenant, a.created_ms, &a.task_id).cmp(&(&b.tenant, b.created_ms, &b.task_id)));
            Ok(records)
        })
    }

    fn grant<'a>(&'a self, tenant: &'a str, task_ids: &'a [String], at_ms: u64) -> LedgerFuture<'a, usize> {
        Box::pin(async move {
            for id in task_ids {
                let existing = self.get_record(id).await?;
                let previous = existing.as_ref().map(|r| r.tenant.clone());
                let record = match existing {
                    Some(mut r) => {
                        r.tenant = tenant.to_string();
                        r
                    }
                    None => TaskRecord {
                        task_id: id.clone(),
                        tenant: tenant.to_string(),
                        model: None,
                        created_ms: at_ms,
                        client_request_id: None,
                        state: TaskState::Active,
                        source: TaskSource::Granted,
                        spend: Default::default(),
                    },
                };
                self.put_record(&record, previous.as_deref()).await?;
            }
            Ok(task_ids.len())
        })
    }

    fn revoke<'a>(&'a self, task_ids: &'a [String]) -> LedgerFuture<'a, usize> {
        Box::pin(async move {
            let mut removed = 0;
            for id in task_ids {
                if let Some(record) = self.get_record(id).await? {
                    // Leaving the ledger before it was seen to end: settled as
                    // expired, so its slot and reservation do not outlive it.
                    if record.source == TaskSource::Created && !record.spend.settled {
                        self.observe(id, Observation::Gone).await?;
                    }
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("ZREM")
                        .arg(self.tenant_key(&record.tenant))
                        .arg(id)
                        .ignore()
                        .cmd("DEL")
                        .arg(self.task_key(id))
                        .ignore();
                    let mut conn = self.redis.conn();
                    let removal = self
                        .redis
                        .observe(pipe.query_async::<()>(&mut conn).await)
                        .map_err(unavailable);
                    self.forget(id);
                    removal?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    fn sweep(&self, before: SweepBefore) -> LedgerFuture<'_, SweepReport> {
        let tasks_before_ms = before.tasks_ms;
        Box::pin(async move {
            // Records, keys and intents expire by TTL; only the indexes need trimming.
            let mut report = SweepReport::default();
            for index in self.scan("tenant:*").await? {
                let mut conn = self.redis.conn();
                let n: usize = self
                    .redis
                    .observe(
                        redis::cmd("ZREMRANGEBYSCORE")
                            .arg(&index)
                            .arg("-inf")
                            .arg(format!("({tasks_before_ms}"))
                            .query_async(&mut conn)
                            .await,
                    )
                    .map_err(unavailable)?;
                report.tasks += n;
            }
            Ok(report)
        })
    }

    fn observe<'a>(&'a self, task_id: &'a str, observation: Observation) -> LedgerFuture<'a, Option<Settlement>> {
        Box::pin(async move {
            // A compare-and-set on the record: another replica that saw the
            // same answer first makes this one re-read and find nothing to do.
            for _ in 0..8 {
                let mut conn = self.redis.conn();
                let json: Option<String> = self
                    .redis
                    .observe(conn.get(self.task_key(task_id)).await)
                    .map_err(unavailable)?;
                let Some(json) = json else {
                    // Revoked, or past its retention: nothing left to ask Ark about.
                    let mut conn = self.redis.conn();
                    self.redis
                        .observe(conn.srem::<_, _, ()>(self.redis.key("open"), task_id).await)
                        .map_err(unavailable)?;
                    return Ok(None);
                };
                let Ok(mut record) = serde_json::from_str::<TaskRecord>(&json) else {
                    return Ok(None);
                };
                let Some(change) = transition(&record, observation) else {
                    return Ok(None);
                };
                let ops = self.transition_ops(&record, &change);
                record.spend = change.next.clone();
                let new_json = serde_json::to_string(&record).expect("records serialize");
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(counts::APPLY)
                    .arg(1)
                    .arg(self.task_key(task_id))
                    .arg(&json)
                    .arg(new_json);
                ops.add_to(&mut cmd);
                let applied = self.redis.observe(cmd.query_async::<i64>(&mut conn).await);
                self.forget(task_id);
                if applied.map_err(unavailable)? == 1 {
                    return Ok(change.settlement);
                }
            }
            Err(LedgerError::Unavailable("the task record kept changing".into()))
        })
    }

    fn open_tasks(&self, limit: usize) -> LedgerFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.adopt_unmirrored().await?;
            let mut conn = self.redis.conn();
            let ids: Vec<String> = self
                .redis
                .observe(
                    redis::cmd("SRANDMEMBER")
                        .arg(self.redis.key("open"))
                        .arg(limit)
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(unavailable)?;
            Ok(ids)
        })
    }

    fn tenant_counts<'a>(&'a self, tenant: &'a str, now_ms: u64) -> LedgerFuture<'a, TenantCounts> {
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let active: Option<i64> = self
                .redis
                .observe(conn.get(self.active_key(tenant)).await)
                .map_err(unavailable)?;
            Ok(TenantCounts {
                active: active.unwrap_or(0).max(0) as u64,
                day: self.totals(tenant, &day_of(now_ms)).await?,
                month: self.totals(tenant, &month_of(now_ms)).await?,
            })
        })
    }

    fn account_active(&self) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let active: Option<i64> = self
                .redis
                .observe(conn.get(self.redis.key("account:active")).await)
                .map_err(unavailable)?;
            Ok(active.unwrap_or(0).max(0) as u64)
        })
    }

    fn usage_rows<'a>(&'a self, tenant: Option<&'a str>, from: Day, to: Day) -> LedgerFuture<'a, Vec<UsageRow>> {
        Box::pin(async move {
            let tenants: Vec<String> = match tenant {
                Some(t) => vec![t.to_string()],
                None => {
                    let mut conn = self.redis.conn();
                    self.redis
                        .observe(conn.smembers(self.redis.key("usage-tenants")).await)
                        .map_err(unavailable)?
                }
            };
            let mut out = Vec::new();
            for tenant in tenants {
                let mut days = Vec::new();
                let mut day = from;
                while day <= to {
                    days.push(day.label());
                    day = day.next();
                }
                let mut pipe = redis::pipe();
                for label in &days {
                    pipe.cmd("HGETALL").arg(self.usage_key(&tenant, label));
                }
                let mut conn = self.redis.conn();
                let hashes: Vec<std::collections::HashMap<String, u64>> = self
                    .redis
                    .observe(pipe.query_async(&mut conn).await)
                    .map_err(unavailable)?;
                for (label, hash) in days.iter().zip(hashes) {
                    let mut by_model: std::collections::BTreeMap<String, UsageCounts> = Default::default();
                    for (field, n) in hash {
                        let Some((model, counter)) = field.rsplit_once('|') else {
                            continue;
                        };
                        let c = by_model.entry(model.to_string()).or_default();
                        match counter {
                            "created" => c.created = n,
                            "succeeded" => c.succeeded = n,
                            "failed" => c.failed = n,
                            "cancelled" => c.cancelled = n,
                            "expired" => c.expired = n,
                            "tokens" => c.tokens = n,
                            "cost_micros" => c.cost_micros = n,
                            "estimated" => c.estimated = n,
                            _ => {}
                        }
                    }
                    out.extend(by_model.into_iter().map(|(model, counts)| UsageRow {
                        tenant: tenant.clone(),
                        model,
                        day: label.clone(),
                        counts,
                    }));
                }
            }
            Ok(out)
        })
    }

    fn reconcile_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> LedgerFuture<'a, bool> {
        Box::pin(async move {
            // Take the lease if free, or extend it if this replica holds it.
            let script = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;
            let mut conn = self.redis.conn();
            let held: i64 = self
                .redis
                .observe(
                    redis::cmd("EVAL")
                        .arg(script)
                        .arg(1)
                        .arg(self.redis.key("reconcile:lease"))
                        .arg(holder)
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut conn)
                        .await,
                )
                .map_err(unavailable)?;
            Ok(held == 1)
        })
    }

    fn task_count(&self) -> Result<u64, LedgerError> {
        // Counting would need a scan; the metric is left to the redb ledger.
        Err(LedgerError::Unavailable("not counted on redis".into()))
    }

    fn check(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            if self.redis.ping().await {
                Ok(())
            } else {
                Err(LedgerError::Unavailable("redis does not answer".into()))
            }
        })
    }
}
