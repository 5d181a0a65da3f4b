//! API-key authentication for [tower] services (axum, tonic, hyper), the way a
//! large cloud does it for its service accounts.
//!
//! Clients send `Authorization: Api-Key <key>`; a key reads
//! `tak_<public id>_<secret><checksum>` and is shown once, at creation. The
//! layer checks it through a cached verifier, enforces the route's scopes and
//! the key's rate limits and credits, and hands the handler the [`Caller`].
//!
//! # Use it
//!
//! A whole axum program, with the dependencies
//! `tower-api-key = { version = "0.1", features = ["connect-info"] }`,
//! `axum = "0.8"` and `tokio = { version = "1", features = ["full"] }` (the
//! README's):
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//!
//! use axum::{routing::{get, post}, Router};
//! use tower_api_key::auth::FailedAttemptLimit;
//! use tower_api_key::store::NewKey;
//! use tower_api_key::{Authenticator, Caller, KeyStore, MemoryStore, ScopeSet};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let store = MemoryStore::new(); // or PgKeyStore, or your own verifier
//!     let auth = Authenticator::builder(store.clone()) // one verifier and cache, shared by all routes
//!         .positive_ttl(Duration::from_secs(60))
//!         .failed_attempt_limit(FailedAttemptLimit::new(30, Duration::from_secs(60)))
//!         .build(); // the cache is built here, once
//!
//!     let app = Router::new()
//!         .route("/v1/translate", post(translate)
//!             .route_layer(auth.require_any(["yc.ai.translate.execute", "yc.ai.foundationModels.execute"])))
//!         .route("/v1/legacy", get(legacy).route_layer(auth.unscoped_keys_only()))
//!         .route("/whoami", get(whoami).route_layer(auth.any_valid_key()));
//!
//!     // A key to try it with. The store keeps only its hash: print it now or never.
//!     let scopes = ScopeSet::new(["yc.ai.translate.execute"])?;
//!     let created = store.create(NewKey::new("sa-translator").with_scopes(scopes)).await?;
//!     println!("export API_KEY={}", created.key.expose_secret());
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     // With connect info the failed-attempt limiter sees each client's address.
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//!     Ok(())
//! }
//!
//! async fn translate(caller: Caller) -> String { format!("translated for {}\n", caller.service_account_id()) }
//! async fn legacy() -> &'static str { "legacy\n" }
//! async fn whoami(caller: Caller) -> String { format!("{}\n", caller.key_id()) }
//! ```
//!
//! ```sh
//! curl -X POST -H "Authorization: Api-Key $API_KEY" 127.0.0.1:3000/v1/translate   # translated for sa-translator
//! ```
//!
//! - `route_layer`, not `layer`, keeps unknown paths 404 instead of 401.
//!   Handlers take the [`Caller`] extractor or
//!   `request.extensions().get::<Caller>()`.
//! - The failed-attempt limiter reads the client address from
//!   `into_make_service_with_connect_info::<SocketAddr>()` with the feature
//!   `connect-info`; without either it limits nothing (a warning says so). Behind a proxy, set
//!   [`AuthenticatorBuilder::trusted_proxies`]: keys' allowed networks use the same address.
//!
//! # What it is made of
//!
//! - Stores keep only a key's hash ([`hash`]). Its [`KeyFormat`] carries an issuer prefix, a public id
//!   and a checksum, so garbage is rejected before any lookup.
//! - A key belongs to one service account and may carry scopes and an expiry
//!   ([`KeyRecord`], [`ScopeSet`]); each route has a [`ScopePolicy`].
//! - A pluggable async [`Verifier`] sits behind a moka [`cache`]; stores
//!   ([`KeyStore`], [`MemoryStore`], [`store`]) implement the management
//!   operations and push revocations to the cache ([`Invalidations`]).
//! - A key (and its service account) may carry rate limits, and a key
//!   credits; the layer enforces them after authentication and scope
//!   ([`limits`]).
//! - With the `management` feature, `management` is a ready HTTP API for key
//!   owners: create, list, update, reissue and delete keys.
//!
//! Without a server, the parts meet like this:
//!
//! ```
//! use tower_api_key::store::NewKey;
//! use tower_api_key::{Authenticator, KeyStore, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let auth = Authenticator::new(store.clone());
//! let created = store.create(NewKey::new("sa-1")).await?;
//! let key = auth.key_format().parse(created.key.expose_secret())?;
//! assert_eq!(auth.cache().lookup(&key).await?.service_account_id(), "sa-1");
//! # Ok(()) }
//! ```
//!
//! # The shape of the API
//!
//! Every public item has one path.
//!
//! - **The root** holds what an application names: the [`Authenticator`],
//!   its [`AuthenticatorBuilder`], the [`ApiKeyLayer`] it hands out per route
//!   and the [`ApiKeyService`] that layer wraps (the `Authenticator` decides,
//!   the `ApiKey*` middleware applies it to one route); the identity
//!   extractor [`Caller`]; the scope rule of a route,
//!   [`ScopePolicy`], over [`Scope`] and [`ScopeSet`]; the [`Verifier`] trait
//!   and [`VerifierError`]; the [`CreditLedger`] trait that counts credits;
//!   the key types a verifier sees ([`KeyFormat`], [`KeyId`],
//!   [`PresentedKey`], [`GeneratedKey`]) with their
//!   errors and length limits; the [`KeyRecord`] a verifier returns; the
//!   [`KeyStore`] trait and the embedded [`MemoryStore`]; what a custom
//!   verifier announces changes on ([`Invalidations`]); and a refusal,
//!   [`Rejection`], with its [`Reason`].
//! - **Modules** hold what is needed less often, by path: [`auth`]
//!   (failed-attempt limiting, custom rejection bodies, the response types of
//!   the service, and [`auth::grpc`] with the per-method
//!   [`MethodPolicies`](auth::grpc::MethodPolicies)); [`cache`] (its
//!   configuration and the [`CachedVerifier`](cache::CachedVerifier) an
//!   authenticator shares); [`store`] (what the store operations take and
//!   return, and [`store::kit`], what a store of its own needs; the
//!   PostgreSQL and SQLite stores are the crates `tower-api-key-postgres`
//!   and `tower-api-key-sqlite`); [`limits`] (rate limits, credits, route costs and the
//!   shared mode); [`hash`] (peppers);
//!   [`usage`] (`last_used_at`); [`lifecycle`] (the task that warns before
//!   keys expire and retires unused ones) and [`event`] (the [`KeyEvent`](event::KeyEvent)
//!   its hook and the secret-scanning receiver's take); [`telemetry`] (metric names); [`time`]
//!   (RFC 3339, as the management API and the CLI read and write it);
//!   `management` (the key-management HTTP API, feature `management`);
//!   `secret_scanning` (a receiver of signed leak reports that revokes or
//!   quarantines the keys they name, feature `secret-scanning`).
//! - **"Policy"** always means a [`ScopePolicy`]: who a route lets in.
//!   [`MethodPolicies`](auth::grpc::MethodPolicies) is a table of them;
//!   a route's [`auth::RouteRules`] pick one per request (and may set the
//!   request's limits).
//! - **Builders** (`Authenticator::builder()`, every `*Builder`, ended by
//!   `build()`) name each option bare, as moka and tower-http do
//!   (`.positive_ttl(..)`, `.realm(..)`), and set it in one place;
//!   `with_*` changes a field of a value ([`KeyRecord::with_scopes`],
//!   `NewKey::with_credits`, [`limits::RateLimit::with_burst`],
//!   [`limits::RouteLimits::with_cost`]).
//! - **Test hooks** (a manual clock, cache counters, lookups that say where
//!   the answer came from) exist only with the `test-util` feature, as in
//!   tokio; an application never needs it.
//!
//! `tests/public_api.txt` in the repository lists every public item;
//! `tests/public_api.rs` fails when the list changes, so an addition shows in
//! review (`UPDATE_PUBLIC_API=1 cargo test --all-features --test public_api`
//! rewrites it).
//!
//! # Guides
//!
//! The README is the user guide. The longer guides are in `docs/` of the
//! repository:
//!
//! - `docs/grpc.md`: a tonic server behind the layer, a scope policy and a
//!   cost per method, axum and tonic on one port;
//! - `docs/management.md`: the key-management HTTP API, its grants, bounds
//!   and a whole session;
//! - `docs/limits.md`: rate limits, credits and route costs, and how
//!   replicas share them;
//! - `docs/postgres.md` and `docs/sqlite.md`: the database stores;
//! - `docs/cli.md`: the `tower-api-key` command (crate `tower-api-key-cli`);
//! - `docs/lifecycle.md`: expiry warnings and the retirement of unused
//!   keys, and a hook for every key event;
//! - `docs/security.md` and `docs/performance.md`: each guarantee with its
//!   tests, and the measurements.
//!
//! [tower]: https://docs.rs/tower
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Modules: `auth`, `cache`, `event`, `hash`, `lifecycle`, `management`,
// `store`, `telemetry`, `time` and `usage` are public and hold only what an application uses by path; the
// others are private and the root re-exports their public items (the
// `clock` is public with `test-util` only).
//
// Layers, bottom first: each module imports only modules listed before it,
// and no two modules import each other (tests/module_layers.rs checks
// it, with the same list):
//   clock, time, telemetry, key,         foundations
//   scope, hash
//   network, metadata                    allowlists and key metadata, as values
//   limits                               rate limits and credits, as values
//   record                               what a verifier returns
//   invalidation, verifier, ledger       checking keys, announcing changes, credits
//   cache                                owns its entry and defines `Caller`
//   store                                verifiers with management operations
//   event                                what happened to a key, for hooks
//   lifecycle                            expiry warnings and retirement, in a store
//   usage                                `last_used_at`, written to a store
//   auth                                 the middleware
//   management                           the HTTP API over the middleware
//   secret_scanning                      leak reports acted on in a store
pub mod auth;
pub mod cache;
// Injected time is a test hook: public with `test-util` only.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod clock;
#[cfg(not(feature = "test-util"))]
#[allow(unreachable_pub)]
mod clock;
pub mod event;
pub mod hash;
mod invalidation;
mod key;
mod ledger;
pub mod lifecycle;
pub mod limits;
#[cfg(feature = "management")]
#[cfg_attr(docsrs, doc(cfg(feature = "management")))]
pub mod management;
mod metadata;
mod network;
mod record;
mod scope;
#[cfg(feature = "secret-scanning")]
#[cfg_attr(docsrs, doc(cfg(feature = "secret-scanning")))]
pub mod secret_scanning;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod usage;
mod verifier;

// The README's examples compile as doctests.
#[cfg(all(doctest, feature = "management"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use auth::authenticator::Authenticator;
pub use auth::builder::AuthenticatorBuilder;
pub use auth::layer::ApiKeyLayer;
pub use auth::rejection::{Reason, Rejection};
pub use auth::service::ApiKeyService;
pub use cache::caller::Caller;
pub use invalidation::{Invalidation, InvalidationListener, Invalidations};
// The cache key means nothing outside this process: a test hook only.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use key::KeyDigest;
pub use key::{
    GeneratedKey, InvalidKeyId, InvalidPrefix, KeyFormat, KeyGenError, KeyId, KeyParseError,
    PresentedKey, CHECKSUM_LEN, ID_LEN, MAX_KEY_LEN, MAX_PREFIX_LEN, SECRET_LEN,
};
pub use ledger::CreditLedger;
pub use metadata::{Metadata, MetadataError, MAX_METADATA_LEN};
pub use network::{IpNet, NetworkError, Networks, MAX_NETWORKS_PER_KEY};
pub use record::KeyRecord;
pub use scope::{
    Scope, ScopeDenied, ScopeError, ScopePolicy, ScopeSet, MAX_SCOPES_PER_KEY, MAX_SCOPE_LEN,
};
pub use store::key_store::KeyStore;
pub use store::memory::MemoryStore;
pub use verifier::{Verifier, VerifierError};
