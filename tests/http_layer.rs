//! The middleware through a real axum `Router`, in process (`oneshot`).
//!
//! Every rejection that needs no lookup is checked to make zero verifier
//! calls; failure messages never print a whole key (see `support::Reply`).

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ORIGIN, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower_api_key::Reason;
use tower_api_key::Rejection;
use tower_api_key::ScopeSet;
use tower_api_key::{Caller, KeyRecord, KeyStore};
use tower_api_key::{KeyFormat, KeyId};

use support::{
    api_key, app, assert_forbidden, assert_same_response, assert_unauthorized, Fixture, Reply,
    BROAD, CHALLENGE, NARROW, NARROW_PREFIX, OTHER, X_API_KEY,
};

fn get_whoami() -> http::request::Builder {
    Request::get("/whoami")
}

fn whoami_with(value: HeaderValue) -> Request<Body> {
    get_whoami()
        .header(AUTHORIZATION, value)
        .body(Body::empty())
        .unwrap()
}

fn whoami_with_key(key: &str) -> Request<Body> {
    whoami_with(api_key(key))
}

fn request_with_key(method: Method, path: &str, key: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(AUTHORIZATION, api_key(key))
        .body(Body::empty())
        .unwrap()
}

/// `key` with its last character changed: the checksum no longer matches.
fn with_bad_checksum(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

// ---------------------------------------------------------------------------
// The identity reaches the handler.

#[tokio::test]
async fn the_identity_reaches_the_handler_and_the_header_is_sensitive() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-translator", &[NARROW, OTHER]).await;

    let reply = app
        .send(request_with_key(
            Method::POST,
            "/v1/translate",
            key.key.expose_secret(),
        ))
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.body,
        format!("sa-translator {}", key.record.key_id),
        "the Caller extractor gives the handler the key's identity"
    );
    assert!(reply.rejection.is_none());
    let seen = app.only_seen();
    let caller = seen.caller.expect("the handler got a Caller");
    assert_eq!(caller.service_account_id(), "sa-translator");
    assert_eq!(caller.key_id(), key.record.key_id);
    assert_eq!(caller.scopes(), &ScopeSet::new([NARROW, OTHER]).unwrap());
    assert_eq!(caller.expires_at(), None);
    assert_eq!(
        seen.authorization_sensitive,
        Some(true),
        "Authorization must be marked sensitive before the inner service sees it"
    );
    assert_eq!(fx.calls(), 1);
}

#[tokio::test]
async fn a_route_without_the_layer_has_no_caller() {
    let router = Router::new()
        .route(
            "/forgot",
            get(|caller: Caller| async move { caller.key_id().to_string() }),
        )
        .route(
            "/optional",
            get(|caller: Option<Caller>| async move { format!("{}", caller.is_some()) }),
        );

    let forgot = support::send(
        &router,
        Request::get("/forgot").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        forgot.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{forgot:?}"
    );
    assert!(
        String::from_utf8_lossy(&forgot.body).contains("AuthLayer"),
        "the MissingCaller body says what is misconfigured: {forgot:?}"
    );
    let optional = support::send(
        &router,
        Request::get("/optional").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(optional.status, StatusCode::OK);
    assert_eq!(optional.body, "false");
}

#[tokio::test]
async fn all_routes_share_one_cache() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    for (method, path) in [
        (Method::GET, "/whoami"),
        (Method::GET, "/v1/legacy"),
        (Method::GET, "/v1/cors"),
        (Method::GET, "/whoami"),
    ] {
        let reply = app.send(request_with_key(method, path, secret)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
    }
    assert_eq!(
        fx.calls(),
        1,
        "one verifier call for one key, whatever the route"
    );
    assert_eq!(app.seen().len(), 4);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_for_one_key_make_one_verifier_call() {
    use std::sync::atomic::Ordering;

    const REQUESTS: usize = 8;
    let fx = Fixture::new();
    let app = std::sync::Arc::new(app(&fx.auth));
    let key = fx.key("sa-a", &[]).await;
    fx.control.gated.store(true, Ordering::SeqCst);

    let tasks: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let app = app.clone();
            let request = whoami_with_key(key.key.expose_secret());
            tokio::spawn(async move { app.send(request).await.status })
        })
        .collect();
    // On this single-threaded runtime each yield lets every spawned task run
    // once: the first enters the verifier and blocks on the gate, the others
    // queue up behind it in the cache.
    while fx.calls() == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..REQUESTS {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        fx.calls(),
        1,
        "a second verifier call started while the first was in flight"
    );
    assert!(
        tasks.iter().all(|task| !task.is_finished()),
        "every request is still waiting for the one lookup"
    );
    // Enough permits for every request, so a missing coalescing shows up as
    // extra calls rather than as a hang.
    fx.control.gate.add_permits(REQUESTS);
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        fx.calls(),
        1,
        "concurrent misses for one key share one verifier call"
    );
    assert_eq!(app.seen().len(), REQUESTS);
}

// ---------------------------------------------------------------------------
// Extraction: rejections that need no lookup.

#[tokio::test]
async fn no_header_is_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let reply = app.send(get_whoami().body(Body::empty()).unwrap()).await;

    assert_unauthorized(&reply, Reason::Missing);
    assert_eq!(reply.rejection.as_ref().unwrap().key_id(), None);
    assert_eq!(fx.calls(), 0);
    assert!(app.seen().is_empty(), "the handler must not run");
}

#[tokio::test]
async fn wrong_scheme_is_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    for (label, value) in [
        ("bearer with a valid key", format!("Bearer {secret}")),
        ("basic", "Basic dXNlcjpwYXNz".to_owned()),
        ("scheme glued to the key", format!("Api-Key{secret}")),
        ("apikey without dash", format!("ApiKey {secret}")),
        ("bare key", secret.to_owned()),
        ("empty value", String::new()),
    ] {
        let reply = app
            .send(whoami_with(HeaderValue::from_str(&value).unwrap()))
            .await;
        assert_unauthorized(&reply, Reason::WrongScheme);
        assert!(
            !reply.contains(secret),
            "{label}: key material in the response"
        );
        assert_eq!(fx.calls(), 0, "{label}: no lookup for a wrong scheme");
    }
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    for scheme in ["Api-Key", "api-key", "API-KEY", "aPi-kEy"] {
        let value = HeaderValue::from_str(&format!("{scheme} {secret}")).unwrap();
        let reply = app.send(whoami_with(value)).await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {reply:?}");
    }
    // Extra blanks around the key are tolerated, too.
    let value = HeaderValue::from_str(&format!("api-key \t {secret}  ")).unwrap();
    assert_eq!(app.send(whoami_with(value)).await.status, StatusCode::OK);
    assert_eq!(fx.calls(), 1, "every spelling is the same key: one lookup");
    assert_eq!(app.seen().len(), 5);
}

#[tokio::test]
async fn two_authorization_headers_are_400_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let other = fx.key("sa-b", &[]).await;
    let secret = key.key.expose_secret();

    for (label, second) in [
        ("the same key twice", api_key(secret)),
        (
            "two different valid keys",
            api_key(other.key.expose_secret()),
        ),
        (
            "a valid key and garbage",
            HeaderValue::from_static("Api-Key nope"),
        ),
        (
            "a valid key and another scheme",
            HeaderValue::from_static("Bearer x"),
        ),
    ] {
        let request = get_whoami()
            .header(AUTHORIZATION, api_key(secret))
            .header(AUTHORIZATION, second)
            .body(Body::empty())
            .unwrap();
        let reply = app.send(request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{label}: {reply:?}");
        assert_eq!(
            reply.reason(),
            Some(Reason::DuplicateCredentials),
            "{label}"
        );
        assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{label}");
        assert!(
            !reply.contains(secret),
            "{label}: key material in the response"
        );
        assert_eq!(fx.calls(), 0, "{label}: never 'first one wins'");
    }
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn an_empty_key_is_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    for value in ["Api-Key", "Api-Key ", "Api-Key    ", "api-key\t\t"] {
        let reply = app.send(whoami_with(HeaderValue::from_static(value))).await;
        assert_unauthorized(&reply, Reason::Malformed);
        assert_eq!(fx.calls(), 0, "{value:?}");
    }
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn a_64_kib_header_is_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    let junk = "A".repeat(64 * 1024);
    for (label, value) in [
        ("64 KiB of key characters", format!("Api-Key {junk}")),
        (
            "a valid key followed by 64 KiB",
            format!("Api-Key {secret}{junk}"),
        ),
        (
            "a valid key padded with 64 KiB of blanks",
            format!("Api-Key {secret}{}", " ".repeat(64 * 1024)),
        ),
    ] {
        let reply = app
            .send(whoami_with(HeaderValue::from_str(&value).unwrap()))
            .await;
        assert_unauthorized(&reply, Reason::Malformed);
        assert!(
            reply.body.len() < 1024,
            "{label}: the body does not echo the header"
        );
        assert_eq!(fx.calls(), 0, "{label}");
    }
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn non_utf8_bytes_are_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    // A valid key with one character replaced by an obs-text byte.
    let mut one_byte_off = b"Api-Key ".to_vec();
    one_byte_off.extend_from_slice(secret.as_bytes());
    let at = one_byte_off.len() - 10;
    one_byte_off[at] = 0xE9;
    let mut all_high = b"Api-Key ".to_vec();
    all_high.extend(std::iter::repeat_n(0xFFu8, secret.len()));

    for (label, bytes, reason) in [
        (
            "one obs-text byte in a valid key",
            one_byte_off,
            Reason::Malformed,
        ),
        ("only high bytes", all_high, Reason::Malformed),
        (
            "obs-text in the scheme",
            b"Api-K\xe9y abc".to_vec(),
            Reason::WrongScheme,
        ),
    ] {
        let value = HeaderValue::from_bytes(&bytes).unwrap();
        let reply = app.send(whoami_with(value)).await;
        assert_unauthorized(&reply, reason);
        assert_eq!(fx.calls(), 0, "{label}");
    }
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn bad_checksum_and_wrong_prefix_are_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();
    let other_issuer = KeyFormat::new("yc").unwrap().generate().unwrap();
    assert!(secret.starts_with("tak_"));

    for (label, candidate) in [
        ("bad checksum", with_bad_checksum(secret)),
        ("same length, other prefix", format!("xyz{}", &secret[3..])),
        (
            "another issuer's well-formed key",
            other_issuer.expose_secret().to_owned(),
        ),
        ("truncated", secret[..secret.len() - 1].to_owned()),
        ("made up", "tak_not-a-key".to_owned()),
    ] {
        let reply = app.send(whoami_with_key(&candidate)).await;
        assert_unauthorized(&reply, Reason::Malformed);
        assert_eq!(reply.rejection.as_ref().unwrap().key_id(), None, "{label}");
        assert_eq!(fx.calls(), 0, "{label}: rejected offline");
    }
    assert!(app.seen().is_empty());
}

// ---------------------------------------------------------------------------
// Unknown, revoked and expired keys: one 401 for all, told apart only in
// the response's extensions.

#[tokio::test]
async fn every_401_is_byte_identical() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let revoked = fx.key("sa-a", &[]).await;
    let expired = fx.expiring_key("sa-a", Duration::from_secs(10)).await;
    let unknown = KeyFormat::default().generate().unwrap();
    // Both worked (and are cached) before they stopped working.
    for key in [&revoked, &expired] {
        let reply = app.send(whoami_with_key(key.key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert!(fx.store.revoke(revoked.record.key_id).await.unwrap());
    fx.clock.advance(Duration::from_secs(10));

    let cases: Vec<(&str, Option<HeaderValue>, Reason, Option<KeyId>)> = vec![
        ("missing", None, Reason::Missing, None),
        (
            "wrong scheme",
            Some(HeaderValue::from_static("Bearer abc")),
            Reason::WrongScheme,
            None,
        ),
        (
            "malformed",
            Some(api_key(&with_bad_checksum(revoked.key.expose_secret()))),
            Reason::Malformed,
            None,
        ),
        (
            "unknown",
            Some(api_key(unknown.expose_secret())),
            Reason::Unknown,
            Some(unknown.id()),
        ),
        (
            "revoked",
            Some(api_key(revoked.key.expose_secret())),
            Reason::Unknown,
            Some(revoked.record.key_id),
        ),
        (
            "expired",
            Some(api_key(expired.key.expose_secret())),
            Reason::Expired,
            Some(expired.record.key_id),
        ),
    ];
    let mut replies: Vec<Reply> = Vec::new();
    for (label, value, reason, key_id) in cases {
        let mut request = get_whoami();
        if let Some(value) = value {
            request = request.header(AUTHORIZATION, value);
        }
        let reply = app.send(request.body(Body::empty()).unwrap()).await;
        assert_unauthorized(&reply, reason);
        assert_eq!(
            reply.rejection.as_ref().unwrap().key_id(),
            key_id,
            "{label}"
        );
        for key in [&revoked, &expired] {
            assert!(
                !reply.contains(key.key.expose_secret()),
                "{label}: key material"
            );
        }
        if let Some(first) = replies.first() {
            assert_same_response(first, &reply, &[]);
        }
        replies.push(reply);
    }
    assert_eq!(
        app.seen().len(),
        2,
        "only the two requests before revoke and expiry ran"
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_as_soon_as_revoke_returns() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.calls(), 1, "the second request was a cache hit");

    assert!(fx.store.revoke(key.record.key_id).await.unwrap());
    let reply = app.send(whoami_with_key(secret)).await;
    assert_unauthorized(&reply, Reason::Unknown);
    assert_eq!(
        fx.calls(),
        2,
        "the revocation reached the cache and forced a lookup"
    );
}

#[tokio::test]
async fn a_reissued_key_replaces_the_old_secret() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    assert_eq!(
        app.send(whoami_with_key(key.key.expose_secret()))
            .await
            .status,
        StatusCode::OK
    );

    let reissued = fx
        .store
        .reissue(key.record.key_id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let old = app.send(whoami_with_key(key.key.expose_secret())).await;
    assert_unauthorized(&old, Reason::Unknown);
    let new = app
        .send(whoami_with_key(reissued.key.expose_secret()))
        .await;
    assert_eq!(new.status, StatusCode::OK, "{new:?}");
    assert_eq!(
        app.seen()[1].caller.as_ref().unwrap().key_id(),
        key.record.key_id
    );
}

#[tokio::test]
async fn expiry_is_checked_on_every_request_even_from_the_cache() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.expiring_key("sa-a", Duration::from_secs(10)).await;
    let secret = key.key.expose_secret();

    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    fx.clock.advance(Duration::from_millis(9_999));
    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    fx.clock.advance(Duration::from_millis(1));
    let reply = app.send(whoami_with_key(secret)).await;
    assert_unauthorized(&reply, Reason::Expired);
    assert_eq!(
        fx.calls(),
        1,
        "expiry came from the clock, not from a new lookup"
    );
    assert_eq!(app.seen().len(), 2);
}

// ---------------------------------------------------------------------------
// The scope table, one test per cell, through real routes.
// `/v1/translate` requires NARROW or BROAD; `/v1/legacy` declares no scopes;
// `/whoami` admits any valid key.

async fn call_route(scopes: &[&str], method: Method, path: &str) -> (Fixture, Reply, usize) {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", scopes).await;
    let reply = app
        .send(request_with_key(method, path, key.key.expose_secret()))
        .await;
    assert!(
        !reply.contains(key.key.expose_secret()),
        "key material in the response"
    );
    let runs = app.seen().len();
    (fx, reply, runs)
}

#[tokio::test]
async fn require_any_allows_a_key_with_the_narrow_scope() {
    let (_fx, reply, runs) = call_route(&[NARROW], Method::POST, "/v1/translate").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn require_any_allows_a_key_with_the_broad_scope() {
    let (_fx, reply, runs) = call_route(&[BROAD, OTHER], Method::POST, "/v1/translate").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn require_any_refuses_a_scoped_key_without_a_required_scope() {
    let (fx, reply, runs) = call_route(&[OTHER], Method::POST, "/v1/translate").await;
    assert_forbidden(&reply, Reason::InsufficientScope, &[NARROW, BROAD]);
    assert_eq!(runs, 0, "the handler must not run");
    assert_eq!(fx.calls(), 1);
}

#[tokio::test]
async fn require_any_compares_scopes_exactly() {
    let (_fx, reply, runs) = call_route(&[NARROW_PREFIX], Method::POST, "/v1/translate").await;
    assert_forbidden(&reply, Reason::InsufficientScope, &[NARROW, BROAD]);
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn require_any_refuses_an_unscoped_key() {
    let (_fx, reply, runs) = call_route(&[], Method::POST, "/v1/translate").await;
    assert_forbidden(&reply, Reason::InsufficientScope, &[NARROW, BROAD]);
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn unscoped_route_refuses_a_scoped_key() {
    let (_fx, reply, runs) = call_route(&[NARROW], Method::GET, "/v1/legacy").await;
    assert_forbidden(&reply, Reason::ScopedKeyOnUnscopedRoute, &[]);
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn unscoped_route_allows_an_unscoped_key() {
    let (_fx, reply, runs) = call_route(&[], Method::GET, "/v1/legacy").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn any_valid_key_allows_a_scoped_key_holding_a_route_scope() {
    let (_fx, reply, runs) = call_route(&[NARROW], Method::GET, "/whoami").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn any_valid_key_allows_a_scoped_key_with_unrelated_scopes() {
    let (_fx, reply, runs) = call_route(&[OTHER], Method::GET, "/whoami").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn any_valid_key_allows_an_unscoped_key() {
    let (_fx, reply, runs) = call_route(&[], Method::GET, "/whoami").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(runs, 1);
}

// ---------------------------------------------------------------------------
// Verifier failures.

#[tokio::test]
async fn a_failing_verifier_is_503_and_is_not_cached() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    fx.control
        .fail_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = app.send(whoami_with_key(secret)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.reason(), Some(Reason::Unavailable));
    assert_eq!(reply.header(RETRY_AFTER), "1");
    assert_eq!(reply.header(CACHE_CONTROL), "no-store");
    assert_eq!(
        reply.rejection.as_ref().unwrap().retry_after(),
        Some(Duration::from_secs(1))
    );
    assert!(!reply.contains(secret), "key material in the response");
    assert_eq!(fx.calls(), 1);
    assert!(app.seen().is_empty());

    // The failure was not cached: the next request asks again and passes.
    let reply = app.send(whoami_with_key(secret)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(fx.calls(), 2);
    // And the success is cached.
    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.calls(), 2);
}

#[tokio::test]
async fn a_closure_verifier_that_fails_once_gives_503_then_200() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower_api_key::PresentedKey;
    use tower_api_key::{Authenticator, VerifierError};

    let format = KeyFormat::default();
    let known = format.generate().unwrap();
    let known_id = known.id();
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    let auth = Authenticator::new(move |key: PresentedKey| {
        let down = flag.swap(false, Ordering::SeqCst);
        async move {
            if down {
                Err(VerifierError::backend("remote key service unreachable"))
            } else if key.id() == known_id {
                Ok(Some(KeyRecord::new(key.id(), "sa-remote")))
            } else {
                Ok(None)
            }
        }
    });
    let app = app(&auth);

    let first = app.send(whoami_with_key(known.expose_secret())).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{first:?}");
    assert!(first.headers.contains_key(RETRY_AFTER));
    assert!(!down.load(Ordering::SeqCst));
    let second = app.send(whoami_with_key(known.expose_secret())).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(second.body, format!("sa-remote {known_id}"));
}

#[tokio::test]
async fn a_panicking_verifier_is_500_and_the_next_request_works() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    fx.control
        .panic_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = app.send(whoami_with_key(secret)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert_eq!(reply.reason(), Some(Reason::VerifierPanicked));
    assert_eq!(reply.header(CACHE_CONTROL), "no-store");
    assert!(!reply.contains(secret), "key material in the response");
    assert!(app.seen().is_empty());

    let reply = app.send(whoami_with_key(secret)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(fx.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_verifier_timeout_is_503_and_the_next_request_works() {
    let fx = Fixture::with(|auth| auth.verifier_timeout(Some(Duration::from_secs(2))));
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    fx.control
        .hang_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let reply = app.send(whoami_with_key(secret)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.reason(), Some(Reason::Unavailable));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "paused time jumped to the timeout"
    );

    let reply = app.send(whoami_with_key(secret)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(fx.calls(), 2);
}

// ---------------------------------------------------------------------------
// Spoofing.

fn mallory() -> Caller {
    Caller::from(
        KeyRecord::new(KeyId::random().unwrap(), "sa-mallory")
            .with_scopes(ScopeSet::new([NARROW, BROAD]).unwrap()),
    )
}

#[tokio::test]
async fn a_spoofed_identity_is_replaced_by_the_key_owner() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;

    let mut request = whoami_with_key(key.key.expose_secret());
    request.extensions_mut().insert(mallory());
    let reply = app.send(request).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let caller = app.only_seen().caller.unwrap();
    assert_eq!(caller.service_account_id(), "sa-a");
    assert_eq!(caller.key_id(), key.record.key_id);
    assert!(caller.scopes().is_empty());
}

#[tokio::test]
async fn a_spoofed_identity_lends_no_scopes() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;

    let mut request = request_with_key(Method::POST, "/v1/translate", key.key.expose_secret());
    request.extensions_mut().insert(mallory());
    let reply = app.send(request).await;

    assert_forbidden(&reply, Reason::InsufficientScope, &[NARROW, BROAD]);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn a_spoofed_identity_without_a_key_is_401_and_the_handler_never_runs() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let mut request = get_whoami().body(Body::empty()).unwrap();
    request.extensions_mut().insert(mallory());
    let reply = app.send(request).await;

    assert_unauthorized(&reply, Reason::Missing);
    assert!(app.seen().is_empty(), "the handler must not run");
    assert_eq!(fx.calls(), 0);
}

// ---------------------------------------------------------------------------
// CORS preflight.

fn preflight() -> http::request::Builder {
    Request::options("/v1/cors")
        .header(ORIGIN, "https://console.example")
        .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
}

#[tokio::test]
async fn preflight_passes_unauthenticated_only_when_enabled() {
    let fx = Fixture::with(|auth| auth.cors_preflight(true));
    let app = app(&fx.auth);

    let reply = app.send(preflight().body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, "anonymous");
    let seen = app.only_seen();
    assert_eq!(seen.path, "OPTIONS /v1/cors");
    assert!(seen.caller.is_none(), "a preflight is not authenticated");
    assert_eq!(fx.calls(), 0);
}

#[tokio::test]
async fn preflight_is_401_when_disabled() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let reply = app.send(preflight().body(Body::empty()).unwrap()).await;
    assert_unauthorized(&reply, Reason::Missing);
    assert!(app.seen().is_empty());
    assert_eq!(fx.calls(), 0);
}

#[tokio::test]
async fn only_a_real_preflight_passes_when_enabled() {
    let fx = Fixture::with(|auth| auth.cors_preflight(true));
    let app = app(&fx.auth);

    // A plain OPTIONS without Access-Control-Request-Method.
    let plain = Request::options("/v1/cors")
        .header(ORIGIN, "https://console.example")
        .body(Body::empty())
        .unwrap();
    assert_unauthorized(&app.send(plain).await, Reason::Missing);
    // The preflight header on another method.
    let get = Request::get("/v1/cors")
        .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .body(Body::empty())
        .unwrap();
    assert_unauthorized(&app.send(get).await, Reason::Missing);
    assert!(app.seen().is_empty());
    assert_eq!(fx.calls(), 0);
}

#[tokio::test]
async fn a_preflight_drops_a_spoofed_identity() {
    let fx = Fixture::with(|auth| auth.cors_preflight(true));
    let app = app(&fx.auth);

    let mut request = preflight().body(Body::empty()).unwrap();
    request.extensions_mut().insert(mallory());
    let reply = app.send(request).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(
        app.only_seen().caller.is_none(),
        "the spoofed Caller reached the handler"
    );
}

// ---------------------------------------------------------------------------
// The extra credential header.

#[tokio::test]
async fn the_extra_header_takes_the_bare_key_and_is_marked_sensitive() {
    let fx = Fixture::with(|auth| auth.api_key_header(X_API_KEY));
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;

    let request = get_whoami()
        .header(X_API_KEY, key.key.expose_secret())
        .body(Body::empty())
        .unwrap();
    let reply = app.send(request).await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let seen = app.only_seen();
    assert_eq!(seen.caller.unwrap().key_id(), key.record.key_id);
    assert_eq!(seen.x_api_key_sensitive, Some(true));
    assert_eq!(seen.authorization_sensitive, None);

    // Authorization still works with the option on.
    let reply = app.send(whoami_with_key(key.key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test]
async fn both_credential_headers_are_400_without_a_lookup() {
    let fx = Fixture::with(|auth| auth.api_key_header(X_API_KEY));
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    let both = get_whoami()
        .header(AUTHORIZATION, api_key(secret))
        .header(X_API_KEY, secret)
        .body(Body::empty())
        .unwrap();
    let two_extra = get_whoami()
        .header(X_API_KEY, secret)
        .header(X_API_KEY, secret)
        .body(Body::empty())
        .unwrap();
    for (label, request) in [("both headers", both), ("two x-api-key", two_extra)] {
        let reply = app.send(request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{label}: {reply:?}");
        assert_eq!(
            reply.reason(),
            Some(Reason::DuplicateCredentials),
            "{label}"
        );
        assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{label}");
        assert!(
            !reply.contains(secret),
            "{label}: key material in the response"
        );
    }
    assert_eq!(fx.calls(), 0);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn without_an_api_key_header_x_api_key_is_not_read_at_all() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let other = fx.key("sa-b", &[]).await;
    let secret = key.key.expose_secret();

    // Another key there neither conflicts with Authorization...
    let both = get_whoami()
        .header(AUTHORIZATION, api_key(secret))
        .header(X_API_KEY, other.key.expose_secret())
        .body(Body::empty())
        .unwrap();
    let reply = app.send(both).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(app.only_seen().caller.unwrap().key_id(), key.record.key_id);
    // ...nor authenticates on its own.
    let alone = get_whoami()
        .header(X_API_KEY, secret)
        .body(Body::empty())
        .unwrap();
    assert_unauthorized(&app.send(alone).await, Reason::Missing);
}

#[tokio::test]
async fn the_extra_header_holds_a_bare_key_only() {
    let fx = Fixture::with(|auth| auth.api_key_header(X_API_KEY));
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;

    let request = get_whoami()
        .header(X_API_KEY, api_key(key.key.expose_secret()))
        .body(Body::empty())
        .unwrap();
    assert_unauthorized(&app.send(request).await, Reason::Malformed);
    assert_eq!(fx.calls(), 0);
}

#[tokio::test]
async fn the_extra_header_is_ignored_without_the_option() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;

    let request = get_whoami()
        .header(X_API_KEY, key.key.expose_secret())
        .body(Body::empty())
        .unwrap();
    let reply = app.send(request).await;

    assert_unauthorized(&reply, Reason::Missing);
    assert_eq!(fx.calls(), 0);
    assert!(app.seen().is_empty());
}

// ---------------------------------------------------------------------------
// Routing: `route_layer` runs only on matched routes.

#[tokio::test]
async fn an_unknown_route_is_404_not_401() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let reply = app
        .send(Request::get("/nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert!(reply.rejection.is_none());

    // A method the route does not have is 405, not 401.
    let reply = app
        .send(Request::delete("/whoami").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{reply:?}");
    assert_eq!(fx.calls(), 0);
}

#[tokio::test]
async fn an_unknown_route_is_404_with_a_router_wide_route_layer() {
    let fx = Fixture::new();
    let router = Router::new()
        .route(
            "/a",
            get(|caller: Caller| async move { caller.service_account_id().to_owned() }),
        )
        .route("/b", get(|| async { "b" }))
        .route_layer(fx.auth.any_valid_key());
    let key = fx.key("sa-a", &[]).await;

    let nope = support::send(&router, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND, "{nope:?}");
    let nope = support::send(
        &router,
        request_with_key(Method::GET, "/nope", key.key.expose_secret()),
    )
    .await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND, "{nope:?}");
    assert_eq!(fx.calls(), 0, "no lookup for a route that does not exist");

    let anonymous = support::send(&router, Request::get("/b").body(Body::empty()).unwrap()).await;
    assert_unauthorized(&anonymous, Reason::Missing);
    let ok = support::send(
        &router,
        request_with_key(Method::GET, "/a", key.key.expose_secret()),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body, "sa-a");
}

// ---------------------------------------------------------------------------
// Rejection bodies and realm.

#[tokio::test]
async fn a_custom_responder_keeps_the_mandatory_headers() {
    let fx = Fixture::with(|auth| {
        auth.realm("internal").rejection_responder(|r: &Rejection| {
            Response::builder()
                .status(r.status())
                .header(CONTENT_TYPE, "text/plain")
                .body(Bytes::from_static(b"no entry"))
                .unwrap()
        })
    });
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[OTHER]).await;

    let unauthorized = app.send(get_whoami().body(Body::empty()).unwrap()).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.body, "no entry");
    assert_eq!(unauthorized.header(CONTENT_TYPE), "text/plain");
    assert_eq!(unauthorized.header(CACHE_CONTROL), "no-store");
    assert_eq!(
        unauthorized.header(WWW_AUTHENTICATE),
        "Api-Key realm=\"internal\""
    );

    let forbidden = app
        .send(request_with_key(
            Method::POST,
            "/v1/translate",
            key.key.expose_secret(),
        ))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.body, "no entry");
    assert_eq!(forbidden.header(CACHE_CONTROL), "no-store");
    assert!(forbidden
        .header(WWW_AUTHENTICATE)
        .starts_with("Api-Key realm=\"internal\", error=\"insufficient_scope\""));
}

#[tokio::test]
async fn default_bodies_are_short_json() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let reply = app.send(get_whoami().body(Body::empty()).unwrap()).await;
    assert_eq!(reply.header(CONTENT_TYPE), "application/json");
    assert_eq!(reply.header(WWW_AUTHENTICATE), CHALLENGE);
    assert!(
        reply.body.starts_with(b"{\"error\":\"unauthenticated\""),
        "{reply:?}"
    );
}

// ---------------------------------------------------------------------------
// gRPC requests get gRPC statuses.

fn grpc(path: &str, credential: Option<HeaderValue>) -> Request<Body> {
    let mut request = Request::post(path).header(CONTENT_TYPE, "application/grpc");
    if let Some(value) = credential {
        request = request.header(AUTHORIZATION, value);
    }
    request.body(Body::empty()).unwrap()
}

#[track_caller]
fn assert_grpc_status(reply: &Reply, code: &str, reason: Reason, secrets: &[&str]) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "gRPC errors ride on HTTP 200: {reply:?}"
    );
    assert_eq!(reply.header("grpc-status"), code, "{reply:?}");
    assert_eq!(reply.header(CONTENT_TYPE), "application/grpc", "{reply:?}");
    assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{reply:?}");
    assert_eq!(reply.reason(), Some(reason), "{reply:?}");
    assert!(reply.body.is_empty(), "trailers-only: {reply:?}");
    let message = reply.header("grpc-message");
    assert!(!message.is_empty(), "{reply:?}");
    for secret in secrets {
        assert!(!message.contains(secret), "key material in grpc-message");
        assert!(!reply.contains(secret), "key material in the response");
    }
    assert!(!message.contains("tak_"), "key material in grpc-message");
}

#[tokio::test]
async fn grpc_without_a_key_is_unauthenticated() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let reply = app.send(grpc("/v1/translate", None)).await;
    assert_grpc_status(&reply, "16", Reason::Missing, &[]);
    assert_eq!(fx.calls(), 0);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn grpc_rejections_of_bad_keys_are_unauthenticated() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[NARROW]).await;
    let secret = key.key.expose_secret();
    let unknown = KeyFormat::default().generate().unwrap();

    let malformed = app
        .send(grpc(
            "/v1/translate",
            Some(api_key(&with_bad_checksum(secret))),
        ))
        .await;
    assert_grpc_status(&malformed, "16", Reason::Malformed, &[secret]);
    assert_eq!(fx.calls(), 0);

    let duplicate = Request::post("/v1/translate")
        .header(CONTENT_TYPE, "application/grpc+proto")
        .header(AUTHORIZATION, api_key(secret))
        .header(AUTHORIZATION, api_key(secret))
        .body(Body::empty())
        .unwrap();
    let duplicate = app.send(duplicate).await;
    assert_eq!(duplicate.header("grpc-status"), "16", "{duplicate:?}");
    assert_eq!(duplicate.reason(), Some(Reason::DuplicateCredentials));
    assert_eq!(fx.calls(), 0);

    let unknown_reply = app
        .send(grpc(
            "/v1/translate",
            Some(api_key(unknown.expose_secret())),
        ))
        .await;
    assert_grpc_status(
        &unknown_reply,
        "16",
        Reason::Unknown,
        &[unknown.expose_secret()],
    );
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn grpc_scope_failures_are_permission_denied() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let scoped = fx.key("sa-a", &[OTHER]).await;

    let reply = app
        .send(grpc(
            "/v1/translate",
            Some(api_key(scoped.key.expose_secret())),
        ))
        .await;
    assert_grpc_status(
        &reply,
        "7",
        Reason::InsufficientScope,
        &[scoped.key.expose_secret()],
    );
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn grpc_verifier_failures_are_unavailable() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[NARROW]).await;
    let secret = key.key.expose_secret();

    fx.control
        .fail_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = app.send(grpc("/v1/translate", Some(api_key(secret)))).await;
    assert_grpc_status(&reply, "14", Reason::Unavailable, &[secret]);

    let reply = app.send(grpc("/v1/translate", Some(api_key(secret)))).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(
        !reply.headers.contains_key("grpc-status"),
        "the handler answered"
    );
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn grpc_web_is_not_grpc() {
    let fx = Fixture::new();
    let app = app(&fx.auth);

    let request = Request::post("/v1/translate")
        .header(CONTENT_TYPE, "application/grpc-web")
        .body(Body::empty())
        .unwrap();
    let reply = app.send(request).await;
    assert_unauthorized(&reply, Reason::Missing);
    assert!(!reply.headers.contains_key("grpc-status"));
}

#[tokio::test]
async fn an_authenticator_over_a_store_accepts_the_store_key_format() {
    use tower::ServiceExt;
    use tower_api_key::store::NewKey;
    use tower_api_key::Authenticator;
    use tower_api_key::MemoryStore;

    let store = MemoryStore::builder()
        .with_format(KeyFormat::new("acme").unwrap())
        .build();
    let auth = Authenticator::new(store.clone());
    let created = store.create(NewKey::new("sa-acme")).await.unwrap();
    assert!(created.key.expose_secret().starts_with("acme_"));

    let app: Router = Router::new().route(
        "/whoami",
        get(|caller: Caller| async move { caller.service_account_id().to_owned() })
            .route_layer(auth.any_valid_key()),
    );
    let value = format!("Api-Key {}", created.key.expose_secret());
    let request = Request::get("/whoami")
        .header(AUTHORIZATION, HeaderValue::from_str(&value).unwrap())
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
