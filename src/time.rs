//! RFC 3339 times: the one parser and printer of the management API and the
//! `tower-api-key` CLI, and the civil calendar under them (also used for
//! credit refills).
//!
//! **Reading** ([`parse_rfc3339`]): `YYYY-MM-DDTHH:MM:SS[.F](Z|±HH:MM)`,
//! with `T` and `Z` in either case, one to nine fractional digits, years
//! 0001 to 9999 and offsets up to ±23:59. The instant named is returned
//! as it is (`9999-12-31T23:59:59-14:00` lies in year 10000): what is
//! acceptable, such as an expiry in the future, is the caller's rule.
//!
//! A **leap second** (`23:59:60`, or `:60` in any minute, since an offset
//! moves it) is read as the last instant of its minute,
//! `23:59:59.999999999` (nanoseconds, the finest unit of [`SystemTime`]),
//! whatever fraction it carries: [`SystemTime`] counts no leap seconds, and
//! this keeps the leap second inside its minute and after every other
//! instant of it. A store keeps microseconds, so it stores
//! `23:59:59.999999`.
//!
//! **Writing** ([`format_rfc3339_millis`], [`format_rfc3339_micros`]):
//! UTC, `Z`, a fixed number of fractional digits, never failing. Stores
//! accept no time outside 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z
//! ([`store::latest_time`](crate::store::latest_time)); a record written by
//! another tool may hold one, and it is shown clamped to the nearest end
//! of that range rather than as a year RFC 3339 cannot write.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use tower_api_key::time::{format_rfc3339_micros, format_rfc3339_millis, parse_rfc3339};
//!
//! let at = parse_rfc3339("2030-01-31T15:00:00.25+03:00")?;
//! assert_eq!(format_rfc3339_millis(at), "2030-01-31T12:00:00.250Z");
//! assert_eq!(format_rfc3339_micros(at), "2030-01-31T12:00:00.250000Z");
//!
//! // A leap second: the last instant of its minute.
//! let leap = parse_rfc3339("2016-12-31T23:59:60Z")?;
//! assert_eq!(format_rfc3339_micros(leap), "2016-12-31T23:59:59.999999Z");
//!
//! // Out of range: clamped when written.
//! let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
//! assert_eq!(format_rfc3339_millis(far), "9999-12-31T23:59:59.999Z");
//! # Ok::<(), tower_api_key::time::InvalidTime>(())
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The last instant written: 9999-12-31T23:59:59.999Z, in milliseconds
/// since the epoch (the same instant as `store::latest_time`).
const LATEST_MILLIS: u64 = 253_402_300_799_999;

/// A text that is not an RFC 3339 time [`parse_rfc3339`] reads. Its message
/// shows what one looks like, never the text (it may be a pasted secret).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidTime {}

impl fmt::Display for InvalidTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not an RFC 3339 timestamp such as 2030-01-31T12:00:00Z or 2030-01-31T15:00:00+03:00",
        )
    }
}

impl std::error::Error for InvalidTime {}

/// Parses an RFC 3339 time (see the [module](self) for the forms read and
/// for leap seconds).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, InvalidTime> {
    parse(text.as_bytes()).ok_or(InvalidTime {})
}

/// A text that is not a duration [`parse_duration`] reads. Its message
/// shows what one looks like, never the text (it may be a pasted secret).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidDuration {}

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a duration such as 90d, 12h, 30m, 45s or 1h30m \
             (units: w, d, h, m or min, s, ms)",
        )
    }
}

impl std::error::Error for InvalidDuration {}

/// Parses a duration: one or more `<whole number><unit>` parts, optionally
/// separated by spaces, added up (`90d`, `1h30m`, `1h 30m`). Units: `w`
/// (7 days), `d`, `h`, `m` or `min`, `s`, `ms`, and their long forms
/// (`days`, `hours`, `minutes`, `seconds`, ...). Months and years are
/// refused: their length is not fixed. The one parser of the management
/// API's `unused_for` and the CLI's durations (`--expires-in`,
/// `--unused-for`).
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::time::parse_duration;
///
/// assert_eq!(parse_duration("90d")?, Duration::from_secs(90 * 86_400));
/// assert_eq!(parse_duration("1h 30m")?, Duration::from_secs(5_400));
/// assert!(parse_duration("soon").is_err());
/// # Ok::<(), tower_api_key::time::InvalidDuration>(())
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = InvalidDuration {};
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        // At most 19 digits: every such number fits a u64.
        if digits == 0 || digits > 19 {
            return Err(invalid);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| InvalidDuration {})?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..letters] {
            "ms" | "msec" | "millis" | "milliseconds" | "millisecond" => Duration::from_millis(1),
            "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(1),
            "m" | "min" | "mins" | "minute" | "minutes" => Duration::from_secs(60),
            "h" | "hr" | "hrs" | "hour" | "hours" => Duration::from_secs(3_600),
            "d" | "day" | "days" => Duration::from_secs(DAY as u64),
            "w" | "week" | "weeks" => Duration::from_secs(7 * DAY as u64),
            _ => return Err(invalid),
        };
        let part = unit
            .checked_mul(u32::try_from(n).map_err(|_| InvalidDuration {})?)
            .ok_or(InvalidDuration {})?;
        total = total.checked_add(part).ok_or(InvalidDuration {})?;
        rest = rest[letters..].trim_start();
    }
    Ok(total)
}

/// `at` in UTC with three fractional digits, clamped to 1970..=9999 (see
/// the [module](self)): `2030-01-31T12:00:00.250Z`.
pub fn format_rfc3339_millis(at: SystemTime) -> String {
    format(at, 3)
}

/// `at` in UTC with six fractional digits (what the SQL stores keep),
/// clamped to 1970..=9999 (see the [module](self)):
/// `2030-01-31T12:00:00.250000Z`.
pub fn format_rfc3339_micros(at: SystemTime) -> String {
    format(at, 6)
}

/// `at` with `digits` (3 or 6) fractional digits, truncated.
fn format(at: SystemTime, digits: u32) -> String {
    let latest = Duration::from_millis(LATEST_MILLIS);
    // Before the epoch: the epoch. Past the latest: the latest.
    let since = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .min(latest);
    let secs = since.as_secs() as i64;
    let fraction = since.subsec_nanos() / 10u32.pow(9 - digits);
    let (year, month, day) = civil_from_days(secs.div_euclid(DAY));
    let of_day = secs.rem_euclid(DAY);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:0width$}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        width = digits as usize,
    )
}

fn parse(b: &[u8]) -> Option<SystemTime> {
    // The longest form: 19 + '.' + 9 digits + an offset of 6.
    if b.len() < 20 || b.len() > 35 {
        return None;
    }
    let digits = |from: usize, len: usize| -> Option<i64> {
        b.get(from..from + len)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let punctuation = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':';
    if !punctuation {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if year < 1 || !(1..=12).contains(&month) {
        return None;
    }
    let (month, day) = (month as u32, day as u32);
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some((b'.', tail)) = rest.split_first() {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        for (i, c) in tail[..n].iter().enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &tail[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    // The leap second: the last nanosecond of second 59.
    let (second, nanos) = if second == 60 {
        (59, 999_999_999)
    } else {
        (second, nanos)
    };
    // Local time = UTC + offset.
    let secs =
        days_from_civil(year, month, day) * DAY + hour * 3600 + minute * 60 + second - offset;
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// Days since 1970-01-01 of a civil date (month 1..=12, day 1..=31), in
/// the proleptic Gregorian calendar.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Years counted from March, so the leap day ends the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The days of a month (1..=12) of a year.
pub(crate) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2030-01-31T12:00:00Z.
    const NOON: u64 = 1_896_091_200;

    #[test]
    fn durations_read_as_the_cli_and_the_api_write_them() {
        let d = |t: &str| parse_duration(t);
        assert_eq!(d("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(d("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(d("30min"), Ok(Duration::from_secs(1_800)));
        assert_eq!(d("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(d("1h30m15s"), Ok(Duration::from_secs(5_415)));
        for bad in [
            "",
            " ",
            "90",
            "d",
            "9x",
            "1y",
            "3M",
            "-1d",
            "1.5h",
            "1h-",
            "99999999999999999999d",
            "18446744073709551615w",
        ] {
            assert_eq!(d(bad), Err(InvalidDuration {}), "{bad:?}");
        }
    }

    #[test]
    fn day_counts_and_dates_agree_over_four_centuries() {
        for days in (-1000..150_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
    }

    #[test]
    fn reads_utc_offsets_and_fractions() {
        let noon = at(NOON);
        for text in [
            "2030-01-31T12:00:00Z",
            "2030-01-31t12:00:00z",
            "2030-01-31T15:00:00+03:00",
            "2030-01-31T06:30:00-05:30",
            "2030-01-31T12:00:00+00:00",
            "2030-01-31T12:00:00-00:00",
            "2030-01-31T12:00:00.000000000Z",
        ] {
            assert_eq!(parse_rfc3339(text), Ok(noon), "{text}");
        }
        assert_eq!(
            parse_rfc3339("2030-01-31T12:00:00.250Z"),
            Ok(noon + Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339("2030-01-31T15:00:00.5+03:00"),
            Ok(noon + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("2030-01-31T12:00:00.123456789Z"),
            Ok(noon + Duration::from_nanos(123_456_789))
        );
    }

    #[test]
    fn a_leap_second_is_the_last_instant_of_its_minute() {
        let last = at(NOON + 59) + Duration::from_nanos(999_999_999);
        for text in [
            "2030-01-31T12:00:60Z",
            "2030-01-31T12:00:60.5Z",
            "2030-01-31T12:00:60.000Z",
            "2030-01-31T15:00:60+03:00",
        ] {
            assert_eq!(parse_rfc3339(text), Ok(last), "{text}");
        }
        // Before the next minute, after every other instant of its own.
        assert!(last < at(NOON + 60));
        assert!(last > parse_rfc3339("2030-01-31T12:00:59.999999998Z").unwrap());
        assert_eq!(
            format_rfc3339_millis(parse_rfc3339("2016-12-31T23:59:60Z").unwrap()),
            "2016-12-31T23:59:59.999Z"
        );
        assert!(parse_rfc3339("2030-01-31T12:00:61Z").is_err());
    }

    #[test]
    fn refuses_what_is_not_rfc_3339() {
        for bad in [
            "",
            "tomorrow",
            "1600000000",
            "2030-01-31",
            "2030-01-31 12:00:00Z",
            "2030-01-31T12:00:00",
            "2030-01-31T12:00:00+3:00",
            "2030-01-31T12:00:00+24:00",
            "2030-01-31T12:00:00+03:60",
            "2030-01-31T12:00:00+0300",
            "2030-13-01T12:00:00Z",
            "2030-00-01T12:00:00Z",
            "2030-02-29T12:00:00Z",
            "2100-02-29T12:00:00Z",
            "2030-01-00T12:00:00Z",
            "2030-01-31T24:00:00Z",
            "2030-01-31T12:60:00Z",
            "2030-01-31T12:00:00ZZ",
            "2030-01-31T12:00:00Z+00:00",
            "2030-01-31T12:00:00.Z",
            "2030-01-31T12:00:00.1234567890Z",
            "2030-01-31T1:00:00Z",
            "+2030-01-31T12:00:00Z",
            "-030-01-31T12:00:00Z",
            "0000-01-01T00:00:00Z",
            "2030-01-31T12:00:00Ж",
            "2030-01-31T12:00:00 Z",
        ] {
            assert_eq!(parse_rfc3339(bad), Err(InvalidTime {}), "{bad:?}");
        }
        assert!(!InvalidTime {}.to_string().contains("tomorrow"));
    }

    #[test]
    fn reads_leap_days_and_both_ends_of_four_digit_years() {
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_ok());
        let first = parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        assert!(first < UNIX_EPOCH);
        let last = parse_rfc3339("9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(last, UNIX_EPOCH + Duration::from_millis(LATEST_MILLIS));
        // An offset may name an instant past year 9999: read, not clamped.
        let past = parse_rfc3339("9999-12-31T23:59:59-14:00").unwrap();
        assert!(past > last);
    }

    #[test]
    fn writes_utc_with_millis_or_micros_and_reads_it_back() {
        let t = at(NOON) + Duration::from_micros(7_001);
        assert_eq!(format_rfc3339_millis(t), "2030-01-31T12:00:00.007Z");
        assert_eq!(format_rfc3339_micros(t), "2030-01-31T12:00:00.007001Z");
        assert_eq!(parse_rfc3339(&format_rfc3339_micros(t)), Ok(t));
        // Truncated, never rounded up into the next unit.
        let t = at(NOON) + Duration::from_nanos(999_999_999);
        assert_eq!(format_rfc3339_millis(t), "2030-01-31T12:00:00.999Z");
        assert_eq!(format_rfc3339_micros(t), "2030-01-31T12:00:00.999999Z");
        for text in [
            "1970-01-01T00:00:00.000000Z",
            "2000-02-29T12:34:56.123456Z",
            "2038-01-19T03:14:08.000000Z",
            "9999-12-31T23:59:59.999000Z",
        ] {
            assert_eq!(format_rfc3339_micros(parse_rfc3339(text).unwrap()), text);
        }
    }

    #[test]
    fn writes_times_out_of_range_clamped_without_panicking() {
        let latest = "9999-12-31T23:59:59.999Z";
        assert_eq!(
            format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(LATEST_MILLIS)),
            latest
        );
        // The instant of 9999-12-31T23:59:59-14:00, in year 10000.
        let year_10000 = parse_rfc3339("9999-12-31T23:59:59-14:00").unwrap();
        assert_eq!(format_rfc3339_millis(year_10000), latest);
        assert_eq!(
            format_rfc3339_micros(year_10000),
            "9999-12-31T23:59:59.999000Z"
        );
        // i64::MAX microseconds, what a SQL store's column can hold: year 294247.
        let far = UNIX_EPOCH + Duration::from_micros(i64::MAX as u64);
        assert_eq!(format_rfc3339_millis(far), latest);
        assert_eq!(
            format_rfc3339_micros(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000Z"
        );
        let first = parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        assert_eq!(format_rfc3339_millis(first), "1970-01-01T00:00:00.000Z");
    }
}
