//! What a rejection looks like: the default JSON bodies, a custom responder
//! that keeps the mandatory headers, and gRPC statuses for gRPC requests.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use axum::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower_api_key::KeyFormat;
use tower_api_key::Reason;
use tower_api_key::Rejection;

use common::http::{
    api_key, app, assert_unauthorized, get_whoami, request_with_key, with_bad_checksum, Fixture,
    CHALLENGE, NARROW, OTHER,
};
use common::Reply;

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

/// The layer answers in its inner service's own body type: a rejection's
/// bytes are the same whichever type that is, and an admitted request's
/// body is the inner service's, untouched.
#[tokio::test]
async fn every_body_type_carries_the_same_rejection_and_the_inner_body() {
    use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
    use http_body_util::{BodyExt, Full};
    use tower::{service_fn, Layer, ServiceExt};
    use tower_api_key::auth::{RejectionBody, ResponseBody};

    type Io = std::io::Error;

    /// The status and the whole body of one request, with or without the key.
    async fn answer<B>(make: fn() -> B, secret: Option<&str>, fx: &Fixture) -> (StatusCode, Bytes)
    where
        B: RejectionBody + http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Debug,
    {
        let service = fx
            .auth
            .any_valid_key()
            .layer(service_fn(move |_: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(Response::new(make()))
            }));
        let mut request = Request::get("/whoami");
        if let Some(secret) = secret {
            request = request.header(AUTHORIZATION, format!("Api-Key {secret}"));
        }
        let response = service.oneshot(request.body(()).unwrap()).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }
    fn hello() -> Full<Bytes> {
        Full::new(Bytes::from_static(b"hello"))
    }

    let fx = Fixture::new();
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();
    let (_, expected) = answer(hello, None, &fx).await;
    assert!(
        expected.starts_with(b"{\"error\":\"unauthenticated\""),
        "{expected:?}"
    );

    macro_rules! check {
        ($label:literal, $make:expr) => {
            let refused = answer($make, None, &fx).await;
            assert_eq!(
                refused,
                (StatusCode::UNAUTHORIZED, expected.clone()),
                $label
            );
            let admitted = answer($make, Some(secret), &fx).await;
            assert_eq!(
                admitted,
                (StatusCode::OK, Bytes::from_static(b"hello")),
                $label
            );
        };
    }
    check!("Full", hello);
    check!("String", || String::from("hello"));
    check!("axum", || axum::body::Body::from("hello"));
    check!("ResponseBody", || ResponseBody::new(hello()));
    check!("BoxBody", || -> BoxBody<Bytes, Io> {
        hello().map_err(|never| match never {}).boxed()
    });
    check!("UnsyncBoxBody", || -> UnsyncBoxBody<Bytes, Io> {
        hello().map_err(|never| match never {}).boxed_unsync()
    });

    // `Bytes` is not an HTTP body, but a service may answer it (tests do).
    let bytes = fx
        .auth
        .any_valid_key()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Bytes::from_static(b"hello")))
        }));
    let refused = bytes
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(refused.into_body(), expected);
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
