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
//! use tower_api_key::store::{  NewKey};
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
pub(crate) mod memory;
mod page_token;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod rules;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod schema;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
mod transfer;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::record::{Compromise, LeakAction};
pub use compromise::{CompromiseReport, Compromised};
pub(crate) use credit::CreditState;
pub(crate) use key_store::KeyStore;
#[cfg(test)]
pub(crate) use memory::MemoryStore;
pub use memory::MemoryStoreBuilder;
pub(crate) use rules::check_import;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub use schema::{Migration, MigrationReport};
pub use transfer::{Imported, PreviousHash, StoredKey, MAX_EXPORT_PAGE};

use crate::key::{GeneratedKey, KeyGenError, KeyId};
use crate::limits::{check_rate_limits, Credits, RateLimit};
use crate::record::KeyRecord;
use crate::scope::ScopeSet;

/// Most keys one [`KeyStore::list`] page returns: what a console shows.
pub const MAX_PAGE_SIZE: usize = 200;
/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Byte budget of one [`KeyStore::list`] page: 1 MiB of keys as the
/// management API writes them in JSON ([`KeyInfo::json_size_estimate`]).
///
/// A page stops before the key that would take it past the budget (but
/// always holds at least one key, so listing always progresses), and its
/// `next_page_token` continues from the last key returned. The largest key
/// the management API accepts (100 scopes of 256 bytes, the most rate
/// limits for the key and its account, credits) takes about 28 KB, so such
/// a page holds about 37 keys; only a key created directly through
/// a store with a description over 1 MiB makes a page (of that one key)
/// larger than the budget.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Keys one service account may hold in a store unless its builder says
/// otherwise (`max_keys_per_account`).
pub const DEFAULT_MAX_KEYS_PER_ACCOUNT: usize = 1000;

/// What to create.
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
        }
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

    /// An upper bound on the bytes this key takes in a management API
    /// listing: every string with its quotes and JSON escapes, field names,
    /// punctuation and timestamps. What [`MAX_PAGE_BYTES`] counts.
    pub fn json_size_estimate(&self) -> usize {
        // Field names, braces, commas (the array's too) and three
        // timestamps of at most 40 bytes each, quoted: about 210 bytes.
        const FIXED: usize = 256;
        let record = &self.record;
        let scopes: usize = record
            .scopes
            .iter()
            .map(|s| json_string_len(s.as_str()) + 1)
            .sum();
        // The key's and its account's rate limits as strings of their text
        // form (at most 40 bytes: `999999999/31622399999ms,burst=1000000000`),
        // quoted, with a comma; the two lists' field names and brackets.
        const LIMIT: usize = 44;
        const LIMIT_LISTS: usize = 96;
        // Credits: an object of two counts of at most 13 digits, an interval
        // name, a day and their field names.
        const CREDITS: usize = 192;
        let limits = LIMIT * (record.rate_limits.len() + record.account_rate_limits.len());
        let credits = if record.credits.is_some() { CREDITS } else { 0 };
        // A leak report: its URL and source as strings, a timestamp, an
        // action name, a flag and their field names.
        const COMPROMISE: usize = 160;
        let compromise = record.compromise.as_ref().map_or(0, |c| {
            COMPROMISE + json_string_len(&c.url) + json_string_len(&c.source)
        });
        FIXED
            + json_string_len(record.key_id.as_str())
            + json_string_len(&record.service_account_id)
            + json_string_len(&record.description)
            + json_string_len(&self.hint)
            + scopes
            + LIMIT_LISTS
            + limits
            + credits
            + compromise
    }
}

/// The length of `s` as a JSON string: quotes, `\"` and `\\` escaped in two
/// bytes, control characters in six (`\u0000`), everything else as UTF-8.
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Fills a page from `keys` (in listing order, at least one more than
/// `size` when there are more): at most `size` keys and at most
/// [`MAX_PAGE_BYTES`], never fewer than one. The flag says whether keys are
/// left for a next page.
pub(crate) fn fill_page<E>(
    keys: impl IntoIterator<Item = Result<KeyInfo, E>>,
    size: usize,
) -> Result<(Vec<KeyInfo>, bool), E> {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for key in keys {
        let key = key?;
        let cost = key.json_size_estimate();
        if page.len() == size || (!page.is_empty() && bytes.saturating_add(cost) > MAX_PAGE_BYTES) {
            return Ok((page, true));
        }
        bytes = bytes.saturating_add(cost);
        page.push(key);
    }
    Ok((page, false))
}

/// What to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KeyUpdate {
    /// New description.
    pub description: Option<String>,
    /// New scopes.
    pub scopes: Option<ScopeSet>,
    /// New expiry: `Some(None)` removes it.
    pub expires_at: Option<Option<SystemTime>>,
    /// New rate limits: `Some(vec![])` removes them.
    pub rate_limits: Option<Vec<RateLimit>>,
    /// New credits, replacing the count and the refill and starting a new
    /// generation (credits leased under the old one are not given back):
    /// `Some(None)` removes them. To add credits, use
    /// [`KeyStore::add_credits`].
    pub credits: Option<Option<Credits>>,
}

impl KeyUpdate {
    /// Whether it changes nothing: such an update leaves the version too.
    pub(crate) fn is_empty(&self) -> bool {
        self.description.is_none()
            && self.scopes.is_none()
            && self.expires_at.is_none()
            && self.rate_limits.is_none()
            && self.credits.is_none()
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

/// Which page of a listing.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListRequest {
    /// Keys per page (default 100, at most 200). A page also stops at
    /// [`MAX_PAGE_BYTES`], so it may hold fewer keys even when more follow:
    /// go on while `next_page_token` is set.
    pub page_size: Option<usize>,
    /// The `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

impl ListRequest {
    /// The first page, of `page_size` keys.
    pub fn first(page_size: usize) -> Self {
        Self {
            page_size: Some(page_size),
            page_token: None,
        }
    }

    /// The page after the one that returned `token`.
    pub fn after(page_size: usize, token: impl Into<String>) -> Self {
        Self {
            page_size: Some(page_size),
            page_token: Some(token.into()),
        }
    }

    pub(crate) fn size(&self) -> Result<usize, StoreError> {
        match self.page_size {
            None => Ok(DEFAULT_PAGE_SIZE),
            Some(n @ 1..=MAX_PAGE_SIZE) => Ok(n),
            Some(_) => Err(StoreError::invalid(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            ))),
        }
    }
}

/// One page of keys: at most the page size asked for and at most
/// [`MAX_PAGE_BYTES`] (but at least one key when any is left).
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
    /// The request is invalid; the message says why (and holds no secret).
    Invalid(String),
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
    /// An invalid request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
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
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid request: {why}"),
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
            Self::Invalid(_)
            | Self::KeyLimitReached { .. }
            | Self::VersionMismatch { .. }
            | Self::NoCredits { .. } => None,
        }
    }
}

impl From<KeyGenError> for StoreError {
    fn from(e: KeyGenError) -> Self {
        Self::KeyGen(e)
    }
}

/// Checks a new key's fields that every store checks the same way.
pub(crate) fn check_new(new: &NewKey, now: SystemTime) -> Result<(), StoreError> {
    if new.service_account_id.is_empty() {
        return Err(StoreError::invalid("service_account_id is empty"));
    }
    check_limits(&new.rate_limits)?;
    check_expiry(new.expires_at, now)
}

/// Checks an update's fields that every store checks the same way.
pub(crate) fn check_update(update: &KeyUpdate, now: SystemTime) -> Result<(), StoreError> {
    if let Some(limits) = &update.rate_limits {
        check_limits(limits)?;
    }
    match update.expires_at {
        Some(expires_at) => check_expiry(expires_at, now),
        None => Ok(()),
    }
}

/// Checks a service account id and rate limits for the account, as every
/// store does.
pub(crate) fn check_account_limits(account: &str, limits: &[RateLimit]) -> Result<(), StoreError> {
    check_account(account)?;
    check_limits(limits)
}

/// A service account id names an account: it is not empty.
pub(crate) fn check_account(account: &str) -> Result<(), StoreError> {
    if account.is_empty() {
        return Err(StoreError::invalid("service_account_id is empty"));
    }
    Ok(())
}

/// The error of adding credits to a key that has none.
pub(crate) fn no_credits(id: KeyId) -> StoreError {
    StoreError::no_credits(id)
}

/// The highest version an import keeps: 2^53 - 1, which JSON numbers hold
/// exactly. Far below `i64::MAX`, so every later write of an imported key
/// still moves its version on in a SQL column (at `i64::MAX` the next
/// write overflowed: SQLite refused it, PostgreSQL failed it, and the key
/// could never be changed again).
const MAX_IMPORTED_VERSION: i64 = (1 << 53) - 1;

/// An imported key's version as a SQL column: 1 to [`MAX_IMPORTED_VERSION`].
pub(crate) fn imported_version(id: KeyId, version: Version) -> Result<i64, StoreError> {
    match i64::try_from(version.get()) {
        Ok(n @ 1..=MAX_IMPORTED_VERSION) => Ok(n),
        _ => Err(StoreError::invalid(format!(
            "key {id}: version must be between 1 and {MAX_IMPORTED_VERSION}"
        ))),
    }
}

/// Whether a write conditional on `expected` may replace a key at
/// `current`: `Err` with [`StoreError::VersionMismatch`] if not.
pub(crate) fn check_version(
    id: KeyId,
    current: Version,
    expected: Option<Version>,
) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current => Err(StoreError::VersionMismatch { id, current }),
        _ => Ok(()),
    }
}

/// Checks rate limits for a key or an account, as every store does.
pub(crate) fn check_limits(limits: &[RateLimit]) -> Result<(), StoreError> {
    check_rate_limits(limits).map_err(|e| StoreError::invalid(e.to_string()))
}

/// The latest instant a store keeps, [`LATEST_TIME_TEXT`]: the end of year
/// 9999, beyond which RFC 3339 has no four-digit year to write it in.
pub fn latest_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999)
}

/// [`latest_time`] as RFC 3339.
pub const LATEST_TIME_TEXT: &str = "9999-12-31T23:59:59.999Z";

/// The size of an export page: `limit` when it is 1 to [`MAX_EXPORT_PAGE`].
pub(crate) fn export_page_size(limit: usize) -> Result<usize, StoreError> {
    if (1..=MAX_EXPORT_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(StoreError::invalid(format!(
            "an export page holds 1 to {MAX_EXPORT_PAGE} keys"
        )))
    }
}

/// The error of importing a key whose id the store holds with another hash
/// or account.
pub(crate) fn import_conflict(id: KeyId) -> StoreError {
    StoreError::invalid(format!(
        "key {id} already exists with another secret or service account"
    ))
}

/// The error of importing a key this store revoked: revocation is final,
/// and an old export must not bring a key back.
pub(crate) fn import_revoked(id: KeyId) -> StoreError {
    StoreError::invalid(format!(
        "key {id} was revoked in this store; a revoked key is never imported again"
    ))
}

/// An expiry must lie in the future, and no later than [`latest_time`], so
/// every store can hold it and every response can show it.
pub(crate) fn check_expiry(
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> Result<(), StoreError> {
    match expires_at {
        Some(at) if at <= now => Err(StoreError::invalid("expires_at is in the past")),
        Some(at) if at > latest_time() => Err(StoreError::invalid(format!(
            "expires_at is after {LATEST_TIME_TEXT}"
        ))),
        _ => Ok(()),
    }
}

/// What a store's `verify` answers once it compared the presented key with
/// the stored hashes: the record when the current secret matched; when only
/// the secret replaced by a reissue matched, the record expiring at the end
/// of its grace (`grace_until`), and nothing from then on.
pub(crate) fn verified(
    mut record: KeyRecord,
    current: bool,
    previous: bool,
    grace_until: Option<SystemTime>,
    now: SystemTime,
) -> Option<KeyRecord> {
    if current {
        return Some(record);
    }
    match grace_until {
        Some(until) if previous && now < until => {
            record.expires_at = Some(record.expires_at.map_or(until, |at| at.min(until)));
            record.replaced_secret = true;
            Some(record)
        }
        _ => None,
    }
}

/// Whether `record`, read for the secret whose stored hash is `matched`,
/// is quarantined: its compromise says so and names that very secret.
pub(crate) fn quarantined(
    record: &KeyRecord,
    matched: &crate::hash::StoredHash,
    compromised: Option<&crate::hash::StoredHash>,
) -> bool {
    record
        .compromise
        .as_ref()
        .is_some_and(|c| c.action == LeakAction::Quarantine)
        && compromised == Some(matched)
}

/// The masked hint of a key: prefix and last four characters.
pub(crate) fn hint_of(key: &GeneratedKey) -> String {
    let text = key.expose_secret();
    let prefix = text.split('_').next().unwrap_or_default();
    let tail = text.get(text.len().saturating_sub(4)..).unwrap_or_default();
    format!("{prefix}_…{tail}")
}
