//! What a store keeps for the key lifecycle task: which keys expire soon or
//! went unused, which notices were sent, which replica runs the task, and the
//! one write that retires a key nobody uses.
//!
//! Every write here is one atomic step (a unique row, or a conditional
//! update), so replicas racing on the same store send each notice at most
//! once and never retire a key that was used meanwhile.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{KeyInfo, StoreError};
use crate::key::KeyId;
use crate::store::key_store::KeyStore;

/// A notice the lifecycle task sends about a key, recorded by the store so
/// it is sent at most once per key and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NoticeKind {
    /// The key expires soon; its window is the `expires_at` warned about.
    ExpiringSoon,
    /// The key expired; its window is the `expires_at` that passed.
    Expired,
    /// The key went unused and will be retired; its window is the last use
    /// (or, for a key never used, its creation) the notice is about.
    UnusedWarning,
}

impl NoticeKind {
    /// The name stores keep (`expiring_soon`, `expired`, `unused_warning`).
    pub const fn as_str(self) -> &'static str {
        match self {
            NoticeKind::ExpiringSoon => "expiring_soon",
            NoticeKind::Expired => "expired",
            NoticeKind::UnusedWarning => "unused_warning",
        }
    }

    /// The kind a store kept under [`as_str`](Self::as_str)'s name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::ExpiringSoon, Self::Expired, Self::UnusedWarning]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

/// A notice a store recorded as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentNotice {
    /// When it was recorded (the store's clock).
    pub sent_at: SystemTime,
    /// The date it announced, if any (for [`NoticeKind::UnusedWarning`],
    /// when the key will be retired).
    pub announced: Option<SystemTime>,
}

impl SentNotice {
    /// A notice recorded at `sent_at`, announcing `announced`.
    pub fn new(sent_at: SystemTime, announced: Option<SystemTime>) -> Self {
        Self { sent_at, announced }
    }
}

/// A store the lifecycle task can run on.
///
/// Every method reads the time from the store's own clock (never the
/// database's `now()`), so tests drive it with a manual clock.
#[async_trait]
pub trait LifecycleStore: KeyStore {
    /// The store's clock reading.
    fn now(&self) -> SystemTime;

    /// Keys whose `expires_at` is at or after `from` and before `until`, in
    /// key id order, at most `limit` (1 to
    /// [`MAX_EXPORT_PAGE`](crate::store::MAX_EXPORT_PAGE)) with ids after
    /// `after`. An empty page is the end. The SQL stores answer it from an
    /// index on the expiry, not by reading every key (the memory store
    /// scans its map).
    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError>;

    /// Keys that may be retired for disuse: `retire_when_unused`, not
    /// retired yet, and last used (or, if never used, created) before
    /// `before`; in key id order, paged like [`expiring`](Self::expiring).
    async fn unused(
        &self,
        before: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError>;

    /// Records that the notice `kind` about `window` was sent for `key`,
    /// announcing `announced`: `true` for the first call with this key, kind
    /// and window (the one caller that may send it), `false` after, and
    /// `false` for a key the store does not hold. One atomic step, whatever
    /// the number of replicas; the record survives restarts and is removed
    /// with the key (revoked, or deleted by any path). Times are kept to the
    /// microsecond, as every stored time; the store's clock gives
    /// [`SentNotice::sent_at`].
    async fn record_notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, StoreError>;

    /// The notice recorded for `key`, `kind` and `window`, if any.
    async fn notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
    ) -> Result<Option<SentNotice>, StoreError>;

    /// Retires a key for disuse: sets its `expires_at` to `at` and its
    /// `retired_unused_since` to `unused_since`, in one conditional write
    /// that happens only if the key still has `last_used_at` equal to
    /// `last_used_at`, still has `retire_when_unused`, is not retired, and
    /// has no expiry before `at`. The write moves the key's version on and
    /// is announced like an update. `None` if the key is gone or no longer
    /// qualifies; times outside 1970 to year 9999 are
    /// [`StoreError::InvalidField`]. An
    /// [`update`](KeyStore::update) that sets a new expiry (or none) clears
    /// `retired_unused_since` again.
    async fn retire_unused(
        &self,
        key: KeyId,
        last_used_at: Option<SystemTime>,
        unused_since: SystemTime,
        at: SystemTime,
    ) -> Result<Option<KeyInfo>, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `ttl` after the
    /// store's clock, if no one holds it, its holder's lease ran out, or
    /// `holder` holds it already: `true` if `holder` holds it now. One
    /// conditional write (a lease row, never a session lock, so it works
    /// through a transaction pooler).
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
}
