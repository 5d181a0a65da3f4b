//! Key stores: where keys live, and the management operations on them.
//!
//! A [`KeyStore`] creates, lists, updates, revokes and reissues keys, records
//! when they were last used, and is itself a [`Verifier`](crate::Verifier). Stores announce
//! revocations, reissues and updates on their [`Invalidations`] bus, so a
//! [`CachedVerifier`](crate::cache::CachedVerifier) built over a store drops a
//! revoked key at once.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::ScopeSet;
//! use tower_api_key::MemoryStore;
//! use tower_api_key::KeyStore;
//! use tower_api_key::store::NewKey;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let created = store
//!     .create(NewKey::new("sa-1").with_scopes(ScopeSet::new(["yc.ai.translate.execute"])?))
//!     .await?;
//! println!("your key, shown once: {}", created.key.expose_secret());
//!
//! let listed = store.list("sa-1", Default::default()).await?;
//! assert_eq!(listed.keys.len(), 1);
//! assert!(!format!("{listed:?}").contains(created.key.expose_secret()));
//!
//! let reissued = store.reissue(created.record.key_id, Duration::ZERO, None).await?.unwrap();
//! assert_ne!(reissued.key.expose_secret(), created.key.expose_secret());
//! assert!(store.revoke(created.record.key_id, None).await?);
//! # Ok(()) }
//! ```
//!
//! [`Invalidations`]: crate::invalidation::Invalidations

mod compromise;
mod credit;
pub(crate) mod key_store;
pub mod kit;
mod lifecycle;
pub(crate) mod memory;
mod page_token;
pub mod rules;
mod transfer;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::record::{Compromise, LeakAction};
pub use compromise::{CompromiseReport, Compromised};
pub(crate) use key_store::KeyStore;
pub use lifecycle::{LifecycleStore, NoticeKind, SentNotice};
#[cfg(test)]
pub(crate) use memory::MemoryStore;
pub use memory::MemoryStoreBuilder;
pub use transfer::{Imported, PreviousHash, StoredKey, MAX_EXPORT_PAGE};

use crate::key::{GeneratedKey, KeyGenError, KeyId};
use crate::limits::{Credits, RateLimit};
use crate::metadata::Metadata;
use crate::network::Networks;
use crate::record::KeyRecord;
use crate::scope::ScopeSet;

/// Most keys one [`KeyStore::list`] page returns: what a console shows.
pub const MAX_PAGE_SIZE: usize = 200;
/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Keys one service account may hold in a store unless its builder says
/// otherwise (`max_keys_per_account`).
pub const DEFAULT_MAX_KEYS_PER_ACCOUNT: usize = 1000;

/// A key to create ([`KeyStore::create`]): its service account, and its
/// scopes, expiry, limits and credits if any.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewKey {
    /// The owning service account (the same type as
    /// [`KeyRecord::service_account_id`](crate::KeyRecord::service_account_id)).
    pub service_account_id: Arc<str>,
    /// Free text.
    pub description: String,
    /// Scopes; empty for an unscoped key.
    pub scopes: ScopeSet,
    /// Expiry; must be in the future.
    pub expires_at: Option<SystemTime>,
    /// The key's own rate limits (at most
    /// [`MAX_RATE_LIMITS`](crate::limits::MAX_RATE_LIMITS), no two alike).
    pub rate_limits: Vec<RateLimit>,
    /// Credits, if the key is to have a quota.
    pub credits: Option<Credits>,
    /// The networks the key may be used from; `None`: any.
    pub allowed_networks: Option<Networks>,
    /// What the operator attaches to the key, for handlers.
    pub metadata: Option<Metadata>,
    /// The operator marks the key read-only for managers
    /// ([`KeyRecord::operator_locked`](crate::KeyRecord::operator_locked)).
    pub operator_locked: bool,
    /// Whether the lifecycle task may retire the key for disuse (default
    /// `true`).
    pub retire_when_unused: bool,
}

impl NewKey {
    /// An unscoped, non-expiring key for `service_account_id`.
    pub fn new(service_account_id: impl Into<Arc<str>>) -> Self {
        Self {
            service_account_id: service_account_id.into(),
            description: String::new(),
            scopes: ScopeSet::empty(),
            expires_at: None,
            rate_limits: Vec::new(),
            credits: None,
            allowed_networks: None,
            metadata: None,
            operator_locked: false,
            retire_when_unused: true,
        }
    }

    /// Sets whether the operator marks the key read-only for managers.
    pub fn with_operator_locked(mut self, locked: bool) -> Self {
        self.operator_locked = locked;
        self
    }

    /// Sets whether the lifecycle task may retire the key for disuse
    /// (`false` opts it out).
    pub fn with_retire_when_unused(mut self, retire: bool) -> Self {
        self.retire_when_unused = retire;
        self
    }

    /// Sets the networks the key may be used from (`None`: any).
    pub fn with_allowed_networks(mut self, networks: Option<Networks>) -> Self {
        self.allowed_networks = networks;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the key's rate limits.
    pub fn with_rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = limits;
        self
    }

    /// Gives the key credits.
    pub fn with_credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the expiry.
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }
}

/// A created or reissued key: its record and the secret, which exists only here.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The record's version after the write.
    pub version: Version,
    /// The whole key; show it to its owner once.
    pub key: GeneratedKey,
}

impl CreatedKey {
    /// What a store's [`create`](KeyStore::create) or
    /// [`reissue`](KeyStore::reissue) answers: the stored `record` at
    /// `version`, and the `key` it was made for.
    pub fn new(record: KeyRecord, version: Version, key: GeneratedKey) -> Self {
        Self {
            record,
            version,
            key,
        }
    }
}

/// The version of a key's configuration: what a conditional write states it
/// read, and what the management API shows as an `ETag`.
///
/// A key is created at [`Version::FIRST`]; every change of its
/// configuration ([`update`](KeyStore::update), [`reissue`](KeyStore::reissue),
/// [`add_credits`](KeyStore::add_credits); an update that changes nothing
/// does not) moves it on by one, in the same atomic step as the change.
/// Usage flushes and credit spends do not, so a busy key can still be
/// changed. An [import](KeyStore::import) keeps the exported version (at
/// most 2^53 - 1; a higher one is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// The version of a key as created (or imported).
    pub const FIRST: Version = Version(1);

    /// The version numbered `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version after one more change.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key as the management API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The record.
    pub record: KeyRecord,
    /// When the key was last used, if ever (written behind, so it lags).
    pub last_used_at: Option<SystemTime>,
    /// A masked hint such as `tak_…x7Qa`: the prefix and the last four
    /// characters, never enough to use the key.
    pub hint: String,
    /// The version of the key's configuration.
    pub version: Version,
}

impl KeyInfo {
    /// A key's record, when it was last used and its hint: what a tool
    /// that reads keys from elsewhere (an export file) builds to
    /// [`import`](crate::KeyStore::import) them.
    pub fn new(
        record: KeyRecord,
        last_used_at: Option<SystemTime>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            record,
            last_used_at,
            hint: hint.into(),
            version: Version::FIRST,
        }
    }

    /// Sets the version.
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }
}

/// What to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KeyUpdate {
    /// New description.
    pub description: Option<String>,
    /// New scopes.
    pub scopes: Option<ScopeSet>,
    /// New expiry: `Some(None)` removes it. Either clears the record's
    /// [`retired_unused_since`](crate::KeyRecord::retired_unused_since): a
    /// key retired for disuse that is given a new expiry is revived.
    pub expires_at: Option<Option<SystemTime>>,
    /// New rate limits: `Some(vec![])` removes them.
    pub rate_limits: Option<Vec<RateLimit>>,
    /// New credits, replacing the count and the refill and starting a new
    /// generation (credits leased under the old one are not given back):
    /// `Some(None)` removes them. To add credits, use
    /// [`KeyStore::add_credits`].
    pub credits: Option<Option<Credits>>,
    /// New allowed networks: `Some(None)` removes them (any network).
    pub allowed_networks: Option<Option<Networks>>,
    /// New metadata: `Some(None)` removes it.
    pub metadata: Option<Option<Metadata>>,
    /// Whether the operator marks the key read-only for managers
    /// ([`KeyRecord::operator_locked`](crate::KeyRecord::operator_locked)).
    pub operator_locked: Option<bool>,
    /// Whether the lifecycle task may retire the key for disuse.
    pub retire_when_unused: Option<bool>,
}

impl KeyUpdate {
    /// Whether it changes nothing: a store leaves the version of a key
    /// such an update names as it is.
    pub fn is_empty(&self) -> bool {
        self.description.is_none()
            && self.scopes.is_none()
            && self.expires_at.is_none()
            && self.rate_limits.is_none()
            && self.credits.is_none()
            && self.allowed_networks.is_none()
            && self.metadata.is_none()
            && self.operator_locked.is_none()
            && self.retire_when_unused.is_none()
    }

    /// Sets whether the operator marks the key read-only for managers.
    pub fn with_operator_locked(mut self, locked: bool) -> Self {
        self.operator_locked = Some(locked);
        self
    }

    /// Sets whether the lifecycle task may retire the key for disuse.
    pub fn with_retire_when_unused(mut self, retire: bool) -> Self {
        self.retire_when_unused = Some(retire);
        self
    }

    /// Sets (or with `None`, removes) the allowed networks.
    pub fn with_allowed_networks(mut self, networks: Option<Networks>) -> Self {
        self.allowed_networks = Some(networks);
        self
    }

    /// Sets (or with `None`, removes) the metadata.
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Sets (or with `None`, removes) the expiry.
    pub fn with_expires_at(mut self, expires_at: Option<SystemTime>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets (or with an empty list, removes) the rate limits.
    pub fn with_rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = Some(limits);
        self
    }

    /// Sets (or with `None`, removes) the credits.
    pub fn with_credits(mut self, credits: Option<Credits>) -> Self {
        self.credits = Some(credits);
        self
    }
}

/// Which page of a listing to return ([`KeyStore::list`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListRequest {
    /// Keys per page (default 100, at most 200). A caller goes on while
    /// `next_page_token` is set.
    pub page_size: Option<usize>,
    /// The `next_page_token` of the previous page.
    pub page_token: Option<String>,
    /// Only keys never used, or last used longer ago than this before the
    /// store's clock's now ([`ListRequest::unused_before`]); pass the same
    /// value on every page.
    pub unused_for: Option<Duration>,
}

impl ListRequest {
    /// The first page, of `page_size` keys.
    pub fn first(page_size: usize) -> Self {
        Self {
            page_size: Some(page_size),
            page_token: None,
            unused_for: None,
        }
    }

    /// The page after the one that returned `token`.
    pub fn after(page_size: usize, token: impl Into<String>) -> Self {
        Self {
            page_size: Some(page_size),
            page_token: Some(token.into()),
            unused_for: None,
        }
    }

    /// Only keys never used or last used longer than `unused_for` ago.
    pub fn with_unused_for(mut self, unused_for: Duration) -> Self {
        self.unused_for = Some(unused_for);
        self
    }

    /// The instant a listing with [`unused_for`](ListRequest::unused_for)
    /// keeps keys last used before (strictly), at `now`; `None` without
    /// the filter. A duration longer than the time since 1970 gives the
    /// epoch: only keys never used remain. A key is kept when
    /// `last_used_at` is `None` or earlier than this.
    pub fn unused_before(&self, now: SystemTime) -> Option<SystemTime> {
        self.unused_for.map(|d| {
            now.checked_sub(d)
                .filter(|at| *at >= SystemTime::UNIX_EPOCH)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
    }

    /// Whether a key last used at `last_used_at` belongs in a listing with
    /// cutoff `unused_before` (from [`ListRequest::unused_before`]).
    pub fn keeps(unused_before: Option<SystemTime>, last_used_at: Option<SystemTime>) -> bool {
        match (unused_before, last_used_at) {
            (None, _) | (Some(_), None) => true,
            (Some(cutoff), Some(used)) => used < cutoff,
        }
    }

    /// The page size asked for, checked: [`DEFAULT_PAGE_SIZE`] when none
    /// is, an error unless it is 1 to [`MAX_PAGE_SIZE`].
    pub fn size(&self) -> Result<usize, StoreError> {
        match self.page_size {
            None => Ok(DEFAULT_PAGE_SIZE),
            Some(n @ 1..=MAX_PAGE_SIZE) => Ok(n),
            Some(_) => Err(StoreError::InvalidPageSize { max: MAX_PAGE_SIZE }),
        }
    }
}

/// One page of keys: at most the page size asked for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeyPage {
    /// The keys, oldest first.
    pub keys: Vec<KeyInfo>,
    /// Pass it back for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl KeyPage {
    /// A page of `keys`, and the token of the next page if keys follow.
    pub fn new(keys: Vec<KeyInfo>, next_page_token: Option<String>) -> Self {
        Self {
            keys,
            next_page_token,
        }
    }
}

/// A management operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// A listing's `page_token` this store did not issue (or one altered).
    InvalidPageToken,
    /// A page size outside 1 to `max`: a listing's `page_size`
    /// ([`MAX_PAGE_SIZE`]) or an export page's `limit`
    /// ([`MAX_EXPORT_PAGE`]).
    #[non_exhaustive]
    InvalidPageSize {
        /// The largest page allowed.
        max: usize,
    },
    /// An [import](KeyStore::import) refused because the key's id (or its
    /// hash) is taken here: [`ConflictKind`] says how. Nothing was written.
    /// Names the key id, never a hash.
    #[non_exhaustive]
    Conflict {
        /// The imported key.
        id: KeyId,
        /// What the store holds under that id or hash.
        kind: ConflictKind,
    },
    /// The store cannot be opened as configured: which setting and why,
    /// never a password.
    Config(ConfigError),
    /// The random source failed.
    KeyGen(KeyGenError),
    /// The service account already holds the most keys a store allows
    /// (expired ones included); delete unused keys to make room. Never names
    /// the account nor any key.
    #[non_exhaustive]
    KeyLimitReached {
        /// The most keys one service account may hold.
        limit: usize,
    },
    /// A conditional write found the key at another version than the one
    /// it was told it read: someone changed the key in between. Nothing was
    /// written; read the key again and decide again.
    #[non_exhaustive]
    VersionMismatch {
        /// The key.
        id: KeyId,
        /// Its version now.
        current: Version,
    },
    /// [`KeyStore::add_credits`] on a key without credits: a key is given
    /// credits by an update.
    #[non_exhaustive]
    NoCredits {
        /// The key.
        id: KeyId,
    },
    /// [`KeyStore::add_credits_unless_locked`] on a key the operator locked
    /// ([`KeyRecord::operator_locked`](crate::KeyRecord::operator_locked)).
    /// Nothing was written.
    #[non_exhaustive]
    KeyLocked {
        /// The key.
        id: KeyId,
    },
    /// The backend failed.
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A field breaks its [rule](rules): which one and why, never its
    /// value; `id` names the key when there is one (an import).
    #[non_exhaustive]
    InvalidField {
        /// The key, when the request is about one.
        id: Option<KeyId>,
        /// The field and what is wrong with it.
        error: rules::FieldError,
    },
}

impl StoreError {
    /// A page size outside 1 to `max` ([`StoreError::InvalidPageSize`]).
    pub fn invalid_page_size(max: usize) -> Self {
        Self::InvalidPageSize { max }
    }

    /// An import of key `id` that conflicts with what the store holds
    /// ([`StoreError::Conflict`]).
    pub fn conflict(id: KeyId, kind: ConflictKind) -> Self {
        Self::Conflict { id, kind }
    }

    /// A field of key `id` (if any) breaks its rule.
    pub fn invalid_field(id: Option<KeyId>, error: rules::FieldError) -> Self {
        Self::InvalidField { id, error }
    }

    /// A backend failure.
    pub fn backend(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Backend(err.into())
    }

    /// A create or import past the per-account key `limit`
    /// ([`StoreError::KeyLimitReached`]): for stores outside this crate,
    /// which cannot name the variant's fields.
    pub fn key_limit_reached(limit: usize) -> Self {
        Self::KeyLimitReached { limit }
    }

    /// A conditional write on key `id`, found at `current`
    /// ([`StoreError::VersionMismatch`]).
    pub fn version_mismatch(id: KeyId, current: Version) -> Self {
        Self::VersionMismatch { id, current }
    }

    /// Credits added to key `id`, which has none ([`StoreError::NoCredits`]).
    pub fn no_credits(id: KeyId) -> Self {
        Self::NoCredits { id }
    }

    /// A write refused because the operator locked key `id`
    /// ([`StoreError::KeyLocked`]).
    pub fn key_locked(id: KeyId) -> Self {
        Self::KeyLocked { id }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPageToken => f.write_str("invalid request: page_token is not valid"),
            Self::InvalidPageSize { max } => {
                write!(f, "invalid request: a page holds 1 to {max} keys")
            }
            Self::Conflict { id, kind } => write!(f, "key {id} {kind}"),
            Self::Config(e) => write!(f, "invalid key store configuration: {e}"),
            Self::KeyGen(e) => write!(f, "{e}"),
            Self::KeyLimitReached { limit } => write!(
                f,
                "the service account already holds {limit} keys, the most allowed \
                 (expired keys count too); delete keys it no longer uses"
            ),
            Self::VersionMismatch { id, current } => write!(
                f,
                "key {id} changed meanwhile (now at version {current}); read it again"
            ),
            Self::NoCredits { id } => write!(
                f,
                "key {id} has no credits to add to; give it credits with an update"
            ),
            Self::KeyLocked { id } => write!(
                f,
                "key {id} is locked by the operator: it is read-only for managers"
            ),
            Self::Backend(e) => write!(f, "key store backend failed: {e}"),
            Self::InvalidField {
                id: Some(id),
                error,
            } => {
                write!(f, "invalid request: key {id}: {error}")
            }
            Self::InvalidField { id: None, error } => write!(f, "invalid request: {error}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::KeyGen(e) => Some(e),
            Self::Backend(e) => Some(&**e),
            Self::InvalidField { error, .. } => Some(error),
            Self::Config(e) => Some(e),
            Self::InvalidPageToken
            | Self::InvalidPageSize { .. }
            | Self::Conflict { .. }
            | Self::KeyLimitReached { .. }
            | Self::VersionMismatch { .. }
            | Self::NoCredits { .. }
            | Self::KeyLocked { .. } => None,
        }
    }
}

impl From<KeyGenError> for StoreError {
    fn from(e: KeyGenError) -> Self {
        Self::KeyGen(e)
    }
}

impl From<ConfigError> for StoreError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// How an [import](KeyStore::import) conflicts with the store
/// ([`StoreError::Conflict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictKind {
    /// The id is held with another secret or service account.
    IdTaken,
    /// This store revoked the id: revocation is final, and an old export
    /// must not bring the key back.
    Revoked,
    /// The id or the hash is taken by another key, as the database's unique
    /// index found (a concurrent import of the same key, or another key with
    /// this hash).
    IdOrHashTaken,
}

impl fmt::Display for ConflictKind {
    /// Reads after "key {id} ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IdTaken => "already exists with another secret or service account",
            Self::Revoked => "was revoked in this store; a revoked key is never imported again",
            Self::IdOrHashTaken => "conflicts with another key holding its id or hash",
        })
    }
}

/// A key store's configuration that cannot work
/// ([`StoreError::Config`]). Never holds a password nor a key.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The database URL does not parse; the source is the driver's reason
    /// (which never repeats the URL).
    DatabaseUrl(Box<dyn std::error::Error + Send + Sync>),
    /// The path of the database file is empty.
    EmptyPath,
    /// The notification channel name is not 1 to 63 characters of `a-z`,
    /// `0-9` and `_`, not starting with a digit.
    ChannelName,
}

impl ConfigError {
    /// A database URL that does not parse, for `reason` (never the URL).
    pub fn database_url(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::DatabaseUrl(reason.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DatabaseUrl(e) => write!(f, "invalid database URL: {e}"),
            Self::EmptyPath => f.write_str("the database path is empty"),
            Self::ChannelName => f.write_str(
                "the NOTIFY channel must be 1 to 63 characters of a-z, 0-9 and _, \
                 not starting with a digit",
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::DatabaseUrl(e) => Some(&**e),
            Self::EmptyPath | Self::ChannelName => None,
        }
    }
}

/// The latest instant a store keeps, [`LATEST_TIME_TEXT`]: the end of year
/// 9999, beyond which RFC 3339 has no four-digit year to write it in.
pub fn latest_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999)
}

/// [`latest_time`] as RFC 3339.
pub const LATEST_TIME_TEXT: &str = "9999-12-31T23:59:59.999Z";
