//! The cache policy: a moka cache in front of any [`Verifier`].
//!
//! - **Positive entries** (valid keys), keyed by the SHA-256 of the whole key,
//!   live until the earlier of the positive TTL and the key's own expiry.
//!   Expiry is also checked against the [`Clock`](crate::clock::Clock) on every hit.
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
//! The cache's entry is the [`Caller`] itself: the record and the cache's
//! bookkeeping in one allocation (`caller`). The rest lives in `config` (the
//! settings), `inner` (the cache's state and everything done to it: hit
//! and miss paths, coalescing of concurrent misses, invalidation),
//! `expiry` (how long a valid key stays cached), `revocations` (epochs,
//! tombstones, account floors), `digest` (the hasher of the cache tables)
//! and `intern` (sharing of account ids and scope sets between records).
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::cache::{CacheConfig, CachedVerifier};
//! use tower_api_key::MemoryStore;
//! use tower_api_key::KeyStore;
//! use tower_api_key::store::NewKey;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new();
//! let cache = CachedVerifier::new(
//!     store.clone(),
//!     CacheConfig::builder().positive_ttl(Duration::from_secs(30)).build(),
//! );
//! let created = store.create(NewKey::new("sa-1")).await.unwrap();
//! let presented = store.format().parse(created.key.expose_secret()).unwrap();
//! let caller = cache.lookup(&presented).await.unwrap();
//! assert_eq!(caller.service_account_id(), "sa-1");
//!
//! store.revoke(created.record.key_id, None).await.unwrap();
//! assert!(cache.lookup(&presented).await.is_err());
//! # }
//! ```

pub(crate) mod caller;
mod config;
mod digest;
mod expiry;
mod inner;
mod intern;
mod revocations;

use std::fmt;
use std::sync::Arc;

use crate::invalidation::{Invalidation, InvalidationListener};
use crate::key::{Candidate, KeyId, PresentedKey};
use crate::telemetry;
use crate::verifier::{Verifier, VerifierError};

pub(crate) use caller::Caller;
pub use config::{CacheConfig, CacheConfigBuilder};
use inner::Inner;

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
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub enum Source {
    /// Served from the cache.
    Cache,
    /// Fetched from the verifier (by this request or one it waited for).
    Verifier,
}

/// A [`Verifier`] behind a moka cache; see the [module docs](self) for the
/// policy. Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct CachedVerifier {
    inner: Arc<Inner>,
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

impl CachedVerifier {
    /// Puts `verifier` behind a cache. If the verifier publishes
    /// invalidations (stores do), the cache subscribes to them.
    pub fn new(verifier: impl Verifier, config: CacheConfig) -> Self {
        Self::from_arc(Arc::new(verifier), config)
    }

    /// [`CachedVerifier::new`] for a verifier that is already shared.
    pub fn from_arc(verifier: Arc<dyn Verifier>, config: CacheConfig) -> Self {
        let inner = Arc::new(Inner::new(verifier, config));
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

    /// The hit path's counters, shared with the authenticator over this cache.
    pub(crate) fn hot_counters(&self) -> &telemetry::HotCounters {
        &self.inner.hot
    }

    /// Looks `key` up: from the cache, or through the verifier on a miss.
    /// Expiry is checked against the clock on every call.
    pub async fn lookup(&self, key: &PresentedKey) -> Result<Caller, LookupError> {
        match self.answer_cached(key) {
            Some(answer) => answer,
            None => Inner::fetch_coalesced(&self.inner, key).await,
        }
    }

    /// [`CachedVerifier::lookup`], also telling where the answer came from.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub async fn lookup_with_source(
        &self,
        key: &PresentedKey,
    ) -> Result<(Caller, Source), LookupError> {
        match self.answer_cached(key) {
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
        self.inner.join(key)
    }

    /// The answer the cache alone can give, synchronously: `Some` for a
    /// cached valid key (admitted, or refused as expired) and for a key
    /// remembered as unknown; `None` when the verifier must be asked.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn lookup_cached(&self, key: &PresentedKey) -> Option<Result<Caller, LookupError>> {
        self.answer_cached(key)
    }

    /// The middleware's cache hit, straight from the header's bytes: the
    /// key's shape and cache key, then the cache, as
    /// [`ApiKeyService`](crate::ApiKeyService) does it (`None` for a miss, and
    /// for bytes that are not a key of `format`). For benchmarks.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn lookup_cached_raw(
        &self,
        format: &crate::key::KeyFormat,
        raw: &[u8],
    ) -> Option<Result<Caller, LookupError>> {
        self.answer_candidate(&format.candidate(raw).ok()?)
    }

    fn answer_cached(&self, key: &PresentedKey) -> Option<Result<Caller, LookupError>> {
        self.inner.lookup_cached(key.digest(), key.id())
    }

    /// [`CachedVerifier::lookup_cached`] for a key whose alphabet and
    /// checksum are not checked yet: only a key that passed them was ever
    /// cached, so a hit is one (see [`KeyFormat::candidate`]).
    pub(crate) fn answer_candidate(
        &self,
        key: &Candidate<'_>,
    ) -> Option<Result<Caller, LookupError>> {
        self.inner.lookup_cached(key.digest(), key.unchecked_id())
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
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn cached_keys(&self) -> u64 {
        self.inner.positive.entry_count()
    }

    /// Runs moka's pending maintenance now (counts, evictions); for tests and
    /// memory measurements.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn run_pending_tasks(&self) {
        self.inner.positive.run_pending_tasks();
        self.inner.negative.run_pending_tasks();
    }
}
