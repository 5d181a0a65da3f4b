//! The decision, in one place: the pre-check of a request (CORS preflight,
//! credential, offline parse, failed-attempt limiter), the start of a lookup
//! the cache could not answer, and the verdict on a looked-up key under the
//! route's policy. Nothing here builds a response, logs a rejection or
//! touches the request: [`rejection::respond`](super::rejection::respond)
//! and the service apply what this decides.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::ACCESS_CONTROL_REQUEST_METHOD;
use http::{Method, Request};

use super::authenticator::Shared;
use super::extract::credential;
use super::limit::{NoAttempt, Queue, Reservation};
use super::limits::Limited;
use super::policy::RoutePolicy;
use super::rejection::{Reason, Rejection};
use super::LOG_TARGET;
use crate::cache::Caller;
use crate::cache::{CachedVerifier, LookupError};
use crate::key::{Candidate, KeyId, PresentedKey};
use crate::limits::RouteLimits;
use crate::scope::ScopeDenied;

/// What the synchronous pre-check of a request decided.
pub(crate) enum Precheck<'r> {
    /// Let the request through unauthenticated (CORS preflight).
    PassThrough,
    /// Refuse it.
    Reject(Rejection),
    /// Ask the cache about this key; the request stands thus with the
    /// limiter. Its alphabet and checksum are checked only on a miss
    /// ([`lookup`]): whatever the cache holds passed them.
    Lookup(Candidate<'r>, Attempt),
}

/// How a request stands with the failed-attempt limiter.
#[derive(Debug)]
pub(crate) enum Attempt {
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

/// The lookup of a key the cache could not answer: the key, the answer and
/// how the request then stands with the limiter, or a refusal of the
/// limiter's made while waiting for an attempt.
pub(crate) type Lookup = BoxFuture<'static, Result<Looked, Rejection>>;

/// A key looked up by a [`Lookup`].
pub(crate) struct Looked {
    pub(crate) key: PresentedKey,
    pub(crate) answer: Result<Caller, LookupError>,
    pub(crate) attempt: Attempt,
}

/// Steps 2 to 4 of the [module docs](super): preflight, exactly one
/// credential, offline parse, with the limiter's say on each refusal.
pub(crate) fn precheck<'r, B>(s: &Shared, request: &'r Request<B>) -> Precheck<'r> {
    if s.cors_preflight
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    {
        return Precheck::PassThrough;
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
        Err(reason) => return Precheck::Reject(refused(s, attempt, Rejection::new(reason))),
    };
    match s.format.candidate(raw) {
        Ok(key) => Precheck::Lookup(key, attempt),
        Err(_) => Precheck::Reject(malformed(s, attempt)),
    }
}

fn malformed(s: &Shared, attempt: Attempt) -> Rejection {
    refused(s, attempt, Rejection::new(Reason::Malformed))
}

/// Starts the lookup of a key the cache could not answer, once the rest of
/// its offline checks (alphabet, checksum) pass. A limited client reserves
/// one attempt first, unless the key's lookup is already under way (joining
/// it costs no verifier call). With none left the request is refused here,
/// without a verifier call; if lookups in flight hold every attempt left,
/// it waits for one of them (see [`wait_for_attempt`]).
pub(crate) fn lookup(
    s: &Shared,
    key: Candidate<'_>,
    attempt: Attempt,
) -> Result<Lookup, Rejection> {
    let Ok(key) = key.check(&s.format) else {
        return Err(malformed(s, attempt));
    };
    let cache = s.cache.clone();
    let (client, limit) = match (&attempt, &s.limit) {
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
            Ok(Looked {
                key,
                answer,
                attempt,
            })
        }));
    }
    match limit.reserve(client) {
        Ok(reservation) => Ok(miss(cache, key, Attempt::Reserved(reservation))),
        Err(NoAttempt::Blocked(retry_after)) => Err(too_many_attempts(retry_after)),
        Err(NoAttempt::Busy(queue)) => {
            let timeout = cache.config().verifier_timeout();
            Ok(Box::pin(wait_for_attempt(cache, key, queue, timeout)))
        }
    }
}

/// The verifier's answer for `key`, the request standing thus with the limiter.
fn miss(cache: CachedVerifier, key: PresentedKey, attempt: Attempt) -> Lookup {
    Box::pin(async move {
        let answer = cache.lookup_miss(&key).await;
        Ok(Looked {
            key,
            answer,
            attempt,
        })
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
        Ok(Err(retry_after)) => Err(too_many_attempts(retry_after)),
        Err(_elapsed) => {
            if let Some(retry_after) = queue.blocked() {
                return Err(too_many_attempts(retry_after));
            }
            let key_id = key.id();
            tracing::warn!(
                target: LOG_TARGET,
                %key_id,
                "api key not looked up: lookups in flight from its client held every \
                 failed-attempt limit slot it has left for longer than the verifier timeout"
            );
            let mut rejection = Rejection::new(Reason::Unavailable);
            rejection.key_id = Some(key_id);
            rejection.retry_after = Some(Duration::from_secs(1));
            Err(rejection)
        }
    }
}

/// The route's verdict on a looked-up key: the caller to admit, or why not.
pub(crate) fn verdict<B>(
    s: &Shared,
    policy: &dyn RoutePolicy,
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
                let mut rejection = Rejection::new(Reason::KeyCompromised);
                rejection.key_id = Some(key_id);
                return Err(rejection);
            }
            let scope_policy = policy.policy_for(request.method(), request.uri().path());
            let mut rejection = match scope_policy.check(caller.scopes()) {
                // Counted as accepted once the limits admit it too (`admit`).
                Ok(()) => return Ok(caller),
                Err(ScopeDenied::ScopedKeyOnUnscopedRoute) => {
                    Rejection::new(Reason::ScopedKeyOnUnscopedRoute)
                }
                Err(_) => {
                    let mut rejection = Rejection::new(Reason::InsufficientScope);
                    rejection.required = scope_policy.required().cloned();
                    rejection
                }
            };
            rejection.key_id = Some(key_id);
            return Err(rejection);
        }
        Err(LookupError::Unknown) => Reason::Unknown,
        Err(LookupError::Expired) => Reason::Expired,
        Err(LookupError::VerifierPanicked) => {
            // Not the client's fault.
            give_back(attempt);
            let mut rejection = Rejection::new(Reason::VerifierPanicked);
            rejection.key_id = Some(key_id);
            return Err(rejection);
        }
        Err(LookupError::Unavailable(e)) => {
            give_back(attempt);
            // The cause goes to the log here: the rejection does not carry it.
            tracing::warn!(target: LOG_TARGET, %key_id, error = %e, "api key verifier unavailable");
            let mut rejection = Rejection::new(Reason::Unavailable);
            rejection.key_id = Some(key_id);
            rejection.retry_after = Some(Duration::from_secs(1));
            return Err(rejection);
        }
    };
    let mut rejection = Rejection::new(reason);
    rejection.key_id = Some(key_id);
    Err(refused(s, attempt, rejection))
}

/// The key's rate limits and credits on an admitted, in-scope request: the
/// route's limits come from its policy table, else from its layer.
pub(crate) fn limit<B>(
    s: &Shared,
    policy: &dyn RoutePolicy,
    layer: Option<&RouteLimits>,
    request: &Request<B>,
    caller: &Caller,
) -> Limited {
    let route = policy
        .limits_for(request.method(), request.uri().path())
        .or(layer);
    let now = || s.cache.config().clock().now();
    s.limiter.check(caller, route, now, s.cache.hot_counters())
}

/// The rejection a limited client gets for a credential refused before or
/// without a verifier call of its own: a failed one takes an attempt, and
/// any of them is a 429 once none is left. A failure of a key looked up
/// with a reserved attempt spends that attempt and is answered as it is.
fn refused(s: &Shared, attempt: Attempt, rejection: Rejection) -> Rejection {
    let client = match attempt {
        Attempt::From(client) => client,
        Attempt::Reserved(reservation) => {
            reservation.spend();
            return rejection;
        }
        Attempt::Unlimited => return rejection,
    };
    let Some(limit) = &s.limit else {
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
fn give_back(attempt: Attempt) {
    if let Attempt::Reserved(reservation) = attempt {
        reservation.release();
    }
}

/// A 429 for a client with no attempt left. It carries no key id: the
/// response is the same whatever the credential was.
fn too_many_attempts(retry_after: Duration) -> Rejection {
    let mut rejection = Rejection::new(Reason::TooManyAttempts);
    rejection.retry_after = Some(retry_after);
    rejection
}
