//! gRPC through a real tonic server and a real tonic client over TCP on
//! 127.0.0.1: statuses, per-method scopes, the identity in handlers, and
//! axum and tonic served on one port through one authenticator.
//!
//! Each server binds its listener before it is spawned, so clients connect
//! without waiting; no test sleeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tower_api_key::auth::grpc::MethodPolicies;
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::store::NewKey;
use tower_api_key::Invalidations;
use tower_api_key::KeyRecord;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::{Authenticator, Caller};
use tower_api_key::{KeyFormat, PresentedKey};
use tower_api_key::{Verifier, VerifierError};

mod pb {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/generated/demo.rs"
    ));
}

use pb::assistant_client::AssistantClient;
use pb::assistant_server::{Assistant, AssistantServer};
use pb::{
    GenerateReply, GenerateRequest, TranslateReply, TranslateRequest, WhoAmIReply, WhoAmIRequest,
};

const TRANSLATE_SCOPE: &str = "yc.ai.translate.execute";
const AI_SCOPE: &str = "yc.ai.foundationModels.execute";
const TRANSLATE: &str = "/demo.Assistant/Translate";
const GENERATE: &str = "/demo.Assistant/Generate";
const WHO_AM_I: &str = "/demo.Assistant/WhoAmI";
/// What every unauthenticated rejection says, whatever the reason.
const UNAUTHENTICATED_MESSAGE: &str = "a valid API key is required";

/// The service under test: answers with the caller it sees, counts its calls.
#[derive(Clone, Default)]
struct TestAssistant {
    calls: Arc<AtomicUsize>,
}

/// The caller, through the `tonic` feature's helper when it is on, else
/// straight from the extensions: both ways a handler reads it.
fn identity<T>(request: &Request<T>) -> Result<Caller, Status> {
    #[cfg(feature = "tonic")]
    return tower_api_key::auth::grpc::caller(request).cloned();
    #[cfg(not(feature = "tonic"))]
    return request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("no Caller"));
}

#[tonic::async_trait]
impl Assistant for TestAssistant {
    async fn translate(
        &self,
        request: Request<TranslateRequest>,
    ) -> Result<Response<TranslateReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let caller = identity(&request)?;
        Ok(Response::new(TranslateReply {
            text: format!("[fr] {}", request.into_inner().text),
            service_account_id: caller.service_account_id().to_string(),
        }))
    }

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let caller = identity(&request)?;
        Ok(Response::new(GenerateReply {
            text: request.into_inner().prompt,
            service_account_id: caller.service_account_id().to_string(),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let caller = identity(&request)?;
        Ok(Response::new(WhoAmIReply {
            service_account_id: caller.service_account_id().to_string(),
            key_id: caller.key_id().to_string(),
            scopes: caller.scopes().iter().map(|s| s.to_string()).collect(),
        }))
    }
}

/// A store behind a verifier that counts its calls (and still forwards the
/// store's revocations to the cache).
struct CountingStore {
    store: MemoryStore,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Verifier for CountingStore {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.verify(key).await
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

struct Fixture {
    store: MemoryStore,
    clock: Arc<ManualClock>,
    auth: Authenticator,
    verifier_calls: Arc<AtomicUsize>,
    service: TestAssistant,
}

impl Fixture {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let verifier_calls = Arc::new(AtomicUsize::new(0));
        let auth = Authenticator::verifier_builder(CountingStore {
            store: store.clone(),
            calls: verifier_calls.clone(),
        })
        .credits(store.clone())
        .clock(clock.clone())
        .build();
        Self {
            store,
            clock,
            auth,
            verifier_calls,
            service: TestAssistant::default(),
        }
    }

    async fn key(&self, account: &str, scopes: &[&str]) -> String {
        let created = self
            .store
            .create(
                NewKey::new(account).with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap()),
            )
            .await
            .unwrap();
        created.key.expose_secret().to_string()
    }

    fn verifier_calls(&self) -> usize {
        self.verifier_calls.load(Ordering::SeqCst)
    }

    fn handler_calls(&self) -> usize {
        self.service.calls.load(Ordering::SeqCst)
    }
}

/// The demo table: two methods with different scopes, one for any valid key.
fn demo_methods() -> MethodPolicies {
    MethodPolicies::builder()
        .require_any(TRANSLATE, [TRANSLATE_SCOPE, AI_SCOPE])
        .require_any(GENERATE, [AI_SCOPE])
        .any_valid_key(WHO_AM_I)
        .build()
        .unwrap()
}

/// A tonic server with one layer from `auth` in front of the whole service.
async fn serve_tonic(
    auth: &Authenticator,
    methods: MethodPolicies,
    service: TestAssistant,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .layer(auth.layer(methods))
        .add_service(AssistantServer::new(service))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move { server.await.expect("tonic server") });
    addr
}

async fn client(addr: SocketAddr) -> AssistantClient<Channel> {
    AssistantClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A request with `authorization: <value>` metadata, if any.
fn request<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

fn api_key(key: &str) -> String {
    format!("Api-Key {key}")
}

async fn who_am_i(
    client: &mut AssistantClient<Channel>,
    auth: Option<&str>,
) -> Result<WhoAmIReply, Status> {
    client
        .who_am_i(request(WhoAmIRequest {}, auth))
        .await
        .map(Response::into_inner)
}

async fn translate(
    client: &mut AssistantClient<Channel>,
    auth: Option<&str>,
) -> Result<TranslateReply, Status> {
    client
        .translate(request(
            TranslateRequest {
                text: "hello".into(),
                target_language: "fr".into(),
            },
            auth,
        ))
        .await
        .map(Response::into_inner)
}

async fn generate(
    client: &mut AssistantClient<Channel>,
    auth: Option<&str>,
) -> Result<GenerateReply, Status> {
    client
        .generate(request(
            GenerateRequest {
                prompt: "a cat".into(),
            },
            auth,
        ))
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn no_key_is_unauthenticated() {
    let fx = Fixture::new();
    let addr = serve_tonic(&fx.auth, demo_methods(), fx.service.clone()).await;
    let mut client = client(addr).await;

    for status in [
        who_am_i(&mut client, None).await.unwrap_err(),
        translate(&mut client, None).await.unwrap_err(),
        generate(&mut client, None).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), UNAUTHENTICATED_MESSAGE);
    }
    assert_eq!(fx.verifier_calls(), 0);
    assert_eq!(fx.handler_calls(), 0);
}

#[tokio::test]
async fn malformed_unknown_revoked_and_expired_keys_are_unauthenticated_alike() {
    let fx = Fixture::new();
    let addr = serve_tonic(&fx.auth, demo_methods(), fx.service.clone()).await;
    let mut client = client(addr).await;

    // Malformed: refused offline, without a verifier call.
    let valid = fx.key("sa-1", &[]).await;
    let mut typo = valid.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let malformed = [
        api_key("tak_garbage"),
        api_key(&typo),
        api_key(""),
        format!("Bearer {valid}"),
        valid.clone(),
    ];
    let mut presented = Vec::new();
    for value in &malformed {
        let status = who_am_i(&mut client, Some(value)).await.unwrap_err();
        presented.push((value.clone(), status));
    }
    assert_eq!(fx.verifier_calls(), 0, "malformed keys reach no verifier");

    // Unknown: well formed, never stored.
    let unknown = KeyFormat::default().generate().unwrap();
    let unknown = api_key(unknown.expose_secret());
    let status = who_am_i(&mut client, Some(&unknown)).await.unwrap_err();
    presented.push((unknown, status));

    // Revoked: works, then is revoked, then is refused at once.
    let revoked = fx.key("sa-revoked", &[]).await;
    who_am_i(&mut client, Some(&api_key(&revoked)))
        .await
        .unwrap();
    let id = fx.auth.key_format().parse(&revoked).unwrap().id();
    assert!(fx.store.revoke(id, None).await.unwrap());
    let status = who_am_i(&mut client, Some(&api_key(&revoked)))
        .await
        .unwrap_err();
    presented.push((revoked, status));

    // Expired: works until the clock passes its expiry.
    let expiring = fx
        .store
        .create(
            NewKey::new("sa-expiring").with_expires_at(fx.clock.now() + Duration::from_secs(60)),
        )
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_string();
    who_am_i(&mut client, Some(&api_key(&expiring)))
        .await
        .unwrap();
    fx.clock.advance(Duration::from_secs(61));
    let status = who_am_i(&mut client, Some(&api_key(&expiring)))
        .await
        .unwrap_err();
    presented.push((expiring, status));

    let handler_calls = fx.handler_calls();
    assert_eq!(
        handler_calls, 2,
        "only the two successful calls reach the handler"
    );
    for (value, status) in &presented {
        assert_eq!(status.code(), Code::Unauthenticated, "{value}: {status:?}");
        assert_eq!(status.message(), UNAUTHENTICATED_MESSAGE, "{value}");
        assert!(status.details().is_empty());
        // No key material in what the client is told.
        let told = format!("{:?} {:?}", status.message(), status.metadata());
        for (key, _) in &presented {
            if let Some(secret) = key.rsplit(' ').next().filter(|s| s.len() > 8) {
                assert!(!told.contains(secret), "{told}");
            }
        }
    }
}

#[tokio::test]
async fn a_valid_key_without_the_methods_scope_is_permission_denied() {
    let fx = Fixture::new();
    let addr = serve_tonic(&fx.auth, demo_methods(), fx.service.clone()).await;
    let mut client = client(addr).await;

    let translate_key = api_key(&fx.key("sa-translator", &[TRANSLATE_SCOPE]).await);
    let unscoped_key = api_key(&fx.key("sa-legacy", &[]).await);

    let denied = [
        generate(&mut client, Some(&translate_key))
            .await
            .unwrap_err(),
        translate(&mut client, Some(&unscoped_key))
            .await
            .unwrap_err(),
        generate(&mut client, Some(&unscoped_key))
            .await
            .unwrap_err(),
    ];
    for status in &denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            "the API key is not allowed to call this method"
        );
    }
    assert_eq!(fx.handler_calls(), 0);
    // One lookup per key, shared by every method.
    assert_eq!(fx.verifier_calls(), 2);
}

#[tokio::test]
async fn the_right_scope_succeeds_and_the_handler_sees_the_identity() {
    let fx = Fixture::new();
    let addr = serve_tonic(&fx.auth, demo_methods(), fx.service.clone()).await;
    let mut client = client(addr).await;

    let translator = fx.key("sa-translator", &[TRANSLATE_SCOPE]).await;
    let assistant = fx.key("sa-assistant", &[AI_SCOPE]).await;
    let legacy = fx.key("sa-legacy", &[]).await;

    let reply = translate(&mut client, Some(&api_key(&translator)))
        .await
        .unwrap();
    assert_eq!(reply.service_account_id, "sa-translator");
    assert_eq!(reply.text, "[fr] hello");
    // The broad scope also opens Translate, and Generate.
    let reply = translate(&mut client, Some(&api_key(&assistant)))
        .await
        .unwrap();
    assert_eq!(reply.service_account_id, "sa-assistant");
    let reply = generate(&mut client, Some(&api_key(&assistant)))
        .await
        .unwrap();
    assert_eq!(reply.service_account_id, "sa-assistant");

    // WhoAmI takes any valid key, scoped or not, and shows the identity.
    for (key, account, scopes) in [
        (&translator, "sa-translator", vec![TRANSLATE_SCOPE]),
        (&assistant, "sa-assistant", vec![AI_SCOPE]),
        (&legacy, "sa-legacy", vec![]),
    ] {
        let reply = who_am_i(&mut client, Some(&api_key(key))).await.unwrap();
        assert_eq!(reply.service_account_id, account);
        let id = fx.auth.key_format().parse(key).unwrap().id();
        assert_eq!(reply.key_id, id.to_string());
        assert_eq!(reply.scopes, scopes);
    }
    assert_eq!(fx.handler_calls(), 6);
    assert_eq!(fx.verifier_calls(), 3, "one lookup per key, then the cache");
}

/// Allowed networks on a tonic server: the layer reads the peer address
/// tonic's server records (`TcpConnectInfo`), no application code supplies
/// it. Before the feature `tonic-server` existed the address could not be
/// told here, so the loopback key was refused as well.
#[cfg(feature = "tonic-server")]
#[tokio::test]
async fn tonic_peer_address_decides_allowed_networks() {
    use tower_api_key::Networks;

    let fx = Fixture::new();
    let addr = serve_tonic(&fx.auth, demo_methods(), fx.service.clone()).await;
    let mut client = client(addr).await;
    let key_in = |network: &'static str| {
        let store = fx.store.clone();
        async move {
            let networks = Networks::parse([network]).unwrap();
            let created = store
                .create(NewKey::new("sa-net").with_allowed_networks(Some(networks)))
                .await
                .unwrap();
            created.key.expose_secret().to_string()
        }
    };
    let loopback = key_in("127.0.0.1/32").await;
    let elsewhere = key_in("10.0.0.0/8").await;

    let reply = who_am_i(&mut client, Some(&api_key(&loopback)))
        .await
        .expect("a loopback-only key used from 127.0.0.1 is served");
    assert_eq!(reply.service_account_id, "sa-net");

    let status = who_am_i(&mut client, Some(&api_key(&elsewhere)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(i32::from(status.code()), 7);
    assert_eq!(
        status.message(),
        "the API key may not be used from this network"
    );
    assert_eq!(
        fx.handler_calls(),
        1,
        "the refused call never reached the handler"
    );
}

#[tokio::test]
async fn unlisted_methods_default_to_unscoped_keys_only() {
    let fx = Fixture::new();
    // WhoAmI is not in this table.
    let methods = MethodPolicies::builder()
        .require_any(TRANSLATE, [TRANSLATE_SCOPE])
        .build()
        .unwrap();
    let addr = serve_tonic(&fx.auth, methods, fx.service.clone()).await;
    let mut client = client(addr).await;

    let scoped = api_key(&fx.key("sa-translator", &[TRANSLATE_SCOPE]).await);
    let unscoped = api_key(&fx.key("sa-legacy", &[]).await);
    assert_eq!(
        who_am_i(&mut client, Some(&scoped))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        who_am_i(&mut client, Some(&unscoped))
            .await
            .unwrap()
            .service_account_id,
        "sa-legacy"
    );
    assert_eq!(
        who_am_i(&mut client, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_failing_verifier_is_unavailable_and_never_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let auth = Authenticator::verifier_builder({
        let calls = calls.clone();
        move |_key: PresentedKey| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(VerifierError::backend("database down at 10.0.0.7")) }
        }
    })
    .build();
    let service = TestAssistant::default();
    let addr = serve_tonic(&auth, demo_methods(), service.clone()).await;
    let mut client = client(addr).await;

    let key = KeyFormat::default().generate().unwrap();
    let secret = key.expose_secret().to_string();
    for attempt in 1..=2 {
        let status = who_am_i(&mut client, Some(&api_key(&secret)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status.message(),
            "API key verification is temporarily unavailable; retry later"
        );
        assert!(!status.message().contains(&secret));
        assert!(!status.message().contains("database"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            attempt,
            "errors are not cached"
        );
    }
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_api_key_scheme_is_case_insensitive_in_metadata() {
    let fx = Fixture::new();
    let addr = serve_tonic(&fx.auth, demo_methods(), fx.service.clone()).await;
    let mut client = client(addr).await;

    let key = fx.key("sa-assistant", &[AI_SCOPE]).await;
    for scheme in ["Api-Key", "api-key", "API-KEY", "aPI-kEy"] {
        let value = format!("{scheme} {key}");
        let reply = generate(&mut client, Some(&value)).await.unwrap();
        assert_eq!(reply.service_account_id, "sa-assistant", "{scheme}");
    }
    // Another scheme is not an API key.
    let status = generate(&mut client, Some(&format!("Bearer {key}")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// Without a layer in front there is no caller: the helper says so.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn the_caller_helper_reports_a_missing_layer_as_internal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .add_service(AssistantServer::new(TestAssistant::default()))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move { server.await.expect("tonic server") });
    let mut client = client(addr).await;

    let status = who_am_i(&mut client, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("ApiKeyLayer"), "{status:?}");
}

/// A raw HTTP/1.1 exchange: the status line, the headers (lower-cased
/// names) and the body.
async fn http1(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    (status, headers, body.to_string())
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn axum_and_tonic_on_one_port_answer_each_client_in_its_protocol() {
    let fx = Fixture::new();
    let auth = &fx.auth;
    // axum routes with their own layers, and the tonic service with its
    // method table: one authenticator, one cache, one port.
    let grpc = Routes::new(AssistantServer::new(fx.service.clone()))
        .into_axum_router()
        .route_layer(auth.layer(demo_methods()));
    let app = axum::Router::new()
        .route(
            "/whoami",
            get(|caller: Caller| async move { caller.service_account_id().to_string() })
                .route_layer(auth.any_valid_key()),
        )
        .route(
            "/v1/generate",
            get(|| async { "generated" }).route_layer(auth.require_any([AI_SCOPE])),
        )
        .merge(grpc);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("axum server") });

    let translator = fx.key("sa-translator", &[TRANSLATE_SCOPE]).await;

    // HTTP clients get HTTP.
    let get = |path: &str, key: Option<&str>| {
        let auth = key.map(|k| format!("authorization: Api-Key {k}\r\n"));
        format!(
            "GET {path} HTTP/1.1\r\nhost: test\r\n{}connection: close\r\n\r\n",
            auth.unwrap_or_default()
        )
    };
    let (status, headers, body) = http1(addr, &get("/whoami", None)).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Api-Key realm=\"api\"")
    );
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert!(header(&headers, "grpc-status").is_none());
    assert!(body.contains("unauthenticated"), "{body}");

    let (status, _, body) = http1(addr, &get("/whoami", Some(&translator))).await;
    assert_eq!((status, body.as_str()), (200, "sa-translator"));
    let (status, headers, _) = http1(addr, &get("/v1/generate", Some(&translator))).await;
    assert_eq!(status, 403);
    assert!(header(&headers, "www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));

    // An HTTP/1.1 client posting to a gRPC path without gRPC's content type
    // is an HTTP client: it gets the HTTP 401.
    let (status, _, _) = http1(
        addr,
        &format!("POST {WHO_AM_I} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 401);
    // With it, the refusal is a trailers-only gRPC response on the wire:
    // 200, grpc-status in the headers, no body.
    let (status, headers, body) = http1(
        addr,
        &format!("POST {WHO_AM_I} HTTP/1.1\r\nhost: test\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/grpc"));
    assert_eq!(header(&headers, "grpc-status"), Some("16"));
    assert_eq!(
        header(&headers, "grpc-message"),
        Some("a%20valid%20API%20key%20is%20required")
    );
    assert!(header(&headers, "www-authenticate").is_none());
    assert_eq!(body, "");

    // gRPC clients get gRPC statuses, on the same port.
    let mut client = client(addr).await;
    assert_eq!(
        who_am_i(&mut client, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        generate(&mut client, Some(&api_key(&translator)))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let reply = translate(&mut client, Some(&api_key(&translator)))
        .await
        .unwrap();
    assert_eq!(reply.service_account_id, "sa-translator");

    // One authenticator: the key was looked up once for HTTP and gRPC alike.
    assert_eq!(fx.verifier_calls(), 1);
}
