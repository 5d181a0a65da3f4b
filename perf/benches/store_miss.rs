//! A cache miss answered by a store: the memory store against the SQLite
//! store, in one group so the ratio comes from one run.
//!
//! ```text
//! cargo bench -p tower-api-key-perf --bench store_miss --features sqlite
//! ```
//!
//! Each iteration is `CachedVerifier::lookup` of a valid key that is not
//! cached (a fresh cache for every pass over a pool of 2,000 keys): the
//! spawned verifier task, the store's lookup and hash comparison, the cache
//! insert. Timed with **wall time**, whatever `BENCH_CLOCK` says: the
//! SQLite store runs its query on tokio's blocking pool, another thread,
//! which the benchmark thread's CPU time would not count. The SQLite file
//! is on the temp directory's file system, warm in the OS page cache.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

mod support;
use support::harness::runtime;
use tower_api_key::cache::{CacheConfig, CachedVerifier};
use tower_api_key::store::NewKey;
use tower_api_key::{KeyStore, MemoryStore, PresentedKey};
use tower_api_key_sqlite::SqliteKeyStore;

const POOL: usize = 2_000;

/// `POOL` new keys in `store` over 100 accounts, parsed.
fn stored_keys(rt: &tokio::runtime::Runtime, store: &impl KeyStore) -> Vec<PresentedKey> {
    rt.block_on(async {
        let format = store.key_format().expect("a store has a key format");
        let mut keys = Vec::with_capacity(POOL);
        for i in 0..POOL {
            let created = store
                .create(NewKey::new(format!("sa-{}", i % 100)))
                .await
                .expect("created");
            keys.push(
                format
                    .parse(created.key.expose_secret())
                    .expect("a valid key"),
            );
        }
        keys
    })
}

/// Times `iters` misses of `keys` through caches over `store`.
fn misses<S: KeyStore + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    keys: &[PresentedKey],
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        // A fresh cache for every pass over the pool, so every lookup misses.
        let cache = CachedVerifier::new(store.clone(), CacheConfig::default());
        let batch = left.min(keys.len());
        let started = Instant::now();
        rt.block_on(async {
            for key in &keys[..batch] {
                black_box(cache.lookup(key).await.expect("accepted"));
            }
        });
        total += started.elapsed();
        left -= batch;
    }
    total
}

fn store_miss(c: &mut Criterion) {
    let rt = runtime();
    let memory = MemoryStore::new();
    let memory_keys = stored_keys(&rt, &memory);

    let dir = std::env::temp_dir().join(format!("tak-bench-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp directory");
    let sqlite = rt.block_on(async {
        let store = SqliteKeyStore::open(dir.join("keys.db"))
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        store
    });
    let sqlite_keys = stored_keys(&rt, &sqlite);

    let mut group = c.benchmark_group("store_miss");
    group.bench_function("memory_store", |b| {
        b.iter_custom(|iters| misses(&rt, &memory, &memory_keys, iters))
    });
    group.bench_function("sqlite_store", |b| {
        b.iter_custom(|iters| misses(&rt, &sqlite, &sqlite_keys, iters))
    });
    group.finish();

    rt.block_on(sqlite.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, store_miss);
criterion_main!(benches);
