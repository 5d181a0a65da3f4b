//! PostgreSQL's dialect of the SQL core: its statement runners with the
//! value codec, on pooled connections, and the statements only it writes
//! (lookup, migrations, announcements, the batch touch, the locks). A
//! transaction is one of tokio-postgres's; announcements are NOTIFYs sent
//! in it, so they go out if and only if it commits.
//!
//! Every statement is unnamed (`query_typed`: parse, bind and execute in one
//! round trip, parameter types given here rather than asked of the server),
//! so nothing outlives the transaction on the server session: a transaction
//! pooler such as PgBouncer may hand the next transaction another one.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use tower_api_key_sql::{
    read_kinds, select_columns, Backend, BoxError, BucketAdd, KeyRow, Kind, Listener, Lookup,
    Statement, Tx, TxWork, Value, ValueRows,
};

/// First key of the advisory locks that serialize creates per account
/// ("takc" in ASCII); the second is a hash of the account.
const CREATE_LOCK_CLASS: i32 = 0x7461_6b63;

/// First key of the advisory locks that serialize revokes and imports per
/// key id ("takk" in ASCII); the second is a hash of the id.
const KEY_LOCK_CLASS: i32 = 0x7461_6b6b;

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

/// The PostgreSQL backend: the pool, what announcements go out on, and
/// the listener to wake when the database answers.
pub(crate) struct Pg {
    pub(crate) pool: Pool,
    pub(crate) channel: String,
    pub(crate) listener: Listener,
}

impl Pg {
    /// Runs one unnamed statement on a pooled connection.
    async fn query_rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, BoxError> {
        let client = self.pool.get().await?;
        let rows = client.query_typed(sql, params).await?;
        self.listener.answered();
        Ok(rows)
    }
}

/// A statement parameter and the type it is sent as.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The values of the columns `kinds` of `row` (all `NULL` in
/// verification's row of a missing key).
fn decode(row: &Row, kinds: &[Kind]) -> Result<Vec<Value>, BoxError> {
    let value = |(i, kind): (usize, &Kind)| {
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
    kinds.iter().enumerate().map(value).collect()
}

/// A statement's parameters, each with the type it is sent as.
type Bound = Vec<(Box<dyn ToSql + Sync + Send>, Type)>;

/// `statement`'s text, its values as the parameters $1, $2, ..., each
/// with its type, and the kinds of its columns.
fn bind(statement: Statement) -> (String, Bound, Vec<Kind>) {
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
    let Statement {
        sql,
        params,
        columns,
        ..
    } = statement;
    (sql, params.into_iter().map(boxed).collect(), columns)
}

/// The parameters of `bound`, as `query_typed` takes them.
fn params(bound: &Bound) -> Vec<Param<'_>> {
    bound
        .iter()
        .map(|(v, t)| (&**v as &(dyn ToSql + Sync), t.clone()))
        .collect()
}

/// `rows` decoded as the columns `kinds`.
fn decoded(rows: &[Row], kinds: &[Kind]) -> ValueRows {
    rows.iter().map(|row| decode(row, kinds)).collect()
}

#[async_trait]
impl Backend for Pg {
    const MIGRATIONS_TABLE_EXISTS: &'static str =
        "SELECT to_regclass('tower_api_key_migrations') IS NOT NULL";

    async fn transaction<T: Send + 'static>(&self, work: TxWork<T>) -> Result<T, BoxError> {
        let mut client = self.pool.get().await?;
        let mut tx = PgTx {
            tx: client.transaction().await?,
            channel: &self.channel,
        };
        let out = work(&mut tx).await?;
        tx.tx.commit().await?;
        self.listener.answered();
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
        let rows = self.query_rows(&sql, &[(&id, Type::TEXT)]).await?;
        let row = rows
            .first()
            .ok_or("the verification query returned no row")?;
        // The same decoding whether or not the key exists.
        let values = decode(row, &read_kinds().collect::<Vec<_>>())?;
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

    async fn query(&self, statement: Statement) -> ValueRows {
        let (sql, bound, columns) = bind(statement);
        decoded(&self.query_rows(&sql, &params(&bound)).await?, &columns)
    }

    /// One statement: the buckets arrive as arrays, rows are upserted in
    /// the order given (sums capped below the largest bigint), and the
    /// sweep spares the batch's buckets.
    async fn sync_buckets(
        &self,
        buckets: Vec<BucketAdd>,
        now_ns: i64,
        idle_before: Option<i64>,
    ) -> Result<Vec<i64>, BoxError> {
        let sql = "WITH adds AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                     WITH ORDINALITY AS u(subject, rate_limit, inc, ord)),
                  moved AS (
                 INSERT INTO tower_api_key_rate_buckets AS b (subject, rate_limit, tat_ns)
                 SELECT subject, rate_limit, LEAST($4::numeric + inc, 9223372036854775807)::bigint
                   FROM adds ORDER BY ord
                 ON CONFLICT (subject, rate_limit) DO UPDATE
                    SET tat_ns = LEAST(GREATEST(b.tat_ns, $4)::numeric
                                       + (EXCLUDED.tat_ns::numeric - $4::numeric),
                                       9223372036854775807)::bigint
                 RETURNING subject, rate_limit, tat_ns),
                  swept AS (
                 DELETE FROM tower_api_key_rate_buckets AS b
                  WHERE b.tat_ns < $5
                    AND NOT EXISTS (SELECT 1 FROM adds
                                     WHERE adds.subject = b.subject
                                       AND adds.rate_limit = b.rate_limit))
             SELECT moved.tat_ns FROM adds JOIN moved USING (subject, rate_limit) ORDER BY adds.ord";
        let (subjects, (limits, increments)): (Vec<String>, (Vec<String>, Vec<i64>)) = buckets
            .into_iter()
            .map(|b| (b.subject, (b.limit, b.increment_ns)))
            .unzip();
        let params: [Param<'_>; 5] = [
            (&subjects, Type::TEXT_ARRAY),
            (&limits, Type::TEXT_ARRAY),
            (&increments, Type::INT8_ARRAY),
            (&now_ns, Type::INT8),
            (&idle_before, Type::INT8),
        ];
        let rows = self.query_rows(sql, &params).await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// One statement on a pooled connection commits by itself: one round
    /// trip, not three.
    async fn write(&self, statement: Statement) -> ValueRows {
        self.query(statement).await
    }

    fn is_unique_violation(&self, e: &BoxError) -> bool {
        sql_state(e) == Some(&SqlState::UNIQUE_VIOLATION)
    }

    fn is_foreign_key_violation(&self, e: &BoxError) -> bool {
        sql_state(e) == Some(&SqlState::FOREIGN_KEY_VIOLATION)
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
    async fn query_rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, BoxError> {
        Ok(self.tx.query_typed(sql, params).await?)
    }

    /// Takes the advisory lock of `class` for `name`, held until commit.
    async fn advisory_lock(&self, class: i32, name: &str) -> Result<(), BoxError> {
        let sql = "SELECT pg_advisory_xact_lock($1, hashtext($2))::text";
        self.query_rows(sql, &[(&class, Type::INT4), (&name, Type::TEXT)])
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Tx for PgTx<'_> {
    async fn query(&mut self, statement: Statement) -> ValueRows {
        let (sql, bound, columns) = bind(statement);
        decoded(&self.query_rows(&sql, &params(&bound)).await?, &columns)
    }

    fn row_lock(&self) -> &'static str {
        " FOR UPDATE OF tower_api_key_keys"
    }

    async fn lock_account(&mut self, account: &str) -> Result<(), BoxError> {
        self.advisory_lock(CREATE_LOCK_CLASS, account).await
    }

    async fn lock_key(&mut self, id: &str) -> Result<(), BoxError> {
        self.advisory_lock(KEY_LOCK_CLASS, id).await
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
        self.query_rows(
            sql,
            &[(&ids, Type::TEXT_ARRAY), (&times, Type::TIMESTAMPTZ_ARRAY)],
        )
        .await?;
        Ok(())
    }

    async fn applied_migrations(&mut self) -> Result<Vec<u32>, BoxError> {
        // Replicas that all migrate at start wait for each other here.
        let lock = "SELECT pg_advisory_xact_lock($1)::text";
        self.query_rows(lock, &[(&MIGRATION_LOCK, Type::INT8)])
            .await?;
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
            .query_rows("SELECT version FROM tower_api_key_migrations", &[])
            .await?;
        rows.iter()
            .map(|row| Ok(u32::try_from(row.try_get::<_, i32>(0)?)?))
            .collect()
    }

    async fn execute_batch(&mut self, sql: &str) -> Result<(), BoxError> {
        Ok(self.tx.batch_execute(sql).await?)
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
        self.query_rows(sql, &params).await?;
        Ok(())
    }
}
