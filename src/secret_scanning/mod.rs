//! The secret-scanning receiver (feature `secret-scanning`): an axum router
//! that takes signed leak reports, such as those of GitHub's secret scanning
//! partner program, and revokes, quarantines or flags the keys they name.
//!
//! A reporter `POST`s a JSON array of
//! `{"token": "...", "type": "...", "url": "...", "source": "..."}`, signed
//! with ECDSA P-256 over SHA-256 of the raw body: the base64 of the DER
//! signature in one header, the signing key's identifier in another. The
//! receiver, in this order:
//!
//! 1. reads the two headers (401 without either, or with an identifier over
//!    [`MAX_KEY_IDENTIFIER_LEN`]), then the body, bounded
//!    ([`ReceiverConfig::max_body`], 413 past it);
//! 2. checks the signature with the key its [`ReporterKeys`] give for the
//!    identifier (401 for an unknown identifier or a bad signature, 503 if
//!    the keys cannot be had): nothing else happens for an unsigned report,
//!    and the key store is never touched;
//! 3. parses each token with the store's [`KeyFormat`]
//!    (checksum first: a string that is not one of this issuer's keys costs
//!    no lookup), and hands each key to
//!    [`KeyStore::record_compromise`]
//!    with the configured [`LeakAction`] (default
//!    [`Revoke`](LeakAction::Revoke));
//! 4. answers `200` with one feedback entry per token,
//!    `{"token_hash": "<sha256 hex>", "token_type": "...", "label":
//!    "true_positive" | "false_positive"}`: `true_positive` for a token that
//!    is or was a key of this store (live, quarantined, already revoked),
//!    never the token itself;
//! 5. then, after answering, calls the [`on_compromised`](ReceiverConfig::on_compromised)
//!    hook once per key it acted on, with a [`KeyEvent::Compromised`] (the
//!    hook type of the [lifecycle task](crate::lifecycle), so one function
//!    can handle both).
//!
//! Replays are harmless: the store binds a report to the exact secret
//! reported, so the same report twice (or two at once) acts and notifies
//! once. Secrets never reach a log: only key ids and the report's URL.
//!
//! ```
//! use tower_api_key::secret_scanning::{self, ReceiverConfig, ReporterKey, StaticKeys};
//! use tower_api_key::store::LeakAction;
//! use tower_api_key::MemoryStore;
//!
//! # fn demo(pem: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let keys = StaticKeys::new().with_key("github-key-1", ReporterKey::from_pem(pem)?);
//! let config = ReceiverConfig::github(keys)
//!     .action(LeakAction::Quarantine)
//!     .on_compromised(|event| eprintln!("key {} {}", event.key().record.key_id, event.kind()));
//! let app: axum::Router = secret_scanning::router(MemoryStore::new(), config);
//! # Ok(()) }
//! ```
//!
//! The public keys come through [`ReporterKeys`]: [`StaticKeys`] for tests
//! and air-gapped deployments, [`FetchedKeys`] (cached an hour, refetched on
//! an unknown identifier at most once a minute, the cached keys used when a
//! fetch fails) over a [`FetchKeys`] that the application writes with its
//! own HTTPS client and [`parse_github_keys`], or, with the feature
//! `github-keys`, `GithubKeys` (hyper and rustls; GitHub's endpoint or a
//! GitHub Enterprise Server's): `ReceiverConfig::github(FetchedKeys::github())`.

#[cfg(feature = "github-keys")]
mod github;
mod keys;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use sha2::{Digest, Sha256};

pub use keys::{
    parse_github_keys, BoxError, FetchKeys, FetchedKeys, InvalidReporterKey, ReporterKey,
    ReporterKeys, StaticKeys, MAX_KEY_IDENTIFIER_LEN,
};

#[cfg(feature = "github-keys")]
#[cfg_attr(docsrs, doc(cfg(feature = "github-keys")))]
pub use github::{GithubKeys, GithubKeysError, GITHUB_KEYS_URL};

pub use crate::event::CompromiseEvent;
use crate::event::{self, Hook, KeyEvent};
use crate::key::KeyFormat;
use crate::record::LeakAction;
use crate::store::{CompromiseReport, Compromised, KeyInfo, KeyStore};
use crate::telemetry;

/// The `tracing` target of the receiver's events.
pub const LOG_TARGET: &str = "tower_api_key::secret_scanning";

/// Where GitHub's receiver is usually mounted: [`ReceiverConfig::github`]'s
/// path.
pub const GITHUB_PATH: &str = "/secret-scanning/github";

/// The default body bound: 1 MiB, about 3,000 reported tokens.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Most tokens one report may name; a longer report is refused with 413.
pub const MAX_TOKENS: usize = 10_000;

type Policy = Arc<dyn Fn(&KeyInfo) -> LeakAction + Send + Sync>;

/// How a receiver checks and acts on reports of one reporter.
#[must_use]
pub struct ReceiverConfig {
    reporter: &'static str,
    path: String,
    key_id_header: &'static str,
    signature_header: &'static str,
    keys: Arc<dyn ReporterKeys>,
    token_types: Vec<String>,
    action: LeakAction,
    policy: Option<Policy>,
    max_body: usize,
    hook: Option<Hook>,
}

impl std::fmt::Debug for ReceiverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverConfig")
            .field("reporter", &self.reporter)
            .field("path", &self.path)
            .field("token_types", &self.token_types)
            .field("action", &self.action)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl ReceiverConfig {
    /// GitHub's secret scanning partner program: served at [`GITHUB_PATH`],
    /// headers `Github-Public-Key-Identifier` and
    /// `Github-Public-Key-Signature`, token type `tower_api_key`, keys from
    /// `keys`.
    pub fn github(keys: impl ReporterKeys) -> Self {
        Self::custom(
            "github",
            "github-public-key-identifier",
            "github-public-key-signature",
            keys,
        )
        .path(GITHUB_PATH)
    }

    /// Another reporter with the same contract under other headers (lower
    /// case): served at `/secret-scanning/<name>`, token type
    /// `tower_api_key`.
    pub fn custom(
        name: &'static str,
        key_id_header: &'static str,
        signature_header: &'static str,
        keys: impl ReporterKeys,
    ) -> Self {
        Self {
            reporter: name,
            path: format!("/secret-scanning/{name}"),
            key_id_header,
            signature_header,
            keys: Arc::new(keys),
            token_types: vec!["tower_api_key".to_owned()],
            action: LeakAction::default(),
            policy: None,
            max_body: DEFAULT_MAX_BODY,
            hook: None,
        }
    }

    /// The path the router serves (what the operator registers).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The token types accepted (the names registered with the reporter);
    /// a token of another type is a `false_positive`, never looked up.
    pub fn token_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.token_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// What the store does with a reported key (default
    /// [`LeakAction::Revoke`]).
    pub fn action(mut self, action: LeakAction) -> Self {
        self.action = action;
        self
    }

    /// What the store does with each reported key, chosen per key from
    /// what the store holds of it (its account, scopes, description): for
    /// example, quarantine the keys of accounts that must not go down and
    /// revoke the others. Costs one [`KeyStore::get`] per reported key of
    /// this issuer. Overrides [`action`](Self::action), which stays for a
    /// key that cannot be read.
    pub fn action_for(
        mut self,
        policy: impl Fn(&KeyInfo) -> LeakAction + Send + Sync + 'static,
    ) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// The largest body read, in bytes (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Called once per key acted on, with a [`KeyEvent::Compromised`],
    /// after the answer is sent (page or mail the key's owner here). The
    /// hook type is the lifecycle task's
    /// ([`on_event`](crate::lifecycle::LifecycleBuilder::on_event)), so one
    /// function can take every kind of [`KeyEvent`]. Runs on a spawned task;
    /// keep it short or spawn. A panic in it is logged and does not stop the
    /// events after it.
    pub fn on_compromised(mut self, hook: impl Fn(KeyEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }
}

struct Receiver {
    store: Arc<dyn KeyStore>,
    format: KeyFormat,
    config: ReceiverConfig,
}

/// The receiver: an axum router serving `POST` at the configured path
/// (merge it into the application's router, outside any API-key layer).
/// Keys are parsed with the store's [`KeyFormat`].
pub fn router(store: impl KeyStore, config: ReceiverConfig) -> Router {
    router_from_arc(Arc::new(store), config)
}

/// [`router`] over a store already shared.
pub fn router_from_arc(store: Arc<dyn KeyStore>, config: ReceiverConfig) -> Router {
    let format = store.key_format().unwrap_or_default();
    let path = config.path.clone();
    let receiver = Arc::new(Receiver {
        store,
        format,
        config,
    });
    Router::new()
        .route(&path, post(receive))
        .with_state(receiver)
}

#[derive(serde::Deserialize)]
struct Reported {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

#[derive(serde::Serialize)]
struct Feedback<'a> {
    token_hash: String,
    token_type: &'a str,
    label: &'static str,
}

fn status(code: StatusCode, error: &'static str) -> Response {
    let body = format!(r#"{{"error":"{error}"}}"#);
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

async fn receive(State(receiver): State<Arc<Receiver>>, request: Request) -> Response {
    let config = &receiver.config;
    let (parts, body) = request.into_parts();
    // 1. Headers, then a bounded body; 2. the signature. Nothing else is
    // read, and the store is not touched, before the signature holds.
    let (Some(identifier), Some(signature)) = (
        header(&parts.headers, config.key_id_header),
        header(&parts.headers, config.signature_header),
    ) else {
        return status(StatusCode::UNAUTHORIZED, "signature_required");
    };
    if identifier.is_empty() || identifier.len() > MAX_KEY_IDENTIFIER_LEN {
        return status(StatusCode::UNAUTHORIZED, "bad_signature");
    }
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return status(StatusCode::UNAUTHORIZED, "bad_signature");
    };
    let body = match http_body_util::Limited::new(body, config.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    };
    let key = match config.keys.key(identifier).await {
        Ok(Some(key)) => key,
        Ok(None) => return status(StatusCode::UNAUTHORIZED, "bad_signature"),
        Err(e) => {
            tracing::warn!(target: LOG_TARGET, reporter = config.reporter, error = %e, "reporter keys unavailable");
            return status(StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable");
        }
    };
    if !key.verifies(&body, &signature) {
        tracing::debug!(target: LOG_TARGET, reporter = config.reporter, "leak report with a bad signature");
        return status(StatusCode::UNAUTHORIZED, "bad_signature");
    }
    // 3. The signed report.
    let reported: Vec<Reported> = match serde_json::from_slice(&body) {
        Ok(reported) => reported,
        Err(_) => return status(StatusCode::BAD_REQUEST, "invalid_report"),
    };
    if reported.len() > MAX_TOKENS {
        return status(StatusCode::PAYLOAD_TOO_LARGE, "too_many_tokens");
    }
    let mut feedback = Vec::with_capacity(reported.len());
    let mut events = Vec::new();
    for item in &reported {
        let label = match receiver.act(item).await {
            Ok((label, event)) => {
                events.extend(event);
                label
            }
            Err(e) => {
                // Whatever was done is idempotent: the reporter's retry
                // finishes the report.
                tracing::warn!(target: LOG_TARGET, error = %e, "leak report not recorded: key store failed");
                return status(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
            }
        };
        telemetry::leak_report(label);
        feedback.push(Feedback {
            token_hash: hex(&Sha256::digest(item.token.as_bytes())),
            token_type: &item.token_type,
            label,
        });
    }
    let body = match serde_json::to_vec(&feedback) {
        Ok(body) => body,
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    // 5. Notify after answering.
    if !events.is_empty() {
        let hook = config.hook.clone();
        tokio::spawn(async move {
            for compromise in events {
                let key_id = compromise.key.record.key_id;
                if !event::emit(hook.as_ref(), KeyEvent::Compromised(compromise)) {
                    tracing::error!(target: LOG_TARGET, %key_id, "the on_compromised hook panicked");
                }
            }
        });
    }
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

impl Receiver {
    /// One reported token: its label, and the event if the store acted.
    async fn act(
        &self,
        item: &Reported,
    ) -> Result<(&'static str, Option<CompromiseEvent>), crate::store::StoreError> {
        const TRUE: &str = "true_positive";
        const FALSE: &str = "false_positive";
        let config = &self.config;
        if !config.token_types.contains(&item.token_type) {
            return Ok((FALSE, None));
        }
        // Checksum first: anything else is not this issuer's, at no cost.
        let Ok(key) = self.format.parse(&item.token) else {
            return Ok((FALSE, None));
        };
        let action = match &config.policy {
            None => config.action,
            Some(policy) => match self.store.get(key.id()).await? {
                Some(info) => policy(&info),
                None => config.action,
            },
        };
        let report = CompromiseReport::new(item.url.clone(), item.source.clone(), action);
        // Logged as recorded: cut, without control characters.
        let url = report.url.clone();
        let outcome = self.store.record_compromise(&key, report).await?;
        let key_id = key.id();
        let event = match &outcome {
            Compromised::Acted { key } => {
                let compromise = key.record.compromise.as_deref().cloned();
                tracing::warn!(
                    target: LOG_TARGET,
                    %key_id,
                    reporter = config.reporter,
                    url = %url,
                    %action,
                    "api key reported leaked"
                );
                compromise.map(|compromise| CompromiseEvent {
                    key: (**key).clone(),
                    compromise,
                    reporter: config.reporter,
                    token_type: item.token_type.clone(),
                })
            }
            Compromised::AlreadyReported | Compromised::AlreadyRevoked => {
                tracing::debug!(target: LOG_TARGET, %key_id, "leak report replayed");
                None
            }
            _ => None,
        };
        let label = if outcome.is_true_positive() {
            TRUE
        } else {
            FALSE
        };
        Ok((label, event))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use p256::ecdsa::signature::Signer as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::store::NewKey;
    use crate::MemoryStore;

    /// Every token answered counts once under its label.
    #[test]
    fn reports_are_counted_by_label() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let status = metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let signing = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
                let public =
                    p256::pkcs8::EncodePublicKey::to_public_key_der(signing.verifying_key())
                        .unwrap();
                let public = ReporterKey::from_der(public.as_bytes()).unwrap();
                let keys = StaticKeys::new().with_key("k", public);
                let store = MemoryStore::new();
                let created = store.create(NewKey::new("sa")).await.unwrap();
                let body = serde_json::json!([
                    {"token": created.key.expose_secret(), "type": "tower_api_key"},
                    {"token": "tak_nothing", "type": "tower_api_key"},
                    {"token": "tak_other", "type": "tower_api_key"},
                ])
                .to_string();
                let signature: p256::ecdsa::Signature = signing.sign(body.as_bytes());
                let signature =
                    base64::engine::general_purpose::STANDARD.encode(signature.to_der());
                let request = axum::http::Request::post(GITHUB_PATH)
                    .header("github-public-key-identifier", "k")
                    .header("github-public-key-signature", signature)
                    .body(Body::from(body))
                    .unwrap();
                router(store, ReceiverConfig::github(keys))
                    .oneshot(request)
                    .await
                    .unwrap()
                    .status()
            })
        });
        assert_eq!(status, StatusCode::OK);
        let mut counted: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == telemetry::names::LEAK_REPORTS)
            .map(|(key, _, _, value)| {
                let label = key.key().labels().next().unwrap().value().to_owned();
                let DebugValue::Counter(n) = value else {
                    panic!("a counter");
                };
                (label, n)
            })
            .collect();
        counted.sort();
        assert_eq!(
            counted,
            vec![("false_positive".into(), 2), ("true_positive".into(), 1)]
        );
    }
}
