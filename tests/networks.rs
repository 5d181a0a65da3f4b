//! Keys with allowed networks, through a real axum `Router` in process: the
//! client address from the peer, from trusted proxies' headers, or from the
//! application; the refusal (403 `network_not_allowed`, gRPC 7), its log
//! and its metric; and the failed-attempt limiter using the same address.

mod common;

use common::logs::Logs;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_api_key::auth::{ClientIp, FailedAttemptLimit, ForwardedHeader};
use tower_api_key::{
    Authenticator, AuthenticatorBuilder, Caller, KeyFormat, KeyRecord, Networks, PresentedKey,
    Reason, Rejection, VerifierError,
};

/// An authenticator whose verifier admits every well-formed key, with
/// `networks` on it, configured further by `configure`.
fn auth(
    networks: Option<&[&str]>,
    configure: impl FnOnce(AuthenticatorBuilder) -> AuthenticatorBuilder,
) -> Authenticator {
    let networks = networks.map(|n| Networks::parse(n).unwrap());
    let builder = Authenticator::verifier_builder(move |key: PresentedKey| {
        let networks = networks.clone();
        async move {
            Ok::<_, VerifierError>(Some(
                KeyRecord::new(key.id(), "sa-1").with_allowed_networks(networks),
            ))
        }
    });
    configure(builder).build()
}

fn router(auth: &Authenticator) -> Router {
    Router::new().route(
        "/whoami",
        get(|caller: Caller| async move { caller.key_id().to_string() })
            .route_layer(auth.any_valid_key()),
    )
}

fn key() -> String {
    KeyFormat::default()
        .generate()
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// `GET /whoami` with `key`, from `peer` (none: no `ConnectInfo`), with
/// these `X-Forwarded-For` lines.
fn request(key: &str, peer: Option<&str>, xff: &[&str]) -> Request<Body> {
    let mut builder = Request::get("/whoami").header("authorization", format!("Api-Key {key}"));
    for line in xff {
        builder = builder.header("x-forwarded-for", *line);
    }
    let mut request = builder.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 40_000)));
    }
    request
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Option<Rejection>, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let rejection = response.extensions().get::<Rejection>().cloned();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (
        status,
        rejection,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn assert_not_allowed(reply: &(StatusCode, Option<Rejection>, String), client: Option<&str>) {
    assert_eq!(reply.0, StatusCode::FORBIDDEN, "{reply:?}");
    let rejection = reply.1.as_ref().expect("a rejection");
    assert_eq!(rejection.reason(), Reason::NetworkNotAllowed);
    assert_eq!(rejection.client_ip(), client.map(|c| c.parse().unwrap()));
    assert!(reply.2.contains("\"network_not_allowed\""), "{}", reply.2);
}

#[tokio::test]
async fn a_key_is_admitted_from_its_networks_only() {
    let auth = auth(Some(&["10.0.0.0/8", "2001:db8::/32"]), |b| b);
    let app = router(&auth);
    let key = key();
    for inside in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8::7"] {
        let reply = send(&app, request(&key, Some(inside), &[])).await;
        assert_eq!(reply.0, StatusCode::OK, "{inside}: {reply:?}");
    }
    let reply = send(&app, request(&key, Some("127.0.0.1"), &[])).await;
    assert_not_allowed(&reply, Some("127.0.0.1"));
    // No address at all: refused, never admitted.
    let reply = send(&app, request(&key, None, &[])).await;
    assert_not_allowed(&reply, None);
}

#[tokio::test]
async fn a_key_without_networks_needs_no_address() {
    let auth = auth(None, |b| b);
    let reply = send(&router(&auth), request(&key(), None, &[])).await;
    assert_eq!(reply.0, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let key = key();
    let untrusting = router(&auth(Some(&["10.0.0.0/8"]), |b| b));
    let reply = send(&untrusting, request(&key, Some("127.0.0.1"), &["10.1.2.3"])).await;
    assert_not_allowed(&reply, Some("127.0.0.1"));

    let trusting = router(&auth(Some(&["10.0.0.0/8"]), |b| {
        b.trusted_proxies(["127.0.0.1/32".parse().unwrap()])
    }));
    let reply = send(&trusting, request(&key, Some("127.0.0.1"), &["10.1.2.3"])).await;
    assert_eq!(reply.0, StatusCode::OK, "{reply:?}");
    // A forged leftmost entry does not help: the proxy appended the real one.
    let reply = send(
        &trusting,
        request(&key, Some("127.0.0.1"), &["10.1.2.3, 203.0.113.9"]),
    )
    .await;
    assert_not_allowed(&reply, Some("203.0.113.9"));
    // A peer that is not a trusted proxy is the client, whatever it says.
    let reply = send(&trusting, request(&key, Some("192.0.2.1"), &["10.1.2.3"])).await;
    assert_not_allowed(&reply, Some("192.0.2.1"));
}

#[tokio::test]
async fn an_address_the_application_resolved_is_used() {
    let auth = auth(Some(&["198.51.100.0/24"]), |b| {
        b.forwarded_header(ForwardedHeader::XRealIp)
    });
    let app = router(&auth);
    let key = key();
    let mut req = request(&key, Some("127.0.0.1"), &[]);
    req.extensions_mut()
        .insert(ClientIp("198.51.100.7".parse::<IpAddr>().unwrap()));
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn grpc_requests_get_permission_denied() {
    let auth = auth(Some(&["10.0.0.0/8"]), |b| b);
    let mut req = request(&key(), Some("127.0.0.1"), &[]);
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let response = router(&auth).oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "7");
}

/// The limiter tells clients apart by the same address: behind a trusted
/// proxy, one client's failures do not block another's.
#[tokio::test(start_paused = true)]
async fn the_failed_attempt_limiter_uses_the_same_address() {
    let auth = Authenticator::verifier_builder(|_key: PresentedKey| async {
        Ok::<Option<KeyRecord>, VerifierError>(None)
    })
    .failed_attempt_limit(FailedAttemptLimit::new(2, Duration::from_secs(60)))
    .trusted_proxies(["127.0.0.1/32".parse().unwrap()])
    .build();
    let app = router(&auth);
    for _ in 0..2 {
        let reply = send(&app, request(&key(), Some("127.0.0.1"), &["203.0.113.1"])).await;
        assert_eq!(reply.0, StatusCode::UNAUTHORIZED);
    }
    let reply = send(&app, request(&key(), Some("127.0.0.1"), &["203.0.113.1"])).await;
    assert_eq!(
        reply.0,
        StatusCode::TOO_MANY_REQUESTS,
        "client 1 is blocked"
    );
    let reply = send(&app, request(&key(), Some("127.0.0.1"), &["203.0.113.2"])).await;
    assert_eq!(
        reply.0,
        StatusCode::UNAUTHORIZED,
        "client 2, behind the same proxy, is not"
    );
}

// Current-thread runtime: the thread-local subscriber sees every event.
#[tokio::test]
async fn a_refusal_is_logged_with_the_key_id_and_the_address_never_the_secret() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);

    let auth = auth(Some(&["10.0.0.0/8"]), |b| b);
    let key = key();
    let id = auth.key_format().parse(&key).unwrap().id();
    let reply = send(&router(&auth), request(&key, Some("192.0.2.44"), &[])).await;
    assert_eq!(reply.0, StatusCode::FORBIDDEN);
    let text = logs.text();
    assert!(text.contains("network_not_allowed"), "{text}");
    assert!(text.contains(&id.to_string()), "{text}");
    assert!(text.contains("192.0.2.44"), "{text}");
    assert!(!text.contains(&key), "no secret in logs: {text}");
}

fn log_from_a_shared_call_site() {
    tracing::info!("shared call site");
}

// The capture must not depend on which thread hits a call site first: the
// other tests of this binary run on threads of their own.
#[test]
fn the_log_capture_sees_a_call_site_another_thread_hit_first() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    std::thread::spawn(log_from_a_shared_call_site)
        .join()
        .unwrap();
    assert_eq!(logs.text(), "", "another thread's events are not captured");
    log_from_a_shared_call_site();
    assert!(logs.text().contains("shared call site"), "{}", logs.text());
}
