//! The shared authenticator: one verifier and cache for every route.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Response};

use super::limit::FailedAttemptLimit;
use super::limits::Limiter;
use super::rejection::{self, Rejection, RejectionResponder};
use crate::cache::CachedVerifier;
use crate::key::KeyFormat;
use crate::usage::UsageRecorder;

/// One verifier, one cache and the settings every route shares. Build it
/// once, with [`Authenticator::builder`] (or [`Authenticator::new`] for the
/// defaults); each route then takes a cheap [`ApiKeyLayer`](crate::ApiKeyLayer) with its own
/// scope policy ([`Authenticator::require_any`],
/// [`Authenticator::unscoped_keys_only`], [`Authenticator::any_valid_key`]).
///
/// Immutable and cheap to clone: every clone, and every layer made from
/// one, shares the one cache.
#[derive(Clone)]
pub struct Authenticator {
    shared: Arc<Shared>,
}

/// The built settings and the cache. What they mean for a request is
/// decided in [`decide`](super::decide).
pub(crate) struct Shared {
    pub(crate) cache: CachedVerifier,
    pub(crate) format: KeyFormat,
    pub(crate) realm: Arc<str>,
    pub(crate) extra_header: Option<HeaderName>,
    pub(crate) cors_preflight: bool,
    pub(crate) responder: Arc<dyn RejectionResponder>,
    pub(crate) limit: Option<FailedAttemptLimit>,
    pub(crate) usage: Option<UsageRecorder>,
    pub(crate) limiter: Limiter,
    /// The scopes of every management router built on this authenticator:
    /// none of them is grantable through any of those routers unless named.
    #[cfg(feature = "management")]
    pub(crate) management_scopes: std::sync::RwLock<Vec<crate::scope::Scope>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("Authenticator")
            .field("cache", &s.cache)
            .field("format", &s.format)
            .field("realm", &s.realm)
            .field("extra_header", &s.extra_header)
            .field("cors_preflight", &s.cors_preflight)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub(super) fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Records `scopes` as management scopes of this authenticator (every
    /// management router built on it calls this).
    #[cfg(feature = "management")]
    pub(crate) fn register_management_scopes(&self, scopes: &crate::scope::ScopeSet) {
        let mut known = self
            .shared
            .management_scopes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.extend(scopes.iter().cloned());
        known.sort_unstable();
        known.dedup();
    }

    /// The management scopes of every router built on this authenticator.
    #[cfg(feature = "management")]
    pub(crate) fn management_scopes(&self) -> Vec<crate::scope::Scope> {
        self.shared
            .management_scopes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The cache, shared by every layer made from this authenticator: call
    /// [`CachedVerifier::invalidate_key_of`] (or
    /// [`CachedVerifier::invalidate`]) on it after revoking a key through a
    /// verifier that does not publish invalidations.
    pub fn cache(&self) -> &CachedVerifier {
        &self.shared.cache
    }

    /// Runs one round of the shared rate-limit sync now, as the background
    /// task does every interval: `false` without a shared mode or when the
    /// sync failed. A test hook: tests drive the sync step by step.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub async fn sync_rate_limits(&self) -> bool {
        self.shared.limiter.sync_now().await
    }

    /// The accepted key format.
    pub fn key_format(&self) -> KeyFormat {
        self.shared.format
    }
}

impl Shared {
    /// The response to a refused request, logged and counted once: every
    /// rejection of the middleware goes through here.
    pub(crate) fn respond(&self, rejection: Rejection, request: &HeaderMap) -> Response<Bytes> {
        rejection::respond(rejection, request, &*self.responder, &self.realm)
    }
}
