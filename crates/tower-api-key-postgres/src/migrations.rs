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
//! use tower_api_key_postgres::migrations;
//!
//! let all = migrations();
//! assert!(all.windows(2).all(|w| w[0].version() < w[1].version()));
//! assert!(all[0].sql().contains("tower_api_key_keys"));
//! ```

use tokio_postgres::Client;

use super::PgKeyStore;
use tower_api_key::store::StoreError;
use tower_api_key_sql::{Migration, MigrationReport};

const MIGRATIONS: &[Migration] = &[
    Migration::new(1, "keys", include_str!("migrations/0001_keys.sql")),
    Migration::new(2, "revoked", include_str!("migrations/0002_revoked.sql")),
    Migration::new(3, "limits", include_str!("migrations/0003_limits.sql")),
    Migration::new(
        4,
        "rate_buckets",
        include_str!("migrations/0004_rate_buckets.sql"),
    ),
    Migration::new(5, "version", include_str!("migrations/0005_version.sql")),
    Migration::new(
        6,
        "compromise",
        include_str!("migrations/0006_compromise.sql"),
    ),
];

/// Every migration this version of the crate knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

impl PgKeyStore {
    /// The newest migration applied to the database (in the first schema
    /// of the `search_path` that has the migrations table): 0 when it has
    /// none, below the last of [`migrations()`] when this release's are not
    /// all applied yet. Only reads: a tool checks it before work that needs
    /// the schema, to say "migrate first" rather than fail on a missing
    /// table half-way.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let client = self.client().await?;
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('tower_api_key_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(StoreError::backend)?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let newest: i32 = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM tower_api_key_migrations",
                &[],
            )
            .await
            .map_err(StoreError::backend)?
            .get(0);
        Ok(u32::try_from(newest).unwrap_or(0))
    }
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
        let version = migration.version() as i32;
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(migration.sql()).await?;
        tx.execute(
            "INSERT INTO tower_api_key_migrations (version, name) VALUES ($1, $2)",
            &[&version, &migration.name()],
        )
        .await?;
        applied.push(migration.version());
    }
    tx.commit().await?;
    let newest_done = done.iter().copied().max().unwrap_or(0).max(0) as u32;
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
