//! The cache's entry.

use std::sync::atomic::AtomicU64;

use crate::usage::UsageSlot;

/// The cache's bookkeeping for one valid key. It lives in the same
/// allocation as the key's [`Caller`], which is the cached value itself: a
/// cached key costs one allocation besides moka's own, and a hit follows one
/// pointer.
#[derive(Debug, Default)]
pub(crate) struct CacheSlot {
    /// The invalidation epoch this entry has been checked against; it starts
    /// at the epoch read before the verifier was called.
    pub(super) epoch: AtomicU64,
    pub(crate) usage: UsageSlot,
}

impl CacheSlot {
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch: AtomicU64::new(epoch),
            usage: UsageSlot::default(),
        }
    }
}
