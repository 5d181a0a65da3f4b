//! The key-management HTTP API (feature `management`): a ready [`axum::Router`]
//! over any [`KeyStore`], for key owners what a cloud console gives them.
//!
//! Mount it under a prefix of your choice. It is protected by the crate's own
//! layer: every route requires a key holding the management scope,
//! [`DEFAULT_SCOPE`] (`apikeys.manage`) unless [`ManagementApiBuilder::scopes`]
//! names others.
//!
//! ```
//! use axum::Router;
//! use tower_api_key::management::{self, AccountAccess, ManagementApi};
//! use tower_api_key::ScopeSet;
//! use tower_api_key::MemoryStore;
//! use tower_api_key::KeyStore;
//! use tower_api_key::store::{  NewKey};
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
//!     ManagementApi::builder(store.clone(), &auth)
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
//! # Routes
//!
//! Paths are relative to where the router is mounted.
//!
//! | route | body | success |
//! |---|---|---|
//! | `POST /keys` | `{service_account_id, description?, scopes?, expires_at?, rate_limits?, credits?}` | 201 `{key, secret}`, `Location: keys/{id}` |
//! | `GET /keys?service_account_id=...&page_size=&page_token=` | | 200 `{keys: [...], next_page_token}`, oldest first |
//! | `GET /keys/{id}` | | 200 the key |
//! | `PATCH /keys/{id}` | `{description?, scopes?, expires_at?, rate_limits?, credits?}` | 200 the updated key |
//! | `POST /keys/{id}:reissue` | `{grace_period_seconds?}` or empty | 200 `{key, secret}` |
//! | `POST /keys/{id}:addCredits` | `{amount}` | 200 the key |
//! | `DELETE /keys/{id}` | | 204 |
//! | `GET /accounts/{service_account_id}/rate-limits` | | 200 `{rate_limits: [...]}` |
//! | `PUT /accounts/{service_account_id}/rate-limits` | `{rate_limits: [...]}` | 200 `{rate_limits: [...]}` |
//!
//! A key ([`KeyResource`]) reads:
//!
//! ```json
//! {
//!   "id": "NhKynoCOkdHO3X3a",
//!   "service_account_id": "sa-translator",
//!   "description": "ci deploys",
//!   "scopes": ["yc.ai.translate.execute"],
//!   "created_at": "2030-01-31T12:00:00.000Z",
//!   "expires_at": null,
//!   "last_used_at": null,
//!   "hint": "tak_…x7Qa",
//!   "rate_limits": [{"limit": 5, "period": "1s", "burst": 5}],
//!   "credits": {"remaining": 3, "refill": {"amount": 100, "interval": "daily", "day": 1}}
//! }
//! ```
//!
//! - **The secret** (the whole key, to send as `Authorization: Api-Key ...`)
//!   is in the responses of create and reissue, and in no other response,
//!   error or log line.
//! - **The hint** (the prefix and the last four characters) tells keys apart
//!   in a list; it is never enough to use one.
//! - **Timestamps** are RFC 3339. Responses are in UTC with milliseconds;
//!   requests may use `Z` or a numeric offset. `expires_at` must be in the
//!   future and, in UTC, no later than 9999-12-31T23:59:59.999Z (the last
//!   instant RFC 3339 can write; `9999-12-31T23:59:59-14:00` is past it);
//!   a stored time outside 1970-9999 (written by another tool) is shown
//!   clamped to that range. A leap second (`23:59:60`) is read as the last
//!   instant of its minute ([`crate::time`] reads and writes every time, as
//!   the CLI does). In a `PATCH`, `"expires_at": null` removes the expiry and an
//!   absent field leaves it as it is. `description` and `scopes` may be
//!   absent but not `null`.
//! - **`last_used_at`** is `null` until the key is first used. It is written
//!   behind by a [`UsageRecorder`](crate::usage::UsageRecorder) (give one to
//!   the [`Authenticator`]), so it lags by up to one flush interval, and only
//!   ever moves forward.
//! - **Reissue** gives the key a new secret, keeping id, account, scopes,
//!   expiry and `last_used_at`. The old secret keeps working for
//!   `grace_period_seconds` (default 0, at most 30 days).
//! - **Versions.** Every key response carries a strong `ETag` (`"3"`): the
//!   key's [`Version`](crate::store::Version), which each change of its
//!   configuration moves on (not its use, nor credit spends). `PATCH`,
//!   `DELETE`, `:reissue` and `:addCredits` honour `If-Match` (a list of
//!   tags, or `*`): a key no longer at a named version answers 412
//!   `failed_precondition` and nothing is written. Without `If-Match` the
//!   router still checks each `PATCH` and `:reissue` against the key it
//!   read and writes only if the key is still at that version, reading and
//!   checking again when it moved; a key that keeps moving answers 409
//!   `aborted`. A `DELETE` or `:addCredits` without a named version checks
//!   nothing on the key but its account, which never changes, so it writes
//!   whatever the version: a key that keeps changing (a leaked management
//!   key PATCHing itself in a loop) cannot keep itself from being revoked.
//! - **Delete** revokes the key: on this replica, every request that starts
//!   after the 204 is refused. The router also drops the key from the
//!   authenticator's cache itself, so this holds even when the authenticator
//!   verifies through something other than the store. The same goes for
//!   `PATCH` (new scopes and expiry apply at once) and reissue.
//!
//! Every response carries `Cache-Control: no-store`. Each create, update,
//! reissue and delete, and each refused grant or account, is logged
//! (`tracing`, `INFO`) with the key id and the caller's key id (and the
//! account, where there is one), never a secret.
//!
//! A session with the quickstart, each of these requests and its real
//! response, is in `docs/management.md` in the repository.
//!
//! # Errors
//!
//! Errors are JSON, `{"error": "<code>", "message": "<what is wrong>"}`
//! ([`ErrorBody`]); messages name the field (`scopes[3]: ...`) and never
//! carry key material, even when a request pastes a key into the wrong field.
//! Every check runs before the store is touched: a refused request changes
//! nothing.
//!
//! | status | `error` | when |
//! |---|---|---|
//! | 400 | `invalid_argument` | an `If-Match` that is not a list of entity tags, malformed JSON, unknown or `null` fields, invalid scope names, more than 100 scopes, `expires_at` not RFC 3339, not in the future or after 9999-12-31T23:59:59.999Z in UTC, an API key pasted into `service_account_id`, `description` or a scope, a malformed key id, missing `service_account_id`, unknown query parameters, a bad `page_size` or `page_token`, a grace period over 30 days, an invalid rate limit, credit, refill or `amount` (see [limits and credits](#limits-and-credits)) |
//! | 401, 403 | (the layer's) | no valid key, or a key without the management scope (`WWW-Authenticate: ... error="insufficient_scope", scope="apikeys.manage"`) |
//! | 403 | `permission_denied` | the caller may not manage this service account's keys ([`AccountAccess`]), may not give a key these scopes ([who may grant what](#who-may-grant-what)), or carries limits itself ([limits and credits](#limits-and-credits)) |
//! | 404 | `not_found` | an unknown or deleted key id, a key of an account the caller may not manage, an unknown `:method` |
//! | 405 | `method_not_allowed` | `GET /keys/{id}:reissue` and the like; `Allow` says what works |
//! | 409 | `failed_precondition` | `:addCredits` on a key without credits |
//! | 409 | `aborted` | a `PATCH` or `:reissue`: the key was changed by other requests between this request's read and its write, three times over; nothing was written, try again |
//! | 412 | `failed_precondition` | `If-Match` names no version the key is at |
//! | 409 | `key_limit_reached` | `POST /keys` when the service account already holds the store's most keys (1,000 by default, counting expired keys); delete unused keys first |
//! | 413 | `payload_too_large` | a body over the limit (64 KiB by default, [`ManagementApiBuilder::body_limit`]) |
//! | 415 | `unsupported_media_type` | a body without `content-type: application/json` |
//! | 503 | `unavailable` | the key store failed; the details go to the log, not the response |
//!
//! # Who may manage which keys
//!
//! The management scope only lets a key into the API. Which service
//! accounts' keys it may then manage is the router's [`AccountAccess`]:
//!
//! - [`AccountAccess::own_account`] (**the default**): only keys of the
//!   caller's own service account. A service account can rotate its own keys
//!   and touch nobody else's; a misconfiguration shows up as a 403, not as
//!   one account managing another's keys.
//! - [`AccountAccess::any_account`]: every account, for an operator console
//!   (the quickstart uses it for its admin key).
//! - [`AccountAccess::custom`]: a predicate over the caller and the account,
//!   for example a table of which team account manages which.
//!
//! A key of an account the caller may not manage answers 404, as if it did
//! not exist; creating or listing keys of such an account answers 403.
//!
//! # Who may grant what
//!
//! No request to this API brings into existence a key that is accepted on a
//! route where the calling key is refused, unless the router was told so:
//!
//! - **Create**: a caller may give a key only scopes its own key holds, and
//!   never this router's management scopes (a key may not copy itself). It
//!   may not create an unscoped key (accepted on every route that declares
//!   no scopes) unless it is unscoped itself, which a key holding the
//!   management scope never is.
//! - **PATCH**: the same for every scope the request adds; scopes the key
//!   already holds may stay, and a key may always be narrowed. Making a
//!   scoped key unscoped counts as adding.
//! - **Reissue** hands the caller the key itself, so the caller must hold
//!   every scope of that key, and may reissue an unscoped key only if it
//!   could create one. A management scope only when the key is the
//!   caller's own (a rotation): a "twin" holding the same management scope
//!   would be a second credential that outlives a revocation of the first.
//! - **Bringing an expired key back** (`PATCH` with an `expires_at` that
//!   makes it valid again) gives its scopes anew: checked as a create.
//! - **A secret replaced by a reissue** keeps authenticating until its
//!   grace period ends, but manages nothing (403): a leaked old secret may
//!   not reissue, and so take over, the key that replaced it.
//! - A `PATCH` writes only the fields that change the key: sending back
//!   what the key holds writes nothing and leaves its `ETag`.
//!
//! The operator widens this explicitly on the router:
//! [`ManagementApiBuilder::grantable_scopes`] (scopes any manager may hand
//! out; the only way to hand out a management scope is to name it here),
//! [`ManagementApiBuilder::allow_unscoped_keys`], and
//! [`ManagementApiBuilder::grant_rule`] (a predicate over the caller and a
//! typed [`GrantRequest`], asked about whatever the rest refuses).
//! Anything else is refused with 403 `permission_denied` naming the scopes
//! that may not be given, before the store is touched.
//!
//! "Management scopes" are those of every management router built on the
//! same [`Authenticator`]: each router registers its scopes there when it
//! is built, and none of them hands out any of them unless named in its
//! `grantable_scopes`.
//!
//! These checks hold under concurrency: each is made on the key as read
//! and the write lands only if the key is still at that version (see
//! **Versions** above), so no interleaving of allowed requests adds a scope
//! the caller could not add alone.
//!
//! # Limits and credits
//!
//! A key may carry rate limits and credits ([`crate::limits`]); its service
//! account may carry rate limits shared by all its keys.
//!
//! - **`rate_limits`** is a list (at most
//!   [`MAX_RATE_LIMITS`](crate::limits::MAX_RATE_LIMITS), no two alike) of
//!   `{"limit": 5, "period": "1s", "burst": 10}`: `limit` 1 to
//!   1,000,000,000 per `period` (a whole number and `ms`, `s`, `m`, `h` or
//!   `d`, at most `366d`), at most `burst` at once; `burst` defaults to
//!   `limit`. Responses always show all three. An account's limits are not
//!   shown on its keys.
//! - **`credits`** is `{"remaining": N, "refill": R}`, `refill` optional:
//!   `{"amount": 100, "interval": "daily"}` (`day` absent or 1) or
//!   `{"amount": 100, "interval": "monthly", "day": 15}` (`day` 1 to 31
//!   required; the last day in shorter months). Counts are at most
//!   [`MAX_CREDITS`](crate::limits::MAX_CREDITS). `remaining` in a response
//!   is the store's count: replicas may hold a few leased credits on top.
//! - In a `PATCH`, `"rate_limits": null` (or `[]`) and `"credits": null`
//!   remove them; setting `credits` replaces the count and the refill.
//!   `POST /keys/{id}:addCredits` with `{"amount": N}` (1 to `MAX_CREDITS`)
//!   adds to the count instead (never past `MAX_CREDITS`); a key without
//!   credits answers 409 `failed_precondition`.
//! - `PUT /accounts/{id}/rate-limits` replaces the account's limits (`[]`
//!   removes them) and applies at once on this replica. Both account routes
//!   follow [`AccountAccess`]: another account answers 403.
//!
//! **A limited caller** is one whose own key carries rate limits or
//! credits, or whose service account carries rate limits. It could
//! otherwise lift its own limits: mint an unlimited key, top itself up,
//! clear its account's limits, reissue (and so receive) a less limited key,
//! or hand its scopes to an unlimited key. By default it may not create
//! keys, set `rate_limits` or `credits` in a `PATCH`, add scopes to a key,
//! reissue any key but its own, call `:addCredits`, or `PUT` account
//! limits: 403 `permission_denied`, before the store is touched. It may
//! still read, delete, narrow scopes, change descriptions and expiries, and
//! rotate itself. An unlimited caller sets limits on the keys and accounts
//! it manages. [`ManagementApiBuilder::allow_limited_callers`] lifts the
//! rule.

mod error;
mod etag;
mod grant;
mod resource;
mod routes;

use std::fmt;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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

/// The management router with the defaults: scope [`DEFAULT_SCOPE`], each
/// caller managing only its own service account's keys, bodies up to
/// [`DEFAULT_BODY_LIMIT`]. See the [module docs](self).
///
/// Give it the authenticator the rest of the app uses (or a clone: clones
/// share one cache), so that deletes reach the cache every route checks.
pub fn router(store: impl KeyStore, auth: &Authenticator) -> Router {
    ManagementApi::builder(store, auth).build()
}

/// Which service accounts' keys a management caller may manage; see the
/// [module docs](self#who-may-manage-which-keys). Cheap to clone.
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

/// Not a value: where [`ManagementApi::builder`] lives. The management API
/// is a [`Router`], configured by a [`ManagementApiBuilder`].
#[derive(Debug)]
pub enum ManagementApi {}

impl ManagementApi {
    /// The settings of the API over `store`, protected by layers of `auth`,
    /// to [build](ManagementApiBuilder::build) into a router.
    pub fn builder(store: impl KeyStore, auth: &Authenticator) -> ManagementApiBuilder {
        Self::builder_from_arc(Arc::new(store), auth)
    }

    /// [`ManagementApi::builder`] for a store that is already shared.
    pub fn builder_from_arc(
        store: Arc<dyn KeyStore>,
        auth: &Authenticator,
    ) -> ManagementApiBuilder {
        let policy = match ScopePolicy::require_any([DEFAULT_SCOPE]) {
            Ok(policy) => policy,
            Err(_) => unreachable!("the default management scope is valid"),
        };
        ManagementApiBuilder {
            store,
            auth: auth.clone(),
            policy,
            access: AccountAccess::default(),
            grants: Grants::default(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// Settings of the management router, made by [`ManagementApi::builder`];
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
    /// holds). See [who may grant what](self#who-may-grant-what). Calls add up.
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

    /// A rule for what the defaults and the explicit grants refuse:
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
    /// use tower_api_key::management::{KeyScopes, ManagementApi};
    ///
    /// # let store = MemoryStore::new();
    /// # let auth = Authenticator::new(store.clone());
    /// let router = ManagementApi::builder(store, &auth)
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
    /// [limits and credits](self#limits-and-credits)). Only for routers whose
    /// limited callers are trusted not to lift their own limits.
    pub fn allow_limited_callers(mut self) -> Self {
        self.grants.limited_callers = true;
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
    pub fn build(self) -> Router {
        if let Some(managing) = self.policy.required() {
            // Every router on this authenticator refuses to hand these out.
            self.auth.register_management_scopes(managing);
        }
        let ctx = routes::Ctx {
            store: self.store,
            auth: self.auth.clone(),
            access: self.access,
            grants: Arc::new(self.grants),
            body_limit: self.body_limit,
        };
        Router::new()
            .route("/keys", post(routes::create).get(routes::list))
            .route(
                // `{id}` or `{id}:reissue`: axum cannot match a suffix within a
                // segment, so the handlers split it.
                "/keys/{id}",
                get(routes::get)
                    .patch(routes::update)
                    .delete(routes::delete)
                    .post(routes::custom),
            )
            .route(
                "/accounts/{service_account_id}/rate-limits",
                get(routes::get_account_limits).put(routes::put_account_limits),
            )
            .route_layer(self.auth.layer(self.policy))
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(ctx)
    }
}
