//! A fixed number of cache hits in one function per case, for instruction
//! counts and profiles that do not depend on the machine's load:
//!
//! ```text
//! cargo build --release -p tower-api-key-perf --bin hit_loop
//! scripts/callgrind_hit.sh            # instructions per hit, every case
//! valgrind --tool=callgrind --toggle-collect='hit_loop::run_*' \
//!     target/release/hit_loop layer 100000
//! ```
//!
//! Usage: `hit_loop CASE [ITERATIONS] [KEYS]`, CASE one of `parse`,
//! `lookup`, `hit_path`, `bare`, `bearer`, `layer`, `layer_observed` (`layer`
//! with a Prometheus recorder and a tracing subscriber at `info`, as the
//! quickstart runs), `layer_peer` and `layer_networks` (`layer` with the
//! peer address known, for a key without and with a 10-entry allowlist),
//! `miss` (ITERATIONS
//! distinct keys of a `MemoryStore`, each looked up once on a cold cache). The cache holds KEYS
//! keys (default 10,000); the hits cycle through a hot set of up to 1,024
//! of them (`lookup`, `hit_path`) or use one key (`bare`, `bearer`, `layer`, the
//! request through a `tower::service_fn` service as in `benches/layer.rs`).
//! Each case runs in a `run_<case>` function (not inlined), so a profiler
//! can count just the loop.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;

use http::{header::AUTHORIZATION, Request};
use tower::{Service, ServiceBuilder};
use tower_api_key::cache::{CacheConfig, CachedVerifier};
use tower_api_key::Authenticator;
use tower_api_key::MemoryStore;
use tower_api_key::ScopePolicy;
use tower_api_key::{KeyFormat, PresentedKey, VerifierError};

mod support;
use support::{admit_every_key, call_now, fill, hello, runtime, stored_keys, BEARER};

#[inline(never)]
fn run_parse(format: &KeyFormat, raw: &[Vec<u8>], n: usize) {
    for i in 0..n {
        black_box(format.parse_bytes(black_box(&raw[i % raw.len()])).is_ok());
    }
}

#[inline(never)]
fn run_lookup(cache: &CachedVerifier, hot: &[PresentedKey], n: usize) {
    for i in 0..n {
        black_box(cache.lookup_cached(&hot[i % hot.len()]));
    }
}

#[inline(never)]
fn run_hit_path(
    format: &KeyFormat,
    cache: &CachedVerifier,
    policy: &ScopePolicy,
    raw: &[Vec<u8>],
    n: usize,
) {
    for i in 0..n {
        // As the middleware does it: alphabet and checksum wait for a miss.
        let caller = cache
            .lookup_cached_raw(format, &raw[i % raw.len()])
            .expect("cached")
            .expect("admitted");
        policy.check(caller.scopes()).expect("in scope");
        let mut extensions = http::Extensions::new();
        extensions.insert(caller);
        black_box(extensions);
    }
}

#[inline(never)]
fn run_miss(rt: &tokio::runtime::Runtime, cache: &CachedVerifier, keys: &[PresentedKey]) {
    rt.block_on(async {
        for key in keys {
            black_box(cache.lookup(key).await.expect("accepted"));
        }
    });
}

#[inline(never)]
fn run_service<S>(service: &mut S, requests: Vec<Request<()>>)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let n = requests.len().max(1);
    let started = std::time::Instant::now();
    for request in requests {
        black_box(call_now(service, request));
    }
    // The loop alone, for comparing cases in one run (stderr: callgrind_hit.sh
    // reads nothing from it).
    eprintln!(
        "{:.1} ns per request",
        started.elapsed().as_nanos() as f64 / n as f64
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "lookup".to_owned());
    let n: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("iterations"));
    let keys: usize = args.next().map_or(10_000, |a| a.parse().expect("keys"));

    let rt = runtime();
    let format = KeyFormat::default();
    let auth = Authenticator::verifier_builder(admit_every_key)
        .max_keys(2 * keys as u64)
        .positive_ttl(Duration::from_secs(3600))
        .build();
    let cache = auth.cache().clone();
    let hot = fill(&rt, &cache, keys);
    let raw: Vec<Vec<u8>> = hot
        .iter()
        .map(|k| k.expose_secret().as_bytes().to_vec())
        .collect();
    let requests = |header: &str| -> Vec<Request<()>> {
        (0..n)
            .map(|_| {
                Request::get("/protected")
                    .header(AUTHORIZATION, header)
                    .body(())
                    .expect("a request")
            })
            .collect()
    };
    let api_key = format!("Api-Key {}", hot[0].expose_secret());
    match case.as_str() {
        "parse" => run_parse(&format, &raw, n),
        "lookup" => run_lookup(&cache, &hot, n),
        "miss" => {
            // N keys in a MemoryStore, each looked up once on a cold cache.
            let store = MemoryStore::new();
            let keys = stored_keys(&rt, &store, n);
            let cold = CachedVerifier::new(store, CacheConfig::default());
            run_miss(&rt, &cold, &keys)
        }
        "hit_path" => {
            let policy = ScopePolicy::require_any(["yc.ai.translate.execute"]).expect("a scope");
            run_hit_path(&format, &cache, &policy, &raw, n)
        }
        "bare" => run_service(&mut tower::service_fn(hello), requests(&api_key)),
        "bearer" => {
            #[allow(deprecated)]
            let mut service = ServiceBuilder::new()
                .layer(tower_http::validate_request::ValidateRequestHeaderLayer::bearer(BEARER))
                .service_fn(hello);
            run_service(&mut service, requests(&format!("Bearer {BEARER}")))
        }
        "layer_observed" => {
            // As users run it: a Prometheus recorder and a tracing
            // subscriber at `info`, installed as the quickstart does.
            let _prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder");
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(std::io::stderr)
                .init();
            let mut service = ServiceBuilder::new()
                .layer(auth.any_valid_key())
                .service_fn(hello);
            run_service(&mut service, requests(&api_key))
        }
        "layer" => {
            let mut service = ServiceBuilder::new()
                .layer(auth.any_valid_key())
                .service_fn(hello);
            run_service(&mut service, requests(&api_key))
        }
        // The layer with the peer address known (axum's `ConnectInfo`), for
        // keys without and with a 10-entry allowlist: the difference is
        // what an allowlist costs a hit.
        "layer_peer" | "layer_networks" => {
            let with_networks = case == "layer_networks";
            let auth = Authenticator::verifier_builder(move |key: PresentedKey| async move {
                let mut record = admit_every_key(key).await?.expect("admitted");
                if with_networks {
                    record.allowed_networks = Some(support::ten_networks());
                }
                Ok::<_, VerifierError>(Some(record))
            })
            .max_keys(2 * keys as u64)
            .positive_ttl(Duration::from_secs(3600))
            .build();
            let hot = fill(&rt, auth.cache(), keys);
            let mut requests = requests(&format!("Api-Key {}", hot[0].expose_secret()));
            for request in &mut requests {
                request
                    .extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 5], 40_000))));
            }
            let mut service = ServiceBuilder::new()
                .layer(auth.any_valid_key())
                .service_fn(hello);
            run_service(&mut service, requests)
        }
        other => {
            eprintln!(
                "unknown case {other}: parse, lookup, hit_path, bare, bearer, layer, \
                 layer_observed, layer_peer, layer_networks, miss"
            );
            std::process::exit(2);
        }
    }
}
