//! Unknown, revoked, reissued and expired keys: one byte-identical 401 for
//! all, told apart only in the response's extensions, and in force on the
//! very next request even when the key was cached.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use axum::body::Body;
use http::header::AUTHORIZATION;
use http::{HeaderValue, StatusCode};
use std::time::Duration;
use tower_api_key::KeyStore;
use tower_api_key::Reason;
use tower_api_key::{KeyFormat, KeyId};

use common::http::{
    api_key, app, assert_same_response, assert_unauthorized, get_whoami, whoami_with_key,
    with_bad_checksum, Fixture,
};
use common::Reply;

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
    assert!(fx.store.revoke(revoked.record.key_id, None).await.unwrap());
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

    assert!(fx.store.revoke(key.record.key_id, None).await.unwrap());
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
        .reissue(key.record.key_id, Duration::ZERO, None)
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
