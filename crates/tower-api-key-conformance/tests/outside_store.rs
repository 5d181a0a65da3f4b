//! A store written outside the `tower-api-key` crate, with its public items
//! only, runs the conformance suite: what a third-party store's test file
//! looks like. Its keys live in a `BTreeMap` behind a mutex. It passes the
//! whole suite, the test that `verify` does the same hashing work whether
//! or not the id exists included (`KeyHasher::candidates`), and the
//! lifecycle suite (`LifecycleStore`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tower_api_key::clock::Clock;
use tower_api_key::hash::{KeyHasher, StoredHash};
use tower_api_key::limits::{
    lease_grant, refill_due, CreditLease, Credits, RateLimit, MAX_CREDITS,
};
use tower_api_key::store::{
    latest_time, rules, Compromise, CompromiseReport, Compromised, ConflictKind, CreatedKey,
    Imported, KeyInfo, KeyPage, KeyUpdate, LeakAction, LifecycleStore, ListRequest, NewKey,
    NoticeKind, PreviousHash, SentNotice, StoreError, StoredKey, Version, DEFAULT_PAGE_SIZE,
    MAX_EXPORT_PAGE, MAX_PAGE_SIZE,
};
use tower_api_key::{
    CreditLedger, GeneratedKey, Invalidation, Invalidations, KeyFormat, KeyId, KeyRecord, KeyStore,
    PresentedKey, Verifier, VerifierError,
};
use tower_api_key_conformance::{
    lifecycle_conformance, store_conformance, StoreFactory, StoreSettings,
};

/// A key's credits: the count, the refill time last applied, and the
/// generation (a refill or a new setting starts the next one).
#[derive(Clone, Copy)]
struct CreditState {
    credits: Credits,
    refilled_at: SystemTime,
    generation: u64,
}

impl CreditState {
    fn set(credits: Credits, now: SystemTime, generation: u64) -> Self {
        let refilled_at = credits.refill().map_or(now, |r| r.last_due(now));
        Self {
            credits,
            refilled_at,
            generation,
        }
    }

    fn with_remaining(&mut self, n: u64) {
        self.credits = self
            .credits
            .with_remaining(n.min(MAX_CREDITS))
            .unwrap_or(self.credits);
    }
}

struct Entry {
    /// The key's own fields: credits and account limits are kept apart.
    record: KeyRecord,
    hash: StoredHash,
    previous: Option<(StoredHash, SystemTime)>,
    last_used_at: Option<SystemTime>,
    hint: String,
    credits: Option<CreditState>,
    removed_generation: u64,
    version: Version,
    /// The hash of the secret a leak report named.
    compromised: Option<StoredHash>,
}

impl Entry {
    /// Whether the secret stored as `matched` is quarantined.
    fn quarantined(&self, matched: &StoredHash) -> bool {
        let quarantine = |c: &Compromise| c.action == LeakAction::Quarantine;
        self.record.compromise.as_deref().is_some_and(quarantine)
            && self.compromised.as_ref() == Some(matched)
    }
}

#[derive(Default)]
struct State {
    keys: BTreeMap<KeyId, Entry>,
    revoked: BTreeSet<KeyId>,
    account_limits: HashMap<String, Vec<RateLimit>>,
    /// Lifecycle notices by key, kind and window; removed with the key.
    notices: HashMap<(KeyId, NoticeKind, SystemTime), SentNotice>,
    /// Lifecycle leases: holder and end, by name.
    leases: HashMap<String, (String, SystemTime)>,
}

impl State {
    /// Removes key `id` and its notices.
    fn remove(&mut self, id: &KeyId) -> Option<Entry> {
        self.notices.retain(|(key, _, _), _| key != id);
        self.keys.remove(id)
    }

    fn record(&self, e: &Entry) -> KeyRecord {
        let mut record = e.record.clone();
        record.credits = e.credits.map(|c| c.credits);
        record.account_rate_limits = self
            .account_limits
            .get(&*record.service_account_id)
            .cloned()
            .unwrap_or_default();
        record.quarantined = e.quarantined(&e.hash);
        record
    }

    fn info(&self, e: &Entry) -> KeyInfo {
        KeyInfo::new(self.record(e), e.last_used_at, e.hint.clone()).with_version(e.version)
    }

    fn count(&self, account: &str) -> usize {
        let account = |e: &&Entry| &*e.record.service_account_id == account;
        self.keys.values().filter(account).count()
    }
}

struct Inner {
    format: KeyFormat,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    max_keys_per_account: usize,
    state: Mutex<State>,
    invalidations: Invalidations,
}

/// The outside store. Clones share the keys.
#[derive(Clone)]
struct OutsideStore(Arc<Inner>);

impl std::fmt::Debug for OutsideStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutsideStore").finish_non_exhaustive()
    }
}

impl OutsideStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> SystemTime {
        self.0.clock.now()
    }

    fn announce(&self, id: KeyId, account: Arc<str>) {
        self.0
            .invalidations
            .publish(&Invalidation::key_of(id, account));
    }

    fn hash_of(&self, key: &GeneratedKey) -> Result<StoredHash, StoreError> {
        let presented = self
            .0
            .format
            .parse(key.expose_secret())
            .map_err(|_| StoreError::backend("a generated key does not parse"))?;
        Ok(self.0.hasher.hash(&presented))
    }
}

/// The masked hint: the prefix, an ellipsis and the last four characters.
fn hint_of(key: &GeneratedKey) -> String {
    let text = key.expose_secret();
    let prefix = text.split('_').next().unwrap_or_default();
    let tail = text.get(text.len().saturating_sub(4)..).unwrap_or_default();
    format!("{prefix}_…{tail}")
}

/// A request's field that breaks its rule.
fn field(field: rules::Field, problem: rules::Problem) -> StoreError {
    StoreError::invalid_field(None, rules::FieldError::new(field, problem))
}

fn check_account(account: &str) -> Result<(), StoreError> {
    if account.is_empty() {
        return Err(field(rules::Field::ServiceAccountId, rules::Problem::Empty));
    }
    Ok(())
}

fn check_limits(limits: &[RateLimit]) -> Result<(), StoreError> {
    rules::rate_limits(limits).map_err(|e| StoreError::invalid_field(None, e))
}

fn check_expiry(at: Option<SystemTime>, now: SystemTime) -> Result<(), StoreError> {
    match at {
        Some(at) if at <= now => Err(field(rules::Field::ExpiresAt, rules::Problem::NotInFuture)),
        Some(at) if at > latest_time() => {
            Err(field(rules::Field::ExpiresAt, rules::Problem::AfterLatest))
        }
        _ => Ok(()),
    }
}

fn check_version(id: KeyId, current: Version, expected: Option<Version>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current => Err(StoreError::version_mismatch(id, current)),
        _ => Ok(()),
    }
}

fn export_page_size(limit: usize) -> Result<usize, StoreError> {
    if (1..=MAX_EXPORT_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(StoreError::invalid_page_size(MAX_EXPORT_PAGE))
    }
}

/// `<created_at as signed nanoseconds>.<key id>`: the position after a key
/// in the listing order, valid after that key is revoked.
fn page_token(record: &KeyRecord) -> String {
    let nanos = match record.created_at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    format!("{nanos}.{}", record.key_id)
}

fn parse_page_token(token: &str) -> Option<(SystemTime, KeyId)> {
    let (nanos, id) = token.split_once('.')?;
    let nanos: i128 = nanos.parse().ok()?;
    let limit = 253_402_300_799i128 * 1_000_000_000;
    if nanos.abs() > limit {
        return None;
    }
    let magnitude = nanos.unsigned_abs();
    let magnitude = Duration::new(
        u64::try_from(magnitude / 1_000_000_000).ok()?,
        (magnitude % 1_000_000_000) as u32,
    );
    let at = if nanos < 0 {
        UNIX_EPOCH.checked_sub(magnitude)?
    } else {
        UNIX_EPOCH.checked_add(magnitude)?
    };
    Some((at, id.parse().ok()?))
}

#[async_trait]
impl Verifier for OutsideStore {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        // The same hashing and comparisons whether or not the id exists.
        let candidates = self.0.hasher.candidates(key);
        let state = self.state();
        let e = state.keys.get(&key.id());
        let current = candidates.matches(e.map(|e| &e.hash));
        let previous = candidates.matches(e.and_then(|e| e.previous.as_ref().map(|(h, _)| h)));
        let Some(e) = e else {
            return Ok(None);
        };
        let mut record = state.record(e);
        if current {
            return Ok(Some(record));
        }
        match e.previous {
            // The replaced secret, until the end of its grace.
            Some((hash, until)) if previous && self.now() < until => {
                record.quarantined = e.quarantined(&hash);
                record.expires_at = Some(record.expires_at.map_or(until, |at| at.min(until)));
                record.replaced_secret = true;
                Ok(Some(record))
            }
            _ => Ok(None),
        }
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        Some(&self.0.invalidations)
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(self.0.format)
    }
}

#[async_trait]
impl CreditLedger for OutsideStore {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        let mut state = self.state();
        let Some(c) = state.keys.get_mut(&id).and_then(|e| e.credits.as_mut()) else {
            return Ok(None);
        };
        let refill = c.credits.refill().copied();
        if let Some(due) = refill_due(refill.as_ref(), c.refilled_at, now) {
            c.with_remaining(refill.map_or(0, |r| r.amount()));
            c.refilled_at = due;
            c.generation = c.generation.saturating_add(1);
        }
        let remaining = c.credits.remaining();
        let granted = lease_grant(remaining, want);
        c.with_remaining(remaining - granted);
        Ok(Some(CreditLease::new(
            granted,
            c.generation,
            c.credits.remaining(),
            refill.map(|r| r.next_due(now)),
        )))
    }

    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError> {
        let mut state = self.state();
        if let Some(c) = state.keys.get_mut(&id).and_then(|e| e.credits.as_mut()) {
            if c.generation == generation {
                c.with_remaining(c.credits.remaining().saturating_add(amount));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KeyStore for OutsideStore {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        let now = self.now();
        check_account(&new.service_account_id)?;
        check_limits(&new.rate_limits)?;
        check_expiry(new.expires_at, now)?;
        let key = self.0.format.generate()?;
        let entry = Entry {
            record: KeyRecord::new(key.id(), new.service_account_id)
                .with_scopes(new.scopes)
                .with_description(new.description)
                .with_expires_at(new.expires_at)
                .with_rate_limits(new.rate_limits)
                .with_allowed_networks(new.allowed_networks)
                .with_metadata(new.metadata)
                .with_operator_locked(new.operator_locked)
                .with_retire_when_unused(new.retire_when_unused)
                .with_created_at(now),
            hash: self.hash_of(&key)?,
            previous: None,
            last_used_at: None,
            hint: hint_of(&key),
            credits: new.credits.map(|c| CreditState::set(c, now, 0)),
            removed_generation: 0,
            version: Version::FIRST,
            compromised: None,
        };
        let mut state = self.state();
        // Counted under the lock: concurrent creates cannot overshoot.
        let limit = self.0.max_keys_per_account;
        if state.count(&entry.record.service_account_id) >= limit {
            return Err(StoreError::key_limit_reached(limit));
        }
        if state.keys.contains_key(&key.id()) || state.revoked.contains(&key.id()) {
            return Err(StoreError::backend("key id collision"));
        }
        let record = state.record(&entry);
        state.keys.insert(key.id(), entry);
        Ok(CreatedKey::new(record, Version::FIRST, key))
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        let state = self.state();
        Ok(state.keys.get(&id).map(|e| state.info(e)))
    }

    async fn list(&self, account: &str, page: ListRequest) -> Result<KeyPage, StoreError> {
        let size = match page.page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(n @ 1..=MAX_PAGE_SIZE) => n,
            Some(_) => return Err(StoreError::invalid_page_size(MAX_PAGE_SIZE)),
        };
        let after = match &page.page_token {
            None => None,
            Some(token) => Some(parse_page_token(token).ok_or(StoreError::InvalidPageToken)?),
        };
        let unused_before = page.unused_before(self.now());
        let state = self.state();
        let mut mine: Vec<&Entry> = state
            .keys
            .values()
            .filter(|e| &*e.record.service_account_id == account)
            .filter(|e| after.is_none_or(|a| (e.record.created_at, e.record.key_id) > a))
            .filter(|e| ListRequest::keeps(unused_before, e.last_used_at))
            .collect();
        mine.sort_by_key(|e| (e.record.created_at, e.record.key_id));
        // At most `size` keys: a store pages by count only.
        let more = mine.len() > size;
        let keys: Vec<KeyInfo> = mine.into_iter().take(size).map(|e| state.info(e)).collect();
        let next = more
            .then(|| keys.last().map(|k: &KeyInfo| page_token(&k.record)))
            .flatten();
        Ok(KeyPage::new(keys, next))
    }

    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let now = self.now();
        if let Some(limits) = &update.rate_limits {
            check_limits(limits)?;
        }
        if let Some(at) = update.expires_at {
            check_expiry(at, now)?;
        }
        let info = {
            let mut state = self.state();
            let Some(e) = state.keys.get_mut(&id) else {
                return Ok(None);
            };
            check_version(id, e.version, expected)?;
            let changes = !update.is_empty();
            if changes {
                e.version = e.version.next();
            }
            if let Some(description) = update.description {
                e.record.description = description;
            }
            if let Some(scopes) = update.scopes {
                e.record.scopes = scopes;
            }
            if let Some(expires_at) = update.expires_at {
                // A new expiry revives a key retired for disuse.
                e.record.expires_at = expires_at;
                e.record.retired_unused_since = None;
            }
            if let Some(retire) = update.retire_when_unused {
                e.record.retire_when_unused = retire;
            }
            if let Some(limits) = update.rate_limits {
                e.record.rate_limits = limits;
            }
            if let Some(networks) = update.allowed_networks {
                e.record.allowed_networks = networks;
            }
            if let Some(metadata) = update.metadata {
                e.record.metadata = metadata;
            }
            if let Some(locked) = update.operator_locked {
                e.record.operator_locked = locked;
            }
            if let Some(credits) = update.credits {
                // A new setting starts a new generation.
                let generation = e
                    .credits
                    .map_or(e.removed_generation, |c| c.generation)
                    .saturating_add(1);
                e.removed_generation = generation;
                e.credits = credits.map(|c| CreditState::set(c, now, generation));
            }
            state.info(&state.keys[&id])
        };
        self.announce(id, info.record.service_account_id.clone());
        Ok(Some(info))
    }

    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        let removed = {
            let mut state = self.state();
            if let Some(e) = state.keys.get(&id) {
                check_version(id, e.version, expected)?;
            }
            let removed = state.remove(&id);
            if removed.is_some() {
                state.revoked.insert(id);
            }
            removed
        };
        let Some(gone) = removed else {
            return Ok(false);
        };
        self.announce(id, gone.record.service_account_id);
        Ok(true)
    }

    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError> {
        let key = self.0.format.generate_for(id)?;
        let hash = self.hash_of(&key)?;
        let (record, version) = {
            let mut state = self.state();
            let now = self.now();
            let Some(e) = state.keys.get_mut(&id) else {
                return Ok(None);
            };
            check_version(id, e.version, expected)?;
            e.version = e.version.next();
            let old = std::mem::replace(&mut e.hash, hash);
            // A grace past year 9999 is "forever".
            let forever = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
            let until = now.checked_add(grace).unwrap_or(forever).min(forever);
            e.previous = (!grace.is_zero()).then_some((old, until));
            e.hint = hint_of(&key);
            let e = &state.keys[&id];
            (state.record(e), e.version)
        };
        self.announce(id, record.service_account_id.clone());
        Ok(Some(CreatedKey::new(record, version, key)))
    }

    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let info = {
            let mut state = self.state();
            let Some(e) = state.keys.get_mut(&id) else {
                return Ok(None);
            };
            check_version(id, e.version, expected)?;
            let Some(c) = e.credits.as_mut() else {
                return Err(StoreError::no_credits(id));
            };
            c.with_remaining(c.credits.remaining().saturating_add(amount));
            e.version = e.version.next();
            state.info(&state.keys[&id])
        };
        self.announce(id, info.record.service_account_id.clone());
        Ok(Some(info))
    }

    async fn account_rate_limits(&self, account: &str) -> Result<Vec<RateLimit>, StoreError> {
        check_account(account)?;
        let state = self.state();
        Ok(state
            .account_limits
            .get(account)
            .cloned()
            .unwrap_or_default())
    }

    async fn set_account_rate_limits(
        &self,
        account: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        check_account(account)?;
        check_limits(&limits)?;
        let ids: Vec<KeyId> = {
            let mut state = self.state();
            if limits.is_empty() {
                state.account_limits.remove(account);
            } else {
                state.account_limits.insert(account.to_owned(), limits);
            }
            let mine = |e: &&Entry| &*e.record.service_account_id == account;
            state
                .keys
                .values()
                .filter(mine)
                .map(|e| e.record.key_id)
                .collect()
        };
        let account: Arc<str> = account.into();
        for id in ids {
            self.announce(id, account.clone());
        }
        Ok(())
    }

    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        let mut state = self.state();
        for (id, at) in uses {
            if let Some(e) = state.keys.get_mut(id) {
                // Forward only.
                e.last_used_at = Some(e.last_used_at.map_or(*at, |t| t.max(*at)));
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
        let state = self.state();
        let rest = state
            .keys
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| **id > a));
        Ok(rest
            .take(limit)
            .map(|(_, e)| {
                // A key's own limits and credits travel; its account's do not.
                let mut info = state.info(e);
                info.record.account_rate_limits = Vec::new();
                let mut key = StoredKey::new(info, e.hash);
                if let Some(hash) = e.compromised {
                    key = key.with_compromised_hash(hash);
                }
                match e.previous {
                    Some((hash, until)) => key.with_previous(PreviousHash::new(hash, until)),
                    None => key,
                }
            })
            .collect())
    }

    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        let now = self.now();
        let id = key.info.record.key_id;
        rules::stored_key(&key, &self.0.format, now)
            .map_err(|e| StoreError::invalid_field(Some(id), e))?;
        const MAX_VERSION: u64 = (1 << 53) - 1;
        if !(1..=MAX_VERSION).contains(&key.info.version.get()) {
            let range = rules::Problem::OutOfRange {
                min: 1,
                max: MAX_VERSION,
            };
            let error = rules::FieldError::new(rules::Field::Version, range);
            return Err(StoreError::invalid_field(Some(id), error));
        }
        let mut state = self.state();
        if state.revoked.contains(&id) {
            return Err(StoreError::conflict(id, ConflictKind::Revoked));
        }
        if let Some(e) = state.keys.get_mut(&id) {
            if e.hash != key.hash
                || e.record.service_account_id != key.info.record.service_account_id
            {
                return Err(StoreError::conflict(id, ConflictKind::IdTaken));
            }
            if let Some(at) = key.info.last_used_at {
                e.last_used_at = Some(e.last_used_at.map_or(at, |t| t.max(at)));
            }
            return Ok(Imported::AlreadyPresent);
        }
        let limit = self.0.max_keys_per_account;
        if state.count(&key.info.record.service_account_id) >= limit {
            return Err(StoreError::key_limit_reached(limit));
        }
        let mut record = key.info.record;
        record.quarantined = false;
        // The credits start a generation here; account limits are this
        // store's own.
        let credits = record.credits.take().map(|c| CreditState::set(c, now, 0));
        record.account_rate_limits = Vec::new();
        let entry = Entry {
            record,
            hash: key.hash,
            previous: key.previous.map(|p| (p.hash, p.valid_until)),
            last_used_at: key.info.last_used_at,
            hint: key.info.hint,
            credits,
            removed_generation: 0,
            version: key.info.version,
            compromised: key.compromised_hash,
        };
        state.keys.insert(id, entry);
        Ok(Imported::Added)
    }

    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        let limit = export_page_size(limit)?;
        let state = self.state();
        let rest = state
            .revoked
            .iter()
            .filter(|id| after.is_none_or(|a| **id > a));
        Ok(rest.take(limit).copied().collect())
    }

    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        let removed = {
            let mut state = self.state();
            state.revoked.insert(id);
            state.remove(&id)
        };
        let Some(gone) = removed else {
            return Ok(false);
        };
        self.announce(id, gone.record.service_account_id);
        Ok(true)
    }

    async fn record_compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        let candidates = self.0.hasher.candidates(key);
        let now = self.now();
        let id = key.id();
        // Compared, checked and written under one lock.
        let mut state = self.state();
        let Some(e) = state.keys.get_mut(&id) else {
            return Ok(if state.revoked.contains(&id) {
                Compromised::AlreadyRevoked
            } else {
                Compromised::Unknown
            });
        };
        let matched = if candidates.matches(Some(&e.hash)) {
            e.hash
        } else {
            match e.previous {
                Some((hash, until)) if now < until && candidates.matches(Some(&hash)) => hash,
                _ => return Ok(Compromised::Unknown),
            }
        };
        if e.compromised == Some(matched) {
            return Ok(Compromised::AlreadyReported);
        }
        e.record.compromise = Some(Box::new(report.at(now)));
        e.compromised = Some(matched);
        e.version = e.version.next();
        let e = &state.keys[&id];
        let info = state.info(e);
        if report.action == LeakAction::Revoke {
            state.remove(&id);
            state.revoked.insert(id);
        }
        drop(state);
        self.announce(id, info.record.service_account_id.clone());
        Ok(Compromised::Acted {
            key: Box::new(info),
        })
    }
}

/// A time a store keeps (1970 to year 9999), or the field's error naming `id`.
fn kept_time(id: KeyId, field: rules::Field, at: SystemTime) -> Result<(), StoreError> {
    rules::stored_time(field, at).map_err(|e| StoreError::invalid_field(Some(id), e))
}

/// Up to `limit` keys after `after`, in id order, that `keep`.
fn lifecycle_page(
    state: &State,
    after: Option<KeyId>,
    limit: usize,
    keep: impl Fn(&Entry) -> bool,
) -> Result<Vec<KeyInfo>, StoreError> {
    let limit = export_page_size(limit)?;
    Ok(state
        .keys
        .values()
        .filter(|e| after.is_none_or(|a| e.record.key_id > a) && keep(e))
        .take(limit)
        .map(|e| state.info(e))
        .collect())
}

#[async_trait]
impl LifecycleStore for OutsideStore {
    fn now(&self) -> SystemTime {
        self.0.clock.now()
    }

    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let within = |e: &Entry| {
            e.record
                .expires_at
                .is_some_and(|at| from <= at && at < until)
        };
        lifecycle_page(&self.state(), after, limit, within)
    }

    async fn unused(
        &self,
        before: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let idle = |e: &Entry| {
            e.record.retire_when_unused
                && e.record.retired_unused_since.is_none()
                && e.last_used_at.unwrap_or(e.record.created_at) < before
        };
        lifecycle_page(&self.state(), after, limit, idle)
    }

    async fn record_notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        kept_time(key, rules::Field::NoticeWindow, window)?;
        if let Some(at) = announced {
            kept_time(key, rules::Field::NoticeAnnounced, at)?;
        }
        let now = self.now();
        let mut state = self.state();
        if !state.keys.contains_key(&key) || state.notices.contains_key(&(key, kind, window)) {
            return Ok(false);
        }
        let sent = SentNotice::new(now, announced);
        state.notices.insert((key, kind, window), sent);
        Ok(true)
    }

    async fn notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
    ) -> Result<Option<SentNotice>, StoreError> {
        Ok(self.state().notices.get(&(key, kind, window)).copied())
    }

    async fn retire_unused(
        &self,
        key: KeyId,
        last_used_at: Option<SystemTime>,
        unused_since: SystemTime,
        at: SystemTime,
    ) -> Result<Option<KeyInfo>, StoreError> {
        kept_time(key, rules::Field::RetiredUnusedSince, unused_since)?;
        kept_time(key, rules::Field::ExpiresAt, at)?;
        let info = {
            let mut state = self.state();
            let Some(e) = state.keys.get_mut(&key) else {
                return Ok(None);
            };
            // Checked and written under the one lock.
            if e.last_used_at != last_used_at
                || !e.record.retire_when_unused
                || e.record.retired_unused_since.is_some()
                || e.record.expires_at.is_some_and(|end| end < at)
            {
                return Ok(None);
            }
            e.record.expires_at = Some(at);
            e.record.retired_unused_since = Some(unused_since);
            e.version = e.version.next();
            state.info(&state.keys[&key])
        };
        self.announce(key, info.record.service_account_id.clone());
        Ok(Some(info))
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let until = now
            .checked_add(ttl)
            .unwrap_or_else(latest_time)
            .min(latest_time());
        let mut state = self.state();
        if let Some((current, end)) = state.leases.get(name) {
            if *end > now && current != holder {
                return Ok(false);
            }
        }
        state
            .leases
            .insert(name.to_owned(), (holder.to_owned(), until));
        Ok(true)
    }
}

/// A fresh outside store for each store a test asks for.
struct OutsideFactory;

impl StoreFactory for OutsideFactory {
    type Store = OutsideStore;

    async fn open(_test: &'static str) -> Option<Self> {
        Some(Self)
    }

    async fn store(&self, s: StoreSettings) -> OutsideStore {
        OutsideStore(Arc::new(Inner {
            format: s.format,
            hasher: s.hasher,
            clock: s.clock,
            max_keys_per_account: s.max_keys_per_account.max(1),
            state: Mutex::new(State::default()),
            invalidations: Invalidations::new(),
        }))
    }
}

store_conformance!(OutsideFactory);
lifecycle_conformance!(OutsideFactory);
