//! [`AuthenticatorBuilder`]: every setting of an [`Authenticator`], applied
//! once by [`AuthenticatorBuilder::build`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, AUTHORIZATION};

use super::attempts::FailedAttemptLimit;
use super::authenticator::{AuthState, Authenticator};
use super::client_ip::{ClientIpResolver, ForwardedHeader};
use super::meter::Meter;
use super::rejection::{JsonRejection, RejectionResponder};
use crate::cache::{CacheConfig, CacheConfigBuilder, CachedVerifier};
#[cfg(feature = "test-util")]
use crate::clock::Clock;
use crate::ledger::CreditLedger;
use crate::limits::LimitSettings;
use crate::network::{IpNet, RangeSet};
use crate::usage::UsageRecorder;
use crate::verifier::Verifier;

/// Settings of an [`Authenticator`], made by [`Authenticator::builder`].
/// Nothing is built until [`AuthenticatorBuilder::build`], which creates the
/// one cache every clone of the authenticator, and every layer made from it,
/// shares. The order of the calls does not matter.
///
/// # Credits
///
/// A key whose record carries [`Credits`](crate::limits::Credits) spends
/// them through a [`CreditLedger`]. [`Authenticator::builder`] takes a
/// store, which is its own ledger; [`Authenticator::verifier_builder`]
/// takes a [`Verifier`] alone, with no ledger unless
/// [`credits`](Self::credits) gives one. Without a ledger, a key that
/// carries credits is refused with
/// [`Reason::NoCreditLedger`](crate::Reason::NoCreditLedger) (500, logged
/// as an error): a configuration fault, never admitted without a count.
///
/// A verifier that is not a ledger (a closure) does not compile where a
/// store is expected:
///
/// ```compile_fail,E0277
/// use tower_api_key::{Authenticator, KeyRecord, PresentedKey, VerifierError};
///
/// let auth = Authenticator::builder(|key: PresentedKey| async move {
///     Ok::<_, VerifierError>(Some(KeyRecord::new(key.id(), "sa-1")))
/// });
/// ```
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{MemoryStore, Authenticator};
///
/// let auth = Authenticator::builder(MemoryStore::new())
///     .positive_ttl(Duration::from_secs(60))
///     .negative_ttl(Duration::from_secs(5))
///     .realm("translate")
///     .build();
/// # drop(auth);
/// ```
#[must_use = "an AuthenticatorBuilder does nothing until `.build()`"]
pub struct AuthenticatorBuilder {
    verifier: Arc<dyn Verifier>,
    credits: Option<Arc<dyn CreditLedger>>,
    cache: CacheConfigBuilder,
    realm: Arc<str>,
    extra_header: Option<HeaderName>,
    cors_preflight: bool,
    responder: Arc<dyn RejectionResponder>,
    attempts: Option<FailedAttemptLimit>,
    trusted_proxies: Vec<IpNet>,
    forwarded_header: ForwardedHeader,
    usage: Option<UsageRecorder>,
    limits: LimitSettings,
}

impl fmt::Debug for AuthenticatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticatorBuilder")
            .field("cache", &self.cache)
            .field("realm", &self.realm)
            .field("extra_header", &self.extra_header)
            .field("cors_preflight", &self.cors_preflight)
            .field("failed_attempt_limit", &self.attempts)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("forwarded_header", &self.forwarded_header)
            .finish_non_exhaustive()
    }
}

impl AuthenticatorBuilder {
    pub(super) fn new(verifier: Arc<dyn Verifier>) -> Self {
        Self {
            verifier,
            credits: None,
            cache: CacheConfig::builder(),
            realm: Arc::from("api"),
            extra_header: None,
            cors_preflight: false,
            responder: Arc::new(JsonRejection),
            attempts: None,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            usage: None,
            limits: LimitSettings::default(),
        }
    }

    // The cache's settings: each one forwards to the one `CacheConfigBuilder`
    // the cache is built with, so every option has one setter here.

    /// How long a valid key is trusted without asking the verifier again
    /// (default 60 s); see [`CacheConfigBuilder::positive_ttl`].
    pub fn positive_ttl(mut self, ttl: Duration) -> Self {
        self.cache = self.cache.positive_ttl(ttl);
        self
    }

    /// How long an unknown key is remembered as unknown (default 5 s); see
    /// [`CacheConfigBuilder::negative_ttl`].
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.cache = self.cache.negative_ttl(ttl);
        self
    }

    /// How many valid keys are cached (default 100,000); see
    /// [`CacheConfigBuilder::max_keys`].
    pub fn max_keys(mut self, max: u64) -> Self {
        self.cache = self.cache.max_keys(max);
        self
    }

    /// How many unknown keys are remembered (default 10,000); see
    /// [`CacheConfigBuilder::max_unknown_keys`].
    pub fn max_unknown_keys(mut self, max: u64) -> Self {
        self.cache = self.cache.max_unknown_keys(max);
        self
    }

    /// Bound on one verifier call (default 5 s); see
    /// [`CacheConfigBuilder::verifier_timeout`].
    pub fn verifier_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.cache = self.cache.verifier_timeout(timeout);
        self
    }

    /// The clock expiry, usage and limits are read from (default: the
    /// system clock); see [`CacheConfigBuilder::clock`].
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.cache = self.cache.clock(clock);
        self
    }

    /// Notes each admitted key's use on `recorder` (see [`crate::usage`]).
    pub fn usage_recorder(mut self, recorder: UsageRecorder) -> Self {
        self.usage = Some(recorder);
        self
    }

    /// The realm in `WWW-Authenticate` (default `api`).
    ///
    /// # Panics
    ///
    /// If `realm` is empty or has characters other than visible ASCII
    /// without `"` and `\`: a configuration error, found at start-up.
    pub fn realm(mut self, realm: &str) -> Self {
        let valid = !realm.is_empty()
            && realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        assert!(
            valid,
            "api key realm must be visible ASCII without quotes or backslashes"
        );
        self.realm = Arc::from(realm);
        self
    }

    /// Also accept the bare key in this header (for example `x-api-key`), for
    /// clients that cannot set `Authorization`. Off by default. A request
    /// carrying both headers is refused.
    ///
    /// # Panics
    ///
    /// If `name` is `Authorization`, which is always read.
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        assert!(
            name != AUTHORIZATION,
            "the extra api key header cannot be Authorization"
        );
        self.extra_header = Some(name);
        self
    }

    /// Let CORS preflight requests (`OPTIONS` with
    /// `Access-Control-Request-Method`) through unauthenticated, so browsers
    /// can ask before sending the key. Off by default; a plain `OPTIONS` is
    /// still authenticated. The preflight reaches the route with no `Caller`:
    /// answer it with a CORS layer outside this one (for example
    /// tower-http's `CorsLayer`), not in a handler that extracts `Caller`.
    pub fn cors_preflight(mut self, allow: bool) -> Self {
        self.cors_preflight = allow;
        self
    }

    /// Refuses clients that keep presenting bad keys (off by default); see
    /// [`FailedAttemptLimit`].
    pub fn failed_attempt_limit(mut self, limit: FailedAttemptLimit) -> Self {
        self.attempts = Some(limit);
        self
    }

    /// The proxies in front of the service (default: none): a request whose
    /// peer is in one of these networks has its client address read from
    /// the [`forwarded_header`](Self::forwarded_header) they write, walked
    /// from the right past every trusted hop to the first untrusted
    /// address, never the leftmost entry, which the client chose. Every
    /// other request's client is its peer (axum's `ConnectInfo<SocketAddr>`,
    /// feature `connect-info`; tonic's `TcpConnectInfo`, feature
    /// `tonic-server`), or a [`ClientIp`](crate::auth::ClientIp)
    /// the application put in the request's extensions.
    ///
    /// That one address is what the [failed-attempt
    /// limit](Self::failed_attempt_limit), keys' [allowed
    /// networks](crate::KeyRecord::allowed_networks) and the logs use. It is
    /// resolved only when one of them needs it: a key without allowed
    /// networks, with no limiter, costs nothing.
    ///
    /// ```
    /// use tower_api_key::{Authenticator, IpNet, MemoryStore};
    /// use tower_api_key::auth::ForwardedHeader;
    ///
    /// let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    /// let auth = Authenticator::builder(MemoryStore::new())
    ///     .trusted_proxies(proxies)
    ///     .forwarded_header(ForwardedHeader::XForwardedFor)
    ///     .build();
    /// # drop(auth);
    /// ```
    pub fn trusted_proxies(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted_proxies = networks.into_iter().collect();
        self
    }

    /// The header the [trusted proxies](Self::trusted_proxies) write the
    /// client's address in (default `X-Forwarded-For`). Read only when the
    /// peer is a trusted proxy.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.forwarded_header = header;
        self
    }

    /// How keys' rate limits and credits are enforced (default: on one
    /// machine, with headers; see [`crate::limits`]). Keys without limits
    /// are not affected.
    pub fn limit_settings(mut self, settings: LimitSettings) -> Self {
        self.limits = settings;
        self
    }

    /// Where keys' credits are leased from and given back to (default: the
    /// store of [`Authenticator::builder`], none for
    /// [`Authenticator::verifier_builder`]; see [credits](Self#credits)).
    pub fn credits(self, ledger: impl CreditLedger) -> Self {
        self.credits_arc(Arc::new(ledger))
    }

    /// [`credits`](Self::credits) from a shared ledger.
    pub(super) fn credits_arc(mut self, ledger: Arc<dyn CreditLedger>) -> Self {
        self.credits = Some(ledger);
        self
    }

    /// Replaces the HTTP rejection bodies (default: [`JsonRejection`]).
    pub fn rejection_responder(mut self, responder: impl RejectionResponder) -> Self {
        self.responder = Arc::new(responder);
        self
    }

    /// The authenticator: builds its cache (and subscribes it to the
    /// verifier's invalidations) here, once.
    pub fn build(self) -> Authenticator {
        // The verifier issues the keys, so it says their format: one place
        // to set it (a store's builder), never two that could disagree.
        let format = self.verifier.key_format().unwrap_or_default();
        let cache = CachedVerifier::from_arc(self.verifier, self.cache.build());
        let meter = Meter::new(self.limits, &cache, self.credits);
        Authenticator::from_state(AuthState {
            meter,
            cache,
            format,
            realm: self.realm,
            extra_header: self.extra_header,
            cors_preflight: self.cors_preflight,
            responder: self.responder,
            attempts: self.attempts,
            client_ip: ClientIpResolver::new(
                RangeSet::new(&self.trusted_proxies),
                self.forwarded_header,
            ),
            usage: self.usage,
            #[cfg(feature = "management")]
            management_scopes: std::sync::RwLock::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::key::PresentedKey;
    use crate::record::KeyRecord;
    use crate::verifier::VerifierError;

    /// Every cache option has one setter on the builder, and each reaches
    /// the cache (`max_unknown_keys` could be set only through a whole
    /// `CacheConfig` before, which then merged with these setters).
    #[test]
    fn every_cache_setting_of_the_builder_reaches_the_cache() {
        let auth = Authenticator::builder(crate::store::MemoryStore::new())
            .positive_ttl(Duration::from_secs(30))
            .negative_ttl(Duration::from_secs(2))
            .max_keys(7)
            .max_unknown_keys(3)
            .verifier_timeout(None)
            .build();
        let config = format!("{:?}", auth.cache().config());
        for setting in [
            "positive_ttl: 30s",
            "negative_ttl: 2s",
            "max_keys: 7",
            "max_unknown_keys: 3",
            "verifier_timeout: None",
        ] {
            assert!(config.contains(setting), "{setting} in {config}");
        }
    }

    #[tokio::test]
    async fn every_clone_shares_the_one_cache() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let auth = Authenticator::verifier_builder(move |_key: PresentedKey| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<Option<KeyRecord>, VerifierError>(None) }
        })
        .negative_ttl(Duration::from_secs(60))
        .build();
        let clone = auth.clone();
        let generated = auth.key_format().generate().unwrap();
        let key = auth.key_format().parse(generated.expose_secret()).unwrap();
        assert!(auth.cache().lookup(&key).await.is_err());
        assert!(clone.cache().lookup(&key).await.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the clone hit the same cache"
        );
    }
}
