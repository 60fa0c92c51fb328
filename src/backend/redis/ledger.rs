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

use super::{Redis, RedisDown};
use crate::ledger::*;

/// Reserve an Idempotency-Key and record the intent, atomically; or return
/// the key's current state.
const BEGIN: &str = r#"
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return false
"#;

pub struct RedisLedger {
    redis: Arc<Redis>,
    retention: Duration,
    begin: redis::Script,
}

fn unavailable(e: RedisDown) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

impl RedisLedger {
    pub fn new(redis: Arc<Redis>, retention: Duration) -> Self {
        Self {
            redis,
            retention,
            begin: redis::Script::new(BEGIN),
        }
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
        self.redis
            .observe(pipe.query_async::<()>(&mut conn).await)
            .map_err(unavailable)
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
            let intent_json = serde_json::json!({"tenant": intent.tenant, "at_ms": intent.at_ms}).to_string();
            let ttl = IDEMPOTENCY_WINDOW.as_millis() as u64;
            let mut conn = self.redis.conn();
            let Some(key) = &intent.idempotency_key else {
                let set = redis::cmd("SET")
                    .arg(self.intent_key(&intent.intent_id))
                    .arg(intent_json)
                    .arg("PX")
                    .arg(ttl)
                    .query_async::<()>(&mut conn)
                    .await;
                self.redis.observe(set).map_err(unavailable)?;
                return Ok(BeginOutcome::Begun);
            };
            let pending = serde_json::to_string(&KeyEntry {
                status: KeyStatus::Pending,
                task_id: None,
                at_ms: intent.at_ms,
            })
            .expect("serializes");
            let existing: Option<String> = self
                .redis
                .observe(
                    self.begin
                        .key(self.idem_key(&intent.tenant, key))
                        .key(self.intent_key(&intent.intent_id))
                        .arg(pending)
                        .arg(intent_json)
                        .arg(ttl)
                        .invoke_async(&mut conn)
                        .await,
                )
                .map_err(unavailable)?;
            Ok(match existing.and_then(|j| serde_json::from_str::<KeyEntry>(&j).ok()) {
                None => BeginOutcome::Begun,
                Some(KeyEntry {
                    status: KeyStatus::Done,
                    task_id: Some(task_id),
                    ..
                }) => BeginOutcome::Replay { task_id },
                Some(_) => BeginOutcome::Conflict,
            })
        })
    }

    fn complete_create(&self, intent: CreateIntent, record: TaskRecord) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            self.store_record(&mut pipe, &record);
            pipe.cmd("DEL").arg(self.intent_key(&intent.intent_id)).ignore();
            self.settle_key(&mut pipe, &intent, KeyStatus::Done, Some(record.task_id.clone()));
            let mut conn = self.redis.conn();
            self.redis
                .observe(pipe.query_async::<()>(&mut conn).await)
                .map_err(unavailable)
        })
    }

    fn abandon_create(&self, intent: CreateIntent, fate: CreateFate) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("DEL")
                .arg(self.intent_key(&intent.intent_id))
                .ignore();
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
            self.redis.observe(set).map_err(unavailable)
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
                    self.redis
                        .observe(pipe.query_async::<()>(&mut conn).await)
                        .map_err(unavailable)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    fn sweep(&self, tasks_before_ms: u64, _keys_before_ms: u64) -> LedgerFuture<'_, SweepReport> {
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
