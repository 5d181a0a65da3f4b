//! Coalescing and cold-start behaviour at scale (issue #7, target 4).
//!
//! - 10,000 lookups of one uncached key, all waiting at once, make exactly
//!   one verifier call (through the cache, and through the layer).
//! - 100,000 distinct valid keys, looked up concurrently from cold, make
//!   exactly 100,000 verifier calls, and a second pass makes none.
//!
//! No sleeps: the verifier holds its answer until every request has been
//! polled and is known to be waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use http::{header::AUTHORIZATION, Request, Response, StatusCode};
use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::cache::{CacheConfig, CachedVerifier, Source};
use tower_api_key::store::NewKey;
use tower_api_key::Authenticator;
use tower_api_key::Invalidations;
use tower_api_key::KeyRecord;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::PresentedKey;
use tower_api_key::{Verifier, VerifierError};

/// A store that counts verifier calls and, when gated, answers only after
/// `release` is notified.
#[derive(Clone)]
struct Counting {
    store: MemoryStore,
    calls: Arc<AtomicUsize>,
    gate: Option<Arc<Notify>>,
}

impl Counting {
    fn new(store: MemoryStore, gate: Option<Arc<Notify>>) -> Self {
        Self {
            store,
            calls: Arc::new(AtomicUsize::new(0)),
            gate,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Verifier for Counting {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        self.store.verify(key).await
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
}

/// Counts the futures that returned `Pending` on their first poll, and wakes
/// the gate when all `expected` have.
struct Waiting {
    count: AtomicUsize,
    expected: usize,
    gate: Arc<Notify>,
}

impl Waiting {
    fn new(expected: usize, gate: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            expected,
            gate,
        })
    }

    fn pending(&self) {
        if self.count.fetch_add(1, Ordering::SeqCst) + 1 == self.expected {
            // notify_one stores a permit if the verifier is not waiting yet.
            self.gate.notify_one();
        }
    }
}

/// Wraps a future and reports to `waiting` when its first poll is `Pending`.
struct ReportPending<F> {
    future: Pin<Box<F>>,
    waiting: Arc<Waiting>,
    polled: bool,
}

impl<F: Future> Future for ReportPending<F> {
    type Output = (F::Output, bool);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let first = !self.polled;
        self.polled = true;
        match self.future.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready((out, first)),
            Poll::Pending => {
                if first {
                    self.waiting.pending();
                }
                Poll::Pending
            }
        }
    }
}

fn report_pending<F: Future>(future: F, waiting: &Arc<Waiting>) -> ReportPending<F> {
    ReportPending {
        future: Box::pin(future),
        waiting: waiting.clone(),
        polled: false,
    }
}

const CONCURRENT: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_lookups_of_one_uncached_key_make_one_call() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let key = store.format().parse(created.key.expose_secret()).unwrap();
    let gate = Arc::new(Notify::new());
    let verifier = Counting::new(store, Some(gate.clone()));
    let cache = CachedVerifier::new(verifier.clone(), CacheConfig::default());
    let waiting = Waiting::new(CONCURRENT, gate);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let cache = cache.clone();
        let key = key.clone();
        let lookup = async move { cache.lookup_with_source(&key).await };
        tasks.spawn(report_pending(lookup, &waiting));
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (result, first_poll) = joined.unwrap();
        let (caller, source) = result.unwrap();
        assert!(!first_poll, "every lookup waited for the verifier");
        assert_eq!(source, Source::Verifier);
        assert_eq!(caller.key_id(), created.record.key_id);
        answered += 1;
    }
    assert_eq!(answered, CONCURRENT);
    assert_eq!(waiting.count.load(Ordering::SeqCst), CONCURRENT);
    assert_eq!(verifier.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_for_one_uncached_key_make_one_call() {
    let store = MemoryStore::new();
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let header = format!("Api-Key {}", created.key.expose_secret());
    let gate = Arc::new(Notify::new());
    let verifier = Counting::new(store, Some(gate.clone()));
    let auth = Authenticator::verifier_builder(verifier.clone()).build();
    let service = ServiceBuilder::new()
        .layer(auth.any_valid_key())
        .service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
        });
    let waiting = Waiting::new(CONCURRENT, gate);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let request = Request::get("/")
            .header(AUTHORIZATION, &header)
            .body(())
            .unwrap();
        tasks.spawn(report_pending(service.clone().oneshot(request), &waiting));
    }
    while let Some(joined) = tasks.join_next().await {
        let (response, first_poll) = joined.unwrap();
        assert!(!first_poll, "every request waited for the verifier");
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(waiting.count.load(Ordering::SeqCst), CONCURRENT);
    assert_eq!(verifier.calls(), 1);
}

const DISTINCT: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_of_one_hundred_thousand_keys_makes_one_call_each() {
    let store = MemoryStore::new();
    let mut keys = Vec::with_capacity(DISTINCT);
    for i in 0..DISTINCT {
        let created = store
            .create(NewKey::new(format!("sa-{}", i % 1000)))
            .await
            .unwrap();
        keys.push(store.format().parse(created.key.expose_secret()).unwrap());
    }
    let verifier = Counting::new(store, None);
    // The default capacity, 100,000 keys: exactly the working set.
    let cache = CachedVerifier::new(verifier.clone(), CacheConfig::default());
    let keys = Arc::new(keys);

    // Two workers looking up interleaved halves, each with many lookups in flight.
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..2 {
        let cache = cache.clone();
        let keys = keys.clone();
        tasks.spawn(async move {
            use futures_util::stream::{self, StreamExt};
            stream::iter((part..DISTINCT).step_by(2))
                .map(|i| {
                    let cache = cache.clone();
                    let keys = keys.clone();
                    async move { cache.lookup_with_source(&keys[i]).await }
                })
                .buffer_unordered(1_000)
                .for_each(|result| async move {
                    assert_eq!(result.unwrap().1, Source::Verifier);
                })
                .await;
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_eq!(verifier.calls(), DISTINCT);

    // Warm now: a second pass is served from the cache.
    cache.run_pending_tasks();
    let mut from_cache = 0;
    for key in keys.iter() {
        if let Some(answer) = cache.lookup_cached(key) {
            answer.unwrap();
            from_cache += 1;
        }
    }
    assert_eq!(from_cache, DISTINCT);
    assert_eq!(verifier.calls(), DISTINCT);
}
