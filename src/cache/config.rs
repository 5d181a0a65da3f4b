//! The cache's settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

/// Settings of a [`CachedVerifier`].
#[derive(Clone)]
pub struct CacheConfig {
    pub(super) positive_ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) max_keys: u64,
    pub(super) max_unknown_keys: u64,
    pub(super) verifier_timeout: Option<Duration>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_keys: 100_000,
            max_unknown_keys: 10_000,
            verifier_timeout: Some(Duration::from_secs(5)),
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("positive_ttl", &self.positive_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_keys", &self.max_keys)
            .field("max_unknown_keys", &self.max_unknown_keys)
            .field("verifier_timeout", &self.verifier_timeout)
            .finish_non_exhaustive()
    }
}

impl CacheConfig {
    /// How long a valid key is trusted without asking the verifier again
    /// (default 60 s). Also the bound on how long a revocation that is not
    /// pushed to this process takes to be seen.
    pub fn with_positive_ttl(mut self, ttl: Duration) -> Self {
        self.positive_ttl = ttl;
        self
    }

    /// How long an unknown key is remembered as unknown (default 5 s).
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How many valid keys are cached (default 100,000).
    pub fn with_max_keys(mut self, max: u64) -> Self {
        self.max_keys = max;
        self
    }

    /// How many unknown keys are remembered (default 10,000). Kept apart from
    /// the valid keys, so floods of made-up keys cannot evict them.
    pub fn with_max_unknown_keys(mut self, max: u64) -> Self {
        self.max_unknown_keys = max;
        self
    }

    /// Bound on one verifier call (default 5 s); past it the request fails
    /// with [`LookupError::Unavailable`]. `None` waits forever. Needs a tokio
    /// runtime with timers.
    pub fn with_verifier_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.verifier_timeout = timeout;
        self
    }

    /// The clock that key expiry is checked against (default: the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The positive TTL.
    pub fn positive_ttl(&self) -> Duration {
        self.positive_ttl
    }

    /// The negative TTL.
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// The verifier timeout.
    pub fn verifier_timeout(&self) -> Option<Duration> {
        self.verifier_timeout
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
