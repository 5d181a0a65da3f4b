//! The PostgreSQL key store, for services with several replicas (feature
//! `postgres`).
//!
//! [`PgKeyStore`] keeps keys in one table, `tower_api_key_keys`, on
//! [tokio-postgres] with a [deadpool] connection pool, and implements the
//! same management operations as the [`MemoryStore`](tower_api_key::MemoryStore)
//! (create, get, list, update, revoke, reissue with grace, usage) as well as
//! the [`Verifier`] trait.
//!
//! - **At rest**: the hash of each key (its [`StoredHash`] digest in a
//!   `bytea` column with a unique index, plus its scheme and pepper version),
//!   never the key nor anything it could be recovered from. A key is verified
//!   by reading the row of its id (one row in every case, all NULL for an
//!   unknown id) and comparing, in constant time, its current and graced
//!   previous hash with the key hashed under every scheme and pepper the
//!   store's hasher holds: the same work whether or not the id exists, and
//!   whichever pepper the stored hash was made with.
//! - **Schema**: shipped with the crate; [`PgKeyStore::migrate`] applies it.
//!   Idempotent and safe to call from every replica at start (an advisory
//!   lock serializes concurrent callers). Tables go into the first schema of
//!   the connection's `search_path`.
//! - **Push invalidation**: revoke, reissue, update and `add_credits` send
//!   `NOTIFY tower_api_key_invalidate, '<key id> <service account id>'`
//!   ([`DEFAULT_CHANNEL`]) in the same statement as the change, so it is sent
//!   if and only if the change commits. The payload is the public key id and
//!   the key's account (which lets caches bound their bookkeeping per
//!   account), never a hash; a bare key id, as older versions send, is
//!   accepted too. Every
//!   store listens on a connection of its own and publishes what it hears on
//!   its [`Invalidations`] bus, which the [`CachedVerifier`] over it
//!   subscribes to. After the LISTEN connection is lost and restored, the
//!   store invalidates every cached key (it may have missed notifications),
//!   so correctness never depends on a notification arriving. The local
//!   cache is also invalidated directly, before revoke returns.
//! - **Limits and credits** (migration 3): a key's rate limits and credits
//!   are columns of its row; a service account's limits are a row of
//!   `tower_api_key_account_limits`, read with the key in the verification's
//!   one round trip, and new ones are announced by a NOTIFY per key of the
//!   account. A credit lease locks the key's row (`SELECT … FOR UPDATE`), so
//!   replicas never grant a credit twice. Replicas share rate limits through
//!   [`PgKeyStore::rate_limit_sync`] (migration 4).
//! - **Reconnection bound**: the listener backs off between failed attempts,
//!   but once the database answers again it listens again within
//!   [`PgKeyStoreBuilder::with_reconnect_probe_interval`] (250 ms) plus one
//!   connection attempt, and at once after any store call that reached the
//!   database.
//! - **Fail closed**: when the database cannot answer, [`Verifier::verify`]
//!   returns `Err` (the middleware answers 503 and caches nothing), never
//!   `Ok(None)`. Keys already in a cache keep working until their positive
//!   TTL.
//! - **Time**: every time written (creation, grace deadlines, uses) comes
//!   from the store's [`Clock`] (the system clock unless
//!   [`PgKeyStoreBuilder::with_clock`] says otherwise), never from the
//!   database's `now()`. Keep replica clocks in sync (NTP). Times are stored
//!   with microsecond precision; the store truncates them before writing, so
//!   what `create` returns is what `get` reads back.
//! - **Usage**: [`KeyStore::record_usage`] writes a batch in one statement,
//!   moving `last_used_at` forward only.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_api_key::cache::{CacheConfig, CachedVerifier};
//! use tower_api_key_postgres::PgKeyStore;
//! use tower_api_key::KeyStore;
//! use tower_api_key::store::{ NewKey};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgKeyStore::connect("postgres://app@db.internal/app").await?;
//! store.migrate().await?; // at every start, from every replica
//!
//! let cache = CachedVerifier::new(
//!     store.clone(),
//!     CacheConfig::builder().positive_ttl(Duration::from_secs(60)).build(),
//! );
//! let created = store.create(NewKey::new("sa-1")).await?;
//! let presented = store.format().parse(created.key.expose_secret())?;
//! assert_eq!(cache.lookup(&presented).await?.service_account_id(), "sa-1");
//!
//! // Refused here at once, and on every other replica within the NOTIFY delay.
//! store.revoke(created.record.key_id, None).await?;
//! assert!(cache.lookup(&presented).await.is_err());
//! store.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! TLS: [`PgKeyStoreBuilder::connect`] connects without TLS;
//! [`PgKeyStoreBuilder::connect_with_tls`] takes any tokio-postgres TLS
//! connector (such as `postgres-native-tls` or `tokio-postgres-rustls`).
//!
//! [tokio-postgres]: https://docs.rs/tokio-postgres
//! [deadpool]: https://docs.rs/deadpool-postgres
//! [`Clock`]: tower_api_key::clock::Clock
//! [`CachedVerifier`]: tower_api_key::cache::CachedVerifier
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod compromise;
mod listener;
mod migrations;
mod rate_sync;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Socket};

pub use listener::ListenerStatus;
pub use migrations::migrations;
pub use rate_sync::PgRateLimitSync;

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

/// The NOTIFY channel revocations, reissues and updates are announced on,
/// unless [`PgKeyStoreBuilder::with_channel`] names another. The payload is
/// the key id and the key's service account id, separated by a space.
pub const DEFAULT_CHANNEL: &str = "tower_api_key_invalidate";

/// Longest service account id sent in a NOTIFY payload, in bytes (PostgreSQL
/// takes payloads under 8,000 bytes); a key of a longer one is announced by
/// its id alone.
const MAX_NOTIFY_ACCOUNT_LEN: usize = 1024;

/// The NOTIFY payload for the changed row `alias`: `<key id> <service account
/// id>` (a key id never holds a space), or the bare key id when the account
/// is too long. The listener accepts both, and the bare id from older
/// versions of this crate.
fn notify_payload(alias: &str) -> String {
    format!(
        "CASE WHEN octet_length({alias}.service_account_id) <= {MAX_NOTIFY_ACCOUNT_LEN} \
         THEN {alias}.key_id || ' ' || {alias}.service_account_id ELSE {alias}.key_id END"
    )
}

/// The key table.
const TABLE: &str = "tower_api_key_keys";

/// The ids of revoked keys, which an import never brings back.
const REVOKED: &str = "tower_api_key_revoked";

/// First key of the advisory locks that serialize creates per account
/// ("takc" in ASCII); the second is a hash of the account.
const CREATE_LOCK_CLASS: i32 = 0x7461_6b63;

/// The rate limits service accounts share.
const ACCOUNT_LIMITS: &str = "tower_api_key_account_limits";

/// A key's credit columns.
const CREDIT_COLUMNS: &str = "credits_remaining, credits_refill_amount, credits_refill_interval, \
     credits_refill_day, credits_refilled_at, credits_generation";

/// What the management API shows of a key, its limits and credits included.
const INFO_COLUMNS: &str = "key_id, service_account_id, scopes, description, created_at, \
     expires_at, last_used_at, hint, rate_limits, credits_remaining, credits_refill_amount, \
     credits_refill_interval, credits_refill_day, credits_refilled_at, credits_generation, \
     version, compromised_at, compromise_url, compromise_source, compromise_action, \
     COALESCE(compromise_action = 'quarantine' AND compromised_hash = hash, false) AS quarantined";

/// The account limits of the key row `alias` (the key table, or a CTE over
/// it), read in the same statement as the key.
fn account_limits_column(alias: &str) -> String {
    format!(
        "(SELECT a.rate_limits FROM {ACCOUNT_LIMITS} AS a \
          WHERE a.service_account_id = {alias}.service_account_id) AS account_rate_limits"
    )
}

/// What verification needs besides.
const HASH_COLUMNS: &str = "hash, hash_scheme, hash_pepper_version, previous_hash, \
     previous_hash_scheme, previous_hash_pepper_version, previous_valid_until, compromised_hash";

/// Keys in PostgreSQL, with push invalidation between replicas. See the
/// [module docs](self).
///
/// Cheap to clone: clones share the pool, the listener and the bus. The
/// listener stops on [`PgKeyStore::shutdown`] or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct PgKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: StoreClock,
    channel: String,
    max_keys_per_account: i64,
    invalidations: Invalidations,
    status: watch::Receiver<ListenerStatus>,
    // Tells a listener that is not listening that the database answers again.
    wake_listener: Arc<Notify>,
    // Dropping it (with the last clone of the store) stops the listener too.
    shutdown: watch::Sender<bool>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection settings: they may hold a password.
        f.debug_struct("PgKeyStore")
            .field("format", &self.inner.format)
            .field("channel", &self.inner.channel)
            .field("listener", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`PgKeyStore`]; from [`PgKeyStore::builder`] or
/// [`PgKeyStoreBuilder::new`].
#[must_use]
pub struct PgKeyStoreBuilder {
    pg: tokio_postgres::Config,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: StoreClock,
    channel: String,
    max_keys_per_account: usize,
    pool_size: usize,
    timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    health_check_interval: Duration,
    probe_interval: Duration,
}

impl fmt::Debug for PgKeyStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgKeyStoreBuilder")
            .field("format", &self.format)
            .field("channel", &self.channel)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PgKeyStoreBuilder {
    /// Settings for the database `config` points at, with the defaults: key
    /// prefix `tak`, plain SHA-256, the system clock, channel
    /// [`DEFAULT_CHANNEL`], 1,000 keys per service account, 10 pooled connections, 5 s timeouts, reconnection
    /// backoff from 100 ms to 5 s cut short by a probe every 250 ms, a
    /// listener health check every 10 s.
    pub fn new(config: tokio_postgres::Config) -> Self {
        Self {
            pg: config,
            format: KeyFormat::default(),
            hasher: KeyHasher::default(),
            clock: StoreClock::default(),
            channel: DEFAULT_CHANNEL.to_owned(),
            max_keys_per_account: DEFAULT_MAX_KEYS_PER_ACCOUNT,
            pool_size: 10,
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(10),
            probe_interval: Duration::from_millis(250),
        }
    }

    /// The key format (default prefix `tak`).
    pub fn with_format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// How keys are hashed (default plain SHA-256). Keep the peppers out of
    /// the database.
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

    /// The NOTIFY channel (default [`DEFAULT_CHANNEL`]): 1 to 63 characters
    /// of `a-z`, `0-9` and `_`, not starting with a digit. Every replica of
    /// one key table must use the same one; stores of different key tables
    /// in one database should use different ones.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The most keys one service account may hold (default
    /// [`DEFAULT_MAX_KEYS_PER_ACCOUNT`], 1,000), expired keys included; a
    /// create past it fails with [`StoreError::KeyLimitReached`]. At least 1.
    /// Creates for one account are serialized (a transaction-level advisory
    /// lock on the account), so replicas creating at once cannot overshoot.
    /// Every replica should use the same limit.
    pub fn max_keys_per_account(mut self, limit: usize) -> Self {
        self.max_keys_per_account = limit.max(1);
        self
    }

    /// Most pooled connections (default 10); the LISTEN connection is extra.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Bound on connecting, on waiting for a pooled connection, and on the
    /// listener's health check (default 5 s). Also the connect timeout when
    /// the configuration sets none.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Delays between the listener's reconnection attempts: the first
    /// attempt after a loss is immediate, the next ones wait from `min`,
    /// doubling up to `max`, with jitter (default 100 ms to 5 s). A delay
    /// ends early once the database answers the pool again (see
    /// [`with_reconnect_probe_interval`](Self::with_reconnect_probe_interval)).
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// While the listener is not listening, how often it checks, with a
    /// query on a pooled connection, whether the database answers again
    /// (default 250 ms). When it does, the listener reconnects at once
    /// instead of waiting out its backoff; a store call that reaches the
    /// database wakes it at once as well. After a database restart the
    /// listener therefore listens again (and flushes the cache) within this
    /// interval plus one connection attempt.
    pub fn with_reconnect_probe_interval(mut self, every: Duration) -> Self {
        self.probe_interval = every.max(Duration::from_millis(10));
        self
    }

    /// How often the listener checks that its connection still answers
    /// (default 10 s). A connection closed by the server is noticed at once;
    /// this finds the ones that died silently.
    pub fn with_health_check_interval(mut self, every: Duration) -> Self {
        self.health_check_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Connects without TLS. See [`PgKeyStoreBuilder::connect_with_tls`].
    pub async fn connect(self) -> Result<PgKeyStore, StoreError> {
        self.connect_with_tls(NoTls).await
    }

    /// Connects with the TLS connector `tls`: checks that the database
    /// answers, then starts the listener and waits until it listens, so a
    /// change committed after this returns is always announced to this
    /// store. Does not migrate: call [`PgKeyStore::migrate`].
    pub async fn connect_with_tls<T>(mut self, tls: T) -> Result<PgKeyStore, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        if !valid_channel(&self.channel) {
            return Err(ConfigError::ChannelName.into());
        }
        if self.pg.get_connect_timeout().is_none() {
            self.pg.connect_timeout(self.timeout);
        }
        let mut listener_pg = self.pg.clone();
        if self.pg.get_application_name().is_none() {
            self.pg.application_name("tower-api-key");
            listener_pg.application_name("tower-api-key-listener");
        }

        let manager = Manager::from_config(
            self.pg,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
            .build()
            .map_err(StoreError::backend)?;
        // Fail at start, not at the first request, when the database is not there.
        drop(pool.get().await.map_err(StoreError::backend)?);

        let invalidations = Invalidations::new();
        let (status_tx, mut status) = watch::channel(ListenerStatus::Connecting { failures: 0 });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let wake_listener = Arc::new(Notify::new());
        let reach = listener::Reachability {
            pool: pool.clone(),
            wake: wake_listener.clone(),
        };
        let config = listener::ListenerConfig {
            pg: listener_pg,
            channel: self.channel.clone(),
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            health_check_interval: self.health_check_interval,
            probe_interval: self.probe_interval,
            timeout: self.timeout,
        };
        let task = tokio::spawn(listener::run(
            config,
            reach,
            tls,
            invalidations.clone(),
            status_tx,
            shutdown_rx,
        ));
        let store = PgKeyStore {
            inner: Arc::new(Inner {
                pool,
                format: self.format,
                hasher: self.hasher,
                clock: self.clock,
                channel: self.channel,
                max_keys_per_account: i64::try_from(self.max_keys_per_account).unwrap_or(i64::MAX),
                invalidations,
                status: status.clone(),
                wake_listener,
                shutdown,
                listener: Mutex::new(Some(task)),
            }),
        };
        let listening = tokio::time::timeout(
            self.timeout.saturating_mul(2),
            status.wait_for(ListenerStatus::is_listening),
        )
        .await;
        if !matches!(listening, Ok(Ok(_))) {
            store.shutdown().await;
            return Err(StoreError::backend(
                "the LISTEN connection could not be established",
            ));
        }
        Ok(store)
    }
}

fn valid_channel(channel: &str) -> bool {
    let bytes = channel.as_bytes();
    (1..=63).contains(&bytes.len())
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

impl PgKeyStore {
    /// The format of the keys this store issues: what
    /// [`Verifier::key_format`] returns, without the `Option`.
    pub fn format(&self) -> KeyFormat {
        self.inner.format
    }

    /// Connects to the database at `url` (a libpq-style URL or key=value
    /// string) with the default settings. See [`PgKeyStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url)?.connect().await
    }

    /// A builder for the database at `url`.
    pub fn builder(url: &str) -> Result<PgKeyStoreBuilder, StoreError> {
        // The parse error never holds the URL (which may hold a password).
        let config = tokio_postgres::Config::from_str(url).map_err(ConfigError::database_url)?;
        Ok(PgKeyStoreBuilder::new(config))
    }

    /// Creates or updates the schema: applies the migrations the database
    /// lacks, in one transaction. Idempotent; safe to call from every replica
    /// at every start (concurrent calls wait for each other).
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut client = self.client().await?;
        migrations::run(&mut client)
            .await
            .map_err(StoreError::backend)
    }

    /// Shares rate limits between replicas through this database (table
    /// `tower_api_key_rate_buckets`, migration 4), on this store's pool:
    /// pass it to [`LimitSettingsBuilder::shared`](tower_api_key::limits::LimitSettingsBuilder::shared).
    pub fn rate_limit_sync(&self) -> PgRateLimitSync {
        PgRateLimitSync::new(self.inner.pool.clone())
    }

    /// The NOTIFY channel of this store.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The state of the LISTEN connection, as a watch: wait on it rather than
    /// sleeping (`status.wait_for(ListenerStatus::is_listening)`). The
    /// current state counts as seen: `changed()` waits for the next one.
    pub fn listener_status(&self) -> watch::Receiver<ListenerStatus> {
        let mut status = self.inner.status.clone();
        status.mark_unchanged();
        status
    }

    /// Stops the listener and waits for it, and closes the pool. Management
    /// calls and verification fail afterwards. Dropping the last clone of the
    /// store stops the listener too, without waiting.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let task = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.pool.close();
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await.map_err(StoreError::backend)
    }

    fn now(&self) -> SystemTime {
        micros(self.inner.clock.now())
    }

    fn hash_of(&self, key: &GeneratedKey) -> Result<StoredHash, StoreError> {
        let presented = self
            .inner
            .format
            .parse(key.expose_secret())
            .map_err(|_| StoreError::backend("generated key does not parse"))?;
        Ok(self.inner.hasher.hash(&presented))
    }

    /// Runs one statement on a pooled connection (prepared once per connection).
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, BoxError> {
        let client = self.inner.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        let rows = client.query(&statement, params).await?;
        self.database_answered();
        Ok(rows)
    }

    /// The database answered: a listener waiting out its backoff reconnects
    /// now, not up to the backoff's maximum later.
    fn database_answered(&self) {
        if !self.inner.status.borrow().is_listening() {
            self.inner.wake_listener.notify_one();
        }
    }

    /// Announces locally that `id`, of `account` if known, changed (other
    /// replicas hear the NOTIFY).
    fn changed(&self, id: KeyId, account: Option<&str>) {
        let what = match account {
            Some(account) => Invalidation::key_of(id, account),
            None => Invalidation::Key(id),
        };
        self.inner.invalidations.publish(&what);
    }

    /// Why a conditional write to `id` changed no row: `None` if there is
    /// no such key, [`StoreError::VersionMismatch`] if it is at another
    /// version than `expected`, `Some(())` if it exists at that version
    /// (the write's other conditions refused it).
    async fn not_written(
        &self,
        id: KeyId,
        expected: Option<Version>,
    ) -> Result<Option<()>, StoreError> {
        let sql = format!("SELECT version FROM {TABLE} WHERE key_id = $1");
        let rows = self
            .query(&sql, &[&id.as_str()])
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let current = row
            .try_get(0)
            .map_err(BoxError::from)
            .and_then(version_of)
            .map_err(StoreError::Backend)?;
        check_version(id, current, expected)?;
        Ok(Some(()))
    }
}

use tower_api_key_sql::BoxError;

/// `t` truncated to the microsecond (toward the past), as PostgreSQL keeps it.
fn micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => UNIX_EPOCH + Duration::new(after.as_secs(), after.subsec_micros() * 1000),
        Err(e) => {
            let before = e.duration();
            let extra = u32::from(before.subsec_nanos() % 1000 != 0);
            // Duration::new carries a full second of nanoseconds over.
            UNIX_EPOCH - Duration::new(before.as_secs(), (before.subsec_micros() + extra) * 1000)
        }
    }
}

fn record_of(row: &Row) -> Result<KeyRecord, BoxError> {
    let key_id: &str = row.try_get("key_id")?;
    let key_id = KeyId::from_str(key_id).map_err(|_| "stored key id is not valid")?;
    let service_account_id: String = row.try_get("service_account_id")?;
    let scopes: Vec<String> = row.try_get("scopes")?;
    let scopes = ScopeSet::new(scopes).map_err(|e| format!("stored scopes are not valid: {e}"))?;
    let rate_limits = parse_limits(row.try_get("rate_limits")?, format_args!("key {key_id}"))?;
    // Read when the statement reads them ([`account_limits_column`]).
    let account_rate_limits = if row
        .columns()
        .iter()
        .any(|c| c.name() == "account_rate_limits")
    {
        match row.try_get::<_, Option<&str>>("account_rate_limits")? {
            Some(text) => parse_limits(text, format_args!("the service account of key {key_id}"))?,
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let credits = credits_of(row, key_id)?.map(|state| state.credits);
    let mut record = KeyRecord::new(key_id, service_account_id)
        .with_scopes(scopes)
        .with_description(row.try_get::<_, String>("description")?)
        .with_created_at(row.try_get("created_at")?)
        .with_expires_at(row.try_get("expires_at")?)
        .with_rate_limits(rate_limits)
        .with_account_rate_limits(account_rate_limits)
        .with_credits(credits);
    record.compromise = compromise_of(
        row.try_get("compromised_at")?,
        row.try_get("compromise_url")?,
        row.try_get("compromise_source")?,
        row.try_get("compromise_action")?,
    )?;
    record.quarantined = row.try_get("quarantined")?;
    Ok(record)
}

/// The credit state in a row's credit columns.
fn credits_of(row: &Row, id: KeyId) -> Result<Option<CreditState>, BoxError> {
    CreditColumns {
        remaining: row.try_get("credits_remaining")?,
        refill_amount: row.try_get("credits_refill_amount")?,
        refill_interval: row.try_get("credits_refill_interval")?,
        refill_day: row.try_get("credits_refill_day")?,
        refilled_at: row.try_get("credits_refilled_at")?,
        generation: row.try_get("credits_generation")?,
    }
    .state(id)
}

/// `n` credits as a column value: at most [`MAX_CREDITS`], so sums of two
/// never overflow.
fn credit_count(n: u64) -> i64 {
    i64::try_from(n.min(MAX_CREDITS)).unwrap_or(i64::MAX)
}

fn info_of(row: &Row) -> Result<KeyInfo, BoxError> {
    Ok(KeyInfo::new(
        record_of(row)?,
        row.try_get("last_used_at")?,
        row.try_get::<_, String>("hint")?,
    )
    .with_version(version_of(row.try_get("version")?)?))
}

/// `expected` as the parameter of a conditional write's
/// `($n::bigint IS NULL OR version = $n)`.
fn version_param(expected: Option<Version>) -> Option<i64> {
    // A version past i64::MAX matches no row, as no row holds one.
    expected.map(|v| i64::try_from(v.get()).unwrap_or(i64::MAX))
}

/// A whole row: the key with its hashes.
fn stored_key_of(row: &Row) -> Result<StoredKey, BoxError> {
    let hash = stored_hash(
        row.try_get("hash")?,
        row.try_get("hash_scheme")?,
        row.try_get("hash_pepper_version")?,
    )?
    .ok_or("stored key has no hash")?;
    let previous = stored_hash(
        row.try_get("previous_hash")?,
        row.try_get("previous_hash_scheme")?,
        row.try_get("previous_hash_pepper_version")?,
    )?;
    let until: Option<SystemTime> = row.try_get("previous_valid_until")?;
    let mut key = StoredKey::new(info_of(row)?, hash);
    if let (Some(previous), Some(until)) = (previous, until) {
        key = key.with_previous(PreviousHash::new(previous, until));
    }
    let bound: Option<&[u8]> = row.try_get("compromised_hash")?;
    if let Some(hash) = compromised_hash(bound, Some(hash), previous) {
        key = key.with_compromised_hash(hash);
    }
    Ok(key)
}

fn info_or_backend(row: &Row) -> Result<KeyInfo, StoreError> {
    info_of(row).map_err(StoreError::Backend)
}

fn collision_or_backend(e: BoxError) -> StoreError {
    let unique = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        == Some(&SqlState::UNIQUE_VIOLATION);
    if unique {
        // 95 random bits make this practically impossible; never overwrite.
        StoreError::backend("key id collision")
    } else {
        StoreError::Backend(e)
    }
}

#[async_trait]
impl Verifier for PgKeyStore {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        // One round trip that returns exactly one row whether or not the id
        // exists (all NULL when it does not), and here the same hashing and
        // comparisons in every case: every scheme and pepper the hasher
        // holds, against the current and the previous hash (placeholders
        // when absent). Neither the database's answer nor the work done
        // tells which key ids exist or which scheme their hashes use.
        // The key's account's limits come in the same row.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {INFO_COLUMNS}, {HASH_COLUMNS}, {}
                   FROM (VALUES (1)) AS one(x)
                   LEFT JOIN {TABLE} ON key_id = $1",
                account_limits_column(TABLE)
            )
        });
        let candidates = self.inner.hasher.candidates(key);
        let rows = self
            .query(&SQL, &[&key.id().as_str()])
            .await
            .map_err(VerifierError::Backend)?;
        let row = rows
            .first()
            .ok_or_else(|| VerifierError::backend("the verification query returned no row"))?;
        let current = stored_hash(
            row.try_get("hash").map_err(VerifierError::backend)?,
            row.try_get("hash_scheme").map_err(VerifierError::backend)?,
            row.try_get("hash_pepper_version")
                .map_err(VerifierError::backend)?,
        )
        .map_err(VerifierError::Backend)?;
        let previous = stored_hash(
            row.try_get("previous_hash")
                .map_err(VerifierError::backend)?,
            row.try_get("previous_hash_scheme")
                .map_err(VerifierError::backend)?,
            row.try_get("previous_hash_pepper_version")
                .map_err(VerifierError::backend)?,
        )
        .map_err(VerifierError::Backend)?;
        let previous_digest = previous.map(|h| *h.digest());
        let current = candidates.matches(current.as_ref());
        let previous = candidates.matches(previous.as_ref());
        if !current && !previous {
            return Ok(None);
        }
        let mut record = record_of(row).map_err(VerifierError::Backend)?;
        if !current {
            // The replaced secret matched: quarantined if it is the one reported.
            let bound: Option<&[u8]> = row
                .try_get("compromised_hash")
                .map_err(VerifierError::backend)?;
            let quarantine = record
                .compromise
                .as_ref()
                .is_some_and(|c| c.action == tower_api_key::store::LeakAction::Quarantine);
            record.quarantined =
                quarantine && bound.is_some() && bound == previous_digest.as_ref().map(|d| &d[..]);
        }
        if record.key_id != key.id() {
            // The row is looked up by this id; never hand out another key's record.
            return Ok(None);
        }
        let grace_until: Option<SystemTime> = row
            .try_get("previous_valid_until")
            .map_err(VerifierError::backend)?;
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
impl CreditLedger for PgKeyStore {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        let select = format!("SELECT {CREDIT_COLUMNS} FROM {TABLE} WHERE key_id = $1 FOR UPDATE");
        let write = format!(
            "UPDATE {TABLE} SET credits_remaining = $2, credits_refilled_at = $3,
                 credits_generation = $4
              WHERE key_id = $1"
        );
        let mut client = self
            .inner
            .pool
            .get()
            .await
            .map_err(VerifierError::backend)?;
        let lease = async {
            // The row lock orders leases from every replica: each reads what
            // the one before it left.
            let tx = client.transaction().await?;
            let select = tx.prepare_cached(&select).await?;
            let Some(row) = tx.query_opt(&select, &[&id.as_str()]).await? else {
                return Ok(None);
            };
            let Some(mut state) = credits_of(&row, id)? else {
                return Ok(None);
            };
            let lease = state.lease(want, now);
            let columns = CreditColumns::of(Some(&state));
            let write = tx.prepare_cached(&write).await?;
            tx.execute(
                &write,
                &[
                    &id.as_str(),
                    &columns.remaining,
                    &columns.refilled_at.map(micros),
                    &columns.generation,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, BoxError>(Some(lease))
        }
        .await
        .map_err(VerifierError::Backend)?;
        self.database_answered();
        Ok(lease)
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
        let sql = format!(
            "UPDATE {TABLE} SET credits_remaining = LEAST(credits_remaining + $3, $4)
              WHERE key_id = $1 AND credits_remaining IS NOT NULL
                AND credits_generation = $2"
        );
        self.query(
            &sql,
            &[
                &id.as_str(),
                &generation,
                &credit_count(amount),
                &credit_count(MAX_CREDITS),
            ],
        )
        .await
        .map_err(VerifierError::Backend)?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        check_new(&new, self.inner.clock.now())?;
        let key = self.inner.format.generate()?;
        let hash = self.hash_of(&key)?;
        let (scheme, pepper) = scheme_columns(hash.scheme())?;
        let now = self.now();
        let credits = CreditColumns::of(new.credits.map(|c| CreditState::set(c, now, 0)).as_ref());
        let mut record = KeyRecord::new(key.id(), new.service_account_id)
            .with_scopes(new.scopes)
            .with_description(new.description)
            .with_expires_at(new.expires_at.map(micros))
            .with_created_at(now)
            .with_rate_limits(new.rate_limits)
            .with_credits(new.credits);
        let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
        let rate_limits = limits_text(&record.rate_limits);
        // Creates for one account take turns (an advisory lock held until
        // commit), and the count runs after the lock is taken, in a statement
        // of its own, so it sees every key committed before: no overshoot.
        let lock = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
        // The account's limits come back with the new row, for the record.
        let insert = format!(
            "INSERT INTO {TABLE} (key_id, service_account_id, hash, hash_scheme,
                 hash_pepper_version, scopes, description, created_at, expires_at, hint,
                 rate_limits, credits_remaining, credits_refill_amount, credits_refill_interval,
                 credits_refill_day, credits_refilled_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $13, $14, $15, $16, $17
              WHERE (SELECT count(*) FROM {TABLE} WHERE service_account_id = $2) < $11
             RETURNING key_id, (SELECT a.rate_limits FROM {ACCOUNT_LIMITS} AS a
                                 WHERE a.service_account_id = $2) AS account_rate_limits"
        );
        let limit = self.inner.max_keys_per_account;
        let mut client = self.client().await?;
        let inserted = async {
            let tx = client.transaction().await?;
            let lock = tx.prepare_cached(lock).await?;
            tx.execute(&lock, &[&CREATE_LOCK_CLASS, &&*record.service_account_id])
                .await?;
            let insert = tx.prepare_cached(&insert).await?;
            let rows = tx
                .query(
                    &insert,
                    &[
                        &key.id().as_str(),
                        &&*record.service_account_id,
                        &hash.digest().as_slice(),
                        &scheme,
                        &pepper,
                        &scopes,
                        &record.description,
                        &record.created_at,
                        &record.expires_at,
                        &hint_of(&key),
                        &limit,
                        &rate_limits,
                        &credits.remaining,
                        &credits.refill_amount,
                        &credits.refill_interval,
                        &credits.refill_day,
                        &credits.refilled_at,
                    ],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            // Checked before the commit: nothing fails after it.
            let account_limits = match row.try_get::<_, Option<&str>>("account_rate_limits")? {
                Some(text) => parse_limits(
                    text,
                    format_args!("the service account of key {}", key.id()),
                )?,
                None => Vec::new(),
            };
            tx.commit().await?;
            self.database_answered();
            Ok::<_, BoxError>(Some(account_limits))
        }
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
        let sql = format!(
            "SELECT {INFO_COLUMNS}, {} FROM {TABLE} WHERE key_id = $1",
            account_limits_column(TABLE)
        );
        let rows = self
            .query(&sql, &[&id.as_str()])
            .await
            .map_err(StoreError::Backend)?;
        rows.first().map(info_or_backend).transpose()
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
                // The same tokens as the memory store: a position in the
                // listing order, valid even after its key is revoked.
                let (at, id) = parse_page_token(token).ok_or(StoreError::InvalidPageToken)?;
                // Stored times are whole microseconds: "after `at`" for a
                // time between two microseconds is "from the next one on",
                // and "" sorts before every key id.
                let floor = micros(at);
                if floor == at {
                    Some((at, id.to_string()))
                } else {
                    let next = floor
                        .checked_add(Duration::from_micros(1))
                        .ok_or(StoreError::InvalidPageToken)?;
                    Some((next, String::new()))
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
                .list_rows(service_account_id, cursor.take(), want)
                .await?;
            for row in &rows {
                match info_of(row) {
                    Ok(info) => readable.push(info),
                    Err(e) => warn_unreadable(&raw_id(row), &e),
                }
            }
            match rows.last() {
                Some(last) if rows.len() == want && readable.len() <= size => {
                    let at = last.try_get("created_at").map_err(StoreError::backend)?;
                    cursor = Some((at, cursor_id(last)?));
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
        let rate_limits = update.rate_limits.as_deref().map(limits_text);
        let set_credits = update.credits.is_some();
        // A new setting (or none) starts a new generation: the statement
        // adds 1 to the stored one.
        let credits = CreditColumns::of(
            update
                .credits
                .flatten()
                .map(|c| CreditState::set(c, self.now(), 0))
                .as_ref(),
        );
        let scopes: Option<Vec<&str>> = update
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|s| s.as_str()).collect());
        let set_expiry = update.expires_at.is_some();
        let expires_at = update.expires_at.flatten().map(micros);
        // The NOTIFY is part of the statement: sent if and only if it commits.
        let payload = notify_payload("changed");
        let sql = format!(
            "WITH changed AS (
                 UPDATE {TABLE} SET
                     version = version + $15::bigint,
                     description = COALESCE($2::text, description),
                     scopes = COALESCE($3::text[], scopes),
                     expires_at = CASE WHEN $4::boolean THEN $5::timestamptz ELSE expires_at END,
                     rate_limits = COALESCE($7::text, rate_limits),
                     credits_remaining =
                         CASE WHEN $8::boolean THEN $9::bigint ELSE credits_remaining END,
                     credits_refill_amount =
                         CASE WHEN $8::boolean THEN $10::bigint ELSE credits_refill_amount END,
                     credits_refill_interval =
                         CASE WHEN $8::boolean THEN $11::text ELSE credits_refill_interval END,
                     credits_refill_day =
                         CASE WHEN $8::boolean THEN $12::bigint ELSE credits_refill_day END,
                     credits_refilled_at =
                         CASE WHEN $8::boolean THEN $13::timestamptz ELSE credits_refilled_at END,
                     credits_generation =
                         CASE WHEN $8::boolean THEN credits_generation + 1
                              ELSE credits_generation END
                  WHERE key_id = $1 AND ($14::bigint IS NULL OR version = $14)
              RETURNING {INFO_COLUMNS})
             SELECT changed.*, {account}, pg_notify($6, {payload})::text AS notified
               FROM changed",
            account = account_limits_column("changed")
        );
        let rows = self
            .query(
                &sql,
                &[
                    &id.as_str(),
                    &update.description,
                    &scopes,
                    &set_expiry,
                    &expires_at,
                    &self.inner.channel.as_str(),
                    &rate_limits,
                    &set_credits,
                    &credits.remaining,
                    &credits.refill_amount,
                    &credits.refill_interval,
                    &credits.refill_day,
                    &credits.refilled_at,
                    &version_param(expected),
                    // An empty update changes nothing, its version included.
                    &i64::from(!update.is_empty()),
                ],
            )
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            return self.not_written(id, expected).await.map(|_| None);
        };
        let info = info_or_backend(row);
        self.changed(
            id,
            info.as_ref().ok().map(|i| &*i.record.service_account_id),
        );
        info.map(Some)
    }

    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        let payload = notify_payload("gone");
        let sql = format!(
            "WITH gone AS (DELETE FROM {TABLE}
                WHERE key_id = $1 AND ($3::bigint IS NULL OR version = $3)
                RETURNING key_id, service_account_id),
                  kept AS (INSERT INTO {REVOKED} (key_id, revoked_at)
                SELECT key_id, now() FROM gone ON CONFLICT (key_id) DO NOTHING)
             SELECT gone.service_account_id, pg_notify($2, {payload})::text AS notified
               FROM gone"
        );
        let rows = self
            .query(
                &sql,
                &[
                    &id.as_str(),
                    &self.inner.channel.as_str(),
                    &version_param(expected),
                ],
            )
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            return self.not_written(id, expected).await.map(|_| false);
        };
        self.changed(id, row.try_get("service_account_id").ok());
        Ok(true)
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
        let keep_previous = !grace.is_zero();
        let valid_until = if keep_previous {
            // A grace past year 9999 is "forever", as in every store: no
            // store could hold (nor import) a later deadline.
            let until = self
                .inner
                .clock
                .now()
                .checked_add(grace)
                .map_or(latest_time(), |until| until.min(latest_time()));
            Some(micros(until))
        } else {
            None
        };
        // Right-hand sides read the row as it was: the current hash becomes
        // the previous one. A zero grace also ends an earlier grace.
        let payload = notify_payload("changed");
        let sql = format!(
            "WITH changed AS (
                 UPDATE {TABLE} SET
                     version = version + 1,
                     previous_hash = CASE WHEN $5::boolean THEN hash END,
                     previous_hash_scheme = CASE WHEN $5::boolean THEN hash_scheme END,
                     previous_hash_pepper_version = CASE WHEN $5::boolean THEN hash_pepper_version END,
                     previous_valid_until = $6::timestamptz,
                     hash = $2,
                     hash_scheme = $3,
                     hash_pepper_version = $4,
                     hint = $7
                  WHERE key_id = $1 AND ($9::bigint IS NULL OR version = $9)
              RETURNING {INFO_COLUMNS})
             SELECT changed.*, {account}, pg_notify($8, {payload})::text AS notified
               FROM changed",
            account = account_limits_column("changed")
        );
        let rows = self
            .query(
                &sql,
                &[
                    &id.as_str(),
                    &hash.digest().as_slice(),
                    &scheme,
                    &pepper,
                    &keep_previous,
                    &valid_until,
                    &hint_of(&key),
                    &self.inner.channel.as_str(),
                    &version_param(expected),
                ],
            )
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            return self.not_written(id, expected).await.map(|_| None);
        };
        let record = record_of(row);
        self.changed(id, record.as_ref().ok().map(|r| &*r.service_account_id));
        let record = record.map_err(StoreError::Backend)?;
        let version = row
            .try_get("version")
            .map_err(BoxError::from)
            .and_then(version_of)
            .map_err(StoreError::Backend)?;
        Ok(Some(CreatedKey::new(record, version, key)))
    }

    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        // The NOTIFY is part of the statement: caches re-read the count.
        let payload = notify_payload("changed");
        let sql = format!(
            "WITH changed AS (
                 UPDATE {TABLE} SET
                     credits_remaining = LEAST(credits_remaining + $2, $3),
                     version = version + 1
                  WHERE key_id = $1 AND credits_remaining IS NOT NULL
                    AND ($5::bigint IS NULL OR version = $5)
              RETURNING {INFO_COLUMNS})
             SELECT changed.*, {account}, pg_notify($4, {payload})::text AS notified
               FROM changed",
            account = account_limits_column("changed")
        );
        let rows = self
            .query(
                &sql,
                &[
                    &id.as_str(),
                    &credit_count(amount),
                    &credit_count(MAX_CREDITS),
                    &self.inner.channel.as_str(),
                    &version_param(expected),
                ],
            )
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            // No key, a key at another version, or a key without credits.
            return match self.not_written(id, expected).await? {
                None => Ok(None),
                Some(()) => Err(StoreError::no_credits(id)),
            };
        };
        self.changed(id, row.try_get("service_account_id").ok());
        info_or_backend(row).map(Some)
    }

    async fn account_rate_limits(
        &self,
        service_account_id: &str,
    ) -> Result<Vec<RateLimit>, StoreError> {
        check_account(service_account_id)?;
        let sql = format!("SELECT rate_limits FROM {ACCOUNT_LIMITS} WHERE service_account_id = $1");
        let rows = self
            .query(&sql, &[&service_account_id])
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            return Ok(Vec::new());
        };
        let text: &str = row.try_get(0).map_err(StoreError::backend)?;
        parse_limits(text, format_args!("service account {service_account_id:?}"))
            .map_err(StoreError::Backend)
    }

    async fn set_account_rate_limits(
        &self,
        service_account_id: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        check_account_limits(service_account_id, &limits)?;
        let text = limits_text(&limits);
        // One statement: the row set or removed, and a NOTIFY for every key
        // of the account, sent if and only if it commits.
        let payload = notify_payload("k");
        let sql = format!(
            "WITH kept AS (
                 INSERT INTO {ACCOUNT_LIMITS} (service_account_id, rate_limits)
                 SELECT $1, $2 WHERE $2 <> ''
                 ON CONFLICT (service_account_id) DO UPDATE SET rate_limits = EXCLUDED.rate_limits),
                  dropped AS (
                 DELETE FROM {ACCOUNT_LIMITS} WHERE service_account_id = $1 AND $2 = '')
             SELECT k.key_id, pg_notify($3, {payload})::text AS notified
               FROM {TABLE} AS k WHERE k.service_account_id = $1"
        );
        let rows = self
            .query(
                &sql,
                &[&service_account_id, &text, &self.inner.channel.as_str()],
            )
            .await
            .map_err(StoreError::Backend)?;
        for row in &rows {
            let id = row
                .try_get::<_, &str>("key_id")
                .ok()
                .and_then(|id| KeyId::from_str(id).ok());
            if let Some(id) = id {
                self.changed(id, Some(service_account_id));
            }
        }
        Ok(())
    }

    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = uses.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<SystemTime> = uses.iter().map(|(_, at)| micros(*at)).collect();
        // One statement for the whole batch: the newest time per key, and
        // only forward (rows already as new are not even written).
        let sql = format!(
            "UPDATE {TABLE} AS k
                SET last_used_at = GREATEST(k.last_used_at, u.at)
               FROM (SELECT id, max(at) AS at
                       FROM unnest($1::text[], $2::timestamptz[]) AS t(id, at)
                      GROUP BY id) AS u
              WHERE k.key_id = u.id
                AND (k.last_used_at IS NULL OR k.last_used_at < u.at)"
        );
        self.query(&sql, &[&ids, &times])
            .await
            .map_err(StoreError::Backend)?;
        Ok(())
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
                match stored_key_of(row) {
                    Ok(key) => keys.push(key),
                    Err(e) => warn_unreadable(&raw_id(row), &e),
                }
            }
            match rows.last() {
                Some(last) if rows.len() == want && keys.len() < limit => {
                    cursor = Some(cursor_id(last)?);
                }
                _ => return Ok(keys),
            }
        }
    }

    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        check_import(&key, &self.inner.format, self.now())?;
        let version = imported_version(key.info.record.key_id, key.info.version)?;
        let record = &key.info.record;
        let id = record.key_id;
        // The credits start a generation here; the account's limits are
        // this store's own, never an import's.
        let credits = CreditColumns::of(
            record
                .credits
                .map(|c| CreditState::set(c, self.now(), 0))
                .as_ref(),
        );
        let rate_limits = limits_text(&record.rate_limits);
        let (scheme, pepper) = scheme_columns(key.hash.scheme())?;
        let (previous, previous_scheme, previous_pepper, valid_until) = match &key.previous {
            Some(p) => {
                let (scheme, pepper) = scheme_columns(p.hash.scheme())?;
                (
                    Some(p.hash.digest().as_slice()),
                    Some(scheme),
                    pepper,
                    Some(micros(p.valid_until)),
                )
            }
            None => (None, None, None, None),
        };
        let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
        let lock = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
        let existing = format!(
            "SELECT service_account_id, hash, hash_scheme, hash_pepper_version
               FROM {TABLE} WHERE key_id = $1 FOR UPDATE"
        );
        let was_revoked = format!("SELECT 1 FROM {REVOKED} WHERE key_id = $1");
        let touch = format!(
            "UPDATE {TABLE} SET last_used_at = GREATEST(last_used_at, $2)
              WHERE key_id = $1 AND $2::timestamptz IS NOT NULL"
        );
        let count = format!("SELECT count(*) FROM {TABLE} WHERE service_account_id = $1");
        let insert = format!(
            "INSERT INTO {TABLE} (key_id, service_account_id, hash, hash_scheme,
                 hash_pepper_version, previous_hash, previous_hash_scheme,
                 previous_hash_pepper_version, previous_valid_until, scopes, description,
                 created_at, expires_at, last_used_at, hint, rate_limits, credits_remaining,
                 credits_refill_amount, credits_refill_interval, credits_refill_day,
                 credits_refilled_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 $17, $18, $19, $20, $21, $22)"
        );
        let last_used_at = key.info.last_used_at.map(micros);
        let limit = self.inner.max_keys_per_account;
        let mut client = self.client().await?;
        let outcome = async {
            let tx = client.transaction().await?;
            tx.execute(lock, &[&CREATE_LOCK_CLASS, &&*record.service_account_id])
                .await?;
            if tx.query_opt(&was_revoked, &[&id.as_str()]).await?.is_some() {
                return Ok(Err(import_revoked(id)));
            }
            if let Some(row) = tx.query_opt(&existing, &[&id.as_str()]).await? {
                let account: &str = row.try_get("service_account_id")?;
                let hash = stored_hash(
                    row.try_get("hash")?,
                    row.try_get("hash_scheme")?,
                    row.try_get("hash_pepper_version")?,
                )?;
                if account != &*record.service_account_id || hash != Some(key.hash) {
                    return Ok(Err(import_conflict(id)));
                }
                tx.execute(&touch, &[&id.as_str(), &last_used_at]).await?;
                tx.commit().await?;
                return Ok(Ok(Imported::AlreadyPresent));
            }
            let held: i64 = tx
                .query_one(&count, &[&&*record.service_account_id])
                .await?
                .try_get(0)?;
            if held >= limit {
                return Ok(Err(StoreError::key_limit_reached(
                    usize::try_from(limit).unwrap_or(usize::MAX),
                )));
            }
            tx.execute(
                &insert,
                &[
                    &id.as_str(),
                    &&*record.service_account_id,
                    &key.hash.digest().as_slice(),
                    &scheme,
                    &pepper,
                    &previous,
                    &previous_scheme,
                    &previous_pepper,
                    &valid_until,
                    &scopes,
                    &record.description,
                    &micros(record.created_at),
                    &record.expires_at.map(micros),
                    &last_used_at,
                    &key.info.hint,
                    &rate_limits,
                    &credits.remaining,
                    &credits.refill_amount,
                    &credits.refill_interval,
                    &credits.refill_day,
                    &credits.refilled_at,
                    &version,
                ],
            )
            .await?;
            if let Some(c) = &record.compromise {
                tx.execute(
                    &format!(
                        "UPDATE {TABLE} SET compromised_at = $2, compromise_url = $3,
                             compromise_source = $4, compromise_action = $5,
                             compromised_hash = $6
                          WHERE key_id = $1"
                    ),
                    &[
                        &id.as_str(),
                        &micros(c.at),
                        &c.url,
                        &c.source,
                        &c.action.as_str(),
                        &key.compromised_hash.as_ref().map(|h| h.digest().as_slice()),
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<_, BoxError>(Ok(Imported::Added))
        }
        .await
        .map_err(|e| {
            let unique = e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
                == Some(&SqlState::UNIQUE_VIOLATION);
            if unique {
                // The id or hash index: a concurrent import of the same key, or
                // another key with this hash.
                StoreError::conflict(id, ConflictKind::IdOrHashTaken)
            } else {
                StoreError::Backend(e)
            }
        })?;
        self.database_answered();
        outcome
    }

    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        let limit = export_page_size(limit)? as i64;
        let sql = format!(
            "SELECT key_id FROM {REVOKED}
              WHERE $1::text IS NULL OR key_id > $1
              ORDER BY key_id LIMIT $2"
        );
        let after = after.as_ref().map(KeyId::as_str);
        let rows = self
            .query(&sql, &[&after, &limit])
            .await
            .map_err(StoreError::Backend)?;
        rows.iter()
            .map(|row| {
                let id = raw_id(row);
                KeyId::from_str(&id).map_err(|_| {
                    StoreError::backend(format!("revoked id {} is not valid", shown_id(&id)))
                })
            })
            .collect()
    }

    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        // The revocation is kept even when no key has the id; a key that
        // has it is deleted and announced as by `revoke`.
        let payload = notify_payload("gone");
        let sql = format!(
            "WITH kept AS (INSERT INTO {REVOKED} (key_id, revoked_at) VALUES ($1, now())
                ON CONFLICT (key_id) DO NOTHING),
                  gone AS (DELETE FROM {TABLE} WHERE key_id = $1
                RETURNING key_id, service_account_id)
             SELECT gone.service_account_id, pg_notify($2, {payload})::text AS notified
               FROM gone"
        );
        let rows = self
            .query(&sql, &[&id.as_str(), &self.inner.channel.as_str()])
            .await
            .map_err(StoreError::Backend)?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        self.changed(id, row.try_get("service_account_id").ok());
        Ok(true)
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
                if stored_key_of(row).is_err() && ids.len() < MAX_EXPORT_PAGE {
                    ids.push(shown_id(&raw_id(row)));
                }
            }
            match rows.last() {
                Some(last) if rows.len() == MAX_EXPORT_PAGE => cursor = Some(cursor_id(last)?),
                _ => return Ok(ids),
            }
        }
    }
}

/// A row's key id as stored ("" if it cannot even be read as text).
fn raw_id(row: &Row) -> String {
    row.try_get("key_id").unwrap_or_default()
}

/// The key id to read on after: a row whose id cannot be read would
/// restart the scan, so it is an error instead.
fn cursor_id(row: &Row) -> Result<String, StoreError> {
    row.try_get("key_id").map_err(StoreError::backend)
}

/// Raw reads for list and export, which skip the rows they cannot read.
impl PgKeyStore {
    /// Up to `limit` rows of `account` after `after` (created_at, key_id),
    /// in listing order.
    async fn list_rows(
        &self,
        account: &str,
        after: Option<(SystemTime, String)>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let limit = limit as i64;
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, {} FROM {TABLE}
                      WHERE service_account_id = $1
                      ORDER BY created_at, key_id
                      LIMIT $2",
                    account_limits_column(TABLE)
                );
                self.query(&sql, &[&account, &limit]).await
            }
            Some((at, id)) => {
                let sql = format!(
                    "SELECT {INFO_COLUMNS}, {} FROM {TABLE}
                      WHERE service_account_id = $1
                        AND (created_at, key_id) > ($2, $3)
                      ORDER BY created_at, key_id
                      LIMIT $4",
                    account_limits_column(TABLE)
                );
                self.query(&sql, &[&account, &at, &id, &limit]).await
            }
        };
        rows.map_err(StoreError::Backend)
    }

    /// Up to `limit` whole rows with key ids after `after`, in key id order.
    async fn export_rows(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let limit = limit as i64;
        let sql = format!(
            "SELECT {INFO_COLUMNS}, {HASH_COLUMNS} FROM {TABLE}
              WHERE $1::text IS NULL OR key_id > $1
              ORDER BY key_id LIMIT $2"
        );
        self.query(&sql, &[&after, &limit])
            .await
            .map_err(StoreError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_truncates_toward_the_past() {
        let t = UNIX_EPOCH + Duration::new(10, 123_456_789);
        assert_eq!(micros(t), UNIX_EPOCH + Duration::new(10, 123_456_000));
        let t = UNIX_EPOCH - Duration::new(10, 123_456_789);
        assert_eq!(micros(t), UNIX_EPOCH - Duration::new(10, 123_457_000));
        let t = UNIX_EPOCH - Duration::new(0, 999_999_999);
        assert_eq!(micros(t), UNIX_EPOCH - Duration::new(1, 0));
        let t = UNIX_EPOCH + Duration::from_micros(5);
        assert_eq!(micros(t), t);
    }

    #[test]
    fn channels_are_plain_identifiers() {
        for ok in [DEFAULT_CHANNEL, "a", "_x9", &"a".repeat(63)] {
            assert!(valid_channel(ok), "{ok}");
        }
        for bad in ["", "9a", "A", "a-b", "a b", "a;b", &"a".repeat(64), "é"] {
            assert!(!valid_channel(bad), "{bad}");
        }
    }
}
