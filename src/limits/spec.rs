//! What a key, an account or a route may carry: rate limits and credits, as
//! values. No state lives here.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use super::calendar;

/// Most rate limits one key (or one service account) carries.
pub const MAX_RATE_LIMITS: usize = 8;
/// The largest `limit` or `burst` of a [`RateLimit`].
pub const MAX_RATE: u32 = 1_000_000_000;
/// The longest period of a [`RateLimit`]: 366 days.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);
/// The most credits a key holds, and the largest refill.
pub const MAX_CREDITS: u64 = 1_000_000_000_000;

/// A rate limit: at most `limit` requests per `period`, refilled smoothly
/// (one every `period / limit`), of which at most `burst` at once.
///
/// The burst defaults to the limit: `5/1s` admits 5 requests at once, then
/// one every 200 ms. Text form: `5/1s`, or `5/1s,burst=10`.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::limits::RateLimit;
///
/// let limit: RateLimit = "5/1s".parse().unwrap();
/// assert_eq!(limit, RateLimit::new(5, Duration::from_secs(1)).unwrap());
/// assert_eq!(limit.burst(), 5);
/// assert_eq!(limit.with_burst(10).unwrap().to_string(), "5/1s,burst=10");
/// assert!("5/0s".parse::<RateLimit>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    limit: u32,
    period: Duration,
    burst: u32,
}

impl RateLimit {
    /// `limit` requests per `period`, with a burst of `limit`.
    ///
    /// Refused when `limit` is 0 or over [`MAX_RATE`], when `period` is under
    /// 1 ms, over [`MAX_PERIOD`] or not a whole number of milliseconds.
    pub fn new(limit: u32, period: Duration) -> Result<Self, LimitError> {
        if limit == 0 || limit > MAX_RATE {
            return Err(LimitError::RateOutOfRange);
        }
        if period < Duration::from_millis(1)
            || period > MAX_PERIOD
            || period.subsec_nanos() % 1_000_000 != 0
        {
            return Err(LimitError::PeriodOutOfRange);
        }
        Ok(Self {
            limit,
            period,
            burst: limit,
        })
    }

    /// The same limit with another burst (1 to [`MAX_RATE`]).
    pub fn with_burst(self, burst: u32) -> Result<Self, LimitError> {
        if burst == 0 || burst > MAX_RATE {
            return Err(LimitError::BurstOutOfRange);
        }
        Ok(Self { burst, ..self })
    }

    /// Requests per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Most requests admitted at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Nanoseconds between two requests at the sustained rate, rounded up:
    /// rounding can only make the limit stricter, never looser.
    pub(crate) fn emission_ns(&self) -> u64 {
        let period = self.period.as_nanos() as u64;
        period.div_ceil(u64::from(self.limit))
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateLimit({self})")
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, Period(self.period))?;
        if self.burst != self.limit {
            write!(f, ",burst={}", self.burst)?;
        }
        Ok(())
    }
}

impl FromStr for RateLimit {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, LimitError> {
        let expected = || LimitError::NotARateLimit;
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (
                rate,
                Some(burst.strip_prefix("burst=").ok_or_else(expected)?),
            ),
            None => (text, None),
        };
        let (limit, period) = rate.split_once('/').ok_or_else(expected)?;
        let limit = number(limit).ok_or_else(expected)?;
        let limit = u32::try_from(limit).map_err(|_| expected())?;
        let limit = Self::new(limit, parse_period(period)?)?;
        match burst {
            None => Ok(limit),
            Some(burst) => {
                let burst = number(burst).ok_or_else(expected)?;
                limit.with_burst(u32::try_from(burst).map_err(|_| expected())?)
            }
        }
    }
}

/// A period as text: a whole number and a unit, `ms`, `s`, `m`, `h` or `d`
/// (`1s`, `1m`, `1h`, `1d`, `500ms`).
pub fn parse_period(text: &str) -> Result<Duration, LimitError> {
    let expected = || LimitError::NotAPeriod;
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = text.split_at(digits);
    let n = number(n).ok_or_else(expected)?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(expected()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(expected)?;
    Ok(Duration::from_millis(ms))
}

/// A period written in the largest unit that divides it.
pub(crate) struct Period(pub(crate) Duration);

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms > 0 && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A decimal number of at most 19 digits, no sign, no spaces.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Checks a list of rate limits for a key or an account: at most
/// [`MAX_RATE_LIMITS`], no two alike.
pub fn check_rate_limits(limits: &[RateLimit]) -> Result<(), LimitError> {
    if limits.len() > MAX_RATE_LIMITS {
        return Err(LimitError::TooManyRateLimits);
    }
    for (i, limit) in limits.iter().enumerate() {
        if limits[..i].contains(limit) {
            return Err(LimitError::DuplicateRateLimit(*limit));
        }
    }
    Ok(())
}

/// Requests a key may still make, optionally refilled on a calendar.
///
/// Each admitted request spends its cost; at zero the key is refused with
/// `quota_exhausted`. A [`Refill`] sets `remaining` back to its amount at
/// 00:00 UTC every day, or every month on a given day.
///
/// ```
/// use tower_api_key::limits::{Credits, Refill};
///
/// let credits = Credits::new(3).unwrap().with_refill(Refill::daily(100).unwrap());
/// assert_eq!(credits.remaining(), 3);
/// assert_eq!(credits.refill().unwrap().amount(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credits {
    remaining: u64,
    refill: Option<Refill>,
}

impl Credits {
    /// `remaining` credits (at most [`MAX_CREDITS`]), never refilled.
    pub fn new(remaining: u64) -> Result<Self, LimitError> {
        check_credits(remaining)?;
        Ok(Self {
            remaining,
            refill: None,
        })
    }

    /// The same credits, refilled on `refill`'s calendar.
    pub fn with_refill(self, refill: Refill) -> Self {
        Self {
            refill: Some(refill),
            ..self
        }
    }

    /// The same refill with another number remaining; for stores.
    pub fn with_remaining(self, remaining: u64) -> Result<Self, LimitError> {
        check_credits(remaining)?;
        Ok(Self { remaining, ..self })
    }

    /// Credits left, as the store knew when it answered (replicas may hold
    /// a few more, leased and not yet spent).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The refill, if any.
    pub fn refill(&self) -> Option<&Refill> {
        self.refill.as_ref()
    }
}

fn check_credits(n: u64) -> Result<(), LimitError> {
    if n > MAX_CREDITS {
        return Err(LimitError::TooManyCredits);
    }
    Ok(())
}

/// How often credits are refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefillInterval {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month at 00:00 UTC on the refill's day (the month's last day
    /// when it has fewer days).
    Monthly,
}

impl RefillInterval {
    /// `daily` or `monthly`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }
}

impl FromStr for RefillInterval {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, LimitError> {
        match text {
            "daily" => Ok(Self::Daily),
            "monthly" => Ok(Self::Monthly),
            _ => Err(LimitError::NotARefillInterval),
        }
    }
}

/// Sets a key's remaining credits back to `amount` at 00:00 UTC, daily or
/// monthly. Unspent credits do not carry over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refill {
    amount: u64,
    interval: RefillInterval,
    day: u8,
}

impl Refill {
    /// `amount` credits every day at 00:00 UTC.
    pub fn daily(amount: u64) -> Result<Self, LimitError> {
        check_credits(amount)?;
        Ok(Self {
            amount,
            interval: RefillInterval::Daily,
            day: 1,
        })
    }

    /// `amount` credits every month on `day` (1 to 31; in shorter months
    /// the last day) at 00:00 UTC.
    pub fn monthly(amount: u64, day: u8) -> Result<Self, LimitError> {
        check_credits(amount)?;
        if !(1..=31).contains(&day) {
            return Err(LimitError::RefillDayOutOfRange);
        }
        Ok(Self {
            amount,
            interval: RefillInterval::Monthly,
            day,
        })
    }

    /// The credits a refill sets.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Daily or monthly.
    pub fn interval(&self) -> RefillInterval {
        self.interval
    }

    /// The day of the month of a monthly refill (1 for a daily one).
    pub fn day(&self) -> u8 {
        self.day
    }

    /// The latest refill time at or before `now`.
    pub fn last_due(&self, now: SystemTime) -> SystemTime {
        let (y, m, d) = calendar::date_of(now);
        match self.interval {
            RefillInterval::Daily => calendar::midnight(y, m, d),
            RefillInterval::Monthly => {
                let this = calendar::midnight(y, m, calendar::clamp_day(y, m, self.day));
                if this <= now {
                    this
                } else {
                    let (py, pm) = calendar::previous_month(y, m);
                    calendar::midnight(py, pm, calendar::clamp_day(py, pm, self.day))
                }
            }
        }
    }

    /// The first refill time after `now`.
    pub fn next_due(&self, now: SystemTime) -> SystemTime {
        let (y, m, d) = calendar::date_of(now);
        match self.interval {
            RefillInterval::Daily => calendar::midnight(y, m, d) + Duration::from_secs(86_400),
            RefillInterval::Monthly => {
                let this = calendar::midnight(y, m, calendar::clamp_day(y, m, self.day));
                if this > now {
                    this
                } else {
                    let (ny, nm) = calendar::next_month(y, m);
                    calendar::midnight(ny, nm, calendar::clamp_day(ny, nm, self.day))
                }
            }
        }
    }
}

/// A rate limit, credit or refill that cannot be: which rule it breaks.
/// Never holds the text it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// A rate limit's limit is 0 or over [`MAX_RATE`].
    RateOutOfRange,
    /// A rate limit's burst is 0 or over [`MAX_RATE`].
    BurstOutOfRange,
    /// A rate limit's period is under 1 ms, over [`MAX_PERIOD`] or not a
    /// whole number of milliseconds.
    PeriodOutOfRange,
    /// Text that is not a rate limit (`LIMIT/PERIOD[,burst=BURST]`).
    NotARateLimit,
    /// Text that is not a period (a whole number and a unit).
    NotAPeriod,
    /// More than [`MAX_RATE_LIMITS`] rate limits for one key or account.
    TooManyRateLimits,
    /// One rate limit given twice in a list.
    DuplicateRateLimit(RateLimit),
    /// Credits or a refill amount over [`MAX_CREDITS`].
    TooManyCredits,
    /// Text that is not a refill interval (`daily` or `monthly`).
    NotARefillInterval,
    /// A monthly refill's day outside 1 to 31.
    RefillDayOutOfRange,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateOutOfRange => {
                write!(f, "a rate limit's limit must be between 1 and {MAX_RATE}")
            }
            Self::BurstOutOfRange => {
                write!(f, "a rate limit's burst must be between 1 and {MAX_RATE}")
            }
            Self::PeriodOutOfRange => f.write_str(
                "a rate limit's period must be a whole number of milliseconds from 1ms to 366d",
            ),
            Self::NotARateLimit => f.write_str(
                "a rate limit reads LIMIT/PERIOD or LIMIT/PERIOD,burst=BURST, \
                 such as 5/1s or 100/1m,burst=20",
            ),
            Self::NotAPeriod => {
                f.write_str("a period is a whole number and a unit (ms, s, m, h or d), such as 1s")
            }
            Self::TooManyRateLimits => {
                write!(
                    f,
                    "at most {MAX_RATE_LIMITS} rate limits per key or account"
                )
            }
            Self::DuplicateRateLimit(limit) => write!(f, "rate limit {limit} is given twice"),
            Self::TooManyCredits => write!(f, "credits are at most {MAX_CREDITS}"),
            Self::NotARefillInterval => {
                f.write_str("a refill interval is \"daily\" or \"monthly\"")
            }
            Self::RefillDayOutOfRange => f.write_str("a monthly refill's day is 1 to 31"),
        }
    }
}

impl std::error::Error for LimitError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        let (date, time) = text.split_once('T').unwrap();
        let p: Vec<u32> = date.split('-').map(|s| s.parse().unwrap()).collect();
        let t: Vec<u64> = time.split(':').map(|s| s.parse().unwrap()).collect();
        calendar::midnight(p[0] as i64, p[1], p[2])
            + Duration::from_secs(t[0] * 3600 + t[1] * 60 + t[2])
    }

    #[test]
    fn rate_limits_read_and_write_the_same_text() {
        for text in [
            "5/1s",
            "100/1m,burst=20",
            "1/1d",
            "10/500ms",
            "7/90m",
            "3/36h,burst=1",
        ] {
            let limit: RateLimit = text.parse().unwrap();
            assert_eq!(limit.to_string(), text);
        }
        let limit: RateLimit = "5/60s".parse().unwrap();
        assert_eq!(limit.to_string(), "5/1m");
    }

    #[test]
    fn bad_rate_limits_are_refused_with_the_rule() {
        for text in [
            "",
            "5",
            "/1s",
            "5/",
            "0/1s",
            "5/0s",
            "5/1",
            "5/1w",
            "-5/1s",
            "5/1s,burst=0",
            "5/1s,brust=2",
            "5/367d",
            "1000000001/1s",
            " 5/1s",
            "5/1s,burst=1000000001",
            "99999999999999999999/1s",
        ] {
            let error = text.parse::<RateLimit>().unwrap_err().to_string();
            assert!(!error.is_empty(), "{text}");
        }
    }

    /// Each refusal names its rule as a variant a caller can branch on, and
    /// its text never repeats the input.
    #[test]
    fn limit_errors_name_their_case() {
        let parse = |text: &str| text.parse::<RateLimit>().unwrap_err();
        assert_eq!(parse("0/1s"), LimitError::RateOutOfRange);
        assert_eq!(parse("5/0s"), LimitError::PeriodOutOfRange);
        assert_eq!(parse("5/367d"), LimitError::PeriodOutOfRange);
        assert_eq!(parse("5/1s,burst=0"), LimitError::BurstOutOfRange);
        assert_eq!(parse("5/1s,brust=2"), LimitError::NotARateLimit);
        assert_eq!(parse("5/1w"), LimitError::NotAPeriod);
        assert_eq!(parse_period("soon").unwrap_err(), LimitError::NotAPeriod);
        let a: RateLimit = "5/1s".parse().unwrap();
        assert_eq!(
            check_rate_limits(&[a, a]).unwrap_err(),
            LimitError::DuplicateRateLimit(a)
        );
        let many: Vec<_> = (1..=9)
            .map(|n| RateLimit::new(n, Duration::from_secs(1)).unwrap())
            .collect();
        assert_eq!(
            check_rate_limits(&many).unwrap_err(),
            LimitError::TooManyRateLimits
        );
        assert_eq!(
            Credits::new(MAX_CREDITS + 1).unwrap_err(),
            LimitError::TooManyCredits
        );
        assert_eq!(
            Refill::monthly(1, 32).unwrap_err(),
            LimitError::RefillDayOutOfRange
        );
        assert_eq!(
            "weekly".parse::<RefillInterval>().unwrap_err(),
            LimitError::NotARefillInterval
        );
        let secret = "tak_0123456789abcdef_notarealsecret";
        assert!(!parse(secret).to_string().contains(secret));
    }

    #[test]
    fn emission_interval_rounds_up_so_the_limit_is_never_looser() {
        let limit = RateLimit::new(3, Duration::from_secs(1)).unwrap();
        assert_eq!(limit.emission_ns(), 333_333_334);
        assert!(limit.emission_ns() * 3 >= 1_000_000_000);
        let limit = RateLimit::new(MAX_RATE, Duration::from_millis(1)).unwrap();
        assert_eq!(limit.emission_ns(), 1);
    }

    #[test]
    fn a_list_of_limits_is_bounded_and_has_no_twins() {
        let a: RateLimit = "5/1s".parse().unwrap();
        let b: RateLimit = "100/1h".parse().unwrap();
        assert!(check_rate_limits(&[a, b]).is_ok());
        assert!(check_rate_limits(&[a, b, a]).is_err());
        let many: Vec<_> = (1..=9)
            .map(|n| RateLimit::new(n, Duration::from_secs(1)).unwrap())
            .collect();
        assert!(check_rate_limits(&many).is_err());
        assert!(check_rate_limits(&many[..8]).is_ok());
    }

    #[test]
    fn daily_refills_fall_at_midnight_utc() {
        let refill = Refill::daily(10).unwrap();
        let now = at("2026-12-01T08:30:00");
        assert_eq!(refill.last_due(now), at("2026-12-01T00:00:00"));
        assert_eq!(refill.next_due(now), at("2026-12-02T00:00:00"));
        let midnight = at("2026-12-01T00:00:00");
        assert_eq!(refill.last_due(midnight), midnight);
        assert_eq!(refill.next_due(midnight), at("2026-12-02T00:00:00"));
    }

    #[test]
    fn monthly_refills_take_the_last_day_of_short_months() {
        let refill = Refill::monthly(10, 31).unwrap();
        assert_eq!(
            refill.next_due(at("2026-02-10T00:00:00")),
            at("2026-02-28T00:00:00")
        );
        assert_eq!(
            refill.next_due(at("2028-02-10T00:00:00")),
            at("2028-02-29T00:00:00")
        );
        assert_eq!(
            refill.last_due(at("2026-03-30T12:00:00")),
            at("2026-02-28T00:00:00")
        );
        assert_eq!(
            refill.next_due(at("2026-12-31T00:00:00")),
            at("2027-01-31T00:00:00")
        );
        let first = Refill::monthly(10, 1).unwrap();
        assert_eq!(
            first.last_due(at("2027-01-01T00:00:00")),
            at("2027-01-01T00:00:00")
        );
        assert_eq!(
            first.last_due(at("2026-12-31T23:59:59")),
            at("2026-12-01T00:00:00")
        );
        assert!(Refill::monthly(10, 0).is_err());
        assert!(Refill::monthly(10, 32).is_err());
    }

    #[test]
    fn credits_are_bounded() {
        assert!(Credits::new(MAX_CREDITS).is_ok());
        assert!(Credits::new(MAX_CREDITS + 1).is_err());
        assert!(Refill::daily(MAX_CREDITS + 1).is_err());
    }
}
