//! The field rules: what a key's fields may hold, checked the same way by
//! the management API, the CLI's flags and every store's
//! [`import`](crate::KeyStore::import), so no path stores what another
//! refuses.
//!
//! Every check returns a [`FieldError`] that names the field and says what
//! is wrong, never the value: a refused value may be a pasted key.
//!
//! ```
//! use tower_api_key::store::rules::{self, Field, Problem};
//! use tower_api_key::KeyFormat;
//!
//! let format = KeyFormat::default();
//! let key = format.generate().unwrap();
//! let e = rules::description(&format!("ci {}", key.expose_secret()), &format).unwrap_err();
//! assert_eq!(e.field(), &Field::Description);
//! assert_eq!(e.problem(), &Problem::HoldsKey);
//! assert!(!e.to_string().contains(key.expose_secret()));
//! assert!(rules::service_account_id("sa h\u{200b}").is_err());
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use super::transfer::StoredKey;
use super::{latest_time, LATEST_TIME_TEXT};
use crate::key::KeyFormat;
use crate::limits::{check_rate_limits, Credits, LimitError, RateLimit, MAX_CREDITS};
use crate::scope::{Scope, ScopeError, ScopeSet, MAX_SCOPES_PER_KEY};

/// Longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Longest service account id, in bytes (visible ASCII only).
pub const MAX_SERVICE_ACCOUNT_ID_LEN: usize = 128;
/// Longest grace period a reissue accepts, and the latest end of grace an
/// import accepts (counted from the import): 30 days.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How many characters of the key follow `<prefix>_…` in a hint.
pub const HINT_TAIL_LEN: usize = 4;

/// A field of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// `service_account_id`.
    ServiceAccountId,
    /// `description`.
    Description,
    /// `scopes`, as a whole (too many).
    Scopes,
    /// One scope, by its position in the list given (from 0).
    Scope(usize),
    /// `expires_at`.
    ExpiresAt,
    /// `created_at`.
    CreatedAt,
    /// `last_used_at`.
    LastUsedAt,
    /// `hint`.
    Hint,
    /// The hash of the secret replaced by a reissue with grace.
    PreviousHash,
    /// The end of the previous secret's grace.
    PreviousValidUntil,
    /// A reissue's grace period.
    GracePeriod,
    /// `rate_limits`.
    RateLimits,
    /// `credits`.
    Credits,
    /// The version of an imported key.
    Version,
    /// The leak report's `url`.
    CompromiseUrl,
    /// The leak report's `source`.
    CompromiseSource,
    /// When the leak report was recorded.
    CompromisedAt,
    /// `allowed_networks`.
    AllowedNetworks,
    /// `metadata`.
    Metadata,
    /// `retired_unused_since`.
    RetiredUnusedSince,
    /// The window of a lifecycle notice.
    NoticeWindow,
    /// The date a lifecycle notice announces.
    NoticeAnnounced,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::ServiceAccountId => "service_account_id",
            Self::Description => "description",
            Self::Scopes => "scopes",
            Self::Scope(i) => return write!(f, "scopes[{i}]"),
            Self::ExpiresAt => "expires_at",
            Self::CreatedAt => "created_at",
            Self::LastUsedAt => "last_used_at",
            Self::Hint => "hint",
            Self::PreviousHash => "previous_hash",
            Self::PreviousValidUntil => "previous_valid_until",
            Self::GracePeriod => "grace_period",
            Self::RateLimits => "rate_limits",
            Self::Credits => "credits",
            Self::Version => "version",
            Self::CompromiseUrl => "compromise.url",
            Self::CompromiseSource => "compromise.source",
            Self::CompromisedAt => "compromise.compromised_at",
            Self::AllowedNetworks => "allowed_networks",
            Self::Metadata => "metadata",
            Self::RetiredUnusedSince => "retired_unused_since",
            Self::NoticeWindow => "notice.window",
            Self::NoticeAnnounced => "notice.announced",
        };
        f.write_str(name)
    }
}

/// What is wrong with a field. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Empty where a value is required.
    Empty,
    /// Longer than `max` (characters; bytes for a service account id).
    TooLong {
        /// The most allowed.
        max: usize,
    },
    /// A character outside visible ASCII (a space, a control character,
    /// anything beyond ASCII such as a zero-width space).
    NotVisibleAscii,
    /// A control character (a newline, a terminal escape).
    ControlCharacter,
    /// A NUL character, which no database text holds.
    Nul,
    /// A whole key of the store's format: whoever pasted it would show it
    /// to every reader.
    HoldsKey,
    /// Not a scope name.
    Scope(ScopeError),
    /// More unique scopes than a key holds.
    TooManyScopes {
        /// How many were given.
        given: usize,
    },
    /// A hint is `<prefix>_…` and the last [`HINT_TAIL_LEN`] characters of
    /// the key, as the store makes it; this is not one.
    NotAHint,
    /// An expiry that is not in the future.
    NotInFuture,
    /// A time before the Unix epoch (1970-01-01T00:00:00Z).
    BeforeEpoch,
    /// A time after [`LATEST_TIME_TEXT`].
    AfterLatest,
    /// A grace that lasts longer than [`MAX_GRACE_PERIOD`].
    GraceTooLong,
    /// The previous hash is the current one.
    SameAsCurrent,
    /// Rate limits or credits that cannot be: which rule.
    Limits(LimitError),
    /// A number outside `min` to `max`.
    OutOfRange {
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("must not be empty"),
            Self::TooLong { max } => write!(f, "at most {max} characters"),
            Self::NotVisibleAscii => f.write_str("only visible ASCII characters, no spaces"),
            Self::ControlCharacter => f.write_str("control characters are not allowed"),
            Self::Nul => f.write_str("holds a NUL character"),
            Self::HoldsKey => f.write_str(
                "must not contain an api key (if it is a real one, treat it as leaked: \
                 revoke or reissue it)",
            ),
            Self::Scope(e) => write!(f, "{e}"),
            Self::TooManyScopes { given } => write!(
                f,
                "a key holds at most {MAX_SCOPES_PER_KEY} unique scopes, {given} given"
            ),
            Self::NotAHint => write!(
                f,
                "not a hint: `<prefix>_…` and {HINT_TAIL_LEN} characters of the key alphabet"
            ),
            Self::NotInFuture => f.write_str("must be in the future"),
            Self::BeforeEpoch => f.write_str("must not be before 1970-01-01T00:00:00Z"),
            Self::AfterLatest => write!(f, "must be at most {LATEST_TIME_TEXT} in UTC"),
            Self::GraceTooLong => write!(
                f,
                "a grace lasts at most {} seconds (30 days)",
                MAX_GRACE_PERIOD.as_secs()
            ),
            Self::SameAsCurrent => f.write_str("is the current hash"),
            Self::Limits(e) => write!(f, "{e}"),
            Self::OutOfRange { min, max } => write!(f, "must be between {min} and {max}"),
        }
    }
}

/// A field that breaks its rule: which one and what is wrong, never its
/// value. Displays as `<field>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldError {
    field: Field,
    problem: Problem,
}

impl FieldError {
    /// `field` breaks its rule as `problem` says.
    pub fn new(field: Field, problem: Problem) -> Self {
        Self { field, problem }
    }

    /// The field.
    pub fn field(&self) -> &Field {
        &self.field
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

fn refuse<T>(field: Field, problem: Problem) -> Result<T, FieldError> {
    Err(FieldError::new(field, problem))
}

/// A service account id: 1 to [`MAX_SERVICE_ACCOUNT_ID_LEN`] bytes of
/// visible ASCII (no space, no control character, nothing beyond ASCII), so
/// every account can be named in a URL, a shell and a log. Where the id is
/// stored, check [`no_key`] too.
pub fn service_account_id(text: &str) -> Result<(), FieldError> {
    let field = || Field::ServiceAccountId;
    if text.is_empty() {
        return refuse(field(), Problem::Empty);
    }
    if text.len() > MAX_SERVICE_ACCOUNT_ID_LEN {
        return refuse(
            field(),
            Problem::TooLong {
                max: MAX_SERVICE_ACCOUNT_ID_LEN,
            },
        );
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse(field(), Problem::NotVisibleAscii);
    }
    Ok(())
}

/// No whole key of `format` appears in `text`, which is stored and shown
/// to every reader of the key.
pub fn no_key(field: Field, text: &str, format: &KeyFormat) -> Result<(), FieldError> {
    if format.occurs_in(text) {
        return refuse(field, Problem::HoldsKey);
    }
    Ok(())
}

/// A description: no key, at most [`MAX_DESCRIPTION_LEN`] characters, no
/// control character.
pub fn description(text: &str, format: &KeyFormat) -> Result<(), FieldError> {
    let field = || Field::Description;
    // Length first: the key search is then over at most 1 KiB.
    if text.chars().nth(MAX_DESCRIPTION_LEN).is_some() {
        return refuse(
            field(),
            Problem::TooLong {
                max: MAX_DESCRIPTION_LEN,
            },
        );
    }
    no_key(field(), text, format)?;
    if text.chars().any(char::is_control) {
        return refuse(field(), Problem::ControlCharacter);
    }
    Ok(())
}

/// Metadata: no key (it is shown to every reader of the key). Its shape
/// and size are [`Metadata::new`](crate::metadata::Metadata::new)'s.
pub fn metadata(
    metadata: &crate::metadata::Metadata,
    format: &KeyFormat,
) -> Result<(), FieldError> {
    no_key(Field::Metadata, metadata.as_str(), format)
}

/// Scope names as given (by a request, a flag): each a scope and no key,
/// at most [`MAX_SCOPES_PER_KEY`] unique ones.
pub fn scopes<S: AsRef<str>>(names: &[S], format: &KeyFormat) -> Result<ScopeSet, FieldError> {
    let mut scopes = Vec::with_capacity(names.len().min(MAX_SCOPES_PER_KEY + 1));
    for (i, name) in names.iter().enumerate() {
        let name = name.as_ref();
        no_key(Field::Scope(i), name, format)?;
        scopes.push(
            Scope::new(name).map_err(|e| FieldError::new(Field::Scope(i), Problem::Scope(e)))?,
        );
    }
    let given = {
        let mut unique: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        unique.sort_unstable();
        unique.dedup();
        unique.len()
    };
    ScopeSet::new(scopes)
        .map_err(|_| FieldError::new(Field::Scopes, Problem::TooManyScopes { given }))
}

/// A held scope set holds no key.
fn scope_set(scopes: &ScopeSet, format: &KeyFormat) -> Result<(), FieldError> {
    for (i, scope) in scopes.iter().enumerate() {
        no_key(Field::Scope(i), scope.as_str(), format)?;
    }
    Ok(())
}

/// A hint as a store makes it: `<prefix>_…` and the last
/// [`HINT_TAIL_LEN`] characters of the key (base62), for `format`'s prefix.
pub fn hint(text: &str, format: &KeyFormat) -> Result<(), FieldError> {
    let shaped = text
        .strip_prefix(format.prefix())
        .and_then(|rest| rest.strip_prefix("_…"))
        .is_some_and(|tail| {
            tail.len() == HINT_TAIL_LEN && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if !shaped {
        return refuse(Field::Hint, Problem::NotAHint);
    }
    Ok(())
}

/// A grace period a reissue is asked for: at most [`MAX_GRACE_PERIOD`].
pub fn grace(grace: Duration) -> Result<(), FieldError> {
    if grace > MAX_GRACE_PERIOD {
        return refuse(Field::GracePeriod, Problem::GraceTooLong);
    }
    Ok(())
}

/// An expiry being set at `now`: in the future, at most [`latest_time`] (in
/// UTC, after any offset).
pub fn expires_at(at: SystemTime, now: SystemTime) -> Result<(), FieldError> {
    if at <= now {
        return refuse(Field::ExpiresAt, Problem::NotInFuture);
    }
    if at > latest_time() {
        return refuse(Field::ExpiresAt, Problem::AfterLatest);
    }
    Ok(())
}

/// A time a store keeps (creation, last use, an imported expiry or end of
/// grace): from the Unix epoch to [`latest_time`].
pub fn stored_time(field: Field, at: SystemTime) -> Result<(), FieldError> {
    if at < SystemTime::UNIX_EPOCH {
        return refuse(field, Problem::BeforeEpoch);
    }
    if at > latest_time() {
        return refuse(field, Problem::AfterLatest);
    }
    Ok(())
}

/// A key's or an account's rate limits: each valid, at most
/// [`MAX_RATE_LIMITS`](crate::limits::MAX_RATE_LIMITS), no two alike.
pub fn rate_limits(limits: &[RateLimit]) -> Result<(), FieldError> {
    check_rate_limits(limits).map_err(|e| FieldError::new(Field::RateLimits, Problem::Limits(e)))
}

/// Credits: the count and the refill at most
/// [`MAX_CREDITS`].
pub fn credits(credits: &Credits) -> Result<(), FieldError> {
    let refill = credits.refill().map_or(0, |r| r.amount());
    if credits.remaining() > MAX_CREDITS || refill > MAX_CREDITS {
        return refuse(Field::Credits, Problem::Limits(LimitError::TooManyCredits));
    }
    Ok(())
}

/// Everything an import checks, at `now` for a store of `format`: the rules
/// create applies to each field (apart from an expiry in the past: expired
/// keys move too), a hint as the store makes them, times from 1970 to
/// [`LATEST_TIME_TEXT`], and a previous secret whose grace ends at most
/// [`MAX_GRACE_PERIOD`] after `now`.
pub fn stored_key(key: &StoredKey, format: &KeyFormat, now: SystemTime) -> Result<(), FieldError> {
    let record = &key.info.record;
    service_account_id(&record.service_account_id)?;
    no_key(Field::ServiceAccountId, &record.service_account_id, format)?;
    // PostgreSQL text cannot hold NUL: refused first by every store, so an
    // export moves anywhere or nowhere.
    if record.description.contains('\0') {
        return refuse(Field::Description, Problem::Nul);
    }
    description(&record.description, format)?;
    scope_set(&record.scopes, format)?;
    if key.info.hint.contains('\0') {
        return refuse(Field::Hint, Problem::Nul);
    }
    hint(&key.info.hint, format)?;
    stored_time(Field::CreatedAt, record.created_at)?;
    if let Some(at) = record.expires_at {
        stored_time(Field::ExpiresAt, at)?;
    }
    if let Some(at) = key.info.last_used_at {
        stored_time(Field::LastUsedAt, at)?;
    }
    if let Some(at) = record.retired_unused_since {
        stored_time(Field::RetiredUnusedSince, at)?;
    }
    if let Some(previous) = &key.previous {
        stored_time(Field::PreviousValidUntil, previous.valid_until)?;
        if previous.valid_until > now.checked_add(MAX_GRACE_PERIOD).unwrap_or(now) {
            return refuse(Field::PreviousValidUntil, Problem::GraceTooLong);
        }
        if previous.hash == key.hash {
            return refuse(Field::PreviousHash, Problem::SameAsCurrent);
        }
    }
    rate_limits(&record.rate_limits)?;
    if let Some(c) = &record.credits {
        credits(c)?;
    }
    if let Some(m) = &record.metadata {
        metadata(m, format)?;
    }
    if let Some(c) = &record.compromise {
        use crate::store::CompromiseReport;
        stored_time(Field::CompromisedAt, c.at)?;
        for (field, text, max) in [
            (Field::CompromiseUrl, &c.url, CompromiseReport::MAX_URL_LEN),
            (
                Field::CompromiseSource,
                &c.source,
                CompromiseReport::MAX_SOURCE_LEN,
            ),
        ] {
            if text.len() > max {
                return refuse(field, Problem::TooLong { max });
            }
            if text.chars().any(char::is_control) {
                return refuse(field, Problem::ControlCharacter);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::StoredHash;
    use crate::key::KeyId;
    use crate::record::KeyRecord;
    use crate::store::{KeyInfo, PreviousHash};

    #[test]
    fn lengths_are_counted_as_the_api_counts_them() {
        let format = KeyFormat::default();
        assert!(service_account_id(&"a".repeat(128)).is_ok());
        assert!(service_account_id(&"a".repeat(129)).is_err());
        // Characters, not bytes: 256 three-byte characters are fine.
        assert!(description(&"€".repeat(256), &format).is_ok());
        let e = description(&"€".repeat(257), &format).unwrap_err();
        assert_eq!(e.to_string(), "description: at most 256 characters");
    }

    #[test]
    fn a_hint_is_the_prefix_an_ellipsis_and_four_key_characters() {
        let format = KeyFormat::default();
        let key = format.generate().unwrap();
        // As the stores make it (`kit::hint_of`, which imports this module).
        let text = key.expose_secret();
        let made = format!("tak_…{}", &text[text.len() - 4..]);
        assert!(hint(&made, &format).is_ok());
        for bad in [
            "tak_…abc",
            "tak_…abcde",
            "tak_...abcd",
            "tak_…ab-d",
            "yc_…abcd",
            "",
        ] {
            assert_eq!(
                hint(bad, &format).unwrap_err().problem(),
                &Problem::NotAHint,
                "{bad}"
            );
        }
        let other = KeyFormat::new("yc").unwrap();
        assert!(hint("yc_…abcd", &other).is_ok());
    }

    #[test]
    fn an_imported_grace_ends_at_most_thirty_days_after_now() {
        let format = KeyFormat::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hash = |b: u8| -> StoredHash {
            format!("sha256${}", format!("{b:02x}").repeat(32))
                .parse()
                .unwrap()
        };
        let record = KeyRecord::new(KeyId::random().unwrap(), "sa").with_created_at(now);
        let key = StoredKey::new(KeyInfo::new(record, None, "tak_…abcd"), hash(1));
        assert!(stored_key(&key, &format, now).is_ok());
        let at = |until| key.clone().with_previous(PreviousHash::new(hash(2), until));
        assert!(stored_key(&at(now + MAX_GRACE_PERIOD), &format, now).is_ok());
        let e = stored_key(
            &at(now + MAX_GRACE_PERIOD + Duration::from_secs(1)),
            &format,
            now,
        )
        .unwrap_err();
        assert_eq!(e.field(), &Field::PreviousValidUntil);
        assert_eq!(e.problem(), &Problem::GraceTooLong);
        // An ended grace moves too.
        assert!(stored_key(&at(now - Duration::from_secs(1)), &format, now).is_ok());
    }
}
