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
/// Tombstones past this count are replaced by one cache-wide flush.
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
    /// after this returns.
    pub fn invalidate(&self, key_id: KeyId) {
        self.inner.invalidate(&Invalidation::Key(key_id));
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
            Invalidation::Key(id) => self.revocations.invalidate(*id),
            Invalidation::All => {
                self.revocations.invalidate_all();
                // Frees memory; correctness already comes from the epoch floor.
                self.positive.invalidate_all();
                self.negative.invalidate_all();
            }
        }
    }
}

/// Invalidation bookkeeping: a global epoch, bumped by every invalidation, and
/// a tombstone per recently invalidated key id. An entry whose epoch is the
/// current one needs no further check, so a hit costs two atomic loads.
struct Revocations {
    epoch: AtomicU64,
    /// Entries fetched before this epoch are stale (set by `invalidate_all`).
    floor: AtomicU64,
    tombstones: Mutex<Tombstones>,
    retain: Duration,
}

#[derive(Default)]
struct Tombstones {
    by_id: HashMap<KeyId, u64>,
    by_age: VecDeque<(Instant, KeyId, u64)>,
}

impl Revocations {
    fn new(retain: Duration) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            tombstones: Mutex::new(Tombstones::default()),
            retain,
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
        let revoked_at = self.lock().by_id.get(&entry.key_id()).copied();
        if revoked_at.is_some_and(|at| at > checked) {
            return false;
        }
        // Checked against every invalidation up to `now`; skip them next time.
        epoch.fetch_max(now, Ordering::AcqRel);
        true
    }

    fn invalidate(&self, id: KeyId) {
        let mut tombstones = self.lock();
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        let now = Instant::now();
        while let Some(&(at, old_id, old_epoch)) = tombstones.by_age.front() {
            if now.duration_since(at) < self.retain {
                break;
            }
            tombstones.by_age.pop_front();
            if tombstones.by_id.get(&old_id) == Some(&old_epoch) {
                tombstones.by_id.remove(&old_id);
            }
            // An entry fetched before this tombstone (say by a verifier call
            // that hung past `retain`) must still never be admitted: without
            // the tombstone, the floor refuses it (one re-fetch for entries
            // not checked since, which is cheap).
            self.floor.fetch_max(old_epoch, Ordering::AcqRel);
        }
        if tombstones.by_id.len() >= MAX_TOMBSTONES {
            // Too many to track one by one: treat everything as invalidated.
            self.floor.store(epoch, Ordering::Release);
            *tombstones = Tombstones::default();
        } else {
            tombstones.by_id.insert(id, epoch);
            tombstones.by_age.push_back((now, id, epoch));
        }
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
