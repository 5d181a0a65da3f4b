//! Reading the credential: the `Authorization` scheme, malformed, oversized
//! and repeated headers, and the optional `x-api-key` header. Every
//! rejection here is checked to make zero verifier calls.
//!
//! The middleware through a real axum `Router`, in process (`oneshot`);
//! failure messages never print a whole key (see `common::Reply`).

mod common;

use axum::body::Body;
use http::header::{AUTHORIZATION, CACHE_CONTROL};
use http::{HeaderValue, StatusCode};
use tower_api_key::KeyFormat;
use tower_api_key::Reason;

use common::http::{
    api_key, app, assert_unauthorized, get_whoami, whoami_with, whoami_with_key, with_bad_checksum,
    Fixture, X_API_KEY,
};

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

/// The middleware checks alphabet and checksum only when the cache has no
/// answer (whatever it holds passed them): a cached key's near misses
/// still miss, and are refused offline.
#[tokio::test]
async fn near_misses_of_a_cached_key_are_401_without_a_lookup() {
    let fx = Fixture::new();
    let app = app(&fx.auth);
    let key = fx.key("sa-a", &[]).await;
    let secret = key.key.expose_secret();
    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.calls(), 1);

    let mut outside_alphabet = secret.to_owned().into_bytes();
    outside_alphabet[30] = b'-';
    for (label, candidate) in [
        ("bad checksum", with_bad_checksum(secret)),
        (
            "a secret byte outside the alphabet",
            String::from_utf8(outside_alphabet).unwrap(),
        ),
    ] {
        let reply = app.send(whoami_with_key(&candidate)).await;
        assert_unauthorized(&reply, Reason::Malformed);
        assert_eq!(reply.rejection.as_ref().unwrap().key_id(), None, "{label}");
        assert_eq!(fx.calls(), 1, "{label}: rejected offline");
    }
    assert_eq!(
        app.send(whoami_with_key(secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.calls(), 1, "the key itself is still cached");
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
