//! What a verifier returns for a valid key, and the identity handed to the
//! application.
//!
//! ```
//! use tower_api_key::key::KeyId;
//! use tower_api_key::record::{Caller, KeyRecord};
//! use tower_api_key::scope::ScopeSet;
//!
//! let id: KeyId = "0123456789abcdef".parse().unwrap();
//! let record = KeyRecord::new(id, "sa-translator")
//!     .with_scopes(ScopeSet::new(["yc.ai.translate.execute"]).unwrap());
//! let caller = Caller::from(record);
//! assert_eq!(caller.service_account_id(), "sa-translator");
//! assert_eq!(caller.key_id(), id);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::CacheSlot;
use crate::key::KeyId;
use crate::scope::ScopeSet;

/// A valid key as its store knows it. Never holds secret material.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The key's public id.
    pub key_id: KeyId,
    /// The service account the key belongs to; the application applies that
    /// account's own permissions.
    pub service_account_id: Arc<str>,
    /// The key's scopes; empty for an unscoped key.
    pub scopes: ScopeSet,
    /// Free text from the key's owner.
    pub description: String,
    /// When the key was created.
    pub created_at: SystemTime,
    /// When the key stops working, if ever. Checked on every request.
    pub expires_at: Option<SystemTime>,
}

impl KeyRecord {
    /// An unscoped, non-expiring record created now.
    pub fn new(key_id: KeyId, service_account_id: impl Into<Arc<str>>) -> Self {
        Self {
            key_id,
            service_account_id: service_account_id.into(),
            scopes: ScopeSet::empty(),
            description: String::new(),
            created_at: SystemTime::now(),
            expires_at: None,
        }
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry.
    pub fn with_expires_at(mut self, expires_at: Option<SystemTime>) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the creation time.
    pub fn with_created_at(mut self, created_at: SystemTime) -> Self {
        self.created_at = created_at;
        self
    }

    /// Whether the key has expired at `now` (expiry is exclusive: a key is
    /// refused from its `expires_at` on).
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// The authenticated caller, inserted into request extensions by the
/// middleware. Cheap to clone (one `Arc`).
///
/// With the `axum` feature it is also an extractor; a tonic handler reads it
/// from `request.extensions()`. Two callers are equal when their records are.
#[derive(Clone)]
pub struct Caller(Arc<Identity>);

/// A record and the cache's bookkeeping for it, in one allocation: the
/// cache stores the [`Caller`] itself, so a cached key costs one allocation
/// and a hit follows one pointer.
struct Identity {
    record: KeyRecord,
    slot: CacheSlot,
}

impl Caller {
    /// A caller as the cache keeps it, with the cache's bookkeeping.
    pub(crate) fn cached(record: KeyRecord, slot: CacheSlot) -> Self {
        Self(Arc::new(Identity { record, slot }))
    }

    /// The cache's bookkeeping for this key (unused outside the cache).
    pub(crate) fn cache_slot(&self) -> &CacheSlot {
        &self.0.slot
    }

    /// The key's public id.
    pub fn key_id(&self) -> KeyId {
        self.0.record.key_id
    }

    /// The service account the key belongs to.
    pub fn service_account_id(&self) -> &str {
        &self.0.record.service_account_id
    }

    /// The key's scopes; empty for an unscoped key.
    pub fn scopes(&self) -> &ScopeSet {
        &self.0.record.scopes
    }

    /// When the key expires, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.0.record.expires_at
    }

    /// The whole record.
    pub fn record(&self) -> &KeyRecord {
        &self.0.record
    }
}

impl PartialEq for Caller {
    fn eq(&self, other: &Self) -> bool {
        self.0.record == other.0.record
    }
}

impl Eq for Caller {}

impl From<KeyRecord> for Caller {
    fn from(record: KeyRecord) -> Self {
        Self::cached(record, CacheSlot::default())
    }
}

impl From<Arc<KeyRecord>> for Caller {
    fn from(record: Arc<KeyRecord>) -> Self {
        Self::from(Arc::unwrap_or_clone(record))
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("key_id", &self.0.record.key_id)
            .field("service_account_id", &self.0.record.service_account_id)
            .field("scopes", &self.0.record.scopes)
            .field("expires_at", &self.0.record.expires_at)
            .finish()
    }
}
