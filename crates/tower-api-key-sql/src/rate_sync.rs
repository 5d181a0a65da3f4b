//! Rate limits shared through the key store's database: a
//! [`RateLimitSync`] over the table `tower_api_key_rate_buckets`, written
//! once for every dialect over [`Backend::sync_buckets`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tower_api_key::limits::{BucketUse, RateLimitSync};

use crate::backend::BoxFuture;
use crate::{Backend, BoxError};

/// Rows whose TAT lies this far in the past are deleted (the slack covers
/// replica clocks that disagree a little).
pub const IDLE_AFTER: Duration = Duration::from_secs(60);

/// Every this many syncs (the first included), a sync also deletes idle rows.
pub const SWEEP_EVERY: u64 = 64;

/// Largest increment one bucket takes in one sync (about 31 years of TAT):
/// a cost so large leaves the bucket empty for longer than anything could
/// wait anyway, and TATs plus increments stay far from overflowing.
pub const MAX_INCREMENT_NS: i64 = 1_000_000_000_000_000_000;

/// One bucket's part of a sync, for [`Backend::sync_buckets`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketAdd {
    /// The bucket's owner (`key:<id>` or `account:<id>`).
    pub subject: String,
    /// The limit, as text (a subject has one bucket per limit).
    pub limit: String,
    /// What the sync's uses of the bucket add to its TAT, in nanoseconds:
    /// at most [`MAX_INCREMENT_NS`].
    pub increment_ns: i64,
}

/// Shares rate-limit state between replicas through a SQL store's
/// database; from a store's `rate_limit_sync()`.
///
/// Each [`sync`](RateLimitSync::sync) is one transaction or one statement
/// ([`Backend::sync_buckets`]): for every bucket, the TAT becomes
/// `max(TAT, now) + cost × emission interval`, atomically per bucket (uses
/// of one bucket in a batch add up), and the new TATs come back in the
/// order of the uses. Buckets are written in one order (subject, then
/// limit), so concurrent syncs never deadlock. Every 64th sync also deletes
/// buckets idle for a minute.
///
/// Cheap to clone: clones share the store's connections.
#[derive(Clone)]
pub struct SqlRateLimitSync {
    backend: Arc<dyn Buckets>,
    syncs: Arc<AtomicU64>,
}

/// [`Backend::sync_buckets`] of any backend, behind one type.
trait Buckets: Send + Sync + 'static {
    fn sync_buckets(
        &self,
        buckets: Vec<BucketAdd>,
        now_ns: i64,
        idle_before: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<i64>, BoxError>>;
}

impl<B: Backend> Buckets for B {
    fn sync_buckets(
        &self,
        buckets: Vec<BucketAdd>,
        now_ns: i64,
        idle_before: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<i64>, BoxError>> {
        Backend::sync_buckets(self, buckets, now_ns, idle_before)
    }
}

impl fmt::Debug for SqlRateLimitSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlRateLimitSync")
            .field("syncs", &self.syncs.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqlRateLimitSync {
    /// A sync over `backend`, whose first call sweeps idle rows.
    pub(crate) fn new<B: Backend>(backend: Arc<B>) -> Self {
        Self {
            backend,
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
    let ns = use_.cost.saturating_mul(use_.emission_ns());
    i64::try_from(ns).map_or(MAX_INCREMENT_NS, |ns| ns.min(MAX_INCREMENT_NS))
}

#[async_trait]
impl RateLimitSync for SqlRateLimitSync {
    async fn sync(&self, uses: &[BucketUse], now: SystemTime) -> Result<Vec<SystemTime>, BoxError> {
        if uses.is_empty() {
            return Ok(Vec::new());
        }
        let now_ns = nanos(now)?;
        let sweep = self.syncs.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0;
        let idle_before = sweep.then(|| now_ns.saturating_sub(IDLE_AFTER.as_nanos() as i64));
        // One entry per bucket, in the order rows are written.
        let mut sums: BTreeMap<(&str, String), i64> = BTreeMap::new();
        for use_ in uses {
            let sum = sums
                .entry((use_.subject.as_str(), use_.limit.to_string()))
                .or_default();
            *sum = sum.saturating_add(increment(use_)).min(MAX_INCREMENT_NS);
        }
        let buckets: Vec<BucketAdd> = sums
            .iter()
            .map(|((subject, limit), sum)| BucketAdd {
                subject: (*subject).to_owned(),
                limit: limit.clone(),
                increment_ns: *sum,
            })
            .collect();
        let tats = self
            .backend
            .sync_buckets(buckets, now_ns, idle_before)
            .await?;
        if tats.len() != sums.len() {
            return Err(format!(
                "the rate-limit sync returned {} buckets for {}",
                tats.len(),
                sums.len()
            )
            .into());
        }
        let tat_of: BTreeMap<_, _> = sums.keys().zip(tats).collect();
        uses.iter()
            .map(|use_| {
                let key = (use_.subject.as_str(), use_.limit.to_string());
                let tat = *tat_of.get(&key).ok_or("a bucket of the sync has no TAT")?;
                let tat = u64::try_from(tat).map_err(|_| "a stored TAT is negative")?;
                Ok(UNIX_EPOCH + Duration::from_nanos(tat))
            })
            .collect()
    }
}
