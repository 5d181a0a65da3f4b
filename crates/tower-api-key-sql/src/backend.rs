//! What a SQL dialect implements for [`SqlKeyStore`](crate::SqlKeyStore):
//! row-level calls, each one statement or a few, with SQL text and row
//! mapping only. The operations (checks, generation, hashing, versions,
//! the per-account count, credit leases, announcements, import and export)
//! are the store's, written once over these calls.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::row::{KeyRow, Lookup};
use crate::{BoxError, Migration};

/// A boxed future that is `Send`, borrowing for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Rows a read returns.
pub type Rows = Result<Vec<KeyRow>, BoxError>;

/// The work of one transaction: row-level calls on the [`Tx`] it is given.
/// `Ok` commits, `Err` rolls back.
pub type TxWork<T> =
    Box<dyn for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, BoxError>> + Send>;

/// A SQL backend: a database reached through one driver, with its dialect.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `work` in one transaction that holds what the dialect locks for
    /// writes (SQLite: the database's write lock from the start; PostgreSQL:
    /// the rows and advisory locks the calls take), committing when it
    /// returns `Ok`.
    async fn transaction<T: Send + 'static>(&self, work: TxWork<T>) -> Result<T, BoxError>;

    /// The hashes of key `id` (first read of verification), one row whether
    /// or not it exists: a missing key's placeholders are in the scheme
    /// `scheme`, `pepper_version` (the hasher's current one).
    async fn lookup(
        &self,
        id: &str,
        scheme: &'static str,
        pepper_version: Option<i64>,
    ) -> Result<Lookup, BoxError>;

    /// The row of key `id`, with its account's limits.
    async fn key(&self, id: &str) -> Result<Option<KeyRow>, BoxError>;

    /// Up to `limit` rows of `account` after `after` (created_at, key_id),
    /// in listing order (created_at, then key_id), with the account's
    /// limits; with `unused_before`, only rows whose `last_used_at` is NULL
    /// or earlier than it (a whole microsecond). Served by the account's
    /// index (service_account_id, created_at, key_id), so it reads the
    /// account's keys only, never the whole table.
    async fn list(
        &self,
        account: &str,
        after: Option<(SystemTime, String)>,
        unused_before: Option<SystemTime>,
        limit: i64,
    ) -> Rows;

    /// Up to `limit` whole rows with key ids after `after`, in key id order.
    async fn export(&self, after: Option<String>, limit: i64) -> Rows;

    /// The stored rate limits of `account`, if it has any.
    async fn account_limits(&self, account: &str) -> Result<Option<String>, BoxError>;

    /// Up to `limit` ids of revoked keys after `after`, in id order.
    async fn revoked(&self, after: Option<String>, limit: i64) -> Result<Vec<String>, BoxError>;

    /// Up to `limit` rows with `expires_at` at or after `from` and before
    /// `until` and key ids after `after`, in key id order, with their
    /// accounts' limits; served by the index on `expires_at`.
    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<String>,
        limit: i64,
    ) -> Rows;

    /// Up to `limit` rows with `retire_when_unused`, no
    /// `retired_unused_since`, and `last_used_at` (or, when NULL,
    /// `created_at`) before `before`, with key ids after `after`, in key id
    /// order, with their accounts' limits.
    async fn unused(&self, before: SystemTime, after: Option<String>, limit: i64) -> Rows;

    /// Records the notice `kind` about `window` for key `id`, sent at
    /// `sent_at` and announcing `announced`, if the key exists and the
    /// notice is not recorded yet, in one statement (an insert that does
    /// nothing on a conflict): whether it inserted the row.
    async fn record_notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
        sent_at: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, BoxError>;

    /// The notice `kind` about `window` for key `id`: when it was sent and
    /// what it announced.
    async fn notice(
        &self,
        id: &str,
        kind: &str,
        window: SystemTime,
    ) -> Result<Option<(SystemTime, Option<SystemTime>)>, BoxError>;

    /// Writes the lease `name` as `holder`'s until `until`, if it is
    /// free, ran out at or before `now`, or is `holder`'s already, in one
    /// conditional upsert: whether it wrote the row.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<bool, BoxError>;

    /// Whether `e` is a unique constraint violation (a key id or hash taken).
    fn is_unique_violation(&self, e: &BoxError) -> bool;
}

/// The row-level calls of one transaction.
#[async_trait]
pub trait Tx: Send {
    /// Makes writes for `account` take turns until the transaction ends, so
    /// a count of its keys stays true until the insert (a no-op where the
    /// transaction already holds the database's write lock).
    async fn lock_account(&mut self, account: &str) -> Result<(), BoxError>;

    /// How many keys `account` holds.
    async fn count_keys(&mut self, account: &str) -> Result<i64, BoxError>;

    /// The row of key `id`, locked until the transaction ends, with its
    /// account's limits.
    async fn key_for_update(&mut self, id: &str) -> Result<Option<KeyRow>, BoxError>;

    /// Inserts `row` (every column but the account's limits:
    /// [`insert_sql`](crate::insert_sql) of [`KeyRow::values`]).
    async fn insert_key(&mut self, row: &KeyRow) -> Result<(), BoxError>;

    /// Writes what a change can change of `row` to the row of its key id
    /// (all but the account, the creation time and the last use:
    /// [`update_sql`](crate::update_sql) of [`KeyRow::changed_values`]).
    async fn write_key(&mut self, row: &KeyRow) -> Result<(), BoxError>;

    /// Moves `last_used_at` of each key forward to its time (never back).
    async fn touch(&mut self, uses: &[(String, SystemTime)]) -> Result<(), BoxError>;

    /// Retires key `id` for disuse in one conditional update: sets
    /// `expires_at` to `at`, `retired_unused_since` to `since` and moves the
    /// version on, if its `last_used_at` is `seen` (NULL for `None`), it
    /// has `retire_when_unused`, no `retired_unused_since`, and no expiry
    /// before `at`. Whether it wrote the row.
    async fn retire_unused(
        &mut self,
        id: &str,
        seen: Option<SystemTime>,
        since: SystemTime,
        at: SystemTime,
    ) -> Result<bool, BoxError>;

    /// Deletes key `id` and its lifecycle notices; its account if it
    /// existed.
    async fn delete_key(&mut self, id: &str) -> Result<Option<String>, BoxError>;

    /// Whether key `id` was revoked here.
    async fn is_revoked(&mut self, id: &str) -> Result<bool, BoxError>;

    /// Remembers that key `id` was revoked at `at` (kept if already there).
    async fn add_revoked(&mut self, id: &str, at: SystemTime) -> Result<(), BoxError>;

    /// The stored rate limits of `account`, if it has any.
    async fn account_limits(&mut self, account: &str) -> Result<Option<String>, BoxError>;

    /// Sets the rate limits of `account` (removes them when `text` is
    /// empty); the ids of its keys.
    async fn set_account_limits(
        &mut self,
        account: &str,
        text: &str,
    ) -> Result<Vec<String>, BoxError>;

    /// The versions of the migrations applied to the database, once the
    /// transaction holds the migration lock and the table that records them
    /// exists.
    async fn applied_migrations(&mut self) -> Result<Vec<u32>, BoxError>;

    /// Runs `migration`'s SQL and records it as applied.
    async fn apply_migration(&mut self, migration: &Migration) -> Result<(), BoxError>;

    /// Announces, if the transaction commits, that the keys `ids` of
    /// `account` changed at `at`, to every other store on the database.
    async fn announce(
        &mut self,
        ids: &[String],
        account: &str,
        at: SystemTime,
    ) -> Result<(), BoxError>;
}
