//! The harness shared by the measurement tools in `perf/` (`mod support;`)
//! and the benchmarks in `benches/` (as `support::harness`): a current-thread
//! runtime, the `hello` service put behind each layer, a way to call a
//! service that answers at once, and keys made ready in a `MemoryStore`.
//! Everything here is setup; none of it runs inside a measured loop except
//! `hello` and `call_now`, which every variant shares.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header::AUTHORIZATION, Request, Response};
use tower::{Service, ServiceExt};
use tower_api_key::cache::CachedVerifier;
use tower_api_key::store::NewKey;
use tower_api_key::Authenticator;
use tower_api_key::KeyRecord;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::VerifierError;
use tower_api_key::{KeyFormat, PresentedKey};

/// The token of the `ValidateRequestHeaderLayer::bearer` baseline.
pub const BEARER: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU";

/// How many keys the hit-path measurements look up over and over, spread
/// evenly over the cached keys.
pub const HOT: usize = 1024;

/// A verifier that admits every well-formed key, with a record of the same
/// shape a store returns (two scopes).
pub async fn admit_every_key(key: PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
    let scopes = ScopeSet::new(["yc.ai.translate.execute", "yc.ai.foundationModels.execute"])
        .map_err(VerifierError::backend)?;
    Ok(Some(
        KeyRecord::new(key.id(), "sa-bench").with_scopes(scopes),
    ))
}

/// Fills `cache` with `n` new keys of the default format through its miss
/// path and returns the hot working set: [`HOT`] of them (at most), spread
/// evenly over the `n`.
pub fn fill(rt: &tokio::runtime::Runtime, cache: &CachedVerifier, n: usize) -> Vec<PresentedKey> {
    let format = KeyFormat::default();
    let stride = (n / HOT).max(1);
    let mut hot = Vec::with_capacity(HOT);
    rt.block_on(async {
        for i in 0..n {
            let key = format.generate().expect("random source");
            let key = format.parse(key.expose_secret()).expect("a valid key");
            cache.lookup(&key).await.expect("accepted");
            if i % stride == 0 && hot.len() < HOT {
                hot.push(key);
            }
        }
    });
    cache.run_pending_tasks();
    hot
}

/// A current-thread runtime with time and I/O.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `GET /protected` with `authorization` as its `Authorization` header.
pub fn request(authorization: &str) -> Request<()> {
    Request::get("/protected")
        .header(AUTHORIZATION, authorization)
        .body(())
        .expect("a valid request")
}

/// The service behind every layer measured: a fixed body.
pub async fn hello(_request: Request<()>) -> Result<Response<Bytes>, Infallible> {
    Ok(Response::new(Bytes::from_static(b"hello, world")))
}

/// Calls `service` once, expecting an immediate answer.
pub fn call_now<S>(service: &mut S, request: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    ServiceExt::ready(service)
        .now_or_never()
        .expect("ready at once")
        .expect("ready")
        .call(request)
        .now_or_never()
        .expect("answered at once")
        .expect("no error")
}

/// A new key of `account` in `store`, looked up once through `auth` so its
/// cache holds it: what the hit-path measurements use. Returns the key text.
pub fn cached_key(
    rt: &tokio::runtime::Runtime,
    store: &MemoryStore,
    auth: &Authenticator,
    account: &str,
) -> String {
    rt.block_on(async {
        let created = store.create(NewKey::new(account)).await.expect("created");
        let secret = created.key.expose_secret().to_owned();
        let presented = store.format().parse(&secret).expect("a valid key");
        auth.cache().lookup(&presented).await.expect("accepted");
        secret
    })
}

/// `n` new keys in `store` over 100 accounts, parsed: what the miss-path
/// measurements look up, each once, on a cold cache.
pub fn stored_keys(
    rt: &tokio::runtime::Runtime,
    store: &MemoryStore,
    n: usize,
) -> Vec<PresentedKey> {
    rt.block_on(async {
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            let created = store
                .create(NewKey::new(format!("sa-{}", i % 100)))
                .await
                .expect("created");
            keys.push(
                store
                    .format()
                    .parse(created.key.expose_secret())
                    .expect("a valid key"),
            );
        }
        keys
    })
}

/// Ten networks, IPv4 and IPv6, one of them holding 10.0.0.5.
pub fn ten_networks() -> tower_api_key::Networks {
    tower_api_key::Networks::parse([
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "172.16.0.0/12",
        "10.0.0.0/8",
        "2001:db8::/32",
        "2001:db8:1::/48",
        "fd00::/8",
        "2001:db8:2::1",
        "fe80::/10",
    ])
    .expect("valid networks")
}
