//! Checks every key store must pass, written once over `&dyn KeyStore` and run
//! by `tests/memory_store.rs` and `tests/postgres.rs` with the same assertions.
#![allow(dead_code)]

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tower_api_key::key::KeyId;
use tower_api_key::management::KeyResource;
use tower_api_key::scope::ScopeSet;
use tower_api_key::store::{
    KeyInfo, KeyPage, KeyStore, ListRequest, NewKey, StoreError, MAX_PAGE_BYTES, MAX_PAGE_SIZE,
};

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
    assert!(MAX_PAGE_SIZE >= 60, "the count alone would fit every key");

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
