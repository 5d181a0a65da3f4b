//! The cache's state behind [`CachedVerifier`](super::CachedVerifier), and
//! everything done to it: the synchronous hit path, one verifier call per
//! key on a miss (coalescing concurrent misses, in a task of its own), and
//! invalidation.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use super::caller::CacheSlot;
use super::config::CacheConfig;
use super::digest::DigestHash;
use super::expiry::PositiveExpiry;
use super::intern::Interner;
use super::revocations::Revocations;
use super::{Caller, LookupError};
use crate::invalidation::{Invalidation, InvalidationListener};
use crate::key::{KeyDigest, KeyId, PresentedKey};
use crate::telemetry;
use crate::verifier::{Verifier, VerifierError};

/// How often one lookup re-fetches a key that was invalidated under it before
/// giving up (as a backend error, uncached).
const MAX_REFETCHES: usize = 3;

/// One verifier call that every concurrent miss for the same key awaits.
pub(super) type Flight = Shared<BoxFuture<'static, Result<Caller, Miss>>>;

/// Why a verifier call produced no entry; shared by all waiters.
#[derive(Clone)]
pub(super) enum Miss {
    Unknown,
    Failed(Arc<VerifierError>),
    Panicked,
}

/// The state of one cache: the two moka tables, the verifier calls under
/// way and the invalidation bookkeeping.
pub(super) struct Inner {
    pub(super) verifier: Arc<dyn Verifier>,
    pub(super) positive: moka::sync::Cache<KeyDigest, Caller, DigestHash>,
    pub(super) negative: moka::sync::Cache<KeyDigest, (), DigestHash>,
    /// Verifier calls under way, by key; touched on misses only.
    inflight: Mutex<HashMap<KeyDigest, Flight>>,
    revocations: Revocations,
    /// Shares account ids and scope sets between cached records.
    interner: Interner,
    pub(super) config: CacheConfig,
    /// The hit path's counters, registered once.
    pub(super) hot: telemetry::HotCounters,
}

impl Inner {
    pub(super) fn new(verifier: Arc<dyn Verifier>, config: CacheConfig) -> Self {
        let hash = DigestHash::new();
        let positive = moka::sync::Cache::builder()
            .max_capacity(config.max_keys)
            .expire_after(PositiveExpiry {
                ttl: config.positive_ttl,
                expired_ttl: config.negative_ttl,
                clock: config.clock.clone(),
            })
            .build_with_hasher(hash.clone());
        let negative = moka::sync::Cache::builder()
            .max_capacity(config.max_unknown_keys)
            .time_to_live(config.negative_ttl)
            .build_with_hasher(hash);
        // A tombstone must outlive every entry fetched before it: such an entry
        // is inserted within the verifier timeout and lives at most the TTL.
        let retain = config
            .positive_ttl
            .saturating_add(config.verifier_timeout.unwrap_or(config.positive_ttl))
            .saturating_add(Duration::from_secs(1));
        Self {
            verifier,
            positive,
            negative,
            inflight: Mutex::new(HashMap::new()),
            revocations: Revocations::new(retain),
            interner: Interner::default(),
            config,
            hot: telemetry::HotCounters::default(),
        }
    }

    /// See [`CachedVerifier::lookup_cached`](super::CachedVerifier::lookup_cached).
    #[inline]
    pub(super) fn lookup_cached(
        &self,
        digest: &KeyDigest,
        key_id: KeyId,
    ) -> Option<Result<Caller, LookupError>> {
        let inner = self;
        if let Some(entry) = inner.positive.get(digest) {
            if entry.record().key_id != key_id {
                // Another key with the same 128-bit digest: practically
                // never, but its identity is never handed out. Asking the
                // verifier settles it.
                return None;
            }
            if inner.revocations.is_current(&entry) {
                inner.hot.cache_hit();
                return Some(inner.unexpired(entry));
            }
            // Invalidated since it was fetched: ask the verifier again.
            inner.positive.invalidate(digest);
        } else if inner.negative.contains_key(digest) {
            telemetry::cache("negative_hit");
            return Some(Err(LookupError::Unknown));
        }
        None
    }

    /// One verifier call for `key`, as an entry to cache or the miss all
    /// its waiters share.
    async fn fetch(&self, key: &PresentedKey) -> Result<Caller, Miss> {
        // Read before the call: anything invalidated from here on makes the
        // entry stale, whatever the verifier saw.
        let epoch = self.revocations.epoch();
        let call = AssertUnwindSafe(self.verifier.verify(key)).catch_unwind();
        let started = Instant::now();
        let answer = match self.config.verifier_timeout {
            Some(limit) => tokio::time::timeout(limit, call).await.ok(),
            None => Some(call.await),
        };
        telemetry::verifier_call(started.elapsed());
        match answer {
            None => {
                telemetry::verifier_error("timeout");
                let limit = self.config.verifier_timeout.unwrap_or_default();
                Err(Miss::Failed(Arc::new(VerifierError::Timeout(limit))))
            }
            Some(Err(_panic)) => {
                telemetry::verifier_error("panic");
                tracing::error!(key_id = %key.id(), "api key verifier panicked");
                Err(Miss::Panicked)
            }
            Some(Ok(Err(err))) => {
                telemetry::verifier_error("backend");
                Err(Miss::Failed(Arc::new(err)))
            }
            Some(Ok(Ok(None))) => Err(Miss::Unknown),
            Some(Ok(Ok(Some(record)))) if record.key_id != key.id() => {
                // A verifier bug; refusing beats caching someone else's identity.
                Err(Miss::Failed(Arc::new(VerifierError::backend(
                    "verifier returned the record of a different key",
                ))))
            }
            Some(Ok(Ok(Some(record)))) => Ok(Caller::cached(
                self.interner.share(record),
                CacheSlot::new(epoch),
            )),
        }
    }

    /// A cached or fetched caller (the cache's own clone of it), unless it
    /// has expired.
    fn unexpired(&self, caller: Caller) -> Result<Caller, LookupError> {
        // The clock is read only when something needs it: most keys never
        // expire, and reading it is a good part of a hit's cost.
        if caller.expires_at().is_some() && caller.record().is_expired_at(self.config.clock.now()) {
            return Err(LookupError::Expired);
        }
        Ok(caller)
    }

    /// Joins the verifier call for `key`, starting it if none is under way.
    pub(super) async fn fetch_coalesced(
        this: &Arc<Self>,
        key: &PresentedKey,
    ) -> Result<Caller, LookupError> {
        let digest = *key.digest();
        for _ in 0..=MAX_REFETCHES {
            let flight = {
                let mut inflight = this.inflight.lock().unwrap_or_else(|e| e.into_inner());
                // A flight inserts its answer before leaving the map, so
                // looking again under the lock never misses a fresh answer.
                if let Some(entry) = this.positive.get(&digest) {
                    if this.revocations.is_current(&entry) {
                        return this.unexpired(entry);
                    }
                    this.positive.invalidate(&digest);
                } else if this.negative.contains_key(&digest) {
                    return Err(LookupError::Unknown);
                }
                inflight
                    .entry(digest)
                    .or_insert_with(|| {
                        telemetry::cache("miss");
                        Self::start_flight(this.clone(), key.clone())
                    })
                    .clone()
            };
            match flight.await {
                Ok(entry) if this.revocations.is_current(&entry) => return this.unexpired(entry),
                // Invalidated while in flight: drop it and ask again.
                Ok(_) => this.positive.invalidate(&digest),
                Err(Miss::Unknown) => return Err(LookupError::Unknown),
                Err(Miss::Failed(err)) => return Err(LookupError::Unavailable(err)),
                Err(Miss::Panicked) => return Err(LookupError::VerifierPanicked),
            }
        }
        Err(LookupError::Unavailable(Arc::new(VerifierError::backend(
            "api key kept being invalidated during verification",
        ))))
    }

    /// See [`CachedVerifier::join_in_flight`](super::CachedVerifier::join_in_flight).
    pub(super) fn join(
        self: &Arc<Self>,
        key: &PresentedKey,
    ) -> Option<impl Future<Output = Option<Result<Caller, LookupError>>> + Send + 'static> {
        let flight = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key.digest())?
            .clone();
        let inner = self.clone();
        Some(async move {
            match flight.await {
                Ok(entry) if inner.revocations.is_current(&entry) => Some(inner.unexpired(entry)),
                Ok(_) => None,
                Err(Miss::Unknown) => Some(Err(LookupError::Unknown)),
                Err(Miss::Failed(err)) => Some(Err(LookupError::Unavailable(err))),
                Err(Miss::Panicked) => Some(Err(LookupError::VerifierPanicked)),
            }
        })
    }

    /// Runs one verifier call in its own task, so it completes (and leaves
    /// the in-flight map) even if every request waiting for it goes away.
    fn start_flight(this: Arc<Self>, key: PresentedKey) -> Flight {
        let task = tokio::spawn(async move {
            let digest = *key.digest();
            // Leaves the map however the task ends (even by panic or
            // cancellation), and only after the answer is in the cache.
            let _leave = LeaveInflight {
                inner: this.clone(),
                digest,
            };
            let answer = this.fetch(&key).await;
            match &answer {
                Ok(entry) => this.positive.insert(digest, entry.clone()),
                Err(Miss::Unknown) => this.negative.insert(digest, ()),
                Err(_) => {}
            }
            answer
        });
        async move { task.await.unwrap_or(Err(Miss::Panicked)) }
            .boxed()
            .shared()
    }
}

/// Removes a flight from the in-flight map when its task ends.
struct LeaveInflight {
    inner: Arc<Inner>,
    digest: KeyDigest,
}

impl Drop for LeaveInflight {
    fn drop(&mut self) {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.digest);
    }
}

impl InvalidationListener for Inner {
    fn invalidate(&self, what: &Invalidation) {
        match what {
            Invalidation::Key(id) => self.revocations.invalidate(*id, None, Instant::now()),
            Invalidation::KeyOf {
                id,
                service_account_id,
            } => self
                .revocations
                .invalidate(*id, Some(service_account_id.clone()), Instant::now()),
            Invalidation::All => {
                self.revocations.invalidate_all();
                // Frees memory; correctness already comes from the epoch floor.
                self.positive.invalidate_all();
                self.negative.invalidate_all();
            }
        }
    }
}
