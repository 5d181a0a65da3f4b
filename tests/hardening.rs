//! Issue #8: the layer under deliberate attack, through a real axum `Router`
//! (`route_layer`, `oneshot`), with a verifier that counts its calls per key
//! and can be held at a gate, made to fail or to panic.
//!
//! Already proven elsewhere, and not repeated here:
//! - verifier timeout is 503, not cached, next request works:
//!   `layer_verifier_faults::a_verifier_timeout_is_503_and_the_next_request_works`,
//!   `cache::a_verifier_slower_than_the_timeout_gives_unavailable_and_is_not_cached`;
//! - verifier panic is 500, next request works:
//!   `layer_verifier_faults::a_panicking_verifier_is_500_and_the_next_request_works`,
//!   `cache::a_panicking_verifier_gives_verifier_panicked_and_the_next_lookup_works`,
//!   `cache::a_panicking_verifier_struct_does_not_poison_the_cache`;
//! - a flood of unknown keys does not evict a hot key, at the cache level:
//!   `cache::a_flood_of_ten_thousand_unknown_keys_does_not_evict_a_hot_valid_key`.
//!
//! No sleeps: paused tokio time, a manual clock, semaphores and explicit yields.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, StatusCode};
use proptest::prelude::*;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_api_key::auth::FailedAttemptLimit;
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::store::{CreatedKey, NewKey};
use tower_api_key::AuthenticatorBuilder;
use tower_api_key::Invalidations;
use tower_api_key::Reason;
use tower_api_key::ScopeSet;
use tower_api_key::{Authenticator, KeyRecord, KeyStore, MemoryStore, Verifier, VerifierError};
use tower_api_key::{KeyFormat, KeyId, PresentedKey};

use common::fuzz::{with_checksum, with_secret};
use common::http::{api_key, app, assert_same_response, assert_unauthorized, App, NARROW};
use common::logs::Logs;
use common::Reply;

// ---------------------------------------------------------------------------
// Fixture: a verifier that counts calls per key and can be gated.

struct Probe {
    total: AtomicUsize,
    per_key: Mutex<HashMap<KeyId, usize>>,
    /// While set, a call reads the store, adds a permit to `entered`, then
    /// waits for a permit of `release` before answering what it read: a
    /// database answer still on the wire.
    gated: AtomicBool,
    entered: Semaphore,
    release: Semaphore,
    /// The next call fails with a backend error.
    fail_next: AtomicBool,
    /// Calls for this key panic.
    panic_for: Mutex<Option<KeyId>>,
    /// Each call yields to the scheduler this many times before it answers:
    /// a verifier that takes a while, so calls overlap, without a sleep.
    yields: AtomicUsize,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_key: Mutex::default(),
            gated: AtomicBool::new(false),
            entered: Semaphore::new(0),
            release: Semaphore::new(0),
            fail_next: AtomicBool::new(false),
            panic_for: Mutex::default(),
            yields: AtomicUsize::new(0),
        }
    }
}

impl Probe {
    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    fn calls_for(&self, id: KeyId) -> usize {
        self.per_key.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    fn max_calls_per_key(&self) -> usize {
        self.per_key
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn gate(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    /// Opens the gate for every waiting and future call.
    fn open(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.release.add_permits(100_000);
    }

    /// Waits until `n` gated calls have read the store.
    async fn wait_entered(&self, n: u32) {
        self.entered.acquire_many(n).await.unwrap().forget();
    }
}

struct ProbeVerifier {
    store: MemoryStore,
    probe: Arc<Probe>,
}

#[async_trait]
impl Verifier for ProbeVerifier {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        let probe = &self.probe;
        probe.total.fetch_add(1, Ordering::SeqCst);
        *probe.per_key.lock().unwrap().entry(key.id()).or_default() += 1;
        if probe.fail_next.swap(false, Ordering::SeqCst) {
            return Err(VerifierError::backend("key database unreachable (test)"));
        }
        if *probe.panic_for.lock().unwrap() == Some(key.id()) {
            panic!("verifier panicked on purpose (test)");
        }
        for _ in 0..probe.yields.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let answer = self.store.verify(key).await;
        if probe.gated.load(Ordering::SeqCst) {
            probe.entered.add_permits(1);
            probe.release.acquire().await.unwrap().forget();
        }
        answer
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

struct Fx {
    store: MemoryStore,
    clock: Arc<ManualClock>,
    probe: Arc<Probe>,
    auth: Authenticator,
    app: App,
}

fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

impl Fx {
    fn new() -> Self {
        Self::with(|auth| auth)
    }

    /// Long TTLs (nothing expires by itself during a test), a manual clock
    /// shared with the store, and whatever `configure` adds.
    fn with(configure: impl FnOnce(AuthenticatorBuilder) -> AuthenticatorBuilder) -> Self {
        let clock = Arc::new(ManualClock::new(start_time()));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let probe = Arc::new(Probe::default());
        let verifier = ProbeVerifier {
            store: store.clone(),
            probe: probe.clone(),
        };
        let auth = configure(
            Authenticator::verifier_builder(verifier)
                .clock(clock.clone())
                .positive_ttl(Duration::from_secs(3600))
                .negative_ttl(Duration::from_secs(3600)),
        )
        .build();
        let app = app(&auth);
        Self {
            store,
            clock,
            probe,
            auth,
            app,
        }
    }

    async fn key(&self, scopes: &[&str]) -> CreatedKey {
        let new = NewKey::new("sa-a").with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap());
        self.store.create(new).await.unwrap()
    }

    async fn expiring_key(&self, after: Duration) -> CreatedKey {
        let new = NewKey::new("sa-a").with_expires_at(self.clock.now() + after);
        self.store.create(new).await.unwrap()
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        self.app.send(request).await
    }
}

/// `GET /whoami` from `client` (none: no `ConnectInfo`), with these
/// `Authorization` values.
fn whoami(client: Option<IpAddr>, values: &[HeaderValue]) -> Request<Body> {
    let mut request = Request::get("/whoami");
    for value in values {
        request = request.header(AUTHORIZATION, value.clone());
    }
    let mut request = request.body(Body::empty()).unwrap();
    if let Some(ip) = client {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 40_000)));
    }
    request
}

fn with_key(client: Option<IpAddr>, key: &str) -> Request<Body> {
    whoami(client, &[api_key(key)])
}

/// A client address from TEST-NET-1 (only ever used as a request extension).
fn client(n: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)))
}

/// A checksum-valid key nobody issued.
fn unknown_key() -> String {
    KeyFormat::default()
        .generate()
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn base62(&mut self, n: usize) -> impl Iterator<Item = u8> + '_ {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..n).map(move |_| ALPHABET[(self.next() % 62) as usize])
    }
}

// ---------------------------------------------------------------------------
// Floods of bad keys do not reach the backend at full rate.

#[tokio::test]
async fn a_hundred_thousand_keys_with_a_wrong_checksum_make_no_verifier_call() {
    let fx = Fx::new();
    let mut rng = Rng(0x5eed_0008);
    let mut seen = std::collections::HashSet::new();
    for i in 0..100_000 {
        let mut body = b"tak_".to_vec();
        body.extend(rng.base62(16));
        body.push(b'_');
        body.extend(rng.base62(32));
        let mut key = with_checksum(&body);
        // Any change to a checksum digit changes its value: now it is wrong.
        let at = body.len() + (i % 6);
        key[at] = if key[at] == b'0' { b'1' } else { b'0' };
        assert!(KeyFormat::default().parse_bytes(&key).is_err());
        assert!(seen.insert(key.clone()), "keys are distinct");

        let reply = fx
            .send(with_key(None, std::str::from_utf8(&key).unwrap()))
            .await;
        if i % 10_000 == 0 {
            assert_unauthorized(&reply, Reason::Malformed);
        } else {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(fx.probe.total(), 0, "not one of them reached the verifier");
    assert!(fx.app.seen().is_empty());
}

#[tokio::test]
async fn ten_thousand_unknown_keys_make_one_verifier_call_each_and_a_hot_key_stays_cached() {
    // A small positive cache: if unknown keys shared it, they would evict the hot key.
    let fx = Fx::with(|auth| auth.max_keys(16));
    let hot = fx.key(&[]).await;
    let hot_secret = hot.key.expose_secret();
    assert_eq!(
        fx.send(with_key(None, hot_secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.probe.calls_for(hot.record.key_id), 1);

    let unknown: Vec<String> = (0..10_000).map(|_| unknown_key()).collect();
    for (i, key) in unknown.iter().enumerate() {
        // Each twice in a row: the second is answered by the negative cache.
        for _ in 0..2 {
            let reply = fx.send(with_key(None, key)).await;
            assert_unauthorized(&reply, Reason::Unknown);
        }
        if i % 1000 == 999 {
            fx.auth.cache().run_pending_tasks();
            let reply = fx.send(with_key(None, hot_secret)).await;
            assert_eq!(reply.status, StatusCode::OK, "after {} unknown keys", i + 1);
            assert_eq!(
                fx.probe.calls_for(hot.record.key_id),
                1,
                "the hot key went back to the verifier after {} unknown keys",
                i + 1
            );
        }
    }
    assert_eq!(fx.probe.max_calls_per_key(), 1, "no key was verified twice");
    assert_eq!(
        fx.probe.total(),
        10_001,
        "one call per unknown key, one for the hot key"
    );
    assert_eq!(fx.app.seen().len(), 11);
}

// ---------------------------------------------------------------------------
// Equal treatment of unknown keys.

#[tokio::test]
async fn an_unknown_key_and_a_known_id_with_a_wrong_secret_are_indistinguishable() {
    let fx = Fx::new();
    let known = fx.key(&[]).await;
    let known_secret = known.key.expose_secret();
    let wrong_secret = String::from_utf8(with_secret(
        known_secret.as_bytes(),
        b"an attacker's guess at the secret",
    ))
    .unwrap();
    let parsed = KeyFormat::default().parse(&wrong_secret).unwrap();
    assert_eq!(parsed.id(), known.record.key_id, "same id, well-formed");
    assert_ne!(wrong_secret, known_secret);
    let unknown = unknown_key();

    // HTTP: one verifier call each, then the negative cache for both.
    let a = fx.send(with_key(None, &unknown)).await;
    assert_eq!(fx.probe.total(), 1);
    let b = fx.send(with_key(None, &wrong_secret)).await;
    assert_eq!(fx.probe.total(), 2, "the same path: one verifier call each");
    assert_unauthorized(&a, Reason::Unknown);
    assert_unauthorized(&b, Reason::Unknown);
    assert_same_response(&a, &b, &[]);
    assert!(!b.contains(known_secret) && !b.contains(&wrong_secret));

    let a2 = fx.send(with_key(None, &unknown)).await;
    let b2 = fx.send(with_key(None, &wrong_secret)).await;
    assert_eq!(fx.probe.total(), 2, "both remembered as unknown");
    assert_same_response(&a, &a2, &[]);
    assert_same_response(&a, &b2, &[]);

    // gRPC: byte-identical too.
    let grpc = |key: &str| {
        Request::post("/v1/translate")
            .header(CONTENT_TYPE, "application/grpc")
            .header(AUTHORIZATION, api_key(key))
            .body(Body::empty())
            .unwrap()
    };
    let a = fx.send(grpc(&unknown)).await;
    let b = fx.send(grpc(&wrong_secret)).await;
    assert_eq!(a.header("grpc-status"), "16");
    assert_same_response(&a, &b, &[]);
    assert_eq!(fx.probe.total(), 2);

    // The real key still works: the wrong secret did not poison its id.
    assert_eq!(
        fx.send(with_key(None, known_secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.probe.calls_for(known.record.key_id), 2);
}

// ---------------------------------------------------------------------------
// Failed-attempt limiting, through the layer.
//
// Semantics: every failed credential spends one of the client's attempts,
// and a key the cache cannot answer spends one *before* its verifier call,
// given back when the key proves valid or the verifier fails; a request
// joining a lookup already under way spends none. Once a client has no
// attempt left, it gets 429 for everything except a key the cache already
// holds as valid, until its bucket refills (one attempt back per window /
// max_failures, all of them after a full window). So a blocked client costs
// no verifier call, however many requests it has in flight, and one guesser
// behind a shared address does not lock out the valid keys used from there.

const WINDOW: Duration = Duration::from_secs(60);

fn limited(max_failures: u32) -> (Fx, FailedAttemptLimit) {
    let limit = FailedAttemptLimit::new(max_failures, WINDOW);
    let fx = Fx::with(|auth| auth.failed_attempt_limit(limit.clone()));
    (fx, limit)
}

#[track_caller]
fn assert_too_many(reply: &Reply, retry_after: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(reply.reason(), Some(Reason::TooManyAttempts), "{reply:?}");
    assert_eq!(reply.header(RETRY_AFTER), retry_after, "{reply:?}");
    assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{reply:?}");
    let rejection = reply.rejection.as_ref().unwrap();
    assert_eq!(
        rejection.key_id(),
        None,
        "refused before the credential was read"
    );
}

#[tokio::test(start_paused = true)]
async fn after_n_failures_a_client_gets_429_without_any_lookup() {
    let (fx, _) = limited(5);
    let a = client(1);
    for _ in 0..5 {
        let reply = fx.send(with_key(a, &unknown_key())).await;
        assert_unauthorized(&reply, Reason::Unknown);
    }
    assert_eq!(fx.probe.total(), 5);

    // Blocked: neither a new unknown key, nor garbage, nor a huge header, nor
    // a missing one gets a lookup. Bucket of 5 refilling over 60 s: one
    // attempt back in 12 s.
    let huge = HeaderValue::from_bytes(&vec![b'a'; 64 * 1024]).unwrap();
    for values in [
        vec![api_key(&unknown_key())],
        vec![api_key("tak_garbage")],
        vec![huge],
        vec![],
    ] {
        let reply = fx.send(whoami(a, &values)).await;
        assert_too_many(&reply, "12");
    }
    assert_eq!(fx.probe.total(), 5, "no verifier call for a blocked client");
    assert!(fx.app.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_failed_credential_counts() {
    for kind in [
        "garbage",
        "bad checksum",
        "unknown",
        "revoked",
        "expired",
        "wrong scheme",
        "two credentials",
    ] {
        let (fx, _) = limited(1);
        let valid = fx.key(&[]).await;
        let revoked = fx.key(&[]).await;
        assert!(fx.store.revoke(revoked.record.key_id, None).await.unwrap());
        let expired = fx.expiring_key(Duration::from_secs(1)).await;
        fx.clock.advance(Duration::from_secs(1));
        let mut bad_checksum = valid.key.expose_secret().as_bytes().to_vec();
        let last = bad_checksum.len() - 1;
        bad_checksum[last] = if bad_checksum[last] == b'0' {
            b'1'
        } else {
            b'0'
        };
        let bad_checksum = String::from_utf8(bad_checksum).unwrap();

        let values = match kind {
            "garbage" => vec![api_key("tak_garbage")],
            "bad checksum" => vec![api_key(&bad_checksum)],
            "unknown" => vec![api_key(&unknown_key())],
            "revoked" => vec![api_key(revoked.key.expose_secret())],
            "expired" => vec![api_key(expired.key.expose_secret())],
            "wrong scheme" => vec![HeaderValue::from_static("Bearer abc")],
            "two credentials" => vec![
                api_key(valid.key.expose_secret()),
                api_key(valid.key.expose_secret()),
            ],
            _ => unreachable!(),
        };
        let first = fx.send(whoami(client(1), &values)).await;
        assert!(
            matches!(
                first.status,
                StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
            ),
            "{kind}: {first:?}"
        );
        let next = fx
            .send(with_key(client(1), valid.key.expose_secret()))
            .await;
        assert_eq!(
            next.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{kind} counts as a failed attempt: {next:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn what_is_not_a_failed_attempt_does_not_count() {
    let (fx, _) = limited(1);
    let unscoped = fx.key(&[]).await;
    let scoped = fx.key(&[NARROW]).await;
    let a = client(1);

    // No credential at all, many times.
    for _ in 0..20 {
        let reply = fx.send(whoami(a, &[])).await;
        assert_unauthorized(&reply, Reason::Missing);
    }
    // A valid key refused for its scope (a scoped key on an unscoped-only route).
    let mut legacy = Request::get("/v1/legacy")
        .header(AUTHORIZATION, api_key(scoped.key.expose_secret()))
        .body(Body::empty())
        .unwrap();
    legacy
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(a.unwrap(), 1)));
    assert_eq!(fx.send(legacy).await.status, StatusCode::FORBIDDEN);
    // A backend fault.
    fx.probe.fail_next.store(true, Ordering::SeqCst);
    let reply = fx.send(with_key(a, unscoped.key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");

    let reply = fx.send(with_key(a, unscoped.key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "still not limited: {reply:?}");
}

#[tokio::test(start_paused = true)]
async fn a_blocked_client_does_not_affect_another_client() {
    let (fx, _) = limited(3);
    let valid = fx.key(&[]).await;
    for _ in 0..3 {
        fx.send(with_key(client(1), &unknown_key())).await;
    }
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "20");

    let b = client(2);
    assert_eq!(
        fx.send(with_key(b, valid.key.expose_secret())).await.status,
        StatusCode::OK
    );
    // B has its own three attempts.
    for _ in 0..3 {
        assert_unauthorized(&fx.send(with_key(b, &unknown_key())).await, Reason::Unknown);
    }
    assert_too_many(&fx.send(with_key(b, &unknown_key())).await, "20");
    // A request with no client id (no ConnectInfo) is not limited at all.
    for _ in 0..10 {
        assert_unauthorized(
            &fx.send(with_key(None, &unknown_key())).await,
            Reason::Unknown,
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_uncached_valid_key_from_a_blocked_client_is_refused_until_the_client_recovers() {
    let (fx, _) = limited(3);
    let valid = fx.key(&[]).await;
    let secret = valid.key.expose_secret();
    let a = client(1);
    for _ in 0..3 {
        fx.send(with_key(a, &unknown_key())).await;
    }
    let calls = fx.probe.total();

    // Blocked: the valid key, not cached, is refused without a lookup.
    assert_too_many(&fx.send(with_key(a, secret)).await, "20");
    tokio::time::advance(Duration::from_secs(19)).await;
    assert_too_many(&fx.send(with_key(a, secret)).await, "1");
    assert_eq!(fx.probe.total(), calls);
    assert!(fx.app.seen().is_empty());

    // One attempt back after window / max_failures = 20 s: the lookup takes
    // it and the valid key gives it back.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(fx.send(with_key(a, secret)).await.status, StatusCode::OK);
    assert_eq!(fx.probe.total(), calls + 1);
    // A success refills nothing beyond its own attempt: one more failure
    // blocks again (the key is re-verified on its next use, so uncached).
    fx.auth.cache().invalidate(valid.record.key_id);
    assert_unauthorized(&fx.send(with_key(a, &unknown_key())).await, Reason::Unknown);
    assert_too_many(&fx.send(with_key(a, secret)).await, "20");

    // A full window restores every attempt.
    tokio::time::advance(WINDOW).await;
    for _ in 0..3 {
        assert_unauthorized(&fx.send(with_key(a, &unknown_key())).await, Reason::Unknown);
    }
    assert_too_many(&fx.send(with_key(a, secret)).await, "20");
    tokio::time::advance(WINDOW).await;
    assert_eq!(fx.send(with_key(a, secret)).await.status, StatusCode::OK);
    assert_eq!(fx.probe.calls_for(valid.record.key_id), 2);
}

#[tokio::test(start_paused = true)]
async fn a_blocked_grpc_client_gets_resource_exhausted() {
    let (fx, _) = limited(2);
    let grpc = |key: &str| {
        let mut request = Request::post("/v1/translate")
            .header(CONTENT_TYPE, "application/grpc+proto")
            .header(AUTHORIZATION, api_key(key))
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(client(1).unwrap(), 1)));
        request
    };
    for _ in 0..2 {
        assert_eq!(
            fx.send(grpc(&unknown_key())).await.header("grpc-status"),
            "16"
        );
    }
    let reply = fx.send(grpc(&unknown_key())).await;
    assert_eq!(reply.status, StatusCode::OK, "gRPC errors ride on HTTP 200");
    assert_eq!(
        reply.header("grpc-status"),
        "8",
        "RESOURCE_EXHAUSTED: {reply:?}"
    );
    assert_eq!(reply.header(CONTENT_TYPE), "application/grpc");
    assert_eq!(reply.reason(), Some(Reason::TooManyAttempts));
    assert!(reply.body.is_empty(), "trailers-only");
    assert_eq!(fx.probe.total(), 2);
}

#[tokio::test]
async fn tracked_clients_are_bounded() {
    let limit = FailedAttemptLimit::builder(3, WINDOW)
        .max_clients(1000)
        .build();
    let fx = Fx::with(|auth| auth.failed_attempt_limit(limit.clone()));
    // 20,000 addresses (198.18.0.0/15, only ever a request extension), one failure each.
    for i in 0..20_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i));
        let reply = fx.send(with_key(Some(ip), "tak_garbage")).await;
        assert_unauthorized(&reply, Reason::Malformed);
    }
    let tracked = limit.tracked_clients();
    assert!(
        (1..=1000).contains(&tracked),
        "{tracked} clients tracked, at most 1000 allowed"
    );
    assert_eq!(fx.probe.total(), 0);
}

/// `GET path` from `client` with `key`.
fn get_with_key(path: &str, client: Option<IpAddr>, key: &str) -> Request<Body> {
    let mut request = Request::get(path)
        .header(AUTHORIZATION, api_key(key))
        .body(Body::empty())
        .unwrap();
    if let Some(ip) = client {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 40_000)));
    }
    request
}

/// Fails if any request in `set` has been answered. (`JoinSet::len` would
/// not tell: it counts finished tasks until they are joined.)
#[track_caller]
fn assert_none_answered(set: &mut JoinSet<Reply>, why: &str) {
    if let Some(answered) = set.try_join_next() {
        panic!("{why}: {:?}", answered.unwrap());
    }
}

/// Spawns one request per key, all from `from`.
fn spawn_requests(fx: &Arc<Fx>, from: Option<IpAddr>, keys: Vec<String>) -> JoinSet<Reply> {
    let mut set = JoinSet::new();
    for key in keys {
        let fx = fx.clone();
        set.spawn(async move { fx.send(with_key(from, &key)).await });
    }
    set
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_unknown_keys_from_one_client_make_at_most_limit_verifier_calls() {
    const LIMIT: usize = 30;
    let (fx, _) = limited(LIMIT as u32);
    let fx = Arc::new(fx);
    // Every lookup is held at the gate: a slow verifier, as slow as the test wants.
    fx.probe.gate();
    let keys = (0..1000).map(|_| unknown_key()).collect();
    let mut requests = spawn_requests(&fx, client(1), keys);

    // The first LIMIT requests hold every attempt with their lookups; the
    // other 970 wait for those outcomes instead of starting lookups. (Time
    // stands still: paused time moves only when every task is stuck.)
    fx.probe.wait_entered(LIMIT as u32).await;
    let_spawned_tasks_run().await;
    assert_eq!(fx.probe.total(), LIMIT);
    assert_none_answered(&mut requests, "nothing has failed yet: no 429");

    // The lookups fail: the limit is full of confirmed failures, and every
    // request waiting gets 429 without a verifier call.
    fx.probe.open();
    let (mut unknown, mut refused) = (0, 0);
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_unauthorized(&reply, Reason::Unknown);
            unknown += 1;
        } else {
            // 30 per 60 s: one attempt back in 2 s.
            assert_too_many(&reply, "2");
            refused += 1;
        }
    }
    assert_eq!((unknown, refused), (LIMIT, 1000 - LIMIT));
    assert_eq!(fx.probe.total(), LIMIT, "at most `limit` verifier calls");
    assert!(fx.app.seen().is_empty());
}

/// Issue 20, point 6: a gateway, a NAT or a batch job sending many valid
/// keys from one address right after a deploy (nothing cached) is not
/// refused: requests beyond the limit wait for the lookups in flight, and
/// each valid outcome frees its attempt for the next.
#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_uncached_valid_keys_from_one_client_all_get_through() {
    const LIMIT: usize = 30;
    let (fx, _) = limited(LIMIT as u32);
    let fx = Arc::new(fx);
    let mut keys = Vec::new();
    for _ in 0..200 {
        keys.push(fx.key(&[]).await.key.expose_secret().to_owned());
    }
    fx.probe.gate();
    let mut requests = spawn_requests(&fx, client(1), keys);

    // All 200 in flight at once: LIMIT at the verifier, the rest waiting.
    fx.probe.wait_entered(LIMIT as u32).await;
    let_spawned_tasks_run().await;
    assert_eq!(fx.probe.total(), LIMIT, "no more lookups than attempts");
    assert_none_answered(&mut requests, "none refused while lookups are in flight");

    fx.probe.open();
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(fx.probe.total(), 200);
    assert_eq!(fx.probe.max_calls_per_key(), 1);
    assert_eq!(fx.app.seen().len(), 200);

    // Every attempt is back.
    for _ in 0..LIMIT {
        assert_unauthorized(
            &fx.send(with_key(client(1), &unknown_key())).await,
            Reason::Unknown,
        );
    }
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "2");
}

/// The same on two worker threads, with a verifier that takes a few turns of
/// the scheduler: releases, wake-ups and reservations race for real. A lost
/// wake-up would leave a request waiting out the verifier timeout (long
/// here, so a loaded machine is no excuse) for a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uncached_valid_keys_on_two_threads_all_get_through() {
    const LIMIT: usize = 3;
    let limit = FailedAttemptLimit::new(LIMIT as u32, WINDOW);
    let fx = Arc::new(Fx::with(|auth| {
        auth.failed_attempt_limit(limit)
            .verifier_timeout(Some(Duration::from_secs(60)))
    }));
    let mut keys = Vec::new();
    for _ in 0..300 {
        keys.push(fx.key(&[]).await.key.expose_secret().to_owned());
    }
    fx.probe.yields.store(20, Ordering::SeqCst);
    let mut requests = spawn_requests(&fx, client(1), keys);
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(fx.probe.total(), 300);
    for _ in 0..LIMIT {
        assert_unauthorized(
            &fx.send(with_key(client(1), &unknown_key())).await,
            Reason::Unknown,
        );
    }
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "20");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_goes_away_while_waiting_for_an_attempt_frees_nothing_and_leaks_nothing() {
    let (fx, _) = limited(1);
    let fx = Arc::new(fx);
    let mut secrets = Vec::new();
    for _ in 0..3 {
        secrets.push(fx.key(&[]).await.key.expose_secret().to_owned());
    }
    fx.probe.gate();
    let mut holder = spawn_requests(&fx, client(1), vec![secrets[0].clone()]);
    fx.probe.wait_entered(1).await;
    let mut leaving = spawn_requests(&fx, client(1), vec![secrets[1].clone()]);
    let_spawned_tasks_run().await;
    // The client hangs up while its request waits for the attempt.
    leaving.abort_all();
    let left = leaving.join_next().await.unwrap();
    assert!(
        left.unwrap_err().is_cancelled(),
        "it was waiting, not answered"
    );

    // It held nothing, so it freed nothing: the next request waits too.
    let mut next = spawn_requests(&fx, client(1), vec![secrets[2].clone()]);
    let_spawned_tasks_run().await;
    assert_none_answered(&mut next, "still waiting");
    assert_eq!(fx.probe.total(), 1);

    fx.probe.open();
    for set in [&mut holder, &mut next] {
        let reply = set.join_next().await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(fx.probe.total(), 2, "no lookup for the request that left");

    // And it took nothing with it: the one attempt is whole.
    assert_unauthorized(
        &fx.send(with_key(client(1), &unknown_key())).await,
        Reason::Unknown,
    );
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "60");
}

#[tokio::test(start_paused = true)]
async fn waiting_for_an_attempt_longer_than_the_verifier_timeout_is_a_503_without_a_lookup() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let limit = FailedAttemptLimit::new(1, WINDOW);
    let fx = Arc::new(Fx::with(|auth| {
        auth.failed_attempt_limit(limit.clone())
            .verifier_timeout(Some(TIMEOUT))
    }));
    let mut secrets = Vec::new();
    for _ in 0..3 {
        secrets.push(fx.key(&[]).await.key.expose_secret().to_owned());
    }
    // A verifier that never answers: each lookup ends at the timeout.
    fx.probe.gate();
    let start = tokio::time::Instant::now();
    let send = |secret: &String| {
        let (fx, secret) = (fx.clone(), secret.clone());
        tokio::spawn(async move { fx.send(with_key(client(1), &secret)).await })
    };
    // t = 0: holds the one attempt until its verifier call times out (t = 5).
    let holder = send(&secrets[0]);
    fx.probe.wait_entered(1).await;
    // t = 1 and t = 2: wait for it. At t = 5 the first gets the attempt back
    // and looks its key up; the second waits on, and its wait ends at t = 7.
    tokio::time::advance(Duration::from_secs(1)).await;
    let first = send(&secrets[1]);
    let_spawned_tasks_run().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = send(&secrets[2]);
    let_spawned_tasks_run().await;

    let reply = second.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.reason(), Some(Reason::Unavailable));
    assert_eq!(reply.header(RETRY_AFTER), "1");
    assert_eq!(
        fx.probe.total(),
        2,
        "the request that waited too long made no lookup"
    );

    for (request, ends) in [(holder, 5), (first, 10)] {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(start.elapsed() >= Duration::from_secs(ends));
    }

    // Neither the verifier faults nor the wait spent the one attempt.
    fx.probe.open();
    assert_unauthorized(
        &fx.send(with_key(client(1), &unknown_key())).await,
        Reason::Unknown,
    );
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "60");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_goes_away_during_its_lookup_keeps_its_attempt_spent() {
    let (fx, _) = limited(3);
    let fx = Arc::new(fx);
    fx.probe.gate();
    let keys = (0..3).map(|_| unknown_key()).collect();
    let mut requests = spawn_requests(&fx, client(1), keys);
    fx.probe.wait_entered(3).await;
    // The clients disconnect; their lookups run on regardless.
    requests.abort_all();
    while let Some(result) = requests.join_next().await {
        assert!(result.unwrap_err().is_cancelled());
    }
    fx.probe.open();

    // Otherwise disconnecting would buy lookups past the limit.
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "20");
    assert_eq!(fx.probe.total(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_blocked_client_gets_its_cached_valid_keys_through_and_nothing_else() {
    let (fx, _) = limited(3);
    let cached = fx.key(&[]).await;
    let scoped = fx.key(&[NARROW]).await;
    let uncached = fx.key(&[]).await;
    let a = client(1);
    for key in [&cached, &scoped] {
        let reply = fx.send(with_key(a, key.key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    let known_unknown = unknown_key();
    assert_unauthorized(&fx.send(with_key(a, &known_unknown)).await, Reason::Unknown);
    for _ in 0..2 {
        assert_unauthorized(&fx.send(with_key(a, &unknown_key())).await, Reason::Unknown);
    }
    let calls = fx.probe.total();

    // Blocked, yet a key the cache holds as valid gets through, and the
    // route's scope policy still applies to it.
    for _ in 0..10 {
        let reply = fx.send(with_key(a, cached.key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    let reply = fx
        .send(get_with_key("/v1/legacy", a, scoped.key.expose_secret()))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.reason(), Some(Reason::ScopedKeyOnUnscopedRoute));

    // Nothing else: a valid key that would need a lookup, garbage, a key
    // remembered as unknown, a new unknown key.
    for key in [
        uncached.key.expose_secret(),
        "tak_garbage",
        &known_unknown,
        &unknown_key(),
    ] {
        assert_too_many(&fx.send(with_key(a, key)).await, "20");
    }
    assert_eq!(fx.probe.total(), calls, "no verifier call while blocked");
    assert_eq!(fx.app.seen().len(), 2 + 10);
}

#[tokio::test(start_paused = true)]
async fn a_burst_with_one_uncached_valid_key_shares_one_verifier_call_and_spends_no_attempt() {
    let (fx, _) = limited(3);
    let fx = Arc::new(fx);
    let valid = fx.key(&[]).await;
    fx.probe.gate();
    let secret = valid.key.expose_secret().to_owned();
    let mut requests = spawn_requests(&fx, client(1), vec![secret; 50]);
    // One lookup is held at the gate while the other 49 requests join it.
    fx.probe.wait_entered(1).await;
    let_spawned_tasks_run().await;
    assert_none_answered(&mut requests, "none answered before the lookup");

    fx.probe.open();
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(fx.probe.calls_for(valid.record.key_id), 1);
    assert_eq!(fx.app.seen().len(), 50);

    // All three attempts are still there.
    for _ in 0..3 {
        assert_unauthorized(
            &fx.send(with_key(client(1), &unknown_key())).await,
            Reason::Unknown,
        );
    }
    assert_too_many(&fx.send(with_key(client(1), &unknown_key())).await, "20");
}

#[tokio::test(start_paused = true)]
async fn valid_keys_that_miss_the_cache_never_block_their_client() {
    let (fx, _) = limited(2);
    let a = client(1);
    let mut keys = Vec::new();
    for _ in 0..10 {
        keys.push(fx.key(&[]).await);
    }
    for _ in 0..3 {
        for key in &keys {
            let reply = fx.send(with_key(a, key.key.expose_secret())).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            // Re-verified on its next use: every request is a cache miss.
            fx.auth.cache().invalidate(key.record.key_id);
        }
    }
    assert_eq!(fx.probe.total(), 30, "every request asked the verifier");

    // Both attempts are still there.
    for _ in 0..2 {
        assert_unauthorized(&fx.send(with_key(a, &unknown_key())).await, Reason::Unknown);
    }
    assert_too_many(&fx.send(with_key(a, &unknown_key())).await, "30");
}

// Current-thread runtime: the thread-local subscriber sees every event.
#[tokio::test(start_paused = true)]
async fn a_limiter_that_finds_no_client_address_warns_once_and_limits_nothing() {
    const WARNING: &str = "failed-attempt limit is on, but a request has no client address";
    let (logs, _guard) = Logs::capture(tracing::Level::WARN);

    let (fx, _) = limited(1);
    for _ in 0..5 {
        assert_unauthorized(
            &fx.send(with_key(None, &unknown_key())).await,
            Reason::Unknown,
        );
    }
    let text = logs.text();
    assert_eq!(text.matches(WARNING).count(), 1, "{text}");
    assert!(
        text.contains("into_make_service_with_connect_info::<SocketAddr>()")
            && text.contains("AuthenticatorBuilder::trusted_proxies(..)")
            && text.contains("`ClientIp`"),
        "the warning names the fix: {text}"
    );
    assert!(!text.contains("tak_"), "no key material in logs: {text}");

    // Requests that have a client address do not warn; another limiter
    // warns once on its own.
    let (with_address, _) = limited(1);
    with_address.send(with_key(client(1), &unknown_key())).await;
    assert_eq!(logs.text().matches(WARNING).count(), 1);
    let (other, _) = limited(1);
    for _ in 0..3 {
        other.send(with_key(None, &unknown_key())).await;
    }
    assert_eq!(logs.text().matches(WARNING).count(), 2);
}

// ---------------------------------------------------------------------------
// Backend faults: a panic for one key leaves the rest working.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_for_one_key_leaves_concurrent_requests_for_other_keys_working() {
    let fx = Arc::new(Fx::new());
    let good = fx.key(&[]).await;
    let bad = fx.key(&[]).await;
    *fx.probe.panic_for.lock().unwrap() = Some(bad.record.key_id);

    // The good key's lookup is held in flight while the bad key's verifier panics.
    fx.probe.gate();
    let good_secret = good.key.expose_secret().to_owned();
    let fx2 = fx.clone();
    let in_flight = tokio::spawn(async move { fx2.send(with_key(None, &good_secret)).await });
    fx.probe.wait_entered(1).await;

    let mut waiters = JoinSet::new();
    for _ in 0..10 {
        let fx = fx.clone();
        let secret = bad.key.expose_secret().to_owned();
        waiters.spawn(async move { fx.send(with_key(None, &secret)).await.status });
    }
    while let Some(status) = waiters.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    fx.probe.open();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // Later requests: the good key from the cache, the bad one asked again (not cached).
    let before = fx.probe.calls_for(bad.record.key_id);
    assert!(before >= 1);
    *fx.probe.panic_for.lock().unwrap() = None;
    let reply = fx.send(with_key(None, bad.key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(fx.probe.calls_for(bad.record.key_id), before + 1);
    assert_eq!(
        fx.send(with_key(None, good.key.expose_secret()))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(fx.probe.calls_for(good.record.key_id), 1);
}

// ---------------------------------------------------------------------------
// Revocation and expiry racing a burst.

/// Spawns `n` requests with `key`; on a current-thread runtime they all run
/// to their first wait before the caller's next `yield_now` returns.
fn spawn_burst(fx: &Arc<Fx>, key: &str, n: usize) -> JoinSet<Reply> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let fx = fx.clone();
        let key = key.to_owned();
        set.spawn(async move { fx.send(with_key(None, &key)).await });
    }
    set
}

async fn let_spawned_tasks_run() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

async fn collect(mut set: JoinSet<Reply>) -> Vec<Reply> {
    let mut replies = Vec::new();
    while let Some(reply) = set.join_next().await {
        replies.push(reply.unwrap());
    }
    replies
}

#[tokio::test(flavor = "current_thread")]
async fn a_key_revoked_while_a_hundred_requests_are_in_flight_is_refused_to_every_later_request() {
    let fx = Arc::new(Fx::new());
    let key = fx.key(&[]).await;
    let secret = key.key.expose_secret();

    // 100 requests in flight, coalesced on one verifier call that has read
    // the key as valid and is held before answering.
    fx.probe.gate();
    let before = spawn_burst(&fx, secret, 100);
    fx.probe.wait_entered(1).await;
    let_spawned_tasks_run().await;
    assert_eq!(fx.probe.total(), 1, "one call for the whole burst");

    assert!(fx.store.revoke(key.record.key_id, None).await.unwrap());
    // Every request from here on starts after revoke returned; they join the
    // stale call in flight, then the gate opens.
    let after = spawn_burst(&fx, secret, 100);
    let_spawned_tasks_run().await;
    fx.probe.open();

    let after = collect(after).await;
    assert_eq!(after.len(), 100);
    for reply in &after {
        assert_unauthorized(reply, Reason::Unknown);
    }
    for reply in collect(before).await {
        // Started before the revoke: either answer is allowed, nothing else.
        assert!(
            matches!(reply.status, StatusCode::OK | StatusCode::UNAUTHORIZED),
            "{reply:?}"
        );
    }
    // And nothing stale was cached.
    assert_unauthorized(&fx.send(with_key(None, secret)).await, Reason::Unknown);
    assert!(fx.app.seen().iter().all(|s| s.caller.is_some()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_key_expiring_during_a_burst_is_refused_to_every_request_that_starts_after_expiry() {
    let fx = Arc::new(Fx::new());
    let key = fx.expiring_key(Duration::from_secs(10)).await;
    let secret = key.key.expose_secret();
    let expires_at = key.record.expires_at.unwrap();

    // Cached and valid a moment before expiry.
    fx.clock.set(expires_at - Duration::from_millis(1));
    assert_eq!(fx.send(with_key(None, secret)).await.status, StatusCode::OK);

    // Force a fresh verifier call held in flight, as after a cache flush.
    fx.auth.cache().invalidate_all();
    fx.probe.gate();
    let before = spawn_burst(&fx, secret, 100);
    fx.probe.wait_entered(1).await;
    let_spawned_tasks_run().await;

    fx.clock.set(expires_at);
    let after = spawn_burst(&fx, secret, 100);
    let_spawned_tasks_run().await;
    fx.probe.open();

    for reply in collect(after).await {
        assert_unauthorized(&reply, Reason::Expired);
    }
    for reply in collect(before).await {
        assert!(
            matches!(reply.status, StatusCode::OK | StatusCode::UNAUTHORIZED),
            "{reply:?}"
        );
    }
    // Cache hits after expiry are refused too, and so is the burst of them.
    let hits = collect(spawn_burst(&fx, secret, 100)).await;
    assert!(hits.iter().all(|r| r.reason() == Some(Reason::Expired)));
    assert_eq!(fx.probe.calls_for(key.record.key_id), 2);
}

// ---------------------------------------------------------------------------
// Any bytes as Authorization: a response, never a panic.

struct Shared {
    runtime: tokio::runtime::Runtime,
    fx: Fx,
    known: String,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (fx, known) = runtime.block_on(async {
            let fx = Fx::new();
            let known = fx.key(&[]).await.key.expose_secret().to_owned();
            (fx, known)
        });
        Shared { runtime, fx, known }
    })
}

/// Header values: raw bytes, `Api-Key` + raw bytes, and the known key with
/// one byte replaced (or intact), so every status is reachable.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let known = shared().known.clone().into_bytes();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        proptest::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| [&b"Api-Key "[..], &b].concat()),
        (any::<usize>(), any::<u8>(), any::<bool>()).prop_map(move |(at, byte, intact)| {
            let mut key = known.clone();
            if !intact {
                let at = at % key.len();
                key[at] = byte;
            }
            [&b"Api-Key "[..], &key].concat()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_authorization_bytes_get_a_response_and_never_a_panic(
        values in proptest::collection::vec(header_value(), 0..4),
        scoped_route in any::<bool>(),
    ) {
        let s = shared();
        // Bytes no HTTP stack can carry as a header value are left out.
        let values: Vec<HeaderValue> =
            values.iter().filter_map(|v| HeaderValue::from_bytes(v).ok()).collect();
        let (method, path) = if scoped_route {
            (Method::POST, "/v1/translate")
        } else {
            (Method::GET, "/whoami")
        };
        let mut request = Request::builder().method(method).uri(path);
        for value in &values {
            request = request.header(AUTHORIZATION, value.clone());
        }
        let request = request.body(Body::empty()).unwrap();
        let reply = s.runtime.block_on(s.fx.send(request));
        prop_assert!(
            matches!(
                reply.status,
                StatusCode::OK
                    | StatusCode::BAD_REQUEST
                    | StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
            ),
            "{:?}",
            reply
        );
        if values.len() > 1 {
            prop_assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        }
        if reply.status == StatusCode::OK {
            prop_assert_eq!(values.len(), 1);
            prop_assert!(!scoped_route);
        }
    }
}
