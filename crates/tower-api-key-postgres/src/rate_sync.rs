//! Rate limits shared by replicas through PostgreSQL: a
//! [`RateLimitSync`] over the table `tower_api_key_rate_buckets`
//! (migration 4).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use tower_api_key::limits::{BucketUse, RateLimitSync};
use tower_api_key_sql::BoxError;

/// The bucket table.
const BUCKETS: &str = "tower_api_key_rate_buckets";

/// Rows whose TAT lies this far in the past are deleted (the slack covers
/// replica clocks that disagree a little).
pub(super) const IDLE_AFTER: Duration = Duration::from_secs(60);

/// Every this many syncs (the first included), a sync also deletes idle rows.
pub(super) const SWEEP_EVERY: u64 = 64;

/// Largest increment one use adds (about 31 years of TAT): a cost so large
/// leaves the bucket empty for longer than anything could wait anyway, and
/// sums of increments stay far from overflowing.
const MAX_INCREMENT_NS: u64 = 1_000_000_000_000_000_000;

/// Shares rate-limit state between replicas through the key store's
/// database; from [`PgKeyStore::rate_limit_sync`](super::PgKeyStore::rate_limit_sync).
///
/// Each [`sync`](RateLimitSync::sync) is one statement: for every use, the
/// bucket's TAT becomes `max(TAT, now) + cost × emission interval`,
/// atomically per bucket (uses of one bucket in a batch add up), and the
/// new TATs come back in the order of the uses. Rows are locked in one
/// order, so concurrent syncs from replicas never deadlock. Every 64th sync
/// also deletes buckets idle for a minute. Needs migration 4
/// ([`PgKeyStore::migrate`](super::PgKeyStore::migrate)).
///
/// Cheap to clone: clones share the connection pool with the store.
#[derive(Clone)]
pub struct PgRateLimitSync {
    pool: Pool,
    syncs: Arc<AtomicU64>,
}

impl fmt::Debug for PgRateLimitSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgRateLimitSync")
            .field("syncs", &self.syncs.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PgRateLimitSync {
    pub(super) fn new(pool: Pool) -> Self {
        Self {
            pool,
            syncs: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// `t` in nanoseconds since the Unix epoch, if it fits.
fn nanos(t: SystemTime) -> Result<i64, BoxError> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| "the sync time is outside 1970 to 2262".into())
}

/// What one use adds to its bucket's TAT, in nanoseconds.
fn increment(use_: &BucketUse) -> i64 {
    let ns = use_
        .cost
        .saturating_mul(use_.emission_ns())
        .min(MAX_INCREMENT_NS);
    i64::try_from(ns).unwrap_or(i64::MAX)
}

/// The statement of a sync. `$1`, `$2`, `$3`: the uses' subjects, limits and
/// increments; `$4`: now; `$5`: whether to delete idle rows; `$6`: the TAT
/// before which a row is idle. Uses of one bucket are summed (a row may be
/// changed once per statement), rows are upserted in key order (no
/// deadlock between concurrent syncs), and sums are capped below the
/// largest bigint.
fn statement() -> String {
    format!(
        "WITH uses AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                 WITH ORDINALITY AS u(subject, rate_limit, inc, ord)),
              sums AS (
             SELECT subject, rate_limit, LEAST(sum(inc), {MAX_INCREMENT_NS})::bigint AS inc
               FROM uses GROUP BY subject, rate_limit),
              moved AS (
             INSERT INTO {BUCKETS} AS b (subject, rate_limit, tat_ns)
             SELECT subject, rate_limit, LEAST($4::bigint::numeric + inc, 9223372036854775807)::bigint
               FROM sums ORDER BY subject, rate_limit
             ON CONFLICT (subject, rate_limit) DO UPDATE
                SET tat_ns = LEAST(GREATEST(b.tat_ns, $4::bigint)::numeric
                                   + (EXCLUDED.tat_ns::numeric - $4::bigint::numeric),
                                   9223372036854775807)::bigint
             RETURNING subject, rate_limit, tat_ns),
              swept AS (
             DELETE FROM {BUCKETS} AS b
              WHERE $5::boolean AND b.tat_ns < $6::bigint
                AND NOT EXISTS (SELECT 1 FROM sums
                                 WHERE sums.subject = b.subject
                                   AND sums.rate_limit = b.rate_limit))
         SELECT moved.tat_ns
           FROM uses JOIN moved USING (subject, rate_limit)
          ORDER BY uses.ord"
    )
}

#[async_trait]
impl RateLimitSync for PgRateLimitSync {
    async fn sync(&self, uses: &[BucketUse], now: SystemTime) -> Result<Vec<SystemTime>, BoxError> {
        if uses.is_empty() {
            return Ok(Vec::new());
        }
        let now_ns = nanos(now)?;
        let idle_before =
            now_ns.saturating_sub(i64::try_from(IDLE_AFTER.as_nanos()).unwrap_or(i64::MAX));
        let sweep = self.syncs.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0;
        let subjects: Vec<&str> = uses.iter().map(|u| u.subject.as_str()).collect();
        let limits: Vec<String> = uses.iter().map(|u| u.limit.to_string()).collect();
        let increments: Vec<i64> = uses.iter().map(increment).collect();
        let client = self.pool.get().await?;
        // Unnamed (no prepared statement left on the server session), so it
        // works through a transaction pooler.
        let rows = client
            .query_typed(
                &statement(),
                &[
                    (&subjects, Type::TEXT_ARRAY),
                    (&limits, Type::TEXT_ARRAY),
                    (&increments, Type::INT8_ARRAY),
                    (&now_ns, Type::INT8),
                    (&sweep, Type::BOOL),
                    (&idle_before, Type::INT8),
                ],
            )
            .await?;
        if rows.len() != uses.len() {
            return Err(format!(
                "the rate-limit sync returned {} buckets for {} uses",
                rows.len(),
                uses.len()
            )
            .into());
        }
        rows.iter()
            .map(|row| {
                let tat: i64 = row.try_get(0)?;
                let tat = u64::try_from(tat).map_err(|_| "a stored TAT is negative")?;
                Ok(UNIX_EPOCH + Duration::from_nanos(tat))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_api_key::limits::RateLimit;

    fn use_of(limit: &str, cost: u64) -> BucketUse {
        BucketUse::new("key:x", limit.parse::<RateLimit>().unwrap(), cost)
    }

    #[test]
    fn increments_are_cost_times_the_emission_interval_and_bounded() {
        assert_eq!(increment(&use_of("5/1s", 3)), 600_000_000);
        assert_eq!(increment(&use_of("3/1s", 1)), 333_333_334);
        assert_eq!(
            increment(&use_of("1/366d", u64::MAX)),
            MAX_INCREMENT_NS as i64
        );
        assert!(nanos(UNIX_EPOCH - Duration::from_secs(1)).is_err());
        assert_eq!(nanos(UNIX_EPOCH + Duration::from_nanos(7)).unwrap(), 7);
    }
}
