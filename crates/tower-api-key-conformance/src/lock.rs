//! Keys the operator locked ([`KeyRecord::operator_locked`]): the mark is
//! kept through create, every read, verification, update, reissue and
//! export/import, is off by default, and
//! [`KeyStore::add_credits_unless_locked`] refuses a locked key in the
//! write's own atomic step.
//!
//! [`KeyRecord::operator_locked`]: tower_api_key::KeyRecord::operator_locked

use std::time::Duration;

use tower_api_key::limits::Credits;
use tower_api_key::store::{KeyUpdate, ListRequest, NewKey, StoreError};
use tower_api_key::{KeyStore, Verifier};

use crate::{export_everything, parse, StoreFactory, StoreSettings};

/// A key is created unlocked unless asked; a locked key reads locked from
/// create, get, list and verification, and stays locked through a reissue.
pub async fn operator_locked_round_trips_and_is_off_by_default<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let plain = store.create(NewKey::new("sa-lock")).await.unwrap();
    assert!(!plain.record.operator_locked);
    let got = store.get(plain.record.key_id).await.unwrap().unwrap();
    assert!(!got.record.operator_locked, "off by default");

    let created = store
        .create(NewKey::new("sa-lock").with_operator_locked(true))
        .await
        .unwrap();
    assert!(created.record.operator_locked);
    let id = created.record.key_id;
    assert!(store.get(id).await.unwrap().unwrap().record.operator_locked);
    let verified = store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .unwrap();
    assert!(verified.operator_locked, "verification reads it");
    let listed = store.list("sa-lock", ListRequest::first(10)).await.unwrap();
    let mut locked: Vec<_> = listed
        .keys
        .iter()
        .map(|k| (k.record.key_id, k.record.operator_locked))
        .collect();
    locked.sort();
    let mut want = vec![(plain.record.key_id, false), (id, true)];
    want.sort();
    assert_eq!(locked, want, "a listing reads it");
    let reissued = store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert!(reissued.record.operator_locked, "a reissue keeps it");
}

/// An update sets and clears the mark on its own, moving the version, and
/// an update of another field leaves it as it is.
pub async fn update_sets_and_clears_operator_locked<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let created = store
        .create(NewKey::new("sa-lock").with_description("d"))
        .await
        .unwrap();
    let id = created.record.key_id;
    let lock = KeyUpdate::default().with_operator_locked(true);
    let info = store
        .update(id, lock, Some(created.version))
        .await
        .unwrap()
        .unwrap();
    assert!(info.record.operator_locked);
    assert_eq!(info.version, created.version.next(), "a change of the key");
    assert_eq!(info.record.description, "d", "the rest left as it was");

    let other = KeyUpdate::default().with_description("e");
    let info = store.update(id, other, None).await.unwrap().unwrap();
    assert!(info.record.operator_locked, "left as it was");
    let got = store.get(id).await.unwrap().unwrap();
    assert!(got.record.operator_locked);

    let unlock = KeyUpdate::default().with_operator_locked(false);
    let info = store.update(id, unlock, None).await.unwrap().unwrap();
    assert!(!info.record.operator_locked);
    assert!(!store.get(id).await.unwrap().unwrap().record.operator_locked);
}

/// `add_credits_unless_locked` refuses a locked key with
/// [`StoreError::KeyLocked`] and writes nothing (neither the count nor the
/// version), whatever the version it is given; on an unlocked key it is
/// `add_credits`. `add_credits` itself, the operator's, adds to a locked key.
pub async fn add_credits_unless_locked_refuses_a_locked_key_and_writes_nothing<F: StoreFactory>(
    f: &F,
) {
    let store = f.store(StoreSettings::new()).await;
    let credits = Credits::new(10).unwrap();
    let locked = store
        .create(
            NewKey::new("sa-lock")
                .with_credits(credits)
                .with_operator_locked(true),
        )
        .await
        .unwrap();
    let id = locked.record.key_id;
    for expected in [None, Some(locked.version)] {
        match store.add_credits_unless_locked(id, 5, expected).await {
            Err(StoreError::KeyLocked { id: refused, .. }) => assert_eq!(refused, id),
            other => panic!("expected StoreError::KeyLocked, got {other:?}"),
        }
    }
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.credits.unwrap().remaining(), 10, "nothing added");
    assert_eq!(got.version, locked.version, "nothing written");

    let added = store.add_credits(id, 5, None).await.unwrap().unwrap();
    assert_eq!(added.record.credits.unwrap().remaining(), 15);

    let open = store
        .create(NewKey::new("sa-lock").with_credits(credits))
        .await
        .unwrap();
    let oid = open.record.key_id;
    let added = store
        .add_credits_unless_locked(oid, 5, Some(open.version))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(added.record.credits.unwrap().remaining(), 15);
    assert_eq!(added.version, open.version.next());
    match store
        .add_credits_unless_locked(oid, 5, Some(open.version))
        .await
    {
        Err(StoreError::VersionMismatch { .. }) => {}
        other => panic!("expected StoreError::VersionMismatch, got {other:?}"),
    }
    let plain = store.create(NewKey::new("sa-lock")).await.unwrap();
    match store
        .add_credits_unless_locked(plain.record.key_id, 5, None)
        .await
    {
        Err(StoreError::NoCredits { .. }) => {}
        other => panic!("expected StoreError::NoCredits, got {other:?}"),
    }
    store.revoke(oid, None).await.unwrap();
    assert!(store
        .add_credits_unless_locked(oid, 5, None)
        .await
        .unwrap()
        .is_none());
}

/// An export carries the mark, and an import keeps it.
pub async fn export_and_import_carry_operator_locked<F: StoreFactory>(f: &F) {
    let source = f.store(StoreSettings::new()).await;
    let locked = source
        .create(NewKey::new("sa-lock").with_operator_locked(true))
        .await
        .unwrap();
    let open = source.create(NewKey::new("sa-lock")).await.unwrap();
    let exported = export_everything(&source).await;
    let target = f.store(StoreSettings::new()).await;
    for key in exported {
        target.import(key).await.unwrap();
    }
    let got = target.get(locked.record.key_id).await.unwrap().unwrap();
    assert!(got.record.operator_locked);
    let got = target.get(open.record.key_id).await.unwrap().unwrap();
    assert!(!got.record.operator_locked);
}
