//! A push feed of invalidations on a connection of its own (PostgreSQL's
//! LISTEN): a dialect opens the connection ([`Subscription`]), and the loop
//! written here keeps it open and turns what it hears into invalidations.
//!
//! A notification's payload is `<key id> <service account id>`, or a bare
//! key id (older versions, or an account too long for a payload); anything
//! else invalidates everything. After every (re)connection the loop
//! publishes [`Invalidation::All`]: what was announced while it was not
//! listening is lost, so every cached key is re-verified. Correctness never
//! depends on a notification arriving; notifications only make revocations
//! fast.
//!
//! A connection that dies quietly (a network partition, a host that
//! vanished) is found by a periodic health check; one the server closes is
//! noticed at once. Reconnection attempts back off exponentially, but the
//! backoff never outlasts the database: while not listening the loop
//! [probes](Subscription::probe) it every probe interval, and any store call
//! that reaches it wakes the loop ([`Listener::answered`]). Once the
//! database answers again, the store listens again within the probe
//! interval plus one connection attempt.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tower_api_key::{Invalidation, Invalidations, KeyId};

use crate::{BackgroundTask, BoxError};

/// The state of a store's listening connection (PostgreSQL's
/// `PgKeyStore::listener_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerStatus {
    /// Not listening: connecting for the first time, or again after the
    /// connection was lost. `failures` counts the failed attempts since it
    /// last listened.
    Connecting {
        /// Failed attempts since the listener last listened.
        failures: u32,
    },
    /// Listening; every cached key was invalidated after listening began.
    Listening {
        /// The server process of the connection (PostgreSQL's
        /// `pg_backend_pid()`), for operators and tests.
        backend_pid: i32,
        /// How many times the listener has connected since the store
        /// started: 1 at first, 2 after the first reconnection, ...
        connections: u64,
    },
    /// The store was shut down (or dropped); the listener is gone.
    Stopped,
    /// The store does not listen (it only polls).
    Off,
}

impl ListenerStatus {
    /// Whether the listener is listening.
    pub fn is_listening(&self) -> bool {
        matches!(self, Self::Listening { .. })
    }
}

/// Settings of a [`Listener`]; a store's builder sets them with
/// [`listener_setters!`](crate::listener_setters).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerSettings {
    /// The first delay between reconnection attempts after the immediate one.
    pub backoff_min: Duration,
    /// The longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// How often the listening connection is checked.
    pub health_check_interval: Duration,
    /// How often the database is probed while not listening.
    pub probe_interval: Duration,
    /// Bound on connecting, on a health check and on a probe.
    pub timeout: Duration,
}

impl Default for ListenerSettings {
    /// Backoff from 100 ms to 5 s, a health check every 10 s, a probe every
    /// 250 ms, 5 s timeouts.
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(10),
            probe_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
        }
    }
}

/// How a dialect listens: opens a listening connection, and tells whether
/// the database answers at all.
#[async_trait]
pub trait Subscription: Send + Sync + 'static {
    /// A listening connection.
    type Session: Session;

    /// Connects and starts listening: once this returns, every notification
    /// sent afterwards is heard.
    async fn listen(&self) -> Result<Self::Session, BoxError>;

    /// Whether the database answers a query (on the store's pool): ends a
    /// reconnection backoff early.
    async fn probe(&self) -> bool;
}

/// A listening connection.
#[async_trait]
pub trait Session: Send + 'static {
    /// The server's id of the connection (PostgreSQL's backend pid).
    fn backend_pid(&self) -> i32;

    /// The payload of the next notification; an error once the connection
    /// is lost. Cancel-safe: dropped before it resolves, it loses nothing.
    async fn next(&mut self) -> Result<String, BoxError>;

    /// One round trip: an error when the connection no longer answers.
    async fn check(&mut self) -> Result<(), BoxError>;
}

/// A store's handle on its listener: its status, and the wake-up the store
/// sends when one of its calls reached the database while not listening.
#[derive(Debug, Clone)]
pub struct Listener {
    status: watch::Receiver<ListenerStatus>,
    wake: Arc<Notify>,
}

impl Listener {
    /// The handle of a store that does not listen ([`ListenerStatus::Off`]).
    pub fn off() -> Self {
        let (_, status) = watch::channel(ListenerStatus::Off);
        Self {
            status,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Starts listening through `subscription` on the current runtime,
    /// publishing what is heard on `bus`, until the task is stopped.
    pub fn spawn<S: Subscription>(
        subscription: S,
        settings: ListenerSettings,
        bus: Invalidations,
    ) -> (Self, BackgroundTask) {
        let (tx, status) = watch::channel(ListenerStatus::Connecting { failures: 0 });
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        let task = BackgroundTask::start(|stop| {
            tokio::spawn(run(subscription, settings, bus, tx, woken, stop))
        });
        (Self { status, wake }, task)
    }

    /// The status, as a watch whose current value counts as seen.
    pub fn status(&self) -> watch::Receiver<ListenerStatus> {
        let mut status = self.status.clone();
        status.mark_unchanged();
        status
    }

    /// The database answered: a listener waiting out its backoff
    /// reconnects now, not up to the backoff's maximum later.
    pub fn answered(&self) {
        if !self.status.borrow().is_listening() {
            self.wake.notify_one();
        }
    }

    /// Waits until the listener listens, at most `within`: whether it does.
    pub async fn listening_within(&self, within: Duration) -> bool {
        let mut status = self.status.clone();
        let listening = status.wait_for(ListenerStatus::is_listening);
        let listened = tokio::time::timeout(within, listening)
            .await
            .is_ok_and(|r| r.is_ok());
        listened
    }
}

/// The invalidation a notification payload announces: `<key id> <service
/// account id>` (split at the first space: a key id has none, an account
/// may), or a bare key id. `None` for anything else.
fn parse_payload(payload: &str) -> Option<Invalidation> {
    match payload.split_once(' ') {
        None => payload.parse::<KeyId>().ok().map(Invalidation::Key),
        Some((_, "")) => None,
        Some((id, account)) => Some(Invalidation::key_of(id.parse().ok()?, account)),
    }
}

/// The delay before reconnection attempt `failures + 1`: none right after a
/// loss, then exponential from `min` to `max`, with jitter so replicas do not
/// reconnect in lockstep after a database restart.
fn backoff(settings: &ListenerSettings, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = settings
        .backoff_min
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(settings.backoff_max.max(settings.backoff_min));
    // Between half and all of `exp`.
    let jitter = getrandom::u32().unwrap_or(0) as f64 / u32::MAX as f64;
    exp.mul_f64(0.5 + 0.5 * jitter)
}

/// Resolves once shutdown is asked for, or the store is dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender (the store) is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves once the database answers a probe: probes every `every`, the
/// first time after `every`.
async fn reachable<S: Subscription>(subscription: &S, settings: &ListenerSettings) {
    let mut tick = tokio::time::interval(settings.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        if let Ok(true) = tokio::time::timeout(settings.timeout, subscription.probe()).await {
            return;
        }
    }
}

/// Why a session ended.
enum Ended {
    Lost(BoxError),
    HealthCheck(BoxError),
    Shutdown,
}

/// Publishes what `session` hears until it ends.
async fn serve<C: Session>(
    session: &mut C,
    settings: &ListenerSettings,
    bus: &Invalidations,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut health = tokio::time::interval(settings.health_check_interval);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => return Ended::Shutdown,
            heard = session.next() => match heard {
                Ok(payload) => match parse_payload(&payload) {
                    Some(what) => bus.publish(&what),
                    None => {
                        // Not ours to interpret: be safe.
                        tracing::warn!("tower-api-key: notification payload is not a key id; invalidating every key");
                        bus.publish(&Invalidation::All);
                    }
                },
                Err(e) => return Ended::Lost(e),
            },
            _ = health.tick() => {
                // A check that does not answer must not hold up a shutdown.
                let checked = tokio::select! {
                    biased;
                    _ = stopped(stop) => return Ended::Shutdown,
                    checked = tokio::time::timeout(settings.timeout, session.check()) => checked,
                };
                match checked {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::HealthCheck(e),
                    Err(_) => return Ended::HealthCheck(
                        format!("no answer within {:?}", settings.timeout).into(),
                    ),
                }
            }
        }
    }
}

/// The listener task: runs until `stop`.
async fn run<S: Subscription>(
    subscription: S,
    settings: ListenerSettings,
    bus: Invalidations,
    status: watch::Sender<ListenerStatus>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = 0u64;
    let mut failures = 0u32;
    loop {
        status.send_replace(ListenerStatus::Connecting { failures });
        let delay = backoff(&settings, failures);
        if !delay.is_zero() {
            // The backoff spares a database that is down; once it answers
            // again, waiting longer only leaves revocations unheard.
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(delay) => {}
                _ = wake.notified() => {}
                _ = reachable(&subscription, &settings) => {}
            }
        }
        let listened = tokio::select! {
            _ = stopped(&mut stop) => break,
            listened = tokio::time::timeout(settings.timeout, subscription.listen()) => listened,
        };
        let mut session = match listened {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "tower-api-key: LISTEN connection failed");
                continue;
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                tracing::warn!(failures, "tower-api-key: LISTEN connection timed out");
                continue;
            }
        };
        failures = 0;
        connections += 1;
        // Listening: whatever changed before now and was not announced to
        // us is covered by re-verifying everything.
        bus.publish(&Invalidation::All);
        status.send_replace(ListenerStatus::Listening {
            backend_pid: session.backend_pid(),
            connections,
        });
        if connections > 1 {
            tracing::info!("tower-api-key: LISTEN connection restored; cache flushed");
        }
        match serve(&mut session, &settings, &bus, &mut stop).await {
            Ended::Shutdown => break,
            Ended::Lost(e) => tracing::warn!(
                error = %e,
                "tower-api-key: LISTEN connection lost; reconnecting"
            ),
            Ended::HealthCheck(e) => tracing::warn!(
                error = %e,
                "tower-api-key: LISTEN connection failed its health check; reconnecting"
            ),
        }
        // Dropping the session closes the connection.
    }
    status.send_replace(ListenerStatus::Stopped);
}

/// Writes, inside the `impl` of a backend's builder (which keeps a
/// [`ListenerSettings`] in its field `listener`), the setters of its
/// listener: `reconnect_backoff`, `reconnect_probe_interval` and
/// `health_check_interval`.
#[macro_export]
macro_rules! listener_setters {
    () => {
        /// Delays between the listener's reconnection attempts: the first
        /// attempt after a loss is immediate, the next ones wait from `min`,
        /// doubling up to `max`, with jitter (default 100 ms to 5 s). A delay
        /// ends early once the database answers the pool again (see
        /// [`reconnect_probe_interval`](Self::reconnect_probe_interval)).
        pub fn reconnect_backoff(
            mut self,
            min: ::std::time::Duration,
            max: ::std::time::Duration,
        ) -> Self {
            self.listener.backoff_min = min;
            self.listener.backoff_max = max.max(min);
            self
        }

        /// While the listener is not listening, how often it checks, with a
        /// query on a pooled connection, whether the database answers again
        /// (default 250 ms, at least 10 ms). When it does, the listener
        /// reconnects at once instead of waiting out its backoff; a store
        /// call that reaches the database wakes it at once as well. After a
        /// database restart the listener therefore listens again (and
        /// flushes the cache) within this interval plus one connection
        /// attempt.
        pub fn reconnect_probe_interval(mut self, every: ::std::time::Duration) -> Self {
            self.listener.probe_interval = every.max(::std::time::Duration::from_millis(10));
            self
        }

        /// How often the listener checks that its connection still answers
        /// (default 10 s, at least 10 ms). A connection closed by the server
        /// is noticed at once; this finds the ones that died silently.
        pub fn health_check_interval(mut self, every: ::std::time::Duration) -> Self {
            self.listener.health_check_interval = every.max(::std::time::Duration::from_millis(10));
            self
        }
    };
}

#[cfg(test)]
mod tests;
