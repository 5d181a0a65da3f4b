//! PostgreSQL's dialect of the SQL core: the row-level calls as SQL text
//! and row mapping, on pooled connections. A transaction is one of
//! tokio-postgres's; announcements are NOTIFYs sent in it, so they go out
//! if and only if it commits.
//!
//! Every statement is unnamed (`query_typed`: parse, bind and execute in one
//! round trip, parameter types given here rather than asked of the server),
//! so nothing outlives the transaction on the server session: a transaction
//! pooler such as PgBouncer may hand the next transaction another one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{watch, Notify};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use tower_api_key_sql::{
    insert_sql, read_kinds, select_columns, update_sql, Backend, BoxError, KeyRow, Kind, Lookup,
    Migration, Rows, Tx, TxWork, Value,
};

use crate::ListenerStatus;

/// First key of the advisory locks that serialize creates per account
/// ("takc" in ASCII); the second is a hash of the account.
const CREATE_LOCK_CLASS: i32 = 0x7461_6b63;

/// The advisory lock that serializes migrations ("tak-migr" in ASCII).
const MIGRATION_LOCK: i64 = 0x7461_6b2d_6d69_6772;

/// Change log rows older than this are pruned by writers: far beyond any
/// poll interval, so only a replica that could not read the log that long
/// finds its position pruned (and invalidates everything).
pub(crate) const CHANGE_LOG_AGE: Duration = Duration::from_secs(600);

/// Longest service account id sent in a NOTIFY payload, in bytes (PostgreSQL
/// takes payloads under 8,000 bytes); a key of a longer one is announced by
/// its id alone.
const MAX_NOTIFY_ACCOUNT_LEN: i32 = 1024;

/// The PostgreSQL backend: the pool, and what announcements go out on.
pub(crate) struct Pg {
    pub(crate) pool: Pool,
    pub(crate) channel: String,
    pub(crate) status: watch::Receiver<ListenerStatus>,
    /// Tells a listener that is not listening that the database answers again.
    pub(crate) wake_listener: Arc<Notify>,
}

impl Pg {
    /// The database answered: a listener waiting out its backoff reconnects
    /// now, not up to the backoff's maximum later.
    fn answered(&self) {
        if !self.status.borrow().is_listening() {
            self.wake_listener.notify_one();
        }
    }

    /// Runs one unnamed statement on a pooled connection.
    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, BoxError> {
        let client = self.pool.get().await?;
        let rows = client.query_typed(sql, params).await?;
        self.answered();
        Ok(rows)
    }

    async fn rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<KeyRow>, BoxError> {
        self.query(sql, params).await?.iter().map(key_row).collect()
    }
}

/// A statement parameter and the type it is sent as.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The values of a row of [`select_columns`] (all `NULL` for verification's
/// row of a missing key).
fn values(row: &Row) -> Result<Vec<Value>, BoxError> {
    let value = |(i, kind)| {
        Ok::<_, BoxError>(match kind {
            Kind::Int => Value::Int(row.try_get(i)?),
            Kind::Text => Value::Text(row.try_get(i)?),
            Kind::Bytes => Value::Bytes(row.try_get(i)?),
            Kind::Time => Value::Time(row.try_get(i)?),
            Kind::Texts => Value::Texts(row.try_get::<_, Option<_>>(i)?.unwrap_or_default()),
            // NULL only in verification's row of a missing key.
            Kind::Bool => Value::Bool(row.try_get::<_, Option<_>>(i)?.unwrap_or_default()),
        })
    };
    read_kinds().enumerate().map(value).collect()
}

/// A row of [`select_columns`].
fn key_row(row: &Row) -> Result<KeyRow, BoxError> {
    KeyRow::from_values(values(row)?)
}

/// `values` as the parameters $1, $2, ..., each with its type.
fn bind(values: Vec<Value>) -> Vec<(Box<dyn ToSql + Sync + Send>, Type)> {
    let boxed = |value| -> (Box<dyn ToSql + Sync + Send>, Type) {
        match value {
            Value::Int(v) => (Box::new(v), Type::INT8),
            Value::Text(v) => (Box::new(v), Type::TEXT),
            Value::Bytes(v) => (Box::new(v), Type::BYTEA),
            Value::Time(v) => (Box::new(v), Type::TIMESTAMPTZ),
            Value::Texts(v) => (Box::new(v), Type::TEXT_ARRAY),
            Value::Bool(v) => (Box::new(v), Type::BOOL),
        }
    };
    values.into_iter().map(boxed).collect()
}

#[async_trait]
impl Backend for Pg {
    async fn transaction<T: Send + 'static>(&self, work: TxWork<T>) -> Result<T, BoxError> {
        let mut client = self.pool.get().await?;
        let mut tx = PgTx {
            tx: client.transaction().await?,
            channel: &self.channel,
        };
        let out = work(&mut tx).await?;
        tx.tx.commit().await?;
        self.answered();
        Ok(out)
    }

    async fn lookup(
        &self,
        id: &str,
        _scheme: &'static str,
        _pepper_version: Option<i64>,
    ) -> Result<Lookup, BoxError> {
        // One round trip that returns exactly one row whether or not the id
        // exists (all NULL when it does not), the record and the account's
        // limits included.
        let sql = format!(
            "SELECT {} FROM (VALUES (1)) AS one(x)
               LEFT JOIN tower_api_key_keys ON key_id = $1",
            select_columns()
        );
        let rows = self.query(&sql, &[(&id, Type::TEXT)]).await?;
        let row = rows
            .first()
            .ok_or("the verification query returned no row")?;
        // The same decoding whether or not the key exists.
        let values = values(row)?;
        if values.first() == Some(&Value::Text(None)) {
            return Ok(Lookup::default());
        }
        let row = KeyRow::from_values(values)?;
        Ok(Lookup {
            found: true,
            hash: row.hash.clone(),
            has_previous: row.previous.digest.is_some(),
            previous: row.previous.clone(),
            row: Some(row),
        })
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRow>, BoxError> {
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys WHERE key_id = $1",
            select_columns()
        );
        Ok(self.rows(&sql, &[(&id, Type::TEXT)]).await?.pop())
    }

    async fn list(
        &self,
        account: &str,
        after: Option<(SystemTime, String)>,
        unused_before: Option<SystemTime>,
        limit: i64,
    ) -> Rows {
        // No index on last_used_at: the account's index bounds the read, and
        // a usage flush, which changes no indexed column, stays a HOT update
        // (docs/postgres.md).
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys
              WHERE service_account_id = $1
                AND ($2::timestamptz IS NULL OR (created_at, key_id) > ($2, $3::text))
                AND ($5::timestamptz IS NULL OR last_used_at IS NULL OR last_used_at < $5)
              ORDER BY created_at, key_id
              LIMIT $4",
            select_columns()
        );
        let (at, id) = after.unzip();
        let params: [Param<'_>; 5] = [
            (&account, Type::TEXT),
            (&at, Type::TIMESTAMPTZ),
            (&id, Type::TEXT),
            (&limit, Type::INT8),
            (&unused_before, Type::TIMESTAMPTZ),
        ];
        self.rows(&sql, &params).await
    }

    async fn export(&self, after: Option<String>, limit: i64) -> Rows {
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys
              WHERE $1::text IS NULL OR key_id > $1
              ORDER BY key_id LIMIT $2",
            select_columns()
        );
        self.rows(&sql, &[(&after, Type::TEXT), (&limit, Type::INT8)])
            .await
    }

    async fn account_limits(&self, account: &str) -> Result<Option<String>, BoxError> {
        let sql = "SELECT rate_limits FROM tower_api_key_account_limits
                    WHERE service_account_id = $1";
        let rows = self.query(sql, &[(&account, Type::TEXT)]).await?;
        Ok(rows.first().map(|row| row.try_get(0)).transpose()?)
    }

    async fn revoked(&self, after: Option<String>, limit: i64) -> Result<Vec<String>, BoxError> {
        let sql = "SELECT key_id FROM tower_api_key_revoked
                    WHERE $1::text IS NULL OR key_id > $1
                    ORDER BY key_id LIMIT $2";
        let rows = self
            .query(sql, &[(&after, Type::TEXT), (&limit, Type::INT8)])
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<String>,
        limit: i64,
    ) -> Rows {
        // Served by the partial index on expires_at.
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys
              WHERE expires_at >= $1 AND expires_at < $2
                AND ($3::text IS NULL OR key_id > $3)
              ORDER BY key_id LIMIT $4",
            select_columns()
        );
        let params: [Param<'_>; 4] = [
            (&from, Type::TIMESTAMPTZ),
            (&until, Type::TIMESTAMPTZ),
            (&after, Type::TEXT),
            (&limit, Type::INT8),
        ];
        self.rows(&sql, &params).await
    }

    async fn unused(&self, before: SystemTime, after: Option<String>, limit: i64) -> Rows {
        // In key id order through the primary key: no index on last use,
        // so usage flushes stay HOT updates.
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys
              WHERE retire_when_unused AND retired_unused_since IS NULL
                AND coalesce(last_used_at, created_at) < $1
                AND ($2::text IS NULL OR key_id > $2)
              ORDER BY key_id LIMIT $3",
            select_columns()
        );
        let params: [Param<'_>; 3] = [
            (&before, Type::TIMESTAMPTZ),
            (&after, Type::TEXT),
            (&limit, Type::INT8),
        ];
        self.rows(&sql, &params).await
    }

    async fn record_notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
        sent_at: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, BoxError> {
        // One statement: the key still exists, and the first insert of this
        // key, kind and window wins (a concurrent one waits for it, then
        // does nothing).
        let sql = "INSERT INTO tower_api_key_notices (key_id, kind, window_at, sent_at, announced)
                   SELECT key_id, $2, $3, $4, $5 FROM tower_api_key_keys WHERE key_id = $1
                   ON CONFLICT (key_id, kind, window_at) DO NOTHING
                   RETURNING 1::int4";
        let params: [Param<'_>; 5] = [
            (&id, Type::TEXT),
            (&kind, Type::TEXT),
            (&window, Type::TIMESTAMPTZ),
            (&sent_at, Type::TIMESTAMPTZ),
            (&announced, Type::TIMESTAMPTZ),
        ];
        match self.query(sql, &params).await {
            Ok(rows) => Ok(!rows.is_empty()),
            // The key was deleted between the read and the insert: it gets
            // no notice.
            Err(e) if sql_state(&e) == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
    ) -> Result<Option<(SystemTime, Option<SystemTime>)>, BoxError> {
        let sql = "SELECT sent_at, announced FROM tower_api_key_notices
                    WHERE key_id = $1 AND kind = $2 AND window_at = $3";
        let params: [Param<'_>; 3] = [
            (&id, Type::TEXT),
            (&kind, Type::TEXT),
            (&window, Type::TIMESTAMPTZ),
        ];
        let rows = self.query(sql, &params).await?;
        rows.first()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<bool, BoxError> {
        // One conditional upsert: taken when free, run out, or ours; a
        // concurrent one waits for the row, then sees the winner's holder.
        let sql = "INSERT INTO tower_api_key_leases AS l (name, holder, until)
                   VALUES ($1, $2, $4)
                   ON CONFLICT (name) DO UPDATE
                      SET holder = EXCLUDED.holder, until = EXCLUDED.until
                    WHERE l.until <= $3 OR l.holder = EXCLUDED.holder
                   RETURNING 1::int4";
        let params: [Param<'_>; 4] = [
            (&name, Type::TEXT),
            (&holder, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
            (&until, Type::TIMESTAMPTZ),
        ];
        Ok(!self.query(sql, &params).await?.is_empty())
    }

    fn is_unique_violation(&self, e: &BoxError) -> bool {
        e.downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

/// The SQLSTATE of `e`, if it is a database error.
fn sql_state(e: &BoxError) -> Option<&SqlState> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
}

/// A transaction on a pooled connection; rolled back when dropped before
/// its commit.
struct PgTx<'c> {
    tx: Transaction<'c>,
    channel: &'c str,
}

impl PgTx<'_> {
    /// Runs one unnamed statement.
    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, BoxError> {
        Ok(self.tx.query_typed(sql, params).await?)
    }

    /// Runs `sql` with `values` as its parameters.
    async fn write(&self, sql: &str, values: Vec<Value>) -> Result<(), BoxError> {
        let values = bind(values);
        let params: Vec<Param<'_>> = values
            .iter()
            .map(|(v, t)| (&**v as &(dyn ToSql + Sync), t.clone()))
            .collect();
        self.query(sql, &params).await?;
        Ok(())
    }
}

#[async_trait]
impl Tx for PgTx<'_> {
    async fn lock_account(&mut self, account: &str) -> Result<(), BoxError> {
        // Held until commit.
        let sql = "SELECT pg_advisory_xact_lock($1, hashtext($2))::text";
        self.query(
            sql,
            &[(&CREATE_LOCK_CLASS, Type::INT4), (&account, Type::TEXT)],
        )
        .await?;
        Ok(())
    }

    async fn count_keys(&mut self, account: &str) -> Result<i64, BoxError> {
        let sql = "SELECT count(*) FROM tower_api_key_keys WHERE service_account_id = $1";
        let rows = self.query(sql, &[(&account, Type::TEXT)]).await?;
        Ok(rows.first().ok_or("count returned no row")?.try_get(0)?)
    }

    async fn key_for_update(&mut self, id: &str) -> Result<Option<KeyRow>, BoxError> {
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys WHERE key_id = $1
                FOR UPDATE OF tower_api_key_keys",
            select_columns()
        );
        let rows = self.query(&sql, &[(&id, Type::TEXT)]).await?;
        rows.first().map(key_row).transpose()
    }

    async fn insert_key(&mut self, row: &KeyRow) -> Result<(), BoxError> {
        self.write(&insert_sql(|n| format!("${n}")), row.values())
            .await
    }

    async fn write_key(&mut self, row: &KeyRow) -> Result<(), BoxError> {
        self.write(&update_sql(|n| format!("${n}")), row.changed_values())
            .await
    }

    async fn touch(&mut self, uses: &[(String, SystemTime)]) -> Result<(), BoxError> {
        let (ids, times): (Vec<&str>, Vec<SystemTime>) =
            uses.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
        // One statement for the whole batch.
        let sql = "UPDATE tower_api_key_keys AS k
                SET last_used_at = GREATEST(k.last_used_at, u.at)
               FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at)
              WHERE k.key_id = u.id
                AND (k.last_used_at IS NULL OR k.last_used_at < u.at)";
        self.query(
            sql,
            &[(&ids, Type::TEXT_ARRAY), (&times, Type::TIMESTAMPTZ_ARRAY)],
        )
        .await?;
        Ok(())
    }

    async fn retire_unused(
        &mut self,
        id: &str,
        seen: Option<SystemTime>,
        since: SystemTime,
        at: SystemTime,
    ) -> Result<bool, BoxError> {
        // One conditional UPDATE: a usage flush holding the row makes it
        // wait, then re-check the condition on the row as flushed.
        let sql = "UPDATE tower_api_key_keys
                      SET expires_at = $4, retired_unused_since = $3, version = version + 1
                    WHERE key_id = $1 AND last_used_at IS NOT DISTINCT FROM $2
                      AND retire_when_unused AND retired_unused_since IS NULL
                      AND (expires_at IS NULL OR expires_at >= $4)
                   RETURNING 1::int4";
        let params: [Param<'_>; 4] = [
            (&id, Type::TEXT),
            (&seen, Type::TIMESTAMPTZ),
            (&since, Type::TIMESTAMPTZ),
            (&at, Type::TIMESTAMPTZ),
        ];
        Ok(!self.query(sql, &params).await?.is_empty())
    }

    /// The key's notices go with it (`ON DELETE CASCADE`).
    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, BoxError> {
        let sql = "DELETE FROM tower_api_key_keys WHERE key_id = $1 RETURNING service_account_id";
        let rows = self.query(sql, &[(&id, Type::TEXT)]).await?;
        Ok(rows.first().map(|row| row.try_get(0)).transpose()?)
    }

    async fn is_revoked(&mut self, id: &str) -> Result<bool, BoxError> {
        let sql = "SELECT 1 FROM tower_api_key_revoked WHERE key_id = $1";
        Ok(!self.query(sql, &[(&id, Type::TEXT)]).await?.is_empty())
    }

    async fn add_revoked(&mut self, id: &str, at: SystemTime) -> Result<(), BoxError> {
        let sql = "INSERT INTO tower_api_key_revoked (key_id, revoked_at) VALUES ($1, $2)
                   ON CONFLICT (key_id) DO NOTHING";
        self.query(sql, &[(&id, Type::TEXT), (&at, Type::TIMESTAMPTZ)])
            .await?;
        Ok(())
    }

    async fn account_limits(&mut self, account: &str) -> Result<Option<String>, BoxError> {
        let sql = "SELECT rate_limits FROM tower_api_key_account_limits
                    WHERE service_account_id = $1";
        let rows = self.query(sql, &[(&account, Type::TEXT)]).await?;
        Ok(rows.first().map(|row| row.try_get(0)).transpose()?)
    }

    async fn set_account_limits(
        &mut self,
        account: &str,
        text: &str,
    ) -> Result<Vec<String>, BoxError> {
        let sql = "WITH kept AS (
                 INSERT INTO tower_api_key_account_limits (service_account_id, rate_limits)
                 SELECT $1, $2 WHERE $2 <> ''
                 ON CONFLICT (service_account_id) DO UPDATE SET rate_limits = EXCLUDED.rate_limits),
                  dropped AS (
                 DELETE FROM tower_api_key_account_limits
                  WHERE service_account_id = $1 AND $2 = '')
             SELECT key_id FROM tower_api_key_keys WHERE service_account_id = $1";
        let rows = self
            .query(sql, &[(&account, Type::TEXT), (&text, Type::TEXT)])
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn applied_migrations(&mut self) -> Result<Vec<u32>, BoxError> {
        // Replicas that all migrate at start wait for each other here.
        let lock = "SELECT pg_advisory_xact_lock($1)::text";
        self.query(lock, &[(&MIGRATION_LOCK, Type::INT8)]).await?;
        self.tx
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tower_api_key_migrations (
                     version    integer     PRIMARY KEY,
                     name       text        NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        let rows = self
            .query("SELECT version FROM tower_api_key_migrations", &[])
            .await?;
        rows.iter()
            .map(|row| Ok(u32::try_from(row.try_get::<_, i32>(0)?)?))
            .collect()
    }

    async fn apply_migration(&mut self, migration: &Migration) -> Result<(), BoxError> {
        self.tx.batch_execute(migration.sql()).await?;
        let sql = "INSERT INTO tower_api_key_migrations (version, name) VALUES ($1, $2)";
        let version = i32::try_from(migration.version())?;
        self.query(
            sql,
            &[(&version, Type::INT4), (&migration.name(), Type::TEXT)],
        )
        .await?;
        Ok(())
    }

    async fn announce(
        &mut self,
        ids: &[String],
        account: &str,
        at: SystemTime,
    ) -> Result<(), BoxError> {
        // The change log rows (read by pollers), old rows pruned with the
        // watermark raised, and a NOTIFY per key: `<key id> <service account
        // id>` (a key id never holds a space), or the bare key id when the
        // account is too long; sent at commit. One statement.
        let sql = "WITH logged AS (
                 INSERT INTO tower_api_key_changes (key_id, service_account_id, changed_at)
                 SELECT id, $3, $5 FROM unnest($2::text[]) AS t(id)),
                  pruned AS (
                 DELETE FROM tower_api_key_changes WHERE changed_at < $6 RETURNING xid),
                  marked AS (
                 UPDATE tower_api_key_changes_pruned
                    SET upto = greatest(upto, (SELECT xid FROM pruned ORDER BY xid DESC LIMIT 1))
                  WHERE id = 1 AND EXISTS (SELECT 1 FROM pruned))
             SELECT pg_notify($1, CASE WHEN octet_length($3) <= $4 THEN id || ' ' || $3
                                  ELSE id END)::text
               FROM unnest($2::text[]) AS t(id)";
        let prune_before = at
            .checked_sub(CHANGE_LOG_AGE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let params: [Param<'_>; 6] = [
            (&self.channel, Type::TEXT),
            (&ids, Type::TEXT_ARRAY),
            (&account, Type::TEXT),
            (&MAX_NOTIFY_ACCOUNT_LEN, Type::INT4),
            (&at, Type::TIMESTAMPTZ),
            (&prune_before, Type::TIMESTAMPTZ),
        ];
        self.query(sql, &params).await?;
        Ok(())
    }
}
