//! Metric deltas for a scripted sequence of requests over real HTTP.
//!
//! The global metrics recorder can be installed once per process, so this
//! file (its own test binary) holds a single test.
#![cfg(all(feature = "metrics", feature = "management"))]

mod common;

use std::collections::BTreeMap;

use axum::routing::get;
use axum::Router;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use tower_api_key::management::{self, AccountAccess, ManagementApiBuilder};
use tower_api_key::store::NewKey;
use tower_api_key::telemetry::names;
use tower_api_key::KeyFormat;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::{Authenticator, PresentedKey, VerifierError};

use common::tcp::{serve, Client};

const TRANSLATE: &str = "yc.ai.translate.execute";

/// What moved since the last call: `name{label=value}` -> count; a
/// histogram's entry is its number of samples. The debugging recorder hands
/// out deltas (a snapshot resets what it read).
fn delta(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
    let mut moved = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        let n = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => continue,
        };
        if n > 0 {
            moved.insert(name, n);
        }
    }
    moved
}

fn expect(pairs: &[(&str, &str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(name, label, n)| {
            let key = if label.is_empty() {
                (*name).to_owned()
            } else {
                format!("{name}{{{label}}}")
            };
            (key, *n)
        })
        .collect()
}

async fn mint(store: &MemoryStore, account: &str, scopes: &[&str]) -> String {
    let scopes = ScopeSet::new(scopes.iter().copied()).unwrap();
    let created = store
        .create(NewKey::new(account).with_scopes(scopes))
        .await
        .unwrap();
    created.key.expose_secret().to_owned()
}

#[tokio::test]
async fn counters_move_by_the_expected_amounts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");

    use names::{CACHE, LIMITS, REQUESTS, VERIFIER_CALLS, VERIFIER_DURATION, VERIFIER_ERRORS};

    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    // A second authenticator whose verifier is down.
    let down = Authenticator::verifier_builder(|_key: PresentedKey| async {
        Err::<Option<tower_api_key::KeyRecord>, _>(VerifierError::backend("database is down"))
    })
    .build();
    let app = Router::new()
        .route(
            "/translate",
            get(|| async { "ok" }).route_layer(auth.require_any([TRANSLATE])),
        )
        .route(
            "/flaky",
            get(|| async { "ok" }).route_layer(down.any_valid_key()),
        )
        .route(
            "/whoami",
            get(|| async { "ok" }).route_layer(auth.any_valid_key()),
        )
        .nest(
            "/admin",
            ManagementApiBuilder::new(store.clone(), &auth)
                .account_access(AccountAccess::any_account())
                .grantable_scopes([TRANSLATE])
                .build(),
        );
    let client = Client::new(serve(app).await);
    let translator = mint(&store, "sa-1", &[TRANSLATE]).await;
    let other_scope = mint(&store, "sa-1", &["yc.ai.other"]).await;
    let unscoped = mint(&store, "sa-1", &[]).await;
    let admin = mint(&store, "sa-ops", &[management::DEFAULT_SCOPE]).await;
    let stranger = KeyFormat::default().generate().unwrap();
    let stranger = stranger.expose_secret();
    let get = |path: &'static str, key: Option<String>| {
        let client = client.clone();
        async move { client.send("GET", path, key.as_deref(), None).await.status }
    };
    delta(&snapshotter);

    // No credential, and garbage: refused offline, no cache, no verifier.
    assert_eq!(get("/translate", None).await, 401);
    assert_eq!(get("/translate", Some("tak_garbage".into())).await, 401);
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=missing", 1),
            (REQUESTS, "outcome=malformed", 1),
        ])
    );

    // A well-formed key nobody issued: one verifier call, then the negative cache.
    assert_eq!(get("/translate", Some(stranger.into())).await, 401);
    assert_eq!(get("/translate", Some(stranger.into())).await, 401);
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=unknown", 2),
            (CACHE, "result=miss", 1),
            (CACHE, "result=negative_hit", 1),
            (VERIFIER_CALLS, "", 1),
            (VERIFIER_DURATION, "", 1),
        ])
    );

    // A valid key, three times: one miss and verifier call, then two hits.
    for _ in 0..3 {
        assert_eq!(get("/translate", Some(translator.clone())).await, 200);
    }
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=accepted", 3),
            (CACHE, "result=miss", 1),
            (CACHE, "result=hit", 2),
            (VERIFIER_CALLS, "", 1),
            (VERIFIER_DURATION, "", 1),
        ])
    );

    // Valid keys without the route's scope: 403, and the second try is a hit.
    assert_eq!(get("/translate", Some(other_scope.clone())).await, 403);
    assert_eq!(get("/translate", Some(other_scope.clone())).await, 403);
    assert_eq!(get("/translate", Some(unscoped.clone())).await, 403);
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=insufficient_scope", 3),
            (CACHE, "result=miss", 2),
            (CACHE, "result=hit", 1),
            (VERIFIER_CALLS, "", 2),
            (VERIFIER_DURATION, "", 2),
        ])
    );

    // The verifier fails: 503 each time, never cached, every call counted.
    assert_eq!(get("/flaky", Some(translator.clone())).await, 503);
    assert_eq!(get("/flaky", Some(translator.clone())).await, 503);
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=unavailable", 2),
            (CACHE, "result=miss", 2),
            (VERIFIER_CALLS, "", 2),
            (VERIFIER_DURATION, "", 2),
            (VERIFIER_ERRORS, "kind=backend", 2),
        ])
    );

    // The management API counts like any route: the admin key is accepted
    // (a miss, then a hit), the translator's key lacks the scope.
    let created = client
        .send(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"service_account_id": "sa-2", "scopes": [TRANSLATE]})),
        )
        .await;
    assert_eq!(created.status, 201);
    let id = created.json()["key"]["id"].as_str().unwrap().to_owned();
    let forbidden = client
        .send(
            "DELETE",
            &format!("/admin/keys/{id}"),
            Some(&translator),
            None,
        )
        .await;
    assert_eq!(forbidden.status, 403);
    let deleted = client
        .send("DELETE", &format!("/admin/keys/{id}"), Some(&admin), None)
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=accepted", 2),
            (REQUESTS, "outcome=insufficient_scope", 1),
            (CACHE, "result=miss", 1),
            (CACHE, "result=hit", 2),
            (VERIFIER_CALLS, "", 1),
            (VERIFIER_DURATION, "", 1),
        ])
    );

    // Limits count their decisions by kind, after authentication and scope.
    let limited = store
        .create(NewKey::new("sa-3").with_rate_limits(vec!["2/1h".parse().unwrap()]))
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_owned();
    let metered = store
        .create(NewKey::new("sa-3").with_credits(tower_api_key::limits::Credits::new(1).unwrap()))
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_owned();
    for expected in [200, 200, 429] {
        assert_eq!(get("/whoami", Some(limited.clone())).await, expected);
    }
    for expected in [200, 429] {
        assert_eq!(get("/whoami", Some(metered.clone())).await, expected);
    }
    assert_eq!(
        delta(&snapshotter),
        expect(&[
            (REQUESTS, "outcome=accepted", 3),
            (REQUESTS, "outcome=rate_limited", 1),
            (REQUESTS, "outcome=quota_exhausted", 1),
            (LIMITS, "kind=rate,result=admitted", 2),
            (LIMITS, "kind=rate,result=refused", 1),
            (LIMITS, "kind=quota,result=admitted", 1),
            (LIMITS, "kind=quota,result=refused", 1),
            (CACHE, "result=miss", 2),
            (CACHE, "result=hit", 3),
            (VERIFIER_CALLS, "", 2),
            (VERIFIER_DURATION, "", 2),
        ])
    );
}
