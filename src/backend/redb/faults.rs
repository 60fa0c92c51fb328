//! Fault injection for tests (feature `fault-injection`, which only the test
//! build enables): a switch that makes the ledger's disk fail, to exercise
//! the fail-closed paths for real.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::StorageBackend;

/// A switch that makes the store's disk fail (writes and syncs return ENOSPC),
/// to exercise the fail-closed paths for real.
#[derive(Debug, Clone, Default)]
pub struct StoreFaults(Arc<AtomicBool>);

impl StoreFaults {
    pub fn fail_writes(&self, fail: bool) {
        self.0.store(fail, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub(super) struct FaultableBackend {
    pub(super) inner: FileBackend,
    pub(super) faults: StoreFaults,
}

impl FaultableBackend {
    fn check(&self) -> io::Result<()> {
        if self.faults.0.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl StorageBackend for FaultableBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}
