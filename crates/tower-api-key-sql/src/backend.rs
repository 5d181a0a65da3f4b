//! What a SQL dialect implements for [`SqlKeyStore`](crate::SqlKeyStore):
//! how to run one [`Statement`] and one transaction, with its driver's
//! value codec, plus the few statements only the dialect can write
//! (verification's lookup, migrations, announcements). Every other
//! row-level call is a provided method here, SQL text written once for
//! every dialect; a dialect overrides one only to do better (PostgreSQL
//! touches a batch of keys in one statement).

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::columns::{insert_sql, select_columns, text, update_sql};
use crate::rate_sync::BucketAdd;
use crate::row::{KeyRow, Lookup};
use crate::{read_kinds, BoxError, Kind, Migration, Value};

/// A boxed future that is `Send`, borrowing for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Rows a read returns.
pub type Rows = Result<Vec<KeyRow>, BoxError>;

/// The rows of a statement, each the values of the columns it asked for.
pub type ValueRows = Result<Vec<Vec<Value>>, BoxError>;

/// The work of one transaction: row-level calls on the [`Tx`] it is given.
/// `Ok` commits, `Err` rolls back.
pub type TxWork<T> =
    Box<dyn for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, BoxError>> + Send>;

/// One SQL statement and its parameters, for a dialect to run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statement {
    /// The text; its parameters are written `$1`, `$2`, ... (a dialect
    /// that numbers them otherwise rewrites the `$`).
    pub sql: String,
    /// The values of `$1`, `$2`, ..., in order.
    pub params: Vec<Value>,
    /// The kinds of the columns each returned row is read as, from the
    /// first column on (none: the rows are only counted).
    pub columns: Vec<Kind>,
}

impl Statement {
    /// `sql` with `params`, its rows only counted.
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Self {
            sql: sql.into(),
            params,
            columns: Vec::new(),
        }
    }

    /// The same, its rows read as `columns`.
    #[must_use]
    pub fn returning(mut self, columns: impl IntoIterator<Item = Kind>) -> Self {
        self.columns = columns.into_iter().collect();
        self
    }

    /// Key rows ([`select_columns`]) from the key table, `filter` after
    /// its `WHERE`.
    fn keys(filter: &str, params: Vec<Value>) -> Self {
        let sql = format!(
            "SELECT {} FROM tower_api_key_keys WHERE {filter}",
            select_columns()
        );
        Self::new(sql, params).returning(read_kinds())
    }
}

fn time(t: SystemTime) -> Value {
    Value::Time(Some(t))
}

fn key_rows(rows: Vec<Vec<Value>>) -> Rows {
    rows.into_iter().map(KeyRow::from_values).collect()
}

/// The first column of each row, as text.
fn texts(rows: Vec<Vec<Value>>) -> Result<Vec<String>, BoxError> {
    rows.into_iter()
        .map(|row| match row.into_iter().next() {
            Some(Value::Text(Some(text))) => Ok(text),
            _ => Err("a statement returned no text where one was asked for".into()),
        })
        .collect()
}

fn first_text(rows: Vec<Vec<Value>>) -> Result<Option<String>, BoxError> {
    Ok(texts(rows)?.into_iter().next())
}

/// The number in the one column of the first row; `what` names it in the
/// error when there is none.
fn first_int(rows: &[Vec<Value>], what: &str) -> Result<i64, BoxError> {
    match rows.first().map(Vec::as_slice) {
        Some([Value::Int(Some(n))]) => Ok(*n),
        _ => Err(format!("{what} is not a number").into()),
    }
}

/// The account limits of `account`.
fn account_limits_statement(account: &str) -> Statement {
    let sql = "SELECT rate_limits FROM tower_api_key_account_limits
                WHERE service_account_id = $1";
    Statement::new(sql, vec![text(account)]).returning([Kind::Text])
}

/// A SQL backend: a database reached through one driver, with its dialect.
#[async_trait]
pub trait Backend: Sized + Send + Sync + 'static {
    /// A statement without parameters that returns one row, a boolean:
    /// whether the table `tower_api_key_migrations` exists.
    const MIGRATIONS_TABLE_EXISTS: &'static str;

    /// Runs `work` in one transaction that holds what the dialect locks for
    /// writes (SQLite: the database's write lock from the start; PostgreSQL:
    /// the rows and advisory locks the calls take), committing when it
    /// returns `Ok`.
    async fn transaction<T: Send + 'static>(&self, work: TxWork<T>) -> Result<T, BoxError>;

    /// Runs one statement that only reads, outside any transaction.
    async fn query(&self, statement: Statement) -> ValueRows;

    /// Runs one statement that writes, outside the operations'
    /// transactions, committed on its own (lifecycle notices and leases).
    /// Default: in a transaction of its own; a dialect whose single
    /// statements commit by themselves saves the round trips.
    async fn write(&self, statement: Statement) -> ValueRows {
        self.transaction(Box::new(move |tx| Box::pin(tx.query(statement))))
            .await
    }

    /// The hashes of key `id` (first read of verification), one row whether
    /// or not it exists: a missing key's placeholders are in the scheme
    /// `scheme`, `pepper_version` (the hasher's current one).
    async fn lookup(
        &self,
        id: &str,
        scheme: &'static str,
        pepper_version: Option<i64>,
    ) -> Result<Lookup, BoxError>;

    /// Whether `e` is a unique constraint violation (a key id or hash taken).
    fn is_unique_violation(&self, e: &BoxError) -> bool;

    /// Whether `e` is a foreign key violation: a row written for a key that
    /// a concurrent transaction deleted (never, where writes take turns).
    fn is_foreign_key_violation(&self, _e: &BoxError) -> bool {
        false
    }

    /// The newest version in `tower_api_key_migrations`: 0 without it.
    async fn schema_version(&self) -> Result<u32, BoxError> {
        let exists = Statement::new(Self::MIGRATIONS_TABLE_EXISTS, Vec::new());
        let rows = self.query(exists.returning([Kind::Bool])).await?;
        if rows.first().map(Vec::as_slice) != Some(&[Value::Bool(true)]) {
            return Ok(0);
        }
        let sql = "SELECT CAST(coalesce(max(version), 0) AS bigint) FROM tower_api_key_migrations";
        let rows = self
            .query(Statement::new(sql, Vec::new()).returning([Kind::Int]))
            .await?;
        let newest = first_int(&rows, "the newest migration")?;
        Ok(u32::try_from(newest).unwrap_or(0))
    }

    /// The row of key `id`, with its account's limits.
    async fn key(&self, id: &str) -> Result<Option<KeyRow>, BoxError> {
        let rows = self
            .query(Statement::keys("key_id = $1", vec![text(id)]))
            .await?;
        Ok(key_rows(rows)?.pop())
    }

    /// Up to `limit` rows of `account` after `after` (created_at, key_id),
    /// in listing order (created_at, then key_id), with the account's
    /// limits; with `unused_before`, only rows whose `last_used_at` is NULL
    /// or earlier than it (a whole microsecond). Served by the account's
    /// index (service_account_id, created_at, key_id), so it reads the
    /// account's keys only, never the whole table; no index on
    /// last_used_at, so a usage flush changes no indexed column.
    async fn list(
        &self,
        account: &str,
        after: Option<(SystemTime, String)>,
        unused_before: Option<SystemTime>,
        limit: i64,
    ) -> Rows {
        let (at, id) = after.unzip();
        let filter = "service_account_id = $1
                AND ($2 IS NULL OR (created_at, key_id) > ($2, $3))
                AND ($5 IS NULL OR last_used_at IS NULL OR last_used_at < $5)
              ORDER BY created_at, key_id LIMIT $4";
        let params = vec![
            text(account),
            Value::Time(at),
            Value::Text(id),
            Value::Int(Some(limit)),
            Value::Time(unused_before),
        ];
        key_rows(self.query(Statement::keys(filter, params)).await?)
    }

    /// Up to `limit` whole rows with key ids after `after`, in key id order.
    async fn export(&self, after: Option<String>, limit: i64) -> Rows {
        let filter = "$1 IS NULL OR key_id > $1 ORDER BY key_id LIMIT $2";
        let params = vec![Value::Text(after), Value::Int(Some(limit))];
        key_rows(self.query(Statement::keys(filter, params)).await?)
    }

    /// The stored rate limits of `account`, if it has any.
    async fn account_limits(&self, account: &str) -> Result<Option<String>, BoxError> {
        first_text(self.query(account_limits_statement(account)).await?)
    }

    /// Up to `limit` ids of revoked keys after `after`, in id order.
    async fn revoked(&self, after: Option<String>, limit: i64) -> Result<Vec<String>, BoxError> {
        let sql = "SELECT key_id FROM tower_api_key_revoked
                    WHERE $1 IS NULL OR key_id > $1 ORDER BY key_id LIMIT $2";
        let params = vec![Value::Text(after), Value::Int(Some(limit))];
        texts(
            self.query(Statement::new(sql, params).returning([Kind::Text]))
                .await?,
        )
    }

    /// Up to `limit` rows with `expires_at` at or after `from` and before
    /// `until` and key ids after `after`, in key id order, with their
    /// accounts' limits; served by the index on `expires_at`.
    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<String>,
        limit: i64,
    ) -> Rows {
        let filter = "expires_at >= $1 AND expires_at < $2 AND ($3 IS NULL OR key_id > $3)
              ORDER BY key_id LIMIT $4";
        let params = vec![
            time(from),
            time(until),
            Value::Text(after),
            Value::Int(Some(limit)),
        ];
        key_rows(self.query(Statement::keys(filter, params)).await?)
    }

    /// Up to `limit` rows with `retire_when_unused`, no
    /// `retired_unused_since`, and `last_used_at` (or, when NULL,
    /// `created_at`) before `before`, with key ids after `after`, in key id
    /// order, with their accounts' limits. Read through the primary key: no
    /// index on last use, so usage flushes change no indexed column.
    async fn unused(&self, before: SystemTime, after: Option<String>, limit: i64) -> Rows {
        let filter = "retire_when_unused AND retired_unused_since IS NULL
                AND coalesce(last_used_at, created_at) < $1
                AND ($2 IS NULL OR key_id > $2)
              ORDER BY key_id LIMIT $3";
        let params = vec![time(before), Value::Text(after), Value::Int(Some(limit))];
        key_rows(self.query(Statement::keys(filter, params)).await?)
    }

    /// Records the notice `kind` about `window` for key `id`, sent at
    /// `sent_at` and announcing `announced`, if the key exists and the
    /// notice is not recorded yet, in one statement (an insert that does
    /// nothing on a conflict): whether it inserted the row. A concurrent
    /// insert of the same notice waits for the first, then does nothing.
    async fn record_notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
        sent_at: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, BoxError> {
        let sql = "INSERT INTO tower_api_key_notices (key_id, kind, window_at, sent_at, announced)
                   SELECT key_id, $2, $3, $4, $5 FROM tower_api_key_keys WHERE key_id = $1
                   ON CONFLICT (key_id, kind, window_at) DO NOTHING
                   RETURNING 1";
        let params = vec![
            text(id),
            text(kind),
            time(window),
            time(sent_at),
            Value::Time(announced),
        ];
        match self.write(Statement::new(sql, params)).await {
            Ok(rows) => Ok(!rows.is_empty()),
            // The key was deleted between the read and the insert: it gets
            // no notice.
            Err(e) if self.is_foreign_key_violation(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The notice `kind` about `window` for key `id`: when it was sent and
    /// what it announced.
    async fn notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
    ) -> Result<Option<(SystemTime, Option<SystemTime>)>, BoxError> {
        let sql = "SELECT sent_at, announced FROM tower_api_key_notices
                    WHERE key_id = $1 AND kind = $2 AND window_at = $3";
        let statement = Statement::new(sql, vec![text(id), text(kind), time(window)])
            .returning([Kind::Time, Kind::Time]);
        let Some(row) = self.query(statement).await?.into_iter().next() else {
            return Ok(None);
        };
        match row.as_slice() {
            [Value::Time(Some(sent)), Value::Time(announced)] => Ok(Some((*sent, *announced))),
            _ => Err("a notice row has no sending time".into()),
        }
    }

    /// Adds each bucket's increment at `now_ns` (nanoseconds since the
    /// Unix epoch) in one transaction or statement: in the order given (one
    /// entry per bucket, sorted, so concurrent syncs never deadlock), the
    /// bucket's TAT becomes `max(TAT, now) + increment`, at most
    /// `i64::MAX`; first, with `idle_before`, the rows of other buckets
    /// whose TAT is before it are deleted. The new TATs, in the order of
    /// `buckets`.
    async fn sync_buckets(
        &self,
        buckets: Vec<BucketAdd>,
        now_ns: i64,
        idle_before: Option<i64>,
    ) -> Result<Vec<i64>, BoxError> {
        self.transaction(Box::new(move |tx| {
            Box::pin(async move {
                if let Some(idle) = idle_before {
                    let sql = "DELETE FROM tower_api_key_rate_buckets WHERE tat_ns < $1";
                    tx.query(Statement::new(sql, vec![Value::Int(Some(idle))]))
                        .await?;
                }
                // Written so that no sum exceeds i64::MAX.
                let sql =
                    "INSERT INTO tower_api_key_rate_buckets AS b (subject, rate_limit, tat_ns)
                           VALUES ($1, $2, CASE WHEN $3 > 9223372036854775807 - $4
                                                THEN 9223372036854775807 ELSE $3 + $4 END)
                           ON CONFLICT (subject, rate_limit) DO UPDATE SET tat_ns =
                             CASE WHEN b.tat_ns > 9223372036854775807 - $4
                                    OR $3 > 9223372036854775807 - $4 THEN 9223372036854775807
                                  WHEN b.tat_ns > $3 THEN b.tat_ns + $4
                                  ELSE $3 + $4 END
                           RETURNING tat_ns";
                let mut tats = Vec::with_capacity(buckets.len());
                for bucket in buckets {
                    let params = vec![
                        Value::Text(Some(bucket.subject)),
                        Value::Text(Some(bucket.limit)),
                        Value::Int(Some(now_ns)),
                        Value::Int(Some(bucket.increment_ns)),
                    ];
                    let rows = tx
                        .query(Statement::new(sql, params).returning([Kind::Int]))
                        .await?;
                    tats.push(first_int(&rows, "a bucket's TAT")?);
                }
                Ok(tats)
            })
        }))
        .await
    }

    /// Writes the lease `name` as `holder`'s until `until`, if it is
    /// free, ran out at or before `now`, or is `holder`'s already, in one
    /// conditional upsert: whether it wrote the row. A concurrent one waits
    /// for the row, then sees the winner's holder.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<bool, BoxError> {
        let sql = "INSERT INTO tower_api_key_leases (name, holder, until) VALUES ($1, $2, $4)
                   ON CONFLICT (name) DO UPDATE
                      SET holder = excluded.holder, until = excluded.until
                    WHERE tower_api_key_leases.until <= $3
                       OR tower_api_key_leases.holder = excluded.holder
                   RETURNING 1";
        let params = vec![text(name), text(holder), time(now), time(until)];
        Ok(!self.write(Statement::new(sql, params)).await?.is_empty())
    }
}

/// The row-level calls of one transaction.
#[async_trait]
pub trait Tx: Send {
    /// Runs one statement in the transaction.
    async fn query(&mut self, statement: Statement) -> ValueRows;

    /// What follows the select of [`key_for_update`](Self::key_for_update)
    /// to lock the row until the transaction ends (default: nothing, where
    /// the transaction holds the database's write lock).
    fn row_lock(&self) -> &'static str {
        ""
    }

    /// Makes writes for `account` take turns until the transaction ends, so
    /// a count of its keys stays true until the insert (default: nothing,
    /// where the transaction holds the database's write lock).
    async fn lock_account(&mut self, _account: &str) -> Result<(), BoxError> {
        Ok(())
    }

    /// Makes the writes that revoke or bring back key `id` (revoke, import,
    /// a revocation's import, a leak report) take turns until the
    /// transaction ends, whether or not a row holds the id yet; taken
    /// before any other lock (default: nothing, where the transaction holds
    /// the database's write lock).
    async fn lock_key(&mut self, _id: &str) -> Result<(), BoxError> {
        Ok(())
    }

    /// The versions of the migrations applied to the database, once the
    /// transaction holds the migration lock and the table that records them
    /// exists.
    async fn applied_migrations(&mut self) -> Result<Vec<u32>, BoxError>;

    /// Runs `sql`, one or more statements without parameters (a
    /// migration's text).
    async fn execute_batch(&mut self, sql: &str) -> Result<(), BoxError>;

    /// Runs `migration`'s SQL and records it as applied.
    async fn apply_migration(&mut self, migration: &Migration) -> Result<(), BoxError> {
        self.execute_batch(migration.sql()).await?;
        let sql = "INSERT INTO tower_api_key_migrations (version, name) VALUES ($1, $2)";
        let version = Value::Int(Some(i64::from(migration.version())));
        self.query(Statement::new(sql, vec![version, text(migration.name())]))
            .await?;
        Ok(())
    }

    /// Announces, if the transaction commits, that the keys `ids` of
    /// `account` changed at `at`, to every other store on the database.
    async fn announce(
        &mut self,
        ids: &[String],
        account: &str,
        at: SystemTime,
    ) -> Result<(), BoxError>;

    /// How many keys `account` holds.
    async fn count_keys(&mut self, account: &str) -> Result<i64, BoxError> {
        let sql = "SELECT count(*) FROM tower_api_key_keys WHERE service_account_id = $1";
        let rows = self
            .query(Statement::new(sql, vec![text(account)]).returning([Kind::Int]))
            .await?;
        first_int(&rows, "the count of keys")
    }

    /// The row of key `id`, locked until the transaction ends, with its
    /// account's limits.
    async fn key_for_update(&mut self, id: &str) -> Result<Option<KeyRow>, BoxError> {
        let filter = format!("key_id = $1{}", self.row_lock());
        let rows = self.query(Statement::keys(&filter, vec![text(id)])).await?;
        Ok(key_rows(rows)?.pop())
    }

    /// Inserts `row` (every column but the account's limits).
    async fn insert_key(&mut self, row: &KeyRow) -> Result<(), BoxError> {
        self.query(Statement::new(insert_sql(), row.values()))
            .await?;
        Ok(())
    }

    /// Writes what a change can change of `row` to the row of its key id
    /// (all but the account, the creation time and the last use). An
    /// [`unreadable`](KeyRow::unreadable) row is refused: writing it back
    /// would replace what could not be read.
    async fn write_key(&mut self, row: &KeyRow) -> Result<(), BoxError> {
        if let Some(why) = &row.unreadable {
            return Err(why.clone().into());
        }
        self.query(Statement::new(update_sql(), row.changed_values()))
            .await?;
        Ok(())
    }

    /// Moves `last_used_at` of each key forward to its time (never back).
    async fn touch(&mut self, uses: &[(String, SystemTime)]) -> Result<(), BoxError> {
        let sql = "UPDATE tower_api_key_keys SET last_used_at = $2
                    WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";
        for (id, at) in uses {
            self.query(Statement::new(sql, vec![text(id), time(*at)]))
                .await?;
        }
        Ok(())
    }

    /// Retires key `id` for disuse in one conditional update: sets
    /// `expires_at` to `at`, `retired_unused_since` to `since` and moves the
    /// version on, if its `last_used_at` is `seen` (NULL for `None`), it
    /// has `retire_when_unused`, no `retired_unused_since`, and no expiry
    /// before `at`. Whether it wrote the row. A usage flush holding the row
    /// makes it wait, then re-check the condition on the row as flushed.
    async fn retire_unused(
        &mut self,
        id: &str,
        seen: Option<SystemTime>,
        since: SystemTime,
        at: SystemTime,
    ) -> Result<bool, BoxError> {
        let sql = "UPDATE tower_api_key_keys
                      SET expires_at = $4, retired_unused_since = $3, version = version + 1
                    WHERE key_id = $1
                      AND (last_used_at = $2 OR (last_used_at IS NULL AND $2 IS NULL))
                      AND retire_when_unused AND retired_unused_since IS NULL
                      AND (expires_at IS NULL OR expires_at >= $4)
                   RETURNING 1";
        let params = vec![text(id), Value::Time(seen), time(since), time(at)];
        Ok(!self.query(Statement::new(sql, params)).await?.is_empty())
    }

    /// Deletes key `id` and its lifecycle notices; its account if it
    /// existed.
    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, BoxError> {
        let notices = "DELETE FROM tower_api_key_notices WHERE key_id = $1";
        self.query(Statement::new(notices, vec![text(id)])).await?;
        let sql = "DELETE FROM tower_api_key_keys WHERE key_id = $1 RETURNING service_account_id";
        let statement = Statement::new(sql, vec![text(id)]).returning([Kind::Text]);
        first_text(self.query(statement).await?)
    }

    /// Whether key `id` was revoked here.
    async fn is_revoked(&mut self, id: &str) -> Result<bool, BoxError> {
        let sql = "SELECT 1 FROM tower_api_key_revoked WHERE key_id = $1";
        Ok(!self
            .query(Statement::new(sql, vec![text(id)]))
            .await?
            .is_empty())
    }

    /// Remembers that key `id` was revoked at `at` (kept if already there).
    async fn add_revoked(&mut self, id: &str, at: SystemTime) -> Result<(), BoxError> {
        let sql = "INSERT INTO tower_api_key_revoked (key_id, revoked_at) VALUES ($1, $2)
                   ON CONFLICT (key_id) DO NOTHING";
        self.query(Statement::new(sql, vec![text(id), time(at)]))
            .await?;
        Ok(())
    }

    /// The stored rate limits of `account`, if it has any.
    async fn account_limits(&mut self, account: &str) -> Result<Option<String>, BoxError> {
        first_text(self.query(account_limits_statement(account)).await?)
    }

    /// Sets the rate limits of `account` (removes them when `text` is
    /// empty); the ids of its keys.
    async fn set_account_limits(
        &mut self,
        account: &str,
        limits: &str,
    ) -> Result<Vec<String>, BoxError> {
        let write = if limits.is_empty() {
            let sql = "DELETE FROM tower_api_key_account_limits WHERE service_account_id = $1";
            Statement::new(sql, vec![text(account)])
        } else {
            let sql = "INSERT INTO tower_api_key_account_limits (service_account_id, rate_limits)
                       VALUES ($1, $2)
                       ON CONFLICT (service_account_id)
                       DO UPDATE SET rate_limits = excluded.rate_limits";
            Statement::new(sql, vec![text(account), text(limits)])
        };
        self.query(write).await?;
        let sql = "SELECT key_id FROM tower_api_key_keys WHERE service_account_id = $1";
        texts(
            self.query(Statement::new(sql, vec![text(account)]).returning([Kind::Text]))
                .await?,
        )
    }
}
