//! The meter: rate limits and credits on the request path: after authentication and
//! scope, an admitted key is charged against its own limits (or the route's
//! default), its account's, and its credits.
//!
//! A request refused by a rate limit still spends nothing; one refused for
//! credits has already passed (and spent) its rate limits, so that no
//! credit is ever spent on a request the rate limits then refuse.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::credits::{self, Ledger, LedgerListener, NoCredits, TrySpend};
use super::rate_headers::{ceil_secs, RateHeaders};
use super::rejection::{Reason, Rejection};
use super::LOG_TARGET;
use crate::cache::{CachedVerifier, Caller};
use crate::clock::Clock;
use crate::key::KeyId;
use crate::ledger::CreditLedger;
use crate::limits::table::{Charge, Standing, Subject, Table, Verdict};
use crate::limits::{BucketUse, LimitSettings, RateLimit, RateLimitSync, RouteLimits, SyncMode};
use crate::telemetry;

/// The limit state of one authenticator: shared by every route.
pub(crate) struct Meter {
    table: Arc<Table>,
    /// `None` without a [`CreditLedger`]: keys with credits are refused.
    ledger: Option<Arc<Ledger>>,
    headers: bool,
    // What `sync_now`, a test hook, needs.
    #[cfg(feature = "test-util")]
    sync: Option<SyncMode>,
    #[cfg(feature = "test-util")]
    clock: Arc<dyn Clock>,
    // Held so the ledger stays subscribed (the bus keeps a weak reference).
    _listener: Option<Arc<LedgerListener>>,
}

/// What the limits say of an admitted, in-scope request.
pub(crate) enum Metered {
    /// Admit it, with these headers on the response.
    Admit(Option<Box<RateHeaders>>),
    /// Refuse it.
    Refuse(Rejection),
    /// Admit it once its credits are spent: the ledger must lease first.
    Spend(CreditSpend),
}

/// A spend of credits that needs the store: the key's batch is empty or
/// being leased. Within the rate limits already (these headers go on the
/// response).
pub(crate) struct CreditSpend {
    ledger: Arc<Ledger>,
    id: KeyId,
    cost: u64,
    now: SystemTime,
    headers: Option<Box<RateHeaders>>,
}

impl CreditSpend {
    /// Spends the credits, leasing first: the headers to admit with, or
    /// the refusal.
    pub(crate) async fn run(self) -> Result<Option<Box<RateHeaders>>, Rejection> {
        match self.ledger.spend(self.id, self.cost, self.now).await {
            Ok(()) => {
                telemetry::limit("quota", "admitted");
                Ok(self.headers)
            }
            Err(no) => Err(no_credits(self.id, no, self.now)),
        }
    }
}

impl Meter {
    /// Builds the state; with a credit `store`, subscribes the credit
    /// batches to the verifier's invalidations and starts their idle sweep;
    /// with a runtime and a sync mode, starts the shared sync.
    pub(crate) fn new(
        settings: LimitSettings,
        cache: &CachedVerifier,
        store: Option<Arc<dyn CreditLedger>>,
    ) -> Self {
        let table = Arc::new(Table::new(
            settings.max_tracked_subjects,
            settings.sync.is_some(),
        ));
        let ledger = store.map(|store| {
            Arc::new(Ledger::new(
                store,
                settings.credit_lease,
                cache.config().verifier_timeout(),
            ))
        });
        let listener = ledger.as_ref().map(|ledger| {
            let listener = Arc::new(LedgerListener(Arc::downgrade(ledger)));
            if let Some(bus) = cache.verifier().invalidations() {
                bus.subscribe(listener.clone());
            }
            credits::spawn_idle_sweeper(ledger, cache.config().clock().clone());
            listener
        });
        if let Some(sync) = &settings.sync {
            spawn_sync(
                Arc::downgrade(&table),
                sync.clone(),
                cache.config().clock().clone(),
            );
        }
        Self {
            table,
            ledger,
            headers: settings.headers,
            #[cfg(feature = "test-util")]
            sync: settings.sync,
            #[cfg(feature = "test-util")]
            clock: cache.config().clock().clone(),
            _listener: listener,
        }
    }

    /// One sync round now, as the background task does every interval:
    /// `false` if there is no shared mode or the sync failed.
    #[cfg(feature = "test-util")]
    pub(crate) async fn sync_now(&self) -> bool {
        let Some(sync) = &self.sync else {
            return false;
        };
        let table = Arc::downgrade(&self.table);
        matches!(
            sync_once(&table, &*sync.sync, &*self.clock).await,
            Synced::Done
        )
    }

    /// Charges an admitted request of `caller` on a route with `route`'s
    /// limits at `now`.
    pub(crate) fn charge(
        &self,
        caller: &Caller,
        route: Option<&RouteLimits>,
        now: impl FnOnce() -> SystemTime,
        hot: &telemetry::HotCounters,
    ) -> Metered {
        let record = caller.record();
        let (key_limits, key_owner) = if !record.rate_limits.is_empty() {
            (&record.rate_limits[..], Owner::Key)
        } else {
            (
                route.map_or(&[][..], RouteLimits::default_rate_limits),
                Owner::Route,
            )
        };
        let account_limits = &record.account_rate_limits[..];
        if key_limits.is_empty() && account_limits.is_empty() && record.credits.is_none() {
            return Metered::Admit(None);
        }
        let cost = u64::from(route.map_or(1, RouteLimits::cost));
        let now = now();
        let now_ns = nanos(now);

        let mut headers = None;
        if !key_limits.is_empty() || !account_limits.is_empty() {
            let key = Subject::Key(record.key_id);
            let account;
            // Only the subjects with limits: each costs a shard lock.
            let mut charges = [Charge {
                subject: &key,
                limits: key_limits,
            }; 2];
            let mut owners = [key_owner, Owner::Account];
            let mut n = 0;
            if !key_limits.is_empty() {
                n = 1;
            }
            if !account_limits.is_empty() {
                account = Subject::Account(record.service_account_id.clone());
                charges[n] = Charge {
                    subject: &account,
                    limits: account_limits,
                };
                owners[n] = Owner::Account;
                n += 1;
            }
            let (charges, owners) = (&charges[..n], &owners[..n]);
            match self.table.check(charges, cost, now_ns) {
                Verdict::Admitted(tightest) => {
                    hot.rate_admitted();
                    if self.headers {
                        headers = tightest.map(|t| {
                            let policy = match key_owner {
                                // The record alone decides it: rendered once per cached key.
                                Owner::Key => caller.rate_policy(|| render_policy(charges, owners)),
                                _ => render_policy(charges, owners),
                            };
                            Box::new(RateHeaders {
                                policy,
                                state: render_state(charges, owners, &t, t.reset_ns),
                            })
                        });
                    }
                }
                Verdict::Limited { standing, retry_ns } => {
                    telemetry::limit("rate", "refused");
                    // A cost above the burst is never admitted: no retry helps.
                    let retry_after =
                        (retry_ns != u64::MAX).then(|| Duration::from_nanos(retry_ns));
                    let t = if retry_ns == u64::MAX {
                        standing.reset_ns
                    } else {
                        retry_ns
                    };
                    let headers = Box::new(RateHeaders {
                        policy: render_policy(charges, owners),
                        state: render_state(charges, owners, &standing, t),
                    });
                    return Metered::Refuse(Rejection::rate_limited(
                        record.key_id,
                        retry_after,
                        Some(headers),
                    ));
                }
                Verdict::Full => {
                    telemetry::limit("rate", "refused");
                    tracing::warn!(target: LOG_TARGET, key_id = %record.key_id, "rate-limit table full of busy state; request refused (raise max_tracked_subjects)");
                    return Metered::Refuse(Rejection::rate_limited(
                        record.key_id,
                        Some(Duration::from_secs(1)),
                        None,
                    ));
                }
            }
        }

        if record.credits.is_none() {
            return Metered::Admit(headers);
        }
        let id = record.key_id;
        let Some(ledger) = &self.ledger else {
            return Metered::Refuse(no_ledger(id));
        };
        match ledger.try_spend(id, cost, now) {
            TrySpend::Spent => {
                hot.quota_admitted();
                return Metered::Admit(headers);
            }
            TrySpend::Refused(no) => return Metered::Refuse(no_credits(id, no, now)),
            TrySpend::NeedsLease => {}
        }
        Metered::Spend(CreditSpend {
            ledger: ledger.clone(),
            id,
            cost,
            now,
            headers,
        })
    }
}

/// The refusal of a request whose key has no credits: retry at the next
/// refill if one is scheduled, in a second if the store could not say.
fn no_credits(id: KeyId, no: NoCredits, now: SystemTime) -> Rejection {
    telemetry::limit("quota", "refused");
    let retry_after = match no {
        NoCredits::Exhausted(next) => next
            .and_then(|at| at.duration_since(now).ok())
            .map(|wait| wait.max(Duration::from_secs(1))),
        NoCredits::Unconfirmed => Some(Duration::from_secs(1)),
    };
    Rejection::no_credits(id, retry_after)
}

/// Whose limits a charge is: the owner's name in the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The key's own limits.
    Key,
    /// The route's default limits, for a key that carries none.
    Route,
    /// The service account's limits, shared by its keys.
    Account,
}

impl Owner {
    fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Route => "route",
            Self::Account => "account",
        }
    }
}

/// The refusal of a key that carries credits when the authenticator has no
/// [`CreditLedger`] to count them: a configuration fault (500), logged.
fn no_ledger(id: KeyId) -> Rejection {
    tracing::error!(target: LOG_TARGET, key_id = %id, "api key carries credits but the authenticator has no credit ledger (build it with `Authenticator::builder(store)` or `.credits(ledger)`); request refused");
    Rejection::of_key(Reason::NoCreditLedger, id)
}

/// Nanoseconds since the Unix epoch (0 before it).
fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The policy name of limit `i` of a charge of `owner` with `n` limits.
fn name(out: &mut String, owner: Owner, i: usize, n: usize) {
    out.push('"');
    out.push_str(owner.as_str());
    if n > 1 {
        out.push('-');
        push_number(out, i as u64 + 1);
    }
    out.push('"');
}

/// Decimal digits, without the formatting machinery (this is per request).
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// `RateLimit-Policy`: every limit of `charges`.
fn render_policy(charges: &[Charge<'_>], owners: &[Owner]) -> HeaderValue {
    let mut policy = String::with_capacity(48);
    for (charge, owner) in charges.iter().zip(owners) {
        for (i, limit) in charge.limits.iter().enumerate() {
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            name(&mut policy, *owner, i, charge.limits.len());
            policy.push_str(";q=");
            push_number(&mut policy, u64::from(limit.limit()));
            policy.push_str(";w=");
            push_number(
                &mut policy,
                ceil_secs(limit.period().as_nanos() as u64).max(1),
            );
        }
    }
    header_value(policy)
}

/// `RateLimit`: where the tightest limit stands, full again (or admitting
/// again) in `t_ns`.
fn render_state(
    charges: &[Charge<'_>],
    owners: &[Owner],
    tightest: &Standing,
    t_ns: u64,
) -> HeaderValue {
    let mut state = String::with_capacity(32);
    let charge = &charges[tightest.charge];
    let i = charge
        .limits
        .iter()
        .position(|l| *l == tightest.limit)
        .unwrap_or(0);
    name(&mut state, owners[tightest.charge], i, charge.limits.len());
    state.push_str(";r=");
    push_number(&mut state, tightest.remaining);
    state.push_str(";t=");
    push_number(&mut state, ceil_secs(t_ns));
    header_value(state)
}

/// Names are fixed ASCII and the rest digits: always a valid value.
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The shared store's name for a bucket's owner.
fn bucket_use(subject: &Subject, limit: RateLimit, cost: u64) -> BucketUse {
    BucketUse::new(subject.to_text(), limit, cost)
}

/// Syncs the table with the other replicas every interval, until the
/// table is dropped. A failed sync drops what it carried: each replica
/// then limits on its own, never less.
fn spawn_sync(table: Weak<Table>, sync: SyncMode, clock: Arc<dyn Clock>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(target: LOG_TARGET, "no tokio runtime at build: rate limits are not shared");
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(sync.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let outcome = sync_once(&table, &*sync.sync, &*clock).await;
            match (outcome, failing) {
                (Synced::Gone, _) => return,
                (Synced::Failed(why), false) => {
                    tracing::warn!(target: LOG_TARGET, error = %why, "rate-limit sync failed; limiting locally until it recovers");
                    failing = true;
                }
                (Synced::Done, true) => {
                    tracing::info!(target: LOG_TARGET, "rate-limit sync recovered");
                    failing = false;
                }
                _ => {}
            }
        }
    });
}

/// What one sync round did.
pub(crate) enum Synced {
    /// Sent what was admitted (if anything) and merged the fleet's state.
    Done,
    /// The sync failed; what it carried is dropped.
    Failed(String),
    /// The table is gone: stop.
    Gone,
}

/// One sync round: sends what this replica admitted since the last one and
/// moves its buckets up to the fleet's. The table is not held across the
/// call: requests go on, and a dropped authenticator ends the task.
async fn sync_once(table: &Weak<Table>, sync: &dyn RateLimitSync, clock: &dyn Clock) -> Synced {
    let taken = match table.upgrade() {
        Some(table) => table.take_unsynced(),
        None => return Synced::Gone,
    };
    if taken.is_empty() {
        return Synced::Done;
    }
    let uses: Vec<BucketUse> = taken
        .iter()
        .map(|(subject, limit, cost)| bucket_use(subject, *limit, *cost))
        .collect();
    match sync.sync(&uses, clock.now()).await {
        Ok(tats) if tats.len() == taken.len() => {
            let Some(table) = table.upgrade() else {
                return Synced::Gone;
            };
            for ((subject, limit, _), tat) in taken.iter().zip(tats) {
                table.merge(subject, limit, nanos(tat));
            }
            Synced::Done
        }
        Ok(tats) => Synced::Failed(format!(
            "the sync answered for {} buckets, not {}",
            tats.len(),
            taken.len()
        )),
        Err(e) => Synced::Failed(e.to_string()),
    }
}
