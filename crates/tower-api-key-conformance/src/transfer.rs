//! `export` and `import`: keys move between stores with their hashes (never
//! a secret) and keep working.
//!
//! The functions taking a source and a target factory run for stores of one
//! kind and across kinds (see `transfer_conformance!`); the others for one.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use tower_api_key::clock::Clock;
use tower_api_key::hash::{HashScheme, KeyHasher};
use tower_api_key::limits::{Credits, RateLimit, Refill};
use tower_api_key::store::{
    latest_time, ConflictKind, Imported, NewKey, PreviousHash, StoreError, StoredKey,
    MAX_EXPORT_PAGE,
};
use tower_api_key::CreditLedger;
use tower_api_key::{KeyId, KeyStore, ScopeSet, Verifier};

use super::{
    assert_conflict, assert_invalid, assert_invalid_page_size, assert_limit_reached, at_micros,
    export_all, export_everything, exported, micros, parse, peppers, start_time, store_and_clock,
    StoreFactory, StoreSettings,
};

// ---------------------------------------------------------------------------
// export
// ---------------------------------------------------------------------------

pub async fn export_pages_in_key_id_order_and_ends_with_an_empty_page<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    assert!(
        store.export(None, 10).await.unwrap().is_empty(),
        "empty store"
    );
    let mut ids = BTreeSet::new();
    for i in 0..7 {
        let account = if i % 2 == 0 { "sa-even" } else { "sa-odd" };
        ids.insert(
            store
                .create(NewKey::new(account))
                .await
                .unwrap()
                .record
                .key_id,
        );
        clock.advance(Duration::from_secs(1));
    }
    let in_id_order: Vec<KeyId> = ids.into_iter().collect();

    // Pages of 3: 3, 3, 1, then an empty page.
    let mut sizes = Vec::new();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.export(after, 3).await.unwrap();
        sizes.push(page.len());
        let Some(last) = page.last() else { break };
        after = Some(last.info.record.key_id);
        listed.extend(page.iter().map(|k| k.info.record.key_id));
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
    assert_eq!(listed, in_id_order, "key id order, every key once");

    // Every page size gives the same keys in the same order.
    for limit in [1, 2, 7, 8, MAX_EXPORT_PAGE] {
        let all: Vec<KeyId> = export_all(&store, limit)
            .await
            .iter()
            .map(|k| k.info.record.key_id)
            .collect();
        assert_eq!(all, in_id_order, "limit {limit}");
    }
    // `after` need not be a key the store holds: the keys after that id.
    let middle = in_id_order[3];
    assert!(store.revoke(middle, None).await.unwrap());
    let rest: Vec<KeyId> = store
        .export(Some(middle), MAX_EXPORT_PAGE)
        .await
        .unwrap()
        .iter()
        .map(|k| k.info.record.key_id)
        .collect();
    assert_eq!(rest, in_id_order[4..]);
    let past_the_end = store.export(in_id_order.last().copied(), 1).await.unwrap();
    assert!(past_the_end.is_empty());
}

pub async fn export_refuses_page_sizes_outside_one_to_the_maximum<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    store.create(NewKey::new("sa")).await.unwrap();
    for bad in [0, MAX_EXPORT_PAGE + 1, usize::MAX] {
        assert_invalid_page_size(store.export(None, bad).await, MAX_EXPORT_PAGE);
    }
    for ok in [1, MAX_EXPORT_PAGE] {
        assert_eq!(store.export(None, ok).await.unwrap().len(), 1);
    }
}

/// An exported key holds the hash of its current secret and, after a
/// reissue with grace, the old secret's hash and deadline; never a secret,
/// and its `Debug` shows neither secret nor hash.
pub async fn export_holds_hashes_and_graced_previous_hashes_never_secrets<F: StoreFactory>(f: &F) {
    let (v1, _) = peppers();
    let hasher = KeyHasher::with_pepper(v1);
    let settings = StoreSettings::new().with_hasher(hasher.clone());
    let (store, clock) = store_and_clock(f, settings).await;
    let created = store
        .create(
            NewKey::new("sa-export")
                .with_description("exported")
                .with_scopes(ScopeSet::new(["a.read"]).unwrap())
                .with_expires_at(clock.now() + Duration::from_secs(86_400)),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let key = exported(&store, id).await;
    assert_eq!(key.info, store.get(id).await.unwrap().unwrap());
    assert!(key.hash == hasher.hash(&parse(&store, &created.key)));
    assert_eq!(
        key.hash.scheme(),
        HashScheme::HmacSha256 { pepper_version: 1 }
    );
    assert!(key.previous.is_none(), "no reissue, no previous hash");

    let grace = Duration::from_secs(300);
    let reissued = store.reissue(id, grace, None).await.unwrap().unwrap();
    let graced = exported(&store, id).await;
    assert!(graced.hash == hasher.hash(&parse(&store, &reissued.key)));
    let previous = graced.previous.expect("the old secret is in grace");
    assert!(previous.hash == key.hash, "the old secret's hash");
    assert_eq!(previous.valid_until, clock.now() + grace);
    // A reissue without grace drops the previous hash.
    let newest = store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert!(exported(&store, id).await.previous.is_none());

    // Nothing shown holds a secret or a hash.
    let everything = export_everything(&store).await;
    let shown = format!("{graced:?} {everything:?}");
    for secret in [&created.key, &reissued.key, &newest.key] {
        let text = secret.expose_secret();
        assert!(!shown.contains(text), "a key is shown");
        assert!(!shown.contains(&text[21..53]), "a secret is shown");
    }
    for hash in [&graced.hash, &previous.hash] {
        let hex: String = hash.digest().iter().map(|b| format!("{b:02x}")).collect();
        let upper = hex.to_uppercase();
        let bytes = format!("{:?}", hash.digest());
        for form in [&hex[..16], &upper[..16], &bytes[..20]] {
            assert!(!shown.contains(form), "a hash is shown");
        }
    }
    assert!(shown.contains(id.as_str()), "the key id names it");
}

// ---------------------------------------------------------------------------
// import, across stores
// ---------------------------------------------------------------------------

/// Every key of `from`, imported into `to`: each one is added.
async fn move_everything(from: &dyn KeyStore, to: &dyn KeyStore) -> Vec<StoredKey> {
    let keys = export_everything(from).await;
    for key in &keys {
        assert_eq!(to.import(key.clone()).await.unwrap(), Imported::Added);
    }
    keys
}

/// A key moved to a fresh store keeps its id, account, scopes, description,
/// times and hint; its secret verifies there, a graced old secret until its
/// deadline, and an expired key moves too.
pub async fn import_keeps_every_field_and_every_secret_verifies<S, T>(source: &S, target: &T)
where
    S: StoreFactory,
    T: StoreFactory,
{
    let (from, from_clock) = store_and_clock(source, StoreSettings::new()).await;
    let (to, to_clock) = store_and_clock(target, StoreSettings::new()).await;
    let scopes = ScopeSet::new(["yc.ai.translate.execute", "a.read"]).unwrap();
    let full = from
        .create(
            NewKey::new("sa-move")
                .with_description("every field set")
                .with_scopes(scopes)
                .with_expires_at(from_clock.now() + Duration::from_secs(86_400))
                .with_rate_limits(vec![RateLimit::new(5, Duration::from_secs(1)).unwrap()])
                .with_credits(
                    Credits::new(9)
                        .unwrap()
                        .with_refill(Refill::daily(10).unwrap()),
                )
                .with_operator_locked(true),
        )
        .await
        .unwrap();
    from_clock.advance(Duration::from_secs(1));
    let bare = from.create(NewKey::new("sa-move")).await.unwrap();
    let expiring = from
        .create(NewKey::new("sa-other").with_expires_at(from_clock.now() + Duration::from_secs(5)))
        .await
        .unwrap();
    let graced = from.create(NewKey::new("sa-other")).await.unwrap();
    let grace = Duration::from_secs(600);
    let regraced = from
        .reissue(graced.record.key_id, grace, None)
        .await
        .unwrap()
        .unwrap();
    let deadline = from_clock.now() + grace;
    from.record_usage(&[(
        full.record.key_id,
        from_clock.now() + Duration::from_secs(2),
    )])
    .await
    .unwrap();
    // The expiring key has expired by the time it moves.
    from_clock.advance(Duration::from_secs(10));
    to_clock.set(from_clock.now());

    let moved = move_everything(&from, &to).await;
    assert_eq!(moved.len(), 4);
    for key in &moved {
        let id = key.info.record.key_id;
        let there = to.get(id).await.unwrap().expect("imported");
        let here = from.get(id).await.unwrap().unwrap();
        assert_eq!(at_micros(&there), at_micros(&here), "key {id}");
        assert_eq!(there.hint, here.hint);
    }
    assert_eq!(
        super::ids_of(&to, "sa-move").await,
        [full.record.key_id, bare.record.key_id],
        "listed oldest first"
    );
    assert_eq!(export_everything(&to).await, moved, "the same records");

    // Every secret verifies on the target, to the same record.
    for key in [&full, &bare, &regraced] {
        let record = to.verify(&parse(&to, &key.key)).await.unwrap();
        assert_eq!(
            record,
            Some(key.record.clone()).map(|mut r| {
                r.created_at = micros(r.created_at);
                r.expires_at = r.expires_at.map(micros);
                r
            })
        );
    }
    assert!(to
        .verify(&parse(&to, &expiring.key))
        .await
        .unwrap()
        .is_some_and(|r| r.expires_at < Some(to_clock.now())));
    // The old secret of the graced key until its deadline, not after.
    let old = parse(&to, &graced.key);
    let record = to.verify(&old).await.unwrap().expect("old secret in grace");
    assert_eq!(record.expires_at, Some(deadline));
    to_clock.set(deadline - Duration::from_secs(1));
    assert!(to.verify(&old).await.unwrap().is_some());
    to_clock.set(deadline);
    assert!(to.verify(&old).await.unwrap().is_none());
    assert!(to
        .verify(&parse(&to, &regraced.key))
        .await
        .unwrap()
        .is_some());
}

/// A key's own limits and credits move with it (the count the source
/// held, a new generation), its account's limits stay behind, and limits
/// no store holds are refused naming the key.
pub async fn import_carries_a_keys_limits_and_credits_not_its_accounts<S, T>(source: &S, target: &T)
where
    S: StoreFactory,
    T: StoreFactory,
{
    let (from, from_clock) = store_and_clock(source, StoreSettings::new()).await;
    let (to, to_clock) = store_and_clock(target, StoreSettings::new()).await;
    let limit = |text: &str| text.parse::<RateLimit>().unwrap();
    let limits = vec![limit("5/1s"), limit("1000/1d,burst=50")];
    let credits = Credits::new(40)
        .unwrap()
        .with_refill(Refill::monthly(100, 15).unwrap());
    let created = from
        .create(
            NewKey::new("sa-quota")
                .with_rate_limits(limits.clone())
                .with_credits(credits),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let lease = from
        .lease_credits(id, 5, from_clock.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.remaining, 35);
    from.set_account_rate_limits("sa-quota", vec![limit("9/1h")])
        .await
        .unwrap();

    let mut key = exported(&from, id).await;
    assert_eq!(key.info.record.rate_limits, limits);
    assert_eq!(key.info.record.credits.map(|c| c.remaining()), Some(35));
    // Account limits in a record from elsewhere are not the key's: ignored.
    key.info.record.account_rate_limits = vec![limit("1/1s")];
    assert_eq!(to.import(key).await.unwrap(), Imported::Added);
    let there = to.get(id).await.unwrap().unwrap();
    assert_eq!(there.record.rate_limits, limits);
    assert_eq!(
        there.record.credits,
        Some(credits.with_remaining(35).unwrap())
    );
    assert!(there.record.account_rate_limits.is_empty());
    assert!(to.account_rate_limits("sa-quota").await.unwrap().is_empty());
    let record = to.verify(&parse(&to, &created.key)).await.unwrap().unwrap();
    assert_eq!(record, there.record);
    // Generation 0 there, and no refill due at the import.
    let lease = to
        .lease_credits(id, 10, to_clock.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lease.granted, lease.generation, lease.remaining),
        (4, 0, 31)
    );

    let other = from.create(NewKey::new("sa-quota")).await.unwrap();
    let mut key = exported(&from, other.record.key_id).await;
    key.info.record.rate_limits = (1..=9)
        .map(|n| RateLimit::new(n, Duration::from_secs(1)).unwrap())
        .collect();
    let why = assert_invalid(to.import(key).await);
    assert!(why.contains(&other.record.key_id.to_string()), "{why}");
    assert!(why.contains("at most 8"), "{why}");
    assert!(to.get(other.record.key_id).await.unwrap().is_none());
}

/// Importing what is already there changes nothing but `last_used_at`,
/// which only moves forward.
pub async fn import_is_idempotent_and_moves_last_used_at_forward_only<S, T>(source: &S, target: &T)
where
    S: StoreFactory,
    T: StoreFactory,
{
    let (from, clock) = store_and_clock(source, StoreSettings::new()).await;
    let to = target.store(StoreSettings::new()).await;
    let created = from.create(NewKey::new("sa-twice")).await.unwrap();
    let id = created.record.key_id;
    let used = clock.now() + Duration::from_secs(100);
    from.record_usage(&[(id, used)]).await.unwrap();
    let moved = move_everything(&from, &to).await;
    let before = export_everything(&to).await;

    // The same key again: nothing changes.
    for _ in 0..2 {
        let again = to.import(moved[0].clone()).await.unwrap();
        assert_eq!(again, Imported::AlreadyPresent);
    }
    assert_eq!(export_everything(&to).await, before);

    // An older use never moves last_used_at back; none leaves it.
    let mut older = moved[0].clone();
    older.info.last_used_at = Some(used - Duration::from_secs(50));
    assert_eq!(to.import(older).await.unwrap(), Imported::AlreadyPresent);
    let mut never = moved[0].clone();
    never.info.last_used_at = None;
    assert_eq!(to.import(never).await.unwrap(), Imported::AlreadyPresent);
    assert_eq!(to.get(id).await.unwrap().unwrap().last_used_at, Some(used));

    // A newer one moves it forward, and changes nothing else.
    let mut newer = moved[0].clone();
    let later = used + Duration::from_secs(50);
    newer.info.last_used_at = Some(later);
    newer.info.record.description = "ignored on a key already present".into();
    assert_eq!(to.import(newer).await.unwrap(), Imported::AlreadyPresent);
    let info = to.get(id).await.unwrap().unwrap();
    assert_eq!(info.last_used_at, Some(later));
    assert_eq!(info.record, before[0].info.record);
    assert!(to
        .verify(&parse(&to, &created.key))
        .await
        .unwrap()
        .is_some());
}

/// Times that are not whole microseconds move as the target keeps them:
/// the same instant to the microsecond, never later.
pub async fn import_keeps_times_at_microsecond_precision<S, T>(source: &S, target: &T)
where
    S: StoreFactory,
    T: StoreFactory,
{
    let odd = start_time() + Duration::new(7, 123_456_789);
    let (from, clock) = store_and_clock(source, StoreSettings::new().with_clock_at(odd)).await;
    let (to, to_clock) = store_and_clock(target, StoreSettings::new().with_clock_at(odd)).await;
    let created = from
        .create(NewKey::new("sa-micros").with_expires_at(odd + Duration::new(3600, 999)))
        .await
        .unwrap();
    let id = created.record.key_id;
    from.record_usage(&[(id, odd + Duration::new(1, 1))])
        .await
        .unwrap();
    let reissued = from
        .reissue(id, Duration::new(60, 500), None)
        .await
        .unwrap()
        .unwrap();
    let moved = move_everything(&from, &to).await;
    let here = &moved[0];
    let there = exported(&to, id).await;
    assert_eq!(at_micros(&there.info), at_micros(&here.info));
    let times = |k: &StoredKey| {
        [
            Some(k.info.record.created_at),
            k.info.record.expires_at,
            k.info.last_used_at,
            k.previous.map(|p| p.valid_until),
        ]
    };
    for (a, b) in times(here).into_iter().zip(times(&there)) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(micros(a), micros(b));
        assert!(b <= a, "a time moved later");
    }
    // Both secrets verify on the target, the old one within its grace.
    to_clock.set(clock.now() + Duration::from_secs(30));
    assert!(to
        .verify(&parse(&to, &reissued.key))
        .await
        .unwrap()
        .is_some());
    assert!(to
        .verify(&parse(&to, &created.key))
        .await
        .unwrap()
        .is_some());
}

// ---------------------------------------------------------------------------
// import, refusals
// ---------------------------------------------------------------------------

/// A key id the store holds with another hash or another account is
/// refused, naming the id (never a hash); the key held stays as it is.
pub async fn import_refuses_an_id_held_with_another_hash_or_account_naming_it<F: StoreFactory>(
    f: &F,
) {
    let store = f.store(StoreSettings::new()).await;
    let held = store.create(NewKey::new("sa-held")).await.unwrap();
    let other = store.create(NewKey::new("sa-held")).await.unwrap();
    let id = held.record.key_id;
    let mine = exported(&store, id).await;
    let before = export_everything(&store).await;

    let mut another_hash = mine.clone();
    another_hash.hash = exported(&store, other.record.key_id).await.hash;
    let mut another_account = mine.clone();
    another_account.info.record.service_account_id = "sa-thief".into();
    for refused in [another_hash, another_account] {
        let hash = refused.hash;
        let why = assert_conflict(store.import(refused).await, id, ConflictKind::IdTaken);
        assert!(why.contains(id.as_str()), "names the key: {why}");
        let hex: String = hash.digest().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!why.contains(&hex[..16]), "names no hash");
    }
    assert_eq!(export_everything(&store).await, before, "nothing changed");
    assert!(store
        .verify(&parse(&store, &held.key))
        .await
        .unwrap()
        .is_some_and(|r| &*r.service_account_id == "sa-held"));
}

/// A revoked key never comes back: importing it (from an export taken
/// before the revoke) is refused naming it, and its secret stays refused;
/// other keys of the same export still import.
pub async fn import_never_brings_back_a_key_this_store_revoked<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let revoked = store.create(NewKey::new("sa-old")).await.unwrap();
    let kept = store.create(NewKey::new("sa-old")).await.unwrap();
    let id = revoked.record.key_id;
    let old_export = export_everything(&store).await;
    assert!(store.revoke(id, None).await.unwrap());

    for key in old_export {
        let this = key.info.record.key_id;
        let result = store.import(key).await;
        if this == id {
            let why = assert_conflict(result, id, ConflictKind::Revoked);
            assert!(why.contains(id.as_str()), "names the key: {why}");
        } else {
            assert_eq!(this, kept.record.key_id);
            assert_eq!(result.unwrap(), Imported::AlreadyPresent);
        }
    }
    assert!(store.get(id).await.unwrap().is_none());
    assert!(store
        .verify(&parse(&store, &revoked.key))
        .await
        .unwrap()
        .is_none());
}

/// Records no store could have written are refused, naming the key, and
/// nothing is stored: an empty account, a time after year 9999 or before
/// year 1, a previous hash equal to the current one.
pub async fn import_refuses_records_a_store_cannot_hold_naming_the_key<F: StoreFactory>(f: &F) {
    let source = f.store(StoreSettings::new()).await;
    let created = source.create(NewKey::new("sa-src")).await.unwrap();
    let good = exported(&source, created.record.key_id).await;
    let id = good.info.record.key_id;
    let too_late = latest_time() + Duration::from_millis(1);

    let mut cases: Vec<(&str, StoredKey)> = Vec::new();
    let mut key = good.clone();
    key.info.record.service_account_id = "".into();
    cases.push(("an empty account", key));
    let mut key = good.clone();
    key.info.record.description = "a NUL\0 no database text holds".into();
    cases.push(("a NUL in the description", key));
    let mut key = good.clone();
    key.info.record.service_account_id = "sa\0".into();
    cases.push(("a NUL in the account", key));
    let mut key = good.clone();
    key.info.record.created_at = too_late;
    cases.push(("created after 9999", key));
    let mut key = good.clone();
    key.info.record.expires_at = Some(too_late);
    cases.push(("expiring after 9999", key));
    let mut key = good.clone();
    key.info.last_used_at = Some(too_late);
    cases.push(("used after 9999", key));
    let mut key = good.clone();
    key.info.record.created_at = SystemTime::UNIX_EPOCH - Duration::from_secs(62_135_596_801);
    cases.push(("created before year 1", key));
    let mut key = good.clone();
    key.previous = Some(PreviousHash::new(good.hash, too_late));
    cases.push(("a grace past 9999", key));
    let same = good.clone().with_previous(PreviousHash::new(
        good.hash,
        start_time() + Duration::from_secs(60),
    ));
    cases.push(("the previous hash is the current one", same));

    let target = f.store(StoreSettings::new()).await;
    for (what, key) in cases {
        let why = assert_invalid(target.import(key).await);
        assert!(why.contains(id.as_str()), "{what}: names the key: {why}");
        assert!(target.get(id).await.unwrap().is_none(), "{what}: stored");
    }
    assert!(export_everything(&target).await.is_empty());
    // The untouched record imports.
    assert_eq!(target.import(good).await.unwrap(), Imported::Added);
}

/// Import counts against the per-account key limit as create does; a key
/// already present is still recognised at the limit.
pub async fn import_applies_the_per_account_key_limit<F: StoreFactory>(f: &F) {
    let source = f.store(StoreSettings::new()).await;
    for _ in 0..3 {
        source.create(NewKey::new("sa-full")).await.unwrap();
    }
    source.create(NewKey::new("sa-room")).await.unwrap();
    let keys = export_everything(&source).await;
    let target = f
        .store(StoreSettings::new().with_max_keys_per_account(2))
        .await;
    let mut added = Vec::new();
    let mut refused = 0;
    for key in &keys {
        match target.import(key.clone()).await {
            Ok(Imported::Added) => added.push(key.clone()),
            Err(StoreError::KeyLimitReached { limit: 2, .. }) => {
                assert_eq!(&*key.info.record.service_account_id, "sa-full");
                refused += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(refused, 1, "the third key of sa-full");
    assert_eq!(added.len(), 3, "two of sa-full, one of sa-room");
    assert_eq!(
        target.import(added[0].clone()).await.unwrap(),
        Imported::AlreadyPresent
    );
    // Create is held to the same count.
    assert_limit_reached(target.create(NewKey::new("sa-full")).await, 2);
}

/// A peppered key moves with its scheme: it verifies where that pepper is
/// held (current or previous), and nowhere else.
pub async fn import_of_peppered_keys_verifies_only_with_that_pepper<F: StoreFactory>(f: &F) {
    let (v1, v2) = peppers();
    let source = f
        .store(StoreSettings::new().with_hasher(KeyHasher::with_pepper(v1.clone())))
        .await;
    let created = source.create(NewKey::new("sa-pepper")).await.unwrap();
    let key = exported(&source, created.record.key_id).await;
    for (hasher, verifies) in [
        (KeyHasher::with_pepper(v1.clone()), true),
        (
            KeyHasher::with_pepper(v2.clone()).with_previous_pepper(v1),
            true,
        ),
        (KeyHasher::with_pepper(v2), false),
        (KeyHasher::default(), false),
    ] {
        let target = f.store(StoreSettings::new().with_hasher(hasher)).await;
        assert_eq!(target.import(key.clone()).await.unwrap(), Imported::Added);
        let found = target
            .verify(&parse(&target, &created.key))
            .await
            .unwrap()
            .is_some();
        assert_eq!(found, verifies);
        // The hash is kept as it came, whatever the target's own scheme.
        assert!(exported(&target, created.record.key_id).await.hash == key.hash);
    }
}

// ---------------------------------------------------------------------------
// import, the rules of create (issue 20, point 2)
// ---------------------------------------------------------------------------

/// Records that break a rule of create, or a bound on an imported field,
/// are refused with [`StoreError::InvalidField`] naming the key and the
/// field, never echoing a pasted key; nothing is stored, and the record
/// as exported still imports.
pub async fn import_applies_the_rules_of_create_naming_the_key_and_the_field<F: StoreFactory>(
    f: &F,
) {
    use tower_api_key::store::rules::{Field, Problem};
    let source = f.store(StoreSettings::new()).await;
    let created = source.create(NewKey::new("sa-src")).await.unwrap();
    let good = exported(&source, created.record.key_id).await;
    let id = good.info.record.key_id;
    let format = source.key_format().unwrap();
    let pasted = format.generate().unwrap();
    let pasted = pasted.expose_secret().to_owned();
    let day = Duration::from_secs(24 * 3600);

    let mut cases: Vec<(&str, Field, Problem, StoredKey)> = Vec::new();
    let mut case = |what, field, problem, change: &dyn Fn(&mut StoredKey)| {
        let mut key = good.clone();
        change(&mut key);
        cases.push((what, field, problem, key));
    };
    for (what, account) in [
        ("an account with a space", "sa h".to_owned()),
        (
            "an account with a zero-width space",
            "sa\u{200b}h".to_owned(),
        ),
        ("an account with a newline", "sa\nh".to_owned()),
        (
            "an account with a terminal escape",
            "sa\u{1b}[2Jh".to_owned(),
        ),
    ] {
        case(
            what,
            Field::ServiceAccountId,
            Problem::NotVisibleAscii,
            &move |k| {
                k.info.record.service_account_id = account.as_str().into();
            },
        );
    }
    case(
        "an account of 300 characters",
        Field::ServiceAccountId,
        Problem::TooLong { max: 128 },
        &|k| k.info.record.service_account_id = "a".repeat(300).into(),
    );
    let key_text = pasted.clone();
    case(
        "an account that is a key",
        Field::ServiceAccountId,
        Problem::HoldsKey,
        &move |k| k.info.record.service_account_id = key_text.as_str().into(),
    );
    let key_text = pasted.clone();
    case(
        "a description holding a key",
        Field::Description,
        Problem::HoldsKey,
        &move |k| k.info.record.description = format!("ci: {key_text}"),
    );
    case(
        "a description of 1 MB",
        Field::Description,
        Problem::TooLong { max: 256 },
        &|k| k.info.record.description = "x".repeat(1 << 20),
    );
    case(
        "a description with a newline",
        Field::Description,
        Problem::ControlCharacter,
        &|k| k.info.record.description = "two\nlines".into(),
    );
    let key_text = pasted.clone();
    case(
        "a scope that is a key",
        Field::Scope(0),
        Problem::HoldsKey,
        &move |k| k.info.record.scopes = ScopeSet::new([key_text.as_str()]).unwrap(),
    );
    let key_text = pasted.clone();
    case(
        "a hint that is a key",
        Field::Hint,
        Problem::NotAHint,
        &move |k| {
            k.info.hint = key_text.clone();
        },
    );
    case("a hint too long", Field::Hint, Problem::NotAHint, &|k| {
        k.info.hint.push('x');
    });
    case(
        "a hint of another prefix",
        Field::Hint,
        Problem::NotAHint,
        &|k| {
            k.info.hint = "zzz_…abcd".into();
        },
    );
    case(
        "a grace until 9999",
        Field::PreviousValidUntil,
        Problem::GraceTooLong,
        // The grace is checked before the hash (equal here).
        &|k| k.previous = Some(PreviousHash::new(k.hash, latest_time())),
    );
    case(
        "a grace of 31 days",
        Field::PreviousValidUntil,
        Problem::GraceTooLong,
        &|k| {
            k.previous = Some(PreviousHash::new(k.hash, start_time() + 31 * day));
        },
    );
    case(
        "created in year 1",
        Field::CreatedAt,
        Problem::BeforeEpoch,
        &|k| {
            k.info.record.created_at = SystemTime::UNIX_EPOCH - Duration::from_secs(62_135_596_800);
        },
    );
    case(
        "used before 1970",
        Field::LastUsedAt,
        Problem::BeforeEpoch,
        &|k| k.info.last_used_at = Some(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
    );

    let target = f.store(StoreSettings::new()).await;
    for (what, field, problem, key) in cases {
        match target.import(key).await {
            Err(StoreError::InvalidField {
                id: Some(named),
                error,
                ..
            }) => {
                assert_eq!(named, id, "{what}: names the key");
                assert_eq!(error.field(), &field, "{what}");
                assert_eq!(error.problem(), &problem, "{what}");
                let text = StoreError::invalid_field(Some(named), error).to_string();
                assert!(text.contains(id.as_str()), "{what}: {text}");
                assert!(!text.contains(&pasted[4..]), "{what}: echoes the key");
            }
            other => panic!("{what}: expected InvalidField, got {other:?}"),
        }
        assert!(target.get(id).await.unwrap().is_none(), "{what}: stored");
    }
    assert!(export_everything(&target).await.is_empty());
    // A grace of 30 days from the import is within the rules.
    let mut graced = good.clone();
    let other = source.create(NewKey::new("sa-src")).await.unwrap();
    graced.previous = Some(PreviousHash::new(
        exported(&source, other.record.key_id).await.hash,
        start_time() + 30 * day,
    ));
    assert_eq!(target.import(graced).await.unwrap(), Imported::Added);
}

// ---------------------------------------------------------------------------
// revocations travel with an export
// ---------------------------------------------------------------------------

/// `export_revoked` pages through every revoked id in key id order; an
/// empty page is the end, and a present key is never listed.
pub async fn export_revoked_pages_through_the_revoked_ids_in_order<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    assert!(store.export_revoked(None, 10).await.unwrap().is_empty());
    let mut revoked = BTreeSet::new();
    for _ in 0..5 {
        let key = store.create(NewKey::new("sa-r")).await.unwrap();
        assert!(store.revoke(key.record.key_id, None).await.unwrap());
        revoked.insert(key.record.key_id);
    }
    let kept = store.create(NewKey::new("sa-r")).await.unwrap();
    let never_held = KeyId::random().unwrap();
    assert!(!store.import_revoked(never_held).await.unwrap());
    revoked.insert(never_held);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.export_revoked(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(*last);
        seen.extend(page);
    }
    assert_eq!(seen, revoked.iter().copied().collect::<Vec<_>>());
    assert!(!seen.contains(&kept.record.key_id));
    for bad in [0, MAX_EXPORT_PAGE + 1] {
        assert_invalid_page_size(store.export_revoked(None, bad).await, MAX_EXPORT_PAGE);
    }
}

/// A revocation imported into a store revokes the key it holds with that
/// id at once (its secret stops verifying), and from then on an import of
/// that key (from an export taken before the revoke) is refused. Importing
/// it again changes nothing.
pub async fn import_revoked_revokes_a_held_key_and_refuses_it_from_then_on<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let held = store.create(NewKey::new("sa-h")).await.unwrap();
    let other = store.create(NewKey::new("sa-h")).await.unwrap();
    let id = held.record.key_id;
    let old_export = export_everything(&store).await;

    assert!(store.import_revoked(id).await.unwrap(), "the key was held");
    assert!(store.get(id).await.unwrap().is_none());
    assert!(store
        .verify(&parse(&store, &held.key))
        .await
        .unwrap()
        .is_none());
    assert!(!store.import_revoked(id).await.unwrap(), "idempotent");
    for key in old_export {
        let this = key.info.record.key_id;
        let result = store.import(key).await;
        if this == id {
            let why = assert_conflict(result, id, ConflictKind::Revoked);
            assert!(why.contains(id.as_str()), "names the key: {why}");
        } else {
            assert_eq!(this, other.record.key_id);
            assert_eq!(result.unwrap(), Imported::AlreadyPresent);
        }
    }
    assert!(store
        .verify(&parse(&store, &other.key))
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.export_revoked(None, 10).await.unwrap(), vec![id]);
}

/// The case of issue 20: an export taken before a revoke, imported into
/// another store, must not make the key valid there. The revoked ids the
/// source exports, imported into the target, revoke the key there (already
/// moved) and refuse it in the old export; the other keys still move.
pub async fn revocations_travel_with_an_export<S, T>(source: &S, target: &T)
where
    S: StoreFactory,
    T: StoreFactory,
{
    let from = source.store(StoreSettings::new()).await;
    let to = target.store(StoreSettings::new()).await;
    let moved_early = from.create(NewKey::new("sa-t")).await.unwrap();
    let revoked_later = from.create(NewKey::new("sa-t")).await.unwrap();
    let kept = from.create(NewKey::new("sa-t")).await.unwrap();
    let old_export = export_everything(&from).await;
    // One key already moved before the revoke.
    let early = old_export
        .iter()
        .find(|k| k.info.record.key_id == moved_early.record.key_id)
        .unwrap()
        .clone();
    assert_eq!(to.import(early).await.unwrap(), Imported::Added);

    assert!(from.revoke(moved_early.record.key_id, None).await.unwrap());
    assert!(from
        .revoke(revoked_later.record.key_id, None)
        .await
        .unwrap());
    let revoked = from.export_revoked(None, MAX_EXPORT_PAGE).await.unwrap();
    assert_eq!(revoked.len(), 2);
    for id in revoked {
        to.import_revoked(id).await.unwrap();
    }
    for key in old_export {
        let this = key.info.record.key_id;
        let result = to.import(key).await;
        if this == kept.record.key_id {
            assert_eq!(result.unwrap(), Imported::Added);
        } else {
            assert_conflict(result, this, ConflictKind::Revoked);
        }
    }
    for gone in [&moved_early, &revoked_later] {
        assert!(to.verify(&parse(&to, &gone.key)).await.unwrap().is_none());
        assert!(to.get(gone.record.key_id).await.unwrap().is_none());
    }
    assert!(to.verify(&parse(&to, &kept.key)).await.unwrap().is_some());
}
