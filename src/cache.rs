//! The cache policy: a moka cache in front of any [`Verifier`].
//!
//! - **Positive entries** (valid keys), keyed by the SHA-256 of the whole key,
//!   live until the earlier of the positive TTL and the key's own expiry.
//!   Expiry is also checked against the [`Clock`] on every hit.
//! - **A hit is synchronous**: no future, no allocation, no lock shared by
//!   all requests ([`CachedVerifier::lookup_cached`]).
//! - **Concurrent misses** for one key run the verifier once, in a task of
//!   its own; every waiter gets that one answer, and a waiter that goes away
//!   (a client disconnecting) cancels nothing.
//! - **Unknown keys** are remembered in a separate, smaller cache for a short
//!   TTL, so a flood of made-up keys neither reaches the backend at full rate
//!   nor evicts the hot valid keys.
//! - **Cached records share** their service account id and scope set with
//!   every other cached record that has an equal one (a verifier backed by a
//!   database hands out a fresh copy with every record), so memory grows
//!   with the number of keys, not with the size of their accounts and scopes.
//! - **Verifier errors**, timeouts and panics are never cached.
//! - **Invalidation** of a key id (revoke, reissue, update) takes effect for
//!   every request that starts after [`CachedVerifier::invalidate`] returns,
//!   including requests that would join a verifier call already in flight.
//! - **Invalidation bookkeeping is bounded.** An invalidated key id is
//!   remembered for the tombstone window (positive TTL + verifier timeout +
//!   1 s). When more than 1,024 keys of one service account are invalidated
//!   within the window, by invalidations that name the account
//!   ([`Invalidation::KeyOf`], [`CachedVerifier::invalidate_key_of`]: the
//!   stores and the management API name it), that account's cached keys are
//!   re-verified once each, and no other account's. Past 100,000 remembered
//!   keys and accounts in all, every cached key is re-verified.
//!
//! Defaults: positive TTL 60 s, negative TTL 5 s, 100,000 valid keys,
//! 10,000 unknown keys, verifier timeout 5 s. Misses need a tokio runtime.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::cache::{CacheConfig, CachedVerifier};
//! use tower_api_key::store::{KeyStore, MemoryStore, NewKey};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let cache = CachedVerifier::new(
//!     store.clone(),
//!     CacheConfig::default().with_positive_ttl(Duration::from_secs(30)),
//! );
//! let created = store.create(NewKey::new("sa-1")).await.unwrap();
//! let presented = store.format().parse(created.key.expose_secret()).unwrap();
//! let caller = cache.lookup(&presented).await.unwrap();
//! assert_eq!(caller.service_account_id(), "sa-1");
//!
//! store.revoke(created.record.key_id).await.unwrap();
//! assert!(cache.lookup(&presented).await.is_err());
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use moka::Expiry;

use crate::clock::{Clock, SystemClock};
use crate::intern::Interner;
use crate::invalidation::{Invalidation, InvalidationListener};
use crate::key::{KeyDigest, KeyId, PresentedKey};
use crate::record::Caller;
use crate::telemetry;
use crate::usage::{UsageRecorder, UsageSlot};
use crate::verifier::{Verifier, VerifierError};

/// How often one lookup re-fetches a key that was invalidated under it before
/// giving up (as a backend error, uncached).
const MAX_REFETCHES: usize = 3;
/// Tombstones of one service account past this count (a bit above the
/// stores' default key limit per account) collapse into one floor for that
/// account: its cached keys are re-verified, other accounts' are not.
const MAX_TOMBSTONES_PER_ACCOUNT: usize = 1_024;
/// Tombstones and account floors past this count, all accounts together,
/// are replaced by one cache-wide flush.
const MAX_TOMBSTONES: usize = 100_000;

/// Settings of a [`CachedVerifier`].
#[derive(Clone)]
pub struct CacheConfig {
    positive_ttl: Duration,
    negative_ttl: Duration,
    max_keys: u64,
    max_unknown_keys: u64,
    verifier_timeout: Option<Duration>,
    clock: Arc<dyn Clock>,
    usage: Option<UsageRecorder>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_keys: 100_000,
            max_unknown_keys: 10_000,
            verifier_timeout: Some(Duration::from_secs(5)),
            clock: Arc::new(SystemClock),
            usage: None,
        }
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("positive_ttl", &self.positive_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_keys", &self.max_keys)
            .field("max_unknown_keys", &self.max_unknown_keys)
            .field("verifier_timeout", &self.verifier_timeout)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl CacheConfig {
    /// How long a valid key is trusted without asking the verifier again
    /// (default 60 s). Also the bound on how long a revocation that is not
    /// pushed to this process takes to be seen.
    pub fn with_positive_ttl(mut self, ttl: Duration) -> Self {
        self.positive_ttl = ttl;
        self
    }

    /// How long an unknown key is remembered as unknown (default 5 s).
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How many valid keys are cached (default 100,000).
    pub fn with_max_keys(mut self, max: u64) -> Self {
        self.max_keys = max;
        self
    }

    /// How many unknown keys are remembered (default 10,000). Kept apart from
    /// the valid keys, so floods of made-up keys cannot evict them.
    pub fn with_max_unknown_keys(mut self, max: u64) -> Self {
        self.max_unknown_keys = max;
        self
    }

    /// Bound on one verifier call (default 5 s); past it the request fails
    /// with [`LookupError::Unavailable`]. `None` waits forever. Needs a tokio
    /// runtime with timers.
    pub fn with_verifier_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.verifier_timeout = timeout;
        self
    }

    /// The clock that key expiry is checked against (default: the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Notes every admitted key's use on `recorder`, which writes
    /// `last_used_at` behind the request path (default: not tracked).
    pub fn with_usage_recorder(mut self, recorder: UsageRecorder) -> Self {
        self.usage = Some(recorder);
        self
    }

    /// The positive TTL.
    pub fn positive_ttl(&self) -> Duration {
        self.positive_ttl
    }

    /// The negative TTL.
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// The verifier timeout.
    pub fn verifier_timeout(&self) -> Option<Duration> {
        self.verifier_timeout
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// Why a lookup did not produce a caller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LookupError {
    /// Unknown, revoked, or the secret does not match.
    Unknown,
    /// The key expired.
    Expired,
    /// The verifier failed or timed out (HTTP 503). Not cached.
    Unavailable(Arc<VerifierError>),
    /// The verifier panicked (HTTP 500). Not cached.
    VerifierPanicked,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("unknown or revoked api key"),
            Self::Expired => f.write_str("expired api key"),
            Self::Unavailable(e) => write!(f, "api key verifier unavailable: {e}"),
            Self::VerifierPanicked => f.write_str("api key verifier panicked"),
        }
    }
}

impl std::error::Error for LookupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Where a successful lookup came from (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// Served from the cache.
    Cache,
    /// Fetched from the verifier (by this request or one it waited for).
    Verifier,
}

/// The cache's bookkeeping for one valid key. It lives in the same
/// allocation as the key's [`Caller`], which is the cached value itself: a
/// cached key costs one allocation besides moka's own, and a hit follows one
/// pointer.
#[derive(Debug, Default)]
pub(crate) struct CacheSlot {
    /// The invalidation epoch this entry has been checked against; it starts
    /// at the epoch read before the verifier was called.
    epoch: AtomicU64,
    pub(crate) usage: UsageSlot,
}

impl CacheSlot {
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch: AtomicU64::new(epoch),
            usage: UsageSlot::default(),
        }
    }
}

/// Why a verifier call produced no entry; shared by all waiters.
#[derive(Clone)]
enum Miss {
    Unknown,
    Failed(Arc<VerifierError>),
    Panicked,
}

/// One verifier call that every concurrent miss for the same key awaits.
type Flight = Shared<BoxFuture<'static, Result<Caller, Miss>>>;

/// A [`Verifier`] behind a moka cache; see the [module docs](self) for the
/// policy. Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct CachedVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Arc<dyn Verifier>,
    positive: moka::sync::Cache<KeyDigest, Caller, DigestHash>,
    negative: moka::sync::Cache<KeyDigest, (), DigestHash>,
    /// Verifier calls under way, by key; touched on misses only.
    inflight: Mutex<HashMap<KeyDigest, Flight>>,
    revocations: Revocations,
    /// Shares account ids and scope sets between cached records.
    interner: Interner,
    config: CacheConfig,
}

impl fmt::Debug for CachedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedVerifier")
            .field("config", &self.inner.config)
            .field("cached_keys", &self.inner.positive.entry_count())
            .field("cached_unknown_keys", &self.inner.negative.entry_count())
            .finish_non_exhaustive()
    }
}

/// The caches' hash of a [`KeyDigest`].
///
/// The digest is already SHA-256 output; hashing it once more with SipHash
/// (the default) was a sixth of a hit's instructions. This folds its four
/// words with 64x64->128-bit multiplies under a per-process random key, so
/// the bucket a digest lands in cannot be predicted from outside, and a
/// flood of crafted keys cannot pile onto one bucket.
#[derive(Clone)]
struct DigestHash {
    seed: u64,
    multiplier: u64,
}

impl DigestHash {
    fn new() -> Self {
        // Seeded from the OS by the standard library, once per process.
        let random = std::collections::hash_map::RandomState::new();
        Self {
            seed: random.hash_one(0x243f_6a88_85a3_08d3_u64),
            // Odd, and so never zero.
            multiplier: random.hash_one(0x1319_8a2e_0370_7344_u64) | 1,
        }
    }
}

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            state: self.seed,
            multiplier: self.multiplier,
        }
    }
}

struct DigestHasher {
    state: u64,
    multiplier: u64,
}

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = (a as u128).wrapping_mul(b as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Any input works (the in-flight map and tests may hash other
        // things); a KeyDigest is exactly four words.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = folded_multiply(self.state ^ u64::from_le_bytes(word), self.multiplier);
        }
    }

    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.multiplier.rotate_left(32) | 1)
    }
}

/// Positive entries expire at the earlier of the TTL and the key's expiry;
/// a key that has already expired is kept for the negative TTL, refused on
/// every hit, so using it does not reach the verifier each time.
struct PositiveExpiry {
    ttl: Duration,
    expired_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl Expiry<KeyDigest, Caller> for PositiveExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyDigest,
        caller: &Caller,
        _created_at: Instant,
    ) -> Option<Duration> {
        let Some(expires_at) = caller.expires_at() else {
            return Some(self.ttl);
        };
        match expires_at.duration_since(self.clock.now()) {
            Ok(left) if !left.is_zero() => Some(left.min(self.ttl)),
            _ => Some(self.expired_ttl.min(self.ttl)),
        }
    }
}

impl CachedVerifier {
    /// Puts `verifier` behind a cache. If the verifier publishes
    /// invalidations (stores do), the cache subscribes to them.
    pub fn new(verifier: impl Verifier, config: CacheConfig) -> Self {
        Self::from_arc(Arc::new(verifier), config)
    }

    /// [`CachedVerifier::new`] for a verifier that is already shared.
    pub fn from_arc(verifier: Arc<dyn Verifier>, config: CacheConfig) -> Self {
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
        let inner = Arc::new(Inner {
            verifier,
            positive,
            negative,
            inflight: Mutex::new(HashMap::new()),
            revocations: Revocations::new(retain),
            interner: Interner::default(),
            config,
        });
        if let Some(bus) = inner.verifier.invalidations() {
            bus.subscribe(inner.clone());
        }
        Self { inner }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The verifier behind the cache.
    pub fn verifier(&self) -> &Arc<dyn Verifier> {
        &self.inner.verifier
    }

    /// Looks `key` up: from the cache, or through the verifier on a miss.
    /// Expiry is checked against the clock on every call.
    pub async fn lookup(&self, key: &PresentedKey) -> Result<Caller, LookupError> {
        self.lookup_with_source(key).await.map(|(caller, _)| caller)
    }

    /// [`CachedVerifier::lookup`], also telling where the answer came from.
    pub async fn lookup_with_source(
        &self,
        key: &PresentedKey,
    ) -> Result<(Caller, Source), LookupError> {
        match self.lookup_cached(key) {
            Some(answer) => answer.map(|caller| (caller, Source::Cache)),
            None => Inner::fetch_coalesced(&self.inner, key)
                .await
                .map(|caller| (caller, Source::Verifier)),
        }
    }

    /// The verifier's answer for a key [`CachedVerifier::lookup_cached`]
    /// could not answer (coalesced with concurrent misses for the same key).
    pub(crate) async fn lookup_miss(&self, key: &PresentedKey) -> Result<Caller, LookupError> {
        Inner::fetch_coalesced(&self.inner, key).await
    }

    /// The answer of the verifier call already under way for `key`, if one
    /// is: awaiting it never starts a verifier call (the failed-attempt
    /// limiter lets such a request wait without spending an attempt). The
    /// answer is `None` if the key was invalidated while that call ran: ask
    /// again with [`CachedVerifier::lookup_miss`].
    pub(crate) fn join_in_flight(
        &self,
        key: &PresentedKey,
    ) -> Option<
        impl std::future::Future<Output = Option<Result<Caller, LookupError>>> + Send + 'static,
    > {
        let flight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key.digest())?
            .clone();
        let inner = self.inner.clone();
        Some(async move {
            match flight.await {
                Ok(entry) if inner.revocations.is_current(&entry) => Some(inner.admit(entry)),
                Ok(_) => None,
                Err(Miss::Unknown) => Some(Err(LookupError::Unknown)),
                Err(Miss::Failed(err)) => Some(Err(LookupError::Unavailable(err))),
                Err(Miss::Panicked) => Some(Err(LookupError::VerifierPanicked)),
            }
        })
    }

    /// The answer the cache alone can give, synchronously: `Some` for a
    /// cached valid key (admitted, or refused as expired) and for a key
    /// remembered as unknown; `None` when the verifier must be asked.
    pub fn lookup_cached(&self, key: &PresentedKey) -> Option<Result<Caller, LookupError>> {
        let inner = &*self.inner;
        let digest = key.digest();
        if let Some(entry) = inner.positive.get(digest) {
            if inner.revocations.is_current(&entry) {
                telemetry::cache("hit");
                return Some(inner.admit(entry));
            }
            // Invalidated since it was fetched: ask the verifier again.
            inner.positive.invalidate(digest);
        } else if inner.negative.contains_key(digest) {
            telemetry::cache("negative_hit");
            return Some(Err(LookupError::Unknown));
        }
        None
    }

    /// Re-verifies `key_id` on its next use, for every request that starts
    /// after this returns. Prefer [`CachedVerifier::invalidate_key_of`] when
    /// the key's service account is known.
    pub fn invalidate(&self, key_id: KeyId) {
        self.inner.invalidate(&Invalidation::Key(key_id));
    }

    /// [`CachedVerifier::invalidate`] for a key of `service_account_id`,
    /// which must be the key's own account (a key never changes account).
    ///
    /// The cache remembers recent invalidations per account: when one account
    /// has more than 1,024 keys invalidated within the tombstone window, only
    /// that account's cached keys are re-verified, rather than every cached
    /// key of every account.
    pub fn invalidate_key_of(&self, key_id: KeyId, service_account_id: impl Into<Arc<str>>) {
        self.inner
            .invalidate(&Invalidation::key_of(key_id, service_account_id));
    }

    /// Re-verifies every key on its next use.
    pub fn invalidate_all(&self) {
        self.inner.invalidate(&Invalidation::All);
    }

    /// How many valid keys are cached (approximate; moka counts lazily).
    pub fn cached_keys(&self) -> u64 {
        self.inner.positive.entry_count()
    }

    /// Runs moka's pending maintenance now (counts, evictions); for tests and
    /// memory measurements.
    pub fn run_pending_tasks(&self) {
        self.inner.positive.run_pending_tasks();
        self.inner.negative.run_pending_tasks();
    }
}

impl Inner {
    /// Joins the verifier call for `key`, starting it if none is under way.
    async fn fetch_coalesced(this: &Arc<Self>, key: &PresentedKey) -> Result<Caller, LookupError> {
        let digest = *key.digest();
        for _ in 0..=MAX_REFETCHES {
            let flight = {
                let mut inflight = this.inflight.lock().unwrap_or_else(|e| e.into_inner());
                // A flight inserts its answer before leaving the map, so
                // looking again under the lock never misses a fresh answer.
                if let Some(entry) = this.positive.get(&digest) {
                    if this.revocations.is_current(&entry) {
                        return this.admit(entry);
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
                Ok(entry) if this.revocations.is_current(&entry) => return this.admit(entry),
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

    /// Admits a cached or fetched caller (the cache's own clone of it) if it
    /// has not expired.
    fn admit(&self, caller: Caller) -> Result<Caller, LookupError> {
        let usage = self.config.usage.as_ref();
        // The clock is read only when something needs it: most keys never
        // expire, and reading it is a good part of a hit's cost.
        if caller.expires_at().is_some() || usage.is_some() {
            let now = self.config.clock.now();
            if caller.record().is_expired_at(now) {
                return Err(LookupError::Expired);
            }
            if let Some(usage) = usage {
                usage.note(&caller, now);
            }
        }
        Ok(caller)
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

/// Invalidation bookkeeping: a global epoch, bumped by every invalidation, a
/// tombstone per recently invalidated key id, and a floor per service account
/// whose keys were invalidated in bulk. An entry whose epoch is the current
/// one needs no further check, so a hit costs two atomic loads.
///
/// Invariants (each invalidation gets a new epoch `E`, published last):
/// - an entry is stale if its checked epoch is below the global floor, below
///   the epoch of a tombstone of its key id, or below the floor of its own
///   service account (`Caller::service_account_id`);
/// - every invalidation of key `k` at epoch `E` leaves, until it is pruned,
///   a tombstone of `k` at `E` or later, or (only when it named `k`'s account
///   `a`) a floor of `a` at `E` or later;
/// - pruning a tombstone or floor at `E` raises the global floor to `E`, so
///   an entry fetched before it (a verifier call that hung past `retain`) is
///   still never admitted;
/// - at most `total` tombstones and account floors are kept: one more resets
///   the global floor instead (every entry is re-verified).
struct Revocations {
    epoch: AtomicU64,
    /// Entries fetched before this epoch are stale (set by `invalidate_all`).
    floor: AtomicU64,
    tombstones: Mutex<Tombstones>,
    retain: Duration,
    /// Tombstones of one account past this count collapse into its floor.
    per_account: usize,
    /// Tombstones and account floors past this count flush everything.
    total: usize,
}

#[derive(Default)]
struct Tombstones {
    by_id: HashMap<KeyId, Tombstone>,
    /// Accounts with tombstones or a floor; never an account with neither.
    accounts: HashMap<Arc<str>, AccountMarks>,
    /// Accounts whose floor is set.
    floors: usize,
    /// Every tombstone and floor as set, oldest first, for pruning. Records
    /// superseded since (a later epoch for the same key or account, a
    /// collapse) are skipped when pruned and compacted away in bulk.
    by_age: VecDeque<Aged>,
}

struct Tombstone {
    epoch: u64,
    /// The account every invalidation of this key in the window named; `None`
    /// if one did not name it or two disagreed, so the tombstone is never
    /// collapsed into a floor that might not cover the key's entry.
    account: Option<Arc<str>>,
}

#[derive(Default)]
struct AccountMarks {
    /// Tombstones tagged with this account.
    tombstones: usize,
    /// Entries of this account checked before this epoch are stale; 0: none.
    floor: u64,
}

struct Aged {
    at: Instant,
    epoch: u64,
    what: Marked,
}

enum Marked {
    Key(KeyId),
    Floor(Arc<str>),
}

impl Tombstones {
    fn live(&self) -> usize {
        self.by_id.len() + self.floors
    }

    /// Whether `record` is still what its key or account carries.
    fn is_latest(&self, record: &Aged) -> bool {
        match &record.what {
            Marked::Key(id) => self.by_id.get(id).is_some_and(|t| t.epoch == record.epoch),
            Marked::Floor(account) => self
                .accounts
                .get(account)
                .is_some_and(|a| a.floor == record.epoch),
        }
    }

    fn untag(&mut self, account: &Arc<str>) {
        if let Some(marks) = self.accounts.get_mut(account) {
            marks.tombstones -= 1;
            if marks.tombstones == 0 && marks.floor == 0 {
                self.accounts.remove(account);
            }
        }
    }

    /// Drops the records older than `retain` at `now`, raising `floor` to
    /// each one's epoch.
    fn prune(&mut self, now: Instant, retain: Duration, floor: &AtomicU64) {
        while let Some(oldest) = self.by_age.front() {
            if now.saturating_duration_since(oldest.at) < retain {
                break;
            }
            let Some(oldest) = self.by_age.pop_front() else {
                break;
            };
            if self.is_latest(&oldest) {
                match &oldest.what {
                    Marked::Key(id) => {
                        if let Some(Tombstone {
                            account: Some(account),
                            ..
                        }) = self.by_id.remove(id)
                        {
                            self.untag(&account);
                        }
                    }
                    Marked::Floor(account) => {
                        if let Some(marks) = self.accounts.get_mut(account) {
                            marks.floor = 0;
                            self.floors -= 1;
                            if marks.tombstones == 0 {
                                self.accounts.remove(account);
                            }
                        }
                    }
                }
            }
            // An entry fetched before this record (say by a verifier call
            // that hung past `retain`) must still never be admitted: without
            // the record, the floor refuses it (one re-fetch for entries not
            // checked since, which is cheap). A superseded record is covered
            // by its successor, so raising the floor for it is merely early.
            floor.fetch_max(oldest.epoch, Ordering::AcqRel);
        }
    }

    /// Replaces `account`'s tombstones with its floor at `epoch`. Every
    /// tombstone dropped is older and tagged with `account`, and a key never
    /// changes account: the floor covers each of their keys' entries.
    fn collapse(&mut self, account: &Arc<str>, epoch: u64, now: Instant) {
        self.by_id
            .retain(|_, t| t.account.as_deref() != Some(&**account));
        let marks = self.accounts.entry(account.clone()).or_default();
        marks.tombstones = 0;
        if marks.floor == 0 {
            self.floors += 1;
        }
        marks.floor = epoch;
        self.by_age.push_back(Aged {
            at: now,
            epoch,
            what: Marked::Floor(account.clone()),
        });
    }

    /// Drops superseded records once they are as many as the live ones, so
    /// repeated invalidations of one key or account take bounded space.
    fn compact(&mut self) {
        if self.by_age.len() > 2 * self.live() + 64 {
            let by_age = std::mem::take(&mut self.by_age);
            self.by_age = by_age.into_iter().filter(|r| self.is_latest(r)).collect();
        }
    }
}

impl Revocations {
    fn new(retain: Duration) -> Self {
        Self::with_bounds(retain, MAX_TOMBSTONES_PER_ACCOUNT, MAX_TOMBSTONES)
    }

    fn with_bounds(retain: Duration, per_account: usize, total: usize) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            tombstones: Mutex::new(Tombstones::default()),
            retain,
            per_account,
            total,
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tombstones> {
        self.tombstones.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_current(&self, entry: &Caller) -> bool {
        let epoch = &entry.cache_slot().epoch;
        let checked = epoch.load(Ordering::Acquire);
        let now = self.epoch();
        if checked >= now {
            return true;
        }
        if checked < self.floor.load(Ordering::Acquire) {
            return false;
        }
        {
            let tombstones = self.lock();
            let revoked_at = tombstones.by_id.get(&entry.key_id()).map(|t| t.epoch);
            if revoked_at.is_some_and(|at| at > checked) {
                return false;
            }
            if tombstones.floors > 0 {
                let floor = tombstones
                    .accounts
                    .get(entry.service_account_id())
                    .map_or(0, |a| a.floor);
                if floor > checked {
                    return false;
                }
            }
        }
        // Checked against every invalidation up to `now`; skip them next time.
        epoch.fetch_max(now, Ordering::AcqRel);
        true
    }

    /// Invalidates key `id`, of `account` if the publisher named it.
    fn invalidate(&self, id: KeyId, account: Option<Arc<str>>, now: Instant) {
        let mut tombstones = self.lock();
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        tombstones.prune(now, self.retain, &self.floor);
        let collapsed = account
            .as_ref()
            .filter(|a| tombstones.accounts.get(*a).is_some_and(|m| m.floor > 0))
            .cloned();
        if let Some(account) = collapsed {
            // The account's keys are re-verified in bulk already: raise its
            // floor. A tombstone of `id` under another (or no) account stays.
            if let Some(marks) = tombstones.accounts.get_mut(&account) {
                marks.floor = epoch;
            }
            tombstones.by_age.push_back(Aged {
                at: now,
                epoch,
                what: Marked::Floor(account),
            });
        } else if tombstones.live() >= self.total && !tombstones.by_id.contains_key(&id) {
            // Too many to track one by one: treat everything as invalidated.
            self.floor.store(epoch, Ordering::Release);
            *tombstones = Tombstones::default();
        } else {
            let previous = tombstones.by_id.remove(&id);
            let account = match previous {
                None => account,
                Some(previous) => {
                    if let Some(old) = &previous.account {
                        tombstones.untag(old);
                    }
                    // Two invalidations naming different accounts (or one
                    // naming none): trust neither.
                    account.filter(|a| previous.account.as_ref() == Some(a))
                }
            };
            let mut overflowing = None;
            if let Some(account) = &account {
                let marks = tombstones.accounts.entry(account.clone()).or_default();
                marks.tombstones += 1;
                if marks.tombstones > self.per_account {
                    overflowing = Some(account.clone());
                }
            }
            tombstones.by_id.insert(id, Tombstone { epoch, account });
            tombstones.by_age.push_back(Aged {
                at: now,
                epoch,
                what: Marked::Key(id),
            });
            if let Some(account) = overflowing {
                tombstones.collapse(&account, epoch, now);
            }
        }
        tombstones.compact();
        // Published last, under the lock: whoever sees the new epoch sees the tombstone.
        self.epoch.store(epoch, Ordering::Release);
    }

    fn invalidate_all(&self) {
        let mut tombstones = self.lock();
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        self.floor.store(epoch, Ordering::Release);
        *tombstones = Tombstones::default();
        self.epoch.store(epoch, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KeyRecord;

    const RETAIN: Duration = Duration::from_secs(60);

    fn id(i: usize) -> KeyId {
        format!("{i:016}").parse().unwrap()
    }

    /// Small bounds: 4 tombstones per account, 64 in all.
    fn revocations() -> Revocations {
        Revocations::with_bounds(RETAIN, 4, 64)
    }

    /// An entry as a verifier call starting now would cache it.
    fn fetch(revocations: &Revocations, key: usize, account: &str) -> Caller {
        Caller::cached(
            KeyRecord::new(id(key), account),
            CacheSlot::new(revocations.epoch()),
        )
    }

    fn revoke(revocations: &Revocations, key: usize, account: &str, at: Instant) {
        revocations.invalidate(id(key), Some(account.into()), at);
    }

    /// Asserts the bookkeeping is within its bounds.
    fn assert_bounded(revocations: &Revocations) {
        let t = revocations.lock();
        assert!(t.live() <= revocations.total, "{} live", t.live());
        assert!(
            t.accounts.len() <= revocations.total,
            "{}",
            t.accounts.len()
        );
        assert!(
            t.by_age.len() <= 2 * revocations.total + 65,
            "{} aged",
            t.by_age.len()
        );
    }

    #[test]
    fn an_account_past_its_bound_is_re_verified_alone_and_its_revoked_keys_stay_refused() {
        let r = revocations();
        let now = Instant::now();
        let bystander = fetch(&r, 0, "sa-bystander");
        let kept = fetch(&r, 1, "sa-flood");
        let revoked: Vec<Caller> = (100..120).map(|k| fetch(&r, k, "sa-flood")).collect();
        for k in 100..120 {
            revoke(&r, k, "sa-flood", now);
        }
        assert_eq!(r.lock().floors, 1, "the account collapsed into its floor");
        assert!(
            r.is_current(&bystander),
            "another account is not re-verified"
        );
        assert!(!r.is_current(&kept), "the flooding account's keys are");
        for entry in &revoked {
            assert!(!r.is_current(entry), "{:?}", entry.key_id());
        }
        // Re-fetched after the flood: current until the account's next change.
        let refetched = fetch(&r, 1, "sa-flood");
        assert!(r.is_current(&refetched));
        revoke(&r, 200, "sa-flood", now);
        assert!(!r.is_current(&refetched));
        assert!(r.is_current(&bystander));
        assert_bounded(&r);
    }

    #[test]
    fn invalidations_naming_no_account_keep_the_cache_wide_backstop() {
        let r = revocations();
        let now = Instant::now();
        let bystander = fetch(&r, 0, "sa-bystander");
        for k in 100..=164 {
            r.invalidate(id(k), None, now);
            assert_bounded(&r);
        }
        assert!(
            !r.is_current(&bystander),
            "65 > 64 untracked: all re-verified"
        );
    }

    #[test]
    fn many_accounts_each_under_their_bound_cannot_grow_the_bookkeeping_past_its_total() {
        let r = revocations();
        let now = Instant::now();
        let bystander = fetch(&r, 0, "sa-bystander");
        for k in 1..=10_000 {
            revoke(&r, k, &format!("sa-{}", k / 3), now);
            assert_bounded(&r);
        }
        // The total bound was reached: the cache-wide flush took over.
        assert!(!r.is_current(&bystander));
    }

    #[test]
    fn invalidating_one_key_or_one_collapsed_account_again_and_again_takes_bounded_space() {
        let r = revocations();
        let now = Instant::now();
        for k in 0..5 {
            revoke(&r, k, "sa-flood", now);
        }
        for _ in 0..10_000 {
            revoke(&r, 7, "sa-flood", now);
            revoke(&r, 1_000, "sa-other", now);
            r.invalidate(id(1_001), None, now);
            assert_bounded(&r);
        }
    }

    #[test]
    fn a_tombstone_two_invalidations_tag_with_different_accounts_is_never_collapsed_away() {
        let r = revocations();
        let now = Instant::now();
        // Key 1 belongs to sa-b; one announcement names sa-a by mistake.
        let entry = fetch(&r, 1, "sa-b");
        revoke(&r, 1, "sa-b", now);
        revoke(&r, 1, "sa-a", now);
        for k in 100..110 {
            revoke(&r, k, "sa-a", now);
        }
        assert_eq!(r.lock().floors, 1, "sa-a collapsed");
        assert!(!r.is_current(&entry));
        // Named again under the collapsed account: the tombstone stays too.
        revoke(&r, 1, "sa-a", now);
        assert!(!r.is_current(&entry));
    }

    #[test]
    fn an_entry_fetched_before_an_account_floor_is_refused_after_the_floor_is_pruned() {
        let r = revocations();
        let start = Instant::now();
        for k in 100..110 {
            revoke(&r, k, "sa-flood", start);
        }
        assert_eq!(r.lock().floors, 1);
        // A verifier call starts after the collapse and hangs past `retain`;
        // its key is revoked meanwhile, which only raises the account floor.
        let hung = fetch(&r, 200, "sa-flood");
        revoke(&r, 200, "sa-flood", start);
        assert!(!r.lock().by_id.contains_key(&id(200)));
        assert!(!r.is_current(&hung));
        let bystander = fetch(&r, 0, "sa-bystander");
        // Any later invalidation prunes what is older than `retain`.
        revoke(&r, 500, "sa-other", start + RETAIN);
        {
            let t = r.lock();
            assert_eq!(t.floors, 0, "the account floor was pruned");
            assert!(!t.accounts.contains_key("sa-flood"));
        }
        assert!(!r.is_current(&hung), "a revoked key is never re-admitted");
        assert!(r.is_current(&bystander), "checked since: not re-verified");
    }

    #[test]
    fn an_entry_fetched_before_a_tombstone_is_refused_after_the_tombstone_is_pruned() {
        let r = revocations();
        let start = Instant::now();
        let hung = fetch(&r, 100, "sa-1");
        revoke(&r, 100, "sa-1", start);
        let bystander = fetch(&r, 0, "sa-1");
        revoke(&r, 500, "sa-2", start + RETAIN);
        assert!(!r.lock().by_id.contains_key(&id(100)), "pruned");
        assert!(!r.is_current(&hung));
        assert!(r.is_current(&bystander));
    }

    fn digest(i: u32) -> KeyDigest {
        use sha2::{Digest, Sha256};
        KeyDigest(Sha256::digest(i.to_le_bytes()).into())
    }

    #[test]
    fn digest_hash_is_stable_per_builder_and_spreads_digests() {
        let hash = DigestHash::new();
        assert_eq!(hash.hash_one(digest(1)), hash.hash_one(digest(1)));
        // Another process (another builder) puts the same digest elsewhere.
        assert_ne!(
            hash.hash_one(digest(1)),
            DigestHash::new().hash_one(digest(1))
        );
        // 10,000 digests over 2^20 buckets: about 48 collisions expected.
        let buckets: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| hash.hash_one(digest(i)) & ((1 << 20) - 1))
            .collect();
        assert!(buckets.len() > 9_800, "{}", buckets.len());
        let high: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| hash.hash_one(digest(i)) >> 44)
            .collect();
        assert!(high.len() > 9_800, "{}", high.len());
    }
}
