//! The pluggable verifier: the [`Verifier`] trait a key lookup implements,
//! and its error.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::invalidation::Invalidations;
use crate::key::{KeyFormat, PresentedKey};
use crate::record::KeyRecord;

/// Looks presented keys up: given a well-formed key, says whether it is a
/// valid key, an unknown one, or whether the backend is unable to say.
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
/// Return `Ok(Some(record))` for a valid key (the caller checks expiry and
/// scopes), `Ok(None)` for a key that is unknown, revoked, or whose secret does
/// not match, and `Err` only when the backend could not answer: the caller
/// then answers 503 and caches nothing. Never put key material in an error.
/// Credits are not a verifier's job: a [`CreditLedger`](crate::CreditLedger)
/// counts them.
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
