//! Checks every key store must pass, written once over `&dyn KeyStore` and run
//! by `tests/memory_store.rs` and `tests/postgres.rs` with the same assertions.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tower_api_key::hash::Pepper;
use tower_api_key::management::KeyResource;
use tower_api_key::store::{
    KeyInfo, KeyPage, ListRequest, NewKey, StoreError, DEFAULT_MAX_KEYS_PER_ACCOUNT,
    MAX_PAGE_BYTES, MAX_PAGE_SIZE,
};
use tower_api_key::KeyStore;
use tower_api_key::ScopeSet;
use tower_api_key::{KeyId, PresentedKey};

/// The largest scope set a key may hold: 100 distinct scopes of 256 bytes.
pub fn largest_scopes() -> ScopeSet {
    ScopeSet::new((0..100).map(|i| format!("s{i:03}.{}", "x".repeat(251)))).unwrap()
}

/// The bytes `key` takes in a management API listing.
pub fn json_len(key: &KeyInfo) -> usize {
    serde_json::to_vec(&KeyResource::from(key)).unwrap().len()
}

/// Every page of `account`'s keys at `page_size`.
pub async fn all_pages(store: &dyn KeyStore, account: &str, page_size: usize) -> Vec<KeyPage> {
    let mut pages = Vec::new();
    let mut request = ListRequest::first(page_size);
    loop {
        let page = store.list(account, request).await.unwrap();
        let next = page.next_page_token.clone();
        pages.push(page);
        match next {
            Some(token) => request = ListRequest::after(page_size, token),
            None => return pages,
        }
    }
}

/// A page stops at `MAX_PAGE_BYTES` of JSON (estimated conservatively), the
/// token continues from its last key, and a key over the budget on its own
/// is still listed, alone.
pub async fn pages_stop_at_the_byte_budget(store: &dyn KeyStore) {
    let scopes = largest_scopes();
    // Quotes and backslashes take two bytes each in JSON.
    let description = "\"\\".repeat(128);
    let mut created = Vec::new();
    for _ in 0..60 {
        let key = store
            .create(
                NewKey::new("sa-big")
                    .with_scopes(scopes.clone())
                    .with_description(description.clone()),
            )
            .await
            .unwrap();
        created.push(key.record.key_id);
    }
    const { assert!(MAX_PAGE_SIZE >= 60, "the count alone would fit every key") };

    let pages = all_pages(store, "sa-big", MAX_PAGE_SIZE).await;
    assert!(pages.len() >= 2, "60 keys of ~27 KB need two pages");
    let mut listed = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        assert!(!page.keys.is_empty(), "page {i} is empty");
        let estimated: usize = page.keys.iter().map(KeyInfo::json_size_estimate).sum();
        let actual: usize = page.keys.iter().map(json_len).sum();
        assert!(estimated <= MAX_PAGE_BYTES, "page {i}: {estimated} bytes");
        assert!(
            actual <= estimated,
            "page {i}: estimate {estimated} < JSON {actual}"
        );
        for key in &page.keys {
            assert!(key.json_size_estimate() >= json_len(key));
        }
        if page.next_page_token.is_some() {
            // Full: one more key of this size would not have fitted.
            let next = page.keys[0].json_size_estimate();
            assert!(estimated + next > MAX_PAGE_BYTES, "page {i} stopped early");
        }
        listed.extend(page.keys.iter().map(|k| k.record.key_id));
    }
    assert_eq!(listed, created, "every key once, oldest first");

    // A key larger than the whole budget (a description the management API
    // would refuse, but a store takes) is listed alone: listing progresses.
    let huge = store
        .create(NewKey::new("sa-huge").with_description("d".repeat(MAX_PAGE_BYTES + 1)))
        .await
        .unwrap();
    let small = store.create(NewKey::new("sa-huge")).await.unwrap();
    let pages = all_pages(store, "sa-huge", 10).await;
    let sizes: Vec<usize> = pages.iter().map(|p| p.keys.len()).collect();
    assert_eq!(sizes, [1, 1]);
    assert_eq!(pages[0].keys[0].record.key_id, huge.record.key_id);
    assert_eq!(pages[1].keys[0].record.key_id, small.record.key_id);
}

/// Page sizes from 1 to `MAX_PAGE_SIZE` (200) are accepted, others refused.
pub async fn page_sizes_are_one_to_two_hundred(store: &dyn KeyStore) {
    assert_eq!(MAX_PAGE_SIZE, 200);
    store.create(NewKey::new("sa-sizes")).await.unwrap();
    for ok in [1, MAX_PAGE_SIZE] {
        let page = store
            .list("sa-sizes", ListRequest::first(ok))
            .await
            .unwrap();
        assert_eq!(page.keys.len(), 1);
    }
    for bad in [0, MAX_PAGE_SIZE + 1, 1000, usize::MAX] {
        assert!(
            matches!(
                store.list("sa-sizes", ListRequest::first(bad)).await,
                Err(StoreError::Invalid(_))
            ),
            "page size {bad}"
        );
    }
}

/// Keys of `account`, every page at the largest page size.
pub async fn ids_of(store: &dyn KeyStore, account: &str) -> Vec<KeyId> {
    all_pages(store, account, MAX_PAGE_SIZE)
        .await
        .iter()
        .flat_map(|p| p.keys.iter().map(|k| k.record.key_id))
        .collect()
}

#[track_caller]
pub fn assert_limit_reached<T: std::fmt::Debug>(result: Result<T, StoreError>, limit: usize) {
    match result {
        Err(StoreError::KeyLimitReached { limit: got, .. }) => assert_eq!(got, limit),
        other => panic!("expected KeyLimitReached, got {other:?}"),
    }
}

/// A store built with `max_keys_per_account(3)`: the fourth key of an
/// account is refused and stores nothing; expired keys count; reissue adds
/// nothing; other accounts are not affected; a delete makes room again.
/// `advance` moves the store's clock forward.
pub async fn keys_per_account_are_limited(store: &dyn KeyStore, advance: &dyn Fn(Duration)) {
    let soon = SystemTime::now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut new = NewKey::new("sa-limited");
        if i == 0 {
            new = new.with_expires_at(soon);
        }
        ids.push(store.create(new).await.unwrap().record.key_id);
        // Distinct creation times: the listing order is the creation order.
        advance(Duration::from_secs(1));
    }
    let refused = store.create(NewKey::new("sa-limited")).await;
    let err = refused.as_ref().err().map(ToString::to_string);
    assert_limit_reached(refused, 3);
    // The message names the limit, and neither the account nor any key.
    let err = err.unwrap();
    assert!(err.contains('3') && !err.contains("sa-limited"), "{err}");
    assert_eq!(ids_of(store, "sa-limited").await, ids, "nothing stored");

    // Expired keys still take their place until deleted.
    advance(Duration::from_secs(120));
    assert_limit_reached(store.create(NewKey::new("sa-limited")).await, 3);
    // Reissue gives a key a new secret; it adds no key.
    let reissued = store
        .reissue(ids[1], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(reissued.is_some());
    assert_eq!(ids_of(store, "sa-limited").await, ids);
    // Other accounts have their own room.
    store.create(NewKey::new("sa-other")).await.unwrap();

    // Deleting a key makes room for one.
    assert!(store.revoke(ids[0]).await.unwrap());
    let again = store.create(NewKey::new("sa-limited")).await.unwrap();
    assert_limit_reached(store.create(NewKey::new("sa-limited")).await, 3);
    assert_eq!(
        ids_of(store, "sa-limited").await,
        [ids[1], ids[2], again.record.key_id]
    );
}

/// 20 creates at once for one account against a limit of 5, spread over
/// `stores` (replicas of one store): exactly 5 succeed, the others are
/// refused, and the account holds 5 keys.
pub async fn concurrent_creates_respect_the_limit(stores: &[&dyn KeyStore]) {
    let results = futures_util::future::join_all(
        (0..20).map(|i| stores[i % stores.len()].create(NewKey::new("sa-race"))),
    )
    .await;
    let mut created = HashSet::new();
    let mut refused = 0;
    for result in results {
        match result {
            Ok(key) => {
                created.insert(key.record.key_id);
            }
            Err(StoreError::KeyLimitReached { limit: 5, .. }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(created.len(), 5);
    assert_eq!(refused, 15);
    let stored: HashSet<KeyId> = ids_of(stores[0], "sa-race").await.into_iter().collect();
    assert_eq!(stored, created);
}

/// Without a configured limit, an account holds at most 1,000 keys.
pub async fn the_default_limit_is_a_thousand_keys(store: &dyn KeyStore) {
    assert_eq!(DEFAULT_MAX_KEYS_PER_ACCOUNT, 1000);
    for _ in 0..1000 {
        store.create(NewKey::new("sa-full")).await.unwrap();
    }
    assert_limit_reached(store.create(NewKey::new("sa-full")).await, 1000);
}

/// The hashing work `store.verify` does for each of `probes` (all of them
/// keys the store refuses): HMACs computed and digests compared. Run on a
/// current-thread runtime, so that all of it happens on this thread.
#[cfg(feature = "test-util")]
pub async fn verify_work(
    store: &dyn KeyStore,
    probes: &[(&str, PresentedKey)],
) -> Vec<(String, (u64, u64))> {
    let mut work = Vec::new();
    for (what, key) in probes {
        let (hmacs, comparisons) = tower_api_key::hash::work::on_this_thread();
        let answer = store.verify(key).await.unwrap();
        let (hmacs_after, comparisons_after) = tower_api_key::hash::work::on_this_thread();
        assert!(answer.is_none(), "{what}: refused");
        work.push((
            (*what).to_owned(),
            (hmacs_after - hmacs, comparisons_after - comparisons),
        ));
    }
    work
}

/// Verification does the same hashing work for an unknown id as for a known
/// id with a wrong secret, whatever scheme or pepper the known key's hashes
/// were made with and whether it has a graced previous secret.
pub async fn verify_work_does_not_depend_on_the_id(
    store: &dyn KeyStore,
    probes: &[(&str, PresentedKey)],
) {
    let work = verify_work(store, probes).await;
    assert!(work[0].1 .0 >= 1, "at least one HMAC: {work:?}");
    assert!(
        work.iter().all(|(_, w)| *w == work[0].1),
        "the work differs: {work:?}"
    );
}

/// A key with the id of `id` and a secret nobody was given.
pub fn wrong_secret(store: &dyn KeyStore, id: KeyId) -> PresentedKey {
    let format = store.key_format().expect("a store has a key format");
    format
        .parse(format.generate_for(id).unwrap().expose_secret())
        .unwrap()
}

/// A key whose id no store holds.
pub fn unknown_key(store: &dyn KeyStore) -> PresentedKey {
    let format = store.key_format().expect("a store has a key format");
    format
        .parse(format.generate().unwrap().expose_secret())
        .unwrap()
}

/// The two peppers of the rotation tests: version 1, then version 2.
pub fn peppers() -> (Pepper, Pepper) {
    (
        Pepper::new(1, b"the first pepper, 32 bytes long!".to_vec()),
        Pepper::new(2, b"the second pepper, also 32 bytes".to_vec()),
    )
}

/// The probes of [`verify_work_does_not_depend_on_the_id`] that every store
/// has: an unknown id, and wrong secrets for the ids of two keys it creates,
/// one current and one reissued with its previous secret still in grace.
pub async fn id_probes(store: &dyn KeyStore) -> Vec<(&'static str, PresentedKey)> {
    let current = store.create(NewKey::new("sa")).await.unwrap();
    let graced = store.create(NewKey::new("sa")).await.unwrap();
    store
        .reissue(graced.record.key_id, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    vec![
        ("unknown id", unknown_key(store)),
        (
            "known id, wrong secret",
            wrong_secret(store, current.record.key_id),
        ),
        (
            "known id with a graced previous secret, wrong secret",
            wrong_secret(store, graced.record.key_id),
        ),
    ]
}
