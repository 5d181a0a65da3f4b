//! Versions and conditional writes: a store compares the version a write
//! was told it read with the key's and writes in the same step, so a check
//! made on what was read holds for exactly what the write replaces.

use std::time::{Duration, SystemTime};

use tower_api_key::clock::Clock;
use tower_api_key::limits::{Credits, RateLimit};
use tower_api_key::store::{KeyUpdate, NewKey, StoreError, Version};
use tower_api_key::CreditLedger;
use tower_api_key::{KeyId, KeyStore, ScopeSet, Verifier};

use super::{parse, store_and_clock, StoreFactory, StoreSettings};

const T: &str = "team.translate";
const X: &str = "ops.secret";

fn scopes(names: &[&str]) -> ScopeSet {
    ScopeSet::new(names.iter().copied()).unwrap()
}

#[track_caller]
fn assert_moved<T: std::fmt::Debug>(result: Result<T, StoreError>, id: KeyId, now: Version) {
    match result {
        Err(StoreError::VersionMismatch {
            id: got, current, ..
        }) => {
            assert_eq!((got, current), (id, now));
        }
        other => panic!("expected StoreError::VersionMismatch, got {other:?}"),
    }
}

async fn version_of(store: &dyn KeyStore, id: KeyId) -> Version {
    store
        .get(id)
        .await
        .unwrap()
        .expect("the key exists")
        .version
}

pub async fn a_key_starts_at_the_first_version_and_each_change_moves_it_by_one<F: StoreFactory>(
    f: &F,
) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(NewKey::new("sa-v").with_credits(Credits::new(10).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    assert_eq!(created.version, Version::FIRST);
    assert_eq!(version_of(&store, id).await, Version::FIRST);

    let updated = store
        .update(id, KeyUpdate::default().with_description("one"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.version, Version::new(2));
    let empty = store
        .update(id, KeyUpdate::default(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        empty.version,
        Version::new(2),
        "an empty update changes nothing"
    );
    let reissued = store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.version, Version::new(3));
    let topped = store.add_credits(id, 5, None).await.unwrap().unwrap();
    assert_eq!(topped.version, Version::new(4));

    // Use is not a change: a busy key can still be changed.
    store.record_usage(&[(id, clock.now())]).await.unwrap();
    let lease = store
        .lease_credits(id, 2, clock.now())
        .await
        .unwrap()
        .expect("the key has credits");
    store
        .return_credits(id, lease.generation, lease.granted)
        .await
        .unwrap();
    store
        .set_account_rate_limits(
            "sa-v",
            vec![RateLimit::new(5, Duration::from_secs(1)).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(version_of(&store, id).await, Version::new(4));
    let listed = store.list("sa-v", Default::default()).await.unwrap();
    assert_eq!(
        listed.keys[0].version,
        Version::new(4),
        "listings show it too"
    );
}

pub async fn a_write_on_a_superseded_version_is_refused_and_writes_nothing<F: StoreFactory>(f: &F) {
    let (store, _clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(
            NewKey::new("sa-v")
                .with_scopes(scopes(&[T, X]))
                .with_credits(Credits::new(10).unwrap()),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let read = created.version;
    let narrowed = store
        .update(
            id,
            KeyUpdate::default().with_scopes(scopes(&[T])),
            Some(read),
        )
        .await
        .unwrap()
        .unwrap();
    let now = narrowed.version;
    assert_eq!(now, read.next());
    let before = store.get(id).await.unwrap().unwrap();

    // Each write stating the superseded version is refused, naming the key
    // and its version now, and changes nothing.
    assert_moved(
        store
            .update(
                id,
                KeyUpdate::default().with_scopes(scopes(&[T, X])),
                Some(read),
            )
            .await,
        id,
        now,
    );
    assert_moved(
        store.reissue(id, Duration::from_secs(60), Some(read)).await,
        id,
        now,
    );
    assert_moved(store.add_credits(id, 5, Some(read)).await, id, now);
    assert_moved(store.revoke(id, Some(read)).await, id, now);
    assert_eq!(
        store.get(id).await.unwrap().unwrap(),
        before,
        "nothing written"
    );
    let old_secret = parse(&store, &created.key);
    assert!(
        store.verify(&old_secret).await.unwrap().is_some(),
        "the refused reissue left the secret as it was"
    );

    // The version it is at goes through, each write moving it on.
    let reissued = store
        .reissue(id, Duration::ZERO, Some(now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.version, now.next());
    let topped = store
        .add_credits(id, 5, Some(reissued.version))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topped.record.credits.map(|c| c.remaining()), Some(15));
    assert!(store.revoke(id, Some(topped.version)).await.unwrap());

    // An unknown key is unknown, whatever version is stated.
    let unknown = KeyId::random().unwrap();
    let some = Some(Version::FIRST);
    assert!(store
        .update(unknown, KeyUpdate::default(), some)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .reissue(unknown, Duration::ZERO, some)
        .await
        .unwrap()
        .is_none());
    assert!(store.add_credits(unknown, 1, some).await.unwrap().is_none());
    assert!(!store.revoke(unknown, some).await.unwrap());
}

/// The attack of issue 20 at the store: a "keep `[T, X]`" write that read
/// before a narrowing and a reissue must not land after them.
pub async fn a_check_on_what_was_read_holds_for_what_the_write_replaces<F: StoreFactory>(f: &F) {
    let (store, _clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(NewKey::new("sa-v").with_scopes(scopes(&[T, X])))
        .await
        .unwrap();
    let id = created.record.key_id;
    let keep_read = store.get(id).await.unwrap().unwrap();
    assert_eq!(keep_read.record.scopes, scopes(&[T, X]));

    let narrowed = store
        .update(
            id,
            KeyUpdate::default().with_scopes(scopes(&[T])),
            Some(keep_read.version),
        )
        .await
        .unwrap()
        .unwrap();
    let reissued = store
        .reissue(id, Duration::from_secs(3600), Some(narrowed.version))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.record.scopes, scopes(&[T]));

    assert_moved(
        store
            .update(
                id,
                KeyUpdate::default().with_scopes(scopes(&[T, X])),
                Some(keep_read.version),
            )
            .await,
        id,
        reissued.version,
    );
    let new_secret = parse(&store, &reissued.key);
    let record = store.verify(&new_secret).await.unwrap().unwrap();
    assert_eq!(
        record.scopes,
        scopes(&[T]),
        "the reissued key never holds X"
    );
}

pub async fn concurrent_writes_on_one_version_let_exactly_one_through<F: StoreFactory>(f: &F) {
    let (store, _clock) = store_and_clock(f, StoreSettings::new()).await;
    conditional_writes_race(&[store.clone(), store]).await;
}

/// Writers on `stores` (one store, or several instances over one database)
/// race to change one key, each stating the version they all read: exactly
/// one write lands, every other is refused with the version it made.
pub async fn conditional_writes_race<S: KeyStore + Clone + 'static>(stores: &[S]) {
    const WRITERS: usize = 24;
    let created = stores[0]
        .create(NewKey::new("sa-race").with_credits(Credits::new(1).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    let read = created.version;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for n in 0..WRITERS {
        let store = stores[n % stores.len()].clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            // Every kind of conditional write takes part.
            match n % 3 {
                0 => store
                    .update(
                        id,
                        KeyUpdate::default().with_description(format!("w{n}")),
                        Some(read),
                    )
                    .await
                    .map(|done| done.map(|info| (n, info.version))),
                1 => store
                    .reissue(id, Duration::ZERO, Some(read))
                    .await
                    .map(|done| done.map(|created| (n, created.version))),
                _ => store
                    .add_credits(id, 1, Some(read))
                    .await
                    .map(|done| done.map(|info| (n, info.version))),
            }
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(Some(won)) => winners.push(won),
            Err(StoreError::VersionMismatch {
                id: got, current, ..
            }) => {
                assert_eq!(got, id);
                assert_eq!(current, read.next(), "refused against the winner's write");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one write lands: {winners:?}");
    let (winner, version) = winners[0];
    assert_eq!(version, read.next());
    let now = stores[0].get(id).await.unwrap().unwrap();
    assert_eq!(now.version, read.next());
    let expected_description = if winner % 3 == 0 {
        format!("w{winner}")
    } else {
        String::new()
    };
    assert_eq!(now.record.description, expected_description);
    let credits = now.record.credits.map(|c| c.remaining());
    assert_eq!(credits, Some(if winner % 3 == 2 { 2 } else { 1 }));
    let _: SystemTime = now.record.created_at;
}

/// An import keeps the exported version, up to a bound. A key imported
/// near the top of a SQL column must not become a key that can no longer be
/// changed once its next write moves it on (issue 20 review: at `i64::MAX`
/// SQLite refused every later write of the key and PostgreSQL failed it).
/// For each version, either the import refuses it (typed), or later writes
/// land with a new version and the key stays readable; a version as high
/// as JSON numbers hold exactly (2^53 - 1) is kept.
pub async fn a_key_imported_at_the_highest_version_stays_writable_and_readable<F: StoreFactory>(
    f: &F,
) {
    let (from, _) = store_and_clock(f, StoreSettings::new()).await;
    let (to, _) = store_and_clock(f, StoreSettings::new()).await;
    let highest_json = (1u64 << 53) - 1;
    for version in [i64::MAX as u64, i64::MAX as u64 - 1, u64::MAX, highest_json] {
        let created = from
            .create(NewKey::new("sa-top").with_credits(Credits::new(1).unwrap()))
            .await
            .unwrap();
        let id = created.record.key_id;
        let mut key = from
            .export(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.info.record.key_id == id)
            .unwrap();
        key.info.version = Version::new(version);
        match to.import(key).await {
            Err(StoreError::InvalidField { .. }) if version != highest_json => continue,
            Err(other) => panic!("import at version {version}: {other:?}"),
            Ok(_) => {}
        }
        let top = to.get(id).await.unwrap().expect("imported").version;
        assert_eq!(top, Version::new(version), "the import keeps the version");
        let updated = to
            .update(id, KeyUpdate::default().with_description("next"), Some(top))
            .await
            .unwrap_or_else(|e| panic!("imported at {version}, then changed: {e:?}"))
            .expect("the key exists");
        assert_ne!(updated.version, top, "a change moves the version on");
        let topped = to
            .add_credits(id, 1, Some(updated.version))
            .await
            .unwrap_or_else(|e| panic!("imported at {version}, then topped up: {e:?}"))
            .expect("the key exists");
        assert_ne!(topped.version, updated.version);
        let read = to.get(id).await.expect("the key is still readable");
        assert_eq!(read.map(|k| k.version), Some(topped.version));
        assert!(
            to.verify(&parse(&to, &created.key))
                .await
                .unwrap()
                .is_some(),
            "its secret still works"
        );
    }
    let listed = to.list("sa-top", Default::default()).await.unwrap();
    assert!(
        listed.keys.iter().all(|k| k.record.description == "next"),
        "every key imported is listed, changed"
    );
}
