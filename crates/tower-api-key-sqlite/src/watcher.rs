//! The change watcher: turns revokes, reissues and updates committed by
//! other processes (or other stores in this process) on the same file into
//! [`Invalidation`]s on the store's bus.
//!
//! SQLite has no notifications. Every write that changes what a key
//! verifies as also appends a row (key id, account, writer) to the change
//! log `tower_api_key_changes`, in the same transaction. The watcher keeps a
//! connection of its own and, every poll interval, reads
//! `PRAGMA data_version`, which changes when any other connection commits to
//! the file: a cheap check that touches no table. Only when it changed does
//! the watcher read the log rows after its last position and publish
//! [`Invalidation::KeyOf`] for each, its own store's rows included: those
//! were published when written, but only if the writing call was not
//! cancelled after its commit (a dropped request future), so they are
//! published again, which costs at most one more verification. Writers
//! prune the log; when rows
//! after the watcher's position were pruned before it read them, it
//! publishes [`Invalidation::All`] instead.
//!
//! A change committed elsewhere therefore reaches this store's caches within
//! one poll interval plus one read of the log.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};
use tower_api_key::Invalidation;
use tower_api_key_sql::{invalidations, ChangeLog, MAX_ROWS_PER_READ};

use super::connection::{self, BoxError};

/// The watcher's connection and where it is in the change log.
pub(super) struct Watcher {
    conn: Connection,
    /// The last `PRAGMA data_version` seen; `None` before the first poll.
    data_version: Option<i64>,
    /// The highest change log sequence number handled.
    position: i64,
}

impl Watcher {
    /// Opens the watcher's connection and takes the current end of the
    /// change log as its position: changes committed from now on are
    /// announced. Blocking.
    pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Self, BoxError> {
        let conn = connection::open(path, busy_timeout)?;
        let mut watcher = Self {
            conn,
            data_version: None,
            position: 0,
        };
        watcher.data_version = Some(watcher.data_version()?);
        if watcher.log_exists()? {
            watcher.position = watcher.conn.query_row(
                "SELECT coalesce(max(seq), 0) FROM tower_api_key_changes",
                [],
                |row| row.get(0),
            )?;
        }
        Ok(watcher)
    }

    fn data_version(&self) -> rusqlite::Result<i64> {
        self.conn
            .pragma_query_value(None, "data_version", |row| row.get(0))
    }

    /// Whether the file has been migrated (the log exists).
    fn log_exists(&self) -> rusqlite::Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tower_api_key_changes'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
    }

    /// What changed since the last poll. Blocking.
    pub(super) fn poll(&mut self) -> Result<Vec<Invalidation>, BoxError> {
        let version = self.data_version()?;
        if self.data_version == Some(version) {
            return Ok(Vec::new());
        }
        // Read first, and remember the version only once read: a failed read
        // is tried again at the next poll.
        let changes = self.read_log()?;
        self.data_version = Some(version);
        Ok(changes)
    }

    fn read_log(&mut self) -> Result<Vec<Invalidation>, BoxError> {
        if !self.log_exists()? {
            return Ok(Vec::new());
        }
        // One read transaction: the watermark and the rows from one snapshot.
        let tx = self.conn.transaction()?;
        let pruned: i64 = tx.query_row(
            "SELECT upto FROM tower_api_key_changes_pruned WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        let mut rows: Vec<(i64, String, String)> = tx
            .prepare_cached(
                "SELECT seq, key_id, service_account_id FROM tower_api_key_changes
                  WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map((self.position, MAX_ROWS_PER_READ + 1), |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut everything = pruned > self.position;
        if rows.len() as i64 > MAX_ROWS_PER_READ {
            everything = true;
            rows.clear();
            let last: i64 = tx.query_row(
                "SELECT coalesce(max(seq), 0) FROM tower_api_key_changes",
                [],
                |row| row.get(0),
            )?;
            self.position = self.position.max(last);
        }
        drop(tx);
        self.position = self.position.max(pruned);
        if let Some(last) = rows.last() {
            self.position = self.position.max(last.0);
        }
        let rows = rows
            .into_iter()
            .map(|(_, key_id, account)| (key_id, account));
        Ok(invalidations(rows, everything))
    }
}

/// The watcher as the core's [`ChangeLog`]: each read runs on the blocking
/// pool, and the connection closes off the runtime when polling stops.
pub(super) struct BlockingWatcher(pub(super) Option<Watcher>);

#[async_trait]
impl ChangeLog for BlockingWatcher {
    async fn read(&mut self) -> Result<Vec<Invalidation>, BoxError> {
        let mut watcher = self
            .0
            .take()
            .ok_or("the change watcher's last read panicked")?;
        let (watcher, changes) = tokio::task::spawn_blocking(move || {
            let changes = watcher.poll();
            (watcher, changes)
        })
        .await?;
        self.0 = Some(watcher);
        changes
    }

    fn close(self) {
        if let Some(watcher) = self.0 {
            connection::close_off_runtime(watcher);
        }
    }
}
