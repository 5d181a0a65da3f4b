//! The store kit: what every key store needs besides the traits, public so
//! that a store outside this crate (the SQL stores, a Redis or DynamoDB
//! store of yours) checks, answers and pages exactly as the
//! [`MemoryStore`](crate::MemoryStore) does.
//!
//! - **Record checks**: [`check_new`], [`check_update`],
//!   [`check_account_limits`], [`check_import`], [`check_version`], and the
//!   errors [`import_conflict`] and [`import_revoked`];
//! - **Verification**: [`verified`], the decision between the current
//!   secret, the replaced one in its grace, and nothing; [`quarantined`],
//!   whether the secret read is the one a leak report quarantined;
//! - **Credits**: [`CreditState`], the one rule for leasing, giving back
//!   and adding credits, and their generations;
//! - **Pages**: [`fill_page`], [`page_token`] and [`parse_page_token`],
//!   [`export_page_size`];
//! - **New keys**: [`hint_of`], [`imported_version`];
//! - **Lifecycle**: [`check_notice_times`], [`check_retirement_times`],
//!   [`lease_end`].
//!
//! The field rules themselves are [`store::rules`](super::rules).

use std::time::{Duration, SystemTime};

pub use super::credit::CreditState;
pub use super::page_token::{page_token, parse_page_token};
use super::rules;
use super::rules::{Field, FieldError, Problem};
use super::transfer::StoredKey;
use super::LeakAction;
use super::{
    latest_time, ConflictKind, KeyInfo, KeyUpdate, NewKey, StoreError, Version, MAX_EXPORT_PAGE,
};
use crate::hash::StoredHash;
use crate::key::{GeneratedKey, KeyFormat, KeyId};
use crate::limits::{check_rate_limits, RateLimit};
use crate::record::KeyRecord;

/// A listing page cut from `keys` (in listing order, at least one more
/// than `size` when there are more): at most `size` keys. The flag says
/// whether keys are left for a next page. Stores page by count only; the
/// management API bounds its answers' bytes itself.
pub fn fill_page<E>(
    keys: impl IntoIterator<Item = Result<KeyInfo, E>>,
    size: usize,
) -> Result<(Vec<KeyInfo>, bool), E> {
    let mut page = Vec::new();
    for key in keys {
        let key = key?;
        if page.len() == size {
            return Ok((page, true));
        }
        page.push(key);
    }
    Ok((page, false))
}

/// The check of a new key's fields that every store makes the same way
/// (before it generates anything).
pub fn check_new(new: &NewKey, now: SystemTime) -> Result<(), StoreError> {
    check_account(&new.service_account_id)?;
    check_limits(&new.rate_limits)?;
    check_expiry(new.expires_at, now)
}

/// The check of an update's fields that every store makes the same way.
pub fn check_update(update: &KeyUpdate, now: SystemTime) -> Result<(), StoreError> {
    if let Some(limits) = &update.rate_limits {
        check_limits(limits)?;
    }
    match update.expires_at {
        Some(expires_at) => check_expiry(expires_at, now),
        None => Ok(()),
    }
}

/// The check of a service account id and its rate limits that every store
/// makes before it sets them.
pub fn check_account_limits(account: &str, limits: &[RateLimit]) -> Result<(), StoreError> {
    check_account(account)?;
    check_limits(limits)
}

/// The check that a service account id names an account: it is not empty.
pub fn check_account(account: &str) -> Result<(), StoreError> {
    if account.is_empty() {
        return Err(field_error(Field::ServiceAccountId, Problem::Empty));
    }
    Ok(())
}

/// The highest version an import keeps: 2^53 - 1, which JSON numbers hold
/// exactly. Far below `i64::MAX`, so every later write of an imported key
/// still moves its version on in a SQL column (at `i64::MAX` the next
/// write overflowed: SQLite refused it, PostgreSQL failed it, and the key
/// could never be changed again).
pub const MAX_IMPORTED_VERSION: i64 = (1 << 53) - 1;

/// An imported key's version as a column value: 1 to
/// [`MAX_IMPORTED_VERSION`], an error otherwise.
pub fn imported_version(id: KeyId, version: Version) -> Result<i64, StoreError> {
    match i64::try_from(version.get()) {
        Ok(n @ 1..=MAX_IMPORTED_VERSION) => Ok(n),
        _ => Err(StoreError::invalid_field(
            Some(id),
            FieldError::new(
                Field::Version,
                Problem::OutOfRange {
                    min: 1,
                    max: MAX_IMPORTED_VERSION as u64,
                },
            ),
        )),
    }
}

/// The version check of a conditional write: whether a write conditional on
/// `expected` may replace a key at `current` (`Err` with
/// [`StoreError::VersionMismatch`] if not). Run it in the step that writes.
pub fn check_version(
    id: KeyId,
    current: Version,
    expected: Option<Version>,
) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current => Err(StoreError::VersionMismatch { id, current }),
        _ => Ok(()),
    }
}

/// The check of rate limits for a key or an account that every store makes.
pub fn check_limits(limits: &[RateLimit]) -> Result<(), StoreError> {
    check_rate_limits(limits).map_err(|e| field_error(Field::RateLimits, Problem::Limits(e)))
}

/// The checks of a key before a store imports it at `now` into a store of
/// `format`: the [field rules](rules::stored_key), which are those of
/// [`KeyStore::create`](crate::KeyStore::create) (apart from an expiry in
/// the past: expired keys move too) with bounds on every imported field.
/// The error names the key id and the field, never a value or hash.
pub fn check_import(
    key: &StoredKey,
    format: &KeyFormat,
    now: SystemTime,
) -> Result<(), StoreError> {
    rules::stored_key(key, format, now)
        .map_err(|e| StoreError::invalid_field(Some(key.info.record.key_id), e))
}

/// The size of an export page: `limit` when it is 1 to [`MAX_EXPORT_PAGE`].
pub fn export_page_size(limit: usize) -> Result<usize, StoreError> {
    if (1..=MAX_EXPORT_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(StoreError::InvalidPageSize {
            max: MAX_EXPORT_PAGE,
        })
    }
}

/// The error of importing a key whose id the store holds with another hash
/// or account.
pub fn import_conflict(id: KeyId) -> StoreError {
    StoreError::conflict(id, ConflictKind::IdTaken)
}

/// The error of importing a key this store revoked: revocation is final,
/// and an old export must not bring a key back.
pub fn import_revoked(id: KeyId) -> StoreError {
    StoreError::conflict(id, ConflictKind::Revoked)
}

/// The check of an expiry: it must lie in the future, and no later than
/// [`latest_time`], so every store can hold it and every response can show
/// it.
pub fn check_expiry(expires_at: Option<SystemTime>, now: SystemTime) -> Result<(), StoreError> {
    match expires_at {
        Some(at) if at <= now => Err(field_error(Field::ExpiresAt, Problem::NotInFuture)),
        Some(at) if at > latest_time() => Err(field_error(Field::ExpiresAt, Problem::AfterLatest)),
        _ => Ok(()),
    }
}

/// The grace decision: what a store's `verify` answers once it compared the
/// presented key with the stored hashes (in constant time, every one): the record when the current secret matched; when only
/// the secret replaced by a reissue matched, the record expiring at the end
/// of its grace (`grace_until`), and nothing from then on.
pub fn verified(
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
/// is quarantined: its [`Compromise`](super::Compromise) says
/// [`LeakAction::Quarantine`] and names that very secret (`compromised`,
/// the hash the report was bound to). A secret given by a later reissue is
/// not quarantined.
pub fn quarantined(
    record: &KeyRecord,
    matched: &StoredHash,
    compromised: Option<&StoredHash>,
) -> bool {
    record
        .compromise
        .as_ref()
        .is_some_and(|c| c.action == LeakAction::Quarantine)
        && compromised == Some(matched)
}

/// The masked hint of a key: prefix and last four characters (never enough
/// to use it), as every store shows it.
pub fn hint_of(key: &GeneratedKey) -> String {
    let text = key.expose_secret();
    let prefix = text.split('_').next().unwrap_or_default();
    let tail = text.get(text.len().saturating_sub(4)..).unwrap_or_default();
    format!("{prefix}_…{tail}")
}

/// A field error not tied to one key.
fn field_error(field: Field, problem: Problem) -> StoreError {
    StoreError::invalid_field(None, FieldError::new(field, problem))
}

/// The end of a [`lease`](super::LifecycleStore::lease) of `ttl` taken at
/// `now`, at the latest [`latest_time`].
pub fn lease_end(now: SystemTime, ttl: Duration) -> SystemTime {
    now.checked_add(ttl)
        .unwrap_or_else(latest_time)
        .min(latest_time())
}

/// The times of a [`record_notice`](super::LifecycleStore::record_notice):
/// within what every store keeps (1970 to [`latest_time`]).
pub fn check_notice_times(
    key: KeyId,
    window: SystemTime,
    announced: Option<SystemTime>,
) -> Result<(), StoreError> {
    let checked = rules::stored_time(Field::NoticeWindow, window).and_then(|()| {
        announced.map_or(Ok(()), |at| rules::stored_time(Field::NoticeAnnounced, at))
    });
    checked.map_err(|e| StoreError::invalid_field(Some(key), e))
}

/// The times of a [`retire_unused`](super::LifecycleStore::retire_unused):
/// within what every store keeps (1970 to [`latest_time`]).
pub fn check_retirement_times(
    key: KeyId,
    unused_since: SystemTime,
    at: SystemTime,
) -> Result<(), StoreError> {
    rules::stored_time(Field::RetiredUnusedSince, unused_since)
        .and_then(|()| rules::stored_time(Field::ExpiresAt, at))
        .map_err(|e| StoreError::invalid_field(Some(key), e))
}
