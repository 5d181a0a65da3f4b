//! The pluggable verifier: given a well-formed key, is it a valid key, an

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::invalidation::Invalidations;
use crate::key::{KeyFormat, KeyId, PresentedKey};
use crate::limits::CreditLease;
use crate::record::KeyRecord;

/// The pluggable verifier: given a well-formed key, is it a valid key, an
/// unknown one, or is the backend unable to say?
///
/// Implement [`Verifier`] on a type, or pass a closure:
///
/// ```
/// use tower_api_key::PresentedKey;
/// use tower_api_key::KeyRecord;
/// use tower_api_key::{Verifier, VerifierError};
///
/// // A verifier that knows one key by its id (a real one would compare a hash).
/// let known = tower_api_key::KeyFormat::default().generate().unwrap();
/// let known_id = known.id();
/// let verifier = move |key: PresentedKey| async move {
///     if key.id() == known_id {
///         Ok(Some(KeyRecord::new(key.id(), "sa-1")))
///     } else {
///         Ok::<_, VerifierError>(None)
///     }
/// };
/// fn assert_verifier(_: &impl Verifier) {}
/// assert_verifier(&verifier);
/// ```
///
/// Looks a presented key up.
///
/// Return `Ok(Some(record))` for a valid key (the caller checks expiry and
/// scopes), `Ok(None)` for a key that is unknown, revoked, or whose secret does
/// not match, and `Err` only when the backend could not answer: the caller
/// then answers 503 and caches nothing. Never put key material in an error.
#[async_trait]
pub trait Verifier: Send + Sync + 'static {
    /// Looks `key` up.
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError>;

    /// Where this verifier announces revocations and changes, if it does.
    ///
    /// A cache built over the verifier subscribes to it, so a revoke takes
    /// effect at once. Stores return `Some`; plain verifiers keep the default.
    /// A verifier that wraps a store must forward this, or revocations reach
    /// the cache only when the positive TTL runs out.
    fn invalidations(&self) -> Option<&Invalidations> {
        None
    }

    /// The format of the keys this verifier knows, if it issues them (stores
    /// do). An [`Authenticator`](crate::Authenticator) built over it accepts
    /// that format, else the default one: a verifier of keys with another
    /// prefix says so here.
    fn key_format(&self) -> Option<KeyFormat> {
        None
    }

    /// Leases up to `want` of key `id`'s credits at `now`, atomically: the
    /// store first applies a refill that fell due, then grants
    /// [`lease_grant`](crate::limits::lease_grant) of what remains and takes
    /// it off. `None` when the key does not exist or has no credits.
    ///
    /// Verifiers whose records carry [`Credits`](crate::limits::Credits)
    /// must implement it; the default refuses, so such keys are refused
    /// (429) rather than admitted without a count.
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        let _ = (id, want, now);
        Err(VerifierError::backend(
            "this verifier does not lease credits",
        ))
    }

    /// Gives back `amount` unspent credits of a lease of `generation`; the
    /// store adds them back only if the key's credits are still of that
    /// generation (no refill and no new setting since).
    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError> {
        let _ = (id, generation, amount);
        Ok(())
    }
}

#[async_trait]
impl<F, Fut> Verifier for F
where
    F: Fn(PresentedKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<KeyRecord>, VerifierError>> + Send + 'static,
{
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        (self)(key.clone()).await
    }
}

/// The verifier's backend could not answer. Never cached; the request gets 503.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifierError {
    /// The backend failed (database down, remote error, ...).
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The verifier did not answer within the configured timeout.
    Timeout(Duration),
}

impl VerifierError {
    /// Wraps a backend error.
    pub fn backend(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Backend(err.into())
    }
}

impl fmt::Display for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend(e) => write!(f, "api key verifier backend failed: {e}"),
            Self::Timeout(after) => write!(f, "api key verifier timed out after {after:?}"),
        }
    }
}

impl std::error::Error for VerifierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}
