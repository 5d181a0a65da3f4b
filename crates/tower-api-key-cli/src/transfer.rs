//! `export` and `import`: key records with their hashes (never secrets) as
//! JSON lines, one key per line.

use std::io::BufRead;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tower_api_key::hash::StoredHash;
use tower_api_key::limits::{parse_period, Credits, RateLimit, Refill, RefillInterval};
use tower_api_key::management::{CreditsResource, RateLimitResource};
use tower_api_key::store::{
    Compromise, Imported, KeyInfo, LeakAction, PreviousHash, StoreError, StoredKey, Version,
    MAX_EXPORT_PAGE,
};
use tower_api_key::{KeyId, KeyRecord, Metadata, Networks, ScopeSet};

use crate::error::CliError;
use crate::output::write_stdout;
use crate::store::Store;
use crate::time;

/// One line of an export. Unknown fields are refused on import: a field
/// this version cannot keep would be lost silently otherwise. `rate_limits`
/// and `credits` (the management API's forms) and `version` may be absent,
/// as in the exports of versions without them (a key without a version is
/// at the first).
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
    #[serde(default)]
    pub version: Option<u64>,
    /// The leak report recorded on the key; absent when none (and in the
    /// exports of versions without leak reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromise: Option<CompromiseLine>,
    /// The networks the key may be used from; absent: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<String>,
    /// The key's metadata (a JSON object); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The operator marked the key read-only for managers; absent: not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub operator_locked: bool,
    /// Whether the lifecycle task may retire the key for disuse; absent:
    /// true (written only when false).
    #[serde(default = "retire_by_default", skip_serializing_if = "is_true")]
    pub retire_when_unused: bool,
    /// When the lifecycle retired the key, the time it was unused since;
    /// absent: not retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_unused_since: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// What a line without `retire_when_unused` means.
fn retire_by_default() -> bool {
    true
}

fn is_true(flag: &bool) -> bool {
    *flag
}

/// A leak report in an export line: the record's `compromise` and the hash
/// of the secret it binds to (absent when that secret is gone).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompromiseLine {
    pub compromised_at: String,
    pub url: String,
    pub source: String,
    pub action: String,
    #[serde(default)]
    pub compromised_hash: Option<String>,
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
            version: Some(key.info.version.get()),
            compromise: r.compromise.as_ref().map(|c| CompromiseLine {
                compromised_at: time::format(c.at),
                url: c.url.clone(),
                source: c.source.clone(),
                action: c.action.as_str().to_owned(),
                compromised_hash: key.compromised_hash.map(|h| h.to_string()),
            }),
            allowed_networks: r
                .allowed_networks
                .as_ref()
                .map(Networks::to_strings)
                .unwrap_or_default(),
            // A Metadata is a JSON object: it always parses.
            metadata: r
                .metadata
                .as_ref()
                .and_then(|m| serde_json::from_str(m.as_str()).ok()),
            operator_locked: r.operator_locked,
            retire_when_unused: r.retire_when_unused,
            retired_unused_since: r.retired_unused_since.map(time::format),
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
        let mut record = KeyRecord::new(id, self.service_account_id.as_str())
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
            .with_credits(self.credits.as_ref().map(credits_of).transpose()?)
            .with_operator_locked(self.operator_locked)
            .with_retire_when_unused(self.retire_when_unused)
            .with_retired_unused_since(opt_at("retired_unused_since", &self.retired_unused_since)?);
        if !self.allowed_networks.is_empty() {
            record.allowed_networks =
                Some(Networks::parse(&self.allowed_networks).map_err(|e| e.to_string())?);
        }
        if let Some(value) = &self.metadata {
            let text = serde_json::to_string(value).map_err(|e| format!("metadata: {e}"))?;
            record.metadata = Some(Metadata::new(&text).map_err(|e| e.to_string())?);
        }
        let mut compromised_hash = None;
        if let Some(c) = &self.compromise {
            let action = LeakAction::from_name(&c.action)
                .ok_or("compromise.action must be revoke, quarantine or notify")?;
            record.compromise = Some(Box::new(Compromise::new(
                at("compromise.compromised_at", &c.compromised_at)?,
                &c.url,
                &c.source,
                action,
            )));
            compromised_hash = c
                .compromised_hash
                .as_deref()
                .map(|h| hash("compromise.compromised_hash", h))
                .transpose()?;
        }
        let info = KeyInfo::new(
            record,
            opt_at("last_used_at", &self.last_used_at)?,
            self.hint.clone(),
        )
        .with_version(self.version.map_or(Version::FIRST, Version::new));
        let mut key = StoredKey::new(info, hash("hash", &self.hash)?);
        if let Some(bound) = compromised_hash {
            key = key.with_compromised_hash(bound);
        }
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

/// Longest line an import reads: well over the largest valid record (100
/// scopes of 256 bytes, a 256-character description and every other field
/// take about 32 KB). A longer line is refused without being held whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A revocation line of an export: `{"revoked":"<key id>"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedLine {
    revoked: String,
}

/// Writes every revoked id, then every key, page by page, in key id order;
/// returns how many keys and revoked ids. Keys the store cannot read stop
/// it before anything is written, unless `skip_unreadable` (then they are
/// named on stderr and left out).
pub async fn export(store: &Store, skip_unreadable: bool) -> Result<(usize, usize), CliError> {
    let keys = store.keys();
    let unreadable = keys.unreadable().await?;
    if !unreadable.is_empty() {
        let shown: Vec<&str> = unreadable.iter().take(10).map(String::as_str).collect();
        let more = if unreadable.len() > shown.len() {
            format!(" and {} more", unreadable.len() - shown.len())
        } else {
            String::new()
        };
        let names = format!("{}{more}", shown.join(", "));
        if !skip_unreadable {
            return Err(CliError::new(format!(
                "nothing was exported: {} keys cannot be read (corrupted rows): {names}; \
                 fix or revoke them, or pass --skip-unreadable to export the others",
                unreadable.len()
            )));
        }
        eprintln!(
            "warning: {} keys cannot be read and are left out: {names}",
            unreadable.len()
        );
    }
    // Revocations first: an import of this stream records them before any
    // key, so none of these ids is ever valid where it goes.
    let mut after = None;
    let mut revoked = 0;
    loop {
        let page = keys.export_revoked(after, MAX_EXPORT_PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(*last);
        let mut text = String::new();
        for id in &page {
            let line = serde_json::to_string(&RevokedLine {
                revoked: id.to_string(),
            })
            .map_err(|e| CliError::new(format!("cannot write JSON: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        write_stdout(&text)?;
        revoked += page.len();
    }
    let mut after = None;
    let mut count = 0;
    loop {
        let page = keys.export(after, MAX_EXPORT_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok((count, revoked));
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
    pub revoked: usize,
    pub refused: usize,
}

/// One line read with [`read_line`].
enum Read {
    /// A whole line (without its newline) is in the buffer.
    Line,
    /// The line was longer than the cap: the buffer holds its first
    /// [`MAX_LINE_BYTES`], the rest was read past and dropped.
    TooLong,
    /// The input ended.
    End,
}

/// Reads one line into `buf` (cleared first), holding at most `cap` bytes
/// of it: a longer line is read past in chunks, never held whole.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Read> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Read::End,
                (true, true) => Read::TooLong,
                (true, false) => Read::Line,
            });
        }
        any = true;
        let (part, used, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        if part.len() > room {
            too_long = true;
        }
        buf.extend_from_slice(&part[..part.len().min(room)]);
        input.consume(used);
        if ended {
            return Ok(if too_long { Read::TooLong } else { Read::Line });
        }
    }
}

/// The key id a line names, if it has a readable one: for naming a refused
/// line (a line too long to parse is searched in its first bytes).
fn key_id_in(text: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            let id = v.get("key_id").or_else(|| v.get("revoked"))?;
            id.as_str()?.parse::<KeyId>().ok()
        });
    let id = from_json.or_else(|| {
        let rest = &text[text.find("\"key_id\":\"")? + 10..];
        rest.get(..rest.find('"')?)?.parse::<KeyId>().ok()
    });
    id.map_or_else(|| "unknown".to_owned(), |id| id.to_string())
}

/// Imports every line of `input`: revoked ids and keys. A line the store
/// cannot take (bad JSON, a field that breaks a rule of create, a line
/// longer than [`MAX_LINE_BYTES`]) is refused, named on stderr (line
/// number, key id and field), and the import goes on: the rest still moves,
/// and a second run after fixing the refused lines adds only those. A
/// backend failure stops it (every later record would fail the same way);
/// it is safe to run again.
pub async fn import(store: &Store, mut input: impl BufRead) -> Result<Summary, CliError> {
    let mut summary = Summary::default();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        number += 1;
        let read = read_line(&mut input, &mut buf, MAX_LINE_BYTES)
            .map_err(|e| CliError::new(format!("cannot read line {number}: {e}")))?;
        let mut refuse = |id: &str, why: &str| {
            summary.refused += 1;
            eprintln!("refused line {number} (key {id}): {why}");
        };
        match read {
            Read::End => return Ok(summary),
            Read::TooLong => {
                refuse(
                    &key_id_in(&String::from_utf8_lossy(&buf)),
                    &format!(
                        "the line is longer than {MAX_LINE_BYTES} bytes, more than any valid record"
                    ),
                );
                continue;
            }
            Read::Line => {}
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            refuse(
                &key_id_in(&String::from_utf8_lossy(&buf)),
                "the line is not UTF-8",
            );
            continue;
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let text = line.to_owned();
        if let Ok(revoked) = serde_json::from_str::<RevokedLine>(&text) {
            let Ok(id) = revoked.revoked.parse::<KeyId>() else {
                refuse("unknown", "revoked: not a key id");
                continue;
            };
            match store.keys().import_revoked(id).await {
                Ok(_) => summary.revoked += 1,
                Err(StoreError::Backend(e)) => {
                    return Err(CliError::new(format!(
                        "stopped at line {number} (key {id}): key store backend failed: {e}"
                    )))
                }
                Err(e) => refuse(&id.to_string(), &e.to_string()),
            }
            continue;
        }
        let parsed: Line = match serde_json::from_str(&text) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Name the key if the line has a readable key_id at all.
                refuse(&key_id_in(&text), &json_error(&e));
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
}

/// Whether an unknown field's name may be shown: a short lower-case name
/// such as a newer version's field, never anything holding a key (a key's
/// secret mixes cases, so a key glued into a name fails this too).
fn looks_like_a_field_name(name: &str) -> bool {
    name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !crate::argv::holds_key(name)
}

/// What is wrong with a line, without its values: serde_json's messages
/// quote the offending value ("invalid type: string \"...\""), and a line
/// pasted by mistake may hold a secret.
fn json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let named = ["missing field `", "unknown field `", "duplicate field `"];
    if named.iter().any(|p| message.starts_with(p)) {
        // These quote only the field name (the list of expected fields
        // after it is dropped too). A missing or duplicate field is one of
        // ours; an unknown one is the line's, and may be a pasted key.
        let end = message.find("`,").map_or(message.len(), |i| i + 1);
        let end = message[..end].rfind(" at line").unwrap_or(end);
        let said = &message[..end];
        if let Some(name) = said
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            if !looks_like_a_field_name(name) {
                return format!(
                    "not a key record: an unknown field, whose name is not shown (column {})",
                    e.column()
                );
            }
        }
        return format!("not a key record: {said}");
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
        object.remove("version");
        let line: Line = serde_json::from_value(value).unwrap();
        let stored = line.to_stored().unwrap();
        assert!(stored.info.record.rate_limits.is_empty());
        assert!(stored.info.record.credits.is_none());
        assert_eq!(stored.info.version, Version::FIRST);
    }

    #[test]
    fn a_keys_version_travels_in_a_line() {
        let hash: StoredHash = format!("sha256${}", "ab".repeat(32)).parse().unwrap();
        let info = KeyInfo::new(
            KeyRecord::new(KeyId::random().unwrap(), "sa-1"),
            None,
            "tak_…abcd",
        )
        .with_version(Version::new(7));
        let line = Line::from_stored(&StoredKey::new(info, hash));
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""version":7"#), "{text}");
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_stored().unwrap().info.version, Version::new(7));
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

#[cfg(test)]
mod reading {
    use std::io::{BufReader, Read as _};

    use super::*;

    #[test]
    fn a_line_over_the_cap_is_read_past_without_being_held_whole() {
        let long = std::io::repeat(b'x').take(10 << 20);
        let input = long.chain(&b"\n{\"next\":1}\nlast"[..]);
        let mut input = BufReader::with_capacity(8192, input);
        let mut buf = Vec::new();
        let cap = 1000;
        assert!(matches!(
            read_line(&mut input, &mut buf, cap).unwrap(),
            Read::TooLong
        ));
        assert_eq!(buf.len(), cap);
        assert!(buf.capacity() < 4 * cap, "held {} bytes", buf.capacity());
        assert!(matches!(
            read_line(&mut input, &mut buf, cap).unwrap(),
            Read::Line
        ));
        assert_eq!(buf, b"{\"next\":1}");
        assert!(matches!(
            read_line(&mut input, &mut buf, cap).unwrap(),
            Read::Line
        ));
        assert_eq!(buf, b"last");
        assert!(matches!(
            read_line(&mut input, &mut buf, cap).unwrap(),
            Read::End
        ));
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_whole() {
        let mut input = BufReader::with_capacity(7, &b"abcdefghij\nxyz"[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut input, &mut buf, 10).unwrap(),
            Read::Line
        ));
        assert_eq!(buf, b"abcdefghij");
        assert!(matches!(
            read_line(&mut input, &mut buf, 2).unwrap(),
            Read::TooLong
        ));
        assert_eq!(buf, b"xy");
    }

    #[test]
    fn the_key_id_of_a_cut_line_is_found_in_its_start() {
        let id = KeyId::random().unwrap();
        let cut = format!("{{\"key_id\":\"{id}\",\"description\":\"xxxx");
        assert_eq!(key_id_in(&cut), id.to_string());
        assert_eq!(key_id_in("{\"description\":\"x"), "unknown");
        assert_eq!(
            key_id_in(&format!("{{\"revoked\":\"{id}\"}}")),
            id.to_string()
        );
    }
}
