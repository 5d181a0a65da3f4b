//! The PostgreSQL store against a real server.
//!
//! Every test runs against `DATABASE_URL` (`.ci/postgres.sh` starts a server
//! and sets it) or, without it, a throwaway server the test process starts
//! when PostgreSQL is installed (`common::server`). Without either a test
//! prints `SKIPPED` and passes, and a count of the skipped tests is printed at
//! exit; unless `CI` is set: then it fails, so CI never skips these
//! silently. Each test works in a schema of its own (and, where notifications
//! matter, on a NOTIFY channel of its own), so they run in parallel.
//!
//! Through a transaction pooler: with `TAK_PG_THROUGH_POOLER=1` and
//! `PGBOUNCER_URL` set (`. .ci/postgres.sh && . .ci/pgbouncer.sh`), the
//! stores connect through the pooler and each test gets a database of its own
//! instead of a schema (PgBouncer refuses the `options` startup parameter that
//! selects the schema); see [`pooler_url`].
//!
//! Nothing here sleeps to hope for timing: waits are on notifications and on
//! the listener's status watch, each bounded by `tokio::time::timeout`.
//! "The database is down" is simulated with a TCP proxy in front of the
//! server that the test can close and cut (connections refused and dropped),
//! which affects only the store behind it, not the other tests.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};
use tower_api_key::cache::{CacheConfig, CachedVerifier, LookupError, Source};
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::limits::{BucketUse, Credits, RateLimit, RateLimitSync};
use tower_api_key::store::{ConfigError, CreatedKey, KeyUpdate, NewKey, StoreError};
use tower_api_key::CreditLedger;
use tower_api_key::Invalidation;
use tower_api_key::KeyStore;
use tower_api_key::ScopeSet;
use tower_api_key::{KeyId, PresentedKey};
use tower_api_key::{Verifier, VerifierError};
use tower_api_key_postgres::{ChangeFeed, ListenerStatus, PgKeyStore, PgKeyStoreBuilder};

mod common;
// The conformance suite, from its crate (crates/tower-api-key-conformance).
use tower_api_key_conformance as conformance;
use tower_api_key_conformance::{lifecycle_conformance, store_conformance, transfer_conformance};

use conformance::{MemoryFactory, StoreFactory, StoreSettings, Watch};

/// Bound on every wait for a notification to cross between two stores.
const NOTIFY_WITHIN: Duration = Duration::from_secs(1);
/// Bound on waits for a reconnection (backoff included).
const RECONNECT_WITHIN: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Test database
// ---------------------------------------------------------------------------

/// The server's URL (`DATABASE_URL`, or a throwaway server this process
/// starts: see `common::server`), or `None` after saying the test is skipped.
fn database_url(test: &str) -> Option<String> {
    common::server::url_or_skip(test)
}

/// Whether the stores under test reach the server through a transaction
/// pooler: `TAK_PG_THROUGH_POOLER=1` with `PGBOUNCER_URL` set (`.ci/pgbouncer.sh`
/// sets it). The pooler's URL, when so.
///
/// PgBouncer refuses the `options` startup parameter that puts each test into
/// a schema of its own, so through it each test gets a database of its own
/// instead: created and dropped over the direct `DATABASE_URL`, reached
/// through the pooler's `* =` entry (any database name forwarded to the
/// server's database of that name).
fn pooler_url() -> Option<String> {
    match std::env::var("TAK_PG_THROUGH_POOLER") {
        Ok(v) if !v.is_empty() && v != "0" => match std::env::var("PGBOUNCER_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => panic!(
                "TAK_PG_THROUGH_POOLER is set but PGBOUNCER_URL is not (source .ci/pgbouncer.sh \
                 after .ci/postgres.sh)"
            ),
        },
        _ => None,
    }
}

/// Whether this run goes through a transaction pooler, where LISTEN hears
/// nothing: tests of the listener itself are skipped (polling carries
/// invalidations there, tested by the rest of the suite).
fn listen_unavailable() -> bool {
    let through = pooler_url().is_some();
    if through {
        eprintln!("SKIPPED through a transaction pooler: LISTEN needs a session");
    }
    through
}

/// A fresh schema (directly) or database (through a pooler, see
/// [`pooler_url`]) of its own for one test, and an admin connection to it
/// that bypasses any pooler.
struct TestDb {
    url_config: Config,
    /// Connection settings that put the store's tables into the schema.
    config: Config,
    /// The schema the store's tables go into: the test's own directly,
    /// `public` of the test's own database through a pooler.
    schema: String,
    /// The name unique to this test: its schema, or its database.
    name: String,
    /// Through a pooler: the database made for this test, dropped at the end.
    database: Option<String>,
    admin: tokio_postgres::Client,
}

impl TestDb {
    async fn new(test: &str) -> Option<TestDb> {
        let url = database_url(test)?;
        let url_config = Config::from_str(&url).expect("DATABASE_URL parses");
        let suffix: String = KeyId::random().unwrap().as_str()[..10].to_ascii_lowercase();
        let name = format!("tak_{}_{suffix}", &test[..test.len().min(40)]).replace("__", "_");
        if let Some(pooler) = pooler_url() {
            let maintenance = connect(&url_config).await;
            maintenance
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
            let mut direct = url_config.clone();
            direct.dbname(&name);
            let admin = connect(&direct).await;
            let mut config = Config::from_str(&pooler).expect("PGBOUNCER_URL parses");
            config.dbname(&name);
            return Some(TestDb {
                url_config,
                config,
                schema: "public".to_owned(),
                name: name.clone(),
                database: Some(name),
                admin,
            });
        }
        let schema = name.clone();
        let mut config = url_config.clone();
        let options = match url_config.get_options() {
            Some(existing) => format!("{existing} -c search_path={schema}"),
            None => format!("-c search_path={schema}"),
        };
        config.options(options);
        let admin = connect(&url_config).await;
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path TO {schema}"
            ))
            .await
            .expect("create the test schema");
        Some(TestDb {
            url_config,
            config,
            schema,
            name,
            database: None,
            admin,
        })
    }

    /// A NOTIFY channel of this test's own.
    fn channel(&self) -> String {
        format!("{}_inv", self.name)
    }

    /// A store builder on this schema and channel, migrated on connect.
    fn builder(&self) -> PgKeyStoreBuilder {
        PgKeyStoreBuilder::new(self.config.clone()).channel(self.channel())
    }

    async fn store(&self) -> PgKeyStore {
        let store = self.builder().connect().await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// A store builder on this channel that reaches the database through
    /// `proxy`, reconnects fast (20 to 200 ms; a test may set its own) and does
    /// not poll the change log.
    fn builder_via(&self, proxy: &Proxy) -> PgKeyStoreBuilder {
        // These tests exercise the listener's recovery: no poll covers for it.
        PgKeyStoreBuilder::new(self.config_via(proxy))
            .channel(self.channel())
            .change_feed(ChangeFeed::Listen)
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
    }

    /// Settings that reach the same database and schema through `proxy`.
    fn config_via(&self, proxy: &Proxy) -> Config {
        let mut config = Config::new();
        config.host("127.0.0.1").port(proxy.addr.port());
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.config.get_password() {
            config.password(password);
        }
        if let Some(dbname) = self.config.get_dbname() {
            config.dbname(dbname);
        }
        if let Some(options) = self.config.get_options() {
            config.options(options);
        }
        config
    }

    /// Where the stores' connections go (the server, or the pooler): what a
    /// [`Proxy`] forwards to.
    fn upstream(&self) -> SocketAddr {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            None => "localhost".into(),
            #[allow(unreachable_patterns)]
            Some(_) => panic!("the proxy tests need DATABASE_URL to name a TCP host"),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let host = if host == "localhost" {
            "127.0.0.1".into()
        } else {
            host
        };
        format!("{host}:{port}")
            .parse()
            .expect("a host:port address")
    }

    async fn drop_schema(self) {
        match &self.database {
            // FORCE: the pooler may still hold server connections to it.
            Some(database) => {
                drop(self.admin);
                let _ = connect(&self.url_config)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .await;
            }
            None => {
                let _ = self
                    .admin
                    .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
                    .await;
            }
        }
    }
}

async fn connect(config: &Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("connect to DATABASE_URL");
    tokio::spawn(connection);
    client
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn cache(store: &PgKeyStore) -> CachedVerifier {
    CachedVerifier::new(
        store.clone(),
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .build(),
    )
}

fn presented(store: &impl KeyStore, created: &CreatedKey) -> PresentedKey {
    store
        .key_format()
        .expect("a store has a key format")
        .parse(created.key.expose_secret())
        .unwrap()
}

fn key_text(store: &impl KeyStore, text: &str) -> PresentedKey {
    store
        .key_format()
        .expect("a store has a key format")
        .parse(text)
        .unwrap()
}

async fn listening(store: &PgKeyStore, at_least: u64) -> ListenerStatus {
    let mut status = store.listener_status();
    let got = timeout(
        RECONNECT_WITHIN,
        status.wait_for(|s| {
            matches!(s, ListenerStatus::Listening { connections, .. } if *connections >= at_least)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("listener not listening (connection {at_least}) in time"))
    .expect("listener alive")
    .clone();
    got
}

fn backend_pid(status: &ListenerStatus) -> i32 {
    match status {
        ListenerStatus::Listening { backend_pid, .. } => *backend_pid,
        other => panic!("not listening: {other:?}"),
    }
}

fn is_unavailable(r: Result<impl std::fmt::Debug, LookupError>) -> bool {
    matches!(r, Err(LookupError::Unavailable(_)))
}

fn is_unknown(r: Result<impl std::fmt::Debug, LookupError>) -> bool {
    matches!(r, Err(LookupError::Unknown))
}

/// After connections were cut, `key` (revoked meanwhile) is refused as
/// unknown once the pool has replaced its dead connections: a lookup that
/// meets a dead pooled connection first is a 503 (never cached, never an
/// acceptance); asks again until the answer is unknown, within
/// `RECONNECT_WITHIN`.
async fn refused_once_the_pool_recovers(cache: &CachedVerifier, key: &PresentedKey) {
    let deadline = tokio::time::Instant::now() + RECONNECT_WITHIN;
    loop {
        match cache.lookup(key).await {
            Err(LookupError::Unknown) => return,
            Err(LookupError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("a revoked key after reconnecting: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// A TCP proxy that can play "the database is down"
// ---------------------------------------------------------------------------

struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept: Mutex<Option<AbortHandle>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    /// While true, connections stay open but carry nothing (a dead network).
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            accept: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
            frozen: tokio::sync::watch::channel(false).0,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let connections = self.connections.clone();
        let frozen = self.frozen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut frozen = frozen.subscribe();
                let forward = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        f = async { frozen.wait_for(|f| *f).await.is_ok() } => f,
                    };
                    if froze {
                        // Hold both sockets open and silent until cut.
                        std::future::pending::<()>().await;
                    }
                });
                connections.lock().unwrap().push(forward.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task.abort_handle());
    }

    /// The database "stops": new connections are refused, open ones cut.
    async fn stop(&self) {
        self.refuse_new().await;
        self.cut();
    }

    /// New connections are refused; open ones go on.
    async fn refuse_new(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        // Wait until the port really refuses.
        timeout(Duration::from_secs(5), async {
            while TcpStream::connect(self.addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the proxy stops accepting");
    }

    /// Freezes (or thaws) the network: open connections stay open but
    /// silent, as after a partition; thawing does not revive them.
    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Cuts every open connection; new ones are still accepted.
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// The database "starts" again, on the same port.
    async fn start_again(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the proxy port");
        self.serve(listener);
    }
}

// ---------------------------------------------------------------------------
// The conformance suite: every store's contract, on a fresh schema per store
// ---------------------------------------------------------------------------

/// Makes each store of a conformance test in a schema of its own (and on a
/// NOTIFY channel of its own), migrated; drops them all when the test ends.
struct PgFactory {
    test: &'static str,
    made: Mutex<Vec<(TestDb, PgKeyStore)>>,
}

impl StoreFactory for PgFactory {
    type Store = PgKeyStore;

    async fn open(test: &'static str) -> Option<Self> {
        database_url(test)?;
        Some(Self {
            test,
            made: Mutex::new(Vec::new()),
        })
    }

    async fn store(&self, settings: StoreSettings) -> PgKeyStore {
        let db = TestDb::new(self.test).await.expect("DATABASE_URL is set");
        let store = db
            .builder()
            .clock(settings.clock)
            .hasher(settings.hasher)
            .format(settings.format)
            .max_keys_per_account(settings.max_keys_per_account)
            .connect()
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        self.made.lock().unwrap().push((db, store.clone()));
        store
    }

    async fn finish(self) {
        for (db, store) in self.made.into_inner().unwrap() {
            store.shutdown().await;
            db.drop_schema().await;
        }
    }
}

store_conformance!(PgFactory);
lifecycle_conformance!(PgFactory);
transfer_conformance!(memory_to_postgres: MemoryFactory => PgFactory);
transfer_conformance!(postgres_to_memory: PgFactory => MemoryFactory);

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_two_replicas_never_pass_the_limit() {
    let Some(db) = TestDb::new("concurrent_creates_on_two_replicas_never_pass_the_limit").await
    else {
        return;
    };
    // Two replicas, 10 pooled connections each: the creates really overlap.
    let a = db
        .builder()
        .max_keys_per_account(5)
        .connect()
        .await
        .unwrap();
    a.migrate().await.unwrap();
    let b = db
        .builder()
        .max_keys_per_account(5)
        .connect()
        .await
        .unwrap();
    conformance::concurrent_creates_respect_the_limit(&[a.clone(), b.clone()]).await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// Issue 20's three-request race through the management API, 200 rounds:
/// the manager never ends up holding a secret of a key with a scope it may
/// not grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_narrow_reissue_race_never_hands_out_an_ungrantable_scope() {
    let Some(db) =
        TestDb::new("the_keep_narrow_reissue_race_never_hands_out_an_ungrantable_scope").await
    else {
        return;
    };
    let store = db.builder().connect().await.unwrap();
    store.migrate().await.unwrap();
    let outcome = common::grant_race::run(store.clone(), 200).await;
    eprintln!("{outcome:?}");
    assert!(
        outcome.reissued > 0,
        "the race ran to a reissue: {outcome:?}"
    );
    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_on_two_replicas_let_exactly_one_through() {
    let Some(db) = TestDb::new("conditional_writes_on_two_replicas_let_exactly_one_through").await
    else {
        return;
    };
    let a = db.builder().connect().await.unwrap();
    a.migrate().await.unwrap();
    let b = db.builder().connect().await.unwrap();
    conformance::versions::conditional_writes_race(&[a.clone(), b.clone()]).await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// Nothing the store runs leaves a prepared statement on its server
/// session: a transaction pooler (PgBouncer in transaction mode) runs the
/// next transaction on another session, where a statement named on this one
/// does not exist. A trigger, which runs in the store's own session, counts
/// that session's prepared statements after verification, writes, a credit
/// lease, a rate-limit sync, the schema check and migrations have all run
/// on the store's one pooled connection. Before unnamed statements, each of
/// those calls left one named statement per distinct SQL text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prepared_statement_outlives_its_call_on_the_session() {
    let Some(db) = TestDb::new("no_prepared_statement_outlives_its_call").await else {
        return;
    };
    // One pooled connection: every call below runs on the session the trigger sees.
    let store = db.builder().pool_size(1).connect().await.unwrap();
    store.migrate().await.unwrap();
    db.admin
        .batch_execute(
            "CREATE TABLE seen_statements (n bigint NOT NULL);
             CREATE FUNCTION count_statements() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO seen_statements SELECT count(*) FROM pg_prepared_statements;
                 RETURN NULL; END $$;
             CREATE TRIGGER count_statements AFTER INSERT ON tower_api_key_revoked
                 FOR EACH ROW EXECUTE FUNCTION count_statements();",
        )
        .await
        .unwrap();
    let created = store
        .create(NewKey::new("sa").with_credits(Credits::new(5).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    store.verify(&presented(&store, &created)).await.unwrap();
    store.get(id).await.unwrap().unwrap();
    store.list("sa", Default::default()).await.unwrap();
    let lease = store.lease_credits(id, 2, SystemTime::now()).await;
    assert!(lease.unwrap().unwrap().granted > 0);
    let uses = [bucket("key:k", "10/1s", 1)];
    store
        .rate_limit_sync()
        .sync(&uses, sync_time())
        .await
        .unwrap();
    assert!(store.schema_version().await.unwrap() > 0);
    store.migrate().await.unwrap();
    store.revoke(id, None).await.unwrap();

    let seen: Vec<i64> = db
        .admin
        .query("SELECT n FROM seen_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(seen, [0], "prepared statements left on the store's session");
    store.shutdown().await;
}

/// A notification lost on purpose (B listens on another channel than A
/// announces on) is caught by B's next read of the change log. B polls only
/// when told to, so the test decides when. Without the change log B never
/// hears of the revoke and serves the key from its cache until the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_caught_by_the_change_log_poll() {
    let Some(db) = TestDb::new("a_lost_notification_is_caught_by_the_poll").await else {
        return;
    };
    let a = db.store().await;
    let b = db
        .builder()
        .channel(format!("elsewhere_{}", &db.name[db.name.len() - 10..]))
        .change_feed(ChangeFeed::Listen)
        .connect()
        .await
        .unwrap();
    let cache_b = cache(&b);
    let created = a.create(NewKey::new("sa-lost")).await.unwrap();
    let key = presented(&a, &created);
    cache_b.lookup(&key).await.unwrap();
    assert!(a.revoke(created.record.key_id, None).await.unwrap());
    assert_eq!(
        cache_b.lookup_with_source(&key).await.unwrap().1,
        Source::Cache,
        "the notification is lost: B still serves the key from its cache"
    );
    b.poll_changes().await.unwrap();
    assert!(
        cache_b.lookup(&key).await.is_err(),
        "refused after one poll"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// PostgreSQL commits change log rows out of `seq` order: a row whose
/// transaction began first and commits after a poll has a lower `seq` than
/// rows that poll already read. The poll position is a transaction id, so
/// the next poll still reads it. A `seq` position (`seq > last seen`) skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_after_a_later_one_is_still_polled() {
    let Some(db) = TestDb::new("a_change_committed_after_a_later_one").await else {
        return;
    };
    let a = db.store().await;
    let b = db
        .builder()
        .change_feed(ChangeFeed::Listen)
        .connect()
        .await
        .unwrap();
    let early = a
        .create(NewKey::new("sa-race"))
        .await
        .unwrap()
        .record
        .key_id;
    let later = a
        .create(NewKey::new("sa-race"))
        .await
        .unwrap()
        .record
        .key_id;
    b.poll_changes().await.unwrap();
    let mut seen = Watch::on(&b);

    // A transaction takes its seq first and stays open (direct, so it holds
    // one server session while a later change commits).
    let slow = &db.admin;
    slow.batch_execute(&format!(
        "BEGIN; INSERT INTO tower_api_key_changes (key_id, service_account_id, changed_at)
                VALUES ('{early}', 'sa-race', now())"
    ))
    .await
    .unwrap();
    assert!(a.revoke(later, None).await.unwrap());
    b.poll_changes().await.unwrap();
    assert_eq!(
        seen.until_invalidated(later, Duration::from_secs(5))
            .await
            .key_id(),
        Some(later)
    );
    slow.batch_execute("COMMIT").await.unwrap();
    b.poll_changes().await.unwrap();
    assert_eq!(
        seen.until_invalidated(early, Duration::from_secs(5))
            .await
            .key_id(),
        Some(early),
        "the row committed after the first poll is read by the next"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Polling on its own: with LISTEN not carrying the change (B on another
/// channel), B's poller publishes a revoke within its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_publishes_a_revoke_on_its_own() {
    let Some(db) = TestDb::new("the_poller_publishes_a_revoke_on_its_own").await else {
        return;
    };
    let a = db.store().await;
    let b = db
        .builder()
        .channel(format!("elsewhere_{}", &db.name[db.name.len() - 10..]))
        .change_feed(ChangeFeed::ListenAndPoll(Duration::from_millis(20)))
        .connect()
        .await
        .unwrap();
    let mut seen = Watch::on(&b);
    let id = a
        .create(NewKey::new("sa-poll"))
        .await
        .unwrap()
        .record
        .key_id;
    assert!(a.revoke(id, None).await.unwrap());
    // Generous: the event is awaited, not a sleep; 20 ms polls need far less.
    seen.until_invalidated(id, RECONNECT_WITHIN).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// `ChangeFeed::Poll` opens no LISTEN connection: B hears of A's revoke
/// only when it reads the change log (its own interval is an hour, so the
/// test decides when), and then refuses the key. Were B listening, the
/// notification would reach its cache before the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_store_does_not_listen_and_hears_a_revoke_by_reading_the_log() {
    let Some(db) = TestDb::new("a_polling_store_does_not_listen").await else {
        return;
    };
    let a = db.store().await;
    let app = format!("tak_poll_{}", &db.name[db.name.len() - 10..]);
    let mut config = db.config.clone();
    config.application_name(&app);
    let b = PgKeyStoreBuilder::new(config)
        .channel(db.channel())
        .change_feed(ChangeFeed::Poll(Duration::from_secs(3600)))
        .connect()
        .await
        .unwrap();
    assert_eq!(*b.listener_status().borrow(), ListenerStatus::Off);
    let cache_b = cache(&b);
    let created = a.create(NewKey::new("sa-poll-only")).await.unwrap();
    let key = presented(&a, &created);
    cache_b.lookup(&key).await.unwrap();
    assert!(a.revoke(created.record.key_id, None).await.unwrap());
    assert_eq!(
        cache_b.lookup_with_source(&key).await.unwrap().1,
        Source::Cache,
        "no LISTEN: the cache still holds the key until B reads the log"
    );
    if pooler_url().is_none() {
        // One call at a time so far: one pooled connection, and no listener's.
        let sessions: i64 = db
            .admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            sessions, 1,
            "B holds one pooled connection and no LISTEN session"
        );
    }
    b.poll_changes().await.unwrap();
    assert!(
        cache_b.lookup(&key).await.is_err(),
        "refused after one read"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A poller whose position writers pruned before it read (it could not read
/// the log for longer than the log keeps rows: 10 minutes of A's clock here)
/// invalidates everything: the revoke whose row is gone still reaches B's
/// cache. Reading only the rows that are left would miss it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_whose_position_was_pruned_invalidates_everything() {
    let Some(db) = TestDb::new("a_poller_whose_position_was_pruned").await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let a = db.builder().clock(clock.clone()).connect().await.unwrap();
    a.migrate().await.unwrap();
    let b = db
        .builder()
        .change_feed(ChangeFeed::Poll(Duration::from_secs(3600)))
        .connect()
        .await
        .unwrap();
    let cache_b = cache(&b);
    let gone = a.create(NewKey::new("sa-pruned")).await.unwrap();
    let other = a.create(NewKey::new("sa-pruned")).await.unwrap();
    let gone_key = presented(&a, &gone);
    cache_b.lookup(&gone_key).await.unwrap();
    b.poll_changes().await.unwrap();

    assert!(a.revoke(gone.record.key_id, None).await.unwrap());
    clock.advance(Duration::from_secs(11 * 60));
    // This change prunes the revoke's row, older than 10 minutes by A's clock.
    a.update(
        other.record.key_id,
        KeyUpdate::default().with_description("later"),
        None,
    )
    .await
    .unwrap();
    let left: i64 = db
        .admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.tower_api_key_changes WHERE key_id = $1",
                db.schema
            ),
            &[&gone.record.key_id.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the revoke's row was pruned");

    let mut seen = Watch::on(&b);
    b.poll_changes().await.unwrap();
    seen.until_all(Duration::from_secs(5)).await;
    assert!(cache_b.lookup(&gone_key).await.is_err(), "refused");
    a.shutdown().await;
    b.shutdown().await;
}

/// When LISTEN cannot connect (its own settings point at a closed port),
/// `ListenAndPoll` still connects and the poll carries invalidations;
/// `Listen` alone refuses to connect, since nothing would carry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_the_default_feed_connects_and_polls_and_listen_alone_fails() {
    let Some(db) = TestDb::new("without_listen_the_default_feed_connects").await else {
        return;
    };
    let a = db.store().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A fresh config: `host` and `port` add to a config's lists.
    let mut nowhere = Config::new();
    nowhere.host("127.0.0.1");
    nowhere.port(closed.local_addr().unwrap().port());
    nowhere.user(db.config.get_user().unwrap_or("postgres"));
    drop(closed);
    let timeout = Duration::from_millis(200);
    let listen_only = db
        .builder()
        .timeout(timeout)
        .listen_config(nowhere.clone())
        .change_feed(ChangeFeed::Listen)
        .connect()
        .await;
    assert!(
        listen_only.is_err(),
        "LISTEN alone cannot carry invalidations"
    );
    let b = db
        .builder()
        .timeout(timeout)
        .listen_config(nowhere)
        .change_feed(ChangeFeed::ListenAndPoll(Duration::from_millis(20)))
        .connect()
        .await
        .expect("the poll carries invalidations without LISTEN");
    assert!(!b.listener_status().borrow().is_listening());
    let mut seen = Watch::on(&b);
    let id = a
        .create(NewKey::new("sa-nolisten"))
        .await
        .unwrap()
        .record
        .key_id;
    assert!(a.revoke(id, None).await.unwrap());
    seen.until_invalidated(id, RECONNECT_WITHIN).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A replica on the default settings never opens more than its budget
/// (`pool_size + 1`, 4 + 1 by default) server connections: a burst of 33
/// distinct keys at once, as in a cold deploy, waits for pooled connections
/// and every key verifies. Before the default of 4, the burst opened 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_misses_stays_within_the_default_connection_budget() {
    let Some(db) = TestDb::new("a_burst_of_misses_stays_within_the_budget").await else {
        return;
    };
    let a = db.store().await;
    let app = format!("tak_budget_{}", &db.name[db.name.len() - 10..]);
    let mut config = db.config.clone();
    config.application_name(&app);
    let b = PgKeyStoreBuilder::new(config)
        .channel(db.channel())
        .connect()
        .await
        .unwrap();
    let mut keys = Vec::new();
    for _ in 0..33 {
        let created = a.create(NewKey::new("sa-burst")).await.unwrap();
        keys.push(presented(&a, &created));
    }
    let verified = futures_util::future::join_all(keys.iter().map(|key| b.verify(key))).await;
    assert!(verified.iter().all(Result::is_ok), "every key verifies");
    let used: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    let budget = i64::try_from(tower_api_key_postgres::DEFAULT_POOL_SIZE).unwrap() + 1;
    if pooler_url().is_none() {
        assert!(used <= budget, "{used} server connections, budget {budget}");
        assert!(used >= 2, "the listener and at least one pooled connection");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Two replicas racing for one key's credits: the row lock orders the
/// leases, so no credit is granted twice, down to the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_two_replicas_never_grant_more_credits_than_exist() {
    let Some(db) = TestDb::new("leases_on_two_replicas_never_grant_more_credits").await else {
        return;
    };
    let a = db.store().await;
    let b = db.store().await;
    let created = a
        .create(NewKey::new("sa-credits").with_credits(Credits::new(137).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    let now = SystemTime::now();
    conformance::concurrent_leases_grant_exactly_the_credits(&[a.clone(), b.clone()], id, 137, now)
        .await;
    // The last credit, one replica each.
    a.add_credits(id, 1, None).await.unwrap().unwrap();
    let (x, y) = tokio::join!(a.lease_credits(id, 5, now), b.lease_credits(id, 5, now));
    let granted = [x.unwrap().unwrap(), y.unwrap().unwrap()].map(|l| l.granted);
    assert_eq!(granted.iter().sum::<u64>(), 1, "{granted:?}");
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// Account limits and added credits set on one replica reach the other's
/// cache through NOTIFY, for every key of the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_limits_and_credits_changed_on_one_replica_reach_the_others_cache() {
    let Some(db) = TestDb::new("account_limits_and_credits_reach_the_other").await else {
        return;
    };
    let a = db.store().await;
    let b = db.store().await;
    conformance::account_changes_reach_the_other_store(&a, &b, NOTIFY_WITHIN).await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// A leak report received by one replica (issue 24) reaches the other's
/// cache through NOTIFY within the revocation bound: the revoked key is
/// refused there, the quarantined secret read as quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_report_on_one_replica_reaches_the_others_cache_within_the_bound() {
    let Some(db) = TestDb::new("leak_report_reaches_the_other").await else {
        return;
    };
    let a = db.store().await;
    let b = db.store().await;
    conformance::compromise::leak_reports_reach_the_other_store(&a, &b, NOTIFY_WITHIN).await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// Limits or credits another tool wrote wrong are a backend error naming
/// the key, never a panic, and never a key without its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stored_limits_and_credits_are_errors_naming_the_key() {
    let Some(db) = TestDb::new("malformed_stored_limits_and_credits").await else {
        return;
    };
    let store = db.store().await;
    let created = store
        .create(NewKey::new("sa-bad").with_credits(Credits::new(5).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    let key = presented(&store, &created);
    let names_the_key = |e: &dyn std::error::Error| {
        let text = format!("{e}");
        assert!(text.contains(&id.to_string()), "{text}");
    };
    for (sql, lease_fails) in [
        ("UPDATE tower_api_key_keys SET rate_limits = '5/0s'", false),
        (
            "UPDATE tower_api_key_keys SET rate_limits = '5/1s  ,burst'",
            false,
        ),
        (
            "UPDATE tower_api_key_keys SET credits_generation = -1",
            true,
        ),
        (
            "UPDATE tower_api_key_keys SET credits_refill_interval = 'monthly', \
             credits_refill_amount = 3, credits_refill_day = 40",
            true,
        ),
    ] {
        let before = db
            .admin
            .query_one(
                "SELECT rate_limits, credits_generation FROM tower_api_key_keys",
                &[],
            )
            .await
            .unwrap();
        let (limits, generation): (String, i64) = (before.get(0), before.get(1));
        db.admin.execute(sql, &[]).await.unwrap();
        let Err(VerifierError::Backend(e)) = store.verify(&key).await else {
            panic!("{sql}: verify must fail");
        };
        names_the_key(&*e);
        let Err(StoreError::Backend(e)) = store.get(id).await else {
            panic!("{sql}: get must fail");
        };
        names_the_key(&*e);
        // Listing skips it (with a warning naming it) instead of failing.
        let listed = store.list("sa-bad", Default::default()).await.unwrap();
        assert!(listed.keys.is_empty(), "{sql}");
        let lease = store.lease_credits(id, 1, SystemTime::now()).await;
        if lease_fails {
            let Err(VerifierError::Backend(e)) = lease else {
                panic!("{sql}: the lease must fail");
            };
            names_the_key(&*e);
        }
        db.admin
            .execute(
                "UPDATE tower_api_key_keys SET rate_limits = $1, credits_generation = $2,
                     credits_refill_interval = NULL, credits_refill_amount = NULL,
                     credits_refill_day = NULL",
                &[&limits, &generation],
            )
            .await
            .unwrap();
        assert!(store.verify(&key).await.unwrap().is_some(), "repaired");
    }
    db.admin
        .execute(
            "INSERT INTO tower_api_key_account_limits VALUES ('sa-bad', 'lots')",
            &[],
        )
        .await
        .unwrap();
    let Err(VerifierError::Backend(e)) = store.verify(&key).await else {
        panic!("verify must fail");
    };
    names_the_key(&*e);
    let e = store.account_rate_limits("sa-bad").await.unwrap_err();
    assert!(e.to_string().contains("sa-bad"), "{e}");
    store
        .set_account_rate_limits("sa-bad", vec!["1/1s".parse().unwrap()])
        .await
        .unwrap();
    assert!(store.verify(&key).await.unwrap().is_some());
    store.shutdown().await;
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Shared rate limits
// ---------------------------------------------------------------------------

fn bucket(subject: &str, limit: &str, cost: u64) -> BucketUse {
    BucketUse::new(subject, limit.parse::<RateLimit>().unwrap(), cost)
}

/// A whole second, for exact nanosecond arithmetic.
fn sync_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_syncs_of_two_replicas_add_up_exactly() {
    let Some(db) = TestDb::new("rate_limit_syncs_add_up_exactly").await else {
        return;
    };
    let a = db.store().await;
    let b = db.store().await;
    conformance::rate_sync::syncs_of_two_replicas_add_up_exactly(
        a.rate_limit_sync(),
        b.rate_limit_sync(),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// The buckets in the table, as `<subject> <limit>`.
async fn bucket_rows(db: &TestDb) -> Vec<String> {
    let rows = db
        .admin
        .query(
            "SELECT subject || ' ' || rate_limit FROM tower_api_key_rate_buckets ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_sync_batch_answers_in_order_and_sweeps_idle_buckets() {
    let Some(db) = TestDb::new("a_rate_limit_sync_batch_answers_in_order").await else {
        return;
    };
    let store = db.store().await;
    conformance::rate_sync::a_batch_answers_in_order_and_idle_buckets_are_swept(
        store.rate_limit_sync(),
        || store.rate_limit_sync(),
        || bucket_rows(&db),
    )
    .await;
    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_rate_limit_cost_saturates_the_bucket_without_an_error() {
    let Some(db) = TestDb::new("a_huge_rate_limit_cost").await else {
        return;
    };
    let store = db.store().await;
    conformance::rate_sync::a_huge_cost_saturates_the_bucket(store.rate_limit_sync()).await;
    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_twice_in_a_row() {
    let Some(db) = TestDb::new("migrations_twice_in_a_row").await else {
        return;
    };
    let store = db.builder().connect().await.unwrap();
    let first = store.migrate().await.unwrap();
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(first.current, 10);
    let second = store.migrate().await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.current, 10);
    // The store works on the migrated schema.
    let created = store.create(NewKey::new("sa")).await.unwrap();
    assert!(store.get(created.record.key_id).await.unwrap().is_some());
    let tables: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&db.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 9,
        "tower_api_key_keys, tower_api_key_revoked, tower_api_key_account_limits, \
         tower_api_key_rate_buckets, tower_api_key_changes, tower_api_key_changes_pruned, \
         tower_api_key_notices, tower_api_key_leases and tower_api_key_migrations"
    );
    store.shutdown().await;
    db.drop_schema().await;
}

/// A schema migrated by the previous release (migrations 1 and 2) with a key
/// in it moves on; the key keeps working, without limits or credits until
/// it is given some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_the_previous_release_migrates_and_its_keys_keep_working() {
    let Some(db) = TestDb::new("a_schema_of_the_previous_release_migrates").await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE tower_api_key_migrations (
                 version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    for m in &tower_api_key_postgres::migrations()[..2] {
        db.admin.batch_execute(m.sql()).await.unwrap();
        db.admin
            .execute(
                "INSERT INTO tower_api_key_migrations (version, name) VALUES ($1, $2)",
                &[&(m.version() as i32), &m.name()],
            )
            .await
            .unwrap();
    }
    let store = db.builder().connect().await.unwrap();
    // The previous release's create: a row without the new columns.
    let generated = store.format().generate().unwrap();
    let old = store.format().parse(generated.expose_secret()).unwrap();
    let hash = tower_api_key::hash::KeyHasher::default().hash(&old);
    db.admin
        .execute(
            "INSERT INTO tower_api_key_keys (key_id, service_account_id, hash, hash_scheme,
                 created_at, hint)
             VALUES ($1, 'sa-old', $2, 'sha256', now(), 'tak_…')",
            &[&old.id().as_str(), &hash.digest().as_slice()],
        )
        .await
        .unwrap();
    let report = store.migrate().await.unwrap();
    assert_eq!(report.applied, vec![3, 4, 5, 6, 7, 8, 9, 10]);
    let record = store.verify(&old).await.unwrap().unwrap();
    assert_eq!(&*record.service_account_id, "sa-old");
    assert!(record.rate_limits.is_empty());
    assert_eq!(record.credits, None);
    assert_eq!(
        store
            .lease_credits(old.id(), 1, SystemTime::now())
            .await
            .unwrap(),
        None
    );
    store
        .update(
            old.id(),
            KeyUpdate::default().with_credits(Some(Credits::new(3).unwrap())),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let lease = store
        .lease_credits(old.id(), 1, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.granted, lease.remaining), (1, 2));
    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_by_replicas_at_once() {
    // Several replicas starting at once on an empty schema: one migrates,
    // the others wait for it and find nothing to do.
    let Some(db) = TestDb::new("migrations_run_by_replicas_at_once").await else {
        return;
    };
    let replicas = futures_util::future::join_all((0..4).map(|_| async {
        let store = db.builder().connect().await.unwrap();
        let report = store.migrate().await.unwrap();
        store.shutdown().await;
        report
    }))
    .await;
    let applied: Vec<u32> = replicas.iter().flat_map(|r| r.applied.clone()).collect();
    assert_eq!(applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "{replicas:?}");
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_channel_works_and_rows_hold_no_secret() {
    let Some(db) = TestDb::new("the_default_channel_works_and_rows_hold_no_secret").await else {
        return;
    };
    // The default channel here, to cover it (the suite's stores each have one
    // of their own).
    let store = PgKeyStoreBuilder::new(db.config.clone())
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.channel(), "tower_api_key_invalidate");
    let mut announced = Watch::on(&store);
    let reissued = store.create(NewKey::new("sa-ops")).await.unwrap();
    let id = reissued.record.key_id;
    store
        .reissue(id, Duration::from_secs(60), None)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .verify(&presented(&store, &reissued))
        .await
        .unwrap()
        .is_some());
    assert!(store.revoke(id, None).await.unwrap());
    assert!(announced
        .drain()
        .contains(&Invalidation::key_of(id, "sa-ops")));

    // At rest: no secret, nothing but hashes.
    let created = store.create(NewKey::new("sa-rest")).await.unwrap();
    let rows = db
        .admin
        .query("SELECT t::text FROM tower_api_key_keys t", &[])
        .await
        .unwrap();
    let secret = created.key.expose_secret();
    let secret_part = &secret[secret.len() - 38..secret.len() - 6];
    for row in rows {
        let text: String = row.get(0);
        // The row is not printed: it would hold the secret.
        assert!(!text.contains(secret_part), "a secret is stored");
    }
    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_one_instance_reaches_the_other_within_a_second() {
    let Some(db) = TestDb::new("revoke_on_one_instance_reaches_the_other_within_a_second").await
    else {
        return;
    };
    let a = db.store().await;
    let b = db.store().await;
    let (cache_a, cache_b) = (cache(&a), cache(&b));
    let mut seen_b = Watch::on(&b);

    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let key = presented(&a, &created);
    let id = created.record.key_id;
    for cache in [&cache_a, &cache_b] {
        assert_eq!(
            cache.lookup_with_source(&key).await.unwrap().1,
            Source::Verifier
        );
        assert_eq!(
            cache.lookup_with_source(&key).await.unwrap().1,
            Source::Cache
        );
    }

    let revoked_at = Instant::now();
    assert!(a.revoke(id, None).await.unwrap());
    // The revoking replica: refused as soon as revoke returns.
    assert!(is_unknown(cache_a.lookup(&key).await));
    // The other replica: as soon as the notification arrives.
    let what = seen_b.until_invalidated(id, NOTIFY_WITHIN).await;
    assert_eq!(
        what,
        Invalidation::key_of(id, "sa-1"),
        "pushed with the key's account, not a flush"
    );
    assert!(is_unknown(cache_b.lookup(&key).await));
    assert!(revoked_at.elapsed() < NOTIFY_WITHIN);

    // Updates travel the same way: the other cache re-reads the key.
    let scoped = a.create(NewKey::new("sa-1")).await.unwrap();
    let scoped_key = presented(&a, &scoped);
    assert!(cache_b
        .lookup(&scoped_key)
        .await
        .unwrap()
        .scopes()
        .is_empty());
    let scopes = ScopeSet::new(["only.this"]).unwrap();
    a.update(
        scoped.record.key_id,
        KeyUpdate::default().with_scopes(scopes.clone()),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let what = seen_b
        .until_invalidated(scoped.record.key_id, NOTIFY_WITHIN)
        .await;
    assert_eq!(what, Invalidation::key_of(scoped.record.key_id, "sa-1"));
    assert_eq!(cache_b.lookup(&scoped_key).await.unwrap().scopes(), &scopes);

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_key_id_payload_from_an_older_version_still_invalidates_that_key_alone() {
    if listen_unavailable() {
        return;
    }
    let Some(db) =
        TestDb::new("a_bare_key_id_payload_from_an_older_version_still_invalidates").await
    else {
        return;
    };
    let a = db.store().await;
    let cache_a = cache(&a);
    let mut seen_a = Watch::on(&a);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    let key = presented(&a, &created);
    cache_a.lookup(&key).await.unwrap();
    assert_eq!(
        cache_a.lookup_with_source(&key).await.unwrap().1,
        Source::Cache
    );

    // What a replica running an older version sends.
    db.admin
        .execute("SELECT pg_notify($1, $2)", &[&db.channel(), &id.as_str()])
        .await
        .unwrap();
    let what = seen_a.until_invalidated(id, NOTIFY_WITHIN).await;
    assert_eq!(what, Invalidation::Key(id), "that key, not a flush");
    assert_eq!(
        cache_a.lookup_with_source(&key).await.unwrap().1,
        Source::Verifier
    );

    a.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_an_account_too_long_for_a_payload_is_still_revoked_everywhere() {
    if listen_unavailable() {
        return;
    }
    let Some(db) = TestDb::new("a_key_of_an_account_too_long_for_a_payload").await else {
        return;
    };
    let a = db.store().await;
    // LISTEN alone: the change-log poll would announce the key with its account.
    let b = db
        .builder()
        .change_feed(ChangeFeed::Listen)
        .connect()
        .await
        .unwrap();
    let cache_b = cache(&b);
    let mut seen_b = Watch::on(&b);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    // PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more: the revoke
    // must not fail on it, and is announced by key id alone.
    let long = "a".repeat(8000);
    db.admin
        .execute(
            "UPDATE tower_api_key_keys SET service_account_id = $1 WHERE key_id = $2",
            &[&long, &id.as_str()],
        )
        .await
        .unwrap();
    let key = presented(&a, &created);
    assert_eq!(
        cache_b.lookup(&key).await.unwrap().service_account_id(),
        long
    );

    assert!(a.revoke(id, None).await.unwrap());
    let what = seen_b.until_invalidated(id, NOTIFY_WITHIN).await;
    assert_eq!(what, Invalidation::Key(id));
    assert!(is_unknown(cache_b.lookup(&key).await));

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reissue_with_grace_across_instances() {
    let Some(db) = TestDb::new("reissue_with_grace_across_instances").await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let a = db.builder().clock(clock.clone()).connect().await.unwrap();
    a.migrate().await.unwrap();
    let b = db.builder().clock(clock.clone()).connect().await.unwrap();
    let cache_b = CachedVerifier::new(
        b.clone(),
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .clock(clock.clone())
            .build(),
    );
    let mut seen_b = Watch::on(&b);

    let original = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = original.record.key_id;
    let old_key = presented(&a, &original);
    assert_eq!(cache_b.lookup(&old_key).await.unwrap().expires_at(), None);

    // Reissue with one minute of grace on A.
    let grace = Duration::from_secs(60);
    let deadline_floor = clock.now() + grace - Duration::from_micros(1);
    let reissued = a.reissue(id, grace, None).await.unwrap().unwrap();
    let new_key = presented(&a, &reissued);
    let what = seen_b.until_invalidated(id, NOTIFY_WITHIN).await;
    assert_eq!(what, Invalidation::key_of(id, "sa-1"));
    // B re-reads the old secret: it works, but only until the deadline.
    let old_caller = cache_b.lookup(&old_key).await.unwrap();
    let deadline = old_caller.expires_at().expect("grace deadline");
    assert!(deadline >= deadline_floor && deadline <= clock.now() + grace);
    assert_eq!(cache_b.lookup(&new_key).await.unwrap().expires_at(), None);

    // Past the deadline the old secret is refused on B, the new one is not.
    clock.advance(grace + Duration::from_secs(1));
    assert!(matches!(
        cache_b.lookup(&old_key).await,
        Err(LookupError::Expired)
    ));
    assert_eq!(b.verify(&old_key).await.unwrap(), None);
    assert!(cache_b.lookup(&new_key).await.is_ok());

    // A second reissue without grace on A: only the newest secret works on B.
    let newest = a.reissue(id, Duration::ZERO, None).await.unwrap().unwrap();
    seen_b.until_invalidated(id, NOTIFY_WITHIN).await;
    assert!(is_unknown(cache_b.lookup(&new_key).await));
    assert!(cache_b.lookup(&presented(&a, &newest)).await.is_ok());

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_killed_and_revoke_meanwhile_still_refused_after_reconnect() {
    if listen_unavailable() {
        return;
    }
    let Some(db) =
        TestDb::new("listener_killed_and_revoke_meanwhile_still_refused_after_reconnect").await
    else {
        return;
    };
    let a = db.store().await;
    // LISTEN alone: no poll covers for the lost notification.
    let b = db
        .builder()
        .change_feed(ChangeFeed::Listen)
        .connect()
        .await
        .unwrap();
    let cache_b = cache(&b);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let key = presented(&a, &created);
    cache_b.lookup(&key).await.unwrap();
    assert_eq!(
        cache_b.lookup_with_source(&key).await.unwrap().1,
        Source::Cache
    );

    let pid = backend_pid(&listening(&b, 1).await);
    let killed: bool = db
        .admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    assert!(a.revoke(created.record.key_id, None).await.unwrap());

    // Whether B heard the NOTIFY before the kill or flushed after
    // reconnecting, it refuses the key once it listens again.
    let status = listening(&b, 2).await;
    assert_ne!(backend_pid(&status), pid);
    assert!(is_unknown(cache_b.lookup(&key).await));

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_notification_is_covered_by_the_flush_after_reconnect() {
    if listen_unavailable() {
        return;
    }
    // The deterministic version of the test above: B's listener is killed
    // with pg_terminate_backend and cannot reconnect (its proxy refuses new
    // connections) until after the revoke has committed, so B surely missed
    // the NOTIFY.
    let Some(db) =
        TestDb::new("a_missed_notification_is_covered_by_the_flush_after_reconnect").await
    else {
        return;
    };
    let proxy = Proxy::start(db.upstream()).await;
    let a = db.store().await;
    let b = db.builder_via(&proxy).connect().await.unwrap();
    let cache_b = cache(&b);
    let mut seen_b = Watch::on(&b);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    let key = presented(&a, &created);
    cache_b.lookup(&key).await.unwrap();
    assert_eq!(
        cache_b.lookup_with_source(&key).await.unwrap().1,
        Source::Cache
    );
    seen_b.drain();

    // Refuse reconnections (without cutting B's open connections), then kill
    // B's LISTEN connection in the server.
    let pid = backend_pid(&listening(&b, 1).await);
    proxy.refuse_new().await;
    db.admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // B notices and fails at least once to reconnect: it is not listening.
    let mut status = b.listener_status();
    timeout(
        RECONNECT_WITHIN,
        status.wait_for(|s| matches!(s, ListenerStatus::Connecting { failures } if *failures >= 1)),
    )
    .await
    .expect("B's listener notices the kill")
    .unwrap();

    assert!(a.revoke(id, None).await.unwrap());
    // Still cached on B: nothing told it.
    assert_eq!(
        cache_b.lookup_with_source(&key).await.unwrap().1,
        Source::Cache
    );

    proxy.start_again().await;
    listening(&b, 2).await;
    let seen = seen_b.drain();
    assert!(seen.contains(&Invalidation::All), "{seen:?}");
    assert!(
        !seen.iter().any(|what| what.key_id() == Some(id)),
        "the NOTIFY was missed: {seen:?}"
    );
    refused_once_the_pool_recovers(&cache_b, &key).await;

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

/// How long a listener may take to listen again once the database answers:
/// far below the 30 s backoff the two tests below configure.
const BACK_WITHIN: Duration = Duration::from_secs(2);

/// The database "restarts" under B while A is direct: B's listener is lost
/// and fails to reconnect, so it waits out a 30 s backoff; then the
/// database comes back and `back` (a store call, or nothing) runs. B must
/// listen again within `BACK_WITHIN`, flush its cache, and hear A's next
/// revocation.
async fn listener_comes_back_after_a_restart(
    test: &str,
    probe_interval: Duration,
    back: impl AsyncFnOnce(&PgKeyStore, KeyId),
) {
    let Some(db) = TestDb::new(test).await else {
        return;
    };
    let proxy = Proxy::start(db.upstream()).await;
    let a = db.store().await;
    let b = db
        .builder_via(&proxy)
        .timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_secs(30), Duration::from_secs(30))
        .reconnect_probe_interval(probe_interval)
        .connect()
        .await
        .unwrap();
    let cache_b = cache(&b);
    let mut seen_b = Watch::on(&b);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    let key = presented(&a, &created);
    cache_b.lookup(&key).await.unwrap();

    // The restart: B's connections are cut and it cannot reconnect, so its
    // listener is now in its backoff.
    proxy.stop().await;
    let mut status = b.listener_status();
    timeout(
        RECONNECT_WITHIN,
        status.wait_for(|s| matches!(s, ListenerStatus::Connecting { failures } if *failures >= 1)),
    )
    .await
    .expect("B's listener notices the restart")
    .unwrap();
    seen_b.drain();

    proxy.start_again().await;
    back(&b, id).await;
    let listening_again = timeout(
        BACK_WITHIN,
        status.wait_for(|s| matches!(s, ListenerStatus::Listening { connections: 2, .. })),
    )
    .await
    .is_ok();
    assert!(
        listening_again,
        "B's listener still not listening {BACK_WITHIN:?} after the database came back: {:?}",
        *status.borrow()
    );
    let seen = seen_b.drain();
    assert!(seen.contains(&Invalidation::All), "flushed: {seen:?}");

    // A revocation after the restore reaches B's cache through the NOTIFY.
    cache_b.lookup(&key).await.unwrap();
    assert_eq!(
        cache_b.lookup_with_source(&key).await.unwrap().1,
        Source::Cache
    );
    assert!(a.revoke(id, None).await.unwrap());
    assert_eq!(
        seen_b.until_invalidated(id, NOTIFY_WITHIN).await,
        Invalidation::key_of(id, "sa-1")
    );
    assert!(is_unknown(cache_b.lookup(&key).await));

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_one_successful_store_call_brings_the_listener_back_at_once() {
    if listen_unavailable() {
        return;
    }
    // No probe within the test's time: only the store call can wake it.
    listener_comes_back_after_a_restart(
        "after_a_restart_one_successful_store_call_brings_the_listener_back",
        Duration::from_secs(60),
        async |b: &PgKeyStore, id: KeyId| {
            // The pool's connections were cut too; the first call may meet
            // one of them, the next opens a fresh one.
            let mut answered = false;
            for _ in 0..3 {
                if b.get(id).await.is_ok() {
                    answered = true;
                    break;
                }
            }
            assert!(answered, "B's pool reaches the database again");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_listener_is_back_within_the_probe_interval_without_any_store_call() {
    if listen_unavailable() {
        return;
    }
    listener_comes_back_after_a_restart(
        "after_a_restart_the_listener_is_back_within_the_probe_interval",
        Duration::from_millis(100),
        async |_: &PgKeyStore, _: KeyId| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_listener_is_found_by_its_health_check() {
    if listen_unavailable() {
        return;
    }
    // The network between B and the database goes silent (no FIN, no RST):
    // only the health check can tell. A revoke meanwhile is never heard, and
    // the flush after reconnecting covers it.
    let Some(db) = TestDb::new("a_silently_dead_listener_is_found_by_its_health_check").await
    else {
        return;
    };
    let proxy = Proxy::start(db.upstream()).await;
    let a = db.store().await;
    let b = db
        .builder_via(&proxy)
        .timeout(Duration::from_secs(1))
        .health_check_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let cache_b = cache(&b);
    let mut seen_b = Watch::on(&b);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    let key = presented(&a, &created);
    cache_b.lookup(&key).await.unwrap();
    // Health checks pass while the network works.
    let mut status = b.listener_status();
    assert!(
        timeout(Duration::from_millis(400), status.changed())
            .await
            .is_err(),
        "the listener stays connected: {:?}",
        *status.borrow()
    );
    seen_b.drain();

    proxy.freeze(true);
    assert!(a.revoke(id, None).await.unwrap());
    timeout(RECONNECT_WITHIN, status.wait_for(|s| !s.is_listening()))
        .await
        .expect("the health check finds the dead connection")
        .unwrap();
    proxy.freeze(false);
    // The frozen connections (the pool's too) are dead for good: close them.
    proxy.cut();
    listening(&b, 2).await;
    let seen = seen_b.drain();
    assert!(seen.contains(&Invalidation::All), "{seen:?}");
    assert!(
        !seen.iter().any(|what| what.key_id() == Some(id)),
        "the NOTIFY was lost: {seen:?}"
    );
    refused_once_the_pool_recovers(&cache_b, &key).await;

    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_usage_is_one_forward_only_statement() {
    let Some(db) = TestDb::new("record_usage_is_one_forward_only_statement").await else {
        return;
    };
    let store = db.store().await;
    let k1 = store.create(NewKey::new("sa")).await.unwrap().record.key_id;
    let k2 = store.create(NewKey::new("sa")).await.unwrap().record.key_id;
    let k3 = store.create(NewKey::new("sa")).await.unwrap().record.key_id;
    // Count UPDATE statements on the key table, in the database itself.
    db.admin
        .batch_execute(
            "CREATE TABLE usage_statements (n integer NOT NULL);
             INSERT INTO usage_statements VALUES (0);
             CREATE FUNCTION count_usage_statement() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN UPDATE usage_statements SET n = n + 1; RETURN NULL; END $$;
             CREATE TRIGGER count_usage_statement AFTER UPDATE ON tower_api_key_keys
                 FOR EACH STATEMENT EXECUTE FUNCTION count_usage_statement();",
        )
        .await
        .unwrap();
    let statements = || async {
        db.admin
            .query_one("SELECT n FROM usage_statements", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let used = |id: KeyId| {
        let store = store.clone();
        async move { store.get(id).await.unwrap().unwrap().last_used_at }
    };

    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (t1, t2, t3) = (
        t0 + Duration::from_secs(1),
        t0 + Duration::from_secs(2),
        t0 + Duration::from_secs(3),
    );
    // A batch of several keys, a key twice, and a revoked/unknown id: one statement.
    let unknown = KeyId::random().unwrap();
    store
        .record_usage(&[(k1, t1), (k2, t2), (k1, t3), (unknown, t3), (k1, t0)])
        .await
        .unwrap();
    assert_eq!(statements().await, 1);
    assert_eq!(used(k1).await, Some(t3), "the newest of the batch");
    assert_eq!(used(k2).await, Some(t2));
    assert_eq!(used(k3).await, None);

    // A late batch never moves a time back.
    store.record_usage(&[(k1, t1), (k2, t0)]).await.unwrap();
    assert_eq!(statements().await, 2);
    assert_eq!(used(k1).await, Some(t3));
    assert_eq!(used(k2).await, Some(t2));

    // A newer one moves it forward.
    let t4 = t3 + Duration::from_millis(1500);
    store.record_usage(&[(k2, t4), (k3, t1)]).await.unwrap();
    assert_eq!(statements().await, 3);
    assert_eq!(used(k2).await, Some(t4));
    assert_eq!(used(k3).await, Some(t1));

    // Nothing to record, nothing sent. A big batch is still one statement.
    store.record_usage(&[]).await.unwrap();
    assert_eq!(statements().await, 3);
    let many: Vec<(KeyId, SystemTime)> = (0..5000)
        .map(|i| ([k1, k2, k3][i % 3], t4 + Duration::from_millis(i as u64)))
        .collect();
    store.record_usage(&many).await.unwrap();
    assert_eq!(statements().await, 4);
    assert_eq!(
        used(k3).await,
        Some(t4 + Duration::from_millis(4997)),
        "4997 % 3 == 2"
    );

    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_misses_are_unavailable_and_cached_keys_still_pass() {
    let Some(db) =
        TestDb::new("database_down_misses_are_unavailable_and_cached_keys_still_pass").await
    else {
        return;
    };
    let direct = db.store().await;
    let proxy = Proxy::start(db.upstream()).await;
    let store = db
        .builder_via(&proxy)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let cache = cache(&store);

    let cached = direct.create(NewKey::new("sa-1")).await.unwrap();
    let cached_key = presented(&direct, &cached);
    let uncached = direct.create(NewKey::new("sa-1")).await.unwrap();
    let uncached_key = presented(&direct, &uncached);
    let stranger = direct.format().generate().unwrap();
    let stranger_key = key_text(&direct, stranger.expose_secret());
    cache.lookup(&cached_key).await.unwrap();

    proxy.stop().await;

    // Cached: still passes, from the cache.
    let (caller, source) = cache.lookup_with_source(&cached_key).await.unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(caller.key_id(), cached.record.key_id);
    // A miss: 503, for a real key and for an unknown one alike, never 401.
    assert!(is_unavailable(cache.lookup(&uncached_key).await));
    assert!(is_unavailable(cache.lookup(&stranger_key).await));
    assert!(matches!(
        store.verify(&uncached_key).await,
        Err(VerifierError::Backend(_))
    ));
    // And never cached as unknown: asking again asks the database again.
    assert!(is_unavailable(cache.lookup(&stranger_key).await));
    assert!(matches!(
        store.create(NewKey::new("sa-1")).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.revoke(cached.record.key_id, None).await,
        Err(StoreError::Backend(_))
    ));

    // The database comes back: misses are answered, the listener is back,
    // and (having flushed) the cache re-reads everything.
    proxy.start_again().await;
    listening(&store, 2).await;
    assert_eq!(
        cache.lookup_with_source(&uncached_key).await.unwrap().1,
        Source::Verifier
    );
    assert!(is_unknown(cache.lookup(&stranger_key).await));
    assert_eq!(
        cache.lookup_with_source(&cached_key).await.unwrap().1,
        Source::Verifier
    );

    // A store that cannot reach its database at start says so.
    proxy.stop().await;
    let err = PgKeyStoreBuilder::new(db.config_via(&proxy))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");

    store.shutdown().await;
    direct.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_middleware_an_outage_is_503_and_uses_are_written_behind() {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use http::{Request, StatusCode};
    use tower::ServiceExt as _;
    use tower_api_key::usage::UsageRecorder;
    use tower_api_key::{Authenticator, Caller};

    let Some(db) =
        TestDb::new("through_the_middleware_an_outage_is_503_and_uses_are_written_behind").await
    else {
        return;
    };
    let direct = db.store().await;
    let proxy = Proxy::start(db.upstream()).await;
    let store = db
        .builder_via(&proxy)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let usage = UsageRecorder::new(store.clone());
    let auth = Authenticator::builder(store.clone())
        .usage_recorder(usage.clone())
        .build();
    let app = Router::new().route(
        "/whoami",
        get(|caller: Caller| async move { caller.key_id().to_string() })
            .route_layer(auth.any_valid_key()),
    );
    let status = |key: String| {
        let app = app.clone();
        async move {
            app.oneshot(
                Request::get("/whoami")
                    .header("authorization", format!("Api-Key {key}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
        }
    };
    let cached = direct.create(NewKey::new("sa-1")).await.unwrap();
    let uncached = direct.create(NewKey::new("sa-1")).await.unwrap();
    let stranger = direct.format().generate().unwrap();
    let cached_text = cached.key.expose_secret().to_owned();
    let uncached_text = uncached.key.expose_secret().to_owned();
    let stranger_text = stranger.expose_secret().to_owned();

    assert_eq!(status(cached_text.clone()).await, StatusCode::OK);
    assert_eq!(usage.flush().await.unwrap(), 1);
    let used = direct.get(cached.record.key_id).await.unwrap().unwrap();
    assert!(used.last_used_at.is_some(), "written behind: {used:?}");

    proxy.stop().await;
    assert_eq!(status(cached_text.clone()).await, StatusCode::OK);
    assert_eq!(
        status(uncached_text.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(stranger_text.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The use noted during the outage cannot be written yet; it is kept.
    assert!(usage.flush().await.is_err());

    proxy.start_again().await;
    listening(&store, 2).await;
    assert_eq!(status(uncached_text).await, StatusCode::OK);
    assert_eq!(status(stranger_text).await, StatusCode::UNAUTHORIZED);
    assert!(usage.flush().await.unwrap() >= 1);

    // The authenticator takes the store's key format (here a custom prefix).
    let custom = db
        .builder()
        .format(tower_api_key::KeyFormat::new("acme").unwrap())
        .connect()
        .await
        .unwrap();
    assert_eq!(custom.key_format(), Some(custom.format()));
    let acme_key = custom.create(NewKey::new("sa-acme")).await.unwrap();
    assert!(acme_key.key.expose_secret().starts_with("acme_"));
    let app = Router::new().route(
        "/whoami",
        get(|caller: Caller| async move { caller.key_id().to_string() }).route_layer(
            Authenticator::verifier_builder(custom.clone())
                .build()
                .any_valid_key(),
        ),
    );
    let reply = app
        .oneshot(
            Request::get("/whoami")
                .header(
                    "authorization",
                    format!("Api-Key {}", acme_key.key.expose_secret()),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    custom.shutdown().await;

    store.shutdown().await;
    direct.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_stop_the_listener() {
    let Some(db) = TestDb::new("shutdown_and_drop_stop_the_listener").await else {
        return;
    };
    let store = db.store().await;
    let mut status = store.listener_status();
    store.shutdown().await;
    assert_eq!(*status.borrow_and_update(), ListenerStatus::Stopped);
    assert!(store.create(NewKey::new("sa")).await.is_err());
    let key = store.format().generate().unwrap();
    assert!(store
        .verify(&key_text(&store, key.expose_secret()))
        .await
        .is_err());

    // Dropping every clone stops it too.
    let store = db.store().await;
    let clone = store.clone();
    let mut status = store.listener_status();
    drop(store);
    assert!(
        status.borrow_and_update().is_listening(),
        "a clone is alive"
    );
    drop(clone);
    timeout(
        Duration::from_secs(5),
        status.wait_for(|s| *s == ListenerStatus::Stopped),
    )
    .await
    .expect("the listener stops when the store is dropped")
    .unwrap();

    // A bad channel name is refused before connecting.
    assert!(matches!(
        db.builder().channel("Bad-Name").connect().await,
        Err(StoreError::Config(ConfigError::ChannelName))
    ));
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Two replicas through the middleware: shared rate limits and credits
// ---------------------------------------------------------------------------

/// A replica: an authenticator over its own store, on the test's clock,
/// syncing rate limits through PostgreSQL only when the test says so.
fn limited_replica(
    store: &PgKeyStore,
    clock: &Arc<ManualClock>,
) -> (tower_api_key::Authenticator, axum::Router) {
    use axum::routing::get;
    use tower_api_key::limits::LimitSettings;

    let auth = tower_api_key::Authenticator::builder(store.clone())
        .clock(clock.clone())
        .limit_settings(
            LimitSettings::builder()
                // The background sync runs once at start, then the test drives it.
                .shared(store.rate_limit_sync(), Duration::from_secs(3600))
                .build(),
        )
        .build();
    let app = axum::Router::new().route(
        "/",
        get(|| async { "ok" }).route_layer(auth.any_valid_key()),
    );
    (auth, app)
}

async fn admitted(app: &axum::Router, key: &str) -> bool {
    use tower::ServiceExt as _;
    let request = http::Request::get("/")
        .header("authorization", format!("Api-Key {key}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let status = app.clone().oneshot(request).await.unwrap().status();
    assert!(
        status == http::StatusCode::OK || status == http::StatusCode::TOO_MANY_REQUESTS,
        "{status}"
    );
    status == http::StatusCode::OK
}

/// Issue 14: the fleet-wide overshoot of a shared rate limit is bounded by
/// the burst of the replicas that start full plus one sync interval's worth
/// at the rate per replica: (replicas − 1) × burst + replicas × rate ×
/// interval. Measured with two replicas syncing through PostgreSQL every
/// 100 ms of the test's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_a_rate_limit_through_postgres_overshoot_within_the_bound() {
    let Some(db) = TestDb::new("two_replicas_sharing_a_rate_limit").await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let (a, b) = (db.store().await, db.store().await);
    let limit: RateLimit = "10/1s".parse().unwrap();
    let created = a
        .create(NewKey::new("sa-shared").with_rate_limits(vec![limit]))
        .await
        .unwrap();
    let key = created.key.expose_secret().to_owned();
    let replicas = [limited_replica(&a, &clock), limited_replica(&b, &clock)];

    let interval_ms = 100u64;
    let steps = 50u64;
    let (mut total, mut overshoot) = (0u64, 0u64);
    for step in 0..steps {
        for (_, app) in &replicas {
            for _ in 0..20 {
                total += u64::from(admitted(app, &key).await);
            }
        }
        // From a full bucket at t = 0, one limiter admits 10 + 10 × t by t.
        let allowed = 10 + 10 * step * interval_ms / 1000;
        overshoot = overshoot.max(total.saturating_sub(allowed));
        for (auth, _) in &replicas {
            assert!(auth.sync_rate_limits().await, "the sync reached PostgreSQL");
        }
        clock.advance(Duration::from_millis(interval_ms));
    }
    let allowed = 10 + 10 * (steps - 1) * interval_ms / 1000;
    let bound = 10 + 2 * 10 * interval_ms / 1000;
    eprintln!(
        "PostgreSQL, two replicas, 10/1s, sync every {interval_ms} ms: {total} admitted in \
         {} s ({allowed} allowed), largest overshoot {overshoot}, bound {bound}",
        steps * interval_ms / 1000
    );
    assert!(
        overshoot <= bound,
        "overshoot {overshoot} over the bound {bound}"
    );
    assert!(total + 2 >= allowed, "{total} admitted, {allowed} allowed");
    db.drop_schema().await;
}

/// Issue 14: replicas racing for a key's last credits never admit more
/// requests than it had; once each has spent what it leased, together they
/// admitted exactly that many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_the_last_credits_admit_exactly_the_credits() {
    let Some(db) = TestDb::new("two_replicas_racing_for_the_last_credits").await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let (a, b) = (db.store().await, db.store().await);
    let created = a
        .create(NewKey::new("sa-metered").with_credits(Credits::new(50).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    let key = created.key.expose_secret().to_owned();
    let replicas = [limited_replica(&a, &clock), limited_replica(&b, &clock)];

    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let app = replicas[i % 2].1.clone();
            let key = key.clone();
            tokio::spawn(async move { admitted(&app, &key).await })
        })
        .collect();
    let mut total = 0u64;
    for task in tasks {
        total += u64::from(task.await.unwrap());
    }
    assert!(total <= 50, "{total} requests admitted on 50 credits");
    // What a replica still holds is spent on its next requests; an
    // exhausted one asks the store again a second later.
    clock.advance(Duration::from_secs(2));
    for (_, app) in &replicas {
        while admitted(app, &key).await {
            total += 1;
            assert!(total <= 50, "{total} requests admitted on 50 credits");
        }
    }
    assert_eq!(total, 50);
    let left = a.get(id).await.unwrap().unwrap().record.credits.unwrap();
    assert_eq!(left.remaining(), 0);
    db.drop_schema().await;
}

/// One corrupted row blocks nothing but itself (issue 20, point 7): its
/// account's listing shows the other keys, through every page; export skips
/// it and still ends; `unreadable` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_row_does_not_block_listing_nor_export() {
    let Some(db) = TestDb::new("corrupted_row").await else {
        return;
    };
    let store = db.store().await;
    let ids = conformance::keys_to_corrupt(&store).await;
    let bad = [ids[2], ids[3]];
    db.admin
        .execute(
            "UPDATE tower_api_key_keys SET scopes = ARRAY['not a scope!'] WHERE key_id = $1",
            &[&bad[0].as_str()],
        )
        .await
        .unwrap();
    db.admin
        .execute(
            "UPDATE tower_api_key_keys SET rate_limits = '5/0s' WHERE key_id = $1",
            &[&bad[1].as_str()],
        )
        .await
        .unwrap();
    conformance::only_unreadable_rows_are_skipped(&store, &ids, &bad).await;
    store.shutdown().await;
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// The lifecycle across replicas and restarts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_and_a_lease_survive_a_new_store_and_go_with_the_key() {
    let Some(db) = TestDb::new("a_notice_and_a_lease_survive_a_new_store").await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(conformance::start_time()));
    let store = db.builder().clock(clock.clone()).connect().await.unwrap();
    store.migrate().await.unwrap();
    let reopen = |store: PgKeyStore| async {
        store.shutdown().await;
        drop(store);
        db.builder().clock(clock.clone()).connect().await.unwrap()
    };
    let (again, _) =
        conformance::lifecycle::a_notice_and_a_lease_outlive_their_store(store, &clock, reopen)
            .await;
    // The notice went with the key.
    let left: i64 = db
        .admin
        .query_one(
            &format!("SELECT count(*) FROM {}.tower_api_key_notices", db.schema),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    again.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_a_notice_once_hold_a_lease_once_and_never_retire_a_used_key() {
    let Some(db) = TestDb::new("two_replicas_lifecycle").await else {
        return;
    };
    let a = db.store().await;
    let b = db.store().await;
    let stores = [a.clone(), b.clone()];
    conformance::lifecycle::concurrent_record_notice_lets_exactly_one_through(&stores).await;
    conformance::lifecycle::concurrent_leases_let_exactly_one_holder_hold(&stores).await;
    conformance::lifecycle::retire_unused_racing_record_usage_never_retires_a_newer_use(&stores)
        .await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_reads_the_expiry_index() {
    let Some(db) = TestDb::new("expiring_reads_the_expiry_index").await else {
        return;
    };
    let store = db.store().await;
    drop(store);
    // The planner's choice on an empty table says little: many rows that
    // never expire, a few that do, then the statement `expiring` runs.
    let sql = format!(
        "SET search_path TO {schema};
         INSERT INTO tower_api_key_keys (key_id, service_account_id, hash, hash_scheme,
                                         created_at, hint, expires_at)
         SELECT lpad(i::text, 16, '0'), 'sa', sha256(i::text::bytea), 'sha256',
                timestamptz '2026-01-01', 'tak_…0000',
                CASE WHEN i % 1000 = 0 THEN timestamptz '2026-02-01' + i * interval '1 s' END
           FROM generate_series(1, 20000) AS i;
         ANALYZE tower_api_key_keys;",
        schema = db.schema
    );
    db.admin.batch_execute(&sql).await.unwrap();
    let plan: Vec<String> = db
        .admin
        .query(
            &format!(
                "EXPLAIN SELECT key_id FROM {}.tower_api_key_keys
                  WHERE expires_at >= timestamptz '2026-02-01'
                    AND expires_at < timestamptz '2026-02-02'
                    AND (NULL::text IS NULL OR key_id > NULL::text)
                  ORDER BY key_id LIMIT 1000",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("tower_api_key_keys_expires_at_idx"),
        "not from the index:\n{plan}"
    );
    db.drop_schema().await;
}

/// Revoke, import and a revocation's import of one key racing on two
/// replicas (the kit's `revocation` rounds): never a deadlock, never the
/// key back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_racing_import_revoked_of_the_same_key_both_answer() {
    let Some(db) = TestDb::new("revoke_vs_import_revoked").await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    conformance::revocation::a_revoke_racing_the_import_of_its_revocation_both_answer(&a, &b, 400)
        .await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_racing_the_keys_revoke_never_brings_it_back() {
    let Some(db) = TestDb::new("import_vs_revoke").await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    conformance::revocation::an_import_racing_the_keys_revoke_never_brings_it_back(&a, &b, 100)
        .await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_racing_its_revocations_import_never_holds_the_key() {
    let Some(db) = TestDb::new("import_vs_import_revoked").await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    conformance::revocation::an_import_racing_its_revocations_import_never_holds_the_key(
        &a, &b, 100,
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_schema().await;
}
