//! The schema, as numbered SQL migrations embedded in the crate.
//!
//! [`PgKeyStore::migrate`](super::PgKeyStore::migrate) applies the ones a
//! database lacks, in order, in one transaction, under a transaction-level
//! advisory lock: replicas that all migrate at start wait for each other, and
//! the second one finds nothing to do. Applied versions are recorded in
//! `tower_api_key_migrations`. Tables are created in the first schema of the
//! connection's `search_path`.
//!
//! Teams that run their own migration tool can take the SQL from
//! [`migrations`] instead (and then never call `migrate`):
//!
//! ```
//! use tower_api_key::store::postgres::migrations;
//!
//! let all = migrations();
//! assert!(all.windows(2).all(|w| w[0].version() < w[1].version()));
//! assert!(all[0].sql().contains("tower_api_key_keys"));
//! ```

use std::fmt;

use tokio_postgres::Client;

/// One schema migration.
#[derive(Clone, Copy)]
pub struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

impl Migration {
    /// Its number; migrations apply in increasing order.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The SQL it runs.
    pub fn sql(&self) -> &'static str {
        self.sql
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "keys",
    sql: include_str!("migrations/0001_keys.sql"),
}];

/// Every migration this version of the crate knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// What [`PgKeyStore::migrate`](super::PgKeyStore::migrate) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The versions applied by this call (empty when the schema was current).
    pub applied: Vec<u32>,
    /// The highest version in the database after the call.
    pub current: u32,
}

/// Key of the advisory lock that serializes migrations ("tak-migr" in ASCII).
const LOCK_KEY: i64 = 0x7461_6b2d_6d69_6772;

pub(super) async fn run(client: &mut Client) -> Result<MigrationReport, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Held until commit or rollback; concurrent callers queue here.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tower_api_key_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM tower_api_key_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let version = migration.version as i32;
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO tower_api_key_migrations (version, name) VALUES ($1, $2)",
            &[&version, &migration.name],
        )
        .await?;
        applied.push(migration.version);
    }
    tx.commit().await?;
    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    let newest_done = done.iter().copied().max().unwrap_or(0).max(0) as u32;
    if newest_done > newest_known {
        // A newer release migrated this database; migrations only add, so
        // this one keeps working. Worth knowing during a rolling deploy.
        tracing::info!(
            database = newest_done,
            crate_knows = newest_known,
            "tower-api-key: the database schema is newer than this release"
        );
    }
    Ok(MigrationReport {
        applied,
        current: newest_done.max(newest_known),
    })
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
