//! The SQLite store on temporary files.
//!
//! The shared contract is covered here as a smoke test (the conformance
//! suite runs it in full); the rest is what only SQLite has: persistence
//! across a reopen, migrations, several stores (as several processes would)
//! on one file, the change watcher, failing closed, the write lock.
//!
//! "Another process" is a second `SqliteKeyStore` on the same file: it has
//! connections of its own, exactly as another process would, and one test
//! runs a real second process. Nothing here sleeps to hope for timing:
//! waits are on the store's invalidation bus, each bounded by `timeout`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{header::AUTHORIZATION, Request, Response, StatusCode};
use tokio::sync::Notify;
use tokio::time::timeout;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::cache::{CacheConfig, CachedVerifier, LookupError, Source};
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::limits::Credits;
use tower_api_key::store::{
    ConfigError, CreatedKey, KeyUpdate, LifecycleStore, ListRequest, NewKey, StoreError,
    MAX_EXPORT_PAGE,
};
use tower_api_key::CreditLedger;
use tower_api_key::{Authenticator, KeyStore, ScopeSet};
use tower_api_key::{Invalidation, Invalidations};
use tower_api_key::{KeyId, KeyRecord, PresentedKey};
use tower_api_key::{Verifier, VerifierError};
use tower_api_key_sqlite::{SqliteKeyStore, SqliteKeyStoreBuilder};

mod common;
use common::logs::Logs;
// The conformance suite, from its crate (crates/tower-api-key-conformance).
use tower_api_key_conformance as conformance;
use tower_api_key_conformance::{lifecycle_conformance, store_conformance, transfer_conformance};

use conformance::{MemoryFactory, StoreFactory, StoreSettings, Watch};

/// Bound on every wait for a change to cross from one store to another:
/// the promise is one poll interval (250 ms) plus one read.
const WITHIN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A directory of its own for one test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let unique = KeyId::random().unwrap();
        let dir =
            std::env::temp_dir().join(format!("tak-sqlite-{test}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("keys.db")
    }

    fn builder(&self) -> SqliteKeyStoreBuilder {
        SqliteKeyStore::builder(self.db())
    }

    /// A store on this directory's file, migrated.
    async fn store(&self) -> SqliteKeyStore {
        let store = self.builder().open().await.expect("open");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A connection of the test's own to the file: what another tool would use.
fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn presented(store: &impl KeyStore, created: &CreatedKey) -> PresentedKey {
    store
        .key_format()
        .expect("a store has a key format")
        .parse(created.key.expose_secret())
        .unwrap()
}

fn is_unknown(r: Result<impl std::fmt::Debug, LookupError>) -> bool {
    matches!(r, Err(LookupError::Unknown))
}

fn is_unavailable(r: Result<impl std::fmt::Debug, LookupError>) -> bool {
    matches!(r, Err(LookupError::Unavailable(_)))
}

/// One route behind `auth`, answering 200 to any valid key; the service
/// answers with the response's status.
type Protected = BoxCloneService<Request<()>, StatusCode, Infallible>;

fn protected(auth: &Authenticator) -> Protected {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(auth.any_valid_key())
            .service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            })
            .map_response(|response| response.status()),
    )
}

fn request(key: &str) -> Request<()> {
    Request::get("/")
        .header(AUTHORIZATION, format!("Api-Key {key}"))
        .body(())
        .unwrap()
}

async fn status(service: &Protected, key: &str) -> StatusCode {
    match service.clone().oneshot(request(key)).await {
        Ok(status) => status,
        Err(never) => match never {},
    }
}

// ---------------------------------------------------------------------------
// The contract: the conformance suite, on a file per store
// ---------------------------------------------------------------------------

/// Every store of the suite in a file of its own, in one directory per test.
struct SqliteFactory {
    dir: TempDir,
    files: AtomicUsize,
}

impl StoreFactory for SqliteFactory {
    type Store = SqliteKeyStore;

    async fn open(test: &'static str) -> Option<Self> {
        Some(Self {
            dir: TempDir::new(test),
            files: AtomicUsize::new(0),
        })
    }

    async fn store(&self, settings: StoreSettings) -> SqliteKeyStore {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let store = SqliteKeyStore::builder(self.dir.0.join(format!("{n}.db")))
            .format(settings.format)
            .hasher(settings.hasher)
            .clock(settings.clock)
            .max_keys_per_account(settings.max_keys_per_account)
            .open()
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        store
    }
}

store_conformance!(SqliteFactory);
lifecycle_conformance!(SqliteFactory);
transfer_conformance!(memory_to_sqlite: MemoryFactory => SqliteFactory);
transfer_conformance!(sqlite_to_memory: SqliteFactory => MemoryFactory);

// ---------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------

/// Times are integer microseconds here: keys sharing a creation time are
/// listed by key id (bytewise), paging works around the Unix epoch and at
/// times that are not whole microseconds, and a well-formed token between
/// two microseconds continues from the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_exact_with_microsecond_times_around_the_epoch() {
    let dir = TempDir::new("paging");
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH - Duration::new(2, 1_500),
    ));
    let store = dir.builder().clock(clock.clone()).open().await.unwrap();
    store.migrate().await.unwrap();
    let mut expected = Vec::new();
    for _ in 0..3 {
        let mut same_time = Vec::new();
        for _ in 0..4 {
            let k = store.create(NewKey::new("sa-order")).await.unwrap();
            same_time.push(k.record.key_id);
        }
        same_time.sort();
        expected.extend(same_time);
        clock.advance(Duration::new(1, 333));
    }
    for size in [1, 2, 3, 5, 12, 13] {
        let listed: Vec<KeyId> = conformance::all_pages(&store, "sa-order", size)
            .await
            .iter()
            .flat_map(|p| p.keys.iter().map(|k| k.record.key_id))
            .collect();
        assert_eq!(listed, expected, "page size {size}");
    }
    let first = store
        .get(expected[0])
        .await
        .unwrap()
        .unwrap()
        .record
        .created_at;
    assert_eq!(
        first,
        SystemTime::UNIX_EPOCH - Duration::new(2, 2_000),
        "truncated toward the past"
    );
    let between = first + Duration::from_nanos(500);
    let nanos = -(SystemTime::UNIX_EPOCH
        .duration_since(between)
        .unwrap()
        .as_nanos() as i128);
    let page = store
        .list(
            "sa-order",
            ListRequest::after(100, format!("{nanos}.zzzzzzzzzzzzzzzz")),
        )
        .await
        .unwrap();
    let listed: Vec<KeyId> = page.keys.iter().map(|k| k.record.key_id).collect();
    assert_eq!(listed, expected[4..]);
    store.shutdown().await;
}

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_persist_across_a_reopen_and_revoked_ones_stay_refused() {
    let dir = TempDir::new("reopen");
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
    ));
    let store = dir.builder().clock(clock.clone()).open().await.unwrap();
    store.migrate().await.unwrap();
    let kept = store
        .create(
            NewKey::new("sa-1")
                .with_scopes(ScopeSet::new(["x.y", "a"]).unwrap())
                .with_description("ünïcode \"and\" quotes")
                .with_expires_at(clock.now() + Duration::from_secs(86_400 * 365)),
        )
        .await
        .unwrap();
    // Times are kept to the microsecond, truncated: create says what get reads.
    assert_eq!(
        kept.record.created_at,
        SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000)
    );
    let revoked = store.create(NewKey::new("sa-1")).await.unwrap();
    let graced = store.create(NewKey::new("sa-2")).await.unwrap();
    let reissued = store
        .reissue(graced.record.key_id, Duration::from_secs(60), None)
        .await
        .unwrap()
        .unwrap();
    assert!(store.revoke(revoked.record.key_id, None).await.unwrap());
    let before = store.export(None, MAX_EXPORT_PAGE).await.unwrap();
    store.shutdown().await;
    drop(store);

    let store = dir.builder().clock(clock.clone()).open().await.unwrap();
    let report = store.migrate().await.unwrap();
    assert!(report.applied.is_empty(), "{report:?}");
    assert_eq!(store.export(None, MAX_EXPORT_PAGE).await.unwrap(), before);
    assert_eq!(
        store.get(kept.record.key_id).await.unwrap().unwrap().record,
        kept.record
    );
    assert_eq!(
        store.verify(&presented(&store, &kept)).await.unwrap(),
        Some(kept.record.clone())
    );
    assert_eq!(
        store.verify(&presented(&store, &revoked)).await.unwrap(),
        None
    );
    // Both secrets of the reissued key, the old one until its deadline.
    assert!(store
        .verify(&presented(&store, &reissued))
        .await
        .unwrap()
        .is_some());
    assert!(store
        .verify(&presented(&store, &graced))
        .await
        .unwrap()
        .is_some());
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        store.verify(&presented(&store, &graced)).await.unwrap(),
        None
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_run_once_when_stores_migrate_at_once() {
    let dir = TempDir::new("migrate");
    let store = dir.builder().open().await.unwrap();
    let first = store.migrate().await.unwrap();
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(first.current, 9);
    let second = store.migrate().await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.current, 9);
    let tables: i64 = raw(&dir.db())
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'tower_api_key_%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        tables, 9,
        "keys, changes, changes_pruned, revoked, account_limits, notices, leases, rate_buckets, migrations"
    );
    let mode: String = raw(&dir.db())
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    store.shutdown().await;

    // Four stores on a fresh file, migrating at once: one applies.
    let fresh = TempDir::new("migrate-at-once");
    let reports = futures_util::future::join_all((0..4).map(|_| async {
        let store = fresh.builder().open().await.unwrap();
        let report = store.migrate().await.unwrap();
        store.shutdown().await;
        report
    }))
    .await;
    let applied: Vec<u32> = reports.iter().flat_map(|r| r.applied.clone()).collect();
    assert_eq!(applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9], "{reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_creates_a_missing_file_and_refuses_what_it_cannot_open() {
    let dir = TempDir::new("open");
    assert!(!dir.db().exists());
    let store = SqliteKeyStore::open(dir.db()).await.unwrap();
    assert!(dir.db().exists());
    assert_eq!(store.path(), dir.db());
    // Not migrated: verification fails closed, never "unknown".
    let key = conformance::unknown_key(&store);
    assert!(matches!(
        store.verify(&key).await,
        Err(VerifierError::Backend(_))
    ));
    store.shutdown().await;

    // A directory that does not exist, an empty path, and a file that is
    // not a database.
    let missing = SqliteKeyStore::open(dir.0.join("no/such/dir/keys.db")).await;
    assert!(
        matches!(missing, Err(StoreError::Backend(_))),
        "{missing:?}"
    );
    assert!(matches!(
        SqliteKeyStore::open("").await,
        Err(StoreError::Config(ConfigError::EmptyPath))
    ));
    let garbage = dir.0.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let refused = SqliteKeyStore::open(&garbage).await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_further_calls() {
    let dir = TempDir::new("shutdown");
    let store = dir.store().await;
    let created = store.create(NewKey::new("sa")).await.unwrap();
    let clone = store.clone();
    store.shutdown().await;
    assert!(matches!(
        clone.create(NewKey::new("sa")).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        clone.verify(&presented(&clone, &created)).await,
        Err(VerifierError::Backend(_))
    ));
    // Shutting down twice is harmless.
    clone.shutdown().await;
}

// ---------------------------------------------------------------------------
// Several stores on one file
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_by_another_store_on_the_file_is_refused_here_within_a_second() {
    let dir = TempDir::new("revoke-across");
    let a = dir.store().await;
    let b = dir.store().await;
    let auth_a = Authenticator::builder(a.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    let service = protected(&auth_a);
    let mut seen_a = Watch::on(&a);

    let created = b.create(NewKey::new("sa-1")).await.unwrap();
    let text = created.key.expose_secret().to_owned();
    let id = created.record.key_id;
    assert_eq!(status(&service, &text).await, StatusCode::OK);
    let key = presented(&a, &created);
    assert_eq!(
        auth_a.cache().lookup_with_source(&key).await.unwrap().1,
        Source::Cache,
        "A has cached the key"
    );

    let revoked_at = Instant::now();
    assert!(b.revoke(id, None).await.unwrap());
    let what = seen_a.until_invalidated(id, WITHIN).await;
    assert_eq!(
        what,
        Invalidation::key_of(id, "sa-1"),
        "that key, not a flush"
    );
    assert_eq!(status(&service, &text).await, StatusCode::UNAUTHORIZED);
    assert!(revoked_at.elapsed() < WITHIN);

    // A's own changes reach A's caches before the call returns (and its
    // watcher announces them once more from the log).
    let own = a.create(NewKey::new("sa-1")).await.unwrap();
    let own_text = own.key.expose_secret().to_owned();
    assert_eq!(status(&service, &own_text).await, StatusCode::OK);
    seen_a.drain();
    assert!(a.revoke(own.record.key_id, None).await.unwrap());
    assert!(
        seen_a
            .drain()
            .contains(&Invalidation::key_of(own.record.key_id, "sa-1")),
        "announced before revoke returned"
    );
    assert_eq!(status(&service, &own_text).await, StatusCode::UNAUTHORIZED);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_reissues_by_another_store_reach_this_stores_cache() {
    let dir = TempDir::new("update-across");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let a = dir.builder().clock(clock.clone()).open().await.unwrap();
    a.migrate().await.unwrap();
    let b = dir.builder().clock(clock.clone()).open().await.unwrap();
    let cache_a = CachedVerifier::new(
        a.clone(),
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .clock(clock.clone())
            .build(),
    );
    let mut seen_a = Watch::on(&a);

    // An update on B: A re-reads the key's new scopes.
    let created = b.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    let key = presented(&a, &created);
    assert!(cache_a.lookup(&key).await.unwrap().scopes().is_empty());
    let scopes = ScopeSet::new(["only.this"]).unwrap();
    b.update(id, KeyUpdate::default().with_scopes(scopes.clone()), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen_a.until_invalidated(id, WITHIN).await,
        Invalidation::key_of(id, "sa-1")
    );
    assert_eq!(cache_a.lookup(&key).await.unwrap().scopes(), &scopes);

    // A reissue with grace on B: on A the old secret works until the deadline.
    let grace = Duration::from_secs(60);
    let reissued = b.reissue(id, grace, None).await.unwrap().unwrap();
    seen_a.until_invalidated(id, WITHIN).await;
    let old = cache_a.lookup(&key).await.unwrap();
    assert!(old.expires_at().expect("grace deadline") <= clock.now() + grace);
    let new_key = presented(&a, &reissued);
    assert_eq!(cache_a.lookup(&new_key).await.unwrap().expires_at(), None);
    clock.advance(grace + Duration::from_secs(1));
    assert!(matches!(
        cache_a.lookup(&key).await,
        Err(LookupError::Expired)
    ));

    // A reissue without grace on B: only the newest secret works on A.
    let newest = b.reissue(id, Duration::ZERO, None).await.unwrap().unwrap();
    seen_a.until_invalidated(id, WITHIN).await;
    assert!(is_unknown(cache_a.lookup(&new_key).await));
    assert!(cache_a.lookup(&presented(&a, &newest)).await.is_ok());

    a.shutdown().await;
    b.shutdown().await;
}

/// A write whose call is cancelled after its commit (a dropped request
/// future) never announced itself; the log row it committed is what tells
/// this store's caches, as it tells every other store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_this_store_committed_but_never_announced_is_announced_by_its_watcher() {
    let dir = TempDir::new("unannounced");
    let a = dir.store().await;
    let auth = Authenticator::builder(a.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    let service = protected(&auth);
    let mut seen_a = Watch::on(&a);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let text = created.key.expose_secret().to_owned();
    let id = created.record.key_id;
    assert_eq!(status(&service, &text).await, StatusCode::OK);
    // What a cancelled revoke leaves behind: the row gone and its log row,
    // written as this store writes it, with nothing announced.
    let conn = raw(&dir.db());
    let other = a.create(NewKey::new("sa-1")).await.unwrap();
    assert!(a.revoke(other.record.key_id, None).await.unwrap());
    let origin: String = conn
        .query_row(
            "SELECT origin FROM tower_api_key_changes ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    seen_a.drain();
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DELETE FROM tower_api_key_keys WHERE key_id = '{id}';
         INSERT INTO tower_api_key_changes (key_id, service_account_id, origin, changed_at)
             VALUES ('{id}', 'sa-1', '{origin}', 0);
         COMMIT;"
    ))
    .unwrap();
    assert_eq!(
        seen_a.until_invalidated(id, WITHIN).await,
        Invalidation::key_of(id, "sa-1")
    );
    assert_eq!(status(&service, &text).await, StatusCode::UNAUTHORIZED);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_behind_the_pruned_change_log_invalidates_everything() {
    let dir = TempDir::new("pruned");
    let a = dir.store().await;
    let mut seen_a = Watch::on(&a);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    // Another writer pruned rows A never read (as after A was suspended
    // for longer than the log is kept).
    raw(&dir.db())
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO tower_api_key_changes (key_id, service_account_id, origin, changed_at)
                 VALUES ('nokeyid', 'sa-x', 'elsewhere', 0);
             UPDATE tower_api_key_changes_pruned
                SET upto = (SELECT max(seq) FROM tower_api_key_changes);
             DELETE FROM tower_api_key_changes;
             COMMIT;",
        )
        .unwrap();
    seen_a.until_all(WITHIN).await;
    // Its position moved past the pruned rows: it is not flushed again.
    let b = dir.store().await;
    b.revoke(created.record.key_id, None).await.unwrap();
    assert_eq!(
        seen_a
            .until_invalidated(created.record.key_id, WITHIN)
            .await,
        Invalidation::key_of(created.record.key_id, "sa-1")
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Waits, at most `within`, until `logs` hold `text`.
async fn until_logged(logs: &Logs, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !logs.text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "not logged within {within:?}: {text}\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Current-thread runtime: the thread-local subscriber sees the watcher's events.
#[tokio::test(flavor = "current_thread")]
async fn a_watcher_that_cannot_read_the_log_keeps_its_position_and_catches_up() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);

    let dir = TempDir::new("catch-up");
    let a = dir.store().await;
    let b = dir.store().await;
    let auth_a = Authenticator::builder(a.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    let service = protected(&auth_a);
    let mut seen_a = Watch::on(&a);
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let text = created.key.expose_secret().to_owned();
    assert_eq!(status(&service, &text).await, StatusCode::OK);

    // The watcher's reads fail (a table it reads is gone for a while)...
    let admin = raw(&dir.db());
    admin
        .execute_batch("ALTER TABLE tower_api_key_changes_pruned RENAME TO hidden_pruned")
        .unwrap();
    until_logged(&logs, "cannot read the change log", WITHIN).await;
    // ... while B revokes the key.
    assert!(b.revoke(created.record.key_id, None).await.unwrap());
    admin
        .execute_batch("ALTER TABLE hidden_pruned RENAME TO tower_api_key_changes_pruned")
        .unwrap();
    // Readable again: the revoke committed meanwhile is not lost.
    assert_eq!(
        seen_a
            .until_invalidated(created.record.key_id, WITHIN)
            .await,
        Invalidation::key_of(created.record.key_id, "sa-1")
    );
    assert_eq!(status(&service, &text).await, StatusCode::UNAUTHORIZED);
    until_logged(&logs, "the change log reads again", WITHIN).await;
    let logged = logs.text();
    // Two watchers (A's and B's), each warning once per outage at most.
    let warnings = logged.matches("cannot read the change log").count();
    assert!((1..=2).contains(&warnings), "{logged}");
    assert!(!logged.contains(&text[text.len() - 20..]), "{logged}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_prune_the_change_log_by_age() {
    let dir = TempDir::new("prune");
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = dir.builder().clock(clock.clone()).open().await.unwrap();
    store.migrate().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(store.create(NewKey::new("sa")).await.unwrap().record.key_id);
    }
    store.revoke(ids[0], None).await.unwrap();
    store.revoke(ids[1], None).await.unwrap();
    let log = |conn: &rusqlite::Connection| -> (i64, i64) {
        (
            conn.query_row("SELECT count(*) FROM tower_api_key_changes", [], |r| {
                r.get(0)
            })
            .unwrap(),
            conn.query_row("SELECT upto FROM tower_api_key_changes_pruned", [], |r| {
                r.get(0)
            })
            .unwrap(),
        )
    };
    assert_eq!(log(&raw(&dir.db())), (2, 0));
    // Eleven minutes later, the next change prunes the two older rows.
    clock.advance(Duration::from_secs(660));
    store.revoke(ids[2], None).await.unwrap();
    assert_eq!(log(&raw(&dir.db())), (1, 2));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_two_stores_never_pass_the_limit() {
    let dir = TempDir::new("race");
    let a = dir.builder().max_keys_per_account(5).open().await.unwrap();
    a.migrate().await.unwrap();
    let b = dir.builder().max_keys_per_account(5).open().await.unwrap();
    // 20 creates at once over two stores (8 connections each): they contend
    // for the write lock, and every one either succeeds or meets the limit
    // (none fails on SQLITE_BUSY: the lock is waited for).
    conformance::concurrent_creates_respect_the_limit(&[a.clone(), b.clone()]).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Issue 20, point 7: a known id with a wrong secret answered about 10 µs
/// slower than an unknown id, because only it read the whole row. Now both
/// read one row of the same hash columns, of the same sizes, before the
/// secret is known to match; only a matching secret reads the record.
#[tokio::test]
async fn a_known_id_with_a_wrong_secret_reads_what_an_unknown_id_reads() {
    let dir = TempDir::new("verify-work");
    let store = dir.builder().open().await.unwrap();
    store.migrate().await.unwrap();
    let key = store
        .create(
            NewKey::new("sa-work")
                .with_scopes(ScopeSet::new(["a.b"]).unwrap())
                .with_description("d".repeat(4096)),
        )
        .await
        .unwrap();
    let graced = store.create(NewKey::new("sa-work")).await.unwrap();
    store
        .reissue(graced.record.key_id, Duration::from_secs(600), None)
        .await
        .unwrap()
        .unwrap();
    let work_of = |probe: PresentedKey| {
        let store = store.clone();
        async move {
            let before = store.verify_work();
            assert!(store.verify(&probe).await.unwrap().is_none());
            let after = store.verify_work();
            (after.0 - before.0, after.1 - before.1)
        }
    };
    let unknown = work_of(conformance::unknown_key(&store)).await;
    let wrong = work_of(conformance::wrong_secret(&store, key.record.key_id)).await;
    assert_eq!(unknown.0, 1, "one statement");
    assert_eq!(wrong, unknown, "the same statements and bytes");
    let graced = work_of(conformance::wrong_secret(&store, graced.record.key_id)).await;
    assert_eq!(graced, unknown, "a graced previous secret changes nothing");
    let present = conformance::parse(&store, &key.key);
    assert!(store.verify(&present).await.unwrap().is_some());
    store.shutdown().await;
}

/// Issue 20's three-request race through the management API, 200 rounds:
/// the manager never ends up holding a secret of a key with a scope it may
/// not grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_narrow_reissue_race_never_hands_out_an_ungrantable_scope() {
    let dir = TempDir::new("grant-race");
    let store = dir.builder().open().await.unwrap();
    store.migrate().await.unwrap();
    let outcome = common::grant_race::run(store.clone(), 200).await;
    eprintln!("{outcome:?}");
    assert!(
        outcome.reissued > 0,
        "the race ran to a reissue: {outcome:?}"
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_on_two_stores_over_one_file_let_exactly_one_through() {
    let dir = TempDir::new("versions");
    let a = dir.builder().open().await.unwrap();
    a.migrate().await.unwrap();
    let b = dir.builder().open().await.unwrap();
    conformance::versions::conditional_writes_race(&[a.clone(), b.clone()]).await;
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Failing closed, and the write lock
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_key_table_is_a_503_never_cached_and_cached_keys_still_pass() {
    let dir = TempDir::new("unreadable");
    let store = dir.store().await;
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    let service = protected(&auth);
    let cached = store.create(NewKey::new("sa-1")).await.unwrap();
    let uncached = store.create(NewKey::new("sa-1")).await.unwrap();
    let stranger = store.format().generate().unwrap();
    let cached_text = cached.key.expose_secret().to_owned();
    let uncached_text = uncached.key.expose_secret().to_owned();
    let stranger_text = stranger.expose_secret().to_owned();
    assert_eq!(status(&service, &cached_text).await, StatusCode::OK);

    // Another tool breaks the file under the running store.
    let admin = raw(&dir.db());
    admin
        .execute_batch("ALTER TABLE tower_api_key_keys RENAME TO hidden_keys")
        .unwrap();

    assert_eq!(status(&service, &cached_text).await, StatusCode::OK);
    for text in [&uncached_text, &stranger_text] {
        assert_eq!(
            status(&service, text).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let uncached_key = presented(&store, &uncached);
    assert!(matches!(
        store.verify(&uncached_key).await,
        Err(VerifierError::Backend(_))
    ));
    assert!(is_unavailable(auth.cache().lookup(&uncached_key).await));
    // The error never holds key material.
    if let Err(e) = store.verify(&uncached_key).await {
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains(&uncached_text[uncached_text.len() - 20..]),
            "{text}"
        );
    }

    // Repaired: the next request asks again (nothing was cached).
    admin
        .execute_batch("ALTER TABLE hidden_keys RENAME TO tower_api_key_keys")
        .unwrap();
    assert_eq!(status(&service, &uncached_text).await, StatusCode::OK);
    assert_eq!(
        status(&service, &stranger_text).await,
        StatusCode::UNAUTHORIZED
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_fails_writes_after_the_busy_timeout_and_never_blocks_verification() {
    let dir = TempDir::new("busy");
    let busy_timeout = Duration::from_millis(200);
    let store = dir
        .builder()
        .busy_timeout(busy_timeout)
        .open()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let created = store.create(NewKey::new("sa-1")).await.unwrap();

    // Another process holds the write lock.
    let holder = raw(&dir.db());
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE tower_api_key_keys SET description = 'held';")
        .unwrap();

    let started = Instant::now();
    let refused = store.create(NewKey::new("sa-1")).await;
    let waited = started.elapsed();
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "{refused:?}"
    );
    assert!(
        waited >= busy_timeout,
        "SQLITE_BUSY is retried for the busy timeout, not refused at once: {waited:?}"
    );
    assert!(matches!(
        store.revoke(created.record.key_id, None).await,
        Err(StoreError::Backend(_))
    ));
    // WAL: readers never wait for the writer.
    assert_eq!(
        store
            .verify(&presented(&store, &created))
            .await
            .unwrap()
            .map(|r| r.description),
        Some(String::new()),
        "the last committed state"
    );

    holder.execute_batch("ROLLBACK").unwrap();
    assert!(store.create(NewKey::new("sa-1")).await.is_ok());
    assert!(store.revoke(created.record.key_id, None).await.unwrap());
    store.shutdown().await;
}

// ---------------------------------------------------------------------------
// Coalescing
// ---------------------------------------------------------------------------

/// The store, counting verifier calls; the first call answers only once
/// `gate` is notified.
#[derive(Clone)]
struct Counting {
    store: SqliteKeyStore,
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

#[async_trait]
impl Verifier for Counting {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.gate.notified().await;
        self.store.verify(key).await
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_for_one_uncached_key_make_one_sqlite_lookup() {
    const N: usize = 1000;
    let dir = TempDir::new("coalesce");
    let store = dir.store().await;
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let text = created.key.expose_secret().to_owned();
    let gate = Arc::new(Notify::new());
    let verifier = Counting {
        store: store.clone(),
        calls: Arc::new(AtomicUsize::new(0)),
        gate: gate.clone(),
    };
    let auth = Authenticator::verifier_builder(verifier.clone()).build();
    let service = protected(&auth);

    // Every request is spawned and polled once (it then waits for the one
    // verifier call) before the verifier may answer.
    let polled = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..N {
        let mut call = Box::pin(service.clone().oneshot(request(&text)));
        let polled = polled.clone();
        tasks.spawn(async move {
            let first = futures_util::poll!(call.as_mut());
            polled.add_permits(1);
            let response = match first {
                std::task::Poll::Ready(response) => response,
                std::task::Poll::Pending => call.await,
            };
            response
        });
    }
    let _all = timeout(Duration::from_secs(30), polled.acquire_many(N as u32))
        .await
        .expect("every request polled")
        .unwrap();
    gate.notify_one();
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(verifier.calls.load(Ordering::SeqCst), 1);
    store.shutdown().await;
}

// ---------------------------------------------------------------------------
// A real second process
// ---------------------------------------------------------------------------

/// Run by `a_revoke_from_another_process_is_refused_within_a_second` in a
/// child process (this test binary again): revokes the key named by
/// `TAK_SQLITE_CHILD` (`<path>\n<key id>`). Ignored in a normal run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_revoke_from_another_process_is_refused_within_a_second"]
async fn child_process_revokes_a_key() {
    let spec = std::env::var("TAK_SQLITE_CHILD").expect("TAK_SQLITE_CHILD");
    let (path, id) = spec.split_once('\n').expect("<path>\\n<key id>");
    let store = SqliteKeyStore::open(path).await.unwrap();
    assert!(store.revoke(id.parse().unwrap(), None).await.unwrap());
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_from_another_process_is_refused_within_a_second() {
    let dir = TempDir::new("process");
    let store = dir.store().await;
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(3600))
        .build();
    let service = protected(&auth);
    let mut seen = Watch::on(&store);
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let text = created.key.expose_secret().to_owned();
    assert_eq!(status(&service, &text).await, StatusCode::OK);

    let exe = std::env::current_exe().unwrap();
    let db = dir.db();
    let id = created.record.key_id;
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args([
                "--exact",
                "child_process_revokes_a_key",
                "--ignored",
                "--test-threads=1",
            ])
            .env("TAK_SQLITE_CHILD", format!("{}\n{id}", db.display()))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        child.status.success(),
        "the child failed: {}",
        String::from_utf8_lossy(&child.stdout)
    );
    let exited = Instant::now();
    assert_eq!(
        seen.until_invalidated(id, WITHIN).await,
        Invalidation::key_of(id, "sa-1")
    );
    assert!(exited.elapsed() < WITHIN);
    assert_eq!(status(&service, &text).await, StatusCode::UNAUTHORIZED);
    store.shutdown().await;
}

// ---------------------------------------------------------------------------
// Rate limits and credits
// ---------------------------------------------------------------------------

/// Two stores on one file (as two processes would be) racing for one key's
/// credits: the write lock orders the leases, so no credit is granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_two_stores_never_grant_more_credits_than_exist() {
    let dir = TempDir::new("lease-race");
    let a = dir.store().await;
    let b = dir.builder().open().await.unwrap();
    let created = a
        .create(NewKey::new("sa-credits").with_credits(Credits::new(137).unwrap()))
        .await
        .unwrap();
    let now = SystemTime::now();
    conformance::concurrent_leases_grant_exactly_the_credits(
        &[a.clone(), b.clone()],
        created.record.key_id,
        137,
        now,
    )
    .await;
    // The last credits, one store each.
    let id = created.record.key_id;
    a.add_credits(id, 1, None).await.unwrap().unwrap();
    let (x, y) = tokio::join!(a.lease_credits(id, 5, now), b.lease_credits(id, 5, now));
    let granted = [x.unwrap().unwrap(), y.unwrap().unwrap()].map(|l| l.granted);
    assert_eq!(granted.iter().sum::<u64>(), 1, "{granted:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A leak report recorded through another store (issue 24) reaches this
/// store's cache through the change log within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_report_through_another_store_reaches_this_stores_cache() {
    let dir = TempDir::new("leak-across");
    let a = dir.store().await;
    let b = dir.builder().open().await.unwrap();
    conformance::compromise::leak_reports_reach_the_other_store(&b, &a, WITHIN).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Account limits and added credits set through another store reach this
/// store's cache through the change log, for every key of the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_limits_and_credits_changed_by_another_store_reach_this_stores_cache() {
    let dir = TempDir::new("limits-across");
    let a = dir.store().await;
    let b = dir.builder().open().await.unwrap();
    conformance::account_changes_reach_the_other_store(&b, &a, WITHIN).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Limits or credits another tool wrote wrong are a backend error naming
/// the key, never a panic, and never a key without its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stored_limits_and_credits_are_errors_naming_the_key() {
    let dir = TempDir::new("bad-limits");
    let store = dir.store().await;
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
    let conn = raw(&dir.db());
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
        let before: (String, i64) = conn
            .query_row(
                "SELECT rate_limits, credits_generation FROM tower_api_key_keys",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        conn.execute(sql, []).unwrap();
        let Err(VerifierError::Backend(e)) = store.verify(&key).await else {
            panic!("{sql}: verify must fail");
        };
        names_the_key(&*e);
        let Err(StoreError::Backend(e)) = store.get(id).await else {
            panic!("{sql}: get must fail");
        };
        names_the_key(&*e);
        // Listing skips it (with a warning naming it) instead of failing.
        let listed = store.list("sa-bad", ListRequest::default()).await.unwrap();
        assert!(listed.keys.is_empty(), "{sql}");
        let lease = store.lease_credits(id, 1, SystemTime::now()).await;
        if lease_fails {
            let Err(VerifierError::Backend(e)) = lease else {
                panic!("{sql}: the lease must fail");
            };
            names_the_key(&*e);
        }
        conn.execute(
            "UPDATE tower_api_key_keys SET rate_limits = ?1, credits_generation = ?2,
                 credits_refill_interval = NULL, credits_refill_amount = NULL,
                 credits_refill_day = NULL",
            (&before.0, before.1),
        )
        .unwrap();
        assert!(store.verify(&key).await.unwrap().is_some(), "repaired");
    }
    // An account's limits, the same.
    conn.execute(
        "INSERT INTO tower_api_key_account_limits VALUES ('sa-bad', 'lots')",
        [],
    )
    .unwrap();
    let Err(VerifierError::Backend(e)) = store.verify(&key).await else {
        panic!("verify must fail");
    };
    names_the_key(&*e);
    let e = store.account_rate_limits("sa-bad").await.unwrap_err();
    assert!(e.to_string().contains("sa-bad"), "{e}");
    // Setting them again repairs them.
    store
        .set_account_rate_limits("sa-bad", vec!["1/1s".parse().unwrap()])
        .await
        .unwrap();
    assert!(store.verify(&key).await.unwrap().is_some());
    store.shutdown().await;
}

/// A file migrated by the previous release (migrations 1 and 2) with keys
/// in it moves to migration 3; its keys keep working, without limits or
/// credits until they are given some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_the_previous_release_migrates_and_its_keys_keep_working() {
    let dir = TempDir::new("migrate-3");
    let store = dir.builder().open().await.unwrap();
    {
        let conn = raw(&dir.db());
        conn.execute_batch(
            "CREATE TABLE tower_api_key_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at INTEGER NOT NULL DEFAULT (unixepoch())) STRICT",
        )
        .unwrap();
        for m in &tower_api_key_sqlite::migrations()[..2] {
            conn.execute_batch(m.sql()).unwrap();
            conn.execute(
                "INSERT INTO tower_api_key_migrations (version, name) VALUES (?1, ?2)",
                (m.version(), m.name()),
            )
            .unwrap();
        }
    }
    // The previous release's create: a row without the new columns.
    let generated = store.format().generate().unwrap();
    let old = store.format().parse(generated.expose_secret()).unwrap();
    let hash = tower_api_key::hash::KeyHasher::default().hash(&old);
    raw(&dir.db())
        .execute(
            "INSERT INTO tower_api_key_keys (key_id, service_account_id, hash, hash_scheme,
                 created_at, hint)
             VALUES (?1, 'sa-old', ?2, 'sha256', 0, 'tak_…')",
            (old.id().to_string(), hash.digest().to_vec()),
        )
        .unwrap();
    let report = store.migrate().await.unwrap();
    assert_eq!(report.applied, vec![3, 4, 5, 6, 7, 8, 9]);
    let record = store.verify(&old).await.unwrap().unwrap();
    assert_eq!(&*record.service_account_id, "sa-old");
    // Migration 8's defaults: retirement allowed, not retired.
    assert!(record.retire_when_unused);
    assert_eq!(record.retired_unused_since, None);
    assert!(record.rate_limits.is_empty());
    assert_eq!(record.credits, None);
    assert_eq!(
        store
            .lease_credits(old.id(), 1, SystemTime::now())
            .await
            .unwrap(),
        None
    );
    let info = store
        .update(
            old.id(),
            KeyUpdate::default().with_credits(Some(Credits::new(3).unwrap())),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.credits, Some(Credits::new(3).unwrap()));
    let lease = store
        .lease_credits(old.id(), 1, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.granted, lease.remaining), (1, 2));
    store.shutdown().await;
}

/// One corrupted row blocks nothing but itself (issue 20, point 7): its
/// account's listing shows the other keys, through every page; export skips
/// it and still ends; `unreadable` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_row_does_not_block_listing_nor_export() {
    let dir = TempDir::new("corrupted-row");
    let store = dir.store().await;
    let ids = conformance::keys_to_corrupt(&store).await;
    let bad = [ids[2], ids[3]];
    let conn = raw(&dir.db());
    conn.execute(
        "UPDATE tower_api_key_keys SET scopes = 'not a scope!' WHERE key_id = ?1",
        [bad[0].as_str()],
    )
    .unwrap();
    conn.execute(
        "UPDATE tower_api_key_keys SET rate_limits = '5/0s' WHERE key_id = ?1",
        [bad[1].as_str()],
    )
    .unwrap();
    conformance::only_unreadable_rows_are_skipped(&store, &ids, &bad).await;
}

// ---------------------------------------------------------------------------
// The lifecycle across stores on one file (as replicas or a restart would)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_and_a_lease_survive_a_new_store_on_the_file() {
    let dir = TempDir::new("notice-restart");
    let clock = Arc::new(ManualClock::new(conformance::start_time()));
    let store = dir.builder().clock(clock.clone()).open().await.unwrap();
    store.migrate().await.unwrap();
    let reopen = |store: SqliteKeyStore| async {
        store.shutdown().await;
        drop(store);
        dir.builder().clock(clock.clone()).open().await.unwrap()
    };
    let (again, _) =
        conformance::lifecycle::a_notice_and_a_lease_outlive_their_store(store, &clock, reopen)
            .await;
    // The notice went with the key.
    let left: i64 = raw(&dir.db())
        .query_row("SELECT count(*) FROM tower_api_key_notices", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(left, 0);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_send_a_notice_once_and_hold_a_lease_once() {
    let dir = TempDir::new("lifecycle-replicas");
    let a = dir.store().await;
    let b = dir.store().await;
    let stores = [a.clone(), b.clone()];
    conformance::lifecycle::concurrent_record_notice_lets_exactly_one_through(&stores).await;
    conformance::lifecycle::concurrent_leases_let_exactly_one_holder_hold(&stores).await;
    conformance::lifecycle::retire_unused_racing_record_usage_never_retires_a_newer_use(&stores)
        .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_by_another_store_reaches_this_stores_cache() {
    let dir = TempDir::new("retire-across");
    let clock = Arc::new(ManualClock::new(conformance::start_time()));
    let a = dir.builder().clock(clock.clone()).open().await.unwrap();
    a.migrate().await.unwrap();
    let b = dir.builder().clock(clock.clone()).open().await.unwrap();
    let created = a.create(NewKey::new("sa-1")).await.unwrap();
    let id = created.record.key_id;
    let mut seen_a = Watch::on(&a);
    clock.advance(Duration::from_secs(400 * 86_400));
    let at = clock.now();
    b.retire_unused(id, None, created.record.created_at, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen_a.until_invalidated(id, WITHIN).await,
        Invalidation::key_of(id, "sa-1")
    );
    let got = a.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.expires_at, Some(at));
    assert_eq!(
        got.record.retired_unused_since,
        Some(created.record.created_at)
    );
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Rate limits shared through the file
// ---------------------------------------------------------------------------

/// Two migrated stores on one new file (two processes sharing it).
async fn two_stores_on_one_file(dir: &TempDir) -> (SqliteKeyStore, SqliteKeyStore) {
    let path = dir.0.join("shared.db");
    let a = SqliteKeyStore::open(&path).await.unwrap();
    a.migrate().await.unwrap();
    let b = SqliteKeyStore::open(&path).await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_syncs_of_two_processes_add_up_exactly() {
    let dir = TempDir::new("rate_syncs_add_up");
    let (a, b) = two_stores_on_one_file(&dir).await;
    conformance::rate_sync::syncs_of_two_replicas_add_up_exactly(
        a.rate_limit_sync(),
        b.rate_limit_sync(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_sync_batch_answers_in_order_and_sweeps_idle_buckets() {
    let dir = TempDir::new("rate_sync_batch");
    let (a, _) = two_stores_on_one_file(&dir).await;
    let path = a.path().to_owned();
    let rows = || {
        let path = path.clone();
        async move {
            let conn = raw(&path);
            let mut stmt = conn
                .prepare("SELECT subject || ' ' || rate_limit FROM tower_api_key_rate_buckets ORDER BY 1")
                .unwrap();
            let rows = stmt.query_map([], |row| row.get(0)).unwrap();
            rows.collect::<Result<Vec<String>, _>>().unwrap()
        }
    };
    conformance::rate_sync::a_batch_answers_in_order_and_idle_buckets_are_swept(
        a.rate_limit_sync(),
        || a.rate_limit_sync(),
        rows,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_rate_limit_cost_saturates_the_bucket_without_an_error() {
    let dir = TempDir::new("rate_sync_huge");
    let (a, _) = two_stores_on_one_file(&dir).await;
    conformance::rate_sync::a_huge_cost_saturates_the_bucket(a.rate_limit_sync()).await;
}

/// Text holding `$n` and `?n` (what SQLite's runner rewrites in the SQL
/// text) round-trips through every read and write: values are bound, never
/// written into a statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_holding_parameter_marks_round_trips_unchanged() {
    let dir = TempDir::new("dollar-text");
    let store = dir.store().await;
    let account = "sa$1?2";
    let description = "costs $2 ?1 '$3' \"$$\" ?";
    let metadata = tower_api_key::Metadata::new(r#"{"q":"$1 ?2 $"}"#).unwrap();
    let created = store
        .create(
            NewKey::new(account)
                .with_description(description)
                .with_metadata(Some(metadata.clone())),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(&*got.record.service_account_id, account);
    assert_eq!(got.record.description, description);
    assert_eq!(got.record.metadata.as_ref(), Some(&metadata));
    let listed = store.list(account, ListRequest::first(10)).await.unwrap();
    assert_eq!(listed.keys.len(), 1);
    assert_eq!(listed.keys[0].record.description, description);
    let changed = "now $1$2 ?3";
    store
        .update(id, KeyUpdate::default().with_description(changed), None)
        .await
        .unwrap()
        .unwrap();
    let exported = store.export(None, MAX_EXPORT_PAGE).await.unwrap();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].info.record.description, changed);
    assert_eq!(&*exported[0].info.record.service_account_id, account);
    store.shutdown().await;
}

/// A row another tool wrote with text that is not UTF-8 (SQLite keeps what
/// it is given) is unreadable like any corrupted row: it blocks neither its
/// account's listing nor the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_text_that_is_not_utf8_does_not_block_listing_nor_export() {
    let dir = TempDir::new("utf8-row");
    let store = dir.store().await;
    let ids = conformance::keys_to_corrupt(&store).await;
    let bad = [ids[2]];
    raw(&dir.db())
        .execute(
            "UPDATE tower_api_key_keys SET description = CAST(x'ff' AS TEXT) WHERE key_id = ?1",
            [bad[0].as_str()],
        )
        .unwrap();
    conformance::only_unreadable_rows_are_skipped(&store, &ids, &bad).await;
    // Never written back: a change of the key fails and the bytes stay.
    let mut change = tower_api_key::store::KeyUpdate::default();
    change.description = Some("fixed".to_owned());
    assert!(store.update(bad[0], change, None).await.is_err());
    assert!(store.add_credits(bad[0], 1, None).await.is_err());
    let stored: Vec<u8> = raw(&dir.db())
        .query_row(
            "SELECT CAST(description AS BLOB) FROM tower_api_key_keys WHERE key_id = ?1",
            [bad[0].as_str()],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, [0xff]);
    store.shutdown().await;
}

// ---------------------------------------------------------------------------
// Revocation races between two processes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_import_and_a_revocations_import_racing_never_bring_the_key_back() {
    let dir = TempDir::new("revocation_races");
    let (a, b) = two_stores_on_one_file(&dir).await;
    conformance::revocation::a_revoke_racing_the_import_of_its_revocation_both_answer(&a, &b, 50)
        .await;
    conformance::revocation::an_import_racing_the_keys_revoke_never_brings_it_back(&a, &b, 50)
        .await;
    conformance::revocation::an_import_racing_its_revocations_import_never_holds_the_key(
        &a, &b, 50,
    )
    .await;
}
