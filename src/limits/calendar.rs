//! Civil dates in UTC, for refills: dates and midnights over the calendar
//! of [`crate::time`] (proleptic Gregorian, no time zone database).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::time::{civil_from_days, days_from_civil, days_in_month};

const DAY: u64 = 86_400;

/// The UTC date of `at` (times before 1970 count as 1970-01-01).
pub(crate) fn date_of(at: SystemTime) -> (i64, u32, u32) {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    civil_from_days((secs / DAY) as i64)
}

/// 00:00 UTC of a date (dates before 1970 give the epoch).
pub(crate) fn midnight(year: i64, month: u32, day: u32) -> SystemTime {
    let days = days_from_civil(year, month, day).max(0) as u64;
    UNIX_EPOCH + Duration::from_secs(days * DAY)
}

/// `day`, or the month's last day when the month is shorter.
pub(crate) fn clamp_day(year: i64, month: u32, day: u8) -> u32 {
    u32::from(day).min(days_in_month(year, month))
}

pub(crate) fn previous_month(year: i64, month: u32) -> (i64, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

pub(crate) fn next_month(year: i64, month: u32) -> (i64, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_midnights_of_instants() {
        let at = UNIX_EPOCH + Duration::from_secs(20_788 * DAY + 3_600);
        assert_eq!(date_of(at), (2026, 12, 1));
        assert_eq!(
            midnight(2026, 12, 1),
            UNIX_EPOCH + Duration::from_secs(20_788 * DAY)
        );
        assert_eq!(date_of(UNIX_EPOCH - Duration::from_secs(1)), (1970, 1, 1));
        assert_eq!(midnight(1969, 12, 31), UNIX_EPOCH);
        assert_eq!(clamp_day(2100, 2, 31), 28);
        assert_eq!(clamp_day(2000, 2, 31), 29);
        assert_eq!(next_month(2026, 12), (2027, 1));
        assert_eq!(previous_month(2027, 1), (2026, 12));
    }
}
