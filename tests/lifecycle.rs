//! The key lifecycle task (issue 26) on the memory store and a manual clock:
//! expiry warnings and expiries sent once per key and window, across runs,
//! restarts and racing replicas; retirement of unused keys on the announced
//! date, cancelled by a use, never for an opted-out key; a panicking hook
//! contained; the spawned task stopping with its handle.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tower_api_key::clock::Clock;
use tower_api_key::event::KeyEvent;
use tower_api_key::lifecycle::{Lifecycle, LifecycleBuilder};
use tower_api_key::store::{KeyUpdate, LifecycleStore as _, NewKey, NoticeKind, StoreError};
use tower_api_key::MemoryStore;
use tower_api_key::{KeyId, KeyStore, Reason};

use common::hooked::{Call, Hook, Hooked};
use common::http::{app, assert_unauthorized, whoami_with_key, Fixture};
use common::logs::Logs;

const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// The events a hook got, in order.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<KeyEvent>>>);

impl Events {
    fn hook(&self) -> impl Fn(KeyEvent) + Send + Sync + 'static {
        let events = self.0.clone();
        move |event| events.lock().unwrap().push(event)
    }

    /// Takes the events so far, as (kind, key id).
    fn take(&self) -> Vec<(&'static str, KeyId)> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .map(|e| (e.kind(), e.key().record.key_id))
            .collect()
    }

    fn take_all(&self) -> Vec<KeyEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn lifecycle(fx: &Fixture, events: &Events) -> LifecycleBuilder {
    Lifecycle::builder(fx.store.clone())
        .warn_before(WEEK)
        .on_event(events.hook())
}

/// A key expiring in 6 days is warned about once however often the task
/// runs; a second instance on the same store (a restart: a new lease
/// holder, once the old lease ran out) does not repeat it; it expires once.
#[tokio::test]
async fn expiring_soon_once_across_runs_and_a_restart_then_expired_once() {
    let fx = Fixture::new();
    let soon = fx.expiring_key("sa-a", 6 * DAY).await;
    let later = fx.expiring_key("sa-a", 30 * DAY).await;
    let _forever = fx.key("sa-a", &[]).await;
    let id = soon.record.key_id;
    let events = Events::default();
    let first = lifecycle(&fx, &events).build();

    let report = first.run_once().await.unwrap();
    assert!(report.leased);
    assert_eq!(report.expiring_soon, 1);
    let sent = events.take_all();
    assert_eq!(sent.len(), 1, "{sent:?}");
    match &sent[0] {
        KeyEvent::ExpiringSoon {
            key, expires_at, ..
        } => {
            assert_eq!(key.record.key_id, id);
            assert_eq!(Some(*expires_at), soon.record.expires_at);
        }
        other => panic!("{other:?}"),
    }
    for _ in 0..5 {
        fx.clock.advance(Duration::from_secs(60));
        assert_eq!(first.run_once().await.unwrap().events(), 0);
    }

    // The restart: while the first instance's lease lasts, the new one
    // does nothing; once it ran out, it runs and repeats nothing.
    let restarted = lifecycle(&fx, &events).build();
    assert!(!restarted.run_once().await.unwrap().leased);
    fx.clock.advance(Duration::from_secs(3600));
    let report = restarted.run_once().await.unwrap();
    assert!(report.leased);
    assert_eq!(report.events(), 0);
    assert!(events.take().is_empty());

    // The expiry passes: Expired once, whoever runs.
    fx.clock.advance(6 * DAY);
    assert_eq!(
        restarted.run_once().await.unwrap().expired,
        1,
        "the key expired"
    );
    assert_eq!(events.take(), vec![("expired", id)]);
    assert_eq!(restarted.run_once().await.unwrap().events(), 0);
    fx.clock.advance(Duration::from_secs(3600));
    assert_eq!(first.run_once().await.unwrap().events(), 0);
    assert!(events.take().is_empty());

    // The other key comes into its warning period in turn.
    fx.clock.advance(18 * DAY);
    first.run_once().await.unwrap();
    assert_eq!(events.take(), vec![("expiring_soon", later.record.key_id)]);
}

/// A changed expiry is a new window: warned about again.
#[tokio::test]
async fn a_changed_expiry_is_warned_about_again() {
    let fx = Fixture::new();
    let key = fx.expiring_key("sa-a", 6 * DAY).await;
    let id = key.record.key_id;
    let events = Events::default();
    let task = lifecycle(&fx, &events).build();
    task.run_once().await.unwrap();
    assert_eq!(events.take(), vec![("expiring_soon", id)]);

    let moved = fx.clock.now() + 5 * DAY;
    fx.store
        .update(id, KeyUpdate::default().with_expires_at(Some(moved)), None)
        .await
        .unwrap()
        .unwrap();
    task.run_once().await.unwrap();
    task.run_once().await.unwrap();
    assert_eq!(events.take(), vec![("expiring_soon", id)]);
}

/// Retirement: a key unused for the period less the warning gets
/// `UnusedWarning` with the date; on that date it stops working (401
/// expired through an authenticator on the same store) and `get` shows
/// why; it gets `Retired`, never also `Expired`.
#[tokio::test]
async fn an_unused_key_is_warned_then_retired_on_the_announced_date() {
    let fx = Fixture::new();
    let created = fx.key("sa-a", &[]).await;
    let id = created.record.key_id;
    let secret = created.key.expose_secret();
    let router = app(&fx.auth).router;
    let events = Events::default();
    let task = lifecycle(&fx, &events).retire_unused_after(YEAR).build();

    // Not yet: unused for less than the period less the warning.
    fx.clock.advance(YEAR - WEEK - DAY);
    assert_eq!(task.run_once().await.unwrap().events(), 0);

    fx.clock.advance(2 * DAY);
    let report = task.run_once().await.unwrap();
    assert_eq!(report.unused_warnings, 1);
    let sent = events.take_all();
    let retires_at = match sent.as_slice() {
        [KeyEvent::UnusedWarning {
            key, retires_at, ..
        }] => {
            assert_eq!(key.record.key_id, id);
            *retires_at
        }
        other => panic!("{other:?}"),
    };
    // The warning period ahead, and at least a year after its creation.
    assert_eq!(retires_at, fx.clock.now() + WEEK);
    assert!(retires_at >= created.record.created_at + YEAR);
    assert_eq!(
        common::http::send(&router, whoami_with_key(secret))
            .await
            .status,
        StatusCode::OK
    );

    // The day before: still working, nothing sent.
    fx.clock.set(retires_at - Duration::from_secs(1));
    assert_eq!(task.run_once().await.unwrap().events(), 0);
    assert_eq!(
        common::http::send(&router, whoami_with_key(secret))
            .await
            .status,
        StatusCode::OK
    );

    // The date: retired.
    fx.clock.set(retires_at);
    let report = task.run_once().await.unwrap();
    assert_eq!((report.retired, report.expired), (1, 0));
    assert_eq!(events.take(), vec![("retired", id)]);
    let info = fx.store.get(id).await.unwrap().expect("never deleted");
    assert_eq!(info.record.expires_at, Some(retires_at));
    assert_eq!(
        info.record.retired_unused_since,
        Some(created.record.created_at)
    );
    let reply = common::http::send(&router, whoami_with_key(secret)).await;
    assert_unauthorized(&reply, Reason::Expired);

    // Nothing more: no `Expired` for the retirement, no second `Retired`,
    // and no `ExpiringSoon` for an expiry that is now (expiry is exclusive:
    // the key is refused from that instant on).
    assert_eq!(task.run_once().await.unwrap().events(), 0);
    for _ in 0..3 {
        fx.clock.advance(DAY);
        assert_eq!(task.run_once().await.unwrap().events(), 0);
    }
    assert!(events.take().is_empty());

    // Revived by its owner (no expiry): not retired again for the same
    // spell of disuse.
    let revived = fx
        .store
        .update(id, KeyUpdate::default().with_expires_at(None), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revived.record.retired_unused_since, None);
    for _ in 0..3 {
        fx.clock.advance(DAY);
        assert_eq!(task.run_once().await.unwrap().events(), 0);
    }
    let info = fx.store.get(id).await.unwrap().unwrap();
    assert_eq!(info.record.expires_at, None);
    assert_eq!(
        common::http::send(&router, whoami_with_key(secret))
            .await
            .status,
        StatusCode::OK
    );
}

/// A key that expires before it could be retired gets no retirement
/// warning: its expiry notices cover it.
#[tokio::test]
async fn a_key_expiring_first_gets_no_retirement_warning() {
    let fx = Fixture::new();
    let key = fx.expiring_key("sa-a", YEAR).await;
    let events = Events::default();
    let task = lifecycle(&fx, &events).retire_unused_after(YEAR).build();
    fx.clock.advance(YEAR - WEEK + DAY);
    task.run_once().await.unwrap();
    assert_eq!(events.take(), vec![("expiring_soon", key.record.key_id)]);
}

/// A use between the warning and the date cancels the retirement; a later
/// spell of disuse is a new window, warned about again.
#[tokio::test]
async fn a_use_after_the_warning_cancels_the_retirement() {
    let fx = Fixture::new();
    let created = fx.key("sa-a", &[]).await;
    let id = created.record.key_id;
    let events = Events::default();
    let task = lifecycle(&fx, &events).retire_unused_after(YEAR).build();

    fx.clock.advance(YEAR - WEEK + DAY);
    task.run_once().await.unwrap();
    let retires_at = match events.take_all().as_slice() {
        [KeyEvent::UnusedWarning { retires_at, .. }] => *retires_at,
        other => panic!("{other:?}"),
    };

    fx.clock.advance(DAY);
    let used_at = fx.clock.now();
    fx.store.record_usage(&[(id, used_at)]).await.unwrap();

    fx.clock.set(retires_at + DAY);
    assert_eq!(task.run_once().await.unwrap().events(), 0);
    let info = fx.store.get(id).await.unwrap().unwrap();
    assert_eq!(info.record.expires_at, None);
    assert_eq!(info.record.retired_unused_since, None);
    let router = app(&fx.auth).router;
    let reply = common::http::send(&router, whoami_with_key(created.key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // Unused again since that use: a new warning, with a new date.
    fx.clock.set(used_at + YEAR - WEEK + DAY);
    task.run_once().await.unwrap();
    match events.take_all().as_slice() {
        [KeyEvent::UnusedWarning { retires_at, .. }] => {
            assert_eq!(*retires_at, fx.clock.now() + WEEK);
            assert!(*retires_at >= used_at + YEAR);
        }
        other => panic!("{other:?}"),
    }
}

/// A key created with `retire_when_unused: false` is never warned about
/// nor retired, however long it goes unused.
#[tokio::test]
async fn an_opted_out_key_is_left_alone() {
    let fx = Fixture::new();
    let kept = fx
        .store
        .create(NewKey::new("sa-a").with_retire_when_unused(false))
        .await
        .unwrap();
    let other = fx.key("sa-a", &[]).await;
    let events = Events::default();
    let task = lifecycle(&fx, &events).retire_unused_after(YEAR).build();
    for _ in 0..4 {
        fx.clock.advance(YEAR / 2);
        task.run_once().await.unwrap();
    }
    let sent = events.take();
    assert!(
        sent.iter().all(|(_, id)| *id != kept.record.key_id),
        "{sent:?}"
    );
    // The policy is on: the key that did not opt out was retired.
    assert!(sent.contains(&("retired", other.record.key_id)), "{sent:?}");
    let info = fx.store.get(kept.record.key_id).await.unwrap().unwrap();
    assert_eq!(info.record.expires_at, None);
    assert_eq!(info.record.retired_unused_since, None);
}

/// Two instances on one store, racing `run_once` round after round (the
/// lease changing hands as it runs out), send each notice once between
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_send_each_notice_once() {
    let fx = Fixture::new();
    let mut keys = Vec::new();
    for i in 0..40u32 {
        let created = fx
            .expiring_key("sa-a", 6 * DAY + Duration::from_secs(u64::from(i)))
            .await;
        keys.push(created.record.key_id);
    }
    let events = Events::default();
    let a = Arc::new(lifecycle(&fx, &events).build());
    let b = Arc::new(lifecycle(&fx, &events).build());
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    for _ in 0..10 {
        let runs = [a.clone(), b.clone()].map(|task| {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.wait().await;
                task.run_once().await.unwrap()
            })
        });
        for run in runs {
            run.await.unwrap();
        }
        // Past the lease: the next round's winner may be either.
        fx.clock.advance(Duration::from_secs(3600));
    }
    fx.clock.advance(6 * DAY);
    for _ in 0..3 {
        let (x, y) = tokio::join!(a.run_once(), b.run_once());
        x.unwrap();
        y.unwrap();
        fx.clock.advance(Duration::from_secs(3600));
    }
    let mut sent = events.take();
    sent.sort();
    let mut expected: Vec<_> = keys
        .iter()
        .flat_map(|id| [("expired", *id), ("expiring_soon", *id)])
        .collect();
    expected.sort();
    assert_eq!(sent, expected);
}

/// A hook that panics on the first event still gets the others, and the
/// task goes on; the event it panicked on is not sent again.
#[tokio::test]
async fn a_panicking_hook_does_not_stop_later_events() {
    let fx = Fixture::new();
    for _ in 0..3 {
        fx.expiring_key("sa-a", 6 * DAY).await;
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let (c, d) = (calls.clone(), delivered.clone());
    let task = Lifecycle::builder(fx.store.clone())
        .on_event(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the pager is down");
            }
            d.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let report = task.run_once().await.unwrap();
    assert_eq!(report.expiring_soon, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(delivered.load(Ordering::SeqCst), 2);
    assert_eq!(task.run_once().await.unwrap().events(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Each event is logged at INFO with its key id and kind, never a secret.
#[tokio::test(flavor = "current_thread")]
async fn events_are_logged_with_key_id_and_kind_only() {
    let (logs, _capture) = Logs::capture(tracing::Level::INFO);
    let fx = Fixture::new();
    let key = fx.expiring_key("sa-a", 6 * DAY).await;
    let task = Lifecycle::builder(fx.store.clone()).build();
    assert_eq!(task.run_once().await.unwrap().expiring_soon, 1);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("key event"))
        .unwrap_or_else(|| panic!("no event logged: {text}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains(&key.record.key_id.to_string()), "{line}");
    assert!(line.contains("expiring_soon"), "{line}");
    assert!(!text.contains(key.key.expose_secret()), "{text}");
    assert!(!text.contains("tak_"), "{text}");
}

/// The spawned task runs at once, and stops when its handle is dropped:
/// the hook (held by the task) is released.
#[tokio::test(start_paused = true)]
async fn the_spawned_task_runs_and_stops_with_its_handle() {
    let fx = Fixture::new();
    let key = fx.expiring_key("sa-a", 6 * DAY).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = Lifecycle::builder(fx.store.clone())
        .every(Duration::from_secs(60))
        .on_event(move |event| {
            let _ = tx.send(event.key().record.key_id);
        })
        .spawn();
    assert_eq!(rx.recv().await, Some(key.record.key_id));
    // A later run sends nothing new; the task goes on until dropped.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(rx.try_recv().is_err());
    drop(handle);
    let ended = tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await;
    assert_eq!(ended, Ok(None), "the task kept its hook");
}

/// `shutdown` waits for the task to end.
#[tokio::test]
async fn shutdown_ends_the_task() {
    let fx = Fixture::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<KeyId>();
    let handle = Lifecycle::builder(fx.store.clone())
        .on_event(move |event| {
            let _ = tx.send(event.key().record.key_id);
        })
        .spawn();
    handle.shutdown().await;
    // The hook went with the task: nothing can send any more.
    assert!(rx.is_closed());
}

/// Each event counts once under `tower_api_key_key_events_total{kind}`.
#[cfg(feature = "metrics")]
#[test]
fn events_are_counted_by_kind() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_api_key::telemetry::names;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let fx = Fixture::new();
            fx.expiring_key("sa-a", 6 * DAY).await;
            fx.expiring_key("sa-a", 6 * DAY).await;
            let task = Lifecycle::builder(fx.store.clone()).build();
            task.run_once().await.unwrap();
            fx.clock.advance(7 * DAY);
            task.run_once().await.unwrap();
        })
    });
    let mut counted: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == names::KEY_EVENTS)
        .map(|(key, _, _, value)| {
            let kind = key.key().labels().next().unwrap().value().to_owned();
            let DebugValue::Counter(n) = value else {
                panic!("a counter");
            };
            (kind, n)
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        vec![("expired".into(), 2), ("expiring_soon".into(), 2)]
    );
}

/// Fails the recording of one key's notice while `failing` is set.
struct FailNotice {
    key: KeyId,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Hook for FailNotice {
    async fn before(&self, _store: &MemoryStore, call: Call<'_>) -> Result<(), StoreError> {
        match call {
            Call::RecordNotice { id, kind }
                if id == self.key
                    && kind == NoticeKind::ExpiringSoon
                    && self.failing.load(Ordering::SeqCst) =>
            {
                Err(StoreError::backend("the database is away"))
            }
            _ => Ok(()),
        }
    }
}

/// A store error on one key is logged (its id, never a secret) and counted
/// in the report; the run goes on with the other keys, and the failed key's
/// notice goes out on a later run.
#[tokio::test(flavor = "current_thread")]
async fn a_store_error_on_one_key_is_reported_and_the_run_goes_on() {
    let (logs, _capture) = Logs::capture(tracing::Level::WARN);
    let fx = Fixture::new();
    let bad = fx.expiring_key("sa-a", 6 * DAY).await;
    let good = fx.expiring_key("sa-a", 6 * DAY).await;
    let hook = FailNotice {
        key: bad.record.key_id,
        failing: true.into(),
    };
    let store = Hooked::new(fx.store.clone(), hook);
    let events = Events::default();
    let task = Lifecycle::builder(store.clone())
        .on_event(events.hook())
        .build();

    let report = task.run_once().await.unwrap();
    assert_eq!((report.errors, report.expiring_soon), (1, 1));
    assert_eq!(events.take(), vec![("expiring_soon", good.record.key_id)]);
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains(&bad.record.key_id.to_string()), "{text}");
    assert!(text.contains("the database is away"), "{text}");
    assert!(!text.contains(bad.key.expose_secret()), "{text}");
    assert!(!text.contains("tak_"), "{text}");

    store.hook.failing.store(false, Ordering::SeqCst);
    let report = task.run_once().await.unwrap();
    assert_eq!((report.errors, report.expiring_soon), (0, 1));
    assert_eq!(events.take(), vec![("expiring_soon", bad.record.key_id)]);
}

/// Fails the recording of every `Expired` notice while set.
struct FailExpired(std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl Hook for FailExpired {
    async fn before(&self, _store: &MemoryStore, call: Call<'_>) -> Result<(), StoreError> {
        match call {
            Call::RecordNotice { kind, .. }
                if kind == NoticeKind::Expired && self.0.load(Ordering::SeqCst) =>
            {
                Err(StoreError::backend("the database is away"))
            }
            _ => Ok(()),
        }
    }
}

/// A store error on the retirement's notice leaves the key as it was (it
/// is retired on a later run, once), and a key the operator revived after
/// its retirement is not retired again. When the notice was recorded after
/// the retirement's write, that error left the key retired with no record
/// of it, and once the operator revived it, the next run retired it again.
#[tokio::test]
async fn a_store_error_leaves_no_unrecorded_retirement_and_a_revival_sticks() {
    let fx = Fixture::new();
    let id = fx.key("sa-a", &[]).await.record.key_id;
    let store = Hooked::new(fx.store.clone(), FailExpired(false.into()));
    let events = Events::default();
    let task = Lifecycle::builder(store.clone())
        .warn_before(WEEK)
        .retire_unused_after(YEAR)
        .on_event(events.hook())
        .build();
    fx.clock.advance(YEAR);
    assert_eq!(task.run_once().await.unwrap().unused_warnings, 1);
    assert_eq!(events.take(), vec![("unused_warning", id)]);

    // The date, with the store failing the retirement's notice.
    fx.clock.advance(WEEK);
    store.hook.0.store(true, Ordering::SeqCst);
    let report = task.run_once().await.unwrap();
    assert_eq!((report.errors, report.retired), (1, 0), "{report:?}");
    let info = fx.store.get(id).await.unwrap().unwrap();
    assert_eq!(info.record.retired_unused_since, None, "{info:?}");
    assert_eq!(info.record.expires_at, None, "{info:?}");
    store.hook.0.store(false, Ordering::SeqCst);

    fx.clock.advance(DAY);
    assert_eq!(task.run_once().await.unwrap().retired, 1);
    assert_eq!(events.take(), vec![("retired", id)]);

    // The operator revives it: it stays revived.
    fx.store
        .update(id, KeyUpdate::default().with_expires_at(None), None)
        .await
        .unwrap();
    for _ in 0..2 {
        fx.clock.advance(DAY);
        assert_eq!(task.run_once().await.unwrap().events(), 0);
        let info = fx.store.get(id).await.unwrap().unwrap();
        assert_eq!(info.record.expires_at, None, "retired again: {info:?}");
    }
    assert_eq!(events.take(), vec![]);
}

/// A key retired with no notice recorded (by another tool, or an older
/// version that wrote the retirement first) is announced by the expiry
/// pass as `Retired`, not `Expired`, once.
#[tokio::test]
async fn a_retirement_without_its_notice_is_announced_as_retired_once() {
    let fx = Fixture::new();
    let created = fx.key("sa-a", &[]).await;
    let id = created.record.key_id;
    fx.clock.advance(YEAR);
    let at = fx.clock.now();
    let retired = fx
        .store
        .retire_unused(id, None, created.record.created_at, at)
        .await
        .unwrap();
    assert!(retired.is_some());
    fx.clock.advance(Duration::from_secs(1));
    let events = Events::default();
    let task = lifecycle(&fx, &events).retire_unused_after(YEAR).build();
    let report = task.run_once().await.unwrap();
    assert_eq!((report.retired, report.expired), (1, 0), "{report:?}");
    assert_eq!(events.take(), vec![("retired", id)]);
    assert_eq!(task.run_once().await.unwrap().events(), 0);
}
