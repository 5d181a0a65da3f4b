//! A store written outside the `tower-api-key` crate, with its public items
//! only, runs the whole conformance suite: what a third-party store's test
//! file looks like.
//!
//! The store keeps its keys in a [`MemoryStore`] it owns and answers every
//! call of [`Verifier`] and [`KeyStore`] itself, by forwarding. It is not a
//! store of its own keys (a `BTreeMap` behind a mutex): the rules a store
//! must apply (credit generations and refills, page tokens, the page byte
//! budget, the checks of new, updated and imported records, versions) are
//! `pub(crate)` in the root crate today, and a store written from scratch
//! needs them as a public store kit first (issue 21, "Stores use only the
//! public API"). What this file proves: the traits can be implemented with
//! public items alone, and the macros work from another crate.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tower_api_key::limits::{CreditLease, RateLimit};
use tower_api_key::store::{
    CreatedKey, Imported, KeyInfo, KeyPage, KeyUpdate, ListRequest, NewKey, StoreError, StoredKey,
    Version,
};
use tower_api_key::{
    Invalidations, KeyFormat, KeyId, KeyRecord, KeyStore, MemoryStore, PresentedKey, Verifier,
    VerifierError,
};
use tower_api_key_conformance::{store_conformance, StoreFactory, StoreSettings};

/// The outside store: its own type, its own trait implementations.
#[derive(Clone, Debug)]
struct OutsideStore(MemoryStore);

#[async_trait]
impl Verifier for OutsideStore {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.0.verify(key).await
    }
    fn invalidations(&self) -> Option<&Invalidations> {
        self.0.invalidations()
    }
    fn key_format(&self) -> Option<KeyFormat> {
        self.0.key_format()
    }
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        self.0.lease_credits(id, want, now).await
    }
    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError> {
        self.0.return_credits(id, generation, amount).await
    }
}

#[async_trait]
impl KeyStore for OutsideStore {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        self.0.create(new).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        self.0.get(id).await
    }
    async fn list(&self, account: &str, page: ListRequest) -> Result<KeyPage, StoreError> {
        self.0.list(account, page).await
    }
    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.0.update(id, update, expected).await
    }
    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        self.0.revoke(id, expected).await
    }
    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError> {
        self.0.reissue(id, grace, expected).await
    }
    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.0.add_credits(id, amount, expected).await
    }
    async fn account_rate_limits(&self, account: &str) -> Result<Vec<RateLimit>, StoreError> {
        self.0.account_rate_limits(account).await
    }
    async fn set_account_rate_limits(
        &self,
        account: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        self.0.set_account_rate_limits(account, limits).await
    }
    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        self.0.record_usage(uses).await
    }
    async fn export(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        self.0.export(after, limit).await
    }
    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        self.0.import(key).await
    }
    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.0.export_revoked(after, limit).await
    }
    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        self.0.import_revoked(id).await
    }
}

/// Opens a fresh outside store for each store a test asks for.
struct OutsideFactory;

impl StoreFactory for OutsideFactory {
    type Store = OutsideStore;

    async fn open(_test: &'static str) -> Option<Self> {
        Some(Self)
    }

    async fn store(&self, s: StoreSettings) -> OutsideStore {
        OutsideStore(
            MemoryStore::builder()
                .with_clock(s.clock)
                .with_hasher(s.hasher)
                .with_format(s.format)
                .max_keys_per_account(s.max_keys_per_account)
                .build(),
        )
    }
}

store_conformance!(OutsideFactory);
