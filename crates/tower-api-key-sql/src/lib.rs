//! The SQL core of [tower-api-key](tower_api_key)'s SQL key stores
//! (`tower-api-key-sqlite`, `tower-api-key-postgres`): one store,
//! [`SqlKeyStore`], written once with its SQL text over a [`Backend`] and
//! its transactions ([`Tx`]), which each dialect implements with its
//! driver's value codec and the few statements only it can write
//! (verification's lookup, migrations, announcements); and what the dialects share
//! besides: how a store hears of other stores' changes ([`ChangeFeed`]: a
//! change-log poll, and a [`Listener`] over a dialect's [`Subscription`]),
//! numbered migrations and their report, the columns of hashes, rate
//! limits, credits and leak reports, and the store's clock.
//!
//! An application does not use this crate directly: it uses a store
//! crate, which re-exports [`Migration`] and [`MigrationReport`].
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod changes;
mod columns;
mod feed;
mod listener;
mod rate_sync;
mod row;
mod store;
mod task;

use std::fmt;
use std::time::SystemTime;

pub use backend::{Backend, BoxFuture, Rows, Statement, Tx, TxWork, ValueRows};
pub use changes::{invalidations, poll_change_log, ChangeLog, SharedChangeLog, MAX_ROWS_PER_READ};
pub use columns::{read_kinds, select_columns, Kind, Value, KEY_COLUMNS};
pub use feed::{ChangeFeed, ChangeFeeds, DEFAULT_POLL_INTERVAL};
pub use listener::{Listener, ListenerSettings, ListenerStatus, Session, Subscription};
pub use rate_sync::{BucketAdd, SqlRateLimitSync, IDLE_AFTER, MAX_INCREMENT_NS, SWEEP_EVERY};
pub use row::{micros, HashColumns, KeyRow, Lookup};
pub use store::{SqlKeyStore, SqlSettings};
pub use task::BackgroundTask;

use tower_api_key::hash::{HashScheme, StoredHash};
use tower_api_key::limits::{Credits, RateLimit, Refill, RefillInterval, MAX_CREDITS};
use tower_api_key::store::kit::CreditState;
use tower_api_key::store::{Compromise, LeakAction, StoreError, Version};
use tower_api_key::KeyId;

/// An error of a SQL backend, boxed: what the stores carry in
/// [`StoreError::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The clock of a SQL store: the system's, or (feature `test-util`) one a
/// test moves by hand.
#[derive(Clone, Default)]
pub struct StoreClock {
    #[cfg(feature = "test-util")]
    injected: Option<std::sync::Arc<dyn tower_api_key::clock::Clock>>,
}

impl StoreClock {
    /// The current time.
    pub fn now(&self) -> SystemTime {
        #[cfg(feature = "test-util")]
        if let Some(clock) = &self.injected {
            return clock.now();
        }
        SystemTime::now()
    }

    /// A store clock reading `clock` (feature `test-util`).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn injected(clock: std::sync::Arc<dyn tower_api_key::clock::Clock>) -> Self {
        Self {
            injected: Some(clock),
        }
    }
}

impl fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreClock").finish_non_exhaustive()
    }
}

/// `n` credits as a column value: at most [`MAX_CREDITS`], so sums of two
/// never overflow.
pub fn credit_count(n: u64) -> i64 {
    i64::try_from(n.min(MAX_CREDITS)).unwrap_or(i64::MAX)
}

/// One schema migration of a SQL store (its list is the store's
/// `migrations()`).
#[derive(Clone, Copy)]
pub struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

impl Migration {
    /// Migration `version`, named `name`, running `sql`.
    pub const fn new(version: u32, name: &'static str, sql: &'static str) -> Self {
        Self { version, name, sql }
    }

    /// Its number; migrations apply in increasing order.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The SQL it runs.
    pub fn sql(&self) -> &'static str {
        self.sql
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a SQL store's `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The versions applied by this call (empty when the schema was current).
    pub applied: Vec<u32>,
    /// The highest version in the database after the call.
    pub current: u32,
}

impl MigrationReport {
    /// The report of a run over `known` (oldest first) that applied
    /// `applied` to a database that had reached `newest_done`; says so in a
    /// log when the database is newer than this release (migrations only
    /// add, so this release keeps working).
    pub fn new(known: &[Migration], applied: Vec<u32>, newest_done: u32) -> Self {
        let newest_known = known.last().map_or(0, |m| m.version);
        if newest_done > newest_known {
            tracing::info!(
                database = newest_done,
                crate_knows = newest_known,
                "tower-api-key: the database schema is newer than this release"
            );
        }
        Self {
            applied,
            current: newest_done.max(newest_known),
        }
    }
}

/// The `hash_scheme` and `hash_pepper_version` columns of `scheme`.
pub fn scheme_columns(scheme: HashScheme) -> Result<(&'static str, Option<i64>), StoreError> {
    match scheme {
        HashScheme::Sha256 => Ok(("sha256", None)),
        HashScheme::HmacSha256 { pepper_version } => {
            Ok(("hmac-sha256", Some(i64::from(pepper_version))))
        }
        #[allow(unreachable_patterns)]
        _ => Err(StoreError::backend("unsupported hash scheme")),
    }
}

/// The stored hash in a row's three columns; `None` when the digest is
/// NULL (no previous hash).
pub fn stored_hash(
    digest: Option<&[u8]>,
    scheme: Option<&str>,
    pepper_version: Option<i64>,
) -> Result<Option<StoredHash>, BoxError> {
    let Some(digest) = digest else {
        return Ok(None);
    };
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| "stored key hash is not 32 bytes")?;
    let scheme = match (scheme, pepper_version) {
        (Some("sha256"), None) => HashScheme::Sha256,
        (Some("hmac-sha256"), Some(v)) => HashScheme::HmacSha256 {
            pepper_version: u32::try_from(v).map_err(|_| "stored pepper version out of range")?,
        },
        _ => return Err("stored key hash has an unknown scheme".into()),
    };
    Ok(Some(StoredHash::from_parts(scheme, digest)))
}

/// The compromise columns of a key (`compromised_at`, `compromise_url`,
/// `compromise_source`, `compromise_action`) as its record's
/// [`Compromise`]: none without a time; an error for an action the crate
/// does not know.
pub fn compromise_of(
    at: Option<SystemTime>,
    url: Option<String>,
    source: Option<String>,
    action: Option<&str>,
) -> Result<Option<Compromise>, BoxError> {
    let Some(at) = at else {
        return Ok(None);
    };
    let action = action
        .and_then(LeakAction::from_name)
        .ok_or("stored compromise action is not valid")?;
    Ok(Some(Compromise::new(
        at,
        url.unwrap_or_default(),
        source.unwrap_or_default(),
        action,
    )))
}

/// The stored form of a compromise's binding: the hash of `key` whose
/// digest is `digest` (its current or previous), if it still has one.
pub fn compromised_hash(
    digest: Option<&[u8]>,
    current: Option<StoredHash>,
    previous: Option<StoredHash>,
) -> Option<StoredHash> {
    let digest = digest?;
    [current, previous]
        .into_iter()
        .flatten()
        .find(|h| h.digest().as_slice() == digest)
}

/// A key's stored version: at least 1 (a `CHECK` in both schemas).
pub fn version_of(n: i64) -> Result<Version, BoxError> {
    match u64::try_from(n) {
        Ok(n @ 1..) => Ok(Version::new(n)),
        _ => Err("stored version is not valid".into()),
    }
}

/// Rate limits as stored: their text forms separated by one space (a
/// limit's text holds none); `''` for none.
pub fn limits_text(limits: &[RateLimit]) -> String {
    let texts: Vec<String> = limits.iter().map(RateLimit::to_string).collect();
    texts.join(" ")
}

/// The rate limits of `owner` (`key <id>`, `service account <id>`) stored
/// as `text`; an error naming the owner when the text is not valid.
pub fn parse_limits(text: &str, owner: impl fmt::Display) -> Result<Vec<RateLimit>, BoxError> {
    text.split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<RateLimit>()
                .map_err(|e| format!("stored rate limits of {owner} are not valid: {e}").into())
        })
        .collect()
}

/// A key's credit state in its columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreditColumns {
    /// The count left; `NULL` for a key without credits.
    pub remaining: Option<i64>,
    /// The refill's amount, if the credits refill.
    pub refill_amount: Option<i64>,
    /// The refill's interval: `daily` or `monthly`.
    pub refill_interval: Option<String>,
    /// The day of the month a monthly refill falls on.
    pub refill_day: Option<i64>,
    /// The refill time last due when the credits were set or refilled.
    pub refilled_at: Option<SystemTime>,
    /// The credits' generation. Kept when credits are removed, so credits set again start later.
    pub generation: i64,
}

impl CreditColumns {
    /// The columns of `state` (`None`: no credits, generation 0).
    pub fn of(state: Option<&CreditState>) -> Self {
        let Some(state) = state else {
            return Self::default();
        };
        let refill = state.credits.refill();
        Self {
            remaining: Some(count(state.credits.remaining())),
            refill_amount: refill.map(|r| count(r.amount())),
            refill_interval: refill.map(|r| r.interval().as_str().to_owned()),
            refill_day: refill.map(|r| i64::from(r.day())),
            refilled_at: Some(state.refilled_at),
            generation: count(state.generation),
        }
    }

    /// The credit state these columns hold for key `id`; `None` for a key
    /// without credits, an error naming the key when they make no sense.
    pub fn state(&self, id: KeyId) -> Result<Option<CreditState>, BoxError> {
        let bad = |what: &str| -> BoxError { format!("stored credits of key {id}: {what}").into() };
        let Some(remaining) = self.remaining else {
            return Ok(None);
        };
        let amount_of = |n: i64| {
            u64::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CREDITS)
                .ok_or_else(|| bad("a count is out of range"))
        };
        let refill = match (&self.refill_amount, &self.refill_interval, self.refill_day) {
            (None, None, None) => None,
            (Some(amount), Some(interval), day) => {
                let amount = amount_of(*amount)?;
                let interval: RefillInterval = interval
                    .parse()
                    .map_err(|_| bad("the refill interval is unknown"))?;
                let refill = match interval {
                    RefillInterval::Daily => Refill::daily(amount),
                    RefillInterval::Monthly => {
                        let day = day
                            .and_then(|d| u8::try_from(d).ok())
                            .ok_or_else(|| bad("the refill day is out of range"))?;
                        Refill::monthly(amount, day)
                    }
                    // An interval this release cannot refill by.
                    _ => return Err(bad("the refill interval is unknown")),
                };
                Some(refill.map_err(|e| bad(&e.to_string()))?)
            }
            _ => return Err(bad("the refill is incomplete")),
        };
        let mut credits = Credits::new(amount_of(remaining)?).map_err(|e| bad(&e.to_string()))?;
        if let Some(refill) = refill {
            credits = credits.with_refill(refill);
        }
        let refilled_at = self
            .refilled_at
            .ok_or_else(|| bad("the refill time is missing"))?;
        let generation =
            u64::try_from(self.generation).map_err(|_| bad("the generation is negative"))?;
        Ok(Some(CreditState::stored(credits, refilled_at, generation)))
    }
}

/// A count (credits at most [`MAX_CREDITS`], a generation) as a column.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Logs a key row that list and export skip because it cannot be read (it
/// was changed outside the library): the id as stored (escaped, cut short)
/// and why, so an operator can find and fix it.
pub fn warn_unreadable(raw_id: &str, error: &dyn fmt::Display) {
    tracing::warn!(
        key_id = %shown_id(raw_id),
        error = %error,
        "tower-api-key: skipped a stored key that cannot be read; fix or revoke it"
    );
}

/// A stored key id as text safe to show: a valid id as it is; anything else
/// only by its length (it could hold anything, a pasted key too).
pub fn shown_id(raw_id: &str) -> String {
    if raw_id.parse::<KeyId>().is_ok() {
        return raw_id.to_owned();
    }
    format!("(not a key id, {} bytes)", raw_id.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_round_trips_through_its_columns() {
        for scheme in [
            HashScheme::Sha256,
            HashScheme::HmacSha256 { pepper_version: 0 },
            HashScheme::HmacSha256 {
                pepper_version: u32::MAX,
            },
        ] {
            let hash = StoredHash::from_parts(scheme, [7; 32]);
            let (name, version) = scheme_columns(scheme).unwrap();
            let back = stored_hash(Some(&[7; 32]), Some(name), version).unwrap();
            assert_eq!(back, Some(hash));
        }
    }

    #[test]
    fn limits_and_credits_round_trip_through_their_columns() {
        let limits: Vec<RateLimit> = vec!["5/1s".parse().unwrap(), "9/1d,burst=2".parse().unwrap()];
        let text = limits_text(&limits);
        assert_eq!(text, "5/1s 9/1d,burst=2");
        assert_eq!(parse_limits(&text, "key x").unwrap(), limits);
        assert!(parse_limits("", "key x").unwrap().is_empty());
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let id = KeyId::random().unwrap();
        for credits in [
            Credits::new(7).unwrap(),
            Credits::new(0)
                .unwrap()
                .with_refill(Refill::daily(MAX_CREDITS).unwrap()),
            Credits::new(MAX_CREDITS)
                .unwrap()
                .with_refill(Refill::monthly(3, 31).unwrap()),
        ] {
            let state = CreditState::set(credits, at, 41);
            assert_eq!(
                CreditColumns::of(Some(&state)).state(id).unwrap(),
                Some(state)
            );
        }
        assert_eq!(CreditColumns::of(None).state(id).unwrap(), None);
    }

    #[test]
    fn malformed_limits_and_credits_are_errors_naming_their_owner() {
        let id = KeyId::random().unwrap();
        for text in ["5/1s  x", "5/0s", "5/1s,burst"] {
            let e = parse_limits(text, format!("key {id}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&id.to_string()), "{e}");
        }
        let at = SystemTime::UNIX_EPOCH;
        let good = CreditColumns::of(Some(&CreditState::set(
            Credits::new(1)
                .unwrap()
                .with_refill(Refill::monthly(3, 5).unwrap()),
            at,
            0,
        )));
        let broken = [
            CreditColumns {
                remaining: Some(-1),
                ..good.clone()
            },
            CreditColumns {
                remaining: Some(i64::MAX),
                ..good.clone()
            },
            CreditColumns {
                refill_amount: None,
                ..good.clone()
            },
            CreditColumns {
                refill_interval: Some("weekly".into()),
                ..good.clone()
            },
            CreditColumns {
                refill_day: Some(0),
                ..good.clone()
            },
            CreditColumns {
                refill_day: None,
                ..good.clone()
            },
            CreditColumns {
                refill_day: Some(300),
                ..good.clone()
            },
            CreditColumns {
                refilled_at: None,
                ..good.clone()
            },
            CreditColumns {
                generation: -1,
                ..good.clone()
            },
        ];
        for columns in broken {
            let e = columns.state(id).unwrap_err().to_string();
            assert!(e.contains(&id.to_string()), "{columns:?}: {e}");
        }
    }

    #[test]
    fn malformed_columns_are_errors_and_a_null_digest_is_no_hash() {
        assert_eq!(stored_hash(None, Some("sha256"), None).unwrap(), None);
        assert!(stored_hash(Some(&[0; 31]), Some("sha256"), None).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("sha256"), Some(1)).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("hmac-sha256"), None).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("hmac-sha256"), Some(-1)).is_err());
        assert!(stored_hash(Some(&[0; 32]), Some("md5"), None).is_err());
    }
}
