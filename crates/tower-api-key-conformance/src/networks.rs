//! A key's allowed networks and metadata: kept exactly through create,
//! every read, verification, PATCH, reissue and export/import, at their
//! bounds (64 networks of both families, 1 KiB of metadata).

use tower_api_key::store::{KeyUpdate, NewKey};
use tower_api_key::{
    KeyStore, Metadata, Networks, Verifier, MAX_METADATA_LEN, MAX_NETWORKS_PER_KEY,
};

use crate::{export_everything, parse, StoreFactory, StoreSettings};

fn networks(entries: &[&str]) -> Option<Networks> {
    Some(Networks::parse(entries).unwrap())
}

fn metadata(json: &str) -> Option<Metadata> {
    Some(Metadata::new(json).unwrap())
}

/// The most networks a key may carry, IPv4 and IPv6 mixed (bare addresses
/// among them, kept as `/32` and `/128`).
fn most_networks() -> Networks {
    let entries: Vec<String> = (0..MAX_NETWORKS_PER_KEY)
        .map(|i| match i % 3 {
            0 => format!("10.{i}.0.0/16"),
            1 => format!("2001:db8:{i:x}::/48"),
            _ => format!("203.0.113.{i}"),
        })
        .collect();
    Networks::parse(&entries).unwrap()
}

/// The largest metadata: an object of exactly [`MAX_METADATA_LEN`] bytes,
/// with escapes and characters beyond ASCII.
fn largest_metadata() -> Metadata {
    let head = r#"{"owner":"ops@example.com","note":"é\n\u00e9","pad":""#;
    let pad = MAX_METADATA_LEN - head.len() - 2;
    Metadata::new(&format!("{head}{}\"}}", "x".repeat(pad))).unwrap()
}

/// Networks and metadata given at create come back from create, get, list,
/// verification, and survive a reissue; a key without them has none.
pub async fn networks_and_metadata_round_trip_through_every_read<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let nets = networks(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.7"]);
    let meta = metadata(r#"{"plan":"pro","tenant":42}"#);
    let created = store
        .create(
            NewKey::new("sa-net")
                .with_allowed_networks(nets.clone())
                .with_metadata(meta.clone()),
        )
        .await
        .unwrap();
    assert_eq!(created.record.allowed_networks, nets);
    assert_eq!(created.record.metadata, meta);
    let id = created.record.key_id;
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.allowed_networks, nets);
    assert_eq!(
        got.record.allowed_networks.as_ref().unwrap().to_strings(),
        ["10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32"]
    );
    assert_eq!(got.record.metadata, meta);
    let verified = store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.allowed_networks, nets);
    assert_eq!(verified.metadata, meta);
    let listed = store
        .list("sa-net", tower_api_key::store::ListRequest::first(10))
        .await
        .unwrap();
    assert_eq!(listed.keys[0].record.allowed_networks, nets);
    assert_eq!(listed.keys[0].record.metadata, meta);

    let reissued = store
        .reissue(id, std::time::Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.record.allowed_networks, nets);
    assert_eq!(reissued.record.metadata, meta);

    let plain = store.create(NewKey::new("sa-net")).await.unwrap();
    let got = store.get(plain.record.key_id).await.unwrap().unwrap();
    assert_eq!(got.record.allowed_networks, None);
    assert_eq!(got.record.metadata, None);
}

/// PATCH sets, replaces and removes each field on its own, leaving the
/// other as it is.
pub async fn update_sets_replaces_and_removes_networks_and_metadata<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let created = store.create(NewKey::new("sa-net")).await.unwrap();
    let id = created.record.key_id;
    let nets = networks(&["192.0.2.0/24"]);
    let meta = metadata(r#"{"plan":"free"}"#);
    let set = KeyUpdate::default()
        .with_allowed_networks(nets.clone())
        .with_metadata(meta.clone());
    let info = store.update(id, set, None).await.unwrap().unwrap();
    assert_eq!(info.record.allowed_networks, nets);
    assert_eq!(info.record.metadata, meta);

    let other = networks(&["2001:db8::/32", "10.0.0.0/8"]);
    let info = store
        .update(
            id,
            KeyUpdate::default().with_allowed_networks(other.clone()),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.allowed_networks, other);
    assert_eq!(info.record.metadata, meta, "metadata left as it was");

    let info = store
        .update(id, KeyUpdate::default().with_metadata(None), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.metadata, None);
    assert_eq!(
        info.record.allowed_networks, other,
        "networks left as they were"
    );
    let info = store
        .update(id, KeyUpdate::default().with_allowed_networks(None), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.allowed_networks, None);
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.allowed_networks, None);
    assert_eq!(got.record.metadata, None);
}

/// The bounds are kept whole: 64 networks of both families and 1 KiB of
/// metadata, through create, PATCH and verification.
pub async fn the_largest_networks_and_metadata_are_kept_whole<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let (nets, meta) = (most_networks(), largest_metadata());
    assert_eq!(meta.as_str().len(), MAX_METADATA_LEN);
    let created = store
        .create(
            NewKey::new("sa-net")
                .with_allowed_networks(Some(nets.clone()))
                .with_metadata(Some(meta.clone())),
        )
        .await
        .unwrap();
    let got = store.get(created.record.key_id).await.unwrap().unwrap();
    assert_eq!(got.record.allowed_networks.as_ref(), Some(&nets));
    assert_eq!(got.record.metadata.as_ref(), Some(&meta));
    let plain = store.create(NewKey::new("sa-net")).await.unwrap();
    let update = KeyUpdate::default()
        .with_allowed_networks(Some(nets.clone()))
        .with_metadata(Some(meta.clone()));
    store
        .update(plain.record.key_id, update, None)
        .await
        .unwrap()
        .unwrap();
    let verified = store
        .verify(&parse(&store, &plain.key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.allowed_networks, Some(nets));
    assert_eq!(verified.metadata, Some(meta));
}

/// An export carries a key's networks and metadata, and an import keeps
/// them; metadata holding a key is refused by import, naming the field.
pub async fn export_and_import_carry_networks_and_metadata<F: StoreFactory>(f: &F) {
    let source = f.store(StoreSettings::new()).await;
    let created = source
        .create(
            NewKey::new("sa-net")
                .with_allowed_networks(Some(most_networks()))
                .with_metadata(Some(largest_metadata())),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let exported = export_everything(&source).await;
    let target = f.store(StoreSettings::new()).await;
    for key in exported.clone() {
        target.import(key).await.unwrap();
    }
    let got = target.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.allowed_networks, Some(most_networks()));
    assert_eq!(got.record.metadata, Some(largest_metadata()));

    // Metadata that holds a key would show it to every reader.
    let mut leaky = exported[0].clone();
    let other = source.create(NewKey::new("sa-other")).await.unwrap();
    leaky.info.record.metadata =
        metadata(&format!(r#"{{"oops":"{}"}}"#, other.key.expose_secret()));
    let fresh = f.store(StoreSettings::new()).await;
    let text = crate::assert_invalid(fresh.import(leaky).await);
    assert!(text.contains("metadata"), "{text}");
    assert!(fresh.get(id).await.unwrap().is_none(), "nothing written");
}
