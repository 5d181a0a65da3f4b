//! `last_used_at` write-behind: noted on the request path, flushed in batches.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod common;

use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::clock::ManualClock;
use tower_api_key::store::{NewKey, StoreError};
use tower_api_key::usage::UsageRecorder;
use tower_api_key::Authenticator;
use tower_api_key::KeyId;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;

use common::hooked::{Call, Hook, Hooked};

/// Counts usage flushes (`record_usage`), and fails them while `down`.
#[derive(Default)]
struct Counting {
    writes: AtomicUsize,
    down: AtomicBool,
}

#[async_trait]
impl Hook for Counting {
    async fn before(&self, _: &MemoryStore, call: Call<'_>) -> Result<(), StoreError> {
        if let Call::RecordUsage { .. } = call {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::backend("database is down"));
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

struct Setup {
    store: Hooked<Counting>,
    clock: Arc<ManualClock>,
    auth: Authenticator,
    usage: UsageRecorder,
}

fn setup() -> Setup {
    // Uses are kept at millisecond precision: start on a whole second.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs()),
    ));
    let store = Hooked::new(
        MemoryStore::builder().clock(clock.clone()).build(),
        Counting::default(),
    );
    let usage = UsageRecorder::new(store.clone());
    // The middleware notes uses: they are made through an authenticator.
    let auth = Authenticator::builder(store.clone())
        .clock(clock.clone())
        .usage_recorder(usage.clone())
        .build();
    Setup {
        store,
        clock,
        auth,
        usage,
    }
}

async fn key(s: &Setup, account: &str) -> (KeyId, String) {
    let created = s.store.create(NewKey::new(account)).await.unwrap();
    (
        created.record.key_id,
        created.key.expose_secret().to_owned(),
    )
}

/// One request with `key` through a route that admits any valid key; it
/// must get through.
async fn use_key(auth: &Authenticator, key: &str) {
    let route = auth
        .any_valid_key()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let request = Request::builder()
        .header("authorization", format!("Api-Key {key}"))
        .body(())
        .unwrap();
    let response = route.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn last_used(s: &Setup, id: KeyId) -> Option<SystemTime> {
    s.store.get(id).await.unwrap().unwrap().last_used_at
}

#[tokio::test]
async fn a_burst_of_uses_is_one_write_per_flush_with_the_newest_time() {
    let s = setup();
    let (id, key) = key(&s, "sa-1").await;
    assert_eq!(last_used(&s, id).await, None, "never used yet");

    let start = s.clock.now_for_test();
    for _ in 0..10_000 {
        use_key(&s.auth, &key).await;
        s.clock.advance(Duration::from_millis(1));
    }
    assert_eq!(
        last_used(&s, id).await,
        None,
        "nothing is written on the request path"
    );
    assert_eq!(s.usage.flush().await.unwrap(), 1);
    assert_eq!(s.store.hook.writes.load(Ordering::SeqCst), 1);
    let newest = last_used(&s, id).await.unwrap();
    assert_eq!(newest, start + Duration::from_millis(9_999));

    // Nothing new: no write at all.
    assert_eq!(s.usage.flush().await.unwrap(), 0);
    assert_eq!(s.store.hook.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn many_keys_are_written_in_one_batch() {
    let s = setup();
    let mut ids = Vec::new();
    for i in 0..50 {
        let (id, key) = key(&s, &format!("sa-{i}")).await;
        use_key(&s.auth, &key).await;
        ids.push(id);
    }
    assert_eq!(s.usage.flush().await.unwrap(), 50);
    assert_eq!(s.store.hook.writes.load(Ordering::SeqCst), 1);
    for id in ids {
        assert!(last_used(&s, id).await.is_some());
    }
}

#[tokio::test]
async fn a_failed_flush_loses_nothing_and_time_never_moves_back() {
    let s = setup();
    let (id, key) = key(&s, "sa-1").await;
    use_key(&s.auth, &key).await;
    let first = last_use_time(&s);
    s.usage.flush().await.unwrap();
    assert_eq!(last_used(&s, id).await, Some(first));

    s.store.hook.down.store(true, Ordering::SeqCst);
    s.clock.advance(Duration::from_secs(10));
    use_key(&s.auth, &key).await;
    let second = last_use_time(&s);
    assert!(s.usage.flush().await.is_err());
    assert_eq!(
        last_used(&s, id).await,
        Some(first),
        "the outage delayed the write"
    );

    s.store.hook.down.store(false, Ordering::SeqCst);
    assert_eq!(s.usage.flush().await.unwrap(), 1);
    assert_eq!(
        last_used(&s, id).await,
        Some(second),
        "the retained use was written"
    );

    // A late batch with an older time does not move it back.
    s.store.record_usage(&[(id, first)]).await.unwrap();
    assert_eq!(last_used(&s, id).await, Some(second));
}

#[tokio::test(start_paused = true)]
async fn the_flusher_writes_each_interval_and_once_more_on_shutdown() {
    let s = setup();
    let usage = UsageRecorder::builder(s.store.clone())
        .flush_interval(Duration::from_secs(2))
        .build();
    let auth = Authenticator::builder(s.store.clone())
        .clock(s.clock.clone())
        .usage_recorder(usage.clone())
        .build();
    let (id, key) = key(&s, "sa-1").await;
    let flusher = usage.spawn_flusher();
    use_key(&auth, &key).await;

    // Paused time: sleeping advances the clock instantly once every task is idle.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(
        last_used(&s, id).await.is_some(),
        "flushed after one interval"
    );
    let writes = s.store.hook.writes.load(Ordering::SeqCst);
    assert_eq!(writes, 1);

    s.clock.advance(Duration::from_secs(1));
    use_key(&auth, &key).await;
    let noted = last_use_time(&s);
    assert_eq!(
        flusher.shutdown().await.unwrap(),
        1,
        "the final flush wrote the last use"
    );
    assert_eq!(last_used(&s, id).await, Some(noted));
}

/// The time the store's clock shows, which is what the middleware notes.
fn last_use_time(s: &Setup) -> SystemTime {
    s.clock.now_for_test()
}

trait NowForTest {
    fn now_for_test(&self) -> SystemTime;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> SystemTime {
        tower_api_key::clock::Clock::now(self)
    }
}
