//! The management API's rules for what an operator types, so a key made
//! from the shell is one the API would have made. Messages never echo the
//! value (it may be a pasted key).

use std::time::Duration;

use tower_api_key::limits::{check_rate_limits, RateLimit, MAX_CREDITS};
use tower_api_key::management::{
    MAX_DESCRIPTION_LEN, MAX_GRACE_PERIOD, MAX_SERVICE_ACCOUNT_ID_LEN,
};
use tower_api_key::{KeyFormat, Scope, ScopeSet};

use crate::error::CliError;

/// A service account id, given as `name` (`--account` or `SA`).
pub fn account(name: &str, text: &str) -> Result<(), CliError> {
    if text.is_empty() {
        return Err(CliError::new(format!("{name} must not be empty")));
    }
    if text.len() > MAX_SERVICE_ACCOUNT_ID_LEN {
        return Err(CliError::new(format!(
            "{name}: at most {MAX_SERVICE_ACCOUNT_ID_LEN} characters"
        )));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CliError::new(format!(
            "{name}: only visible ASCII characters, no spaces"
        )));
    }
    Ok(())
}

/// An account id about to be stored with its limits holds no key.
pub fn no_key_in_account(text: &str, format: &KeyFormat) -> Result<(), CliError> {
    no_key("SA", text, format)
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

/// Whether a whole key of `format` appears anywhere in `text`.
fn holds_key(text: &str, format: &KeyFormat) -> bool {
    let len = format.key_len();
    text.as_bytes()
        .windows(len)
        .any(|w| w.starts_with(format.prefix().as_bytes()) && format.parse_bytes(w).is_ok())
}

fn no_key(flag: &str, text: &str, format: &KeyFormat) -> Result<(), CliError> {
    if holds_key(text, format) {
        return Err(CliError::new(format!(
            "{flag} must not contain an API key (if it is a real one, treat it as leaked: \
             revoke or reissue it)"
        )));
    }
    Ok(())
}

pub fn description(text: &str, format: &KeyFormat) -> Result<(), CliError> {
    no_key("--description", text, format)?;
    if text.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(CliError::new(format!(
            "--description: at most {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(CliError::new(
            "--description: control characters are not allowed",
        ));
    }
    Ok(())
}

pub fn scopes(names: &[String], format: &KeyFormat) -> Result<ScopeSet, CliError> {
    let mut scopes = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        no_key("--scope", name, format)?;
        let scope = Scope::new(name)
            .map_err(|e| CliError::new(format!("--scope (number {}): {e}", i + 1)))?;
        scopes.push(scope);
    }
    Ok(ScopeSet::new(scopes)?)
}

pub fn grace(grace: Duration) -> Result<(), CliError> {
    if grace > MAX_GRACE_PERIOD {
        return Err(CliError::new("--grace: at most 30 days"));
    }
    Ok(())
}
