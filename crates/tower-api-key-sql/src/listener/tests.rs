use super::*;

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
    let c = ListenerSettings::default();
    assert_eq!(backoff(&c, 0), Duration::ZERO);
    let first = backoff(&c, 1);
    assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
    let third = backoff(&c, 3);
    assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
    for failures in [10, 31, 1000, u32::MAX] {
        assert!(backoff(&c, failures) <= Duration::from_secs(5));
    }
}

// The loop, driven by a fake subscription on paused time: each test decides
// when a listen attempt succeeds or fails, what a session hears, when it is
// lost, how its health checks answer and what probes return. Waits are
// bounded by a virtual day, so a loop that never does what a test waits for
// fails the test instead of hanging it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower_api_key::InvalidationListener;

/// How long (virtual time) a test waits for what it expects.
const PATIENCE: Duration = Duration::from_secs(24 * 3600);

/// Tokio's timers have a resolution of a millisecond: a sleep may end up to
/// that much after its deadline.
const TICK: Duration = Duration::from_millis(1);

/// `what` resolves within [`PATIENCE`]; panics naming `expected` otherwise.
async fn soon<T>(expected: &str, what: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, what).await {
        Ok(value) => value,
        Err(_) => panic!("{expected}: nothing within {PATIENCE:?} (virtual time)"),
    }
}

/// Settings whose delays are easy to tell apart; health checks only where a
/// test shortens their interval.
fn settings() -> ListenerSettings {
    ListenerSettings {
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(4),
        health_check_interval: Duration::from_secs(1_000_000),
        probe_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    }
}

/// Settings with a backoff so long that any reconnection before it is due
/// to something else than the backoff ending.
fn long_backoff() -> ListenerSettings {
    ListenerSettings {
        backoff_min: Duration::from_secs(3600),
        backoff_max: Duration::from_secs(3600),
        ..settings()
    }
}

/// A subscription whose `listen` asks the test ([`Attempt`]).
struct FakeSubscription {
    attempts: mpsc::UnboundedSender<Attempt>,
    probes: mpsc::UnboundedSender<()>,
    probe_answers: Arc<AtomicBool>,
}

#[async_trait]
impl Subscription for FakeSubscription {
    type Session = FakeSession;

    async fn listen(&self) -> Result<FakeSession, BoxError> {
        let (reply, answer) = oneshot::channel();
        let attempt = Attempt {
            at: Instant::now(),
            reply,
        };
        self.attempts
            .send(attempt)
            .map_err(|_| "the test is gone")?;
        answer
            .await
            .unwrap_or_else(|_| Err("the test dropped the attempt".into()))
    }

    async fn probe(&self) -> bool {
        let _ = self.probes.send(());
        self.probe_answers.load(Ordering::SeqCst)
    }
}

/// One call of `listen`, for the test to answer (or, held, to hang).
struct Attempt {
    /// When `listen` was called.
    at: Instant,
    reply: oneshot::Sender<Result<FakeSession, BoxError>>,
}

impl Attempt {
    /// `listen` fails.
    fn fail(self) {
        let _ = self.reply.send(Err("connection refused".into()));
    }

    /// `listen` returns a session whose health checks pass without asking.
    fn succeed(self, backend_pid: i32) -> Remote {
        self.open(backend_pid, false)
    }

    /// `listen` returns a session whose health checks the test answers
    /// ([`Remote::checks`]).
    fn succeed_checked(self, backend_pid: i32) -> Remote {
        self.open(backend_pid, true)
    }

    fn open(self, backend_pid: i32, checked: bool) -> Remote {
        let (payloads, heard) = mpsc::unbounded_channel();
        let (ask, checks) = mpsc::unbounded_channel();
        let (alive, closed) = oneshot::channel();
        let session = FakeSession {
            backend_pid,
            heard,
            checks: checked.then_some(ask),
            _alive: alive,
        };
        assert!(
            self.reply.send(Ok(session)).is_ok(),
            "the listener gave up on this attempt"
        );
        Remote {
            payloads,
            checks,
            closed,
        }
    }
}

/// A health check waiting for the test's answer.
type Check = oneshot::Sender<Result<(), BoxError>>;

/// A listening connection as the test sees it.
struct FakeSession {
    backend_pid: i32,
    heard: mpsc::UnboundedReceiver<Result<String, BoxError>>,
    checks: Option<mpsc::UnboundedSender<Check>>,
    /// Dropped with the session: [`Remote::closed`] tells.
    _alive: oneshot::Sender<()>,
}

#[async_trait]
impl Session for FakeSession {
    fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    async fn next(&mut self) -> Result<String, BoxError> {
        // `recv` is cancel-safe, as `next` must be.
        match self.heard.recv().await {
            Some(heard) => heard,
            None => Err("the server closed the connection".into()),
        }
    }

    async fn check(&mut self) -> Result<(), BoxError> {
        let Some(checks) = &self.checks else {
            return Ok(());
        };
        let (answer, answered) = oneshot::channel();
        checks.send(answer).map_err(|_| "the test is gone")?;
        answered
            .await
            .unwrap_or_else(|_| Err("the test dropped the check".into()))
    }
}

/// The test's end of a session.
struct Remote {
    payloads: mpsc::UnboundedSender<Result<String, BoxError>>,
    /// The session's health checks, for the test to answer (or, held, to
    /// leave unanswered).
    checks: mpsc::UnboundedReceiver<Check>,
    /// Closed once the listener dropped the session.
    closed: oneshot::Receiver<()>,
}

impl Remote {
    /// The session hears a notification with `payload`.
    fn notify(&self, payload: &str) {
        self.payloads
            .send(Ok(payload.to_owned()))
            .expect("the session is gone");
    }

    /// The connection is lost: `next` fails.
    fn lose(&self) {
        self.payloads
            .send(Err("connection reset".into()))
            .expect("the session is gone");
    }

    /// The next health check of the session.
    async fn check(&mut self) -> Check {
        soon("a health check", self.checks.recv())
            .await
            .expect("the session is gone")
    }

    /// Waits until the listener dropped the session.
    async fn closed(&mut self) {
        let _ = soon("the session to be dropped", &mut self.closed).await;
    }

    /// Whether the listener still holds the session.
    fn is_open(&mut self) -> bool {
        matches!(
            self.closed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

/// Forwards what the bus publishes to the test.
struct Recorder(mpsc::UnboundedSender<Invalidation>);

impl InvalidationListener for Recorder {
    fn invalidate(&self, what: &Invalidation) {
        let _ = self.0.send(what.clone());
    }
}

/// A listener over a fake subscription, and the test's ends of it.
struct Harness {
    listener: Listener,
    task: BackgroundTask,
    attempts: mpsc::UnboundedReceiver<Attempt>,
    probes: mpsc::UnboundedReceiver<()>,
    probe_answers: Arc<AtomicBool>,
    heard: mpsc::UnboundedReceiver<Invalidation>,
    /// The bus holds its subscribers weakly.
    _recorder: Arc<Recorder>,
}

impl Harness {
    fn start(settings: ListenerSettings) -> Self {
        let (attempt, attempts) = mpsc::unbounded_channel();
        let (probe, probes) = mpsc::unbounded_channel();
        let probe_answers = Arc::new(AtomicBool::new(false));
        let (record, heard) = mpsc::unbounded_channel();
        let recorder = Arc::new(Recorder(record));
        let bus = Invalidations::new();
        bus.subscribe(recorder.clone());
        let subscription = FakeSubscription {
            attempts: attempt,
            probes: probe,
            probe_answers: probe_answers.clone(),
        };
        let (listener, task) = Listener::spawn(subscription, settings, bus);
        Self {
            listener,
            task,
            attempts,
            probes,
            probe_answers,
            heard,
            _recorder: recorder,
        }
    }

    /// The next call of `listen`.
    async fn attempt(&mut self) -> Attempt {
        soon("a listen attempt", self.attempts.recv())
            .await
            .expect("the listener is gone")
    }

    /// The next call of `probe`.
    async fn probe(&mut self) {
        soon("a probe", self.probes.recv())
            .await
            .expect("the listener is gone");
    }

    /// Listens: the next attempt succeeds with `backend_pid`, and the status
    /// becomes `Listening` with `connections`.
    async fn listens(&mut self, backend_pid: i32, connections: u64) -> Remote {
        let remote = self.attempt().await.succeed(backend_pid);
        self.status_becomes(ListenerStatus::Listening {
            backend_pid,
            connections,
        })
        .await;
        remote
    }

    /// Listens again: `attempt` succeeds with backend pid 2, the status
    /// becomes the second connection, and everything is invalidated.
    async fn reconnected(&mut self, attempt: Attempt) -> Remote {
        let remote = attempt.succeed(2);
        self.status_becomes(ListenerStatus::Listening {
            backend_pid: 2,
            connections: 2,
        })
        .await;
        assert_eq!(self.heard().await, Invalidation::All);
        remote
    }

    /// The status, now.
    fn status(&self) -> ListenerStatus {
        self.listener.status().borrow().clone()
    }

    /// Waits until the status is `expected`.
    async fn status_becomes(&self, expected: ListenerStatus) {
        let mut status = self.listener.status();
        let description = format!("status {expected:?}");
        soon(&description, status.wait_for(|s| *s == expected))
            .await
            .unwrap_or_else(|_| panic!("the listener ended before {description}"));
    }

    /// The next invalidation published.
    async fn heard(&mut self) -> Invalidation {
        soon("an invalidation", self.heard.recv())
            .await
            .expect("the bus is gone")
    }

    /// Nothing was published that the test has not taken.
    fn heard_nothing(&mut self) {
        if let Ok(what) = self.heard.try_recv() {
            panic!("unexpected invalidation {what:?}");
        }
    }
}

fn key(n: u8) -> KeyId {
    format!("{n:016x}").parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn once_listening_it_invalidates_everything_then_what_each_payload_names() {
    let mut h = Harness::start(settings());
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 0 });
    let attempt = h.attempt().await;
    // Nothing is published before `listen` returns.
    h.heard_nothing();
    let remote = attempt.succeed(42);
    h.status_becomes(ListenerStatus::Listening {
        backend_pid: 42,
        connections: 1,
    })
    .await;
    // Published before the status says listening.
    assert_eq!(h.heard.try_recv().ok(), Some(Invalidation::All));
    h.heard_nothing();

    remote.notify(&format!("{} sa-1", key(1)));
    assert_eq!(h.heard().await, Invalidation::key_of(key(1), "sa-1"));
    remote.notify(&format!("{} sa 2", key(2)));
    assert_eq!(h.heard().await, Invalidation::key_of(key(2), "sa 2"));
    remote.notify(key(3).as_str());
    assert_eq!(h.heard().await, Invalidation::Key(key(3)));
    // Not a key id: everything.
    remote.notify("not-a-key-id sa-1");
    assert_eq!(h.heard().await, Invalidation::All);
    remote.notify(&format!("{} sa-4", key(4)));
    assert_eq!(h.heard().await, Invalidation::key_of(key(4), "sa-4"));
    h.heard_nothing();
    assert_eq!(
        h.status(),
        ListenerStatus::Listening {
            backend_pid: 42,
            connections: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_reconnects_at_once_and_invalidates_everything_again() {
    let mut h = Harness::start(long_backoff());
    let mut first = h.listens(1, 1).await;
    assert_eq!(h.heard().await, Invalidation::All);

    let lost = Instant::now();
    first.lose();
    let attempt = h.attempt().await;
    // No backoff before the first attempt after a loss.
    assert_eq!(attempt.at, lost);
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 0 });
    first.closed().await;
    h.heard_nothing();

    let _second = h.reconnected(attempt).await;
    h.heard_nothing();
}

#[tokio::test(start_paused = true)]
async fn failures_start_again_from_zero_once_listening() {
    let s = settings();
    let mut h = Harness::start(s.clone());
    h.attempt().await.fail();
    h.attempt().await.fail();
    let remote = h.listens(1, 1).await;
    let lost = Instant::now();
    remote.lose();
    let attempt = h.attempt().await;
    assert_eq!(attempt.at, lost, "a backoff left over from before");
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 0 });
    attempt.fail();
    // The first backoff again, not the third.
    let failed = Instant::now();
    let attempt = h.attempt().await;
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 1 });
    let waited = attempt.at - failed;
    assert!(
        waited >= s.backoff_min / 2 && waited <= s.backoff_min + TICK,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_count_up_and_back_off_exponentially_up_to_the_maximum() {
    let s = settings();
    let mut h = Harness::start(s.clone());
    let start = Instant::now();
    let attempt = h.attempt().await;
    // The first attempt is immediate.
    assert_eq!(attempt.at, start);
    let mut failed = Instant::now();
    attempt.fail();
    for failures in 1..=5u32 {
        let attempt = h.attempt().await;
        assert_eq!(h.status(), ListenerStatus::Connecting { failures });
        let full = (s.backoff_min * 2u32.pow(failures - 1)).min(s.backoff_max);
        let waited = attempt.at - failed;
        assert!(
            waited >= full / 2 && waited <= full + TICK,
            "attempt {}: waited {waited:?}, expected {:?} to {full:?}",
            failures + 1,
            full / 2
        );
        assert!(waited >= s.backoff_min / 2 && waited <= s.backoff_max + TICK);
        failed = Instant::now();
        attempt.fail();
    }
    h.status_becomes(ListenerStatus::Connecting { failures: 6 })
        .await;
    // Probes that the database does not answer change nothing.
    h.probe().await;
}

#[tokio::test(start_paused = true)]
async fn answered_cuts_a_backoff_short() {
    let s = long_backoff();
    let mut h = Harness::start(s.clone());
    h.attempt().await.fail();
    h.status_becomes(ListenerStatus::Connecting { failures: 1 })
        .await;
    // Probing: the loop is waiting out its backoff.
    h.probe().await;
    let answered = Instant::now();
    h.listener.answered();
    let attempt = h.attempt().await;
    assert_eq!(attempt.at, answered, "the backoff went on");
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 1 });
    let _remote = attempt.succeed(1);
    h.status_becomes(ListenerStatus::Listening {
        backend_pid: 1,
        connections: 1,
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn answered_while_listening_leaves_no_wake_up_for_a_later_backoff() {
    let s = long_backoff();
    let mut h = Harness::start(s.clone());
    let remote = h.listens(1, 1).await;
    h.listener.answered();
    remote.lose();
    h.attempt().await.fail();
    let failed = Instant::now();
    let attempt = h.attempt().await;
    assert!(
        attempt.at - failed >= s.backoff_min / 2,
        "a backoff cut short after {:?}",
        attempt.at - failed
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_answers_cuts_a_backoff_short() {
    let s = long_backoff();
    let mut h = Harness::start(s.clone());
    h.attempt().await.fail();
    let failed = Instant::now();
    // Not answering at first: the backoff goes on.
    h.probe().await;
    h.probe().await;
    assert_eq!(Instant::now() - failed, 2 * s.probe_interval);
    assert!(h.attempts.try_recv().is_err(), "reconnected unprobed");
    h.probe_answers.store(true, Ordering::SeqCst);
    let attempt = h.attempt().await;
    // At the next probe.
    assert_eq!(attempt.at - failed, 3 * s.probe_interval);
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 1 });
}

#[tokio::test(start_paused = true)]
async fn a_failed_health_check_ends_the_session_and_reconnects() {
    let s = ListenerSettings {
        health_check_interval: Duration::from_secs(10),
        ..long_backoff()
    };
    let mut h = Harness::start(s.clone());
    let mut first = h.attempt().await.succeed_checked(1);
    let listening = Instant::now();
    assert_eq!(h.heard().await, Invalidation::All);

    // A check that passes keeps the session.
    let check = first.check().await;
    assert_eq!(Instant::now() - listening, s.health_check_interval);
    check.send(Ok(())).unwrap();
    let check = first.check().await;
    assert_eq!(Instant::now() - listening, 2 * s.health_check_interval);
    assert!(first.is_open());
    assert_eq!(
        h.status(),
        ListenerStatus::Listening {
            backend_pid: 1,
            connections: 1
        }
    );
    h.heard_nothing();

    // One that fails ends it.
    let failed = Instant::now();
    check.send(Err("connection reset".into())).unwrap();
    let attempt = h.attempt().await;
    assert_eq!(attempt.at, failed);
    first.closed().await;
    let _second = h.reconnected(attempt).await;
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_health_check_ends_the_session_after_the_timeout() {
    let s = ListenerSettings {
        health_check_interval: Duration::from_secs(10),
        ..long_backoff()
    };
    let mut h = Harness::start(s.clone());
    let mut first = h.attempt().await.succeed_checked(1);
    assert_eq!(h.heard().await, Invalidation::All);

    let _unanswered = first.check().await;
    let asked = Instant::now();
    let attempt = h.attempt().await;
    assert_eq!(attempt.at - asked, s.timeout);
    first.closed().await;
    let _second = h.reconnected(attempt).await;
}

#[tokio::test(start_paused = true)]
async fn a_listen_that_hangs_past_the_timeout_counts_as_a_failure() {
    let s = settings();
    let mut h = Harness::start(s.clone());
    let hanging = h.attempt().await;
    h.status_becomes(ListenerStatus::Connecting { failures: 1 })
        .await;
    assert_eq!(Instant::now() - hanging.at, s.timeout);
    // The listener gave up on it.
    assert!(hanging.reply.is_closed());
    // And backs off before the next attempt.
    let failed = Instant::now();
    let attempt = h.attempt().await;
    assert!(attempt.at - failed >= s.backoff_min / 2);
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 1 });
    let _remote = attempt.succeed(7);
    h.status_becomes(ListenerStatus::Listening {
        backend_pid: 7,
        connections: 1,
    })
    .await;
}

/// After `task.stop()`: the status is `Stopped`, no time passed, and the
/// subscription is gone (no attempt after the stop).
async fn stops_at_once(mut h: Harness) {
    let asked = Instant::now();
    soon("the task to stop", h.task.stop()).await;
    assert_eq!(Instant::now(), asked, "stopping waited");
    assert_eq!(h.status(), ListenerStatus::Stopped);
    assert!(
        matches!(
            h.attempts.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ),
        "the listener went on"
    );
    assert!(!h.listener.listening_within(PATIENCE).await);
}

#[tokio::test(start_paused = true)]
async fn stopping_while_backing_off_ends_in_stopped() {
    let mut h = Harness::start(long_backoff());
    h.attempt().await.fail();
    h.probe().await;
    assert_eq!(h.status(), ListenerStatus::Connecting { failures: 1 });
    stops_at_once(h).await;
}

#[tokio::test(start_paused = true)]
async fn stopping_while_connecting_ends_in_stopped() {
    let mut h = Harness::start(settings());
    let hanging = h.attempt().await;
    stops_at_once(h).await;
    assert!(hanging.reply.is_closed());
}

#[tokio::test(start_paused = true)]
async fn stopping_while_listening_ends_in_stopped_and_closes_the_session() {
    let mut h = Harness::start(settings());
    let mut remote = h.listens(1, 1).await;
    stops_at_once(h).await;
    assert!(!remote.is_open());
}

#[tokio::test(start_paused = true)]
async fn stopping_during_an_unanswered_health_check_ends_in_stopped() {
    let mut h = Harness::start(ListenerSettings {
        health_check_interval: Duration::from_secs(10),
        ..settings()
    });
    let mut remote = h.attempt().await.succeed_checked(1);
    let unanswered = remote.check().await;
    stops_at_once(h).await;
    assert!(unanswered.is_closed());
    assert!(!remote.is_open());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_task_stops_the_listener() {
    for listening in [false, true] {
        let mut h = Harness::start(long_backoff());
        let mut remote = None;
        if listening {
            remote = Some(h.listens(1, 1).await);
        } else {
            h.attempt().await.fail();
            h.probe().await;
        }
        let dropped = Instant::now();
        let Harness {
            listener,
            task,
            mut attempts,
            ..
        } = h;
        drop(task);
        let mut status = listener.status();
        soon(
            "Stopped",
            status.wait_for(|s| *s == ListenerStatus::Stopped),
        )
        .await
        .unwrap();
        assert_eq!(Instant::now(), dropped, "listening: {listening}");
        assert!(attempts.try_recv().is_err(), "listening: {listening}");
        if let Some(remote) = &mut remote {
            remote.closed().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn off_reports_off_and_is_never_listening() {
    let off = Listener::off();
    assert_eq!(*off.status().borrow(), ListenerStatus::Off);
    assert!(!off.status().borrow().is_listening());
    let asked = Instant::now();
    assert!(!off.listening_within(PATIENCE).await);
    assert_eq!(Instant::now(), asked, "waited for a listener that is off");
    // Nothing to wake.
    off.answered();
}

#[tokio::test(start_paused = true)]
async fn listening_within_is_true_once_listening_and_false_when_the_time_runs_out() {
    let s = settings();
    let mut h = Harness::start(s.clone());
    // Not listening in time.
    let asked = Instant::now();
    let within = h.listener.listening_within(Duration::from_millis(500));
    assert!(!soon("listening_within to give up", within).await);
    assert_eq!(Instant::now() - asked, Duration::from_millis(500));

    let listener = h.listener.clone();
    let waiting = tokio::spawn(async move { listener.listening_within(PATIENCE).await });
    let attempt = h.attempt().await;
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    let asked = Instant::now();
    let _remote = attempt.succeed(1);
    assert!(soon("listening_within", waiting).await.unwrap());
    assert_eq!(Instant::now(), asked);
    // Already listening: at once.
    assert!(h.listener.listening_within(Duration::ZERO).await);
}
