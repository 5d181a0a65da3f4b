//! The in-memory store: for tests, examples and single-process services.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::page_token::{page_token, parse_page_token};
use super::{
    check_expiry, check_import, check_new, export_page_size, fill_page, hint_of, import_conflict,
    import_revoked, verified, CreatedKey, Imported, KeyInfo, KeyPage, KeyStore, KeyUpdate,
    ListRequest, NewKey, PreviousHash, StoreError, StoredKey, DEFAULT_MAX_KEYS_PER_ACCOUNT,
};
use crate::clock::{Clock, SystemClock};
use crate::hash::{KeyHasher, StoredHash};
use crate::invalidation::{Invalidation, Invalidations};
use crate::key::{KeyFormat, KeyId, PresentedKey};
use crate::record::KeyRecord;
use crate::verifier::{Verifier, VerifierError};

/// Keys in a process-local map. Cheap to clone: clones share the keys.
///
/// Holds only hashes of keys, like any store. A revoke, reissue or update is
/// announced on [`Verifier::invalidations`] before the call returns.
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

    fn remove(&mut self, id: &KeyId) -> Option<Stored> {
        let stored = self.by_id.remove(id)?;
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
    record: KeyRecord,
    hash: StoredHash,
    /// The secret replaced by a reissue, accepted until the instant given.
    previous: Option<(StoredHash, SystemTime)>,
    last_used_at: Option<SystemTime>,
    hint: String,
}

impl Stored {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            record: self.record.clone(),
            last_used_at: self.last_used_at,
            hint: self.hint.clone(),
        }
    }

    fn export(&self) -> StoredKey {
        StoredKey {
            info: self.info(),
            hash: self.hash,
            previous: self
                .previous
                .map(|(hash, until)| PreviousHash::new(hash, until)),
        }
    }
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
    pub fn with_format(mut self, format: KeyFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// How keys are hashed (default plain SHA-256).
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = Some(hasher);
        self
    }

    /// The clock for creation times, expiry checks and grace periods.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
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
        Ok(verified(
            stored.record.clone(),
            current,
            previous,
            grace_until,
            self.now(),
        ))
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        Some(&self.inner.invalidations)
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(self.inner.format)
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        check_new(&new, self.now())?;
        let key = self.inner.format.generate()?;
        let record = KeyRecord::new(key.id(), new.service_account_id)
            .with_scopes(new.scopes)
            .with_description(new.description)
            .with_expires_at(new.expires_at)
            .with_created_at(self.now());
        let stored = Stored {
            record: record.clone(),
            hash: self.hash_of(&key)?,
            previous: None,
            last_used_at: None,
            hint: hint_of(&key),
        };
        let mut keys = self.write();
        // Counted under the write lock, so concurrent creates cannot overshoot.
        let limit = self.inner.max_keys_per_account;
        if keys.count(&record.service_account_id) >= limit {
            return Err(StoreError::KeyLimitReached { limit });
        }
        if keys.contains_key(&key.id()) {
            // 95 random bits make this practically impossible; never overwrite.
            return Err(StoreError::backend("key id collision"));
        }
        keys.insert(key.id(), stored);
        Ok(CreatedKey { record, key })
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        Ok(self.read().get(&id).map(Stored::info))
    }

    async fn list(
        &self,
        service_account_id: &str,
        page: ListRequest,
    ) -> Result<KeyPage, StoreError> {
        let size = page.size()?;
        let after = match &page.page_token {
            None => None,
            Some(token) => Some(
                parse_page_token(token)
                    .ok_or_else(|| StoreError::invalid("page_token is not valid"))?,
            ),
        };
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
            .map(|s| Ok::<_, StoreError>(s.info()));
        let (page, more) = fill_page(rest, size)?;
        let next_page_token = more
            .then(|| page.last().map(|k| page_token(&k.record)))
            .flatten();
        Ok(KeyPage {
            keys: page,
            next_page_token,
        })
    }

    async fn update(&self, id: KeyId, update: KeyUpdate) -> Result<Option<KeyInfo>, StoreError> {
        if let Some(expires_at) = update.expires_at {
            check_expiry(expires_at, self.now())?;
        }
        let info = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&id) else {
                return Ok(None);
            };
            if let Some(description) = update.description {
                stored.record.description = description;
            }
            if let Some(scopes) = update.scopes {
                stored.record.scopes = scopes;
            }
            if let Some(expires_at) = update.expires_at {
                stored.record.expires_at = expires_at;
            }
            stored.info()
        };
        let account = info.record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
        Ok(Some(info))
    }

    async fn revoke(&self, id: KeyId) -> Result<bool, StoreError> {
        let removed = {
            let mut keys = self.write();
            let removed = keys.remove(&id);
            if removed.is_some() {
                keys.revoked.insert(id);
            }
            removed
        };
        if let Some(gone) = &removed {
            let account = gone.record.service_account_id.clone();
            self.inner
                .invalidations
                .publish(&Invalidation::key_of(id, account));
        }
        Ok(removed.is_some())
    }

    async fn reissue(&self, id: KeyId, grace: Duration) -> Result<Option<CreatedKey>, StoreError> {
        let key = self.inner.format.generate_for(id)?;
        let hash = self.hash_of(&key)?;
        let record = {
            let mut keys = self.write();
            let Some(stored) = keys.get_mut(&id) else {
                return Ok(None);
            };
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
            stored.record.clone()
        };
        let account = record.service_account_id.clone();
        self.inner
            .invalidations
            .publish(&Invalidation::key_of(id, account));
        Ok(Some(CreatedKey { record, key }))
    }

    // PLACEHOLDER (issue 14, in progress): replaced by the store's own implementation.
    async fn add_credits(
        &self,
        _id: KeyId,
        _amount: u64,
    ) -> Result<Option<crate::limits::Credits>, StoreError> {
        Err(StoreError::invalid(
            "credits are not supported by this store yet",
        ))
    }

    async fn account_rate_limits(
        &self,
        _service_account_id: &str,
    ) -> Result<Vec<crate::limits::RateLimit>, StoreError> {
        Ok(Vec::new())
    }

    async fn set_account_rate_limits(
        &self,
        _service_account_id: &str,
        _limits: Vec<crate::limits::RateLimit>,
    ) -> Result<(), StoreError> {
        Err(StoreError::invalid(
            "account rate limits are not supported by this store yet",
        ))
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
            .map(|(_, stored)| stored.export())
            .collect())
    }

    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        check_import(&key)?;
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
        keys.insert(
            id,
            Stored {
                record: key.info.record,
                hash: key.hash,
                previous: key.previous.map(|p| (p.hash, p.valid_until)),
                last_used_at: key.info.last_used_at,
                hint: key.info.hint,
            },
        );
        Ok(Imported::Added)
    }
}
