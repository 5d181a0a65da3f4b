//! The cache policy of `CachedVerifier`: coalescing, negative caching, errors,
//! timeouts, expiry, invalidation and revocation through a store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;
use tower_api_key::cache::{CacheConfig, CacheConfigBuilder, CachedVerifier, LookupError, Source};
use tower_api_key::clock::{Clock, ManualClock};
use tower_api_key::store::{KeyUpdate, NewKey};
use tower_api_key::Caller;
use tower_api_key::Invalidations;
use tower_api_key::KeyRecord;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::{GeneratedKey, KeyFormat, PresentedKey};
use tower_api_key::{Verifier, VerifierError};

const N: usize = 1000;

/// A shared call counter.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    /// Counts one call; returns its number, starting at 1.
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn new_key() -> (GeneratedKey, PresentedKey) {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let presented = format.parse(key.expose_secret()).unwrap();
    (key, presented)
}

fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start_time()))
}

/// Long enough that nothing expires by itself while a test runs.
fn config() -> CacheConfigBuilder {
    CacheConfig::builder()
        .positive_ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600))
}

fn parse(key: &GeneratedKey) -> PresentedKey {
    KeyFormat::default().parse(key.expose_secret()).unwrap()
}

// ---------------------------------------------------------------------------
// Coalescing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_lookups_of_one_uncached_key_run_the_verifier_once() {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    // Each task adds a permit just before its lookup; the verifier answers only
    // once all N lookups have started, so they all overlap its one call.
    let started = Arc::new(Semaphore::new(0));
    let verifier = {
        let calls = calls.clone();
        let started = started.clone();
        move |key: PresentedKey| {
            let calls = calls.clone();
            let started = started.clone();
            async move {
                calls.bump();
                let _all_started = started.acquire_many(N as u32).await.unwrap();
                Ok(Some(KeyRecord::new(key.id(), "sa-coalesce")))
            }
        }
    };
    let cache = CachedVerifier::new(verifier, config().verifier_timeout(None).build());

    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = JoinSet::new();
    for _ in 0..N {
        let (cache, barrier, started, presented) = (
            cache.clone(),
            barrier.clone(),
            started.clone(),
            presented.clone(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            started.add_permits(1);
            cache.lookup(&presented).await
        });
    }
    let mut callers: Vec<Caller> = Vec::with_capacity(N);
    while let Some(joined) = tasks.join_next().await {
        callers.push(joined.unwrap().expect("the key is valid"));
    }

    assert_eq!(calls.get(), 1, "the verifier ran more than once");
    assert_eq!(callers.len(), N);
    // One answer for all: the record (with its creation instant) is the same.
    let first = &callers[0];
    assert_eq!(first.key_id(), presented.id());
    assert_eq!(first.service_account_id(), "sa-coalesce");
    assert!(callers.iter().all(|c| c == first));
    // And it is cached now.
    let (_, source) = cache.lookup_with_source(&presented).await.unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------
// Unknown keys
// ---------------------------------------------------------------------------

fn unknown_verifier(calls: Calls) -> impl Verifier {
    move |_key: PresentedKey| {
        let calls = calls.clone();
        async move {
            calls.bump();
            Ok::<Option<KeyRecord>, VerifierError>(None)
        }
    }
}

#[tokio::test]
async fn an_unknown_key_presented_a_thousand_times_in_a_row_runs_the_verifier_once() {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    let cache = CachedVerifier::new(unknown_verifier(calls.clone()), config().build());
    for _ in 0..N {
        let err = cache.lookup(&presented).await.unwrap_err();
        assert!(matches!(err, LookupError::Unknown), "{err:?}");
    }
    assert_eq!(calls.get(), 1);
}

/// Presents one unknown key from `N` tasks released together; the verifier
/// answers only once all of them have started. Returns the verifier calls.
async fn present_an_unknown_key_concurrently() -> usize {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    let started = Arc::new(Semaphore::new(0));
    let verifier = {
        let calls = calls.clone();
        let started = started.clone();
        move |_key: PresentedKey| {
            let calls = calls.clone();
            let started = started.clone();
            async move {
                calls.bump();
                let _all_started = started.acquire_many(N as u32).await.unwrap();
                Ok::<Option<KeyRecord>, VerifierError>(None)
            }
        }
    };
    let cache = CachedVerifier::new(verifier, config().verifier_timeout(None).build());
    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = JoinSet::new();
    for _ in 0..N {
        let (cache, barrier, started, presented) = (
            cache.clone(),
            barrier.clone(),
            started.clone(),
            presented.clone(),
        );
        tasks.spawn(async move {
            barrier.wait().await;
            started.add_permits(1);
            cache.lookup(&presented).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, LookupError::Unknown), "{err:?}");
    }
    // Still remembered as unknown, with no further call.
    let before = calls.get();
    assert!(matches!(
        cache.lookup(&presented).await,
        Err(LookupError::Unknown)
    ));
    assert_eq!(calls.get(), before);
    calls.get()
}

/// On one thread no task can run between the shared "unknown" answer and its
/// negative entry; the multi-threaded test below shows that gap.
#[tokio::test]
async fn an_unknown_key_presented_a_thousand_times_concurrently_on_one_thread_runs_the_verifier_once(
) {
    assert_eq!(present_an_unknown_key_concurrently().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_presented_a_thousand_times_concurrently_on_two_threads_runs_the_verifier_once(
) {
    // One round shows the gap about half the time; twenty show it reliably.
    for round in 0..20 {
        let calls = present_an_unknown_key_concurrently().await;
        assert_eq!(calls, 1, "round {round}: the verifier ran {calls} times");
    }
}

// ---------------------------------------------------------------------------
// Verifier failures, panics and timeouts are never cached
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_failing_verifier_gives_unavailable_and_is_asked_again_next_time() {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    // Fails twice, then answers.
    let verifier = {
        let calls = calls.clone();
        move |key: PresentedKey| {
            let n = calls.bump();
            async move {
                if n <= 2 {
                    Err(VerifierError::backend("database is down"))
                } else {
                    Ok(Some(KeyRecord::new(key.id(), "sa-1")))
                }
            }
        }
    };
    let cache = CachedVerifier::new(verifier, config().build());
    for expected_calls in 1..=2 {
        let err = cache.lookup(&presented).await.unwrap_err();
        match &err {
            LookupError::Unavailable(inner) => {
                assert!(matches!(**inner, VerifierError::Backend(_)), "{inner:?}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(calls.get(), expected_calls);
    }
    let caller = cache.lookup(&presented).await.unwrap();
    assert_eq!(caller.key_id(), presented.id());
    assert_eq!(calls.get(), 3);
}

fn panic_in_verifier() -> Result<Option<KeyRecord>, VerifierError> {
    panic!("the verifier panicked on purpose")
}

#[tokio::test]
async fn a_panicking_verifier_gives_verifier_panicked_and_the_next_lookup_works() {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    let verifier = {
        let calls = calls.clone();
        move |key: PresentedKey| {
            let n = calls.bump();
            async move {
                if n == 1 {
                    panic_in_verifier()
                } else {
                    Ok(Some(KeyRecord::new(key.id(), "sa-1")))
                }
            }
        }
    };
    let cache = CachedVerifier::new(verifier, config().build());
    let err = cache.lookup(&presented).await.unwrap_err();
    assert!(matches!(err, LookupError::VerifierPanicked), "{err:?}");
    let caller = cache.lookup(&presented).await.unwrap();
    assert_eq!(caller.service_account_id(), "sa-1");
    assert_eq!(calls.get(), 2);
}

/// A verifier type whose `verify` panics before returning a future at all.
struct PanicsOnce(Calls);

#[async_trait]
impl Verifier for PanicsOnce {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        if self.0.bump() == 1 {
            panic_in_verifier()
        } else {
            Ok(Some(KeyRecord::new(key.id(), "sa-2")))
        }
    }
}

#[tokio::test]
async fn a_panicking_verifier_struct_does_not_poison_the_cache() {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    let cache = CachedVerifier::new(PanicsOnce(calls.clone()), config().build());
    assert!(matches!(
        cache.lookup(&presented).await,
        Err(LookupError::VerifierPanicked)
    ));
    assert_eq!(
        cache.lookup(&presented).await.unwrap().service_account_id(),
        "sa-2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_verifier_slower_than_the_timeout_gives_unavailable_and_is_not_cached() {
    let (_key, presented) = new_key();
    let calls = Calls::default();
    // The first call takes a minute; later calls answer at once.
    let verifier = {
        let calls = calls.clone();
        move |key: PresentedKey| {
            let n = calls.bump();
            async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(Some(KeyRecord::new(key.id(), "sa-slow")))
            }
        }
    };
    let timeout = Duration::from_secs(2);
    let cache = CachedVerifier::new(verifier, config().verifier_timeout(Some(timeout)).build());

    let started = tokio::time::Instant::now();
    let err = cache.lookup(&presented).await.unwrap_err();
    let waited = started.elapsed();
    match &err {
        LookupError::Unavailable(inner) => {
            assert!(
                matches!(**inner, VerifierError::Timeout(after) if after == timeout),
                "{inner:?}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        waited >= timeout && waited < Duration::from_secs(60),
        "{waited:?}"
    );

    // Not cached: the next lookup asks again, and gets the answer.
    let (caller, source) = cache.lookup_with_source(&presented).await.unwrap();
    assert_eq!(source, Source::Verifier);
    assert_eq!(caller.service_account_id(), "sa-slow");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_verifier_returning_the_record_of_another_key_is_refused_and_not_cached() {
    let (_key, presented) = new_key();
    let other_id = KeyFormat::default().generate().unwrap().id();
    let calls = Calls::default();
    let verifier = {
        let calls = calls.clone();
        move |_key: PresentedKey| {
            calls.bump();
            async move { Ok(Some(KeyRecord::new(other_id, "sa-someone-else"))) }
        }
    };
    let cache = CachedVerifier::new(verifier, config().build());
    for expected_calls in 1..=2 {
        let err = cache.lookup(&presented).await.unwrap_err();
        assert!(matches!(err, LookupError::Unavailable(_)), "{err:?}");
        assert_eq!(calls.get(), expected_calls);
    }
}

// ---------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_key_expiring_inside_the_positive_ttl_is_refused_from_its_expiry_on() {
    let clock = manual_clock();
    let expires_at = start_time() + Duration::from_secs(30);
    let (_key, presented) = new_key();
    let calls = Calls::default();
    let verifier = {
        let calls = calls.clone();
        move |key: PresentedKey| {
            calls.bump();
            async move {
                Ok(Some(
                    KeyRecord::new(key.id(), "sa-1").with_expires_at(Some(expires_at)),
                ))
            }
        }
    };
    let cache = CachedVerifier::new(
        verifier,
        CacheConfig::builder()
            .positive_ttl(Duration::from_secs(3600))
            .clock(clock.clone())
            .build(),
    );

    let (caller, source) = cache.lookup_with_source(&presented).await.unwrap();
    assert_eq!(source, Source::Verifier);
    assert_eq!(caller.expires_at(), Some(expires_at));

    clock.advance(Duration::from_secs(29));
    let (_, source) = cache.lookup_with_source(&presented).await.unwrap();
    assert_eq!(source, Source::Cache);

    clock.set(expires_at - Duration::from_nanos(1));
    assert!(cache.lookup(&presented).await.is_ok());

    clock.set(expires_at);
    assert!(matches!(
        cache.lookup(&presented).await,
        Err(LookupError::Expired)
    ));
    clock.advance(Duration::from_secs(3600 * 24));
    assert!(matches!(
        cache.lookup(&presented).await,
        Err(LookupError::Expired)
    ));
    assert_eq!(calls.get(), 1, "expiry needs no verifier call");
}

// ---------------------------------------------------------------------------
// Invalidation and revocation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidate_makes_the_next_lookup_call_the_verifier_again() {
    let (_key, presented) = new_key();
    let (_other_key, other) = new_key();
    let calls = Calls::default();
    let verifier = {
        let calls = calls.clone();
        move |key: PresentedKey| {
            calls.bump();
            async move { Ok(Some(KeyRecord::new(key.id(), "sa-1"))) }
        }
    };
    let cache = CachedVerifier::new(verifier, config().build());
    cache.lookup(&presented).await.unwrap();
    cache.lookup(&other).await.unwrap();
    assert_eq!(
        cache.lookup_with_source(&presented).await.unwrap().1,
        Source::Cache
    );
    assert_eq!(calls.get(), 2);

    cache.invalidate(presented.id());
    let (_, source) = cache.lookup_with_source(&presented).await.unwrap();
    assert_eq!(source, Source::Verifier);
    assert_eq!(calls.get(), 3);
    // Only that key: the other one is still cached.
    let (_, source) = cache.lookup_with_source(&other).await.unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(calls.get(), 3);
    // And the re-fetched entry is cached again.
    let (_, source) = cache.lookup_with_source(&presented).await.unwrap();
    assert_eq!(source, Source::Cache);

    cache.invalidate_all();
    assert_eq!(
        cache.lookup_with_source(&other).await.unwrap().1,
        Source::Verifier
    );
    assert_eq!(calls.get(), 4);
}

#[tokio::test]
async fn revoking_through_the_store_makes_the_next_lookup_unknown() {
    let store = MemoryStore::new();
    let cache = CachedVerifier::new(store.clone(), config().build());
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let presented = parse(&created.key);

    cache.lookup(&presented).await.unwrap();
    assert_eq!(
        cache.lookup_with_source(&presented).await.unwrap().1,
        Source::Cache
    );

    assert!(store.revoke(created.record.key_id, None).await.unwrap());
    let err = cache.lookup(&presented).await.unwrap_err();
    assert!(matches!(err, LookupError::Unknown), "{err:?}");
}

#[tokio::test]
async fn updating_scopes_through_the_store_is_seen_by_the_next_lookup() {
    let store = MemoryStore::new();
    let cache = CachedVerifier::new(store.clone(), config().build());
    let created = store
        .create(NewKey::new("sa-1").with_scopes(ScopeSet::new(["a.read", "a.write"]).unwrap()))
        .await
        .unwrap();
    let presented = parse(&created.key);
    assert_eq!(cache.lookup(&presented).await.unwrap().scopes().len(), 2);

    let narrowed = ScopeSet::new(["a.read"]).unwrap();
    store
        .update(
            created.record.key_id,
            KeyUpdate::default().with_scopes(narrowed.clone()),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cache.lookup(&presented).await.unwrap().scopes(), &narrowed);
}

#[tokio::test]
async fn after_reissue_with_grace_the_old_secret_works_until_the_deadline_and_the_new_one_throughout(
) {
    let clock = manual_clock();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let cache = CachedVerifier::new(store.clone(), config().clock(clock.clone()).build());
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let old = parse(&created.key);
    cache.lookup(&old).await.unwrap();

    let grace = Duration::from_secs(30);
    let reissued = store
        .reissue(created.record.key_id, grace, None)
        .await
        .unwrap()
        .unwrap();
    let new = parse(&reissued.key);
    assert_eq!(new.id(), old.id());
    assert_ne!(new.digest(), old.digest());
    let deadline = clock.now() + grace;

    let old_caller = cache.lookup(&old).await.unwrap();
    assert_eq!(old_caller.expires_at(), Some(deadline));
    let new_caller = cache.lookup(&new).await.unwrap();
    assert_eq!(new_caller.expires_at(), None);
    assert_eq!(new_caller.service_account_id(), "sa-1");

    clock.set(deadline - Duration::from_nanos(1));
    assert!(cache.lookup(&old).await.is_ok());
    assert!(cache.lookup(&new).await.is_ok());

    clock.set(deadline);
    let err = cache.lookup(&old).await.unwrap_err();
    assert!(
        matches!(err, LookupError::Expired | LookupError::Unknown),
        "{err:?}"
    );
    assert!(cache.lookup(&new).await.is_ok());
    // The store itself no longer knows the old secret, so a cold cache refuses it too.
    assert!(store.verify(&old).await.unwrap().is_none());
    let cold = CachedVerifier::new(store.clone(), config().clock(clock.clone()).build());
    assert!(matches!(cold.lookup(&old).await, Err(LookupError::Unknown)));

    clock.advance(Duration::from_secs(3600 * 24 * 365));
    assert!(cache.lookup(&old).await.is_err());
    assert!(cache.lookup(&new).await.is_ok());
    assert!(cold.lookup(&new).await.is_ok());
}

#[tokio::test]
async fn after_reissue_without_grace_the_old_secret_is_refused_at_once() {
    let clock = manual_clock();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let cache = CachedVerifier::new(store.clone(), config().clock(clock.clone()).build());
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let old = parse(&created.key);
    cache.lookup(&old).await.unwrap();
    assert_eq!(
        cache.lookup_with_source(&old).await.unwrap().1,
        Source::Cache
    );

    let reissued = store
        .reissue(created.record.key_id, Duration::ZERO, None)
        .await
        .unwrap()
        .unwrap();
    let err = cache.lookup(&old).await.unwrap_err();
    assert!(matches!(err, LookupError::Unknown), "{err:?}");
    assert!(cache.lookup(&parse(&reissued.key)).await.is_ok());
}

// ---------------------------------------------------------------------------
// Floods of unknown keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_flood_of_ten_thousand_unknown_keys_does_not_evict_a_hot_valid_key() {
    let (_hot_key, hot) = new_key();
    let hot_id = hot.id();
    let hot_calls = Calls::default();
    let other_calls = Calls::default();
    let verifier = {
        let (hot_calls, other_calls) = (hot_calls.clone(), other_calls.clone());
        move |key: PresentedKey| {
            if key.id() == hot_id {
                hot_calls.bump();
            } else {
                other_calls.bump();
            }
            async move { Ok((key.id() == hot_id).then(|| KeyRecord::new(key.id(), "sa-hot"))) }
        }
    };
    // Small caches, so a flood would evict if the two were shared.
    let cache = CachedVerifier::new(
        verifier,
        config().max_keys(16).max_unknown_keys(1000).build(),
    );
    cache.lookup(&hot).await.unwrap();
    assert_eq!(hot_calls.get(), 1);

    let format = KeyFormat::default();
    for i in 0..10_000 {
        let unknown = format.generate().unwrap();
        let unknown = format.parse(unknown.expose_secret()).unwrap();
        assert!(matches!(
            cache.lookup(&unknown).await,
            Err(LookupError::Unknown)
        ));
        if i % 500 == 499 {
            cache.run_pending_tasks();
            let (_, source) = cache.lookup_with_source(&hot).await.unwrap();
            assert_eq!(source, Source::Cache, "after {} unknown keys", i + 1);
        }
    }
    cache.run_pending_tasks();
    let (caller, source) = cache.lookup_with_source(&hot).await.unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(caller.service_account_id(), "sa-hot");
    assert_eq!(hot_calls.get(), 1, "the hot key went back to the verifier");
    assert_eq!(other_calls.get(), 10_000);
    assert_eq!(cache.cached_keys(), 1);
}

// ---------------------------------------------------------------------------
// Revocation racing an in-flight verifier call
// ---------------------------------------------------------------------------

/// Reads the store, then (on its first call only) reports that it has read
/// and waits to be released before returning what it read: a database answer
/// still on the wire while the key is revoked.
struct Gated {
    store: MemoryStore,
    calls: Calls,
    has_read: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

impl Gated {
    fn new(store: MemoryStore) -> Self {
        Self {
            store,
            calls: Calls::default(),
            has_read: Arc::new(Semaphore::new(0)),
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

#[async_trait]
impl Verifier for Gated {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        let first = self.calls.bump() == 1;
        let answer = self.store.verify(key).await;
        if first {
            self.has_read.add_permits(1);
            self.release.acquire().await.unwrap().forget();
        }
        answer
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

struct Race {
    store: MemoryStore,
    cache: CachedVerifier,
    presented: PresentedKey,
    key_id: tower_api_key::KeyId,
    calls: Calls,
    has_read: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

async fn race_setup() -> Race {
    let store = MemoryStore::new();
    let created = store
        .create(NewKey::new("sa-1").with_scopes(ScopeSet::new(["a.read", "a.write"]).unwrap()))
        .await
        .unwrap();
    let gated = Gated::new(store.clone());
    let (calls, has_read, release) = (
        gated.calls.clone(),
        gated.has_read.clone(),
        gated.release.clone(),
    );
    let cache = CachedVerifier::new(gated, config().verifier_timeout(None).build());
    Race {
        store,
        cache,
        presented: parse(&created.key),
        key_id: created.record.key_id,
        calls,
        has_read,
        release,
    }
}

impl Race {
    fn spawn_lookup(&self) -> tokio::task::JoinHandle<Result<Caller, LookupError>> {
        let (cache, presented) = (self.cache.clone(), self.presented.clone());
        tokio::spawn(async move { cache.lookup(&presented).await })
    }

    async fn wait_until_the_verifier_has_read(&self) {
        self.has_read.acquire().await.unwrap().forget();
    }

    /// After the race: the key is refused now and nothing cached admits it.
    async fn assert_refused_and_not_cached(&self) {
        for _ in 0..3 {
            let err = self.cache.lookup(&self.presented).await.unwrap_err();
            assert!(matches!(err, LookupError::Unknown), "{err:?}");
        }
        self.cache.run_pending_tasks();
        assert_eq!(self.cache.cached_keys(), 0, "a revoked key is still cached");
    }
}

#[tokio::test]
async fn a_lookup_starting_after_revoke_is_refused_even_while_an_earlier_verifier_call_is_in_flight(
) {
    let race = race_setup().await;
    let first = race.spawn_lookup();
    race.wait_until_the_verifier_has_read().await;

    assert!(race.store.revoke(race.key_id, None).await.unwrap());
    // Starts after the revoke returned, while the first call is still blocked:
    // it may join that call; it must still be refused.
    let second = race.spawn_lookup();
    tokio::task::yield_now().await;
    race.release.add_permits(1);

    let second = second.await.unwrap();
    assert!(matches!(second, Err(LookupError::Unknown)), "{second:?}");
    // The first lookup started before the revoke: either answer is acceptable.
    let _either = first.await.unwrap();
    race.assert_refused_and_not_cached().await;
    assert!(race.calls.get() >= 2, "the stale answer was not re-checked");
}

#[tokio::test]
async fn a_verifier_answer_read_before_revoke_is_not_cached_after_it() {
    let race = race_setup().await;
    let first = race.spawn_lookup();
    race.wait_until_the_verifier_has_read().await;

    assert!(race.store.revoke(race.key_id, None).await.unwrap());
    race.release.add_permits(1);
    let _either = first.await.unwrap();

    // Everything from here on started after the revoke returned.
    race.assert_refused_and_not_cached().await;
}

#[tokio::test]
async fn a_lookup_starting_after_a_scope_update_sees_the_new_scopes_despite_an_in_flight_call() {
    let race = race_setup().await;
    let first = race.spawn_lookup();
    race.wait_until_the_verifier_has_read().await;

    let narrowed = ScopeSet::new(["a.read"]).unwrap();
    race.store
        .update(
            race.key_id,
            KeyUpdate::default().with_scopes(narrowed.clone()),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let second = race.spawn_lookup();
    tokio::task::yield_now().await;
    race.release.add_permits(1);

    assert_eq!(second.await.unwrap().unwrap().scopes(), &narrowed);
    let _either = first.await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            race.cache.lookup(&race.presented).await.unwrap().scopes(),
            &narrowed
        );
    }
}

#[tokio::test]
async fn a_key_already_expired_is_refused_from_the_cache_without_asking_the_verifier_again() {
    let clock = manual_clock();
    let calls = Calls::default();
    let counted = calls.clone();
    let expired_at = start_time() - Duration::from_secs(1);
    let verifier = move |key: PresentedKey| {
        counted.bump();
        async move {
            Ok::<_, VerifierError>(Some(
                KeyRecord::new(key.id(), "sa-expired").with_expires_at(Some(expired_at)),
            ))
        }
    };
    let cache = CachedVerifier::new(verifier, config().clock(clock.clone()).build());
    let (_key, presented) = new_key();
    for _ in 0..100 {
        assert!(matches!(
            cache.lookup(&presented).await,
            Err(LookupError::Expired)
        ));
    }
    assert_eq!(
        calls.get(),
        1,
        "the expired record is remembered, not fetched per request"
    );
}

// ---------------------------------------------------------------------------
// A flood of revocations in one account
// ---------------------------------------------------------------------------

/// The store, counting its verifications.
struct Counted {
    store: MemoryStore,
    calls: Calls,
}

#[async_trait]
impl Verifier for Counted {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.calls.bump();
        self.store.verify(key).await
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

/// More revocations than the cache tracks one by one in all (100,000).
const FLOOD: usize = 100_500;
/// Keys one account holds at a time: the stores' default key limit.
const BATCH: usize = 1_000;

struct Flood {
    cache: CachedVerifier,
    calls: Calls,
    /// Another account's key, cached before the flood.
    bystander: PresentedKey,
    /// Keys of the flooding account cached, then revoked, in the first and in
    /// the last batch.
    revoked: Vec<PresentedKey>,
    /// Keys of the flooding account cached before the flood and never revoked.
    kept: Vec<PresentedKey>,
}

/// One account creates and revokes `FLOOD` keys, up to `BATCH` at a time, as
/// a management key of that account may: all within the tombstone window.
async fn flood() -> Flood {
    let store = MemoryStore::new();
    let calls = Calls::default();
    let cache = CachedVerifier::new(
        Counted {
            store: store.clone(),
            calls: calls.clone(),
        },
        config().build(),
    );
    let create = |account: &'static str| {
        let store = store.clone();
        async move {
            let created = store.create(NewKey::new(account)).await.unwrap();
            (created.record.key_id, parse(&created.key))
        }
    };
    let (_, bystander) = create("sa-bystander").await;
    let mut kept = Vec::new();
    for _ in 0..10 {
        kept.push(create("sa-flood").await.1);
    }
    for key in kept.iter().chain([&bystander]) {
        cache.lookup(key).await.unwrap();
    }
    let mut revoked = Vec::new();
    let mut revocations = 0;
    while revocations < FLOOD {
        let (first, last) = (revocations == 0, FLOOD - revocations <= BATCH);
        let mut ids = Vec::with_capacity(BATCH);
        for _ in 0..(BATCH - kept.len()).min(FLOOD - revocations) {
            let (id, key) = create("sa-flood").await;
            if first || last {
                cache.lookup(&key).await.unwrap();
                revoked.push(key);
            }
            ids.push(id);
        }
        for id in ids {
            assert!(store.revoke(id, None).await.unwrap());
            revocations += 1;
        }
    }
    Flood {
        cache,
        calls,
        bystander,
        revoked,
        kept,
    }
}

#[tokio::test]
async fn revoking_over_a_hundred_thousand_keys_of_one_account_leaves_other_accounts_cached() {
    let flood = flood().await;
    let before = flood.calls.get();
    let (caller, source) = flood
        .cache
        .lookup_with_source(&flood.bystander)
        .await
        .unwrap();
    assert_eq!(caller.service_account_id(), "sa-bystander");
    assert_eq!(source, Source::Cache, "another account's key stays cached");
    assert_eq!(flood.calls.get(), before, "and is not re-verified");
}

#[tokio::test]
async fn every_revoked_key_of_a_flooding_account_is_refused() {
    let flood = flood().await;
    assert!(flood.revoked.len() > BATCH, "{}", flood.revoked.len());
    for key in &flood.revoked {
        assert!(matches!(
            flood.cache.lookup(key).await,
            Err(LookupError::Unknown)
        ));
    }
}

#[tokio::test]
async fn a_flooding_accounts_keys_cached_before_the_flood_are_re_verified_once_and_stay_valid() {
    let flood = flood().await;
    let before = flood.calls.get();
    for key in &flood.kept {
        let (caller, source) = flood.cache.lookup_with_source(key).await.unwrap();
        assert_eq!(caller.service_account_id(), "sa-flood");
        assert_eq!(source, Source::Verifier);
    }
    assert_eq!(
        flood.calls.get(),
        before + flood.kept.len(),
        "one call each"
    );
    for key in &flood.kept {
        assert_eq!(
            flood.cache.lookup_with_source(key).await.unwrap().1,
            Source::Cache
        );
    }
    assert_eq!(flood.calls.get(), before + flood.kept.len());
}
