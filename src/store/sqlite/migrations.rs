//! The schema, as numbered SQL migrations embedded in the crate.
//!
//! [`SqliteKeyStore::migrate`](super::SqliteKeyStore::migrate) applies the
//! ones a database lacks, in order, in one `BEGIN IMMEDIATE` transaction:
//! processes that all migrate at start take turns (SQLite has one writer at
//! a time), and the second one finds nothing to do. Applied versions are
//! recorded in `tower_api_key_migrations`.
//!
//! ```
//! use tower_api_key::store::sqlite::migrations;
//!
//! let all = migrations();
//! assert!(all.windows(2).all(|w| w[0].version() < w[1].version()));
//! assert!(all[0].sql().contains("tower_api_key_keys"));
//! ```

use rusqlite::{Connection, TransactionBehavior};

use crate::store::schema::{Migration, MigrationReport};

const MIGRATIONS: &[Migration] = &[
    Migration::new(1, "keys", include_str!("migrations/0001_keys.sql")),
    Migration::new(2, "revoked", include_str!("migrations/0002_revoked.sql")),
    Migration::new(3, "limits", include_str!("migrations/0003_limits.sql")),
    Migration::new(4, "version", include_str!("migrations/0004_version.sql")),
];

/// Every migration this version of the crate knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

pub(super) fn run(conn: &mut Connection) -> rusqlite::Result<MigrationReport> {
    // IMMEDIATE: the write lock is taken before reading what is applied, so
    // two processes cannot both decide to apply the same migration.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tower_api_key_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT    NOT NULL,
             applied_at INTEGER NOT NULL DEFAULT (unixepoch())
         ) STRICT",
    )?;
    let done: Vec<i64> = tx
        .prepare("SELECT version FROM tower_api_key_migrations")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        if done.contains(&i64::from(migration.version())) {
            continue;
        }
        tx.execute_batch(migration.sql())?;
        tx.execute(
            "INSERT INTO tower_api_key_migrations (version, name) VALUES (?1, ?2)",
            (migration.version(), migration.name()),
        )?;
        applied.push(migration.version());
    }
    tx.commit()?;
    let newest_done = done
        .iter()
        .copied()
        .max()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    Ok(MigrationReport::new(MIGRATIONS, applied, newest_done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one() {
        for (i, m) in migrations().iter().enumerate() {
            assert_eq!(m.version() as usize, i + 1, "{m:?}");
            assert!(!m.sql().trim().is_empty());
        }
    }
}
