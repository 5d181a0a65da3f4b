//! Where the layer runs: routes without it, unknown routes (404, not 401)
//! and CORS preflight requests.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::{ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
use http::{Method, Request, StatusCode};
use tower_api_key::Caller;
use tower_api_key::Reason;

use common::http::{app, assert_unauthorized, mallory, request_with_key, send, Fixture};

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

    let forgot = send(
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
        String::from_utf8_lossy(&forgot.body).contains("ApiKeyLayer"),
        "the MissingCaller body says what is misconfigured: {forgot:?}"
    );
    let optional = send(
        &router,
        Request::get("/optional").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(optional.status, StatusCode::OK);
    assert_eq!(optional.body, "false");
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

    let nope = send(&router, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND, "{nope:?}");
    let nope = send(
        &router,
        request_with_key(Method::GET, "/nope", key.key.expose_secret()),
    )
    .await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND, "{nope:?}");
    assert_eq!(fx.calls(), 0, "no lookup for a route that does not exist");

    let anonymous = send(&router, Request::get("/b").body(Body::empty()).unwrap()).await;
    assert_unauthorized(&anonymous, Reason::Missing);
    let ok = send(
        &router,
        request_with_key(Method::GET, "/a", key.key.expose_secret()),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body, "sa-a");
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
