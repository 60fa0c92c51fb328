//! Task owners cached on each replica, kept true by Redis itself.
//!
//! A replica keeps the owners it looked up (the shared [`OwnerCache`]) and
//! one more connection, on which it asked for `CLIENT TRACKING ON BCAST
//! PREFIX <prefix>task:` (RESP3). Redis then pushes on that connection the
//! name of every task record that any replica changes or that expires, and
//! the replica forgets it. Its own writes it forgets at once as well, so a
//! replica always reads its own grants and revokes.
//!
//! The bound on staleness: pushes and replies travel in order on one
//! connection, so the reply to a PING sent at `t` proves that every change
//! made before `t` has been applied here. A PING goes every
//! [`CONFIRM_EVERY`]; the cache answers only while the last proof is younger
//! than [`STALE_AFTER`], and is emptied when the connection drops or tracking
//! is (re)established. A grant or revoke made on any replica therefore holds
//! on every replica once Redis delivers its push (well under a millisecond on
//! one network), and never later than `STALE_AFTER` after it was made. A
//! Redis without tracking (before 6.0) leaves the cache empty: every check
//! reads Redis, as without a cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use std::time::Instant;

use crate::backend::owner_cache::{Generation, OwnerCache};
use crate::ledger::Ownership;
use crate::spend::TaskSpend;

/// How often the tracking connection proves it is up to date.
const CONFIRM_EVERY: Duration = Duration::from_millis(500);
/// How old the last proof may be for the cache to answer.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(2);
/// The wait before tracking is tried again after the connection failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The owners one replica knows, and how recently Redis confirmed them.
pub(crate) struct TrackedOwners {
    cache: OwnerCache,
    /// The key prefix of task records (`<store.key_prefix>task:`).
    task_prefix: String,
    epoch: Instant,
    /// Milliseconds after `epoch` at which the last confirmed PING was sent,
    /// plus one; 0 while nothing is confirmed.
    confirmed_ms: AtomicU64,
    /// When the last confirmed PING was sent, for [`TrackedOwners::confirmed_since`].
    confirmed: tokio::sync::watch::Sender<Option<Instant>>,
}

impl TrackedOwners {
    pub(crate) fn new(task_prefix: String) -> Self {
        Self {
            cache: OwnerCache::default(),
            task_prefix,
            epoch: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
            confirmed: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Waits until Redis has confirmed that every change made before `since`
    /// is applied here.
    pub(crate) async fn confirmed_since(&self, since: Instant) {
        let mut confirmed = self.confirmed.subscribe();
        let _ = confirmed.wait_for(|at| at.is_some_and(|at| at >= since)).await;
    }

    /// Whether the last proof is recent enough at `now` for the cache to answer.
    fn fresh(&self, now: Instant) -> bool {
        match self.confirmed_ms.load(Ordering::Acquire) {
            0 => false,
            at => {
                let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
                now_ms.saturating_sub(at - 1) <= STALE_AFTER.as_millis() as u64
            }
        }
    }

    /// The owner check from memory, while the cache is confirmed.
    pub(crate) fn check(&self, task_id: &str, tenant: &str, now: Instant) -> Option<Ownership> {
        if !self.fresh(now) {
            return None;
        }
        self.cache.check(task_id, tenant)
    }

    /// Taken before reading Redis, for [`TrackedOwners::remember`].
    pub(crate) fn generation(&self) -> Generation {
        self.cache.generation()
    }

    /// Keeps what a read found, unless anything was forgotten since
    /// `read_under` (the answer may predate that change).
    pub(crate) fn remember(&self, read_under: Generation, task_id: &str, owner: &str, spend: TaskSpend, now: Instant) {
        if self.fresh(now) {
            self.cache.remember_spend(read_under, task_id, owner, spend);
        }
    }

    /// After this replica's own write to the task's record.
    pub(crate) fn forget(&self, task_id: &str) {
        self.cache.forget([task_id]);
    }

    /// A PING sent at `sent` was answered: every change before it is applied.
    fn confirm(&self, sent: Instant) {
        let at = sent.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.confirmed_ms.fetch_max(at, Ordering::AcqRel);
        self.confirmed.send_replace(Some(sent));
    }

    /// Tracking is off (or starts anew): nothing kept can be vouched for.
    fn lose(&self) {
        self.confirmed_ms.store(0, Ordering::Release);
        self.confirmed.send_replace(None);
        self.cache.forget_all();
    }

    /// One message pushed on the tracking connection.
    fn pushed(&self, info: PushInfo) {
        match info.kind {
            PushKind::Invalidate => match info.data.first() {
                Some(Value::Array(keys)) => {
                    let ids: Vec<&str> = keys
                        .iter()
                        .filter_map(|key| match key {
                            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                            Value::SimpleString(text) => Some(text.as_str()),
                            _ => None,
                        })
                        .filter_map(|key| key.strip_prefix(self.task_prefix.as_str()))
                        .collect();
                    self.cache.forget(ids);
                }
                // A flush of the whole database, or a shape not understood.
                _ => self.cache.forget_all(),
            },
            PushKind::Disconnection => self.lose(),
            _ => {}
        }
    }
}

/// Stops the tracking task when the ledger that owns it goes.
pub(crate) struct Tracker(tokio::task::AbortHandle);

impl Drop for Tracker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts tracking on the current runtime, through `client`'s server.
pub(crate) fn spawn(client: &redis::Client, owners: Arc<TrackedOwners>) -> Option<Tracker> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings)).ok()?;
    let task = runtime.spawn(async move {
        let mut off = false;
        loop {
            let Err(failure) = track(&client, &owners, &mut off).await;
            owners.lose();
            if !off {
                let reason = format!("{:?}", failure.kind());
                tracing::warn!(
                    reason,
                    "redis owner tracking is off: every owner check reads redis until it is back"
                );
                off = true;
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    });
    Some(Tracker(task.abort_handle()))
}

/// One tracking connection, for as long as it answers; `off` says whether
/// the outage before it was logged.
async fn track(
    client: &redis::Client,
    owners: &Arc<TrackedOwners>,
    off: &mut bool,
) -> redis::RedisResult<std::convert::Infallible> {
    let pushed = owners.clone();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_push_sender(move |info: PushInfo| {
            pushed.pushed(info);
            Ok::<(), std::convert::Infallible>(())
        });
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(&owners.task_prefix)
        .query_async::<()>(&mut conn)
        .await?;
    // Reads that began before tracking may hold changes nobody will push.
    owners.lose();
    loop {
        let sent = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        owners.confirm(sent);
        if std::mem::take(off) {
            tracing::info!("redis owner tracking is back");
        }
        tokio::time::sleep(CONFIRM_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalidate(keys: &[&str]) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(
                keys.iter().map(|k| Value::BulkString(k.as_bytes().to_vec())).collect(),
            )],
        }
    }

    fn owned(owners: &TrackedOwners, id: &str, tenant: &str, now: Instant) -> Option<bool> {
        owners.check(id, tenant, now).map(|o| o.owns)
    }

    fn remember(owners: &TrackedOwners, read_under: Generation, id: &str, now: Instant) {
        owners.remember(read_under, id, "alpha", TaskSpend::default(), now);
    }

    /// The clock is the `now` each call is given: the test steps it.
    #[test]
    fn the_cache_answers_only_while_redis_recently_confirmed_it() {
        let owners = TrackedOwners::new("p:task:".into());
        let t0 = Instant::now();
        remember(&owners, owners.generation(), "cgt-1", t0);
        assert_eq!(
            owned(&owners, "cgt-1", "alpha", t0),
            None,
            "nothing is kept before a confirmation"
        );
        owners.confirm(t0);
        remember(&owners, owners.generation(), "cgt-1", t0);
        assert_eq!(owned(&owners, "cgt-1", "alpha", t0), Some(true));
        assert_eq!(owned(&owners, "cgt-1", "beta", t0), Some(false));
        let bound = t0 + STALE_AFTER;
        assert_eq!(owned(&owners, "cgt-1", "alpha", bound), Some(true), "at the bound");
        let past = bound + Duration::from_millis(1);
        assert_eq!(
            owned(&owners, "cgt-1", "alpha", past),
            None,
            "past the bound nothing answers"
        );
        owners.confirm(past);
        assert_eq!(
            owned(&owners, "cgt-1", "alpha", past),
            Some(true),
            "a new proof vouches again"
        );
        owners.pushed(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        owners.confirm(past);
        assert_eq!(
            owned(&owners, "cgt-1", "alpha", past),
            None,
            "a dropped connection empties it"
        );
    }

    #[test]
    fn pushed_invalidations_forget_task_records_and_a_flush_forgets_all() {
        let owners = TrackedOwners::new("p:task:".into());
        let now = Instant::now();
        owners.confirm(now);
        for id in ["cgt-1", "cgt-2", "cgt-3"] {
            remember(&owners, owners.generation(), id, now);
        }
        let read_before = owners.generation();
        owners.pushed(invalidate(&["p:task:cgt-1", "other:task:cgt-2", "p:tenant:alpha"]));
        assert_eq!(owned(&owners, "cgt-1", "alpha", now), None);
        assert_eq!(
            owned(&owners, "cgt-2", "alpha", now),
            Some(true),
            "another prefix is not ours"
        );
        remember(&owners, read_before, "cgt-1", now);
        assert_eq!(
            owned(&owners, "cgt-1", "alpha", now),
            None,
            "a read from before the push is not kept"
        );
        owners.pushed(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert_eq!(owned(&owners, "cgt-2", "alpha", now), None);
        assert_eq!(owned(&owners, "cgt-3", "alpha", now), None);
    }
}
