//! Failed-attempt limiting: a client that keeps presenting bad keys is
//! refused (429, gRPC RESOURCE_EXHAUSTED) before anything is parsed, hashed
//! or looked up.
//!
//! Every request that presents a credential which fails counts: garbage, a
//! bad checksum, an unknown, revoked or expired key, two credentials at once.
//! A request with no credential at all does not count, nor does a valid key
//! refused for its scopes. Each client has a bucket of `max_failures` tokens
//! that refills at `max_failures` per `window`: after `max_failures` failures
//! in quick succession the client waits, and a full window restores every
//! attempt.
//!
//! Clients are told apart by a function of the request (default: the peer
//! address from axum's `ConnectInfo<SocketAddr>`, IPv6 grouped by /64).
//! **Behind a proxy** every request comes from the proxy's address: use
//! [`FailedAttemptLimit::with_client_id`] to read the address the proxy
//! appends (e.g. the last entry of `X-Forwarded-For` written by your own
//! proxy; never the first, which the client controls). Without a client id a
//! request is not limited.
//!
//! Tracked clients are bounded (default 100,000, least recently seen
//! forgotten first), so a flood of addresses cannot exhaust memory. Time is
//! tokio's, so tests can pause it.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::auth::{Authenticator, FailedAttemptLimit};
//! use tower_api_key::store::MemoryStore;
//!
//! let auth = Authenticator::new(MemoryStore::new())
//!     .with_failed_attempt_limit(FailedAttemptLimit::new(30, Duration::from_secs(60)));
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Extensions, HeaderMap};
use tokio::time::Instant;

/// Tells clients apart: returns the client's address, or `None` to leave
/// the request unlimited.
pub type ClientIdFn = dyn Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync;

/// Settings and state of failed-attempt limiting. Cheap to clone; clones
/// share their state.
#[derive(Clone)]
pub struct FailedAttemptLimit {
    max_failures: u32,
    window: Duration,
    client_id: Arc<ClientIdFn>,
    clients: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

impl fmt::Debug for FailedAttemptLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedAttemptLimit")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("tracked_clients", &self.clients.entry_count())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl FailedAttemptLimit {
    /// At most `max_failures` failed attempts per client within `window`,
    /// tracking up to 100,000 clients.
    ///
    /// # Panics
    ///
    /// If `max_failures` is 0 or `window` is zero: a configuration error.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        assert!(max_failures > 0, "max_failures must be at least 1");
        assert!(!window.is_zero(), "the window must be longer than zero");
        Self {
            max_failures,
            window,
            client_id: Arc::new(peer_address),
            clients: Self::clients(100_000, window),
        }
    }

    fn clients(max: u64, window: Duration) -> moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>> {
        moka::sync::Cache::builder()
            .max_capacity(max)
            // A bucket idle for a whole window is full again: forgetting it changes nothing.
            .time_to_idle(window)
            .build()
    }

    /// Tell clients apart with `client_id` instead of the peer address.
    pub fn with_client_id<F>(mut self, client_id: F) -> Self
    where
        F: Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    {
        self.client_id = Arc::new(client_id);
        self
    }

    /// How many clients are tracked at most (default 100,000).
    pub fn with_max_clients(mut self, max: u64) -> Self {
        self.clients = Self::clients(max, self.window);
        self
    }

    /// How many clients are tracked now, after running the bounded map's
    /// pending evictions (for tests and memory checks; never above
    /// [`FailedAttemptLimit::with_max_clients`]).
    pub fn tracked_clients(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }

    /// The client of a request, if it can be told.
    pub(crate) fn client(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        (self.client_id)(headers, extensions)
    }

    fn rate(&self) -> f64 {
        self.max_failures as f64 / self.window.as_secs_f64()
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate()).min(self.max_failures as f64);
        bucket.updated = now;
    }

    /// `Some(retry_after)` if `client` has no attempts left.
    pub(crate) fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let bucket = self.clients.get(&client)?;
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut bucket, Instant::now());
        if bucket.tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - bucket.tokens) / self.rate();
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(self.window);
        Some(wait.clamp(
            Duration::from_secs(1),
            self.window.max(Duration::from_secs(1)),
        ))
    }

    /// Counts one failed attempt by `client`.
    pub(crate) fn record_failure(&self, client: IpAddr) {
        let now = Instant::now();
        let max = self.max_failures as f64;
        let bucket = self.clients.get_with(client, || {
            Arc::new(Mutex::new(Bucket {
                tokens: max,
                updated: now,
            }))
        });
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

/// The default client id: the peer address axum records with
/// `into_make_service_with_connect_info::<SocketAddr>()`; IPv6 addresses are
/// grouped by /64, the block one subscriber usually holds.
pub fn peer_address(_headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    {
        let info = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?;
        Some(group(info.0.ip()))
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = extensions;
        None
    }
}

/// IPv4 as is; IPv6 by /64 (IPv4-mapped addresses as IPv4).
pub fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(group(a), group(b));
        assert_ne!(group(a), group(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(group(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_empties_after_max_failures_and_refills_over_the_window() {
        let limit = FailedAttemptLimit::new(3, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.blocked(client), None);
            limit.record_failure(client);
        }
        let retry = limit.blocked(client).expect("blocked after three failures");
        assert!(
            retry <= Duration::from_secs(20) && retry >= Duration::from_secs(19),
            "{retry:?}"
        );
        assert_eq!(limit.blocked(other), None, "other clients are not affected");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            limit.blocked(client),
            None,
            "one attempt back after window / max"
        );
        limit.record_failure(client);
        assert!(limit.blocked(client).is_some());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(
                limit.blocked(client),
                None,
                "a full window restores every attempt"
            );
            limit.record_failure(client);
        }
    }
}
