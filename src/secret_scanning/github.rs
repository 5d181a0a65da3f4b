//! The default key source (feature `github-keys`): GitHub's key document
//! fetched over HTTPS.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::keys::{parse_github_keys, BoxError, FetchKeys, FetchedKeys, ReporterKey};

/// GitHub's endpoint for the secret scanning partner program's public keys.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

const DEFAULT_USER_AGENT: &str = concat!("tower-api-key/", env!("CARGO_PKG_VERSION"));

/// A [`FetchKeys`] that GETs GitHub's key document
/// ([`GITHUB_KEYS_URL`], or a GitHub Enterprise Server's) over HTTPS.
///
/// It sends a `User-Agent` (GitHub refuses requests without one) and
/// `Accept: application/json`, gives up after a timeout (default 10 s), reads
/// at most [`max_body`](Self::max_body) bytes (default 64 KiB) and follows no
/// redirect: anything but `200` is an error. TLS is rustls with the system's
/// root certificates. Wrap it in [`FetchedKeys`] (or use
/// [`FetchedKeys::github`]) to cache the keys:
///
/// ```
/// use tower_api_key::secret_scanning::{self, FetchedKeys, ReceiverConfig};
/// use tower_api_key::MemoryStore;
///
/// let config = ReceiverConfig::github(FetchedKeys::github());
/// let app: axum::Router = secret_scanning::router(MemoryStore::new(), config);
/// ```
#[derive(Clone)]
#[must_use]
pub struct GithubKeys {
    url: Uri,
    user_agent: HeaderValue,
    timeout: Duration,
    max_body: usize,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Why the system's root certificates could not be loaded, if they
    /// could not: an `https` fetch then fails with this, not with an
    /// unknown issuer.
    roots_error: Option<Arc<str>>,
}

impl GithubKeys {
    /// Keys from [`GITHUB_KEYS_URL`].
    pub fn new() -> Self {
        Self::build(Uri::from_static(GITHUB_KEYS_URL))
    }

    /// Keys from `url`: a GitHub Enterprise Server's
    /// `https://<host>/api/v3/meta/public_keys/secret_scanning`. Only
    /// `https` is accepted, except `http` to a loopback address (tests).
    pub fn with_url(url: &str) -> Result<Self, GithubKeysError> {
        let uri: Uri = url.parse().map_err(|_| GithubKeysError::InvalidUrl)?;
        let allowed = match (uri.scheme_str(), uri.host()) {
            (Some("https"), Some(_)) => true,
            (Some("http"), Some(host)) => is_loopback(host),
            _ => false,
        };
        if !allowed {
            return Err(GithubKeysError::InvalidUrl);
        }
        Ok(Self::build(uri))
    }

    fn build(url: Uri) -> Self {
        // ring, not aws-lc-rs: no C toolchain at build time. rustls 0.23.48
        // deprecates ring's provider for lacking post-quantum key exchange,
        // which a once-an-hour fetch of public keys does not need.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let (tls, roots_error) = match builder.clone().with_native_roots() {
            Ok(b) => (b.with_no_client_auth(), None),
            Err(e) => (
                builder
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                Some(Arc::from(e.to_string())),
            ),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // `with_url` admits `http` for loopback addresses only.
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            url,
            user_agent: HeaderValue::from_static(DEFAULT_USER_AGENT),
            timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
            client: Client::builder(TokioExecutor::new()).build(connector),
            roots_error,
        }
    }

    /// The `User-Agent` sent (default `tower-api-key/<version>`); GitHub
    /// asks for the application's name or the operator's account.
    pub fn user_agent(mut self, user_agent: HeaderValue) -> Self {
        self.user_agent = user_agent;
        self
    }

    /// How long a fetch may take, connecting and reading included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest document read; a longer one is an error.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Fetches and parses the key document once, uncached.
    pub async fn get(&self) -> Result<Vec<(String, ReporterKey)>, GithubKeysError> {
        if self.url.scheme_str() == Some("https") {
            if let Some(e) = &self.roots_error {
                return Err(GithubKeysError::NoRootCertificates(e.to_string()));
            }
        }
        let request = Request::get(self.url.clone())
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| GithubKeysError::Transport(e.into()))?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| GithubKeysError::Transport(e.into()))?;
            // No redirect is followed: a 3xx is an error like any non-200.
            if response.status() != StatusCode::OK {
                return Err(GithubKeysError::Status(response.status()));
            }
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let limit = self.max_body;
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(GithubKeysError::TooLarge { limit });
            }
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        GithubKeysError::TooLarge { limit }
                    } else {
                        GithubKeysError::Transport(e)
                    }
                })?
                .to_bytes();
            parse_github_keys(&body).map_err(GithubKeysError::Document)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| GithubKeysError::Timeout(self.timeout))?
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Default for GithubKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for GithubKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubKeys")
            .field("url", &self.url)
            .field("user_agent", &self.user_agent)
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl FetchKeys for GithubKeys {
    async fn fetch(&self) -> Result<Vec<(String, ReporterKey)>, BoxError> {
        Ok(self.get().await?)
    }
}

impl FetchedKeys<GithubKeys> {
    /// GitHub's keys from [`GITHUB_KEYS_URL`], cached with the default
    /// intervals: `FetchedKeys::new(GithubKeys::new())`.
    pub fn github() -> Self {
        Self::new(GithubKeys::new())
    }
}

/// Why [`GithubKeys`] could not give the keys.
#[derive(Debug)]
#[non_exhaustive]
pub enum GithubKeysError {
    /// The URL is not `https` (nor `http` to a loopback address).
    InvalidUrl,
    /// The system's root certificates could not be loaded.
    NoRootCertificates(String),
    /// The endpoint answered with this status instead of `200` (a redirect
    /// included: none is followed).
    Status(StatusCode),
    /// The document is longer than the limit, in bytes.
    TooLarge {
        /// The limit ([`GithubKeys::max_body`]).
        limit: usize,
    },
    /// No complete answer within this time.
    Timeout(Duration),
    /// The document is not GitHub's key JSON, or holds no P-256 key.
    Document(BoxError),
    /// Connecting, TLS or HTTP failed.
    Transport(BoxError),
}

impl fmt::Display for GithubKeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl => {
                f.write_str("the key URL must be https (or http to a loopback address)")
            }
            Self::NoRootCertificates(e) => write!(f, "no root certificates: {e}"),
            Self::Status(s) => write!(f, "the key endpoint answered {s}"),
            Self::TooLarge { limit } => {
                write!(f, "the key document is longer than {limit} bytes")
            }
            Self::Timeout(t) => write!(f, "the key endpoint did not answer within {t:?}"),
            Self::Document(e) => write!(f, "the key document does not parse: {e}"),
            Self::Transport(e) => write!(f, "the key endpoint could not be reached: {e}"),
        }
    }
}

impl std::error::Error for GithubKeysError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Document(e) | Self::Transport(e) => Some(&**e),
            _ => None,
        }
    }
}
