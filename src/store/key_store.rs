//! The [`KeyStore`] trait, re-exported at the crate root.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{
    CompromiseReport, Compromised, CreatedKey, Imported, KeyInfo, KeyPage, KeyUpdate, ListRequest,
    NewKey, StoreError, StoredKey, Version,
};
use crate::key::{KeyId, PresentedKey};
use crate::ledger::CreditLedger;
use crate::limits::RateLimit;
use crate::verifier::Verifier;

/// Where keys live. Every store is also a [`Verifier`] that announces
/// changes on [`Verifier::invalidations`], and the [`CreditLedger`] of its
/// keys' credits.
///
/// # Conditional writes
///
/// Every write to an existing key takes `expected`, the [`Version`] of the
/// key its caller read and checked (`None`: write whatever the version).
/// The store compares and writes in one atomic step (under its lock, or in
/// the write's own statement or transaction) and refuses with
/// [`StoreError::VersionMismatch`], writing nothing, when the key has moved
/// on. A check made on a key read earlier (may this caller grant these
/// scopes?) therefore holds for exactly the state the write replaces.
#[async_trait]
pub trait KeyStore: Verifier + CreditLedger {
    /// Creates a key; the only time its secret is returned. Refused with
    /// [`StoreError::KeyLimitReached`](crate::store::StoreError::KeyLimitReached) when the account already holds the
    /// store's most keys per account ([`DEFAULT_MAX_KEYS_PER_ACCOUNT`](crate::store::DEFAULT_MAX_KEYS_PER_ACCOUNT) unless
    /// configured), counting every key that exists, expired ones included.
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError>;

    /// One key, if it exists.
    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError>;

    /// A service account's keys, oldest first: at most the page size asked
    /// for. A key the store cannot read is skipped with a warning naming its
    /// id, so one corrupted row never hides the account's other keys.
    /// Refused with [`StoreError::InvalidPageSize`] or
    /// [`StoreError::InvalidPageToken`].
    async fn list(
        &self,
        service_account_id: &str,
        page: ListRequest,
    ) -> Result<KeyPage, StoreError>;

    /// Changes description, scopes, expiry, rate limits or credits, if the
    /// key is at `expected` ([conditional writes](KeyStore#conditional-writes));
    /// `None` if the key does not exist.
    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError>;

    /// Deletes a key, if it is at `expected`; it stops working at once.
    /// `false` if it did not exist. The store remembers the id, so
    /// [`import`](KeyStore::import) never brings the key back.
    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError>;

    /// Gives the key a new secret with the same account, scopes and expiry,
    /// if it is at `expected`. The old secret keeps working for `grace`
    /// (zero: stops at once).
    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError>;

    /// Adds `amount` credits to a key that has credits (never past
    /// [`MAX_CREDITS`](crate::limits::MAX_CREDITS)), if it is at
    /// `expected`; the generation stays, so leased credits may still be
    /// given back. `None` if the key does not exist;
    /// [`StoreError::NoCredits`] if it has no credits.
    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError>;

    /// [`add_credits`](KeyStore::add_credits), refused with
    /// [`StoreError::KeyLocked`] when the operator locked the key
    /// ([`KeyRecord::operator_locked`](crate::KeyRecord::operator_locked)),
    /// checked in the same atomic step as the write: what a management
    /// router that may not change locked keys calls, so that a lock landing
    /// just before the write refuses it, whatever the version.
    ///
    /// The default reads the key and adds conditional on the version read:
    /// atomic, but a key that keeps changing answers
    /// [`StoreError::VersionMismatch`]. The stores of this crate and of the
    /// SQL crates check the lock under their own lock or transaction
    /// instead, so only a lock refuses the write.
    async fn add_credits_unless_locked(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let Some(current) = self.get(id).await? else {
            return Ok(None);
        };
        if expected.is_some_and(|expected| expected != current.version) {
            return Err(StoreError::version_mismatch(id, current.version));
        }
        if current.record.operator_locked {
            return Err(StoreError::key_locked(id));
        }
        self.add_credits(id, amount, Some(current.version)).await
    }

    /// The rate limits shared by all keys of a service account (empty: none).
    async fn account_rate_limits(
        &self,
        service_account_id: &str,
    ) -> Result<Vec<RateLimit>, StoreError>;

    /// Sets (or with an empty list, removes) the rate limits shared by all
    /// keys of a service account, and announces a change of each of its keys
    /// so that caches pick the new limits up.
    async fn set_account_rate_limits(
        &self,
        service_account_id: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError>;

    /// Records uses, moving each key's `last_used_at` forward only.
    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError>;

    /// Every key in the store with its hashes (never a secret), in key id
    /// order: at most `limit` keys (1 to
    /// [`MAX_EXPORT_PAGE`](crate::store::MAX_EXPORT_PAGE)) with ids after
    /// `after`. An empty page is the end. A key the store cannot read is
    /// skipped with a warning naming its id ([`unreadable`](KeyStore::unreadable)
    /// lists them), so one corrupted row never stops an export.
    async fn export(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError>;

    /// Adds a key taken from another store's [`export`](KeyStore::export),
    /// keeping its id, hashes, times and hint, so its secret keeps working.
    ///
    /// Idempotent: a key already here with the same hash and account is
    /// [`Imported::AlreadyPresent`] (only `last_used_at` moves, forward).
    /// Refused with [`StoreError::InvalidField`] naming the key id and the
    /// field when a field breaks the [field rules](crate::store::rules::stored_key)
    /// (those of create, with bounds on times, the hint and the grace); with
    /// [`StoreError::Conflict`] naming the key id (never a hash) when the id
    /// exists with another hash or account
    /// ([`ConflictKind::IdTaken`](crate::store::ConflictKind::IdTaken)), or
    /// when this store revoked that id
    /// ([`ConflictKind::Revoked`](crate::store::ConflictKind::Revoked)); with
    /// [`StoreError::KeyLimitReached`](crate::store::StoreError::KeyLimitReached)
    /// past the per-account limit.
    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError>;

    /// The ids this store revoked (or took revocations of with
    /// [`import_revoked`](KeyStore::import_revoked)), in key id order: at
    /// most `limit` (1 to [`MAX_EXPORT_PAGE`](crate::store::MAX_EXPORT_PAGE))
    /// after `after`. An empty page is the end. What an export carries so
    /// that a key revoked here is never valid again where the export goes.
    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError>;

    /// Takes a revocation from another store's
    /// [`export_revoked`](KeyStore::export_revoked): the id is recorded as
    /// revoked, so [`import`](KeyStore::import) refuses it from now on, and
    /// a key held with that id is revoked as by [`revoke`](KeyStore::revoke)
    /// (`true`). Idempotent.
    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError>;

    /// The ids of keys this store holds but cannot read (rows changed
    /// outside the library), in key id order, at most
    /// [`MAX_EXPORT_PAGE`](crate::store::MAX_EXPORT_PAGE) of them: the keys
    /// [`list`](KeyStore::list) and [`export`](KeyStore::export) skip (with a
    /// warning naming each). An id that is not even a key id is shown by its
    /// length only. Reads the whole store. A store that cannot hold an
    /// unreadable key keeps this default: none.
    async fn unreadable(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Records a leak report of `key`'s exact secret and acts on it, in one
    /// atomic step: the secret is compared with the key's current and
    /// previous hashes, and the [`Compromise`](crate::store::Compromise) is
    /// written (or, for [`LeakAction::Revoke`](crate::store::LeakAction),
    /// the key revoked as by [`revoke`](KeyStore::revoke)) only if the key
    /// still holds that secret and that secret was not reported before.
    ///
    /// - [`Compromised::Acted`]: the first report of this secret. The
    ///   compromise is on the key (and its version moves on); a
    ///   quarantine binds to the reported secret only, so a secret given by
    ///   a later reissue is not quarantined. The change is announced on
    ///   [`invalidations`](crate::Verifier::invalidations), so caches stop
    ///   admitting a quarantined or revoked secret.
    /// - [`Compromised::AlreadyReported`], [`Compromised::AlreadyRevoked`]:
    ///   a replay (GitHub resends, forks report the same token): nothing
    ///   changes.
    /// - [`Compromised::Unknown`]: no key here has this secret.
    ///
    /// A store that cannot record reports keeps this default, which refuses
    /// with [`StoreError::Backend`] and changes nothing.
    async fn record_compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        let _ = (key, report);
        Err(StoreError::backend(
            "this key store does not record leak reports",
        ))
    }
}
