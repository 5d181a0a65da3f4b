//! Shared fixtures for the HTTP integration tests: a counting verifier over a
//! `MemoryStore`, a manual clock shared by store and authenticator, an axum
//! app with one route per scope policy, and response helpers that never print
//! key material.
#![allow(dead_code)]

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_key::clock::ManualClock;
use tower_api_key::store::{CreatedKey, NewKey};
use tower_api_key::AuthenticatorBuilder;
use tower_api_key::Invalidations;
use tower_api_key::PresentedKey;
use tower_api_key::Reason;
use tower_api_key::Rejection;
use tower_api_key::ScopeSet;
use tower_api_key::{
    Authenticator, Caller, KeyRecord, KeyStore, MemoryStore, Verifier, VerifierError,
};

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

/// The prefix of every key the default format issues; used to spot key
/// material in anything a test might print.
const KEY_PREFIX: &str = "tak_";

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
        let store = MemoryStore::builder().with_clock(clock.clone()).build();
        let control = Arc::new(Control::default());
        let verifier = TestVerifier {
            store: store.clone(),
            control: control.clone(),
        };
        let auth = configure(Authenticator::builder(verifier).clock(clock.clone())).build();
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

/// A response, read to the end.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub rejection: Option<Rejection>,
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

/// Text for failure messages, with anything that looks like a key hidden.
pub fn redacted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains(KEY_PREFIX) {
        format!(
            "<{} bytes that look like key material, not shown>",
            bytes.len()
        )
    } else {
        text.into_owned()
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), redacted(value.as_bytes())))
            .collect();
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body", &redacted(&self.body))
            .field("reason", &self.rejection.as_ref().map(Rejection::reason))
            .finish()
    }
}

impl Reply {
    /// The reason of the rejection in the response's extensions.
    pub fn reason(&self) -> Option<Reason> {
        self.rejection.as_ref().map(Rejection::reason)
    }

    /// A header as text ("" when missing).
    pub fn header(&self, name: impl http::header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<not visible ASCII>"))
            .unwrap_or("")
    }

    /// Whether `secret` appears anywhere in headers or body.
    pub fn contains(&self, secret: &str) -> bool {
        let needle = secret.as_bytes();
        let within = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        within(&self.body) || self.headers.values().any(|v| within(v.as_bytes()))
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
