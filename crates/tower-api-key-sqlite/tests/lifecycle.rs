//! The key lifecycle task (issue 26) on SQLite, on a manual clock: a key
//! expiring in 6 days gets one `ExpiringSoon` however often the task runs,
//! and none again after a restart (a second store on the same file, with a
//! new task instance), since the store keeps what was sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::event::KeyEvent;
use tower_api_key::lifecycle::Lifecycle;
use tower_api_key::store::NewKey;
use tower_api_key::{KeyId, KeyStore};
use tower_api_key_sqlite::SqliteKeyStore;

const DAY: Duration = Duration::from_secs(86_400);

/// A directory of its own for one test, removed at the end.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tak-lifecycle-{test}-{}-{}",
            std::process::id(),
            KeyId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The (kind, key id) of every event a hook got.
type Seen = Arc<Mutex<Vec<(&'static str, KeyId)>>>;

fn hook(seen: &Seen) -> impl Fn(KeyEvent) + Send + Sync + 'static {
    let seen = seen.clone();
    move |event| {
        seen.lock()
            .unwrap()
            .push((event.kind(), event.key().record.key_id))
    }
}

#[tokio::test]
async fn expiring_soon_once_across_runs_and_a_restart_on_a_file() {
    let dir = TempDir::new("expiring");
    let db = dir.0.join("keys.db");
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let first = SqliteKeyStore::builder(&db)
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    first.migrate().await.unwrap();
    let key = first
        .create(NewKey::new("sa-a").with_expires_at(clock.now() + 6 * DAY))
        .await
        .unwrap();
    let id = key.record.key_id;
    first
        .create(NewKey::new("sa-a").with_expires_at(clock.now() + 30 * DAY))
        .await
        .unwrap();

    let seen = Seen::default();
    let task = Lifecycle::builder(first.clone())
        .on_event(hook(&seen))
        .build();
    for _ in 0..4 {
        task.run_once().await.unwrap();
        clock.advance(Duration::from_secs(60));
    }
    assert_eq!(*seen.lock().unwrap(), vec![("expiring_soon", id)]);

    // The restart: the first store and task gone, a new store on the same
    // file and a new task (a new lease holder, once the old lease ran out).
    drop(task);
    drop(first);
    clock.advance(Duration::from_secs(3600));
    let second = SqliteKeyStore::builder(&db)
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let restarted = Lifecycle::builder(second.clone())
        .on_event(hook(&seen))
        .build();
    let report = restarted.run_once().await.unwrap();
    assert!(report.leased, "the restarted task ran");
    assert_eq!(report.events(), 0);
    restarted.run_once().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1, "{:?}", seen.lock().unwrap());

    // And the expiry, once.
    clock.advance(6 * DAY);
    restarted.run_once().await.unwrap();
    restarted.run_once().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("expiring_soon", id), ("expired", id)]
    );
}
