//! Issue 20's attack review, the part that needs two replicas: two SQLite
//! stores on one file, each with its own management API, while a manager
//! races to get back a scope it may not grant (moved here with the SQLite
//! store from the root crate's tests/attack_issue20.rs).

mod common;

use std::sync::Arc;

use axum::Router;
use serde_json::{json, Value};
use tower_api_key::management::{self, ManagementApiBuilder};
use tower_api_key::store::NewKey;
use tower_api_key::{Authenticator, KeyId, KeyStore, ScopeSet, Verifier};
use tower_api_key_sqlite::SqliteKeyStore;

use common::tcp::{serve, Client};

const MANAGE: &str = management::DEFAULT_SCOPE;
const T: &str = "team.translate";
const X: &str = "ops.secret";

fn scopes(names: &[&str]) -> ScopeSet {
    ScopeSet::new(names.iter().copied()).unwrap()
}

/// A management API at `/admin` over `store`, served on 127.0.0.1.
async fn admin_api<S: KeyStore + Clone>(store: &S) -> Client {
    let auth = Authenticator::new(store.clone());
    let router = Router::new().nest(
        "/admin",
        ManagementApiBuilder::new(store.clone(), &auth).build(),
    );
    Client::new(serve(router).await)
}

/// A directory of its own for one test, removed at the end.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tak-attack-{test}-{}-{}",
            std::process::id(),
            KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two replicas (two stores on one SQLite file, each with its own
/// management API) while a manager that may grant `T` but not `X` races,
/// on a key holding `[T, X]`: "keep `[T, X]`" PATCHes on replica A, a
/// narrowing to `[T]`, a reissue and an addCredits on replica B, and a
/// DELETE on A. Whatever the interleaving: a reissue that answers 200
/// handed out a key holding only `T`; a narrowing that answered 200 is
/// never undone; after a DELETE that answered 204 no secret of the key
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_narrow_reissue_credit_and_delete_across_two_replicas_never_hand_out_x() {
    const ROUNDS: usize = 25;
    const KEEPERS: usize = 8;
    let dir = TempDir::new("replicas");
    let db = dir.0.join("keys.db");
    let a = SqliteKeyStore::builder(&db).open().await.unwrap();
    a.migrate().await.unwrap();
    let b = SqliteKeyStore::builder(&db).open().await.unwrap();
    let (on_a, on_b) = (admin_api(&a).await, admin_api(&b).await);
    let manager = a
        .create(NewKey::new("sa-r").with_scopes(scopes(&[MANAGE, T])))
        .await
        .unwrap();
    let manager: Arc<str> = manager.key.expose_secret().into();
    let mut reissued_rounds = 0;
    for round in 0..ROUNDS {
        let victim = a
            .create(
                NewKey::new("sa-r")
                    .with_scopes(scopes(&[T, X]))
                    .with_credits(tower_api_key::limits::Credits::new(5).unwrap()),
            )
            .await
            .unwrap();
        let id = victim.record.key_id;
        let path = format!("/admin/keys/{id}");
        let send = |client: &Client, method: &'static str, path: String, body: Option<Value>| {
            let (client, manager) = (client.clone(), manager.clone());
            tokio::spawn(async move { client.send(method, &path, Some(&manager), body).await })
        };
        let keepers: Vec<_> = (0..KEEPERS)
            .map(|_| {
                send(
                    &on_a,
                    "PATCH",
                    path.clone(),
                    Some(json!({"scopes": [T, X]})),
                )
            })
            .collect();
        let narrow = send(&on_b, "PATCH", path.clone(), Some(json!({"scopes": [T]})));
        let credit = send(
            &on_b,
            "POST",
            format!("{path}:addCredits"),
            Some(json!({"amount": 1})),
        );
        let narrow = narrow.await.unwrap();
        let reissue = on_b
            .send(
                "POST",
                &format!("{path}:reissue"),
                Some(&manager),
                Some(json!({"grace_period_seconds": 3600})),
            )
            .await;
        let delete = if round % 2 == 0 {
            Some(send(&on_a, "DELETE", path.clone(), None).await.unwrap())
        } else {
            None
        };
        for keeper in keepers {
            let reply = keeper.await.unwrap();
            assert!(
                matches!(reply.status.as_u16(), 200 | 403 | 404 | 409),
                "round {round}: keep answered {}: {}",
                reply.status,
                reply.text()
            );
        }
        let credit = credit.await.unwrap();
        assert!(
            matches!(credit.status.as_u16(), 200 | 404 | 409),
            "round {round}: addCredits answered {}: {}",
            credit.status,
            credit.text()
        );
        assert!(
            matches!(narrow.status.as_u16(), 200 | 404 | 409),
            "round {round}: {}",
            narrow.text()
        );

        let now = a.get(id).await.unwrap();
        let holds_x = now
            .as_ref()
            .is_some_and(|k| k.record.scopes.iter().any(|s| s.as_str() == X));
        if narrow.status == 200 {
            assert!(!holds_x, "round {round}: X came back after the narrowing");
        }
        match reissue.status.as_u16() {
            200 => {
                reissued_rounds += 1;
                assert_eq!(reissue.json()["key"]["scopes"], json!([T]), "round {round}");
                let secret = reissue.json()["secret"].as_str().unwrap().to_owned();
                let presented = a.key_format().unwrap().parse(&secret).unwrap();
                let record = Verifier::verify(&a, &presented).await.unwrap();
                match &delete {
                    Some(d) if d.status == 204 => assert!(
                        record.is_none(),
                        "round {round}: a reissued secret verifies after the DELETE"
                    ),
                    _ => {
                        let record = record.expect("the reissued secret verifies");
                        assert!(
                            record.scopes.iter().all(|s| s.as_str() == T),
                            "round {round}: the reissued secret holds {:?}",
                            record.scopes
                        );
                    }
                }
            }
            403 | 404 | 409 => {}
            other => panic!(
                "round {round}: reissue answered {other}: {}",
                reissue.text()
            ),
        }
        if let Some(d) = &delete {
            assert!(
                matches!(d.status.as_u16(), 204 | 404 | 409),
                "round {round}"
            );
            if d.status == 204 {
                assert!(now.is_none(), "round {round}: the key outlived its DELETE");
                let old = a
                    .key_format()
                    .unwrap()
                    .parse(victim.key.expose_secret())
                    .unwrap();
                assert!(Verifier::verify(&b, &old).await.unwrap().is_none());
            }
        }
    }
    assert!(reissued_rounds > 0, "the race ran to a reissue");
    a.shutdown().await;
    b.shutdown().await;
}
