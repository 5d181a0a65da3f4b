//! Memory per cached key (performance target 3 in docs/performance.md), each
//! case in its own process.
//!
//! ```text
//! cargo run --release -p tower-api-key-perf --bin cache_memory             # 1,000,000 keys, every case
//! cargo run --release -p tower-api-key-perf --bin cache_memory -- 100000   # another count
//! ```
//!
//! Cases:
//! - `moka-ttl`, `moka-expiry`: a bare `moka::sync::Cache<[u8; 16], ()>`
//!   with a fixed time-to-live, and with a per-entry expiry policy (what
//!   the crate uses, since an entry lives until the earlier of the TTL and
//!   the key's own expiry): moka's own per-entry floor.
//! - `crate`: a `CachedVerifier` filled through its miss path by a verifier
//!   that returns freshly decoded records, as a database would: each record
//!   with its own copy of the service account id (1,000 accounts) and of two
//!   scope names (out of four).
//! - `crate-networks`, `crate-metadata`: the same, each record also with its
//!   own 10-entry allowlist (IPv4 and IPv6), or its own 200-byte metadata
//!   object: what each adds per key.
//!
//! Each case prints the growth of live heap bytes (a counting allocator, in
//! this example only) and of resident memory (`VmRSS`), divided by the key
//! count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tower_api_key::cache::{CacheConfig, CachedVerifier};
use tower_api_key::KeyRecord;
use tower_api_key::ScopeSet;
use tower_api_key::VerifierError;
use tower_api_key::{KeyFormat, PresentedKey};
use tower_api_key::{Metadata, Networks};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CASES: [&str; 5] = [
    "moka-ttl",
    "moka-expiry",
    "crate",
    "crate-networks",
    "crate-metadata",
];
const SCOPES: [&str; 4] = [
    "yc.ai.translate.execute",
    "yc.ai.foundationModels.execute",
    "yc.ai.vision.execute",
    "yc.ai.speechkit.execute",
];

fn rss() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// 16 bytes, the size of the crate's cache key.
fn digest(i: usize) -> [u8; 16] {
    Sha256::digest(i.to_le_bytes())[..16]
        .try_into()
        .expect("16 of 32 bytes")
}

struct UntilTtl;

impl moka::Expiry<[u8; 16], ()> for UntilTtl {
    fn expire_after_create(
        &self,
        _key: &[u8; 16],
        _value: &(),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn run_case(case: &str, n: usize) {
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss());
    let started = Instant::now();
    // Kept alive until measured.
    let keep: Box<dyn std::any::Any> = match case {
        "moka-ttl" => {
            let cache: moka::sync::Cache<[u8; 16], ()> = moka::sync::Cache::builder()
                .max_capacity(n as u64 + 1)
                .time_to_live(Duration::from_secs(3600))
                .build();
            for i in 0..n {
                cache.insert(digest(i), ());
            }
            cache.run_pending_tasks();
            assert_eq!(cache.entry_count(), n as u64);
            Box::new(cache)
        }
        "moka-expiry" => {
            let cache: moka::sync::Cache<[u8; 16], ()> = moka::sync::Cache::builder()
                .max_capacity(n as u64 + 1)
                .expire_after(UntilTtl)
                .build();
            for i in 0..n {
                cache.insert(digest(i), ());
            }
            cache.run_pending_tasks();
            assert_eq!(cache.entry_count(), n as u64);
            Box::new(cache)
        }
        "crate" | "crate-networks" | "crate-metadata" => {
            let (with_networks, with_metadata) =
                (case == "crate-networks", case == "crate-metadata");
            let verifier = move |key: PresentedKey| async move {
                // A fresh record, as decoded from a database row.
                let n = u32::from_le_bytes(key.digest().as_bytes()[..4].try_into().unwrap());
                let scopes = ScopeSet::new([
                    SCOPES[n as usize % 4].to_owned(),
                    SCOPES[(n as usize / 4) % 4].to_owned(),
                ])
                .map_err(VerifierError::backend)?;
                let mut record =
                    KeyRecord::new(key.id(), format!("sa-{:06}", n % 1000)).with_scopes(scopes);
                if with_networks {
                    let nets: Vec<String> = (0..10u32)
                        .map(|i| match i % 2 {
                            0 => format!("10.{}.{i}.0/24", n % 256),
                            _ => format!("2001:db8:{:x}:{i:x}::/64", n % 65536),
                        })
                        .collect();
                    record.allowed_networks =
                        Some(Networks::parse(&nets).map_err(VerifierError::backend)?);
                }
                if with_metadata {
                    // 200 bytes: {"tenant":"t-NNNNNN","pad":"xx..."}
                    let head = format!(r#"{{"tenant":"t-{:06}","pad":""#, n % 1_000_000);
                    let json = format!("{head}{}\"}}", "x".repeat(200 - head.len() - 2));
                    debug_assert_eq!(json.len(), 200);
                    record.metadata = Some(Metadata::new(&json).map_err(VerifierError::backend)?);
                }
                Ok::<_, VerifierError>(Some(record))
            };
            let cache = CachedVerifier::new(
                verifier,
                CacheConfig::builder()
                    .max_keys(n as u64 + 1)
                    .positive_ttl(Duration::from_secs(3600))
                    .build(),
            );
            let format = KeyFormat::default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async {
                for _ in 0..n {
                    let key = format.generate().expect("random source");
                    let key = format.parse(key.expose_secret()).expect("a valid key");
                    cache.lookup(&key).await.expect("accepted");
                }
            });
            cache.run_pending_tasks();
            assert_eq!(cache.cached_keys(), n as u64);
            Box::new((cache, rt))
        }
        other => panic!("unknown case {other}"),
    };
    let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss());
    println!(
        "{case:<12} {n} keys: {:>6.0} heap bytes/key, {:>6.0} RSS bytes/key, filled in {:.1?}",
        (heap1 - heap0) as f64 / n as f64,
        (rss1 - rss0) as f64 / n as f64,
        started.elapsed(),
    );
    drop(keep);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.replace('_', "").parse().expect("a key count"))
        .unwrap_or(1_000_000);
    match args.next() {
        Some(case) => run_case(&case, n),
        None => {
            let me = std::env::current_exe().expect("own path");
            for case in CASES {
                let status = Command::new(&me)
                    .arg(n.to_string())
                    .arg(case)
                    .status()
                    .expect("run a case");
                assert!(status.success(), "case {case} failed");
            }
        }
    }
}
