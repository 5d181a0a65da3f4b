//! SQLite's dialect of the SQL core: the row-level calls as SQL text and
//! row mapping. Each call runs on a pooled connection on tokio's blocking
//! pool; a transaction runs its work there too, under SQLite's write lock
//! (`BEGIN IMMEDIATE`), and every call in it completes at once.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row};
use tower_api_key_sql::{
    insert_sql, read_kinds, select_columns, update_sql, Backend, BoxError, BoxFuture, HashColumns,
    KeyRow, Kind, Lookup, Migration, Rows, Tx, TxWork, Value,
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
    #[cfg(feature = "test-util")]
    pub(crate) verify_work: Arc<crate::VerifyWork>,
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

/// A row of [`select_columns`]: times are integer microseconds, scopes one
/// text of names separated by a space.
fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRow> {
    let values = read_kinds().enumerate().map(|(i, kind)| {
        Ok(match kind {
            Kind::Int => Value::Int(row.get(i)?),
            Kind::Text => Value::Text(row.get(i)?),
            Kind::Bytes => Value::Bytes(row.get(i)?),
            Kind::Time => Value::Time(row.get::<_, Option<i64>>(i)?.map(from_micros).transpose()?),
            // Names separated by a space; "" for none.
            Kind::Texts => Value::Texts(
                row.get::<_, String>(i)?
                    .split(' ')
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            // 0 or 1.
            Kind::Bool => Value::Bool(row.get::<_, Option<bool>>(i)?.unwrap_or_default()),
        })
    });
    KeyRow::from_values(values.collect::<rusqlite::Result<_>>()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Null, e))
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

/// `values` as the parameters ?1, ?2, ...
fn bind(
    values: Vec<Value>,
) -> Result<rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>>, BoxError> {
    let values = values
        .into_iter()
        .map(sql_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rusqlite::params_from_iter(values))
}

/// The rows `sql` selects with `params`.
fn rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<KeyRow>, BoxError> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map(params, key_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The row of key `id`.
fn key(conn: &Connection, id: &str) -> Result<Option<KeyRow>, BoxError> {
    let sql = format!("SELECT {} FROM {TABLE} WHERE key_id = ?1", select_columns());
    Ok(rows(conn, &sql, [id])?.pop())
}

fn account_limits(conn: &Connection, account: &str) -> Result<Option<String>, BoxError> {
    let sql = "SELECT rate_limits FROM tower_api_key_account_limits WHERE service_account_id = ?1";
    Ok(conn
        .prepare_cached(sql)?
        .query_row([account], |row| row.get(0))
        .optional()?)
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
        #[cfg(feature = "test-util")]
        let work = self.verify_work.clone();
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
                #[cfg(feature = "test-util")]
                work.count(&lookup);
                Ok(lookup)
            })
            .await
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRow>, BoxError> {
        let id = id.to_owned();
        self.db.run(move |conn| key(conn, &id)).await
    }

    async fn list(
        &self,
        account: &str,
        after: Option<(SystemTime, String)>,
        unused_before: Option<SystemTime>,
        limit: i64,
    ) -> Rows {
        let account = account.to_owned();
        let after = after
            .map(|(at, id)| Ok::<_, BoxError>((to_micros(at)?, id)))
            .transpose()?;
        let unused_before = unused_before.map(to_micros).transpose()?;
        self.db
            .run(move |conn| {
                let sql = format!(
                    "SELECT {} FROM {TABLE}
                      WHERE service_account_id = ?1
                        AND (?2 IS NULL OR (created_at, key_id) > (?2, ?3))
                        AND (?5 IS NULL OR last_used_at IS NULL OR last_used_at < ?5)
                      ORDER BY created_at, key_id
                      LIMIT ?4",
                    select_columns()
                );
                let (at, id) = after.unzip();
                rows(conn, &sql, (account, at, id, limit, unused_before))
            })
            .await
    }

    async fn export(&self, after: Option<String>, limit: i64) -> Rows {
        self.db
            .run(move |conn| {
                let sql = format!(
                    "SELECT {} FROM {TABLE}
                      WHERE ?1 IS NULL OR key_id > ?1
                      ORDER BY key_id LIMIT ?2",
                    select_columns()
                );
                rows(conn, &sql, (after, limit))
            })
            .await
    }

    async fn account_limits(&self, account: &str) -> Result<Option<String>, BoxError> {
        let account = account.to_owned();
        self.db
            .run(move |conn| account_limits(conn, &account))
            .await
    }

    async fn revoked(&self, after: Option<String>, limit: i64) -> Result<Vec<String>, BoxError> {
        self.db
            .run(move |conn| {
                let sql = "SELECT key_id FROM tower_api_key_revoked
                            WHERE ?1 IS NULL OR key_id > ?1
                            ORDER BY key_id LIMIT ?2";
                Ok(conn
                    .prepare_cached(sql)?
                    .query_map((after, limit), |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .await
    }

    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<String>,
        limit: i64,
    ) -> Rows {
        let (from, until) = (to_micros(from)?, to_micros(until)?);
        self.db
            .run(move |conn| {
                let sql = format!(
                    "SELECT {} FROM {TABLE}
                      WHERE expires_at >= ?1 AND expires_at < ?2
                        AND (?3 IS NULL OR key_id > ?3)
                      ORDER BY key_id LIMIT ?4",
                    select_columns()
                );
                rows(conn, &sql, (from, until, after, limit))
            })
            .await
    }

    async fn unused(&self, before: SystemTime, after: Option<String>, limit: i64) -> Rows {
        let before = to_micros(before)?;
        self.db
            .run(move |conn| {
                let sql = format!(
                    "SELECT {} FROM {TABLE}
                      WHERE retire_when_unused AND retired_unused_since IS NULL
                        AND coalesce(last_used_at, created_at) < ?1
                        AND (?2 IS NULL OR key_id > ?2)
                      ORDER BY key_id LIMIT ?3",
                    select_columns()
                );
                rows(conn, &sql, (before, after, limit))
            })
            .await
    }

    async fn record_notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
        sent_at: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, BoxError> {
        let (id, kind) = (id.to_owned(), kind.to_owned());
        let (window, sent_at) = (to_micros(window)?, to_micros(sent_at)?);
        let announced = announced.map(to_micros).transpose()?;
        self.db
            .run_write(move |conn| {
                // One statement: the key still exists, and the first insert
                // of this key, kind and window wins.
                let sql = format!(
                    "INSERT INTO tower_api_key_notices (key_id, kind, window_at, sent_at, announced)
                     SELECT ?1, ?2, ?3, ?4, ?5 FROM {TABLE} WHERE key_id = ?1
                     ON CONFLICT (key_id, kind, window_at) DO NOTHING"
                );
                let inserted = conn
                    .prepare_cached(&sql)?
                    .execute((id, kind, window, sent_at, announced))?;
                Ok(inserted == 1)
            })
            .await
    }

    async fn notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
    ) -> Result<Option<(SystemTime, Option<SystemTime>)>, BoxError> {
        let (id, kind) = (id.to_owned(), kind.to_owned());
        let window = to_micros(window)?;
        self.db
            .run(move |conn| {
                let sql = "SELECT sent_at, announced FROM tower_api_key_notices
                            WHERE key_id = ?1 AND kind = ?2 AND window_at = ?3";
                Ok(conn
                    .prepare_cached(sql)?
                    .query_row((id, kind, window), |row| {
                        let announced: Option<i64> = row.get(1)?;
                        Ok((
                            from_micros(row.get(0)?)?,
                            announced.map(from_micros).transpose()?,
                        ))
                    })
                    .optional()?)
            })
            .await
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<bool, BoxError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let (now, until) = (to_micros(now)?, to_micros(until)?);
        self.db
            .run_write(move |conn| {
                // One conditional upsert: taken when free, run out, or ours.
                let sql = "INSERT INTO tower_api_key_leases (name, holder, until)
                           VALUES (?1, ?2, ?4)
                           ON CONFLICT (name) DO UPDATE
                              SET holder = excluded.holder, until = excluded.until
                            WHERE tower_api_key_leases.until <= ?3
                               OR tower_api_key_leases.holder = excluded.holder";
                let written = conn
                    .prepare_cached(sql)?
                    .execute((name, holder, now, until))?;
                Ok(written == 1)
            })
            .await
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
    async fn lock_account(&mut self, _account: &str) -> Result<(), BoxError> {
        // The transaction holds the database's write lock already.
        Ok(())
    }

    async fn count_keys(&mut self, account: &str) -> Result<i64, BoxError> {
        let sql = format!("SELECT count(*) FROM {TABLE} WHERE service_account_id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([account], |r| r.get(0))?)
    }

    async fn key_for_update(&mut self, id: &str) -> Result<Option<KeyRow>, BoxError> {
        key(self.conn, id)
    }

    async fn insert_key(&mut self, row: &KeyRow) -> Result<(), BoxError> {
        let sql = insert_sql(|n| format!("?{n}"));
        self.execute(&sql, bind(row.values())?)?;
        Ok(())
    }

    async fn write_key(&mut self, row: &KeyRow) -> Result<(), BoxError> {
        let sql = update_sql(|n| format!("?{n}"));
        self.execute(&sql, bind(row.changed_values())?)?;
        Ok(())
    }

    async fn touch(&mut self, uses: &[(String, SystemTime)]) -> Result<(), BoxError> {
        let sql = format!(
            "UPDATE {TABLE} SET last_used_at = ?2
              WHERE key_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)"
        );
        for (id, at) in uses {
            self.execute(&sql, (id, to_micros(*at)?))?;
        }
        Ok(())
    }

    async fn retire_unused(
        &mut self,
        id: &str,
        seen: Option<SystemTime>,
        since: SystemTime,
        at: SystemTime,
    ) -> Result<bool, BoxError> {
        let seen = seen.map(to_micros).transpose()?;
        let (since, at) = (to_micros(since)?, to_micros(at)?);
        let sql = format!(
            "UPDATE {TABLE}
                SET expires_at = ?4, retired_unused_since = ?3, version = version + 1
              WHERE key_id = ?1 AND last_used_at IS ?2
                AND retire_when_unused AND retired_unused_since IS NULL
                AND (expires_at IS NULL OR expires_at >= ?4)"
        );
        Ok(self.execute(&sql, (id, seen, since, at))? == 1)
    }

    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, BoxError> {
        // The key's notices go with it, in the same transaction.
        self.execute("DELETE FROM tower_api_key_notices WHERE key_id = ?1", [id])?;
        let sql = format!("DELETE FROM {TABLE} WHERE key_id = ?1 RETURNING service_account_id");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([id], |row| row.get(0))
            .optional()?)
    }

    async fn is_revoked(&mut self, id: &str) -> Result<bool, BoxError> {
        let sql = "SELECT 1 FROM tower_api_key_revoked WHERE key_id = ?1";
        Ok(self.conn.prepare_cached(sql)?.exists([id])?)
    }

    async fn add_revoked(&mut self, id: &str, at: SystemTime) -> Result<(), BoxError> {
        let sql =
            "INSERT OR IGNORE INTO tower_api_key_revoked (key_id, revoked_at) VALUES (?1, ?2)";
        self.execute(sql, (id, to_micros(at)?))?;
        Ok(())
    }

    async fn account_limits(&mut self, account: &str) -> Result<Option<String>, BoxError> {
        account_limits(self.conn, account)
    }

    async fn set_account_limits(
        &mut self,
        account: &str,
        text: &str,
    ) -> Result<Vec<String>, BoxError> {
        if text.is_empty() {
            let sql = "DELETE FROM tower_api_key_account_limits WHERE service_account_id = ?1";
            self.execute(sql, [account])?;
        } else {
            let sql = "INSERT INTO tower_api_key_account_limits (service_account_id, rate_limits)
                       VALUES (?1, ?2)
                       ON CONFLICT (service_account_id) DO UPDATE SET rate_limits = excluded.rate_limits";
            self.execute(sql, (account, text))?;
        }
        let sql = format!("SELECT key_id FROM {TABLE} WHERE service_account_id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map([account], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?)
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

    async fn apply_migration(&mut self, migration: &Migration) -> Result<(), BoxError> {
        self.conn.execute_batch(migration.sql())?;
        let sql = "INSERT INTO tower_api_key_migrations (version, name) VALUES (?1, ?2)";
        self.execute(sql, (migration.version(), migration.name()))?;
        Ok(())
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
