//! The one place a request is decided: [`Gate::start`] on its arrival and
//! [`Gate::resume`] when what it waited for comes back.
//! [`ApiKeyService`](super::ApiKeyService) and its
//! [`ResponseFuture`](super::ResponseFuture) only carry out the [`Step`]s
//! these return.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::ACCESS_CONTROL_REQUEST_METHOD;
use http::{Method, Request};

use super::attempts::{NoAttempt, Queue, Reservation};
use super::authenticator::{AuthState, Authenticator};
use super::extract::credential;
use super::meter::{CreditSpend, Metered};
use super::rate_headers::RateHeaders;
use super::rejection::{Reason, Rejection};
use super::rules::RouteRules;
use super::LOG_TARGET;
use crate::cache::Caller;
use crate::cache::{CachedVerifier, LookupError};
use crate::key::{Candidate, KeyId, PresentedKey};
use crate::limits::RouteLimits;
use crate::scope::ScopeDenied;

/// One route's gate: the shared authenticator, the route's rules (scope
/// policy, limits) and its layer's limits. Behind one `Arc` in the route's
/// service, so that the clone axum makes of a route's service for every
/// request costs one reference count.
///
/// A request passes the steps of the [module docs](super) in order; the
/// gate decides each and makes these side effects on the way, nothing else:
/// - **failed-attempt limiter**: an attempt taken for a failed credential,
///   reserved before a lookup, then spent (the key failed) or given back
///   (valid, or a verifier fault);
/// - **usage**: every valid key's use is noted on the usage recorder,
///   whatever the route then decides;
/// - **rate limits and credits**: an in-scope key's rate buckets (and its
///   account's) are charged, its credits spent (leased from the store when
///   its batch is empty), and the hit-path counters counted;
/// - **logs**: a warning when the verifier is unavailable, when a wait for
///   an attempt outlasts the verifier timeout, or when the rate-limit table
///   is full.
///
/// It does not touch the request, build a response, log or count a
/// rejection: the driver admits what passes (`admit` in
/// [`future`](super::future)) and answers what is refused
/// ([`AuthState::respond`]).
pub(crate) struct Gate {
    pub(crate) auth: Authenticator,
    pub(crate) rules: Arc<dyn RouteRules>,
    pub(crate) limits: Option<RouteLimits>,
}

/// What to do with a request next.
pub(crate) enum Step {
    /// Call the inner service.
    Pass(Pass),
    /// Refuse it with this.
    Reject(Rejection),
    /// Wait for the lookup of a key the cache could not answer, then
    /// [resume](Gate::resume).
    Lookup(Wait),
    /// Wait for an admitted key's credits to be leased and spent, then
    /// [resume](Gate::resume).
    Spend(Wait),
}

/// How a request passes.
pub(crate) enum Pass {
    /// A CORS preflight, unauthenticated: it reaches the route with no
    /// [`Caller`].
    Preflight,
    /// Authenticated, in scope and within limits: this caller, and these
    /// rate-limit headers on the response.
    Admit(Caller, Option<Box<RateHeaders>>),
}

/// What a request waits for: it ends in what [`Gate::resume`] takes.
pub(crate) type Wait = BoxFuture<'static, Woken>;

/// What a [`Wait`] brings back.
pub(crate) enum Woken {
    /// The key the cache could not answer, looked up; or a refusal of the
    /// failed-attempt limiter made while waiting for an attempt.
    Looked(Result<Looked, Rejection>),
    /// The admitted caller's credits: spent (with the rate-limit headers),
    /// or refused.
    Spent(Caller, Result<Option<Box<RateHeaders>>, Rejection>),
}

/// A key looked up, and how the request then stands with the limiter.
pub(crate) struct Looked {
    key: PresentedKey,
    answer: Result<Caller, LookupError>,
    attempt: Attempt,
}

impl Gate {
    /// The decision on a request as it arrives (steps 2 to 6 of the
    /// [module docs](super), and the limits): a key the cache answers is
    /// decided here, synchronously, with no future; any other waits.
    #[inline(always)]
    pub(crate) fn start<B>(&self, request: &Request<B>) -> Step {
        let s = self.auth.state();
        let (key, attempt) = match precheck(s, request) {
            Precheck::Preflight => return Step::Pass(Pass::Preflight),
            Precheck::Reject(rejection) => return Step::Reject(rejection),
            Precheck::Lookup(key, attempt) => (key, attempt),
        };
        if let Some(answer) = s.cache.answer_candidate(&key) {
            // A hit's id is the cached entry's, a checked one.
            return self.decide(request, key.unchecked_id(), answer, attempt);
        }
        match lookup(s, key, attempt) {
            Ok(wait) => Step::Lookup(wait),
            Err(rejection) => Step::Reject(rejection),
        }
    }

    /// The decision on a request once what it waited for came back.
    pub(crate) fn resume<B>(&self, woken: Woken, request: &Request<B>) -> Step {
        match woken {
            Woken::Looked(Ok(Looked {
                key,
                answer,
                attempt,
            })) => self.decide(request, key.id(), answer, attempt),
            Woken::Spent(caller, Ok(headers)) => Step::Pass(Pass::Admit(caller, headers)),
            Woken::Looked(Err(rejection)) | Woken::Spent(_, Err(rejection)) => {
                Step::Reject(rejection)
            }
        }
    }

    /// The route's verdict on a looked-up key, then its limits: the route's
    /// limits come from its rules (a gRPC method table), else from its layer. Inlined, so
    /// that on a hit the step folds into the service's `call`.
    #[inline(always)]
    fn decide<B>(
        &self,
        request: &Request<B>,
        key_id: KeyId,
        answer: Result<Caller, LookupError>,
        attempt: Attempt,
    ) -> Step {
        let s = self.auth.state();
        let rules = &*self.rules;
        let caller = match verdict(s, rules, request, key_id, answer, attempt) {
            Ok(caller) => caller,
            Err(rejection) => return Step::Reject(rejection),
        };
        let route = rules
            .route_limits_for(request.method(), request.uri().path())
            .or(self.limits.as_ref());
        let now = || s.cache.config().clock().now();
        match s.meter.charge(&caller, route, now, s.cache.hot_counters()) {
            Metered::Admit(headers) => Step::Pass(Pass::Admit(caller, headers)),
            Metered::Refuse(rejection) => Step::Reject(rejection),
            Metered::Spend(spend) => Step::Spend(spend_credits(caller, spend)),
        }
    }
}

/// The wait for an admitted caller's credits.
fn spend_credits(caller: Caller, spend: CreditSpend) -> Wait {
    Box::pin(async move {
        let spent = spend.run().await;
        Woken::Spent(caller, spent)
    })
}

/// What the synchronous pre-check of a request decided.
enum Precheck<'r> {
    /// Let the request through unauthenticated (CORS preflight).
    Preflight,
    /// Refuse it.
    Reject(Rejection),
    /// Ask the cache about this key; the request stands thus with the
    /// limiter. Its alphabet and checksum are checked only on a miss
    /// ([`lookup`]): whatever the cache holds passed them.
    Lookup(Candidate<'r>, Attempt),
}

/// How a request stands with the failed-attempt limiter.
#[derive(Debug)]
enum Attempt {
    /// Not limited: no limiter, or no client id for this request.
    Unlimited,
    /// From this client, nothing taken yet: a failure takes one of its
    /// attempts, or is a 429 if none is left.
    From(IpAddr),
    /// This client's attempt is held for the verifier call this request
    /// started: a failure spends it (that is the failure counted), a valid
    /// key or a verifier fault gives it back.
    Reserved(Reservation),
}

/// Steps 2 to 4 of the [module docs](super): preflight, exactly one
/// credential, offline parse, with the limiter's say on each refusal.
#[inline]
fn precheck<'r, B>(s: &AuthState, request: &'r Request<B>) -> Precheck<'r> {
    if s.cors_preflight
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    {
        return Precheck::Preflight;
    }
    let attempt = match &s.attempts {
        None => Attempt::Unlimited,
        Some(limit) => {
            match limit.client(s.client_ip.resolve(request.headers(), request.extensions())) {
                Some(client) => Attempt::From(client),
                None => Attempt::Unlimited,
            }
        }
    };
    // Parsed before the limiter is asked: it is offline and cheap, and a
    // blocked client's cached valid key must still get through.
    let raw = match credential(request.headers(), s.extra_header.as_ref()) {
        Ok(raw) => raw,
        Err(reason) => return Precheck::Reject(refused(s, attempt, Rejection::new(reason))),
    };
    match s.format.candidate(raw) {
        Ok(key) => Precheck::Lookup(key, attempt),
        Err(_) => Precheck::Reject(malformed(s, attempt)),
    }
}

fn malformed(s: &AuthState, attempt: Attempt) -> Rejection {
    refused(s, attempt, Rejection::new(Reason::Malformed))
}

/// Starts the lookup of a key the cache could not answer, once the rest of
/// its offline checks (alphabet, checksum) pass. A limited client reserves
/// one attempt first, unless the key's lookup is already under way (joining
/// it costs no verifier call). With none left the request is refused here,
/// without a verifier call; if lookups in flight hold every attempt left,
/// it waits for one of them (see [`wait_for_attempt`]).
fn lookup(s: &AuthState, key: Candidate<'_>, attempt: Attempt) -> Result<Wait, Rejection> {
    let Ok(key) = key.check(&s.format) else {
        return Err(malformed(s, attempt));
    };
    let cache = s.cache.clone();
    let (client, limit) = match (&attempt, &s.attempts) {
        (Attempt::From(client), Some(limit)) => (*client, limit),
        _ => return Ok(miss(cache, key, attempt)),
    };
    if let Some(flight) = cache.join_in_flight(&key) {
        return Ok(Box::pin(async move {
            let answer = match flight.await {
                Some(answer) => answer,
                // The key was valid but invalidated meanwhile: a
                // re-check of a valid key, not a guess, so it takes
                // no attempt (a failure still counts in `verdict`).
                None => cache.lookup_miss(&key).await,
            };
            Woken::Looked(Ok(Looked {
                key,
                answer,
                attempt,
            }))
        }));
    }
    match limit.reserve(client) {
        Ok(reservation) => Ok(miss(cache, key, Attempt::Reserved(reservation))),
        Err(NoAttempt::Blocked(retry_after)) => Err(Rejection::too_many_attempts(retry_after)),
        Err(NoAttempt::Busy(queue)) => {
            let timeout = cache.config().verifier_timeout();
            Ok(Box::pin(async move {
                Woken::Looked(wait_for_attempt(cache, key, queue, timeout).await)
            }))
        }
    }
}

/// The verifier's answer for `key`, the request standing thus with the limiter.
fn miss(cache: CachedVerifier, key: PresentedKey, attempt: Attempt) -> Wait {
    Box::pin(async move {
        let answer = cache.lookup_miss(&key).await;
        Woken::Looked(Ok(Looked {
            key,
            answer,
            attempt,
        }))
    })
}

/// The lookup of a key whose client has every attempt left held by lookups
/// in flight: it waits for one of them to come back (a valid key, a
/// verifier fault) and then looks its key up, or gets the 429 if they fail
/// and leave none. The wait is bounded by the verifier timeout, counted
/// from when it starts: past it the answer is what a verifier timeout gets,
/// a 503, or the 429 if the client has no attempt left by then.
async fn wait_for_attempt(
    cache: CachedVerifier,
    key: PresentedKey,
    queue: Queue,
    timeout: Option<Duration>,
) -> Result<Looked, Rejection> {
    let reserved = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, queue.reserve()).await,
        None => Ok(queue.reserve().await),
    };
    match reserved {
        Ok(Ok(reservation)) => {
            let answer = cache.lookup_miss(&key).await;
            Ok(Looked {
                key,
                answer,
                attempt: Attempt::Reserved(reservation),
            })
        }
        Ok(Err(retry_after)) => Err(Rejection::too_many_attempts(retry_after)),
        Err(_elapsed) => {
            if let Some(retry_after) = queue.blocked() {
                return Err(Rejection::too_many_attempts(retry_after));
            }
            let key_id = key.id();
            tracing::warn!(
                target: LOG_TARGET,
                %key_id,
                "api key not looked up: lookups in flight from its client held every \
                 failed-attempt limit slot it has left for longer than the verifier timeout"
            );
            Err(Rejection::unavailable(key_id))
        }
    }
}

/// The route's verdict on a looked-up key: the caller to admit, or why not.
fn verdict<B>(
    s: &AuthState,
    rules: &dyn RouteRules,
    request: &Request<B>,
    key_id: KeyId,
    looked_up: Result<Caller, LookupError>,
    attempt: Attempt,
) -> Result<Caller, Rejection> {
    let reason = match looked_up {
        Ok(caller) => {
            // Usage is noted for every valid key, whatever the route's scopes.
            if let Some(usage) = &s.usage {
                usage.note(&caller, s.cache.config().clock().now());
            }
            // A valid key is no guess, whatever the route's scopes say.
            give_back(attempt);
            // A secret quarantined after a leak report is refused on every
            // route, before its scopes are looked at.
            if caller.record().quarantined {
                return Err(Rejection::of_key(Reason::KeyCompromised, key_id));
            }
            // The client address is resolved for keys with networks only: a
            // key without costs nothing here. No address, no admission.
            if let Some(networks) = &caller.record().allowed_networks {
                let client = s.client_ip.resolve(request.headers(), request.extensions());
                if !client.is_some_and(|ip| networks.contains(ip)) {
                    return Err(Rejection::network_not_allowed(key_id, client));
                }
            }
            let scope_policy = rules.policy_for(request.method(), request.uri().path());
            return match scope_policy.check(caller.scopes()) {
                // Counted as accepted once the limits admit it too (`admit`).
                Ok(()) => Ok(caller),
                Err(ScopeDenied::ScopedKeyOnUnscopedRoute) => {
                    Err(Rejection::of_key(Reason::ScopedKeyOnUnscopedRoute, key_id))
                }
                Err(_) => Err(Rejection::insufficient_scope(
                    key_id,
                    scope_policy.required().cloned(),
                )),
            };
        }
        Err(LookupError::Unknown) => Reason::Unknown,
        Err(LookupError::Expired) => Reason::Expired,
        Err(LookupError::VerifierPanicked) => {
            // Not the client's fault.
            give_back(attempt);
            return Err(Rejection::of_key(Reason::VerifierPanicked, key_id));
        }
        Err(LookupError::Unavailable(e)) => {
            give_back(attempt);
            // The cause goes to the log here: the rejection does not carry it.
            tracing::warn!(target: LOG_TARGET, %key_id, error = %e, "api key verifier unavailable");
            return Err(Rejection::unavailable(key_id));
        }
    };
    Err(refused(s, attempt, Rejection::of_key(reason, key_id)))
}

/// The rejection a limited client gets for a credential refused before or
/// without a verifier call of its own: a failed one takes an attempt, and
/// any of them is a 429 once none is left. A failure of a key looked up
/// with a reserved attempt spends that attempt and is answered as it is.
fn refused(s: &AuthState, attempt: Attempt, rejection: Rejection) -> Rejection {
    let client = match attempt {
        Attempt::From(client) => client,
        Attempt::Reserved(reservation) => {
            reservation.spend();
            return rejection;
        }
        Attempt::Unlimited => return rejection,
    };
    let Some(limit) = &s.attempts else {
        return rejection;
    };
    let outcome = if rejection.reason.is_failed_attempt() {
        limit.try_take(client)
    } else {
        limit.blocked(client).map_or(Ok(()), Err)
    };
    match outcome {
        Ok(()) => rejection,
        Err(retry_after) => Rejection::too_many_attempts(retry_after),
    }
}

/// Gives back an attempt reserved for a lookup that did not fail.
fn give_back(attempt: Attempt) {
    if let Attempt::Reserved(reservation) = attempt {
        reservation.release();
    }
}
