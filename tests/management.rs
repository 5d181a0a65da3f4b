//! The management API over real HTTP on 127.0.0.1.
#![cfg(feature = "management")]

mod common;

use std::time::{Duration, SystemTime};

use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tower_api_key::management::{self, AccountAccess, ManagementApiBuilder};
use tower_api_key::store::{KeyInfo, ListRequest, NewKey};
use tower_api_key::usage::UsageRecorder;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::{Authenticator, Caller, PresentedKey};

use common::logs::Logs;
use common::tcp::{serve, Client};
use common::Reply;

const TRANSLATE: &str = "yc.ai.translate.execute";

/// method, path, JSON body, status, error code, message fragment
type JsonCase<'a> = (&'a str, &'a str, Option<Value>, u16, &'a str, &'a str);
/// method, path, content type, body, status, message fragment
type RawCase<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);

// ---------------------------------------------------------------------------
// Every log line of this test binary, at TRACE for every target.

/// The process-wide log capture: it sees events from every thread and task,
/// whatever runtime they run on.
fn logs() -> &'static Logs {
    Logs::everything()
}

// ---------------------------------------------------------------------------

struct App {
    client: Client,
    store: MemoryStore,
    usage: UsageRecorder,
    admin: String,
}

/// A service with one scoped route, `/whoami`, and the management API under
/// `/admin` for an operator key holding `apikeys.manage`.
async fn app(configure: impl FnOnce(ManagementApiBuilder) -> ManagementApiBuilder) -> App {
    logs();
    let store = MemoryStore::new();
    let usage = UsageRecorder::new(store.clone());
    let auth = Authenticator::builder(store.clone())
        .usage_recorder(usage.clone())
        .build();
    // An operator console: every account, the service's scopes and unscoped keys.
    let api = ManagementApiBuilder::new(store.clone(), &auth)
        .account_access(AccountAccess::any_account())
        .grantable_scopes([TRANSLATE, "yc.ai.read"])
        .allow_unscoped_keys();
    let app = Router::new()
        .route(
            "/v1/translate",
            post(|caller: Caller| async move { caller.service_account_id().to_owned() })
                .route_layer(auth.require_any([TRANSLATE])),
        )
        .route(
            "/whoami",
            get(|caller: Caller| async move { caller.key_id().to_string() })
                .route_layer(auth.any_valid_key()),
        )
        .nest("/admin", configure(api).build());
    let admin = mint(&store, "sa-ops", &[management::DEFAULT_SCOPE]).await;
    App {
        client: Client::new(serve(app).await),
        store,
        usage,
        admin,
    }
}

async fn mint(store: &MemoryStore, account: &str, scopes: &[&str]) -> String {
    let created = store
        .create(NewKey::new(account).with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap()))
        .await
        .unwrap();
    created.key.expose_secret().to_owned()
}

impl App {
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.client
            .send(method, &format!("/admin{path}"), Some(&self.admin), body)
            .await
    }

    async fn translate(&self, key: &str) -> Reply {
        self.client
            .send("POST", "/v1/translate", Some(key), None)
            .await
    }

    /// Every key of `accounts`, as the store holds them, and the store's size.
    async fn state(&self, accounts: &[&str]) -> (String, Vec<KeyInfo>) {
        let mut all = Vec::new();
        for account in accounts {
            let page = self
                .store
                .list(
                    account,
                    ListRequest::first(tower_api_key::store::MAX_PAGE_SIZE),
                )
                .await
                .unwrap();
            all.extend(page.keys);
        }
        (format!("{:?}", self.store), all)
    }
}

fn rfc3339(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().expect("a timestamp")).unwrap()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_whole_lifecycle_over_http() {
    let app = app(|api| api).await;

    // Create: 201, the resource and the secret.
    let expires = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({
                "service_account_id": "sa-translator",
                "description": "ci deploys",
                "scopes": [TRANSLATE],
                "expires_at": expires.to_string(),
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("cache-control"), "no-store");
    let body = created.json();
    let secret = body["secret"].as_str().unwrap().to_owned();
    let key = body["key"].clone();
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        format!("keys/{id}"),
        "relative to /admin/keys"
    );
    assert!(secret.starts_with("tak_") && secret.contains(&id));
    assert_eq!(key["service_account_id"], "sa-translator");
    assert_eq!(key["description"], "ci deploys");
    assert_eq!(key["scopes"], json!([TRANSLATE]));
    assert_eq!(
        rfc3339(&key["expires_at"]),
        humantime::parse_rfc3339(&expires.to_string()).unwrap()
    );
    assert!(rfc3339(&key["created_at"]) <= SystemTime::now());
    assert_eq!(key["last_used_at"], Value::Null, "never used");
    let hint = key["hint"].as_str().unwrap();
    assert!(hint.starts_with("tak_…") && secret.ends_with(&hint["tak_…".len()..]));
    assert!(
        hint.chars().count() < 12,
        "a hint is never enough to use the key"
    );

    // Use it; a GET shows the same resource, and last_used_at stays null
    // until the recorder flushes.
    assert_eq!(app.translate(&secret).await.status, 200);
    assert_eq!(
        app.translate(&secret).await.status,
        200,
        "now from the cache"
    );
    let got = app.admin("GET", &format!("/keys/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), key, "unchanged, last_used_at still null");
    assert_eq!(
        app.usage.flush().await.unwrap(),
        2,
        "the key and the admin key"
    );

    // List: the key with its last_used_at.
    let listed = app
        .admin("GET", "/keys?service_account_id=sa-translator", None)
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let page = listed.json();
    assert_eq!(page["next_page_token"], Value::Null);
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    let last_used = rfc3339(&page["keys"][0]["last_used_at"]);
    assert!(last_used >= rfc3339(&key["created_at"]) && last_used <= SystemTime::now());

    // Update: description, scopes and expiry; the new scopes apply at once.
    let patched = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"description": "read only", "scopes": ["yc.ai.read"], "expires_at": null})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let resource = patched.json();
    assert_eq!(resource["description"], "read only");
    assert_eq!(resource["scopes"], json!(["yc.ai.read"]));
    assert_eq!(resource["expires_at"], Value::Null);
    assert_eq!(resource["created_at"], key["created_at"]);
    assert_eq!(app.translate(&secret).await.status, 403, "scope removed");
    let patched = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"scopes": [TRANSLATE]})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(
        patched.json()["description"],
        "read only",
        "absent: unchanged"
    );
    assert_eq!(app.translate(&secret).await.status, 200, "scope back");

    // Reissue: a new secret, shown once; the old one stops at once.
    let reissued = app
        .admin("POST", &format!("/keys/{id}:reissue"), None)
        .await;
    assert_eq!(reissued.status, 200, "{}", reissued.text());
    let body = reissued.json();
    let new_secret = body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(body["key"]["id"], id.as_str());
    assert_eq!(body["key"]["last_used_at"], page["keys"][0]["last_used_at"]);
    assert!(new_secret.ends_with(&body["key"]["hint"].as_str().unwrap()["tak_…".len()..]));
    assert_eq!(app.translate(&secret).await.status, 401, "no grace period");
    assert_eq!(app.translate(&new_secret).await.status, 200);

    // Delete: 204, refused on the very next request, then 404.
    let deleted = app.admin("DELETE", &format!("/keys/{id}"), None).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.text().is_empty());
    assert_eq!(
        app.translate(&new_secret).await.status,
        401,
        "refused at once"
    );
    assert_eq!(
        app.admin("GET", &format!("/keys/{id}"), None).await.status,
        404
    );
    assert_eq!(
        app.admin("DELETE", &format!("/keys/{id}"), None)
            .await
            .status,
        404
    );
    let listed = app
        .admin("GET", "/keys?service_account_id=sa-translator", None)
        .await;
    assert_eq!(listed.json()["keys"], json!([]));

    // Each secret was in exactly one response: the create and the reissue.
    assert_eq!(app.client.responses_containing(&secret), 1);
    assert_eq!(app.client.responses_containing(&new_secret), 1);
    assert!(app.client.seen.lock().unwrap()[0].contains(&secret));
    // And in no log line, although the key id is logged at every step.
    let logs = logs().text();
    assert!(
        logs.contains(&id),
        "the capture works: the key id is logged"
    );
    assert!(logs.contains("api key created") && logs.contains("api key deleted"));
    for s in [&secret, &new_secret] {
        assert!(!logs.contains(s.as_str()));
        assert!(
            !logs.contains(&s[s.len() - 38..]),
            "not even the secret part"
        );
    }
}

#[tokio::test]
async fn last_used_at_is_null_before_first_use_and_set_after_a_flush() {
    let app = app(|api| api).await;
    let secret = mint(&app.store, "sa-1", &[TRANSLATE]).await;
    let path = format!("/keys/{}", &secret[4..20]);
    let last_used = || async { app.admin("GET", &path, None).await.json()["last_used_at"].clone() };
    assert_eq!(last_used().await, Value::Null, "never used");
    app.usage.flush().await.unwrap();
    assert_eq!(last_used().await, Value::Null, "a flush writes only uses");

    let before = SystemTime::now() - Duration::from_millis(1);
    assert_eq!(app.translate(&secret).await.status, 200);
    assert_eq!(last_used().await, Value::Null, "written behind: not yet");
    app.usage.flush().await.unwrap();
    let at = rfc3339(&last_used().await);
    assert!(at >= before && at <= SystemTime::now());
}

#[tokio::test]
async fn the_flusher_makes_last_used_at_visible_within_an_interval() {
    logs();
    let store = MemoryStore::new();
    let usage = UsageRecorder::builder(store.clone())
        .flush_interval(Duration::from_millis(50))
        .build();
    let auth = Authenticator::builder(store.clone())
        .usage_recorder(usage.clone())
        .build();
    let flusher = usage.spawn_flusher();
    let app = Router::new().nest(
        "/admin",
        ManagementApiBuilder::new(store.clone(), &auth)
            .account_access(AccountAccess::any_account())
            .build(),
    );
    let client = Client::new(serve(app).await);
    let admin = mint(&store, "sa-ops", &[management::DEFAULT_SCOPE]).await;
    let admin_id = &admin[4..20];
    let path = format!("/admin/keys/{admin_id}");

    // The GET itself uses the admin key; it shows the state before it.
    let first = client.send("GET", &path, Some(&admin), None).await;
    assert_eq!(
        first.json()["last_used_at"],
        Value::Null,
        "never used before"
    );
    let mut seen = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = client.send("GET", &path, Some(&admin), None).await.json()["last_used_at"].clone();
        if !seen.is_null() {
            break;
        }
    }
    assert!(!seen.is_null(), "flushed in the background");
    flusher.shutdown().await.unwrap();
}

#[tokio::test]
async fn reissue_with_a_grace_period_keeps_the_old_secret_for_a_while() {
    let app = app(|api| api).await;
    let old = mint(&app.store, "sa-1", &[TRANSLATE]).await;
    let id = &old[4..20];
    assert_eq!(app.translate(&old).await.status, 200);
    let reissued = app
        .admin(
            "POST",
            &format!("/keys/{id}:reissue"),
            Some(json!({"grace_period_seconds": 3600})),
        )
        .await;
    assert_eq!(reissued.status, 200, "{}", reissued.text());
    let new = reissued.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(app.translate(&old).await.status, 200, "in its grace period");
    assert_eq!(app.translate(&new).await.status, 200);
    // Delete ends both at once.
    assert_eq!(
        app.admin("DELETE", &format!("/keys/{id}"), None)
            .await
            .status,
        204
    );
    assert_eq!(app.translate(&old).await.status, 401);
    assert_eq!(app.translate(&new).await.status, 401);
}

#[tokio::test]
async fn listing_is_paged() {
    let app = app(|api| api).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let secret = mint(&app.store, "sa-many", &[]).await;
        ids.push(secret[4..20].to_owned());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = app
        .admin("GET", "/keys?service_account_id=sa-many&page_size=2", None)
        .await
        .json();
    assert_eq!(first["keys"].as_array().unwrap().len(), 2);
    let token = first["next_page_token"].as_str().unwrap();
    let second = app
        .admin(
            "GET",
            &format!("/keys?service_account_id=sa-many&page_size=2&page_token={token}"),
            None,
        )
        .await
        .json();
    assert_eq!(second["keys"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_page_token"], Value::Null);
    let listed: Vec<&str> = first["keys"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["keys"].as_array().unwrap())
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "oldest first, each once");
}

/// `unused_for` lists the keys never used or not used for that long, in
/// the listing's pages; a duration that does not parse is 400 naming the
/// parameter, never echoing it.
#[tokio::test]
async fn unused_for_lists_only_keys_not_used_for_that_long() {
    let app = app(|api| api).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let secret = mint(&app.store, "sa-idle", &[TRANSLATE]).await;
        ids.push(secret[4..20].to_owned());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let used = mint(&app.store, "sa-idle", &[TRANSLATE]).await;
    assert_eq!(app.translate(&used).await.status, 200);
    app.usage.flush().await.unwrap();
    let app = &app;
    let list = |query: String| async move {
        let reply = app.admin("GET", &format!("/keys?{query}"), None).await;
        assert_eq!(reply.status, 200, "{query}");
        reply.json()
    };
    let ids_of = |page: &Value| -> Vec<String> {
        page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list("service_account_id=sa-idle&unused_for=1h".into()).await;
    assert_eq!(ids_of(&all), ids, "the used key is left out");
    let first = list("service_account_id=sa-idle&unused_for=90d&page_size=2".into()).await;
    assert_eq!(ids_of(&first), ids[..2]);
    let token = first["next_page_token"].as_str().unwrap();
    let second = list(format!(
        "service_account_id=sa-idle&unused_for=90d&page_size=2&page_token={token}"
    ))
    .await;
    assert_eq!(ids_of(&second), ids[2..]);
    assert_eq!(second["next_page_token"], Value::Null);
    // Without the filter the used key is there.
    let everything = list("service_account_id=sa-idle".into()).await;
    assert_eq!(everything["keys"].as_array().unwrap().len(), 4);

    for bad in ["soon", "90", "-1d", "1y", ""] {
        let reply = app
            .admin(
                "GET",
                &format!("/keys?service_account_id=sa-idle&unused_for={bad}"),
                None,
            )
            .await;
        assert_eq!(reply.status, 400, "{bad:?}");
        let body = reply.json();
        assert_eq!(body["error"], "invalid_argument");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("query: unused_for is not a duration such as 90d"),
            "{message}"
        );
    }
}

/// A listing page holds at most `management::MAX_PAGE_BYTES` of keys as
/// this API writes them (the store pages by count only, so the API trims),
/// a full page stops only where the next key would not fit, the token
/// continues from the page's last key (keys with the longest leak reports
/// included), and a key over the budget on its own is listed alone.
#[tokio::test]
async fn a_listing_page_stops_at_the_byte_budget_and_continues_from_its_last_key() {
    use tower_api_key::limits::{Credits, Refill, MAX_CREDITS};
    use tower_api_key::store::{CompromiseReport, Compromised, LeakAction};
    use tower_api_key_conformance::{ids_of, largest_rate_limits, largest_scopes, parse};

    let app = app(|api| api).await;
    let limits = largest_rate_limits();
    app.store
        .set_account_rate_limits("sa-big", limits.clone())
        .await
        .unwrap();
    let credits = Credits::new(MAX_CREDITS)
        .unwrap()
        .with_refill(Refill::monthly(MAX_CREDITS, 31).unwrap());
    // The longest leak report a store keeps, every byte one that JSON
    // escapes: the API counts the `compromise` it shows too.
    let url = "\"".repeat(CompromiseReport::MAX_URL_LEN);
    let source = "\\".repeat(CompromiseReport::MAX_SOURCE_LEN);
    for _ in 0..60 {
        let created = app
            .store
            .create(
                NewKey::new("sa-big")
                    .with_scopes(largest_scopes())
                    // Quotes and backslashes take two bytes each in JSON.
                    .with_description("\"\\".repeat(128))
                    .with_rate_limits(limits.clone())
                    .with_credits(credits),
            )
            .await
            .unwrap();
        let report = CompromiseReport::new(url.clone(), source.clone(), LeakAction::Notify);
        let key = parse(&app.store, &created.key);
        let outcome = app.store.record_compromise(&key, report).await.unwrap();
        assert!(matches!(outcome, Compromised::Acted { .. }));
    }
    // What a page's keys take: each key's JSON and a comma.
    let size = |key: &Value| serde_json::to_vec(key).unwrap().len() + 1;
    let pages = |account: &'static str, page_size: usize| {
        let app = &app;
        async move {
            let mut pages = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut path = format!("/keys?service_account_id={account}&page_size={page_size}");
                if let Some(token) = &token {
                    path.push_str(&format!("&page_token={token}"));
                }
                let reply = app.admin("GET", &path, None).await;
                assert_eq!(reply.status, 200);
                let page = reply.json();
                token = page["next_page_token"].as_str().map(str::to_owned);
                pages.push(page["keys"].as_array().unwrap().clone());
                if token.is_none() {
                    return pages;
                }
            }
        }
    };

    let listed = pages("sa-big", 200).await;
    assert!(listed.len() >= 2, "60 keys of ~28 KB need two pages");
    for (i, page) in listed.iter().enumerate() {
        assert!(!page.is_empty(), "page {i} is empty");
        let bytes: usize = page.iter().map(size).sum();
        assert!(
            bytes <= management::MAX_PAGE_BYTES,
            "page {i}: {bytes} bytes"
        );
        if let Some(next) = listed.get(i + 1) {
            // Full: the next key would not have fitted.
            assert!(
                bytes + size(&next[0]) > management::MAX_PAGE_BYTES,
                "page {i} stopped early at {bytes} bytes"
            );
        }
    }
    let ids: Vec<String> = listed
        .iter()
        .flatten()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        listed
            .iter()
            .flatten()
            .all(|k| k["compromise"]["url"] == *url),
        "every key shows its whole report"
    );
    let stored: Vec<String> = ids_of(&app.store, "sa-big")
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(stored.len(), 60);
    assert_eq!(ids, stored, "every key once, in listing order");

    // A key larger than the whole budget (a description this API refuses,
    // but a store takes) is listed alone: listing progresses.
    let huge = "d".repeat(management::MAX_PAGE_BYTES + 1);
    app.store
        .create(NewKey::new("sa-huge").with_description(huge))
        .await
        .unwrap();
    app.store.create(NewKey::new("sa-huge")).await.unwrap();
    let listed = pages("sa-huge", 10).await;
    let sizes: Vec<usize> = listed.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1], "the huge key alone, then the other");
    let ids: Vec<String> = listed
        .iter()
        .flatten()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let stored: Vec<String> = ids_of(&app.store, "sa-huge")
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, stored);
}

#[tokio::test]
async fn bad_input_gets_400_or_404_and_changes_nothing() {
    let app = app(|api| api.body_limit(4 * 1024)).await;
    let victim = mint(&app.store, "sa-1", &[TRANSLATE]).await;
    let id = victim[4..20].to_owned();
    let unknown = "0123456789abcdef";
    let accounts = ["sa-1", "sa-new", "sa-ops"];
    let before = app.state(&accounts).await;

    let many: Vec<String> = (0..101).map(|i| format!("s.n{i}")).collect();
    let past =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(60)).to_string();
    let big = "x".repeat(5 * 1024);
    let keys = format!("/keys/{id}");
    let reissue = format!("/keys/{id}:reissue");
    let unknown_path = format!("/keys/{unknown}");
    let unknown_reissue = format!("/keys/{unknown}:reissue");
    let frobnicate = format!("/keys/{id}:frobnicate");

    // (method, path, body, status, error code, message fragment)
    #[rustfmt::skip]
    let json_cases: Vec<JsonCase> = vec![
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "owner": "me"})), 400, "invalid_argument", "unknown field `owner`"),
        ("POST", "/keys", Some(json!({"description": "no account"})), 400, "invalid_argument", "missing field `service_account_id`"),
        ("POST", "/keys", Some(json!({"service_account_id": ""})), 400, "invalid_argument", "service_account_id: must not be empty"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "scopes": ["ok.scope", "bad scope"]})), 400, "invalid_argument", "scopes[1]: scope name must be"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "scopes": ["a..b"]})), 400, "invalid_argument", "scopes[0]"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "scopes": [TRANSLATE, "x".repeat(257)]})), 400, "invalid_argument", "scopes[1]: scope name is longer than 256"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "scopes": many})), 400, "invalid_argument", "at most 100 unique scopes, 101 given"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "scopes": "one.scope"})), 400, "invalid_argument", "scopes: invalid type"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "expires_at": past})), 400, "invalid_argument", "expires_at: must be in the future"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "expires_at": "tomorrow"})), 400, "invalid_argument", "expires_at: not an RFC 3339 timestamp"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "description": big})), 413, "payload_too_large", "larger than 4096 bytes"),
        ("POST", "/keys", Some(json!(["sa-new"])), 400, "invalid_argument", "the body must be a JSON object"),
        ("PATCH", &keys, Some(json!({"scopes": ["fine", "not fine!"]})), 400, "invalid_argument", "scopes[1]"),
        ("PATCH", &keys, Some(json!({"description": "half", "scopes": many})), 400, "invalid_argument", "at most 100"),
        ("PATCH", &keys, Some(json!({"description": "half", "expires_at": past})), 400, "invalid_argument", "expires_at: must be in the future"),
        ("PATCH", &keys, Some(json!({"service_account_id": "sa-other"})), 400, "invalid_argument", "unknown field `service_account_id`"),
        ("PATCH", &keys, Some(json!({"description": null})), 400, "invalid_argument", "description: invalid type: null"),
        ("PATCH", &keys, Some(json!({"description": big})), 413, "payload_too_large", "4096"),
        ("PATCH", "/keys/not-a-key-id", Some(json!({"description": "x"})), 400, "invalid_argument", "is not a key id"),
        ("PATCH", &unknown_path, Some(json!({"description": "x"})), 404, "not_found", unknown),
        ("GET", "/keys/not-a-key-id", None, 400, "invalid_argument", "`not-a-key-id` is not a key id"),
        ("GET", "/keys/0123456789abcde", None, 400, "invalid_argument", "16 characters"),
        ("GET", &unknown_path, None, 404, "not_found", unknown),
        ("GET", &reissue, None, 405, "method_not_allowed", "`:reissue` takes POST"),
        ("DELETE", &reissue, None, 405, "method_not_allowed", "`:reissue` takes POST"),
        ("DELETE", "/keys/not-a-key-id", None, 400, "invalid_argument", "is not a key id"),
        ("DELETE", &unknown_path, None, 404, "not_found", unknown),
        ("POST", "/keys/not-a-key-id:reissue", None, 400, "invalid_argument", "is not a key id"),
        ("POST", &unknown_reissue, None, 404, "not_found", unknown),
        ("POST", &frobnicate, None, 404, "not_found", "unknown method `:frobnicate`"),
        ("POST", &keys, None, 405, "method_not_allowed", "POST creates keys"),
        ("POST", &reissue, Some(json!({"grace_period_seconds": -1})), 400, "invalid_argument", "grace_period_seconds: invalid value"),
        ("POST", &reissue, Some(json!({"grace_period_seconds": 100_000_000})), 400, "invalid_argument", "at most 2592000"),
        ("POST", &reissue, Some(json!({"grace": 5})), 400, "invalid_argument", "unknown field `grace`"),
        ("GET", "/keys", None, 400, "invalid_argument", "service_account_id is required"),
        ("GET", "/keys?service_account_id=sa-1&colour=red", None, 400, "invalid_argument", "unknown field `colour`"),
        ("GET", "/keys?service_account_id=sa-1&page_size=0", None, 400, "invalid_argument", "page_size must be between 1 and 200"),
        ("GET", "/keys?service_account_id=sa-1&page_size=lots", None, 400, "invalid_argument", "query:"),
        ("GET", "/keys?service_account_id=sa-1&page_token=nonsense", None, 400, "invalid_argument", "page_token is not valid"),
    ];
    for (method, path, body, status, code, fragment) in json_cases {
        let reply = app.admin(method, path, body.clone()).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path} {body:?}: {}",
            reply.text()
        );
        assert_eq!(reply.error(), code, "{method} {path}");
        assert!(
            reply.message().contains(fragment),
            "{method} {path}: {:?} lacks {fragment:?}",
            reply.message()
        );
        assert_eq!(reply.header("cache-control"), "no-store");
        if status == 405 {
            assert!(!reply.header("allow").is_empty());
        }
    }

    // Not JSON at all: (method, path, content type, body, status, message fragment)
    #[rustfmt::skip]
    let raw_cases: Vec<RawCase> = vec![
        ("POST", "/keys", Some("application/json"), "{\"service_account_id\":", 400, "EOF while parsing"),
        ("POST", "/keys", Some("application/json"), "{\"service_account_id\":\"sa-new\"} {}", 400, "trailing characters"),
        ("POST", "/keys", Some("application/json"), "", 400, "a JSON object is required"),
        ("POST", "/keys", None, "{\"service_account_id\":\"sa-new\"}", 415, "content-type: application/json"),
        ("POST", "/keys", Some("text/plain"), "{\"service_account_id\":\"sa-new\"}", 415, "application/json"),
        ("PATCH", &keys, Some("application/x-www-form-urlencoded"), "description=x", 415, "application/json"),
        ("POST", &reissue, Some("application/json"), "{\"grace_period_seconds\": 1", 400, "EOF"),
    ];
    for (method, path, content_type, body, status, fragment) in raw_cases {
        let reply = app
            .client
            .raw(
                method,
                &format!("/admin{path}"),
                Some(&app.admin),
                content_type,
                body.to_owned(),
            )
            .await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path} {body:?}: {}",
            reply.text()
        );
        reply.error();
        assert!(
            reply.message().contains(fragment),
            "{:?} lacks {fragment:?}",
            reply.message()
        );
    }

    // A key pasted into the wrong field is not echoed back.
    for body in [
        json!({"service_account_id": "sa-new", "scopes": victim}),
        json!({"service_account_id": "sa-new", "expires_at": victim}),
        json!({"service_account_id": "sa-new", victim.clone(): 1}),
        json!({"service_account_id": ["sa-new", victim]}),
    ] {
        let reply = app.admin("POST", "/keys", Some(body)).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(!reply.text().contains(&victim[4..]), "{}", reply.text());
    }
    let reply = app
        .admin(
            "POST",
            &format!("/keys/{id}:reissue"),
            Some(json!({"grace_period_seconds": victim})),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(!reply.text().contains(&victim[4..]), "{}", reply.text());
    let reply = app.admin("GET", &format!("/keys/{victim}"), None).await;
    assert_eq!(reply.status, 400);
    assert!(!reply.text().contains(&victim[4..]), "{}", reply.text());
    assert!(!logs().text().contains(&victim[21..]));

    assert_eq!(app.state(&accounts).await, before, "nothing changed");
    assert_eq!(
        app.translate(&victim).await.status,
        200,
        "the key still works"
    );
}

#[tokio::test]
async fn a_key_without_the_management_scope_gets_403_everywhere() {
    let app = app(|api| api).await;
    let target = mint(&app.store, "sa-1", &[TRANSLATE]).await;
    let id = &target[4..20];
    let scoped = mint(&app.store, "sa-ops", &[TRANSLATE, "apikeys.read"]).await;
    let unscoped = mint(&app.store, "sa-ops", &[]).await;
    let accounts = ["sa-1", "sa-ops"];
    let before = app.state(&accounts).await;

    let routes: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/admin/keys".into(),
            Some(json!({"service_account_id": "sa-1"})),
        ),
        ("GET", "/admin/keys?service_account_id=sa-1".into(), None),
        ("GET", format!("/admin/keys/{id}"), None),
        (
            "PATCH",
            format!("/admin/keys/{id}"),
            Some(json!({"description": "mine now"})),
        ),
        ("POST", format!("/admin/keys/{id}:reissue"), None),
        ("DELETE", format!("/admin/keys/{id}"), None),
    ];
    for (method, path, body) in &routes {
        for key in [&scoped, &unscoped, &target] {
            let reply = app.client.send(method, path, Some(key), body.clone()).await;
            assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text());
            let challenge = reply.header("www-authenticate");
            assert!(
                challenge.contains("insufficient_scope") && challenge.contains("apikeys.manage")
            );
        }
        let reply = app.client.send(method, path, None, body.clone()).await;
        assert_eq!(reply.status, 401, "{method} {path}: no key at all");
    }
    assert_eq!(app.state(&accounts).await, before, "nothing changed");
}

#[tokio::test]
async fn by_default_a_caller_manages_only_its_own_account() {
    logs();
    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    let app = Router::new().nest("/admin", management::router(store.clone(), &auth));
    let client = Client::new(serve(app).await);
    let mine = mint(&store, "sa-a", &[management::DEFAULT_SCOPE, TRANSLATE]).await;
    let theirs = mint(&store, "sa-b", &[TRANSLATE]).await;
    let their_id = &theirs[4..20];
    let before = (
        store
            .list("sa-a", ListRequest::default())
            .await
            .unwrap()
            .keys,
        store
            .list("sa-b", ListRequest::default())
            .await
            .unwrap()
            .keys,
    );

    let send = |method: &'static str, path: String, body: Option<Value>| {
        let client = client.clone();
        let mine = mine.clone();
        async move {
            client
                .send(method, &format!("/admin{path}"), Some(&mine), body)
                .await
        }
    };
    let other = send(
        "POST",
        "/keys".into(),
        Some(json!({"service_account_id": "sa-b"})),
    )
    .await;
    assert_eq!(other.status, 403);
    assert_eq!(other.error(), "permission_denied");
    let other = send("GET", "/keys?service_account_id=sa-b".into(), None).await;
    assert_eq!(other.status, 403);
    for (method, path) in [
        ("GET", format!("/keys/{their_id}")),
        ("DELETE", format!("/keys/{their_id}")),
        ("POST", format!("/keys/{their_id}:reissue")),
    ] {
        let reply = send(method, path.clone(), None).await;
        assert_eq!(reply.status, 404, "{method} {path}: not revealed");
    }
    let reply = send(
        "PATCH",
        format!("/keys/{their_id}"),
        Some(json!({"scopes": []})),
    )
    .await;
    assert_eq!(reply.status, 404);
    let after = (
        store
            .list("sa-a", ListRequest::default())
            .await
            .unwrap()
            .keys,
        store
            .list("sa-b", ListRequest::default())
            .await
            .unwrap()
            .keys,
    );
    assert_eq!(after, before, "nothing changed");

    // Its own keys, with a scope it holds: fine.
    let created = send(
        "POST",
        "/keys".into(),
        Some(json!({"service_account_id": "sa-a", "scopes": [TRANSLATE]})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let listed = send("GET", "/keys?service_account_id=sa-a".into(), None).await;
    assert_eq!(listed.json()["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_custom_account_rule_decides() {
    logs();
    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    let api = ManagementApiBuilder::new(store.clone(), &auth)
        .scopes(["team.keys.admin"])
        .account_access(AccountAccess::custom(|caller, account| {
            account.starts_with(&format!("{}-", caller.service_account_id()))
        }))
        .allow_unscoped_keys()
        .build();
    let client = Client::new(serve(Router::new().nest("/m", api)).await);
    let lead = mint(&store, "team-x", &["team.keys.admin"]).await;
    let default_scope = mint(&store, "team-x", &[management::DEFAULT_SCOPE]).await;
    let body = |account: &str| Some(json!({"service_account_id": account}));
    assert_eq!(
        client
            .send("POST", "/m/keys", Some(&lead), body("team-x-ci"))
            .await
            .status,
        201
    );
    assert_eq!(
        client
            .send("POST", "/m/keys", Some(&lead), body("team-y-ci"))
            .await
            .status,
        403
    );
    assert_eq!(
        client
            .send("POST", "/m/keys", Some(&lead), body("team-x"))
            .await
            .status,
        403
    );
    assert_eq!(
        client
            .send("POST", "/m/keys", Some(&default_scope), body("team-x-ci"))
            .await
            .status,
        403,
        "the configured scope replaces the default"
    );
}

#[tokio::test]
async fn delete_reaches_the_cache_even_when_the_verifier_is_not_the_store() {
    logs();
    let store = MemoryStore::new();
    // A verifier over the store that publishes no invalidations: only the
    // router's own cache invalidation can make the delete take effect at once.
    let lookup = store.clone();
    let auth = Authenticator::verifier_builder(move |key: PresentedKey| {
        let store = lookup.clone();
        async move {
            use tower_api_key::Verifier;
            store.verify(&key).await
        }
    })
    .positive_ttl(Duration::from_secs(3600))
    .build();
    let app = Router::new()
        .route(
            "/whoami",
            get(|caller: Caller| async move { caller.key_id().to_string() })
                .route_layer(auth.any_valid_key()),
        )
        .nest(
            "/admin",
            ManagementApiBuilder::new(store.clone(), &auth)
                .account_access(AccountAccess::any_account())
                .build(),
        );
    let client = Client::new(serve(app).await);
    let admin = mint(&store, "sa-ops", &[management::DEFAULT_SCOPE]).await;
    let key = mint(&store, "sa-1", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            client.send("GET", "/whoami", Some(&key), None).await.status,
            200
        );
    }
    let id = &key[4..20];
    let deleted = client
        .send("DELETE", &format!("/admin/keys/{id}"), Some(&admin), None)
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        client.send("GET", "/whoami", Some(&key), None).await.status,
        401
    );
}

// ---------------------------------------------------------------------------
// Rate limits and credits

#[tokio::test]
async fn limits_and_credits_round_trip_through_create_get_list_patch_and_add_credits() {
    let app = app(|api| api).await;
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({
                "service_account_id": "sa-quota",
                "scopes": [TRANSLATE],
                "rate_limits": [{"limit": 5, "period": "1s"}, {"limit": 100, "period": "60m", "burst": 10}],
                "credits": {"remaining": 3, "refill": {"amount": 100, "interval": "daily"}},
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json()["key"].clone();
    let id = key["id"].as_str().unwrap().to_owned();
    let limits = json!([
        {"limit": 5, "period": "1s", "burst": 5},
        {"limit": 100, "period": "1h", "burst": 10}
    ]);
    assert_eq!(key["rate_limits"], limits, "always the full form");
    assert_eq!(
        key["credits"],
        json!({"remaining": 3, "refill": {"amount": 100, "interval": "daily", "day": 1}})
    );
    assert!(key.get("account_rate_limits").is_none());

    let got = app.admin("GET", &format!("/keys/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["rate_limits"], limits);
    assert_eq!(got.json()["credits"], key["credits"]);
    let listed = app
        .admin("GET", "/keys?service_account_id=sa-quota", None)
        .await;
    assert_eq!(listed.json()["keys"][0]["rate_limits"], limits);
    assert_eq!(listed.json()["keys"][0]["credits"]["remaining"], 3);
    let stored = app.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.record.rate_limits.len(), 2);
    assert_eq!(stored.record.credits.unwrap().remaining(), 3);

    // Replace the credits (count and refill); absent fields stay.
    let patched = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"credits": {"remaining": 10, "refill": {"amount": 50, "interval": "monthly", "day": 15}}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(
        patched.json()["credits"],
        json!({"remaining": 10, "refill": {"amount": 50, "interval": "monthly", "day": 15}})
    );
    assert_eq!(patched.json()["rate_limits"], limits, "absent: unchanged");

    // Top up: 200 with the key, the store's count.
    let topped = app
        .admin(
            "POST",
            &format!("/keys/{id}:addCredits"),
            Some(json!({"amount": 5})),
        )
        .await;
    assert_eq!(topped.status, 200, "{}", topped.text());
    assert_eq!(topped.json()["id"], id.as_str());
    assert_eq!(topped.json()["credits"]["remaining"], 15);
    assert_eq!(topped.json()["credits"]["refill"]["day"], 15);
    assert!(topped.json().get("secret").is_none());
    let again = app.admin("GET", &format!("/keys/{id}"), None).await.json();
    assert_eq!(again["credits"]["remaining"], 15);

    // One limit instead of two; then null removes both.
    let one = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"rate_limits": [{"limit": 2, "period": "500ms", "burst": 1}]})),
        )
        .await;
    assert_eq!(
        one.json()["rate_limits"],
        json!([{"limit": 2, "period": "500ms", "burst": 1}])
    );
    let removed = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"rate_limits": null, "credits": null})),
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert_eq!(removed.json()["rate_limits"], json!([]));
    assert_eq!(removed.json()["credits"], Value::Null);
    let stored = app.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(stored.record.rate_limits.is_empty() && stored.record.credits.is_none());

    // Without credits there is nothing to add to.
    let refused = app
        .admin(
            "POST",
            &format!("/keys/{id}:addCredits"),
            Some(json!({"amount": 5})),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.error(), "failed_precondition");
    assert!(
        refused.message().contains("no credits"),
        "{}",
        refused.message()
    );

    // An empty list removes too, and a key made without them shows none.
    let plain = app
        .admin(
            "POST",
            "/keys",
            Some(
                json!({"service_account_id": "sa-quota", "scopes": [TRANSLATE], "rate_limits": []}),
            ),
        )
        .await;
    assert_eq!(plain.status, 201);
    assert_eq!(plain.json()["key"]["rate_limits"], json!([]));
    assert_eq!(plain.json()["key"]["credits"], Value::Null);
}

#[tokio::test]
async fn credits_added_stop_at_the_maximum() {
    let app = app(|api| api).await;
    let max = tower_api_key::limits::MAX_CREDITS;
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({"service_account_id": "sa-1", "credits": {"remaining": max - 1}})),
        )
        .await;
    let id = created.json()["key"]["id"].as_str().unwrap().to_owned();
    let topped = app
        .admin(
            "POST",
            &format!("/keys/{id}:addCredits"),
            Some(json!({"amount": max})),
        )
        .await;
    assert_eq!(topped.status, 200, "{}", topped.text());
    assert_eq!(topped.json()["credits"]["remaining"], max);
}

#[tokio::test]
async fn account_rate_limits_are_set_read_and_removed_apart_from_the_keys() {
    let app = app(|api| api).await;
    let secret = mint(&app.store, "sa-shared", &[TRANSLATE]).await;
    let path = "/accounts/sa-shared/rate-limits";
    let none = app.admin("GET", path, None).await;
    assert_eq!(none.status, 200, "{}", none.text());
    assert_eq!(none.header("cache-control"), "no-store");
    assert_eq!(none.json(), json!({"rate_limits": []}));

    let set = app
        .admin(
            "PUT",
            path,
            Some(json!({"rate_limits": [{"limit": 2, "period": "3600s"}, {"limit": 50, "period": "1d", "burst": 5}]})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let limits = json!({"rate_limits": [
        {"limit": 2, "period": "1h", "burst": 2},
        {"limit": 50, "period": "1d", "burst": 5}
    ]});
    assert_eq!(set.json(), limits);
    assert_eq!(app.admin("GET", path, None).await.json(), limits);
    assert_eq!(
        app.store
            .account_rate_limits("sa-shared")
            .await
            .unwrap()
            .len(),
        2
    );
    // The account's limits are the account's, not shown on its keys.
    let key = app
        .admin("GET", &format!("/keys/{}", &secret[4..20]), None)
        .await
        .json();
    assert_eq!(key["rate_limits"], json!([]));
    assert!(key.get("account_rate_limits").is_none());
    // Other accounts are untouched.
    assert_eq!(
        app.admin("GET", "/accounts/sa-other/rate-limits", None)
            .await
            .json(),
        json!({"rate_limits": []})
    );

    let cleared = app
        .admin("PUT", path, Some(json!({"rate_limits": []})))
        .await;
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.json(), json!({"rate_limits": []}));
    assert!(app
        .store
        .account_rate_limits("sa-shared")
        .await
        .unwrap()
        .is_empty());
    let logs = logs().text();
    assert!(logs.contains("service account rate limits set"));
}

#[tokio::test]
async fn bad_limits_credits_and_account_requests_get_400_404_or_405_and_change_nothing() {
    let app = app(|api| api).await;
    let victim = mint(&app.store, "sa-1", &[TRANSLATE]).await;
    let id = victim[4..20].to_owned();
    let accounts = ["sa-1", "sa-new", "sa-ops"];
    let before = app.state(&accounts).await;
    let keys = format!("/keys/{id}");
    let add = format!("/keys/{id}:addCredits");
    let unknown_add = "/keys/0123456789abcdef:addCredits";
    let misspelt = format!("/keys/{id}:addcredits");
    let long_account = format!("/accounts/{}/rate-limits", "a".repeat(129));

    #[rustfmt::skip]
    let json_cases: Vec<JsonCase> = vec![
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "rate_limits": [{"limit": 0, "period": "1s"}]})), 400, "invalid_argument", "rate_limits[0]: a rate limit's limit must be between 1 and"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "rate_limits": [{"limit": 5, "period": "soon"}]})), 400, "invalid_argument", "rate_limits[0].period: a period is"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "rate_limits": null})), 400, "invalid_argument", "rate_limits: invalid type: null"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "credits": {"remaining": -1}})), 400, "invalid_argument", "credits.remaining: invalid value"),
        ("POST", "/keys", Some(json!({"service_account_id": "sa-new", "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "monthly"}}})), 400, "invalid_argument", "credits.refill.day: required"),
        ("PATCH", &keys, Some(json!({"rate_limits": [{"limit": 1, "period": "1s"}, {"limit": 1, "period": "1s"}]})), 400, "invalid_argument", "rate_limits: rate limit 1/1s is given twice"),
        ("PATCH", &keys, Some(json!({"rate_limits": [{"limit": 1, "period": "1s", "burst": 0}]})), 400, "invalid_argument", "rate_limits[0].burst"),
        ("PATCH", &keys, Some(json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "daily", "day": 2}}})), 400, "invalid_argument", "credits.refill.day: a daily refill takes no day"),
        ("PATCH", &keys, Some(json!({"credits": {"remaining": 1, "extra": 1}})), 400, "invalid_argument", "unknown field `extra`"),
        ("POST", &add, Some(json!({"amount": 0})), 400, "invalid_argument", "amount: must be between 1 and"),
        ("POST", &add, Some(json!({"amount": "5"})), 400, "invalid_argument", "amount: invalid type"),
        ("POST", &add, Some(json!({})), 400, "invalid_argument", "missing field `amount`"),
        ("POST", &add, None, 400, "invalid_argument", "a JSON object is required"),
        ("POST", unknown_add, Some(json!({"amount": 1})), 404, "not_found", "0123456789abcdef"),
        ("GET", &add, None, 405, "method_not_allowed", "`:addCredits` takes POST"),
        ("PATCH", &add, Some(json!({"description": "x"})), 405, "method_not_allowed", "`:addCredits` takes POST"),
        ("POST", &misspelt, Some(json!({"amount": 1})), 404, "not_found", "`:reissue` and `:addCredits`"),
        ("PUT", "/accounts/sa-1/rate-limits", Some(json!({"rate_limits": [{"limit": 5}]})), 400, "invalid_argument", "rate_limits[0]: missing field `period`"),
        ("PUT", "/accounts/sa-1/rate-limits", Some(json!({"rate_limits": null})), 400, "invalid_argument", "rate_limits: invalid type: null"),
        ("PUT", "/accounts/sa-1/rate-limits", Some(json!({})), 400, "invalid_argument", "missing field `rate_limits`"),
        ("PUT", "/accounts/sa-1/rate-limits", None, 400, "invalid_argument", "a JSON object is required"),
        ("GET", &long_account, None, 400, "invalid_argument", "service_account_id: at most 128"),
        ("PUT", &long_account, Some(json!({"rate_limits": []})), 400, "invalid_argument", "service_account_id: at most 128"),
    ];
    for (method, path, body, status, code, fragment) in json_cases {
        let reply = app.admin(method, path, body.clone()).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path} {body:?}: {}",
            reply.text()
        );
        assert_eq!(reply.error(), code, "{method} {path}");
        assert!(
            reply.message().contains(fragment),
            "{method} {path}: {:?} lacks {fragment:?}",
            reply.message()
        );
    }
    let not_json = app
        .client
        .raw(
            "PUT",
            "/admin/accounts/sa-1/rate-limits",
            Some(&app.admin),
            Some("text/plain"),
            r#"{"rate_limits":[]}"#.to_owned(),
        )
        .await;
    assert_eq!(not_json.status, 415);

    // A key pasted anywhere is neither stored nor echoed.
    for (method, path, body) in [
        ("POST", add.clone(), json!({"amount": victim})),
        (
            "PATCH",
            keys.clone(),
            json!({"rate_limits": [{"limit": 1, "period": victim}]}),
        ),
        (
            "PATCH",
            keys.clone(),
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": victim}}}),
        ),
        (
            "PUT",
            format!("/accounts/{victim}/rate-limits"),
            json!({"rate_limits": []}),
        ),
    ] {
        let reply = app.admin(method, &path, Some(body)).await;
        assert_eq!(reply.status, 400, "{method} {path}: {}", reply.text());
        assert!(!reply.text().contains(&victim[4..]), "{}", reply.text());
    }
    assert!(!logs().text().contains(&victim[21..]));
    assert!(app
        .store
        .account_rate_limits("sa-1")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(app.state(&accounts).await, before, "nothing changed");
}

#[tokio::test]
async fn limit_changes_reach_the_cache_even_when_the_verifier_is_not_the_store() {
    logs();
    let store = MemoryStore::new();
    // As above: only the router's own invalidations refresh the cache. The
    // store counts the credits (it is the ledger), but the verifier
    // announces no changes.
    struct NoPush(MemoryStore);
    #[async_trait::async_trait]
    impl tower_api_key::Verifier for NoPush {
        async fn verify(
            &self,
            key: &PresentedKey,
        ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::VerifierError> {
            self.0.verify(key).await
        }
    }
    let auth = Authenticator::verifier_builder(NoPush(store.clone()))
        .credits(store.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    // What the cached identity says the key carries.
    let limits = |caller: Caller| async move {
        let r = caller.record();
        format!(
            "own={} account={} credits={:?}",
            r.rate_limits.len(),
            r.account_rate_limits.len(),
            r.credits.map(|c| c.remaining())
        )
    };
    let app = Router::new()
        .route("/limits", get(limits).route_layer(auth.any_valid_key()))
        .nest(
            "/admin",
            ManagementApiBuilder::new(store.clone(), &auth)
                .account_access(AccountAccess::any_account())
                .build(),
        );
    let client = Client::new(serve(app).await);
    let admin = mint(&store, "sa-ops", &[management::DEFAULT_SCOPE]).await;
    let keys: Vec<String> = [
        mint(&store, "sa-1", &[]).await,
        mint(&store, "sa-1", &[]).await,
    ]
    .into();
    let seen = |key: &str| {
        let key = key.to_owned();
        let client = &client;
        async move {
            client
                .send("GET", "/limits", Some(&key), None)
                .await
                .text()
                .to_string()
        }
    };
    for key in &keys {
        assert_eq!(seen(key).await, "own=0 account=0 credits=None");
    }
    let admin_send = |method: &'static str, path: String, body: Value| {
        let client = &client;
        let admin = admin.clone();
        async move { client.send(method, &path, Some(&admin), Some(body)).await }
    };
    let id = &keys[0][4..20];
    let patched = admin_send(
        "PATCH",
        format!("/admin/keys/{id}"),
        json!({"rate_limits": [{"limit": 1000, "period": "1s"}], "credits": {"remaining": 500}}),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert!(seen(&keys[0])
        .await
        .starts_with("own=1 account=0 credits=Some("));
    let topped = admin_send(
        "POST",
        format!("/admin/keys/{id}:addCredits"),
        json!({"amount": 100}),
    )
    .await;
    assert_eq!(topped.status, 200);
    let credits = topped.json()["credits"]["remaining"].as_u64().unwrap();
    assert!(credits >= 100, "{credits}");
    assert!(seen(&keys[0])
        .await
        .ends_with(&format!("credits=Some({credits})")));
    let set = admin_send(
        "PUT",
        "/admin/accounts/sa-1/rate-limits".into(),
        json!({"rate_limits": [{"limit": 1000, "period": "1s"}]}),
    )
    .await;
    assert_eq!(set.status, 200);
    for key in &keys {
        assert!(
            seen(key).await.contains("account=1"),
            "every key of the account"
        );
    }
}

// ---------------------------------------------------------------------------
// Versions: ETag and If-Match (issue 20, point 1).

impl App {
    async fn admin_if(&self, method: &str, path: &str, etag: &str, body: Option<Value>) -> Reply {
        self.client
            .send_with(
                method,
                &format!("/admin{path}"),
                Some(&self.admin),
                &[("if-match", etag)],
                body,
            )
            .await
    }
}

#[tokio::test]
async fn every_key_response_carries_a_strong_etag_that_each_change_moves_on() {
    let app = app(|api| api).await;
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({"service_account_id": "sa-e", "credits": {"remaining": 1}})),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("etag"), "\"1\"");
    let id = created.json()["key"]["id"].as_str().unwrap().to_owned();
    let path = format!("/keys/{id}");

    let read = app.admin("GET", &path, None).await;
    assert_eq!(read.header("etag"), "\"1\"");
    let patched = app
        .admin("PATCH", &path, Some(json!({"description": "x"})))
        .await;
    assert_eq!(patched.header("etag"), "\"2\"");
    // Sending back what the key holds changes nothing, its version included.
    let same = app
        .admin("PATCH", &path, Some(json!({"description": "x"})))
        .await;
    assert_eq!(same.status, 200);
    assert_eq!(same.header("etag"), "\"2\"");
    let reissued = app.admin("POST", &format!("{path}:reissue"), None).await;
    assert_eq!(reissued.header("etag"), "\"3\"");
    let topped = app
        .admin(
            "POST",
            &format!("{path}:addCredits"),
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(topped.header("etag"), "\"4\"");
    assert_eq!(app.admin("GET", &path, None).await.header("etag"), "\"4\"");
}

#[tokio::test]
async fn if_match_with_the_current_etag_writes_and_with_a_superseded_one_is_412() {
    let app = app(|api| api).await;
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({"service_account_id": "sa-e", "scopes": [TRANSLATE],
                        "credits": {"remaining": 1}})),
        )
        .await;
    let id = created.json()["key"]["id"].as_str().unwrap().to_owned();
    let path = format!("/keys/{id}");
    let etag = app
        .admin("GET", &path, None)
        .await
        .header("etag")
        .to_owned();

    let first = app
        .admin_if("PATCH", &path, &etag, Some(json!({"description": "first"})))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let newer = first.header("etag").to_owned();
    assert_ne!(newer, etag);

    // The same If-Match again: superseded, for every write, and nothing changes.
    let before = app.state(&["sa-e"]).await;
    for (method, target, body) in [
        (
            "PATCH",
            path.clone(),
            Some(json!({"description": "second"})),
        ),
        ("POST", format!("{path}:reissue"), None),
        (
            "POST",
            format!("{path}:addCredits"),
            Some(json!({"amount": 5})),
        ),
        ("DELETE", path.clone(), None),
    ] {
        let stale = app.admin_if(method, &target, &etag, body).await;
        assert_eq!(stale.status, 412, "{method} {target}: {}", stale.text());
        assert_eq!(stale.error(), "failed_precondition");
        assert_eq!(stale.header("cache-control"), "no-store");
    }
    assert_eq!(app.state(&["sa-e"]).await, before, "a 412 writes nothing");

    // A list of tags, `*`, and weak tags (never equal under strong comparison).
    let listed = app
        .admin_if(
            "PATCH",
            &path,
            &format!("\"99\", {newer}"),
            Some(json!({"description": "l"})),
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let any = app
        .admin_if("PATCH", &path, "*", Some(json!({"description": "any"})))
        .await;
    assert_eq!(any.status, 200, "{}", any.text());
    let current = any.header("etag").to_owned();
    let weak = app
        .admin_if(
            "PATCH",
            &path,
            &format!("W/{current}"),
            Some(json!({"description": "w"})),
        )
        .await;
    assert_eq!(weak.status, 412);
    let malformed = app
        .admin_if("PATCH", &path, "3", Some(json!({"description": "m"})))
        .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.error(), "invalid_argument");

    let deleted = app.admin_if("DELETE", &path, &current, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let gone = app.admin_if("DELETE", &path, "*", None).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn add_credits_to_a_key_without_credits_is_409_from_the_store_not_a_pre_read() {
    let app = app(|api| api).await;
    let created = app
        .admin("POST", "/keys", Some(json!({"service_account_id": "sa-e"})))
        .await;
    let id = created.json()["key"]["id"].as_str().unwrap().to_owned();
    let reply = app
        .admin(
            "POST",
            &format!("/keys/{id}:addCredits"),
            Some(json!({"amount": 5})),
        )
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert_eq!(reply.error(), "failed_precondition");
    assert!(reply.message().contains(&id), "{}", reply.message());
}

#[tokio::test]
async fn allowed_networks_and_metadata_round_trip_through_create_get_and_patch() {
    let app = app(|api| api).await;
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({
                "service_account_id": "sa-net",
                "allowed_networks": ["10.0.0.0/8", "2001:db8::/32", "203.0.113.7"],
                "metadata": {"plan": "pro", "tenant": 42},
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json()["key"].clone();
    let id = key["id"].as_str().unwrap().to_owned();
    let nets = json!(["10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32"]);
    assert_eq!(key["allowed_networks"], nets);
    assert_eq!(key["metadata"], json!({"plan": "pro", "tenant": 42}));
    let got = app.admin("GET", &format!("/keys/{id}"), None).await;
    assert_eq!(got.json()["allowed_networks"], nets);
    assert_eq!(got.json()["metadata"]["plan"], "pro");

    // Each field alone; null removes.
    let patched = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"metadata": {"plan": "free"}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["metadata"], json!({"plan": "free"}));
    assert_eq!(patched.json()["allowed_networks"], nets);
    let patched = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"allowed_networks": null, "metadata": null})),
        )
        .await;
    assert_eq!(patched.json()["allowed_networks"], json!([]));
    assert_eq!(patched.json()["metadata"], Value::Null);
    let stored = app.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.record.allowed_networks, None);
    assert_eq!(stored.record.metadata, None);
}

#[tokio::test]
async fn bad_networks_and_metadata_get_400_naming_the_field_and_change_nothing() {
    let app = app(|api| api).await;
    let key = app
        .admin(
            "POST",
            "/keys",
            Some(json!({"service_account_id": "sa-net"})),
        )
        .await;
    let id = key.json()["key"]["id"].as_str().unwrap().to_owned();
    let secret = mint(&app.store, "sa-other", &[]).await;
    let (before, _) = app.state(&["sa-net"]).await;
    let big = "x".repeat(1100);
    let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    for (body, names) in [
        (json!({"metadata": {"pad": big}}), "metadata: "),
        (
            json!({"metadata": [1, 2]}),
            "metadata: must be a JSON object",
        ),
        (
            json!({"metadata": {"oops": secret}}),
            "metadata: must not contain an api key",
        ),
        (
            json!({"allowed_networks": ["10.0.0.0/8", "nonsense"]}),
            "allowed_networks[1]",
        ),
        (
            json!({"allowed_networks": many}),
            "allowed_networks: 65 entries, at most 64",
        ),
        (json!({"allowed_networks": [secret]}), "allowed_networks[0]"),
    ] {
        for (method, path, body) in [
            ("PATCH", format!("/keys/{id}"), body.clone()),
            ("POST", "/keys".to_owned(), {
                let mut b = body.clone();
                b["service_account_id"] = json!("sa-net");
                b
            }),
        ] {
            let reply = app.admin(method, &path, Some(body)).await;
            assert_eq!(reply.status, 400, "{method} {}", reply.text());
            assert!(reply.text().contains(names), "{method}: {}", reply.text());
            assert!(
                !reply.text().contains(&secret),
                "no key echoed: {}",
                reply.text()
            );
        }
    }
    assert_eq!(app.state(&["sa-net"]).await.0, before, "nothing written");
}

#[tokio::test]
async fn retire_when_unused_is_set_on_create_and_patch_and_a_retirement_shows_why() {
    use tower_api_key::store::LifecycleStore;
    let app = app(|api| api).await;
    let plain = app
        .admin(
            "POST",
            "/keys",
            Some(json!({"service_account_id": "sa-life"})),
        )
        .await;
    assert_eq!(
        plain.json()["key"]["retire_when_unused"],
        true,
        "on by default"
    );
    assert_eq!(plain.json()["key"]["retired_unused_since"], Value::Null);
    let created = app
        .admin(
            "POST",
            "/keys",
            Some(json!({"service_account_id": "sa-life", "retire_when_unused": false})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json()["key"].clone();
    assert_eq!(key["retire_when_unused"], false);
    let id = key["id"].as_str().unwrap().to_owned();
    let got = app.admin("GET", &format!("/keys/{id}"), None).await;
    assert_eq!(got.json()["retire_when_unused"], false);
    let listed = app
        .admin("GET", "/keys?service_account_id=sa-life", None)
        .await;
    let flags: Vec<Value> = listed.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["retire_when_unused"].clone())
        .collect();
    assert_eq!(flags.len(), 2);
    assert!(flags.contains(&json!(false)) && flags.contains(&json!(true)));
    let patched = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"retire_when_unused": true})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["retire_when_unused"], true);
    for bad in [json!(null), json!("no"), json!(0)] {
        let reply = app
            .admin(
                "PATCH",
                &format!("/keys/{id}"),
                Some(json!({"retire_when_unused": bad})),
            )
            .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert!(
            reply.text().contains("retire_when_unused"),
            "{}",
            reply.text()
        );
    }

    // The lifecycle retires it: the API shows when and why.
    let key_id = id.parse().unwrap();
    let info = app.store.get(key_id).await.unwrap().unwrap();
    let at = SystemTime::now() + Duration::from_secs(86_400);
    app.store
        .retire_unused(key_id, None, info.record.created_at, at)
        .await
        .unwrap()
        .expect("retired");
    let got = app.admin("GET", &format!("/keys/{id}"), None).await;
    let millis = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    assert_eq!(got.json()["expires_at"], json!(millis(at)));
    assert_eq!(
        got.json()["retired_unused_since"],
        got.json()["created_at"],
        "unused since its creation"
    );

    // A new expiry revives it.
    let later = millis(at + Duration::from_secs(90 * 86_400));
    let revived = app
        .admin(
            "PATCH",
            &format!("/keys/{id}"),
            Some(json!({"expires_at": later})),
        )
        .await;
    assert_eq!(revived.status, 200, "{}", revived.text());
    assert_eq!(revived.json()["retired_unused_since"], Value::Null);
    assert_eq!(revived.json()["expires_at"], json!(later));
}
