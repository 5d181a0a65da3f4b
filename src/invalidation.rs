//! How stores tell caches that a key changed.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::key::KeyId;

/// A change a store announces to caches: which keys to re-verify.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// This key was revoked, reissued or updated: re-verify it. Prefer
    /// [`Invalidation::KeyOf`] when the key's service account is known.
    Key(KeyId),
    /// This key, of this service account, was revoked, reissued or updated:
    /// re-verify it.
    ///
    /// Naming the account lets a cache bound its bookkeeping per account: when
    /// one account's keys are invalidated in bulk, the cache re-verifies that
    /// account's cached keys rather than every cached key of every account.
    /// The account must be the key's own (a key never changes account): the
    /// invalidation may otherwise miss the key's cached entry.
    KeyOf {
        /// The key's public id.
        id: KeyId,
        /// The service account the key belongs to.
        service_account_id: Arc<str>,
    },
    /// Anything may have changed (for example, notifications may have been
    /// missed): re-verify every key.
    All,
}

impl Invalidation {
    /// [`Invalidation::KeyOf`]: key `id` of `service_account_id` changed.
    pub fn key_of(id: KeyId, service_account_id: impl Into<Arc<str>>) -> Self {
        Self::KeyOf {
            id,
            service_account_id: service_account_id.into(),
        }
    }

    /// The key this invalidation is about; `None` for [`Invalidation::All`].
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            Self::Key(id) | Self::KeyOf { id, .. } => Some(*id),
            Self::All => None,
        }
    }
}

/// Something that reacts to invalidations, typically a cache.
pub trait InvalidationListener: Send + Sync + 'static {
    /// Called synchronously from [`Invalidations::publish`].
    fn invalidate(&self, what: &Invalidation);
}

/// A synchronous fan-out of [`Invalidation`]s: how stores tell caches that
/// a key changed. Cheap to clone; clones share their subscribers.
///
/// A store publishes an [`Invalidation`] when it revokes, reissues or updates
/// a key; every cache built over that store is subscribed and has acted by the
/// time [`Invalidations::publish`] returns. A database store feeds the same
/// bus from notifications sent by other replicas.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_api_key::{Invalidation, InvalidationListener, Invalidations};
///
/// struct Count(AtomicUsize);
/// impl InvalidationListener for Count {
///     fn invalidate(&self, _: &Invalidation) {
///         self.0.fetch_add(1, Ordering::SeqCst);
///     }
/// }
///
/// let bus = Invalidations::new();
/// let count = Arc::new(Count(AtomicUsize::new(0)));
/// bus.subscribe(count.clone());
/// bus.publish(&Invalidation::All);
/// assert_eq!(count.0.load(Ordering::SeqCst), 1);
/// ```
#[derive(Clone, Default)]
pub struct Invalidations {
    // Weak: a dropped cache unsubscribes itself.
    listeners: Arc<Mutex<Vec<Weak<dyn InvalidationListener>>>>,
}

impl Invalidations {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `listener` for as long as it is alive elsewhere.
    pub fn subscribe(&self, listener: Arc<dyn InvalidationListener>) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|l| l.strong_count() > 0);
        listeners.push(Arc::downgrade(&listener));
    }

    /// Tells every live subscriber; they have all acted when this returns.
    pub fn publish(&self, what: &Invalidation) {
        let live: Vec<_> = {
            let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            listeners.retain(|l| l.strong_count() > 0);
            listeners.iter().filter_map(Weak::upgrade).collect()
        };
        for listener in live {
            listener.invalidate(what);
        }
    }
}

impl fmt::Debug for Invalidations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.listeners.lock().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("Invalidations")
            .field("subscribers", &n)
            .finish()
    }
}
