//! Calendar windows in UTC, from the host clock's Unix seconds (never a
//! local time zone): a day is 86 400 s from 00:00, a week starts on Monday
//! 00:00, a month runs from the 1st 00:00 to the next 1st. Leap seconds do not
//! exist in Unix time, so these are exact.

use crate::config::Calendar;

const DAY: u64 = 86_400;

/// One calendar window: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// Its length in seconds (`w` of `RateLimit-Policy`).
    pub fn length(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Seconds from `now` to the reset (`t`, `Retry-After`), at least 1.
    pub fn seconds_left(&self, now: u64) -> u64 {
        self.end.saturating_sub(now).max(1)
    }
}

/// The window of `period` that contains `now` (Unix seconds).
pub fn span(period: Calendar, now: u64) -> Span {
    let day = now / DAY;
    match period {
        Calendar::Day => Span {
            start: day * DAY,
            end: (day + 1) * DAY,
        },
        Calendar::Week => {
            // 1970-01-01 was a Thursday: Monday-based weekday is (day + 3) % 7.
            let monday = day - (day + 3) % 7;
            Span {
                start: monday * DAY,
                end: (monday + 7) * DAY,
            }
        }
        Calendar::Month => {
            let (year, month, _) = civil_from_days(day);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            Span {
                start: days_from_civil(year, month, 1) * DAY,
                end: days_from_civil(next_year, next_month, 1) * DAY,
            }
        }
    }
}

/// (year, month 1–12, day 1–31) of days since 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's algorithm, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (year ≥ 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// 2026-12-06 21:49:52 UTC, a Sunday.
    const NOW: u64 = 1_796_593_792;

    #[test]
    fn windows_are_aligned_to_utc_boundaries() {
        let day = span(Calendar::Day, NOW);
        assert_eq!(
            day,
            Span {
                start: 1_796_515_200,
                end: 1_796_601_600
            }
        );
        // The week began on Monday 2026-11-30 00:00 UTC.
        let week = span(Calendar::Week, NOW);
        assert_eq!(week.start, 1_795_996_800);
        assert_eq!(week.length(), 7 * DAY);
        // December 2026: the 1st to January 1st, 31 days.
        let month = span(Calendar::Month, NOW);
        assert_eq!(month.start, 1_796_083_200);
        assert_eq!(month.end, 1_798_761_600);
        assert_eq!(month.length(), 31 * DAY);
        assert_eq!(month.seconds_left(month.end - 1), 1);
        assert_eq!(month.seconds_left(month.end + 5), 1);
    }

    #[test]
    fn months_have_their_own_lengths_and_leap_years_count() {
        let length = |y, m| {
            let start = days_from_civil(y, m, 1) * DAY;
            span(Calendar::Month, start + 1).length() / DAY
        };
        assert_eq!(length(2026, 2), 28);
        assert_eq!(length(2028, 2), 29);
        assert_eq!(length(2100, 2), 28);
        assert_eq!(length(2000, 2), 29);
        assert_eq!(length(2026, 4), 30);
        // The boundary second belongs to the new window.
        let march = days_from_civil(2026, 3, 1) * DAY;
        assert_eq!(span(Calendar::Month, march).start, march);
        assert_eq!(span(Calendar::Month, march - 1).end, march);
        for days in [0, 59, 60, 365, 10_957, 20_000, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
