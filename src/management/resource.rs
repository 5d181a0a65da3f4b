//! The JSON resources of the management API, and the validation of request
//! bodies: everything is checked before the store is touched, so a bad
//! request changes nothing.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{scrub, ApiError};
use crate::key::{KeyFormat, KeyId};
use crate::limits::{
    check_rate_limits, parse_period, Credits, Period, RateLimit, Refill, RefillInterval,
    MAX_CREDITS,
};
use crate::metadata::{Metadata, MetadataError};
use crate::network::Networks;
use crate::record::KeyRecord;
use crate::scope::ScopeSet;
use crate::store::kit::hint_of;
use crate::store::rules::{self, Field, FieldError};
use crate::store::{CreatedKey, KeyInfo, KeyUpdate, NewKey};
use crate::time::{format_rfc3339_millis, parse_rfc3339};

pub use crate::store::rules::{MAX_DESCRIPTION_LEN, MAX_GRACE_PERIOD, MAX_SERVICE_ACCOUNT_ID_LEN};

/// An API key as the management API shows it. Never the secret.
///
/// Timestamps are RFC 3339 in UTC with milliseconds; `expires_at` and
/// `last_used_at` are `null` when the key never expires or was never used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct KeyResource {
    /// The public key id.
    pub id: String,
    /// The owning service account.
    pub service_account_id: String,
    /// Free text.
    pub description: String,
    /// The scopes, sorted; empty for an unscoped key.
    pub scopes: Vec<String>,
    /// When the key was created.
    pub created_at: String,
    /// When the key stops working, if ever.
    pub expires_at: Option<String>,
    /// When the key was last used, if ever: written behind, so it lags by up
    /// to one flush interval of the [`UsageRecorder`](crate::usage::UsageRecorder).
    pub last_used_at: Option<String>,
    /// A masked hint such as `tak_…x7Qa`: the prefix and the last four
    /// characters, never enough to use the key.
    pub hint: String,
    /// The key's own rate limits; empty when it has none. The limits of its
    /// service account are not shown here: they belong to the account
    /// (`GET /accounts/{id}/rate-limits`).
    #[serde(default)]
    // Always in the answers; `default` only lets older JSON deserialize.
    #[schema(required = true)]
    pub rate_limits: Vec<RateLimitResource>,
    /// The key's credits, or `null` when it has none (no quota).
    #[serde(default)]
    #[schema(required = true)]
    pub credits: Option<CreditsResource>,
    /// The leak report recorded on the key, or `null` when it was never
    /// reported leaked.
    #[serde(default)]
    #[schema(required = true)]
    pub compromise: Option<CompromiseResource>,
    /// The networks the key may be used from (CIDRs, a single address as
    /// `/32` or `/128`); empty: any.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// What the operator attached to the key (a JSON object), or `null`.
    #[serde(default)]
    #[schema(required = true)]
    pub metadata: Option<serde_json::Value>,
    /// The operator marked the key read-only for managers: every change of
    /// its fields (PATCH, `:addCredits`) is refused with 403 `key_locked`
    /// unless the router may lock keys; it may still be deleted and
    /// reissued.
    #[serde(default)]
    #[schema(required = true)]
    pub operator_locked: bool,
    /// Whether the lifecycle task may retire the key once nobody used it for
    /// its retirement period; `false`: the key is opted out.
    #[serde(default = "retire_by_default")]
    #[schema(required = true)]
    pub retire_when_unused: bool,
    /// Set when the lifecycle task retired the key for disuse: it was unused
    /// since this time (RFC 3339), and `expires_at` is when it stopped
    /// working; `null` otherwise. A new `expires_at` clears it.
    #[serde(default)]
    #[schema(required = true)]
    pub retired_unused_since: Option<String>,
}

/// What an answer without `retire_when_unused` (an older one) means.
fn retire_by_default() -> bool {
    true
}

/// A leak report recorded on a key, as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct CompromiseResource {
    /// When the report was recorded (RFC 3339).
    pub compromised_at: String,
    /// Where the secret was found.
    pub url: String,
    /// What found it (`content`, `commit`, ...).
    pub source: String,
    /// What the store did: `revoke`, `quarantine` or `notify`.
    pub action: String,
    /// Whether the key's current secret is the quarantined one (refused on
    /// every route with 403 `key_compromised` until a reissue).
    pub quarantined: bool,
}

/// A rate limit as the management API shows it: `limit` requests per
/// `period` (a duration such as `1s`, `1m`, `1h`, `1d`, `500ms`), at most
/// `burst` at once. Always the full form: `burst` is shown even when it
/// equals `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct RateLimitResource {
    /// Requests per period.
    pub limit: u32,
    /// The period, in the largest unit that divides it (`60s` reads `1m`).
    pub period: String,
    /// Most requests at once.
    pub burst: u32,
}

impl From<&RateLimit> for RateLimitResource {
    fn from(limit: &RateLimit) -> Self {
        Self {
            limit: limit.limit(),
            period: Period(limit.period()).to_string(),
            burst: limit.burst(),
        }
    }
}

/// A key's credits as the management API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct CreditsResource {
    /// Credits left, as the store counts them (replicas may hold a few
    /// more, leased and not yet spent).
    pub remaining: u64,
    /// The refill, or `null` when the credits are never refilled.
    pub refill: Option<RefillResource>,
}

impl From<&Credits> for CreditsResource {
    fn from(credits: &Credits) -> Self {
        Self {
            remaining: credits.remaining(),
            refill: credits.refill().map(RefillResource::from),
        }
    }
}

/// A refill of credits: `remaining` is set back to `amount` at 00:00 UTC
/// every day (`"daily"`), or every month on `day` (`"monthly"`; in shorter
/// months, their last day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct RefillResource {
    /// The credits a refill sets.
    pub amount: u64,
    /// `daily` or `monthly`.
    pub interval: String,
    /// The day of the month of a monthly refill; 1 for a daily one.
    pub day: u8,
}

impl From<&Refill> for RefillResource {
    fn from(refill: &Refill) -> Self {
        Self {
            amount: refill.amount(),
            interval: refill.interval().as_str().to_owned(),
            day: refill.day(),
        }
    }
}

/// The rate limits of a service account, shared by all its keys: the body
/// of `GET` and `PUT /accounts/{service_account_id}/rate-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct AccountRateLimits {
    /// The limits; empty when the account has none.
    pub rate_limits: Vec<RateLimitResource>,
}

impl AccountRateLimits {
    pub(crate) fn new(limits: &[RateLimit]) -> Self {
        Self {
            rate_limits: limits.iter().map(RateLimitResource::from).collect(),
        }
    }
}

impl KeyResource {
    fn new(record: &KeyRecord, last_used_at: Option<SystemTime>, hint: String) -> Self {
        Self {
            id: record.key_id.to_string(),
            service_account_id: record.service_account_id.to_string(),
            description: record.description.clone(),
            scopes: record
                .scopes
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            created_at: format_rfc3339_millis(record.created_at),
            expires_at: record.expires_at.map(format_rfc3339_millis),
            last_used_at: last_used_at.map(format_rfc3339_millis),
            hint,
            rate_limits: record
                .rate_limits
                .iter()
                .map(RateLimitResource::from)
                .collect(),
            credits: record.credits.as_ref().map(CreditsResource::from),
            compromise: record.compromise.as_ref().map(|c| CompromiseResource {
                compromised_at: format_rfc3339_millis(c.at),
                url: c.url.clone(),
                source: c.source.clone(),
                action: c.action.as_str().to_owned(),
                quarantined: record.quarantined,
            }),
            allowed_networks: record
                .allowed_networks
                .as_ref()
                .map(Networks::to_strings)
                .unwrap_or_default(),
            // Validated as a JSON object when it was made: it parses.
            metadata: record
                .metadata
                .as_ref()
                .and_then(|m| serde_json::from_str(m.as_str()).ok()),
            operator_locked: record.operator_locked,
            retire_when_unused: record.retire_when_unused,
            retired_unused_since: record.retired_unused_since.map(format_rfc3339_millis),
        }
    }
}

impl From<&KeyInfo> for KeyResource {
    fn from(info: &KeyInfo) -> Self {
        Self::new(&info.record, info.last_used_at, info.hint.clone())
    }
}

/// The answer to a create or a reissue: the resource and the whole key. The
/// only responses that ever carry the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct KeyWithSecret {
    /// The key's resource.
    pub key: KeyResource,
    /// The whole key, to send as `Authorization: Api-Key <secret>`. Shown
    /// once: it cannot be read again, only reissued.
    pub secret: String,
}

impl std::fmt::Debug for KeyWithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWithSecret")
            .field("key", &self.key)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl KeyWithSecret {
    pub(crate) fn new(created: &CreatedKey, last_used_at: Option<SystemTime>) -> Self {
        Self {
            key: KeyResource::new(&created.record, last_used_at, hint_of(&created.key)),
            secret: created.key.expose_secret().to_owned(),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct KeyList {
    /// The keys, oldest first.
    pub keys: Vec<KeyResource>,
    /// Pass it as `page_token` for the next page; `null` on the last page.
    pub next_page_token: Option<String>,
}

impl KeyList {
    pub(crate) fn new(keys: &[KeyInfo], next_page_token: Option<String>) -> Self {
        Self {
            keys: keys.iter().map(KeyResource::from).collect(),
            next_page_token,
        }
    }
}

/// `null` is refused: the field is either absent (unchanged, or the default)
/// or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `null` is a value (for `expires_at`: no expiry); absent is `None`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `POST /keys`: a key for `service_account_id`; every other
/// field may be left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKeyRequest {
    /// The service account the key belongs to.
    service_account_id: String,
    /// Free text (default empty).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    description: Option<String>,
    /// The scopes; absent or empty makes an unscoped key.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    /// When the key stops working (RFC 3339, in the future); absent or
    /// `null`: never.
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    /// The key's own rate limits.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    rate_limits: Option<Vec<RateLimitBody>>,
    /// The key's credits (a quota).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    credits: Option<CreditsBody>,
    /// The networks the key may be used from (at most 64 CIDRs or
    /// addresses); absent or empty: any.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    allowed_networks: Option<Vec<String>>,
    /// A JSON object of at most 1 KiB for the handlers; absent or `null`: none.
    #[serde(default, deserialize_with = "nullable")]
    metadata: Option<Option<serde_json::Value>>,
    /// Whether the key is read-only for managers (default `false`); `true`
    /// only on a router that may lock keys, else 403 `key_locked`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    operator_locked: Option<bool>,
    /// Whether the lifecycle task may retire the key once unused for its
    /// retirement period; absent: `true`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    retire_when_unused: Option<bool>,
}

impl CreateKeyRequest {
    /// Validates everything; `now` is for the expiry check, `format` the
    /// keys no stored field may contain.
    pub(crate) fn validate(self, now: SystemTime, format: &KeyFormat) -> Result<NewKey, ApiError> {
        let account = service_account_id(&self.service_account_id)?;
        no_key_in_account(&account, format)?;
        let mut new = NewKey::new(account);
        if let Some(description) = self.description {
            new = new.with_description(description_of(description, format)?);
        }
        if let Some(scopes) = self.scopes {
            new = new.with_scopes(scopes_of(&scopes, format)?);
        }
        if let Some(at) = expiry_of(self.expires_at.flatten().as_deref(), now)? {
            new = new.with_expires_at(at);
        }
        if let Some(limits) = self.rate_limits {
            new = new.with_rate_limits(rate_limits_of("rate_limits", &limits)?);
        }
        if let Some(credits) = self.credits {
            new = new.with_credits(credits.validate()?);
        }
        if let Some(networks) = self.allowed_networks {
            new = new.with_allowed_networks(networks_of(&networks)?);
        }
        if let Some(metadata) = self.metadata.flatten() {
            new = new.with_metadata(Some(metadata_of(&metadata, format)?));
        }
        if let Some(locked) = self.operator_locked {
            new = new.with_operator_locked(locked);
        }
        if let Some(retire) = self.retire_when_unused {
            new = new.with_retire_when_unused(retire);
        }
        Ok(new)
    }
}

/// `PATCH /keys/{id}`: absent fields stay as they are; `"expires_at": null`
/// removes the expiry, `"rate_limits": null` (or `[]`) the rate limits,
/// `"credits": null` the credits, `"allowed_networks": null` (or `[]`) the
/// networks and `"metadata": null` the metadata. A new `expires_at` (or
/// `null`) revives a key the lifecycle retired for disuse.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateKeyRequest {
    /// The new description.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    description: Option<String>,
    /// The new scopes (all of them); empty makes the key unscoped.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    /// The new expiry (RFC 3339), or `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    /// The new rate limits, or `null` (or `[]`) for none.
    #[serde(default, deserialize_with = "nullable")]
    rate_limits: Option<Option<Vec<RateLimitBody>>>,
    /// The new credits, or `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    credits: Option<Option<CreditsBody>>,
    /// The new networks, or `null` (or `[]`) for any.
    #[serde(default, deserialize_with = "nullable")]
    allowed_networks: Option<Option<Vec<String>>>,
    /// The new metadata (a JSON object), or `null` for none.
    #[serde(default, deserialize_with = "nullable")]
    metadata: Option<Option<serde_json::Value>>,
    /// Whether the key is read-only for managers; a change only on a router
    /// that may lock keys, else 403 `key_locked`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    operator_locked: Option<bool>,
    /// Whether the lifecycle task may retire the key once unused for its
    /// retirement period.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    retire_when_unused: Option<bool>,
}

impl UpdateKeyRequest {
    /// Validates everything, as [`CreateKeyRequest::validate`].
    pub(crate) fn validate(
        self,
        now: SystemTime,
        format: &KeyFormat,
    ) -> Result<KeyUpdate, ApiError> {
        let mut update = KeyUpdate::default();
        if let Some(description) = self.description {
            update = update.with_description(description_of(description, format)?);
        }
        if let Some(scopes) = self.scopes {
            update = update.with_scopes(scopes_of(&scopes, format)?);
        }
        if let Some(expires_at) = self.expires_at {
            update = update.with_expires_at(expiry_of(expires_at.as_deref(), now)?);
        }
        if let Some(limits) = self.rate_limits {
            let limits = limits.unwrap_or_default();
            update = update.with_rate_limits(rate_limits_of("rate_limits", &limits)?);
        }
        if let Some(credits) = self.credits {
            update = update.with_credits(credits.map(CreditsBody::validate).transpose()?);
        }
        if let Some(networks) = self.allowed_networks {
            update = update.with_allowed_networks(networks_of(&networks.unwrap_or_default())?);
        }
        if let Some(metadata) = self.metadata {
            update = update.with_metadata(metadata.map(|m| metadata_of(&m, format)).transpose()?);
        }
        if let Some(locked) = self.operator_locked {
            update = update.with_operator_locked(locked);
        }
        if let Some(retire) = self.retire_when_unused {
            update = update.with_retire_when_unused(retire);
        }
        Ok(update)
    }
}

/// The body of `POST /keys/{id}:reissue`; an empty body is `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReissueKeyRequest {
    /// How long the old secret keeps working, in seconds (default 0).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    grace_period_seconds: Option<u64>,
}

impl ReissueKeyRequest {
    pub(crate) fn validate(self) -> Result<Duration, ApiError> {
        let grace = Duration::from_secs(self.grace_period_seconds.unwrap_or(0));
        rules::grace(grace)
            .map_err(|e| ApiError::invalid(format!("grace_period_seconds: {}", e.problem())))?;
        Ok(grace)
    }
}

/// A rate limit in a request body; `burst` defaults to `limit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitBody {
    limit: u32,
    period: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    burst: Option<u32>,
}

/// Credits in a request body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditsBody {
    remaining: u64,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    refill: Option<RefillBody>,
}

/// A refill in a request body: `day` is required for a monthly refill, and
/// absent or 1 for a daily one (so a resource read back is a valid body).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefillBody {
    amount: u64,
    interval: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    day: Option<u64>,
}

impl CreditsBody {
    fn validate(self) -> Result<Credits, ApiError> {
        let invalid = |field: &str, e: &dyn std::fmt::Display| {
            ApiError::invalid(format!("credits.{field}: {e}"))
        };
        let credits = Credits::new(self.remaining).map_err(|e| invalid("remaining", &e))?;
        let Some(refill) = self.refill else {
            return Ok(credits);
        };
        let interval: RefillInterval = refill
            .interval
            .parse()
            .map_err(|e| invalid("refill.interval", &e))?;
        let refill = match interval {
            RefillInterval::Monthly => {
                let day = refill.day.ok_or_else(|| {
                    ApiError::invalid("credits.refill.day: required for a monthly refill (1 to 31)")
                })?;
                // Out of u8's range is out of 1 to 31: let the rule say so.
                Refill::monthly(refill.amount, u8::try_from(day).unwrap_or(0))
            }
            RefillInterval::Daily => {
                if refill.day.is_some_and(|day| day != 1) {
                    return Err(ApiError::invalid(
                        "credits.refill.day: a daily refill takes no day (or 1)",
                    ));
                }
                Refill::daily(refill.amount)
            }
        }
        .map_err(|e| invalid("refill", &e))?;
        Ok(credits.with_refill(refill))
    }
}

/// The body of `POST /keys/{id}:addCredits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddCreditsRequest {
    /// The credits to add: at least 1.
    #[schema(minimum = 1)]
    amount: u64,
}

impl AddCreditsRequest {
    pub(crate) fn validate(self) -> Result<u64, ApiError> {
        if self.amount == 0 || self.amount > MAX_CREDITS {
            return Err(ApiError::invalid(format!(
                "amount: must be between 1 and {MAX_CREDITS}"
            )));
        }
        Ok(self.amount)
    }
}

/// The body of `PUT /accounts/{service_account_id}/rate-limits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountRateLimitsRequest {
    rate_limits: Vec<RateLimitBody>,
}

impl AccountRateLimitsRequest {
    pub(crate) fn validate(self) -> Result<Vec<RateLimit>, ApiError> {
        rate_limits_of("rate_limits", &self.rate_limits)
    }
}

/// Rate limits from a body: each valid, at most
/// [`MAX_RATE_LIMITS`](crate::limits::MAX_RATE_LIMITS), no two alike.
fn rate_limits_of(field: &str, bodies: &[RateLimitBody]) -> Result<Vec<RateLimit>, ApiError> {
    let mut limits = Vec::with_capacity(bodies.len().min(crate::limits::MAX_RATE_LIMITS + 1));
    for (i, body) in bodies.iter().enumerate() {
        let period = parse_period(&body.period)
            .map_err(|e| ApiError::invalid(format!("{field}[{i}].period: {e}")))?;
        let mut limit = RateLimit::new(body.limit, period)
            .map_err(|e| ApiError::invalid(format!("{field}[{i}]: {e}")))?;
        if let Some(burst) = body.burst {
            limit = limit
                .with_burst(burst)
                .map_err(|e| ApiError::invalid(format!("{field}[{i}].burst: {e}")))?;
        }
        limits.push(limit);
    }
    check_rate_limits(&limits).map_err(|e| ApiError::invalid(format!("{field}: {e}")))?;
    Ok(limits)
}

/// The query of `GET /keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// The service account whose keys to list (required).
    #[param(required = true, nullable = false)]
    pub(crate) service_account_id: Option<String>,
    /// Most keys in the page: 1 to 200, 100 when absent (and fewer when
    /// the page reaches 1 MiB).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub(crate) page_size: Option<usize>,
    /// The `next_page_token` of the previous page.
    #[param(nullable = false)]
    pub(crate) page_token: Option<String>,
    /// Only the keys never used or last used longer ago than this: a
    /// duration such as `90d`, `12h` or `1h30m` (units w, d, h, m, s, ms).
    #[param(nullable = false)]
    pub(crate) unused_for: Option<String>,
}

/// A key id from a path; the message never echoes long input.
pub(crate) fn key_id(text: &str) -> Result<KeyId, ApiError> {
    text.parse::<KeyId>()
        .map_err(|e| ApiError::invalid(format!("`{}` is not a key id: {e}", scrub(text))))
}

pub(crate) fn service_account_id(text: &str) -> Result<String, ApiError> {
    rules::service_account_id(text).map_err(field_error)?;
    Ok(text.to_owned())
}

/// A field that breaks its rule, as a 400 naming the field: the rules'
/// messages never echo the value.
fn field_error(e: FieldError) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// An account id that is about to be stored (with its rate limits) must
/// not hold a key, as in [`CreateKeyRequest`].
pub(crate) fn no_key_in_account(account: &str, format: &KeyFormat) -> Result<(), ApiError> {
    rules::no_key(Field::ServiceAccountId, account, format).map_err(field_error)
}

fn description_of(text: String, format: &KeyFormat) -> Result<String, ApiError> {
    rules::description(&text, format).map_err(field_error)?;
    Ok(text)
}

/// Allowed networks as given: `[]` is none (any network).
fn networks_of(entries: &[String]) -> Result<Option<Networks>, ApiError> {
    if entries.is_empty() {
        return Ok(None);
    }
    Networks::parse(entries)
        .map(Some)
        .map_err(|e| ApiError::invalid(e.to_string()))
}

/// Metadata as given: a JSON object of at most 1 KiB (written compact) that
/// holds no key.
fn metadata_of(value: &serde_json::Value, format: &KeyFormat) -> Result<Metadata, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid(MetadataError::NotObject.to_string()));
    }
    let text =
        serde_json::to_string(value).map_err(|e| ApiError::invalid(format!("metadata: {e}")))?;
    let metadata = Metadata::new(&text).map_err(|e| ApiError::invalid(e.to_string()))?;
    rules::metadata(&metadata, format).map_err(field_error)?;
    Ok(metadata)
}

fn scopes_of(names: &[String], format: &KeyFormat) -> Result<ScopeSet, ApiError> {
    rules::scopes(names, format).map_err(field_error)
}

fn expiry_of(text: Option<&str>, now: SystemTime) -> Result<Option<SystemTime>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let at = parse_rfc3339(text).map_err(|e| ApiError::invalid(format!("expires_at: {e}")))?;
    // In UTC, after the offset: `9999-12-31T23:59:59-14:00` is in year 10000.
    rules::expires_at(at, now).map_err(field_error)?;
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{latest_time, LATEST_TIME_TEXT};

    fn create(json: &str) -> Result<NewKey, String> {
        let request: CreateKeyRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        request
            .validate(SystemTime::now(), &KeyFormat::default())
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn create_requests_are_validated_field_by_field() {
        let new = create(
            r#"{"service_account_id":"sa-1","description":"ci","scopes":["b.x","a.y"],"expires_at":"2999-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(&*new.service_account_id, "sa-1");
        assert_eq!(new.scopes.len(), 2);
        assert!(new.expires_at.is_some());

        assert!(create(r#"{"service_account_id":"sa-1","expires_at":null}"#)
            .unwrap()
            .expires_at
            .is_none());
        let cases = [
            (r#"{}"#, "missing field `service_account_id`"),
            (
                r#"{"service_account_id":"sa-1","owner":"x"}"#,
                "unknown field `owner`",
            ),
            (
                r#"{"service_account_id":""}"#,
                "service_account_id: must not be empty",
            ),
            (
                r#"{"service_account_id":"a b"}"#,
                "service_account_id: only visible ASCII",
            ),
            (
                r#"{"service_account_id":"sa","scopes":["ok","bad scope"]}"#,
                "scopes[1]: scope name must be",
            ),
            (
                r#"{"service_account_id":"sa","scopes":null}"#,
                "invalid type: null",
            ),
            (
                r#"{"service_account_id":"sa","expires_at":"2000-01-01T00:00:00Z"}"#,
                "expires_at: must be in the future",
            ),
            (
                r#"{"service_account_id":"sa","expires_at":"soon"}"#,
                "expires_at: not an RFC 3339 timestamp",
            ),
        ];
        for (json, want) in cases {
            let got = create(json).unwrap_err();
            assert!(got.contains(want), "{json}: {got}");
        }
        let many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
        let json = serde_json::json!({"service_account_id": "sa", "scopes": many}).to_string();
        assert_eq!(
            create(&json).unwrap_err(),
            "scopes: a key holds at most 100 unique scopes, 101 given"
        );
    }

    #[test]
    fn expiries_are_bounded_in_utc_after_the_offset() {
        let at = |text: &str| {
            create(&format!(
                r#"{{"service_account_id":"sa","expires_at":"{text}"}}"#
            ))
        };
        assert_eq!(
            at("9999-12-31T23:59:59-14:00").unwrap_err(),
            "expires_at: must be at most 9999-12-31T23:59:59.999Z in UTC"
        );
        assert!(at("9999-12-31T23:59:59.999Z").is_ok());
        assert!(at("9999-12-31T23:59:59+14:00").is_ok());
        let update = serde_json::from_str::<UpdateKeyRequest>(
            r#"{"expires_at":"9999-12-31T23:59:59.5-00:01"}"#,
        )
        .unwrap()
        .validate(SystemTime::now(), &KeyFormat::default());
        assert!(update.is_err());
    }

    #[test]
    fn a_key_pasted_into_a_stored_field_is_refused_naming_the_field_not_echoing_it() {
        let key = KeyFormat::default().generate().unwrap();
        let key = key.expose_secret();
        for (json, field) in [
            (
                serde_json::json!({"service_account_id": key}),
                "service_account_id: must not contain an api key",
            ),
            (
                serde_json::json!({"service_account_id": "sa", "description": format!("ci {key}")}),
                "description: must not contain an api key",
            ),
            (
                serde_json::json!({"service_account_id": "sa", "scopes": ["a.b", key]}),
                "scopes[1]: must not contain an api key",
            ),
        ] {
            let got = create(&json.to_string()).unwrap_err();
            assert!(got.starts_with(field), "{got}");
            assert!(!got.contains(&key[4..]), "{got}");
        }
        let update = serde_json::from_str::<UpdateKeyRequest>(
            &serde_json::json!({ "description": key }).to_string(),
        )
        .unwrap()
        .validate(SystemTime::now(), &KeyFormat::default())
        .unwrap_err();
        assert!(update
            .message()
            .starts_with("description: must not contain an api key"));
        // A key of another issuer's format is just text here.
        let other = KeyFormat::new("yc").unwrap().generate().unwrap();
        assert!(create(
            &serde_json::json!({"service_account_id": "sa", "description": other.expose_secret()})
                .to_string()
        )
        .is_ok());
    }

    #[test]
    fn a_stored_time_past_year_9999_renders_clamped_instead_of_panicking() {
        use crate::store::latest_time;
        let far = latest_time() + Duration::from_secs(365 * 24 * 3600);
        let record = KeyRecord::new(KeyId::random().unwrap(), "sa")
            .with_expires_at(Some(far))
            .with_created_at(far);
        let resource = KeyResource::new(&record, Some(far), "tak_…abcd".into());
        assert_eq!(
            resource.expires_at.as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        assert_eq!(resource.created_at, "9999-12-31T23:59:59.999Z");
        assert_eq!(
            resource.last_used_at.as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
    }

    #[test]
    fn a_leap_second_expiry_is_the_last_instant_of_its_minute() {
        let new =
            create(r#"{"service_account_id":"sa-1","expires_at":"2098-12-31T23:59:60Z"}"#).unwrap();
        let minute_end = parse_rfc3339("2099-01-01T00:00:00Z").unwrap();
        assert_eq!(new.expires_at, Some(minute_end - Duration::from_nanos(1)));
        // What the API writes for the last instant is the bound it states.
        assert_eq!(format_rfc3339_millis(latest_time()), LATEST_TIME_TEXT);
    }

    #[test]
    fn updates_tell_absent_from_null() {
        let update = |json: &str| -> KeyUpdate {
            serde_json::from_str::<UpdateKeyRequest>(json)
                .unwrap()
                .validate(SystemTime::now(), &KeyFormat::default())
                .unwrap()
        };
        let u = update("{}");
        assert!(u.description.is_none() && u.scopes.is_none() && u.expires_at.is_none());
        assert_eq!(update(r#"{"expires_at":null}"#).expires_at, Some(None));
        assert!(matches!(
            update(r#"{"expires_at":"2999-01-01T00:00:00Z"}"#).expires_at,
            Some(Some(_))
        ));
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"description":null}"#).is_err());
    }

    #[test]
    fn grace_periods_are_bounded() {
        let grace = |json: &str| {
            serde_json::from_str::<ReissueKeyRequest>(json)
                .unwrap()
                .validate()
        };
        assert_eq!(grace("{}").unwrap(), Duration::ZERO);
        assert_eq!(
            grace(r#"{"grace_period_seconds":60}"#).unwrap(),
            Duration::from_secs(60)
        );
        assert!(grace(r#"{"grace_period_seconds":2592001}"#).is_err());
        assert!(
            serde_json::from_str::<ReissueKeyRequest>(r#"{"grace_period_seconds":-1}"#).is_err()
        );
    }

    fn update(json: &str) -> Result<KeyUpdate, String> {
        let request: UpdateKeyRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        request
            .validate(SystemTime::now(), &KeyFormat::default())
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn rate_limits_and_credits_are_read_with_defaults_and_shown_in_full() {
        let new = create(
            r#"{"service_account_id":"sa","rate_limits":[{"limit":5,"period":"1s"},{"limit":100,"period":"60s","burst":10}],
                "credits":{"remaining":3,"refill":{"amount":100,"interval":"monthly","day":15}}}"#,
        )
        .unwrap();
        assert_eq!(
            new.rate_limits,
            vec![
                "5/1s".parse::<RateLimit>().unwrap(),
                "100/1m,burst=10".parse().unwrap()
            ]
        );
        let credits = new.credits.unwrap();
        assert_eq!(credits.remaining(), 3);
        assert_eq!(credits.refill(), Some(&Refill::monthly(100, 15).unwrap()));

        let record = KeyRecord::new(KeyId::random().unwrap(), "sa")
            .with_rate_limits(new.rate_limits.clone())
            .with_account_rate_limits(vec!["1/1d".parse().unwrap()])
            .with_credits(Some(credits));
        let shown = serde_json::to_value(KeyResource::new(&record, None, "h".into())).unwrap();
        assert_eq!(
            shown["rate_limits"],
            serde_json::json!([
                {"limit": 5, "period": "1s", "burst": 5},
                {"limit": 100, "period": "1m", "burst": 10}
            ])
        );
        assert_eq!(
            shown["credits"],
            serde_json::json!({"remaining": 3, "refill": {"amount": 100, "interval": "monthly", "day": 15}})
        );
        assert!(
            shown.get("account_rate_limits").is_none(),
            "the account's limits belong to the account"
        );
        let plain = KeyResource::new(
            &KeyRecord::new(KeyId::random().unwrap(), "sa"),
            None,
            "h".into(),
        );
        let plain = serde_json::to_value(plain).unwrap();
        assert_eq!(plain["rate_limits"], serde_json::json!([]));
        assert_eq!(plain["credits"], serde_json::Value::Null);

        // What a response shows is a valid body again.
        let again = create(
            &serde_json::json!({"service_account_id": "sa", "rate_limits": shown["rate_limits"], "credits": shown["credits"]})
                .to_string(),
        )
        .unwrap();
        assert_eq!(again.rate_limits, new.rate_limits);
        assert_eq!(again.credits, Some(credits));
        let daily = create(
            r#"{"service_account_id":"sa","credits":{"remaining":0,"refill":{"amount":5,"interval":"daily","day":1}}}"#,
        )
        .unwrap();
        assert_eq!(
            daily.credits.unwrap().refill(),
            Some(&Refill::daily(5).unwrap())
        );
    }

    #[test]
    fn bad_rate_limits_and_credits_are_refused_naming_the_field() {
        let cases = [
            (
                r#"{"rate_limits":[{"limit":0,"period":"1s"}]}"#,
                "rate_limits[0]: a rate limit's limit must be between 1 and",
            ),
            (
                r#"{"rate_limits":[{"limit":5,"period":"1s"},{"limit":5,"period":"1w"}]}"#,
                "rate_limits[1].period: a period is a whole number",
            ),
            (
                r#"{"rate_limits":[{"limit":5,"period":"367d"}]}"#,
                "rate_limits[0]: a rate limit's period must be",
            ),
            (
                r#"{"rate_limits":[{"limit":5,"period":"1s","burst":0}]}"#,
                "rate_limits[0].burst: a rate limit's burst must be",
            ),
            (
                r#"{"rate_limits":[{"limit":5,"period":"1s"},{"limit":5,"period":"1000ms"}]}"#,
                "rate_limits: rate limit 5/1s is given twice",
            ),
            (
                r#"{"rate_limits":[{"limit":5,"period":"1s","brust":2}]}"#,
                "unknown field `brust`",
            ),
            (
                r#"{"rate_limits":[{"limit":-1,"period":"1s"}]}"#,
                "invalid value: integer `-1`",
            ),
            (r#"{"rate_limits":[{"limit":5}]}"#, "missing field `period`"),
            (
                r#"{"rate_limits":[{"limit":5,"period":"1s","burst":null}]}"#,
                "invalid type: null",
            ),
            (
                r#"{"credits":{"remaining":1000000000001}}"#,
                "credits.remaining: credits are at most",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":5,"interval":"weekly"}}}"#,
                "credits.refill.interval: a refill interval is",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":5,"interval":"monthly"}}}"#,
                "credits.refill.day: required for a monthly refill",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":5,"interval":"monthly","day":32}}}"#,
                "credits.refill: a monthly refill's day is 1 to 31",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":5,"interval":"monthly","day":100000}}}"#,
                "credits.refill: a monthly refill's day is 1 to 31",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":5,"interval":"daily","day":3}}}"#,
                "credits.refill.day: a daily refill takes no day",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":1000000000001,"interval":"daily"}}}"#,
                "credits.refill: credits are at most",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":null}}"#,
                "invalid type: null",
            ),
            (
                r#"{"credits":{"refill":{"amount":5,"interval":"daily"}}}"#,
                "missing field `remaining`",
            ),
        ];
        for (json, want) in cases {
            let got = update(json).unwrap_err();
            assert!(got.contains(want), "{json}: {got}");
            let mut body: serde_json::Value = serde_json::from_str(json).unwrap();
            body["service_account_id"] = "sa".into();
            let got = create(&body.to_string()).unwrap_err();
            assert!(got.contains(want), "create {json}: {got}");
        }
        let nine: Vec<_> = (1..=9)
            .map(|n| serde_json::json!({"limit": n, "period": "1s"}))
            .collect();
        let got = update(&serde_json::json!({ "rate_limits": nine }).to_string()).unwrap_err();
        assert_eq!(got, "rate_limits: at most 8 rate limits per key or account");
        // In a create, null is not a value.
        for json in [
            r#"{"service_account_id":"sa","rate_limits":null}"#,
            r#"{"service_account_id":"sa","credits":null}"#,
        ] {
            assert!(
                create(json).unwrap_err().contains("invalid type: null"),
                "{json}"
            );
        }
    }

    #[test]
    fn a_patch_tells_absent_limits_from_null_ones() {
        let u = update("{}").unwrap();
        assert!(u.rate_limits.is_none() && u.credits.is_none());
        assert_eq!(
            update(r#"{"rate_limits":null}"#).unwrap().rate_limits,
            Some(vec![])
        );
        assert_eq!(
            update(r#"{"rate_limits":[]}"#).unwrap().rate_limits,
            Some(vec![])
        );
        assert_eq!(update(r#"{"credits":null}"#).unwrap().credits, Some(None));
        assert_eq!(
            update(r#"{"credits":{"remaining":7}}"#).unwrap().credits,
            Some(Some(Credits::new(7).unwrap()))
        );
    }

    #[test]
    fn amounts_and_account_limits_are_checked() {
        let amount = |json: &str| -> Result<u64, String> {
            serde_json::from_str::<AddCreditsRequest>(json)
                .map_err(|e| e.to_string())?
                .validate()
                .map_err(|e| e.message().to_owned())
        };
        assert_eq!(amount(r#"{"amount":5}"#), Ok(5));
        assert!(amount(r#"{"amount":0}"#)
            .unwrap_err()
            .starts_with("amount: must be between 1"));
        assert!(amount(r#"{"amount":1000000000001}"#).is_err());
        assert!(amount(r#"{"amount":-1}"#).is_err());
        assert!(amount(r#"{}"#)
            .unwrap_err()
            .contains("missing field `amount`"));
        let account = |json: &str| -> Result<Vec<RateLimit>, String> {
            serde_json::from_str::<AccountRateLimitsRequest>(json)
                .map_err(|e| e.to_string())?
                .validate()
                .map_err(|e| e.message().to_owned())
        };
        assert_eq!(account(r#"{"rate_limits":[]}"#), Ok(vec![]));
        assert_eq!(
            account(r#"{"rate_limits":[{"limit":2,"period":"1h"}]}"#),
            Ok(vec!["2/1h".parse().unwrap()])
        );
        assert!(account(r#"{"rate_limits":null}"#).is_err());
        assert!(account(r#"{}"#).is_err());
    }
}
