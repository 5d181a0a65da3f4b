//! What an operator types, checked by the library's field rules
//! ([`tower_api_key::store::rules`]), so a key made from the shell is one
//! the API would have made. Messages name the flag, never the value (it
//! may be a pasted key).

use std::time::Duration;

use tower_api_key::limits::{check_rate_limits, RateLimit, MAX_CREDITS};
use tower_api_key::store::rules::{self, Field, FieldError};
use tower_api_key::{KeyFormat, Metadata, Networks, ScopeSet};

use crate::error::CliError;

/// The rule's complaint about what was given as `flag`.
fn flag_error(flag: &str, e: &FieldError) -> CliError {
    let flag = match e.field() {
        Field::Scope(i) => format!("{flag} (number {})", i + 1),
        _ => flag.to_owned(),
    };
    CliError::new(format!("{flag}: {}", e.problem()))
}

/// A service account id, given as `name` (`--account` or `SA`).
pub fn account(name: &str, text: &str) -> Result<(), CliError> {
    rules::service_account_id(text).map_err(|e| flag_error(name, &e))
}

/// An account id about to be stored with its limits holds no key.
pub fn no_key_in_account(text: &str, format: &KeyFormat) -> Result<(), CliError> {
    rules::no_key(Field::ServiceAccountId, text, format).map_err(|e| flag_error("SA", &e))
}

/// At most 8 rate limits, no two alike.
pub fn rate_limits(limits: &[RateLimit]) -> Result<(), CliError> {
    check_rate_limits(limits).map_err(|e| CliError::new(format!("--rate-limit: {e}")))
}

/// Credits to add: 1 to 10^12.
pub fn amount(n: u64) -> Result<(), CliError> {
    if n == 0 || n > MAX_CREDITS {
        return Err(CliError::new(format!(
            "N: must be between 1 and {MAX_CREDITS}"
        )));
    }
    Ok(())
}

pub fn description(text: &str, format: &KeyFormat) -> Result<(), CliError> {
    rules::description(text, format).map_err(|e| flag_error("--description", &e))
}

/// `--allow-network` values: none given is none (any network).
pub fn networks(entries: &[String]) -> Result<Option<Networks>, CliError> {
    if entries.is_empty() {
        return Ok(None);
    }
    Networks::parse(entries)
        .map(Some)
        .map_err(|e| CliError::new(format!("--allow-network: {e}")))
}

/// `--metadata`: a JSON object of at most 1 KiB that holds no key.
pub fn metadata(text: &str, format: &KeyFormat) -> Result<Metadata, CliError> {
    let metadata = Metadata::new(text).map_err(|e| CliError::new(format!("--metadata: {e}")))?;
    rules::metadata(&metadata, format).map_err(|e| flag_error("--metadata", &e))?;
    Ok(metadata)
}

pub fn scopes(names: &[String], format: &KeyFormat) -> Result<ScopeSet, CliError> {
    rules::scopes(names, format).map_err(|e| flag_error("--scope", &e))
}

pub fn grace(grace: Duration) -> Result<(), CliError> {
    rules::grace(grace).map_err(|e| flag_error("--grace", &e))
}
