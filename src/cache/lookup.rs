//! Answers from the cache (the synchronous hit path) and from the verifier
//! (one call, on a miss).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use moka::Expiry;

use super::{CacheSlot, Caller, Inner, LookupError};
use crate::clock::Clock;
use crate::key::{KeyDigest, KeyId, PresentedKey};
use crate::telemetry;
use crate::verifier::VerifierError;

/// Why a verifier call produced no entry; shared by all waiters.
#[derive(Clone)]
pub(super) enum Miss {
    Unknown,
    Failed(Arc<VerifierError>),
    Panicked,
}

/// Positive entries expire at the earlier of the TTL and the key's expiry;
/// a key that has already expired is kept for the negative TTL, refused on
/// every hit, so using it does not reach the verifier each time.
pub(super) struct PositiveExpiry {
    pub(super) ttl: Duration,
    pub(super) expired_ttl: Duration,
    pub(super) clock: Arc<dyn Clock>,
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

impl Inner {
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

    /// One verifier call for `key`, as an entry to cache or the miss all
    /// its waiters share.
    pub(super) async fn fetch(&self, key: &PresentedKey) -> Result<Caller, Miss> {
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
    pub(super) fn admit(&self, caller: Caller) -> Result<Caller, LookupError> {
        // The clock is read only when something needs it: most keys never
        // expire, and reading it is a good part of a hit's cost.
        if caller.expires_at().is_some() && caller.record().is_expired_at(self.config.clock.now()) {
            return Err(LookupError::Expired);
        }
        Ok(caller)
    }
}
