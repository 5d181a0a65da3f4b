//! RFC 3339 timestamps, through `humantime`.
//!
//! Written in UTC with milliseconds (`2026-03-01T12:00:00.000Z`). Read in any
//! RFC 3339 form: `Z` or a numeric offset (`+03:00`), `T` or `t`, any number
//! of fractional digits. `humantime` itself reads only UTC, so a numeric
//! offset is applied here.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::latest_time;

/// `at` as RFC 3339, UTC, milliseconds. Never fails: stores refuse times
/// outside 1970..=9999, but a record written by another tool may hold one,
/// and showing it must not take the request (or the process) down, so such
/// a time is shown clamped to the nearest end of that range.
pub(crate) fn format(at: SystemTime) -> String {
    let at = at.clamp(UNIX_EPOCH, latest_time());
    let mut text = String::with_capacity(24);
    // `humantime` formats every instant in the clamped range; the fallback
    // only keeps a formatter error from ever becoming a panic.
    if write!(text, "{}", humantime::format_rfc3339_millis(at)).is_err() {
        text.clear();
        text.push_str(crate::store::LATEST_TIME_TEXT);
    }
    text
}

/// Parses an RFC 3339 timestamp; the error says what a valid one looks like.
pub(crate) fn parse(text: &str) -> Result<SystemTime, &'static str> {
    const EXPECTED: &str =
        "not an RFC 3339 timestamp such as 2030-01-31T12:00:00Z or 2030-01-31T15:00:00+03:00";
    if !text.is_ascii() || text.len() < "2030-01-31T12:00:00Z".len() || text.len() > 64 {
        return Err(EXPECTED);
    }
    let text = text.to_ascii_uppercase();
    if text.as_bytes()[10] != b'T' {
        return Err(EXPECTED);
    }
    let (utc, offset) = if let Some(local) = text.strip_suffix('Z') {
        (format!("{local}Z"), 0i64)
    } else {
        let (local, offset) = text.split_at(text.len() - 6);
        let b = offset.as_bytes();
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(EXPECTED),
        };
        let digits = |s: &[u8]| -> Option<i64> {
            s.iter().try_fold(0i64, |acc, &d| {
                d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
            })
        };
        let (Some(hours), b':', Some(minutes)) = (digits(&b[1..3]), b[3], digits(&b[4..6])) else {
            return Err(EXPECTED);
        };
        if hours > 23 || minutes > 59 {
            return Err(EXPECTED);
        }
        (format!("{local}Z"), sign * (hours * 3600 + minutes * 60))
    };
    if !local_shape_ok(&utc[..utc.len() - 1]) {
        return Err(EXPECTED);
    }
    let local = humantime::parse_rfc3339(&utc).map_err(|_| EXPECTED)?;
    // Local time = UTC + offset, so UTC = local time - offset.
    let shift = Duration::from_secs(offset.unsigned_abs());
    let at = if offset >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    at.ok_or(EXPECTED)
}

/// `YYYY-MM-DDTHH:MM:SS` with optional `.` and at least one digit: checked
/// here because `humantime` lets a few malformed forms through.
fn local_shape_ok(local: &str) -> bool {
    let b = local.as_bytes();
    if b.len() < 19 {
        return false;
    }
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let head_ok = shape.iter().zip(b).all(|(&want, &got)| match want {
        b'd' => got.is_ascii_digit(),
        _ => got == want,
    });
    let fraction = &b[19..];
    let fraction_ok = match fraction.split_first() {
        None => true,
        Some((b'.', digits)) => {
            !digits.is_empty() && digits.len() <= 9 && digits.iter().all(u8::is_ascii_digit)
        }
        Some(_) => false,
    };
    head_ok && fraction_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reads_utc_offsets_and_fractions() {
        // 2030-01-31T12:00:00Z
        let noon = at(1_896_091_200);
        assert_eq!(parse("2030-01-31T12:00:00Z"), Ok(noon));
        assert_eq!(parse("2030-01-31t12:00:00z"), Ok(noon));
        assert_eq!(parse("2030-01-31T15:00:00+03:00"), Ok(noon));
        assert_eq!(parse("2030-01-31T06:30:00-05:30"), Ok(noon));
        assert_eq!(parse("2030-01-31T12:00:00+00:00"), Ok(noon));
        assert_eq!(
            parse("2030-01-31T12:00:00.250Z"),
            Ok(noon + Duration::from_millis(250))
        );
        assert_eq!(
            parse("2030-01-31T15:00:00.5+03:00"),
            Ok(noon + Duration::from_millis(500))
        );
    }

    #[test]
    fn refuses_what_is_not_rfc_3339() {
        for bad in [
            "",
            "tomorrow",
            "2030-01-31",
            "2030-01-31 12:00:00Z",
            "2030-01-31T12:00:00",
            "2030-01-31T12:00:00+3:00",
            "2030-01-31T12:00:00+24:00",
            "2030-13-01T12:00:00Z",
            "2030-01-31T12:00:00ZZ",
            "2030-01-31T12:00:00Z+00:00",
            "2030-01-31T12:00:00.Z",
            "2030-01-31T12:00:00.1234567890Z",
            "2030-01-31T1:00:00Z",
            "1600000000",
            "2030-01-31T12:00:00Ж",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_times_outside_what_stores_accept_clamped_without_panicking() {
        let latest = format(latest_time());
        assert_eq!(latest, "9999-12-31T23:59:59.999Z");
        assert_eq!(latest, crate::store::LATEST_TIME_TEXT);
        // 10000-01-01T13:59:59Z, the instant of 9999-12-31T23:59:59-14:00.
        let year_10000 = latest_time() + Duration::from_secs(14 * 3600);
        assert_eq!(format(year_10000), latest);
        assert_eq!(
            format(UNIX_EPOCH + Duration::from_secs(u32::MAX as u64 * 1000)),
            latest
        );
        assert_eq!(
            format(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn reads_offsets_past_year_9999_as_the_instant_they_name() {
        let at = parse("9999-12-31T23:59:59-14:00").unwrap();
        assert!(
            at > latest_time(),
            "parsing does not clamp; validation refuses it"
        );
    }

    #[test]
    fn writes_utc_with_milliseconds() {
        assert_eq!(format(at(1_896_091_200)), "2030-01-31T12:00:00.000Z");
        let parsed = parse(&format(at(1_896_091_200) + Duration::from_millis(7))).unwrap();
        assert_eq!(parsed, at(1_896_091_200) + Duration::from_millis(7));
    }
}
