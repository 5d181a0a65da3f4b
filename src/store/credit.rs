//! A key's credit state as every store keeps it, and the one rule for
//! leasing, giving back and adding credits: the stores differ only in how
//! they lock the state while this code changes it.

use std::time::SystemTime;

use crate::limits::{lease_grant, refill_due, CreditLease, Credits, MAX_CREDITS};

/// A key's credits as a store keeps them: the [`Credits`] value, when they
/// were last refilled, and their generation.
///
/// A store reads it, calls [`lease`](Self::lease),
/// [`give_back`](Self::give_back) or [`add`](Self::add) while it holds the
/// key's lock (a row lock, a transaction), and writes it back: the rule is
/// the same for every store, only the locking differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditState {
    /// The count left (as the store knows it) and the refill.
    pub credits: Credits,
    /// The refill time that was last due when the credits were set or last
    /// refilled: the next refill falls after it.
    pub refilled_at: SystemTime,
    /// Starts at 0; a refill or a new setting adds 1, so credits leased
    /// before it are not given back.
    pub generation: u64,
}

impl CreditState {
    /// Credits set at `now`: no refill falls due before the next refill
    /// time.
    pub fn set(credits: Credits, now: SystemTime, generation: u64) -> Self {
        Self {
            credits,
            refilled_at: refilled_at(&credits, now),
            generation,
        }
    }

    /// The state a store read back: `credits`, last refilled at
    /// `refilled_at`, of `generation`.
    pub fn stored(credits: Credits, refilled_at: SystemTime, generation: u64) -> Self {
        Self {
            credits,
            refilled_at,
            generation,
        }
    }

    /// Leases up to `want` at `now`: applies a refill that fell due, then
    /// takes [`lease_grant`] off what remains.
    pub fn lease(&mut self, want: u64, now: SystemTime) -> CreditLease {
        let refill = self.credits.refill().copied();
        if let Some(due) = refill_due(refill.as_ref(), self.refilled_at, now) {
            let amount = refill.map_or(0, |r| r.amount());
            self.credits = with_remaining(self.credits, amount);
            self.refilled_at = due;
            self.generation = self.generation.saturating_add(1);
        }
        let remaining = self.credits.remaining();
        let granted = lease_grant(remaining, want);
        self.credits = with_remaining(self.credits, remaining - granted);
        CreditLease::new(
            granted,
            self.generation,
            self.credits.remaining(),
            refill.map(|r| r.next_due(now)),
        )
    }

    /// Gives `amount` back when the credits are still of `generation`;
    /// whether they were.
    pub fn give_back(&mut self, generation: u64, amount: u64) -> bool {
        if self.generation != generation {
            return false;
        }
        self.add(amount);
        true
    }

    /// Adds `amount`, never past [`MAX_CREDITS`]; the generation stays.
    pub fn add(&mut self, amount: u64) -> Credits {
        let sum = self.credits.remaining().saturating_add(amount);
        self.credits = with_remaining(self.credits, sum);
        self.credits
    }
}

/// The refill time last due at `now` for `credits` (`now` itself when they
/// are never refilled: nothing reads it then).
pub(crate) fn refilled_at(credits: &Credits, now: SystemTime) -> SystemTime {
    credits.refill().map_or(now, |r| r.last_due(now))
}

/// `credits` with `n` remaining, capped at [`MAX_CREDITS`].
fn with_remaining(credits: Credits, n: u64) -> Credits {
    credits
        .with_remaining(n.min(MAX_CREDITS))
        .unwrap_or(credits)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limits::Refill;

    const DAY: Duration = Duration::from_secs(86_400);

    fn noon() -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 20_000 + DAY / 2
    }

    #[test]
    fn leases_take_an_eighth_at_most_and_refills_start_a_generation() {
        let credits = Credits::new(16)
            .unwrap()
            .with_refill(Refill::daily(40).unwrap());
        let mut state = CreditState::set(credits, noon(), 0);
        let lease = state.lease(10, noon());
        assert_eq!(
            (lease.granted, lease.generation, lease.remaining),
            (2, 0, 14)
        );
        assert_eq!(lease.next_refill, Some(noon() + DAY / 2));
        // The next day: refilled to 40, generation 1.
        let lease = state.lease(10, noon() + DAY);
        assert_eq!(
            (lease.granted, lease.generation, lease.remaining),
            (5, 1, 35)
        );
        assert!(!state.give_back(0, 2), "an old generation adds nothing");
        assert_eq!(state.credits.remaining(), 35);
        assert!(state.give_back(1, 5));
        assert_eq!(state.credits.remaining(), 40);
    }

    #[test]
    fn credits_never_pass_the_maximum() {
        let mut state = CreditState::set(Credits::new(MAX_CREDITS - 1).unwrap(), noon(), 3);
        assert_eq!(state.add(u64::MAX).remaining(), MAX_CREDITS);
        assert!(state.give_back(3, 10));
        assert_eq!(state.credits.remaining(), MAX_CREDITS);
        assert_eq!(state.generation, 3);
        // Without a refill, nothing is ever refilled.
        let lease = state.lease(1, noon() + DAY * 400);
        assert_eq!((lease.granted, lease.generation), (1, 3));
        assert_eq!(lease.next_refill, None);
    }
}
