//! A server for load tests: the same small body on an open route and on a
//! route behind the API-key layer.
//!
//! ```text
//! cargo run --release -p tower-api-key-perf --bin bench_server -- --keys 1000000
//! ```
//!
//! - `GET /open`: no layer.
//! - `GET /protected`: behind `auth.any_valid_key()`.
//! - `GET /static`: the reference, behind tower-http's
//!   `ValidateRequestHeaderLayer` comparing the whole `Authorization` header
//!   with the demo key's (a static token, as tower-http's bearer check):
//!   what any route layer costs in axum, with next to no check.
//! - Prints `API_KEY_BENCH=<key>` (a valid demo key, already cached) and
//!   `listening on http://ADDR`.
//! - `BIND` (default `127.0.0.1:3000`) is the address; `WORKERS` (default 1)
//!   the number of tokio worker threads.
//! - `--keys N` (or `KEYS=N`) creates N more keys in the store and loads
//!   each into the cache through the verifier, then prints resident memory
//!   (`VmRSS`) and bytes per key for the store and for the cache.
//! - `--metrics` (or `METRICS=1`) runs it as users do: the Prometheus
//!   recorder installed (and `GET /metrics`) and a `tracing` subscriber at
//!   `info,tower_api_key=debug` writing to stderr, as the quickstart sets
//!   them up. Without it, `metrics` and `tracing` calls find no recorder and
//!   no subscriber, and cost next to nothing.
//!
//! Records reach the cache the way a database verifier hands them over:
//! freshly decoded, with their own copies of the service account id and the
//! scope names (a `MemoryStore` would share them with the store, and so hide
//! what a cache does with them).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::routing::get;
use axum::Router;
use tower_api_key::store::NewKey;
use tower_api_key::Authenticator;
use tower_api_key::Invalidations;
use tower_api_key::KeyRecord;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::PresentedKey;
use tower_api_key::ScopeSet;
use tower_api_key::{Verifier, VerifierError};
use tower_http::validate_request::ValidateRequestHeaderLayer;

const BODY: &str = "hello, world";

/// A store whose records come out as fresh copies, as from a database row.
#[derive(Clone)]
struct Decoded(MemoryStore);

#[async_trait]
impl Verifier for Decoded {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        let Some(record) = self.0.verify(key).await? else {
            return Ok(None);
        };
        let scopes = ScopeSet::new(record.scopes.iter().map(|s| s.as_str().to_owned()))
            .map_err(VerifierError::backend)?;
        Ok(Some(
            KeyRecord::new(record.key_id, record.service_account_id.to_string())
                .with_scopes(scopes)
                .with_description(record.description.clone())
                .with_created_at(record.created_at)
                .with_expires_at(record.expires_at),
        ))
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.0.invalidations()
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The command line: keys to preload, and whether to observe as users do.
struct Options {
    preload: usize,
    observed: bool,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut keys = std::env::var("KEYS").ok();
    let mut observed = std::env::var("METRICS").is_ok_and(|v| v == "1");
    while let Some(arg) = args.next() {
        if arg == "--keys" {
            keys = args.next();
        } else if let Some(n) = arg.strip_prefix("--keys=") {
            keys = Some(n.to_owned());
        } else if arg == "--metrics" {
            observed = true;
        } else {
            eprintln!(
                "usage: bench_server [--keys N] [--metrics]   (env: BIND, WORKERS, KEYS, METRICS)"
            );
            std::process::exit(2);
        }
    }
    let preload = keys.map_or(0, |n| {
        n.replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("--keys takes a number, got {n:?}");
            std::process::exit(2)
        })
    });
    Options { preload, observed }
}

fn main() -> std::io::Result<()> {
    let Options { preload, observed } = options();
    let workers = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(preload, workers, observed))
}

async fn serve(preload: usize, workers: usize, observed: bool) -> std::io::Result<()> {
    let metrics = if observed {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(std::io::Error::other)?;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,tower_api_key=debug",
            ))
            .with_writer(std::io::stderr)
            .init();
        Some(recorder)
    } else {
        None
    };
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let store = MemoryStore::new();
    let auth = Authenticator::verifier_builder(Decoded(store.clone()))
        .credits(store.clone())
        .max_keys((preload as u64 + 1).max(100_000))
        // Long enough that no preloaded key is re-fetched during a load test.
        .positive_ttl(Duration::from_secs(3600))
        .build();

    let demo = store
        .create(NewKey::new("sa-bench"))
        .await
        .map_err(std::io::Error::other)?;
    let demo_key = store
        .format()
        .parse(demo.key.expose_secret())
        .map_err(std::io::Error::other)?;
    auth.cache()
        .lookup(&demo_key)
        .await
        .map_err(std::io::Error::other)?;
    println!("API_KEY_BENCH={}", demo.key.expose_secret());

    if preload > 0 {
        preload_keys(&store, &auth, preload).await?;
    }

    let expected = http::HeaderValue::try_from(format!("Api-Key {}", demo.key.expose_secret()))
        .map_err(std::io::Error::other)?;
    // tower-http's custom check answers its refusal as a whole response.
    #[allow(clippy::result_large_err)]
    let static_token =
        ValidateRequestHeaderLayer::custom(move |request: &mut http::Request<axum::body::Body>| {
            if request.headers().get(http::header::AUTHORIZATION) == Some(&expected) {
                Ok(())
            } else {
                let mut refused = http::Response::new(axum::body::Body::empty());
                *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
                Err(refused)
            }
        });
    let mut app = Router::new()
        .route("/open", get(|| async { BODY }))
        .route(
            "/protected",
            get(|| async { BODY }).route_layer(auth.any_valid_key()),
        )
        .route("/static", get(|| async { BODY }).route_layer(static_token));
    if let Some(recorder) = metrics {
        app = app.route(
            "/metrics",
            get(move || std::future::ready(recorder.render())),
        );
    }
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!(
        "listening on http://{} ({workers} tokio worker{}{})",
        listener.local_addr()?,
        if workers == 1 { "" } else { "s" },
        if observed {
            "; Prometheus recorder and tracing at info"
        } else {
            ""
        }
    );
    axum::serve(listener, app).await
}

/// Creates `n` keys (1,000 service accounts, two of four scopes each) and
/// loads every one into the cache through the verifier.
async fn preload_keys(store: &MemoryStore, auth: &Authenticator, n: usize) -> std::io::Result<()> {
    let scope_names = [
        "yc.ai.translate.execute",
        "yc.ai.foundationModels.execute",
        "yc.ai.vision.execute",
        "yc.ai.speechkit.execute",
    ];
    let format = store.format();
    let key_len = format.key_len();
    let started = Instant::now();
    let before = rss();
    // The secrets, packed: kept until the cache is measured, so freeing them
    // does not hide cache memory.
    let mut secrets = Vec::with_capacity(n * key_len);
    for i in 0..n {
        let scopes = ScopeSet::new([scope_names[i % 4], scope_names[(i / 4) % 4]])
            .map_err(std::io::Error::other)?;
        let created = store
            .create(NewKey::new(format!("sa-{:06}", i % 1000)).with_scopes(scopes))
            .await
            .map_err(std::io::Error::other)?;
        secrets.extend_from_slice(created.key.expose_secret().as_bytes());
    }
    let after_store = rss();
    let created_in = started.elapsed();

    let started = Instant::now();
    {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        // Many lookups in flight: each miss is answered by a task on the
        // worker thread, and one at a time that hand-off dominates.
        stream::iter(secrets.chunks(key_len))
            .map(|secret| async move {
                let key = format.parse_bytes(secret).map_err(std::io::Error::other)?;
                auth.cache()
                    .lookup(&key)
                    .await
                    .map_err(std::io::Error::other)
            })
            .buffer_unordered(256)
            .try_for_each(|_| async { Ok(()) })
            .await?;
    }
    auth.cache().run_pending_tasks();
    let after_cache = rss();
    let cached_in = started.elapsed();
    drop(secrets);

    let per_key = |from: u64, to: u64| to.saturating_sub(from) as f64 / n as f64;
    println!(
        "preloaded {n} keys: store {:.1} MiB ({:.0} bytes/key, {created_in:.1?}), \
         cache {:.1} MiB ({:.0} bytes/key, {cached_in:.1?}); {} keys cached",
        mib(after_store.saturating_sub(before)),
        per_key(before, after_store),
        mib(after_cache.saturating_sub(after_store)),
        per_key(after_store, after_cache),
        auth.cache().cached_keys(),
    );
    println!(
        "resident memory after preloading: {:.1} MiB (VmRSS); cache: {:.0} bytes per cached key",
        mib(after_cache),
        per_key(after_store, after_cache),
    );
    Ok(())
}
