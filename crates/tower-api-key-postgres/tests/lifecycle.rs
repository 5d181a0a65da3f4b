//! The key lifecycle task (issue 26) on PostgreSQL, on a manual clock: two
//! replicas (two stores, two task instances) running at once send each
//! `ExpiringSoon` once between them; a key unused for the retirement
//! period is warned about, then retired on the announced date.
//!
//! Each test works in a schema of its own on `DATABASE_URL` or the
//! throwaway server of `common::server`; without either it prints
//! `SKIPPED` (and fails under `CI`), as tests/postgres.rs does.

mod common;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_postgres::{Config, NoTls};
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::event::KeyEvent;
use tower_api_key::lifecycle::Lifecycle;
use tower_api_key::store::NewKey;
use tower_api_key::{KeyId, KeyStore, Verifier};
use tower_api_key_postgres::{PgKeyStore, PgKeyStoreBuilder};

const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A schema of its own for one test, dropped at the end.
struct Schema {
    config: Config,
    name: String,
    admin: tokio_postgres::Client,
}

impl Schema {
    async fn new(test: &str) -> Option<Schema> {
        let url = common::server::url_or_skip(test)?;
        let url_config = Config::from_str(&url).expect("DATABASE_URL parses");
        let suffix = KeyId::random().unwrap().as_str()[..10].to_ascii_lowercase();
        let name = format!("tak_lc_{}_{suffix}", &test[..test.len().min(30)]);
        let (admin, connection) = url_config.connect(NoTls).await.expect("connect");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create the test schema");
        let mut config = url_config.clone();
        let options = match url_config.get_options() {
            Some(existing) => format!("{existing} -c search_path={name}"),
            None => format!("-c search_path={name}"),
        };
        config.options(options);
        Some(Schema {
            config,
            name,
            admin,
        })
    }

    /// A store (a replica) on this schema, migrated, on `clock`.
    async fn store(&self, clock: &Arc<ManualClock>) -> PgKeyStore {
        let store = PgKeyStoreBuilder::new(self.config.clone())
            .channel(format!("{}_inv", self.name))
            .clock(clock.clone())
            .connect()
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    async fn drop(self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await;
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ))
}

/// Every event a hook got.
type Seen = Arc<Mutex<Vec<KeyEvent>>>;

fn hook(seen: &Seen) -> impl Fn(KeyEvent) + Send + Sync + 'static {
    let seen = seen.clone();
    move |event| seen.lock().unwrap().push(event)
}

fn kinds(seen: &Seen) -> Vec<(&'static str, KeyId)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| (e.kind(), e.key().record.key_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_expiring_soon_once_between_them() {
    let Some(schema) = Schema::new("two_replicas_expiring_soon").await else {
        return;
    };
    let clock = clock();
    let a = schema.store(&clock).await;
    let b = schema.store(&clock).await;
    let mut keys = Vec::new();
    for i in 0..20u64 {
        let created = a
            .create(
                NewKey::new("sa-a").with_expires_at(clock.now() + 6 * DAY + Duration::from_secs(i)),
            )
            .await
            .unwrap();
        keys.push(created.record.key_id);
    }
    let seen = Seen::default();
    let on_a = Arc::new(Lifecycle::builder(a.clone()).on_event(hook(&seen)).build());
    let on_b = Arc::new(Lifecycle::builder(b.clone()).on_event(hook(&seen)).build());
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    let mut leased = 0;
    for _ in 0..6 {
        let runs = [on_a.clone(), on_b.clone()].map(|task| {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.wait().await;
                task.run_once().await.unwrap()
            })
        });
        for run in runs {
            if run.await.unwrap().leased {
                leased += 1;
            }
        }
        // Past the lease: either replica may win the next round.
        clock.advance(Duration::from_secs(3600));
    }
    // One replica at a time: one lease holder per round.
    assert_eq!(leased, 6);
    let mut sent = kinds(&seen);
    sent.sort();
    let mut expected: Vec<_> = keys.iter().map(|id| ("expiring_soon", *id)).collect();
    expected.sort();
    assert_eq!(sent, expected);

    a.shutdown().await;
    b.shutdown().await;
    schema.drop().await;
}

#[tokio::test]
async fn an_unused_key_is_warned_then_retired_on_the_announced_date() {
    let Some(schema) = Schema::new("unused_key_retired").await else {
        return;
    };
    let clock = clock();
    let store = schema.store(&clock).await;
    let created = store.create(NewKey::new("sa-a")).await.unwrap();
    let kept = store
        .create(NewKey::new("sa-a").with_retire_when_unused(false))
        .await
        .unwrap();
    let id = created.record.key_id;
    let presented = store
        .key_format()
        .unwrap_or_default()
        .parse(created.key.expose_secret())
        .unwrap();
    let seen = Seen::default();
    let task = Lifecycle::builder(store.clone())
        .warn_before(WEEK)
        .retire_unused_after(YEAR)
        .on_event(hook(&seen))
        .build();

    clock.advance(YEAR - WEEK + DAY);
    task.run_once().await.unwrap();
    let retires_at = match seen.lock().unwrap().as_slice() {
        [KeyEvent::UnusedWarning {
            key, retires_at, ..
        }] => {
            assert_eq!(key.record.key_id, id);
            *retires_at
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(retires_at, clock.now() + WEEK);
    let before = store.verify(&presented).await.unwrap().expect("verifies");
    assert_eq!(before.expires_at, None);

    clock.set(retires_at);
    task.run_once().await.unwrap();
    task.run_once().await.unwrap();
    assert_eq!(kinds(&seen), vec![("unused_warning", id), ("retired", id)]);
    let info = store.get(id).await.unwrap().expect("never deleted");
    assert_eq!(info.record.expires_at, Some(retires_at));
    assert_eq!(
        info.record.retired_unused_since,
        Some(created.record.created_at)
    );
    // Every replica's check of the key now sees it expired on the date.
    let after = store
        .verify(&presented)
        .await
        .unwrap()
        .expect("still stored");
    assert_eq!(after.expires_at, Some(retires_at));
    assert!(after.expires_at.unwrap() <= clock.now());
    let kept = store.get(kept.record.key_id).await.unwrap().unwrap();
    assert_eq!(kept.record.expires_at, None);
    assert_eq!(kept.record.retired_unused_since, None);

    store.shutdown().await;
    schema.drop().await;
}
