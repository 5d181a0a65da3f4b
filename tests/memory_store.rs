//! `MemoryStore`: the conformance suite every store passes (the
//! `tower-api-key-conformance` crate), and what only the memory store has.

use tower_api_key::hash::HashScheme;
use tower_api_key::store::NewKey;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::{KeyFormat, Verifier};

// The conformance suite, from its crate (crates/tower-api-key-conformance).
use tower_api_key_conformance as conformance;
use tower_api_key_conformance::{lifecycle_conformance, store_conformance};

use conformance::MemoryFactory;

store_conformance!(MemoryFactory);
lifecycle_conformance!(MemoryFactory);

/// `MemoryStore::new()` and the builder's defaults: `tak` keys, hashed with
/// plain SHA-256; `format()` is the verifier's key format.
#[tokio::test]
async fn the_defaults_issue_tak_keys_hashed_with_sha256() {
    for store in [MemoryStore::new(), MemoryStore::builder().build()] {
        assert_eq!(store.format(), KeyFormat::default());
        assert_eq!(store.key_format(), Some(store.format()));
        let created = store.create(NewKey::new("sa")).await.unwrap();
        assert!(created.key.expose_secret().starts_with("tak_"));
        let exported = store.export(None, 1).await.unwrap();
        assert_eq!(exported[0].hash.scheme(), HashScheme::Sha256);
    }
    let format = KeyFormat::new("yc").unwrap();
    let store = MemoryStore::builder().format(format).build();
    assert_eq!(store.format(), format);
}
