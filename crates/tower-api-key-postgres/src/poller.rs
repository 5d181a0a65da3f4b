//! The change-log poller: invalidations that work without LISTEN (through a
//! transaction pooler) and catch a notification that was lost.
//!
//! Every write that changes what a key verifies as appends a row to
//! `tower_api_key_changes` in its own transaction (migration 7). The poller
//! reads the rows committed since its last poll and publishes
//! [`Invalidation::KeyOf`] for each on the store's bus.
//!
//! PostgreSQL commits rows out of `seq` order (a row whose `seq` was taken
//! first may commit last), so the position is not a `seq` but a transaction
//! id: the oldest transaction still running when the previous poll's
//! snapshot was taken (`pg_snapshot_xmin`). Every row not visible to that
//! poll belongs to a transaction at or after it, so the next poll, which
//! reads all rows from that transaction id on, sees it. Rows read before and
//! read again are skipped by their `seq`. When writers pruned rows at or
//! after the position before the poller read them, or a poll would read more
//! than [`MAX_ROWS_PER_READ`] rows, it publishes [`Invalidation::All`].
//!
//! **Bound:** a change committed on any replica reaches this store's bus
//! within one poll interval plus one query.

use std::collections::HashSet;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tower_api_key::Invalidation;
use tower_api_key_sql::{invalidations, BoxError, ChangeLog, MAX_ROWS_PER_READ};

/// The change log from a position: what a store's poller reads.
pub(crate) struct XidLog {
    pool: Pool,
    /// Rows of transactions from this id on are read (0: from the start).
    from_xid: u64,
    /// Rows at or after `from_xid` already published, by `seq`.
    seen: HashSet<i64>,
}

impl XidLog {
    /// The log from its current end, publishing nothing: at connect, when
    /// no cache holds anything yet. Before the database is migrated, the
    /// log from its start.
    pub(crate) async fn at_end(pool: Pool) -> Result<Self, BoxError> {
        let mut log = Self {
            pool,
            from_xid: 0,
            seen: HashSet::new(),
        };
        log.read().await?;
        Ok(log)
    }
}

#[async_trait]
impl ChangeLog for XidLog {
    /// One read of the log from the position, in one statement (one
    /// snapshot): the rows, the snapshot's oldest running transaction, the
    /// prune watermark.
    async fn read(&mut self) -> Result<Vec<Invalidation>, BoxError> {
        let sql = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text,
                          (SELECT upto::text FROM tower_api_key_changes_pruned WHERE id = 1),
                          c.seq, c.key_id, c.service_account_id, c.xid::text
                     FROM (VALUES (1)) AS one(x)
                     LEFT JOIN (SELECT * FROM tower_api_key_changes
                                 WHERE xid >= $1::text::xid8 ORDER BY seq LIMIT $2) AS c ON true";
        let from = self.from_xid.to_string();
        let client = self.pool.get().await?;
        let rows = match client
            .query_typed(
                sql,
                &[(&from, Type::TEXT), (&(MAX_ROWS_PER_READ + 1), Type::INT8)],
            )
            .await
        {
            Ok(rows) => rows,
            // Not migrated yet: nothing to read; read from the start once it is.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let first = rows.first().ok_or("the change log query returned no row")?;
        let xmin = parse_xid(&first.try_get::<_, String>(0)?)?;
        let pruned = parse_xid(&first.try_get::<_, String>(1)?)?;
        let mut everything = pruned > 0 && pruned >= self.from_xid;
        let mut read = Vec::new();
        for row in &rows {
            let Some(seq) = row.try_get::<_, Option<i64>>(2)? else {
                continue;
            };
            let xid = parse_xid(&row.try_get::<_, String>(5)?)?;
            read.push((
                seq,
                xid,
                row.try_get::<_, String>(3)?,
                row.try_get::<_, String>(4)?,
            ));
        }
        if read.len() as i64 > MAX_ROWS_PER_READ {
            everything = true;
        }
        let fresh: Vec<_> = read
            .iter()
            .filter(|(seq, ..)| !self.seen.contains(seq))
            .map(|(_, _, key_id, account)| (key_id.clone(), account.clone()))
            .collect();
        // Rows of transactions from `xmin` on are read again next time: remember
        // them so they are not published twice.
        self.seen = read
            .iter()
            .filter(|(_, xid, _, _)| *xid >= xmin)
            .map(|(seq, _, _, _)| *seq)
            .collect();
        self.from_xid = self.from_xid.max(xmin);
        Ok(invalidations(fresh, everything))
    }
}

fn parse_xid(text: &str) -> Result<u64, BoxError> {
    text.parse()
        .map_err(|_| "the database returned a transaction id that is not a number".into())
}
