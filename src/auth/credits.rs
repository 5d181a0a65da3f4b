//! Credits held by this process: per key, what is left of the batches
//! leased from the store. A request spends from the batch synchronously;
//! only an empty batch costs a store call, made once per key at a time.
//!
//! Invariants:
//! - Nothing is spent that was not leased: the store hands out each credit
//!   once (atomically), and a batch is spent under its slot's lock.
//! - A batch of an older generation (the key's credits were refilled or set
//!   since) is dropped, never spent after a newer lease: under-spending is
//!   allowed, over-spending never.
//! - A slot leaves the table when its key is invalidated or goes idle; what
//!   it still holds is given back, and the store takes it only if the
//!   generation is unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex as AsyncMutex;

use crate::clock::Clock;
use crate::invalidation::{Invalidation, InvalidationListener};
use crate::key::KeyId;
use crate::ledger::CreditLedger;

/// Why a request found no credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoCredits {
    /// None left; the next refill, if one is scheduled.
    Exhausted(Option<SystemTime>),
    /// The store could not lease (down, timed out, or the key is gone):
    /// refused, as a limit never turns off, and worth a retry.
    Unconfirmed,
}

#[derive(Default)]
struct Held {
    generation: Option<u64>,
    left: u64,
    next_refill: Option<SystemTime>,
    /// When the store last said none are left: until the next refill, or
    /// for [`RECHECK`], requests are refused without asking it again (a
    /// top-up is announced as an invalidation, which empties the slot).
    exhausted_at: Option<SystemTime>,
}

impl Held {
    fn known_exhausted(&self, now: SystemTime) -> bool {
        self.exhausted_at.is_some_and(|at| {
            now < at + RECHECK && self.next_refill.is_none_or(|refill| now < refill)
        })
    }
}

/// How long an exhausted key is refused before the store is asked again.
const RECHECK: Duration = Duration::from_secs(1);

/// What [`Ledger::try_spend`] did, without a store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrySpend {
    /// Spent from the batch.
    Spent,
    /// Known to be exhausted.
    Refused(NoCredits),
    /// The batch cannot say: [`Ledger::spend`], which may lease.
    NeedsLease,
}

struct Slot {
    held: AsyncMutex<Held>,
    /// When a request last used the slot, in milliseconds since the Unix
    /// epoch by the authenticator's clock: for idling.
    used_ms: AtomicU64,
}

impl Slot {
    fn new(now: SystemTime) -> Self {
        Self {
            held: AsyncMutex::new(Held::default()),
            used_ms: AtomicU64::new(millis(now)),
        }
    }

    fn touch(&self, now: SystemTime) {
        self.used_ms.store(millis(now), Ordering::Relaxed);
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The credit batches of one authenticator.
pub(crate) struct Ledger {
    store: Arc<dyn CreditLedger>,
    want: u64,
    timeout: Option<Duration>,
    slots: Mutex<HashMap<KeyId, Arc<Slot>, foldhash::fast::RandomState>>,
}

/// How long a slot may sit unused before what it holds goes back.
pub(crate) const IDLE: Duration = Duration::from_secs(60);

impl Ledger {
    pub(crate) fn new(store: Arc<dyn CreditLedger>, want: u64, timeout: Option<Duration>) -> Self {
        Self {
            store,
            want,
            timeout,
            slots: Mutex::default(),
        }
    }

    fn slots(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<KeyId, Arc<Slot>, foldhash::fast::RandomState>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spends `cost` from the key's batch, or refuses a key known to be
    /// exhausted, when that needs no store call and no lease is under way.
    pub(crate) fn try_spend(&self, id: KeyId, cost: u64, now: SystemTime) -> TrySpend {
        let slots = self.slots();
        let Some(slot) = slots.get(&id) else {
            return TrySpend::NeedsLease;
        };
        let Ok(mut held) = slot.held.try_lock() else {
            return TrySpend::NeedsLease;
        };
        if held.left >= cost {
            held.left -= cost;
            slot.touch(now);
            return TrySpend::Spent;
        }
        if held.known_exhausted(now) {
            return TrySpend::Refused(NoCredits::Exhausted(held.next_refill));
        }
        TrySpend::NeedsLease
    }

    /// Spends `cost`, leasing from the store as needed (one lease at a time
    /// per key; other requests for the key wait for it).
    pub(crate) async fn spend(
        &self,
        id: KeyId,
        cost: u64,
        now: SystemTime,
    ) -> Result<(), NoCredits> {
        let slot = self
            .slots()
            .entry(id)
            .or_insert_with(|| Arc::new(Slot::new(now)))
            .clone();
        loop {
            {
                let mut held = slot.held.lock().await;
                slot.touch(now);
                if held.left >= cost {
                    held.left -= cost;
                    return Ok(());
                }
                if held.known_exhausted(now) {
                    return Err(NoCredits::Exhausted(held.next_refill));
                }
            }
            // The lease runs in a task that puts what it leased into the
            // slot itself: a request that goes away meanwhile (its client
            // hung up) loses nothing the store already handed out.
            let lease = Lease {
                store: self.store.clone(),
                timeout: self.timeout,
                slot: slot.clone(),
                id,
                cost,
                want: self.want.max(cost),
                now,
            };
            match tokio::spawn(lease.run()).await {
                Ok(Leased::More) => {}
                Ok(Leased::Exhausted(next)) => return Err(NoCredits::Exhausted(next)),
                Ok(Leased::Unconfirmed) | Err(_) => return Err(NoCredits::Unconfirmed),
            }
        }
    }

    /// Takes the slots `which` selects out of the table and gives back what
    /// they hold, in a task (when a runtime is there to run it).
    fn retire(self: &Arc<Self>, which: impl Fn(&KeyId, &Slot) -> bool) {
        let retired: Vec<(KeyId, Arc<Slot>)> = {
            let mut slots = self.slots();
            let ids: Vec<KeyId> = slots
                .iter()
                .filter(|(id, slot)| which(id, slot))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| slots.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        if retired.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: the credits stay spent (an under-spend, never more).
            return;
        };
        let ledger = Arc::downgrade(self);
        runtime.spawn(async move {
            for (id, slot) in retired {
                let mut held = slot.held.lock().await;
                let (Some(generation), left) = (held.generation, std::mem::take(&mut held.left))
                else {
                    continue;
                };
                let Some(ledger) = ledger.upgrade() else {
                    return;
                };
                if left > 0 {
                    if let Err(e) = ledger.store.return_credits(id, generation, left).await {
                        tracing::debug!(target: super::LOG_TARGET, key_id = %id, error = %e, "unspent api key credits not given back");
                    }
                }
            }
        });
    }

    /// Gives back what slots unused for [`IDLE`] at `now` hold.
    pub(crate) fn retire_idle(self: &Arc<Self>, now: SystemTime) {
        let now = millis(now);
        let idle = IDLE.as_millis() as u64;
        self.retire(|_, slot| now.saturating_sub(slot.used_ms.load(Ordering::Relaxed)) >= idle);
    }

    /// Slots held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }
}

/// What a lease task did.
enum Leased {
    /// The slot holds more now (or already held enough): look again.
    More,
    /// The store has none left; the next refill, if any.
    Exhausted(Option<SystemTime>),
    /// The store could not say.
    Unconfirmed,
}

/// One lease of a key's credits into its slot.
struct Lease {
    store: Arc<dyn CreditLedger>,
    timeout: Option<Duration>,
    slot: Arc<Slot>,
    id: KeyId,
    cost: u64,
    want: u64,
    now: SystemTime,
}

impl Lease {
    async fn run(self) -> Leased {
        // One lease at a time per key: who waited finds the batch filled.
        let mut held = self.slot.held.lock().await;
        if held.left >= self.cost {
            return Leased::More;
        }
        if held.known_exhausted(self.now) {
            return Leased::Exhausted(held.next_refill);
        }
        let lease = self.store.lease_credits(self.id, self.want, self.now);
        let lease = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, lease).await {
                Ok(lease) => lease,
                Err(_) => return Leased::Unconfirmed,
            },
            None => lease.await,
        };
        let lease = match lease {
            Ok(Some(lease)) => lease,
            Ok(None) => return Leased::Unconfirmed,
            Err(e) => {
                tracing::warn!(target: super::LOG_TARGET, key_id = %self.id, error = %e, "api key credits could not be leased");
                return Leased::Unconfirmed;
            }
        };
        if held.generation != Some(lease.generation) {
            // Refilled or set since the batch was leased: what is left of
            // it belongs to a budget that no longer exists.
            held.left = 0;
            held.generation = Some(lease.generation);
        }
        held.next_refill = lease.next_refill;
        if lease.granted == 0 {
            held.exhausted_at = Some(self.now);
            return Leased::Exhausted(held.next_refill);
        }
        held.exhausted_at = None;
        held.left = held.left.saturating_add(lease.granted);
        Leased::More
    }
}

/// The ledger's subscription to invalidations: a changed or revoked key's
/// batch goes back at once, so a new credit setting applies on the next
/// request here.
pub(crate) struct LedgerListener(pub(crate) Weak<Ledger>);

impl InvalidationListener for LedgerListener {
    fn invalidate(&self, what: &Invalidation) {
        let Some(ledger) = self.0.upgrade() else {
            return;
        };
        match what.key_id() {
            Some(changed) => ledger.retire(|id, _| *id == changed),
            None => ledger.retire(|_, _| true),
        }
    }
}

/// Gives back idle batches every [`IDLE`] / 2, until the ledger is dropped.
pub(crate) fn spawn_idle_sweeper(ledger: &Arc<Ledger>, clock: Arc<dyn Clock>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let ledger = Arc::downgrade(ledger);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(IDLE / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match ledger.upgrade() {
                Some(ledger) => ledger.retire_idle(clock.now()),
                None => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::limits::{lease_grant, CreditLease};
    use crate::verifier::VerifierError;

    /// A store of one key's credits, counting leases and returns.
    struct Bank {
        remaining: Mutex<u64>,
        generation: AtomicU64,
        leases: AtomicU64,
        returned: AtomicU64,
    }

    impl Bank {
        fn new(credits: u64) -> Arc<Self> {
            Arc::new(Self {
                remaining: Mutex::new(credits),
                generation: AtomicU64::new(0),
                leases: AtomicU64::new(0),
                returned: AtomicU64::new(0),
            })
        }
    }

    #[async_trait]
    impl CreditLedger for Bank {
        async fn lease_credits(
            &self,
            _: KeyId,
            want: u64,
            _: SystemTime,
        ) -> Result<Option<CreditLease>, VerifierError> {
            tokio::task::yield_now().await;
            self.leases.fetch_add(1, Ordering::SeqCst);
            let mut remaining = self.remaining.lock().unwrap();
            let granted = lease_grant(*remaining, want);
            *remaining -= granted;
            let generation = self.generation.load(Ordering::SeqCst);
            Ok(Some(CreditLease::new(
                granted, generation, *remaining, None,
            )))
        }

        async fn return_credits(
            &self,
            _: KeyId,
            generation: u64,
            amount: u64,
        ) -> Result<(), VerifierError> {
            if generation == self.generation.load(Ordering::SeqCst) {
                *self.remaining.lock().unwrap() += amount;
                self.returned.fetch_add(amount, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    fn id() -> KeyId {
        "0123456789abcdef".parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_spends_never_exceed_the_credits_and_lease_in_batches() {
        let bank = Bank::new(137);
        let ledger = Arc::new(Ledger::new(bank.clone(), 10, None));
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    match ledger.try_spend(id(), 1, SystemTime::now()) {
                        TrySpend::Spent => true,
                        TrySpend::Refused(_) => false,
                        TrySpend::NeedsLease => {
                            ledger.spend(id(), 1, SystemTime::now()).await.is_ok()
                        }
                    }
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += u64::from(task.await.unwrap());
        }
        assert_eq!(admitted, 137);
        assert_eq!(*bank.remaining.lock().unwrap(), 0);
        // Batches, not a call per request; and once exhausted, one call
        // says so for every waiting request.
        assert!(
            bank.leases.load(Ordering::SeqCst) <= 40,
            "{:?}",
            bank.leases
        );
    }

    #[tokio::test]
    async fn a_cost_larger_than_one_lease_gathers_several() {
        let bank = Bank::new(30);
        let ledger = Arc::new(Ledger::new(bank.clone(), 2, None));
        ledger.spend(id(), 7, SystemTime::now()).await.unwrap();
        let held = ledger_left(&ledger).await;
        let stored = *bank.remaining.lock().unwrap();
        assert_eq!(stored + 7 + held, 30);
        // 23 left in all: three more requests of 7, then a refusal.
        for _ in 0..3 {
            ledger.spend(id(), 7, SystemTime::now()).await.unwrap();
        }
        assert_eq!(
            ledger.spend(id(), 7, SystemTime::now()).await,
            Err(NoCredits::Exhausted(None))
        );
    }

    async fn ledger_left(ledger: &Ledger) -> u64 {
        let slot = ledger.slots().get(&id()).unwrap().clone();
        let left = slot.held.lock().await.left;
        left
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidated_or_idle_batch_goes_back_and_a_new_generation_drops_the_old() {
        let bank = Bank::new(100);
        let ledger = Arc::new(Ledger::new(bank.clone(), 10, None));
        ledger.spend(id(), 1, SystemTime::now()).await.unwrap();
        assert_eq!(ledger_left(&ledger).await, 9);
        LedgerListener(Arc::downgrade(&ledger)).invalidate(&Invalidation::Key(id()));
        assert_eq!(ledger.len(), 0);
        // The return runs in a task.
        while bank.returned.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*bank.remaining.lock().unwrap(), 99);

        // A batch of an older generation is dropped at the next lease.
        ledger.spend(id(), 1, SystemTime::now()).await.unwrap();
        assert_eq!(ledger_left(&ledger).await, 9);
        bank.generation.fetch_add(1, Ordering::SeqCst);
        ledger.spend(id(), 10, SystemTime::now()).await.unwrap();
        assert_eq!(
            ledger_left(&ledger).await,
            0,
            "the old generation's 9 were dropped, not spent"
        );
        // 79 left in the store: a batch of an eighth of them.
        ledger.spend(id(), 1, SystemTime::now()).await.unwrap();
        assert_eq!(ledger_left(&ledger).await, lease_grant(79, 10) - 1);

        // Idle: given back by the sweep, not before.
        let before = bank.returned.load(Ordering::SeqCst);
        ledger.retire_idle(SystemTime::now());
        assert_eq!(ledger.len(), 1);
        ledger.retire_idle(SystemTime::now() + IDLE);
        assert_eq!(ledger.len(), 0);
        while bank.returned.load(Ordering::SeqCst) == before {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            bank.returned.load(Ordering::SeqCst),
            before + lease_grant(79, 10) - 1
        );
    }

    /// Leases credits only when the test lets it, after saying it started.
    struct Gate {
        started: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    #[async_trait]
    impl CreditLedger for Gate {
        async fn lease_credits(
            &self,
            _: KeyId,
            want: u64,
            _: SystemTime,
        ) -> Result<Option<CreditLease>, VerifierError> {
            self.started.notify_one();
            self.release.notified().await;
            Ok(Some(CreditLease::new(want, 0, 1000, None)))
        }

        async fn return_credits(&self, _: KeyId, _: u64, _: u64) -> Result<(), VerifierError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_request_that_goes_away_during_its_lease_loses_no_credit() {
        let gate = Arc::new(Gate {
            started: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        let ledger = Arc::new(Ledger::new(gate.clone(), 10, None));
        let spending = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.spend(id(), 1, SystemTime::now()).await }
        });
        gate.started.notified().await;
        // The client hangs up while the store is leasing.
        spending.abort();
        assert!(spending.await.unwrap_err().is_cancelled());
        gate.release.notify_one();
        // The lease lands in the slot all the same: all 10 are spendable.
        for _ in 0..10_000 {
            if ledger_left(&ledger).await > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ledger_left(&ledger).await, 10, "the lease was lost");
        for _ in 0..10 {
            assert_eq!(
                ledger.try_spend(id(), 1, SystemTime::now()),
                TrySpend::Spent
            );
        }
        assert_eq!(
            ledger.try_spend(id(), 1, SystemTime::now()),
            TrySpend::NeedsLease
        );
    }
}
