//! The identity the layer hands to handlers: the key owner's `Caller`, one
//! verifier call per key however many routes and requests ask, a spoofed
//! `Caller` extension replaced or refused, and keys of the store's own format.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, StatusCode};
use tower_api_key::KeyFormat;
use tower_api_key::Reason;
use tower_api_key::ScopeSet;
use tower_api_key::{Caller, KeyStore};

use common::http::{
    app, assert_forbidden, assert_unauthorized, get_whoami, mallory, request_with_key,
    whoami_with_key, Fixture, BROAD, NARROW, OTHER,
};

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
// Spoofing.

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
// Key formats.

#[tokio::test]
async fn an_authenticator_over_a_store_accepts_the_store_key_format() {
    use tower::ServiceExt;
    use tower_api_key::store::NewKey;
    use tower_api_key::Authenticator;
    use tower_api_key::MemoryStore;

    let store = MemoryStore::builder()
        .format(KeyFormat::new("acme").unwrap())
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
