//! Why a key, a key id or a prefix was refused, or a key could not be made.

use std::fmt;

use super::{ID_LEN, MAX_PREFIX_LEN};

/// A string that is not a key id (16 base62 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKeyId {
    _priv: (),
}

impl fmt::Display for InvalidKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a key id is {ID_LEN} characters of 0-9, A-Z and a-z")
    }
}

impl std::error::Error for InvalidKeyId {}

impl InvalidKeyId {
    pub(super) const fn new() -> Self {
        Self { _priv: () }
    }
}

/// A prefix that is not 1-16 characters of `a-z0-9` starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPrefix {
    _priv: (),
}

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a key prefix is 1 to {MAX_PREFIX_LEN} characters of a-z and 0-9, starting with a letter"
        )
    }
}

impl std::error::Error for InvalidPrefix {}

impl InvalidPrefix {
    pub(super) const fn new() -> Self {
        Self { _priv: () }
    }
}

/// The OS random source failed; no key was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGenError {
    _priv: (),
}

impl fmt::Display for KeyGenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operating system's random source failed")
    }
}

impl std::error::Error for KeyGenError {}

impl KeyGenError {
    pub(super) const fn new() -> Self {
        Self { _priv: () }
    }
}

/// Why a string is not a key of this format. Never contains the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyParseError {
    /// Nothing was presented.
    Empty,
    /// The length does not match the format.
    Length,
    /// The issuer prefix does not match.
    Prefix,
    /// A character outside the key alphabet, or a misplaced separator.
    Alphabet,
    /// The checksum does not match: a typo or a made-up key.
    Checksum,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty api key",
            Self::Length => "api key has the wrong length",
            Self::Prefix => "api key has the wrong prefix",
            Self::Alphabet => "api key has characters outside its alphabet",
            Self::Checksum => "api key checksum does not match",
        })
    }
}

impl std::error::Error for KeyParseError {}
