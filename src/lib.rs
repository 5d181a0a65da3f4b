//! API-key authentication for [tower] services (axum, tonic, hyper), the way a
//! large cloud does it for its service accounts.
//!
//! - A key is a secret shown once at creation; stores keep only its hash
//!   ([`hash`]). The format ([`key`]) carries an issuer prefix, a public id
//!   and a checksum, so garbage is rejected before any lookup.
//! - A key belongs to one service account and may carry scopes and an expiry
//!   ([`record`], [`scope`]).
//! - A pluggable async [`verifier`] sits behind a moka [`cache`]; stores
//!   ([`store`]) implement the management operations and push revocations to
//!   the cache ([`invalidation`]).
//! - With the `axum` feature, [`management`] is a ready HTTP API for key
//!   owners: create, list, update, reissue and delete keys.
//!
//! ```
//! use tower_api_key::store::{KeyStore, MemoryStore, NewKey};
//! use tower_api_key::Authenticator;
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
//! The README is the user guide; `docs/` in the repository has the longer
//! guides (gRPC, the management API, PostgreSQL) and the evidence
//! (security, performance).
//!
//! [tower]: https://docs.rs/tower
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Layers, bottom first: each module imports only modules listed before it,
// and no two modules import each other (tests/module_layers.rs checks
// it, with the same list):
//   clock, telemetry, key, scope, hash   foundations
//   record                               what a verifier returns
//   invalidation, verifier               checking keys, announcing changes
//   cache                                owns its entry and defines `Caller`
//   store                                verifiers with management operations
//   usage                                `last_used_at`, written to a store
//   auth                                 the middleware
//   management                           the HTTP API over the middleware
pub mod auth;
pub mod cache;
// Injected time is a test hook: public with `test-util` only.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod clock;
#[cfg(not(feature = "test-util"))]
#[allow(unreachable_pub)]
mod clock;
pub mod hash;
pub mod invalidation;
pub mod key;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod management;
pub mod record;
pub mod scope;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod verifier;

// The README's examples compile as doctests.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use auth::{AuthLayer, Authenticator};
pub use cache::{CacheConfig, CachedVerifier, Caller, LookupError};
pub use key::{GeneratedKey, KeyFormat, KeyId, PresentedKey};
pub use record::KeyRecord;
pub use scope::{Scope, ScopePolicy, ScopeSet};
pub use store::{KeyStore, MemoryStore};
pub use verifier::{Verifier, VerifierError};
