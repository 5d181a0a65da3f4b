//! The in-memory store: for tests, examples and single-process services.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::kit::{
    check_account, check_account_limits, check_import, check_new, check_notice_times,
    check_retirement_times, check_update, check_version, export_page_size, fill_page, hint_of,
    import_conflict, import_revoked, imported_version, lease_end, page_token, parse_page_token,
    quarantined, verified, CreditState,
};
use super::{
    CompromiseReport, Compromised, CreatedKey, Imported, KeyInfo, KeyPage, KeyStore, KeyUpdate,
    LifecycleStore, ListRequest, NewKey, NoticeKind, PreviousHash, SentNotice, StoreError,
    StoredKey, Version, DEFAULT_MAX_KEYS_PER_ACCOUNT,
};
use crate::clock::{Clock, SystemClock};
use crate::hash::{KeyHasher, StoredHash};
use crate::invalidation::{Invalidation, Invalidations};
use crate::key::{KeyFormat, KeyId, PresentedKey};
use crate::ledger::CreditLedger;
use crate::limits::{CreditLease, RateLimit};
use crate::record::{KeyRecord, LeakAction};
use crate::verifier::{Verifier, VerifierError};

/// Keys in a process-local map. Cheap to clone: clones share the keys.
///
/// Holds only hashes of keys, like any store. A revoke, reissue, update or
/// [`add_credits`](KeyStore::add_credits) is announced on
/// [`Verifier::invalidations`] before the call returns, and new account
/// limits as a change of each of the account's keys. Credit leases take the
/// store's write lock, so concurrent leases never grant a credit twice.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    format: KeyFormat,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    max_keys_per_account: usize,
    keys: RwLock<Keys>,
    invalidations: Invalidations,
}

/// The keys by id, and each account's keys in listing order, so a page is a
/// range read rather than a sort of every key. Both change together, under
/// the store's write lock.
#[derive(Default)]
struct Keys {
    /// In key id order, which is also the export order.
    by_id: BTreeMap<KeyId, Stored>,
    by_account: HashMap<String, BTreeSet<(SystemTime, KeyId)>>,
    /// Ids of revoked keys: an import never brings them back.
    revoked: HashSet<KeyId>,
    /// The rate limits of service accounts that have any.
    account_limits: HashMap<String, Vec<RateLimit>>,
    /// The lifecycle notices recorded for each key, removed with the key.
    notices: HashMap<KeyId, HashMap<(NoticeKind, SystemTime), SentNotice>>,
    /// The lifecycle leases: each name's holder and the end of its lease.
    leases: HashMap<String, (String, SystemTime)>,
}

impl Keys {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Keys `account` holds, expired ones included.
    fn count(&self, account: &str) -> usize {
        self.by_account.get(account).map_or(0, BTreeSet::len)
    }

    fn get(&self, id: &KeyId) -> Option<&Stored> {
        self.by_id.get(id)
    }

    /// For changes that keep the account and the creation time (the
    /// listing position).
    fn get_mut(&mut self, id: &KeyId) -> Option<&mut Stored> {
        self.by_id.get_mut(id)
    }

    fn contains_key(&self, id: &KeyId) -> bool {
        self.by_id.contains_key(id)
    }

    fn insert(&mut self, id: KeyId, stored: Stored) {
        self.by_account
            .entry(stored.record.service_account_id.to_string())
            .or_default()
            .insert((stored.record.created_at, id));
        self.by_id.insert(id, stored);
    }

    /// The rate limits of `account` (empty: none).
    fn account_limits(&self, account: &str) -> &[RateLimit] {
        self.account_limits.get(account).map_or(&[], Vec::as_slice)
    }

    /// `stored`'s record as the store answers it: with its credits and its
    /// account's limits.
    fn record(&self, stored: &Stored) -> KeyRecord {
        let mut record = stored.record.clone();
        record.credits = stored.credits.map(|c| c.credits);
        record.account_rate_limits = self.account_limits(&record.service_account_id).to_vec();
        record.quarantined = quarantined(&record, &stored.hash, stored.compromised_hash.as_ref());
        record
    }

    fn info(&self, stored: &Stored) -> KeyInfo {
        KeyInfo {
            record: self.record(stored),
            last_used_at: stored.last_used_at,
            hint: stored.hint.clone(),
            version: stored.version,
        }
    }

    /// The key as exported: its own limits and credits travel with it, its
    /// account's limits do not.
    fn export(&self, stored: &Stored) -> StoredKey {
        let mut info = self.info(stored);
        info.record.account_rate_limits = Vec::new();
        StoredKey {
            info,
            hash: stored.hash,
            previous: stored
                .previous
                .map(|(hash, until)| PreviousHash::new(hash, until)),
            compromised_hash: stored.compromised_hash,
        }
    }

    fn remove(&mut self, id: &KeyId) -> Option<Stored> {
        let stored = self.by_id.remove(id)?;
        self.notices.remove(id);
        let account = &*stored.record.service_account_id;
        if let Some(listing) = self.by_account.get_mut(account) {
            listing.remove(&(stored.record.created_at, *id));
            if listing.is_empty() {
                self.by_account.remove(account);
            }
        }
        Some(stored)
    }
}

struct Stored {
    /// The record with the key's own fields; its credits and account limits
    /// live in `credits` and [`Keys::account_limits`] ([`Keys::record`]).
    record: KeyRecord,
    hash: StoredHash,
    /// The secret replaced by a reissue, accepted until the instant given.
    previous: Option<(StoredHash, SystemTime)>,
    last_used_at: Option<SystemTime>,
    hint: String,
    credits: Option<CreditState>,
    /// The generation of credits removed by an update, so credits set again
    /// start a later one (a lease of the old never comes back).
    removed_generation: u64,
    version: Version,
    /// The hash of the secret a leak report named (with
    /// `record.compromise`).
    compromised_hash: Option<StoredHash>,
}

/// Settings of a [`MemoryStore`].
#[derive(Default)]
#[must_use]
pub struct MemoryStoreBuilder {
    format: Option<KeyFormat>,
    hasher: Option<KeyHasher>,
    clock: Option<Arc<dyn Clock>>,
    max_keys_per_account: Option<usize>,
}

impl MemoryStoreBuilder {
    /// The key format (default prefix `tak`).
    pub fn format(mut self, format: KeyFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// How keys are hashed (default plain SHA-256).
    pub fn hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = Some(hasher);
        self
    }

    /// The clock for creation times, expiry checks and grace periods.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The most keys one service account may hold (default
    /// [`DEFAULT_MAX_KEYS_PER_ACCOUNT`], 1,000), expired keys included; a
    /// create past it fails with [`StoreError::KeyLimitReached`]. At least 1.
    pub fn max_keys_per_account(mut self, limit: usize) -> Self {
        self.max_keys_per_account = Some(limit.max(1));
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                format: self.format.unwrap_or_default(),
                hasher: self.hasher.unwrap_or_default(),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                max_keys_per_account: self
                    .max_keys_per_account
                    .unwrap_or(DEFAULT_MAX_KEYS_PER_ACCOUNT),
                keys: RwLock::new(Keys::default()),
                invalidations: Invalidations::new(),
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("format", &self.inner.format)
            .field("keys", &self.read().len())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for other settings.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The format of the keys this store issues: what
    /// [`Verifier::key_format`] returns, without the `Option`.
    pub fn format(&self) -> KeyFormat {
        self.inner.format
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.inner.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.inner.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces that key `id` is gone if `removed` holds it; whether it did.
    fn announce_removed(&self, id: KeyId, removed: Option<&Stored>) -> bool {
        let Some(gone) = removed else {
            return false;
        };
        let account = gone.record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
        true
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    fn hash_of(&self, key: &crate::key::GeneratedKey) -> Result<StoredHash, StoreError> {
        let presented = self
            .inner
            .format
            .parse(key.expose_secret())
            .map_err(|_| StoreError::backend("generated key does not parse"))?;
        Ok(self.inner.hasher.hash(&presented))
    }
}

#[async_trait]
impl Verifier for MemoryStore {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        // The same hashing and comparisons whether or not the id exists, and
        // whatever scheme its hashes were made with: the time taken does not
        // tell which key ids exist.
        let candidates = self.inner.hasher.candidates(key);
        let keys = self.read();
        let stored = keys.get(&key.id());
        let current = candidates.matches(stored.map(|s| &s.hash));
        let previous = candidates.matches(stored.and_then(|s| s.previous.as_ref().map(|(h, _)| h)));
        let Some(stored) = stored else {
            return Ok(None);
        };
        if !current && !previous {
            return Ok(None);
        }
        let grace_until = stored.previous.map(|(_, until)| until);
        let mut record = keys.record(stored);
        if !current {
            if let Some((hash, _)) = &stored.previous {
                record.quarantined = quarantined(&record, hash, stored.compromised_hash.as_ref());
            }
        }
        Ok(verified(record, current, previous, grace_until, self.now()))
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        Some(&self.inner.invalidations)
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(self.inner.format)
    }
}

#[async_trait]
impl CreditLedger for MemoryStore {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        let mut keys = self.write();
        Ok(keys
            .get_mut(&id)
            .and_then(|stored| stored.credits.as_mut())
            .map(|state| state.lease(want, now)))
    }

    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError> {
        let mut keys = self.write();
        if let Some(state) = keys.get_mut(&id).and_then(|s| s.credits.as_mut()) {
            state.give_back(generation, amount);
        }
        Ok(())
    }
}

impl MemoryStore {
    /// Adds credits to key `id` if it is at `expected`, and unless
    /// `unless_locked` and the operator locked it, under one write lock.
    fn credit(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
        unless_locked: bool,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let info = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&id) else {
                return Ok(None);
            };
            check_version(id, stored.version, expected)?;
            if unless_locked && stored.record.operator_locked {
                return Err(StoreError::key_locked(id));
            }
            let Some(state) = stored.credits.as_mut() else {
                return Err(StoreError::no_credits(id));
            };
            state.add(amount);
            stored.version = stored.version.next();
            let stored = keys
                .get(&id)
                .ok_or_else(|| StoreError::backend("key vanished"))?;
            keys.info(stored)
        };
        // Caches re-read the count.
        let account = info.record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
        Ok(Some(info))
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        let now = self.now();
        check_new(&new, now)?;
        let key = self.inner.format.generate()?;
        let record = KeyRecord::new(key.id(), new.service_account_id)
            .with_scopes(new.scopes)
            .with_description(new.description)
            .with_expires_at(new.expires_at)
            .with_rate_limits(new.rate_limits)
            .with_allowed_networks(new.allowed_networks)
            .with_metadata(new.metadata)
            .with_operator_locked(new.operator_locked)
            .with_retire_when_unused(new.retire_when_unused)
            .with_created_at(now);
        let stored = Stored {
            record,
            hash: self.hash_of(&key)?,
            previous: None,
            last_used_at: None,
            hint: hint_of(&key),
            credits: new.credits.map(|c| CreditState::set(c, now, 0)),
            removed_generation: 0,
            version: Version::FIRST,
            compromised_hash: None,
        };
        let mut keys = self.write();
        // Counted under the write lock, so concurrent creates cannot overshoot.
        let limit = self.inner.max_keys_per_account;
        if keys.count(&stored.record.service_account_id) >= limit {
            return Err(StoreError::KeyLimitReached { limit });
        }
        if keys.contains_key(&key.id()) {
            // 95 random bits make this practically impossible; never overwrite.
            return Err(StoreError::backend("key id collision"));
        }
        let record = keys.record(&stored);
        keys.insert(key.id(), stored);
        Ok(CreatedKey {
            record,
            version: Version::FIRST,
            key,
        })
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        let keys = self.read();
        Ok(keys.get(&id).map(|s| keys.info(s)))
    }

    async fn list(
        &self,
        service_account_id: &str,
        page: ListRequest,
    ) -> Result<KeyPage, StoreError> {
        let size = page.size()?;
        let after = match &page.page_token {
            None => None,
            Some(token) => Some(parse_page_token(token).ok_or(StoreError::InvalidPageToken)?),
        };
        let unused_before = page.unused_before(self.now());
        let keys = self.read();
        let Some(mine) = keys.by_account.get(service_account_id) else {
            return Ok(KeyPage {
                keys: Vec::new(),
                next_page_token: None,
            });
        };
        // The token is a position in the listing order, so it stays valid when
        // the key it was taken from is revoked between pages.
        let from = match after {
            None => Bound::Unbounded,
            Some(after) => Bound::Excluded(after),
        };
        let rest = mine
            .range((from, Bound::Unbounded))
            .filter_map(|(_, id)| keys.get(id))
            .filter(|s| ListRequest::keeps(unused_before, s.last_used_at))
            .map(|s| Ok::<_, StoreError>(keys.info(s)));
        let (page, more) = fill_page(rest, size)?;
        let next_page_token = more
            .then(|| page.last().map(|k| page_token(&k.record)))
            .flatten();
        Ok(KeyPage {
            keys: page,
            next_page_token,
        })
    }

    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let now = self.now();
        check_update(&update, now)?;
        let info = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&id) else {
                return Ok(None);
            };
            check_version(id, stored.version, expected)?;
            if !update.is_empty() {
                stored.version = stored.version.next();
            }
            if let Some(description) = update.description {
                stored.record.description = description;
            }
            if let Some(scopes) = update.scopes {
                stored.record.scopes = scopes;
            }
            if let Some(expires_at) = update.expires_at {
                // A new expiry revives a key retired for disuse.
                stored.record.expires_at = expires_at;
                stored.record.retired_unused_since = None;
            }
            if let Some(retire) = update.retire_when_unused {
                stored.record.retire_when_unused = retire;
            }
            if let Some(limits) = update.rate_limits {
                stored.record.rate_limits = limits;
            }
            if let Some(networks) = update.allowed_networks {
                stored.record.allowed_networks = networks;
            }
            if let Some(metadata) = update.metadata {
                stored.record.metadata = metadata;
            }
            if let Some(locked) = update.operator_locked {
                stored.record.operator_locked = locked;
            }
            if let Some(credits) = update.credits {
                // A new setting (or none) starts a new generation: credits
                // leased under the old one are not given back.
                let generation = stored
                    .credits
                    .map_or(stored.removed_generation, |c| c.generation)
                    .saturating_add(1);
                stored.removed_generation = generation;
                stored.credits = credits.map(|c| CreditState::set(c, now, generation));
            }
            let stored = keys
                .get(&id)
                .ok_or_else(|| StoreError::backend("key vanished"))?;
            keys.info(stored)
        };
        let account = info.record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
        Ok(Some(info))
    }

    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        let removed = {
            let mut keys = self.write();
            if let Some(stored) = keys.get(&id) {
                check_version(id, stored.version, expected)?;
            }
            let removed = keys.remove(&id);
            if removed.is_some() {
                keys.revoked.insert(id);
            }
            removed
        };
        Ok(self.announce_removed(id, removed.as_ref()))
    }

    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError> {
        let key = self.inner.format.generate_for(id)?;
        let hash = self.hash_of(&key)?;
        let (record, version) = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&id) else {
                return Ok(None);
            };
            check_version(id, stored.version, expected)?;
            stored.version = stored.version.next();
            let old = std::mem::replace(&mut stored.hash, hash);
            // A grace period past year 9999 is simply "forever".
            let forever = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
            let until = self
                .now()
                .checked_add(grace)
                .unwrap_or(forever)
                .min(forever);
            stored.previous = (!grace.is_zero()).then_some((old, until));
            stored.hint = hint_of(&key);
            let stored = keys
                .get(&id)
                .ok_or_else(|| StoreError::backend("key vanished"))?;
            (keys.record(stored), stored.version)
        };
        let account = record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
        Ok(Some(CreatedKey {
            record,
            version,
            key,
        }))
    }

    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.credit(id, amount, expected, false)
    }

    async fn add_credits_unless_locked(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.credit(id, amount, expected, true)
    }

    async fn account_rate_limits(
        &self,
        service_account_id: &str,
    ) -> Result<Vec<RateLimit>, StoreError> {
        check_account(service_account_id)?;
        Ok(self.read().account_limits(service_account_id).to_vec())
    }

    async fn set_account_rate_limits(
        &self,
        service_account_id: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        check_account_limits(service_account_id, &limits)?;
        let ids: Vec<KeyId> = {
            let mut keys = self.write();
            if limits.is_empty() {
                keys.account_limits.remove(service_account_id);
            } else {
                keys.account_limits
                    .insert(service_account_id.to_owned(), limits);
            }
            keys.by_account
                .get(service_account_id)
                .map(|listing| listing.iter().map(|(_, id)| *id).collect())
                .unwrap_or_default()
        };
        let account: Arc<str> = service_account_id.into();
        for id in ids {
            self.inner
                .invalidations
                .publish(&Invalidation::key_of(id, account.clone()));
        }
        Ok(())
    }

    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        let mut keys = self.write();
        for (id, at) in uses {
            if let Some(stored) = keys.get_mut(id) {
                // Forward only: a late batch never moves the time back.
                stored.last_used_at = Some(stored.last_used_at.map_or(*at, |t| t.max(*at)));
            }
        }
        Ok(())
    }

    async fn export(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        let limit = export_page_size(limit)?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let keys = self.read();
        Ok(keys
            .by_id
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(_, stored)| keys.export(stored))
            .collect())
    }

    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        let now = self.now();
        check_import(&key, &self.inner.format, now)?;
        imported_version(key.info.record.key_id, key.info.version)?;
        let id = key.info.record.key_id;
        let mut keys = self.write();
        if keys.revoked.contains(&id) {
            return Err(import_revoked(id));
        }
        if let Some(stored) = keys.get_mut(&id) {
            let same = stored.hash == key.hash
                && stored.record.service_account_id == key.info.record.service_account_id;
            if !same {
                return Err(import_conflict(id));
            }
            if let Some(at) = key.info.last_used_at {
                stored.last_used_at = Some(stored.last_used_at.map_or(at, |t| t.max(at)));
            }
            return Ok(Imported::AlreadyPresent);
        }
        let limit = self.inner.max_keys_per_account;
        if keys.count(&key.info.record.service_account_id) >= limit {
            return Err(StoreError::KeyLimitReached { limit });
        }
        let mut record = key.info.record;
        record.quarantined = false;
        // The credits start a generation here; the account's limits are
        // this store's own, never an import's.
        let credits = record.credits.take().map(|c| CreditState::set(c, now, 0));
        record.account_rate_limits = Vec::new();
        keys.insert(
            id,
            Stored {
                record,
                hash: key.hash,
                previous: key.previous.map(|p| (p.hash, p.valid_until)),
                last_used_at: key.info.last_used_at,
                hint: key.info.hint,
                credits,
                removed_generation: 0,
                version: key.info.version,
                compromised_hash: key.compromised_hash,
            },
        );
        Ok(Imported::Added)
    }

    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        let limit = export_page_size(limit)?;
        let keys = self.read();
        let mut ids: Vec<KeyId> = keys
            .revoked
            .iter()
            .filter(|id| after.is_none_or(|after| **id > after))
            .copied()
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids)
    }

    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        let removed = {
            let mut keys = self.write();
            keys.revoked.insert(id);
            keys.remove(&id)
        };
        Ok(self.announce_removed(id, removed.as_ref()))
    }

    async fn record_compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        // Hashed before the lock; compared, checked and written under it.
        let candidates = self.inner.hasher.candidates(key);
        let now = self.now();
        let id = key.id();
        let (info, removed) = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&id) else {
                let revoked = keys.revoked.contains(&id);
                return Ok(if revoked {
                    Compromised::AlreadyRevoked
                } else {
                    Compromised::Unknown
                });
            };
            let matched = if candidates.matches(Some(&stored.hash)) {
                stored.hash
            } else {
                match stored.previous {
                    Some((hash, until)) if now < until && candidates.matches(Some(&hash)) => hash,
                    _ => return Ok(Compromised::Unknown),
                }
            };
            if stored.compromised_hash == Some(matched) {
                return Ok(Compromised::AlreadyReported);
            }
            stored.record.compromise = Some(Box::new(report.at(now)));
            stored.compromised_hash = Some(matched);
            stored.version = stored.version.next();
            let stored = keys
                .get(&id)
                .ok_or_else(|| StoreError::backend("key vanished"))?;
            let info = keys.info(stored);
            let removed = if report.action == LeakAction::Revoke {
                keys.revoked.insert(id);
                keys.remove(&id)
            } else {
                None
            };
            (info, removed)
        };
        if !self.announce_removed(id, removed.as_ref()) {
            let account = info.record.service_account_id.clone();
            self.inner
                .invalidations
                .publish(&Invalidation::key_of(id, account));
        }
        Ok(Compromised::Acted {
            key: Box::new(info),
        })
    }
}

/// The page of keys after `after` in key id order that `keep`, at most
/// `limit` (1 to [`MAX_EXPORT_PAGE`](super::MAX_EXPORT_PAGE)).
fn lifecycle_page(
    keys: &Keys,
    after: Option<KeyId>,
    limit: usize,
    keep: impl Fn(&Stored) -> bool,
) -> Result<Vec<KeyInfo>, StoreError> {
    let limit = export_page_size(limit)?;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    // A scan in id order: the memory store keeps no expiry index, as its
    // listings keep none by last use (a process-local map of bounded size).
    Ok(keys
        .by_id
        .range((from, Bound::Unbounded))
        .map(|(_, stored)| stored)
        .filter(|stored| keep(stored))
        .take(limit)
        .map(|stored| keys.info(stored))
        .collect())
}

#[async_trait]
impl LifecycleStore for MemoryStore {
    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let keys = self.read();
        lifecycle_page(&keys, after, limit, |stored| {
            stored
                .record
                .expires_at
                .is_some_and(|at| from <= at && at < until)
        })
    }

    async fn unused(
        &self,
        before: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let keys = self.read();
        lifecycle_page(&keys, after, limit, |stored| {
            stored.record.retire_when_unused
                && stored.record.retired_unused_since.is_none()
                && stored.last_used_at.unwrap_or(stored.record.created_at) < before
        })
    }

    async fn record_notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        check_notice_times(key, window, announced)?;
        let now = self.now();
        let mut keys = self.write();
        // A key that is gone gets no notice (it would outlive the key).
        if !keys.contains_key(&key) {
            return Ok(false);
        }
        let sent = keys.notices.entry(key).or_default();
        match sent.entry((kind, window)) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(SentNotice::new(now, announced));
                Ok(true)
            }
        }
    }

    async fn notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
    ) -> Result<Option<SentNotice>, StoreError> {
        let keys = self.read();
        Ok(keys
            .notices
            .get(&key)
            .and_then(|sent| sent.get(&(kind, window)))
            .copied())
    }

    async fn retire_unused(
        &self,
        key: KeyId,
        last_used_at: Option<SystemTime>,
        unused_since: SystemTime,
        at: SystemTime,
    ) -> Result<Option<KeyInfo>, StoreError> {
        check_retirement_times(key, unused_since, at)?;
        let info = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&key) else {
                return Ok(None);
            };
            // Checked and written under the one write lock: a use recorded
            // meanwhile moved `last_used_at`, and the key no longer qualifies.
            let qualifies = stored.last_used_at == last_used_at
                && stored.record.retire_when_unused
                && stored.record.retired_unused_since.is_none()
                && stored.record.expires_at.is_none_or(|e| e >= at);
            if !qualifies {
                return Ok(None);
            }
            stored.record.expires_at = Some(at);
            stored.record.retired_unused_since = Some(unused_since);
            stored.version = stored.version.next();
            let stored = keys
                .get(&key)
                .ok_or_else(|| StoreError::backend("key vanished"))?;
            keys.info(stored)
        };
        let account = info.record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(key, account));
        Ok(Some(info))
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let until = lease_end(now, ttl);
        let mut keys = self.write();
        match keys.leases.get_mut(name) {
            Some((current, end)) if *end > now && current != holder => Ok(false),
            Some((current, end)) => {
                holder.clone_into(current);
                *end = until;
                Ok(true)
            }
            None => {
                keys.leases
                    .insert(name.to_owned(), (holder.to_owned(), until));
                Ok(true)
            }
        }
    }
}
