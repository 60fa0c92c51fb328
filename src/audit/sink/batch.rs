//! A worker's round: records of the requests it finished in one scheduler
//! round, queued to be sealed and written together.

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::AuditWriteError;
use crate::audit::AuditRecord;

/// Records a worker's requests finished in the same scheduler round, waiting
/// to be written together: one lock, one `write(2)` and one file check per
/// batch instead of per record.
#[derive(Debug, Default)]
pub(super) struct WorkerQueue {
    pub(super) pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) records: Records,
    pub(super) waiters: Vec<oneshot::Sender<Result<(), AuditWriteError>>>,
    /// A flush task is queued on the worker's runtime.
    pub(super) scheduled: bool,
    /// The buffers of the last batch written, emptied, for the next round.
    pub(super) spare: (Records, Vec<oneshot::Sender<Result<(), AuditWriteError>>>),
}

/// Serialized records (JSON objects without the chain fields), back to back
/// in the order they were queued: one buffer a round, not one per record.
#[derive(Debug, Default)]
pub(super) struct Records {
    pub(super) bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    pub(super) ends: Vec<usize>,
}

impl Records {
    pub(super) fn push<S: AsRef<str>>(&mut self, record: &AuditRecord<S>) {
        record.write_json(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let record = &self.bytes[start..end];
            start = end;
            record
        })
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}
