//! Issue 20 review: the fixes (conditional writes, ETag and If-Match, the
//! grant rules, limited callers) attacked as an attacker would, with
//! concurrent requests and crafted headers. What held stays here as a
//! regression test; what broke is an `#[ignore]`d test naming the hole.
#![cfg(feature = "management")]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use serde_json::json;
use tower_api_key::management::{self, ManagementApiBuilder};
use tower_api_key::store::{KeyUpdate, NewKey, StoreError};
use tower_api_key::KeyRecord;
use tower_api_key::{Authenticator, KeyStore, MemoryStore, ScopeSet, Verifier};

use common::hooked::{Call, Hook, Hooked};
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

// ---------------------------------------------------------------------------
// If-Match: what a client can send
// ---------------------------------------------------------------------------

/// Tags that look like the current version but are not it (leading zeros,
/// past `u64`, zero, weak, with spaces inside the quotes), a thousand tags
/// in one header, and fifty headers: never a panic, never a 5xx, and a
/// write only when the current strong tag is among them.
#[tokio::test]
async fn if_match_edge_cases_never_match_wrongly_nor_fail() {
    let store = MemoryStore::new();
    let admin = store
        .create(NewKey::new("sa-im").with_scopes(scopes(&[MANAGE])))
        .await
        .unwrap();
    let admin = admin.key.expose_secret().to_owned();
    let client = admin_api(&store).await;
    let key = store.create(NewKey::new("sa-im")).await.unwrap();
    let path = format!("/admin/keys/{}", key.record.key_id);
    let patch = |tags: Vec<String>| {
        let (client, admin, path) = (client.clone(), admin.clone(), path.clone());
        async move {
            let headers: Vec<(&str, &str)> =
                tags.iter().map(|t| ("if-match", t.as_str())).collect();
            client
                .send_with(
                    "PATCH",
                    &path,
                    Some(&admin),
                    &headers,
                    Some(json!({"description": "d"})),
                )
                .await
        }
    };
    // The key is at version 1.
    for tag in [
        "\"01\"",
        "\"0\"",
        "\"+1\"",
        "\" 1\"",
        "\"1 \"",
        "\"18446744073709551617\"",
        "\"340282366920938463463374607431768211457\"",
        "W/\"1\"",
        "w/\"1\"",
        "\"1\";",
    ] {
        let reply = patch(vec![tag.to_owned()]).await;
        assert!(
            matches!(reply.status.as_u16(), 400 | 412),
            "{tag}: {}",
            reply.status
        );
    }
    let stale = patch(vec!["\"7\"".to_owned()]).await;
    assert_eq!(stale.status, 412);
    let message = stale.json()["message"].as_str().unwrap().to_owned();
    assert!(!message.contains("  "), "one line of prose: {message:?}");
    let thousand: Vec<String> = vec![(2..1002)
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")];
    assert_eq!(patch(thousand).await.status, 412);
    let mut fifty: Vec<String> = (2..52).map(|n| format!("\"{n}\"")).collect();
    assert_eq!(patch(fifty.clone()).await.status, 412);
    fifty.push("\"1\"".to_owned());
    let reply = patch(fifty).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("etag"), "\"2\"");
    // `*` with a malformed tag beside it is still malformed.
    assert_eq!(patch(vec!["*, 2".to_owned()]).await.status, 400);
}

// ---------------------------------------------------------------------------
// Races across two stores over one SQLite file
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Reissue by a secret in its grace period
// ---------------------------------------------------------------------------

/// A management key is rotated with a grace period (the old secret keeps
/// working an hour while deployments move). The old secret (leaked, which
/// is often why keys are rotated) must not be able to reissue the key: it
/// would receive a fresh secret holding the management scope with no end,
/// past the grace the owner chose, and cut the owner's new secret down to a
/// grace of the attacker's choosing (zero here). The management scope rule
/// keeps a key from copying itself through create; this is the same copy
/// through reissue.
#[tokio::test]
async fn a_secret_in_its_grace_period_cannot_reissue_its_key() {
    let store = MemoryStore::new();
    let client = admin_api(&store).await;
    let manager = store
        .create(NewKey::new("sa-g").with_scopes(scopes(&[MANAGE, T])))
        .await
        .unwrap();
    let id = manager.record.key_id;
    let old = manager.key.expose_secret().to_owned();
    let rotated = store
        .reissue(id, Duration::from_secs(3600), None)
        .await
        .unwrap()
        .unwrap();

    let takeover = client
        .send(
            "POST",
            &format!("/admin/keys/{id}:reissue"),
            Some(&old),
            Some(json!({"grace_period_seconds": 0})),
        )
        .await;
    assert_eq!(
        takeover.status, 403,
        "the old secret reissued the key: {}",
        takeover.status
    );
    let owners = store
        .key_format()
        .unwrap()
        .parse(rotated.key.expose_secret())
        .unwrap();
    assert!(
        Verifier::verify(&store, &owners).await.unwrap().is_some(),
        "the owner's new secret still works"
    );
}

// ---------------------------------------------------------------------------
// Stalling a revocation by changing the key
// ---------------------------------------------------------------------------

/// Between the management API's read of a key and its conditional revoke
/// or addCredits, the key's holder changes it (a PATCH of its own
/// description, as a compromised management key can send in a loop): every
/// conditional write finds the key moved on.
#[derive(Default)]
struct Bump {
    bumps: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Hook for Bump {
    async fn before(&self, store: &MemoryStore, call: Call<'_>) -> Result<(), StoreError> {
        let (Call::Revoke { id, expected } | Call::AddCredits { id, expected }) = call else {
            return Ok(());
        };
        if expected.is_some() {
            let n = self.bumps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let bump = KeyUpdate::default().with_description(format!("b{n}"));
            store.update(id, bump, None).await?;
        }
        Ok(())
    }
}

/// A DELETE without If-Match checks nothing on the key but its account,
/// which never changes: a key that keeps changing (its compromised holder
/// PATCHing itself in a loop) must still be revoked at once, not answered
/// 409 `aborted` after three attempts, which would let a leaked management
/// key keep itself alive against the API. The same for addCredits, whose
/// only check on the key (it has credits) the store makes. With If-Match
/// the client asked for the version it read: 412 then.
#[tokio::test]
async fn a_key_that_keeps_changing_is_still_deleted_and_credited_without_if_match() {
    let store = Hooked::new(MemoryStore::new(), Bump::default());
    let client = admin_api(&store).await;
    let admin = store
        .create(NewKey::new("sa-s").with_scopes(scopes(&[MANAGE])))
        .await
        .unwrap();
    let admin = admin.key.expose_secret().to_owned();
    let leaked = store
        .create(
            NewKey::new("sa-s")
                .with_scopes(scopes(&[MANAGE]))
                .with_credits(tower_api_key::limits::Credits::new(1).unwrap()),
        )
        .await
        .unwrap();
    let id = leaked.record.key_id;
    let path = format!("/admin/keys/{id}");

    let credited = client
        .send(
            "POST",
            &format!("{path}:addCredits"),
            Some(&admin),
            Some(json!({"amount": 5})),
        )
        .await;
    assert_eq!(credited.status, 200, "{}", credited.text());
    assert_eq!(credited.json()["credits"]["remaining"], json!(6));

    let read = client.send("GET", &path, Some(&admin), None).await;
    let stale = client
        .send_with(
            "DELETE",
            &path,
            Some(&admin),
            &[("if-match", read.header("etag"))],
            None,
        )
        .await;
    assert_eq!(
        stale.status,
        412,
        "If-Match names the version read: {}",
        stale.text()
    );
    assert!(
        store.get(id).await.unwrap().is_some(),
        "not revoked by the 412"
    );
    let any = client
        .send_with(
            "POST",
            &format!("{path}:addCredits"),
            Some(&admin),
            &[("if-match", "*")],
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(any.status, 200, "`*` names no version: {}", any.text());

    let deleted = client.send("DELETE", &path, Some(&admin), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(store.get(id).await.unwrap().is_none(), "revoked");
    let old = store
        .key_format()
        .unwrap()
        .parse(leaked.key.expose_secret())
        .unwrap();
    assert!(store.verify(&old).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// Reviving an expired key the caller could not have made
// ---------------------------------------------------------------------------

/// The invariant of `management::grant`: no management request brings into
/// existence a key accepted where the calling key is refused. An expired
/// key holding `X` is accepted nowhere; a PATCH of its expiry by a manager
/// that may not grant `X` makes it accepted on `X`'s routes again (its
/// holder, a former employee say, is back in), exactly what the same
/// manager is refused when it PATCHes `X` onto a key.
#[tokio::test]
async fn a_manager_cannot_revive_an_expired_key_holding_a_scope_it_may_not_grant() {
    use tower_api_key::clock::{Clock, ManualClock};
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    // The authenticator checks expiry by the same clock as the store.
    let auth = Authenticator::builder(store.clone())
        .clock(clock.clone())
        .build();
    let router = Router::new().nest(
        "/admin",
        ManagementApiBuilder::new(store.clone(), &auth).build(),
    );
    let client = Client::new(serve(router).await);
    let manager = store
        .create(NewKey::new("sa-x").with_scopes(scopes(&[MANAGE, T])))
        .await
        .unwrap();
    let manager = manager.key.expose_secret().to_owned();
    let former = store
        .create(
            NewKey::new("sa-x")
                .with_scopes(scopes(&[X]))
                .with_expires_at(clock.now() + Duration::from_secs(60)),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    let secret = store
        .key_format()
        .unwrap()
        .parse(former.key.expose_secret())
        .unwrap();
    let expired = |record: Option<KeyRecord>| record.is_some_and(|r| r.is_expired_at(clock.now()));
    assert!(expired(store.verify(&secret).await.unwrap()), "expired");

    // The same manager may not put X on a key...
    let other = store
        .create(NewKey::new("sa-x").with_scopes(scopes(&[T])))
        .await
        .unwrap();
    let widen = client
        .send(
            "PATCH",
            &format!("/admin/keys/{}", other.record.key_id),
            Some(&manager),
            Some(json!({"scopes": [T, X]})),
        )
        .await;
    assert_eq!(widen.status, 403, "{}", widen.text());
    // ...nor bring a key holding X back.
    let revive = client
        .send(
            "PATCH",
            &format!("/admin/keys/{}", former.record.key_id),
            Some(&manager),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(revive.status, 403, "{}", revive.text());
    assert!(
        expired(store.verify(&secret).await.unwrap()),
        "the key holding X stays expired"
    );
}

/// The management scope rule keeps a key from copying itself: no create
/// or PATCH gives the router's management scope. A reissue of a *twin*
/// (another key of the account holding the same scopes, the management
/// scope among them; another admin's, say) hands the caller a second
/// management credential all the same, and with a grace the twin's owner
/// does not even notice until it ends. Once the caller's own key is
/// revoked (it leaked), the copy still manages the account.
#[tokio::test]
async fn a_manager_cannot_copy_itself_by_reissuing_a_twin() {
    let store = MemoryStore::new();
    let client = admin_api(&store).await;
    let leaked = store
        .create(NewKey::new("sa-t").with_scopes(scopes(&[MANAGE, T])))
        .await
        .unwrap();
    let twin = store
        .create(NewKey::new("sa-t").with_scopes(scopes(&[MANAGE, T])))
        .await
        .unwrap();
    let leaked_secret = leaked.key.expose_secret().to_owned();
    let copy = client
        .send(
            "POST",
            &format!("/admin/keys/{}:reissue", twin.record.key_id),
            Some(&leaked_secret),
            Some(json!({"grace_period_seconds": 2_592_000})),
        )
        .await;
    // The leak is found: the leaked key is revoked.
    assert!(store.revoke(leaked.record.key_id, None).await.unwrap());
    if copy.status == 200 {
        let secret = copy.json()["secret"].as_str().unwrap().to_owned();
        let still = client
            .send(
                "GET",
                "/admin/keys?service_account_id=sa-t",
                Some(&secret),
                None,
            )
            .await;
        assert_ne!(
            still.status, 200,
            "the revoked key's holder still manages the account through the twin's new secret"
        );
    }
}
