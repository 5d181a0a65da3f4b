//! The cache's entry, and the identity the application sees: a [`Caller`]
//! is a [`KeyRecord`] and the cache's bookkeeping for it, in one allocation.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::HeaderValue;

use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::scope::ScopeSet;

/// The cache's bookkeeping for one valid key. It lives in the same
/// allocation as the key's [`Caller`], which is the cached value itself: a
/// cached key costs one allocation besides moka's own, and a hit follows one
/// pointer.
#[derive(Debug, Default)]
pub(super) struct CacheSlot {
    /// The invalidation epoch this entry has been checked against; it starts
    /// at the epoch read before the verifier was called.
    pub(super) epoch: AtomicU64,
    /// When the key was last used, for `last_used_at`.
    last_use: LastUse,
    /// The key's `RateLimit-Policy` header, rendered on first use: it
    /// depends on the record alone.
    rate_policy: OnceLock<HeaderValue>,
}

impl CacheSlot {
    pub(super) fn new(epoch: u64) -> Self {
        Self {
            epoch: AtomicU64::new(epoch),
            last_use: LastUse::default(),
            rate_policy: OnceLock::new(),
        }
    }
}

/// The newest noted use of a key, kept on its entry so that noting a use
/// takes no lock shared by all requests.
#[derive(Debug, Default)]
struct LastUse {
    /// Milliseconds since the Unix epoch of the newest noted use; 0 = none.
    ms: AtomicU64,
    /// Whether a use was noted since the last [`Caller::take_last_use`].
    pending: AtomicBool,
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
    pub(super) fn cached(record: KeyRecord, slot: CacheSlot) -> Self {
        Self(Arc::new(Identity { record, slot }))
    }

    /// The cache's bookkeeping for this key.
    pub(super) fn cache_slot(&self) -> &CacheSlot {
        &self.0.slot
    }

    /// Notes a use of this key at `ms` (milliseconds since the Unix epoch):
    /// an atomic maximum, lock-free. True when this is the first use noted
    /// since [`Caller::take_last_use`]: whoever collects uses (the usage
    /// recorder) then queues this caller, once per collection.
    pub(crate) fn note_use(&self, ms: u64) -> bool {
        let last = &self.0.slot.last_use;
        if last.ms.load(Ordering::SeqCst) < ms {
            last.ms.fetch_max(ms, Ordering::SeqCst);
        }
        // SeqCst pairs with `take_last_use`'s store(false)-then-load: either
        // it sees this use, or this call sees `pending == false` and the
        // caller is queued again.
        !last.pending.load(Ordering::SeqCst) && !last.pending.swap(true, Ordering::SeqCst)
    }

    /// The newest use noted (0: none), clearing the mark [`Caller::note_use`]
    /// tests, so the next use queues this caller again.
    pub(crate) fn take_last_use(&self) -> u64 {
        let last = &self.0.slot.last_use;
        last.pending.store(false, Ordering::SeqCst);
        last.ms.load(Ordering::SeqCst)
    }

    /// The key's `RateLimit-Policy` value, rendered by `render` once per
    /// cached key.
    pub(crate) fn rate_policy(&self, render: impl FnOnce() -> HeaderValue) -> HeaderValue {
        self.0.slot.rate_policy.get_or_init(render).clone()
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

    /// The leak report recorded on the key, if any (when, where, what the
    /// store did): a [`Notify`](crate::store::LeakAction::Notify) key keeps
    /// working and shows it here.
    pub fn compromise(&self) -> Option<&crate::record::Compromise> {
        self.0.record.compromise.as_deref()
    }

    /// The JSON object the operator attached to the key, as its text
    /// (`None`: none). Opaque to the layer, which never authorizes on it.
    pub fn metadata(&self) -> Option<&str> {
        self.0
            .record
            .metadata
            .as_ref()
            .map(crate::metadata::Metadata::as_str)
    }

    /// The key's metadata decoded as a `T` (feature `serde`): `None` when
    /// the key has none, an error when it does not fit `T`.
    ///
    /// ```
    /// # #[cfg(feature = "serde")] {
    /// use tower_api_key::{Caller, KeyRecord, Metadata};
    ///
    /// let record = KeyRecord::new("0123456789abcdef".parse().unwrap(), "sa-1")
    ///     .with_metadata(Some(Metadata::new(r#"{"plan":"pro"}"#).unwrap()));
    /// let caller = Caller::from(record);
    /// // Any `Deserialize` type: here serde_json's own.
    /// let meta: serde_json::Value = caller.metadata_as().unwrap().unwrap();
    /// assert_eq!(meta["plan"], "pro");
    /// # }
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn metadata_as<'a, T: serde::Deserialize<'a>>(
        &'a self,
    ) -> Option<Result<T, serde_json::Error>> {
        self.0.record.metadata.as_ref().map(|m| m.deserialize())
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
