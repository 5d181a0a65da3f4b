//! Who may give a key which scopes through the management API: no request
//! brings into existence a key accepted where the calling key is refused,
//! unless the router grants it explicitly.
#![cfg(feature = "management")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_api_key::limits::{Credits, RateLimit};
use tower_api_key::management::{self, AccountAccess, GrantKind, KeyScopes, ManagementApiBuilder};
use tower_api_key::store::{KeyInfo, ListRequest, NewKey, StoreError};
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::Verifier;
use tower_api_key::{Authenticator, KeyId};
use tower_api_key::{ScopePolicy, ScopeSet};

use common::grant_race;
use common::hooked::{Call, Hook, Hooked};
use common::tcp::{serve, Client};
use common::Reply;

const TRANSLATE: &str = "yc.ai.translate.execute";
const MANAGE: &str = management::DEFAULT_SCOPE;
/// The operator console scope of docs/management.md, on a second router.
const CONSOLE: &str = "ops.apikeys.admin";

async fn mint(store: &MemoryStore, account: &str, scopes: &[&str]) -> String {
    store
        .create(NewKey::new(account).with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap()))
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_owned()
}

fn id_of(key: &str) -> &str {
    &key[4..20]
}

/// How a caller's key is limited: generously, so that no request of a test
/// is ever refused for its rate or its credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Rate limits of its own.
    Own,
    /// Credits.
    Credits,
    /// Rate limits of its service account.
    Account,
}

fn generous() -> RateLimit {
    RateLimit::new(100_000, Duration::from_secs(1)).unwrap()
}

/// A key of `account` holding `scopes`, limited as `how` says.
async fn mint_limited(store: &MemoryStore, account: &str, scopes: &[&str], how: Limit) -> String {
    let mut new = NewKey::new(account).with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap());
    match how {
        Limit::Own => new = new.with_rate_limits(vec![generous()]),
        Limit::Credits => new = new.with_credits(Credits::new(1_000_000).unwrap()),
        Limit::Account => store
            .set_account_rate_limits(account, vec![generous()])
            .await
            .unwrap(),
    }
    store
        .create(new)
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_owned()
}

/// A service with a translate route, a legacy route without scopes, the
/// per-account management API at `/admin` (with `configure`) and an
/// operator console at `/console`.
struct App {
    store: MemoryStore,
    client: Client,
}

impl App {
    async fn new(configure: impl FnOnce(ManagementApiBuilder) -> ManagementApiBuilder) -> Self {
        let store = MemoryStore::new();
        let auth = Authenticator::new(store.clone());
        let ok = || async { "ok" };
        let router = Router::new()
            .route(
                "/v1/translate",
                axum::routing::get(ok).route_layer(auth.require_any([TRANSLATE])),
            )
            .route(
                "/v1/legacy",
                axum::routing::get(ok).route_layer(auth.unscoped_keys_only()),
            )
            .nest(
                "/admin",
                configure(ManagementApiBuilder::new(store.clone(), &auth)).build(),
            )
            .nest(
                "/console",
                ManagementApiBuilder::new(store.clone(), &auth)
                    .scopes([CONSOLE])
                    .account_access(AccountAccess::any_account())
                    .build(),
            );
        Self {
            client: Client::new(serve(router).await),
            store,
        }
    }

    async fn send(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.client.send(method, path, Some(key), body).await
    }

    async fn keys(&self, account: &str) -> Vec<KeyInfo> {
        self.store
            .list(account, ListRequest::first(100))
            .await
            .unwrap()
            .keys
    }
}

/// `keys` with what `caller` spends on its own requests set aside: the
/// middleware admits a caller with credits (spending them) before the
/// management API refuses what it asks, so its `remaining` moves; nothing
/// else may.
fn but_own_spending(mut keys: Vec<KeyInfo>, caller: &str) -> Vec<KeyInfo> {
    let own = id_of(caller);
    for key in &mut keys {
        if key.record.key_id.as_str() == own {
            if let Some(credits) = key.record.credits {
                key.record.credits = Some(credits.with_remaining(0).unwrap());
            }
        }
    }
    keys
}

fn assert_denied(reply: &Reply, names: &[&str]) {
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.error(), "permission_denied");
    for name in names {
        assert!(reply.message().contains(name), "{}", reply.message());
    }
}

#[tokio::test]
async fn a_manager_cannot_mint_a_management_scope_an_unheld_scope_or_an_unscoped_key() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, TRANSLATE]).await;
    let before = app.keys("sa-a").await;

    for (scopes, refused) in [
        (json!([MANAGE]), vec![MANAGE]),
        (json!([CONSOLE]), vec![CONSOLE]),
        (json!([TRANSLATE, "yc.ai.other"]), vec!["yc.ai.other"]),
    ] {
        let reply = app
            .send(
                &manager,
                "POST",
                "/admin/keys",
                Some(json!({"service_account_id": "sa-a", "scopes": scopes})),
            )
            .await;
        assert_denied(&reply, &refused);
        if refused != [MANAGE] {
            assert!(!reply.message().contains(&format!("`{TRANSLATE}`")));
        }
    }
    let unscoped = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a"})),
        )
        .await;
    assert_denied(&unscoped, &["unscoped"]);
    assert_eq!(app.keys("sa-a").await, before, "refused before the store");

    let created = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE]})),
        )
        .await;
    assert_eq!(created.status, 201, "a scope it holds: {}", created.text());
}

#[tokio::test]
async fn a_manager_cannot_patch_a_key_to_more_than_it_holds() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, TRANSLATE]).await;
    let sibling = mint(&app.store, "sa-a", &[TRANSLATE]).await;
    // Made by an operator: more than the manager holds.
    let broad = mint(&app.store, "sa-a", &[TRANSLATE, "yc.ai.other"]).await;
    let before = app.keys("sa-a").await;

    for (key, scopes, refused) in [
        (&sibling, json!([TRANSLATE, CONSOLE]), vec![CONSOLE]),
        (&manager, json!([MANAGE, TRANSLATE, CONSOLE]), vec![CONSOLE]),
        (&sibling, json!([MANAGE]), vec![MANAGE]),
        (&sibling, json!([]), vec!["unscoped"]),
    ] {
        let reply = app
            .send(
                &manager,
                "PATCH",
                &format!("/admin/keys/{}", id_of(key)),
                Some(json!({ "scopes": scopes })),
            )
            .await;
        assert_denied(&reply, &refused);
    }
    assert_eq!(app.keys("sa-a").await, before, "nothing changed");
    let console = app
        .send(
            &sibling,
            "GET",
            "/console/keys?service_account_id=sa-b",
            None,
        )
        .await;
    assert_eq!(console.status, 403, "still no way into the console");

    // Narrowing, and keeping what a key already holds, are no gain.
    let narrowed = app
        .send(
            &manager,
            "PATCH",
            &format!("/admin/keys/{}", id_of(&broad)),
            Some(json!({"scopes": ["yc.ai.other"], "description": "narrowed"})),
        )
        .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.text());
    let moved = app
        .send(
            &manager,
            "PATCH",
            &format!("/admin/keys/{}", id_of(&broad)),
            Some(json!({"scopes": ["yc.ai.other", TRANSLATE]})),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
}

#[tokio::test]
async fn a_manager_cannot_reissue_a_key_it_could_not_use_itself() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, TRANSLATE]).await;
    let admin = mint(&app.store, "sa-a", &[CONSOLE]).await;
    let legacy = mint(&app.store, "sa-a", &[]).await;
    for (key, refused) in [(&admin, CONSOLE), (&legacy, "unscoped")] {
        let reply = app
            .send(
                &manager,
                "POST",
                &format!("/admin/keys/{}:reissue", id_of(key)),
                None,
            )
            .await;
        assert_denied(&reply, &[refused]);
    }
    let console = app
        .send(&admin, "GET", "/console/keys?service_account_id=sa-a", None)
        .await;
    assert_eq!(console.status, 200, "the refused reissue changed nothing");

    // Its own key: a rotation, no new power.
    let rotated = app
        .send(
            &manager,
            "POST",
            &format!("/admin/keys/{}:reissue", id_of(&manager)),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
}

#[tokio::test]
async fn only_explicit_grants_hand_out_more_than_the_caller_holds() {
    let app = App::new(|api| {
        api.grantable_scopes(["yc.ai.other", MANAGE])
            .allow_unscoped_keys()
    })
    .await;
    let manager = mint(&app.store, "sa-a", &[MANAGE]).await;
    for body in [
        json!({"service_account_id": "sa-a", "scopes": ["yc.ai.other", MANAGE]}),
        json!({"service_account_id": "sa-a"}),
    ] {
        let reply = app.send(&manager, "POST", "/admin/keys", Some(body)).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let ungranted = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [CONSOLE]})),
        )
        .await;
    assert_denied(&ungranted, &[CONSOLE]);
}

#[tokio::test]
async fn a_custom_grant_rule_decides_what_the_defaults_refuse() {
    let app = App::new(|api| {
        api.grant_rule(|caller, request| {
            caller.service_account_id() == "sa-a"
                && matches!(request.requested, KeyScopes::Scoped(scopes)
                    if scopes.iter().all(|s| s.as_str().starts_with("team-a.")))
        })
    })
    .await;
    let manager = mint(&app.store, "sa-a", &[MANAGE]).await;
    let create = |scopes: Value| {
        app.send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": scopes})),
        )
    };
    assert_eq!(create(json!(["team-a.read"])).await.status, 201);
    assert_denied(
        &create(json!(["team-a.read", "team-b.read"])).await,
        &["team-b.read"],
    );
    assert_denied(&create(json!([])).await, &["unscoped"]);
}

/// Issue 20, point 3: the rule that reads "every requested scope starts
/// with `team.`" was vacuously true for an unscoped key. The rule now sees
/// `KeyScopes::Unscoped`, so the same intent refuses all three ways to an
/// unscoped key: create one, reissue an unscoped sibling, PATCH itself
/// unscoped.
#[tokio::test]
async fn a_grant_rule_sees_an_unscoped_key_as_unscoped_in_create_reissue_and_patch() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = App::new(move |api| {
        api.grant_rule(move |_, request| {
            log.lock()
                .unwrap()
                .push((request.kind, request.requested == KeyScopes::Unscoped));
            matches!(request.requested, KeyScopes::Scoped(scopes)
                if scopes.iter().all(|s| s.as_str().starts_with("team.")))
        })
    })
    .await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, "team.read"]).await;
    let sibling = mint(&app.store, "sa-a", &[]).await;
    let legacy = app.send(&manager, "GET", "/v1/legacy", None).await;
    assert_eq!(legacy.status, 403, "the manager is refused on /legacy");

    let created = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a"})),
        )
        .await;
    assert_denied(&created, &["unscoped"]);
    let reissued = app
        .send(
            &manager,
            "POST",
            &format!("/admin/keys/{}:reissue", id_of(&sibling)),
            None,
        )
        .await;
    assert_denied(&reissued, &["unscoped"]);
    let patched = app
        .send(
            &manager,
            "PATCH",
            &format!("/admin/keys/{}", id_of(&manager)),
            Some(json!({"scopes": []})),
        )
        .await;
    assert_denied(&patched, &["unscoped"]);
    assert_eq!(
        app.send(&manager, "GET", "/v1/legacy", None).await.status,
        403,
        "still refused: nothing was written"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (GrantKind::Create, true),
            (GrantKind::Reissue, true),
            (GrantKind::ChangeScopes, true),
        ]
    );
    // A scoped request within the rule is still allowed.
    let team = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": ["team.write"]})),
        )
        .await;
    assert_eq!(team.status, 201, "{}", team.text());
}

/// Issue 20, point 4: a key holding both routers' scopes could mint a
/// `/console` key through `/admin`, whose own management scope is only
/// `apikeys.manage`. Every router on one authenticator now refuses every
/// management scope of the others, unless named in `grantable_scopes`.
#[tokio::test]
async fn no_management_router_hands_out_another_routers_management_scope() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, CONSOLE, TRANSLATE]).await;
    let sibling = mint(&app.store, "sa-a", &[TRANSLATE]).await;
    let created = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [CONSOLE]})),
        )
        .await;
    assert_denied(&created, &[CONSOLE]);
    let patched = app
        .send(
            &manager,
            "PATCH",
            &format!("/admin/keys/{}", id_of(&sibling)),
            Some(json!({"scopes": [TRANSLATE, CONSOLE]})),
        )
        .await;
    assert_denied(&patched, &[CONSOLE]);
    // And the other way round: `/console` does not hand out `/admin`'s.
    let from_console = app
        .send(
            &manager,
            "POST",
            "/console/keys",
            Some(json!({"service_account_id": "sa-b", "scopes": [MANAGE]})),
        )
        .await;
    assert_denied(&from_console, &[MANAGE]);

    // Named explicitly, it is grantable.
    let named = App::new(|api| api.grantable_scopes([CONSOLE])).await;
    let manager = mint(&named.store, "sa-a", &[MANAGE, CONSOLE]).await;
    let created = named
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [CONSOLE]})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
}

#[tokio::test]
async fn an_expiry_past_year_9999_in_utc_is_400_and_stores_nothing() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, TRANSLATE]).await;
    let sibling = mint(&app.store, "sa-a", &[TRANSLATE]).await;
    let before = app.keys("sa-a").await;
    for (method, path, body) in [
        (
            "POST",
            "/admin/keys".to_owned(),
            json!({"service_account_id": "sa-a", "scopes": [TRANSLATE],
                   "expires_at": "9999-12-31T23:59:59-14:00"}),
        ),
        (
            "PATCH",
            format!("/admin/keys/{}", id_of(&sibling)),
            json!({"expires_at": "9999-12-31T23:59:59-14:00"}),
        ),
    ] {
        let reply = app.send(&manager, method, &path, Some(body)).await;
        assert_eq!(reply.status, 400, "{method}: {}", reply.text());
        assert!(reply.message().contains("9999-12-31T23:59:59.999Z"));
    }
    assert_eq!(app.keys("sa-a").await, before, "nothing stored");
    let listed = app
        .send(&manager, "GET", "/admin/keys?service_account_id=sa-a", None)
        .await;
    assert_eq!(listed.status, 200, "the account still lists");

    // The last instant every store and formatter can hold is fine.
    let last = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE],
                        "expires_at": "9999-12-31T23:59:59+14:00"})),
        )
        .await;
    assert_eq!(last.status, 201, "{}", last.text());
    assert_eq!(last.json()["key"]["expires_at"], "9999-12-31T09:59:59.000Z");
}

#[tokio::test]
async fn stores_refuse_an_expiry_they_could_not_show() {
    let store = MemoryStore::new();
    let past_9999 = tower_api_key::store::latest_time() + Duration::from_millis(1);
    let refused = store
        .create(NewKey::new("sa-a").with_expires_at(past_9999))
        .await;
    assert!(refused.is_err());
    let created = store.create(NewKey::new("sa-a")).await.unwrap();
    let update = tower_api_key::store::KeyUpdate::default().with_expires_at(Some(past_9999));
    assert!(store
        .update(created.record.key_id, update, None)
        .await
        .is_err());
    assert_eq!(
        store
            .get(created.record.key_id)
            .await
            .unwrap()
            .unwrap()
            .record
            .expires_at,
        None
    );
    assert!(SystemTime::now() < past_9999);
}

#[tokio::test]
async fn a_key_pasted_into_a_stored_field_is_400_and_stores_nothing() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, TRANSLATE]).await;
    let before = app.keys("sa-a").await;
    for (body, field) in [
        (
            json!({"service_account_id": "sa-a", "scopes": [TRANSLATE],
                   "description": format!("key: {manager}")}),
            "description",
        ),
        (json!({"service_account_id": manager}), "service_account_id"),
    ] {
        let reply = app.send(&manager, "POST", "/admin/keys", Some(body)).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(reply.message().starts_with(field), "{}", reply.message());
        assert!(!reply.text().contains(&manager[4..]), "not echoed");
    }
    let patched = app
        .send(
            &manager,
            "PATCH",
            &format!("/admin/keys/{}", id_of(&manager)),
            Some(json!({ "description": manager })),
        )
        .await;
    assert_eq!(patched.status, 400);
    assert_eq!(app.keys("sa-a").await, before, "nothing stored");
}

// ---------------------------------------------------------------------------
// Limits: a key that carries rate limits or credits (its own or its
// account's) may not lift them through the management API.

/// Everything a limited caller might try, and the 403 message fragment.
fn lifting_requests(
    manager: &str,
    sibling: &str,
    narrow: &str,
) -> Vec<(&'static str, String, Option<Value>, &'static str)> {
    let own = format!("/admin/keys/{}", id_of(manager));
    let sib = format!("/admin/keys/{}", id_of(sibling));
    vec![
        (
            "POST",
            "/admin/keys".into(),
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE]})),
            "create keys",
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE],
                        "rate_limits": [{"limit": 1, "period": "1d"}], "credits": {"remaining": 1}})),
            "create keys",
        ),
        (
            "PATCH",
            own.clone(),
            Some(json!({"rate_limits": null})),
            "change the rate limits or credits",
        ),
        (
            "PATCH",
            own.clone(),
            Some(json!({"credits": null})),
            "change the rate limits or credits",
        ),
        (
            "PATCH",
            own.clone(),
            Some(json!({"credits": {"remaining": 1_000_000_000}})),
            "change the rate limits or credits",
        ),
        (
            "PATCH",
            sib.clone(),
            Some(json!({"rate_limits": [{"limit": 1, "period": "1s"}]})),
            "change the rate limits or credits",
        ),
        (
            "PATCH",
            format!("/admin/keys/{}", id_of(narrow)),
            Some(json!({"scopes": ["yc.ai.other", TRANSLATE]})),
            "add scopes",
        ),
        (
            "POST",
            format!("{own}:addCredits"),
            Some(json!({"amount": 1000})),
            "add credits",
        ),
        (
            "POST",
            format!("{sib}:addCredits"),
            Some(json!({"amount": 1000})),
            "add credits",
        ),
        (
            "POST",
            format!("{sib}:reissue"),
            None,
            "reissue a key other than itself",
        ),
        (
            "PUT",
            "/admin/accounts/sa-a/rate-limits".into(),
            Some(json!({"rate_limits": []})),
            "set the rate limits of a service account",
        ),
    ]
}

#[tokio::test]
async fn a_limited_caller_cannot_lift_its_limits_by_any_route() {
    for how in [Limit::Own, Limit::Credits, Limit::Account] {
        let app = App::new(|api| api).await;
        let manager =
            mint_limited(&app.store, "sa-a", &[MANAGE, TRANSLATE, "yc.ai.other"], how).await;
        // Unlimited keys of the same account.
        let sibling = app
            .store
            .create(
                NewKey::new("sa-a")
                    .with_scopes(ScopeSet::new([TRANSLATE, "yc.ai.other"]).unwrap())
                    .with_credits(Credits::new(5).unwrap()),
            )
            .await
            .unwrap()
            .key
            .expose_secret()
            .to_owned();
        let narrow = mint(&app.store, "sa-a", &["yc.ai.other"]).await;
        let state = || async {
            (
                but_own_spending(app.keys("sa-a").await, &manager),
                app.store.account_rate_limits("sa-a").await.unwrap(),
            )
        };
        let before = state().await;
        for (method, path, body, action) in lifting_requests(&manager, &sibling, &narrow) {
            let reply = app.send(&manager, method, &path, body).await;
            assert_eq!(
                reply.status,
                403,
                "{how:?} {method} {path}: {}",
                reply.text()
            );
            assert_eq!(reply.error(), "permission_denied");
            assert!(
                reply.message().contains(action),
                "{how:?}: {}",
                reply.message()
            );
            assert!(reply.message().contains("rate limits or credits"));
        }
        assert_eq!(state().await, before, "{how:?}: refused before the store");

        // What gains nothing stays open to it.
        let own = format!("/admin/keys/{}", id_of(&manager));
        for (method, path, body, status) in [
            ("GET", own.clone(), None, 200),
            (
                "GET",
                "/admin/keys?service_account_id=sa-a".to_owned(),
                None,
                200,
            ),
            (
                "GET",
                "/admin/accounts/sa-a/rate-limits".to_owned(),
                None,
                200,
            ),
            (
                "PATCH",
                own.clone(),
                Some(json!({"description": "still limited"})),
                200,
            ),
            (
                "PATCH",
                format!("/admin/keys/{}", id_of(&sibling)),
                Some(json!({"scopes": [TRANSLATE]})),
                200,
            ),
            (
                "DELETE",
                format!("/admin/keys/{}", id_of(&narrow)),
                None,
                204,
            ),
            ("POST", format!("{own}:reissue"), None, 200),
        ] {
            let reply = app.send(&manager, method, &path, body).await;
            assert_eq!(
                reply.status,
                status,
                "{how:?} {method} {path}: {}",
                reply.text()
            );
        }
        let after = app
            .store
            .get(id_of(&manager).parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        match how {
            Limit::Own => assert_eq!(after.record.rate_limits, vec![generous()]),
            Limit::Credits => assert!(after.record.credits.is_some()),
            Limit::Account => assert_eq!(after.record.account_rate_limits, vec![generous()]),
        }
    }
}

#[tokio::test]
async fn an_unlimited_manager_limits_the_keys_and_account_it_manages_and_is_then_limited_at_once() {
    let app = App::new(|api| api).await;
    let manager = mint(&app.store, "sa-a", &[MANAGE, TRANSLATE]).await;
    let sibling = mint(&app.store, "sa-a", &[TRANSLATE]).await;
    let created = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE],
                        "rate_limits": [{"limit": 5, "period": "1s"}], "credits": {"remaining": 3}})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let limited = created.json()["secret"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        (
            "PATCH",
            format!("/admin/keys/{}", id_of(&sibling)),
            json!({"credits": {"remaining": 2}}),
        ),
        (
            "POST",
            format!("/admin/keys/{}:addCredits", id_of(&sibling)),
            json!({"amount": 3}),
        ),
        (
            "PATCH",
            format!("/admin/keys/{}", id_of(&limited)),
            json!({"rate_limits": null}),
        ),
    ] {
        let reply = app.send(&manager, method, &path, Some(body)).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text());
    }
    // The key it made with limits cannot lift them (nor make keys).
    let lift = app
        .send(
            &limited,
            "PATCH",
            &format!("/admin/keys/{}", id_of(&limited)),
            Some(json!({"credits": null})),
        )
        .await;
    assert_eq!(lift.status, 403, "limited by its credits: {}", lift.text());

    // Another account's limits are not its to read or set.
    for (method, body) in [("GET", None), ("PUT", Some(json!({"rate_limits": []})))] {
        let reply = app
            .send(&manager, method, "/admin/accounts/sa-b/rate-limits", body)
            .await;
        assert_denied(&reply, &["sa-b"]);
    }
    assert!(app
        .store
        .account_rate_limits("sa-b")
        .await
        .unwrap()
        .is_empty());

    // Its own account's limits it may set; from then on it is limited, at once.
    let set = app
        .send(
            &manager,
            "PUT",
            "/admin/accounts/sa-a/rate-limits",
            Some(json!({"rate_limits": [{"limit": 100000, "period": "1s"}]})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let refused = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE]})),
        )
        .await;
    assert_denied(&refused, &["create keys"]);
    let clear = app
        .send(
            &manager,
            "PUT",
            "/admin/accounts/sa-a/rate-limits",
            Some(json!({"rate_limits": []})),
        )
        .await;
    assert_denied(&clear, &["set the rate limits"]);

    // An operator console lifts them; the manager may create keys again.
    let operator = mint(&app.store, "sa-ops", &[CONSOLE]).await;
    let lifted = app
        .send(
            &operator,
            "PUT",
            "/console/accounts/sa-a/rate-limits",
            Some(json!({"rate_limits": []})),
        )
        .await;
    assert_eq!(lifted.status, 200, "{}", lifted.text());
    let again = app
        .send(
            &manager,
            "POST",
            "/admin/keys",
            Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE]})),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text());
}

/// Every request a limited caller might make, by every kind of limited
/// (and by an unlimited) caller, with and without `allow_limited_callers`:
/// refused before the store exactly when the caller is limited and the
/// router does not allow it.
#[tokio::test]
async fn every_lifting_request_by_every_kind_of_caller_with_and_without_the_opt_in() {
    let kinds = [
        None,
        Some(Limit::Own),
        Some(Limit::Credits),
        Some(Limit::Account),
    ];
    let any = "tak_0123456789abcdef";
    let requests = lifting_requests(any, any, any).len();
    for how in kinds {
        for allow in [false, true] {
            for i in 0..requests {
                let app = App::new(|api| {
                    if allow {
                        api.allow_limited_callers()
                    } else {
                        api
                    }
                })
                .await;
                let scopes = [MANAGE, TRANSLATE, "yc.ai.other"];
                let manager = match how {
                    Some(how) => mint_limited(&app.store, "sa-a", &scopes, how).await,
                    None => mint(&app.store, "sa-a", &scopes).await,
                };
                let sibling = app
                    .store
                    .create(
                        NewKey::new("sa-a")
                            .with_scopes(ScopeSet::new([TRANSLATE, "yc.ai.other"]).unwrap())
                            .with_credits(Credits::new(5).unwrap()),
                    )
                    .await
                    .unwrap()
                    .key
                    .expose_secret()
                    .to_owned();
                let narrow = mint(&app.store, "sa-a", &["yc.ai.other"]).await;
                let (method, path, body, _) =
                    lifting_requests(&manager, &sibling, &narrow).swap_remove(i);
                let before = (
                    but_own_spending(app.keys("sa-a").await, &manager),
                    app.store.account_rate_limits("sa-a").await.unwrap(),
                );
                let reply = app.send(&manager, method, &path, body).await;
                let case = format!("{how:?} allow={allow} {method} {path}: {}", reply.text());
                if how.is_some() && !allow {
                    assert_eq!(reply.status, 403, "{case}");
                    let after = (
                        but_own_spending(app.keys("sa-a").await, &manager),
                        app.store.account_rate_limits("sa-a").await.unwrap(),
                    );
                    assert_eq!(after, before, "{case}");
                } else if path.ends_with(&format!("{}:addCredits", id_of(&manager)))
                    && how != Some(Limit::Credits)
                {
                    assert_eq!(reply.status, 409, "a key without credits: {case}");
                } else {
                    assert!(reply.status.is_success(), "{case}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The invariant, over random callers, requests and grants, against every
// route policy that can be built from a small universe of scopes.

const UNIVERSE: [&str; 5] = ["a.x", "b.y", "c.z", MANAGE, "ops.admin"];

fn subset(bits: u8) -> Vec<&'static str> {
    UNIVERSE
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

fn scope_set(bits: u8) -> ScopeSet {
    ScopeSet::new(subset(bits)).unwrap()
}

/// Every route policy over the universe.
fn every_policy() -> Vec<ScopePolicy> {
    let mut all = vec![
        ScopePolicy::unscoped_keys_only(),
        ScopePolicy::any_valid_key(),
    ];
    for bits in 1..(1u8 << UNIVERSE.len()) {
        all.push(ScopePolicy::require_any(subset(bits)).unwrap());
    }
    all
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Patch { from: u8, to: u8 },
    Reissue(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let bits = 0u8..(1 << UNIVERSE.len());
    prop_oneof![
        bits.clone().prop_map(Op::Create),
        (bits.clone(), bits.clone()).prop_map(|(from, to)| Op::Patch { from, to }),
        bits.prop_map(Op::Reissue),
    ]
}

/// Runs `op` by a caller holding `caller` on a router granting `granted`
/// (and unscoped keys when `unscoped`); returns the status and, when it
/// succeeded, the scopes of the key it produced.
async fn run(
    caller: u8,
    granted: u8,
    unscoped: bool,
    limited: bool,
    op: &Op,
) -> (u16, Option<ScopeSet>) {
    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    let mut api = ManagementApiBuilder::new(store.clone(), &auth).grantable_scopes(subset(granted));
    if unscoped {
        api = api.allow_unscoped_keys();
    }
    let router = api.build();
    let caller_key = if limited {
        mint_limited(&store, "sa", &subset(caller), Limit::Own).await
    } else {
        mint(&store, "sa", &subset(caller)).await
    };
    let (method, path, body) = match op {
        Op::Create(to) => (
            "POST",
            "/keys".to_owned(),
            Some(json!({"service_account_id": "sa", "scopes": subset(*to)})),
        ),
        Op::Patch { from, to } => {
            let target = mint(&store, "sa", &subset(*from)).await;
            (
                "PATCH",
                format!("/keys/{}", id_of(&target)),
                Some(json!({ "scopes": subset(*to) })),
            )
        }
        Op::Reissue(scopes) => {
            let target = mint(&store, "sa", &subset(*scopes)).await;
            ("POST", format!("/keys/{}:reissue", id_of(&target)), None)
        }
    };
    let before = store.list("sa", ListRequest::first(10)).await.unwrap().keys;
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Api-Key {caller_key}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = router
        .oneshot(request.body(axum::body::Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    if !(200..300).contains(&status) {
        let after = store.list("sa", ListRequest::first(10)).await.unwrap().keys;
        assert_eq!(after, before, "a refused request changes nothing");
        return (status, None);
    }
    let json: Value = serde_json::from_slice(&bytes).unwrap();
    let resource = if json.get("key").is_some() {
        &json["key"]
    } else {
        &json
    };
    let id: KeyId = resource["id"].as_str().unwrap().parse().unwrap();
    let stored = store.get(id).await.unwrap().unwrap().record.scopes;
    (status, Some(stored))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_request_makes_a_key_accepted_where_the_caller_is_refused_outside_the_grants(
        caller in 0u8..(1 << UNIVERSE.len()),
        granted in 0u8..(1 << UNIVERSE.len()),
        unscoped in any::<bool>(),
        limited in any::<bool>(),
        op in op(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, produced) = runtime.block_on(run(caller, granted, unscoped, limited, &op));
        let held = scope_set(caller);
        let grants = scope_set(granted);
        let manage = tower_api_key::Scope::new(MANAGE).unwrap();
        if !held.contains(&manage) {
            prop_assert_eq!(status, 403, "no management scope, no entry");
            return Ok(());
        }
        // A caller with limits of its own makes no key, adds no scope and
        // receives no other key (the target is never the caller itself).
        let gains = match &op {
            Op::Create(_) | Op::Reissue(_) => true,
            Op::Patch { from, to } => {
                let (from, to) = (scope_set(*from), scope_set(*to));
                to.iter().any(|s| !from.contains(s)) || (to.is_empty() && !from.is_empty())
            }
        };
        if limited && gains {
            prop_assert_eq!(status, 403, "a limited caller gained by {:?}", op);
            prop_assert!(produced.is_none());
            return Ok(());
        }
        // What the key had before the request and may keep (PATCH only).
        let kept = match &op {
            Op::Patch { from, .. } => scope_set(*from),
            _ => ScopeSet::empty(),
        };
        let Some(new) = produced else {
            // Liveness: what the rule allows must go through.
            let wanted = match &op {
                Op::Create(to) | Op::Patch { to, .. } | Op::Reissue(to) => scope_set(*to),
            };
            let may = |s: &tower_api_key::Scope| {
                grants.contains(s)
                    || kept.contains(s)
                    // The target is never the caller: a reissue hands out no
                    // management scope either (it would copy the caller).
                    || (held.contains(s) && s != &manage)
            };
            let allowed = if wanted.is_empty() {
                unscoped || matches!(&op, Op::Patch { from: 0, .. })
            } else {
                wanted.iter().all(may)
            };
            prop_assert!(!allowed, "refused ({status}) although the rule allows it: {op:?}");
            prop_assert_eq!(status, 403);
            return Ok(());
        };
        for policy in every_policy() {
            if policy.check(&new).is_err() || policy.check(&held).is_ok() {
                continue;
            }
            // `policy` accepts the new key and refuses the caller: only an
            // explicit grant (or a scope the patched key kept) may explain it.
            let explained = match policy.required() {
                None => new.is_empty() && (unscoped || (matches!(op, Op::Patch { .. }) && kept.is_empty())),
                Some(required) => required
                    .iter()
                    .filter(|s| new.contains(s))
                    .all(|s| grants.contains(s) || kept.contains(s)),
            };
            prop_assert!(explained, "{op:?}: {new:?} passes {policy:?}, which refuses {held:?}");
        }
        // The management scope is never given unless granted by name.
        if new.contains(&manage) && !kept.contains(&manage) {
            prop_assert!(grants.contains(&manage), "{op:?} gave {MANAGE}");
        }
    }
}

// ---------------------------------------------------------------------------
// Issue 20, point 1: a check and the write it guards are one step.

/// Holds, once armed, the first `update` that writes [`grant_race::X`] until
/// released: a PATCH keeping `X` stops between its read-and-check and its
/// write, exactly where the attack needs it.
struct Hold {
    armed: AtomicBool,
    arrived: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl Hook for Hold {
    async fn before(&self, _: &MemoryStore, call: Call<'_>) -> Result<(), StoreError> {
        let Call::Update { update, .. } = call else {
            return Ok(());
        };
        let writes_x = update
            .scopes
            .as_ref()
            .is_some_and(|s| s.iter().any(|s| s.as_str() == grant_race::X));
        if writes_x && self.armed.swap(false, Ordering::SeqCst) {
            self.arrived.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

/// The winning interleaving of the race, forced: a PATCH adding `T2` while
/// keeping `X` reads `[T, X]` and passes its check, the narrowing and the
/// reissue complete, then the PATCH writes. It must find the key changed, check again against
/// `[T]` and be refused, leaving the reissued key without `X`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_patch_checked_before_a_narrowing_and_a_reissue_cannot_write_after_them() {
    use grant_race::{T, T2, X};
    let store = Hooked::new(
        MemoryStore::new(),
        Hold {
            armed: AtomicBool::new(true),
            arrived: Notify::new(),
            release: Notify::new(),
        },
    );
    let auth = Authenticator::new(store.clone());
    let router = Router::new().nest(
        "/admin",
        ManagementApiBuilder::new(store.clone(), &auth).build(),
    );
    let client = Client::new(serve(router).await);
    let manager = mint(&store.store, "sa-a", &[MANAGE, T, T2]).await;
    let victim = mint(&store.store, "sa-a", &[T, X]).await;
    let path = format!("/admin/keys/{}", id_of(&victim));

    let keep = {
        let (client, manager, path) = (client.clone(), manager.clone(), path.clone());
        tokio::spawn(async move {
            client
                .send(
                    "PATCH",
                    &path,
                    Some(&manager),
                    Some(json!({"scopes": [T, T2, X]})),
                )
                .await
        })
    };
    store.hook.arrived.notified().await;
    let narrow = client
        .send("PATCH", &path, Some(&manager), Some(json!({"scopes": [T]})))
        .await;
    assert_eq!(narrow.status, 200, "{}", narrow.text());
    let reissue = client
        .send(
            "POST",
            &format!("{path}:reissue"),
            Some(&manager),
            Some(json!({"grace_period_seconds": 2_592_000})),
        )
        .await;
    assert_eq!(reissue.status, 200, "{}", reissue.text());
    store.hook.release.notify_one();

    let keep = keep.await.unwrap();
    assert_denied(&keep, &[X]);
    let id: KeyId = id_of(&victim).parse().unwrap();
    let now = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        now.record.scopes,
        ScopeSet::new([T]).unwrap(),
        "X never came back"
    );
    let secret = reissue.json()["secret"].as_str().unwrap().to_owned();
    let record = store
        .verify(&store.key_format().unwrap().parse(&secret).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.scopes, ScopeSet::new([T]).unwrap());
}

/// The race itself, 200 rounds on the memory store (the SQLite and
/// PostgreSQL tests run it on theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_narrow_reissue_race_never_hands_out_an_ungrantable_scope() {
    let outcome = grant_race::run(MemoryStore::new(), 200).await;
    eprintln!("{outcome:?}");
    assert!(
        outcome.reissued > 0,
        "the race ran to a reissue: {outcome:?}"
    );
}
