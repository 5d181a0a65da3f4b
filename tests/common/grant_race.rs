//! The three-request race of issue 20 through the management API over real
//! HTTP, against any store: a manager that may grant `T` but not `X` sends,
//! against a key holding `[T, X]`,
//!
//! 1. 30 concurrent `PATCH {"scopes":[T,X]}` (keeping what the key holds is
//!    allowed), half of them adding `T2` too (which the manager may grant),
//! 2. `PATCH {"scopes":[T]}` (narrowing, allowed),
//! 3. `POST /keys/{id}:reissue {"grace_period_seconds":2592000}` (allowed
//!    once it reads `[T]`).
//!
//! Before conditional writes, a "keep" PATCH that read before step 2 and
//! wrote after step 3's check put `X` back, and the manager held the
//! reissued secret of a key holding `X`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use serde_json::json;
use tower_api_key::management::{self, ManagementApiBuilder};
use tower_api_key::store::NewKey;
use tower_api_key::{Authenticator, KeyStore, ScopeSet};

use super::tcp::{serve, Client};

/// The scope the manager holds and may grant.
pub const T: &str = "team.translate";
/// Another scope the manager holds and may grant.
pub const T2: &str = "team.read";
/// The scope it may not grant.
pub const X: &str = "ops.secret";
const MANAGE: &str = management::DEFAULT_SCOPE;
const KEEPERS: usize = 30;

/// What the rounds of a race answered, by request kind and status.
#[derive(Debug, Default)]
pub struct RaceOutcome {
    pub statuses: BTreeMap<(&'static str, u16), usize>,
    /// Rounds whose reissue handed the manager a secret.
    pub reissued: usize,
}

/// Runs `rounds` rounds of the race on `store` and asserts, every round,
/// that the manager never holds the secret of a key holding `X` and that a
/// narrowing that succeeded is never undone.
pub async fn run<S: KeyStore + Clone>(store: S, rounds: usize) -> RaceOutcome {
    let auth = Authenticator::new(store.clone());
    let router = Router::new().nest(
        "/admin",
        ManagementApiBuilder::new(store.clone(), &auth).build(),
    );
    let client = Client::new(serve(router).await);
    let manager = store
        .create(NewKey::new("sa-race").with_scopes(ScopeSet::new([MANAGE, T, T2]).unwrap()))
        .await
        .unwrap();
    let manager: Arc<str> = manager.key.expose_secret().into();
    let mut outcome = RaceOutcome::default();
    for round in 0..rounds {
        let victim = store
            .create(NewKey::new("sa-race").with_scopes(ScopeSet::new([T, X]).unwrap()))
            .await
            .unwrap();
        let id = victim.record.key_id.to_string();
        let path = format!("/admin/keys/{id}");
        let mut keepers = Vec::new();
        for n in 0..KEEPERS {
            let (client, manager, path) = (client.clone(), manager.clone(), path.clone());
            // The report's "keep [T, X]", and a PATCH that also adds a
            // grantable scope: a write of scopes, unlike a resend of what
            // the key holds (which writes nothing).
            let scopes = if n % 2 == 0 {
                json!([T, X])
            } else {
                json!([T, T2, X])
            };
            keepers.push(tokio::spawn(async move {
                client
                    .send(
                        "PATCH",
                        &path,
                        Some(&manager),
                        Some(json!({ "scopes": scopes })),
                    )
                    .await
            }));
        }
        // Let some keepers read before the narrowing, as an attacker times it.
        tokio::task::yield_now().await;
        let narrow = client
            .send("PATCH", &path, Some(&manager), Some(json!({"scopes": [T]})))
            .await;
        let reissue = client
            .send(
                "POST",
                &format!("{path}:reissue"),
                Some(&manager),
                Some(json!({"grace_period_seconds": 2_592_000})),
            )
            .await;
        let mut count = |kind: &'static str, status: u16| {
            *outcome.statuses.entry((kind, status)).or_default() += 1;
        };
        for keeper in keepers {
            let reply = keeper.await.unwrap();
            let status = reply.status.as_u16();
            assert!(
                matches!(status, 200 | 403 | 409),
                "round {round}: a keep PATCH answered {status}: {}",
                reply.text()
            );
            count("keep", status);
        }
        count("narrow", narrow.status.as_u16());
        count("reissue", reissue.status.as_u16());
        assert!(
            matches!(narrow.status.as_u16(), 200 | 409),
            "round {round}: {}",
            narrow.text()
        );

        let now = store.get(victim.record.key_id).await.unwrap().unwrap();
        let holds_x = now.record.scopes.iter().any(|s| s.as_str() == X);
        if narrow.status == 200 {
            assert!(!holds_x, "round {round}: X came back after the narrowing");
        }
        match reissue.status.as_u16() {
            200 => {
                outcome.reissued += 1;
                assert_eq!(reissue.json()["key"]["scopes"], json!([T]), "round {round}");
                assert!(
                    !holds_x,
                    "round {round}: the manager holds the reissued secret of a key holding X"
                );
                let secret = reissue.json()["secret"].as_str().unwrap().to_owned();
                let presented = store.key_format().unwrap().parse(&secret).unwrap();
                let record = store.verify(&presented).await.unwrap().unwrap();
                assert!(
                    record.scopes.iter().all(|s| s.as_str() == T),
                    "round {round}: the reissued secret verifies with {:?}",
                    record.scopes
                );
            }
            // Refused while the key still held X, or aborted by contention.
            403 | 409 => {}
            other => panic!(
                "round {round}: reissue answered {other}: {}",
                reissue.text()
            ),
        }
    }
    outcome
}
