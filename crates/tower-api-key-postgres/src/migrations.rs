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

use tower_api_key_sql::Migration;

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
    Migration::new(7, "changes", include_str!("migrations/0007_changes.sql")),
    Migration::new(
        8,
        "networks_metadata",
        include_str!("migrations/0008_networks_metadata.sql"),
    ),
    Migration::new(
        9,
        "operator_locked",
        include_str!("migrations/0009_operator_locked.sql"),
    ),
    Migration::new(
        10,
        "lifecycle",
        include_str!("migrations/0010_lifecycle.sql"),
    ),
];

/// Every migration this version of the crate knows, oldest first.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one() {
        assert_eq!(migrations()[0].version(), 1);
        for pair in migrations().windows(2) {
            assert!(pair[0].version() < pair[1].version(), "{pair:?}");
        }
        for m in migrations() {
            assert!(!m.sql().trim().is_empty(), "{m:?}");
        }
    }
}
