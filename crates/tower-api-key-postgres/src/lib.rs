#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod listener;
mod migrations;
mod poller;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};
use tower_api_key::store::{ConfigError, StoreError, DEFAULT_MAX_KEYS_PER_ACCOUNT};
use tower_api_key::Invalidations;
use tower_api_key_sql::{ChangeFeeds, ListenerSettings, SharedChangeLog, SqlKeyStore, SqlSettings};

pub use migrations::migrations;
pub use tower_api_key_sql::{
    ChangeFeed, ListenerStatus, Migration, MigrationReport, SqlRateLimitSync, DEFAULT_POLL_INTERVAL,
};

use self::backend::Pg;

/// The NOTIFY channel revocations, reissues and updates are announced on,
/// unless [`PgKeyStoreBuilder::channel`] names another. The payload is
/// the key id and the key's service account id, separated by a space.
pub const DEFAULT_CHANNEL: &str = "tower_api_key_invalidate";

/// Pooled connections per store by default: enough for a replica with a
/// warm cache (misses, writes, change-log polls and rate-limit syncs are
/// short and rare), so a fleet's budget is `replicas × (4 + 1)`.
pub const DEFAULT_POOL_SIZE: usize = 4;

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
    core: SqlKeyStore<Pg>,
    // Dropping them (with the last clone of the store) stops them too.
    feeds: ChangeFeeds,
    /// The change log the poller reads, for explicit polls.
    log: SharedChangeLog<poller::XidLog>,
}

tower_api_key_sql::delegate_store!(PgKeyStore => inner.core, migrations);

impl fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection settings: they may hold a password.
        f.debug_struct("PgKeyStore")
            .field("format", &self.format())
            .field("channel", &self.channel())
            .field("listener", &*self.pg().listener.status().borrow())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`PgKeyStore`]; from [`PgKeyStore::builder`] or
/// [`PgKeyStoreBuilder::new`].
#[must_use]
pub struct PgKeyStoreBuilder {
    pg: tokio_postgres::Config,
    settings: SqlSettings,
    channel: String,
    pool_size: usize,
    timeout: Duration,
    listener: ListenerSettings,
    feed: ChangeFeed,
    listen_pg: Option<tokio_postgres::Config>,
}

impl fmt::Debug for PgKeyStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgKeyStoreBuilder")
            .field("format", &self.settings.format)
            .field("channel", &self.channel)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("change_feed", &self.feed)
            .finish_non_exhaustive()
    }
}

impl PgKeyStoreBuilder {
    tower_api_key_sql::settings_setters!();
    tower_api_key_sql::listener_setters!();

    /// Settings for the database `config` points at, with the defaults: key
    /// prefix `tak`, plain SHA-256, the system clock, channel
    /// [`DEFAULT_CHANNEL`], 1,000 keys per service account, [`DEFAULT_POOL_SIZE`] (4) pooled
    /// connections, 5 s timeouts, reconnection
    /// backoff from 100 ms to 5 s cut short by a probe every 250 ms, a
    /// listener health check every 10 s, LISTEN and a change-log poll every
    /// 250 ms ([`ChangeFeed::default`]).
    pub fn new(config: tokio_postgres::Config) -> Self {
        Self {
            pg: config,
            settings: SqlSettings::new(DEFAULT_MAX_KEYS_PER_ACCOUNT),
            channel: DEFAULT_CHANNEL.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: Duration::from_secs(5),
            listener: ListenerSettings::default(),
            feed: ChangeFeed::default(),
            listen_pg: None,
        }
    }

    /// How the store hears of other replicas' changes (default
    /// [`ChangeFeed::ListenAndPoll`] every 250 ms): see [`ChangeFeed`]. Every
    /// poll is one query on a pooled connection.
    pub fn change_feed(mut self, feed: ChangeFeed) -> Self {
        self.feed = feed;
        self
    }

    /// Where the LISTEN connection connects, when not where the pool does:
    /// the database itself or a session-mode pooler, when the pool's URL
    /// points at a transaction-mode pooler (where LISTEN hears nothing).
    /// Parse a URL with `url.parse::<tokio_postgres::Config>()`.
    pub fn listen_config(mut self, config: tokio_postgres::Config) -> Self {
        self.listen_pg = Some(config);
        self
    }

    /// The NOTIFY channel (default [`DEFAULT_CHANNEL`]): 1 to 63 characters
    /// of `a-z`, `0-9` and `_`, not starting with a digit. Every replica of
    /// one key table must use the same one; stores of different key tables
    /// in one database should use different ones.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Most pooled connections (default [`DEFAULT_POOL_SIZE`], 4); the LISTEN
    /// connection is extra, so a replica uses at most `pool_size + 1` server
    /// connections. A call that finds every pooled connection busy waits up
    /// to [`timeout`](Self::timeout), then fails (a 503 from verification),
    /// rather than opening more.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Bound on connecting, on waiting for a pooled connection, and on the
    /// listener's health check (default 5 s). Also the connect timeout when
    /// the configuration sets none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects without TLS. See [`PgKeyStoreBuilder::connect_with_tls`].
    pub async fn connect(self) -> Result<PgKeyStore, StoreError> {
        self.connect_with_tls(NoTls).await
    }

    /// Connects with the TLS connector `tls`: checks that the database
    /// answers, takes the change log's position, then starts the listener
    /// and waits until it listens (at most twice the
    /// [`timeout`](Self::timeout); with [`ChangeFeed::Listen`] alone, a
    /// listener that cannot listen by then is an error), so a change
    /// committed after this returns is always announced to this store. Does
    /// not migrate: call [`PgKeyStore::migrate`].
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
        let mut listener_pg = self.listen_pg.take().unwrap_or_else(|| self.pg.clone());
        for pg in [&mut self.pg, &mut listener_pg] {
            if pg.get_connect_timeout().is_none() {
                pg.connect_timeout(self.timeout);
            }
        }
        if self.pg.get_application_name().is_none() {
            self.pg.application_name("tower-api-key");
        }
        if listener_pg.get_application_name().is_none() {
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
        let log = poller::XidLog::at_end(pool.clone())
            .await
            .map(SharedChangeLog::new)
            .map_err(StoreError::backend)?;
        let subscription = listener::PgSubscription {
            pg: listener_pg,
            channel: self.channel.clone(),
            tls,
            pool: pool.clone(),
        };
        self.listener.timeout = self.timeout;
        let feeds = ChangeFeeds::start(
            self.feed,
            subscription,
            log.clone(),
            self.listener,
            invalidations.clone(),
            "PostgreSQL",
        )
        .await
        .map_err(|e| {
            pool.close();
            StoreError::backend(e)
        })?;
        let backend = Pg {
            pool,
            channel: self.channel,
            listener: feeds.listener().clone(),
        };
        Ok(PgKeyStore {
            inner: Arc::new(Inner {
                core: SqlKeyStore::new(backend, self.settings, invalidations),
                feeds,
                log,
            }),
        })
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

    /// The NOTIFY channel of this store.
    pub fn channel(&self) -> &str {
        &self.pg().channel
    }

    /// The state of the LISTEN connection, as a watch: wait on it rather than
    /// sleeping (`status.wait_for(ListenerStatus::is_listening)`). The
    /// current state counts as seen: `changed()` waits for the next one.
    pub fn listener_status(&self) -> watch::Receiver<ListenerStatus> {
        self.pg().listener.status()
    }

    /// Stops the listener and the poller and waits for them, and closes the
    /// pool. Management calls and verification fail afterwards. Dropping the
    /// last clone of the store stops them too, without waiting.
    pub async fn shutdown(&self) {
        self.inner.feeds.stop().await;
        self.pg().pool.close();
    }

    /// Reads the change log now and publishes what changed since the last
    /// read (the poller does this at the [`ChangeFeed`]'s interval): for a caller
    /// that must see other replicas' changes at a point of its choosing,
    /// such as a test.
    pub async fn poll_changes(&self) -> Result<(), StoreError> {
        let bus = self.inner.core.invalidations();
        self.inner.log.poll(bus).await.map_err(StoreError::backend)
    }

    /// The backend: the pool, the channel and the listener's state.
    fn pg(&self) -> &Pg {
        self.inner.core.backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
