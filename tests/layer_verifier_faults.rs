//! A verifier that fails, panics or never answers: 503 or 500, never cached,
//! and the next request works.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use http::header::{CACHE_CONTROL, RETRY_AFTER};
use http::StatusCode;
use std::time::Duration;
use tower_api_key::KeyFormat;
use tower_api_key::KeyRecord;
use tower_api_key::Reason;

use common::http::{app, whoami_with_key, Fixture};

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
    let auth = Authenticator::verifier_builder(move |key: PresentedKey| {
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
    })
    .build();
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
