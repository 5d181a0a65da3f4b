//! `export` and `import`: key records with their hashes (never secrets) as
//! JSON lines, one key per line.

use std::io::BufRead;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tower_api_key::hash::StoredHash;
use tower_api_key::store::{
    Imported, KeyInfo, PreviousHash, StoreError, StoredKey, MAX_EXPORT_PAGE,
};
use tower_api_key::{KeyId, KeyRecord, ScopeSet};

use crate::error::CliError;
use crate::output::write_stdout;
use crate::store::Store;
use crate::time;

/// One line of an export. Unknown fields are refused on import: a field
/// this version cannot keep would be lost silently otherwise.
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
            .with_expires_at(opt_at("expires_at", &self.expires_at)?);
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
