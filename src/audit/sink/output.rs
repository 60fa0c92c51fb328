//! Where records go: stdout, or the audit file (opened so that the chain
//! continues, checked to still be the file at its path, rotated when full,
//! synced as `audit.fsync` says).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::audit::chain::{self, ChainHead};

#[derive(Debug)]
pub(super) enum Output {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        file: File,
        written: u64,
        identity: (u64, u64),
    },
}

pub(super) fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
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
    pub(super) fn open_file(path: PathBuf) -> io::Result<(Self, ChainHead)> {
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
    pub(super) fn check(&self) -> Result<(), String> {
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

    pub(super) fn check_linked(&self) -> Result<(), String> {
        #[cfg(unix)]
        if let Output::File { path, file, .. } = self {
            return match file.metadata() {
                Ok(meta) if meta.nlink() > 0 || !meta.is_file() => Ok(()),
                Ok(_) => Err(format!("{} was removed", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
        }
        Ok(())
    }

    pub(super) fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()> {
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
        }
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        match self {
            Output::File { file, .. } => file.sync_data(),
            _ => Ok(()),
        }
    }

    /// Renames a full file aside and starts a new one; the chain continues.
    pub(super) fn rotate_if_full(&mut self, limit: Option<u64>, head: &ChainHead) -> io::Result<bool> {
        let path = match self {
            Output::File { path, written, .. } if limit.is_some_and(|limit| *written >= limit) => path.clone(),
            _ => return Ok(false),
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
        Ok(true)
    }
}
