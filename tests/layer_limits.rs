//! Rate limits and credits through the middleware (issue 14): exact on one
//! machine, checked after authentication and scope, answered with the
//! draft-ietf-httpapi-ratelimit-headers fields, gRPC statuses a client can
//! read, and never turned off by a store outage.
//!
//! The verifier here is a small registry of records and credits, so these
//! tests depend on no store; the conformance kit (`crates/tower-api-key-conformance`) checks the stores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_key::clock::ManualClock;
use tower_api_key::limits::{
    lease_grant, BucketUse, CreditLease, Credits, LimitSettings, RateLimit, RateLimitSync, Refill,
    RouteLimits,
};
use tower_api_key::{
    Authenticator, CreditLedger, GeneratedKey, KeyFormat, KeyId, KeyRecord, PresentedKey, Reason,
    Rejection, ScopeSet, Verifier, VerifierError,
};

/// Records by key id, credits by key id, and a switch that makes leases fail.
#[derive(Default)]
struct Registry {
    records: Mutex<HashMap<KeyId, KeyRecord>>,
    credits: Mutex<HashMap<KeyId, (u64, u64)>>,
    verifies: AtomicUsize,
    leases: AtomicUsize,
    down: AtomicBool,
}

#[async_trait]
impl Verifier for Registry {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.verifies.fetch_add(1, Ordering::SeqCst);
        Ok(self.records.lock().unwrap().get(&key.id()).cloned())
    }
}

#[async_trait]
impl CreditLedger for Registry {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        _now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        self.leases.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(VerifierError::backend("database is down"));
        }
        let mut credits = self.credits.lock().unwrap();
        let Some((remaining, generation)) = credits.get_mut(&id) else {
            return Ok(None);
        };
        let granted = lease_grant(*remaining, want);
        *remaining -= granted;
        Ok(Some(CreditLease::new(
            granted,
            *generation,
            *remaining,
            None,
        )))
    }

    async fn return_credits(&self, _: KeyId, _: u64, _: u64) -> Result<(), VerifierError> {
        Ok(())
    }
}

struct Setup {
    registry: Arc<Registry>,
    clock: Arc<ManualClock>,
    auth: Authenticator,
}

fn setup_with(settings: LimitSettings) -> Setup {
    let registry = Arc::new(Registry::default());
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let auth = Authenticator::builder(ArcVerifier(registry.clone()))
        .clock(clock.clone())
        .limit_settings(settings)
        .build();
    Setup {
        registry,
        clock,
        auth,
    }
}

fn setup() -> Setup {
    setup_with(LimitSettings::default())
}

/// `Arc<Registry>` as a verifier, so the test keeps a handle.
struct ArcVerifier(Arc<Registry>);

#[async_trait]
impl Verifier for ArcVerifier {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.0.verify(key).await
    }
}

#[async_trait]
impl CreditLedger for ArcVerifier {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        self.0.lease_credits(id, want, now).await
    }

    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        n: u64,
    ) -> Result<(), VerifierError> {
        self.0.return_credits(id, generation, n).await
    }
}

impl Setup {
    /// A key of `account` whose record `shape` fills in.
    fn key(&self, account: &str, shape: impl FnOnce(KeyRecord) -> KeyRecord) -> GeneratedKey {
        let key = KeyFormat::default().generate().unwrap();
        let record = shape(KeyRecord::new(key.id(), account));
        if let Some(credits) = record.credits {
            self.registry
                .credits
                .lock()
                .unwrap()
                .insert(key.id(), (credits.remaining(), 0));
        }
        self.registry
            .records
            .lock()
            .unwrap()
            .insert(key.id(), record);
        key
    }

    fn router(&self, layer: tower_api_key::ApiKeyLayer) -> Router {
        Router::new().route("/", get(|| async { "ok" }).route_layer(layer))
    }
}

fn per(n: u32, period: Duration) -> RateLimit {
    RateLimit::new(n, period).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
    reason: Option<Reason>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(router: &Router, key: &GeneratedKey) -> Reply {
    send_with(router, key, None).await
}

async fn send_with(router: &Router, key: &GeneratedKey, content_type: Option<&str>) -> Reply {
    let mut request =
        Request::get("/").header("authorization", format!("Api-Key {}", key.expose_secret()));
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let reason = response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason);
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
        reason,
    }
}

#[tokio::test]
async fn a_key_limited_to_5_per_second_gets_429_with_the_headers_on_the_sixth() {
    let s = setup();
    let key = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(5, Duration::from_secs(1))])
    });
    let app = s.router(s.auth.any_valid_key());
    for remaining in (0..5).rev() {
        let reply = send(&app, &key).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("ratelimit-policy"), Some(r#""key";q=5;w=1"#));
        let expected = format!(r#""key";r={remaining};t=1"#);
        assert_eq!(reply.header("ratelimit"), Some(expected.as_str()));
        assert_eq!(reply.header("retry-after"), None);
    }
    let sixth = send(&app, &key).await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sixth.reason, Some(Reason::RateLimited));
    assert_eq!(sixth.header("retry-after"), Some("1"));
    assert_eq!(sixth.header("ratelimit-policy"), Some(r#""key";q=5;w=1"#));
    assert_eq!(sixth.header("ratelimit"), Some(r#""key";r=0;t=1"#));
    assert_eq!(sixth.header("cache-control"), Some("no-store"));
    assert!(
        sixth.body.contains(r#""error":"rate_limited""#),
        "{}",
        sixth.body
    );
    assert!(!sixth.body.contains(key.expose_secret()));
    // One refills every 200 ms.
    s.clock.advance(Duration::from_millis(200));
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_for_one_key_admit_exactly_the_burst() {
    let s = setup();
    let key = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(50, Duration::from_secs(60))])
    });
    let app = s.router(s.auth.any_valid_key());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            let key = key.clone();
            tokio::spawn(async move { send(&app, &key).await.status })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (50, 950));
}

#[tokio::test]
async fn a_bucket_survives_cache_expiry_and_invalidation() {
    let registry = Arc::new(Registry::default());
    // Entries live 1 ms (moka's own clock): every few requests re-verify.
    let auth = Authenticator::builder(ArcVerifier(registry.clone()))
        .positive_ttl(Duration::from_millis(1))
        .build();
    let s = Setup {
        registry,
        clock: Arc::new(ManualClock::new(SystemTime::now())),
        auth,
    };
    let key = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(2, Duration::from_secs(3600))])
    });
    let app = s.router(s.auth.any_valid_key());
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    let verifies = s.registry.verifies.load(Ordering::SeqCst);
    // Until the entry expired and the key was verified again, every
    // request is refused: the bucket is not the cache's.
    let mut sent = 0;
    while s.registry.verifies.load(Ordering::SeqCst) == verifies {
        assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
        sent += 1;
        assert!(sent < 1_000_000, "the cache entry never expired");
    }
    assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);

    let verifies = s.registry.verifies.load(Ordering::SeqCst);
    s.auth.cache().invalidate_all();
    assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        s.registry.verifies.load(Ordering::SeqCst) > verifies,
        "re-verified"
    );
}

#[tokio::test]
async fn unknown_keys_and_refused_scopes_spend_nothing() {
    let s = setup();
    let key = s.key("sa-1", |r| {
        r.with_scopes(ScopeSet::new(["yc.ai.translate.execute"]).unwrap())
            .with_rate_limits(vec![per(1, Duration::from_secs(3600))])
            .with_credits(Some(Credits::new(1).unwrap()))
    });
    let other_scope = s.router(s.auth.require_any(["yc.ai.vision.execute"]));
    for _ in 0..10 {
        let reply = send(&other_scope, &key).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let unknown = KeyFormat::default().generate().unwrap();
    let app = s.router(s.auth.require_any(["yc.ai.translate.execute"]));
    for _ in 0..10 {
        assert_eq!(send(&app, &unknown).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(s.registry.leases.load(Ordering::SeqCst), 0);
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_route_sets_the_cost_and_a_default_for_keys_without_limits() {
    let s = setup();
    let plain = s.key("sa-1", |r| r);
    let own = s.key("sa-2", |r| {
        r.with_rate_limits(vec![per(100, Duration::from_secs(60))])
    });
    let app = s.router(
        s.auth.any_valid_key().route_limits(
            RouteLimits::new()
                .with_cost(4)
                .with_default_rate_limit(per(10, Duration::from_secs(60))),
        ),
    );
    // 10 per minute at 4 a request: two requests, then 429.
    let first = send(&app, &plain).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""route";q=10;w=60"#)
    );
    assert_eq!(first.header("ratelimit"), Some(r#""route";r=6;t=24"#));
    assert_eq!(send(&app, &plain).await.status, StatusCode::OK);
    let third = send(&app, &plain).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    // 12 s until 2 more refill (one every 6 s), enough for a cost of 4.
    assert_eq!(third.header("retry-after"), Some("12"));
    // A key with limits of its own spends those, at the route's cost.
    for _ in 0..25 {
        assert_eq!(send(&app, &own).await.status, StatusCode::OK);
    }
    assert_eq!(send(&app, &own).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_cost_above_the_burst_is_refused_without_a_retry_after() {
    let s = setup();
    let key = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(3, Duration::from_secs(1))])
    });
    let app = s.router(
        s.auth
            .any_valid_key()
            .route_limits(RouteLimits::new().with_cost(4)),
    );
    let reply = send(&app, &key).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), None);
}

#[tokio::test]
async fn account_limits_are_shared_by_every_key_of_the_account() {
    let s = setup();
    let account = vec![per(3, Duration::from_secs(3600))];
    let a = s.key("sa-1", |r| r.with_account_rate_limits(account.clone()));
    let b = s.key("sa-1", |r| {
        r.with_account_rate_limits(account.clone())
            .with_rate_limits(vec![per(100, Duration::from_secs(1))])
    });
    let other = s.key("sa-2", |r| r.with_account_rate_limits(account.clone()));
    let app = s.router(s.auth.any_valid_key());
    assert_eq!(send(&app, &a).await.status, StatusCode::OK);
    let reply = send(&app, &b).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""key";q=100;w=1, "account";q=3;w=3600"#)
    );
    assert_eq!(reply.header("ratelimit"), Some(r#""account";r=1;t=2400"#));
    assert_eq!(send(&app, &a).await.status, StatusCode::OK);
    let refused = send(&app, &b).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("ratelimit"), Some(r#""account";r=0;t=1200"#));
    // Another account has a budget of its own.
    assert_eq!(send(&app, &other).await.status, StatusCode::OK);
}

#[tokio::test]
async fn headers_on_admitted_responses_can_be_turned_off() {
    let s = setup_with(LimitSettings::builder().headers(false).build());
    let key = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(1, Duration::from_secs(1))])
    });
    let app = s.router(s.auth.any_valid_key());
    let ok = send(&app, &key).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("ratelimit"), None);
    assert_eq!(ok.header("ratelimit-policy"), None);
    // A refusal always says why.
    let refused = send(&app, &key).await;
    assert_eq!(refused.header("ratelimit"), Some(r#""key";r=0;t=1"#));
}

#[tokio::test]
async fn a_key_with_3_credits_is_refused_on_the_fourth_request() {
    let s = setup();
    let key = s.key("sa-1", |r| r.with_credits(Some(Credits::new(3).unwrap())));
    let app = s.router(s.auth.any_valid_key());
    for _ in 0..3 {
        let reply = send(&app, &key).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("ratelimit"),
            None,
            "credits are not a rate limit"
        );
    }
    let fourth = send(&app, &key).await;
    assert_eq!(fourth.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fourth.reason, Some(Reason::QuotaExhausted));
    assert!(
        fourth.body.contains(r#""error":"quota_exhausted""#),
        "{}",
        fourth.body
    );
    assert_eq!(fourth.header("retry-after"), None, "no refill is scheduled");
    // Known to be exhausted: further refusals ask the store once a second at most.
    let leases = s.registry.leases.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(s.registry.leases.load(Ordering::SeqCst), leases);
}

#[tokio::test]
async fn a_store_outage_refuses_credit_keys_with_429_never_503_and_limits_stay_on() {
    let s = setup();
    let credits = s.key("sa-1", |r| r.with_credits(Some(Credits::new(100).unwrap())));
    let limited = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(1, Duration::from_secs(60))])
    });
    let app = s.router(s.auth.any_valid_key());
    // Warm both keys into the cache, then take the store down.
    assert_eq!(send(&app, &credits).await.status, StatusCode::OK);
    assert_eq!(send(&app, &limited).await.status, StatusCode::OK);
    s.registry.down.store(true, Ordering::SeqCst);
    // The batch leased before the outage is spent; then 429, retry in 1 s.
    let mut admitted = 0;
    let refused = loop {
        let reply = send(&app, &credits).await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        admitted += 1;
        assert!(admitted < 100, "credits spent without a lease");
    };
    assert_eq!(admitted, lease_grant(100, 10) - 1);
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.reason, Some(Reason::QuotaExhausted));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        send(&app, &limited).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_refill_is_offered_as_the_retry_time() {
    struct Refilling;
    #[async_trait]
    impl Verifier for Refilling {
        async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
            let credits = Credits::new(0)
                .unwrap()
                .with_refill(Refill::daily(5).unwrap());
            Ok(Some(
                KeyRecord::new(key.id(), "sa-1").with_credits(Some(credits)),
            ))
        }
    }
    #[async_trait]
    impl CreditLedger for Refilling {
        async fn lease_credits(
            &self,
            _: KeyId,
            _: u64,
            now: SystemTime,
        ) -> Result<Option<CreditLease>, VerifierError> {
            let next = Refill::daily(5).unwrap().next_due(now);
            Ok(Some(CreditLease::new(0, 0, 0, Some(next))))
        }
        async fn return_credits(&self, _: KeyId, _: u64, _: u64) -> Result<(), VerifierError> {
            Ok(())
        }
    }
    let clock = Arc::new(ManualClock::new(
        // 2026-12-01T22:00:00Z: the refill is two hours away.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_162_400),
    ));
    let auth = Authenticator::builder(Refilling)
        .clock(clock.clone())
        .build();
    let app = Router::new().route(
        "/",
        get(|| async { "ok" }).route_layer(auth.any_valid_key()),
    );
    let key = KeyFormat::default().generate().unwrap();
    let reply = send(&app, &key).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("7200"));
}

#[tokio::test]
async fn a_grpc_rate_limit_is_resource_exhausted_with_a_retry_info() {
    use tonic_types::StatusExt;
    let s = setup();
    let key = s.key("sa-1", |r| {
        r.with_rate_limits(vec![per(1, Duration::from_secs(2))])
    });
    let app = s.router(s.auth.any_valid_key());
    assert_eq!(
        send_with(&app, &key, Some("application/grpc")).await.status,
        StatusCode::OK
    );
    let reply = send_with(&app, &key, Some("application/grpc")).await;
    assert_eq!(reply.status, StatusCode::OK, "trailers-only");
    assert!(reply.body.is_empty());
    let status = tonic::Status::from_header_map(&reply.headers).unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "the API key is over its rate limit; retry later"
    );
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
    // Byte for byte what tonic writes for the same status and details.
    let theirs: http::Response<()> = tonic::Status::with_details(
        tonic::Code::ResourceExhausted,
        status.message(),
        status.details().to_vec().into(),
    )
    .into_http();
    for name in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "content-type",
    ] {
        assert_eq!(
            reply.headers.get(name),
            theirs.headers().get(name),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_grpc_quota_refusal_without_a_refill_has_no_retry_info() {
    use tonic_types::StatusExt;
    let s = setup();
    let key = s.key("sa-1", |r| r.with_credits(Some(Credits::new(0).unwrap())));
    let app = s.router(s.auth.any_valid_key());
    let reply = send_with(&app, &key, Some("application/grpc+proto")).await;
    let status = tonic::Status::from_header_map(&reply.headers).unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "the API key has no credits left");
    assert!(status.get_details_retry_info().is_none());
}

/// Two "replicas" over one in-memory shared bucket store: what one admits
/// reaches the other within a sync interval.
#[derive(Default)]
struct SharedBuckets {
    tats: Mutex<HashMap<(String, String), u128>>,
    syncs: AtomicUsize,
}

#[async_trait]
impl RateLimitSync for SharedBuckets {
    async fn sync(
        &self,
        uses: &[BucketUse],
        now: SystemTime,
    ) -> Result<Vec<SystemTime>, Box<dyn std::error::Error + Send + Sync>> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut tats = self.tats.lock().unwrap();
        Ok(uses
            .iter()
            .map(|u| {
                let tat = tats
                    .entry((u.subject.clone(), u.limit.to_string()))
                    .or_default();
                *tat = (*tat).max(now) + u128::from(u.cost) * u128::from(u.emission_ns());
                SystemTime::UNIX_EPOCH + Duration::from_nanos(*tat as u64)
            })
            .collect())
    }
}

#[tokio::test(start_paused = true)]
async fn replicas_sharing_buckets_overshoot_by_at_most_what_each_admits_between_syncs() {
    let shared = Arc::new(SharedBuckets::default());
    let registry = Arc::new(Registry::default());
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let interval = Duration::from_millis(100);
    let replica = || {
        Authenticator::builder(ArcVerifier(registry.clone()))
            .clock(clock.clone())
            .limit_settings(
                LimitSettings::builder()
                    .shared(shared.clone(), interval)
                    .build(),
            )
            .build()
    };
    let (one, two) = (replica(), replica());
    let key = KeyFormat::default().generate().unwrap();
    // 10 per second, burst 10.
    let limit = per(10, Duration::from_secs(1));
    registry.records.lock().unwrap().insert(
        key.id(),
        KeyRecord::new(key.id(), "sa-1").with_rate_limits(vec![limit]),
    );
    let apps = [
        Router::new().route("/", get(|| async { "ok" }).route_layer(one.any_valid_key())),
        Router::new().route("/", get(|| async { "ok" }).route_layer(two.any_valid_key())),
    ];
    // Both replicas hammer the key for 10 s, 50 requests each every 100 ms.
    // From a full bucket at t = 0, a single limiter admits at most
    // 10 + 10 × t by time t; the fleet's excess over that is the overshoot.
    let mut admitted = 0u64;
    let mut overshoot = 0u64;
    let steps = 100u64;
    let interval_ms = interval.as_millis() as u64;
    for step in 0..steps {
        for app in &apps {
            for _ in 0..50 {
                admitted += u64::from(send(app, &key).await.status == StatusCode::OK);
            }
        }
        let allowed = 10 + 10 * step * interval_ms / 1000;
        overshoot = overshoot.max(admitted.saturating_sub(allowed));
        clock.advance(interval);
        tokio::time::sleep(interval).await;
    }
    let allowed = 10 + 10 * (steps - 1) * interval_ms / 1000;
    // Each replica may admit, before it hears of the other's use, one
    // interval's worth at the rate, plus the burst when both start full.
    let replicas = 2u64;
    let bound = (replicas - 1) * 10 + replicas * 10 * interval_ms / 1000;
    eprintln!("two replicas: {admitted} admitted in 10 s, {allowed} allowed; largest overshoot {overshoot}, bound {bound}");
    assert!(
        overshoot <= bound,
        "overshoot {overshoot} over the bound {bound}"
    );
    // Nor does sharing starve the key: the fleet admits what one limiter would.
    assert!(
        admitted + 2 >= allowed,
        "{admitted} admitted, {allowed} allowed"
    );
    assert!(shared.syncs.load(Ordering::SeqCst) as u64 >= steps / 2);
}

#[tokio::test]
async fn credits_refill_at_midnight_utc_through_the_store() {
    use tower_api_key::store::NewKey;
    use tower_api_key::{KeyStore, MemoryStore};
    // 2026-12-01T23:59:00Z: the daily refill is a minute away.
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_169_540),
    ));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let auth = Authenticator::builder(store.clone())
        .clock(clock.clone())
        .build();
    let app = Router::new().route(
        "/",
        get(|| async { "ok" }).route_layer(auth.any_valid_key()),
    );
    let created = store
        .create(
            NewKey::new("sa-1").with_credits(
                Credits::new(1)
                    .unwrap()
                    .with_refill(Refill::daily(2).unwrap()),
            ),
        )
        .await
        .unwrap();
    let key = created.key;
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    let refused = send(&app, &key).await;
    assert_eq!(refused.reason, Some(Reason::QuotaExhausted));
    assert_eq!(refused.header("retry-after"), Some("60"));
    // One second before midnight: still none.
    clock.advance(Duration::from_secs(59));
    assert_eq!(send(&app, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    // At midnight the store refills to 2: two requests, then the next day's.
    clock.advance(Duration::from_secs(1));
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    let refused = send(&app, &key).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), Some("86400"));
}

/// A verifier alone has no credit ledger: a key whose record carries
/// credits is refused as a configuration fault (500, `NoCreditLedger`),
/// never admitted uncounted and never a 429 that reads like a client's
/// fault; the same verifier with `.credits(ledger)` admits it and spends.
/// (Before the split, the verifier's default `lease_credits` refused such a
/// key with 429 `quota_exhausted`.)
#[tokio::test]
async fn a_verifier_without_a_ledger_refuses_a_key_with_credits_as_a_configuration_fault() {
    let registry = Arc::new(Registry::default());
    let records = registry.clone();
    let closure = move |key: PresentedKey| {
        let record = records.records.lock().unwrap().get(&key.id()).cloned();
        async move { Ok::<_, VerifierError>(record) }
    };
    let key = KeyFormat::default().generate().unwrap();
    let credited = KeyRecord::new(key.id(), "sa-1").with_credits(Some(Credits::new(2).unwrap()));
    registry.records.lock().unwrap().insert(key.id(), credited);
    registry.credits.lock().unwrap().insert(key.id(), (2, 0));

    let bare = Authenticator::verifier_builder(closure.clone()).build();
    let app = Router::new().route(
        "/",
        get(|| async { "ok" }).route_layer(bare.any_valid_key()),
    );
    let refused = send(&app, &key).await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refused.reason, Some(Reason::NoCreditLedger));
    assert!(refused.body.contains("internal"), "{}", refused.body);
    assert_eq!(registry.leases.load(Ordering::SeqCst), 0);

    let counted = Authenticator::verifier_builder(closure)
        .credits(ArcVerifier(registry.clone()))
        .build();
    let app = Router::new().route(
        "/",
        get(|| async { "ok" }).route_layer(counted.any_valid_key()),
    );
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    assert_eq!(send(&app, &key).await.status, StatusCode::OK);
    let spent = send(&app, &key).await;
    assert_eq!(spent.reason, Some(Reason::QuotaExhausted));
    assert!(registry.leases.load(Ordering::SeqCst) >= 1);
}
