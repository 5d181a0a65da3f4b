//! The key store over any SQL [`Backend`]: every operation written once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tower_api_key::hash::KeyHasher;
use tower_api_key::limits::{CreditLease, RateLimit};
use tower_api_key::store::kit::{
    check_account, check_account_limits, check_import, check_new, check_notice_times,
    check_retirement_times, check_update, check_version, export_page_size, fill_page, hint_of,
    import_conflict, import_revoked, imported_version, lease_end, page_token, parse_page_token,
    verified, CreditState,
};
use tower_api_key::store::{
    latest_time, CompromiseReport, Compromised, ConflictKind, CreatedKey, Imported, KeyInfo,
    KeyPage, KeyUpdate, LeakAction, LifecycleStore, ListRequest, NewKey, NoticeKind, SentNotice,
    StoreError, StoredKey, Version, MAX_EXPORT_PAGE,
};
use tower_api_key::Networks;
use tower_api_key::{CreditLedger, Invalidation, Invalidations, Verifier, VerifierError};
use tower_api_key::{GeneratedKey, KeyFormat, KeyId, KeyRecord, KeyStore, PresentedKey, ScopeSet};

use crate::backend::{Backend, BoxFuture, Tx};
use crate::row::{micros, HashColumns, KeyRow};
use crate::{
    limits_text, parse_limits, scheme_columns, shown_id, version_of, warn_unreadable, BoxError,
    CreditColumns, Migration, MigrationReport, SqlRateLimitSync, StoreClock,
};

/// A key store over the SQL backend `B`: the [`Verifier`],
/// [`CreditLedger`] and [`KeyStore`] operations, written once for every
/// dialect.
///
/// A backend crate wraps it in its own store type (`SqliteKeyStore`,
/// `PgKeyStore`) with its own builder, and forwards the traits to it with
/// [`delegate_store!`](crate::delegate_store).
pub struct SqlKeyStore<B> {
    backend: Arc<B>,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: StoreClock,
    max_keys_per_account: i64,
    invalidations: Invalidations,
    #[cfg(feature = "test-util")]
    verify_work: VerifyWork,
}

/// What verification read before it knew whether the secret matched
/// (feature `test-util`): statements and bytes of hash columns.
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
struct VerifyWork {
    statements: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "test-util")]
impl VerifyWork {
    /// Counts one read of `lookup`'s columns.
    fn count(&self, lookup: &crate::Lookup) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes: usize = [&lookup.hash, &lookup.previous]
            .iter()
            .map(|h| {
                h.digest.as_ref().map_or(0, Vec::len)
                    + h.scheme.as_ref().map_or(0, String::len)
                    + h.pepper_version.map_or(0, |_| 8)
            })
            .sum();
        self.statements.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64 + 2, Relaxed);
    }
}

impl<B> fmt::Debug for SqlKeyStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlKeyStore")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// The settings of a [`SqlKeyStore`] that every backend's builder has.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqlSettings {
    /// The format of the keys the store issues.
    pub format: KeyFormat,
    /// How keys are hashed.
    pub hasher: KeyHasher,
    /// Where times come from.
    pub clock: StoreClock,
    /// The most keys one service account may hold.
    pub max_keys_per_account: usize,
}

impl SqlSettings {
    /// The defaults: prefix `tak`, plain SHA-256, the system clock, at most
    /// `max_keys_per_account` keys per account.
    pub fn new(max_keys_per_account: usize) -> Self {
        Self {
            format: KeyFormat::default(),
            hasher: KeyHasher::default(),
            clock: StoreClock::default(),
            max_keys_per_account,
        }
    }
}

impl<B: Backend> SqlKeyStore<B> {
    /// A store over `backend` with `settings`, announcing on
    /// `invalidations`.
    pub fn new(backend: B, settings: SqlSettings, invalidations: Invalidations) -> Self {
        Self {
            backend: Arc::new(backend),
            format: settings.format,
            hasher: settings.hasher,
            clock: settings.clock,
            max_keys_per_account: i64::try_from(settings.max_keys_per_account.max(1))
                .unwrap_or(i64::MAX),
            invalidations,
            #[cfg(feature = "test-util")]
            verify_work: VerifyWork::default(),
        }
    }

    /// Statements run and bytes of hash columns read by verification
    /// before it knew whether the secret matched, since the store was made
    /// (feature `test-util`): a backend that reads the same for a known id
    /// with a wrong secret as for an unknown id shows equal counts.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn verify_work(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let work = &self.verify_work;
        (work.statements.load(Relaxed), work.bytes.load(Relaxed))
    }

    /// The newest migration applied to the database: 0 when it has none
    /// (never migrated, or a database of another program). Only reads.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.backend
            .schema_version()
            .await
            .map_err(StoreError::Backend)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Shares rate limits between replicas through this store's database
    /// (table `tower_api_key_rate_buckets`), on its connections: pass it to
    /// [`LimitSettingsBuilder::shared`](tower_api_key::limits::LimitSettingsBuilder::shared).
    pub fn rate_limit_sync(&self) -> SqlRateLimitSync {
        SqlRateLimitSync::new(self.backend.clone())
    }

    /// The format of the keys this store issues.
    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// The bus the store announces changes on.
    pub fn invalidations(&self) -> &Invalidations {
        &self.invalidations
    }

    /// Applies the migrations of `known` (oldest first) the database lacks,
    /// in one transaction under the dialect's migration lock: stores that
    /// all migrate at start take turns, and the later ones find nothing to
    /// do.
    pub async fn migrate(
        &self,
        known: &'static [Migration],
    ) -> Result<MigrationReport, StoreError> {
        let (applied, newest_done) = self
            .tx(move |tx| {
                Box::pin(async move {
                    let done = tx.applied_migrations().await?;
                    let mut applied = Vec::new();
                    for migration in known {
                        if !done.contains(&migration.version()) {
                            tx.apply_migration(migration).await?;
                            applied.push(migration.version());
                        }
                    }
                    Ok((applied, done.iter().copied().max().unwrap_or(0)))
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        Ok(MigrationReport::new(known, applied, newest_done))
    }

    /// Now, truncated to the microsecond.
    fn now(&self) -> SystemTime {
        micros(self.clock.now())
    }

    /// Runs `work` in one transaction.
    async fn tx<T, F>(&self, work: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<T, BoxError>> + Send + 'static,
    {
        self.backend.transaction(Box::new(work)).await
    }

    /// Announces here that key `id` of `account` changed (other stores on
    /// the database hear of it through the backend's announcement).
    fn changed(&self, id: KeyId, account: &str) {
        self.invalidations
            .publish(&Invalidation::key_of(id, account));
    }

    /// Adds credits to key `id` if it is at `expected`, and unless
    /// `unless_locked` and the operator locked it, in one transaction.
    async fn credit(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
        unless_locked: bool,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let now = self.now();
        let key_id = id.to_string();
        let added = self
            .tx(move |tx| {
                Box::pin(async move {
                    let Some(mut row) = tx.key_for_update(&key_id).await? else {
                        return Ok(None);
                    };
                    if let Err(moved) = check_version(id, version_of(row.version)?, expected) {
                        return Ok(Some(Err(moved)));
                    }
                    if unless_locked && row.operator_locked {
                        return Ok(Some(Err(StoreError::key_locked(id))));
                    }
                    let Some(mut state) = row.credits.state(id)? else {
                        return Ok(Some(Err(StoreError::no_credits(id))));
                    };
                    state.add(amount);
                    // The count changes, the refill and the generation stay.
                    row.credits.remaining = CreditColumns::of(Some(&state)).remaining;
                    row.version = next_version(row.version)?;
                    // Checked before the commit: nothing fails after it.
                    let info = row.info()?;
                    tx.write_key(&row).await?;
                    // Other stores' caches re-read the count.
                    tx.announce(&[key_id], &row.service_account_id, now).await?;
                    Ok(Some(Ok(info)))
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        let Some(info) = added.transpose()? else {
            return Ok(None);
        };
        self.changed(id, &info.record.service_account_id);
        Ok(Some(info))
    }

    /// A backend error, or the error of a taken id or hash.
    fn collision_or_backend(&self, e: BoxError) -> StoreError {
        if self.backend.is_unique_violation(&e) {
            // 95 random bits make this practically impossible; never overwrite.
            StoreError::backend("key id collision")
        } else {
            StoreError::Backend(e)
        }
    }

    fn hash_columns(&self, key: &GeneratedKey) -> Result<HashColumns, StoreError> {
        let presented = self
            .format
            .parse(key.expose_secret())
            .map_err(|_| StoreError::backend("generated key does not parse"))?;
        HashColumns::of(&self.hasher.hash(&presented)).map_err(StoreError::Backend)
    }
}

/// Scope names as a row holds them.
fn names(scopes: &ScopeSet) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

/// The version after a change of a row at `version`.
fn next_version(version: i64) -> Result<i64, BoxError> {
    version
        .checked_add(1)
        .ok_or_else(|| "the stored version cannot move on".into())
}

#[async_trait]
impl<B: Backend> Verifier for SqlKeyStore<B> {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        // The hashes first, in one row whether or not the id exists (a
        // backend may fill a missing key's with placeholders of the same
        // sizes), then the same hashing and comparisons in every case: every
        // scheme and pepper the hasher holds, against the current and the
        // previous hash. Only a secret that matched reads the record (if
        // the backend did not read it with the hashes).
        let candidates = self.hasher.candidates(key);
        let id = key.id().to_string();
        let (scheme, pepper) =
            scheme_columns(self.hasher.scheme()).map_err(VerifierError::backend)?;
        let lookup = self
            .backend
            .lookup(&id, scheme, pepper)
            .await
            .map_err(VerifierError::Backend)?;
        #[cfg(feature = "test-util")]
        self.verify_work.count(&lookup);
        let current = lookup.hash.stored().map_err(VerifierError::Backend)?;
        let previous = lookup.previous.stored().map_err(VerifierError::Backend)?;
        let current = candidates.matches(current.filter(|_| lookup.found).as_ref());
        let previous = candidates.matches(
            previous
                .filter(|_| lookup.found && lookup.has_previous)
                .as_ref(),
        );
        if !current && !previous {
            return Ok(None);
        }
        let row = match lookup.row {
            Some(row) => row,
            None => match self
                .backend
                .key(&id)
                .await
                .map_err(VerifierError::Backend)?
            {
                Some(row) => row,
                // Revoked between the two reads.
                None => return Ok(None),
            },
        };
        let mut record = row.record().map_err(VerifierError::Backend)?;
        if !current {
            // The replaced secret matched: quarantined if it is the one reported.
            record.quarantined = row.quarantines(&row.previous);
        }
        if record.key_id != key.id() {
            // The row is looked up by this id; never hand out another key's record.
            return Ok(None);
        }
        Ok(verified(
            record,
            current,
            previous,
            row.previous_valid_until,
            self.clock.now(),
        ))
    }

    fn invalidations(&self) -> Option<&Invalidations> {
        Some(&self.invalidations)
    }

    fn key_format(&self) -> Option<KeyFormat> {
        Some(self.format)
    }
}

#[async_trait]
impl<B: Backend> CreditLedger for SqlKeyStore<B> {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        let key_id = id.to_string();
        // The row's lock orders leases from every store on the database:
        // each reads what the one before it left.
        self.tx(move |tx| {
            Box::pin(async move {
                let Some(mut row) = tx.key_for_update(&key_id).await? else {
                    return Ok(None);
                };
                let Some(mut state) = row.credits.state(id)? else {
                    return Ok(None);
                };
                let lease = state.lease(want, now);
                row.credits = CreditColumns::of(Some(&state));
                tx.write_key(&row).await?;
                Ok(Some(lease))
            })
        })
        .await
        .map_err(VerifierError::Backend)
    }

    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError> {
        let key_id = id.to_string();
        self.tx(move |tx| {
            Box::pin(async move {
                let Some(mut row) = tx.key_for_update(&key_id).await? else {
                    return Ok(());
                };
                let Some(mut state) = row.credits.state(id)? else {
                    return Ok(());
                };
                if state.give_back(generation, amount) {
                    row.credits = CreditColumns::of(Some(&state));
                    tx.write_key(&row).await?;
                }
                Ok(())
            })
        })
        .await
        .map_err(VerifierError::Backend)
    }
}

#[async_trait]
impl<B: Backend> KeyStore for SqlKeyStore<B> {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        check_new(&new, self.clock.now())?;
        let key = self.format.generate()?;
        let hash = self.hash_columns(&key)?;
        let now = self.now();
        let credits = new.credits.map(|c| CreditState::set(c, now, 0));
        let mut record = KeyRecord::new(key.id(), new.service_account_id)
            .with_scopes(new.scopes)
            .with_description(new.description)
            .with_expires_at(new.expires_at.map(micros))
            .with_created_at(now)
            .with_rate_limits(new.rate_limits)
            .with_credits(new.credits)
            .with_allowed_networks(new.allowed_networks)
            .with_metadata(new.metadata)
            .with_operator_locked(new.operator_locked)
            .with_retire_when_unused(new.retire_when_unused);
        let (allowed_networks, metadata) = KeyRow::extras_of(&record);
        let row = KeyRow {
            key_id: key.id().to_string(),
            service_account_id: record.service_account_id.to_string(),
            scopes: names(&record.scopes),
            description: record.description.clone(),
            created_at: now,
            expires_at: record.expires_at,
            last_used_at: None,
            hint: hint_of(&key),
            rate_limits: limits_text(&record.rate_limits),
            account_rate_limits: None,
            credits: CreditColumns::of(credits.as_ref()),
            version: 1,
            hash,
            previous: HashColumns::default(),
            previous_valid_until: None,
            compromised_at: None,
            compromise_url: None,
            compromise_source: None,
            compromise_action: None,
            compromised_hash: None,
            allowed_networks,
            metadata,
            operator_locked: record.operator_locked,
            retire_when_unused: record.retire_when_unused,
            retired_unused_since: None,
            unreadable: None,
        };
        let limit = self.max_keys_per_account;
        let id = key.id();
        let inserted = self
            .tx(move |tx| {
                Box::pin(async move {
                    // Creates for one account take turns, and the count runs
                    // after the lock is taken: it sees every key committed
                    // before, so stores creating at once cannot overshoot.
                    let account = &row.service_account_id;
                    tx.lock_account(account).await?;
                    if tx.count_keys(account).await? >= limit {
                        return Ok(None);
                    }
                    // The account's limits, for the record returned; checked
                    // before anything is written.
                    let account_limits = match tx.account_limits(account).await? {
                        Some(text) => {
                            parse_limits(&text, format_args!("the service account of key {id}"))?
                        }
                        None => Vec::new(),
                    };
                    tx.insert_key(&row).await?;
                    Ok(Some(account_limits))
                })
            })
            .await
            .map_err(|e| self.collision_or_backend(e))?;
        let Some(account_limits) = inserted else {
            return Err(StoreError::key_limit_reached(
                usize::try_from(limit).unwrap_or(usize::MAX),
            ));
        };
        record.account_rate_limits = account_limits;
        Ok(CreatedKey::new(record, Version::FIRST, key))
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        let row = self
            .backend
            .key(id.as_str())
            .await
            .map_err(StoreError::Backend)?;
        row.map(|r| r.info().map_err(StoreError::Backend))
            .transpose()
    }

    async fn list(
        &self,
        service_account_id: &str,
        page: ListRequest,
    ) -> Result<KeyPage, StoreError> {
        let size = page.size()?;
        let after = match &page.page_token {
            None => None,
            Some(token) => {
                // The same tokens as every store: a position in the listing
                // order, valid even after its key is revoked.
                let invalid = || StoreError::InvalidPageToken;
                let (at, id) = parse_page_token(token).ok_or_else(invalid)?;
                // Stored times are whole microseconds: "after `at`" for a
                // time between two microseconds is "from the next one on",
                // and "" sorts before every key id.
                let floor = micros(at);
                if floor == at {
                    Some((at, id.to_string()))
                } else {
                    let next = floor
                        .checked_add(Duration::from_micros(1))
                        .ok_or_else(invalid)?;
                    Some((next, String::new()))
                }
            }
        };
        // Stored uses are whole microseconds: "used before the cutoff" for a
        // cutoff between two microseconds is "before the next one".
        let unused_before = page.unused_before(self.clock.now()).map(|at| {
            let floor = micros(at);
            if floor == at {
                at
            } else {
                floor.checked_add(Duration::from_micros(1)).unwrap_or(floor)
            }
        });
        // Unreadable rows are skipped: read on past them until the page
        // (and one more key) is full or the account's keys end.
        let mut cursor = after;
        let mut readable = Vec::new();
        loop {
            let want = size + 1 - readable.len();
            let rows = self
                .backend
                .list(
                    service_account_id,
                    cursor.take(),
                    unused_before,
                    want as i64,
                )
                .await
                .map_err(StoreError::Backend)?;
            for row in &rows {
                match row.info() {
                    Ok(info) => readable.push(info),
                    Err(e) => warn_unreadable(&row.key_id, &e),
                }
            }
            match rows.last() {
                Some(last) if rows.len() == want && readable.len() <= size => {
                    cursor = Some((last.created_at, last.key_id.clone()));
                }
                _ => break,
            }
        }
        let (keys, more) = fill_page(readable.into_iter().map(Ok::<_, StoreError>), size)?;
        let next_page_token = more
            .then(|| keys.last().map(|k| page_token(&k.record)))
            .flatten();
        Ok(KeyPage::new(keys, next_page_token))
    }

    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        check_update(&update, self.clock.now())?;
        // An empty update changes nothing, its version included.
        let bump = !update.is_empty();
        let now = self.now();
        // A new setting (or none) starts a new generation.
        let credits = update
            .credits
            .map(|c| CreditColumns::of(c.map(|c| CreditState::set(c, now, 0)).as_ref()));
        let key_id = id.to_string();
        let info = self
            .tx(move |tx| {
                Box::pin(async move {
                    let Some(mut row) = tx.key_for_update(&key_id).await? else {
                        return Ok(None);
                    };
                    if let Err(moved) = check_version(id, version_of(row.version)?, expected) {
                        return Ok(Some(Err(moved)));
                    }
                    if let Some(description) = update.description {
                        row.description = description;
                    }
                    if let Some(scopes) = &update.scopes {
                        row.scopes = names(scopes);
                    }
                    if let Some(expires_at) = update.expires_at {
                        // A new expiry revives a key retired for disuse.
                        row.expires_at = expires_at.map(micros);
                        row.retired_unused_since = None;
                    }
                    if let Some(retire) = update.retire_when_unused {
                        row.retire_when_unused = retire;
                    }
                    if let Some(limits) = &update.rate_limits {
                        row.rate_limits = limits_text(limits);
                    }
                    if let Some(networks) = &update.allowed_networks {
                        row.allowed_networks = networks
                            .as_ref()
                            .map(Networks::to_strings)
                            .unwrap_or_default();
                    }
                    if let Some(metadata) = &update.metadata {
                        row.metadata = metadata.as_ref().map(|m| m.as_str().to_owned());
                    }
                    if let Some(locked) = update.operator_locked {
                        row.operator_locked = locked;
                    }
                    if let Some(mut credits) = credits {
                        credits.generation = row.credits.generation.saturating_add(1);
                        row.credits = credits;
                    }
                    if bump {
                        row.version = next_version(row.version)?;
                    }
                    // Checked before the commit: nothing fails after it.
                    let info = row.info()?;
                    tx.write_key(&row).await?;
                    tx.announce(&[key_id], &row.service_account_id, now).await?;
                    Ok(Some(Ok(info)))
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        let Some(info) = info.transpose()? else {
            return Ok(None);
        };
        self.changed(id, &info.record.service_account_id);
        Ok(Some(info))
    }

    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        let now = self.now();
        let key_id = id.to_string();
        let account = self
            .tx(move |tx| {
                Box::pin(async move {
                    tx.lock_key(&key_id).await?;
                    let Some(row) = tx.key_for_update(&key_id).await? else {
                        return Ok(None);
                    };
                    if let Err(moved) = check_version(id, version_of(row.version)?, expected) {
                        return Ok(Some(Err(moved)));
                    }
                    let Some(account) = tx.delete_key(&key_id).await? else {
                        return Ok(None);
                    };
                    tx.add_revoked(&key_id, now).await?;
                    tx.announce(&[key_id], &account, now).await?;
                    Ok(Some(Ok(account)))
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        match account.transpose()? {
            Some(account) => {
                self.changed(id, &account);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError> {
        let key = self.format.generate_for(id)?;
        let hash = self.hash_columns(&key)?;
        let hint = hint_of(&key);
        let now = self.now();
        // A grace period past year 9999 is simply "forever"; a zero grace
        // also ends an earlier grace.
        let valid_until = (!grace.is_zero()).then(|| {
            micros(
                now.checked_add(grace)
                    .unwrap_or_else(latest_time)
                    .min(latest_time()),
            )
        });
        let key_id = id.to_string();
        let written = self
            .tx(move |tx| {
                Box::pin(async move {
                    let Some(mut row) = tx.key_for_update(&key_id).await? else {
                        return Ok(None);
                    };
                    if let Err(moved) = check_version(id, version_of(row.version)?, expected) {
                        return Ok(Some(Err(moved)));
                    }
                    // The current hash becomes the previous one.
                    row.previous = match valid_until {
                        Some(_) => std::mem::replace(&mut row.hash, hash),
                        None => {
                            row.hash = hash;
                            HashColumns::default()
                        }
                    };
                    row.previous_valid_until = valid_until;
                    row.hint = hint;
                    row.version = next_version(row.version)?;
                    // Checked before the commit: nothing fails after it.
                    let record = row.record()?;
                    let version = version_of(row.version)?;
                    tx.write_key(&row).await?;
                    tx.announce(&[key_id], &row.service_account_id, now).await?;
                    Ok(Some(Ok((record, version))))
                })
            })
            .await
            .map_err(|e| self.collision_or_backend(e))?;
        let Some((record, version)) = written.transpose()? else {
            return Ok(None);
        };
        self.changed(id, &record.service_account_id);
        Ok(Some(CreatedKey::new(record, version, key)))
    }

    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.credit(id, amount, expected, false).await
    }

    async fn add_credits_unless_locked(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.credit(id, amount, expected, true).await
    }

    async fn account_rate_limits(
        &self,
        service_account_id: &str,
    ) -> Result<Vec<RateLimit>, StoreError> {
        check_account(service_account_id)?;
        let text = self
            .backend
            .account_limits(service_account_id)
            .await
            .map_err(StoreError::Backend)?;
        match text {
            Some(text) => parse_limits(
                &text,
                format_args!("service account {service_account_id:?}"),
            )
            .map_err(StoreError::Backend),
            None => Ok(Vec::new()),
        }
    }

    async fn set_account_rate_limits(
        &self,
        service_account_id: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        check_account_limits(service_account_id, &limits)?;
        let now = self.now();
        let account = service_account_id.to_owned();
        let text = limits_text(&limits);
        let ids = self
            .tx(move |tx| {
                Box::pin(async move {
                    // A create of this account commits before the key ids
                    // are read (and is announced), or waits for this write.
                    tx.lock_account(&account).await?;
                    let ids = tx.set_account_limits(&account, &text).await?;
                    // Every key of the account changed for every cache.
                    tx.announce(&ids, &account, now).await?;
                    Ok(ids)
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        for id in ids.iter().filter_map(|id| id.parse::<KeyId>().ok()) {
            self.changed(id, service_account_id);
        }
        Ok(())
    }

    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        // The newest time per key, in one transaction for the batch.
        let mut newest: HashMap<KeyId, SystemTime> = HashMap::new();
        for (id, at) in uses {
            let at = micros(*at);
            let entry = newest.entry(*id).or_insert(at);
            *entry = (*entry).max(at);
        }
        let newest: Vec<(String, SystemTime)> = newest
            .into_iter()
            .map(|(id, at)| (id.to_string(), at))
            .collect();
        self.tx(move |tx| Box::pin(async move { tx.touch(&newest).await }))
            .await
            .map_err(StoreError::Backend)
    }

    async fn export(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        let limit = export_page_size(limit)?;
        // Unreadable rows are skipped: read on past them until the page is
        // full or the keys end, so an empty page is still the end.
        let mut cursor = after.map(|id| id.to_string());
        let mut keys = Vec::new();
        loop {
            let want = limit - keys.len();
            let rows = self
                .backend
                .export(cursor.take(), want as i64)
                .await
                .map_err(StoreError::Backend)?;
            for row in &rows {
                match row.stored_key() {
                    Ok(key) => keys.push(key),
                    Err(e) => warn_unreadable(&row.key_id, &e),
                }
            }
            match rows.last() {
                Some(last) if rows.len() == want && keys.len() < limit => {
                    cursor = Some(last.key_id.clone());
                }
                _ => return Ok(keys),
            }
        }
    }

    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        let now = self.now();
        check_import(&key, &self.format, now)?;
        let version = imported_version(key.info.record.key_id, key.info.version)?;
        let record = &key.info.record;
        let id = record.key_id;
        let previous = match &key.previous {
            Some(p) => HashColumns::of(&p.hash).map_err(StoreError::Backend)?,
            None => HashColumns::default(),
        };
        // The credits start a generation here; the account's limits are
        // this store's own, never an import's.
        let (allowed_networks, metadata) = KeyRow::extras_of(record);
        let row = KeyRow {
            key_id: id.to_string(),
            service_account_id: record.service_account_id.to_string(),
            scopes: names(&record.scopes),
            description: record.description.clone(),
            created_at: micros(record.created_at),
            expires_at: record.expires_at.map(micros),
            last_used_at: key.info.last_used_at.map(micros),
            hint: key.info.hint.clone(),
            rate_limits: limits_text(&record.rate_limits),
            account_rate_limits: None,
            credits: CreditColumns::of(
                record.credits.map(|c| CreditState::set(c, now, 0)).as_ref(),
            ),
            version,
            hash: HashColumns::of(&key.hash).map_err(StoreError::Backend)?,
            previous,
            previous_valid_until: key.previous.map(|p| micros(p.valid_until)),
            compromised_at: record.compromise.as_ref().map(|c| micros(c.at)),
            compromise_url: record.compromise.as_ref().map(|c| c.url.clone()),
            compromise_source: record.compromise.as_ref().map(|c| c.source.clone()),
            compromise_action: record
                .compromise
                .as_ref()
                .map(|c| c.action.as_str().to_owned()),
            compromised_hash: record
                .compromise
                .as_ref()
                .and(key.compromised_hash)
                .map(|h| h.digest().to_vec()),
            allowed_networks,
            metadata,
            operator_locked: record.operator_locked,
            retire_when_unused: record.retire_when_unused,
            retired_unused_since: record.retired_unused_since.map(micros),
            unreadable: None,
        };
        let hash = key.hash;
        let limit = self.max_keys_per_account;
        let outcome = self
            .tx(move |tx| {
                Box::pin(async move {
                    let account = &row.service_account_id;
                    // The key id's lock first: a revoke, a revocation's
                    // import or a leak report of this id commits before
                    // the check below reads, or waits for this import.
                    tx.lock_key(&row.key_id).await?;
                    tx.lock_account(account).await?;
                    if tx.is_revoked(&row.key_id).await? {
                        return Ok(Err(import_revoked(id)));
                    }
                    if let Some(held) = tx.key_for_update(&row.key_id).await? {
                        if &held.service_account_id != account || held.hash.stored()? != Some(hash)
                        {
                            return Ok(Err(import_conflict(id)));
                        }
                        if let Some(at) = row.last_used_at {
                            tx.touch(&[(row.key_id.clone(), at)]).await?;
                        }
                        return Ok(Ok(Imported::AlreadyPresent));
                    }
                    if tx.count_keys(account).await? >= limit {
                        return Ok(Err(StoreError::key_limit_reached(
                            usize::try_from(limit).unwrap_or(usize::MAX),
                        )));
                    }
                    tx.insert_key(&row).await?;
                    Ok(Ok(Imported::Added))
                })
            })
            .await
            .map_err(|e| {
                if self.backend.is_unique_violation(&e) {
                    // The id or hash index: a concurrent import of the same
                    // key, or another key with this hash.
                    StoreError::conflict(id, ConflictKind::IdOrHashTaken)
                } else {
                    StoreError::Backend(e)
                }
            })?;
        outcome
    }

    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        let limit = export_page_size(limit)? as i64;
        let ids = self
            .backend
            .revoked(after.map(|id| id.to_string()), limit)
            .await
            .map_err(StoreError::Backend)?;
        ids.iter()
            .map(|id| {
                id.parse::<KeyId>().map_err(|_| {
                    StoreError::backend(format!("revoked id {} is not valid", shown_id(id)))
                })
            })
            .collect()
    }

    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        // The revocation is kept even when no key has the id; a key that
        // has it is deleted and announced as by `revoke`.
        let now = self.now();
        let key_id = id.to_string();
        let account = self
            .tx(move |tx| {
                Box::pin(async move {
                    tx.lock_key(&key_id).await?;
                    tx.add_revoked(&key_id, now).await?;
                    let account = tx.delete_key(&key_id).await?;
                    if let Some(account) = &account {
                        tx.announce(&[key_id], account, now).await?;
                    }
                    Ok(account)
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        if let Some(account) = &account {
            self.changed(id, account);
        }
        Ok(account.is_some())
    }

    async fn record_compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        let candidates = self.hasher.candidates(key);
        let id = key.id();
        let key_id = id.to_string();
        let now = self.now();
        // One transaction over the key's locked row: two reports of one
        // secret at once act once.
        let outcome = self
            .tx(move |tx| {
                Box::pin(async move {
                    tx.lock_key(&key_id).await?;
                    let Some(mut row) = tx.key_for_update(&key_id).await? else {
                        let revoked = tx.is_revoked(&key_id).await?;
                        return Ok(if revoked {
                            Compromised::AlreadyRevoked
                        } else {
                            Compromised::Unknown
                        });
                    };
                    let current = row.hash.stored()?;
                    let previous = row
                        .previous
                        .stored()?
                        .filter(|_| row.previous_valid_until.is_some_and(|until| now < until));
                    let matched = if candidates.matches(current.as_ref()) {
                        current
                    } else if candidates.matches(previous.as_ref()) {
                        previous
                    } else {
                        None
                    };
                    let Some(matched) = matched else {
                        return Ok(Compromised::Unknown);
                    };
                    let digest = matched.digest().to_vec();
                    if row.compromised_hash.as_ref() == Some(&digest) {
                        return Ok(Compromised::AlreadyReported);
                    }
                    row.compromised_at = Some(now);
                    row.compromise_url = Some(report.url);
                    row.compromise_source = Some(report.source);
                    row.compromise_action = Some(report.action.as_str().to_owned());
                    row.compromised_hash = Some(digest);
                    row.version = next_version(row.version)?;
                    // Checked before the commit: nothing fails after it.
                    let info = row.info()?;
                    tx.write_key(&row).await?;
                    if report.action == LeakAction::Revoke {
                        tx.delete_key(&key_id).await?;
                        tx.add_revoked(&key_id, now).await?;
                    }
                    tx.announce(&[key_id], &row.service_account_id, now).await?;
                    Ok(Compromised::Acted {
                        key: Box::new(info),
                    })
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        if let Compromised::Acted { key } = &outcome {
            self.changed(id, &key.record.service_account_id);
        }
        Ok(outcome)
    }

    async fn unreadable(&self) -> Result<Vec<String>, StoreError> {
        let mut cursor = None;
        let mut ids = Vec::new();
        loop {
            let rows = self
                .backend
                .export(cursor.take(), MAX_EXPORT_PAGE as i64)
                .await
                .map_err(StoreError::Backend)?;
            for row in &rows {
                if row.stored_key().is_err() && ids.len() < MAX_EXPORT_PAGE {
                    ids.push(shown_id(&row.key_id));
                }
            }
            match rows.last() {
                Some(last) if rows.len() == MAX_EXPORT_PAGE => cursor = Some(last.key_id.clone()),
                _ => return Ok(ids),
            }
        }
    }
}

/// A page of lifecycle rows: each readable one as its key (an unreadable
/// one is skipped, with a warning, as listings do), and the id to read on
/// from (the last row's, readable or not; `None` at the end).
fn lifecycle_page(rows: Vec<KeyRow>, limit: usize) -> (Vec<KeyInfo>, Option<String>) {
    let last = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.key_id.clone()))
        .flatten();
    let keys = rows
        .iter()
        .filter_map(|row| match row.info() {
            Ok(info) => Some(info),
            Err(e) => {
                warn_unreadable(&row.key_id, &e);
                None
            }
        })
        .collect();
    (keys, last)
}

impl<B: Backend> SqlKeyStore<B> {
    /// Up to `limit` readable keys of the pages `read` returns after
    /// `after`, reading on past unreadable rows.
    async fn lifecycle_keys<'a, F>(
        &'a self,
        after: Option<KeyId>,
        limit: usize,
        read: F,
    ) -> Result<Vec<KeyInfo>, StoreError>
    where
        F: Fn(Option<String>, i64) -> BoxFuture<'a, Result<Vec<KeyRow>, BoxError>>,
    {
        let limit = export_page_size(limit)?;
        let mut cursor = after.map(|id| id.to_string());
        let mut keys = Vec::new();
        loop {
            let want = limit - keys.len();
            let rows = read(cursor.take(), want as i64)
                .await
                .map_err(StoreError::Backend)?;
            let (page, next) = lifecycle_page(rows, want);
            keys.extend(page);
            match next {
                Some(next) if keys.len() < limit => cursor = Some(next),
                _ => return Ok(keys),
            }
        }
    }
}

#[async_trait]
impl<B: Backend> LifecycleStore for SqlKeyStore<B> {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        // Stored expiries are whole microseconds: "at or after `from`" for
        // a `from` between two microseconds is "from the next one on", and
        // "before `until`" is "before the next one".
        let (from, until) = (micros_ceil(from), micros_ceil(until));
        self.lifecycle_keys(after, limit, |after, limit| {
            self.backend.expiring(from, until, after, limit)
        })
        .await
    }

    async fn unused(
        &self,
        before: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let before = micros_ceil(before);
        self.lifecycle_keys(after, limit, |after, limit| {
            self.backend.unused(before, after, limit)
        })
        .await
    }

    async fn record_notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        check_notice_times(key, window, announced)?;
        self.backend
            .record_notice(
                key.as_str(),
                kind.as_str(),
                micros(window),
                self.now(),
                announced.map(micros),
            )
            .await
            .map_err(StoreError::Backend)
    }

    async fn notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
    ) -> Result<Option<SentNotice>, StoreError> {
        let sent = self
            .backend
            .notice(key.as_str(), kind.as_str(), micros(window))
            .await
            .map_err(StoreError::Backend)?;
        Ok(sent.map(|(sent_at, announced)| SentNotice::new(sent_at, announced)))
    }

    async fn retire_unused(
        &self,
        key: KeyId,
        last_used_at: Option<SystemTime>,
        unused_since: SystemTime,
        at: SystemTime,
    ) -> Result<Option<KeyInfo>, StoreError> {
        check_retirement_times(key, unused_since, at)?;
        let now = self.now();
        let key_id = key.to_string();
        let (seen, since, at) = (last_used_at.map(micros), micros(unused_since), micros(at));
        let info = self
            .tx(move |tx| {
                Box::pin(async move {
                    // One conditional write: a use recorded meanwhile moved
                    // `last_used_at`, and the key is left as it is.
                    if !tx.retire_unused(&key_id, seen, since, at).await? {
                        return Ok(None);
                    }
                    let row = tx
                        .key_for_update(&key_id)
                        .await?
                        .ok_or("the retired key vanished")?;
                    // Checked before the commit: nothing fails after it.
                    let info = row.info()?;
                    tx.announce(&[key_id], &row.service_account_id, now).await?;
                    Ok(Some(info))
                })
            })
            .await
            .map_err(StoreError::Backend)?;
        if let Some(info) = &info {
            self.changed(key, &info.record.service_account_id);
        }
        Ok(info)
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let until = micros(lease_end(now, ttl));
        self.backend
            .lease(name, holder, now, until)
            .await
            .map_err(StoreError::Backend)
    }
}

/// `t` rounded up to the next whole microsecond (itself if whole): the
/// first stored time at or after it.
fn micros_ceil(t: SystemTime) -> SystemTime {
    let floor = micros(t);
    if floor == t {
        t
    } else {
        floor.checked_add(Duration::from_micros(1)).unwrap_or(floor)
    }
}

/// Writes, inside the `impl` of a backend's builder (which keeps a
/// [`SqlSettings`] in its field `settings`), the setters every SQL store's
/// builder has: `format`, `hasher`, `clock` (feature `test-util` of the
/// backend crate) and `max_keys_per_account`.
#[macro_export]
macro_rules! settings_setters {
    () => {
        /// The key format (default prefix `tak`).
        pub fn format(mut self, format: ::tower_api_key::KeyFormat) -> Self {
            self.settings.format = format;
            self
        }

        /// How keys are hashed (default plain SHA-256). Keep the peppers out
        /// of the database.
        pub fn hasher(mut self, hasher: ::tower_api_key::hash::KeyHasher) -> Self {
            self.settings.hasher = hasher;
            self
        }

        /// The clock for creation times, expiry checks, grace deadlines and
        /// uses.
        #[cfg(feature = "test-util")]
        #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
        pub fn clock(mut self, clock: ::std::sync::Arc<dyn ::tower_api_key::clock::Clock>) -> Self {
            self.settings.clock = $crate::StoreClock::injected(clock);
            self
        }

        /// The most keys one service account may hold (default
        /// [`DEFAULT_MAX_KEYS_PER_ACCOUNT`](::tower_api_key::store::DEFAULT_MAX_KEYS_PER_ACCOUNT),
        /// 1,000), expired keys included; a create past it fails with
        /// [`StoreError::KeyLimitReached`](::tower_api_key::store::StoreError::KeyLimitReached).
        /// At least 1. Counted under the store's per-account lock (SQLite's
        /// write lock, PostgreSQL's advisory lock), so stores creating at
        /// once cannot overshoot; every store on one database should use the
        /// same limit.
        pub fn max_keys_per_account(mut self, limit: usize) -> Self {
            self.settings.max_keys_per_account = limit.max(1);
            self
        }
    };
}

/// Implements [`Verifier`], [`CreditLedger`], [`KeyStore`] and
/// [`LifecycleStore`] for a backend crate's store type, and writes its
/// methods `format`, `migrate`, `schema_version`, `rate_limit_sync` and
/// `verify_work` (feature `test-util` of the backend crate), by forwarding
/// to the [`SqlKeyStore`] at a field path, with the backend's migration
/// list: `delegate_store!(SqliteKeyStore => inner.core, migrations);`. The
/// crate using it depends on `async-trait` and `tower-api-key`.
#[macro_export]
macro_rules! delegate_store {
    ($store:ty => $($core:ident).+, $migrations:path) => {
        impl $store {
            /// The format of the keys this store issues: what
            /// [`Verifier::key_format`](::tower_api_key::Verifier::key_format)
            /// returns, without the `Option`.
            pub fn format(&self) -> ::tower_api_key::KeyFormat {
                self.$($core).+.format()
            }

            /// Creates or updates the schema: applies the migrations the
            /// database lacks, in one transaction. Idempotent; safe to call
            /// from every replica or process at every start (concurrent calls
            /// wait for each other, and the second finds nothing to do).
            pub async fn migrate(
                &self,
            ) -> ::std::result::Result<$crate::MigrationReport, ::tower_api_key::store::StoreError>
            {
                self.$($core).+.migrate($migrations()).await
            }

            /// The newest migration applied to the database: 0 when it has
            /// none (never migrated, or a database of another program), below
            /// the last of `migrations()` when this release's are not all
            /// applied yet. Only reads: a tool checks it before work that
            /// needs the schema, to say "migrate first" rather than fail on a
            /// missing table half-way.
            pub async fn schema_version(
                &self,
            ) -> ::std::result::Result<u32, ::tower_api_key::store::StoreError> {
                self.$($core).+.schema_version().await
            }

            /// Shares rate limits between every store on this database (table
            /// `tower_api_key_rate_buckets`), on this store's connections:
            /// pass it to
            /// [`LimitSettingsBuilder::shared`](::tower_api_key::limits::LimitSettingsBuilder::shared).
            /// Each sync is one round trip to the database.
            pub fn rate_limit_sync(&self) -> $crate::SqlRateLimitSync {
                self.$($core).+.rate_limit_sync()
            }

            /// Statements run and bytes of hash columns read by
            /// [`verify`](::tower_api_key::Verifier::verify) before it knew
            /// whether the secret matched, since the store was made (feature
            /// `test-util`): equal for a known id with a wrong secret and an
            /// unknown id.
            #[cfg(feature = "test-util")]
            #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
            pub fn verify_work(&self) -> (u64, u64) {
                self.$($core).+.verify_work()
            }
        }

        #[::async_trait::async_trait]
        impl ::tower_api_key::Verifier for $store {
            async fn verify(
                &self,
                key: &::tower_api_key::PresentedKey,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::KeyRecord>,
                ::tower_api_key::VerifierError,
            > {
                ::tower_api_key::Verifier::verify(&self.$($core).+, key).await
            }

            fn invalidations(&self) -> ::std::option::Option<&::tower_api_key::Invalidations> {
                ::std::option::Option::Some(self.$($core).+.invalidations())
            }

            fn key_format(&self) -> ::std::option::Option<::tower_api_key::KeyFormat> {
                ::std::option::Option::Some(self.$($core).+.format())
            }
        }

        #[::async_trait::async_trait]
        impl ::tower_api_key::CreditLedger for $store {
            async fn lease_credits(
                &self,
                id: ::tower_api_key::KeyId,
                want: u64,
                now: ::std::time::SystemTime,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::limits::CreditLease>,
                ::tower_api_key::VerifierError,
            > {
                ::tower_api_key::CreditLedger::lease_credits(&self.$($core).+, id, want, now).await
            }

            async fn return_credits(
                &self,
                id: ::tower_api_key::KeyId,
                generation: u64,
                amount: u64,
            ) -> ::std::result::Result<(), ::tower_api_key::VerifierError> {
                ::tower_api_key::CreditLedger::return_credits(&self.$($core).+, id, generation, amount)
                    .await
            }
        }

        #[::async_trait::async_trait]
        impl ::tower_api_key::KeyStore for $store {
            async fn create(
                &self,
                new: ::tower_api_key::store::NewKey,
            ) -> ::std::result::Result<
                ::tower_api_key::store::CreatedKey,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::create(&self.$($core).+, new).await
            }

            async fn get(
                &self,
                id: ::tower_api_key::KeyId,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::get(&self.$($core).+, id).await
            }

            async fn list(
                &self,
                service_account_id: &str,
                page: ::tower_api_key::store::ListRequest,
            ) -> ::std::result::Result<
                ::tower_api_key::store::KeyPage,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::list(&self.$($core).+, service_account_id, page).await
            }

            async fn update(
                &self,
                id: ::tower_api_key::KeyId,
                update: ::tower_api_key::store::KeyUpdate,
                expected: ::std::option::Option<::tower_api_key::store::Version>,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::update(&self.$($core).+, id, update, expected).await
            }

            async fn revoke(
                &self,
                id: ::tower_api_key::KeyId,
                expected: ::std::option::Option<::tower_api_key::store::Version>,
            ) -> ::std::result::Result<bool, ::tower_api_key::store::StoreError> {
                ::tower_api_key::KeyStore::revoke(&self.$($core).+, id, expected).await
            }

            async fn reissue(
                &self,
                id: ::tower_api_key::KeyId,
                grace: ::std::time::Duration,
                expected: ::std::option::Option<::tower_api_key::store::Version>,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::CreatedKey>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::reissue(&self.$($core).+, id, grace, expected).await
            }

            async fn add_credits(
                &self,
                id: ::tower_api_key::KeyId,
                amount: u64,
                expected: ::std::option::Option<::tower_api_key::store::Version>,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::add_credits(&self.$($core).+, id, amount, expected).await
            }

            async fn add_credits_unless_locked(
                &self,
                id: ::tower_api_key::KeyId,
                amount: u64,
                expected: ::std::option::Option<::tower_api_key::store::Version>,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::add_credits_unless_locked(
                    &self.$($core).+,
                    id,
                    amount,
                    expected,
                )
                .await
            }

            async fn account_rate_limits(
                &self,
                service_account_id: &str,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::tower_api_key::limits::RateLimit>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::account_rate_limits(&self.$($core).+, service_account_id)
                    .await
            }

            async fn set_account_rate_limits(
                &self,
                service_account_id: &str,
                limits: ::std::vec::Vec<::tower_api_key::limits::RateLimit>,
            ) -> ::std::result::Result<(), ::tower_api_key::store::StoreError> {
                ::tower_api_key::KeyStore::set_account_rate_limits(
                    &self.$($core).+,
                    service_account_id,
                    limits,
                )
                .await
            }

            async fn record_usage(
                &self,
                uses: &[(::tower_api_key::KeyId, ::std::time::SystemTime)],
            ) -> ::std::result::Result<(), ::tower_api_key::store::StoreError> {
                ::tower_api_key::KeyStore::record_usage(&self.$($core).+, uses).await
            }

            async fn export(
                &self,
                after: ::std::option::Option<::tower_api_key::KeyId>,
                limit: usize,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::tower_api_key::store::StoredKey>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::export(&self.$($core).+, after, limit).await
            }

            async fn import(
                &self,
                key: ::tower_api_key::store::StoredKey,
            ) -> ::std::result::Result<
                ::tower_api_key::store::Imported,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::import(&self.$($core).+, key).await
            }

            async fn export_revoked(
                &self,
                after: ::std::option::Option<::tower_api_key::KeyId>,
                limit: usize,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::tower_api_key::KeyId>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::export_revoked(&self.$($core).+, after, limit).await
            }

            async fn import_revoked(
                &self,
                id: ::tower_api_key::KeyId,
            ) -> ::std::result::Result<bool, ::tower_api_key::store::StoreError> {
                ::tower_api_key::KeyStore::import_revoked(&self.$($core).+, id).await
            }

            async fn record_compromise(
                &self,
                key: &::tower_api_key::PresentedKey,
                report: ::tower_api_key::store::CompromiseReport,
            ) -> ::std::result::Result<
                ::tower_api_key::store::Compromised,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::record_compromise(&self.$($core).+, key, report).await
            }

            async fn unreadable(
                &self,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::std::string::String>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::KeyStore::unreadable(&self.$($core).+).await
            }
        }

        #[::async_trait::async_trait]
        impl ::tower_api_key::store::LifecycleStore for $store {
            fn now(&self) -> ::std::time::SystemTime {
                ::tower_api_key::store::LifecycleStore::now(&self.$($core).+)
            }

            async fn expiring(
                &self,
                from: ::std::time::SystemTime,
                until: ::std::time::SystemTime,
                after: ::std::option::Option<::tower_api_key::KeyId>,
                limit: usize,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::store::LifecycleStore::expiring(
                    &self.$($core).+, from, until, after, limit,
                )
                .await
            }

            async fn unused(
                &self,
                before: ::std::time::SystemTime,
                after: ::std::option::Option<::tower_api_key::KeyId>,
                limit: usize,
            ) -> ::std::result::Result<
                ::std::vec::Vec<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::store::LifecycleStore::unused(&self.$($core).+, before, after, limit)
                    .await
            }

            async fn record_notice(
                &self,
                key: ::tower_api_key::KeyId,
                kind: ::tower_api_key::store::NoticeKind,
                window: ::std::time::SystemTime,
                announced: ::std::option::Option<::std::time::SystemTime>,
            ) -> ::std::result::Result<bool, ::tower_api_key::store::StoreError> {
                ::tower_api_key::store::LifecycleStore::record_notice(
                    &self.$($core).+, key, kind, window, announced,
                )
                .await
            }

            async fn notice(
                &self,
                key: ::tower_api_key::KeyId,
                kind: ::tower_api_key::store::NoticeKind,
                window: ::std::time::SystemTime,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::SentNotice>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::store::LifecycleStore::notice(&self.$($core).+, key, kind, window)
                    .await
            }

            async fn retire_unused(
                &self,
                key: ::tower_api_key::KeyId,
                last_used_at: ::std::option::Option<::std::time::SystemTime>,
                unused_since: ::std::time::SystemTime,
                at: ::std::time::SystemTime,
            ) -> ::std::result::Result<
                ::std::option::Option<::tower_api_key::store::KeyInfo>,
                ::tower_api_key::store::StoreError,
            > {
                ::tower_api_key::store::LifecycleStore::retire_unused(
                    &self.$($core).+, key, last_used_at, unused_since, at,
                )
                .await
            }

            async fn lease(
                &self,
                name: &str,
                holder: &str,
                ttl: ::std::time::Duration,
            ) -> ::std::result::Result<bool, ::tower_api_key::store::StoreError> {
                ::tower_api_key::store::LifecycleStore::lease(&self.$($core).+, name, holder, ttl)
                    .await
            }
        }
    };
}
