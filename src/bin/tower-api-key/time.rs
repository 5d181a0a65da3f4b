//! RFC 3339 times for the CLI: written in UTC with microseconds (what the
//! stores keep), read with `Z` or a numeric offset. Covers years 0001 to
//! 9999, the range stores accept, without panicking outside it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const EXPECTED: &str =
    "not an RFC 3339 time such as 2030-01-31T12:00:00Z or 2030-01-31T15:00:00+03:00";

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Microseconds since the epoch (negative before it), saturating.
fn micros(at: SystemTime) -> i128 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i128,
        // Round down, so 1 ns before the epoch is the microsecond before.
        Err(before) => -(before.duration().as_nanos().div_ceil(1000) as i128),
    }
}

/// `at` as RFC 3339 in UTC with six fractional digits.
pub fn format(at: SystemTime) -> String {
    let us = micros(at);
    let secs = us.div_euclid(1_000_000) as i64;
    let frac = us.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 time (`Z` or `±HH:MM`, up to nine fractional digits).
pub fn parse(text: &str) -> Result<SystemTime, String> {
    parse_inner(text).ok_or_else(|| EXPECTED.to_owned())
}

fn parse_inner(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if !text.is_ascii() || b.len() < 20 || b.len() > 64 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(range)?;
        s.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let punct_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':';
    if !punct_ok {
        return None;
    }
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y < 1 || !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0i64;
    if let Some((b'.', tail)) = rest.split_first() {
        let digits = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        for (i, c) in tail[..digits].iter().enumerate() {
            nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
        }
        rest = &tail[digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (oh, om) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Local time = UTC + offset.
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    let at = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos as u32))?
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos as u64))?
    };
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_utc_with_microseconds_and_reads_it_back() {
        // 2030-01-31T12:00:00Z
        let noon = UNIX_EPOCH + Duration::from_secs(1_896_091_200);
        let at = noon + Duration::from_micros(7);
        assert_eq!(format(at), "2030-01-31T12:00:00.000007Z");
        assert_eq!(parse(&format(at)), Ok(at));
        assert_eq!(parse("2030-01-31T15:00:00+03:00"), Ok(noon));
        assert_eq!(parse("2030-01-31t06:30:00-05:30"), Ok(noon));
    }

    #[test]
    fn covers_years_1_to_9999() {
        for text in [
            "0001-01-01T00:00:00.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "1970-01-01T00:00:00.000000Z",
            "2000-02-29T12:34:56.123456Z",
            "9999-12-31T23:59:59.999999Z",
        ] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn refuses_what_is_not_rfc_3339() {
        for bad in [
            "",
            "2030-01-31",
            "2030-01-31 12:00:00Z",
            "2030-01-31T12:00:00",
            "2030-02-30T12:00:00Z",
            "2030-01-31T12:00:00.Z",
            "2030-01-31T12:00:00+3:00",
            "2030-01-31T24:00:00Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
