//! Every management operation of `MemoryStore`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::hash::{KeyHasher, Pepper};
use tower_api_key::store::{
    KeyUpdate, ListRequest, NewKey, StoreError, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE,
};
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::Verifier;
use tower_api_key::{GeneratedKey, KeyFormat, KeyId, PresentedKey};

mod common;

use common::stores;

fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn store_with_clock() -> (MemoryStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start_time()));
    let store = MemoryStore::builder().with_clock(clock.clone()).build();
    (store, clock)
}

fn parse(store: &MemoryStore, key: &GeneratedKey) -> PresentedKey {
    store.format().parse(key.expose_secret()).unwrap()
}

#[track_caller]
fn assert_invalid(result: Result<impl std::fmt::Debug, StoreError>) {
    match result {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("expected StoreError::Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_returns_a_working_secret_and_a_record_with_every_field_set() {
    let (store, clock) = store_with_clock();
    let scopes = ScopeSet::new(["yc.ai.translate.execute", "yc.storage.read"]).unwrap();
    let expires_at = start_time() + Duration::from_secs(86_400);
    let created = store
        .create(
            NewKey::new("sa-create")
                .with_description("for the translator")
                .with_scopes(scopes.clone())
                .with_expires_at(expires_at),
        )
        .await
        .unwrap();

    let record = &created.record;
    assert_eq!(record.key_id, created.key.id());
    assert_eq!(&*record.service_account_id, "sa-create");
    assert_eq!(record.scopes, scopes);
    assert_eq!(record.description, "for the translator");
    assert_eq!(record.created_at, clock.now());
    assert_eq!(record.expires_at, Some(expires_at));

    let presented = parse(&store, &created.key);
    assert_eq!(presented.id(), record.key_id);
    assert_eq!(
        store.verify(&presented).await.unwrap().as_ref(),
        Some(record)
    );
    assert!(created
        .key
        .expose_secret()
        .starts_with(&format!("tak_{}_", record.key_id)));
}

#[tokio::test]
async fn create_returns_the_secret_only_once() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("sa-once")).await.unwrap();
    let secret = created.key.expose_secret().to_owned();
    // Nothing the store returns afterwards holds it.
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    let page = store.list("sa-once", ListRequest::default()).await.unwrap();
    for text in [
        format!("{info:?}"),
        format!("{page:?}"),
        info.hint.clone(),
        format!("{store:?}"),
    ] {
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(&secret[21..53]), "{text}");
    }
    // Two creates, two different keys.
    let again = store.create(NewKey::new("sa-once")).await.unwrap();
    assert_ne!(again.record.key_id, created.record.key_id);
    assert_ne!(again.key.expose_secret(), secret);
}

#[tokio::test]
async fn create_rejects_an_expiry_in_the_past_or_now_and_creates_nothing() {
    let (store, clock) = store_with_clock();
    for at in [
        SystemTime::UNIX_EPOCH,
        clock.now() - Duration::from_secs(1),
        clock.now(),
    ] {
        assert_invalid(
            store
                .create(NewKey::new("sa-past").with_expires_at(at))
                .await,
        );
    }
    let page = store.list("sa-past", ListRequest::default()).await.unwrap();
    assert!(page.keys.is_empty());
    // One nanosecond in the future is fine.
    let ok = store
        .create(NewKey::new("sa-past").with_expires_at(clock.now() + Duration::from_nanos(1)))
        .await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn create_rejects_an_empty_service_account() {
    let store = MemoryStore::new();
    assert_invalid(store.create(NewKey::new("")).await);
    assert!(store
        .list("", ListRequest::default())
        .await
        .unwrap()
        .keys
        .is_empty());
}

#[tokio::test]
async fn create_uses_the_configured_format_and_hasher() {
    let format = KeyFormat::new("yc").unwrap();
    let store = MemoryStore::builder()
        .with_format(format)
        .with_hasher(KeyHasher::with_pepper(Pepper::new(
            1,
            b"a pepper of thirty-two bytes....".to_vec(),
        )))
        .build();
    assert_eq!(store.format(), format);
    let created = store.create(NewKey::new("sa-yc")).await.unwrap();
    assert!(created.key.expose_secret().starts_with("yc_"));
    let presented = format.parse(created.key.expose_secret()).unwrap();
    assert!(store.verify(&presented).await.unwrap().is_some());
    // A default-format parse of it fails: it is a `yc` key.
    assert!(KeyFormat::default()
        .parse(created.key.expose_secret())
        .is_err());
}

// ---------------------------------------------------------------------------
// verify (the store as a verifier)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn verify_knows_only_the_exact_key() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let format = store.format();
    // Same id, another secret.
    let forged = format.generate_for(created.record.key_id).unwrap();
    assert!(store
        .verify(&format.parse(forged.expose_secret()).unwrap())
        .await
        .unwrap()
        .is_none());
    // Another id altogether.
    let stranger = format.generate().unwrap();
    assert!(store
        .verify(&format.parse(stranger.expose_secret()).unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .is_some());
}

// ---------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------

#[tokio::test]
async fn get_returns_the_key_info_or_none() {
    let store = MemoryStore::new();
    let created = store
        .create(NewKey::new("sa-get").with_description("d"))
        .await
        .unwrap();
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    assert_eq!(info.record, created.record);
    assert_eq!(info.last_used_at, None);

    let unknown = KeyId::random().unwrap();
    assert!(store.get(unknown).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------

async fn create_keys(
    store: &MemoryStore,
    clock: &ManualClock,
    account: &str,
    n: usize,
) -> Vec<KeyId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        clock.advance(Duration::from_secs(1));
        ids.push(
            store
                .create(NewKey::new(account))
                .await
                .unwrap()
                .record
                .key_id,
        );
    }
    ids
}

async fn list_all(
    store: &MemoryStore,
    account: &str,
    page_size: usize,
) -> (Vec<KeyId>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut page = store
        .list(account, ListRequest::first(page_size))
        .await
        .unwrap();
    loop {
        sizes.push(page.keys.len());
        ids.extend(page.keys.iter().map(|k| k.record.key_id));
        let Some(token) = page.next_page_token.clone() else {
            break;
        };
        page = store
            .list(account, ListRequest::after(page_size, token))
            .await
            .unwrap();
    }
    (ids, sizes)
}

#[tokio::test]
async fn list_pages_through_an_accounts_keys_oldest_first() {
    let (store, clock) = store_with_clock();
    let mine = create_keys(&store, &clock, "sa-mine", 25).await;
    let theirs = create_keys(&store, &clock, "sa-theirs", 7).await;

    let (listed, sizes) = list_all(&store, "sa-mine", 10).await;
    assert_eq!(listed, mine);
    assert_eq!(sizes, [10, 10, 5]);

    // An exact multiple of the page size ends without an empty page.
    let (listed, sizes) = list_all(&store, "sa-theirs", 7).await;
    assert_eq!(listed, theirs);
    assert_eq!(sizes, [7]);
    let (_, sizes) = list_all(&store, "sa-mine", 5).await;
    assert_eq!(sizes, [5, 5, 5, 5, 5]);

    // Other accounts' keys are never listed.
    let (listed, _) = list_all(&store, "sa-mine", MAX_PAGE_SIZE).await;
    let listed: HashSet<_> = listed.into_iter().collect();
    assert!(theirs.iter().all(|id| !listed.contains(id)));
    let nobody = store
        .list("sa-nobody", ListRequest::default())
        .await
        .unwrap();
    assert!(nobody.keys.is_empty());
    assert_eq!(nobody.next_page_token, None);
}

#[tokio::test]
async fn list_orders_keys_created_at_the_same_instant_stably() {
    // A clock that never moves: every key has the same creation time.
    let (store, _clock) = store_with_clock();
    for _ in 0..12 {
        store.create(NewKey::new("sa-same")).await.unwrap();
    }
    let (by_three, _) = list_all(&store, "sa-same", 3).await;
    let (all_at_once, _) = list_all(&store, "sa-same", 100).await;
    assert_eq!(by_three.len(), 12);
    assert_eq!(by_three, all_at_once);
    assert_eq!(by_three.iter().collect::<HashSet<_>>().len(), 12);
}

#[tokio::test]
async fn list_uses_the_default_page_size_when_none_is_given() {
    let (store, clock) = store_with_clock();
    let ids = create_keys(&store, &clock, "sa-many", DEFAULT_PAGE_SIZE + 1).await;
    let page = store.list("sa-many", ListRequest::default()).await.unwrap();
    assert_eq!(page.keys.len(), DEFAULT_PAGE_SIZE);
    let token = page.next_page_token.expect("one more key");
    let rest = store
        .list("sa-many", ListRequest::after(DEFAULT_PAGE_SIZE, token))
        .await
        .unwrap();
    assert_eq!(rest.keys.len(), 1);
    assert_eq!(rest.keys[0].record.key_id, ids[DEFAULT_PAGE_SIZE]);
    assert_eq!(rest.next_page_token, None);
}

#[tokio::test]
async fn create_refuses_a_key_past_the_accounts_limit_until_one_is_deleted() {
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = MemoryStore::builder()
        .with_clock(clock.clone())
        .max_keys_per_account(3)
        .build();
    stores::keys_per_account_are_limited(&store, &|by| clock.advance(by)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_for_one_account_never_pass_the_limit() {
    let store = MemoryStore::builder().max_keys_per_account(5).build();
    stores::concurrent_creates_respect_the_limit(&[&store, &store.clone()]).await;
}

#[tokio::test]
async fn accounts_hold_at_most_a_thousand_keys_by_default() {
    stores::the_default_limit_is_a_thousand_keys(&MemoryStore::new()).await;
}

#[cfg(feature = "test-util")]
#[tokio::test(flavor = "current_thread")]
async fn verify_does_the_same_hashing_work_whether_or_not_the_id_exists() {
    let (v1, v2) = stores::peppers();
    let store = MemoryStore::builder()
        .with_hasher(KeyHasher::with_pepper(v2).with_previous_pepper(v1))
        .build();
    let probes = stores::id_probes(&store).await;
    stores::verify_work_does_not_depend_on_the_id(&store, &probes).await;
}

#[tokio::test]
async fn list_stops_a_page_at_the_byte_budget_and_continues_from_its_last_key() {
    stores::pages_stop_at_the_byte_budget(&MemoryStore::new()).await;
}

#[tokio::test]
async fn list_accepts_page_sizes_from_one_to_two_hundred() {
    stores::page_sizes_are_one_to_two_hundred(&MemoryStore::new()).await;
}

#[tokio::test]
async fn list_rejects_page_sizes_outside_one_to_the_maximum() {
    let (store, clock) = store_with_clock();
    create_keys(&store, &clock, "sa-1", 2).await;
    assert_invalid(store.list("sa-1", ListRequest::first(0)).await);
    assert_invalid(
        store
            .list("sa-1", ListRequest::first(MAX_PAGE_SIZE + 1))
            .await,
    );
    assert_invalid(store.list("sa-1", ListRequest::first(usize::MAX)).await);
    assert_eq!(
        store
            .list("sa-1", ListRequest::first(1))
            .await
            .unwrap()
            .keys
            .len(),
        1
    );
    assert_eq!(
        store
            .list("sa-1", ListRequest::first(MAX_PAGE_SIZE))
            .await
            .unwrap()
            .keys
            .len(),
        2
    );
}

#[tokio::test]
async fn list_rejects_page_tokens_it_did_not_issue() {
    let (store, clock) = store_with_clock();
    create_keys(&store, &clock, "sa-1", 3).await;
    let theirs = create_keys(&store, &clock, "sa-2", 3).await;
    let unknown_id = KeyId::random().unwrap().to_string();
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    for token in [
        String::new(),
        "garbage".to_owned(),
        "not a token at all, and rather long for one".to_owned(),
        "🙂".to_owned(),
        created.key.expose_secret().to_owned(),
        unknown_id,
        theirs[0].to_string(),
        "12.garbage".to_owned(),
        format!("x.{}", theirs[0]),
        format!("1.{}.2", theirs[0]),
        format!(".{}", theirs[0]),
        format!("{}.{}", u128::MAX, theirs[0]),
        // Times a store cannot hold, whose arithmetic would overflow.
        format!("9223372036854775807999999999.{}", theirs[0]),
        format!("1000000000000000000000000000.{}", theirs[0]),
        format!("-9223372036854775807999999999.{}", theirs[0]),
    ] {
        assert_invalid(store.list("sa-1", ListRequest::after(10, token)).await);
    }
}

#[tokio::test]
async fn list_continues_after_the_last_key_of_a_page_is_revoked() {
    let (store, clock) = store_with_clock();
    let ids = create_keys(&store, &clock, "sa-paging", 6).await;
    let first = store
        .list("sa-paging", ListRequest::first(3))
        .await
        .unwrap();
    let token = first.next_page_token.clone().unwrap();
    // The key the token points after goes away between the two pages.
    assert!(store.revoke(ids[2]).await.unwrap());
    let second = store
        .list("sa-paging", ListRequest::after(3, token))
        .await
        .unwrap();
    let second: Vec<_> = second.keys.iter().map(|k| k.record.key_id).collect();
    assert_eq!(second, ids[3..]);
}

#[tokio::test]
async fn list_continues_after_the_last_key_of_a_page_is_revoked_when_all_share_a_creation_time() {
    let (store, _clock) = store_with_clock();
    for _ in 0..6 {
        store.create(NewKey::new("sa-same")).await.unwrap();
    }
    let (all, _) = list_all(&store, "sa-same", 6).await;
    let first = store.list("sa-same", ListRequest::first(3)).await.unwrap();
    assert!(store.revoke(all[2]).await.unwrap());
    let second = store
        .list(
            "sa-same",
            ListRequest::after(3, first.next_page_token.unwrap()),
        )
        .await
        .unwrap();
    let second: Vec<_> = second.keys.iter().map(|k| k.record.key_id).collect();
    assert_eq!(second, all[3..]);
}

#[tokio::test]
async fn list_pages_through_keys_created_before_and_after_the_unix_epoch() {
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH - Duration::from_secs(3),
    ));
    let store = MemoryStore::builder().with_clock(clock.clone()).build();
    // Created at -2 s, -1 s, 0 s, +1 s and +2 s from the epoch, then one at +2.5 s.
    let mut ids = create_keys(&store, &clock, "sa-epoch", 5).await;
    clock.advance(Duration::from_millis(500));
    ids.push(
        store
            .create(NewKey::new("sa-epoch"))
            .await
            .unwrap()
            .record
            .key_id,
    );
    for page_size in 1..=6 {
        let (listed, _) = list_all(&store, "sa-epoch", page_size).await;
        assert_eq!(listed, ids, "page size {page_size}");
    }
}

// ---------------------------------------------------------------------------
// update
// ---------------------------------------------------------------------------

#[tokio::test]
async fn update_changes_each_field_alone() {
    let (store, clock) = store_with_clock();
    let created = store
        .create(
            NewKey::new("sa-upd")
                .with_description("before")
                .with_scopes(ScopeSet::new(["a.read"]).unwrap()),
        )
        .await
        .unwrap();
    let id = created.record.key_id;

    let info = store
        .update(id, KeyUpdate::default().with_description("after"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.description, "after");
    assert_eq!(info.record.scopes, created.record.scopes);
    assert_eq!(info.record.expires_at, None);

    let scopes = ScopeSet::new(["a.read", "a.write"]).unwrap();
    let info = store
        .update(id, KeyUpdate::default().with_scopes(scopes.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.scopes, scopes);
    assert_eq!(info.record.description, "after");

    let unscoped = store
        .update(id, KeyUpdate::default().with_scopes(ScopeSet::empty()))
        .await
        .unwrap()
        .unwrap();
    assert!(unscoped.record.scopes.is_empty());

    let expires_at = clock.now() + Duration::from_secs(60);
    let info = store
        .update(id, KeyUpdate::default().with_expires_at(Some(expires_at)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.expires_at, Some(expires_at));
    assert_eq!(info.record.description, "after");

    let info = store
        .update(id, KeyUpdate::default().with_expires_at(None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.expires_at, None);

    // An empty update changes nothing.
    let before = store.get(id).await.unwrap().unwrap();
    let info = store
        .update(id, KeyUpdate::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info, before);

    // The account, id and creation time never change.
    assert_eq!(info.record.key_id, id);
    assert_eq!(
        info.record.service_account_id,
        created.record.service_account_id
    );
    assert_eq!(info.record.created_at, created.record.created_at);
    // get and verify see the update.
    assert_eq!(store.get(id).await.unwrap().unwrap(), info);
    let record = store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record, info.record);
}

#[tokio::test]
async fn update_rejects_an_expiry_in_the_past_and_changes_nothing() {
    let (store, clock) = store_with_clock();
    let created = store
        .create(NewKey::new("sa-upd").with_description("before"))
        .await
        .unwrap();
    let id = created.record.key_id;
    let before = store.get(id).await.unwrap().unwrap();
    for at in [clock.now() - Duration::from_secs(1), clock.now()] {
        assert_invalid(
            store
                .update(
                    id,
                    KeyUpdate::default()
                        .with_description("after")
                        .with_scopes(ScopeSet::new(["x.y"]).unwrap())
                        .with_expires_at(Some(at)),
                )
                .await,
        );
        assert_eq!(store.get(id).await.unwrap().unwrap(), before);
    }
}

#[tokio::test]
async fn update_of_an_unknown_key_returns_none() {
    let store = MemoryStore::new();
    let update = KeyUpdate::default().with_description("x");
    assert!(store
        .update(KeyId::random().unwrap(), update)
        .await
        .unwrap()
        .is_none());
}

// ---------------------------------------------------------------------------
// revoke
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoke_returns_true_then_false_and_the_key_is_gone() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("sa-rev")).await.unwrap();
    let keep = store.create(NewKey::new("sa-rev")).await.unwrap();
    let id = created.record.key_id;
    assert!(store.revoke(id).await.unwrap());
    assert!(!store.revoke(id).await.unwrap());
    assert!(store.get(id).await.unwrap().is_none());
    assert!(store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .is_none());
    let listed = store.list("sa-rev", ListRequest::default()).await.unwrap();
    assert_eq!(listed.keys.len(), 1);
    assert_eq!(listed.keys[0].record.key_id, keep.record.key_id);
    assert!(!store.revoke(KeyId::random().unwrap()).await.unwrap());
}

// ---------------------------------------------------------------------------
// reissue
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reissue_keeps_the_id_and_record_and_changes_the_secret() {
    let (store, clock) = store_with_clock();
    let created = store
        .create(
            NewKey::new("sa-re")
                .with_description("d")
                .with_scopes(ScopeSet::new(["a.b"]).unwrap())
                .with_expires_at(clock.now() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let reissued = store
        .reissue(created.record.key_id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.key.id(), created.record.key_id);
    assert_eq!(reissued.record, created.record);
    assert_ne!(reissued.key.expose_secret(), created.key.expose_secret());

    let new = parse(&store, &reissued.key);
    assert_eq!(
        store.verify(&new).await.unwrap().as_ref(),
        Some(&created.record)
    );
    assert!(store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .is_none());
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    assert_eq!(info.record, created.record);
}

#[tokio::test]
async fn reissue_with_grace_keeps_the_old_secret_until_the_deadline() {
    let (store, clock) = store_with_clock();
    let created = store.create(NewKey::new("sa-re")).await.unwrap();
    let old = parse(&store, &created.key);
    let grace = Duration::from_secs(60);
    let reissued = store
        .reissue(created.record.key_id, grace)
        .await
        .unwrap()
        .unwrap();
    let deadline = clock.now() + grace;
    let record = store.verify(&old).await.unwrap().unwrap();
    // The old secret's record carries the grace deadline as its expiry.
    assert_eq!(record.expires_at, Some(deadline));
    clock.set(deadline - Duration::from_nanos(1));
    assert!(store.verify(&old).await.unwrap().is_some());
    clock.set(deadline);
    assert!(store.verify(&old).await.unwrap().is_none());
    assert!(store
        .verify(&parse(&store, &reissued.key))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn reissue_of_an_unknown_key_returns_none() {
    let store = MemoryStore::new();
    assert!(store
        .reissue(KeyId::random().unwrap(), Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
}

// ---------------------------------------------------------------------------
// record_usage
// ---------------------------------------------------------------------------

#[tokio::test]
async fn record_usage_only_moves_last_used_at_forward() {
    let store = MemoryStore::new();
    let a = store
        .create(NewKey::new("sa-use"))
        .await
        .unwrap()
        .record
        .key_id;
    let b = store
        .create(NewKey::new("sa-use"))
        .await
        .unwrap()
        .record
        .key_id;
    let t = |s: u64| start_time() + Duration::from_secs(s);
    let last_used = |id: KeyId| {
        let store = store.clone();
        async move { store.get(id).await.unwrap().unwrap().last_used_at }
    };

    assert_eq!(last_used(a).await, None);
    store.record_usage(&[(a, t(10))]).await.unwrap();
    assert_eq!(last_used(a).await, Some(t(10)));
    assert_eq!(last_used(b).await, None, "only the key used");

    // An older time never moves it back.
    store.record_usage(&[(a, t(5))]).await.unwrap();
    assert_eq!(last_used(a).await, Some(t(10)));
    store.record_usage(&[(a, t(10))]).await.unwrap();
    assert_eq!(last_used(a).await, Some(t(10)));

    // Newer moves it forward; within one batch the latest wins, in any order.
    store
        .record_usage(&[(a, t(30)), (b, t(7)), (a, t(20)), (b, t(8))])
        .await
        .unwrap();
    assert_eq!(last_used(a).await, Some(t(30)));
    assert_eq!(last_used(b).await, Some(t(8)));

    // Unknown ids are ignored, the rest of the batch applies.
    store
        .record_usage(&[(KeyId::random().unwrap(), t(99)), (b, t(40))])
        .await
        .unwrap();
    assert_eq!(last_used(b).await, Some(t(40)));
    store.record_usage(&[]).await.unwrap();

    // Listing shows the same.
    let page = store.list("sa-use", ListRequest::default()).await.unwrap();
    let by_id: Vec<_> = page
        .keys
        .iter()
        .map(|k| (k.record.key_id, k.last_used_at))
        .collect();
    assert!(by_id.contains(&(a, Some(t(30)))));
    assert!(by_id.contains(&(b, Some(t(40)))));
}

// ---------------------------------------------------------------------------
// hint
// ---------------------------------------------------------------------------

fn expected_hint(key: &GeneratedKey) -> String {
    let text = key.expose_secret();
    let prefix = text.split('_').next().unwrap();
    format!("{prefix}_…{}", &text[text.len() - 4..])
}

#[tokio::test]
async fn the_hint_shows_the_prefix_and_the_last_four_characters_only() {
    for store in [
        MemoryStore::new(),
        MemoryStore::builder()
            .with_format(KeyFormat::new("acme2").unwrap())
            .build(),
    ] {
        let created = store.create(NewKey::new("sa-hint")).await.unwrap();
        let info = store.get(created.record.key_id).await.unwrap().unwrap();
        assert_eq!(info.hint, expected_hint(&created.key));
        assert!(!info.hint.contains(created.record.key_id.as_str()));
        // Prefix, '_', '…' and four characters.
        assert_eq!(
            info.hint.chars().count(),
            store.format().prefix().len() + 1 + 1 + 4
        );

        // A reissue gets the new key's hint.
        let reissued = store
            .reissue(created.record.key_id, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let info = store.get(created.record.key_id).await.unwrap().unwrap();
        assert_eq!(info.hint, expected_hint(&reissued.key));
        let listed = store.list("sa-hint", ListRequest::default()).await.unwrap();
        assert_eq!(listed.keys[0].hint, info.hint);
    }
}
