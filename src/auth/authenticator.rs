//! The shared authenticator: one verifier and cache for every route.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::{HeaderName, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION};
use http::{Method, Request};

use super::extract::credential;
use super::layer::ApiKeyLayer;
use super::limit::FailedAttemptLimit;
use super::policy::RoutePolicy;
use super::rejection::{self, JsonRejection, Reason, Rejection, RejectionResponder};
use crate::cache::{CacheConfig, CacheConfigBuilder, CachedVerifier, Caller, LookupError};
use crate::clock::Clock;
use crate::key::{KeyFormat, PresentedKey};
use crate::scope::{Scope, ScopeError, ScopePolicy};
use crate::telemetry;
use crate::usage::UsageRecorder;
use crate::verifier::Verifier;

/// One verifier, one cache and the settings every route shares. Build it
/// once; each route then takes a cheap [`ApiKeyLayer`] with its own scope
/// policy ([`Authenticator::require_any`], [`Authenticator::unscoped_keys_only`],
/// [`Authenticator::any_valid_key`]).
///
/// Cheap to clone. Configure it before making layers: the `with_*` methods
/// that change cache settings build a new cache.
#[derive(Clone)]
pub struct Authenticator {
    shared: Arc<Shared>,
}

#[derive(Clone)]
pub(crate) struct Shared {
    verifier: Arc<dyn Verifier>,
    cache_config: CacheConfig,
    pub(crate) cache: CachedVerifier,
    format: KeyFormat,
    realm: Arc<str>,
    extra_header: Option<HeaderName>,
    cors_preflight: bool,
    responder: Arc<dyn RejectionResponder>,
    limit: Option<FailedAttemptLimit>,
    usage: Option<UsageRecorder>,
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

/// What the synchronous part of a request's check decided.
pub(crate) enum Begin {
    /// Let the request through unauthenticated (CORS preflight).
    PassThrough,
    /// Refuse it.
    Reject(Rejection),
    /// Look this key up; the request stands thus with the limiter.
    Lookup(PresentedKey, Attempt),
}

/// How a request stands with the failed-attempt limiter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attempt {
    /// Not limited: no limiter, or no client id for this request.
    Unlimited,
    /// From this client, nothing taken yet: a failure takes one of its
    /// attempts, or is a 429 if none is left.
    From(IpAddr),
    /// This client's attempt was taken before the verifier call this request
    /// started: a failure keeps it spent (that is the failure counted), a
    /// valid key or a verifier fault gives it back.
    Reserved(IpAddr),
}

/// The lookup of a key the cache could not answer, and how the request then
/// stands with the limiter.
pub(crate) struct Lookup {
    pub(crate) answer: BoxFuture<'static, (PresentedKey, Result<Caller, LookupError>)>,
    pub(crate) attempt: Attempt,
}

impl Authenticator {
    /// An authenticator over `verifier` (a store, a closure, any [`Verifier`])
    /// with the default cache settings, the verifier's key format (else the
    /// default), realm `api`, JSON rejections, no extra header, no CORS
    /// preflight bypass and no failed-attempt limit.
    pub fn new(verifier: impl Verifier) -> Self {
        let verifier: Arc<dyn Verifier> = Arc::new(verifier);
        let format = verifier.key_format().unwrap_or_default();
        let cache_config = CacheConfig::default();
        Self {
            shared: Arc::new(Shared {
                cache: CachedVerifier::from_arc(verifier.clone(), cache_config.clone()),
                verifier,
                cache_config,
                format,
                realm: Arc::from("api"),
                extra_header: None,
                cors_preflight: false,
                responder: Arc::new(JsonRejection),
                limit: None,
                usage: None,
            }),
        }
    }

    fn update(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        change(Arc::make_mut(&mut self.shared));
        self
    }

    /// Replaces every cache setting at once (and builds a new cache).
    pub fn with_cache_config(self, config: CacheConfig) -> Self {
        self.update(|s| {
            s.cache = CachedVerifier::from_arc(s.verifier.clone(), config.clone());
            s.cache_config = config;
        })
    }

    fn with_cache(self, change: impl FnOnce(CacheConfigBuilder) -> CacheConfigBuilder) -> Self {
        let config = change(self.shared.cache_config.to_builder()).build();
        self.with_cache_config(config)
    }

    /// See [`CacheConfigBuilder::positive_ttl`] (default 60 s).
    pub fn with_positive_ttl(self, ttl: Duration) -> Self {
        self.with_cache(|c| c.positive_ttl(ttl))
    }

    /// See [`CacheConfigBuilder::negative_ttl`] (default 5 s).
    pub fn with_negative_ttl(self, ttl: Duration) -> Self {
        self.with_cache(|c| c.negative_ttl(ttl))
    }

    /// See [`CacheConfigBuilder::max_keys`] (default 100,000).
    pub fn with_max_keys(self, max: u64) -> Self {
        self.with_cache(|c| c.max_keys(max))
    }

    /// See [`CacheConfigBuilder::verifier_timeout`] (default 5 s).
    pub fn with_verifier_timeout(self, timeout: Option<Duration>) -> Self {
        self.with_cache(|c| c.verifier_timeout(timeout))
    }

    /// See [`CacheConfigBuilder::clock`].
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.with_cache(|c| c.clock(clock))
    }

    /// Notes each admitted key's use on `recorder` (see [`crate::usage`]).
    pub fn with_usage_recorder(self, recorder: UsageRecorder) -> Self {
        self.update(|s| s.usage = Some(recorder))
    }

    /// The key format to accept (default: the verifier's, else prefix `tak`).
    pub fn with_key_format(self, format: KeyFormat) -> Self {
        self.update(|s| s.format = format)
    }

    /// The realm in `WWW-Authenticate` (default `api`).
    ///
    /// # Panics
    ///
    /// If `realm` is empty or has characters other than visible ASCII
    /// without `"` and `\`: a configuration error, found at start-up.
    pub fn with_realm(self, realm: &str) -> Self {
        let valid = !realm.is_empty()
            && realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        assert!(
            valid,
            "api key realm must be visible ASCII without quotes or backslashes"
        );
        self.update(|s| s.realm = Arc::from(realm))
    }

    /// Also accept the bare key in this header (for example `x-api-key`), for
    /// clients that cannot set `Authorization`. Off by default. A request
    /// carrying both headers is refused.
    ///
    /// # Panics
    ///
    /// If `name` is `Authorization`, which is always read.
    pub fn with_api_key_header(self, name: HeaderName) -> Self {
        assert!(
            name != AUTHORIZATION,
            "the extra api key header cannot be Authorization"
        );
        self.update(|s| s.extra_header = Some(name))
    }

    /// Let CORS preflight requests (`OPTIONS` with
    /// `Access-Control-Request-Method`) through unauthenticated, so browsers
    /// can ask before sending the key. Off by default; a plain `OPTIONS` is
    /// still authenticated. The preflight reaches the route with no `Caller`:
    /// answer it with a CORS layer outside this one (for example
    /// tower-http's `CorsLayer`), not in a handler that extracts `Caller`.
    pub fn with_cors_preflight(self, allow: bool) -> Self {
        self.update(|s| s.cors_preflight = allow)
    }

    /// Refuses clients that keep presenting bad keys (off by default); see
    /// [`crate::auth::limit`].
    pub fn with_failed_attempt_limit(self, limit: FailedAttemptLimit) -> Self {
        self.update(|s| s.limit = Some(limit))
    }

    /// Replaces the HTTP rejection bodies (default: [`JsonRejection`]).
    pub fn with_rejection_responder(self, responder: impl RejectionResponder) -> Self {
        let responder: Arc<dyn RejectionResponder> = Arc::new(responder);
        self.update(|s| s.responder = responder)
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

    pub(crate) fn begin<B>(&self, request: &Request<B>) -> Begin {
        let s = &*self.shared;
        if s.cors_preflight
            && request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Begin::PassThrough;
        }
        let attempt = match &s.limit {
            None => Attempt::Unlimited,
            Some(limit) => match limit.client(request.headers(), request.extensions()) {
                Some(client) => Attempt::From(client),
                None => Attempt::Unlimited,
            },
        };
        // Parsed before the limiter is asked: it is offline and cheap, and a
        // blocked client's cached valid key must still get through.
        let raw = match credential(request.headers(), s.extra_header.as_ref()) {
            Ok(raw) => raw,
            Err(reason) => return Begin::Reject(self.refused(attempt, Rejection::new(reason))),
        };
        match s.format.parse_bytes(raw) {
            Ok(key) => Begin::Lookup(key, attempt),
            Err(_) => Begin::Reject(self.refused(attempt, Rejection::new(Reason::Malformed))),
        }
    }

    /// Starts the lookup of a key the cache could not answer. A limited
    /// client takes one attempt first, unless the key's lookup is already
    /// under way (joining it costs no verifier call); with none left the
    /// request is refused here, without a verifier call.
    pub(crate) fn lookup(&self, key: PresentedKey, attempt: Attempt) -> Result<Lookup, Rejection> {
        let cache = self.shared.cache.clone();
        let (Attempt::From(client), Some(limit)) = (attempt, &self.shared.limit) else {
            return Ok(Lookup {
                answer: Box::pin(async move {
                    let answer = cache.lookup_miss(&key).await;
                    (key, answer)
                }),
                attempt,
            });
        };
        if let Some(flight) = cache.join_in_flight(&key) {
            return Ok(Lookup {
                answer: Box::pin(async move {
                    let answer = match flight.await {
                        Some(answer) => answer,
                        // The key was valid but invalidated meanwhile: a
                        // re-check of a valid key, not a guess, so it takes
                        // no attempt (a failure still counts in `complete`).
                        None => cache.lookup_miss(&key).await,
                    };
                    (key, answer)
                }),
                attempt,
            });
        }
        match limit.try_take(client) {
            Ok(()) => Ok(Lookup {
                answer: Box::pin(async move {
                    let answer = cache.lookup_miss(&key).await;
                    (key, answer)
                }),
                attempt: Attempt::Reserved(client),
            }),
            Err(retry_after) => Err(self.logged(too_many_attempts(retry_after))),
        }
    }

    /// The rejection a limited client gets for a credential refused before
    /// or without a verifier call of its own: a failed one takes an attempt,
    /// and any of them is a 429 once none is left.
    fn refused(&self, attempt: Attempt, rejection: Rejection) -> Rejection {
        let (Attempt::From(client), Some(limit)) = (attempt, &self.shared.limit) else {
            // Unlimited, or the failure is the attempt already reserved.
            return rejection;
        };
        let outcome = if rejection.reason.is_failed_attempt() {
            limit.try_take(client)
        } else {
            limit.blocked(client).map_or(Ok(()), Err)
        };
        match outcome {
            Ok(()) => rejection,
            Err(retry_after) => too_many_attempts(retry_after),
        }
    }

    /// Gives back an attempt reserved for a lookup that did not fail.
    fn give_back(&self, attempt: Attempt) {
        if let (Attempt::Reserved(client), Some(limit)) = (attempt, &self.shared.limit) {
            limit.give_back(client);
        }
    }

    /// The route's verdict on a looked-up key; on success the caller is in
    /// the request's extensions and the credential headers are sensitive.
    pub(crate) fn complete<B>(
        &self,
        policy: &dyn RoutePolicy,
        request: &mut Request<B>,
        key: &PresentedKey,
        looked_up: Result<Caller, LookupError>,
        attempt: Attempt,
    ) -> Result<(), Rejection> {
        let reason = match looked_up {
            Ok(caller) => {
                // usage: noted here: every valid key, whatever the route's scopes.
                if let Some(usage) = &self.shared.usage {
                    usage.note(&caller, self.shared.cache_config.clock().now());
                }
                // A valid key is no guess, whatever the route's scopes say.
                self.give_back(attempt);
                let scope_policy = policy.policy_for(request.method(), request.uri().path());
                match scope_policy.check(caller.scopes()) {
                    Ok(()) => {
                        tracing::trace!(key_id = %caller.key_id(), "api key accepted");
                        telemetry::outcome("accepted");
                        self.mark_sensitive(request);
                        request.extensions_mut().insert(caller);
                        return Ok(());
                    }
                    Err(crate::scope::ScopeDenied::ScopedKeyOnUnscopedRoute) => {
                        let mut rejection = Rejection::new(Reason::ScopedKeyOnUnscopedRoute);
                        rejection.key_id = Some(key.id());
                        return Err(self.logged(rejection));
                    }
                    Err(_) => {
                        let mut rejection = Rejection::new(Reason::InsufficientScope);
                        rejection.key_id = Some(key.id());
                        rejection.required = scope_policy.required().cloned();
                        return Err(self.logged(rejection));
                    }
                }
            }
            Err(LookupError::Unknown) => Reason::Unknown,
            Err(LookupError::Expired) => Reason::Expired,
            Err(LookupError::VerifierPanicked) => {
                // Not the client's fault.
                self.give_back(attempt);
                let mut rejection = Rejection::new(Reason::VerifierPanicked);
                rejection.key_id = Some(key.id());
                return Err(self.logged(rejection));
            }
            Err(LookupError::Unavailable(e)) => {
                self.give_back(attempt);
                tracing::warn!(key_id = %key.id(), error = %e, "api key verifier unavailable");
                let mut rejection = Rejection::new(Reason::Unavailable);
                rejection.key_id = Some(key.id());
                rejection.retry_after = Some(Duration::from_secs(1));
                telemetry::outcome(rejection.reason.as_str());
                return Err(rejection);
            }
        };
        let mut rejection = Rejection::new(reason);
        rejection.key_id = Some(key.id());
        Err(self.logged(self.refused(attempt, rejection)))
    }

    pub(crate) fn logged(&self, rejection: Rejection) -> Rejection {
        telemetry::outcome(rejection.reason.as_str());
        match rejection.key_id {
            Some(id) => {
                tracing::debug!(reason = %rejection.reason, key_id = %id, "api key rejected")
            }
            None => tracing::debug!(reason = %rejection.reason, "api key rejected"),
        }
        rejection
    }

    fn mark_sensitive<B>(&self, request: &mut Request<B>) {
        let headers = request.headers_mut();
        if let Some(value) = headers.get_mut(AUTHORIZATION) {
            value.set_sensitive(true);
        }
        if let Some(name) = &self.shared.extra_header {
            if let Some(value) = headers.get_mut(name) {
                value.set_sensitive(true);
            }
        }
    }

    /// The response for a rejection, HTTP or gRPC after the request's kind.
    pub(crate) fn respond(&self, rejection: Rejection, grpc: bool) -> http::Response<bytes::Bytes> {
        if grpc {
            rejection::grpc_response(rejection)
        } else {
            rejection::http_response(&*self.shared.responder, &self.shared.realm, rejection)
        }
    }
}

/// A 429 for a client with no attempt left. It carries no key id: the
/// response is the same whatever the credential was.
fn too_many_attempts(retry_after: Duration) -> Rejection {
    let mut rejection = Rejection::new(Reason::TooManyAttempts);
    rejection.retry_after = Some(retry_after);
    rejection
}
