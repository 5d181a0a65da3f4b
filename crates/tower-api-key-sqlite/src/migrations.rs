//! The schema, as numbered SQL migrations embedded in the crate.
//!
//! [`SqliteKeyStore::migrate`](super::SqliteKeyStore::migrate) applies the
//! ones a database lacks, in order, in one `BEGIN IMMEDIATE` transaction:
//! processes that all migrate at start take turns (SQLite has one writer at
//! a time), and the second one finds nothing to do. Applied versions are
//! recorded in `tower_api_key_migrations`.
//!
//! ```
//! use tower_api_key_sqlite::migrations;
//!
//! let all = migrations();
//! assert!(all.windows(2).all(|w| w[0].version() < w[1].version()));
//! assert!(all[0].sql().contains("tower_api_key_keys"));
//! ```

use tower_api_key_sql::Migration;

const MIGRATIONS: &[Migration] = &[
    Migration::new(1, "keys", include_str!("migrations/0001_keys.sql")),
    Migration::new(2, "revoked", include_str!("migrations/0002_revoked.sql")),
    Migration::new(3, "limits", include_str!("migrations/0003_limits.sql")),
    Migration::new(4, "version", include_str!("migrations/0004_version.sql")),
    Migration::new(
        5,
        "compromise",
        include_str!("migrations/0005_compromise.sql"),
    ),
    Migration::new(
        6,
        "networks_metadata",
        include_str!("migrations/0006_networks_metadata.sql"),
    ),
    Migration::new(
        7,
        "operator_locked",
        include_str!("migrations/0007_operator_locked.sql"),
    ),
    Migration::new(
        8,
        "lifecycle",
        include_str!("migrations/0008_lifecycle.sql"),
    ),
    Migration::new(
        9,
        "rate_buckets",
        include_str!("migrations/0009_rate_buckets.sql"),
    ),
];

/// Every migration this version of the crate knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_applied_version_is_0_before_migrating_and_the_newest_after() {
        let dir = std::env::temp_dir().join(format!(
            "tak-sqlite-migrations-{}-{}",
            std::process::id(),
            tower_api_key::KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::SqliteKeyStore::open(dir.join("keys.db"))
            .await
            .unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 0);
        let report = store.migrate().await.unwrap();
        let newest = migrations().last().unwrap().version();
        assert_eq!(report.applied.len(), migrations().len());
        assert_eq!(store.schema_version().await.unwrap(), newest);
        assert!(store.migrate().await.unwrap().applied.is_empty());
        store.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn versions_increase_from_one() {
        for (i, m) in migrations().iter().enumerate() {
            assert_eq!(m.version() as usize, i + 1, "{m:?}");
            assert!(!m.sql().trim().is_empty());
        }
    }
}
