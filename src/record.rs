//! What a verifier returns for a valid key: [`KeyRecord`].

use std::sync::Arc;
use std::time::SystemTime;

use crate::key::KeyId;
use crate::limits::{Credits, RateLimit};
use crate::metadata::Metadata;
use crate::network::Networks;
use crate::scope::ScopeSet;

/// A valid key as its store knows it: what a verifier returns. Never holds
/// secret material.
///
/// The identity handed to the application, [`Caller`](crate::Caller), is
/// the cache's entry over it.
///
/// ```
/// use tower_api_key::KeyId;
/// use tower_api_key::KeyRecord;
/// use tower_api_key::ScopeSet;
/// use tower_api_key::Caller;
///
/// let id: KeyId = "0123456789abcdef".parse().unwrap();
/// let record = KeyRecord::new(id, "sa-translator")
///     .with_scopes(ScopeSet::new(["yc.ai.translate.execute"]).unwrap());
/// let caller = Caller::from(record);
/// assert_eq!(caller.service_account_id(), "sa-translator");
/// assert_eq!(caller.key_id(), id);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The key's public id.
    pub key_id: KeyId,
    /// The service account the key belongs to; the application applies that
    /// account's own permissions.
    pub service_account_id: Arc<str>,
    /// The key's scopes; empty for an unscoped key.
    pub scopes: ScopeSet,
    /// Free text from the key's owner.
    pub description: String,
    /// When the key was created.
    pub created_at: SystemTime,
    /// When the key stops working, if ever. Checked on every request.
    pub expires_at: Option<SystemTime>,
    /// The key's own rate limits; empty: none (a route's default may apply).
    pub rate_limits: Vec<RateLimit>,
    /// The service account's rate limits, shared by all its keys.
    pub account_rate_limits: Vec<RateLimit>,
    /// The key's credits, if it has any: each request spends its cost, and
    /// at zero the key is refused. `remaining` is the store's count when the
    /// record was read.
    pub credits: Option<Credits>,
    /// The key was presented with a secret that a reissue replaced, which
    /// works until its grace period ends (`expires_at` is then at most that
    /// end). Such a caller may not manage keys: a leaked old secret must not
    /// take over the key that replaced it.
    pub replaced_secret: bool,
    /// The key was reported leaked (a secret-scanning report), if ever: when,
    /// where and what the store did. It stays on the key after a reissue, as
    /// its history. Boxed: most keys have none, and a cached key should not
    /// carry its room.
    pub compromise: Option<Box<Compromise>>,
    /// The secret this record was read for is the one reported leaked under
    /// [`LeakAction::Quarantine`]: the key authenticates, but every route
    /// refuses it with 403 `key_compromised` until it is reissued (the new
    /// secret is not quarantined).
    pub quarantined: bool,
    /// The networks the key may be used from; `None`: any. A request from
    /// elsewhere, or whose client address cannot be told, is refused with
    /// 403 `network_not_allowed` (see
    /// [`AuthenticatorBuilder::trusted_proxies`](crate::AuthenticatorBuilder::trusted_proxies)).
    pub allowed_networks: Option<Networks>,
    /// What the operator attached to the key (a JSON object), for handlers
    /// ([`Caller::metadata`](crate::Caller::metadata)); never used to
    /// authorize.
    pub metadata: Option<Metadata>,
    /// The operator marked the key read-only for managers: a management
    /// router (feature `management`) refuses every change of its fields
    /// (403 `key_locked`) unless it was built with
    /// `ManagementApiBuilder::may_lock_keys`; deleting and reissuing it stay
    /// allowed. Never checked when the key authenticates.
    pub operator_locked: bool,
    /// Whether the lifecycle task may retire the key once nobody has used it
    /// for its retirement period (default `true`); `false` opts the key out.
    pub retire_when_unused: bool,
    /// Set when the lifecycle task retired the key for disuse: it set
    /// `expires_at` because the key was unused since this instant (its last
    /// use, or its creation if never used). Shows why the key stopped; a new
    /// expiry set by an update clears it.
    pub retired_unused_since: Option<SystemTime>,
}

/// What a store does with a key reported leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LeakAction {
    /// Revoke the key: refused everywhere within the store's revocation bound.
    #[default]
    Revoke,
    /// Keep the key authenticating but refuse the reported secret on every
    /// route with 403 `key_compromised` (gRPC 7), so its owner sees why,
    /// until the key is reissued.
    Quarantine,
    /// Only record the report on the key (and tell the application).
    Notify,
}

impl LeakAction {
    /// Its name: `revoke`, `quarantine` or `notify`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Quarantine => "quarantine",
            Self::Notify => "notify",
        }
    }

    /// The action named `name` ([`as_str`](Self::as_str)).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "revoke" => Some(Self::Revoke),
            "quarantine" => Some(Self::Quarantine),
            "notify" => Some(Self::Notify),
            _ => None,
        }
    }
}

impl std::fmt::Display for LeakAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A leak report recorded on a key: when it came, where the secret was
/// found, who reported it, and what the store did. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compromise {
    /// When the store recorded the report.
    pub at: SystemTime,
    /// Where the secret was found (the report's `url`), possibly empty.
    pub url: String,
    /// What found it (the report's `source`, such as `content` or
    /// `commit`), possibly empty.
    pub source: String,
    /// What the store did.
    pub action: LeakAction,
}

impl Compromise {
    /// A report recorded `at`, of a secret found at `url` by `source`,
    /// acted on with `action`.
    pub fn new(
        at: SystemTime,
        url: impl Into<String>,
        source: impl Into<String>,
        action: LeakAction,
    ) -> Self {
        Self {
            at,
            url: url.into(),
            source: source.into(),
            action,
        }
    }
}

impl KeyRecord {
    /// An unscoped, non-expiring record created now.
    pub fn new(key_id: KeyId, service_account_id: impl Into<Arc<str>>) -> Self {
        Self {
            key_id,
            service_account_id: service_account_id.into(),
            scopes: ScopeSet::empty(),
            description: String::new(),
            created_at: SystemTime::now(),
            expires_at: None,
            rate_limits: Vec::new(),
            account_rate_limits: Vec::new(),
            credits: None,
            replaced_secret: false,
            compromise: None,
            quarantined: false,
            allowed_networks: None,
            metadata: None,
            operator_locked: false,
            retire_when_unused: true,
            retired_unused_since: None,
        }
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry.
    pub fn with_expires_at(mut self, expires_at: Option<SystemTime>) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the creation time.
    pub fn with_created_at(mut self, created_at: SystemTime) -> Self {
        self.created_at = created_at;
        self
    }

    /// Sets the key's own rate limits.
    pub fn with_rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = limits;
        self
    }

    /// Sets the service account's rate limits.
    pub fn with_account_rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.account_rate_limits = limits;
        self
    }

    /// Sets the credits.
    pub fn with_credits(mut self, credits: Option<Credits>) -> Self {
        self.credits = credits;
        self
    }

    /// Sets the allowed networks (`None`: any).
    pub fn with_allowed_networks(mut self, networks: Option<Networks>) -> Self {
        self.allowed_networks = networks;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets whether the operator marked the key read-only for managers.
    pub fn with_operator_locked(mut self, locked: bool) -> Self {
        self.operator_locked = locked;
        self
    }

    /// Sets whether the lifecycle task may retire the key for disuse.
    pub fn with_retire_when_unused(mut self, retire: bool) -> Self {
        self.retire_when_unused = retire;
        self
    }

    /// Sets the instant since which the key was unused when the lifecycle
    /// task retired it (`None`: not retired for disuse).
    pub fn with_retired_unused_since(mut self, since: Option<SystemTime>) -> Self {
        self.retired_unused_since = since;
        self
    }

    /// Whether the key has expired at `now` (expiry is exclusive: a key is
    /// refused from its `expires_at` on).
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}
