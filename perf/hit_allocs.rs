//! Counts heap allocations on the cache hit path (performance target 1 in
//! docs/performance.md: a hit must not allocate).
//!
//! ```text
//! cargo run --release -p tower-api-key-perf --bin hit_allocs
//! ```
//!
//! A counting global allocator (in this example only, never in the library)
//! counts what each step allocates, averaged over many calls:
//! parsing and hashing a key, `CachedVerifier::lookup_cached` on a hit, the
//! scope check, and one whole request through the layer compared with the
//! same request through the bare service.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use http::{header::AUTHORIZATION, Request};
use tower::ServiceBuilder;
use tower_api_key::store::NewKey;
use tower_api_key::Authenticator;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopePolicy;

mod support;
use support::{cached_key, call_now, hello, runtime};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static INSERT_ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLS: u64 = 100_000;

/// Allocations and bytes per call of `f`, over `CALLS` calls.
fn per_call(mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm up: first-use allocations (thread locals, lazy statics) do not count
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..CALLS {
        f();
    }
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / CALLS as f64,
        (b1 - b0) as f64 / CALLS as f64,
    )
}

fn main() {
    let rt = runtime();
    let store = MemoryStore::new();
    let auth = Authenticator::new(store.clone());
    let secret = cached_key(&rt, &store, &auth, "sa-1");
    let format = store.format();
    let presented = format.parse(&secret).expect("a valid key");
    let policy = ScopePolicy::any_valid_key();
    let header = format!("Api-Key {secret}");
    // As axum hands requests on: extensions already hold its own entries
    // (OriginalUri, MatchedPath).
    let mut prefilled = http::Extensions::new();
    prefilled.insert(String::from("an entry that was there before"));
    let request = || {
        Request::get("/protected")
            .header(AUTHORIZATION, &header)
            .body(())
            .expect("a valid request")
    };

    let mut rows: Vec<(&str, (f64, f64))> = Vec::new();
    rows.push((
        "parse + SHA-256 (KeyFormat::parse)",
        per_call(|| {
            std::hint::black_box(format.parse(&secret).is_ok());
        }),
    ));
    rows.push((
        "CachedVerifier::lookup_cached, hit",
        per_call(|| {
            std::hint::black_box(auth.cache().lookup_cached(&presented));
        }),
    ));
    rows.push((
        "lookup_cached + scope check",
        per_call(|| {
            let caller = auth
                .cache()
                .lookup_cached(&presented)
                .expect("cached")
                .expect("admitted");
            std::hint::black_box(policy.check(caller.scopes()).is_ok());
        }),
    ));
    rows.push((
        "Caller inserted into empty http::Extensions",
        per_call(|| {
            let caller = auth
                .cache()
                .lookup_cached(&presented)
                .expect("cached")
                .expect("admitted");
            let mut extensions = http::Extensions::new();
            extensions.insert(caller);
            std::hint::black_box(extensions);
        }),
    ));
    rows.push((
        "Caller inserted into http::Extensions already holding one entry",
        per_call(|| {
            let caller = auth
                .cache()
                .lookup_cached(&presented)
                .expect("cached")
                .expect("admitted");
            let mut extensions = std::hint::black_box(prefilled.clone());
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            extensions.insert(caller);
            INSERT_ALLOCS.fetch_add(
                ALLOCATIONS.load(Ordering::Relaxed) - before,
                Ordering::Relaxed,
            );
            std::hint::black_box(extensions);
        }),
    ));
    let inserts = INSERT_ALLOCS.load(Ordering::Relaxed) as f64 / (CALLS + 1) as f64;
    let requests: Vec<_> = (0..CALLS + 1).map(|_| request()).collect();
    let mut requests = requests.into_iter();
    let mut bare = tower::service_fn(hello);
    rows.push((
        "bare service call (request built beforehand)",
        per_call(|| {
            let req = requests.next().expect("enough requests");
            std::hint::black_box(call_now(&mut bare, req));
        }),
    ));
    let requests: Vec<_> = (0..CALLS + 1).map(|_| request()).collect();
    let mut requests = requests.into_iter();
    let mut layered = ServiceBuilder::new()
        .layer(auth.any_valid_key())
        .service_fn(hello);
    rows.push((
        "ApiKeyLayer call, cache hit (same request)",
        per_call(|| {
            let req = requests.next().expect("enough requests");
            let response = call_now(&mut layered, req);
            assert!(response.status().is_success());
            std::hint::black_box(response);
        }),
    ));

    // The layer with the peer address known, for a key without and with
    // ten allowed networks (the client is in the fifth): the allowlist
    // check must add nothing.
    let networks = support::ten_networks();
    let allowlisted = rt.block_on(async {
        let new = NewKey::new("sa-2").with_allowed_networks(Some(networks));
        let created = store.create(new).await.expect("created");
        let secret = created.key.expose_secret().to_owned();
        let presented = format.parse(&secret).expect("a valid key");
        auth.cache().lookup(&presented).await.expect("accepted");
        secret
    });
    for (what, secret) in [
        (
            "ApiKeyLayer call with ConnectInfo, key without allowed networks",
            &secret,
        ),
        (
            "ApiKeyLayer call with ConnectInfo, key with 10 allowed networks",
            &allowlisted,
        ),
    ] {
        let header = format!("Api-Key {secret}");
        let requests: Vec<_> = (0..CALLS + 1)
            .map(|_| {
                let mut request = Request::get("/protected")
                    .header(AUTHORIZATION, &header)
                    .body(())
                    .expect("a valid request");
                request
                    .extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 5], 40_000))));
                request
            })
            .collect();
        let mut requests = requests.into_iter();
        rows.push((
            what,
            per_call(|| {
                let req = requests.next().expect("enough requests");
                let response = call_now(&mut layered, req);
                assert!(response.status().is_success(), "{what}");
                std::hint::black_box(response);
            }),
        ));
    }

    println!("allocations per call (mean of {CALLS} calls, after one warm-up call)");
    for (what, (allocs, bytes)) in &rows {
        println!("{allocs:>8.3} allocs {bytes:>8.1} bytes  {what}");
    }
    println!(
        "  of which the insert itself into non-empty extensions: {inserts:.2} allocs (the rest is cloning them)"
    );
    let bare = rows[5].1;
    let layered = rows[6].1;
    println!(
        "the layer adds {:.2} allocations ({:.1} bytes) per request",
        layered.0 - bare.0,
        layered.1 - bare.1
    );
    let (plain, allowlisted) = (rows[7].1, rows[8].1);
    println!(
        "ten allowed networks add {:.3} allocations ({:.1} bytes) per request",
        allowlisted.0 - plain.0,
        allowlisted.1 - plain.1
    );
}
