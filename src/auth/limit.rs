//! Failed-attempt limiting: a client that keeps presenting bad keys is

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Extensions, HeaderMap};
use tokio::time::Instant;

/// Tells clients apart: returns the client's address, or `None` to leave
/// the request unlimited.
pub type ClientIdFn = dyn Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync;

/// Failed-attempt limiting: a client that keeps presenting bad keys is
/// refused (429, gRPC RESOURCE_EXHAUSTED) without a verifier call.
///
/// Each client has a bucket of `max_failures` attempts that refills at
/// `max_failures` per `window`: after `max_failures` failures in quick
/// succession the client waits, and a full window restores every attempt.
///
/// - **What spends an attempt**: every credential that fails: garbage, a bad
///   checksum, an unknown, revoked or expired key, two credentials at once.
///   A request with no credential at all spends none, nor does a valid key
///   refused for its scopes, nor a verifier failure (503) or panic (500).
/// - **Before the verifier, not after**: a key the cache cannot answer takes
///   an attempt *before* its lookup starts, and gets it back when the key
///   proves valid or the verifier fails. So however many requests a client
///   has in flight, it makes at most as many verifier calls as it has
///   attempts left. A request that goes away before its lookup answers keeps
///   its attempt spent: otherwise disconnecting would buy free lookups.
/// - **Joining costs nothing**: a request for a key whose lookup is already
///   under way waits for that answer without taking an attempt, so a burst
///   of requests with one valid key that is not cached yet (a cold start)
///   all get through on one verifier call. (Requests for one new key that
///   arrive together on different threads may each take an attempt before
///   the lookup is under way; a valid key gives every one of them back.)
/// - **While a client has no attempt left** it gets 429 with `Retry-After`
///   for everything, a missing credential included, except a key the cache
///   already holds as valid (or whose lookup is already under way): a
///   cached key proves its holder is not guessing, and answering it costs
///   no lookup, so one client guessing from behind a shared address (a NAT,
///   a proxy, an IPv6 /64) does not lock out the valid keys used from
///   there. Everything else (garbage, unknown or uncached keys) is refused
///   without a verifier call.
///
/// Clients are told apart by a function of the request (default: the peer
/// address from axum's `ConnectInfo<SocketAddr>`, IPv6 grouped by /64).
/// **Behind a proxy** every request comes from the proxy's address: use
/// [`FailedAttemptLimitBuilder::client_id`] to read the address the proxy
/// appends (e.g. the last entry of `X-Forwarded-For` written by your own
/// proxy; never the first, which the client controls). Without a client id a
/// request is not limited: the first such request logs a warning, once per
/// limiter, since it usually means the server was not started with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
///
/// Tracked clients are bounded (default 100,000, least recently seen
/// forgotten first), so a flood of addresses cannot exhaust memory. Time is
/// tokio's, so tests can pause it.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::Authenticator;
/// use tower_api_key::auth::{ FailedAttemptLimit};
/// use tower_api_key::MemoryStore;
///
/// let auth = Authenticator::builder(MemoryStore::new())
///     .failed_attempt_limit(FailedAttemptLimit::new(30, Duration::from_secs(60)))
///     .build();
/// ```
///
/// Settings and state of failed-attempt limiting. Cheap to clone; clones
/// share their state.
#[derive(Clone)]
pub struct FailedAttemptLimit {
    max_failures: u32,
    window: Duration,
    client_id: Arc<ClientIdFn>,
    clients: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
    /// Set once a request without a client id has been warned about.
    warned_no_client: Arc<AtomicBool>,
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
    /// clients told apart by the peer address (axum's `ConnectInfo<SocketAddr>`, grouped per /64 for IPv6), tracking up to 100,000
    /// clients: [`FailedAttemptLimit::builder`]`(max_failures, window).build()`.
    ///
    /// # Panics
    ///
    /// If `max_failures` is 0 or `window` is zero: a configuration error.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self::builder(max_failures, window).build()
    }

    /// The settings of a limit of `max_failures` failed attempts per client
    /// within `window`, to [build](FailedAttemptLimitBuilder::build) once.
    ///
    /// # Panics
    ///
    /// If `max_failures` is 0 or `window` is zero: a configuration error,
    /// reported where it is made.
    pub fn builder(max_failures: u32, window: Duration) -> FailedAttemptLimitBuilder {
        assert!(max_failures > 0, "max_failures must be at least 1");
        assert!(!window.is_zero(), "the window must be longer than zero");
        FailedAttemptLimitBuilder {
            max_failures,
            window,
            client_id: Arc::new(peer_address),
            max_clients: 100_000,
        }
    }

    /// How many clients are tracked now, after running the bounded map's
    /// pending evictions (for tests and memory checks; never above
    /// [`FailedAttemptLimitBuilder::max_clients`]).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn tracked_clients(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }

    /// The client of a request, if it can be told. The first request that
    /// has none logs a warning: a limiter that limits nothing should not be
    /// silent.
    pub(crate) fn client(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        let client = (self.client_id)(headers, extensions);
        // The load keeps the shared flag read-only once set (no cache-line bouncing).
        if client.is_none()
            && !self.warned_no_client.load(Ordering::Relaxed)
            && !self.warned_no_client.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "failed-attempt limit is on, but a request has no client address, so it is \
                 not limited; serve with `into_make_service_with_connect_info::<SocketAddr>()` \
                 or set one with `FailedAttemptLimit::builder(..).client_id(..)` (logged once)"
            );
        }
        client
    }

    fn rate(&self) -> f64 {
        self.max_failures as f64 / self.window.as_secs_f64()
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate()).min(self.max_failures as f64);
        bucket.updated = now;
    }

    /// How long until a bucket holding `tokens` (< 1) has a whole attempt.
    fn retry_after(&self, tokens: f64) -> Duration {
        let wait = (1.0 - tokens) / self.rate();
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(self.window);
        wait.clamp(
            Duration::from_secs(1),
            self.window.max(Duration::from_secs(1)),
        )
    }

    /// `Some(retry_after)` if `client` has no attempts left. Takes nothing.
    pub(crate) fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let bucket = self.clients.get(&client)?;
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut bucket, Instant::now());
        if bucket.tokens >= 1.0 {
            return None;
        }
        Some(self.retry_after(bucket.tokens))
    }

    /// Takes one attempt from `client`, or, if it has none left, says how
    /// long until it has one. Atomic per client: concurrent requests never
    /// take more attempts than the bucket holds.
    pub(crate) fn try_take(&self, client: IpAddr) -> Result<(), Duration> {
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
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.retry_after(bucket.tokens))
        }
    }

    /// Returns an attempt taken by [`FailedAttemptLimit::try_take`] that did
    /// not fail after all (a valid key, a verifier fault).
    pub(crate) fn give_back(&self, client: IpAddr) {
        // A bucket forgotten meanwhile would be created full: nothing to return.
        if let Some(bucket) = self.clients.get(&client) {
            let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
            self.refill(&mut bucket, Instant::now());
            bucket.tokens = (bucket.tokens + 1.0).min(self.max_failures as f64);
        }
    }
}

/// Settings of a [`FailedAttemptLimit`], made by
/// [`FailedAttemptLimit::builder`]; [`build`](FailedAttemptLimitBuilder::build)
/// creates the bounded map of clients, once.
#[must_use = "a FailedAttemptLimitBuilder does nothing until `.build()`"]
pub struct FailedAttemptLimitBuilder {
    max_failures: u32,
    window: Duration,
    client_id: Arc<ClientIdFn>,
    max_clients: u64,
}

impl fmt::Debug for FailedAttemptLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedAttemptLimitBuilder")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

impl FailedAttemptLimitBuilder {
    /// Tell clients apart with `client_id` instead of the peer address.
    pub fn client_id<F>(mut self, client_id: F) -> Self
    where
        F: Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    {
        self.client_id = Arc::new(client_id);
        self
    }

    /// How many clients are tracked at most (default 100,000).
    pub fn max_clients(mut self, max: u64) -> Self {
        self.max_clients = max;
        self
    }

    /// The limit, with its map of clients. Clones of it share that map.
    pub fn build(self) -> FailedAttemptLimit {
        FailedAttemptLimit {
            max_failures: self.max_failures,
            window: self.window,
            client_id: self.client_id,
            clients: moka::sync::Cache::builder()
                .max_capacity(self.max_clients)
                // A bucket idle for a whole window is full again: forgetting it changes nothing.
                .time_to_idle(self.window)
                .build(),
            warned_no_client: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The default client id: the peer address axum records with
/// `into_make_service_with_connect_info::<SocketAddr>()`; IPv6 addresses are
/// grouped by /64, the block one subscriber usually holds.
pub(crate) fn peer_address(_headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
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
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn group(ip: IpAddr) -> IpAddr {
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
            assert_eq!(limit.try_take(client), Ok(()));
        }
        let retry = limit.blocked(client).expect("blocked after three failures");
        assert!(
            retry <= Duration::from_secs(20) && retry >= Duration::from_secs(19),
            "{retry:?}"
        );
        assert_eq!(limit.try_take(client), Err(retry), "nothing left to take");
        assert_eq!(limit.blocked(other), None, "other clients are not affected");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            limit.blocked(client),
            None,
            "one attempt back after window / max"
        );
        assert_eq!(limit.try_take(client), Ok(()));
        assert!(limit.blocked(client).is_some());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(
                limit.try_take(client),
                Ok(()),
                "a full window restores every attempt"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_given_back_can_be_taken_again_but_never_beyond_max() {
        let limit = FailedAttemptLimit::new(2, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(limit.try_take(client), Ok(()));
        assert_eq!(limit.try_take(client), Ok(()));
        assert!(limit.try_take(client).is_err());
        limit.give_back(client);
        assert_eq!(limit.try_take(client), Ok(()), "the returned attempt");
        assert!(limit.try_take(client).is_err());

        // Giving back more than was taken does not raise the limit.
        limit.give_back(client);
        limit.give_back(client);
        limit.give_back(client);
        assert_eq!(limit.try_take(client), Ok(()));
        assert_eq!(limit.try_take(client), Ok(()));
        assert!(limit.try_take(client).is_err(), "still at most 2");
    }

    #[test]
    fn concurrent_takes_never_take_more_than_the_bucket_holds() {
        let limit = FailedAttemptLimit::new(30, Duration::from_secs(3600));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let barrier = std::sync::Barrier::new(8);
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        (0..100).filter(|_| limit.try_take(client).is_ok()).count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 30);
    }
}
