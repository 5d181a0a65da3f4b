//! The shared authenticator: one verifier and cache for every route.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Response};

use super::attempts::FailedAttemptLimit;
use super::builder::AuthenticatorBuilder;
use super::client_ip::ClientIpResolver;
use super::layer::ApiKeyLayer;
use super::meter::Meter;
use super::rejection::{self, Rejection, RejectionResponder};
use super::rules::RouteRules;
use crate::cache::CachedVerifier;
use crate::key::KeyFormat;
use crate::ledger::CreditLedger;
use crate::scope::{Scope, ScopeError, ScopePolicy};
use crate::usage::UsageRecorder;
use crate::verifier::Verifier;

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
    state: Arc<AuthState>,
}

/// The built settings and the cache. What they mean for a request is
/// decided by the [`Gate`](super::gate::Gate) of each route.
pub(crate) struct AuthState {
    pub(crate) cache: CachedVerifier,
    pub(crate) format: KeyFormat,
    pub(crate) realm: Arc<str>,
    pub(crate) extra_header: Option<HeaderName>,
    pub(crate) cors_preflight: bool,
    pub(crate) responder: Arc<dyn RejectionResponder>,
    pub(crate) attempts: Option<FailedAttemptLimit>,
    /// The one answer to "which client sent this": for the limiter, key
    /// allowlists and the logs.
    pub(crate) client_ip: ClientIpResolver,
    pub(crate) usage: Option<UsageRecorder>,
    pub(crate) meter: Meter,
    /// The scopes of every management router built on this authenticator:
    /// none of them is grantable through any of those routers unless named.
    #[cfg(feature = "management")]
    pub(crate) management_scopes: std::sync::RwLock<Vec<crate::scope::Scope>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.state;
        f.debug_struct("Authenticator")
            .field("cache", &s.cache)
            .field("format", &s.format)
            .field("realm", &s.realm)
            .field("extra_header", &s.extra_header)
            .field("cors_preflight", &s.cors_preflight)
            .field("client_ip", &s.client_ip)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `store` (any [`KeyStore`](crate::KeyStore), or
    /// anything that is both a [`Verifier`] and a [`CreditLedger`]) with the
    /// defaults: [`Authenticator::builder`]`(store).build()`.
    pub fn new<S: Verifier + CreditLedger>(store: S) -> Self {
        Self::builder(store).build()
    }

    /// The settings of an authenticator over `store`, which verifies keys
    /// and counts their credits, to [build] once. The defaults: the default
    /// cache settings, the store's key format (else the default), realm
    /// `api`, JSON rejections, no extra header, no CORS preflight bypass and
    /// no failed-attempt limit.
    ///
    /// [build]: AuthenticatorBuilder::build
    pub fn builder<S: Verifier + CreditLedger>(store: S) -> AuthenticatorBuilder {
        let store = Arc::new(store);
        AuthenticatorBuilder::new(store.clone()).credits_arc(store)
    }

    /// The settings of an authenticator over `verifier` alone (a closure,
    /// any [`Verifier`]), with the defaults of [`Authenticator::builder`]
    /// and no [`CreditLedger`]: a key whose record carries credits is
    /// refused ([see](AuthenticatorBuilder#credits)) unless
    /// [`credits`](AuthenticatorBuilder::credits) gives one.
    pub fn verifier_builder(verifier: impl Verifier) -> AuthenticatorBuilder {
        AuthenticatorBuilder::new(Arc::new(verifier))
    }

    pub(super) fn from_state(state: AuthState) -> Self {
        Self {
            state: Arc::new(state),
        }
    }

    pub(super) fn state(&self) -> &AuthState {
        &self.state
    }

    /// Records `scopes` as management scopes of this authenticator (every
    /// management router built on it calls this).
    #[cfg(feature = "management")]
    pub(crate) fn register_management_scopes(&self, scopes: &crate::scope::ScopeSet) {
        let mut known = self
            .state
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
        self.state
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
        &self.state.cache
    }

    /// Runs one round of the shared rate-limit sync now, as the background
    /// task does every interval: `false` without a shared mode or when the
    /// sync failed. A test hook: tests drive the sync step by step.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub async fn sync_rate_limits(&self) -> bool {
        self.state.meter.sync_now().await
    }

    /// The accepted key format.
    pub fn key_format(&self) -> KeyFormat {
        self.state.format
    }

    // The layers of this authenticator, one per route policy.

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
        self.layer(ScopePolicy::unscoped_keys_only())
    }

    /// A layer that admits every valid key, scoped or not (an explicit
    /// opt-in, for routes such as `/whoami`).
    pub fn any_valid_key(&self) -> ApiKeyLayer {
        self.layer(ScopePolicy::any_valid_key())
    }

    /// A layer with any [`RouteRules`]: one [`ScopePolicy`], or a table that
    /// picks one per request path (for example per gRPC method).
    pub fn layer(&self, rules: impl RouteRules) -> ApiKeyLayer {
        ApiKeyLayer::new(self.clone(), Arc::new(rules))
    }
}

impl AuthState {
    /// The response to a refused request, logged and counted once: every
    /// rejection of the middleware goes through here.
    pub(crate) fn respond(&self, rejection: Rejection, request: &HeaderMap) -> Response<Bytes> {
        rejection::respond(rejection, request, &*self.responder, &self.realm)
    }
}
