//! Where records go: stdout, or the audit file (opened so that the chain
//! continues, checked to still be the file at its path, rotated when full,
//! synced as `audit.fsync` says).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
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

/// Bytes read at a time from the end of the audit file.
const TAIL_BLOCK: u64 = 64 * 1024;

/// The length of the file up to its last newline, and the bytes before that
/// point from the start of its last non-blank line on: read backwards in
/// blocks, so that opening a trail of many gigabytes costs what a small one does.
fn read_tail(file: &mut File) -> io::Result<(u64, Vec<u8>)> {
    let len = file.metadata()?.len();
    let (mut start, mut tail) = (len, Vec::new());
    while start > 0 {
        let step = TAIL_BLOCK.min(start);
        start -= step;
        let mut block = vec![0; step as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        // The last non-blank line before `end`, whole once a newline precedes it.
        let complete = &tail[..end];
        let Some(last) = complete.iter().rposition(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if let Some(line_start) = complete[..last].iter().rposition(|&b| b == b'\n') {
            return Ok((start + end as u64 + 1, tail[line_start + 1..end].to_vec()));
        }
    }
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    tail.truncate(complete);
    Ok((complete as u64, tail))
}

impl Output {
    pub(super) fn open_file(path: PathBuf) -> io::Result<(Self, ChainHead)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        // Only a regular file has a chain to continue (`/dev/full`, a FIFO… do not).
        let (complete, last_lines) = if file.metadata()?.is_file() {
            read_tail(&mut file)?
        } else {
            (0, Vec::new())
        };
        let len = file.metadata()?.len();
        // A crash in the middle of a batch can leave a partial last line; it
        // belongs to a request whose response was never sent. Drop it.
        if complete < len && file.metadata()?.is_file() {
            tracing::warn!(
                bytes = len - complete,
                "dropping a partial last audit line left by a crash"
            );
            file.set_len(complete)?;
        }
        let head = chain::head_of(&String::from_utf8_lossy(&last_lines)).unwrap_or_else(ChainHead::genesis);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a whole-file read finds: the complete length and its last non-blank line.
    fn whole(bytes: &[u8]) -> (u64, String) {
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&bytes[..complete]);
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        (complete as u64, last.to_string())
    }

    fn tail_of(bytes: &[u8]) -> (u64, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        let (complete, last) = read_tail(&mut file).unwrap();
        let text = String::from_utf8_lossy(&last);
        (
            complete,
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string(),
        )
    }

    #[test]
    fn the_tail_read_backwards_finds_what_a_whole_read_finds() {
        let many: String = (0..500)
            .map(|i| format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "x".repeat(300)))
            .collect();
        let long_last = format!(
            "{many}{{\"seq\":500,\"pad\":\"{}\"}}\n",
            "y".repeat(3 * TAIL_BLOCK as usize)
        );
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"partial, no newline".to_vec(),
            b"{\"seq\":1}\n".to_vec(),
            b"{\"seq\":1}\n{\"seq\":2}\n".to_vec(),
            b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3, cut".to_vec(),
            b"{\"seq\":1}\n{\"seq\":2}\n\n  \n".to_vec(),
            many.clone().into_bytes(),
            format!("{many}{{\"seq\":500, cut short").into_bytes(),
            long_last.into_bytes(),
        ];
        for bytes in cases {
            let expected = whole(&bytes);
            assert_eq!(
                tail_of(&bytes),
                expected,
                "{:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
            );
        }
    }
}
