//! The generic cell rate algorithm (GCRA), as pure arithmetic over one
//! number per limit: the theoretical arrival time (TAT), in nanoseconds
//! since the Unix epoch.
//!
//! With emission interval `T = period / limit` (rounded up) and tolerance
//! `τ = burst × T`, a request of cost `c` arriving at `now` is admitted when
//! `max(TAT, now) + c·T − now ≤ τ`, and the TAT becomes `max(TAT, now) + c·T`.
//! Over any interval of length `d` starting from a full bucket this admits at
//! most `burst + d / T` requests (the tests below check it against a
//! brute-force count), and never more than `burst` at one instant.
//!
//! A bucket whose TAT is at or before `now` is indistinguishable from a new
//! one: dropping it loses nothing. That is what lets idle state go away.

use super::spec::RateLimit;

/// The limit's tolerance, `burst × T`, in nanoseconds.
pub(crate) fn tolerance(limit: &RateLimit) -> u64 {
    u64::from(limit.burst()).saturating_mul(limit.emission_ns())
}

/// The new TAT if a request of `cost` at `now` is admitted, or how long to
/// wait before it would be (`u64::MAX` when it never would: the cost is
/// larger than the burst).
pub(crate) fn next_tat(tat: u64, now: u64, cost: u64, limit: &RateLimit) -> Result<u64, u64> {
    let increment = cost.saturating_mul(limit.emission_ns());
    let tolerance = tolerance(limit);
    if increment > tolerance {
        return Err(u64::MAX);
    }
    let new_tat = tat.max(now).saturating_add(increment);
    let ahead = new_tat - now;
    if ahead <= tolerance {
        Ok(new_tat)
    } else {
        Err(ahead - tolerance)
    }
}

/// Requests of cost 1 the bucket would still admit at `now`.
pub(crate) fn remaining(tat: u64, now: u64, limit: &RateLimit) -> u64 {
    let used = tat.saturating_sub(now);
    tolerance(limit).saturating_sub(used) / limit.emission_ns()
}

/// Nanoseconds until the bucket is full again.
pub(crate) fn until_full(tat: u64, now: u64) -> u64 {
    tat.saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn limit(n: u32, period_ms: u64, burst: u32) -> RateLimit {
        RateLimit::new(n, Duration::from_millis(period_ms))
            .unwrap()
            .with_burst(burst)
            .unwrap()
    }

    #[test]
    fn a_full_bucket_admits_its_burst_at_once_then_refills_smoothly() {
        let l = limit(5, 1000, 5);
        let mut tat = 0;
        let now = 1_000_000_000_000;
        for _ in 0..5 {
            tat = next_tat(tat, now, 1, &l).unwrap();
        }
        assert_eq!(next_tat(tat, now, 1, &l), Err(200_000_000));
        assert_eq!(remaining(tat, now, &l), 0);
        assert_eq!(until_full(tat, now), 1_000_000_000);
        // One refills every 200 ms.
        let later = now + 200_000_000;
        assert_eq!(remaining(tat, later, &l), 1);
        tat = next_tat(tat, later, 1, &l).unwrap();
        assert!(next_tat(tat, later, 1, &l).is_err());
    }

    #[test]
    fn a_cost_larger_than_the_burst_is_never_admitted() {
        let l = limit(5, 1000, 2);
        assert_eq!(next_tat(0, 10, 3, &l), Err(u64::MAX));
        assert!(next_tat(0, 10, 2, &l).is_ok());
    }

    #[test]
    fn a_bucket_idle_past_its_tat_is_a_new_bucket() {
        let l = limit(3, 1000, 3);
        let now = 5_000_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            tat = next_tat(tat, now, 1, &l).unwrap();
        }
        let idle = tat;
        // At or after the TAT, an old bucket and a fresh one decide alike.
        for t in [idle, idle + 1, idle + 10_000_000_000] {
            assert_eq!(next_tat(tat, t, 1, &l), next_tat(0, t, 1, &l));
            assert_eq!(remaining(tat, t, &l), remaining(0, t, &l));
        }
    }

    proptest! {
        /// Over any window, admitted cost never exceeds burst + window / T
        /// (the GCRA's bound), for arbitrary arrival times and costs.
        #[test]
        fn admitted_never_exceeds_burst_plus_rate_over_any_window(
            n in 1u32..20, period_ms in 1u64..2000, burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..300_000_000, 1..200),
            costs in proptest::collection::vec(1u64..4, 200),
        ) {
            let l = limit(n, period_ms, burst);
            let e = l.emission_ns();
            let mut tat = 0;
            let mut now = 1_000_000_000_000u64;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in gaps.iter().zip(&costs) {
                now += gap;
                if let Ok(t) = next_tat(tat, now, *cost, &l) {
                    tat = t;
                    admitted.push((now, *cost));
                }
            }
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let mut total = 0u64;
                for &(t, c) in &admitted[i..] {
                    total += c;
                    let window = t - start;
                    prop_assert!(total <= u64::from(burst) + window / e,
                        "{total} admitted in {window} ns");
                }
            }
        }

        /// A refusal names a wait after which the same request is admitted,
        /// and before which it is not.
        #[test]
        fn the_wait_of_a_refusal_is_exact(
            n in 1u32..20, period_ms in 1u64..2000, burst in 1u32..20, k in 0u32..40,
        ) {
            let l = limit(n, period_ms, burst);
            let now = 1_000_000_000_000u64;
            let mut tat = 0;
            for _ in 0..k {
                if let Ok(t) = next_tat(tat, now, 1, &l) { tat = t; }
            }
            if let Err(wait) = next_tat(tat, now, 1, &l) {
                prop_assert!(next_tat(tat, now + wait, 1, &l).is_ok());
                prop_assert!(next_tat(tat, now + wait - 1, 1, &l).is_err());
            }
        }
    }
}
