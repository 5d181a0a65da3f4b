//! What the SQL stores share: numbered migrations and their report, and the
//! columns a stored hash is kept in (`hash`, `hash_scheme`,
//! `hash_pepper_version`, and the same for the previous hash).

use std::fmt;

use super::StoreError;
use crate::hash::{HashScheme, StoredHash};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One schema migration of a SQL store (its list is the store's
/// `migrations()`).
#[derive(Clone, Copy)]
pub struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

impl Migration {
    pub(crate) const fn new(version: u32, name: &'static str, sql: &'static str) -> Self {
        Self { version, name, sql }
    }

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

/// What a SQL store's `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The versions applied by this call (empty when the schema was current).
    pub applied: Vec<u32>,
    /// The highest version in the database after the call.
    pub current: u32,
}

impl MigrationReport {
    /// The report of a run over `known` (oldest first) that applied
    /// `applied` to a database that had reached `newest_done`; says so in a
    /// log when the database is newer than this release (migrations only
    /// add, so this release keeps working).
    pub(crate) fn new(known: &[Migration], applied: Vec<u32>, newest_done: u32) -> Self {
        let newest_known = known.last().map_or(0, |m| m.version);
        if newest_done > newest_known {
            tracing::info!(
                database = newest_done,
                crate_knows = newest_known,
                "tower-api-key: the database schema is newer than this release"
            );
        }
        Self {
            applied,
            current: newest_done.max(newest_known),
        }
    }
}

/// The `hash_scheme` and `hash_pepper_version` columns of `scheme`.
pub(crate) fn scheme_columns(
    scheme: HashScheme,
) -> Result<(&'static str, Option<i64>), StoreError> {
    match scheme {
        HashScheme::Sha256 => Ok(("sha256", None)),
        HashScheme::HmacSha256 { pepper_version } => {
            Ok(("hmac-sha256", Some(i64::from(pepper_version))))
        }
        #[allow(unreachable_patterns)]
        _ => Err(StoreError::backend("unsupported hash scheme")),
    }
}

/// The stored hash in a row's three columns; `None` when the digest is
/// NULL (no previous hash).
pub(crate) fn stored_hash(
    digest: Option<&[u8]>,
    scheme: Option<&str>,
    pepper_version: Option<i64>,
) -> Result<Option<StoredHash>, BoxError> {
    let Some(digest) = digest else {
        return Ok(None);
    };
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| "stored key hash is not 32 bytes")?;
    let scheme = match (scheme, pepper_version) {
        (Some("sha256"), None) => HashScheme::Sha256,
        (Some("hmac-sha256"), Some(v)) => HashScheme::HmacSha256 {
            pepper_version: u32::try_from(v).map_err(|_| "stored pepper version out of range")?,
        },
        _ => return Err("stored key hash has an unknown scheme".into()),
    };
    Ok(Some(StoredHash::from_parts(scheme, digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_round_trips_through_its_columns() {
        for scheme in [
            HashScheme::Sha256,
            HashScheme::HmacSha256 { pepper_version: 0 },
            HashScheme::HmacSha256 {
                pepper_version: u32::MAX,
            },
        ] {
            let hash = StoredHash::from_parts(scheme, [7; 32]);
            let (name, version) = scheme_columns(scheme).unwrap();
            let back = stored_hash(Some(&[7; 32]), Some(name), version).unwrap();
            assert_eq!(back, Some(hash));
        }
    }

    #[test]
    fn malformed_columns_are_errors_and_a_null_digest_is_no_hash() {
        assert_eq!(stored_hash(None, Some("sha256"), None).unwrap(), None);
        assert!(stored_hash(Some(&[0; 31]), Some("sha256"), None).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("sha256"), Some(1)).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("hmac-sha256"), None).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("hmac-sha256"), Some(-1)).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("md5"), None).is_err());
    }
}
