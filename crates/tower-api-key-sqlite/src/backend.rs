//! SQLite's dialect of the SQL core: its statement runners with the value
//! codec, and the statements only it writes (lookup, migrations, the
//! change log). Each call runs on a pooled connection on tokio's blocking
//! pool; a transaction runs its work there too, under SQLite's write lock
//! (`BEGIN IMMEDIATE`), and every call in it completes at once.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, Row};
use tower_api_key_sql::{
    Backend, BoxError, BoxFuture, HashColumns, Kind, Lookup, Statement, Tx, TxWork, Value,
    ValueRows,
};

use crate::connection::Connections;

/// The key table.
const TABLE: &str = "tower_api_key_keys";

/// Change log rows older than this are pruned by writers.
const CHANGE_LOG_AGE: Duration = Duration::from_secs(600);
/// Change log rows kept at most.
const CHANGE_LOG_ROWS: i64 = 10_000;

/// The SQLite backend: the pooled connections to one file.
pub(crate) struct Sqlite {
    pub(crate) db: Arc<Connections>,
    /// Marks this store's rows in the change log.
    pub(crate) origin: String,
}

/// `t` as microseconds since the Unix epoch, truncated toward the past.
pub(crate) fn to_micros(t: SystemTime) -> Result<i64, BoxError> {
    let micros = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos().div_ceil(1000))
            .ok()
            .map(|m| -m),
    };
    micros.ok_or_else(|| "a time is out of range".into())
}

/// The instant `micros` after (or before) the Unix epoch.
fn from_micros(micros: i64) -> rusqlite::Result<SystemTime> {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    let at = if micros >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    at.ok_or(rusqlite::Error::IntegralValueOutOfRange(0, micros))
}

fn hash_columns(row: &Row<'_>, prefix: &str) -> rusqlite::Result<HashColumns> {
    Ok(HashColumns {
        digest: row.get(format!("{prefix}hash").as_str())?,
        scheme: row.get(format!("{prefix}hash_scheme").as_str())?,
        pepper_version: row.get(format!("{prefix}hash_pepper_version").as_str())?,
    })
}

/// The values of the columns `kinds` of `row`: times are integer
/// microseconds, lists one text of names separated by a space, booleans 0
/// or 1. Text that is not UTF-8 (written by another program) comes back as
/// its bytes, which makes a key row unreadable rather than its whole read
/// fail.
fn decode(row: &Row<'_>, kinds: &[Kind]) -> rusqlite::Result<Vec<Value>> {
    let text = |i: usize| -> rusqlite::Result<Result<Option<String>, Vec<u8>>> {
        match row.get_ref(i)? {
            ValueRef::Text(bytes) => Ok(std::str::from_utf8(bytes)
                .map(|text| Some(text.to_owned()))
                .map_err(|_| bytes.to_vec())),
            _ => row.get(i).map(Ok),
        }
    };
    let value = |(i, kind): (usize, &Kind)| {
        Ok(match kind {
            Kind::Int => Value::Int(row.get(i)?),
            Kind::Text => text(i)?.map_or_else(|raw| Value::Bytes(Some(raw)), Value::Text),
            Kind::Bytes => Value::Bytes(row.get(i)?),
            Kind::Time => Value::Time(row.get::<_, Option<i64>>(i)?.map(from_micros).transpose()?),
            Kind::Texts => match text(i)? {
                Ok(names) => Value::Texts(
                    names
                        .ok_or(rusqlite::Error::InvalidColumnType(
                            i,
                            "a list".to_owned(),
                            rusqlite::types::Type::Null,
                        ))?
                        .split(' ')
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ),
                Err(raw) => Value::Bytes(Some(raw)),
            },
            Kind::Bool => Value::Bool(row.get::<_, Option<bool>>(i)?.unwrap_or_default()),
        })
    };
    kinds.iter().enumerate().map(value).collect()
}

/// `value` as SQLite keeps it.
fn sql_value(value: Value) -> Result<rusqlite::types::Value, BoxError> {
    use rusqlite::types::Value as V;
    let or_null = |v: Option<V>| v.unwrap_or(V::Null);
    Ok(match value {
        Value::Int(v) => or_null(v.map(V::Integer)),
        Value::Text(v) => or_null(v.map(V::Text)),
        Value::Bytes(v) => or_null(v.map(V::Blob)),
        Value::Time(v) => or_null(v.map(to_micros).transpose()?.map(V::Integer)),
        Value::Texts(names) => V::Text(names.join(" ")),
        Value::Bool(v) => V::Integer(i64::from(v)),
    })
}

/// Runs `statement` on `conn`: its `$n` parameters become SQLite's `?n`,
/// and every row is stepped through, so a write runs even when it returns
/// nothing.
fn run(conn: &Connection, statement: Statement) -> ValueRows {
    let Statement {
        sql,
        params,
        columns,
        ..
    } = statement;
    let params = params
        .into_iter()
        .map(sql_value)
        .collect::<Result<Vec<_>, _>>()?;
    let mut prepared = conn.prepare_cached(&sql.replace('$', "?"))?;
    let mut rows = prepared.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row, &columns)?);
    }
    Ok(out)
}

/// Polls `work` once: every call of a SQLite transaction completes at once,
/// so it is done; one that is not is an error, never a wait.
fn drive<T>(mut work: BoxFuture<'_, Result<T, BoxError>>) -> Result<T, BoxError> {
    match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => Err("a SQLite transaction's work waited for something".into()),
    }
}

#[async_trait]
impl Backend for Sqlite {
    const MIGRATIONS_TABLE_EXISTS: &'static str = "SELECT EXISTS (SELECT 1 FROM sqlite_master
        WHERE type = 'table' AND name = 'tower_api_key_migrations')";

    async fn transaction<T: Send + 'static>(&self, work: TxWork<T>) -> Result<T, BoxError> {
        let origin = self.origin.clone();
        self.db
            .run_write(move |conn| {
                // The write lock first: a write in another process waits,
                // then reads what this one left.
                conn.execute_batch("BEGIN IMMEDIATE")?;
                let mut tx = SqliteTx {
                    conn,
                    origin: &origin,
                    open: true,
                };
                let out = drive(work(&mut tx))?;
                tx.conn.execute_batch("COMMIT")?;
                tx.open = false;
                Ok(out)
            })
            .await
    }

    async fn lookup(
        &self,
        id: &str,
        scheme: &'static str,
        pepper_version: Option<i64>,
    ) -> Result<Lookup, BoxError> {
        // The same columns and sizes whether or not the id exists:
        // placeholders in the hasher's current scheme when it does not.
        let id = id.to_owned();
        self.db
            .run(move |conn| {
                let sql = format!(
                    "SELECT k.key_id IS NOT NULL AS found,
                            coalesce(k.hash, zeroblob(32)) AS hash,
                            coalesce(k.hash_scheme, ?2) AS hash_scheme,
                            CASE WHEN k.key_id IS NULL THEN ?3 ELSE k.hash_pepper_version END
                                AS hash_pepper_version,
                            k.previous_hash IS NOT NULL AS has_previous,
                            coalesce(k.previous_hash, zeroblob(32)) AS previous_hash,
                            coalesce(k.previous_hash_scheme, ?2) AS previous_hash_scheme,
                            CASE WHEN k.previous_hash IS NULL THEN ?3
                                 ELSE k.previous_hash_pepper_version END
                                AS previous_hash_pepper_version
                       FROM (SELECT ?1 AS wanted) AS w
                       LEFT JOIN {TABLE} AS k ON k.key_id = w.wanted"
                );
                let lookup =
                    conn.prepare_cached(&sql)?
                        .query_row((&id, scheme, pepper_version), |row| {
                            Ok(Lookup {
                                found: row.get("found")?,
                                hash: hash_columns(row, "")?,
                                has_previous: row.get("has_previous")?,
                                previous: hash_columns(row, "previous_")?,
                                row: None,
                            })
                        })?;
                Ok(lookup)
            })
            .await
    }

    async fn query(&self, statement: Statement) -> ValueRows {
        self.db.run(move |conn| run(conn, statement)).await
    }

    fn is_unique_violation(&self, e: &BoxError) -> bool {
        e.downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            == Some(ErrorCode::ConstraintViolation)
    }
}

/// A transaction on a connection that holds SQLite's write lock; rolled
/// back when dropped before its commit.
struct SqliteTx<'c> {
    conn: &'c mut Connection,
    origin: &'c str,
    open: bool,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl SqliteTx<'_> {
    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, BoxError> {
        Ok(self.conn.prepare_cached(sql)?.execute(params)?)
    }
}

#[async_trait]
impl Tx for SqliteTx<'_> {
    async fn query(&mut self, statement: Statement) -> ValueRows {
        run(self.conn, statement)
    }

    async fn applied_migrations(&mut self) -> Result<Vec<u32>, BoxError> {
        // The transaction holds the write lock: migrations take turns.
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tower_api_key_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT    NOT NULL,
                 applied_at INTEGER NOT NULL DEFAULT (unixepoch())
             ) STRICT",
        )?;
        let sql = "SELECT version FROM tower_api_key_migrations";
        Ok(self
            .conn
            .prepare(sql)?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    async fn execute_batch(&mut self, sql: &str) -> Result<(), BoxError> {
        Ok(self.conn.execute_batch(sql)?)
    }

    /// Appends the changes to the log, and prunes old rows, remembering the
    /// highest sequence number pruned: the watchers of every store on the
    /// file read it.
    async fn announce(
        &mut self,
        ids: &[String],
        account: &str,
        at: SystemTime,
    ) -> Result<(), BoxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let at = to_micros(at)?;
        let insert =
            "INSERT INTO tower_api_key_changes (key_id, service_account_id, origin, changed_at)
                      VALUES (?1, ?2, ?3, ?4)";
        for id in ids {
            self.execute(insert, (id, account, self.origin, at))?;
        }
        let seq = self.conn.last_insert_rowid();
        let cutoff = at.saturating_sub(CHANGE_LOG_AGE.as_micros() as i64);
        let aged: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(seq) FROM tower_api_key_changes WHERE changed_at < ?1")?
            .query_row([cutoff], |row| row.get(0))?;
        let upto = aged.unwrap_or(0).max(seq - CHANGE_LOG_ROWS).min(seq - 1);
        if upto > 0 {
            self.execute("DELETE FROM tower_api_key_changes WHERE seq <= ?1", [upto])?;
            self.execute(
                "UPDATE tower_api_key_changes_pruned SET upto = max(upto, ?1) WHERE id = 1",
                [upto],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_that_waits_is_an_error_not_a_hang_nor_a_panic() {
        let ready: BoxFuture<'_, Result<u8, BoxError>> = Box::pin(async { Ok(7) });
        assert_eq!(drive(ready).unwrap(), 7);
        let waits: BoxFuture<'_, Result<u8, BoxError>> = Box::pin(std::future::pending());
        let e = drive(waits).unwrap_err().to_string();
        assert!(e.contains("waited"), "{e}");
    }

    #[tokio::test]
    async fn a_transaction_whose_work_fails_writes_nothing() {
        let dir = std::env::temp_dir().join(format!(
            "tak-sqlite-tx-{}-{}",
            std::process::id(),
            tower_api_key::KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::SqliteKeyStore::open(dir.join("keys.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let backend = store.inner.core.backend();
        let failed = backend
            .transaction::<()>(Box::new(|tx| {
                Box::pin(async move {
                    tx.add_revoked("k1", SystemTime::now()).await?;
                    Err("the work failed after a write".into())
                })
            }))
            .await;
        assert!(failed.is_err());
        let revoked = backend.revoked(None, 10).await.unwrap();
        assert!(revoked.is_empty(), "rolled back: {revoked:?}");
        // The connection went back usable: the next transaction commits.
        backend
            .transaction::<()>(Box::new(|tx| {
                Box::pin(async move { tx.add_revoked("k2", SystemTime::now()).await })
            }))
            .await
            .unwrap();
        assert_eq!(backend.revoked(None, 10).await.unwrap(), ["k2"]);
        store.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
