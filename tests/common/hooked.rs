//! A memory store with a hook before its writes: what tests use to hold a
//! write at the moment an attack needs it, change the key under a request,
//! count usage flushes or make them fail. Everything else is the memory
//! store's own.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tower_api_key::limits::{CreditLease, RateLimit};
use tower_api_key::store::{
    CompromiseReport, Compromised, CreatedKey, Imported, KeyInfo, KeyPage, KeyUpdate,
    LifecycleStore, ListRequest, NewKey, NoticeKind, SentNotice, StoreError, StoredKey, Version,
};
use tower_api_key::{
    CreditLedger, Invalidations, KeyFormat, KeyId, KeyRecord, KeyStore, MemoryStore, PresentedKey,
    Verifier, VerifierError,
};

/// A write a [`Hooked`] store is about to make.
#[derive(Debug)]
pub enum Call<'a> {
    Update {
        id: KeyId,
        update: &'a KeyUpdate,
        expected: Option<Version>,
    },
    Revoke {
        id: KeyId,
        expected: Option<Version>,
    },
    AddCredits {
        id: KeyId,
        expected: Option<Version>,
    },
    RecordUsage {
        uses: &'a [(KeyId, SystemTime)],
    },
    RecordCompromise {
        id: KeyId,
    },
    /// The lifecycle task records a notice (`LifecycleStore::record_notice`).
    RecordNotice {
        id: KeyId,
        kind: NoticeKind,
    },
}

/// Runs before a write of a [`Hooked`] store; an error is the write's
/// answer, and the write is not made.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    async fn before(&self, store: &MemoryStore, call: Call<'_>) -> Result<(), StoreError>;
}

/// A memory store whose writes run `hook` first.
pub struct Hooked<H> {
    pub store: MemoryStore,
    pub hook: Arc<H>,
}

impl<H> Clone for Hooked<H> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            hook: self.hook.clone(),
        }
    }
}

impl<H: Hook> Hooked<H> {
    pub fn new(store: MemoryStore, hook: H) -> Self {
        Self {
            store,
            hook: Arc::new(hook),
        }
    }
}

#[async_trait]
impl<H: Hook> Verifier for Hooked<H> {
    async fn verify(&self, key: &PresentedKey) -> Result<Option<KeyRecord>, VerifierError> {
        self.store.verify(key).await
    }
    fn invalidations(&self) -> Option<&Invalidations> {
        self.store.invalidations()
    }
    fn key_format(&self) -> Option<KeyFormat> {
        self.store.key_format()
    }
}

#[async_trait]
impl<H: Hook> CreditLedger for Hooked<H> {
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError> {
        self.store.lease_credits(id, want, now).await
    }
    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        n: u64,
    ) -> Result<(), VerifierError> {
        self.store.return_credits(id, generation, n).await
    }
}

#[async_trait]
impl<H: Hook> KeyStore for Hooked<H> {
    async fn create(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        self.store.create(new).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<KeyInfo>, StoreError> {
        self.store.get(id).await
    }
    async fn list(&self, sa: &str, page: ListRequest) -> Result<KeyPage, StoreError> {
        self.store.list(sa, page).await
    }
    async fn update(
        &self,
        id: KeyId,
        update: KeyUpdate,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let call = Call::Update {
            id,
            update: &update,
            expected,
        };
        self.hook.before(&self.store, call).await?;
        self.store.update(id, update, expected).await
    }
    async fn revoke(&self, id: KeyId, expected: Option<Version>) -> Result<bool, StoreError> {
        let call = Call::Revoke { id, expected };
        self.hook.before(&self.store, call).await?;
        self.store.revoke(id, expected).await
    }
    async fn reissue(
        &self,
        id: KeyId,
        grace: Duration,
        expected: Option<Version>,
    ) -> Result<Option<CreatedKey>, StoreError> {
        self.store.reissue(id, grace, expected).await
    }
    async fn add_credits(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let call = Call::AddCredits { id, expected };
        self.hook.before(&self.store, call).await?;
        self.store.add_credits(id, amount, expected).await
    }

    async fn add_credits_unless_locked(
        &self,
        id: KeyId,
        amount: u64,
        expected: Option<Version>,
    ) -> Result<Option<KeyInfo>, StoreError> {
        let call = Call::AddCredits { id, expected };
        self.hook.before(&self.store, call).await?;
        self.store
            .add_credits_unless_locked(id, amount, expected)
            .await
    }
    async fn account_rate_limits(&self, sa: &str) -> Result<Vec<RateLimit>, StoreError> {
        self.store.account_rate_limits(sa).await
    }
    async fn set_account_rate_limits(
        &self,
        sa: &str,
        limits: Vec<RateLimit>,
    ) -> Result<(), StoreError> {
        self.store.set_account_rate_limits(sa, limits).await
    }
    async fn record_usage(&self, uses: &[(KeyId, SystemTime)]) -> Result<(), StoreError> {
        self.hook
            .before(&self.store, Call::RecordUsage { uses })
            .await?;
        self.store.record_usage(uses).await
    }
    async fn export(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        self.store.export(after, limit).await
    }
    async fn import(&self, key: StoredKey) -> Result<Imported, StoreError> {
        self.store.import(key).await
    }
    async fn export_revoked(
        &self,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.store.export_revoked(after, limit).await
    }
    async fn import_revoked(&self, id: KeyId) -> Result<bool, StoreError> {
        self.store.import_revoked(id).await
    }
    async fn record_compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        self.hook
            .before(&self.store, Call::RecordCompromise { id: key.id() })
            .await?;
        self.store.record_compromise(key, report).await
    }
}

#[async_trait]
impl<H: Hook> LifecycleStore for Hooked<H> {
    fn now(&self) -> SystemTime {
        self.store.now()
    }
    async fn expiring(
        &self,
        from: SystemTime,
        until: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        self.store.expiring(from, until, after, limit).await
    }
    async fn unused(
        &self,
        before: SystemTime,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        self.store.unused(before, after, limit).await
    }
    async fn record_notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
        announced: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        self.hook
            .before(&self.store, Call::RecordNotice { id: key, kind })
            .await?;
        self.store.record_notice(key, kind, window, announced).await
    }
    async fn notice(
        &self,
        key: KeyId,
        kind: NoticeKind,
        window: SystemTime,
    ) -> Result<Option<SentNotice>, StoreError> {
        self.store.notice(key, kind, window).await
    }
    async fn retire_unused(
        &self,
        key: KeyId,
        last_used_at: Option<SystemTime>,
        unused_since: SystemTime,
        at: SystemTime,
    ) -> Result<Option<KeyInfo>, StoreError> {
        self.store
            .retire_unused(key, last_used_at, unused_since, at)
            .await
    }
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.store.lease(name, holder, ttl).await
    }
}
