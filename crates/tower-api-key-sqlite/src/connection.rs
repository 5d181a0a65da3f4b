//! Connections to the database file, and running work on them off the
//! async runtime's worker threads.
//!
//! SQLite calls block (on the disk, and on other writers for up to the busy
//! timeout), so every call runs on tokio's blocking pool
//! (`spawn_blocking`). Connections are kept for reuse; a semaphore bounds
//! how many are in use at once, so a burst of requests waits here rather
//! than occupying every blocking thread. Writes take a second, smaller
//! semaphore first: SQLite has one writer at a time, and a write waiting
//! (up to the busy timeout) for another process's write lock holds its
//! connection, so without it a few queued writes would take every
//! connection and leave none to verification, which WAL never blocks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

/// Writes that may wait for SQLite's write lock at once.
const WRITERS: usize = 2;

pub(super) use tower_api_key_sql::BoxError;

/// How every connection is opened: read-write, no shared cache, and its
/// own mutex (a connection is used by one thread at a time, but may move
/// between threads); created if missing when `create`.
fn open_flags(create: bool) -> OpenFlags {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_PRIVATE_CACHE;
    if create {
        flags | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        flags
    }
}

/// Opens one connection to `path` with the store's settings: waits up to
/// `busy_timeout` for another writer (SQLITE_BUSY is retried within it),
/// and commits durably (`synchronous = FULL`: a revoke that returned
/// survives a power loss). Creates the file if missing: the store's first
/// connection ([`open_first`]) decided whether that is wanted.
pub(super) fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    open_with(path, busy_timeout, true)
}

/// The store's first connection: as [`open`], but a missing file is an
/// error (and nothing is created) unless `create_if_missing`.
pub(super) fn open_first(
    path: &Path,
    busy_timeout: Duration,
    create_if_missing: bool,
) -> Result<Connection, BoxError> {
    if !create_if_missing && !path.exists() {
        return Err("no such file (the store creates one only when asked: \
                    SqliteKeyStoreBuilder::create_if_missing)"
            .into());
    }
    Ok(open_with(path, busy_timeout, create_if_missing)?)
}

fn open_with(path: &Path, busy_timeout: Duration, create: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, open_flags(create))?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Switches the file to WAL mode (readers never wait for the writer); the
/// mode is kept in the file, so this is needed once, but is cheap to repeat.
pub(super) fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        // An in-memory database, for one: no other process could see it.
        Err(rusqlite::Error::InvalidParameterName(format!(
            "the database refused WAL mode (journal_mode is {mode})"
        )))
    }
}

/// The store's connections to one file.
pub(super) struct Connections {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    in_use: Arc<Semaphore>,
    writers: Arc<Semaphore>,
    max_idle: usize,
    closed: AtomicBool,
}

impl Connections {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration, size: usize) -> Self {
        Self {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            in_use: Arc::new(Semaphore::new(size)),
            // Fewer than the connections, so reads always have some.
            writers: Arc::new(Semaphore::new(WRITERS.min(size.saturating_sub(1)).max(1))),
            max_idle: size,
            closed: AtomicBool::new(false),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work`, which writes, as [`run`](Self::run) does, once one of
    /// the few writer slots is free.
    pub(super) async fn run_write<T, F>(self: &Arc<Self>, work: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BoxError> + Send + 'static,
    {
        let _writer = self
            .writers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the key store was shut down")?;
        self.run(work).await
    }

    /// Runs `work` on a connection, on the blocking pool. A connection that
    /// failed is not reused (a fresh one is opened next time).
    pub(super) async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BoxError> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err("the key store was shut down".into());
        }
        let permit = self
            .in_use
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the key store was shut down")?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = match this.take_idle() {
                Some(conn) => conn,
                None => open(&this.path, this.busy_timeout)?,
            };
            let result = work(&mut conn);
            // A connection left inside a transaction (an error half-way)
            // is dropped, which rolls it back.
            if result.is_ok() && conn.is_autocommit() {
                this.give_back(conn);
            }
            result
        })
        .await
        .map_err(|e| -> BoxError { format!("a key store task failed: {e}").into() })?
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `conn` (opened with [`open`]) for reuse.
    pub(super) fn give_back(&self, conn: Connection) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Refuses further work and closes the idle connections.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.in_use.close();
        self.writers.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        close_off_runtime(idle);
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        close_off_runtime(idle);
    }
}

/// Drops `value` (connections) on the blocking pool when there is a
/// runtime: closing the last connection to a WAL file checkpoints it, which
/// writes and syncs the file.
pub(super) fn close_off_runtime<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate blocking threads until it is opened, once.
    #[derive(Default)]
    struct Gate(std::sync::Mutex<bool>, std::sync::Condvar);

    impl Gate {
        fn wait(&self) {
            let mut open = self.0.lock().unwrap();
            while !*open {
                open = self.1.wait(open).unwrap();
            }
        }

        fn open(&self) {
            *self.0.lock().unwrap() = true;
            self.1.notify_all();
        }
    }

    /// Writes parked inside SQLite (waiting for another process's lock,
    /// say) hold at most the writer slots: a read still finds a connection.
    #[test]
    fn a_missing_file_is_created_only_when_asked() {
        let dir = std::env::temp_dir().join(format!(
            "tak-sqlite-create-{}-{}",
            std::process::id(),
            tower_api_key::KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.db");
        let timeout = Duration::from_secs(1);
        let refused = open_first(&path, timeout, false).err().unwrap();
        assert!(refused.to_string().contains("no such file"), "{refused}");
        assert!(!path.exists(), "nothing was created");
        drop(open_first(&path, timeout, true).unwrap());
        assert!(path.exists());
        drop(open_first(&path, timeout, false).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_writes_leave_connections_to_reads() {
        let dir = std::env::temp_dir().join(format!(
            "tak-sqlite-connections-{}-{}",
            std::process::id(),
            tower_api_key::KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Arc::new(Connections::new(
            dir.join("keys.db"),
            Duration::from_secs(1),
            4,
        ));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(Gate::default());
        let writes: Vec<_> = (0..6)
            .map(|_| {
                let (db, started_tx, gate) = (db.clone(), started_tx.clone(), gate.clone());
                tokio::spawn(async move {
                    db.run_write(move |_conn| {
                        let _ = started_tx.send(());
                        gate.wait();
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for _ in 0..WRITERS {
            started.recv().await.unwrap();
        }
        // Give the other writes every chance to take connections too.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            db.run(|conn| Ok(conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?)),
        )
        .await;
        gate.open();
        assert_eq!(
            read.expect("a read is not queued behind parked writes")
                .unwrap(),
            1
        );
        for write in writes {
            write.await.unwrap().unwrap();
        }
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
