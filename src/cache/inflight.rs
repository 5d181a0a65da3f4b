//! Coalescing of concurrent misses: one verifier call per key, in a task of
//! its own, awaited by every request that misses meanwhile.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;

use super::lookup::Miss;
use super::{Caller, Inner, LookupError};
use crate::key::{KeyDigest, PresentedKey};
use crate::telemetry;
use crate::verifier::VerifierError;

/// How often one lookup re-fetches a key that was invalidated under it before
/// giving up (as a backend error, uncached).
const MAX_REFETCHES: usize = 3;

/// One verifier call that every concurrent miss for the same key awaits.
pub(super) type Flight = Shared<BoxFuture<'static, Result<Caller, Miss>>>;

impl Inner {
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
                Ok(entry) if inner.revocations.is_current(&entry) => Some(inner.admit(entry)),
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
