use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::AuditRecord;
use crate::config::AuditSinkConfig;

/// Records waiting for the writer; beyond this, requests wait (backpressure)
/// rather than records being dropped.
const QUEUE: usize = 16 * 1024;

/// The sending side, cloned into every audit service.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
}

/// The writer thread. [`AuditWriter::finish`] waits until every record sent
/// before the last [`AuditSink`] was dropped is written and flushed.
#[derive(Debug)]
pub struct AuditWriter {
    thread: JoinHandle<()>,
}

/// The writer could not take the record (it has stopped).
#[derive(Debug, thiserror::Error)]
#[error("the audit writer has stopped")]
pub struct AuditClosed;

impl AuditSink {
    /// Opens the configured sink and starts its writer thread.
    pub fn start(config: &AuditSinkConfig) -> io::Result<(AuditSink, AuditWriter)> {
        let out: Box<dyn Write + Send> = match config {
            AuditSinkConfig::Stdout => Box::new(io::stdout()),
            AuditSinkConfig::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(Self::start_with_writer(out))
    }

    /// Starts a writer thread over any `Write` (tests use an in-memory buffer).
    pub fn start_with_writer(out: Box<dyn Write + Send>) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, out))
            .expect("spawning the audit writer thread");
        (AuditSink { tx }, AuditWriter { thread })
    }

    /// Queues a record; waits while the queue is full.
    pub async fn write(&self, record: AuditRecord) -> Result<(), AuditClosed> {
        self.tx.send(record).await.map_err(|_| AuditClosed)
    }
}

/// Blocking on a dedicated thread keeps file I/O off the async workers. Records
/// are written as they come and flushed whenever the queue runs dry, so a burst
/// costs one flush, and an idle gateway has nothing buffered.
fn write_loop(mut rx: mpsc::Receiver<AuditRecord>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    while let Some(record) = rx.blocking_recv() {
        line.clear();
        serde_json::to_writer(&mut line, &record).expect("audit records always serialize");
        line.push(b'\n');
        if let Err(e) = out.write_all(&line) {
            tracing::error!(error = %e, "cannot write the audit record");
        }
        if rx.is_empty() {
            if let Err(e) = out.flush() {
                tracing::error!(error = %e, "cannot flush the audit sink");
            }
        }
    }
    if let Err(e) = out.flush() {
        tracing::error!(error = %e, "cannot flush the audit sink at shutdown");
    }
}

impl AuditWriter {
    /// Waits for the writer to drain and flush. Call after every [`AuditSink`]
    /// clone is gone (that is what ends the writer).
    pub fn finish(self) {
        if self.thread.join().is_err() {
            tracing::error!("the audit writer thread panicked");
        }
    }
}
