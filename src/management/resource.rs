//! The JSON resources of the management API, and the validation of request
//! bodies: everything is checked before the store is touched, so a bad
//! request changes nothing.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize};

use super::error::{scrub, ApiError};
use super::time;
use crate::key::{KeyFormat, KeyId};
use crate::record::KeyRecord;
use crate::scope::{Scope, ScopeSet, MAX_SCOPES_PER_KEY};
use crate::store::{
    hint_of, latest_time, CreatedKey, KeyInfo, KeyUpdate, NewKey, LATEST_TIME_TEXT,
};

/// Longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Longest service account id, in bytes.
pub const MAX_SERVICE_ACCOUNT_ID_LEN: usize = 128;
/// Longest grace period a reissue accepts: 30 days.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// An API key as the management API shows it. Never the secret.
///
/// Timestamps are RFC 3339 in UTC with milliseconds; `expires_at` and
/// `last_used_at` are `null` when the key never expires or was never used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            created_at: time::format(record.created_at),
            expires_at: record.expires_at.map(time::format),
            last_used_at: last_used_at.map(time::format),
            hint,
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// `POST /keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKeyRequest {
    service_account_id: String,
    #[serde(default, deserialize_with = "present")]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
}

impl CreateKeyRequest {
    /// Validates everything; `now` is for the expiry check, `format` the
    /// keys no stored field may contain.
    pub(crate) fn validate(self, now: SystemTime, format: &KeyFormat) -> Result<NewKey, ApiError> {
        let account = service_account_id(&self.service_account_id)?;
        no_key("service_account_id", &account, format)?;
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
        Ok(new)
    }
}

/// `PATCH /keys/{id}`: absent fields stay as they are; `"expires_at": null`
/// removes the expiry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateKeyRequest {
    #[serde(default, deserialize_with = "present")]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
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
        Ok(update)
    }
}

/// `POST /keys/{id}:reissue`; an empty body is `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReissueKeyRequest {
    #[serde(default, deserialize_with = "present")]
    grace_period_seconds: Option<u64>,
}

impl ReissueKeyRequest {
    pub(crate) fn validate(self) -> Result<Duration, ApiError> {
        let grace = Duration::from_secs(self.grace_period_seconds.unwrap_or(0));
        if grace > MAX_GRACE_PERIOD {
            return Err(ApiError::invalid(format!(
                "grace_period_seconds: at most {} (30 days)",
                MAX_GRACE_PERIOD.as_secs()
            )));
        }
        Ok(grace)
    }
}

/// The query of `GET /keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) service_account_id: Option<String>,
    pub(crate) page_size: Option<usize>,
    pub(crate) page_token: Option<String>,
}

/// A key id from a path; the message never echoes long input.
pub(crate) fn key_id(text: &str) -> Result<KeyId, ApiError> {
    text.parse::<KeyId>()
        .map_err(|e| ApiError::invalid(format!("`{}` is not a key id: {e}", scrub(text))))
}

pub(crate) fn service_account_id(text: &str) -> Result<String, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid("service_account_id: must not be empty"));
    }
    if text.len() > MAX_SERVICE_ACCOUNT_ID_LEN {
        return Err(ApiError::invalid(format!(
            "service_account_id: at most {MAX_SERVICE_ACCOUNT_ID_LEN} characters"
        )));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "service_account_id: only visible ASCII characters, no spaces",
        ));
    }
    Ok(text.to_owned())
}

/// A field that is stored and shown in every later GET and list must not
/// hold a key: whoever pasted it there would leak it to every reader.
fn no_key(field: &str, text: &str, format: &KeyFormat) -> Result<(), ApiError> {
    if format.occurs_in(text) {
        return Err(ApiError::invalid(format!(
            "{field}: must not contain an api key (if it is a real one, treat it as leaked: \
             revoke or reissue it)"
        )));
    }
    Ok(())
}

fn description_of(text: String, format: &KeyFormat) -> Result<String, ApiError> {
    no_key("description", &text, format)?;
    if text.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::invalid(format!(
            "description: at most {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "description: control characters are not allowed",
        ));
    }
    Ok(text)
}

fn scopes_of(names: &[String], format: &KeyFormat) -> Result<ScopeSet, ApiError> {
    let mut scopes = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        no_key(&format!("scopes[{i}]"), name, format)?;
        let scope = Scope::new(name).map_err(|e| ApiError::invalid(format!("scopes[{i}]: {e}")))?;
        scopes.push(scope);
    }
    ScopeSet::new(scopes).map_err(|_| {
        ApiError::invalid(format!(
            "scopes: a key holds at most {MAX_SCOPES_PER_KEY} unique scopes, {} given",
            unique(names)
        ))
    })
}

fn unique(names: &[String]) -> usize {
    let mut names: Vec<&String> = names.iter().collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

fn expiry_of(text: Option<&str>, now: SystemTime) -> Result<Option<SystemTime>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let at = time::parse(text).map_err(|e| ApiError::invalid(format!("expires_at: {e}")))?;
    if at <= now {
        return Err(ApiError::invalid("expires_at: must be in the future"));
    }
    // In UTC, after the offset: `9999-12-31T23:59:59-14:00` is in year 10000.
    if at > latest_time() {
        return Err(ApiError::invalid(format!(
            "expires_at: must be at most {LATEST_TIME_TEXT} in UTC"
        )));
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
