//! The key-management HTTP API (feature `management`): a ready [`axum::Router`]
//! over any [`KeyStore`], for key owners what a cloud console gives them.
//!
//! Mount it under a prefix of your choice. It is protected by the crate's own
//! layer: every route but the OpenAPI document's requires a key holding the
//! management scope, [`DEFAULT_SCOPE`] (`apikeys.manage`) unless
//! [`ManagementApiBuilder::scopes`] names others.
//!
//! ```
//! use axum::Router;
//! use tower_api_key::management::{self, AccountAccess, ManagementApiBuilder};
//! use tower_api_key::ScopeSet;
//! use tower_api_key::MemoryStore;
//! use tower_api_key::KeyStore;
//! use tower_api_key::store::NewKey;
//! use tower_api_key::Authenticator;
//! # use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let auth = Authenticator::new(store.clone());
//!
//! // Each service account manages its own keys (the default)...
//! let app: Router = Router::new().nest("/admin", management::router(store.clone(), &auth));
//! // ...or an operator console manages every account's keys:
//! let console: Router = Router::new().nest(
//!     "/admin",
//!     ManagementApiBuilder::new(store.clone(), &auth)
//!         .account_access(AccountAccess::any_account())
//!         // What its managers may hand out besides the scopes they hold.
//!         .grantable_scopes(["yc.ai.translate.execute"])
//!         .build(),
//! );
//!
//! // A key that may manage keys: mint the first one out of band.
//! let admin = store
//!     .create(NewKey::new("sa-ops").with_scopes(ScopeSet::new([management::DEFAULT_SCOPE])?))
//!     .await?;
//! let request = http::Request::post("/admin/keys")
//!     .header("authorization", format!("Api-Key {}", admin.key.expose_secret()))
//!     .header("content-type", "application/json")
//!     .body(axum::body::Body::from(r#"{"service_account_id":"sa-translator","scopes":["yc.ai.translate.execute"]}"#))?;
//! let response = console.oneshot(request).await?;
//! assert_eq!(response.status(), http::StatusCode::CREATED);
//! # drop(app);
//! # Ok(()) }
//! ```
//!
//! Each service account manages its own keys by default ([`AccountAccess`]);
//! a caller gives a key only scopes it holds itself, never a management
//! scope, and a caller with rate limits or credits cannot lift them
//! ([`ManagementApiBuilder`] widens each rule). A key the operator locked
//! is read-only for managers (403 `key_locked`) but may still be deleted and
//! reissued ([`ManagementApiBuilder::may_lock_keys`]). The secret is in the
//! responses of create and reissue only; every key response has an `ETag`,
//! and a write under a stale `If-Match` answers 412. Errors are JSON
//! ([`ErrorBody`]) and a refused request changes nothing.
//!
//! The router serves its OpenAPI 3.1 document at `{prefix}/openapi.json`,
//! without a key; [`openapi`] returns it, to nest into an application's own.
//! The routes, the key resource, every error and the rules of who may
//! manage and grant what are in the guide, `docs/management.md` in the
//! repository, with a session against the quickstart.

mod document;
mod error;
mod etag;
mod grant;
mod resource;
mod routes;

use std::fmt;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

pub use error::ErrorBody;
pub use grant::{GrantKind, GrantRequest, KeyScopes};
pub use resource::{
    AccountRateLimits, CompromiseResource, CreditsResource, KeyList, KeyResource, KeyWithSecret,
    RateLimitResource, RefillResource, MAX_DESCRIPTION_LEN, MAX_GRACE_PERIOD,
    MAX_SERVICE_ACCOUNT_ID_LEN,
};

use crate::auth::Authenticator;
use crate::cache::Caller;
use crate::scope::{Scope, ScopeError, ScopePolicy};
use crate::store::KeyStore;
use grant::Grants;

/// The scope a key needs to use the management API, unless
/// [`ManagementApiBuilder::scopes`] says otherwise.
pub const DEFAULT_SCOPE: &str = "apikeys.manage";

/// The largest request body accepted by default: 64 KiB, room for 100 scopes
/// of the longest allowed name.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Byte budget of one `GET /keys` page: 1 MiB of keys as this API writes
/// them in JSON (each key's JSON and a comma).
///
/// A page stops before the key that would take it past the budget (but
/// always holds at least one key, so listing always progresses), and its
/// `next_page_token` continues from the last key returned. The largest key
/// this API accepts (100 scopes of 256 bytes, the most rate limits for the
/// key and its account, credits) takes about 28 KB, so such a page holds
/// about 37 keys; only a key created directly through a store with a
/// description over 1 MiB makes a page (of that one key) larger. Stores
/// page by count only: the budget is this API's.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// The management router with the defaults: scope [`DEFAULT_SCOPE`], each
/// caller managing only its own service account's keys, bodies up to
/// [`DEFAULT_BODY_LIMIT`]. See the [module docs](self) for an example.
///
/// Give it the authenticator the rest of the app uses (or a clone: clones
/// share one cache), so that deletes reach the cache every route checks.
pub fn router(store: impl KeyStore, auth: &Authenticator) -> Router {
    ManagementApiBuilder::new(store, auth).build()
}

/// Which service accounts' keys a management caller may manage (the guide,
/// `docs/management.md`, has the rules). Cheap to clone.
#[derive(Clone)]
pub struct AccountAccess(Access);

#[derive(Clone)]
enum Access {
    Own,
    Any,
    Custom(Arc<AccountRule>),
}

type AccountRule = dyn Fn(&Caller, &str) -> bool + Send + Sync;

impl AccountAccess {
    /// Only the caller's own service account (the default).
    pub fn own_account() -> Self {
        Self(Access::Own)
    }

    /// Every service account: for operators.
    pub fn any_account() -> Self {
        Self(Access::Any)
    }

    /// Whatever `allows(caller, service_account_id)` says.
    pub fn custom(allows: impl Fn(&Caller, &str) -> bool + Send + Sync + 'static) -> Self {
        Self(Access::Custom(Arc::new(allows)))
    }

    /// Whether `caller` may manage the keys of `service_account_id`.
    pub fn allows(&self, caller: &Caller, service_account_id: &str) -> bool {
        match &self.0 {
            Access::Own => caller.service_account_id() == service_account_id,
            Access::Any => true,
            Access::Custom(allows) => allows(caller, service_account_id),
        }
    }
}

impl Default for AccountAccess {
    fn default() -> Self {
        Self::own_account()
    }
}

impl fmt::Debug for AccountAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Access::Own => "AccountAccess::own_account",
            Access::Any => "AccountAccess::any_account",
            Access::Custom(_) => "AccountAccess::custom",
        })
    }
}

/// Settings of the management router, made by [`ManagementApiBuilder::new`];
/// [`router`] is this with the defaults.
#[must_use = "a ManagementApiBuilder does nothing until `.build()`"]
pub struct ManagementApiBuilder {
    store: Arc<dyn KeyStore>,
    auth: Authenticator,
    policy: ScopePolicy,
    access: AccountAccess,
    grants: Grants,
    body_limit: usize,
}

impl fmt::Debug for ManagementApiBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementApiBuilder")
            .field("scopes", &self.policy.required())
            .field("access", &self.access)
            .field("grants", &self.grants)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl ManagementApiBuilder {
    /// The settings of the API over `store`, protected by layers of `auth`,
    /// to [build](ManagementApiBuilder::build) into a router.
    pub fn new(store: impl KeyStore, auth: &Authenticator) -> Self {
        Self::from_arc(Arc::new(store), auth)
    }

    /// [`ManagementApiBuilder::new`] for a store that is already shared.
    pub fn from_arc(store: Arc<dyn KeyStore>, auth: &Authenticator) -> Self {
        let policy = match ScopePolicy::require_any([DEFAULT_SCOPE]) {
            Ok(policy) => policy,
            Err(_) => unreachable!("the default management scope is valid"),
        };
        Self {
            store,
            auth: auth.clone(),
            policy,
            access: AccountAccess::default(),
            grants: Grants::default(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Keys holding any of `scopes` may use the API (default:
    /// [`DEFAULT_SCOPE`] alone).
    ///
    /// # Panics
    ///
    /// If a name is invalid or `scopes` is empty; see
    /// [`ManagementApiBuilder::try_scopes`] for scopes read from configuration.
    pub fn scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        match self.try_scopes(scopes) {
            Ok(api) => api,
            Err(e) => panic!("invalid management scopes: {e}"),
        }
    }

    /// [`ManagementApiBuilder::scopes`], returning invalid scopes as an error.
    pub fn try_scopes<I, S>(mut self, scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        self.policy = ScopePolicy::require_any(scopes)?;
        Ok(self)
    }

    /// Which accounts' keys a caller may manage (default: its own).
    pub fn account_access(mut self, access: AccountAccess) -> Self {
        self.access = access;
        self
    }

    /// Scopes any caller of this router may give keys, whether or not its
    /// own key holds them (default: none; a caller gives only scopes it
    /// holds; the guide, `docs/management.md`, has who may grant what). Calls
    /// add up.
    ///
    /// This is the only way to let managers hand out a management scope:
    /// name it here.
    ///
    /// # Panics
    ///
    /// If a name is invalid; see [`ManagementApiBuilder::try_grantable_scopes`].
    pub fn grantable_scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        match self.try_grantable_scopes(scopes) {
            Ok(api) => api,
            Err(e) => panic!("invalid grantable scopes: {e}"),
        }
    }

    /// [`ManagementApiBuilder::grantable_scopes`], returning invalid scopes
    /// as an error.
    pub fn try_grantable_scopes<I, S>(mut self, scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: TryInto<Scope>,
        ScopeError: From<S::Error>,
    {
        let scopes = scopes
            .into_iter()
            .map(|s| s.try_into().map_err(ScopeError::from))
            .collect::<Result<Vec<Scope>, _>>()?;
        self.grants.scopes.extend(scopes);
        self.grants.scopes.sort_unstable();
        self.grants.scopes.dedup();
        Ok(self)
    }

    /// Any caller of this router may create unscoped keys and make keys
    /// unscoped (default: only an unscoped caller may, and the management
    /// scope makes every caller scoped). An unscoped key is accepted on every
    /// route that declares no scopes.
    pub fn allow_unscoped_keys(mut self) -> Self {
        self.grants.unscoped = true;
        self
    }

    /// Adds a rule that may allow what the defaults and the explicit grants
    /// refuse.
    ///
    /// `allows(caller, request)` sees a typed [`GrantRequest`] (the kind of
    /// change, the key's account, the scopes it would hold as
    /// [`KeyScopes::Unscoped`] or [`KeyScopes::Scoped`], and its current
    /// state) and says whether to allow it. It can only widen what callers
    /// may give, never narrow it. Match on [`KeyScopes`] so that an
    /// unscoped key (accepted on every route without scopes) is never
    /// mistaken for "no scopes asked for":
    ///
    /// ```
    /// # use tower_api_key::{Authenticator, MemoryStore};
    /// use tower_api_key::management::{KeyScopes, ManagementApiBuilder};
    ///
    /// # let store = MemoryStore::new();
    /// # let auth = Authenticator::new(store.clone());
    /// let router = ManagementApiBuilder::new(store, &auth)
    ///     .grant_rule(|caller, request| {
    ///         caller.service_account_id() == "sa-team-lead"
    ///             && matches!(request.requested, KeyScopes::Scoped(scopes)
    ///                 if scopes.iter().all(|s| s.as_str().starts_with("team.")))
    ///     })
    ///     .build();
    /// # let _: axum::Router = router;
    /// ```
    pub fn grant_rule(
        mut self,
        allows: impl Fn(&Caller, &GrantRequest<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.grants.rule = Some(Arc::new(allows));
        self
    }

    /// Callers whose own key carries rate limits or credits (or whose
    /// service account carries rate limits) may do what other callers may:
    /// create keys, set limits and credits, add credits, set account limits,
    /// add scopes to keys and reissue other keys (default: they may not; see
    /// "Limits and credits" in `docs/management.md`). Only for routers whose
    /// limited callers are trusted not to lift their own limits.
    pub fn allow_limited_callers(mut self) -> Self {
        self.grants.limited_callers = true;
        self
    }

    /// Callers of this router may lock and unlock keys (`"operator_locked"`
    /// in `POST /keys` and `PATCH`) and change locked keys: for an operator
    /// console (default: they may not).
    ///
    /// A key the operator locked
    /// ([`KeyRecord::operator_locked`](crate::KeyRecord::operator_locked))
    /// is read-only for the managers of every other router: a `PATCH` of any
    /// field (metadata, scopes, description, expiry, networks, limits,
    /// credits) and `:addCredits` answer 403 `key_locked`, and so does a
    /// request that would set or clear the mark. Deleting and reissuing a
    /// locked key stay allowed on every router: a manager must always be
    /// able to kill or rotate a leaked key. The check is made on the key as
    /// read and the write lands only if the key is still at that version,
    /// so a lock that lands in between refuses the change.
    pub fn may_lock_keys(mut self) -> Self {
        self.grants.lock_keys = true;
        self
    }

    /// The largest request body, in bytes (default [`DEFAULT_BODY_LIMIT`]);
    /// larger ones get 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The router, to mount with [`Router::nest`]. Named `build` like every
    /// builder of the crate; what it builds is a plain [`Router`].
    ///
    /// Besides the API it serves `GET /openapi.json`, the document
    /// [`openapi`] returns, without a key.
    pub fn build(self) -> Router {
        if let Some(managing) = self.policy.required() {
            // Every router on this authenticator refuses to hand these out.
            self.auth.register_management_scopes(managing);
        }
        let api = routes::ApiState {
            store: self.store,
            auth: self.auth.clone(),
            access: self.access,
            grants: Arc::new(self.grants),
            body_limit: self.body_limit,
        };
        let (router, doc) = document::api()
            .route_layer(self.auth.layer(self.policy))
            .split_for_parts();
        router
            // Added after the layer: the document holds no secret, and a
            // client reads it before it has a key.
            .route("/openapi.json", get(document::serve(doc)))
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(api)
    }
}

/// The OpenAPI 3.1 document of the management API, as every router of
/// [`ManagementApiBuilder::build`] serves it (without a key) at
/// `{prefix}/openapi.json`; the file `docs/management.openapi.json` in the
/// repository is this document.
///
/// Its paths are relative to where the router is mounted. To publish the
/// API in an application's own document, nest it under the same prefix:
///
/// ```
/// use tower_api_key::management;
/// use utoipa::openapi::OpenApi;
///
/// let app_doc = OpenApi::default(); // e.g. your `#[derive(utoipa::OpenApi)]` type's `openapi()`
/// let doc = app_doc.nest("/admin", management::openapi());
/// assert!(doc.paths.paths.contains_key("/admin/keys/{id}:reissue"));
/// ```
///
/// The operations, their parameters, bodies and answers come from the same
/// route table as the router's routes, and the schemas from the JSON types
/// of this module, so the document cannot drift from what the API does.
/// It does not depend on the builder's settings (scopes, access, body limit).
pub fn openapi() -> utoipa::openapi::OpenApi {
    document::api().into_openapi()
}
