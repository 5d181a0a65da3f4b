//! `GithubKeys` (feature `github-keys`) against a local server: the keys
//! parsed and cached, the typed errors, and the cache serving through them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_api_key::secret_scanning::{
    FetchedKeys, GithubKeys, GithubKeysError, ReporterKeys, GITHUB_KEYS_URL,
};

#[derive(Clone, Copy)]
enum Mode {
    Document,
    ServerError,
    Redirect,
    /// A 200 with a declared length over the bound.
    Oversize,
    /// A 200 streamed without a length, longer than the bound.
    OversizeChunked,
    NotJson,
    /// Never answers.
    Silent,
}

struct Server {
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    headers: Mutex<Option<HeaderMap>>,
    document: String,
}

async fn serve_keys(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    *server.headers.lock().unwrap() = Some(headers);
    let mode = *server.mode.lock().unwrap();
    match mode {
        Mode::Document => server.document.clone().into_response(),
        Mode::ServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Redirect => (
            StatusCode::FOUND,
            [("location", "https://elsewhere.example/keys")],
        )
            .into_response(),
        Mode::Oversize => vec![b' '; 100 * 1024].into_response(),
        Mode::OversizeChunked => {
            let chunks = (0..100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]));
            Body::from_stream(futures_util::stream::iter(chunks)).into_response()
        }
        Mode::NotJson => "<html>not the keys</html>".into_response(),
        Mode::Silent => std::future::pending().await,
    }
}

fn document() -> (String, String) {
    let secret = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
    let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
        secret.verifying_key(),
        p256::pkcs8::LineEnding::LF,
    )
    .unwrap();
    let doc = serde_json::json!({"public_keys": [
        {"key_identifier": "gh-1", "key": pem, "is_current": true},
    ]});
    (doc.to_string(), pem)
}

async fn start(mode: Mode) -> (Arc<Server>, String) {
    let server = Arc::new(Server {
        mode: Mutex::new(mode),
        requests: AtomicUsize::new(0),
        headers: Mutex::new(None),
        document: document().0,
    });
    let app = Router::new()
        .route(
            "/meta/public_keys/secret_scanning",
            axum::routing::get(serve_keys),
        )
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (
        server,
        format!("http://{addr}/meta/public_keys/secret_scanning"),
    )
}

#[tokio::test]
async fn keys_are_fetched_with_the_headers_github_asks_for_and_cached() {
    let (server, url) = start(Mode::Document).await;
    let keys = FetchedKeys::new(GithubKeys::with_url(&url).unwrap());
    let key = keys.key("gh-1").await.unwrap().expect("the key served");
    let expected = tower_api_key::secret_scanning::ReporterKey::from_pem(&document().1).unwrap();
    assert_eq!(key, expected);
    assert!(keys.key("gh-1").await.unwrap().is_some());
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "not cached");
    let headers = server.headers.lock().unwrap().clone().unwrap();
    assert!(headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("tower-api-key/"));
    assert_eq!(headers["accept"], "application/json");
}

#[tokio::test]
async fn a_non_200_an_oversize_body_and_bad_json_are_typed_errors_and_the_cache_serves() {
    let (server, url) = start(Mode::Document).await;
    let source = GithubKeys::with_url(&url).unwrap();
    // Stale at once and refetched on every lookup: each lookup fetches.
    let keys = FetchedKeys::new(source.clone())
        .ttl(Duration::ZERO)
        .refetch_interval(Duration::ZERO);
    assert!(keys.key("gh-1").await.unwrap().is_some());

    type Expected = fn(&GithubKeysError) -> bool;
    let cases: [(Mode, Expected); 5] = [
        (
            Mode::ServerError,
            |e| matches!(e, GithubKeysError::Status(s) if *s == StatusCode::INTERNAL_SERVER_ERROR),
        ),
        // Followed, the redirect would fail to resolve its host instead.
        (
            Mode::Redirect,
            |e| matches!(e, GithubKeysError::Status(s) if *s == StatusCode::FOUND),
        ),
        (Mode::Oversize, |e| {
            matches!(e, GithubKeysError::TooLarge { limit: 65536 })
        }),
        (Mode::OversizeChunked, |e| {
            matches!(e, GithubKeysError::TooLarge { limit: 65536 })
        }),
        (Mode::NotJson, |e| matches!(e, GithubKeysError::Document(_))),
    ];
    for (i, (mode, expected)) in cases.into_iter().enumerate() {
        *server.mode.lock().unwrap() = mode;
        let error = source.get().await.unwrap_err();
        assert!(expected(&error), "case {i}: {error:?}");
        let before = server.requests.load(Ordering::SeqCst);
        assert!(
            keys.key("gh-1").await.unwrap().is_some(),
            "case {i}: the cache did not serve"
        );
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            before + 1,
            "case {i}: no refetch"
        );
    }
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_timeout() {
    let (server, url) = start(Mode::Silent).await;
    let source = GithubKeys::with_url(&url)
        .unwrap()
        .timeout(Duration::from_millis(200));
    let error = source.get().await.unwrap_err();
    assert!(
        matches!(error, GithubKeysError::Timeout(t) if t == Duration::from_millis(200)),
        "{error:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    // With nothing cached, the receiver's source reports the failure.
    let keys = FetchedKeys::new(source);
    let error = keys.key("gh-1").await.unwrap_err();
    assert!(error.downcast_ref::<GithubKeysError>().is_some());
}

#[test]
fn only_https_or_loopback_http_urls_are_accepted() {
    for bad in [
        "http://api.github.com/meta/public_keys/secret_scanning",
        "http://10.0.0.1/keys",
        "ftp://127.0.0.1/keys",
        "/meta/public_keys/secret_scanning",
        "not a url",
    ] {
        assert!(
            matches!(GithubKeys::with_url(bad), Err(GithubKeysError::InvalidUrl)),
            "{bad}"
        );
    }
    for good in [
        GITHUB_KEYS_URL,
        "https://ghe.example.com/api/v3/meta/public_keys/secret_scanning",
        "http://127.0.0.1:8080/keys",
        "http://[::1]:8080/keys",
        "http://localhost/keys",
    ] {
        assert!(GithubKeys::with_url(good).is_ok(), "{good}");
    }
}
