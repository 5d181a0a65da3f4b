//! Rate limits and credits: what a key, a service account or a route may
//! carry, and the settings of how an [`Authenticator`](crate::Authenticator)
//! enforces them.
//!
//! - A key may carry [`RateLimit`]s (`KeyRecord::rate_limits`), its service
//!   account limits shared by all its keys (`KeyRecord::account_rate_limits`),
//!   and [`Credits`] (`KeyRecord::credits`). Stores keep them; the
//!   management API and the CLI set them.
//! - A route may give a request a cost other than 1 and a default limit for
//!   keys that carry none ([`RouteLimits`], on a layer with
//!   [`ApiKeyLayer::route_limits`](crate::ApiKeyLayer::route_limits) or per gRPC method).
//! - Limits are checked after authentication and scope: an unknown key or a
//!   refused scope spends nothing.
//!
//! Rate limits use the GCRA (a token bucket in one number): smooth refill,
//! a burst, no window boundary that admits twice the limit. On one machine
//! they are exact; across replicas ([`LimitSettingsBuilder::shared`]) each
//! replica decides locally and syncs in batches, so the fleet may overshoot
//! by what the other replicas admitted since the last sync. Credits are
//! leased from the store in small batches and never over-spent. The rules
//! and the measured bounds are in `docs/limits.md`.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::limits::{LimitSettings, RateLimit, RouteLimits};
//! use tower_api_key::{Authenticator, MemoryStore};
//!
//! let auth = Authenticator::builder(MemoryStore::new())
//!     .limit_settings(LimitSettings::builder().max_tracked_subjects(50_000).build())
//!     .build();
//! // A costly route: each request spends 5, and keys without limits of
//! // their own get 100 per minute here.
//! let layer = auth.require_any(["yc.ai.translate.execute"]).route_limits(
//!     RouteLimits::new()
//!         .with_cost(5)
//!         .with_default_rate_limit(RateLimit::new(100, Duration::from_secs(60)).unwrap()),
//! );
//! # drop(layer);
//! ```

mod calendar;
pub(crate) mod gcra;
mod spec;
mod sync;
pub(crate) mod table;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[allow(unused_imports)]
pub(crate) use spec::Period;
pub use spec::{
    check_rate_limits, parse_period, Credits, LimitError, RateLimit, Refill, RefillInterval,
    MAX_CREDITS, MAX_PERIOD, MAX_RATE, MAX_RATE_LIMITS,
};
pub(crate) use sync::SyncMode;
pub use sync::{BucketUse, RateLimitSync, DEFAULT_SYNC_INTERVAL};

/// What one request costs on a route, and the rate limits of keys that
/// carry none of their own.
///
/// A value: cheap to clone, nothing built behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RouteLimits {
    cost: u32,
    default_rate_limits: Arc<[RateLimit]>,
}

impl Default for RouteLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteLimits {
    /// Cost 1, no default limit.
    pub fn new() -> Self {
        Self {
            cost: 1,
            default_rate_limits: Arc::new([]),
        }
    }

    /// Each request spends `cost` (at least 1) of every rate limit and of the
    /// key's credits.
    pub fn with_cost(self, cost: u32) -> Self {
        Self {
            cost: cost.max(1),
            ..self
        }
    }

    /// Adds a limit for keys that carry no rate limit of their own (the
    /// account's limits still apply to them).
    pub fn with_default_rate_limit(self, limit: RateLimit) -> Self {
        let mut limits = self.default_rate_limits.to_vec();
        if !limits.contains(&limit) {
            limits.push(limit);
        }
        Self {
            default_rate_limits: limits.into(),
            ..self
        }
    }

    /// What one request spends.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The limits of keys that carry none.
    pub fn default_rate_limits(&self) -> &[RateLimit] {
        &self.default_rate_limits
    }
}

/// A batch of credits a store hands one replica: spent locally, the unspent
/// rest given back ([`CreditLedger::return_credits`](crate::CreditLedger::return_credits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditLease {
    /// Credits granted (0: none left).
    pub granted: u64,
    /// The key's credit generation: a refill or a new credit setting starts
    /// a new one, and credits of an older generation are not given back.
    pub generation: u64,
    /// Credits left in the store after this lease.
    pub remaining: u64,
    /// When the key's credits are next refilled, if they are.
    pub next_refill: Option<SystemTime>,
}

impl CreditLease {
    /// A lease of `granted` credits of `generation`.
    pub fn new(
        granted: u64,
        generation: u64,
        remaining: u64,
        next_refill: Option<SystemTime>,
    ) -> Self {
        Self {
            granted,
            generation,
            remaining,
            next_refill,
        }
    }
}

/// How many credits a store grants for a lease of `want` when `remaining`
/// are left: at most an eighth of what remains (so replicas share the last
/// credits), never less than 1 while any remain, never more than remain.
pub fn lease_grant(remaining: u64, want: u64) -> u64 {
    want.min((remaining / 8).max(1)).min(remaining)
}

/// The refill a store owes a key whose credits were last refilled (or
/// set) at `refilled_at`: the new refill time, if one fell due since.
pub fn refill_due(
    refill: Option<&Refill>,
    refilled_at: SystemTime,
    now: SystemTime,
) -> Option<SystemTime> {
    let due = refill?.last_due(now);
    (due > refilled_at).then_some(due)
}

/// Most subjects (keys and accounts) with rate-limit state held at once,
/// unless configured.
pub const DEFAULT_MAX_TRACKED_SUBJECTS: usize = 100_000;
/// Credits a replica asks for at a time, unless configured.
pub const DEFAULT_CREDIT_LEASE: u64 = 10;

/// How an [`Authenticator`](crate::Authenticator) enforces limits. Built by
/// [`LimitSettings::builder`]; the state (buckets, leases, the sync task) is
/// built once, by the authenticator's `build()`.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub(crate) max_tracked_subjects: usize,
    pub(crate) sync: Option<SyncMode>,
    pub(crate) credit_lease: u64,
    pub(crate) headers: bool,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_tracked_subjects: DEFAULT_MAX_TRACKED_SUBJECTS,
            sync: None,
            credit_lease: DEFAULT_CREDIT_LEASE,
            headers: true,
        }
    }
}

impl LimitSettings {
    /// The defaults, to change.
    pub fn builder() -> LimitSettingsBuilder {
        LimitSettingsBuilder {
            settings: Self::default(),
        }
    }
}

/// Builds [`LimitSettings`].
#[must_use = "a LimitSettingsBuilder does nothing until `.build()`"]
pub struct LimitSettingsBuilder {
    settings: LimitSettings,
}

impl fmt::Debug for LimitSettingsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}

impl LimitSettingsBuilder {
    /// Most keys and accounts with rate-limit state at once (default
    /// [`DEFAULT_MAX_TRACKED_SUBJECTS`]). State goes away when idle; when
    /// the table is full of busy state, a request that needs new state is
    /// refused (429) rather than any limit reset.
    pub fn max_tracked_subjects(mut self, n: usize) -> Self {
        self.settings.max_tracked_subjects = n.max(1);
        self
    }

    /// Shares rate limits with other replicas through `sync`, every
    /// `interval` (at least 10 ms; [`DEFAULT_SYNC_INTERVAL`] is 100 ms).
    /// While the sync fails, each replica limits on its own.
    pub fn shared(mut self, sync: impl RateLimitSync, interval: Duration) -> Self {
        self.settings.sync = Some(SyncMode {
            sync: Arc::new(sync),
            interval: interval.max(Duration::from_millis(10)),
        });
        self
    }

    /// Credits asked for per lease (default [`DEFAULT_CREDIT_LEASE`], at
    /// least 1). A replica that stops holding a lease under-spends by at
    /// most this much.
    pub fn credit_lease(mut self, n: u64) -> Self {
        self.settings.credit_lease = n.max(1);
        self
    }

    /// Whether admitted responses on rate-limited routes carry the
    /// `RateLimit-Policy` and `RateLimit` headers (default: yes). Refusals
    /// always do.
    pub fn headers(mut self, on: bool) -> Self {
        self.settings.headers = on;
        self
    }

    /// The settings.
    pub fn build(self) -> LimitSettings {
        self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_shrink_to_one_as_credits_run_low_and_never_exceed_them() {
        assert_eq!(lease_grant(1000, 10), 10);
        assert_eq!(lease_grant(40, 10), 5);
        assert_eq!(lease_grant(7, 10), 1);
        assert_eq!(lease_grant(1, 10), 1);
        assert_eq!(lease_grant(0, 10), 0);
        for remaining in 0..200 {
            for want in 1..20 {
                let g = lease_grant(remaining, want);
                assert!(g <= remaining && g <= want);
                assert_eq!(g == 0, remaining == 0);
            }
        }
    }

    #[test]
    fn a_refill_is_due_once_per_calendar_time() {
        let refill = Refill::daily(5).unwrap();
        let day = Duration::from_secs(86_400);
        let t0 = SystemTime::UNIX_EPOCH + day * 20_000 + Duration::from_secs(3600);
        let last = refill.last_due(t0);
        assert_eq!(refill_due(Some(&refill), last, t0), None);
        let next = t0 + day;
        assert_eq!(refill_due(Some(&refill), last, next), Some(last + day));
        assert_eq!(refill_due(None, last, next), None);
    }

    #[test]
    fn route_costs_are_at_least_one_and_defaults_have_no_twins() {
        let l = RateLimit::new(5, Duration::from_secs(1)).unwrap();
        let route = RouteLimits::new()
            .with_cost(0)
            .with_default_rate_limit(l)
            .with_default_rate_limit(l);
        assert_eq!(route.cost(), 1);
        assert_eq!(route.default_rate_limits(), &[l]);
    }
}
