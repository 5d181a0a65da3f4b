#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod connection;
mod migrations;
mod watcher;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tower_api_key::store::{ConfigError, StoreError, DEFAULT_MAX_KEYS_PER_ACCOUNT};
use tower_api_key::{Invalidations, KeyId};
use tower_api_key_sql::{BackgroundTask, SqlKeyStore, SqlSettings};

pub use migrations::migrations;
pub use tower_api_key_sql::{Migration, MigrationReport, SqlRateLimitSync};

use self::backend::Sqlite;
use self::connection::{BoxError, Connections};
use self::watcher::{BlockingWatcher, Watcher};

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
    core: SqlKeyStore<Sqlite>,
    poll_interval: Duration,
    // Dropping it (with the last clone of the store) stops the watcher too.
    watcher: BackgroundTask,
}

tower_api_key_sql::delegate_store!(SqliteKeyStore => inner.core, migrations);

impl fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.path())
            .field("format", &self.format())
            .field("poll_interval", &self.inner.poll_interval)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`SqliteKeyStore`]; from [`SqliteKeyStore::builder`].
#[must_use]
pub struct SqliteKeyStoreBuilder {
    path: PathBuf,
    settings: SqlSettings,
    busy_timeout: Duration,
    poll_interval: Duration,
    create_if_missing: bool,
}

impl fmt::Debug for SqliteKeyStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStoreBuilder")
            .field("path", &self.path)
            .field("format", &self.settings.format)
            .field("busy_timeout", &self.busy_timeout)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl SqliteKeyStoreBuilder {
    tower_api_key_sql::settings_setters!();

    /// Settings for the database file at `path`, with the defaults: key
    /// prefix `tak`, plain SHA-256, the system clock, 1,000 keys per service
    /// account, a 5 s busy timeout, a change-watch poll every 250 ms, the
    /// file created when missing.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            settings: SqlSettings::new(DEFAULT_MAX_KEYS_PER_ACCOUNT),
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

    /// How long a call waits for another connection's lock on the file
    /// before failing (default 5 s): SQLITE_BUSY is retried within it. A
    /// verification that times out here fails closed (503).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often the watcher checks the file for changes committed by
    /// other connections (default 250 ms, at least 10 ms): the bound on how
    /// late a revoke made by another process reaches this store's caches,
    /// plus one read of the change log.
    pub fn poll_interval(mut self, every: Duration) -> Self {
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
        let watcher = BackgroundTask::poll_change_log(
            BlockingWatcher(Some(watcher)),
            invalidations.clone(),
            self.poll_interval,
            "SQLite",
        );
        let backend = Sqlite { db, origin };
        Ok(SqliteKeyStore {
            inner: Arc::new(Inner {
                core: SqlKeyStore::new(backend, self.settings, invalidations),
                poll_interval: self.poll_interval,
                watcher,
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

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db().path()
    }

    /// The pooled connections.
    fn db(&self) -> &Arc<Connections> {
        &self.inner.core.backend().db
    }

    /// Stops the change watcher and waits for it, and closes the
    /// connections. Management calls and verification fail afterwards.
    /// Dropping the last clone of the store stops the watcher too, without
    /// waiting.
    pub async fn shutdown(&self) {
        self.inner.watcher.stop().await;
        self.db().close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_last_clone_stops_the_watcher() {
        let dir = std::env::temp_dir().join(format!(
            "tak-sqlite-unit-{}-{}",
            std::process::id(),
            KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteKeyStore::open(dir.join("keys.db")).await.unwrap();
        let watcher = store.inner.watcher.abort_handle().unwrap();
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
