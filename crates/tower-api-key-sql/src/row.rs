//! A key's row as every SQL backend reads and writes it: the columns of
//! `tower_api_key_keys` in Rust types, before any check. Each backend maps
//! its own rows to it and from it; the checks and decoding are here, once.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower_api_key::hash::StoredHash;
use tower_api_key::store::kit::CreditState;
use tower_api_key::store::{KeyInfo, LeakAction, PreviousHash, StoredKey};
use tower_api_key::{KeyId, KeyRecord, Metadata, Networks, ScopeSet};

use crate::{
    compromise_of, compromised_hash, parse_limits, scheme_columns, stored_hash, version_of,
    BoxError, CreditColumns,
};

/// The three columns a stored hash is kept in; all `None` for no hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashColumns {
    /// The digest (`hash`, `previous_hash`): 32 bytes.
    pub digest: Option<Vec<u8>>,
    /// The scheme's name (`hash_scheme`).
    pub scheme: Option<String>,
    /// The pepper version of an HMAC scheme (`hash_pepper_version`).
    pub pepper_version: Option<i64>,
}

impl HashColumns {
    /// The columns of `hash`.
    pub fn of(hash: &StoredHash) -> Result<Self, BoxError> {
        let (scheme, pepper_version) = scheme_columns(hash.scheme())?;
        Ok(Self {
            digest: Some(hash.digest().to_vec()),
            scheme: Some(scheme.to_owned()),
            pepper_version,
        })
    }

    /// The stored hash these columns hold; `None` when the digest is NULL.
    pub fn stored(&self) -> Result<Option<StoredHash>, BoxError> {
        stored_hash(
            self.digest.as_deref(),
            self.scheme.as_deref(),
            self.pepper_version,
        )
    }
}

/// A key's whole row: what a backend reads (with the account's rate limits,
/// read in the same statement) and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// `key_id`, as stored (it may not be a valid id).
    pub key_id: String,
    /// `service_account_id`.
    pub service_account_id: String,
    /// `scopes`, one name each.
    pub scopes: Vec<String>,
    /// `description`.
    pub description: String,
    /// `created_at`.
    pub created_at: SystemTime,
    /// `expires_at`.
    pub expires_at: Option<SystemTime>,
    /// `last_used_at`.
    pub last_used_at: Option<SystemTime>,
    /// `hint`.
    pub hint: String,
    /// `rate_limits`, as [`limits_text`](crate::limits_text) writes them.
    pub rate_limits: String,
    /// The rate limits of the key's account, read with the row; never
    /// written with it.
    pub account_rate_limits: Option<String>,
    /// The credit columns.
    pub credits: CreditColumns,
    /// `version`.
    pub version: i64,
    /// The current hash.
    pub hash: HashColumns,
    /// The hash replaced by a reissue with grace.
    pub previous: HashColumns,
    /// The end of the previous hash's grace.
    pub previous_valid_until: Option<SystemTime>,
    /// When a leak report was recorded for the key (`compromised_at`).
    pub compromised_at: Option<SystemTime>,
    /// Where the leaked secret was found (`compromise_url`).
    pub compromise_url: Option<String>,
    /// Who reported it (`compromise_source`).
    pub compromise_source: Option<String>,
    /// What the report did (`compromise_action`).
    pub compromise_action: Option<String>,
    /// The digest of the reported secret's hash (`compromised_hash`).
    pub compromised_hash: Option<Vec<u8>>,
    /// `allowed_networks`, one CIDR each; empty: any network.
    pub allowed_networks: Vec<String>,
    /// `metadata`: a JSON object's text, or `NULL`.
    pub metadata: Option<String>,
    /// `operator_locked`: the operator marked the key read-only for
    /// managers.
    pub operator_locked: bool,
    /// `retire_when_unused`: whether the lifecycle task may retire the key
    /// for disuse.
    pub retire_when_unused: bool,
    /// `retired_unused_since`: set when the lifecycle task retired the key.
    pub retired_unused_since: Option<SystemTime>,
    /// Why the row cannot be read as a key (a column its codec could not
    /// read, named; never a value): its record does not read and the row is
    /// never written back. `None` for a row read whole.
    pub unreadable: Option<String>,
}

impl KeyRow {
    /// The key's id, checked.
    pub fn id(&self) -> Result<KeyId, BoxError> {
        KeyId::from_str(&self.key_id).map_err(|_| "stored key id is not valid".into())
    }

    /// The credit state of the row; `None` for a key without credits.
    pub fn credit_state(&self) -> Result<Option<CreditState>, BoxError> {
        self.credits.state(self.id()?)
    }

    /// The record the row holds, checked.
    ///
    /// An [`unreadable`](Self::unreadable) row holds none.
    pub fn record(&self) -> Result<KeyRecord, BoxError> {
        if let Some(why) = &self.unreadable {
            return Err(why.clone().into());
        }
        let key_id = self.id()?;
        let scopes =
            ScopeSet::new(&self.scopes).map_err(|e| format!("stored scopes are not valid: {e}"))?;
        let rate_limits = parse_limits(&self.rate_limits, format_args!("key {key_id}"))?;
        let account_rate_limits = match &self.account_rate_limits {
            Some(text) => parse_limits(text, format_args!("the service account of key {key_id}"))?,
            None => Vec::new(),
        };
        let credits = self.credits.state(key_id)?.map(|state| state.credits);
        let mut record = KeyRecord::new(key_id, self.service_account_id.as_str())
            .with_scopes(scopes)
            .with_description(self.description.clone())
            .with_created_at(self.created_at)
            .with_expires_at(self.expires_at)
            .with_rate_limits(rate_limits)
            .with_account_rate_limits(account_rate_limits)
            .with_credits(credits)
            .with_operator_locked(self.operator_locked)
            .with_retire_when_unused(self.retire_when_unused)
            .with_retired_unused_since(self.retired_unused_since);
        record.compromise = compromise_of(
            self.compromised_at,
            self.compromise_url.clone(),
            self.compromise_source.clone(),
            self.compromise_action.as_deref(),
        )?
        .map(Box::new);
        record.quarantined = self.quarantines(&self.hash);
        if !self.allowed_networks.is_empty() {
            let networks = Networks::parse(&self.allowed_networks)
                .map_err(|e| format!("stored key {key_id}: {e}"))?;
            record.allowed_networks = Some(networks);
        }
        if let Some(text) = &self.metadata {
            let metadata = Metadata::new(text).map_err(|e| format!("stored key {key_id}: {e}"))?;
            record.metadata = Some(metadata);
        }
        Ok(record)
    }

    /// Whether the row's leak report quarantines the secret whose hash is
    /// `hash` (the report's action is quarantine and it names that secret).
    pub fn quarantines(&self, hash: &HashColumns) -> bool {
        self.compromise_action.as_deref() == Some(LeakAction::Quarantine.as_str())
            && self.compromised_hash.is_some()
            && self.compromised_hash == hash.digest
    }

    /// The columns of a record's allowed networks and metadata.
    pub fn extras_of(record: &KeyRecord) -> (Vec<String>, Option<String>) {
        (
            record
                .allowed_networks
                .as_ref()
                .map(Networks::to_strings)
                .unwrap_or_default(),
            record.metadata.as_ref().map(|m| m.as_str().to_owned()),
        )
    }

    /// What the management API shows of the row, checked.
    pub fn info(&self) -> Result<KeyInfo, BoxError> {
        Ok(
            KeyInfo::new(self.record()?, self.last_used_at, self.hint.clone())
                .with_version(version_of(self.version)?),
        )
    }

    /// The key with its hashes, as an export holds it (without its
    /// account's limits, which belong to the account), checked.
    pub fn stored_key(&self) -> Result<StoredKey, BoxError> {
        let hash = self.hash.stored()?.ok_or("stored key has no hash")?;
        let mut info = self.info()?;
        info.record.account_rate_limits = Vec::new();
        let mut key = StoredKey::new(info, hash);
        let previous = self.previous.stored()?;
        if let (Some(previous), Some(until)) = (previous, self.previous_valid_until) {
            key = key.with_previous(PreviousHash::new(previous, until));
        }
        let bound = self.compromised_hash.as_deref();
        if let Some(hash) = compromised_hash(bound, Some(hash), previous) {
            key = key.with_compromised_hash(hash);
        }
        Ok(key)
    }
}

/// What verification reads first: the hashes of the key asked for, one row
/// whether or not it exists (a backend may return placeholders of the same
/// sizes for a missing key), and the row itself when the backend read it in
/// the same statement.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// Whether the key exists.
    pub found: bool,
    /// The current hash (or a placeholder).
    pub hash: HashColumns,
    /// Whether the key has a previous hash.
    pub has_previous: bool,
    /// The previous hash (or a placeholder).
    pub previous: HashColumns,
    /// The whole row, when read with the hashes; otherwise the store reads
    /// it once a secret matched.
    pub row: Option<KeyRow>,
}

/// `t` truncated to the microsecond (toward the past), as both SQL stores
/// keep times.
pub fn micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => UNIX_EPOCH + Duration::new(after.as_secs(), after.subsec_micros() * 1000),
        Err(e) => {
            let before = e.duration();
            let extra = u32::from(before.subsec_nanos() % 1000 != 0);
            // Duration::new carries a full second of nanoseconds over.
            UNIX_EPOCH - Duration::new(before.as_secs(), (before.subsec_micros() + extra) * 1000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_truncates_toward_the_past() {
        let t = UNIX_EPOCH + Duration::new(10, 123_456_789);
        assert_eq!(micros(t), UNIX_EPOCH + Duration::new(10, 123_456_000));
        let t = UNIX_EPOCH - Duration::new(10, 123_456_789);
        assert_eq!(micros(t), UNIX_EPOCH - Duration::new(10, 123_457_000));
        let t = UNIX_EPOCH - Duration::new(0, 999_999_999);
        assert_eq!(micros(t), UNIX_EPOCH - Duration::new(1, 0));
        let t = UNIX_EPOCH + Duration::from_micros(5);
        assert_eq!(micros(t), t);
    }
}
