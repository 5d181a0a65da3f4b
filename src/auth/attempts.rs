//! Failed-attempt limiting: a client that keeps presenting bad keys is
//! refused before any lookup.

use std::fmt;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The settings of the failed-attempt limit: a client that keeps presenting
/// bad keys is refused (429, gRPC RESOURCE_EXHAUSTED) without a verifier call.
///
/// Each client has a bucket of `max_failures` attempts that refills at
/// `max_failures` per `window`: after `max_failures` failures in quick
/// succession the client waits, and a full window restores every attempt.
///
/// - **What spends an attempt**: every credential that fails: garbage, a bad
///   checksum, an unknown, revoked or expired key, two credentials at once.
///   A request with no credential at all spends none, nor does a valid key
///   refused for its scopes, nor a verifier failure (503) or panic (500).
/// - **Before the verifier, not after**: a key the cache cannot answer
///   reserves an attempt *before* its lookup starts; the attempt is spent if
///   the key fails, and comes back when it proves valid or the verifier
///   fails. So however many requests a client has in flight, it makes at
///   most as many verifier calls as it has attempts left (1,000 unknown keys
///   at once with a limit of 30: 30 verifier calls). A request that goes
///   away before its lookup answers keeps its attempt spent: otherwise
///   disconnecting would buy free lookups.
/// - **Only confirmed failures refuse**: a request that finds every attempt
///   left reserved by lookups still in flight *waits* for their outcomes
///   instead of getting 429. Each one that proves valid (or meets a
///   verifier fault) hands its attempt to the next waiting request; once the
///   ones that fail leave no attempt, every waiting request gets the 429. So
///   a gateway, a NAT or a batch job sending many valid keys from one
///   address right after a deploy (nothing cached) is served, at most
///   `max_failures` lookups at a time. A wait lasts at most the verifier
///   timeout ([`AuthenticatorBuilder::verifier_timeout`](crate::AuthenticatorBuilder::verifier_timeout)),
///   counted from when it starts; past it the request gets what a verifier
///   timeout gets, 503 with `Retry-After: 1` (or the 429, if the client has
///   no attempt left by then), without a lookup. A request that goes away
///   while waiting holds nothing and takes nothing with it.
/// - **Joining costs nothing**: a request for a key whose lookup is already
///   under way waits for that answer without taking an attempt, so a burst
///   of requests with one valid key that is not cached yet (a cold start)
///   all get through on one verifier call. (Requests for one new key that
///   arrive together on different threads may each take an attempt before
///   the lookup is under way; a valid key gives every one of them back.)
/// - **While confirmed failures leave a client no attempt** it gets 429
///   with `Retry-After` for everything, a missing credential included,
///   except a key the cache already holds as valid (or whose lookup is
///   already under way): a cached key proves its holder is not guessing,
///   and answering it costs no lookup, so one client guessing from behind a
///   shared address (a NAT, a proxy, an IPv6 /64) does not lock out the
///   valid keys used from there. Everything else (garbage, unknown or
///   uncached keys) is refused without a verifier call.
///
/// Clients are told apart by their address, as the authenticator resolves
/// it for every use (see
/// [`AuthenticatorBuilder::trusted_proxies`](crate::AuthenticatorBuilder::trusted_proxies)):
/// the peer address from axum's `ConnectInfo<SocketAddr>` (feature
/// `connect-info`) or tonic's server (feature `tonic-server`), or behind trusted proxies the rightmost untrusted
/// address of the header they write, or a [`ClientIp`](super::ClientIp) the
/// application put in the request's extensions. IPv6 addresses are grouped
/// by /64, the block one subscriber usually holds. Without an address a
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
/// use tower_api_key::auth::FailedAttemptLimit;
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
    clients: moka::sync::Cache<IpAddr, Arc<Client>>,
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

/// One client's attempts, and the requests waiting for one.
struct Client {
    bucket: Mutex<Bucket>,
    /// Woken when the bucket changes in a way a waiting request cares
    /// about: an attempt freed for it, or none left at all.
    changed: Notify,
}

#[derive(Debug)]
struct Bucket {
    /// Attempts not spent by a confirmed failure (refilling over time).
    tokens: f64,
    /// How many of `tokens` are held by lookups still in flight.
    reserved: u32,
    updated: Instant,
}

impl Bucket {
    /// Whether confirmed failures leave no attempt: the only state that is a 429.
    fn blocked(&self) -> bool {
        self.tokens < 1.0
    }

    /// Whether an attempt is neither spent nor held by a lookup in flight.
    fn has_free(&self) -> bool {
        self.tokens - f64::from(self.reserved) >= 1.0
    }

    /// Whom to wake after a change: everyone if nothing is left, one waiter
    /// if an attempt is free for it.
    fn wake(&self) -> Wake {
        if self.blocked() {
            Wake::All
        } else if self.has_free() {
            Wake::One
        } else {
            Wake::None
        }
    }
}

#[derive(Clone, Copy)]
enum Wake {
    None,
    One,
    All,
}

impl Client {
    fn lock(&self) -> MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, wake: Wake) {
        match wake {
            Wake::None => {}
            Wake::One => self.changed.notify_one(),
            Wake::All => self.changed.notify_waiters(),
        }
    }
}

/// The settings a bucket is refilled with, copied into each reservation
/// and queue so they need no handle on the limiter.
#[derive(Debug, Clone, Copy)]
struct Refill {
    max: f64,
    /// Attempts per second.
    rate: f64,
    window: Duration,
}

impl Refill {
    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.max);
        bucket.updated = now;
    }

    /// How long until a bucket holding `tokens` (< 1) has a whole attempt.
    fn retry_after(&self, tokens: f64) -> Duration {
        let wait = (1.0 - tokens) / self.rate;
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(self.window);
        wait.clamp(
            Duration::from_secs(1),
            self.window.max(Duration::from_secs(1)),
        )
    }

    /// Reserves an attempt of `client` for a lookup, if one is free.
    fn try_reserve(&self, client: &Arc<Client>) -> Result<Reservation, Full> {
        let (result, wake) = {
            let mut bucket = client.lock();
            self.refill(&mut bucket, Instant::now());
            if bucket.blocked() {
                return Err(Full::Blocked(self.retry_after(bucket.tokens)));
            }
            if !bucket.has_free() {
                return Err(Full::Busy);
            }
            bucket.reserved += 1;
            // An attempt still free (e.g. refilled while this request
            // waited) is passed on to the next waiter.
            let wake = if bucket.has_free() {
                Wake::One
            } else {
                Wake::None
            };
            let reservation = Reservation {
                client: client.clone(),
                refill: *self,
                valid: false,
            };
            (Ok(reservation), wake)
        };
        client.wake(wake);
        result
    }
}

/// Why [`Refill::try_reserve`] reserved nothing.
enum Full {
    /// Confirmed failures leave no attempt: retry after this long.
    Blocked(Duration),
    /// Every attempt left is held by a lookup in flight.
    Busy,
}

/// What a request that could not reserve an attempt at once does.
pub(crate) enum NoAttempt {
    /// Confirmed failures leave the client no attempt: a 429, retry after
    /// this long.
    Blocked(Duration),
    /// Every attempt left is held by a lookup in flight: wait in this queue
    /// for one of them to come back.
    Busy(Queue),
}

/// An attempt held for one lookup: spent if the key fails (or the request
/// goes away first), given back if it proves valid or the verifier fails.
/// Dropping it spends it; [`Reservation::release`] gives it back.
pub(crate) struct Reservation {
    client: Arc<Client>,
    refill: Refill,
    /// Set by [`Reservation::release`]; read when it is dropped.
    valid: bool,
}

impl Reservation {
    /// Gives the attempt back: the key proved valid, or the verifier failed
    /// (not the client's fault). A waiting request can take it.
    pub(crate) fn release(mut self) {
        self.valid = true;
    }

    /// Spends the attempt: the key failed. The same as dropping it, named
    /// for the reader.
    pub(crate) fn spend(self) {}
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let wake = {
            let mut bucket = self.client.lock();
            self.refill.refill(&mut bucket, Instant::now());
            bucket.reserved = bucket.reserved.saturating_sub(1);
            if !self.valid {
                // Failures taken meanwhile without a lookup (garbage) may
                // already have spent what this held: never below empty, so a
                // full window still restores every attempt.
                bucket.tokens = (bucket.tokens - 1.0).max(0.0);
            }
            bucket.wake()
        };
        self.client.wake(wake);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("valid", &self.valid)
            .finish_non_exhaustive()
    }
}

/// A request waiting for one of its client's attempts held by lookups in
/// flight. Holds no attempt itself: dropping it frees nothing and takes
/// nothing (a wake-up it had received passes on to the next waiter).
pub(crate) struct Queue {
    client: Arc<Client>,
    refill: Refill,
}

impl Queue {
    /// Waits until an attempt is free and reserves it, or until confirmed
    /// failures leave none (`Err(retry_after)`). Unbounded: the caller puts
    /// the deadline on it.
    pub(crate) async fn reserve(&self) -> Result<Reservation, Duration> {
        let mut changed = pin!(self.client.changed.notified());
        loop {
            // Registered before looking, so a change made between the look
            // and the wait still wakes this request.
            changed.as_mut().enable();
            match self.refill.try_reserve(&self.client) {
                Ok(reservation) => return Ok(reservation),
                Err(Full::Blocked(retry_after)) => return Err(retry_after),
                Err(Full::Busy) => {}
            }
            changed.as_mut().await;
            changed.set(self.client.changed.notified());
        }
    }

    /// `Some(retry_after)` if confirmed failures leave no attempt now.
    pub(crate) fn blocked(&self) -> Option<Duration> {
        let mut bucket = self.client.lock();
        self.refill.refill(&mut bucket, Instant::now());
        bucket
            .blocked()
            .then(|| self.refill.retry_after(bucket.tokens))
    }
}

impl FailedAttemptLimit {
    /// At most `max_failures` failed attempts per client within `window`,
    /// clients told apart by their address (grouped per /64 for IPv6), tracking up to 100,000
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

    /// The client of a request whose address is `address` (as the
    /// authenticator resolved it), if it can be told: IPv6 grouped by /64.
    /// The first request that has none logs a warning: a limiter that
    /// limits nothing should not be silent.
    pub(crate) fn client(&self, address: Option<IpAddr>) -> Option<IpAddr> {
        let client = address.map(group);
        // The load keeps the shared flag read-only once set (no cache-line bouncing).
        if client.is_none()
            && !self.warned_no_client.load(Ordering::Relaxed)
            && !self.warned_no_client.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "failed-attempt limit is on, but a request has no client address, so it is \
                 not limited; serve with `into_make_service_with_connect_info::<SocketAddr>()` \
                 (feature `connect-info`), trust your proxies with `AuthenticatorBuilder::trusted_proxies(..)`, \
                 or put a `ClientIp` in the request's extensions (logged once)"
            );
        }
        client
    }

    fn refill(&self) -> Refill {
        Refill {
            max: f64::from(self.max_failures),
            rate: f64::from(self.max_failures) / self.window.as_secs_f64(),
            window: self.window,
        }
    }

    /// The bucket of `client`, full if it is new.
    fn bucket(&self, client: IpAddr) -> Arc<Client> {
        self.clients.get_with(client, || {
            Arc::new(Client {
                bucket: Mutex::new(Bucket {
                    tokens: f64::from(self.max_failures),
                    reserved: 0,
                    updated: Instant::now(),
                }),
                changed: Notify::new(),
            })
        })
    }

    /// `Some(retry_after)` if confirmed failures leave `client` no attempt.
    /// Takes nothing; attempts held by lookups in flight do not count.
    pub(crate) fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let client = self.clients.get(&client)?;
        let mut bucket = client.lock();
        let refill = self.refill();
        refill.refill(&mut bucket, Instant::now());
        bucket.blocked().then(|| refill.retry_after(bucket.tokens))
    }

    /// Spends one attempt of `client` on a failure that needed no lookup
    /// (garbage, a key the cache knows is bad), or, if confirmed failures
    /// leave none, says how long until one is back. Attempts held by
    /// lookups in flight do not make it a 429: they have not failed yet.
    pub(crate) fn try_take(&self, client: IpAddr) -> Result<(), Duration> {
        let client = self.bucket(client);
        let refill = self.refill();
        let wake = {
            let mut bucket = client.lock();
            refill.refill(&mut bucket, Instant::now());
            if bucket.blocked() {
                return Err(refill.retry_after(bucket.tokens));
            }
            bucket.tokens -= 1.0;
            // Only the last attempt going changes anything for a waiter.
            if bucket.blocked() {
                Wake::All
            } else {
                Wake::None
            }
        };
        client.wake(wake);
        Ok(())
    }

    /// Reserves one attempt of `client` for a lookup, so that a client
    /// never has more lookups in flight than it has attempts left. Atomic
    /// per client. Without a free attempt: a 429 only if confirmed failures
    /// leave none; if lookups in flight hold them, a queue to wait in.
    pub(crate) fn reserve(&self, client: IpAddr) -> Result<Reservation, NoAttempt> {
        let refill = self.refill();
        let client = self.bucket(client);
        match refill.try_reserve(&client) {
            Ok(reservation) => Ok(reservation),
            Err(Full::Blocked(retry_after)) => Err(NoAttempt::Blocked(retry_after)),
            Err(Full::Busy) => Err(NoAttempt::Busy(Queue { client, refill })),
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
            clients: moka::sync::Cache::builder()
                .max_capacity(self.max_clients)
                // A bucket idle for a whole window is full again: forgetting it changes nothing.
                .time_to_idle(self.window)
                .build(),
            warned_no_client: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// IPv4 as is; IPv6 by /64 (IPv4-mapped addresses as IPv4).
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
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

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

    /// The reservation, or panics.
    fn reserved(limit: &FailedAttemptLimit, client: IpAddr) -> Reservation {
        match limit.reserve(client) {
            Ok(reservation) => reservation,
            Err(NoAttempt::Busy(_)) => panic!("busy, expected a reservation"),
            Err(NoAttempt::Blocked(retry)) => panic!("blocked ({retry:?}), expected a reservation"),
        }
    }

    /// The queue to wait in, or panics.
    fn busy(limit: &FailedAttemptLimit, client: IpAddr) -> Queue {
        match limit.reserve(client) {
            Err(NoAttempt::Busy(queue)) => queue,
            Ok(_) => panic!("reserved, expected to wait"),
            Err(NoAttempt::Blocked(retry)) => panic!("blocked ({retry:?}), expected to wait"),
        }
    }

    type Waiter<'q> = Pin<Box<dyn Future<Output = Result<Reservation, Duration>> + 'q>>;

    /// A request waiting in `queue`, polled once so it is registered.
    fn waiter(queue: &Queue) -> Waiter<'_> {
        let mut waiter: Waiter<'_> = Box::pin(queue.reserve());
        assert!(poll(&mut waiter).is_pending(), "waits");
        waiter
    }

    fn poll(waiter: &mut Waiter<'_>) -> Poll<Result<Reservation, Duration>> {
        waiter
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_attempt_can_be_reserved_again_but_never_beyond_max() {
        let limit = FailedAttemptLimit::new(2, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let first = reserved(&limit, client);
        let second = reserved(&limit, client);
        busy(&limit, client);
        first.release();
        let third = reserved(&limit, client);
        busy(&limit, client);

        // Releasing more often than the bucket holds does not raise the limit.
        second.release();
        third.release();
        for _ in 0..5 {
            reserved(&limit, client).release();
        }
        let held = [reserved(&limit, client), reserved(&limit, client)];
        busy(&limit, client);
        drop(held);
        assert!(limit.blocked(client).is_some(), "both dropped: spent");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_held_by_lookups_in_flight_make_a_request_wait_not_fail() {
        let limit = FailedAttemptLimit::new(2, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let first = reserved(&limit, client);
        let second = reserved(&limit, client);
        assert_eq!(limit.blocked(client), None, "nothing has failed yet");
        let queue = busy(&limit, client);
        let mut waiting = waiter(&queue);

        // One lookup fails: the other still holds the last attempt.
        second.spend();
        assert!(poll(&mut waiting).is_pending());
        // The other proves valid: its attempt is the waiter's.
        first.release();
        let Poll::Ready(Ok(taken)) = poll(&mut waiting) else {
            panic!("the released attempt goes to the waiter");
        };
        busy(&limit, client);
        taken.release();
        assert_eq!(limit.try_take(client), Ok(()));
        assert!(
            limit.try_take(client).is_err(),
            "one failure, one attempt left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_lookups_in_flight_fail_every_waiter_gets_a_retry_after() {
        let limit = FailedAttemptLimit::new(2, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let held = [reserved(&limit, client), reserved(&limit, client)];
        let queues: Vec<Queue> = (0..3).map(|_| busy(&limit, client)).collect();
        let mut waiting: Vec<Waiter<'_>> = queues.iter().map(waiter).collect();
        drop(held);
        for waiter in &mut waiting {
            // 2 per 60 s: one attempt back in 30 s.
            assert!(
                matches!(poll(waiter), Poll::Ready(Err(retry)) if retry == Duration::from_secs(30)),
                "refused"
            );
        }
        match limit.reserve(client) {
            Err(NoAttempt::Blocked(retry)) => assert_eq!(retry, Duration::from_secs(30)),
            _ => panic!("no attempt left"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_frees_nothing_it_did_not_hold_and_leaks_nothing() {
        let limit = FailedAttemptLimit::new(1, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let held = reserved(&limit, client);
        let queues: Vec<Queue> = (0..3).map(|_| busy(&limit, client)).collect();
        let first = waiter(&queues[0]);
        let mut second = waiter(&queues[1]);
        let third = waiter(&queues[2]);

        // A waiter that goes away frees nothing: the attempt is still held.
        drop(third);
        let later = busy(&limit, client);
        // The attempt comes back and wakes the oldest waiter, which goes
        // away before it runs: the wake-up passes on, nothing is lost.
        held.release();
        drop(first);
        let Poll::Ready(Ok(taken)) = poll(&mut second) else {
            panic!("the wake-up passed on to the next waiter");
        };
        let mut latest = waiter(&later);
        taken.release();
        let Poll::Ready(Ok(taken)) = poll(&mut latest) else {
            panic!("released again");
        };
        taken.release();
        drop((latest, second));

        // Nothing held, nothing spent: the one attempt is whole.
        reserved(&limit, client).release();
        assert_eq!(limit.try_take(client), Ok(()));
        assert!(limit.try_take(client).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_refilled_while_requests_wait_passes_from_waiter_to_waiter() {
        let limit = FailedAttemptLimit::new(2, Duration::from_secs(60));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            limit.try_take(client),
            Ok(()),
            "one failure without a lookup"
        );
        let held = reserved(&limit, client);
        let queues: Vec<Queue> = (0..2).map(|_| busy(&limit, client)).collect();
        let mut waiting: Vec<Waiter<'_>> = queues.iter().map(waiter).collect();
        // The failure's attempt refills; no lookup resolves meanwhile.
        tokio::time::advance(Duration::from_secs(30)).await;
        held.release();
        // The release wakes one waiter; reserving, it finds the refilled
        // attempt still free and wakes the next.
        let Poll::Ready(Ok(a)) = poll(&mut waiting[0]) else {
            panic!("the released attempt");
        };
        let Poll::Ready(Ok(b)) = poll(&mut waiting[1]) else {
            panic!("the refilled attempt, passed on");
        };
        busy(&limit, client);
        drop((a, b));
    }

    #[test]
    fn concurrent_reservations_never_hold_more_than_the_bucket_holds() {
        let limit = FailedAttemptLimit::new(30, Duration::from_secs(3600));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let barrier = std::sync::Barrier::new(8);
        let held: Vec<Reservation> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        (0..100)
                            .filter_map(|_| limit.reserve(client).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 30);
        assert_eq!(limit.blocked(client), None, "held, not failed");
        held.into_iter().for_each(Reservation::release);
        assert_eq!(
            limit.reserve(client).map(Reservation::release).ok(),
            Some(())
        );
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
