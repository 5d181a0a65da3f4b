//! The cache hit path and its parts, in-process.
//!
//! ```text
//! cargo bench -p tower-api-key-perf --bench hit_path
//! BENCH_KEYS=10000,1000000 cargo bench -p tower-api-key-perf --bench hit_path -- lookup_cached
//! ```
//!
//! Timed with the thread's CPU time unless `BENCH_CLOCK=wall` (see
//! `benches/support/mod.rs`).
//!
//! - `parse/*`: the offline checks and the SHA-256 digest of one key
//!   (`KeyFormat::parse_bytes`), and SHA-256 of the key alone for scale.
//! - `lookup_cached/{10000,1000000}`: `CachedVerifier::lookup_cached` hits on
//!   a cache holding that many keys, cycling through a hot working set of
//!   1,024 keys spread over the whole cache; `lookup_cached/one_key/*` hits
//!   one key over and over (everything it touches stays in the CPU caches).
//! - `lookup_cached/moka_sync_get/*`: the floor, moka's own `get` on a
//!   bare cache of the same size and expiry policy, same hot keys (and
//!   `moka_sync_get/one_key/*` the same key over and over);
//!   `moka_sync_get_fixed_ttl/*` the same with a fixed time to live instead
//!   of a per-entry expiry policy.
//! - `hit_path/*`: what one authenticated request costs the crate on a hit,
//!   as the middleware does it (`CachedVerifier::lookup_cached_raw`): the
//!   key's shape and cache key (alphabet and checksum wait for a miss),
//!   cache hit (expiry and invalidation check), scope check,
//!   identity inserted into fresh request extensions; over the hot set, and
//!   for one key (`hit_path/one_key/*`).
//! - `miss/memory_store`: `CachedVerifier::lookup` of a key that is not
//!   cached, answered by a `MemoryStore` (a spawned verifier task, the store's
//!   hash comparison, the cache insert).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

mod support;
use sha2::{Digest, Sha256};
use support::harness::{admit_every_key, fill, runtime, stored_keys, HOT};
use support::Clock;
use tower_api_key::cache::{CacheConfig, CachedVerifier};
use tower_api_key::MemoryStore;
use tower_api_key::ScopePolicy;
use tower_api_key::{KeyFormat, PresentedKey};

/// Cache sizes to measure, from `BENCH_KEYS` (comma-separated), by default
/// 10,000 and 1,000,000.
fn key_counts() -> Vec<usize> {
    std::env::var("BENCH_KEYS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().replace('_', "").parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![10_000, 1_000_000])
}

/// A cache filled with `n` valid keys through its miss path; returns the hot
/// working set (as presented keys) and the raw text of the first hot key.
fn filled_cache(n: usize) -> (CachedVerifier, Vec<PresentedKey>, String) {
    let cache = CachedVerifier::new(
        admit_every_key,
        CacheConfig::builder()
            .max_keys(2 * n as u64)
            .positive_ttl(Duration::from_secs(3600))
            .build(),
    );
    let hot = fill(&runtime(), &cache, n);
    let first = hot[0].expose_secret().to_owned();
    (cache, hot, first)
}

struct Ttl;

impl moka::Expiry<[u8; 16], Arc<u64>> for Ttl {
    fn expire_after_create(
        &self,
        _key: &[u8; 16],
        _value: &Arc<u64>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// A bare moka cache holding `n` entries, `hot` among them, with a
/// per-entry expiry policy (as the crate's) or a fixed time to live.
fn bare_moka(
    n: usize,
    hot: &[PresentedKey],
    per_entry: bool,
) -> moka::sync::Cache<[u8; 16], Arc<u64>> {
    let builder = moka::sync::Cache::builder().max_capacity(2 * n as u64);
    let cache = if per_entry {
        builder.expire_after(Ttl).build()
    } else {
        builder.time_to_live(Duration::from_secs(3600)).build()
    };
    // The hot keys at the same places in the insertion order as in
    // `filled_cache`, so their entries are as spread out in memory.
    let stride = (n / HOT).max(1);
    let mut hot = hot.iter();
    for i in 0..n {
        let next_hot = if i % stride == 0 { hot.next() } else { None };
        let digest = match next_hot {
            Some(key) => *key.digest().as_bytes(),
            None => Sha256::digest(i.to_le_bytes())[..16]
                .try_into()
                .expect("16 of 32 bytes"),
        };
        cache.insert(digest, Arc::new(i as u64));
    }
    cache.run_pending_tasks();
    cache
}

fn parse(c: &mut Criterion<Clock>) {
    let format = KeyFormat::default();
    let key = format.generate().expect("random source");
    let raw = key.expose_secret().as_bytes().to_vec();
    let mut group = c.benchmark_group("parse");
    group.bench_function("sha256_only", |b| {
        b.iter(|| Sha256::digest(black_box(&raw[..])))
    });
    group.bench_function("parse_and_hash", |b| {
        b.iter(|| format.parse_bytes(black_box(&raw[..])).is_ok())
    });
    group.finish();
}

fn lookup_cached(c: &mut Criterion<Clock>) {
    let format = KeyFormat::default();
    let policy = ScopePolicy::require_any(["yc.ai.translate.execute"]).expect("valid scope");
    for n in key_counts() {
        let started = Instant::now();
        let (cache, hot, _) = filled_cache(n);
        eprintln!(
            "filled a cache with {n} keys in {:.1?} ({} counted)",
            started.elapsed(),
            cache.cached_keys()
        );
        // The raw text of every hot key, to parse on each call.
        let raw: Vec<Vec<u8>> = hot
            .iter()
            .map(|k| k.expose_secret().as_bytes().to_vec())
            .collect();

        // The floor: moka's own `get` on a cache of the same size and
        // expiry policy, with the same hot keys.
        let moka = bare_moka(n, &hot, true);
        let moka_ttl = bare_moka(n, &hot, false);

        let mut group = c.benchmark_group("lookup_cached");
        let mut i = 0;
        group.bench_function(BenchmarkId::new("moka_sync_get", n), |b| {
            b.iter(|| {
                i = (i + 1) % hot.len();
                black_box(moka.get(hot[i].digest().as_bytes()))
            })
        });
        group.bench_function(BenchmarkId::new("moka_sync_get/one_key", n), |b| {
            b.iter(|| black_box(moka.get(hot[0].digest().as_bytes())))
        });
        drop(moka);
        let mut i = 0;
        group.bench_function(BenchmarkId::new("moka_sync_get_fixed_ttl", n), |b| {
            b.iter(|| {
                i = (i + 1) % hot.len();
                black_box(moka_ttl.get(hot[i].digest().as_bytes()))
            })
        });
        drop(moka_ttl);
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % hot.len();
                black_box(cache.lookup_cached(&hot[i]))
            })
        });
        group.bench_function(BenchmarkId::new("one_key", n), |b| {
            b.iter(|| black_box(cache.lookup_cached(&hot[0])))
        });
        group.finish();

        let mut group = c.benchmark_group("hit_path");
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % raw.len();
                let caller = cache
                    .lookup_cached_raw(&format, black_box(&raw[i]))
                    .expect("cached")
                    .expect("admitted");
                policy.check(caller.scopes()).expect("in scope");
                let mut extensions = http::Extensions::new();
                extensions.insert(caller);
                extensions
            })
        });
        group.bench_function(BenchmarkId::new("one_key", n), |b| {
            b.iter(|| {
                let caller = cache
                    .lookup_cached_raw(&format, black_box(&raw[0]))
                    .expect("cached")
                    .expect("admitted");
                policy.check(caller.scopes()).expect("in scope");
                let mut extensions = http::Extensions::new();
                extensions.insert(caller);
                extensions
            })
        });
        group.finish();
        drop(cache);
    }
}

fn miss(c: &mut Criterion<Clock>) {
    const POOL: usize = 10_000;
    let rt = runtime();
    let store = MemoryStore::new();
    let keys = stored_keys(&rt, &store, POOL);
    let clock = Clock::from_env();
    let mut group = c.benchmark_group("miss");
    group.bench_function("memory_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                // A fresh cache for every pass over the pool, so every lookup misses.
                let cache = CachedVerifier::new(store.clone(), CacheConfig::default());
                let batch = left.min(POOL);
                let started = clock.now();
                rt.block_on(async {
                    for key in &keys[..batch] {
                        black_box(cache.lookup(key).await.expect("accepted"));
                    }
                });
                total += clock.now().saturating_sub(started);
                left -= batch;
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = parse, lookup_cached, miss
}
criterion_main!(benches);
