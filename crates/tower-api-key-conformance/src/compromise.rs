//! Leak reports ([`KeyStore::record_compromise`]): recorded once, bound to
//! the exact secret reported, acted on atomically, announced, and carried by
//! an export.

use std::time::Duration;

use tower_api_key::clock::Clock;
use tower_api_key::store::{Compromise, CompromiseReport, Compromised, LeakAction, NewKey};
use tower_api_key::{Invalidation, KeyStore, Verifier};

use crate::{export_everything, micros, parse, StoreFactory, StoreSettings, Watch};

const URL: &str = "https://github.com/octo/repo/blob/main/.env";

fn report(action: LeakAction) -> CompromiseReport {
    CompromiseReport::new(URL, "content", action)
}

#[track_caller]
fn acted(outcome: Compromised) -> tower_api_key::store::KeyInfo {
    match outcome {
        Compromised::Acted { key } => *key,
        other => panic!("expected Acted, got {other:?}"),
    }
}

/// A first report is recorded on the key (when, where, by what, which
/// action), moves the version once and is announced; the same report again
/// changes nothing.
pub async fn a_report_is_recorded_once_announced_and_a_replay_changes_nothing<F: StoreFactory>(
    f: &F,
) {
    let settings = StoreSettings::new();
    let clock = settings.clock.clone();
    let store = f.store(settings).await;
    let mut announced = Watch::on(&store);
    let created = store.create(NewKey::new("sa-leak")).await.unwrap();
    let id = created.record.key_id;
    let key = parse(&store, &created.key);
    clock.advance(Duration::from_secs(5));

    let info = acted(
        store
            .record_compromise(&key, report(LeakAction::Notify))
            .await
            .unwrap(),
    );
    let expected = Compromise::new(micros(clock.now()), URL, "content", LeakAction::Notify);
    assert_eq!(info.record.compromise.as_deref(), Some(&expected));
    assert_eq!(info.version.get(), 2);
    assert_eq!(
        announced
            .until_invalidated(id, Duration::from_secs(5))
            .await,
        Invalidation::key_of(id, "sa-leak")
    );
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.compromise.as_deref(), Some(&expected));
    assert!(!got.record.quarantined, "notify quarantines nothing");
    let verified = store
        .verify(&key)
        .await
        .unwrap()
        .expect("a notified key works");
    assert_eq!(verified.compromise.as_deref(), Some(&expected));
    assert!(!verified.quarantined);

    assert_eq!(
        store
            .record_compromise(&key, report(LeakAction::Notify))
            .await
            .unwrap(),
        Compromised::AlreadyReported
    );
    assert_eq!(store.get(id).await.unwrap().unwrap().version.get(), 2);

    // The longest report a store keeps, every byte one that JSON escapes,
    // is kept whole. (Stores page by count; the management API measures the
    // JSON of its pages itself: tests/management.rs lists such keys.)
    let long = store.create(NewKey::new("sa-leak")).await.unwrap();
    let url = "\"".repeat(CompromiseReport::MAX_URL_LEN);
    let source = "\\".repeat(CompromiseReport::MAX_SOURCE_LEN);
    let info = acted(
        store
            .record_compromise(
                &parse(&store, &long.key),
                CompromiseReport::new(url.clone(), source, LeakAction::Notify),
            )
            .await
            .unwrap(),
    );
    let got = store.get(long.record.key_id).await.unwrap().unwrap();
    assert_eq!(got.record.compromise.as_ref().map(|c| &c.url), Some(&url));
    assert_eq!(got, info);
}

/// A quarantine applies to the secret reported: while the key holds it
/// (and during a reissue's grace) `verify` says so; the secret a reissue
/// gives is not quarantined, and a report of it acts again.
pub async fn a_quarantine_binds_to_the_reported_secret_only<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let created = store.create(NewKey::new("sa-leak")).await.unwrap();
    let id = created.record.key_id;
    let old = parse(&store, &created.key);
    acted(
        store
            .record_compromise(&old, report(LeakAction::Quarantine))
            .await
            .unwrap(),
    );
    assert!(store.verify(&old).await.unwrap().unwrap().quarantined);
    assert!(store.get(id).await.unwrap().unwrap().record.quarantined);

    let reissued = store
        .reissue(id, Duration::from_secs(3600), None)
        .await
        .unwrap()
        .unwrap();
    let new = parse(&store, &reissued.key);
    let fresh = store.verify(&new).await.unwrap().unwrap();
    assert!(!fresh.quarantined, "the new secret is not quarantined");
    assert!(fresh.compromise.is_some(), "the history stays");
    assert!(!store.get(id).await.unwrap().unwrap().record.quarantined);
    let graced = store.verify(&old).await.unwrap().unwrap();
    assert!(graced.quarantined, "the reported secret stays quarantined");
    assert_eq!(
        store
            .record_compromise(&old, report(LeakAction::Quarantine))
            .await
            .unwrap(),
        Compromised::AlreadyReported
    );
    acted(
        store
            .record_compromise(&new, report(LeakAction::Quarantine))
            .await
            .unwrap(),
    );
    assert!(store.verify(&new).await.unwrap().unwrap().quarantined);
}

/// Under `Revoke` the key is revoked as by `revoke` (gone, its id never
/// imported again, announced); a replay is `AlreadyRevoked`.
pub async fn revoke_revokes_the_key_and_a_replay_is_already_revoked<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let mut announced = Watch::on(&store);
    let created = store.create(NewKey::new("sa-leak")).await.unwrap();
    let id = created.record.key_id;
    let key = parse(&store, &created.key);
    let info = acted(
        store
            .record_compromise(&key, report(LeakAction::Revoke))
            .await
            .unwrap(),
    );
    assert_eq!(info.record.key_id, id);
    assert_eq!(
        info.record.compromise.map(|c| c.action),
        Some(LeakAction::Revoke)
    );
    announced
        .until_invalidated(id, Duration::from_secs(5))
        .await;
    assert!(store.get(id).await.unwrap().is_none());
    assert!(store.verify(&key).await.unwrap().is_none());
    assert!(store.export_revoked(None, 10).await.unwrap().contains(&id));
    assert_eq!(
        store
            .record_compromise(&key, report(LeakAction::Revoke))
            .await
            .unwrap(),
        Compromised::AlreadyRevoked
    );
}

/// Another secret under a held id, or an id the store never had, is
/// `Unknown` and changes nothing.
pub async fn a_wrong_secret_or_an_unknown_id_is_unknown_and_changes_nothing<F: StoreFactory>(
    f: &F,
) {
    let store = f.store(StoreSettings::new()).await;
    let created = store.create(NewKey::new("sa-leak")).await.unwrap();
    let id = created.record.key_id;
    let format = store.key_format().unwrap();
    let forged = format.generate_for(id).unwrap();
    let forged = parse(&store, &forged);
    let stranger = parse(&store, &format.generate().unwrap());
    for key in [&forged, &stranger] {
        for action in [LeakAction::Revoke, LeakAction::Quarantine] {
            assert_eq!(
                store.record_compromise(key, report(action)).await.unwrap(),
                Compromised::Unknown
            );
        }
    }
    let info = store.get(id).await.unwrap().unwrap();
    assert_eq!(info.version.get(), 1);
    assert!(info.record.compromise.is_none());
}

/// Reports of one secret at once: exactly one acts.
pub async fn concurrent_reports_of_one_secret_act_once<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let created = store.create(NewKey::new("sa-leak")).await.unwrap();
    let key = parse(&store, &created.key);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                store
                    .record_compromise(&key, report(LeakAction::Quarantine))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut acted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Compromised::Acted { .. } => acted += 1,
            Compromised::AlreadyReported => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acted, 1);
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    assert_eq!(info.version.get(), 2);
}

/// An export carries the compromise and the secret it binds to: imported
/// elsewhere, the reported secret is still quarantined and a replay of the
/// report still changes nothing.
pub async fn an_export_carries_the_compromise_and_its_binding<F: StoreFactory>(f: &F) {
    let source = f.store(StoreSettings::new()).await;
    let created = source.create(NewKey::new("sa-leak")).await.unwrap();
    let id = created.record.key_id;
    let key = parse(&source, &created.key);
    acted(
        source
            .record_compromise(&key, report(LeakAction::Quarantine))
            .await
            .unwrap(),
    );
    let exported = export_everything(&source).await;
    assert!(exported[0].compromised_hash.is_some());
    assert!(exported[0].info.record.compromise.is_some());

    let target = f.store(StoreSettings::new()).await;
    for key in exported {
        target.import(key).await.unwrap();
    }
    let got = target.get(id).await.unwrap().unwrap();
    assert_eq!(
        got.record.compromise,
        source.get(id).await.unwrap().unwrap().record.compromise
    );
    assert!(target.verify(&key).await.unwrap().unwrap().quarantined);
    assert_eq!(
        target
            .record_compromise(&key, report(LeakAction::Quarantine))
            .await
            .unwrap(),
        Compromised::AlreadyReported
    );
}

/// Two stores over one backing (a database, a file): a leak report recorded
/// through `writer` reaches a cache over `reader` within `within`: a revoked
/// key is refused, a quarantined secret is read as quarantined, although
/// both were cached as valid before.
// Only the stores that two processes can share use it.
pub async fn leak_reports_reach_the_other_store<S: KeyStore + Clone + 'static>(
    writer: &S,
    reader: &S,
    within: Duration,
) {
    use tower_api_key::cache::{CacheConfig, CachedVerifier, LookupError};

    let cache = CachedVerifier::new(
        reader.clone(),
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .build(),
    );
    let mut seen = Watch::on(reader);
    let revoked = writer.create(NewKey::new("sa-leak")).await.unwrap();
    let quarantined = writer.create(NewKey::new("sa-leak")).await.unwrap();
    for key in [&revoked, &quarantined] {
        let caller = cache.lookup(&parse(reader, &key.key)).await.unwrap();
        assert!(!caller.record().quarantined);
    }
    for (key, action) in [
        (&revoked, LeakAction::Revoke),
        (&quarantined, LeakAction::Quarantine),
    ] {
        acted(
            writer
                .record_compromise(&parse(writer, &key.key), report(action))
                .await
                .unwrap(),
        );
        seen.until_invalidated(key.record.key_id, within).await;
    }
    assert!(matches!(
        cache.lookup(&parse(reader, &revoked.key)).await,
        Err(LookupError::Unknown)
    ));
    let caller = cache
        .lookup(&parse(reader, &quarantined.key))
        .await
        .unwrap();
    assert!(caller.record().quarantined);
    assert_eq!(
        caller.compromise().map(|c| c.action),
        Some(LeakAction::Quarantine)
    );
}
