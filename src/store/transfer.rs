//! Moving keys between stores: a key as a store holds it (record and
//! hashes, never a secret), and the checks every store makes on import.

use std::fmt;
use std::time::SystemTime;

use super::KeyInfo;
use crate::hash::StoredHash;

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
    /// The hash of the secret a leak report named, when the key carries a
    /// [`Compromise`](crate::store::Compromise): what binds the report (and
    /// a quarantine) to that exact secret.
    pub compromised_hash: Option<StoredHash>,
}

impl StoredKey {
    /// A key with no previous secret.
    pub fn new(info: KeyInfo, hash: StoredHash) -> Self {
        Self {
            info,
            hash,
            previous: None,
            compromised_hash: None,
        }
    }

    /// Sets the previous secret's hash and the end of its grace.
    pub fn with_previous(mut self, previous: PreviousHash) -> Self {
        self.previous = Some(previous);
        self
    }

    /// Sets the hash of the secret a leak report named.
    pub fn with_compromised_hash(mut self, hash: StoredHash) -> Self {
        self.compromised_hash = Some(hash);
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
