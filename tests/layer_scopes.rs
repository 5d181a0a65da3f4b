//! The scope table through real routes, one test per cell: `require_any`,
//! `unscoped_keys_only` and `any_valid_key`.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use http::{Method, StatusCode};
use tower_api_key::Reason;

use common::http::{
    app, assert_forbidden, request_with_key, Fixture, BROAD, NARROW, NARROW_PREFIX, OTHER,
};
use common::Reply;

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
