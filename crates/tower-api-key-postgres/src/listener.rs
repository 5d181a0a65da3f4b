//! The LISTEN connection: turns notifications from other replicas into
//! [`Invalidation`]s on the store's bus, and reconnects when it is lost.
//!
//! Each store has one such connection of its own, outside the pool. A
//! notification's payload is `<key id> <service account id>`, or a bare key
//! id (older versions, or an account too long for a payload); anything else
//! invalidates everything.
//! After every (re)connection, once `LISTEN` is in place, the listener
//! publishes [`Invalidation::All`]: notifications sent while it was not
//! listening are lost, so every cached key is re-verified. Correctness never
//! depends on a notification arriving; notifications only make revocations
//! fast.
//!
//! A connection that dies quietly (a network partition, a host that vanished)
//! is found by a periodic health-check query; a connection closed by the
//! server (restart, `pg_terminate_backend`) is noticed at once.
//!
//! Reconnection attempts back off exponentially, but the backoff never
//! outlasts the database: while the listener is not listening it probes the
//! database through the store's pool every `probe_interval` (250 ms by
//! default), and any store call that reaches the database wakes it too. So
//! once the database answers again, the listener listens again within the
//! probe interval plus one connection attempt (at once after a successful
//! store call), and flushes the cache as it does after every reconnection.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Notification, Socket};

use tower_api_key::KeyId;
use tower_api_key::{Invalidation, Invalidations};

/// The state of a store's LISTEN connection, from
/// [`PgKeyStore::listener_status`](super::PgKeyStore::listener_status).
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
    /// Listening on the channel; every cached key was invalidated after
    /// `LISTEN` took effect.
    Listening {
        /// The server process of the LISTEN connection
        /// (`pg_backend_pid()`), for operators and tests.
        backend_pid: i32,
        /// How many times the listener has connected since the store
        /// started: 1 at first, 2 after the first reconnection, ...
        connections: u64,
    },
    /// The store was shut down (or dropped); the listener is gone.
    Stopped,
    /// The store does not listen: its [`ChangeFeed`](super::ChangeFeed) is
    /// `Poll`.
    Off,
}

impl ListenerStatus {
    /// Whether the listener is listening.
    pub fn is_listening(&self) -> bool {
        matches!(self, Self::Listening { .. })
    }
}

/// Settings of the listener task.
#[derive(Clone)]
pub(super) struct ListenerConfig {
    pub(super) pg: Config,
    pub(super) channel: String,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) health_check_interval: Duration,
    pub(super) probe_interval: Duration,
    pub(super) timeout: Duration,
}

/// What cuts a reconnection backoff short: the store's pool, to probe the
/// database with, and a wake-up the store sends when one of its own calls
/// reached the database while the listener was not listening.
#[derive(Clone)]
pub(super) struct Reachability {
    pub(super) pool: Pool,
    pub(super) wake: Arc<Notify>,
}

/// Aborts the task on drop, so a connection driver never outlives its session.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One LISTEN connection.
struct Session {
    client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
    driver: AbortOnDrop<Option<tokio_postgres::Error>>,
    backend_pid: i32,
}

/// Why a session ended.
enum Ended {
    Connection(Option<tokio_postgres::Error>),
    HealthCheck(String),
    Shutdown,
}

async fn open<T>(config: &ListenerConfig, tls: T) -> Result<Session, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.pg.connect(tls).await?;
    let (tx, notifications) = mpsc::unbounded_channel();
    // `poll_message` both drives the connection and yields notifications.
    let driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return None;
                    }
                }
                Some(Ok(_notice)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    }));
    // The channel name is validated to [a-z_][a-z0-9_]*, so it needs no quoting.
    client
        .batch_execute(&format!("LISTEN {}", config.channel))
        .await?;
    let backend_pid: i32 = client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    Ok(Session {
        client,
        notifications,
        driver,
        backend_pid,
    })
}

impl Session {
    async fn serve(
        &mut self,
        bus: &Invalidations,
        config: &ListenerConfig,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut health = tokio::time::interval(config.health_check_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                biased;
                _ = stopped(shutdown) => return Ended::Shutdown,
                received = self.notifications.recv() => match received {
                    Some(n) => match parse_payload(n.payload()) {
                        Some(what) => bus.publish(&what),
                        None => {
                            // Not ours to interpret: be safe.
                            tracing::warn!(
                                channel = n.channel(),
                                "tower-api-key: notification payload is not a key id; invalidating every key"
                            );
                            bus.publish(&Invalidation::All);
                        }
                    },
                    None => {
                        let reason = (&mut self.driver.0).await.unwrap_or(None);
                        return Ended::Connection(reason);
                    }
                },
                _ = health.tick() => {
                    match tokio::time::timeout(config.timeout, self.client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::HealthCheck(e.to_string()),
                        Err(_) => return Ended::HealthCheck(format!("no answer within {:?}", config.timeout)),
                    }
                }
            }
        }
    }
}

/// The invalidation a notification payload announces: `<key id> <service
/// account id>` (split at the first space: a key id has none, an account may),
/// or a bare key id. `None` for anything else.
fn parse_payload(payload: &str) -> Option<Invalidation> {
    match payload.split_once(' ') {
        None => payload.parse::<KeyId>().ok().map(Invalidation::Key),
        Some((_, "")) => None,
        Some((id, account)) => Some(Invalidation::key_of(id.parse().ok()?, account)),
    }
}

/// Resolves once shutdown is asked for, or the store is dropped.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender (the store) is gone: stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The delay before reconnection attempt `failures + 1`: none right after a
/// loss, then exponential from `min` to `max`, with jitter so replicas do not
/// reconnect in lockstep after a database restart.
fn backoff(config: &ListenerConfig, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(config.backoff_max);
    // Between half and all of `exp`.
    let jitter = getrandom::u32().unwrap_or(0) as f64 / u32::MAX as f64;
    exp.mul_f64(0.5 + 0.5 * jitter)
}

/// Resolves once a pooled connection answers a query: probes every `every`,
/// the first time after `every`.
async fn reachable(pool: &Pool, every: Duration, timeout: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let probe = tokio::time::timeout(timeout, async {
            let client = pool.get().await.ok()?;
            client.simple_query("").await.ok()
        });
        if let Ok(Some(_)) = probe.await {
            return;
        }
    }
}

/// The listener task: runs until shutdown.
pub(super) async fn run<T>(
    config: ListenerConfig,
    reach: Reachability,
    tls: T,
    bus: Invalidations,
    status: watch::Sender<ListenerStatus>,
    mut shutdown: watch::Receiver<bool>,
) where
    T: MakeTlsConnect<Socket> + Clone,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut connections = 0u64;
    let mut failures = 0u32;
    loop {
        status.send_replace(ListenerStatus::Connecting { failures });
        let delay = backoff(&config, failures);
        if !delay.is_zero() {
            // The backoff spares a database that is down; once it answers
            // the pool again, waiting longer only leaves revocations unheard.
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                _ = tokio::time::sleep(delay) => {}
                _ = reach.wake.notified() => {}
                _ = reachable(&reach.pool, config.probe_interval, config.timeout) => {}
            }
        }
        let opened = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            opened = tokio::time::timeout(config.timeout, open(&config, tls.clone())) => opened,
        };
        let mut session = match opened {
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
        // LISTEN is in place: whatever changed before now and was not
        // announced to us is covered by re-verifying everything.
        bus.publish(&Invalidation::All);
        status.send_replace(ListenerStatus::Listening {
            backend_pid: session.backend_pid,
            connections,
        });
        if connections > 1 {
            tracing::info!(
                channel = %config.channel,
                "tower-api-key: LISTEN connection restored; cache flushed"
            );
        }
        match session.serve(&bus, &config, &mut shutdown).await {
            Ended::Shutdown => break,
            Ended::Connection(reason) => tracing::warn!(
                error = reason.as_ref().map(tracing::field::display),
                "tower-api-key: LISTEN connection lost; reconnecting"
            ),
            Ended::HealthCheck(why) => tracing::warn!(
                error = %why,
                "tower-api-key: LISTEN connection failed its health check; reconnecting"
            ),
        }
        // Dropping the session closes the connection and aborts its driver.
    }
    status.send_replace(ListenerStatus::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ListenerConfig {
        ListenerConfig {
            pg: Config::new(),
            channel: "c".into(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(10),
            probe_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_payload_names_a_key_and_its_account_or_just_the_key() {
        let id: KeyId = "0123456789abcdef".parse().unwrap();
        assert_eq!(
            parse_payload("0123456789abcdef sa-1"),
            Some(Invalidation::key_of(id, "sa-1"))
        );
        // The account is everything after the first space.
        assert_eq!(
            parse_payload("0123456789abcdef sa 1 "),
            Some(Invalidation::key_of(id, "sa 1 "))
        );
        // What older versions send.
        assert_eq!(
            parse_payload("0123456789abcdef"),
            Some(Invalidation::Key(id))
        );
        for garbage in [
            "",
            " ",
            "0123456789abcdef ",
            " sa-1",
            "not-a-key-id sa-1",
            "0123456789abcdef\tsa-1",
        ] {
            assert_eq!(parse_payload(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = config();
        assert_eq!(backoff(&c, 0), Duration::ZERO);
        let first = backoff(&c, 1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let third = backoff(&c, 3);
        assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
        for failures in [10, 31, 1000, u32::MAX] {
            assert!(backoff(&c, failures) <= Duration::from_secs(5));
        }
    }
}
