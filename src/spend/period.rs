//! UTC calendar days and months, the periods budgets and reports count in.

use std::time::{Duration, UNIX_EPOCH};

const DAY_MS: u64 = 86_400_000;

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u64);

impl Day {
    pub fn of_ms(ms: u64) -> Self {
        Self(ms / DAY_MS)
    }

    pub fn start_ms(self) -> u64 {
        self.0 * DAY_MS
    }

    /// `2026-12-02`
    pub fn label(self) -> String {
        day_of(self.start_ms())
    }

    /// `2026-12`
    pub fn month_label(self) -> String {
        month_of(self.start_ms())
    }

    /// The first day of this day's month.
    pub fn first_of_month(self) -> Self {
        let label = self.label();
        parse_day(&format!("{}-01", &label[..7])).unwrap_or(self)
    }

    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The UTC day of a Unix-ms instant: `2026-12-02`.
pub fn day_of(ms: u64) -> String {
    rfc3339(ms)[..10].to_string()
}

/// The UTC month of a Unix-ms instant: `2026-12`.
pub fn month_of(ms: u64) -> String {
    rfc3339(ms)[..7].to_string()
}

/// Parses `YYYY-MM-DD` (a real date).
pub fn parse_day(text: &str) -> Option<Day> {
    if text.len() != 10 || !text.is_char_boundary(10) {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
    let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    // humantime accepts 2026-02-30 as March 2nd: insist on the same label.
    (day_of(ms) == text).then_some(Day::of_ms(ms))
}

pub fn next_day_start_ms(now_ms: u64) -> u64 {
    (now_ms / DAY_MS + 1) * DAY_MS
}

pub fn next_month_start_ms(now_ms: u64) -> u64 {
    let month = month_of(now_ms);
    let (year, month) = (
        month[..4].parse::<u32>().unwrap_or(1970),
        month[5..].parse::<u32>().unwrap_or(1),
    );
    let (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    parse_day(&format!("{year:04}-{month:02}-01")).map_or(next_day_start_ms(now_ms), Day::start_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_are_utc_calendar_periods() {
        let t = parse_day("2026-12-31").unwrap().start_ms() + 3_600_000;
        assert_eq!(day_of(t), "2026-12-31");
        assert_eq!(month_of(t), "2026-12");
        assert_eq!(day_of(next_day_start_ms(t)), "2027-01-01");
        assert_eq!(next_month_start_ms(t), parse_day("2027-01-01").unwrap().start_ms());
        let feb = parse_day("2028-02-29").unwrap();
        assert_eq!(feb.first_of_month().label(), "2028-02-01");
        assert_eq!(
            next_month_start_ms(feb.start_ms()),
            parse_day("2028-03-01").unwrap().start_ms()
        );
        assert!(parse_day("2026-02-30").is_none());
        assert!(parse_day("2026-2-3").is_none());
        assert!(parse_day("yesterday!").is_none());
    }
}
