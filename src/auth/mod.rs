//! The tower middleware: authenticate each request by its API key.
//!
//! Build one [`Authenticator`] (verifier, cache and settings, shared by every
//! route), then give each route a layer with its scope policy:
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::{get, post}, Json, Router};
//! use tower_api_key::{Authenticator, MemoryStore, Caller};
//!
//! async fn translate(caller: Caller) -> String {
//!     format!("hello, {}", caller.service_account_id())
//! }
//! async fn whoami(caller: Caller) -> String {
//!     caller.key_id().to_string()
//! }
//!
//! let store = MemoryStore::new();
//! let auth = Authenticator::builder(store.clone())
//!     .positive_ttl(Duration::from_secs(60))
//!     .negative_ttl(Duration::from_secs(5))
//!     .build();
//!
//! let app: Router = Router::new()
//!     .route("/v1/translate", post(translate)
//!         .route_layer(auth.require_any(["yc.ai.translate.execute", "yc.ai.foundationModels.execute"])))
//!     .route("/v1/legacy", get(|| async { "legacy" }).route_layer(auth.unscoped_keys_only()))
//!     .route("/whoami", get(whoami).route_layer(auth.any_valid_key()));
//! ```
//!
//! A request passes through these steps, and stops at the first that fails:
//!
//! 1. No [`Caller`](crate::Caller) already in its extensions reaches the inner
//!    service (no spoofing): step 7 replaces it, and a preflight loses it.
//! 2. CORS preflight passes unauthenticated, if enabled.
//! 3. Exactly one credential: `Authorization: Api-Key <key>` (scheme in any
//!    case) or, if configured, the bare key in an extra header. Two are a 400.
//! 4. Offline checks (length, prefix, alphabet, checksum): garbage is a 401
//!    without a verifier call. Alphabet and checksum are checked when the
//!    cache has no answer for the key: it holds only keys that passed them.
//! 5. The cached verifier: unknown, revoked or expired keys are a 401 with
//!    the same body; a failing verifier is a 503, a panicking one a 500.
//!    With a [failed-attempt limit](FailedAttemptLimit), a client with no attempt left
//!    gets 429 at steps 3 to 5 instead, without a verifier call; only a key
//!    the cache holds as valid still gets through. (A request that finds
//!    every attempt left held by lookups in flight waits for their outcome.)
//! 6. A key with [allowed networks](crate::Networks) used from any other
//!    client address, or from one that cannot be told, is a 403
//!    `network_not_allowed` (the address: see
//!    [`trusted_proxies`](crate::AuthenticatorBuilder::trusted_proxies)).
//!    Then the route's [`ScopePolicy`](crate::ScopePolicy): a 403 if it refuses.
//! 7. The [`Caller`](crate::Caller) goes into the request's extensions (replacing any), the
//!    credential header is marked sensitive, and the inner service is called.
//!
//! gRPC requests get gRPC statuses instead; see [`Rejection`](crate::Rejection). A gRPC
//! server takes one layer with a per-method table,
//! [`MethodPolicies`](grpc::MethodPolicies); see [`grpc`].

mod attempts;
pub(crate) mod authenticator;
mod body;
pub(crate) mod builder;
mod client_ip;
mod credits;
mod extract;
mod future;
mod gate;
pub mod grpc;
mod grpc_details;
pub(crate) mod layer;
mod meter;
mod rate_headers;
pub(crate) mod rejection;
mod rules;
pub(crate) mod service;

#[cfg(feature = "axum")]
mod axum;

// Used by the management API; also resolves this module's doc links.
pub use attempts::{FailedAttemptLimit, FailedAttemptLimitBuilder};
#[cfg_attr(not(feature = "management"), allow(unused_imports))]
pub(crate) use authenticator::Authenticator;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use axum::MissingCaller;
pub use body::{RejectionBody, ResponseBody};
pub use client_ip::{ClientIp, ForwardedHeader};
pub use future::ResponseFuture;
pub use rejection::{JsonRejection, RejectionResponder};
pub use rules::RouteRules;

/// The `tracing` target of every authentication outcome, whichever module
/// decides or answers it, so one filter directive covers them all.
const LOG_TARGET: &str = "tower_api_key::auth";
