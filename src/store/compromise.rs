//! Leak reports as a store records them: what a report says about one
//! secret, and what the store did.

use std::time::SystemTime;

use super::KeyInfo;
use crate::record::{Compromise, LeakAction};

/// A leak report of one secret, as [`KeyStore::record_compromise`]
/// takes it: where it was found, by whom, and what to do. Never holds the
/// secret (the store is handed the parsed key beside it).
///
/// [`KeyStore::record_compromise`]: crate::KeyStore::record_compromise
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompromiseReport {
    /// Where the secret was found (a URL), possibly empty.
    pub url: String,
    /// What found it (`content`, `commit`, ...), possibly empty.
    pub source: String,
    /// What the store does with the key.
    pub action: LeakAction,
}

impl CompromiseReport {
    /// Longest `url` a store keeps; a longer one is cut at a character
    /// boundary.
    pub const MAX_URL_LEN: usize = 2048;
    /// Longest `source` a store keeps; a longer one is cut.
    pub const MAX_SOURCE_LEN: usize = 64;

    /// A report of a secret found at `url` by `source`, to act on with
    /// `action`. Both texts are cut to their longest length and stripped of
    /// control characters, so a report cannot put lines into a log.
    pub fn new(url: impl Into<String>, source: impl Into<String>, action: LeakAction) -> Self {
        Self {
            url: clean(url.into(), Self::MAX_URL_LEN),
            source: clean(source.into(), Self::MAX_SOURCE_LEN),
            action,
        }
    }

    /// The compromise a store records for this report at `at`.
    pub fn at(&self, at: SystemTime) -> Compromise {
        Compromise::new(at, self.url.clone(), self.source.clone(), self.action)
    }
}

/// At most `max` bytes of `text`, without control characters.
fn clean(text: String, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// What [`KeyStore::record_compromise`](crate::KeyStore::record_compromise)
/// did with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compromised {
    /// The first report of this secret: the store recorded it and acted.
    /// `key` is the key as it was after the write (before its deletion,
    /// for [`LeakAction::Revoke`]).
    Acted {
        /// The key.
        key: Box<KeyInfo>,
    },
    /// This secret was reported before: nothing changed.
    AlreadyReported,
    /// The key was revoked before this report: nothing changed.
    AlreadyRevoked,
    /// No key of this store has this secret: nothing changed.
    Unknown,
}

impl Compromised {
    /// Whether the token was a key of this issuer: live, quarantined or
    /// already revoked (a secret-scanning report's `true_positive`).
    pub fn is_true_positive(&self) -> bool {
        !matches!(self, Self::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_texts_are_cut_and_lose_control_characters() {
        let report = CompromiseReport::new(
            format!("https://x/\n{}", "é".repeat(2000)),
            "content\r\nfake log line",
            LeakAction::Notify,
        );
        assert!(report.url.len() <= CompromiseReport::MAX_URL_LEN);
        assert!(report.url.starts_with("https://x/é"));
        assert_eq!(report.source, "contentfake log line");
    }
}
