//! The middleware over real TCP: `axum::serve` on 127.0.0.1 and hyper-util's
//! HTTP/1 client, so headers go through a real parser and serializer.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, CACHE_CONTROL, DATE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_api_key::KeyFormat;
use tower_api_key::KeyStore;

use common::http::{
    api_key, app, assert_same_response, Fixture, CHALLENGE, NARROW, OTHER, X_API_KEY,
};
use common::Reply;

/// A server on an ephemeral loopback port, stopped on drop.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(router: axum::Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { addr, task, client }
    }

    /// A request to `path` with `headers`, sent over the wire.
    async fn call(&self, method: &str, path: &str, headers: &[(HeaderName, HeaderValue)]) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            // `header` appends, so a name given twice is sent twice.
            request = request.header(name, value.clone());
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
            // Extensions do not cross the wire.
            rejection: None,
        }
    }

    async fn get(&self, path: &str, headers: &[(HeaderName, HeaderValue)]) -> Reply {
        self.call("GET", path, headers).await
    }
}

/// A 401 as a client sees it.
#[track_caller]
fn assert_wire_unauthorized(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(reply.header(WWW_AUTHENTICATE), CHALLENGE, "{reply:?}");
    assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{reply:?}");
}

#[tokio::test]
async fn ok_unauthorized_and_forbidden_over_tcp_with_identical_401s() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let seen = app.seen.clone();
    let server = Server::start(app.router).await;

    let valid = fx.key("sa-a", &[OTHER]).await;
    let revoked = fx.key("sa-a", &[]).await;
    let expired = fx.expiring_key("sa-a", Duration::from_secs(30)).await;
    let unknown = KeyFormat::default().generate().unwrap();

    // 200, with the identity in the body.
    let ok = server
        .get(
            "/whoami",
            &[(AUTHORIZATION, api_key(valid.key.expose_secret()))],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body, format!("sa-a {}", valid.record.key_id));
    assert_eq!(
        seen.lock().unwrap()[0].authorization_sensitive,
        Some(true),
        "a header parsed off the wire is marked sensitive too"
    );

    // 403: a valid key without the route's scope.
    let forbidden = server
        .call(
            "POST",
            "/v1/translate",
            &[(AUTHORIZATION, api_key(valid.key.expose_secret()))],
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "{forbidden:?}");
    assert_eq!(forbidden.header(CACHE_CONTROL), "no-store");
    let challenge = forbidden.header(WWW_AUTHENTICATE);
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains(NARROW),
        "{forbidden:?}"
    );

    // Revoked and expired keys worked first.
    for key in [&revoked, &expired] {
        let reply = server
            .get(
                "/whoami",
                &[(AUTHORIZATION, api_key(key.key.expose_secret()))],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert!(fx.store.revoke(revoked.record.key_id, None).await.unwrap());
    fx.clock.advance(Duration::from_secs(30));
    let calls_before = fx.calls();

    let missing = server.get("/whoami", &[]).await;
    let malformed = server
        .get(
            "/whoami",
            &[(AUTHORIZATION, HeaderValue::from_static("Api-Key tak_nope"))],
        )
        .await;
    assert_eq!(
        fx.calls(),
        calls_before,
        "no lookup for a missing or malformed key"
    );
    let unknown = server
        .get(
            "/whoami",
            &[(AUTHORIZATION, api_key(unknown.expose_secret()))],
        )
        .await;
    let revoked_reply = server
        .get(
            "/whoami",
            &[(AUTHORIZATION, api_key(revoked.key.expose_secret()))],
        )
        .await;
    let expired_reply = server
        .get(
            "/whoami",
            &[(AUTHORIZATION, api_key(expired.key.expose_secret()))],
        )
        .await;

    // Byte-identical apart from `date`, which the server stamps per response.
    let replies = [
        &missing,
        &malformed,
        &unknown,
        &revoked_reply,
        &expired_reply,
    ];
    for reply in replies {
        assert_wire_unauthorized(reply);
        assert!(reply.headers.contains_key("content-length"));
        for key in [&valid, &revoked, &expired] {
            assert!(
                !reply.contains(key.key.expose_secret()),
                "key material on the wire"
            );
        }
        assert_same_response(&missing, reply, &[DATE]);
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "no handler ran for a rejection"
    );

    // An unknown route is 404, not 401.
    let not_found = server.get("/nope", &[]).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND, "{not_found:?}");
}

#[tokio::test]
async fn duplicate_and_extra_credential_headers_over_tcp() {
    let fx = Fixture::with(|auth| auth.api_key_header(X_API_KEY));
    let server = Server::start(app(&fx.auth).router).await;
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();

    let twice = server
        .get(
            "/whoami",
            &[
                (AUTHORIZATION, api_key(secret)),
                (AUTHORIZATION, api_key(secret)),
            ],
        )
        .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{twice:?}");
    let both = server
        .get(
            "/whoami",
            &[
                (AUTHORIZATION, api_key(secret)),
                (X_API_KEY, HeaderValue::from_str(secret).unwrap()),
            ],
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST, "{both:?}");
    for reply in [&twice, &both] {
        assert_eq!(reply.header(CACHE_CONTROL), "no-store");
        assert!(!reply.contains(secret), "key material on the wire");
    }
    assert_eq!(fx.calls(), 0);

    let extra = server
        .get(
            "/whoami",
            &[(X_API_KEY, HeaderValue::from_str(secret).unwrap())],
        )
        .await;
    assert_eq!(extra.status, StatusCode::OK, "{extra:?}");
    assert_eq!(extra.body, format!("sa-a {}", key.record.key_id));
}

#[tokio::test]
async fn a_verifier_outage_over_tcp_is_503_then_recovers() {
    let fx = Fixture::new();
    let server = Server::start(app(&fx.auth).router).await;
    let key = fx.key("sa-a", &[]).await;
    let headers = [(AUTHORIZATION, api_key(key.key.expose_secret()))];

    fx.control.fail_next.store(true, Ordering::SeqCst);
    let down = server.get("/whoami", &headers).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{down:?}");
    assert_eq!(down.header(RETRY_AFTER), "1");
    assert_eq!(down.header(CACHE_CONTROL), "no-store");

    let up = server.get("/whoami", &headers).await;
    assert_eq!(up.status, StatusCode::OK, "{up:?}");
    assert_eq!(fx.calls(), 2, "the failure was not cached");
}
