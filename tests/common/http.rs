//! The in-process fixture of the HTTP tests: a counting verifier over a
//! `MemoryStore`, a manual clock shared by store and authenticator, an axum
//! app with one route per scope policy, `send` through it with `oneshot`, and
//! the assertions on 401 and 403 responses.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::header::{HeaderName, AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_key::clock::ManualClock;
use tower_api_key::store::{CreatedKey, NewKey};
use tower_api_key::AuthenticatorBuilder;
use tower_api_key::Invalidations;
use tower_api_key::Reason;
use tower_api_key::Rejection;
use tower_api_key::ScopeSet;
use tower_api_key::{
    Authenticator, Caller, KeyRecord, KeyStore, MemoryStore, Verifier, VerifierError,
};
use tower_api_key::{KeyId, PresentedKey};

use super::Reply;

/// A narrow scope and a broad one; `/v1/translate` accepts either.
pub const NARROW: &str = "yc.ai.translate.execute";
pub const BROAD: &str = "yc.ai.execute";
/// A scope no route accepts.
pub const OTHER: &str = "yc.storage.read";
/// A dotted prefix of `NARROW`: scopes are compared exactly, so it must not pass.
pub const NARROW_PREFIX: &str = "yc.ai.translate";

/// The extra credential header used by the tests that enable it.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// `WWW-Authenticate` of every 401 with the default realm.
pub const CHALLENGE: &str = "Api-Key realm=\"api\"";

/// Knobs and counters of [`TestVerifier`].
pub struct Control {
    /// Verifier calls so far.
    pub calls: AtomicUsize,
    /// Fail the next call with a backend error.
    pub fail_next: AtomicBool,
    /// Panic in the next call.
    pub panic_next: AtomicBool,
    /// Never answer the next call.
    pub hang_next: AtomicBool,
    /// While set, calls wait for a permit of `gate` before answering.
    pub gated: AtomicBool,
    pub gate: tokio::sync::Semaphore,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            fail_next: AtomicBool::new(false),
            panic_next: AtomicBool::new(false),
            hang_next: AtomicBool::new(false),
            gated: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

/// Counts calls and delegates to a `MemoryStore`, including its invalidation
/// bus, so revocations through the store still reach the cache.
pub struct TestVerifier {
    store: MemoryStore,
    control: Arc<Control>,
}

#[async_trait]
impl Verifier for TestVerifier {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.control.calls.fetch_add(1, Ordering::SeqCst);
        if self.control.fail_next.swap(false, Ordering::SeqCst) {
            return Err(VerifierError::backend("key database unreachable (test)"));
        }
        if self.control.panic_next.swap(false, Ordering::SeqCst) {
            panic!("verifier panicked on purpose (test)");
        }
        if self.control.hang_next.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.control.gated.load(Ordering::SeqCst) {
            self.control.gate.acquire().await.unwrap().forget();
        }
        self.store.verify(key).await
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

/// Store, clock, verifier counters and the authenticator over them.
pub struct Fixture {
    pub store: MemoryStore,
    pub clock: Arc<ManualClock>,
    pub control: Arc<Control>,
    pub auth: Authenticator,
}

impl Fixture {
    /// Default authenticator settings.
    pub fn new() -> Self {
        Self::with(|auth| auth)
    }

    /// The authenticator as `configure` leaves it (the clock is set first).
    pub fn with(configure: impl FnOnce(AuthenticatorBuilder) -> AuthenticatorBuilder) -> Self {
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let control = Arc::new(Control::default());
        let verifier = TestVerifier {
            store: store.clone(),
            control: control.clone(),
        };
        let auth = configure(
            Authenticator::verifier_builder(verifier)
                .credits(store.clone())
                .clock(clock.clone()),
        )
        .build();
        Self {
            store,
            clock,
            control,
            auth,
        }
    }

    /// How many times the verifier has been called.
    pub fn calls(&self) -> usize {
        self.control.calls.load(Ordering::SeqCst)
    }

    /// A new key of `account` with `scopes` (empty: unscoped).
    pub async fn key(&self, account: &str, scopes: &[&str]) -> CreatedKey {
        let new = NewKey::new(account).with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap());
        self.store.create(new).await.unwrap()
    }

    /// A new unscoped key of `account` that expires `after` from the clock's now.
    pub async fn expiring_key(&self, account: &str, after: Duration) -> CreatedKey {
        use tower_api_key::clock::Clock;
        let new = NewKey::new(account).with_expires_at(self.clock.now() + after);
        self.store.create(new).await.unwrap()
    }
}

/// What a handler saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub caller: Option<Caller>,
    /// `is_sensitive()` of the `Authorization` header, if present.
    pub authorization_sensitive: Option<bool>,
    /// `is_sensitive()` of the `x-api-key` header, if present.
    pub x_api_key_sensitive: Option<bool>,
}

/// The app under test and a log of every handler run.
pub struct App {
    pub router: Router,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    /// Every handler run so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only handler run so far.
    pub fn only_seen(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one handler run");
        seen.into_iter().next().unwrap()
    }

    /// Sends `request` through the router in process.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        send(&self.router, request).await
    }
}

fn record(
    seen: &Mutex<Vec<Seen>>,
    path: &str,
    caller: Option<Caller>,
    headers: &HeaderMap,
) -> String {
    let body = match &caller {
        Some(caller) => format!("{} {}", caller.service_account_id(), caller.key_id()),
        None => "anonymous".to_owned(),
    };
    seen.lock().unwrap().push(Seen {
        path: path.to_owned(),
        caller,
        authorization_sensitive: headers.get(AUTHORIZATION).map(HeaderValue::is_sensitive),
        x_api_key_sensitive: headers.get(X_API_KEY).map(HeaderValue::is_sensitive),
    });
    body
}

/// A handler that requires a `Caller` and logs what it saw.
pub fn handler(
    seen: &Arc<Mutex<Vec<Seen>>>,
    path: &'static str,
) -> impl Fn(Caller, HeaderMap) -> std::future::Ready<String> + Clone + Send + Sync + 'static {
    let seen = seen.clone();
    move |caller: Caller, headers: HeaderMap| {
        std::future::ready(record(&seen, path, Some(caller), &headers))
    }
}

/// The app: one route per row of the scope table, all over one authenticator.
///
/// - `GET /whoami`: any valid key (the handler uses the `Caller` extractor);
/// - `POST /v1/translate`: requires `NARROW` or `BROAD`;
/// - `GET /v1/legacy`: unscoped keys only;
/// - `GET|OPTIONS /v1/cors`: any valid key (preflight tests; the handler takes
///   `Option<Caller>` so an unauthenticated preflight can be observed).
///
/// Handlers answer `"<account> <key id>"`, or `"anonymous"`.
pub fn app(auth: &Authenticator) -> App {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let whoami = get(handler(&seen, "/whoami")).route_layer(auth.any_valid_key());
    let translate =
        post(handler(&seen, "/v1/translate")).route_layer(auth.require_any([NARROW, BROAD]));
    let legacy = get(handler(&seen, "/v1/legacy")).route_layer(auth.unscoped_keys_only());
    let s = seen.clone();
    let cors = get(handler(&seen, "/v1/cors"))
        .options(move |caller: Option<Caller>, headers: HeaderMap| {
            let s = s.clone();
            async move { record(&s, "OPTIONS /v1/cors", caller, &headers) }
        })
        .route_layer(auth.any_valid_key());
    let router = Router::new()
        .route("/whoami", whoami)
        .route("/v1/translate", translate)
        .route("/v1/legacy", legacy)
        .route("/v1/cors", cors);
    App { router, seen }
}

/// `Api-Key <key>` as a header value.
pub fn api_key(key: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Api-Key {key}")).expect("keys are visible ASCII")
}

/// A `GET /whoami` request, to finish with headers and a body.
pub fn get_whoami() -> http::request::Builder {
    Request::get("/whoami")
}

/// `GET /whoami` with `value` as its `Authorization` header.
pub fn whoami_with(value: HeaderValue) -> Request<Body> {
    get_whoami()
        .header(AUTHORIZATION, value)
        .body(Body::empty())
        .unwrap()
}

/// `GET /whoami` with `Authorization: Api-Key <key>`.
pub fn whoami_with_key(key: &str) -> Request<Body> {
    whoami_with(api_key(key))
}

/// `method path` with `Authorization: Api-Key <key>`.
pub fn request_with_key(method: Method, path: &str, key: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(AUTHORIZATION, api_key(key))
        .body(Body::empty())
        .unwrap()
}

/// `key` with its last character changed: the checksum no longer matches.
pub fn with_bad_checksum(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

/// A `Caller` a client might try to smuggle in as a request extension: an
/// account of its own, holding both route scopes.
pub fn mallory() -> Caller {
    Caller::from(
        KeyRecord::new(KeyId::random().unwrap(), "sa-mallory")
            .with_scopes(ScopeSet::new([NARROW, BROAD]).unwrap()),
    )
}

/// Sends `request` through `router` with `oneshot`.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let rejection = response.extensions().get::<Rejection>().cloned();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        rejection,
    }
}

/// A 401 with the default realm, `no-store`, and `reason` in its extensions.
#[track_caller]
pub fn assert_unauthorized(reply: &Reply, reason: Reason) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{reply:?}");
    assert_eq!(reply.header(WWW_AUTHENTICATE), CHALLENGE, "{reply:?}");
    assert_eq!(reply.reason(), Some(reason), "{reply:?}");
}

/// A 403 `insufficient_scope` with `no-store`, naming exactly `scopes` (if
/// any) in `WWW-Authenticate` and in the rejection.
#[track_caller]
pub fn assert_forbidden(reply: &Reply, reason: Reason, scopes: &[&str]) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.header(CACHE_CONTROL), "no-store", "{reply:?}");
    assert_eq!(reply.reason(), Some(reason), "{reply:?}");
    let challenge = reply.header(WWW_AUTHENTICATE);
    assert!(
        challenge.starts_with("Api-Key realm=\"api\"")
            && challenge.contains("error=\"insufficient_scope\""),
        "{reply:?}"
    );
    let required = reply.rejection.as_ref().and_then(|r| r.required_scopes());
    if scopes.is_empty() {
        assert!(!challenge.contains("scope=\""), "{reply:?}");
        assert!(required.is_none(), "{reply:?}");
    } else {
        let expected = ScopeSet::new(scopes.iter().copied()).unwrap();
        let listed: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
        assert!(
            challenge.contains(&format!("scope=\"{}\"", listed.join(" "))),
            "{reply:?}"
        );
        assert_eq!(required, Some(&expected), "{reply:?}");
    }
}

/// Same status, same headers, same body bytes. Headers in `ignore` (for
/// example `date` over the wire) are left out.
#[track_caller]
pub fn assert_same_response(a: &Reply, b: &Reply, ignore: &[HeaderName]) {
    let strip = |headers: &HeaderMap| {
        let mut headers = headers.clone();
        for name in ignore {
            headers.remove(name);
        }
        headers
    };
    assert!(
        a.status == b.status && strip(&a.headers) == strip(&b.headers) && a.body == b.body,
        "responses differ:\n{a:?}\n{b:?}"
    );
}
