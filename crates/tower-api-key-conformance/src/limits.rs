//! Rate limits and credits in the stores: what a key carries, what its
//! service account carries, and credit leases (issue 14).

use std::time::{Duration, SystemTime};

use tower_api_key::cache::{CacheConfig, CachedVerifier, Source};
use tower_api_key::clock::Clock;
use tower_api_key::limits::{CreditLease, Credits, RateLimit, Refill, MAX_CREDITS};
use tower_api_key::store::{KeyUpdate, ListRequest, NewKey, StoreError};
use tower_api_key::CreditLedger;
use tower_api_key::{Invalidation, KeyId, KeyStore, ScopeSet, Verifier};

use super::{
    assert_invalid, export_everything, exported, parse, store_and_clock, StoreFactory,
    StoreSettings, Watch,
};

fn limit(text: &str) -> RateLimit {
    text.parse().unwrap()
}

fn two_limits() -> Vec<RateLimit> {
    vec![limit("5/1s"), limit("100/1m,burst=20")]
}

fn daily(remaining: u64, amount: u64) -> Credits {
    Credits::new(remaining)
        .unwrap()
        .with_refill(Refill::daily(amount).unwrap())
}

/// Nine distinct limits: one more than a key or an account may carry.
fn too_many_limits() -> Vec<RateLimit> {
    (1..=9)
        .map(|n| RateLimit::new(n, Duration::from_secs(1)).unwrap())
        .collect()
}

/// 00:00 UTC of 2026-12-01.
fn december_first() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(20_788 * 86_400)
}

const DAY: Duration = Duration::from_secs(86_400);

/// A lease the store must grant: the key has credits.
async fn must_lease<S: KeyStore>(store: &S, id: KeyId, want: u64, at: SystemTime) -> CreditLease {
    store
        .lease_credits(id, want, at)
        .await
        .unwrap()
        .expect("the key has credits")
}

async fn remaining<S: KeyStore>(store: &S, id: KeyId) -> Option<u64> {
    store
        .get(id)
        .await
        .unwrap()
        .expect("the key exists")
        .record
        .credits
        .map(|c| c.remaining())
}

// ---------------------------------------------------------------------------
// a key's limits and credits
// ---------------------------------------------------------------------------

pub async fn limits_and_credits_round_trip_through_every_read<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let credits = daily(50, 100);
    let created = store
        .create(
            NewKey::new("sa-limits")
                .with_rate_limits(two_limits())
                .with_credits(credits),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    assert_eq!(created.record.rate_limits, two_limits());
    assert_eq!(created.record.credits, Some(credits));
    assert!(created.record.account_rate_limits.is_empty());
    clock.advance(Duration::from_secs(1));
    let plain = store.create(NewKey::new("sa-limits")).await.unwrap();
    assert!(plain.record.rate_limits.is_empty());
    assert_eq!(plain.record.credits, None);

    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record, created.record);
    let listed = store
        .list("sa-limits", ListRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.keys.len(), 2);
    assert_eq!(listed.keys[0].record, created.record);
    assert_eq!(listed.keys[1].record, plain.record);
    let verified = store.verify(&parse(&store, &created.key)).await.unwrap();
    assert_eq!(verified.as_ref(), Some(&created.record));
    let verified = store.verify(&parse(&store, &plain.key)).await.unwrap();
    assert_eq!(verified.as_ref(), Some(&plain.record));
    let export = exported(&store, id).await;
    assert_eq!(export.info.record.rate_limits, two_limits());
    assert_eq!(export.info.record.credits, Some(credits));

    // Reads show the count as the store holds it, nothing applied on read:
    // a day later (a refill is due) the count is still the leased one.
    let lease = must_lease(&store, id, 3, clock.now()).await;
    assert_eq!(lease.granted, 3);
    clock.advance(DAY);
    assert_eq!(remaining(&store, id).await, Some(47));
    let verified = store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.credits.map(|c| c.remaining()), Some(47));
    assert_eq!(
        verified.credits.and_then(|c| c.refill().copied()),
        credits.refill().copied()
    );
}

pub async fn update_replaces_and_removes_limits_and_credits<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let created = store
        .create(
            NewKey::new("sa-update")
                .with_rate_limits(two_limits())
                .with_credits(daily(10, 20)),
        )
        .await
        .unwrap();
    let id = created.record.key_id;

    // Other fields leave them alone.
    let info = store
        .update(id, KeyUpdate::default().with_description("other"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.rate_limits, two_limits());
    assert_eq!(info.record.credits, Some(daily(10, 20)));

    // Replaced, not merged.
    let info = store
        .update(
            id,
            KeyUpdate::default().with_rate_limits(vec![limit("1/1h")]),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.rate_limits, [limit("1/1h")]);
    assert_eq!(info.record.credits, Some(daily(10, 20)));
    let no_refill = Credits::new(7).unwrap();
    let info = store
        .update(id, KeyUpdate::default().with_credits(Some(no_refill)), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        info.record.credits,
        Some(no_refill),
        "the refill is gone too"
    );
    assert_eq!(info.record.rate_limits, [limit("1/1h")]);
    assert_eq!(store.get(id).await.unwrap().unwrap(), info);

    // Removed: an empty list, and None.
    let info = store
        .update(
            id,
            KeyUpdate::default()
                .with_rate_limits(Vec::new())
                .with_credits(None),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(info.record.rate_limits.is_empty());
    assert_eq!(info.record.credits, None);
    let record = store
        .verify(&parse(&store, &created.key))
        .await
        .unwrap()
        .unwrap();
    assert!(record.rate_limits.is_empty());
    assert_eq!(record.credits, None);
    assert_eq!(
        store.lease_credits(id, 1, SystemTime::now()).await.unwrap(),
        None,
        "no credits, no lease"
    );

    // And given again.
    let info = store
        .update(
            id,
            KeyUpdate::default()
                .with_rate_limits(two_limits())
                .with_credits(Some(daily(3, 4))),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.record.rate_limits, two_limits());
    assert_eq!(info.record.credits, Some(daily(3, 4)));
}

pub async fn invalid_limits_are_refused_with_the_rule_and_change_nothing<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let why = assert_invalid(
        store
            .create(NewKey::new("sa-bad").with_rate_limits(too_many_limits()))
            .await,
    );
    assert!(why.contains("at most 8"), "{why}");
    let twins = vec![limit("5/1s"), limit("5/1s")];
    let why = assert_invalid(
        store
            .create(NewKey::new("sa-bad").with_rate_limits(twins.clone()))
            .await,
    );
    assert!(why.contains("5/1s") && why.contains("twice"), "{why}");
    assert!(
        super::ids_of(&store, "sa-bad").await.is_empty(),
        "nothing created"
    );

    let created = store
        .create(NewKey::new("sa-bad").with_rate_limits(two_limits()))
        .await
        .unwrap();
    let id = created.record.key_id;
    let why = assert_invalid(
        store
            .update(
                id,
                KeyUpdate::default()
                    .with_description("never written")
                    .with_rate_limits(twins.clone()),
                None,
            )
            .await,
    );
    assert!(why.contains("twice"), "{why}");
    let info = store.get(id).await.unwrap().unwrap();
    assert_eq!(info.record, created.record, "the update changed nothing");

    let why = assert_invalid(
        store
            .set_account_rate_limits("sa-bad", too_many_limits())
            .await,
    );
    assert!(why.contains("at most 8"), "{why}");
    assert_invalid(store.set_account_rate_limits("sa-bad", twins).await);
    let why = assert_invalid(store.set_account_rate_limits("", two_limits()).await);
    assert!(why.contains("service_account_id"), "{why}");
    assert!(store
        .account_rate_limits("sa-bad")
        .await
        .unwrap()
        .is_empty());
}

pub async fn reissue_keeps_limits_and_credits<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(
            NewKey::new("sa-reissue")
                .with_rate_limits(two_limits())
                .with_credits(Credits::new(80).unwrap()),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let lease = must_lease(&store, id, 10, clock.now()).await;
    assert_eq!((lease.granted, lease.remaining), (10, 70));
    let reissued = store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reissued.record.rate_limits, two_limits());
    assert_eq!(reissued.record.credits.map(|c| c.remaining()), Some(70));
    let record = store
        .verify(&parse(&store, &reissued.key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record, reissued.record);
    // The same generation: the lease's unspent credits still go back.
    store.return_credits(id, lease.generation, 4).await.unwrap();
    assert_eq!(remaining(&store, id).await, Some(74));
}

// ---------------------------------------------------------------------------
// a service account's limits
// ---------------------------------------------------------------------------

pub async fn account_limits_are_set_read_removed_and_in_every_record_of_the_account<
    F: StoreFactory,
>(
    f: &F,
) {
    let store = f.store(StoreSettings::new()).await;
    let a1 = store
        .create(NewKey::new("sa-a").with_rate_limits(vec![limit("1/1s")]))
        .await
        .unwrap();
    let a2 = store.create(NewKey::new("sa-a")).await.unwrap();
    let b = store.create(NewKey::new("sa-b")).await.unwrap();
    assert!(store.account_rate_limits("sa-a").await.unwrap().is_empty());

    store
        .set_account_rate_limits("sa-a", two_limits())
        .await
        .unwrap();
    assert_eq!(
        store.account_rate_limits("sa-a").await.unwrap(),
        two_limits()
    );
    assert!(store.account_rate_limits("sa-b").await.unwrap().is_empty());
    for key in [&a1, &a2] {
        let record = store
            .verify(&parse(&store, &key.key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.account_rate_limits, two_limits());
        assert_eq!(
            record.rate_limits, key.record.rate_limits,
            "the key's own stay"
        );
        let info = store.get(key.record.key_id).await.unwrap().unwrap();
        assert_eq!(info.record, record);
    }
    let page = store.list("sa-a", ListRequest::default()).await.unwrap();
    assert!(page
        .keys
        .iter()
        .all(|k| k.record.account_rate_limits == two_limits()));
    let other = store.verify(&parse(&store, &b.key)).await.unwrap().unwrap();
    assert!(
        other.account_rate_limits.is_empty(),
        "another account's key"
    );
    // Not part of a key's export: they belong to the account.
    assert!(export_everything(&store).await.iter().all(|k| k
        .info
        .record
        .account_rate_limits
        .is_empty()));

    // A key created later carries them from the start.
    let a3 = store.create(NewKey::new("sa-a")).await.unwrap();
    assert_eq!(a3.record.account_rate_limits, two_limits());
    // Replaced, then removed by an empty list.
    store
        .set_account_rate_limits("sa-a", vec![limit("7/1d")])
        .await
        .unwrap();
    assert_eq!(
        store.account_rate_limits("sa-a").await.unwrap(),
        [limit("7/1d")]
    );
    store
        .set_account_rate_limits("sa-a", Vec::new())
        .await
        .unwrap();
    assert!(store.account_rate_limits("sa-a").await.unwrap().is_empty());
    let record = store
        .verify(&parse(&store, &a1.key))
        .await
        .unwrap()
        .unwrap();
    assert!(record.account_rate_limits.is_empty());
    assert_eq!(record.rate_limits, [limit("1/1s")]);
    // An account without keys may carry limits too.
    store
        .set_account_rate_limits("sa-empty", vec![limit("3/1m")])
        .await
        .unwrap();
    assert_eq!(
        store.account_rate_limits("sa-empty").await.unwrap(),
        [limit("3/1m")]
    );
}

pub async fn account_limits_reach_cached_records_through_the_announcements<F: StoreFactory>(f: &F) {
    let store = f.store(StoreSettings::new()).await;
    let mut announced = Watch::on(&store);
    let cache = CachedVerifier::new(
        store.clone(),
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .build(),
    );
    let keys = [
        store.create(NewKey::new("sa-cached")).await.unwrap(),
        store.create(NewKey::new("sa-cached")).await.unwrap(),
    ];
    let other = store.create(NewKey::new("sa-elsewhere")).await.unwrap();
    for key in keys.iter().chain([&other]) {
        let caller = cache.lookup(&parse(&store, &key.key)).await.unwrap();
        assert!(caller.record().account_rate_limits.is_empty());
        let (_, source) = cache
            .lookup_with_source(&parse(&store, &key.key))
            .await
            .unwrap();
        assert_eq!(source, Source::Cache, "cached");
    }
    announced.drain();

    store
        .set_account_rate_limits("sa-cached", two_limits())
        .await
        .unwrap();
    let seen = announced.drain();
    for key in &keys {
        let id = key.record.key_id;
        assert!(
            seen.contains(&Invalidation::key_of(id, "sa-cached")),
            "{id} announced: {seen:?}"
        );
        let (caller, source) = cache
            .lookup_with_source(&parse(&store, &key.key))
            .await
            .unwrap();
        assert_eq!(source, Source::Verifier, "{id} dropped from the cache");
        assert_eq!(caller.record().account_rate_limits, two_limits());
    }
    assert!(
        seen.iter()
            .all(|what| what.key_id() != Some(other.record.key_id)),
        "another account's key is not announced"
    );
    let (_, source) = cache
        .lookup_with_source(&parse(&store, &other.key))
        .await
        .unwrap();
    assert_eq!(source, Source::Cache, "still cached");

    // Removing them reaches the cache the same way.
    store
        .set_account_rate_limits("sa-cached", Vec::new())
        .await
        .unwrap();
    let caller = cache.lookup(&parse(&store, &keys[0].key)).await.unwrap();
    assert!(caller.record().account_rate_limits.is_empty());
}

// ---------------------------------------------------------------------------
// credits
// ---------------------------------------------------------------------------

pub async fn leases_shrink_to_one_and_never_exceed_what_remains<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(NewKey::new("sa-lease").with_credits(Credits::new(100).unwrap()))
        .await
        .unwrap();
    let id = created.record.key_id;
    let mut grants = Vec::new();
    let mut left = 100;
    loop {
        let lease = must_lease(&store, id, 10, clock.now()).await;
        assert!(lease.granted <= 10 && lease.granted <= left);
        assert_eq!(lease.granted, 10.min((left / 8).max(1)).min(left));
        left -= lease.granted;
        assert_eq!(lease.remaining, left);
        assert_eq!(lease.generation, 0);
        assert_eq!(lease.next_refill, None, "never refilled");
        if lease.granted == 0 {
            break;
        }
        grants.push(lease.granted);
    }
    assert_eq!(grants.iter().sum::<u64>(), 100);
    assert_eq!(&grants[..3], [10, 10, 10]);
    assert!(grants.ends_with(&[1; 7]), "{grants:?}");
    assert_eq!(remaining(&store, id).await, Some(0));

    // No credits, no key: no lease.
    let plain = store.create(NewKey::new("sa-lease")).await.unwrap();
    assert_eq!(
        store
            .lease_credits(plain.record.key_id, 10, clock.now())
            .await
            .unwrap(),
        None
    );
    let unknown = KeyId::random().unwrap();
    assert_eq!(
        store.lease_credits(unknown, 10, clock.now()).await.unwrap(),
        None
    );
    store.return_credits(unknown, 0, 5).await.unwrap();
}

pub async fn concurrent_leases_grant_exactly_the_credits<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(NewKey::new("sa-race").with_credits(Credits::new(137).unwrap()))
        .await
        .unwrap();
    super::concurrent_leases_grant_exactly_the_credits(
        &[store],
        created.record.key_id,
        137,
        clock.now(),
    )
    .await;
}

pub async fn returns_add_back_only_within_the_generation<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(NewKey::new("sa-return").with_credits(daily(80, 80)))
        .await
        .unwrap();
    let id = created.record.key_id;
    let first = must_lease(&store, id, 10, clock.now()).await;
    assert_eq!(
        (first.granted, first.generation, first.remaining),
        (10, 0, 70)
    );
    store.return_credits(id, first.generation, 6).await.unwrap();
    assert_eq!(remaining(&store, id).await, Some(76), "the same generation");

    // A new credit setting starts a generation: the old lease adds nothing.
    store
        .update(
            id,
            KeyUpdate::default().with_credits(Some(daily(40, 80))),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    store.return_credits(id, first.generation, 4).await.unwrap();
    assert_eq!(remaining(&store, id).await, Some(40));
    let second = must_lease(&store, id, 2, clock.now()).await;
    assert!(second.generation > first.generation);
    assert_eq!(second.remaining, 38);

    // So does a refill.
    let tomorrow = clock.now() + DAY;
    let third = must_lease(&store, id, 2, tomorrow).await;
    assert!(third.generation > second.generation);
    assert_eq!(third.remaining, 78, "refilled to 80, then leased");
    store
        .return_credits(id, second.generation, 2)
        .await
        .unwrap();
    assert_eq!(remaining(&store, id).await, Some(78));
    store.return_credits(id, third.generation, 2).await.unwrap();
    assert_eq!(remaining(&store, id).await, Some(80));
    // Never past the most a key holds.
    store
        .return_credits(id, third.generation, u64::MAX)
        .await
        .unwrap();
    assert_eq!(remaining(&store, id).await, Some(MAX_CREDITS));

    // Credits removed and given again start a later generation still: a
    // lease from before the removal adds nothing.
    let other = store
        .create(NewKey::new("sa-return").with_credits(Credits::new(8).unwrap()))
        .await
        .unwrap()
        .record
        .key_id;
    let old = must_lease(&store, other, 1, clock.now()).await;
    assert_eq!((old.generation, old.remaining), (0, 7));
    for credits in [None, Some(Credits::new(5).unwrap())] {
        store
            .update(other, KeyUpdate::default().with_credits(credits), None)
            .await
            .unwrap()
            .unwrap();
    }
    store
        .return_credits(other, old.generation, 1)
        .await
        .unwrap();
    assert_eq!(remaining(&store, other).await, Some(5));
    let new = must_lease(&store, other, 1, clock.now()).await;
    assert!(new.generation > old.generation);
}

pub async fn credits_refill_at_midnight_utc_once_per_due_time<F: StoreFactory>(f: &F) {
    // One second before midnight.
    let settings = StoreSettings::new().with_clock_at(december_first() - Duration::from_secs(1));
    let (store, clock) = store_and_clock(f, settings).await;
    let created = store
        .create(NewKey::new("sa-refill").with_credits(daily(3, 10)))
        .await
        .unwrap();
    let id = created.record.key_id;
    let lease = must_lease(&store, id, 10, clock.now()).await;
    assert_eq!(
        (lease.granted, lease.remaining, lease.generation),
        (1, 2, 0)
    );
    assert_eq!(lease.next_refill, Some(december_first()));
    let just_before = december_first() - Duration::from_millis(1);
    let lease = must_lease(&store, id, 10, just_before).await;
    assert_eq!((lease.remaining, lease.generation), (1, 0), "not yet");

    // At midnight: back to the refill's amount (nothing carries over).
    let lease = must_lease(&store, id, 10, december_first()).await;
    assert_eq!(
        (lease.granted, lease.remaining, lease.generation),
        (1, 9, 1)
    );
    assert_eq!(lease.next_refill, Some(december_first() + DAY));
    // Once per due time: later the same day nothing is refilled.
    let lease = must_lease(&store, id, 10, december_first() + DAY / 2).await;
    assert_eq!((lease.remaining, lease.generation), (8, 1));
    // Days without a lease refill once, to the amount.
    let lease = must_lease(&store, id, 10, december_first() + DAY * 5 + DAY / 3).await;
    assert_eq!((lease.remaining, lease.generation), (9, 2));
    assert_eq!(lease.next_refill, Some(december_first() + DAY * 6));

    // Monthly, on the 31st: February's last day.
    let monthly = Credits::new(0)
        .unwrap()
        .with_refill(Refill::monthly(5, 31).unwrap());
    let key = store
        .create(NewKey::new("sa-refill").with_credits(monthly))
        .await
        .unwrap();
    let id = key.record.key_id;
    let lease = must_lease(&store, id, 1, clock.now()).await;
    assert_eq!(
        lease.granted, 0,
        "set at 23:59:59 on Nov 30, refilled on Dec 31"
    );
    let dec_31 = december_first() + DAY * 30;
    assert_eq!(lease.next_refill, Some(dec_31));
    let lease = must_lease(&store, id, 1, dec_31).await;
    assert_eq!(
        (lease.granted, lease.remaining, lease.generation),
        (1, 4, 1)
    );
    let jan_31 = dec_31 + DAY * 31;
    assert_eq!(lease.next_refill, Some(jan_31));
    // January's refill is skipped by a lease on February 28 (2027 is not a
    // leap year): one refill, to the amount.
    let feb_28 = jan_31 + DAY * 28;
    let lease = must_lease(&store, id, 1, feb_28).await;
    assert_eq!((lease.remaining, lease.generation), (4, 2));
    assert_eq!(lease.next_refill, Some(feb_28 + DAY * 31), "March 31");
}

pub async fn add_credits_adds_up_to_the_maximum_and_keeps_the_generation<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let mut announced = Watch::on(&store);
    let created = store
        .create(NewKey::new("sa-add").with_credits(daily(16, 100)))
        .await
        .unwrap();
    let id = created.record.key_id;
    let lease = must_lease(&store, id, 2, clock.now()).await;
    assert_eq!(lease.remaining, 14);
    announced.drain();

    let before = store.get(id).await.unwrap().unwrap().version;
    let added = store.add_credits(id, 30, None).await.unwrap().unwrap();
    assert_eq!(
        added.record.credits,
        Some(daily(44, 100)),
        "the refill stays"
    );
    assert_eq!(added.version, before.next(), "adding credits is a change");
    assert!(
        announced
            .drain()
            .contains(&Invalidation::key_of(id, "sa-add")),
        "caches re-read the count"
    );
    assert_eq!(remaining(&store, id).await, Some(44));
    // The generation stays: the lease's credits still go back.
    store.return_credits(id, lease.generation, 2).await.unwrap();
    assert_eq!(remaining(&store, id).await, Some(46));
    let added = store
        .add_credits(id, u64::MAX, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        added.record.credits.map(|c| c.remaining()),
        Some(MAX_CREDITS)
    );

    let plain = store.create(NewKey::new("sa-add")).await.unwrap();
    match store.add_credits(plain.record.key_id, 5, None).await {
        Err(StoreError::NoCredits { id, .. }) => assert_eq!(id, plain.record.key_id),
        other => panic!("expected StoreError::NoCredits, got {other:?}"),
    }
    assert_eq!(remaining(&store, plain.record.key_id).await, None);
    assert_eq!(
        store
            .add_credits(KeyId::random().unwrap(), 5, None)
            .await
            .unwrap(),
        None
    );
}

pub async fn a_revoked_keys_credits_go_with_it<F: StoreFactory>(f: &F) {
    let (store, clock) = store_and_clock(f, StoreSettings::new()).await;
    let created = store
        .create(
            NewKey::new("sa-gone")
                .with_scopes(ScopeSet::new(["a.b"]).unwrap())
                .with_credits(Credits::new(50).unwrap()),
        )
        .await
        .unwrap();
    let id = created.record.key_id;
    let lease = must_lease(&store, id, 5, clock.now()).await;
    assert_eq!(lease.granted, 5);
    assert!(store.revoke(id, None).await.unwrap());
    assert_eq!(store.lease_credits(id, 5, clock.now()).await.unwrap(), None);
    store.return_credits(id, lease.generation, 5).await.unwrap();
    assert_eq!(store.add_credits(id, 5, None).await.unwrap(), None);
    assert!(store.get(id).await.unwrap().is_none());
}
