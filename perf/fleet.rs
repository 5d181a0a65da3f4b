//! Fleet harness: N replicas of a service on one PostgreSQL, in one process,
//! directly or through a transaction pooler (PgBouncer), measured the way
//! issue 23 asks (see docs/scale.md for the figures and the model).
//!
//! ```sh
//! . .ci/postgres.sh                       # DATABASE_URL
//! cargo run --release -p tower-api-key-perf --bin fleet -- --replicas 10 --keys 10000
//! . .ci/pgbouncer.sh                      # PGBOUNCER_URL, after postgres.sh
//! cargo run --release -p tower-api-key-perf --bin fleet -- --replicas 10 --through-pooler
//! ```
//!
//! Each replica is what a deployed one is: its own `PgKeyStore` (its own
//! pool and LISTEN connection), migrated at start, its own `Authenticator`
//! (its own cache), and requests go through the layer (`any_valid_key`) to a
//! trivial service. The harness creates a database of its own over
//! `DATABASE_URL` (the pooler's `* =` entry forwards it), seeds it with
//! `--keys` keys over a direct connection, then runs, in order:
//!
//! 1. **Cold start**: all N replicas connect and migrate at once, then each
//!    is sent `--cold-keys` distinct valid keys at once (a deploy).
//! 2. **Warm-up**: Zipf-distributed load until the miss rate of a 250 ms
//!    window falls to `--settle` (or `--warmup` seconds pass).
//! 3. **Steady load**: `--seconds` of the same load: requests per second,
//!    miss rate, latency, database transactions per second and CPU.
//! 4. **Revokes**: `--revokes` times, a key cached on every replica is
//!    revoked on one, and the harness waits until every replica refuses it.
//!
//! Throughout, a sampler reads the server connections to the database from
//! `pg_stat_activity` (and, through the pooler, `SHOW POOLS` / `SHOW
//! SERVERS` on its admin console). Exits 1 when it saw more server
//! connections than the budget `replicas × (pool + 1)` or any 5xx under
//! steady load, 2 when it could not run. No key material is printed.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_api_key::store::NewKey;
use tower_api_key::{Authenticator, KeyId, KeyStore, PresentedKey, Verifier};
use tower_api_key_postgres::{ChangeFeed, PgKeyStore};

/// Set once the first 5xx has been explained.
static FIRST_ERROR_TAKEN: AtomicBool = AtomicBool::new(false);

type Svc = BoxCloneSyncService<Request<()>, Response<Bytes>, Infallible>;

/// Command-line settings.
#[derive(Clone, Debug)]
struct Args {
    replicas: usize,
    keys: usize,
    pool: usize,
    clients: usize,
    zipf: f64,
    seconds: f64,
    warmup: f64,
    settle: f64,
    cold_keys: usize,
    revokes: usize,
    database_url: String,
    pooler_url: Option<String>,
    feed: ChangeFeed,
}

const USAGE: &str = "usage: fleet [--replicas N] [--keys K] [--pool P] [--clients C per replica] \
[--zipf S] [--seconds T] [--warmup T] [--settle RATE] [--cold-keys M] [--revokes R] \
[--feed both|poll|listen (default both: LISTEN and a 250 ms poll)] \
[--database-url URL (default $DATABASE_URL)] [--through-pooler (uses $PGBOUNCER_URL) | --pooler-url URL]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        replicas: 10,
        keys: 10_000,
        pool: tower_api_key_postgres::DEFAULT_POOL_SIZE,
        clients: 2,
        zipf: 1.0,
        seconds: 10.0,
        warmup: 20.0,
        settle: 0.01,
        cold_keys: 33,
        revokes: 20,
        database_url: std::env::var("DATABASE_URL").unwrap_or_default(),
        pooler_url: None,
        feed: ChangeFeed::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--through-pooler" {
            args.pooler_url = Some(
                std::env::var("PGBOUNCER_URL")
                    .map_err(|_| "--through-pooler: PGBOUNCER_URL is not set".to_owned())?,
            );
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: not a number: {value}");
        match flag.as_str() {
            "--replicas" => args.replicas = value.parse().map_err(bad)?,
            "--keys" => args.keys = value.parse().map_err(bad)?,
            "--pool" => args.pool = value.parse().map_err(bad)?,
            "--clients" => args.clients = value.parse().map_err(bad)?,
            "--zipf" => args.zipf = value.parse().map_err(|_| format!("{flag}: {value}"))?,
            "--seconds" => args.seconds = value.parse().map_err(|_| format!("{flag}: {value}"))?,
            "--warmup" => args.warmup = value.parse().map_err(|_| format!("{flag}: {value}"))?,
            "--settle" => args.settle = value.parse().map_err(|_| format!("{flag}: {value}"))?,
            "--cold-keys" => args.cold_keys = value.parse().map_err(bad)?,
            "--revokes" => args.revokes = value.parse().map_err(bad)?,
            "--database-url" => args.database_url = value,
            "--pooler-url" => args.pooler_url = Some(value),
            "--feed" => {
                let every = tower_api_key_postgres::DEFAULT_POLL_INTERVAL;
                args.feed = match value.as_str() {
                    "both" => ChangeFeed::ListenAndPoll(every),
                    "poll" => ChangeFeed::Poll(every),
                    "listen" => ChangeFeed::Listen,
                    _ => return Err(format!("--feed: both, poll or listen, not {value}")),
                }
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if args.database_url.is_empty() {
        return Err("DATABASE_URL is not set (source .ci/postgres.sh, or --database-url)".into());
    }
    if args.replicas == 0 || args.keys == 0 || args.clients == 0 || args.pool == 0 {
        return Err("--replicas, --keys, --clients and --pool must be at least 1".into());
    }
    if args.replicas * args.cold_keys > args.keys {
        return Err("--keys must be at least replicas × cold-keys (distinct cold keys)".into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------

/// Request outcomes of one phase, shared by every client task.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    misses: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    server_errors: AtomicU64,
    /// Latency of every request through the layer, in µs.
    latencies: Mutex<Vec<u32>>,
    /// Latency of the requests that missed the cache, in µs.
    miss_latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn record(&self, status: StatusCode, missed: bool, micros: u32) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if missed {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        if status.is_success() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else if status.is_server_error() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.latencies.lock().unwrap().push(micros);
        if missed {
            self.miss_latencies.lock().unwrap().push(micros);
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// p50 / p99 / max of `values` (µs), as text in ms.
fn percentiles(values: &Mutex<Vec<u32>>) -> String {
    let mut v = values.lock().unwrap().clone();
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// A small xorshift generator: the load needs speed, not quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over ranks 0..n, sampled by binary search in the cumulative
/// distribution.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Server-side connection counts seen by the sampler.
#[derive(Default)]
struct Connections {
    /// Most backends of the fleet's database at once (`pg_stat_activity`).
    max_backends: AtomicU64,
    /// Most server connections PgBouncer held for the database (`SHOW POOLS`).
    max_pooler_servers: AtomicU64,
    /// Most clients waiting in PgBouncer for a server connection.
    max_pooler_waiting: AtomicU64,
    /// Most rows of `SHOW SERVERS` for the database.
    max_show_servers: AtomicU64,
}

// ---------------------------------------------------------------------------
// Database helpers
// ---------------------------------------------------------------------------

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The first value of the first row of `sql`, run with the simple protocol
/// (what PgBouncer's admin console speaks).
async fn scalar(client: &Client, sql: &str) -> Option<String> {
    let messages = client.simple_query(sql).await.ok()?;
    messages.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// CPU seconds (user + system) of the PostgreSQL server: the postmaster named
/// in `data_directory/postmaster.pid` and its children, from /proc (the
/// server runs on this machine in the runs docs/scale.md reports). `None`
/// when unreadable. Backends that exit take their time with them.
fn server_cpu_seconds(postmaster: u32) -> Option<f64> {
    let mut ticks = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if pid == postmaster || ppid == postmaster {
            found = true;
            let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
            let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
            ticks += utime + stime;
        }
    }
    // USER_HZ is 100 on Linux.
    found.then_some(ticks as f64 / 100.0)
}

async fn postmaster_pid(admin: &Client) -> Option<u32> {
    let dir = scalar(admin, "SHOW data_directory").await?;
    let text = std::fs::read_to_string(format!("{dir}/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

async fn xact_commit(admin: &Client, db: &str) -> Option<u64> {
    scalar(
        admin,
        &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"),
    )
    .await?
    .parse()
    .ok()
}

/// Samples the connection counts every 100 ms until `stop`.
async fn sample_connections(
    admin: Client,
    pooler_admin: Option<Client>,
    db: String,
    seen: Arc<Connections>,
    stop: Arc<AtomicBool>,
) {
    let backends = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
         AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    );
    while !stop.load(Ordering::Relaxed) {
        if let Some(n) = scalar(&admin, &backends).await.and_then(|n| n.parse().ok()) {
            seen.max_backends.fetch_max(n, Ordering::Relaxed);
        }
        if let Some(pooler) = &pooler_admin {
            if let Ok(messages) = pooler.simple_query("SHOW POOLS").await {
                for m in messages {
                    let SimpleQueryMessage::Row(row) = m else {
                        continue;
                    };
                    if row.try_get("database").ok().flatten() != Some(db.as_str()) {
                        continue;
                    }
                    let col = |name: &str| -> u64 {
                        row.try_get(name)
                            .ok()
                            .flatten()
                            .and_then(|v: &str| v.parse().ok())
                            .unwrap_or(0)
                    };
                    let servers = col("sv_active")
                        + col("sv_idle")
                        + col("sv_used")
                        + col("sv_tested")
                        + col("sv_login");
                    seen.max_pooler_servers
                        .fetch_max(servers, Ordering::Relaxed);
                    seen.max_pooler_waiting
                        .fetch_max(col("cl_waiting"), Ordering::Relaxed);
                }
            }
            if let Ok(messages) = pooler.simple_query("SHOW SERVERS").await {
                let n = messages
                    .iter()
                    .filter(|m| match m {
                        SimpleQueryMessage::Row(row) => {
                            row.try_get("database").ok().flatten() == Some(db.as_str())
                        }
                        _ => false,
                    })
                    .count() as u64;
                seen.max_show_servers.fetch_max(n, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Replicas and keys
// ---------------------------------------------------------------------------

/// A key the harness may present: its header and its parsed form.
struct Key {
    header: String,
    presented: PresentedKey,
    id: KeyId,
}

/// One replica: a store with its own pool and listener, an authenticator
/// with its own cache, and the layered service requests go through.
struct Replica {
    store: PgKeyStore,
    auth: Authenticator,
    service: Svc,
}

impl Replica {
    async fn start(config: Config, pool: usize, feed: ChangeFeed) -> Result<Replica, String> {
        let store = tower_api_key_postgres::PgKeyStoreBuilder::new(config)
            .pool_size(pool)
            .change_feed(feed)
            .connect()
            .await
            .map_err(|e| format!("connect: {}", chain(&e)))?;
        store
            .migrate()
            .await
            .map_err(|e| format!("migrate: {}", chain(&e)))?;
        let auth = Authenticator::builder(store.clone())
            .positive_ttl(Duration::from_secs(300))
            .negative_ttl(Duration::from_secs(5))
            .build();
        let service = tower::ServiceBuilder::new()
            .layer(auth.any_valid_key())
            .service_fn(|_request: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
            });
        Ok(Replica {
            store,
            auth,
            service: BoxCloneSyncService::new(service),
        })
    }

    /// One request with `key`, through the layer: its status, whether the
    /// key missed the cache, and its latency in µs.
    async fn request(&self, key: &Key) -> (StatusCode, bool, u32) {
        let missed = self.auth.cache().lookup_cached(&key.presented).is_none();
        let request = Request::get("/protected")
            .header(AUTHORIZATION, &key.header)
            .body(())
            .expect("a valid request");
        let started = Instant::now();
        let response = self.service.clone().oneshot(request).await;
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let status = match response {
            Ok(response) => response.status(),
            Err(never) => match never {},
        };
        if status.is_server_error() && !FIRST_ERROR_TAKEN.swap(true, Ordering::Relaxed) {
            // The layer answers 503 without saying why: ask the store once,
            // so the report shows the database's message.
            let why = match self.store.verify(&key.presented).await {
                Ok(_) => "the store's verify succeeded when asked again".to_owned(),
                Err(e) => chain(&e),
            };
            println!("first 5xx: {status}; the store's error: {why}");
        }
        (status, missed, micros)
    }
}

/// An error and its sources, one after the other (tokio-postgres puts the
/// server's message in the source).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Creates `n` keys over `store`, 8 at a time, spread over 100 accounts.
async fn seed(store: &PgKeyStore, n: usize) -> Result<Vec<Key>, String> {
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut keys = Vec::new();
            for i in (w..n).step_by(workers) {
                let created = store
                    .create(NewKey::new(format!("sa-fleet-{}", i % 100)))
                    .await
                    .map_err(|e| format!("seeding keys: {}", chain(&e)))?;
                let secret = created.key.expose_secret();
                let presented = store
                    .format()
                    .parse(secret)
                    .map_err(|e| format!("seeding keys: {e}"))?;
                keys.push((
                    i,
                    Key {
                        header: format!("Api-Key {secret}"),
                        presented,
                        id: created.record.key_id,
                    },
                ));
            }
            Ok::<_, String>(keys)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, k)| k).collect())
}

/// Zipf load on every replica from `clients` tasks each, until `until`
/// returns true; outcomes go into `tally`.
async fn load(
    replicas: &Arc<Vec<Replica>>,
    keys: &Arc<Vec<Key>>,
    zipf: &Arc<Zipf>,
    clients: usize,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for r in 0..replicas.len() {
        for c in 0..clients {
            let (replicas, keys, zipf, tally, stop) = (
                replicas.clone(),
                keys.clone(),
                zipf.clone(),
                tally.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ ((r as u64) << 20) ^ c as u64);
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[zipf.sample(&mut rng)];
                    let (status, missed, micros) = replicas[r].request(key).await;
                    tally.record(status, missed, micros);
                    // A hit never waits: yield, or these tasks starve the
                    // timer that ends the phase.
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    tasks
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("fleet: {message}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("fleet: could not run: {message}");
            std::process::exit(2);
        }
    }
}

/// Runs every phase; `Ok(false)` when a limit was broken.
async fn run(args: Args) -> Result<bool, String> {
    let direct = Config::from_str(&args.database_url).map_err(|e| format!("DATABASE_URL: {e}"))?;
    let db = format!(
        "tak_fleet_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    );
    let mut maintenance = direct.clone();
    maintenance.dbname("postgres");
    let admin = connect(&maintenance)
        .await
        .map_err(|e| format!("connect to the server directly: {e}"))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .map_err(|e| format!("create database {db}: {e}"))?;
    let result = run_in(&args, &direct, &admin, &db).await;
    // Replicas are shut down by now; FORCE ends what a pooler still holds.
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
    {
        eprintln!("fleet: could not drop database {db}: {e}");
    }
    result
}

async fn run_in(args: &Args, direct: &Config, admin: &Client, db: &str) -> Result<bool, String> {
    let mut direct_db = direct.clone();
    direct_db.dbname(db);
    let (replica_config, pooler_admin) = match &args.pooler_url {
        Some(url) => {
            let mut config = Config::from_str(url).map_err(|e| format!("pooler URL: {e}"))?;
            let mut console = config.clone();
            config.dbname(db);
            console.dbname("pgbouncer");
            let console = match connect(&console).await {
                Ok(client) => Some(client),
                Err(e) => {
                    println!("pooler admin console unavailable ({e}): SHOW POOLS not sampled");
                    None
                }
            };
            (config, console)
        }
        None => (direct_db.clone(), None),
    };
    let max_connections: u64 = scalar(admin, "SHOW max_connections")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let listener = usize::from(!matches!(args.feed, ChangeFeed::Poll(_)));
    let budget = (args.replicas * (args.pool + listener)) as u64;
    println!(
        "fleet: {} replicas, {} keys, pool {} + {listener} listener each, {} client tasks each, Zipf s = {}, feed {:?}",
        args.replicas, args.keys, args.pool, args.clients, args.zipf, args.feed
    );
    println!(
        "  path: {}; server max_connections = {max_connections}",
        if args.pooler_url.is_some() {
            "through the pooler (PgBouncer)"
        } else {
            "directly to PostgreSQL"
        }
    );
    println!(
        "  connection budget: replicas × (pool + listener) = {} × ({} + {listener}) = {budget}",
        args.replicas, args.pool
    );

    // Seed over a direct connection: the setup is not what is measured.
    let seeding = Instant::now();
    let seeder = tower_api_key_postgres::PgKeyStoreBuilder::new(direct_db.clone())
        .connect()
        .await
        .map_err(|e| format!("seed store: {e}"))?;
    seeder
        .migrate()
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    let keys = Arc::new(seed(&seeder, args.keys).await?);
    let revoke_keys = seed(&seeder, args.revokes).await?;
    seeder.shutdown().await;
    drop(seeder);
    println!(
        "  seeded {} + {} keys in {:.1} s",
        args.keys,
        args.revokes,
        seeding.elapsed().as_secs_f64()
    );

    let seen = Arc::new(Connections::default());
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler_admin = connect(&{
        let mut c = direct.clone();
        c.dbname("postgres");
        c
    })
    .await
    .map_err(|e| format!("sampler connection: {e}"))?;
    let sampler = tokio::spawn(sample_connections(
        sampler_admin,
        pooler_admin,
        db.to_owned(),
        seen.clone(),
        sampler_stop.clone(),
    ));

    // 1. Cold start: every replica at once, then its distinct keys at once.
    let started = Instant::now();
    let starts =
        (0..args.replicas).map(|_| Replica::start(replica_config.clone(), args.pool, args.feed));
    let mut replicas = Vec::new();
    let mut start_errors = Vec::new();
    for result in futures_util::future::join_all(starts).await {
        match result {
            Ok(replica) => replicas.push(replica),
            Err(e) => start_errors.push(e),
        }
    }
    let start_time = started.elapsed();
    if !start_errors.is_empty() {
        println!(
            "cold start: {} of {} replicas failed to start; first error: {}",
            start_errors.len(),
            args.replicas,
            start_errors[0]
        );
    }
    if replicas.is_empty() {
        sampler_stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        print_connections(&seen, budget, args.pooler_url.is_some());
        return Ok(false);
    }
    let replicas = Arc::new(replicas);
    let cold = Arc::new(Tally::default());
    let burst = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..replicas.len() {
        for k in r * args.cold_keys..(r + 1) * args.cold_keys {
            let (replicas, keys, cold) = (replicas.clone(), keys.clone(), cold.clone());
            tasks.push(tokio::spawn(async move {
                let (status, missed, micros) = replicas[r].request(&keys[k]).await;
                cold.record(status, missed, micros);
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    println!(
        "cold start: {} replicas connected and migrated in {:.3} s; {} distinct keys each at once: \
         {} requests, {} 200, {} 5xx, {} other, burst answered in {:.3} s ({})",
        replicas.len(),
        start_time.as_secs_f64(),
        args.cold_keys,
        Tally::get(&cold.requests),
        Tally::get(&cold.ok),
        Tally::get(&cold.server_errors),
        Tally::get(&cold.refused),
        burst.elapsed().as_secs_f64(),
        percentiles(&cold.latencies)
    );

    // 2. Warm-up until the miss rate of a 250 ms window settles.
    let zipf = Arc::new(Zipf::new(args.keys, args.zipf));
    let warm = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&replicas, &keys, &zipf, args.clients, &warm, &stop).await;
    let mut settled = None;
    let (mut last_requests, mut last_misses) = (0, 0);
    let warm_start = Instant::now();
    while warm_start.elapsed().as_secs_f64() < args.warmup {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (requests, misses) = (Tally::get(&warm.requests), Tally::get(&warm.misses));
        let window = requests - last_requests;
        if window > 0 && ((misses - last_misses) as f64 / window as f64) <= args.settle {
            settled = Some(started.elapsed());
            break;
        }
        (last_requests, last_misses) = (requests, misses);
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    match settled {
        Some(t) => println!(
            "cold start: miss rate of a 250 ms window at or below {:.1}% {:.2} s after the replicas started",
            args.settle * 100.0,
            t.as_secs_f64()
        ),
        None => println!(
            "cold start: miss rate did not settle to {:.1}% within {} s of warm-up",
            args.settle * 100.0,
            args.warmup
        ),
    }
    println!(
        "warm-up: {} requests, miss rate {:.2}%, {} 5xx, {} other refusals",
        Tally::get(&warm.requests),
        100.0 * Tally::get(&warm.misses) as f64 / Tally::get(&warm.requests).max(1) as f64,
        Tally::get(&warm.server_errors),
        Tally::get(&warm.refused)
    );

    // 3. Steady load.
    let postmaster = postmaster_pid(admin).await;
    let cpu_before = postmaster.and_then(server_cpu_seconds);
    let commits_before = xact_commit(admin, db).await;
    let steady = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let steady_start = Instant::now();
    let tasks = load(&replicas, &keys, &zipf, args.clients, &steady, &stop).await;
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = steady_start.elapsed().as_secs_f64();
    let commits_after = xact_commit(admin, db).await;
    let cpu_after = postmaster.and_then(server_cpu_seconds);
    let requests = Tally::get(&steady.requests);
    println!(
        "steady: {:.1} s, {} requests = {:.0} requests/s, miss rate {:.3}%, {} 5xx, {} other refusals",
        elapsed,
        requests,
        requests as f64 / elapsed,
        100.0 * Tally::get(&steady.misses) as f64 / requests.max(1) as f64,
        Tally::get(&steady.server_errors),
        Tally::get(&steady.refused)
    );
    println!(
        "steady: latency through the layer: {}",
        percentiles(&steady.latencies)
    );
    println!(
        "steady: latency of misses:         {}",
        percentiles(&steady.miss_latencies)
    );
    match (commits_before, commits_after) {
        (Some(a), Some(b)) => println!(
            "steady: database transactions (pg_stat_database.xact_commit): {:.0}/s",
            (b - a) as f64 / elapsed
        ),
        _ => println!("steady: database transactions: unavailable"),
    }
    match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => println!(
            "steady: database CPU (postmaster and children, /proc): {:.2} cores",
            (b - a) / elapsed
        ),
        _ => println!("steady: database CPU: unavailable (server not on this machine?)"),
    }

    // 4. Revokes: cached on every replica, revoked on one, refused by all.
    let mut propagation = Vec::new();
    let mut not_refused = 0;
    let within = Duration::from_secs(10);
    for (i, key) in revoke_keys.iter().enumerate() {
        let mut not_admitted = 0;
        for replica in replicas.iter() {
            let (status, _, _) = replica.request(key).await;
            if status != StatusCode::OK {
                not_admitted += 1;
            }
        }
        if not_admitted > 0 {
            println!("revoke {i}: key not admitted by {not_admitted} replicas before the revoke");
        }
        let t0 = Instant::now();
        if let Err(e) = replicas[i % replicas.len()]
            .store
            .revoke(key.id, None)
            .await
        {
            println!("revoke {i}: revoke failed: {}", chain(&e));
            not_refused += 1;
            continue;
        }
        let waits = replicas.iter().map(|replica| async move {
            loop {
                let (status, _, _) = replica.request(key).await;
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Some(t0.elapsed());
                }
                if t0.elapsed() > within {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let times = futures_util::future::join_all(waits).await;
        if times.iter().any(Option::is_none) {
            not_refused += 1;
            if not_refused >= 3 {
                println!(
                    "revoke: stopped after {} revokes, 3 of them not refused by all",
                    i + 1
                );
                break;
            }
        } else if let Some(all) = times.into_iter().flatten().max() {
            propagation.push(all.as_micros() as u32);
        }
    }
    let propagation = Mutex::new(propagation);
    println!(
        "revoke: refused by all {} replicas ({} revokes, from the revoke call's start): {}; {} not refused within {} s",
        replicas.len(),
        args.revokes,
        percentiles(&propagation),
        not_refused,
        within.as_secs()
    );

    for replica in replicas.iter() {
        replica.store.shutdown().await;
    }
    sampler_stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let within_budget = print_connections(&seen, budget, args.pooler_url.is_some());
    let steady_5xx = Tally::get(&steady.server_errors);
    let mut ok = within_budget;
    if steady_5xx > 0 {
        println!("FAIL: {steady_5xx} 5xx under steady load");
        ok = false;
    }
    if !start_errors.is_empty() {
        println!("FAIL: {} replicas did not start", start_errors.len());
        ok = false;
    }
    if ok {
        println!("PASS: within the connection budget, no 5xx under steady load");
    }
    Ok(ok)
}

/// Prints the connection figures; `false` when the budget was exceeded.
fn print_connections(seen: &Connections, budget: u64, pooler: bool) -> bool {
    let backends = seen.max_backends.load(Ordering::Relaxed);
    println!("connections: most server backends on the database at once (pg_stat_activity): {backends} (budget {budget})");
    if pooler {
        println!(
            "connections: PgBouncer SHOW POOLS: most server connections {}, most clients waiting {}; SHOW SERVERS: most rows {}",
            seen.max_pooler_servers.load(Ordering::Relaxed),
            seen.max_pooler_waiting.load(Ordering::Relaxed),
            seen.max_show_servers.load(Ordering::Relaxed)
        );
    }
    if backends > budget {
        println!("FAIL: {backends} server connections, over the budget of {budget}");
        return false;
    }
    true
}
