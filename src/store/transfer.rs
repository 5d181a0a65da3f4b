//! Moving keys between stores: a key as a store holds it (record and
//! hashes, never a secret), and the checks every store makes on import.

use std::fmt;
use std::time::SystemTime;

use super::{latest_time, KeyInfo, StoreError, LATEST_TIME_TEXT};
use crate::hash::StoredHash;
use crate::limits::{check_rate_limits, MAX_CREDITS};

/// Most keys one [`KeyStore::export`](crate::KeyStore::export) page returns.
pub const MAX_EXPORT_PAGE: usize = 1000;

/// A key as a store holds it: what [`KeyStore::export`](crate::KeyStore::export)
/// returns and [`KeyStore::import`](crate::KeyStore::import) takes, so a
/// deployment can move its keys to another store and every key keeps
/// working. Holds hashes only: nothing here gives back a key.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredKey {
    /// The record, `last_used_at` and the hint.
    pub info: KeyInfo,
    /// The hash of the current secret.
    pub hash: StoredHash,
    /// The secret replaced by a reissue with grace, if it is still kept.
    pub previous: Option<PreviousHash>,
}

impl StoredKey {
    /// A key with no previous secret.
    pub fn new(info: KeyInfo, hash: StoredHash) -> Self {
        Self {
            info,
            hash,
            previous: None,
        }
    }

    /// Sets the previous secret's hash and the end of its grace.
    pub fn with_previous(mut self, previous: PreviousHash) -> Self {
        self.previous = Some(previous);
        self
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are not secrets, but a log needs only which key this is.
        f.debug_struct("StoredKey")
            .field("key_id", &self.info.record.key_id)
            .field("service_account_id", &self.info.record.service_account_id)
            .field("scheme", &self.hash.scheme())
            .finish_non_exhaustive()
    }
}

/// The hash of a secret replaced by a reissue with grace: accepted until
/// `valid_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreviousHash {
    /// The old secret's hash.
    pub hash: StoredHash,
    /// The end of the grace period.
    pub valid_until: SystemTime,
}

impl PreviousHash {
    /// The old secret's hash, accepted until `valid_until`.
    pub fn new(hash: StoredHash, valid_until: SystemTime) -> Self {
        Self { hash, valid_until }
    }
}

/// What [`KeyStore::import`](crate::KeyStore::import) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Imported {
    /// The key was not in the store and now is.
    Added,
    /// The store already held this key with the same hash and account:
    /// nothing changed but `last_used_at`, which moves forward only.
    AlreadyPresent,
}

/// The checks every store makes before importing `key`: fields a store can
/// hold, and that [`KeyStore::create`](crate::KeyStore::create) would have
/// accepted (apart from an expiry in the past: expired keys move too).
/// Errors name the key id, never a hash.
pub(crate) fn check_import(key: &StoredKey) -> Result<(), StoreError> {
    let record = &key.info.record;
    let id = record.key_id;
    let refuse = |why: &str| Err(StoreError::invalid(format!("key {id}: {why}")));
    if record.service_account_id.is_empty() {
        return refuse("service_account_id is empty");
    }
    // PostgreSQL text cannot hold NUL: refused by every store, so an export
    // moves anywhere or nowhere.
    let texts = [
        ("service_account_id", &*record.service_account_id),
        ("description", record.description.as_str()),
        ("hint", key.info.hint.as_str()),
    ];
    if let Some((field, _)) = texts.iter().find(|(_, text)| text.contains('\0')) {
        return refuse(&format!("{field} holds a NUL character"));
    }
    let late = |t: Option<SystemTime>| t.is_some_and(|t| t > latest_time());
    let early = |t: Option<SystemTime>| t.is_some_and(|t| t < earliest_time());
    let times = [
        Some(record.created_at),
        record.expires_at,
        key.info.last_used_at,
        key.previous.map(|p| p.valid_until),
    ];
    if times.iter().any(|t| late(*t)) {
        return refuse(&format!("a time is after {LATEST_TIME_TEXT}"));
    }
    if times.iter().any(|t| early(*t)) {
        return refuse("a time is before 0001-01-01T00:00:00Z");
    }
    if key.previous.is_some_and(|p| p.hash == key.hash) {
        return refuse("the previous hash is the current one");
    }
    if let Err(e) = check_rate_limits(&record.rate_limits) {
        return refuse(&e.to_string());
    }
    if let Some(credits) = &record.credits {
        let refill = credits.refill().map_or(0, |r| r.amount());
        if credits.remaining() > MAX_CREDITS || refill > MAX_CREDITS {
            return refuse(&format!("credits are at most {MAX_CREDITS}"));
        }
    }
    Ok(())
}

/// The earliest instant a store keeps: the start of year 1.
fn earliest_time() -> SystemTime {
    SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(62_135_596_800)
}
