//! The audit sink. Each record is sealed into the hash chain and written
//! (`write(2)`) on the request's own task, under one short lock, before the
//! request's response is released: a record whose response was sent survives
//! a crash of the process, and no thread hand-off sits on the request path.
//! `audit.fsync` decides when records reach the disk: a background task syncs
//! at most every interval, or (`always`) each request waits for an fdatasync.

use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::Either;
use tokio::sync::oneshot;

mod batch;
mod output;

use batch::{Records, WorkerQueue};
use output::{identity, Output};

use super::chain::{self, ChainHead};
use super::AuditRecord;
use crate::config::{AuditConfig, AuditSinkConfig, FsyncPolicy};

/// Largest batch buffer kept between batches.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// How often the background task checks that the file is still where it was.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The audit file's path and the (device, inode) identity of the file being written.
type SharedFile = Arc<Mutex<(PathBuf, (u64, u64))>>;

/// The sink could not write the record (it is in the diagnostic log instead).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit record could not be written: {0}")]
pub struct AuditWriteError(pub String);

/// Cheap to clone; every clone writes the same chain.
#[derive(Debug, Clone)]
pub struct AuditSink {
    inner: Arc<Inner>,
    /// A worker thread's queue (see [`AuditSink::for_worker`]); none: each
    /// record is written on its own.
    queue: Option<Arc<WorkerQueue>>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    healthy: AtomicBool,
    /// For a file sink: what `ready_for_mutation` checks (updated at rotation).
    file: Option<SharedFile>,
    config: AuditConfig,
}

#[derive(Debug)]
struct State {
    output: Output,
    head: ChainHead,
    /// Bytes written since the last fdatasync.
    unsynced: bool,
    /// Reused for every batch (no allocation per batch): the head as the
    /// batch is sealed (it becomes `head` once the write succeeded), and the
    /// sealed lines.
    next: ChainHead,
    sealed: Vec<u8>,
}

/// Handle for an orderly stop: [`AuditWriter::finish`] syncs and flushes.
#[derive(Debug)]
pub struct AuditWriter {
    sink: AuditSink,
    background: Option<tokio::task::JoinHandle<()>>,
}

/// Whether the audit sink still writes; false once it is gone.
#[derive(Debug, Clone)]
pub struct AuditHealth(std::sync::Weak<Inner>);

impl AuditHealth {
    pub fn healthy(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.healthy.load(Ordering::SeqCst))
    }
}

impl AuditSink {
    /// Opens the configured sink, continuing an existing file's chain. Must be
    /// called inside a tokio runtime (it starts the sync-and-check task).
    pub fn start(config: &AuditConfig) -> io::Result<(AuditSink, AuditWriter)> {
        let (output, head) = match &config.sink {
            AuditSinkConfig::Stdout => (Output::Stdout(io::stdout()), ChainHead::genesis()),
            AuditSinkConfig::File(path) => Output::open_file(path.clone())?,
        };
        Ok(Self::spawn(output, head, config.clone()))
    }

    fn spawn(output: Output, head: ChainHead, config: AuditConfig) -> (AuditSink, AuditWriter) {
        let file = match &output {
            Output::File { path, identity, .. } => Some(Arc::new(Mutex::new((path.clone(), *identity)))),
            _ => None,
        };
        let sink = AuditSink {
            queue: None,
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    output,
                    next: head.clone(),
                    head,
                    unsynced: false,
                    sealed: Vec::new(),
                }),
                healthy: AtomicBool::new(true),
                file,
                config,
            }),
        };
        let background = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(sync_and_check(sink.clone())));
        (sink.clone(), AuditWriter { sink, background })
    }

    /// A handle that reads [`Self::healthy`] without keeping the sink open
    /// (the admin listener's; the drain waits for every sink to go).
    pub fn health(&self) -> AuditHealth {
        AuditHealth(Arc::downgrade(&self.inner))
    }

    /// False after a write failed or the file was removed: callers fail closed.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::SeqCst)
    }

    /// Before a call that changes something: the sink is healthy and, for a
    /// file, the path still names the file being written (one `stat`, only on
    /// mutating calls), so a removed trail is noticed before the next action.
    pub fn ready_for_mutation(&self) -> bool {
        if !self.healthy() {
            return false;
        }
        let Some(file) = &self.inner.file else { return true };
        let (path, expected) = file.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let same = std::fs::metadata(&path).is_ok_and(|meta| identity(&meta) == expected);
        if !same && self.inner.healthy.swap(false, Ordering::SeqCst) {
            tracing::error!(path = %path.display(), "the audit file was removed or replaced; failing closed");
        }
        same
    }

    /// A handle for one worker thread (a single-threaded runtime): records
    /// written through it are queued, and one task, spawned behind the
    /// worker's other ready tasks, seals and writes everything queued in that
    /// round at once. Each caller still returns only after its own record is
    /// in the kernel (or on the disk, with `fsync = "always"`).
    pub fn for_worker(&self) -> AuditSink {
        AuditSink {
            inner: self.inner.clone(),
            queue: Some(Arc::default()),
        }
    }

    /// Seals the record into the chain and writes it; the returned future
    /// resolves once it is in the kernel (and, with `fsync = "always"`, on
    /// the disk). The record is serialized at once, so it may borrow.
    pub fn write<S: AsRef<str>>(
        &self,
        record: &AuditRecord<S>,
    ) -> impl Future<Output = Result<(), AuditWriteError>> + Send + 'static {
        let Some(queue) = &self.queue else {
            let mut one = Records::default();
            one.push(record);
            let sink = self.clone();
            return Either::Left(async move { sink.write_lines(&one).await });
        };
        // Serialized straight into the round's buffer; the lock is the
        // worker's own (its requests run on one thread), never contended.
        let (done, written) = oneshot::channel();
        let spawn_flush = {
            let mut pending = queue.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.records.push(record);
            pending.waiters.push(done);
            !std::mem::replace(&mut pending.scheduled, true)
        };
        if spawn_flush {
            let (sink, queue) = (self.clone(), queue.clone());
            tokio::spawn(async move {
                let (mut records, mut waiters) = {
                    let mut pending = queue.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    pending.scheduled = false;
                    let (spare_records, spare_waiters) = std::mem::take(&mut pending.spare);
                    (
                        std::mem::replace(&mut pending.records, spare_records),
                        std::mem::replace(&mut pending.waiters, spare_waiters),
                    )
                };
                tracing::trace!(records = records.len(), "audit batch");
                let result = sink.write_lines(&records).await;
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
                records.clear();
                if records.bytes.capacity() > MAX_KEPT_BUFFER {
                    records = Records::default();
                }
                queue.pending.lock().unwrap_or_else(PoisonError::into_inner).spare = (records, waiters);
            });
        }
        Either::Right(async move {
            written
                .await
                .unwrap_or_else(|_| Err(AuditWriteError("the audit flush task ended".into())))
        })
    }

    /// Writes serialized records in order, as one batch; a batch that cannot
    /// be written goes to the diagnostic log, record by record.
    async fn write_lines(&self, records: &Records) -> Result<(), AuditWriteError> {
        let written = self.write_sealed(records);
        if let Err(e) = &written {
            for json in records.iter() {
                fallback(json, &e.0);
            }
            return written;
        }
        if self.inner.config.fsync == FsyncPolicy::Always {
            let sink = self.clone();
            let synced = tokio::task::spawn_blocking(move || sink.sync())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            if let Err(e) = synced {
                self.inner.healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot fsync the audit file; mutating calls now fail closed");
                return Err(AuditWriteError(e.to_string()));
            }
        }
        written
    }

    fn write_sealed(&self, records: &Records) -> Result<(), AuditWriteError> {
        let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State {
            output,
            head,
            unsynced,
            next,
            sealed,
        } = &mut *state;
        // Refuse to write into a file that was unlinked (one fstat on our own
        // descriptor per batch; the path itself is checked before mutating
        // calls and every 500 ms).
        if let Err(problem) = output.check_linked() {
            if self.inner.healthy.swap(false, Ordering::SeqCst) {
                tracing::error!(problem, "the audit file is not where it was; failing closed");
            }
            return Err(AuditWriteError(problem));
        }
        sealed.clear();
        // Field by field: a derived `clone_from` would allocate a new hash string.
        next.seq = head.seq;
        next.hash.clone_from(&head.hash);
        for json in records.iter() {
            chain::seal_into(sealed, next, json);
        }
        let written = output.write_batch(sealed);
        if sealed.capacity() > MAX_KEPT_BUFFER {
            // One unusual burst should not keep its buffer for good.
            *sealed = Vec::new();
        }
        match written {
            Ok(()) => {
                std::mem::swap(head, next);
                *unsynced = true;
                if !self.inner.healthy.swap(true, Ordering::SeqCst) {
                    tracing::warn!("the audit sink accepts writes again");
                }
                // Held with the state lock across rename, reopen and update, so
                // a concurrent `ready_for_mutation` never sees the path between two files.
                let mut shared = self
                    .inner
                    .file
                    .as_ref()
                    .map(|f| f.lock().unwrap_or_else(PoisonError::into_inner));
                match output.rotate_if_full(self.inner.config.rotate_bytes, head) {
                    Ok(true) => {
                        *unsynced = false;
                        if let (Some(shared), Output::File { path, identity, .. }) = (shared.as_mut(), &*output) {
                            **shared = (path.clone(), *identity);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot rotate the audit file"),
                }
                Ok(())
            }
            Err(e) => {
                if self.inner.healthy.swap(false, Ordering::SeqCst) {
                    tracing::error!(error = %e, "cannot write the audit trail; mutating calls now fail closed");
                }
                Err(AuditWriteError(e.to_string()))
            }
        }
    }

    /// fdatasync on a duplicate of the file descriptor, outside the write lock.
    fn sync(&self) -> io::Result<()> {
        let file = {
            let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            if !state.unsynced {
                return Ok(());
            }
            state.unsynced = false;
            match &state.output {
                Output::File { file, .. } => file.try_clone()?,
                _ => return Ok(()),
            }
        };
        file.sync_data()
    }
}

/// Syncs at most every `fsync_interval` (interval policy) and notices a
/// removed file even when no request is writing.
async fn sync_and_check(sink: AuditSink) {
    let every = match sink.inner.config.fsync {
        FsyncPolicy::Interval(every) => every.min(CHECK_EVERY),
        FsyncPolicy::Always => CHECK_EVERY,
    };
    let mut ticks = tokio::time::interval(every);
    let mut since_sync = Duration::ZERO;
    loop {
        ticks.tick().await;
        since_sync += every;
        let check = {
            let state = sink.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.output.check()
        };
        if let Err(problem) = check {
            if sink.inner.healthy.swap(false, Ordering::SeqCst) {
                tracing::error!(problem, "the audit file is not where it was; failing closed");
            }
        }
        if let FsyncPolicy::Interval(interval) = sink.inner.config.fsync {
            if since_sync >= interval {
                since_sync = Duration::ZERO;
                let syncing = sink.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || syncing.sync()).await {
                    tracing::error!(error = %e, "cannot fsync the audit file");
                }
            }
        }
    }
}

/// The last resort for a record the sink could not take: the diagnostic log,
/// so that it is not lost, with the reason.
fn fallback(json: &[u8], reason: &str) {
    let json = String::from_utf8_lossy(json);
    tracing::error!(reason, record = %json, "AUDIT RECORD NOT WRITTEN to the audit sink; kept here");
}

impl AuditWriter {
    /// Stops the background task, then syncs and flushes. Call after the
    /// last request finished.
    pub fn finish(mut self) {
        if let Some(task) = self.background.take() {
            task.abort();
        }
        let state = self.sink.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(seq = state.head.seq, hash = %state.head.hash, "audit chain head at shutdown");
        drop(state);
        if let Err(e) = self.sink.sync() {
            tracing::error!(error = %e, "cannot fsync the audit file at shutdown");
        }
        let mut state = self.sink.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Output::Stdout(out) = &mut state.output {
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::Finding;
    use crate::audit::Decision;
    use crate::config::OnAuditFailure;

    fn record(n: usize) -> AuditRecord {
        AuditRecord {
            ts: "2026-11-29T18:00:00.000Z".into(),
            request_id: format!("request-{n}"),
            trace_id: None,
            tenant: Some("alpha".into()),
            token_name: None,
            method: "GET".into(),
            operation: Some("get".into()),
            task_id: None,
            decision: Decision::Allow,
            reason: "forwarded".into(),
            status: 200,
            upstream_status: Some(200),
            upstream_request_id: None,
            client_request_id: None,
            duration_ms: 1.0,
            remote_addr: None,
        }
    }

    /// Many requests of one worker finishing in the same round: every record
    /// is written, each caller returns only once its own record is in the
    /// file, and the chain holds in the order they were queued.
    #[tokio::test]
    async fn a_worker_round_is_written_as_one_unbroken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig {
            sink: AuditSinkConfig::File(path.clone()),
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            rotate_bytes: None,
            on_failure: OnAuditFailure::Deny,
        };
        let (sink, writer) = AuditSink::start(&config).unwrap();
        let worker = sink.for_worker();
        let writes: Vec<_> = (0..50)
            .map(|n| {
                let worker = worker.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    worker.write(&record(n)).await.unwrap();
                    // Written before the caller goes on.
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(text.contains(&format!("\"request-{n}\"")), "record {n} not yet written");
                })
            })
            .collect();
        for write in writes {
            write.await.unwrap();
        }
        writer.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().request_id)
            .collect();
        assert_eq!(ids, (0..50).map(|n| format!("request-{n}")).collect::<Vec<_>>());
        let reader: Box<dyn std::io::BufRead> = Box::new(std::io::Cursor::new(text.into_bytes()));
        match chain::verify_files(vec![("audit.jsonl".into(), reader)]).unwrap() {
            Finding::Intact { records, .. } => assert_eq!(records, 50),
            broken => panic!("{broken}"),
        }
    }
}
