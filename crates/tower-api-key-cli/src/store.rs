//! Opening the store a `--database-url` names, and what the commands need
//! from it beyond the `KeyStore` trait.

use tower_api_key::hash::KeyHasher;
use tower_api_key::store::StoredKey;
use tower_api_key::{KeyFormat, KeyId, KeyStore};
use tower_api_key_postgres::{self as postgres, PgKeyStore};
use tower_api_key_sqlite::{self as sqlite, SqliteKeyStore};

use crate::error::CliError;

/// An open store.
pub enum Store {
    Postgres(PgKeyStore),
    Sqlite(SqliteKeyStore),
}

/// Opens the store `url` names with `hasher` for new hashes:
/// `postgres://...` (or `postgresql://...`) or `sqlite:PATH`. A SQLite file
/// is created only by `migrate` (`create`): any other command on a missing
/// file is an error, not an empty store.
pub async fn open(url: &str, hasher: KeyHasher, create: bool) -> Result<Store, CliError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Errors from the builder never hold the URL (it may hold a password).
        let store = PgKeyStore::builder(url)?.hasher(hasher).connect().await?;
        Ok(Store::Postgres(store))
    } else if let Some(path) = url.strip_prefix("sqlite:") {
        // `sqlite:keys.db`, `sqlite:/var/lib/keys.db`; `sqlite://` before
        // the path is accepted too, as other tools write it.
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(CliError::new("the sqlite: URL names no file: sqlite:PATH"));
        }
        if !create && !std::path::Path::new(path).exists() {
            return Err(CliError::new(format!(
                "no SQLite database at {path}: `tower-api-key migrate` creates one and applies \
                 the schema"
            )));
        }
        // The check above says it clearly; this makes sure nothing is
        // created if the file goes away in between.
        let store = SqliteKeyStore::builder(path)
            .hasher(hasher)
            .create_if_missing(create)
            .open()
            .await?;
        Ok(Store::Sqlite(store))
    } else {
        Err(CliError::new(
            "the database URL must start with postgres:// or sqlite:",
        ))
    }
}

impl Store {
    pub fn keys(&self) -> &dyn KeyStore {
        match self {
            Self::Postgres(s) => s,
            Self::Sqlite(s) => s,
        }
    }

    pub fn format(&self) -> KeyFormat {
        match self {
            Self::Postgres(s) => s.format(),
            Self::Sqlite(s) => s.format(),
        }
    }

    /// Applies the schema; says what it did.
    pub async fn migrate(&self) -> Result<String, CliError> {
        let (applied, current) = match self {
            Self::Postgres(s) => {
                let report = s.migrate().await?;
                (report.applied, report.current)
            }
            Self::Sqlite(s) => {
                let report = s.migrate().await?;
                (report.applied, report.current)
            }
        };
        Ok(if applied.is_empty() {
            format!("schema already at version {current}")
        } else {
            format!("applied migrations {applied:?}; schema at version {current}")
        })
    }

    /// Refuses a store whose schema lacks migrations this CLI knows, before
    /// any work: a command would otherwise fail half-way on a missing table.
    pub async fn check_schema(&self) -> Result<(), CliError> {
        let (found, known) = match self {
            Self::Postgres(s) => (s.schema_version().await?, postgres::migrations()),
            Self::Sqlite(s) => (s.schema_version().await?, sqlite::migrations()),
        };
        let needed = known.last().map_or(0, |m| m.version());
        if found == 0 {
            return Err(CliError::new(
                "the store has no schema: run `tower-api-key migrate` first",
            ));
        }
        if found < needed {
            return Err(CliError::new(format!(
                "the store's schema is at version {found} and this tool needs {needed}: run \
                 `tower-api-key migrate` first"
            )));
        }
        Ok(())
    }

    /// Waits for background work to end and closes connections. Every
    /// command's store calls have returned (so committed) before this.
    pub async fn shutdown(self) {
        match self {
            Self::Postgres(s) => s.shutdown().await,
            Self::Sqlite(s) => s.shutdown().await,
        }
    }

    /// The stored form of key `id` (hashes, never a secret), if it exists:
    /// the one key of an export page that starts right before `id`.
    pub async fn stored_key(&self, id: KeyId) -> Result<Option<StoredKey>, CliError> {
        let page = self.keys().export(predecessor(id), 1).await?;
        Ok(page.into_iter().find(|k| k.info.record.key_id == id))
    }
}

/// The greatest key id below `id` in byte order (the export order), or
/// `None` for the least id.
fn predecessor(id: KeyId) -> Option<KeyId> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut bytes = id.as_str().as_bytes().to_vec();
    for i in (0..bytes.len()).rev() {
        let at = ALPHABET.iter().position(|&c| c == bytes[i])?;
        if at > 0 {
            bytes[i] = ALPHABET[at - 1];
            return std::str::from_utf8(&bytes).ok()?.parse().ok();
        }
        // '0' borrows from the character before and becomes the greatest.
        bytes[i] = ALPHABET[ALPHABET.len() - 1];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyId {
        s.parse().unwrap()
    }

    #[test]
    fn predecessor_is_the_greatest_id_below() {
        assert_eq!(
            predecessor(id("000000000000000b")),
            Some(id("000000000000000a"))
        );
        assert_eq!(
            predecessor(id("000000000000000A")),
            Some(id("0000000000000009"))
        );
        assert_eq!(
            predecessor(id("00000000000000a0")),
            Some(id("00000000000000Zz"))
        );
        assert_eq!(predecessor(id("0000000000000000")), None);
        let some = id("Zq3xP0000000000a");
        assert!(predecessor(some).unwrap() < some);
    }
}
