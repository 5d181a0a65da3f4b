//! The cache's settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

/// Settings of a [`CachedVerifier`](super::CachedVerifier).
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
    /// A builder starting from the defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_api_key::cache::CacheConfig;
    ///
    /// let config = CacheConfig::builder()
    ///     .positive_ttl(Duration::from_secs(30))
    ///     .max_keys(10_000)
    ///     .build();
    /// assert_eq!(config.positive_ttl(), Duration::from_secs(30));
    /// ```
    pub fn builder() -> CacheConfigBuilder {
        Self::default().to_builder()
    }

    /// A builder starting from these settings.
    pub fn to_builder(&self) -> CacheConfigBuilder {
        CacheConfigBuilder {
            config: self.clone(),
        }
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
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// Builds a [`CacheConfig`]; from [`CacheConfig::builder`]. Every setting
/// left alone keeps its default.
#[derive(Clone, Debug)]
#[must_use]
pub struct CacheConfigBuilder {
    config: CacheConfig,
}

impl CacheConfigBuilder {
    /// How long a valid key is trusted without asking the verifier again
    /// (default 60 s). Also the bound on how long a revocation that is not
    /// pushed to this process takes to be seen.
    pub fn positive_ttl(mut self, ttl: Duration) -> Self {
        self.config.positive_ttl = ttl;
        self
    }

    /// How long an unknown key is remembered as unknown (default 5 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = ttl;
        self
    }

    /// How many valid keys are cached (default 100,000).
    pub fn max_keys(mut self, max: u64) -> Self {
        self.config.max_keys = max;
        self
    }

    /// How many unknown keys are remembered (default 10,000). Kept apart from
    /// the valid keys, so floods of made-up keys cannot evict them.
    pub fn max_unknown_keys(mut self, max: u64) -> Self {
        self.config.max_unknown_keys = max;
        self
    }

    /// Bound on one verifier call (default 5 s); past it the request fails
    /// with [`LookupError::Unavailable`](super::LookupError::Unavailable). `None` waits forever. Needs a tokio
    /// runtime with timers.
    pub fn verifier_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.verifier_timeout = timeout;
        self
    }

    /// The clock that key expiry is checked against (default: the system clock).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// The settings.
    pub fn build(self) -> CacheConfig {
        self.config
    }
}
