//! The whole middleware, called through `tower::ServiceExt`, against the
//! same bare service without auth and behind tower-http's static bearer
//! check (the cheapest auth there is). All three are in one group, so the
//! ratios come from one run:
//!
//! ```text
//! cargo bench --bench layer
//! ```
//!
//! Timed with the thread's CPU time unless `BENCH_CLOCK=wall` (see
//! `benches/support/mod.rs`). Each call gets a request built outside the timed part (method, URI and an
//! `Authorization` header; the bare service ignores it) and completes
//! synchronously: the inner service answers at once and a cache hit needs no
//! waiting, so the future is polled once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

mod support;
use support::harness::{cached_key, call_now, hello, request, runtime, BEARER};
use support::Clock;
use tower::ServiceBuilder;
use tower_api_key::Authenticator;
use tower_api_key::MemoryStore;

fn layer(c: &mut Criterion<Clock>) {
    let rt = runtime();
    let store = MemoryStore::new();
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    // Warm the cache: the benchmark measures hits.
    let key = cached_key(&rt, &store, &auth, "sa-bench");
    let api_key_header = format!("Api-Key {key}");
    let bearer_header = format!("Bearer {BEARER}");

    let mut bare = tower::service_fn(hello);
    #[allow(deprecated)] // "too basic for real applications": exactly why it is the floor here
    let mut bearer = ServiceBuilder::new()
        .layer(tower_http::validate_request::ValidateRequestHeaderLayer::bearer(BEARER))
        .service_fn(hello);
    let mut api_key = ServiceBuilder::new()
        .layer(auth.any_valid_key())
        .service_fn(hello);

    // Sanity: every variant admits its request.
    assert!(call_now(&mut bare, request(&bearer_header))
        .status()
        .is_success());
    assert!(call_now(&mut bearer, request(&bearer_header))
        .status()
        .is_success());
    assert!(call_now(&mut api_key, request(&api_key_header))
        .status()
        .is_success());

    let mut group = c.benchmark_group("layer");
    group.bench_function("no_auth", |b| {
        b.iter_batched(
            || request(&api_key_header),
            |req| black_box(call_now(&mut bare, req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("tower_http_bearer", |b| {
        b.iter_batched(
            || request(&bearer_header),
            |req| black_box(call_now(&mut bearer, req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("api_key_hit", |b| {
        b.iter_batched(
            || request(&api_key_header),
            |req| black_box(call_now(&mut api_key, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = layer
}
criterion_main!(benches);
