//! Record timestamps (RFC 3339, UTC, milliseconds) without the formatting
//! machinery per request: the date and time of day change once a second, so
//! each thread keeps the last second it rendered and only adds the milliseconds.

use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-29T18:00:00.000Z`
pub(crate) const LEN: usize = 24;
/// `2026-11-29T18:00:00`
const SECONDS_LEN: usize = 19;

/// Renders `now` into `buf` and returns the text.
pub(crate) fn rfc3339_millis(now: SystemTime, buf: &mut [u8; LEN]) -> &str {
    thread_local! {
        /// The last whole second this thread rendered, and its text.
        static LAST: Cell<(u64, [u8; SECONDS_LEN])> = const { Cell::new((u64::MAX, [0; SECONDS_LEN])) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    let seconds = LAST.with(|last| {
        let (rendered_secs, text) = last.get();
        if rendered_secs == secs {
            return text;
        }
        let mut text = [0u8; SECONDS_LEN];
        let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        // "YYYY-MM-DDTHH:MM:SSZ": everything but the zone, which follows the milliseconds.
        let mut full = [0u8; SECONDS_LEN + 1];
        let _ = write!(&mut full[..], "{whole}");
        text.copy_from_slice(&full[..SECONDS_LEN]);
        last.set((secs, text));
        text
    });
    buf[..SECONDS_LEN].copy_from_slice(&seconds);
    buf[SECONDS_LEN] = b'.';
    buf[SECONDS_LEN + 1] = b'0' + (millis / 100) as u8;
    buf[SECONDS_LEN + 2] = b'0' + (millis / 10 % 10) as u8;
    buf[SECONDS_LEN + 3] = b'0' + (millis % 10) as u8;
    buf[LEN - 1] = b'Z';
    std::str::from_utf8(buf).expect("the timestamp is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_humantime_across_seconds_and_days() {
        let starts = [0u64, 1_764_442_799, 1_764_442_800, 4_102_444_799];
        for start in starts {
            for offset_ms in [0u64, 1, 9, 10, 99, 100, 999, 1_000, 1_001, 86_399_999, 86_400_000] {
                let t = UNIX_EPOCH + Duration::from_secs(start) + Duration::from_millis(offset_ms);
                let mut buf = [0u8; LEN];
                let ours = rfc3339_millis(t, &mut buf).to_string();
                assert_eq!(ours, humantime::format_rfc3339_millis(t).to_string(), "at {t:?}");
            }
        }
    }
}
