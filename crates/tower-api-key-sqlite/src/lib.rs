//! The SQLite key store: keys in a file on one machine .
//!
//! [`SqliteKeyStore`] keeps keys in one table, `tower_api_key_keys`, in a
//! SQLite database file, through [rusqlite] with SQLite compiled in (no
//! system library needed). It implements the same management operations as
//! the [`MemoryStore`](tower_api_key::MemoryStore) and the PostgreSQL store (create,
//! get, list, update, revoke, reissue with grace, usage, export and import)
//! as well as the [`Verifier`] trait, and keys survive a restart.
//!
//! - **At rest**: the hash of each key (its [`StoredHash`] digest, with its
//!   scheme and pepper version), never the key nor anything it could be
//!   recovered from. A key is verified by reading the row of its id and
//!   comparing, in constant time, its current and graced previous hash with
//!   the key hashed under every scheme and pepper the store's hasher holds:
//!   the same work whether or not the id exists.
//! - **Schema**: shipped with the crate ([`migrations()`]);
//!   [`SqliteKeyStore::migrate`] applies it. Idempotent, and safe to call
//!   from every process at start. [`SqliteKeyStoreBuilder::open`] creates
//!   the file when it is missing (unless
//!   [`create_if_missing(false)`](SqliteKeyStoreBuilder::create_if_missing))
//!   but, like the PostgreSQL store's `connect`, does not migrate;
//!   [`SqliteKeyStore::schema_version`] says whether it was.
//! - **Several processes on one file**: the file is put in WAL mode, so
//!   readers never wait for the writer and the writer never waits for
//!   readers. Writes take SQLite's one write lock at their start
//!   (`BEGIN IMMEDIATE`); a process that finds it taken retries for up to
//!   the busy timeout ([`SqliteKeyStoreBuilder::with_busy_timeout`], 5 s)
//!   before failing. The per-account key limit is counted under that lock,
//!   so processes creating at once cannot overshoot it. Every process must
//!   reach the file through a local file system (WAL needs shared memory:
//!   not over NFS).
//! - **Revocation across processes**: a revoke, reissue, update or
//!   `add_credits` also writes a row to a small change log, in the same
//!   transaction (new account limits write one per key of the account). Each
//!   store
//!   watches the file on a connection of its own: every poll interval
//!   ([`SqliteKeyStoreBuilder::with_poll_interval`], 250 ms) it reads
//!   `PRAGMA data_version` (which changes when another connection commits)
//!   and, when it changed, reads the log rows it has not seen and publishes
//!   them on its [`Invalidations`] bus. So a change committed by another
//!   process (the CLI, another server) reaches this store's caches within
//!   **one poll interval plus one read of the log**: about 250 ms by
//!   default, well under a second. Changes made through this store
//!   invalidate its caches before the call returns. Writers prune the log
//!   (rows older than 10 minutes, beyond the newest 10,000); a watcher that
//!   fell behind a pruned row invalidates every cached key.
//! - **Fail closed**: when the file cannot be read (locked past the busy
//!   timeout, unreadable, corrupt, not migrated), [`Verifier::verify`]
//!   returns `Err` (the middleware answers 503 and caches nothing), never
//!   `Ok(None)`. Keys already in a cache keep working until their positive
//!   TTL.
//! - **Limits and credits** (migration 3): a key's rate limits and credits
//!   are columns of its row; a service account's limits are a row of
//!   `tower_api_key_account_limits`, read with the key in one statement. A
//!   credit lease takes the write lock (`BEGIN IMMEDIATE`), so processes on
//!   one file never grant a credit twice.
//! - **No blocking of the runtime**: every SQLite call runs on tokio's
//!   blocking thread pool, on at most 8 pooled connections at once.
//! - **Time**: every time written comes from the store's clock (the system
//!   clock unless [`SqliteKeyStoreBuilder::with_clock`] says otherwise),
//!   kept as integer microseconds since the Unix epoch; the store truncates
//!   times before writing, so what `create` returns is what `get` reads back.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::cache::{CacheConfig, CachedVerifier};
//! use tower_api_key_sqlite::SqliteKeyStore;
//! use tower_api_key::store::NewKey;
//! use tower_api_key::KeyStore;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("tak-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("keys.db");
//! let store = SqliteKeyStore::open(&path).await?; // `path`: e.g. "keys.db"
//! store.migrate().await?; // at every start
//!
//! let cache = CachedVerifier::new(
//!     store.clone(),
//!     CacheConfig::builder().positive_ttl(Duration::from_secs(60)).build(),
//! );
//! let created = store.create(NewKey::new("sa-1")).await?;
//! let presented = store.format().parse(created.key.expose_secret())?;
//! assert_eq!(cache.lookup(&presented).await?.service_account_id(), "sa-1");
//!
//! // Refused here at once, and by every other process on the file within
//! // its poll interval.
//! store.revoke(created.record.key_id, None).await?;
//! assert!(cache.lookup(&presented).await.is_err());
//! store.shutdown().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! [rusqlite]: https://docs.rs/rusqlite
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod compromise;
mod connection;
mod migrations;
mod watcher;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use migrations::migrations;

use self::compromise::compromise_columns;
use self::connection::{BoxError, Connections};
use self::watcher::Watcher;
use tower_api_key::hash::{KeyHasher, StoredHash};
use tower_api_key::limits::{CreditLease, RateLimit, MAX_CREDITS};
use tower_api_key::store::kit::{
    check_account, check_account_limits, check_import, check_new, check_update, check_version,
    export_page_size, fill_page, hint_of, import_conflict, import_revoked, imported_version,
    page_token, parse_page_token, verified, CreditState,
};
use tower_api_key::store::{
    latest_time, CompromiseReport, Compromised, ConfigError, ConflictKind, CreatedKey, Imported,
    KeyInfo, KeyPage, KeyUpdate, ListRequest, NewKey, PreviousHash, StoreError, StoredKey, Version,
    DEFAULT_MAX_KEYS_PER_ACCOUNT, MAX_EXPORT_PAGE,
};
use tower_api_key::{CreditLedger, Verifier, VerifierError};
use tower_api_key::{GeneratedKey, KeyFormat, KeyId, PresentedKey};
use tower_api_key::{Invalidation, Invalidations, KeyRecord, KeyStore, ScopeSet};
use tower_api_key_sql::{
    compromise_of, compromised_hash, limits_text, parse_limits, scheme_columns, shown_id,
    stored_hash, version_of, warn_unreadable, CreditColumns, StoreClock,
};
pub use tower_api_key_sql::{Migration, MigrationReport};

/// The key table.
const TABLE: &str = "tower_api_key_keys";

/// The ids of revoked keys, which an import never brings back.
const REVOKED: &str = "tower_api_key_revoked";

/// The rate limits service accounts share.
const ACCOUNT_LIMITS: &str = "tower_api_key_account_limits";

/// What the management API shows of a key, its limits and credits included.
const INFO_COLUMNS: &str = "key_id, service_account_id, scopes, description, created_at, \
     expires_at, last_used_at, hint, rate_limits, credits_remaining, credits_refill_amount, \
     credits_refill_interval, credits_refill_day, credits_refilled_at, credits_generation, \
     version, compromised_at, compromise_url, compromise_source, compromise_action, \
     (compromise_action IS 'quarantine' AND compromised_hash IS hash) AS quarantined";

/// The key's account's limits, in a query over the key table (not in a
/// `RETURNING`): read in the same statement as the key.
const ACCOUNT_LIMITS_COLUMN: &str = "(SELECT a.rate_limits FROM tower_api_key_account_limits AS a \
     WHERE a.service_account_id = tower_api_key_keys.service_account_id) AS account_rate_limits";

/// A key's credit columns.
const CREDIT_COLUMNS: &str = "credits_remaining, credits_refill_amount, credits_refill_interval, \
     credits_refill_day, credits_refilled_at, credits_generation";

/// What verification and export need besides.
const HASH_COLUMNS: &str = "hash, hash_scheme, hash_pepper_version, previous_hash, \
     previous_hash_scheme, previous_hash_pepper_version, previous_valid_until, compromised_hash";

/// Change log rows older than this are pruned by writers.
const CHANGE_LOG_AGE: Duration = Duration::from_secs(600);
/// Change log rows kept at most.
const CHANGE_LOG_ROWS: i64 = 10_000;

/// Connections used at once.
const POOL_SIZE: usize = 8;

/// Keys in a SQLite file, with changes by other processes on the same file
/// watched for. See the [module docs](self).
///
/// Cheap to clone: clones share the connections, the watcher and the bus.
/// The watcher stops on [`SqliteKeyStore::shutdown`] or when the last clone
/// is dropped.
#[derive(Clone)]
pub struct SqliteKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Connections>,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: StoreClock,
    max_keys_per_account: i64,
    invalidations: Invalidations,
    /// Marks this store's rows in the change log: which store instance
    /// wrote a change, for whoever reads the log.
    origin: String,
    poll_interval: Duration,
    // Dropping it (with the last clone of the store) stops the watcher too.
    shutdown: watch::Sender<bool>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    #[cfg(feature = "test-util")]
    verify_work: Arc<VerifyWork>,
}

/// What verification read before it knew whether the secret matched
/// (feature `test-util`): statements and bytes of column data. A known id
/// with a wrong secret and an unknown id read the same.
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
struct VerifyWork {
    statements: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "test-util")]
impl VerifyWork {
    fn count(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.statements.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
}

impl fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.inner.db.path())
            .field("format", &self.inner.format)
            .field("poll_interval", &self.inner.poll_interval)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`SqliteKeyStore`]; from [`SqliteKeyStore::builder`].
#[must_use]
pub struct SqliteKeyStoreBuilder {
    path: PathBuf,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: StoreClock,
    max_keys_per_account: usize,
    busy_timeout: Duration,
    poll_interval: Duration,
    create_if_missing: bool,
}

impl fmt::Debug for SqliteKeyStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStoreBuilder")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("busy_timeout", &self.busy_timeout)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl SqliteKeyStoreBuilder {
    /// Settings for the database file at `path`, with the defaults: key
    /// prefix `tak`, plain SHA-256, the system clock, 1,000 keys per service
    /// account, a 5 s busy timeout, a change-watch poll every 250 ms, the
    /// file created when missing.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: KeyFormat::default(),
            hasher: KeyHasher::default(),
            clock: StoreClock::default(),
            max_keys_per_account: DEFAULT_MAX_KEYS_PER_ACCOUNT,
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
            create_if_missing: true,
        }
    }

    /// Whether [`open`](Self::open) creates the file when it is missing
    /// (default `true`). With `false` a missing file is an error and
    /// nothing is created, so a mistyped path is not taken for an empty
    /// store: the `tower-api-key` CLI opens so for every command but
    /// `migrate`.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// The key format (default prefix `tak`).
    pub fn with_format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// How keys are hashed (default plain SHA-256). Keep the peppers out of
    /// the database file.
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// The clock for creation times, expiry checks, grace deadlines and uses.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_clock(mut self, clock: Arc<dyn tower_api_key::clock::Clock>) -> Self {
        self.clock = StoreClock::injected(clock);
        self
    }

    /// The most keys one service account may hold (default
    /// [`DEFAULT_MAX_KEYS_PER_ACCOUNT`], 1,000), expired keys included; a
    /// create past it fails with [`StoreError::KeyLimitReached`]. At least 1.
    /// Counted under SQLite's write lock, so processes creating at once
    /// cannot overshoot. Every process on the file should use the same limit.
    pub fn max_keys_per_account(mut self, limit: usize) -> Self {
        self.max_keys_per_account = limit.max(1);
        self
    }

    /// How long a call waits for another connection's lock on the file
    /// before failing (default 5 s): SQLITE_BUSY is retried within it. A
    /// verification that times out here fails closed (503).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often the watcher checks the file for changes committed by
    /// other connections (default 250 ms, at least 10 ms): the bound on how
    /// late a revoke made by another process reaches this store's caches,
    /// plus one read of the change log.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Opens the file, creating it when missing (unless
    /// [`create_if_missing(false)`](Self::create_if_missing)), switches it to WAL mode,
    /// and starts the change watcher, so a change committed after this
    /// returns is always announced to this store. Does not migrate: call
    /// [`SqliteKeyStore::migrate`].
    pub async fn open(self) -> Result<SqliteKeyStore, StoreError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath.into());
        }
        let origin = KeyId::random()?.to_string();
        let path = self.path.clone();
        let busy_timeout = self.busy_timeout;
        let create = self.create_if_missing;
        let (first, watcher) = tokio::task::spawn_blocking(move || {
            let first = connection::open_first(&path, busy_timeout, create)?;
            connection::use_wal(&first)?;
            let watcher = Watcher::open(&path, busy_timeout)?;
            Ok::<_, BoxError>((first, watcher))
        })
        .await
        .map_err(StoreError::backend)?
        .map_err(|e| {
            StoreError::backend(format!(
                "cannot open the SQLite database {}: {e}",
                self.path.display()
            ))
        })?;
        let db = Arc::new(Connections::new(self.path, self.busy_timeout, POOL_SIZE));
        // The connection that checked the file is the pool's first.
        db.give_back(first);
        let invalidations = Invalidations::new();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(watcher::run(
            watcher,
            invalidations.clone(),
            self.poll_interval,
            shutdown_rx,
        ));
        Ok(SqliteKeyStore {
            inner: Arc::new(Inner {
                db,
                format: self.format,
                hasher: self.hasher,
                clock: self.clock,
                max_keys_per_account: i64::try_from(self.max_keys_per_account).unwrap_or(i64::MAX),
                invalidations,
                origin,
                poll_interval: self.poll_interval,
                shutdown,
                watcher: Mutex::new(Some(task)),
                #[cfg(feature = "test-util")]
                verify_work: Arc::default(),
            }),
        })
    }
}

impl SqliteKeyStore {
    /// Opens the database file at `path` with the default settings. See
    /// [`SqliteKeyStoreBuilder::open`].
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::builder(path).open().await
    }

    /// A builder for the database file at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> SqliteKeyStoreBuilder {
        SqliteKeyStoreBuilder::new(path)
    }

    /// The format of the keys this store issues: what
    /// [`Verifier::key_format`] returns, without the `Option`.
    pub fn format(&self) -> KeyFormat {
        self.inner.format
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.inner.db.path()
    }

    /// Statements run and bytes of column data read by
    /// [`verify`](Verifier::verify) before it knew whether the secret
    /// matched, since the store opened (feature `test-util`): equal for a
    /// known id with a wrong secret and an unknown id.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn verify_work(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let work = &self.inner.verify_work;
        (work.statements.load(Relaxed), work.bytes.load(Relaxed))
    }

    /// Creates or updates the schema: applies the migrations the file
    /// lacks, in one transaction. Idempotent; safe to call from every
    /// process at every start (concurrent calls take turns).
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        self.inner
            .db
            .run_write(|conn| Ok(migrations::run(conn)?))
            .await
            .map_err(StoreError::Backend)
    }

    /// Stops the change watcher and waits for it, and closes the
    /// connections. Management calls and verification fail afterwards.
    /// Dropping the last clone of the store stops the watcher too, without
    /// waiting.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let task = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.db.close();
    }

    /// Runs `work`, which only reads, on a pooled connection, off the
    /// runtime's worker threads.
    async fn run<T, F>(&self, work: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BoxError> + Send + 'static,
    {
        self.inner.db.run(work).await
    }

    /// Runs `work`, which writes, as [`run`](Self::run) does, in one of
    /// the few writer slots.
    async fn run_write<T, F>(&self, work: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BoxError> + Send + 'static,
    {
        self.inner.db.run_write(work).await
    }

    /// Now, truncated to the microsecond.
    fn now(&self) -> Result<(SystemTime, i64), StoreError> {
        let now = self.inner.clock.now();
        let at = to_micros(now).ok_or_else(|| StoreError::backend("the clock is out of range"))?;
        Ok((from_micros(at).unwrap_or(now), at))
    }

    fn hash_of(&self, key: &GeneratedKey) -> Result<StoredHash, StoreError> {
        let presented = self
            .inner
            .format
            .parse(key.expose_secret())
            .map_err(|_| StoreError::backend("generated key does not parse"))?;
        Ok(self.inner.hasher.hash(&presented))
    }

    /// Announces locally that `id` of `account` changed (other processes
    /// read the change log).
    fn changed(&self, id: KeyId, account: &str) {
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
    }

    /// A change to `id` at `at` (microseconds), by this store, for
    /// [`log_change`] to write.
    fn change(&self, id: KeyId, at: i64) -> Change {
        Change {
            key_id: id.to_string(),
            origin: self.inner.origin.clone(),
            at,
        }
    }
}

/// A row of the change log, less the account (read from the changed row).
struct Change {
    key_id: String,
    origin: String,
    at: i64,
}

/// Appends a change to the log, in the transaction of the change, and
/// prunes old rows, remembering the highest sequence number pruned.
fn log_change(tx: &Transaction<'_>, change: &Change, account: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO tower_api_key_changes (key_id, service_account_id, origin, changed_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute((&change.key_id, account, &change.origin, change.at))?;
    let seq = tx.last_insert_rowid();
    let cutoff = change.at.saturating_sub(CHANGE_LOG_AGE.as_micros() as i64);
    let aged: Option<i64> = tx
        .prepare_cached("SELECT max(seq) FROM tower_api_key_changes WHERE changed_at < ?1")?
        .query_row([cutoff], |row| row.get(0))?;
    let upto = aged.unwrap_or(0).max(seq - CHANGE_LOG_ROWS).min(seq - 1);
    if upto > 0 {
        tx.prepare_cached("DELETE FROM tower_api_key_changes WHERE seq <= ?1")?
            .execute([upto])?;
        tx.prepare_cached(
            "UPDATE tower_api_key_changes_pruned SET upto = max(upto, ?1) WHERE id = 1",
        )?
        .execute([upto])?;
    }
    Ok(())
}

/// The stored rate limits of `account`, if it has any.
fn account_limits_text(conn: &Connection, account: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(&format!(
        "SELECT rate_limits FROM {ACCOUNT_LIMITS} WHERE service_account_id = ?1"
    ))?
    .query_row([account], |row| row.get(0))
    .optional()
}

/// `t` as microseconds since the Unix epoch, truncated toward the past;
/// `None` beyond what an `i64` holds.
fn to_micros(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).ok(),
        Err(before) => {
            let nanos = before.duration().as_nanos();
            i64::try_from(nanos.div_ceil(1000)).ok().map(|m| -m)
        }
    }
}

/// The instant `micros` after (or before) the Unix epoch.
fn from_micros(micros: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

fn micros_or_invalid(t: SystemTime) -> Result<i64, StoreError> {
    // Only a time the field rules refuse (past year 9999) is out of range.
    to_micros(t).ok_or_else(|| StoreError::backend("a time is out of range"))
}

fn time_of(micros: i64) -> Result<SystemTime, BoxError> {
    from_micros(micros).ok_or_else(|| "stored time is out of range".into())
}

/// Scopes as stored: names separated by one space (a name holds none).
fn scopes_text(scopes: &ScopeSet) -> String {
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    names.join(" ")
}

/// A key's credit columns as read.
#[derive(Default)]
struct RawCredits {
    remaining: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<String>,
    refill_day: Option<i64>,
    refilled_at: Option<i64>,
    generation: i64,
}

impl RawCredits {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            remaining: row.get("credits_remaining")?,
            refill_amount: row.get("credits_refill_amount")?,
            refill_interval: row.get("credits_refill_interval")?,
            refill_day: row.get("credits_refill_day")?,
            refilled_at: row.get("credits_refilled_at")?,
            generation: row.get("credits_generation")?,
        })
    }

    /// The columns of `state`; its generation is the one given.
    fn of(state: Option<&CreditState>) -> Result<Self, StoreError> {
        let columns = CreditColumns::of(state);
        Ok(Self {
            remaining: columns.remaining,
            refill_amount: columns.refill_amount,
            refill_interval: columns.refill_interval,
            refill_day: columns.refill_day,
            refilled_at: columns.refilled_at.map(micros_or_invalid).transpose()?,
            generation: columns.generation,
        })
    }

    fn state(&self, id: KeyId) -> Result<Option<CreditState>, BoxError> {
        CreditColumns {
            remaining: self.remaining,
            refill_amount: self.refill_amount,
            refill_interval: self.refill_interval.clone(),
            refill_day: self.refill_day,
            refilled_at: self.refilled_at.map(time_of).transpose()?,
            generation: self.generation,
        }
        .state(id)
    }
}

/// A key's limit and credit columns, to write.
struct LimitColumns {
    rate_limits: String,
    credits: RawCredits,
}

impl LimitColumns {
    /// Sets them on the row of `key_id`, generation included.
    fn write(&self, tx: &Transaction<'_>, key_id: &str) -> rusqlite::Result<()> {
        let c = &self.credits;
        tx.prepare_cached(&format!(
            "UPDATE {TABLE} SET rate_limits = ?2, credits_remaining = ?3,
                 credits_refill_amount = ?4, credits_refill_interval = ?5,
                 credits_refill_day = ?6, credits_refilled_at = ?7, credits_generation = ?8
              WHERE key_id = ?1"
        ))?
        .execute((
            key_id,
            &self.rate_limits,
            c.remaining,
            c.refill_amount,
            &c.refill_interval,
            c.refill_day,
            c.refilled_at,
            c.generation,
        ))?;
        Ok(())
    }
}

/// A key's row as read, before checking: what crosses back from the
/// blocking pool.
struct RawInfo {
    key_id: String,
    service_account_id: String,
    scopes: String,
    description: String,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    hint: String,
    rate_limits: String,
    credits: RawCredits,
    /// The account's limits, when the query read them
    /// ([`ACCOUNT_LIMITS_COLUMN`]) or they were read beside it.
    account_rate_limits: Option<String>,
    version: i64,
    compromise: (Option<i64>, Option<String>, Option<String>, Option<String>),
    quarantined: bool,
}

impl RawInfo {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        let account_rate_limits = match row.get("account_rate_limits") {
            Err(rusqlite::Error::InvalidColumnName(_)) => None,
            other => other?,
        };
        Ok(Self {
            key_id: row.get("key_id")?,
            service_account_id: row.get("service_account_id")?,
            scopes: row.get("scopes")?,
            description: row.get("description")?,
            created_at: row.get("created_at")?,
            expires_at: row.get("expires_at")?,
            last_used_at: row.get("last_used_at")?,
            hint: row.get("hint")?,
            rate_limits: row.get("rate_limits")?,
            credits: RawCredits::read(row)?,
            account_rate_limits,
            version: row.get("version")?,
            compromise: (
                row.get("compromised_at")?,
                row.get("compromise_url")?,
                row.get("compromise_source")?,
                row.get("compromise_action")?,
            ),
            quarantined: row.get("quarantined")?,
        })
    }

    fn record(&self) -> Result<KeyRecord, BoxError> {
        let key_id = KeyId::from_str(&self.key_id).map_err(|_| "stored key id is not valid")?;
        let scopes = ScopeSet::new(self.scopes.split(' ').filter(|s| !s.is_empty()))
            .map_err(|e| format!("stored scopes are not valid: {e}"))?;
        let rate_limits = parse_limits(&self.rate_limits, format_args!("key {key_id}"))?;
        let account_rate_limits = match &self.account_rate_limits {
            Some(text) => parse_limits(text, format_args!("the service account of key {key_id}"))?,
            None => Vec::new(),
        };
        let credits = self.credits.state(key_id)?.map(|state| state.credits);
        let (at, url, source, action) = self.compromise.clone();
        let at = at.map(time_of).transpose()?;
        let mut record = KeyRecord::new(key_id, self.service_account_id.as_str())
            .with_scopes(scopes)
            .with_description(self.description.clone())
            .with_created_at(time_of(self.created_at)?)
            .with_expires_at(self.expires_at.map(time_of).transpose()?)
            .with_rate_limits(rate_limits)
            .with_account_rate_limits(account_rate_limits)
            .with_credits(credits);
        record.compromise = compromise_of(at, url, source, action.as_deref())?;
        record.quarantined = self.quarantined;
        Ok(record)
    }

    fn info(&self) -> Result<KeyInfo, BoxError> {
        Ok(KeyInfo::new(
            self.record()?,
            self.last_used_at.map(time_of).transpose()?,
            self.hint.clone(),
        )
        .with_version(version_of(self.version)?))
    }
}

/// The hash columns the first read of verification returns: one row
/// whether or not the key exists, with placeholders of the same sizes when
/// it does not.
struct RawHashes {
    found: bool,
    hash: Vec<u8>,
    hash_scheme: String,
    hash_pepper_version: Option<i64>,
    has_previous: bool,
    previous_hash: Vec<u8>,
    previous_hash_scheme: String,
    previous_hash_pepper_version: Option<i64>,
}

impl RawHashes {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            found: row.get("found")?,
            hash: row.get("hash")?,
            hash_scheme: row.get("hash_scheme")?,
            hash_pepper_version: row.get("hash_pepper_version")?,
            has_previous: row.get("has_previous")?,
            previous_hash: row.get("previous_hash")?,
            previous_hash_scheme: row.get("previous_hash_scheme")?,
            previous_hash_pepper_version: row.get("previous_hash_pepper_version")?,
        })
    }

    /// Bytes of column data decoded, for [`SqliteKeyStore::verify_work`].
    #[cfg(feature = "test-util")]
    fn bytes(&self) -> u64 {
        let text = self.hash.len()
            + self.hash_scheme.len()
            + self.previous_hash.len()
            + self.previous_hash_scheme.len();
        let ints = [self.hash_pepper_version, self.previous_hash_pepper_version]
            .iter()
            .filter(|v| v.is_some())
            .count()
            * 8;
        (text + ints + 2) as u64
    }

    /// The current and the previous hash, `None` where the row holds none.
    /// Both are decoded whether or not they are real, with the same work.
    fn stored(&self) -> Result<(Option<StoredHash>, Option<StoredHash>), BoxError> {
        let current = stored_hash(
            Some(&self.hash),
            Some(&self.hash_scheme),
            self.hash_pepper_version,
        )?;
        let previous = stored_hash(
            Some(&self.previous_hash),
            Some(&self.previous_hash_scheme),
            self.previous_hash_pepper_version,
        )?;
        Ok((
            current.filter(|_| self.found),
            previous.filter(|_| self.found && self.has_previous),
        ))
    }
}

/// A whole row: the key with its hashes.
struct RawKey {
    info: RawInfo,
    hash: Option<Vec<u8>>,
    hash_scheme: Option<String>,
    hash_pepper_version: Option<i64>,
    previous_hash: Option<Vec<u8>>,
    previous_hash_scheme: Option<String>,
    previous_hash_pepper_version: Option<i64>,
    previous_valid_until: Option<i64>,
    compromised_hash: Option<Vec<u8>>,
}

impl RawKey {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            info: RawInfo::read(row)?,
            hash: row.get("hash")?,
            hash_scheme: row.get("hash_scheme")?,
            hash_pepper_version: row.get("hash_pepper_version")?,
            previous_hash: row.get("previous_hash")?,
            previous_hash_scheme: row.get("previous_hash_scheme")?,
            previous_hash_pepper_version: row.get("previous_hash_pepper_version")?,
            previous_valid_until: row.get("previous_valid_until")?,
            compromised_hash: row.get("compromised_hash")?,
        })
    }

    fn current(&self) -> Result<Option<StoredHash>, BoxError> {
        stored_hash(
            self.hash.as_deref(),
            self.hash_scheme.as_deref(),
            self.hash_pepper_version,
        )
    }

    fn previous(&self) -> Result<Option<StoredHash>, BoxError> {
        stored_hash(
            self.previous_hash.as_deref(),
            self.previous_hash_scheme.as_deref(),
            self.previous_hash_pepper_version,
        )
    }

    fn stored_key(&self) -> Result<StoredKey, BoxError> {
        let hash = self.current()?.ok_or("stored key has no hash")?;
        let mut key = StoredKey::new(self.info.info()?, hash);
        if let (Some(previous), Some(until)) = (self.previous()?, self.previous_valid_until) {
            key = key.with_previous(PreviousHash::new(previous, time_of(until)?));
        }
        let bound = self.compromised_hash.as_deref();
        if let Some(hash) = compromised_hash(bound, Some(hash), self.previous()?) {
            key = key.with_compromised_hash(hash);
        }
        Ok(key)
    }
}

/// Reads the version of key `key_id` in a write's transaction (which holds
/// the write lock) and checks it against `expected`: `None` if there is no
/// such key, `Some(Err(..))` if it moved on.
fn lock_version(
    tx: &Transaction<'_>,
    id: KeyId,
    key_id: &str,
    expected: Option<Version>,
) -> Result<Option<Result<(), StoreError>>, BoxError> {
    let current: Option<i64> = tx
        .prepare_cached(&format!("SELECT version FROM {TABLE} WHERE key_id = ?1"))?
        .query_row([key_id], |row| row.get(0))
        .optional()?;
    let Some(current) = current else {
        return Ok(None);
    };
    Ok(Some(check_version(id, version_of(current)?, expected)))
}

fn is_constraint(e: &BoxError) -> bool {
    e.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        == Some(ErrorCode::ConstraintViolation)
}

fn collision_or_backend(e: BoxError) -> StoreError {
    if is_constraint(&e) {
        // 95 random bits make this practically impossible; never overwrite.
        StoreError::backend("key id collision")
    } else {
        StoreError::Backend(e)
    }
}

#[async_trait]
impl Verifier for SqliteKeyStore {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        // First the hashes alone, in one row of the same columns and sizes
        // whether or not the id exists (placeholders in the hasher's current
        // scheme from the LEFT JOIN when it does not), then the same hashing
        // and comparisons in every case: every scheme and pepper the hasher
        // holds, against the current and the previous hash. Only a secret
        // that matched reads the record. So a known id with a wrong secret
        // costs what an unknown id costs (`verify_work` counts it).
        let candidates = self.inner.hasher.candidates(key);
        let id = key.id().to_string();
        let (scheme, pepper) =
            scheme_columns(self.inner.hasher.scheme()).map_err(VerifierError::backend)?;
        #[cfg(feature = "test-util")]
        let work = self.inner.verify_work.clone();
        let hashes = self
            .run(move |conn| {
                let sql = format!(
                    "SELECT k.key_id IS NOT NULL AS found,
                            coalesce(k.hash, zeroblob(32)) AS hash,
                            coalesce(k.hash_scheme, ?2) AS hash_scheme,
                            CASE WHEN k.key_id IS NULL THEN ?3 ELSE k.hash_pepper_version END
                                AS hash_pepper_version,
                            k.previous_hash IS NOT NULL AS has_previous,
                            coalesce(k.previous_hash, zeroblob(32)) AS previous_hash,
                            coalesce(k.previous_hash_scheme, ?2) AS previous_hash_scheme,
                            CASE WHEN k.previous_hash IS NULL THEN ?3
                                 ELSE k.previous_hash_pepper_version END
                                AS previous_hash_pepper_version
                       FROM (SELECT ?1 AS wanted) AS w
                       LEFT JOIN {TABLE} AS k ON k.key_id = w.wanted"
                );
                let hashes = conn
                    .prepare_cached(&sql)?
                    .query_row((&id, scheme, pepper), RawHashes::read)?;
                #[cfg(feature = "test-util")]
                work.count(hashes.bytes());
                Ok(hashes)
            })
            .await
            .map_err(VerifierError::Backend)?;
        let (current, previous) = hashes.stored().map_err(VerifierError::Backend)?;
        let current = candidates.matches(current.as_ref());
        let previous = candidates.matches(previous.as_ref());
        if !current && !previous {
            return Ok(None);
        }
        let id = key.id().to_string();
        let row = self
            .run(move |conn| {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, previous_valid_until, {ACCOUNT_LIMITS_COLUMN},
                            (compromise_action IS 'quarantine'
                             AND compromised_hash IS previous_hash) AS previous_quarantined
                       FROM {TABLE} WHERE key_id = ?1"
                );
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_row([id], |row| {
                        Ok((
                            RawInfo::read(row)?,
                            row.get::<_, Option<i64>>("previous_valid_until")?,
                            row.get::<_, bool>("previous_quarantined")?,
                        ))
                    })
                    .optional()?)
            })
            .await
            .map_err(VerifierError::Backend)?;
        // Revoked between the two reads.
        let Some((info, previous_valid_until, previous_quarantined)) = row else {
            return Ok(None);
        };
        let mut record = info.record().map_err(VerifierError::Backend)?;
        if !current {
            record.quarantined = previous_quarantined;
        }
        if record.key_id != key.id() {
            // The row is looked up by this id; never hand out another key's record.
            return Ok(None);
        }
        let grace_until = previous_valid_until
            .map(time_of)
            .transpose()
            .map_err(VerifierError::Backend)?;
        Ok(verified(
            record,
            current,
            previous,
            grace_until,
            self.inner.clock.now(),
        ))
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        Some(&self.inner.invalidations)
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(self.inner.format)
    }
}

#[async_trait]
impl CreditLedger for SqliteKeyStore {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        let key_id = id.to_string();
        self.run_write(move |conn| {
            // The write lock first: a lease in another process waits, then
            // reads what this one left.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let raw = tx
                .prepare_cached(&format!(
                    "SELECT {CREDIT_COLUMNS} FROM {TABLE} WHERE key_id = ?1"
                ))?
                .query_row([&key_id], RawCredits::read)
                .optional()?;
            let Some(mut state) = raw.map(|raw| raw.state(id)).transpose()?.flatten() else {
                return Ok(None);
            };
            let lease = state.lease(want, now);
            let columns = RawCredits::of(Some(&state))?;
            tx.prepare_cached(&format!(
                "UPDATE {TABLE} SET credits_remaining = ?2, credits_refilled_at = ?3,
                     credits_generation = ?4
                  WHERE key_id = ?1"
            ))?
            .execute((
                &key_id,
                columns.remaining,
                columns.refilled_at,
                columns.generation,
            ))?;
            tx.commit()?;
            Ok(Some(lease))
        })
        .await
        .map_err(VerifierError::Backend)
    }

    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError> {
        let Ok(generation) = i64::try_from(generation) else {
            // No stored generation is that large.
            return Ok(());
        };
        let key_id = id.to_string();
        let amount = credit_count(amount);
        self.run_write(move |conn| {
            conn.prepare_cached(&format!(
                "UPDATE {TABLE} SET credits_remaining = min(credits_remaining + ?3, ?4)
                  WHERE key_id = ?1 AND credits_remaining IS NOT NULL
                    AND credits_generation = ?2"
            ))?
            .execute((&key_id, generation, amount, credit_count(MAX_CREDITS)))?;
            Ok(())
        })
        .await
        .map_err(VerifierError::Backend)
    }
}

/// `n` credits as a column value: at most [`MAX_CREDITS`], so sums of two
/// never overflow.
fn credit_count(n: u64) -> i64 {
    i64::try_from(n.min(MAX_CREDITS)).unwrap_or(i64::MAX)
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        check_new(&new, self.inner.clock.now())?;
        let key = self.inner.format.generate()?;
        let hash = self.hash_of(&key)?;
        let (scheme, pepper) = scheme_columns(hash.scheme())?;
        let (created_at, created_micros) = self.now()?;
        let expires_micros = new.expires_at.map(micros_or_invalid).transpose()?;
        let expires_at = expires_micros.and_then(from_micros);
        let limits = LimitColumns {
            rate_limits: limits_text(&new.rate_limits),
            credits: RawCredits::of(
                new.credits
                    .map(|c| CreditState::set(c, created_at, 0))
                    .as_ref(),
            )?,
        };
        let mut record = KeyRecord::new(key.id(), new.service_account_id)
            .with_scopes(new.scopes)
            .with_description(new.description)
            .with_expires_at(expires_at)
            .with_created_at(created_at)
            .with_rate_limits(new.rate_limits)
            .with_credits(new.credits);
        let row = (
            key.id().to_string(),
            record.service_account_id.to_string(),
            *hash.digest(),
            scheme,
            pepper,
            scopes_text(&record.scopes),
            record.description.clone(),
            created_micros,
            expires_micros,
            hint_of(&key),
        );
        let limit = self.inner.max_keys_per_account;
        let id = key.id();
        let inserted = self
            .run_write(move |conn| {
                // The write lock first, then the count: a create in another
                // process waits here, and then counts this key.
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let held: i64 = tx
                    .prepare_cached(&format!(
                        "SELECT count(*) FROM {TABLE} WHERE service_account_id = ?1"
                    ))?
                    .query_row([&row.1], |r| r.get(0))?;
                if held >= limit {
                    return Ok(None);
                }
                // The account's limits, for the record returned; checked
                // before anything is written.
                let key_id = row.0.clone();
                let account_limits = match account_limits_text(&tx, &row.1)? {
                    Some(text) => {
                        parse_limits(&text, format_args!("the service account of key {id}"))?
                    }
                    None => Vec::new(),
                };
                tx.prepare_cached(&format!(
                    "INSERT INTO {TABLE} (key_id, service_account_id, hash, hash_scheme,
                         hash_pepper_version, scopes, description, created_at, expires_at, hint)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ))?
                .execute(row)?;
                limits.write(&tx, &key_id)?;
                tx.commit()?;
                Ok(Some(account_limits))
            })
            .await
            .map_err(collision_or_backend)?;
        let Some(account_limits) = inserted else {
            return Err(StoreError::key_limit_reached(
                usize::try_from(limit).unwrap_or(usize::MAX),
            ));
        };
        record.account_rate_limits = account_limits;
        Ok(CreatedKey::new(record, Version::FIRST, key))
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        let id = id.to_string();
        let raw = self
            .run(move |conn| {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, {ACCOUNT_LIMITS_COLUMN} FROM {TABLE} WHERE key_id = ?1"
                );
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_row([id], RawInfo::read)
                    .optional()?)
            })
            .await
            .map_err(StoreError::Backend)?;
        raw.map(|r| r.info().map_err(StoreError::Backend))
            .transpose()
    }

    async fn list(
        &self,
        service_account_id: &str,
        page: ListRequest,
    ) -> Result<KeyPage, StoreError> {
        let size = page.size()?;
        let after = match &page.page_token {
            None => None,
            Some(token) => {
                // The same tokens as the other stores: a position in the
                // listing order, valid even after its key is revoked.
                let (at, id) = parse_page_token(token).ok_or(StoreError::InvalidPageToken)?;
                let invalid = || StoreError::InvalidPageToken;
                let floor = to_micros(at).ok_or_else(invalid)?;
                // Stored times are whole microseconds: "after `at`" for a
                // time between two microseconds is "from the next one on",
                // and "" sorts before every key id.
                if from_micros(floor) == Some(at) {
                    Some((floor, id.to_string()))
                } else {
                    Some((floor.checked_add(1).ok_or_else(invalid)?, String::new()))
                }
            }
        };
        // Unreadable rows are skipped: read on past them until the page
        // (and one more key) is full or the account's keys end.
        let mut cursor = after;
        let mut readable = Vec::new();
        loop {
            let want = size + 1 - readable.len();
            let rows = self
                .list_rows(service_account_id.to_owned(), cursor.take(), want)
                .await?;
            for row in &rows {
                match row.info() {
                    Ok(info) => readable.push(info),
                    Err(e) => warn_unreadable(&row.key_id, &e),
                }
            }
            match rows.last() {
                Some(last) if rows.len() == want && readable.len() <= size => {
                    cursor = Some((last.created_at, last.key_id.clone()));
                }
                _ => break,
            }
        }
        let (keys, more) = fill_page(readable.into_iter().map(Ok::<_, StoreError>), size)?;
        let next_page_token = more
            .then(|| keys.last().map(|k| page_token(&k.record)))
            .flatten();
        Ok(KeyPage::new(keys, next_page_token))
    }

    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        check_update(&update, self.inner.clock.now())?;
        let update_is_empty = update.is_empty();
        let (now_at, now) = self.now()?;
        let change = self.change(id, now);
        let description = update.description;
        let scopes = update.scopes.as_ref().map(scopes_text);
        let set_expiry = update.expires_at.is_some();
        let expires_at = update
            .expires_at
            .flatten()
            .map(micros_or_invalid)
            .transpose()?;
        let rate_limits = update.rate_limits.as_deref().map(limits_text);
        let set_credits = update.credits.is_some();
        // A new setting (or none) starts a new generation: the statement
        // adds 1 to the stored one.
        let credits = RawCredits::of(
            update
                .credits
                .flatten()
                .map(|c| CreditState::set(c, now_at, 0))
                .as_ref(),
        )?;
        // An empty update changes nothing, its version included.
        let bump = i64::from(!update_is_empty);
        let info = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                match lock_version(&tx, id, &change.key_id, expected)? {
                    None => return Ok(None),
                    Some(Err(moved)) => return Ok(Some(Err(moved))),
                    Some(Ok(())) => {}
                }
                let sql = format!(
                    "UPDATE {TABLE} SET
                         version = version + ?13,
                         description = coalesce(?2, description),
                         scopes = coalesce(?3, scopes),
                         expires_at = CASE WHEN ?4 THEN ?5 ELSE expires_at END,
                         rate_limits = coalesce(?6, rate_limits),
                         credits_remaining = CASE WHEN ?7 THEN ?8 ELSE credits_remaining END,
                         credits_refill_amount =
                             CASE WHEN ?7 THEN ?9 ELSE credits_refill_amount END,
                         credits_refill_interval =
                             CASE WHEN ?7 THEN ?10 ELSE credits_refill_interval END,
                         credits_refill_day = CASE WHEN ?7 THEN ?11 ELSE credits_refill_day END,
                         credits_refilled_at =
                             CASE WHEN ?7 THEN ?12 ELSE credits_refilled_at END,
                         credits_generation =
                             CASE WHEN ?7 THEN credits_generation + 1 ELSE credits_generation END
                      WHERE key_id = ?1
                  RETURNING {INFO_COLUMNS}"
                );
                let raw = tx
                    .prepare_cached(&sql)?
                    .query_row(
                        (
                            &change.key_id,
                            description,
                            scopes,
                            set_expiry,
                            expires_at,
                            rate_limits,
                            set_credits,
                            credits.remaining,
                            credits.refill_amount,
                            credits.refill_interval,
                            credits.refill_day,
                            credits.refilled_at,
                            bump,
                        ),
                        RawInfo::read,
                    )
                    .optional()?;
                let Some(mut raw) = raw else {
                    return Ok(None);
                };
                raw.account_rate_limits = account_limits_text(&tx, &raw.service_account_id)?;
                // Checked before the commit: nothing fails after it.
                let info = raw.info()?;
                log_change(&tx, &change, &raw.service_account_id)?;
                tx.commit()?;
                Ok(Some(Ok(info)))
            })
            .await
            .map_err(StoreError::Backend)?;
        let Some(info) = info.transpose()? else {
            return Ok(None);
        };
        self.changed(id, &info.record.service_account_id);
        Ok(Some(info))
    }

    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        let (_, now) = self.now()?;
        let change = self.change(id, now);
        let account = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                match lock_version(&tx, id, &change.key_id, expected)? {
                    None => return Ok(None),
                    Some(Err(moved)) => return Ok(Some(Err(moved))),
                    Some(Ok(())) => {}
                }
                let account: Option<String> = tx
                    .prepare_cached(&format!(
                        "DELETE FROM {TABLE} WHERE key_id = ?1 RETURNING service_account_id"
                    ))?
                    .query_row([&change.key_id], |row| row.get(0))
                    .optional()?;
                if let Some(account) = &account {
                    tx.prepare_cached(&format!(
                        "INSERT OR IGNORE INTO {REVOKED} (key_id, revoked_at) VALUES (?1, ?2)"
                    ))?
                    .execute((&change.key_id, change.at))?;
                    log_change(&tx, &change, account)?;
                }
                tx.commit()?;
                Ok(account.map(Ok))
            })
            .await
            .map_err(StoreError::Backend)?;
        match account.transpose()? {
            Some(account) => {
                self.changed(id, &account);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError> {
        let key = self.inner.format.generate_for(id)?;
        let hash = self.hash_of(&key)?;
        let (scheme, pepper) = scheme_columns(hash.scheme())?;
        let (now_at, now) = self.now()?;
        let keep_previous = !grace.is_zero();
        let valid_until = if keep_previous {
            // A grace period past year 9999 is simply "forever".
            let until = now_at
                .checked_add(grace)
                .unwrap_or_else(latest_time)
                .min(latest_time());
            Some(micros_or_invalid(until)?)
        } else {
            None
        };
        let change = self.change(id, now);
        let digest = *hash.digest();
        let hint = hint_of(&key);
        let record = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                match lock_version(&tx, id, &change.key_id, expected)? {
                    None => return Ok(None),
                    Some(Err(moved)) => return Ok(Some(Err(moved))),
                    Some(Ok(())) => {}
                }
                // Right-hand sides read the row as it was: the current hash
                // becomes the previous one. A zero grace also ends an earlier
                // grace.
                let sql = format!(
                    "UPDATE {TABLE} SET
                         version = version + 1,
                         previous_hash = CASE WHEN ?5 THEN hash END,
                         previous_hash_scheme = CASE WHEN ?5 THEN hash_scheme END,
                         previous_hash_pepper_version = CASE WHEN ?5 THEN hash_pepper_version END,
                         previous_valid_until = ?6,
                         hash = ?2,
                         hash_scheme = ?3,
                         hash_pepper_version = ?4,
                         hint = ?7
                      WHERE key_id = ?1
                  RETURNING {INFO_COLUMNS}"
                );
                let raw = tx
                    .prepare_cached(&sql)?
                    .query_row(
                        (
                            &change.key_id,
                            digest,
                            scheme,
                            pepper,
                            keep_previous,
                            valid_until,
                            hint,
                        ),
                        RawInfo::read,
                    )
                    .optional()?;
                let Some(mut raw) = raw else {
                    return Ok(None);
                };
                raw.account_rate_limits = account_limits_text(&tx, &raw.service_account_id)?;
                // Checked before the commit: nothing fails after it.
                let record = raw.record()?;
                let version = version_of(raw.version)?;
                log_change(&tx, &change, &raw.service_account_id)?;
                tx.commit()?;
                Ok(Some(Ok((record, version))))
            })
            .await
            .map_err(collision_or_backend)?;
        let Some((record, version)) = record.transpose()? else {
            return Ok(None);
        };
        self.changed(id, &record.service_account_id);
        Ok(Some(CreatedKey::new(record, version, key)))
    }

    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let (_, now) = self.now()?;
        let change = self.change(id, now);
        let added = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                match lock_version(&tx, id, &change.key_id, expected)? {
                    None => return Ok(None),
                    Some(Err(moved)) => return Ok(Some(Err(moved))),
                    Some(Ok(())) => {}
                }
                let row = tx
                    .prepare_cached(&format!(
                        "SELECT service_account_id, {CREDIT_COLUMNS} FROM {TABLE} WHERE key_id = ?1"
                    ))?
                    .query_row([&change.key_id], |row| {
                        Ok((row.get::<_, String>(0)?, RawCredits::read(row)?))
                    })
                    .optional()?;
                let Some((account, raw)) = row else {
                    return Ok(None);
                };
                let Some(mut state) = raw.state(id)? else {
                    return Ok(Some(Err(StoreError::no_credits(id))));
                };
                let credits = state.add(amount);
                let mut raw = tx
                    .prepare_cached(&format!(
                        "UPDATE {TABLE} SET credits_remaining = ?2, version = version + 1
                          WHERE key_id = ?1
                      RETURNING {INFO_COLUMNS}"
                    ))?
                    .query_row(
                        (&change.key_id, credit_count(credits.remaining())),
                        RawInfo::read,
                    )?;
                raw.account_rate_limits = account_limits_text(&tx, &account)?;
                // Checked before the commit: nothing fails after it.
                let info = raw.info()?;
                // Other processes' caches re-read the count.
                log_change(&tx, &change, &account)?;
                tx.commit()?;
                Ok(Some(Ok(info)))
            })
            .await
            .map_err(StoreError::Backend)?;
        let Some(info) = added.transpose()? else {
            return Ok(None);
        };
        self.changed(id, &info.record.service_account_id);
        Ok(Some(info))
    }

    async fn account_rate_limits(
        &self,
        service_account_id: &str,
    ) -> Result<Vec<RateLimit>, StoreError> {
        check_account(service_account_id)?;
        let account = service_account_id.to_owned();
        let text = self
            .run(move |conn| Ok(account_limits_text(conn, &account)?))
            .await
            .map_err(StoreError::Backend)?;
        match text {
            Some(text) => parse_limits(
                &text,
                format_args!("service account {service_account_id:?}"),
            )
            .map_err(StoreError::Backend),
            None => Ok(Vec::new()),
        }
    }

    async fn set_account_rate_limits(
        &self,
        service_account_id: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        check_account_limits(service_account_id, &limits)?;
        let (_, now) = self.now()?;
        let account = service_account_id.to_owned();
        let text = limits_text(&limits);
        let origin = self.inner.origin.clone();
        let ids = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if text.is_empty() {
                    tx.prepare_cached(&format!(
                        "DELETE FROM {ACCOUNT_LIMITS} WHERE service_account_id = ?1"
                    ))?
                    .execute([&account])?;
                } else {
                    tx.prepare_cached(&format!(
                        "INSERT INTO {ACCOUNT_LIMITS} (service_account_id, rate_limits)
                         VALUES (?1, ?2)
                         ON CONFLICT (service_account_id) DO UPDATE SET rate_limits = excluded.rate_limits"
                    ))?
                    .execute((&account, &text))?;
                }
                let ids: Vec<String> = tx
                    .prepare_cached(&format!(
                        "SELECT key_id FROM {TABLE} WHERE service_account_id = ?1"
                    ))?
                    .query_map([&account], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                // Every key of the account changed for the caches of every
                // process on the file.
                for key_id in &ids {
                    let change = Change {
                        key_id: key_id.clone(),
                        origin: origin.clone(),
                        at: now,
                    };
                    log_change(&tx, &change, &account)?;
                }
                tx.commit()?;
                Ok(ids)
            })
            .await
            .map_err(StoreError::Backend)?;
        for id in ids.iter().filter_map(|id| KeyId::from_str(id).ok()) {
            self.changed(id, service_account_id);
        }
        Ok(())
    }

    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        // The newest time per key, before touching the file.
        let mut newest: std::collections::HashMap<KeyId, i64> = Default::default();
        for (id, at) in uses {
            let Some(at) = to_micros(*at) else {
                continue;
            };
            let entry = newest.entry(*id).or_insert(at);
            *entry = (*entry).max(at);
        }
        let newest: Vec<(String, i64)> = newest
            .into_iter()
            .map(|(id, at)| (id.to_string(), at))
            .collect();
        self.run_write(move |conn| {
            // One transaction for the batch; only forward (rows already as
            // new are not even written).
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut touch = tx.prepare_cached(&format!(
                    "UPDATE {TABLE} SET last_used_at = ?2
                      WHERE key_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)"
                ))?;
                for (id, at) in &newest {
                    touch.execute((id, at))?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(StoreError::Backend)
    }

    async fn export(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        let limit = export_page_size(limit)?;
        // Unreadable rows are skipped: read on past them until the page is
        // full or the keys end, so an empty page is still the end.
        let mut cursor = after.map(|id| id.to_string());
        let mut keys = Vec::new();
        loop {
            let want = limit - keys.len();
            let rows = self.export_rows(cursor.take(), want).await?;
            for row in &rows {
                match row.stored_key() {
                    Ok(key) => keys.push(key),
                    Err(e) => warn_unreadable(&row.info.key_id, &e),
                }
            }
            match rows.last() {
                Some(last) if rows.len() == want && keys.len() < limit => {
                    cursor = Some(last.info.key_id.clone());
                }
                _ => return Ok(keys),
            }
        }
    }

    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        let (now_at, _) = self.now()?;
        check_import(&key, &self.inner.format, now_at)?;
        let version = imported_version(key.info.record.key_id, key.info.version)?;
        let record = &key.info.record;
        let id = record.key_id;
        // The credits start a generation here; the account's limits are
        // this store's own, never an import's.
        let limits = LimitColumns {
            rate_limits: limits_text(&record.rate_limits),
            credits: RawCredits::of(
                record
                    .credits
                    .map(|c| CreditState::set(c, now_at, 0))
                    .as_ref(),
            )?,
        };
        let (scheme, pepper) = scheme_columns(key.hash.scheme())?;
        let (previous, previous_scheme, previous_pepper, valid_until) = match &key.previous {
            Some(p) => {
                let (scheme, pepper) = scheme_columns(p.hash.scheme())?;
                (
                    Some(*p.hash.digest()),
                    Some(scheme),
                    pepper,
                    Some(micros_or_invalid(p.valid_until)?),
                )
            }
            None => (None, None, None, None),
        };
        let account = record.service_account_id.to_string();
        let hash = key.hash;
        let last_used_at = key.info.last_used_at.map(micros_or_invalid).transpose()?;
        let insert = (
            id.to_string(),
            account.clone(),
            *hash.digest(),
            scheme,
            pepper,
            previous,
            previous_scheme,
            previous_pepper,
            valid_until,
            scopes_text(&record.scopes),
            record.description.clone(),
            micros_or_invalid(record.created_at)?,
            record.expires_at.map(micros_or_invalid).transpose()?,
            last_used_at,
            key.info.hint.clone(),
        );
        let compromise = compromise_columns(&key)?;
        let limit = self.inner.max_keys_per_account;
        let key_id = insert.0.clone();
        self.run_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let was_revoked = tx
                .prepare_cached(&format!("SELECT 1 FROM {REVOKED} WHERE key_id = ?1"))?
                .exists([&insert.0])?;
            if was_revoked {
                return Ok(Err(import_revoked(id)));
            }
            let existing = tx
                .prepare_cached(&format!(
                    "SELECT service_account_id, hash, hash_scheme, hash_pepper_version
                       FROM {TABLE} WHERE key_id = ?1"
                ))?
                .query_row([&insert.0], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                    ))
                })
                .optional()?;
            if let Some((held_by, digest, scheme, pepper)) = existing {
                let held = stored_hash(Some(&digest), Some(&scheme), pepper)?;
                if held_by != account || held != Some(hash) {
                    return Ok(Err(import_conflict(id)));
                }
                tx.prepare_cached(&format!(
                    "UPDATE {TABLE} SET last_used_at = ?2
                      WHERE key_id = ?1 AND ?2 IS NOT NULL
                        AND (last_used_at IS NULL OR last_used_at < ?2)"
                ))?
                .execute((&insert.0, last_used_at))?;
                tx.commit()?;
                return Ok(Ok(Imported::AlreadyPresent));
            }
            let held: i64 = tx
                .prepare_cached(&format!(
                    "SELECT count(*) FROM {TABLE} WHERE service_account_id = ?1"
                ))?
                .query_row([&account], |r| r.get(0))?;
            if held >= limit {
                return Ok(Err(StoreError::key_limit_reached(
                    usize::try_from(limit).unwrap_or(usize::MAX),
                )));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO {TABLE} (key_id, service_account_id, hash, hash_scheme,
                     hash_pepper_version, previous_hash, previous_hash_scheme,
                     previous_hash_pepper_version, previous_valid_until, scopes, description,
                     created_at, expires_at, last_used_at, hint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
            ))?
            .execute(insert)?;
            limits.write(&tx, &key_id)?;
            tx.prepare_cached(&format!(
                "UPDATE {TABLE} SET version = ?2, compromised_at = ?3, compromise_url = ?4,
                     compromise_source = ?5, compromise_action = ?6, compromised_hash = ?7
                  WHERE key_id = ?1"
            ))?
            .execute((
                &key_id,
                version,
                compromise.0,
                compromise.1,
                compromise.2,
                compromise.3,
                compromise.4,
            ))?;
            tx.commit()?;
            Ok(Ok(Imported::Added))
        })
        .await
        .map_err(|e| {
            if is_constraint(&e) {
                // The hash index: another key with this hash.
                StoreError::conflict(id, ConflictKind::IdOrHashTaken)
            } else {
                StoreError::Backend(e)
            }
        })?
    }

    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        let limit = export_page_size(limit)? as i64;
        let after = after.map(|id| id.to_string());
        let ids = self
            .run(move |conn| {
                let sql = format!(
                    "SELECT key_id FROM {REVOKED}
                      WHERE ?1 IS NULL OR key_id > ?1
                      ORDER BY key_id LIMIT ?2"
                );
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_map((after, limit), |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
            .map_err(StoreError::Backend)?;
        ids.iter()
            .map(|id| {
                KeyId::from_str(id).map_err(|_| {
                    StoreError::backend(format!("revoked id {} is not valid", shown_id(id)))
                })
            })
            .collect()
    }

    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        let (_, now) = self.now()?;
        let change = self.change(id, now);
        let account = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO {REVOKED} (key_id, revoked_at) VALUES (?1, ?2)"
                ))?
                .execute((&change.key_id, change.at))?;
                let account: Option<String> = tx
                    .prepare_cached(&format!(
                        "DELETE FROM {TABLE} WHERE key_id = ?1 RETURNING service_account_id"
                    ))?
                    .query_row([&change.key_id], |row| row.get(0))
                    .optional()?;
                if let Some(account) = &account {
                    log_change(&tx, &change, account)?;
                }
                tx.commit()?;
                Ok(account)
            })
            .await
            .map_err(StoreError::Backend)?;
        if let Some(account) = &account {
            self.changed(id, account);
        }
        Ok(account.is_some())
    }

    async fn record_compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        self.compromise(key, report).await
    }

    async fn unreadable(&self) -> Result<Vec<String>, StoreError> {
        let mut cursor = None;
        let mut ids = Vec::new();
        loop {
            let rows = self.export_rows(cursor.take(), MAX_EXPORT_PAGE).await?;
            for row in &rows {
                if row.stored_key().is_err() && ids.len() < MAX_EXPORT_PAGE {
                    ids.push(shown_id(&row.info.key_id));
                }
            }
            match rows.last() {
                Some(last) if rows.len() == MAX_EXPORT_PAGE => {
                    cursor = Some(last.info.key_id.clone());
                }
                _ => return Ok(ids),
            }
        }
    }
}

/// Raw reads for list and export, which skip the rows they cannot read.
impl SqliteKeyStore {
    /// Up to `limit` rows of `account` after `after` (created_at, key_id),
    /// in listing order.
    async fn list_rows(
        &self,
        account: String,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<RawInfo>, StoreError> {
        let limit = limit as i64;
        self.run(move |conn| {
            let rows = match after {
                None => {
                    let sql = format!(
                        "SELECT {INFO_COLUMNS}, {ACCOUNT_LIMITS_COLUMN} FROM {TABLE}
                          WHERE service_account_id = ?1
                          ORDER BY created_at, key_id
                          LIMIT ?2"
                    );
                    conn.prepare_cached(&sql)?
                        .query_map((account, limit), RawInfo::read)?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                }
                Some((at, id)) => {
                    let sql = format!(
                        "SELECT {INFO_COLUMNS}, {ACCOUNT_LIMITS_COLUMN} FROM {TABLE}
                          WHERE service_account_id = ?1
                            AND (created_at, key_id) > (?2, ?3)
                          ORDER BY created_at, key_id
                          LIMIT ?4"
                    );
                    conn.prepare_cached(&sql)?
                        .query_map((account, at, id, limit), RawInfo::read)?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                }
            };
            Ok(rows)
        })
        .await
        .map_err(StoreError::Backend)
    }

    /// Up to `limit` whole rows with key ids after `after`, in key id order.
    async fn export_rows(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<RawKey>, StoreError> {
        let limit = limit as i64;
        self.run(move |conn| {
            let sql = format!(
                "SELECT {INFO_COLUMNS}, {HASH_COLUMNS} FROM {TABLE}
                  WHERE ?1 IS NULL OR key_id > ?1
                  ORDER BY key_id LIMIT ?2"
            );
            Ok(conn
                .prepare_cached(&sql)?
                .query_map((after, limit), RawKey::read)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
        .map_err(StoreError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_truncate_toward_the_past() {
        let t = UNIX_EPOCH + Duration::new(10, 123_456_789);
        assert_eq!(to_micros(t), Some(10_123_456));
        let t = UNIX_EPOCH - Duration::new(10, 123_456_789);
        assert_eq!(to_micros(t), Some(-10_123_457));
        let t = UNIX_EPOCH - Duration::new(0, 999_999_999);
        assert_eq!(to_micros(t), Some(-1_000_000));
        for micros in [0, 5, -5, 253_402_300_799_999_999, -62_135_596_800_000_000] {
            assert_eq!(from_micros(micros).and_then(to_micros), Some(micros));
        }
    }

    #[test]
    fn scopes_round_trip_through_their_text() {
        let scopes = ScopeSet::new(["b.c", "a-1.x_y", "z"]).unwrap();
        let text = scopes_text(&scopes);
        let back = ScopeSet::new(text.split(' ').filter(|s| !s.is_empty())).unwrap();
        assert_eq!(back, scopes);
        assert_eq!(scopes_text(&ScopeSet::empty()), "");
    }

    #[tokio::test]
    async fn dropping_the_last_clone_stops_the_watcher() {
        let dir = std::env::temp_dir().join(format!(
            "tak-sqlite-unit-{}-{}",
            std::process::id(),
            KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteKeyStore::open(dir.join("keys.db")).await.unwrap();
        let watcher = store
            .inner
            .watcher
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .abort_handle();
        let clone = store.clone();
        drop(store);
        assert!(!watcher.is_finished(), "a clone is alive");
        drop(clone);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !watcher.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the watcher stops with the last clone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
