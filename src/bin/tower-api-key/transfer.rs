//! `export` and `import`: key records with their hashes (never secrets) as
//! JSON lines, one key per line.

use std::io::BufRead;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tower_api_key::hash::StoredHash;
use tower_api_key::limits::{parse_period, Credits, RateLimit, Refill, RefillInterval};
use tower_api_key::management::{CreditsResource, RateLimitResource};
use tower_api_key::store::{
    Imported, KeyInfo, PreviousHash, StoreError, StoredKey, MAX_EXPORT_PAGE,
};
use tower_api_key::{KeyId, KeyRecord, ScopeSet};

use crate::error::CliError;
use crate::output::write_stdout;
use crate::store::Store;
use crate::time;

/// One line of an export. Unknown fields are refused on import: a field
/// this version cannot keep would be lost silently otherwise. `rate_limits`
/// and `credits` (the management API's forms) may be absent, as in the
/// exports of versions without them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub key_id: String,
    pub service_account_id: String,
    pub scopes: Vec<String>,
    pub description: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub hint: String,
    pub hash: String,
    pub previous_hash: Option<String>,
    pub previous_valid_until: Option<String>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitResource>,
    #[serde(default)]
    pub credits: Option<CreditsResource>,
}

/// A rate limit of a line, checked as the library checks one.
fn rate_limit_of(i: usize, line: &RateLimitResource) -> Result<RateLimit, String> {
    let field = |e: &dyn std::fmt::Display| format!("rate_limits[{i}]: {e}");
    let period = parse_period(&line.period).map_err(|e| field(&e))?;
    RateLimit::new(line.limit, period)
        .and_then(|l| l.with_burst(line.burst))
        .map_err(|e| field(&e))
}

/// The credits of a line, checked as the library checks them.
fn credits_of(line: &CreditsResource) -> Result<Credits, String> {
    let field = |e: &dyn std::fmt::Display| format!("credits: {e}");
    let credits = Credits::new(line.remaining).map_err(|e| field(&e))?;
    let Some(refill) = &line.refill else {
        return Ok(credits);
    };
    let interval: RefillInterval = refill.interval.parse().map_err(|e| field(&e))?;
    let refill = match interval {
        RefillInterval::Monthly => Refill::monthly(refill.amount, refill.day),
        _ => Refill::daily(refill.amount),
    }
    .map_err(|e| field(&e))?;
    Ok(credits.with_refill(refill))
}

impl Line {
    pub fn from_stored(key: &StoredKey) -> Self {
        let r = &key.info.record;
        Self {
            key_id: r.key_id.to_string(),
            service_account_id: r.service_account_id.to_string(),
            scopes: r.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            description: r.description.clone(),
            created_at: time::format(r.created_at),
            expires_at: r.expires_at.map(time::format),
            last_used_at: key.info.last_used_at.map(time::format),
            hint: key.info.hint.clone(),
            hash: key.hash.to_string(),
            previous_hash: key.previous.map(|p| p.hash.to_string()),
            previous_valid_until: key.previous.map(|p| time::format(p.valid_until)),
            rate_limits: r.rate_limits.iter().map(RateLimitResource::from).collect(),
            credits: r.credits.as_ref().map(CreditsResource::from),
        }
    }

    /// The key this line describes; the error says which field is wrong
    /// (never a hash: the caller names the line and key id).
    pub fn to_stored(&self) -> Result<StoredKey, String> {
        let id: KeyId = self
            .key_id
            .parse()
            .map_err(|_| "key_id is not a key id".to_owned())?;
        let at = |field: &str, text: &str| -> Result<SystemTime, String> {
            time::parse(text).map_err(|e| format!("{field}: {e}"))
        };
        let opt_at = |field: &str, text: &Option<String>| -> Result<Option<SystemTime>, String> {
            text.as_deref().map(|t| at(field, t)).transpose()
        };
        let hash = |field: &str, text: &str| -> Result<StoredHash, String> {
            text.parse()
                .map_err(|_| format!("{field} is not a stored key hash"))
        };
        let scopes = ScopeSet::new(&self.scopes).map_err(|e| format!("scopes: {e}"))?;
        let record = KeyRecord::new(id, self.service_account_id.as_str())
            .with_scopes(scopes)
            .with_description(self.description.clone())
            .with_created_at(at("created_at", &self.created_at)?)
            .with_expires_at(opt_at("expires_at", &self.expires_at)?)
            .with_rate_limits(
                self.rate_limits
                    .iter()
                    .enumerate()
                    .map(|(i, l)| rate_limit_of(i, l))
                    .collect::<Result<_, _>>()?,
            )
            .with_credits(self.credits.as_ref().map(credits_of).transpose()?);
        let info = KeyInfo::new(
            record,
            opt_at("last_used_at", &self.last_used_at)?,
            self.hint.clone(),
        );
        let mut key = StoredKey::new(info, hash("hash", &self.hash)?);
        match (&self.previous_hash, &self.previous_valid_until) {
            (None, None) => {}
            (Some(previous), Some(until)) => {
                key = key.with_previous(PreviousHash::new(
                    hash("previous_hash", previous)?,
                    at("previous_valid_until", until)?,
                ));
            }
            _ => {
                return Err(
                    "previous_hash and previous_valid_until must both be set or both null".into(),
                )
            }
        }
        Ok(key)
    }
}

/// Writes every key, page by page, in key id order; returns how many.
pub async fn export(store: &Store) -> Result<usize, CliError> {
    let mut after = None;
    let mut count = 0;
    loop {
        let page = store.keys().export(after, MAX_EXPORT_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = Some(last.info.record.key_id);
        let mut text = String::new();
        for key in &page {
            let line = serde_json::to_string(&Line::from_stored(key))
                .map_err(|e| CliError::new(format!("cannot write JSON: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        write_stdout(&text)?;
        count += page.len();
    }
}

/// What an import did.
#[derive(Default)]
pub struct Summary {
    pub added: usize,
    pub present: usize,
    pub refused: usize,
}

/// Imports every line of `input`. A record the store cannot take is
/// refused, named on stderr (line number and key id), and the import goes
/// on: the rest still moves, and a second run after fixing the refused
/// lines adds only those. A backend failure stops it (every later record
/// would fail the same way); it is safe to run again.
pub async fn import(store: &Store, input: impl BufRead) -> Result<Summary, CliError> {
    let mut summary = Summary::default();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| CliError::new(format!("cannot read line {number}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut refuse = |id: &str, why: &str| {
            summary.refused += 1;
            eprintln!("refused line {number} (key {id}): {why}");
        };
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Name the key if the line has a readable key_id at all.
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("key_id")?.as_str()?.parse::<KeyId>().ok())
                    .map_or_else(|| "unknown".to_owned(), |id| id.to_string());
                refuse(&id, &json_error(&e));
                continue;
            }
        };
        let id = parsed
            .key_id
            .parse::<KeyId>()
            .map_or_else(|_| "unknown".to_owned(), |id| id.to_string());
        let key = match parsed.to_stored() {
            Ok(key) => key,
            Err(why) => {
                refuse(&id, &why);
                continue;
            }
        };
        match store.keys().import(key).await {
            Ok(Imported::AlreadyPresent) => summary.present += 1,
            Ok(_) => summary.added += 1,
            Err(StoreError::Backend(e)) => {
                return Err(CliError::new(format!(
                    "stopped at line {number} (key {id}): key store backend failed: {e}"
                )))
            }
            Err(e) => refuse(&id, &e.to_string()),
        }
    }
    Ok(summary)
}

/// What is wrong with a line, without its values: serde_json's messages
/// quote the offending value ("invalid type: string \"...\""), and a line
/// pasted by mistake may hold a secret.
fn json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let named = ["missing field `", "unknown field `", "duplicate field `"];
    if named.iter().any(|p| message.starts_with(p)) {
        // These quote only the field name, which is ours (the list of
        // expected fields after it is dropped too).
        let end = message.find("`,").map_or(message.len(), |i| i + 1);
        let end = message[..end].rfind(" at line").unwrap_or(end);
        return format!("not a key record: {}", &message[..end]);
    }
    let kind = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
        _ => "a field has the wrong type",
    };
    format!("not a key record: {kind} (column {})", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_api_key::limits::MAX_CREDITS;

    fn line_of(record: KeyRecord) -> Line {
        let hash: StoredHash = format!("sha256${}", "ab".repeat(32)).parse().unwrap();
        let key = StoredKey::new(KeyInfo::new(record, None, "tak_…abcd"), hash);
        Line::from_stored(&key)
    }

    #[test]
    fn limits_and_credits_travel_in_a_line_and_back() {
        let record = KeyRecord::new(KeyId::random().unwrap(), "sa-1")
            .with_rate_limits(vec![
                "5/1s".parse().unwrap(),
                "100/1m,burst=20".parse().unwrap(),
            ])
            .with_credits(Some(
                Credits::new(3)
                    .unwrap()
                    .with_refill(Refill::monthly(100, 31).unwrap()),
            ));
        let line = line_of(record.clone());
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""rate_limits":[{"limit":5,"period":"1s","burst":5},"#));
        let back: Line = serde_json::from_str(&text).unwrap();
        let stored = back.to_stored().unwrap();
        assert_eq!(stored.info.record.rate_limits, record.rate_limits);
        assert_eq!(stored.info.record.credits, record.credits);

        let plain = line_of(KeyRecord::new(KeyId::random().unwrap(), "sa-1"));
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            text.contains(r#""rate_limits":[],"credits":null"#),
            "{text}"
        );
    }

    #[test]
    fn a_line_without_limits_from_an_older_export_still_reads() {
        let mut value =
            serde_json::to_value(line_of(KeyRecord::new(KeyId::random().unwrap(), "sa-1")))
                .unwrap();
        let object = value.as_object_mut().unwrap();
        object.remove("rate_limits");
        object.remove("credits");
        let line: Line = serde_json::from_value(value).unwrap();
        let stored = line.to_stored().unwrap();
        assert!(stored.info.record.rate_limits.is_empty());
        assert!(stored.info.record.credits.is_none());
    }

    #[test]
    fn bad_limits_and_credits_in_a_line_are_named() {
        let mut line = line_of(KeyRecord::new(KeyId::random().unwrap(), "sa-1"));
        let bad = |json: serde_json::Value| -> RateLimitResource {
            serde_json::from_value(json).unwrap()
        };
        line.rate_limits = vec![
            bad(serde_json::json!({"limit": 5, "period": "1s", "burst": 5})),
            bad(serde_json::json!({"limit": 5, "period": "1w", "burst": 5})),
        ];
        assert!(line
            .to_stored()
            .unwrap_err()
            .starts_with("rate_limits[1]: "));
        line.rate_limits = vec![bad(
            serde_json::json!({"limit": 5, "period": "1s", "burst": 0}),
        )];
        assert!(line
            .to_stored()
            .unwrap_err()
            .starts_with("rate_limits[0]: "));
        line.rate_limits.clear();
        line.credits = Some(
            serde_json::from_value(
                serde_json::json!({"remaining": MAX_CREDITS + 1, "refill": null}),
            )
            .unwrap(),
        );
        assert!(line.to_stored().unwrap_err().starts_with("credits: "));
        line.credits = Some(
            serde_json::from_value(serde_json::json!({"remaining": 1,
                "refill": {"amount": 1, "interval": "weekly", "day": 1}}))
            .unwrap(),
        );
        assert!(line.to_stored().unwrap_err().starts_with("credits: "));
    }
}
