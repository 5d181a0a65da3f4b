//! The management operations and verification: create, get, list, update,
//! revoke, reissue, record_usage, hints, limits, hashing and announcements.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::hash::{HashScheme, KeyHasher};
use tower_api_key::limits::{Credits, Refill, MAX_CREDITS};
use tower_api_key::store::{
    latest_time, KeyUpdate, ListRequest, NewKey, StoreError, DEFAULT_MAX_KEYS_PER_ACCOUNT,
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE,
};
use tower_api_key::{GeneratedKey, Invalidation, KeyFormat, KeyId, KeyStore, PresentedKey};
use tower_api_key::{ScopeSet, Verifier};

use super::{
    all_pages, assert_invalid, assert_invalid_page_size, assert_invalid_page_token,
    assert_limit_reached, concurrent_creates_respect_the_limit, export_everything, exported,
    ids_of, largest_rate_limits, largest_scopes, parse, peppers, store_and_clock, unknown_key,
    wrong_secret, StoreFactory, StoreSettings, Watch,
};

async fn clocked<F: StoreFactory>(f: &F) -> (F::Store, std::sync::Arc<ManualClock>) {
    store_and_clock(f, StoreSettings::new()).await
}

async fn plain<F: StoreFactory>(f: &F) -> F::Store {
    f.store(StoreSettings::new()).await
}

// ---------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------

pub async fn create_returns_a_working_secret_and_a_record_with_every_field_set<F: StoreFactory>(
    f: &F,
) {
    let (store, clock) = clocked(f).await;
    let scopes = ScopeSet::new(["yc.ai.translate.execute", "yc.storage.read"]).unwrap();
    let expires_at = clock.now() + Duration::from_secs(86_400);
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

pub async fn create_returns_the_secret_only_once<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    let created = store.create(NewKey::new("sa-once")).await.unwrap();
    let secret = created.key.expose_secret().to_owned();
    // Nothing the store returns afterwards holds it.
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    let page = store.list("sa-once", ListRequest::default()).await.unwrap();
    let export = export_everything(&store).await;
    for text in [
        format!("{info:?}"),
        format!("{page:?}"),
        format!("{export:?}"),
        info.hint.clone(),
        format!("{store:?}"),
    ] {
        assert!(!text.contains(&secret), "the whole key is shown");
        assert!(!text.contains(&secret[21..53]), "the secret part is shown");
    }
    // Two creates, two different keys.
    let again = store.create(NewKey::new("sa-once")).await.unwrap();
    assert_ne!(again.record.key_id, created.record.key_id);
    assert_ne!(again.key.expose_secret(), secret);
}

pub async fn create_rejects_an_expiry_in_the_past_or_now_and_creates_nothing<F: StoreFactory>(
    f: &F,
) {
    let (store, clock) = clocked(f).await;
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

pub async fn create_rejects_an_expiry_after_the_year_9999<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    for at in [
        latest_time() + Duration::from_millis(1),
        latest_time() + Duration::from_secs(86_400 * 366 * 100),
    ] {
        let why = assert_invalid(
            store
                .create(NewKey::new("sa-late").with_expires_at(at))
                .await,
        );
        assert!(why.contains("9999"), "{why}");
    }
    assert!(ids_of(&store, "sa-late").await.is_empty(), "nothing stored");
    // The last instant of year 9999 itself is fine, and kept.
    let last = store
        .create(NewKey::new("sa-late").with_expires_at(latest_time()))
        .await
        .unwrap();
    let info = store.get(last.record.key_id).await.unwrap().unwrap();
    assert_eq!(info.record.expires_at, Some(latest_time()));
}

pub async fn create_rejects_an_empty_service_account<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    assert_invalid(store.create(NewKey::new("")).await);
    assert!(store
        .list("", ListRequest::default())
        .await
        .unwrap()
        .keys
        .is_empty());
    assert!(export_everything(&store).await.is_empty());
}

pub async fn create_uses_the_configured_format_and_hasher<F: StoreFactory>(f: &F) {
    let format = KeyFormat::new("yc").unwrap();
    let (v1, _) = peppers();
    let store = f
        .store(
            StoreSettings::new()
                .with_format(format)
                .with_hasher(KeyHasher::with_pepper(v1)),
        )
        .await;
    assert_eq!(store.key_format(), Some(format));
    let created = store.create(NewKey::new("sa-yc")).await.unwrap();
    assert!(created.key.expose_secret().starts_with("yc_"));
    let presented = format.parse(created.key.expose_secret()).unwrap();
    assert!(store.verify(&presented).await.unwrap().is_some());
    // A default-format parse of it fails: it is a `yc` key.
    assert!(KeyFormat::default()
        .parse(created.key.expose_secret())
        .is_err());
    // At rest: HMAC with the configured pepper.
    let stored = exported(&store, created.record.key_id).await;
    assert_eq!(
        stored.hash.scheme(),
        HashScheme::HmacSha256 { pepper_version: 1 }
    );
}

// ---------------------------------------------------------------------------
// verify (the store as a verifier)
// ---------------------------------------------------------------------------

pub async fn verify_knows_only_the_exact_key<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let format = store.key_format().unwrap();
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

/// The hashing work `store.verify` does for each of `probes` (all of them
/// keys the store refuses): HMACs computed and digests compared. Run on a
/// current-thread runtime, so that all of it happens on this thread.
async fn verify_work(
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
/// were made with and whether it has a graced previous secret. Keys of older
/// schemes come in by import, as after a pepper rotation.
pub async fn verify_does_the_same_hashing_work_whether_or_not_the_id_exists<F: StoreFactory>(
    f: &F,
) {
    let (v1, v2) = peppers();
    let plain = f.store(StoreSettings::new()).await;
    let old = f
        .store(StoreSettings::new().with_hasher(KeyHasher::with_pepper(v1.clone())))
        .await;
    let store = f
        .store(
            StoreSettings::new().with_hasher(KeyHasher::with_pepper(v2).with_previous_pepper(v1)),
        )
        .await;
    // Keys not yet moved to the current pepper: plain SHA-256 and pepper v1.
    let sha = plain.create(NewKey::new("sa")).await.unwrap();
    let unmigrated = old.create(NewKey::new("sa")).await.unwrap();
    let graced_v1 = old.create(NewKey::new("sa")).await.unwrap();
    for key in export_everything(&plain)
        .await
        .into_iter()
        .chain(export_everything(&old).await)
    {
        store.import(key).await.unwrap();
    }
    store
        .reissue(graced_v1.record.key_id, Duration::from_secs(600), None)
        .await
        .unwrap()
        .unwrap();
    // A current key, and one with its previous secret in grace.
    let current = store.create(NewKey::new("sa")).await.unwrap();
    let graced = store.create(NewKey::new("sa")).await.unwrap();
    store
        .reissue(graced.record.key_id, Duration::from_secs(600), None)
        .await
        .unwrap()
        .unwrap();
    let probes = vec![
        ("unknown id", unknown_key(&store)),
        (
            "known id, wrong secret",
            wrong_secret(&store, current.record.key_id),
        ),
        (
            "known id with a graced previous secret, wrong secret",
            wrong_secret(&store, graced.record.key_id),
        ),
        (
            "known id hashed with the previous pepper, wrong secret",
            wrong_secret(&store, unmigrated.record.key_id),
        ),
        (
            "known id hashed with plain SHA-256, wrong secret",
            wrong_secret(&store, sha.record.key_id),
        ),
        (
            "known id with a graced previous-pepper secret, wrong secret",
            wrong_secret(&store, graced_v1.record.key_id),
        ),
    ];
    let work = verify_work(&store, &probes).await;
    assert!(work[0].1 .0 >= 1, "at least one HMAC: {work:?}");
    assert!(
        work.iter().all(|(_, w)| *w == work[0].1),
        "the work differs: {work:?}"
    );
}

/// Keys hashed with plain SHA-256, pepper v1 and pepper v2 (moved between
/// stores by export and import, as a deployment rotating its pepper would
/// hold them): each verifies exactly where its scheme's pepper is held.
pub async fn rotated_pepper_keys_verify_under_the_scheme_that_made_them<F: StoreFactory>(f: &F) {
    let (v1, v2) = peppers();
    let with = |hasher: KeyHasher| f.store(StoreSettings::new().with_hasher(hasher));
    let plain = with(KeyHasher::default()).await;
    let old = with(KeyHasher::with_pepper(v1.clone())).await;
    let rotated = with(KeyHasher::with_pepper(v2.clone()).with_previous_pepper(v1)).await;
    let v2_only = with(KeyHasher::with_pepper(v2)).await;

    let sha_key = plain.create(NewKey::new("sa")).await.unwrap();
    let v1_key = old.create(NewKey::new("sa")).await.unwrap();
    let v2_key = rotated.create(NewKey::new("sa")).await.unwrap();
    let keys = [&sha_key, &v1_key, &v2_key];
    let mut schemes = Vec::new();
    for (from, created) in [&plain, &old, &rotated].into_iter().zip(keys) {
        schemes.push(exported(from, created.record.key_id).await.hash.scheme());
    }
    assert_eq!(
        schemes,
        [
            HashScheme::Sha256,
            HashScheme::HmacSha256 { pepper_version: 1 },
            HashScheme::HmacSha256 { pepper_version: 2 },
        ]
    );
    // Every store holds every key.
    let stores: [&dyn KeyStore; 4] = [&plain, &old, &rotated, &v2_only];
    let everything: Vec<_> = [&plain as &dyn KeyStore, &old, &rotated]
        .into_iter()
        .zip(keys)
        .map(|(from, created)| (from, created.record.key_id))
        .collect();
    for (from, id) in &everything {
        let key = exported(*from, *id).await;
        for to in stores {
            to.import(key.clone()).await.unwrap();
        }
    }

    assert!(
        verifies(&rotated, &v1_key.key).await,
        "older pepper still held"
    );
    assert!(verifies(&rotated, &v2_key.key).await);
    assert!(
        verifies(&rotated, &sha_key.key).await,
        "unpeppered hashes verify as before"
    );
    assert!(
        !verifies(&v2_only, &v1_key.key).await,
        "pepper dropped: refused"
    );
    assert!(verifies(&v2_only, &v2_key.key).await);
    assert!(!verifies(&plain, &v2_key.key).await);
    // A wrong secret under a fallback scheme is still refused.
    assert_eq!(
        rotated
            .verify(&wrong_secret(&rotated, v1_key.record.key_id))
            .await
            .unwrap(),
        None
    );
    // A reissue rehashes with the current pepper; the graced old secret
    // keeps its own scheme.
    let reissued = rotated
        .reissue(v1_key.record.key_id, Duration::from_secs(60), None)
        .await
        .unwrap()
        .unwrap();
    assert!(verifies(&rotated, &reissued.key).await);
    assert!(verifies(&rotated, &v1_key.key).await);
    let moved = exported(&rotated, v1_key.record.key_id).await;
    assert_eq!(
        moved.hash.scheme(),
        HashScheme::HmacSha256 { pepper_version: 2 }
    );
    assert_eq!(
        moved.previous.map(|p| p.hash.scheme()),
        Some(HashScheme::HmacSha256 { pepper_version: 1 })
    );
    // The reissued key, moved to a store that holds pepper v2 only.
    let v2_fresh = with(KeyHasher::with_pepper(peppers().1)).await;
    v2_fresh.import(moved).await.unwrap();
    assert!(verifies(&v2_fresh, &reissued.key).await);
    assert!(!verifies(&v2_fresh, &v1_key.key).await);
}

/// Whether `store` accepts `key`.
async fn verifies(store: &dyn KeyStore, key: &GeneratedKey) -> bool {
    store.verify(&parse(store, key)).await.unwrap().is_some()
}

// ---------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------

pub async fn get_returns_the_key_info_or_none<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
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
    store: &dyn KeyStore,
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
    store: &dyn KeyStore,
    account: &str,
    page_size: usize,
) -> (Vec<KeyId>, Vec<usize>) {
    let pages = all_pages(store, account, page_size).await;
    let ids = pages
        .iter()
        .flat_map(|p| p.keys.iter().map(|k| k.record.key_id))
        .collect();
    (ids, pages.iter().map(|p| p.keys.len()).collect())
}

pub async fn list_pages_through_an_accounts_keys_oldest_first<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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

/// Every page of `account`'s keys unused for `unused_for`, at `page_size`:
/// the ids, and the size of each page.
async fn list_unused(
    store: &dyn KeyStore,
    account: &str,
    unused_for: Duration,
    page_size: usize,
) -> (Vec<KeyId>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut request = ListRequest::first(page_size).with_unused_for(unused_for);
    loop {
        let page = store.list(account, request).await.unwrap();
        sizes.push(page.keys.len());
        ids.extend(page.keys.iter().map(|k| k.record.key_id));
        match page.next_page_token {
            Some(token) => {
                request = ListRequest::after(page_size, token).with_unused_for(unused_for)
            }
            None => return (ids, sizes),
        }
    }
}

/// `unused_for` lists the keys never used or last used strictly before
/// now (the store's clock) minus the duration, in the listing's order and
/// pages: never used, used long ago, used recently, used exactly at the
/// cutoff (kept out), a cutoff between two microseconds, and pages that
/// end on a key followed only by recently used ones.
pub async fn list_unused_for_keeps_keys_never_used_or_last_used_before_the_cutoff<
    F: StoreFactory,
>(
    f: &F,
) {
    let (store, clock) = clocked(f).await;
    let keys = create_keys(&store, &clock, "sa-idle", 7).await;
    let other = create_keys(&store, &clock, "sa-other", 1).await;
    let start = clock.now();
    let day = Duration::from_secs(86_400);
    clock.set(start + 100 * day);
    let now = clock.now();
    let cutoff = now - 30 * day;
    // keys[0] and keys[5]: never used.
    store
        .record_usage(&[
            (keys[1], start + Duration::from_secs(1)),   // long ago
            (keys[2], now - Duration::from_secs(3_600)), // recently
            (keys[3], cutoff),                           // at the cutoff: not before it
            (keys[4], cutoff - Duration::from_secs(1)),  // just before it
            (keys[6], now),                              // just now
        ])
        .await
        .unwrap();
    let unused = vec![keys[0], keys[1], keys[4], keys[5]];
    for (size, pages) in [
        (1, vec![1, 1, 1, 1]),
        (2, vec![2, 2]),
        (3, vec![3, 1]),
        (4, vec![4]),
        (MAX_PAGE_SIZE, vec![4]),
    ] {
        assert_eq!(
            list_unused(&store, "sa-idle", 30 * day, size).await,
            (unused.clone(), pages),
            "page size {size}"
        );
    }
    // Zero: every key not used at this very instant.
    let (all_but_now, _) = list_unused(&store, "sa-idle", Duration::ZERO, 100).await;
    assert_eq!(all_but_now, keys[..6].to_vec());
    // Longer than the time since 1970: only keys never used.
    let (never, _) = list_unused(&store, "sa-idle", 1_000_000 * 365 * day, 100).await;
    assert_eq!(never, vec![keys[0], keys[5]]);
    // Another account's unused key is not listed.
    let (theirs, _) = list_unused(&store, "sa-other", 30 * day, 100).await;
    assert_eq!(theirs, other);
    let (nobody, sizes) = list_unused(&store, "sa-nobody", 30 * day, 100).await;
    assert!(nobody.is_empty());
    assert_eq!(sizes, [0]);

    // Half a microsecond later, the key used at the old cutoff was used
    // before the new one: a store keeping microseconds must round the
    // cutoff up, not down.
    clock.set(now + Duration::from_nanos(500));
    let (listed, _) = list_unused(&store, "sa-idle", 30 * day, 100).await;
    assert_eq!(listed, vec![keys[0], keys[1], keys[3], keys[4], keys[5]]);

    // A use moves a key out of the listing; time moves it back in.
    store.record_usage(&[(keys[0], now)]).await.unwrap();
    let (listed, _) = list_unused(&store, "sa-idle", 30 * day, 100).await;
    assert_eq!(listed, vec![keys[1], keys[3], keys[4], keys[5]]);
    clock.set(now + 31 * day);
    let (listed, _) = list_unused(&store, "sa-idle", 30 * day, 100).await;
    assert_eq!(listed, keys);
}

pub async fn list_orders_keys_created_at_the_same_instant_stably<F: StoreFactory>(f: &F) {
    // A clock that never moves: every key has the same creation time.
    let (store, _clock) = clocked(f).await;
    for _ in 0..12 {
        store.create(NewKey::new("sa-same")).await.unwrap();
    }
    let (by_three, _) = list_all(&store, "sa-same", 3).await;
    let (all_at_once, _) = list_all(&store, "sa-same", 100).await;
    assert_eq!(by_three.len(), 12);
    assert_eq!(by_three, all_at_once);
    assert_eq!(by_three.iter().collect::<HashSet<_>>().len(), 12);
}

/// Paging when keys share a creation time (ordered by key id, bytewise),
/// and around the Unix epoch, at times that are not whole microseconds.
pub async fn list_orders_keys_of_one_instant_by_id_around_the_epoch<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
    let mut expected = Vec::new();
    clock.set(SystemTime::UNIX_EPOCH - Duration::new(2, 1_500));
    for _ in 0..3 {
        let mut same_time = Vec::new();
        for _ in 0..4 {
            let k = store.create(NewKey::new("sa-order")).await.unwrap();
            same_time.push(k.record.key_id);
        }
        same_time.sort();
        expected.extend(same_time);
        clock.advance(Duration::new(1, 333));
    }
    for size in [1, 2, 3, 5, 12, 13] {
        let pages = all_pages(&store, "sa-order", size).await;
        let mut listed = Vec::new();
        for page in &pages {
            assert!(page.keys.len() <= size);
            listed.extend(page.keys.iter().map(|k| k.record.key_id));
        }
        assert_eq!(listed, expected, "page size {size}");
    }
    // A position between two whole microseconds (no store issues such a
    // token, but it is well-formed): the keys created after that instant.
    let first = store
        .get(expected[0])
        .await
        .unwrap()
        .unwrap()
        .record
        .created_at;
    let between = first + Duration::from_nanos(500);
    let nanos: i128 = match between.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let page = store
        .list(
            "sa-order",
            ListRequest::after(100, format!("{nanos}.zzzzzzzzzzzzzzzz")),
        )
        .await
        .unwrap();
    let listed: Vec<KeyId> = page.keys.iter().map(|k| k.record.key_id).collect();
    assert_eq!(listed, expected[4..]);
}

pub async fn list_uses_the_default_page_size_when_none_is_given<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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

/// A store pages by count only: a page holds the page size asked for
/// however large its keys are (the management API bounds its answers'
/// bytes itself), and the token continues from its last key.
pub async fn list_pages_by_count_however_large_the_keys<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
    let scopes = largest_scopes();
    // Quotes and backslashes take two bytes each in JSON.
    let description = "\"\\".repeat(128);
    // The most rate limits, each of the longest text, for the key and its
    // account, and credits with a refill: about 28 KB of JSON a key.
    let limits = largest_rate_limits();
    store
        .set_account_rate_limits("sa-big", limits.clone())
        .await
        .unwrap();
    let credits = Credits::new(MAX_CREDITS)
        .unwrap()
        .with_refill(Refill::monthly(MAX_CREDITS, 31).unwrap());
    let mut created = Vec::new();
    for _ in 0..41 {
        let key = store
            .create(
                NewKey::new("sa-big")
                    .with_scopes(scopes.clone())
                    .with_description(description.clone())
                    .with_rate_limits(limits.clone())
                    .with_credits(credits),
            )
            .await
            .unwrap();
        created.push(key.record.key_id);
        clock.advance(Duration::from_secs(1));
    }
    // A key over a mebibyte on its own (a description no API would take).
    let huge = store
        .create(NewKey::new("sa-big").with_description("d".repeat(1024 * 1024 + 1)))
        .await
        .unwrap();
    created.push(huge.record.key_id);
    clock.advance(Duration::from_secs(1));

    let pages = all_pages(&store, "sa-big", 40).await;
    let sizes: Vec<usize> = pages.iter().map(|p| p.keys.len()).collect();
    assert_eq!(sizes, [40, 2], "by count, not by bytes");
    let listed: Vec<KeyId> = pages
        .iter()
        .flat_map(|p| p.keys.iter().map(|k| k.record.key_id))
        .collect();
    assert_eq!(listed, created, "every key once, oldest first");
}

/// Page sizes from 1 to `MAX_PAGE_SIZE` (200) are accepted, others refused.
pub async fn list_accepts_page_sizes_from_one_to_two_hundred<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
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
                Err(StoreError::InvalidPageSize {
                    max: MAX_PAGE_SIZE,
                    ..
                })
            ),
            "page size {bad}"
        );
    }
}

pub async fn list_rejects_page_sizes_outside_one_to_the_maximum<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
    create_keys(&store, &clock, "sa-1", 2).await;
    assert_invalid_page_size(
        store.list("sa-1", ListRequest::first(0)).await,
        MAX_PAGE_SIZE,
    );
    assert_invalid_page_size(
        store
            .list("sa-1", ListRequest::first(MAX_PAGE_SIZE + 1))
            .await,
        MAX_PAGE_SIZE,
    );
    assert_invalid_page_size(
        store.list("sa-1", ListRequest::first(usize::MAX)).await,
        MAX_PAGE_SIZE,
    );
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

pub async fn list_rejects_page_tokens_it_did_not_issue<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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
        assert_invalid_page_token(store.list("sa-1", ListRequest::after(10, token)).await);
    }
}

pub async fn list_continues_after_the_last_key_of_a_page_is_revoked<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
    let ids = create_keys(&store, &clock, "sa-paging", 6).await;
    let first = store
        .list("sa-paging", ListRequest::first(3))
        .await
        .unwrap();
    let token = first.next_page_token.clone().unwrap();
    // The key the token points after goes away between the two pages.
    assert!(store.revoke(ids[2], None).await.unwrap());
    let second = store
        .list("sa-paging", ListRequest::after(3, token))
        .await
        .unwrap();
    let second: Vec<_> = second.keys.iter().map(|k| k.record.key_id).collect();
    assert_eq!(second, ids[3..]);
}

pub async fn list_continues_after_the_last_key_of_a_page_is_revoked_when_all_share_a_creation_time<
    F: StoreFactory,
>(
    f: &F,
) {
    let (store, _clock) = clocked(f).await;
    for _ in 0..6 {
        store.create(NewKey::new("sa-same")).await.unwrap();
    }
    let (all, _) = list_all(&store, "sa-same", 6).await;
    let first = store.list("sa-same", ListRequest::first(3)).await.unwrap();
    assert!(store.revoke(all[2], None).await.unwrap());
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

pub async fn list_pages_through_keys_created_before_and_after_the_unix_epoch<F: StoreFactory>(
    f: &F,
) {
    let (store, clock) = store_and_clock(
        f,
        StoreSettings::new().with_clock_at(SystemTime::UNIX_EPOCH - Duration::from_secs(3)),
    )
    .await;
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
// the per-account key limit
// ---------------------------------------------------------------------------

/// With `max_keys_per_account(3)`: the fourth key of an account is refused
/// and stores nothing; expired keys count; reissue adds nothing; other
/// accounts are not affected; a delete makes room again.
pub async fn create_refuses_a_key_past_the_accounts_limit_until_one_is_deleted<F: StoreFactory>(
    f: &F,
) {
    let (store, clock) =
        store_and_clock(f, StoreSettings::new().with_max_keys_per_account(3)).await;
    let soon = clock.now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut new = NewKey::new("sa-limited");
        if i == 0 {
            new = new.with_expires_at(soon);
        }
        ids.push(store.create(new).await.unwrap().record.key_id);
        // Distinct creation times: the listing order is the creation order.
        clock.advance(Duration::from_secs(1));
    }
    let refused = store.create(NewKey::new("sa-limited")).await;
    let err = refused.as_ref().err().map(ToString::to_string);
    assert_limit_reached(refused, 3);
    // The message names the limit, and neither the account nor any key.
    let err = err.unwrap();
    assert!(err.contains('3') && !err.contains("sa-limited"), "{err}");
    assert_eq!(ids_of(&store, "sa-limited").await, ids, "nothing stored");

    // Expired keys still take their place until deleted.
    clock.advance(Duration::from_secs(120));
    assert_limit_reached(store.create(NewKey::new("sa-limited")).await, 3);
    // Reissue gives a key a new secret; it adds no key.
    let reissued = store
        .reissue(ids[1], Duration::from_secs(60), None)
        .await
        .unwrap();
    assert!(reissued.is_some());
    assert_eq!(ids_of(&store, "sa-limited").await, ids);
    // Other accounts have their own room.
    store.create(NewKey::new("sa-other")).await.unwrap();

    // Deleting a key makes room for one.
    assert!(store.revoke(ids[0], None).await.unwrap());
    let again = store.create(NewKey::new("sa-limited")).await.unwrap();
    assert_limit_reached(store.create(NewKey::new("sa-limited")).await, 3);
    assert_eq!(
        ids_of(&store, "sa-limited").await,
        [ids[1], ids[2], again.record.key_id]
    );
}

/// 20 creates at once for one account against a limit of 5, through two
/// handles on the store, on two worker threads: exactly 5 succeed.
pub async fn concurrent_creates_for_one_account_never_pass_the_limit<F: StoreFactory>(f: &F) {
    let store = f
        .store(StoreSettings::new().with_max_keys_per_account(5))
        .await;
    concurrent_creates_respect_the_limit(&[store.clone(), store]).await;
}

/// Without a configured limit, an account holds at most 1,000 keys.
pub async fn accounts_hold_at_most_a_thousand_keys_by_default<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    assert_eq!(DEFAULT_MAX_KEYS_PER_ACCOUNT, 1000);
    for _ in 0..1000 {
        store.create(NewKey::new("sa-full")).await.unwrap();
    }
    assert_limit_reached(store.create(NewKey::new("sa-full")).await, 1000);
}

// ---------------------------------------------------------------------------
// update
// ---------------------------------------------------------------------------

pub async fn update_changes_each_field_alone<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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
        .update(id, KeyUpdate::default().with_description("after"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.description, "after");
    assert_eq!(info.record.scopes, created.record.scopes);
    assert_eq!(info.record.expires_at, None);

    let scopes = ScopeSet::new(["a.read", "a.write"]).unwrap();
    let info = store
        .update(id, KeyUpdate::default().with_scopes(scopes.clone()), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.scopes, scopes);
    assert_eq!(info.record.description, "after");

    let unscoped = store
        .update(
            id,
            KeyUpdate::default().with_scopes(ScopeSet::empty()),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(unscoped.record.scopes.is_empty());

    let expires_at = clock.now() + Duration::from_secs(60);
    let info = store
        .update(
            id,
            KeyUpdate::default().with_expires_at(Some(expires_at)),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.expires_at, Some(expires_at));
    assert_eq!(info.record.description, "after");

    let info = store
        .update(id, KeyUpdate::default().with_expires_at(None), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.expires_at, None);

    // An empty update changes nothing.
    let before = store.get(id).await.unwrap().unwrap();
    let info = store
        .update(id, KeyUpdate::default(), None)
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

pub async fn update_rejects_an_expiry_in_the_past_and_changes_nothing<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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
                    None,
                )
                .await,
        );
        assert_eq!(store.get(id).await.unwrap().unwrap(), before);
    }
}

pub async fn update_rejects_an_expiry_after_the_year_9999<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    let created = store.create(NewKey::new("sa-upd")).await.unwrap();
    let id = created.record.key_id;
    let before = store.get(id).await.unwrap().unwrap();
    let why = assert_invalid(
        store
            .update(
                id,
                KeyUpdate::default()
                    .with_description("after")
                    .with_expires_at(Some(latest_time() + Duration::from_millis(1))),
                None,
            )
            .await,
    );
    assert!(why.contains("9999"), "{why}");
    assert_eq!(store.get(id).await.unwrap().unwrap(), before);
}

pub async fn update_of_an_unknown_key_returns_none<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    let update = KeyUpdate::default().with_description("x");
    assert!(store
        .update(KeyId::random().unwrap(), update, None)
        .await
        .unwrap()
        .is_none());
}

// ---------------------------------------------------------------------------
// revoke
// ---------------------------------------------------------------------------

pub async fn revoke_returns_true_then_false_and_the_key_is_gone<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    let created = store.create(NewKey::new("sa-rev")).await.unwrap();
    let keep = store.create(NewKey::new("sa-rev")).await.unwrap();
    let id = created.record.key_id;
    assert!(store.revoke(id, None).await.unwrap());
    assert!(!store.revoke(id, None).await.unwrap());
    assert!(store.get(id).await.unwrap().is_none());
    assert!(store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .is_none());
    let listed = store.list("sa-rev", ListRequest::default()).await.unwrap();
    assert_eq!(listed.keys.len(), 1);
    assert_eq!(listed.keys[0].record.key_id, keep.record.key_id);
    assert!(!store.revoke(KeyId::random().unwrap(), None).await.unwrap());
}

// ---------------------------------------------------------------------------
// reissue
// ---------------------------------------------------------------------------

pub async fn reissue_keeps_the_id_and_record_and_changes_the_secret<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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
        .reissue(created.record.key_id, Duration::ZERO, None)
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

pub async fn reissue_with_grace_keeps_the_old_secret_until_the_deadline<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
    let created = store.create(NewKey::new("sa-re")).await.unwrap();
    let old = parse(&store, &created.key);
    let grace = Duration::from_secs(60);
    let reissued = store
        .reissue(created.record.key_id, grace, None)
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

/// A grace longer than the store can write down is "until the end of year
/// 9999": the old secret keeps working, and the key still exports (an
/// import refuses a grace past 30 days).
pub async fn reissue_with_a_grace_past_the_year_9999_keeps_the_old_secret_until_then<
    F: StoreFactory,
>(
    f: &F,
) {
    let (store, clock) = clocked(f).await;
    for grace in [
        Duration::from_secs(86_400 * 366 * 10_000),
        Duration::from_secs(u64::MAX),
    ] {
        let created = store.create(NewKey::new("sa-forever")).await.unwrap();
        let id = created.record.key_id;
        let reissued = store.reissue(id, grace, None).await.unwrap().unwrap();
        let old = parse(&store, &created.key);
        let record = store.verify(&old).await.unwrap().expect("old secret kept");
        let deadline = record.expires_at.expect("a grace deadline");
        assert!(deadline <= latest_time(), "{deadline:?}");
        assert!(deadline > clock.now() + Duration::from_secs(86_400 * 366 * 7_000));
        assert!(store
            .verify(&parse(&store, &reissued.key))
            .await
            .unwrap()
            .is_some());
        let moved = exported(&store, id).await;
        assert_eq!(moved.previous.map(|p| p.valid_until), Some(deadline));
        // An import caps a grace at 30 days from the import (issue 20):
        // such a key is refused, naming the field.
        let again = f.store(StoreSettings::new()).await;
        let why = assert_invalid(again.import(moved).await);
        assert!(why.contains("previous_valid_until"), "{why}");
        assert!(again.verify(&old).await.unwrap().is_none());
    }
}

pub async fn reissue_of_an_unknown_key_returns_none<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    assert!(store
        .reissue(KeyId::random().unwrap(), Duration::from_secs(1), None)
        .await
        .unwrap()
        .is_none());
}

// ---------------------------------------------------------------------------
// record_usage
// ---------------------------------------------------------------------------

pub async fn record_usage_only_moves_last_used_at_forward<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
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
    let start = clock.now();
    let t = |s: u64| start + Duration::from_secs(s);
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

pub async fn the_hint_shows_the_prefix_and_the_last_four_characters_only<F: StoreFactory>(f: &F) {
    for format in [KeyFormat::default(), KeyFormat::new("acme2").unwrap()] {
        let store = f.store(StoreSettings::new().with_format(format)).await;
        let created = store.create(NewKey::new("sa-hint")).await.unwrap();
        let info = store.get(created.record.key_id).await.unwrap().unwrap();
        // Compared without printing either: they hold key characters.
        assert!(info.hint == expected_hint(&created.key), "hint differs");
        assert!(!info.hint.contains(created.record.key_id.as_str()));
        // Prefix, '_', '…' and four characters.
        assert_eq!(info.hint.chars().count(), format.prefix().len() + 1 + 1 + 4);

        // A reissue gets the new key's hint.
        let reissued = store
            .reissue(created.record.key_id, Duration::ZERO, None)
            .await
            .unwrap()
            .unwrap();
        let info = store.get(created.record.key_id).await.unwrap().unwrap();
        assert!(info.hint == expected_hint(&reissued.key), "hint differs");
        let listed = store.list("sa-hint", ListRequest::default()).await.unwrap();
        assert_eq!(listed.keys[0].hint, info.hint);
    }
}

// ---------------------------------------------------------------------------
// every operation, one after the other, on one key
// ---------------------------------------------------------------------------

pub async fn every_management_operation_in_sequence<F: StoreFactory>(f: &F) {
    let (store, clock) = clocked(f).await;
    let far = clock.now() + Duration::from_secs(86_400);
    let scopes = ScopeSet::new(["yc.ai.translate.execute", "a.b"]).unwrap();

    // create
    let created = store
        .create(
            NewKey::new("sa-ops")
                .with_scopes(scopes.clone())
                .with_description("first")
                .with_expires_at(far),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    assert_eq!(created.key.id(), id);
    assert_eq!(&*created.record.service_account_id, "sa-ops");
    assert_eq!(created.record.scopes, scopes);
    assert_eq!(created.record.description, "first");
    assert!(matches!(
        store.create(NewKey::new("")).await,
        Err(StoreError::InvalidField { .. })
    ));
    assert!(matches!(
        store
            .create(NewKey::new("sa-ops").with_expires_at(clock.now() - Duration::from_secs(1)))
            .await,
        Err(StoreError::InvalidField { .. })
    ));

    // get: what create returned, never the secret
    let info = store.get(id).await.unwrap().expect("created key exists");
    assert_eq!(info.record, created.record);
    assert_eq!(info.last_used_at, None);
    let secret = created.key.expose_secret();
    assert!(info.hint.starts_with("tak_…"));
    assert!(secret.ends_with(&info.hint["tak_…".len()..]));
    assert!(!format!("{info:?}").contains(secret));
    assert_eq!(store.get(KeyId::random().unwrap()).await.unwrap(), None);

    // verify
    let key = parse(&store, &created.key);
    assert_eq!(
        store.verify(&key).await.unwrap(),
        Some(created.record.clone())
    );
    assert_eq!(store.verify(&unknown_key(&store)).await.unwrap(), None);
    // Right id, wrong secret.
    assert_eq!(store.verify(&wrong_secret(&store, id)).await.unwrap(), None);

    // update
    let updated = store
        .update(
            id,
            KeyUpdate::default()
                .with_description("second")
                .with_scopes(ScopeSet::empty())
                .with_expires_at(None),
            None,
        )
        .await
        .unwrap()
        .expect("key exists");
    assert_eq!(updated.record.description, "second");
    assert!(updated.record.scopes.is_empty());
    assert_eq!(updated.record.expires_at, None);
    assert_eq!(updated.record.created_at, created.record.created_at);
    assert_eq!(store.get(id).await.unwrap().unwrap(), updated);
    // Only what is given changes.
    let again = store
        .update(id, KeyUpdate::default().with_description("third"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.record.scopes, updated.record.scopes);
    assert_eq!(again.record.description, "third");
    assert!(matches!(
        store
            .update(
                id,
                KeyUpdate::default().with_expires_at(Some(clock.now() - Duration::from_secs(1))),
                None
            )
            .await,
        Err(StoreError::InvalidField { .. })
    ));
    assert_eq!(
        store
            .update(
                KeyId::random().unwrap(),
                KeyUpdate::default().with_description("x"),
                None
            )
            .await
            .unwrap(),
        None
    );

    // reissue, no grace: the old secret stops at once
    let reissued = store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.key.id(), id);
    assert_ne!(reissued.key.expose_secret(), secret);
    assert_eq!(reissued.record, again.record);
    assert_eq!(store.verify(&key).await.unwrap(), None);
    assert_eq!(
        store.verify(&parse(&store, &reissued.key)).await.unwrap(),
        Some(again.record.clone())
    );
    let hint = store.get(id).await.unwrap().unwrap().hint;
    assert!(reissued
        .key
        .expose_secret()
        .ends_with(&hint["tak_…".len()..]));
    assert!(store
        .reissue(KeyId::random().unwrap(), Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());

    // reissue with grace: both work, the old one only until the deadline
    clock.advance(Duration::from_secs(1));
    let before = clock.now();
    let graced = store
        .reissue(id, Duration::from_secs(600), None)
        .await
        .unwrap()
        .unwrap();
    let old = store
        .verify(&parse(&store, &reissued.key))
        .await
        .unwrap()
        .expect("old secret within grace");
    let deadline = old.expires_at.expect("grace deadline");
    assert!(deadline > before + Duration::from_secs(599));
    assert!(deadline <= clock.now() + Duration::from_secs(600));
    let new = store
        .verify(&parse(&store, &graced.key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.expires_at, None);

    // record_usage: forward only
    let t1 = clock.now();
    let t2 = t1 + Duration::from_secs(5);
    store.record_usage(&[(id, t2), (id, t1)]).await.unwrap();
    store.record_usage(&[(id, t1)]).await.unwrap();
    let used = store.get(id).await.unwrap().unwrap().last_used_at.unwrap();
    assert!(used <= t2 && t2.duration_since(used).unwrap() < Duration::from_micros(1));
    store.record_usage(&[]).await.unwrap();
    store
        .record_usage(&[(KeyId::random().unwrap(), t1)])
        .await
        .unwrap();

    // revoke
    assert!(store.revoke(id, None).await.unwrap());
    assert!(!store.revoke(id, None).await.unwrap());
    assert_eq!(store.get(id).await.unwrap(), None);
    assert_eq!(
        store.verify(&parse(&store, &graced.key)).await.unwrap(),
        None
    );
    assert_eq!(
        store.verify(&parse(&store, &reissued.key)).await.unwrap(),
        None
    );
    assert!(store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());

    // list: oldest first, in pages, one account only
    let mut ids = Vec::new();
    for i in 0..5 {
        clock.advance(Duration::from_secs(1));
        let k = store
            .create(NewKey::new("sa-list").with_description(format!("k{i}")))
            .await
            .unwrap();
        ids.push(k.record.key_id);
    }
    let other = store.create(NewKey::new("sa-other")).await.unwrap();
    let pages = all_pages(&store, "sa-list", 2).await;
    let mut listed = Vec::new();
    for page in &pages {
        assert!(page.keys.len() <= 2);
        listed.extend(page.keys.iter().map(|k| k.record.key_id));
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(listed, ids, "created order");
    let all = store.list("sa-list", ListRequest::default()).await.unwrap();
    assert_eq!(all.keys.len(), 5);
    assert_eq!(all.next_page_token, None);
    assert!(store
        .list("nobody", ListRequest::default())
        .await
        .unwrap()
        .keys
        .is_empty());
    for bad in [ListRequest::first(0), ListRequest::first(201)] {
        assert_invalid_page_size(store.list("sa-list", bad).await, MAX_PAGE_SIZE);
    }
    for bad in [
        ListRequest::after(2, ""),
        ListRequest::after(2, "not a token"),
        ListRequest::after(2, other.record.key_id.to_string()),
        ListRequest::after(2, "12.garbage"),
        ListRequest::after(2, format!("x.{}", ids[0])),
        ListRequest::after(2, format!("1.{}.2", ids[0])),
        ListRequest::after(2, format!("{}.{}", u128::MAX, ids[0])),
    ] {
        assert!(
            matches!(
                store.list("sa-list", bad.clone()).await,
                Err(StoreError::InvalidPageToken)
            ),
            "{bad:?}"
        );
    }
    // A token stays valid when the key it points after is revoked.
    let first = store.list("sa-list", ListRequest::first(2)).await.unwrap();
    assert!(store.revoke(ids[1], None).await.unwrap());
    let next = store
        .list(
            "sa-list",
            ListRequest::after(2, first.next_page_token.clone().unwrap()),
        )
        .await
        .unwrap();
    let next: Vec<KeyId> = next.keys.iter().map(|k| k.record.key_id).collect();
    assert_eq!(next, ids[2..4]);
    // After the last key: an empty last page, no error.
    let four = store.list("sa-list", ListRequest::first(3)).await.unwrap();
    assert!(store.revoke(ids[4], None).await.unwrap());
    let tail = store
        .list(
            "sa-list",
            ListRequest::after(3, four.next_page_token.unwrap()),
        )
        .await
        .unwrap();
    assert!(tail.keys.is_empty() && tail.next_page_token.is_none());
}

// ---------------------------------------------------------------------------
// invalidations
// ---------------------------------------------------------------------------

/// A cache over the store drops a changed key at once: the store announces
/// the key, with its account, before update, reissue (with or without
/// grace) and revoke return. Nothing is announced for an unknown id.
pub async fn revoke_reissue_and_update_announce_the_key_before_returning<F: StoreFactory>(f: &F) {
    let store = plain(f).await;
    let mut announced = Watch::on(&store);
    let created = store.create(NewKey::new("sa-bus")).await.unwrap();
    let id = created.record.key_id;
    let this_key = Invalidation::key_of(id, "sa-bus");
    announced.drain();

    store
        .update(id, KeyUpdate::default().with_description("changed"), None)
        .await
        .unwrap()
        .unwrap();
    assert!(announced.drain().contains(&this_key), "update announced");
    store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert!(announced.drain().contains(&this_key), "reissue announced");
    store
        .reissue(id, Duration::from_secs(60), None)
        .await
        .unwrap()
        .unwrap();
    assert!(
        announced.drain().contains(&this_key),
        "reissue with grace announced"
    );
    assert!(store.revoke(id, None).await.unwrap());
    assert!(announced.drain().contains(&this_key), "revoke announced");

    let unknown = KeyId::random().unwrap();
    assert!(store
        .update(unknown, KeyUpdate::default().with_description("x"), None)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .reissue(unknown, Duration::ZERO, None)
        .await
        .unwrap()
        .is_none());
    assert!(!store.revoke(unknown, None).await.unwrap());
    assert!(
        announced
            .drain()
            .iter()
            .all(|what| what.key_id() != Some(unknown)),
        "an unknown id is never announced"
    );
}
