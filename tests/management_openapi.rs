//! The management API's OpenAPI document: the committed copy matches the
//! router's, every documented operation answers, every error status the API
//! gives is documented where it is given, and real answers validate against
//! the document's schemas.
//!
//! After a change to the API, regenerate `docs/management.openapi.json` with
//!
//! ```text
//! UPDATE_OPENAPI=1 cargo test --all-features --test management_openapi
//! ```
//!
//! and review the diff.
#![cfg(feature = "management")]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_api_key::limits::RateLimit;
use tower_api_key::management::{self, AccountAccess, ManagementApiBuilder};
use tower_api_key::store::{NewKey, StoreError};
use tower_api_key::{Authenticator, KeyStore, MemoryStore, ScopeSet};

use common::hooked::{Call, Hook, Hooked};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/management.openapi.json");

/// The document as the router serves it at `/openapi.json`, with no key.
async fn served(router: Router, path: &str) -> (StatusCode, Value) {
    let response = router
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

#[tokio::test]
async fn the_committed_document_is_the_one_the_router_serves() {
    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    let (status, doc) = served(management::router(store, &auth), "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "served without a key");
    let returned: Value = serde_json::to_value(management::openapi()).unwrap();
    assert_eq!(doc, returned, "served == management::openapi()");
    assert_eq!(doc["openapi"], "3.1.0");

    let text = format!("{}\n", management::openapi().to_pretty_json().unwrap());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(DOC_PATH, &text).unwrap();
    }
    let committed = std::fs::read_to_string(DOC_PATH).unwrap_or_default();
    assert!(
        committed == text,
        "docs/management.openapi.json differs from the router's document.\n\
         If on purpose, run: UPDATE_OPENAPI=1 cargo test --all-features --test management_openapi"
    );
}

#[tokio::test]
async fn a_nested_router_serves_the_document_with_its_prefix_as_server() {
    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    let app = Router::new().nest("/admin", management::router(store, &auth));
    let (status, doc) = served(app, "/admin/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["servers"], json!([{ "url": "/admin" }]));
    let mut expected = serde_json::to_value(management::openapi()).unwrap();
    expected["servers"] = json!([{ "url": "/admin" }]);
    assert_eq!(doc, expected);
}

#[test]
fn the_document_nests_into_a_host_document() {
    let host = utoipa::openapi::OpenApi::default().nest("/admin", management::openapi());
    let paths: BTreeSet<&str> = host.paths.paths.keys().map(String::as_str).collect();
    assert!(paths.contains("/admin/keys"), "{paths:?}");
    assert!(paths.contains("/admin/keys/{id}:addCredits"), "{paths:?}");
    let components = host.components.expect("components merged");
    assert!(components.schemas.contains_key("KeyResource"));
    assert!(components.security_schemes.contains_key("api_key"));
}

// ---------------------------------------------------------------------------
// Requests against the document.

const TRANSLATE: &str = "yc.ai.translate.execute";
/// The body limit of the test router: small, so that 413 is cheap to reach.
const BODY_LIMIT: usize = 4096;

/// Makes the store's writes (update, revoke, add credits) fail as an
/// unreachable database would, while `down` is set.
struct Outage(AtomicBool);

#[async_trait]
impl Hook for Outage {
    async fn before(&self, _: &MemoryStore, _: Call<'_>) -> Result<(), StoreError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(StoreError::backend("database is down"));
        }
        Ok(())
    }
}

/// What a request got.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Option<Value>,
}

/// The router under test, its store and the document.
struct Api {
    router: Router,
    store: Hooked<Outage>,
    admin: String,
    doc: Value,
    /// Every (method, path template, status) answered.
    seen: BTreeSet<(String, String, u16)>,
}

impl Api {
    async fn new() -> Self {
        let store = Hooked::new(MemoryStore::new(), Outage(AtomicBool::new(false)));
        let auth = Authenticator::new(store.clone());
        let router = ManagementApiBuilder::new(store.clone(), &auth)
            .account_access(AccountAccess::any_account())
            .grantable_scopes([TRANSLATE])
            .allow_unscoped_keys()
            .body_limit(BODY_LIMIT)
            .build();
        let admin = mint(&store, NewKey::new("sa-ops"), &[management::DEFAULT_SCOPE]).await;
        Self {
            router,
            store,
            admin,
            doc: serde_json::to_value(management::openapi()).unwrap(),
            seen: BTreeSet::new(),
        }
    }

    /// Sends a request for the documented operation `method template`
    /// (`path` is the template filled in) and checks the answer against the
    /// document: its status is documented for the operation, and its body
    /// and headers are what the document says for that status.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Answer {
        let operation = self.doc["paths"][template][method.to_lowercase()].clone();
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Api-Key {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some((content_type, bytes)) => request
                .header("content-type", content_type)
                .body(Body::from(bytes)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice::<Value>(&bytes).unwrap());

        // Only an error's code is shown: a success may hold a secret.
        let code = body.as_ref().map(|b| b["error"].clone());
        let documented = &operation["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {template} answered {status}, which its operation does not document \
             (error {code:?})"
        );
        match (&documented["content"]["application/json"]["schema"], &body) {
            (Value::Null, None) => {}
            (Value::Null, Some(_)) => {
                panic!(
                    "{method} {template} {status}: documented without a body, got one ({code:?})"
                )
            }
            (schema, Some(body)) => {
                assert_eq!(
                    headers["content-type"], "application/json",
                    "{method} {template} {status}"
                );
                validate(
                    &self.doc,
                    schema,
                    body,
                    &format!("{method} {template} {status}"),
                );
            }
            (_, None) => panic!("{method} {template} {status}: documented with a body, got none"),
        }
        if let Some(documented) = documented["headers"].as_object() {
            for name in documented.keys() {
                assert!(
                    headers.contains_key(name.as_str()),
                    "{method} {template} {status}: documented header {name} missing"
                );
            }
        }
        self.seen
            .insert((method.to_owned(), template.to_owned(), status));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// [`Api::send`] with a JSON body, first checked against the operation's
    /// documented request body.
    async fn json(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        if_match: Option<&str>,
        body: Value,
    ) -> Answer {
        let schema = &self.doc["paths"][template][method.to_lowercase()]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{method} {template} documents no JSON body"
        );
        validate(
            &self.doc,
            schema,
            &body,
            &format!("{method} {template} request"),
        );
        let admin = self.admin.clone();
        let headers: Vec<(&str, &str)> = if_match.map(|m| ("if-match", m)).into_iter().collect();
        let bytes = serde_json::to_vec(&body).unwrap();
        self.send(
            method,
            template,
            path,
            Some(&admin),
            &headers,
            Some(("application/json", bytes)),
        )
        .await
    }

    /// [`Api::send`] with the admin key and no body.
    async fn plain(&mut self, method: &str, template: &str, path: &str) -> Answer {
        let admin = self.admin.clone();
        self.send(method, template, path, Some(&admin), &[], None)
            .await
    }

    /// Every documented operation, as (METHOD, template).
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                all.insert((method.to_uppercase(), template.clone()));
            }
        }
        all
    }
}

async fn mint(store: &impl KeyStore, new: NewKey, scopes: &[&str]) -> String {
    let created = store
        .create(new.with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap()))
        .await
        .unwrap();
    created.key.expose_secret().to_owned()
}

/// Checks `value` against `schema`, whose `$ref`s point into the document's
/// components. Objects may hold only the properties their schema declares:
/// an answer with a field the document does not describe fails.
fn validate(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut components = doc["components"].clone();
    close_objects(&mut components);
    let mut schema = schema.clone();
    close_objects(&mut schema);
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": components,
        "allOf": [schema],
    });
    let validator = jsonschema::draft202012::new(&root).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    // The value is shown with its secret (a create's or reissue's) hidden.
    let mut shown = value.clone();
    if let Some(secret) = shown.get_mut("secret") {
        *secret = Value::from("[REDACTED]");
    }
    assert!(
        errors.is_empty(),
        "{what}: {shown} does not match its schema: {errors:?}"
    );
}

/// Adds `additionalProperties: false` to every object schema that says
/// nothing of other properties.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented_on_the_happy_path() {
    let mut api = Api::new().await;
    let create = json!({
        "service_account_id": "sa-translator",
        "description": "the translator's key",
        "scopes": [TRANSLATE],
        "expires_at": null,
        "rate_limits": [{ "limit": 10, "period": "1s", "burst": 20 }],
        "credits": { "remaining": 5, "refill": { "amount": 5, "interval": "monthly", "day": 3 } },
    });
    let created = api.json("POST", "/keys", "/keys", None, create).await;
    assert_eq!(created.status, 201);
    let body = created.body.unwrap();
    let id = body["key"]["id"].as_str().unwrap().to_owned();
    assert!(body["secret"].as_str().unwrap().starts_with("tak_"));
    let key = format!("/keys/{id}");

    let read = api.plain("GET", "/keys/{id}", &key).await;
    assert_eq!(read.status, 200);
    let etag = read.headers["etag"].to_str().unwrap().to_owned();

    let listed = api
        .plain(
            "GET",
            "/keys",
            "/keys?service_account_id=sa-translator&page_size=1",
        )
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body.unwrap()["keys"][0]["id"], id.as_str());

    let update = json!({
        "description": "renamed",
        "scopes": [TRANSLATE],
        "expires_at": "2999-01-01T00:00:00Z",
        "rate_limits": null,
        "credits": { "remaining": 7 },
    });
    let updated = api
        .json("PATCH", "/keys/{id}", &key, Some(&etag), update)
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body.unwrap()["description"], "renamed");

    let added = api
        .json(
            "POST",
            "/keys/{id}:addCredits",
            &format!("{key}:addCredits"),
            None,
            json!({ "amount": 3 }),
        )
        .await;
    assert_eq!(added.status, 200);
    assert_eq!(added.body.unwrap()["credits"]["remaining"], 10);

    let reissued = api
        .json(
            "POST",
            "/keys/{id}:reissue",
            &format!("{key}:reissue"),
            None,
            json!({ "grace_period_seconds": 60 }),
        )
        .await;
    assert_eq!(reissued.status, 200);
    assert!(reissued.body.unwrap()["secret"].is_string());

    let limits = json!({ "rate_limits": [{ "limit": 100, "period": "1m" }] });
    let accounts = "/accounts/{service_account_id}/rate-limits";
    let set = api
        .json(
            "PUT",
            accounts,
            "/accounts/sa-translator/rate-limits",
            None,
            limits,
        )
        .await;
    assert_eq!(set.status, 200);
    let got = api
        .plain("GET", accounts, "/accounts/sa-translator/rate-limits")
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.unwrap()["rate_limits"][0]["burst"], 100);

    let deleted = api.plain("DELETE", "/keys/{id}", &key).await;
    assert_eq!(deleted.status, 204);

    // Every documented operation was called, and answered success.
    let succeeded: BTreeSet<(String, String)> = api
        .seen
        .iter()
        .filter(|(_, _, status)| (200..300).contains(status))
        .map(|(method, template, _)| (method.clone(), template.clone()))
        .collect();
    assert_eq!(succeeded, api.operations());
}

/// The path of `template` for key `id` and the account `sa-translator`.
fn concrete(template: &str, id: &str) -> String {
    template
        .replace("{id}", id)
        .replace("{service_account_id}", "sa-translator")
}

#[tokio::test]
async fn every_error_status_the_api_answers_is_documented_where_it_answers_it() {
    let mut api = Api::new().await;
    // A key to act on: with credits, and one without (409 on :addCredits).
    let created = api
        .json(
            "POST",
            "/keys",
            "/keys",
            None,
            json!({ "service_account_id": "sa-translator", "credits": { "remaining": 1 } }),
        )
        .await;
    let id = created.body.unwrap()["key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = api
        .json(
            "POST",
            "/keys",
            "/keys",
            None,
            json!({ "service_account_id": "sa-translator" }),
        )
        .await;
    let plain_id = plain.body.unwrap()["key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let operations = api.operations();
    let doc = api.doc.clone();
    let has_body = |method: &str, template: &str| {
        !doc["paths"][template][method.to_lowercase()]["requestBody"].is_null()
    };
    let with_body: Vec<(String, String)> = operations
        .iter()
        .filter(|(m, t)| has_body(m, t))
        .cloned()
        .collect();
    let with_if_match = [
        ("PATCH", "/keys/{id}"),
        ("DELETE", "/keys/{id}"),
        ("POST", "/keys/{id}:reissue"),
        ("POST", "/keys/{id}:addCredits"),
    ];

    // The authentication layer, on every operation: no key (401), a key
    // without the management scope (403), two keys (400), and a key over its
    // rate limit (429).
    let outsider = mint(&api.store, NewKey::new("sa-x"), &[TRANSLATE]).await;
    let admin = api.admin.clone();
    for (method, template) in &operations {
        let path = concrete(template, &id);
        let unauthenticated = api.send(method, template, &path, None, &[], None).await;
        assert_eq!(unauthenticated.status, 401, "{method} {template}");
        let outside = api
            .send(method, template, &path, Some(&outsider), &[], None)
            .await;
        assert_eq!(outside.status, 403, "{method} {template}");
        let both = format!("Api-Key {admin}");
        let twice = api
            .send(
                method,
                template,
                &path,
                Some(&admin),
                &[("authorization", &both)],
                None,
            )
            .await;
        assert_eq!(twice.status, 400, "{method} {template}");
        let limited = mint(
            &api.store,
            NewKey::new("sa-ops").with_rate_limits(vec![RateLimit::new(
                1,
                Duration::from_secs(3600),
            )
            .unwrap()]),
            &[management::DEFAULT_SCOPE],
        )
        .await;
        // Its one request an hour: a read, so that no key changes here.
        let first = api
            .send(
                "GET",
                "/keys/{id}",
                &concrete("/keys/{id}", &id),
                Some(&limited),
                &[],
                None,
            )
            .await;
        assert_eq!(first.status, 200);
        let over = api
            .send(method, template, &path, Some(&limited), &[], None)
            .await;
        assert_eq!(over.status, 429, "{method} {template}");
        assert!(
            over.headers.contains_key("retry-after"),
            "{method} {template}"
        );
    }

    // The handlers. 400: a malformed key id, account or query.
    for (method, template) in &operations {
        let path = template
            .replace("{id}", "not-a-key-id")
            .replace("{service_account_id}", &"a".repeat(1000));
        let body = has_body(method, template).then(|| ("application/json", b"{}".to_vec()));
        let bad = api
            .send(method, template, &path, Some(&admin), &[], body)
            .await;
        assert_eq!(bad.status, 400, "{method} {template}");
    }
    // 413 and 415 on every operation that reads a body; 400 for a wrong field.
    for (method, template) in &with_body {
        let path = concrete(template, &id);
        let large = format!("{{\"description\":\"{}\"}}", "x".repeat(BODY_LIMIT));
        let too_large = api
            .send(
                method,
                template,
                &path,
                Some(&admin),
                &[],
                Some(("application/json", large.into_bytes())),
            )
            .await;
        assert_eq!(too_large.status, 413, "{method} {template}");
        let text = api
            .send(
                method,
                template,
                &path,
                Some(&admin),
                &[],
                Some(("text/plain", b"{}".to_vec())),
            )
            .await;
        assert_eq!(text.status, 415, "{method} {template}");
        let wrong = api
            .send(
                method,
                template,
                &path,
                Some(&admin),
                &[],
                Some(("application/json", br#"{"no_such_field":1}"#.to_vec())),
            )
            .await;
        assert_eq!(wrong.status, 400, "{method} {template}");
    }
    // 404 (an unknown key) and 412 (a stale version) on every operation on
    // one key; a body that would otherwise pass.
    let ok_body = |template: &str| match template {
        "/keys/{id}:addCredits" => Some(("application/json", br#"{"amount":1}"#.to_vec())),
        "/keys/{id}:reissue" => Some(("application/json", b"{}".to_vec())),
        // A real change: a PATCH of values the key holds writes nothing.
        "/keys/{id}" => Some(("application/json", br#"{"description":"changed"}"#.to_vec())),
        _ => None,
    };
    let unknown = "0000000000000000";
    for (method, template) in with_if_match {
        let body = if method == "DELETE" {
            None
        } else {
            ok_body(template)
        };
        let missing = api
            .send(
                method,
                template,
                &template.replace("{id}", unknown),
                Some(&admin),
                &[],
                body.clone(),
            )
            .await;
        assert_eq!(
            missing.status, 404,
            "{method} {template}: {:?}",
            missing.body
        );
        let stale = api
            .send(
                method,
                template,
                &template.replace("{id}", &id),
                Some(&admin),
                &[("if-match", "\"999999\"")],
                body,
            )
            .await;
        assert_eq!(stale.status, 412, "{method} {template}");
    }
    // 409: credits added to a key without credits.
    let conflict = api
        .send(
            "POST",
            "/keys/{id}:addCredits",
            &format!("/keys/{plain_id}:addCredits"),
            Some(&admin),
            &[],
            Some(("application/json", br#"{"amount":1}"#.to_vec())),
        )
        .await;
    assert_eq!(conflict.status, 409);
    // 503: the store is down for the writes.
    api.store.hook.0.store(true, Ordering::SeqCst);
    for (method, template) in with_if_match {
        if template.ends_with(":reissue") {
            continue; // The hooked store does not hook reissues.
        }
        let body = if method == "DELETE" {
            None
        } else {
            ok_body(template)
        };
        let down = api
            .send(
                method,
                template,
                &template.replace("{id}", &id),
                Some(&admin),
                &[],
                body,
            )
            .await;
        assert_eq!(down.status, 503, "{method} {template}");
        assert!(down.headers.contains_key("retry-after"));
    }
    api.store.hook.0.store(false, Ordering::SeqCst);

    // The issue's list of statuses, each met at least once.
    let statuses: BTreeSet<u16> = api.seen.iter().map(|(_, _, s)| *s).collect();
    for status in [400, 401, 403, 404, 409, 412, 413, 415, 429, 503] {
        assert!(
            statuses.contains(&status),
            "{status} never answered: {statuses:?}"
        );
    }
}
