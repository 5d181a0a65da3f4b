//! The reporters' public keys: one verified with, and the trait that
//! supplies them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

/// A boxed error of a key source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest key identifier looked up; a longer header is refused before any
/// lookup.
pub const MAX_KEY_IDENTIFIER_LEN: usize = 256;

/// A reporter's public key: ECDSA P-256, with SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct ReporterKey(VerifyingKey);

impl ReporterKey {
    /// The key in a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo), as
    /// GitHub publishes it.
    pub fn from_pem(pem: &str) -> Result<Self, InvalidReporterKey> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(Self)
            .map_err(|_| InvalidReporterKey(()))
    }

    /// The key in DER (SubjectPublicKeyInfo).
    pub fn from_der(der: &[u8]) -> Result<Self, InvalidReporterKey> {
        VerifyingKey::from_public_key_der(der)
            .map(Self)
            .map_err(|_| InvalidReporterKey(()))
    }

    /// Whether `signature` (DER) signs `body` under this key. Both forms of
    /// a signature are accepted, low-S and high-S (openssl makes either).
    pub fn verifies(&self, body: &[u8], signature_der: &[u8]) -> bool {
        let Ok(signature) = Signature::from_der(signature_der) else {
            return false;
        };
        // (r, s) verifies exactly when (r, n - s) does: check the low-S form.
        let signature = signature.normalize_s().unwrap_or(signature);
        self.0.verify(body, &signature).is_ok()
    }
}

impl fmt::Debug for ReporterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReporterKey(P-256)")
    }
}

/// A reporter key that is not a P-256 public key in PEM or DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidReporterKey(());

impl fmt::Display for InvalidReporterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an ECDSA P-256 public key (PEM `PUBLIC KEY` or DER)")
    }
}

impl std::error::Error for InvalidReporterKey {}

/// Where a receiver finds a reporter's public keys by their identifier
/// (GitHub's `Github-Public-Key-Identifier`).
///
/// Supplied by the application, so tests and air-gapped deployments give
/// keys themselves ([`StaticKeys`]), and a deployment that fetches them uses
/// [`FetchedKeys`] over its own HTTP client or, with the feature
/// `github-keys`, over `GithubKeys`.
#[async_trait]
pub trait ReporterKeys: Send + Sync + 'static {
    /// The key named `identifier`, if the reporter has one by that name.
    /// An error is the source failing (answered 503, so the reporter
    /// retries), not an unknown identifier (`Ok(None)`, answered 401).
    async fn key(&self, identifier: &str) -> Result<Option<ReporterKey>, BoxError>;
}

/// Keys given once: for tests, air-gapped deployments and demos.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct StaticKeys {
    keys: HashMap<String, ReporterKey>,
}

impl StaticKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` under `identifier`.
    pub fn with_key(mut self, identifier: impl Into<String>, key: ReporterKey) -> Self {
        self.keys.insert(identifier.into(), key);
        self
    }
}

#[async_trait]
impl ReporterKeys for StaticKeys {
    async fn key(&self, identifier: &str) -> Result<Option<ReporterKey>, BoxError> {
        Ok(self.keys.get(identifier).cloned())
    }
}

/// Fetches a reporter's key document, such as GitHub's
/// `https://api.github.com/meta/public_keys/secret_scanning`, with the
/// application's HTTP client (or `GithubKeys`, feature `github-keys`).
/// [`FetchedKeys`] caches what it returns.
#[async_trait]
pub trait FetchKeys: Send + Sync + 'static {
    /// The keys, by identifier.
    async fn fetch(&self) -> Result<Vec<(String, ReporterKey)>, BoxError>;
}

/// Parses GitHub's key document,
/// `{"public_keys":[{"key_identifier":"...","key":"<PEM>","is_current":true}]}`:
/// what a [`FetchKeys`] over GitHub's endpoint returns. Keys that do not
/// parse are skipped; a document without any is an error.
pub fn parse_github_keys(document: &[u8]) -> Result<Vec<(String, ReporterKey)>, BoxError> {
    #[derive(serde::Deserialize)]
    struct Document {
        public_keys: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        key_identifier: String,
        key: String,
    }
    let document: Document = serde_json::from_slice(document)?;
    let keys: Vec<_> = document
        .public_keys
        .into_iter()
        .filter_map(|e| Some((e.key_identifier, ReporterKey::from_pem(&e.key).ok()?)))
        .collect();
    if keys.is_empty() {
        return Err("the key document holds no P-256 public key".into());
    }
    Ok(keys)
}

/// Keys fetched through a [`FetchKeys`] and cached: for `ttl` (default an
/// hour) after a fetch; on an unknown identifier fetched again, but at most
/// once per `refetch_interval` (default a minute), so a flood of reports
/// naming made-up identifiers never exhausts the reporter's rate-limited
/// endpoint; when a fetch fails, the keys cached are used.
pub struct FetchedKeys<F> {
    fetch: F,
    ttl: Duration,
    refetch_interval: Duration,
    state: tokio::sync::Mutex<Cached>,
    /// When the last fetch started, checked before taking the async lock,
    /// so callers past the rate limit do not even queue.
    last_fetch: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Cached {
    keys: HashMap<String, ReporterKey>,
    fetched_at: Option<Instant>,
}

impl<F: FetchKeys> FetchedKeys<F> {
    /// Keys from `fetch`, with the default intervals.
    pub fn new(fetch: F) -> Self {
        Self {
            fetch,
            ttl: Duration::from_secs(3600),
            refetch_interval: Duration::from_secs(60),
            state: tokio::sync::Mutex::new(Cached::default()),
            last_fetch: Mutex::new(None),
        }
    }

    /// How long fetched keys are used before they are fetched again.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The least time between two fetches.
    #[must_use]
    pub fn refetch_interval(mut self, every: Duration) -> Self {
        self.refetch_interval = every;
        self
    }

    /// Whether a fetch may start now; if so, it is counted as started.
    fn may_fetch(&self, now: Instant) -> bool {
        let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.refetch_interval) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl<F> fmt::Debug for FetchedKeys<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedKeys")
            .field("ttl", &self.ttl)
            .field("refetch_interval", &self.refetch_interval)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<F: FetchKeys> ReporterKeys for FetchedKeys<F> {
    async fn key(&self, identifier: &str) -> Result<Option<ReporterKey>, BoxError> {
        let mut cached = self.state.lock().await;
        let now = Instant::now();
        let fresh = cached
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < self.ttl);
        if fresh {
            if let Some(key) = cached.keys.get(identifier) {
                return Ok(Some(key.clone()));
            }
        }
        if !self.may_fetch(now) {
            return Ok(cached.keys.get(identifier).cloned());
        }
        match self.fetch.fetch().await {
            Ok(keys) => {
                cached.keys = keys.into_iter().collect();
                cached.fetched_at = Some(now);
            }
            Err(e) if cached.fetched_at.is_none() => return Err(e),
            Err(e) => {
                tracing::warn!(
                    target: super::LOG_TARGET,
                    error = %e,
                    "reporter keys could not be fetched; using the keys cached"
                );
            }
        }
        Ok(cached.keys.get(identifier).cloned())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    struct Counting(Arc<AtomicUsize>, ReporterKey);

    #[async_trait]
    impl FetchKeys for Counting {
        async fn fetch(&self) -> Result<Vec<(String, ReporterKey)>, BoxError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(vec![("known".to_owned(), self.1.clone())])
        }
    }

    fn some_key() -> ReporterKey {
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        ReporterKey(*secret.verifying_key())
    }

    #[tokio::test]
    async fn unknown_identifiers_refetch_at_most_once_per_interval() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let keys = FetchedKeys::new(Counting(fetches.clone(), some_key()));
        assert!(keys.key("known").await.unwrap().is_some());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        for i in 0..100 {
            assert!(keys.key(&format!("made-up-{i}")).await.unwrap().is_none());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "a flood refetched");
        assert!(keys.key("known").await.unwrap().is_some());
    }

    /// Fetches once, then fails.
    struct Flaky(AtomicUsize, ReporterKey);

    #[async_trait]
    impl FetchKeys for Flaky {
        async fn fetch(&self) -> Result<Vec<(String, ReporterKey)>, BoxError> {
            match self.0.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(vec![("known".to_owned(), self.1.clone())]),
                _ => Err("the key endpoint is down".into()),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_refetch_serves_the_keys_cached_and_a_first_failure_is_an_error() {
        // Stale at once and refetched every time: each lookup fetches.
        let keys = FetchedKeys::new(Flaky(AtomicUsize::new(0), some_key()))
            .ttl(Duration::ZERO)
            .refetch_interval(Duration::ZERO);
        assert!(keys.key("known").await.unwrap().is_some());
        assert!(
            keys.key("known").await.unwrap().is_some(),
            "served from cache"
        );
        assert_eq!(keys.fetch.0.load(Ordering::SeqCst), 2);
        let never = FetchedKeys::new(Flaky(AtomicUsize::new(1), some_key()));
        assert!(never.key("known").await.is_err());
    }

    #[test]
    fn the_github_document_parses() {
        let secret = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
            secret.verifying_key(),
            p256::pkcs8::LineEnding::LF,
        )
        .unwrap();
        let doc = serde_json::json!({"public_keys": [
            {"key_identifier": "a", "key": pem, "is_current": true},
            {"key_identifier": "b", "key": "not a key", "is_current": false},
        ]});
        let keys = parse_github_keys(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0, "a");
        assert!(parse_github_keys(br#"{"public_keys":[]}"#).is_err());
    }
}
