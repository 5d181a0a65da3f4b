//! Soak test: an in-process server on 127.0.0.1 (axum, the layer, a
//! `MemoryStore`, a short positive TTL, failed-attempt limiting on), driven by
//! a bounded number of client tasks for a bounded time with a mix of valid,
//! invalid (garbage, bad checksum, unknown), expiring and revoked keys.
//!
//! ```sh
//! cargo run --release -p tower-api-key-perf --bin soak   # 20 s
//! SOAK_SECONDS=60 SOAK_CLIENTS=32 cargo run --release -p tower-api-key-perf --bin soak
//! ```
//!
//! It reports requests, status counts per kind of key, p50/p99/max latency,
//! RSS after each phase and peak RSS, and exits non-zero if
//! - any valid request is refused (a valid key, an expiring key whose request
//!   ended before its expiry, a revoked key whose request ended before the
//!   revoke began);
//! - any invalid request is accepted (garbage, bad checksum, unknown, an
//!   expiring key whose request started at or after its expiry, a revoked key
//!   whose request started after the revoke returned);
//! - RSS keeps growing after warm-up (see [`memory_verdict`]).
//!
//! All traffic goes to 127.0.0.1. Every loop is bounded in time
//! (`SOAK_SECONDS`, default 20, at most 600) and in count (at most
//! `MAX_REQUESTS_PER_CLIENT` per client task).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_api_key::auth::{FailedAttemptLimit, ForwardedHeader};
use tower_api_key::store::NewKey;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::{Authenticator, Caller, KeyFormat};

const MAX_SECONDS: u64 = 600;
const MAX_CLIENTS: usize = 64;
const MAX_REQUESTS_PER_CLIENT: u64 = 5_000_000;
const PHASES: usize = 5;
const VALID_KEYS: usize = 50;
const EXPIRING_KEYS: usize = 10;
const REVOKED_KEYS: usize = 10;
/// The client address a trusted proxy sets (the server trusts its
/// loopback peer, this process, to say who the client is).
const CLIENT_HEADER: &str = "x-real-ip";

fn env_or(name: &str, default: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// Resident and peak resident memory, in KiB, from /proc/self/status.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Latencies in fixed buckets (constant memory, so measuring does not grow
/// RSS): 1 µs up to 1 ms, 10 µs up to 100 ms, 1 ms up to 10 s, then one
/// overflow bucket.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

impl Histogram {
    const LEN: usize = 1000 + 9_900 + 9_900 + 1;

    fn new() -> Self {
        let buckets: Vec<AtomicU64> = (0..Self::LEN).map(|_| AtomicU64::new(0)).collect();
        Self {
            buckets,
            max_us: AtomicU64::new(0),
        }
    }

    fn index(us: u64) -> usize {
        (match us {
            0..1_000 => us,
            1_000..100_000 => 1_000 + (us - 1_000) / 10,
            100_000..10_000_000 => 10_900 + (us - 100_000) / 1_000,
            _ => 20_800,
        }) as usize
    }

    fn lower_bound_us(index: usize) -> u64 {
        let i = index as u64;
        match i {
            0..1_000 => i,
            1_000..10_900 => 1_000 + (i - 1_000) * 10,
            _ => 100_000 + (i - 10_900) * 1_000,
        }
    }

    fn record(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::lower_bound_us(i);
            }
        }
        0
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Valid,
    Garbage,
    BadChecksum,
    Unknown,
    Expiring,
    Revoked,
}

const KINDS: [Kind; 6] = [
    Kind::Valid,
    Kind::Garbage,
    Kind::BadChecksum,
    Kind::Unknown,
    Kind::Expiring,
    Kind::Revoked,
];

/// Status counts per kind: 200, 401, 429, other.
#[derive(Default)]
struct Counts {
    by_kind: [[AtomicU64; 4]; 6],
    /// Accepted but must have been refused, refused but must have been accepted.
    wrongly_accepted: AtomicU64,
    wrongly_refused: AtomicU64,
    /// Requests whose outcome could go either way (they straddled an expiry or a revoke).
    undecided: AtomicU64,
    transport_errors: AtomicU64,
}

impl Counts {
    fn add(&self, kind: Kind, status: StatusCode) {
        let slot = match status.as_u16() {
            200 => 0,
            401 => 1,
            429 => 2,
            _ => 3,
        };
        self.by_kind[kind as usize][slot].fetch_add(1, Ordering::Relaxed);
    }
}

struct Timed {
    key: String,
    client: IpAddr,
    expires_at: Option<SystemTime>,
    /// Set just before the revoke is called, and once it has returned.
    revoke_started: AtomicBool,
    revoked: AtomicBool,
}

struct Plan {
    valid: Vec<(String, IpAddr)>,
    expiring: Vec<Timed>,
    revoked: Vec<Timed>,
    format: KeyFormat,
}

/// A small PRNG per client task (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    // 198.18.0.0/15: an identifier in a header, never an address traffic goes to.
    IpAddr::V4(Ipv4Addr::new(198, 18 + a, b, c))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = env_or("SOAK_SECONDS", 20, MAX_SECONDS);
    let clients = env_or("SOAK_CLIENTS", 16, MAX_CLIENTS as u64) as usize;
    let duration = Duration::from_secs(seconds);

    // The server.
    let store = MemoryStore::new();
    let limit = FailedAttemptLimit::builder(30, Duration::from_secs(60))
        .max_clients(2_000)
        .build();
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(2))
        .negative_ttl(Duration::from_secs(1))
        .failed_attempt_limit(limit.clone())
        .trusted_proxies(["127.0.0.1/32".parse().unwrap()])
        .forwarded_header(ForwardedHeader::XRealIp)
        .build();
    let app = Router::new().route(
        "/whoami",
        get(|caller: Caller| async move { caller.key_id().to_string() })
            .route_layer(auth.any_valid_key()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });

    // The keys.
    let start = Instant::now();
    let start_wall = SystemTime::now();
    let mut valid = Vec::new();
    for i in 0..VALID_KEYS {
        let created = store.create(NewKey::new(format!("sa-{i}"))).await.unwrap();
        valid.push((created.key.expose_secret().to_owned(), ip(0, 0, i as u8)));
    }
    let mut expiring = Vec::new();
    for i in 0..EXPIRING_KEYS {
        // Spread over 20%..65% of the run.
        let at = start_wall + duration.mul_f64(0.2 + 0.05 * i as f64);
        let created = store
            .create(NewKey::new("sa-expiring").with_expires_at(at))
            .await
            .unwrap();
        expiring.push(Timed {
            key: created.key.expose_secret().to_owned(),
            client: ip(0, 1, i as u8),
            expires_at: Some(at),
            revoke_started: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        });
    }
    let mut revoked = Vec::new();
    let mut revoked_ids = Vec::new();
    for i in 0..REVOKED_KEYS {
        let created = store.create(NewKey::new("sa-revoked")).await.unwrap();
        revoked_ids.push(created.record.key_id);
        revoked.push(Timed {
            key: created.key.expose_secret().to_owned(),
            client: ip(0, 2, i as u8),
            expires_at: None,
            revoke_started: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        });
    }
    let plan = Arc::new(Plan {
        valid,
        expiring,
        revoked,
        format: store.format(),
    });
    let counts = Arc::new(Counts::default());
    let histogram = Arc::new(Histogram::new());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let first_failures: Arc<Mutex<Vec<String>>> = Arc::default();

    println!(
        "soak: {seconds} s, {clients} client tasks, http://{addr}/whoami; keys: {VALID_KEYS} valid, \
         {EXPIRING_KEYS} expiring, {REVOKED_KEYS} revoked at half time, plus garbage, bad-checksum \
         and fresh unknown keys; positive TTL 2 s, negative TTL 1 s, limit 30 failures/min/client"
    );

    // The clients.
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (plan, counts, histogram, client, first_failures) = (
            plan.clone(),
            counts.clone(),
            histogram.clone(),
            client.clone(),
            first_failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
            let mut sent = 0;
            while sent < MAX_REQUESTS_PER_CLIENT && Instant::now() < deadline {
                sent += 1;
                let roll = rng.next() % 100;
                let kind = match roll {
                    0..50 => Kind::Valid,
                    50..57 => Kind::Garbage,
                    57..64 => Kind::BadChecksum,
                    64..70 => Kind::Unknown,
                    70..85 => Kind::Expiring,
                    _ => Kind::Revoked,
                };
                let pick = rng.next() as usize;
                let (key, client_ip, timed): (String, IpAddr, Option<&Timed>) = match kind {
                    Kind::Valid => {
                        let (k, c) = &plan.valid[pick % plan.valid.len()];
                        (k.clone(), *c, None)
                    }
                    Kind::Garbage => (
                        format!("tak_{:x}", rng.next()),
                        ip(1, (pick >> 8) as u8, pick as u8),
                        None,
                    ),
                    Kind::BadChecksum => {
                        let (k, _) = &plan.valid[pick % plan.valid.len()];
                        let mut bytes = k.clone().into_bytes();
                        let last = bytes.len() - 1;
                        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
                        (
                            String::from_utf8(bytes).unwrap(),
                            ip(1, (pick >> 8) as u8, pick as u8),
                            None,
                        )
                    }
                    Kind::Unknown => (
                        plan.format.generate().unwrap().expose_secret().to_owned(),
                        ip(1, (pick >> 8) as u8, pick as u8),
                        None,
                    ),
                    Kind::Expiring => {
                        let timed = &plan.expiring[pick % plan.expiring.len()];
                        (timed.key.clone(), timed.client, Some(timed))
                    }
                    Kind::Revoked => {
                        let timed = &plan.revoked[pick % plan.revoked.len()];
                        (timed.key.clone(), timed.client, Some(timed))
                    }
                };
                // What is known when the request starts ...
                let started_wall = SystemTime::now();
                let revoked_before = timed.is_some_and(|t| t.revoked.load(Ordering::SeqCst));
                let request = Request::get(format!("http://{addr}/whoami"))
                    .header(AUTHORIZATION, format!("Api-Key {key}"))
                    .header(CLIENT_HEADER, client_ip.to_string())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let started = Instant::now();
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.request(request)).await;
                let status = match response {
                    Ok(Ok(response)) => {
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        status
                    }
                    _ => {
                        counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                histogram.record(started.elapsed());
                // ... and when it ends.
                let ended_wall = SystemTime::now();
                let revoke_began_after =
                    timed.is_some_and(|t| !t.revoke_started.load(Ordering::SeqCst));
                counts.add(kind, status);

                let must_accept = match kind {
                    Kind::Valid => Some(true),
                    Kind::Garbage | Kind::BadChecksum | Kind::Unknown => Some(false),
                    Kind::Expiring => {
                        let at = timed.and_then(|t| t.expires_at).unwrap();
                        if started_wall >= at {
                            Some(false)
                        } else if ended_wall < at {
                            Some(true)
                        } else {
                            None
                        }
                    }
                    Kind::Revoked => {
                        if revoked_before {
                            Some(false)
                        } else if revoke_began_after {
                            Some(true)
                        } else {
                            None
                        }
                    }
                };
                let accepted = status == StatusCode::OK;
                let refused_properly = matches!(
                    status,
                    StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
                );
                let wrong = match must_accept {
                    Some(true) if !accepted => {
                        counts.wrongly_refused.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Some(false) if !refused_properly => {
                        counts.wrongly_accepted.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    None => {
                        counts.undecided.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    _ => false,
                };
                if wrong {
                    let mut failures = first_failures.lock().unwrap();
                    if failures.len() < 10 {
                        failures.push(format!("{kind:?} got {status}"));
                    }
                }
            }
        }));
    }

    // The revoker, at half time.
    let revoker = {
        let (plan, store) = (plan.clone(), store.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until((start + duration / 2).into()).await;
            for (timed, id) in plan.revoked.iter().zip(revoked_ids) {
                timed.revoke_started.store(true, Ordering::SeqCst);
                assert!(store.revoke(id, None).await.unwrap());
                timed.revoked.store(true, Ordering::SeqCst);
            }
        })
    };

    // Memory at the end of each phase; the first phase is the warm-up.
    let mut rss = Vec::new();
    for phase in 1..=PHASES {
        tokio::time::sleep_until((start + duration.mul_f64(phase as f64 / PHASES as f64)).into())
            .await;
        let (now, _) = memory_kib();
        rss.push(now);
    }
    for task in tasks {
        task.await.unwrap();
    }
    revoker.await.unwrap();
    let elapsed = start.elapsed();
    server.abort();

    // The report.
    let total: u64 = counts
        .by_kind
        .iter()
        .flatten()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    println!(
        "requests: {total} in {:.1} s ({:.0}/s), transport errors: {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        counts.transport_errors.load(Ordering::Relaxed)
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>7}",
        "kind", "200", "401", "429", "other"
    );
    for kind in KINDS {
        let c = &counts.by_kind[kind as usize];
        let n = |i: usize| c[i].load(Ordering::Relaxed);
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>7}",
            format!("{kind:?}"),
            n(0),
            n(1),
            n(2),
            n(3)
        );
    }
    println!(
        "latency: p50 {} us, p99 {} us, max {} us",
        histogram.quantile_us(0.50),
        histogram.quantile_us(0.99),
        histogram.max_us.load(Ordering::Relaxed)
    );
    let (_, peak) = memory_kib();
    println!(
        "rss by phase (KiB, first = warm-up): {rss:?}; peak (VmHWM) {peak} KiB; limiter tracks {} clients (max 2000); cache holds {} valid keys",
        limit.tracked_clients(),
        auth.cache().cached_keys()
    );
    let undecided = counts.undecided.load(Ordering::Relaxed);
    let wrongly_refused = counts.wrongly_refused.load(Ordering::Relaxed);
    let wrongly_accepted = counts.wrongly_accepted.load(Ordering::Relaxed);
    let transport = counts.transport_errors.load(Ordering::Relaxed);
    println!(
        "valid refused: {wrongly_refused}; invalid accepted: {wrongly_accepted}; straddling an expiry or revoke (either answer allowed): {undecided}"
    );

    let mut failed = Vec::new();
    if wrongly_refused > 0 {
        failed.push(format!("{wrongly_refused} valid requests refused"));
    }
    if wrongly_accepted > 0 {
        failed.push(format!("{wrongly_accepted} invalid requests accepted"));
    }
    if transport > 0 {
        failed.push(format!("{transport} requests failed in transport"));
    }
    if total == 0 {
        failed.push("no request completed".to_owned());
    }
    if let Err(why) = memory_verdict(&rss) {
        failed.push(why);
    }
    if failed.is_empty() {
        println!("PASS");
    } else {
        for f in first_failures.lock().unwrap().iter() {
            println!("  e.g. {f}");
        }
        println!("FAIL: {}", failed.join("; "));
        std::process::exit(1);
    }
}

/// Memory must level off after the warm-up phase: fails if RSS grew in every
/// phase after warm-up and ended more than 8 MiB or 10% above the warm-up
/// level, or ended more than 64 MiB or 50% above it at all.
fn memory_verdict(rss: &[u64]) -> Result<(), String> {
    let (Some(&base), Some(&last)) = (rss.first(), rss.last()) else {
        return Ok(());
    };
    let grew_every_phase = rss.windows(2).all(|w| w[1] > w[0]);
    let steady_bound = base + (8 * 1024).max(base / 10);
    let hard_bound = base + (64 * 1024).max(base / 2);
    if grew_every_phase && last > steady_bound {
        return Err(format!("RSS kept growing after warm-up: {rss:?} KiB"));
    }
    if last > hard_bound {
        return Err(format!("RSS grew too much after warm-up: {rss:?} KiB"));
    }
    Ok(())
}
