//! How keys are shown: a table for people, JSON for scripts. Never a
//! secret, except the one line of a create or reissue.

use std::io::Write;

use serde_json::{json, Value};
use tower_api_key::limits::{Credits, RateLimit, RefillInterval};
use tower_api_key::management::{CreditsResource, RateLimitResource};
use tower_api_key::store::{CreatedKey, KeyInfo};
use tower_api_key::{KeyRecord, Networks};

use crate::error::CliError;
use crate::time;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// A key as JSON (the management API's field names, times with microseconds).
pub fn key_json(info: &KeyInfo) -> Value {
    let mut value = record_json(&info.record);
    value["last_used_at"] = json!(info.last_used_at.map(time::format));
    value["hint"] = json!(info.hint);
    value["compromise"] = json!(info.record.compromise.as_ref().map(|c| json!({
        "compromised_at": time::format(c.at),
        "url": c.url,
        "source": c.source,
        "action": c.action.as_str(),
        "quarantined": info.record.quarantined,
    })));
    value
}

/// A key's leak report in a table cell: `no`, or when, what was done and
/// where it was found.
fn compromise_text(record: &KeyRecord) -> String {
    let Some(c) = &record.compromise else {
        return "no".into();
    };
    let quarantined = if record.quarantined {
        " (quarantined)"
    } else {
        ""
    };
    let source = if c.source.is_empty() {
        String::new()
    } else {
        format!(" [{}]", c.source)
    };
    cell(&format!(
        "{} {}{quarantined} {}{source}",
        time::format(c.at),
        c.action,
        c.url
    ))
}

/// Retirement for disuse in a table cell: `on`, `off` (opted out), or
/// `retired, unused since <time>`.
fn retirement_text(record: &KeyRecord) -> String {
    match (record.retired_unused_since, record.retire_when_unused) {
        (Some(since), _) => format!("retired, unused since {}", time::format(since)),
        (None, true) => "on".into(),
        (None, false) => "off".into(),
    }
}

fn record_json(record: &KeyRecord) -> Value {
    json!({
        "id": record.key_id.as_str(),
        "service_account_id": &*record.service_account_id,
        "description": record.description,
        "scopes": record.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "created_at": time::format(record.created_at),
        "expires_at": record.expires_at.map(time::format),
        "rate_limits": limits_json(&record.rate_limits),
        "credits": record.credits.as_ref().map(|c| json!(CreditsResource::from(c))),
        "allowed_networks": record.allowed_networks.as_ref().map(Networks::to_strings).unwrap_or_default(),
        // A Metadata is a JSON object: it always parses.
        "metadata": record.metadata.as_ref().and_then(|m| serde_json::from_str::<Value>(m.as_str()).ok()),
        "operator_locked": record.operator_locked,
        "retire_when_unused": record.retire_when_unused,
        "retired_unused_since": record.retired_unused_since.map(time::format),
    })
}

/// Rate limits as the management API writes them: always the full form.
pub fn limits_json(limits: &[RateLimit]) -> Value {
    json!(limits
        .iter()
        .map(RateLimitResource::from)
        .collect::<Vec<_>>())
}

/// Rate limits in a table cell: `5/1s 100/1m,burst=20`, or `none`.
pub fn limits_text(limits: &[RateLimit]) -> String {
    if limits.is_empty() {
        return "none".into();
    }
    let texts: Vec<String> = limits.iter().map(RateLimit::to_string).collect();
    texts.join(" ")
}

/// Credits in a table cell: `3`, `3 (daily 100)`, `3 (monthly 100 on day
/// 15)`, or `none`.
pub fn credits_text(credits: Option<&Credits>) -> String {
    let Some(credits) = credits else {
        return "none".into();
    };
    match credits.refill() {
        None => credits.remaining().to_string(),
        Some(refill) => match refill.interval() {
            RefillInterval::Monthly => format!(
                "{} (monthly {} on day {})",
                credits.remaining(),
                refill.amount(),
                refill.day()
            ),
            _ => format!("{} (daily {})", credits.remaining(), refill.amount()),
        },
    }
}

/// A service account's rate limits: the management API's document, or a
/// table for people.
pub fn rate_limits(limits: &[RateLimit], format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => write_stdout(&format!(
            "{}\n",
            json!({ "rate_limits": limits_json(limits) })
        )),
        Format::Table if limits.is_empty() => write_stdout("no rate limits\n"),
        Format::Table => {
            let mut out = String::from("LIMIT       PERIOD  BURST\n");
            for limit in limits {
                let period = RateLimitResource::from(limit).period;
                out.push_str(&format!(
                    "{:<10}  {period:<6}  {}\n",
                    limit.limit(),
                    limit.burst()
                ));
            }
            write_stdout(&out)
        }
    }
}

/// Keys as a table: one row each, under a header.
pub fn table(keys: &[KeyInfo]) -> String {
    let header = [
        "ID",
        "ACCOUNT",
        "SCOPES",
        "EXPIRES",
        "LAST USED",
        "HINT",
        "RATE LIMITS",
        "CREDITS",
        "COMPROMISED",
        "NETWORKS",
        "METADATA",
        "LOCKED",
        "RETIREMENT",
        "DESCRIPTION",
    ];
    let rows: Vec<[String; 14]> = keys
        .iter()
        .map(|k| {
            let r = &k.record;
            let scopes = if r.scopes.is_empty() {
                "(unscoped)".to_owned()
            } else {
                r.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [
                r.key_id.to_string(),
                cell(&r.service_account_id),
                scopes,
                r.expires_at.map_or("never".into(), time::format),
                k.last_used_at.map_or("never".into(), time::format),
                cell(&k.hint),
                limits_text(&r.rate_limits),
                credits_text(r.credits.as_ref()),
                compromise_text(r),
                r.allowed_networks
                    .as_ref()
                    .map_or("any".into(), |n| n.to_strings().join(",")),
                r.metadata
                    .as_ref()
                    .map_or("none".into(), |m| cell(m.as_str())),
                if r.operator_locked { "yes" } else { "no" }.to_owned(),
                retirement_text(r),
                cell(&r.description),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// Prints keys as asked.
pub fn keys(keys: &[KeyInfo], format: Format) -> Result<(), CliError> {
    match format {
        Format::Table => write_stdout(&table(keys)),
        Format::Json => {
            let list: Vec<Value> = keys.iter().map(key_json).collect();
            write_stdout(&format!("{}\n", json!({ "keys": list })))
        }
    }
}

/// Prints one key as asked.
pub fn key(info: &KeyInfo, format: Format) -> Result<(), CliError> {
    match format {
        Format::Table => write_stdout(&table(std::slice::from_ref(info))),
        Format::Json => write_stdout(&format!("{}\n", key_json(info))),
    }
}

/// A created or reissued key: the secret alone on stdout (so
/// `KEY=$(tower-api-key keys create ...)` captures it) and the details on
/// stderr; or one JSON document with both.
pub fn created(
    created: &CreatedKey,
    hint: &str,
    format: Format,
    verb: &str,
) -> Result<(), CliError> {
    let info = KeyInfo::new(created.record.clone(), None, hint);
    match format {
        Format::Table => {
            let r = &created.record;
            eprintln!(
                "{verb} key {} for {}; the secret is printed once, on stdout",
                r.key_id, r.service_account_id
            );
            eprint!("{}", table(std::slice::from_ref(&info)));
            write_stdout(&format!("{}\n", created.key.expose_secret()))
                .map_err(|e| lost(created, e))
        }
        Format::Json => {
            let doc = json!({ "key": key_json(&info), "secret": created.key.expose_secret() });
            write_stdout(&format!("{doc}\n")).map_err(|e| lost(created, e))
        }
    }
}

/// The secret could not be shown: say which key now exists without a
/// known secret, so the operator can revoke or reissue it.
fn lost(created: &CreatedKey, e: CliError) -> CliError {
    CliError::new(format!(
        "{e}; key {} exists but its secret was not shown: revoke or reissue it",
        created.record.key_id
    ))
}

/// Writes to stdout; a closed pipe is an error (exit 1), not a panic.
pub fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::new(format!("cannot write to stdout: {e}")))
}

/// A stored text as one table cell: a row is one line, and nothing a record
/// holds (written by another tool, or imported) can move the cursor or
/// recolour the terminal: every control character shows as `?`.
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{cell, credits_text, limits_text};
    use tower_api_key::limits::{Credits, Refill};

    #[test]
    fn limits_and_credits_read_as_their_text_forms() {
        assert_eq!(limits_text(&[]), "none");
        let limits = ["5/1s".parse().unwrap(), "100/1m,burst=20".parse().unwrap()];
        assert_eq!(limits_text(&limits), "5/1s 100/1m,burst=20");
        assert_eq!(credits_text(None), "none");
        let credits = Credits::new(3).unwrap();
        assert_eq!(credits_text(Some(&credits)), "3");
        let daily = credits.with_refill(Refill::daily(100).unwrap());
        assert_eq!(credits_text(Some(&daily)), "3 (daily 100)");
        let monthly = credits.with_refill(Refill::monthly(100, 15).unwrap());
        assert_eq!(credits_text(Some(&monthly)), "3 (monthly 100 on day 15)");
    }

    #[test]
    fn a_cell_is_one_line_without_control_characters() {
        assert_eq!(cell("plain text, é"), "plain text, é");
        assert_eq!(cell("two\nlines\tand\r"), "two?lines?and?");
        assert_eq!(cell("\u{1b}[2Jwiped"), "?[2Jwiped");
        assert_eq!(cell("nul\0"), "nul?");
    }
}
