//! The key lifecycle: the per-key fields `retire_when_unused` and
//! `retired_unused_since` through every read, write and move, and what a
//! [`LifecycleStore`] answers and writes, including the races a second
//! replica (or an attacker timing requests) would run against it.
//!
//! The field tests need a [`KeyStore`] only and run in
//! [`store_conformance!`](crate::store_conformance); the rest need a
//! [`LifecycleStore`] and run in
//! [`lifecycle_conformance!`](crate::lifecycle_conformance). The functions
//! taking stores (`concurrent_*`) are also for a store's own tests with two
//! stores on one database (two replicas).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Barrier;
use tower_api_key::clock::{Clock as _, ManualClock};
use tower_api_key::store::{
    latest_time, Imported, KeyUpdate, LifecycleStore, ListRequest, NewKey, NoticeKind, StoreError,
    MAX_EXPORT_PAGE,
};
use tower_api_key::{Invalidation, KeyId, KeyStore, Verifier};

use crate::{
    assert_invalid, assert_invalid_page_size, exported, parse, StoreFactory, StoreSettings, Watch,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A key is created with `retire_when_unused` on and no retirement, or off
/// when asked; every read shows it (create, get, list, verify), an update
/// turns it on and off (moving the version) and other updates and a
/// reissue keep it.
pub async fn retire_when_unused_defaults_to_on_and_round_trips_through_every_read<
    F: StoreFactory,
>(
    f: &F,
) {
    let store = f.store(StoreSettings::new()).await;
    let plain = store.create(NewKey::new("sa-life")).await.unwrap();
    assert!(plain.record.retire_when_unused, "on by default");
    assert_eq!(plain.record.retired_unused_since, None);
    let got = store.get(plain.record.key_id).await.unwrap().unwrap();
    assert!(got.record.retire_when_unused);
    assert_eq!(got.record.retired_unused_since, None);

    let kept = store
        .create(NewKey::new("sa-life").with_retire_when_unused(false))
        .await
        .unwrap();
    let id = kept.record.key_id;
    assert!(!kept.record.retire_when_unused);
    assert!(
        !store
            .get(id)
            .await
            .unwrap()
            .unwrap()
            .record
            .retire_when_unused
    );
    let listed = store.list("sa-life", ListRequest::first(10)).await.unwrap();
    let flags: Vec<(KeyId, bool)> = listed
        .keys
        .iter()
        .map(|k| (k.record.key_id, k.record.retire_when_unused))
        .collect();
    assert!(flags.contains(&(plain.record.key_id, true)), "{flags:?}");
    assert!(flags.contains(&(id, false)), "{flags:?}");
    let verified = store
        .verify(&parse(&store, &kept.key))
        .await
        .unwrap()
        .unwrap();
    assert!(!verified.retire_when_unused);

    let on = store
        .update(id, KeyUpdate::default().with_retire_when_unused(true), None)
        .await
        .unwrap()
        .unwrap();
    assert!(on.record.retire_when_unused);
    assert_eq!(
        on.version,
        kept.version.next(),
        "a change moves the version"
    );
    let described = store
        .update(id, KeyUpdate::default().with_description("other"), None)
        .await
        .unwrap()
        .unwrap();
    assert!(described.record.retire_when_unused, "kept by other updates");
    let off = store
        .update(
            id,
            KeyUpdate::default().with_retire_when_unused(false),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!off.record.retire_when_unused);
    assert!(
        !store
            .get(id)
            .await
            .unwrap()
            .unwrap()
            .record
            .retire_when_unused
    );
    let reissued = store
        .reissue(id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    assert!(!reissued.record.retire_when_unused, "kept by a reissue");
}

/// An export carries both fields and an import keeps them; an imported
/// `retired_unused_since` outside 1970 to year 9999 is refused, naming the
/// key and the field, and nothing is stored.
pub async fn export_and_import_carry_the_lifecycle_fields<F: StoreFactory>(f: &F) {
    let source = f.store(StoreSettings::new()).await;
    let created = source
        .create(NewKey::new("sa-move").with_retire_when_unused(false))
        .await
        .unwrap();
    let id = created.record.key_id;
    let mut key = exported(&source, id).await;
    assert!(
        !key.info.record.retire_when_unused,
        "export carries the opt-out"
    );
    let since = crate::start_time() - Duration::from_secs(400 * 24 * 60 * 60);
    let at = crate::start_time() + DAY;
    key.info.record.retired_unused_since = Some(since);
    key.info.record.expires_at = Some(at);

    let target = f.store(StoreSettings::new()).await;
    for (what, bad) in [
        ("after 9999", latest_time() + Duration::from_millis(1)),
        (
            "before 1970",
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        ),
    ] {
        let mut wrong = key.clone();
        wrong.info.record.retired_unused_since = Some(bad);
        let why = assert_invalid(target.import(wrong).await);
        assert!(why.contains(id.as_str()), "{what}: names the key: {why}");
        assert!(why.contains("retired_unused_since"), "{what}: {why}");
        assert!(target.get(id).await.unwrap().is_none(), "{what}: stored");
    }
    assert_eq!(target.import(key).await.unwrap(), Imported::Added);
    let got = target.get(id).await.unwrap().unwrap();
    assert!(!got.record.retire_when_unused);
    assert_eq!(got.record.retired_unused_since, Some(since));
    assert_eq!(got.record.expires_at, Some(at));
    let again = exported(&target, id).await;
    assert_eq!(again.info.record.retired_unused_since, Some(since));
    assert!(!again.info.record.retire_when_unused);
}

// ---------------------------------------------------------------------------
// LifecycleStore
// ---------------------------------------------------------------------------

/// A store made with default settings, its clock, and the clock's start.
async fn clocked<F: StoreFactory>(f: &F) -> (F::Store, Arc<tower_api_key::clock::ManualClock>)
where
    F::Store: LifecycleStore,
{
    crate::store_and_clock(f, StoreSettings::new()).await
}

/// The ids of `page`.
fn ids(page: &[tower_api_key::store::KeyInfo]) -> Vec<KeyId> {
    page.iter().map(|k| k.record.key_id).collect()
}

/// Every page of `next` (called with the last id of the previous page),
/// checking that no page is longer than `limit`.
async fn all_ids<Fut>(limit: usize, mut next: impl FnMut(Option<KeyId>) -> Fut) -> Vec<KeyId>
where
    Fut: std::future::Future<Output = Result<Vec<tower_api_key::store::KeyInfo>, StoreError>>,
{
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = next(after).await.unwrap();
        assert!(page.len() <= limit, "a page of {} > {limit}", page.len());
        let Some(last) = page.last() else {
            return all;
        };
        after = Some(last.record.key_id);
        all.extend(ids(&page));
    }
}

/// `now` is the store's clock.
pub async fn now_reads_the_stores_clock<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    assert_eq!(LifecycleStore::now(&store), clock.now());
    clock.advance(Duration::from_secs(3600));
    assert_eq!(LifecycleStore::now(&store), clock.now());
}

/// `expiring` returns the keys whose expiry is in `[from, until)`, in key
/// id order, page by page; keys without expiry or outside the window are
/// left out; a page size outside 1 to the export maximum is refused.
pub async fn expiring_pages_through_keys_expiring_in_the_window_in_id_order<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let now = clock.now();
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for days in [1u32, 3, 7, 7, 2, 6] {
        let id = store
            .create(NewKey::new("sa-exp").with_expires_at(now + DAY * days))
            .await
            .unwrap()
            .record
            .key_id;
        // The window is [from, until): day 7 is out.
        if (2..7).contains(&days) {
            inside.push(id);
        } else {
            outside.push(id);
        }
    }
    outside.push(
        store
            .create(NewKey::new("sa-exp"))
            .await
            .unwrap()
            .record
            .key_id,
    );
    inside.sort();
    let (from, until) = (now + DAY * 2, now + DAY * 7);
    let found = all_ids(2, |after| store.expiring(from, until, after, 2)).await;
    assert_eq!(found, inside, "window [2 days, 7 days), id order");
    let whole = store
        .expiring(from, until, None, MAX_EXPORT_PAGE)
        .await
        .unwrap();
    assert_eq!(ids(&whole), inside);
    let info = whole.iter().find(|k| k.record.key_id == inside[0]).unwrap();
    assert!(info
        .record
        .expires_at
        .is_some_and(|at| at >= from && at < until));
    let last = inside.last().copied();
    assert!(store
        .expiring(from, until, last, 10)
        .await
        .unwrap()
        .is_empty());
    assert_invalid_page_size(store.expiring(from, until, None, 0).await, MAX_EXPORT_PAGE);
    assert_invalid_page_size(
        store.expiring(from, until, None, MAX_EXPORT_PAGE + 1).await,
        MAX_EXPORT_PAGE,
    );
}

/// `unused` returns the keys last used (or, never used, created) before
/// the cutoff, in key id order, page by page; never a key opted out or
/// already retired.
pub async fn unused_returns_keys_idle_before_the_cutoff_never_opted_out_or_retired<
    F: StoreFactory,
>(
    f: &F,
) where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let created_at = clock.now();
    let key = |opt_out: bool| {
        let store = store.clone();
        async move {
            store
                .create(NewKey::new("sa-idle").with_retire_when_unused(!opt_out))
                .await
                .unwrap()
                .record
                .key_id
        }
    };
    let never_used = key(false).await;
    let used_early = key(false).await;
    let used_late = key(false).await;
    let opted_out = key(true).await;
    let retired = key(false).await;
    clock.advance(DAY * 10);
    store
        .record_usage(&[
            (used_early, created_at + DAY),
            (used_late, created_at + DAY * 5),
            (opted_out, created_at + DAY),
        ])
        .await
        .unwrap();
    store
        .retire_unused(retired, None, created_at, clock.now() + DAY)
        .await
        .unwrap()
        .expect("retired");

    let cutoff = created_at + DAY * 3;
    let mut want = vec![never_used, used_early];
    want.sort();
    let found = all_ids(1, |after| store.unused(cutoff, after, 1)).await;
    assert_eq!(
        found, want,
        "idle before the cutoff, opted-out and retired left out"
    );
    // Strictly before: a key created (never used) exactly at the cutoff is not idle.
    assert!(store.unused(created_at, None, 10).await.unwrap().is_empty());
    let mut later = vec![never_used, used_early, used_late];
    later.sort();
    let found = store.unused(created_at + DAY * 6, None, 10).await.unwrap();
    assert_eq!(ids(&found), later);
    assert!(!ids(&found).contains(&opted_out));
    assert_invalid_page_size(store.unused(cutoff, None, 0).await, MAX_EXPORT_PAGE);
}

/// A notice is recorded once per key, kind and window: the first call is
/// `true`, every later one `false`; `notice` shows when it was recorded
/// (the store's clock) and what it announced. Another kind or window is
/// another notice. A key that does not exist gets none; a revoked key's
/// notices go with it.
pub async fn record_notice_is_true_once_per_key_kind_and_window<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let id = store
        .create(NewKey::new("sa-note"))
        .await
        .unwrap()
        .record
        .key_id;
    let window = clock.now() + DAY * 7;
    let announced = Some(clock.now() + DAY * 30);
    assert_eq!(
        store
            .notice(id, NoticeKind::UnusedWarning, window)
            .await
            .unwrap(),
        None
    );
    let sent_at = clock.now();
    assert!(store
        .record_notice(id, NoticeKind::UnusedWarning, window, announced)
        .await
        .unwrap());
    clock.advance(Duration::from_secs(60));
    assert!(!store
        .record_notice(id, NoticeKind::UnusedWarning, window, None)
        .await
        .unwrap());
    let sent = store
        .notice(id, NoticeKind::UnusedWarning, window)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        sent.sent_at, sent_at,
        "the first call's time, from the store's clock"
    );
    assert_eq!(sent.announced, announced, "the first call's announcement");

    // Another kind, another window: other notices.
    assert!(store
        .record_notice(id, NoticeKind::ExpiringSoon, window, None)
        .await
        .unwrap());
    assert!(store
        .record_notice(id, NoticeKind::UnusedWarning, window + DAY, None)
        .await
        .unwrap());
    let expiring = store
        .notice(id, NoticeKind::ExpiringSoon, window)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expiring.announced, None);
    assert_eq!(
        store.notice(id, NoticeKind::Expired, window).await.unwrap(),
        None
    );

    // No notice for a key the store does not hold.
    let other = f.store(StoreSettings::new()).await;
    let stranger = other
        .create(NewKey::new("sa-note"))
        .await
        .unwrap()
        .record
        .key_id;
    assert!(!store
        .record_notice(stranger, NoticeKind::Expired, window, None)
        .await
        .unwrap());
    assert_eq!(
        store
            .notice(stranger, NoticeKind::Expired, window)
            .await
            .unwrap(),
        None
    );

    // Revoked: its notices are gone with it.
    assert!(store.revoke(id, None).await.unwrap());
    assert_eq!(
        store
            .notice(id, NoticeKind::UnusedWarning, window)
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .record_notice(id, NoticeKind::UnusedWarning, window, None)
        .await
        .unwrap());
}

/// Notice times outside 1970 to year 9999 are refused, naming the key, and
/// record nothing.
pub async fn record_notice_refuses_times_a_store_cannot_keep<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let id = store
        .create(NewKey::new("sa-note"))
        .await
        .unwrap()
        .record
        .key_id;
    let too_late = latest_time() + Duration::from_millis(1);
    let why = assert_invalid(
        store
            .record_notice(id, NoticeKind::Expired, too_late, None)
            .await,
    );
    assert!(why.contains(id.as_str()) && why.contains("window"), "{why}");
    let window = clock.now();
    let why = assert_invalid(
        store
            .record_notice(id, NoticeKind::Expired, window, Some(too_late))
            .await,
    );
    assert!(why.contains("announced"), "{why}");
    assert_eq!(
        store.notice(id, NoticeKind::Expired, window).await.unwrap(),
        None,
        "nothing recorded"
    );
}

/// Many callers recording the same notice at once, through `stores`
/// (clones of one store, or stores on one database): exactly one is told
/// to send it. Callers recording notices while the key is revoked get an
/// answer, never an error (a notice that lost the race to the revoke is not
/// recorded), and no notice outlives the key.
pub async fn concurrent_record_notice_lets_exactly_one_through<S>(stores: &[S])
where
    S: LifecycleStore + Clone + 'static,
{
    const CALLERS: usize = 16;
    let id = stores[0]
        .create(NewKey::new("sa-race"))
        .await
        .unwrap()
        .record
        .key_id;
    for round in 0..4u64 {
        let window = crate::micros(LifecycleStore::now(&stores[0])) + DAY * (round + 1) as u32;
        let barrier = Arc::new(Barrier::new(CALLERS));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .record_notice(id, NoticeKind::ExpiringSoon, window, None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut sent = 0;
        for task in tasks {
            sent += usize::from(task.await.unwrap());
        }
        assert_eq!(sent, 1, "round {round}: exactly one caller sends it");
    }
    for round in 0..8u64 {
        let id = stores[0]
            .create(NewKey::new("sa-race"))
            .await
            .unwrap()
            .record
            .key_id;
        let window = crate::micros(LifecycleStore::now(&stores[0])) + DAY;
        let barrier = Arc::new(Barrier::new(CALLERS + 1));
        // Each caller records a notice of its own, so every one of them
        // writes, each racing the revoke.
        let tasks: Vec<_> = (0..CALLERS)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let barrier = barrier.clone();
                let window = window + DAY * i as u32;
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .record_notice(id, NoticeKind::ExpiringSoon, window, None)
                        .await
                })
            })
            .collect();
        let revoker = {
            let store = stores[round as usize % stores.len()].clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.revoke(id, None).await
            })
        };
        for task in tasks {
            let recorded = task.await.unwrap();
            assert!(
                recorded.is_ok(),
                "round {round}: a notice racing the revoke: {recorded:?}"
            );
        }
        assert!(revoker.await.unwrap().unwrap(), "round {round}: revoked");
        for i in 0..CALLERS {
            let window = window + DAY * i as u32;
            let left = stores[0].notice(id, NoticeKind::ExpiringSoon, window);
            assert_eq!(
                left.await.unwrap(),
                None,
                "round {round}: gone with the key"
            );
        }
    }
}

/// The notice suite on clones of one store.
pub async fn concurrent_record_notice_sends_once<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let store = f.store(StoreSettings::new()).await;
    concurrent_record_notice_lets_exactly_one_through(&[store.clone(), store]).await;
}

/// A lease is held by one holder at a time: taken when free, renewed by
/// its holder, refused to another until it runs out (at its end exactly,
/// it is free), then the other's.
pub async fn a_lease_has_one_holder_until_it_runs_out<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let ttl = Duration::from_secs(30);
    assert!(store.lease("lifecycle", "a", ttl).await.unwrap());
    assert!(!store.lease("lifecycle", "b", ttl).await.unwrap());
    assert!(
        store.lease("other", "b", ttl).await.unwrap(),
        "names are apart"
    );
    clock.advance(Duration::from_secs(20));
    assert!(store.lease("lifecycle", "a", ttl).await.unwrap(), "renewed");
    clock.advance(Duration::from_secs(20));
    // Renewed at 20 s for 30 s: still a's at 40 s.
    assert!(!store.lease("lifecycle", "b", ttl).await.unwrap());
    clock.advance(Duration::from_secs(10));
    // At 50 s the lease ends: free.
    assert!(store.lease("lifecycle", "b", ttl).await.unwrap(), "ran out");
    assert!(!store.lease("lifecycle", "a", ttl).await.unwrap());
    // A lease beyond year 9999 is held (until then).
    assert!(store.lease("long", "a", Duration::MAX).await.unwrap());
    clock.advance(DAY * 365 * 100);
    assert!(!store.lease("long", "b", ttl).await.unwrap());
}

/// Two holders racing for one lease, free or run out (held by a third
/// whose time is up), through `stores` (clones of one store, or stores on
/// one database), round after round: exactly one holds it.
pub async fn concurrent_leases_let_exactly_one_holder_hold<S>(stores: &[S])
where
    S: LifecycleStore + Clone + 'static,
{
    for round in 0..16 {
        let name = format!("race-{round}");
        if round % 2 == 1 {
            // Held for no time: run out at once, so the racers take it by
            // the upsert's conditional update rather than its insert.
            assert!(stores[0].lease(&name, "c", Duration::ZERO).await.unwrap());
        }
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = ["a", "b"]
            .into_iter()
            .enumerate()
            .map(|(i, holder)| {
                let store = stores[i % stores.len()].clone();
                let barrier = barrier.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .lease(&name, holder, Duration::from_secs(30))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut held = 0;
        for task in tasks {
            held += usize::from(task.await.unwrap());
        }
        assert_eq!(held, 1, "round {round}: exactly one holds {name}");
    }
}

/// The lease race on clones of one store.
pub async fn concurrent_leases_hold_once<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let store = f.store(StoreSettings::new()).await;
    concurrent_leases_let_exactly_one_holder_hold(&[store.clone(), store]).await;
}

/// A retirement sets `expires_at` and `retired_unused_since`, moves the
/// version and is announced like an update; `get` shows both, the key works
/// until the date and not from it, and it is retired only once.
pub async fn retire_unused_expires_the_key_and_shows_why<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let created = store.create(NewKey::new("sa-ret")).await.unwrap();
    let id = created.record.key_id;
    let since = created.record.created_at;
    clock.advance(DAY * 400);
    let at = clock.now() + DAY * 7;
    let mut announced = Watch::on(&store);
    announced.drain();
    let retired = store
        .retire_unused(id, None, since, at)
        .await
        .unwrap()
        .expect("an unused key is retired");
    assert_eq!(retired.record.expires_at, Some(at));
    assert_eq!(retired.record.retired_unused_since, Some(since));
    assert_eq!(retired.version, created.version.next());
    assert!(
        announced
            .drain()
            .contains(&Invalidation::key_of(id, "sa-ret")),
        "announced before returning"
    );
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.expires_at, Some(at));
    assert_eq!(got.record.retired_unused_since, Some(since));
    assert_eq!(got.version, retired.version);

    // Verifiers return expired records; every reader refuses them by
    // `is_expired_at` (the authenticator on each request).
    let presented = parse(&store, &created.key);
    let verified = store.verify(&presented).await.unwrap().unwrap();
    assert!(!verified.is_expired_at(clock.now()), "works until the date");
    assert!(
        store
            .retire_unused(id, None, since, at)
            .await
            .unwrap()
            .is_none(),
        "retired once"
    );
    clock.advance(DAY * 7);
    let verified = store.verify(&presented).await.unwrap().unwrap();
    assert_eq!(verified.retired_unused_since, Some(since), "shows why");
    assert!(verified.is_expired_at(clock.now()), "stopped on the date");
    assert!(!ids(&store.unused(clock.now(), None, 10).await.unwrap()).contains(&id));
}

/// No retirement of a key used since it was read, opted out, expiring
/// before the date, or unknown: `None`, and the key is unchanged. A key
/// expiring exactly on the date, or later, is retired.
pub async fn retire_unused_leaves_keys_that_no_longer_qualify<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let start = clock.now();
    clock.advance(DAY * 400);
    let at = clock.now() + DAY;
    let create = |new: NewKey| {
        let store = store.clone();
        async move { store.create(new).await.unwrap().record.key_id }
    };
    let used = create(NewKey::new("sa-ret")).await;
    let opted_out = create(NewKey::new("sa-ret").with_retire_when_unused(false)).await;
    let sooner = create(NewKey::new("sa-ret").with_expires_at(at - Duration::from_secs(1))).await;
    let same_day = create(NewKey::new("sa-ret").with_expires_at(at)).await;
    let later = create(NewKey::new("sa-ret").with_expires_at(at + DAY)).await;
    store.record_usage(&[(used, start + DAY)]).await.unwrap();

    for (what, id, seen) in [
        ("used since", used, None),
        ("read at an older use", used, Some(start)),
        ("opted out", opted_out, None),
        ("expiring sooner", sooner, None),
    ] {
        let before = store.get(id).await.unwrap().unwrap();
        assert!(
            store
                .retire_unused(id, seen, start, at)
                .await
                .unwrap()
                .is_none(),
            "{what}"
        );
        assert_eq!(
            store.get(id).await.unwrap().unwrap(),
            before,
            "{what}: unchanged"
        );
    }
    let gone = f.store(StoreSettings::new()).await;
    let unknown = gone
        .create(NewKey::new("sa-ret"))
        .await
        .unwrap()
        .record
        .key_id;
    assert!(store
        .retire_unused(unknown, None, start, at)
        .await
        .unwrap()
        .is_none());

    // The use the caller read: retired.
    let retired = store
        .retire_unused(used, Some(start + DAY), start + DAY, at)
        .await
        .unwrap()
        .expect("read at its last use");
    assert_eq!(retired.record.retired_unused_since, Some(start + DAY));
    for id in [same_day, later] {
        let retired = store.retire_unused(id, None, start, at).await.unwrap();
        assert_eq!(retired.unwrap().record.expires_at, Some(at));
    }
    // A retirement date past year 9999 is refused.
    let fresh = create(NewKey::new("sa-ret")).await;
    let why = assert_invalid(
        store
            .retire_unused(fresh, None, start, latest_time() + Duration::from_millis(1))
            .await,
    );
    assert!(why.contains(fresh.as_str()), "{why}");
    assert_eq!(
        store.get(fresh).await.unwrap().unwrap().record.expires_at,
        None
    );
}

/// An opted-out key is never returned by `unused` nor retired, however long
/// it goes unused; opting in again makes it a candidate.
pub async fn an_opted_out_key_is_never_unused_nor_retired<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let created = store
        .create(NewKey::new("sa-keep").with_retire_when_unused(false))
        .await
        .unwrap();
    let id = created.record.key_id;
    clock.advance(DAY * 3650);
    let now = clock.now();
    assert!(store.unused(now, None, 10).await.unwrap().is_empty());
    assert!(store
        .retire_unused(id, None, created.record.created_at, now)
        .await
        .unwrap()
        .is_none());
    let got = store.get(id).await.unwrap().unwrap();
    assert_eq!(got.record.expires_at, None);
    assert_eq!(got.record.retired_unused_since, None);
    store
        .update(id, KeyUpdate::default().with_retire_when_unused(true), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&store.unused(now, None, 10).await.unwrap()), [id]);
}

/// A retired key given a new expiry (or none) by an update is revived: its
/// `retired_unused_since` is cleared, and it is a candidate again. Other
/// updates keep the retirement.
pub async fn a_new_expiry_revives_a_retired_key<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let (store, clock) = clocked(f).await;
    let created = store.create(NewKey::new("sa-back")).await.unwrap();
    let id = created.record.key_id;
    let since = created.record.created_at;
    clock.advance(DAY * 400);
    let at = clock.now() + DAY;
    store
        .retire_unused(id, None, since, at)
        .await
        .unwrap()
        .unwrap();
    let described = store
        .update(id, KeyUpdate::default().with_description("why"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(described.record.retired_unused_since, Some(since), "kept");
    let revived = store
        .update(
            id,
            KeyUpdate::default().with_expires_at(Some(at + DAY * 90)),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revived.record.retired_unused_since, None);
    assert_eq!(revived.record.expires_at, Some(at + DAY * 90));
    assert_eq!(
        store
            .get(id)
            .await
            .unwrap()
            .unwrap()
            .record
            .retired_unused_since,
        None
    );
    assert_eq!(
        ids(&store.unused(clock.now(), None, 10).await.unwrap()),
        [id]
    );

    // Retired again, then the expiry removed: revived too.
    store
        .retire_unused(id, None, since, at)
        .await
        .unwrap()
        .unwrap();
    let forever = store
        .update(id, KeyUpdate::default().with_expires_at(None), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(forever.record.expires_at, None);
    assert_eq!(forever.record.retired_unused_since, None);
}

/// A retirement racing a recorded use, round after round, through `stores`
/// (clones of one store, or stores on one database): either the key is
/// retired as read at its old use (and the use lands after), or it is not
/// retired and shows the new use; never retired as of a use it no longer
/// had. In half the rounds the key was never used (read as no use at all),
/// and its first use races the retirement.
pub async fn retire_unused_racing_record_usage_never_retires_a_newer_use<S>(stores: &[S])
where
    S: LifecycleStore + Clone + 'static,
{
    for round in 0..16u32 {
        let store = stores[0].clone();
        let id = store
            .create(NewKey::new("sa-race"))
            .await
            .unwrap()
            .record
            .key_id;
        // Whole microseconds, as every store keeps them (the stores may
        // run on the system clock).
        let now = crate::micros(LifecycleStore::now(&store));
        let old = now - DAY * 400;
        let new = now - Duration::from_secs(1);
        // The use the retirer read: none in every other pair of rounds
        // (each pair runs the user and the retirer on either store).
        let seen = (round % 4 < 2).then_some(old);
        if let Some(old) = seen {
            store.record_usage(&[(id, old)]).await.unwrap();
        }
        let at = now + DAY;
        let barrier = Arc::new(Barrier::new(2));
        let user = {
            let store = stores[round as usize % stores.len()].clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.record_usage(&[(id, new)]).await.unwrap();
            })
        };
        let retirer = {
            let store = stores[(round as usize + 1) % stores.len()].clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.retire_unused(id, seen, old, at).await.unwrap()
            })
        };
        user.await.unwrap();
        let retired = retirer.await.unwrap();
        let got = store.get(id).await.unwrap().unwrap();
        assert_eq!(got.last_used_at, Some(new), "round {round}: the use landed");
        match retired {
            Some(info) => {
                assert_eq!(info.last_used_at, seen, "round {round}: retired as read");
                assert_eq!(got.record.retired_unused_since, Some(old));
                assert_eq!(got.record.expires_at, Some(at));
            }
            None => {
                assert_eq!(got.record.retired_unused_since, None, "round {round}");
                assert_eq!(got.record.expires_at, None, "round {round}");
            }
        }
    }
}

/// The retirement race on clones of one store.
pub async fn retire_unused_racing_a_use_is_one_or_the_other<F: StoreFactory>(f: &F)
where
    F::Store: LifecycleStore,
{
    let store = f.store(StoreSettings::new()).await;
    retire_unused_racing_record_usage_never_retires_a_newer_use(&[store.clone(), store]).await;
}

/// A notice and a lease recorded by `first` hold for the store `reopen`
/// makes of it (shut down, then a new store on the same database, on
/// `clock`, which reads [`start_time`](crate::start_time)): the notice is
/// not sent again and keeps its sending time, the lease is not taken by
/// another holder. Then the key is revoked; the new store and the key's id
/// come back, for the caller to check with its own SQL that the notice
/// went with the key.
pub async fn a_notice_and_a_lease_outlive_their_store<S, R, Fut>(
    first: S,
    clock: &ManualClock,
    reopen: R,
) -> (S, KeyId)
where
    S: LifecycleStore,
    R: FnOnce(S) -> Fut,
    Fut: Future<Output = S>,
{
    let id = first
        .create(NewKey::new("sa-1"))
        .await
        .unwrap()
        .record
        .key_id;
    let window = clock.now() + 6 * DAY;
    let kind = NoticeKind::ExpiringSoon;
    assert!(first.record_notice(id, kind, window, None).await.unwrap());
    let minute = Duration::from_secs(60);
    assert!(first.lease("lifecycle", "a", minute).await.unwrap());

    let again = reopen(first).await;
    assert!(
        !again.record_notice(id, kind, window, None).await.unwrap(),
        "sent before the restart: not again"
    );
    let sent = again.notice(id, kind, window).await.unwrap().unwrap();
    assert_eq!(sent.sent_at, crate::start_time());
    assert!(!again.lease("lifecycle", "b", minute).await.unwrap());
    assert!(again.revoke(id, None).await.unwrap());
    (again, id)
}
