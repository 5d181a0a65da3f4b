//! The one error type of the CLI: a one-line message, exit code 1.
//!
//! Messages come from the library's errors, which never hold a secret, or
//! from the CLI itself, which never formats one.

use std::fmt;

pub struct CliError(String);

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever a backend put in its message.
        let mut words = self.0.split_whitespace();
        if let Some(first) = words.next() {
            f.write_str(first)?;
        }
        for word in words {
            write!(f, " {word}")?;
        }
        Ok(())
    }
}

impl From<tower_api_key::store::StoreError> for CliError {
    fn from(e: tower_api_key::store::StoreError) -> Self {
        let mut message = e.to_string();
        // The driver's own words are in the source chain (tokio-postgres
        // shows only "db error" itself). First lines only: a database's
        // DETAIL line may quote row values. Stores send the database
        // hashes and ids, never a secret.
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            let first = text.lines().next().unwrap_or_default();
            if !first.is_empty() && !message.contains(first) {
                message.push_str(": ");
                message.push_str(first);
            }
            source = cause.source();
        }
        // SQLite says "no such table", PostgreSQL "relation ... does not exist".
        let unmigrated = message.contains("tower_api_key_keys")
            && (message.contains("no such table") || message.contains("does not exist"));
        if unmigrated {
            message.push_str(" (run `tower-api-key migrate` first)");
        }
        Self(message)
    }
}

impl From<tower_api_key::ScopeError> for CliError {
    fn from(e: tower_api_key::ScopeError) -> Self {
        Self(format!("invalid scope: {e}"))
    }
}

impl From<tower_api_key::VerifierError> for CliError {
    fn from(e: tower_api_key::VerifierError) -> Self {
        Self(e.to_string())
    }
}
