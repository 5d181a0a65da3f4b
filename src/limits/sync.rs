//! Rate limits shared by replicas: each replica decides locally and sends
//! what it admitted to a [`RateLimitSync`] in batches; the fleet's state comes
//! back and moves the local buckets forward.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::spec::RateLimit;

/// What one replica admitted against one bucket since its last sync.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketUse {
    /// The bucket's owner: `key:<key id>` or `account:<service account>`.
    pub subject: String,
    /// The limit (a subject has one bucket per limit).
    pub limit: RateLimit,
    /// The cost admitted locally since the last sync.
    pub cost: u64,
}

impl BucketUse {
    /// `cost` admitted against `subject`'s bucket for `limit`.
    pub fn new(subject: impl Into<String>, limit: RateLimit, cost: u64) -> Self {
        Self {
            subject: subject.into(),
            limit,
            cost,
        }
    }

    /// Nanoseconds between two requests at the limit's sustained rate
    /// (rounded up): what one unit of cost moves the bucket's TAT.
    pub fn emission_ns(&self) -> u64 {
        self.limit.emission_ns()
    }
}

/// Where replicas meet to share rate-limit state, for example
/// `PgKeyStore::rate_limit_sync` of the `tower-api-key-postgres` crate.
///
/// For each use, the shared bucket's theoretical arrival time (TAT) becomes
/// `max(TAT, now) + cost × period / limit`, atomically per bucket, and the
/// new TAT is returned, in the order of `uses`. Implementations may drop
/// buckets whose TAT lies in the past: they hold nothing.
#[async_trait]
pub trait RateLimitSync: Send + Sync + 'static {
    /// Adds `uses` at `now` and returns each bucket's shared TAT.
    async fn sync(
        &self,
        uses: &[BucketUse],
        now: SystemTime,
    ) -> Result<Vec<SystemTime>, Box<dyn std::error::Error + Send + Sync>>;
}

#[async_trait]
impl<T: RateLimitSync + ?Sized> RateLimitSync for std::sync::Arc<T> {
    async fn sync(
        &self,
        uses: &[BucketUse],
        now: SystemTime,
    ) -> Result<Vec<SystemTime>, Box<dyn std::error::Error + Send + Sync>> {
        (**self).sync(uses, now).await
    }
}

/// How often replicas sync rate-limit state unless told otherwise.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// How the rate limits of an [`Authenticator`](crate::Authenticator) are
/// synced with other replicas: a sync and its interval.
#[derive(Clone)]
pub(crate) struct SyncMode {
    pub(crate) sync: std::sync::Arc<dyn RateLimitSync>,
    pub(crate) interval: Duration,
}

impl fmt::Debug for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncMode")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}
