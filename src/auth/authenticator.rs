//! The shared authenticator: one verifier and cache for every route.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Response};

use super::builder::AuthenticatorBuilder;
use super::layer::ApiKeyLayer;
use super::limit::FailedAttemptLimit;
use super::policy::RoutePolicy;
use super::rejection::{self, Rejection, RejectionResponder};
use crate::cache::CachedVerifier;
use crate::key::KeyFormat;
use crate::scope::{Scope, ScopeError, ScopePolicy};
use crate::verifier::Verifier;

/// One verifier, one cache and the settings every route shares. Build it
/// once, with [`Authenticator::builder`] (or [`Authenticator::new`] for the
/// defaults); each route then takes a cheap [`ApiKeyLayer`] with its own
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
    /// An authenticator over `verifier` (a store, a closure, any [`Verifier`])
    /// with the defaults: [`Authenticator::builder`]`(verifier).build()`.
    pub fn new(verifier: impl Verifier) -> Self {
        Self::builder(verifier).build()
    }

    /// The settings of an authenticator over `verifier`, to [build] once.
    /// The defaults: the default cache settings, the verifier's key format
    /// (else the default), realm `api`, JSON rejections, no extra header, no
    /// CORS preflight bypass and no failed-attempt limit.
    ///
    /// [build]: AuthenticatorBuilder::build
    pub fn builder(verifier: impl Verifier) -> AuthenticatorBuilder {
        AuthenticatorBuilder::new(Arc::new(verifier))
    }

    pub(super) fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The cache, shared by every layer made from this authenticator: call
    /// [`CachedVerifier::invalidate_key_of`] (or
    /// [`CachedVerifier::invalidate`]) on it after revoking a key through a
    /// verifier that does not publish invalidations.
    pub fn cache(&self) -> &CachedVerifier {
        &self.shared.cache
    }

    /// The accepted key format.
    pub fn key_format(&self) -> KeyFormat {
        self.shared.format
    }

    /// A layer for a route that enforces scopes: keys holding any of `scopes`
    /// pass; other scoped keys and unscoped keys get 403.
    ///
    /// # Panics
    ///
    /// If a scope name is invalid or `scopes` is empty; see
    /// [`Authenticator::try_require_any`] for scopes read from configuration.
    pub fn require_any<I, S>(&self, scopes: I) -> ApiKeyLayer
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        match self.try_require_any(scopes) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid route scopes: {e}"),
        }
    }

    /// [`Authenticator::require_any`], returning invalid scopes as an error.
    pub fn try_require_any<I, S>(&self, scopes: I) -> Result<ApiKeyLayer, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        Ok(self.layer(ScopePolicy::require_any(scopes)?))
    }

    /// A layer for a route that declares no scopes: unscoped keys pass,
    /// scoped keys get 403 (a scoped key is only for its scopes).
    pub fn unscoped_keys_only(&self) -> ApiKeyLayer {
        self.layer(ScopePolicy::unscoped_only())
    }

    /// A layer that admits every valid key, scoped or not (an explicit
    /// opt-in, for routes such as `/whoami`).
    pub fn any_valid_key(&self) -> ApiKeyLayer {
        self.layer(ScopePolicy::any_valid_key())
    }

    /// A layer with any [`RoutePolicy`]: one [`ScopePolicy`], or a table that
    /// picks one per request path (for example per gRPC method).
    pub fn layer(&self, policy: impl RoutePolicy) -> ApiKeyLayer {
        ApiKeyLayer::new(self.clone(), Arc::new(policy))
    }
}

impl Shared {
    /// The response to a refused request, logged and counted once: every
    /// rejection of the middleware goes through here.
    pub(crate) fn respond(&self, rejection: Rejection, request: &HeaderMap) -> Response<Bytes> {
        rejection::respond(rejection, request, &*self.responder, &self.realm)
    }
}
