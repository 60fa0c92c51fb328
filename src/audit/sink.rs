//! The audit sink: one writer thread that seals records into the hash chain,
//! writes them, and acknowledges each record only after its bytes are in the
//! kernel (`write(2)` returned), so a record whose response was sent survives
//! a crash of the process. `audit.fsync` decides when they reach the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use super::chain::{self, ChainHead};
use super::AuditRecord;
use crate::config::{AuditConfig, AuditSinkConfig, FsyncPolicy};

/// Most records written in one batch.
const MAX_BATCH: usize = 1024;
/// How often an idle writer wakes to fsync (interval policy) and check its file.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// The audit file's path and the (device, inode) identity of the file being written.
type SharedFile = Arc<Mutex<(PathBuf, (u64, u64))>>;

/// The sink could not write the record (it is in the diagnostic log instead).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit record could not be written: {0}")]
pub struct AuditWriteError(pub String);

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<(), AuditWriteError>>,
}

/// The sending side, cloned into every audit service.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Pending>,
    healthy: Arc<AtomicBool>,
    /// For a file sink: the path and the identity of the file being written
    /// (updated at rotation), checked before every mutating call.
    file: Option<SharedFile>,
}

/// The writer thread. [`AuditWriter::finish`] waits until every record sent
/// before the last [`AuditSink`] was dropped is written, synced and flushed.
#[derive(Debug)]
pub struct AuditWriter {
    thread: JoinHandle<()>,
}

#[derive(Serialize)]
struct Chained<'a> {
    seq: u64,
    prev_hash: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

enum Output {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        file: File,
        written: u64,
        identity: (u64, u64),
    },
    Other(Box<dyn Write + Send>),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
}

impl Output {
    fn open_file(path: PathBuf) -> io::Result<(Self, ChainHead)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        // Only a regular file has a chain to continue (`/dev/full`, a FIFO… do not).
        let existing = if file.metadata()?.is_file() {
            std::fs::read(&path).unwrap_or_default()
        } else {
            Vec::new()
        };
        // A crash in the middle of a batch can leave a partial last line; it
        // belongs to a request whose response was never sent. Drop it.
        let complete = existing.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < existing.len() && file.metadata()?.is_file() {
            tracing::warn!(
                bytes = existing.len() - complete,
                "dropping a partial last audit line left by a crash"
            );
            file.set_len(complete as u64)?;
        }
        let head = chain::head_of(&String::from_utf8_lossy(&existing[..complete])).unwrap_or_else(ChainHead::genesis);
        let meta = file.metadata()?;
        file.flush()?;
        Ok((
            Output::File {
                path,
                written: meta.len(),
                identity: identity(&meta),
                file,
            },
            head,
        ))
    }

    /// A file sink whose path no longer names the file we write is a removed
    /// (or replaced) audit trail: refuse to keep writing into the void.
    fn check(&self) -> Result<(), String> {
        if let Output::File { path, identity: id, .. } = self {
            match std::fs::metadata(path) {
                Ok(meta) if identity(&meta) == *id => Ok(()),
                Ok(_) => Err(format!("{} was replaced", path.display())),
                Err(e) => Err(format!("{} is gone: {e}", path.display())),
            }
        } else {
            Ok(())
        }
    }

    fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Output::File { file, written, .. } => {
                file.write_all(bytes)?;
                *written += bytes.len() as u64;
                Ok(())
            }
            Output::Other(out) => {
                out.write_all(bytes)?;
                out.flush()
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Output::File { file, .. } => file.sync_data(),
            _ => Ok(()),
        }
    }

    /// Renames a full file aside and starts a new one; the chain continues.
    fn rotate_if_full(&mut self, limit: Option<u64>, head: &ChainHead) -> io::Result<()> {
        let path = match self {
            Output::File { path, written, .. } if limit.is_some_and(|limit| *written >= limit) => path.clone(),
            _ => return Ok(()),
        };
        self.sync()?;
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .replace([':', '.'], "-");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("audit.jsonl");
        let rotated = path.with_file_name(format!("{name}.{stamp}"));
        std::fs::rename(&path, &rotated)?;
        let (fresh, _) = Output::open_file(path)?;
        *self = fresh;
        tracing::info!(rotated = %rotated.display(), seq = head.seq, hash = %head.hash, "audit file rotated; the chain continues in the new file");
        Ok(())
    }
}

impl AuditSink {
    /// Opens the configured sink (continuing an existing file's chain) and starts its writer.
    pub fn start(config: &AuditConfig) -> io::Result<(AuditSink, AuditWriter)> {
        let (output, head) = match &config.sink {
            AuditSinkConfig::Stdout => (Output::Stdout(io::stdout()), ChainHead::genesis()),
            AuditSinkConfig::File(path) => Output::open_file(path.clone())?,
        };
        Ok(Self::spawn(output, head, config.clone()))
    }

    /// A sink over any writer (tests).
    pub fn start_with_writer(out: Box<dyn Write + Send>, config: &AuditConfig) -> (AuditSink, AuditWriter) {
        Self::spawn(Output::Other(out), ChainHead::genesis(), config.clone())
    }

    fn spawn(output: Output, head: ChainHead, config: AuditConfig) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let file = match &output {
            Output::File { path, identity, .. } => Some(Arc::new(Mutex::new((path.clone(), *identity)))),
            _ => None,
        };
        let (flag, shared_file) = (healthy.clone(), file.clone());
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                Writer {
                    output,
                    head,
                    config,
                    healthy: flag,
                    file: shared_file,
                }
                .run(rx)
            })
            .expect("spawning the audit writer thread");
        (AuditSink { tx, healthy, file }, AuditWriter { thread })
    }

    /// False after a write failed or the file was removed: callers fail closed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Before a call that changes something: the sink is healthy and, for a
    /// file, the path still names the file being written (one `stat`, only on
    /// mutating calls), so a removed trail is noticed before the next action.
    pub fn ready_for_mutation(&self) -> bool {
        if !self.healthy() {
            return false;
        }
        let Some(file) = &self.file else { return true };
        let (path, expected) = file.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let same = std::fs::metadata(&path).is_ok_and(|meta| identity(&meta) == expected);
        if !same && self.healthy.swap(false, Ordering::SeqCst) {
            tracing::error!(path = %path.display(), "the audit file was removed or replaced; failing closed");
        }
        same
    }

    /// Hands a record to the writer and waits until it is written.
    pub async fn write(&self, record: AuditRecord) -> Result<(), AuditWriteError> {
        let (done, written) = oneshot::channel();
        if let Err(mpsc::SendError(pending)) = self.tx.send(Pending { record, done }) {
            fallback(&pending.record, "the audit writer has stopped");
            return Err(AuditWriteError("the audit writer has stopped".into()));
        }
        written
            .await
            .unwrap_or_else(|_| Err(AuditWriteError("the audit writer has stopped".into())))
    }
}

/// The last resort for a record the sink could not take: the diagnostic log,
/// so that it is not lost, with the reason.
fn fallback(record: &AuditRecord, reason: &str) {
    let json = serde_json::to_string(record).unwrap_or_default();
    tracing::error!(reason, record = %json, "AUDIT RECORD NOT WRITTEN to the audit sink; kept here");
}

struct Writer {
    output: Output,
    head: ChainHead,
    config: AuditConfig,
    healthy: Arc<AtomicBool>,
    file: Option<SharedFile>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Pending>) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        loop {
            match rx.recv_timeout(IDLE_WAKE) {
                Ok(first) => batch.push(first),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if let Err(problem) = self.output.check() {
                if self.healthy.swap(false, Ordering::SeqCst) {
                    tracing::error!(problem, "the audit file is not where it was; failing closed");
                }
            }
            if !batch.is_empty() {
                unsynced |= self.write(&mut batch);
            }
            let due = match self.config.fsync {
                FsyncPolicy::Always => false, // synced in write()
                FsyncPolicy::Interval(every) => unsynced && last_sync.elapsed() >= every,
            };
            if due {
                if let Err(e) = self.output.sync() {
                    tracing::error!(error = %e, "cannot fsync the audit file");
                }
                last_sync = Instant::now();
                unsynced = false;
            }
        }
        if let Err(e) = self.output.sync() {
            tracing::error!(error = %e, "cannot fsync the audit file at shutdown");
        }
        tracing::info!(seq = self.head.seq, hash = %self.head.hash, "audit chain head at shutdown");
    }

    /// Seals and writes a batch; acknowledges each record. Returns whether
    /// unsynced bytes were written.
    fn write(&mut self, batch: &mut Vec<Pending>) -> bool {
        let healthy_before = self.healthy.load(Ordering::SeqCst);
        let removed = self.output.check().is_err();
        let mut bytes = Vec::with_capacity(batch.len() * 512);
        let mut head = self.head.clone();
        for pending in batch.iter() {
            let chained = Chained {
                seq: head.seq + 1,
                prev_hash: &head.hash,
                record: &pending.record,
            };
            let object = serde_json::to_vec(&chained).expect("audit records serialize");
            let (line, hash) = chain::seal(&object);
            bytes.extend_from_slice(&line);
            head = ChainHead {
                seq: head.seq + 1,
                hash,
            };
        }
        let result = if removed {
            Err(io::Error::other("the audit file was removed"))
        } else {
            self.output.write_batch(&bytes).and_then(|()| match self.config.fsync {
                FsyncPolicy::Always => self.output.sync(),
                FsyncPolicy::Interval(_) => Ok(()),
            })
        };
        match result {
            Ok(()) => {
                self.head = head;
                if !healthy_before && !removed {
                    tracing::warn!("the audit sink accepts writes again");
                }
                self.healthy.store(true, Ordering::SeqCst);
                for pending in batch.drain(..) {
                    let _ = pending.done.send(Ok(()));
                }
                // Held across rename, reopen and update, so that a concurrent
                // `ready_for_mutation` never sees the path between two files.
                let mut shared = self
                    .file
                    .as_ref()
                    .map(|f| f.lock().unwrap_or_else(PoisonError::into_inner));
                match self.output.rotate_if_full(self.config.rotate_bytes, &self.head) {
                    Ok(()) => {
                        if let (Some(shared), Output::File { path, identity, .. }) = (shared.as_mut(), &self.output) {
                            **shared = (path.clone(), *identity);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot rotate the audit file"),
                }
                !matches!(self.config.fsync, FsyncPolicy::Always)
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::SeqCst) {
                    tracing::error!(error = %e, "cannot write the audit trail; mutating calls now fail closed");
                }
                let reason = e.to_string();
                for pending in batch.drain(..) {
                    fallback(&pending.record, &reason);
                    let _ = pending.done.send(Err(AuditWriteError(reason.clone())));
                }
                false
            }
        }
    }
}

impl AuditWriter {
    /// Waits for the writer to drain, sync and flush. Call after every
    /// [`AuditSink`] clone is gone (that is what ends the writer).
    pub fn finish(self) {
        if self.thread.join().is_err() {
            tracing::error!("the audit writer thread panicked");
        }
    }
}
