//! How keys are stored: a hash of the whole key, never the key.
//!
//! [`KeyHasher`] makes a [`StoredHash`]: plain SHA-256, or HMAC-SHA-256 with a
//! server-side pepper when one is configured. The stored hash records its
//! scheme and pepper version, so a pepper can be rotated: new hashes use the
//! current pepper, and hashes made with an older one still verify while that
//! pepper is kept. Every comparison is constant-time.
//!
//! ```
//! use tower_api_key::hash::{KeyHasher, Pepper};
//! use tower_api_key::KeyFormat;
//!
//! let format = KeyFormat::default();
//! let key = format.generate().unwrap();
//! let presented = format.parse(key.expose_secret()).unwrap();
//!
//! let hasher = KeyHasher::with_pepper(Pepper::new(1, b"a long random server secret".to_vec()));
//! let stored = hasher.hash(&presented);
//! assert!(hasher.verify(&presented, &stored));
//!
//! // The text form records scheme and pepper version, never the pepper.
//! let text = stored.to_string();
//! assert!(text.starts_with("hmac-sha256$1$"));
//! assert_eq!(text.parse::<tower_api_key::hash::StoredHash>().unwrap(), stored);
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::key::PresentedKey;

/// Which function made a [`StoredHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashScheme {
    /// SHA-256 of the whole key.
    Sha256,
    /// HMAC-SHA-256 of the whole key, keyed with the pepper of this version.
    HmacSha256 {
        /// The pepper's version.
        pepper_version: u32,
    },
}

/// The at-rest form of a key: scheme plus 32-byte digest.
///
/// Its text form is `sha256$<hex>` or `hmac-sha256$<version>$<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoredHash {
    scheme: HashScheme,
    digest: [u8; 32],
}

impl StoredHash {
    /// A stored hash from its parts (for stores that keep them in columns).
    pub fn from_parts(scheme: HashScheme, digest: [u8; 32]) -> Self {
        Self { scheme, digest }
    }

    /// The scheme that made it.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// The digest bytes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &StoredHash) -> bool {
        work::comparison();
        self.scheme == other.scheme && bool::from(self.digest.ct_eq(&other.digest))
    }
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is enough to recognise a key in a dump; keep it out of logs.
        f.debug_struct("StoredHash")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            HashScheme::Sha256 => f.write_str("sha256$")?,
            HashScheme::HmacSha256 { pepper_version } => {
                write!(f, "hmac-sha256${pepper_version}$")?
            }
        }
        for b in self.digest {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for StoredHash {
    type Err = InvalidStoredHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = InvalidStoredHash { _priv: () };
        let (scheme, hex) = if let Some(hex) = s.strip_prefix("sha256$") {
            (HashScheme::Sha256, hex)
        } else if let Some(rest) = s.strip_prefix("hmac-sha256$") {
            let (version, hex) = rest.split_once('$').ok_or(err.clone())?;
            // `u32::from_str` also takes a leading '+'; Display never writes one.
            if !version.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err);
            }
            let pepper_version = version.parse().map_err(|_| err.clone())?;
            (HashScheme::HmacSha256 { pepper_version }, hex)
        } else {
            return Err(err);
        };
        // `u8::from_str_radix` also takes a leading '+' ("+f"); only hex digits are valid.
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err);
        }
        let mut digest = [0u8; 32];
        for (i, out) in digest.iter_mut().enumerate() {
            *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or(err.clone())?, 16)
                .map_err(|_| err.clone())?;
        }
        Ok(Self { scheme, digest })
    }
}

/// Text that is not a [`StoredHash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStoredHash {
    _priv: (),
}

impl fmt::Display for InvalidStoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a stored key hash (sha256$<hex> or hmac-sha256$<version>$<hex>)")
    }
}

impl std::error::Error for InvalidStoredHash {}

/// A server-side secret mixed into every key hash, with its version.
///
/// Keep it out of the database that holds the hashes: a stolen table is then
/// useless without it. Wiped on drop; never formatted.
#[derive(Clone)]
pub struct Pepper {
    version: u32,
    secret: Arc<Zeroizing<Vec<u8>>>,
}

impl Pepper {
    /// A pepper and its version. Use at least 32 random bytes.
    pub fn new(version: u32, secret: Vec<u8>) -> Self {
        Self {
            version,
            secret: Arc::new(Zeroizing::new(secret)),
        }
    }

    /// The version recorded in hashes made with this pepper.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pepper")
            .field("version", &self.version)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Turns presented keys into their stored form and checks them against it.
#[derive(Clone, Debug, Default)]
pub struct KeyHasher {
    current: Option<Pepper>,
    previous: Vec<Pepper>,
}

impl KeyHasher {
    /// Plain SHA-256, no pepper.
    pub fn sha256() -> Self {
        Self::default()
    }

    /// HMAC-SHA-256 with `pepper` for new hashes.
    pub fn with_pepper(pepper: Pepper) -> Self {
        Self {
            current: Some(pepper),
            previous: Vec::new(),
        }
    }

    /// Keeps accepting hashes made with an older pepper (rotation).
    pub fn with_previous_pepper(mut self, pepper: Pepper) -> Self {
        self.previous.push(pepper);
        self
    }

    /// The scheme new hashes are made with.
    pub fn scheme(&self) -> HashScheme {
        match &self.current {
            None => HashScheme::Sha256,
            Some(p) => HashScheme::HmacSha256 {
                pepper_version: p.version,
            },
        }
    }

    /// The stored form of `key` under the current scheme.
    pub fn hash(&self, key: &PresentedKey) -> StoredHash {
        match &self.current {
            None => StoredHash {
                scheme: HashScheme::Sha256,
                digest: key.sha256(),
            },
            Some(pepper) => hmac_hash(pepper, key.as_bytes()),
        }
    }

    /// The stored form of `key` under `scheme`, if this hasher can make it
    /// (`None` for a pepper version it does not hold).
    pub fn hash_with(&self, key: &PresentedKey, scheme: HashScheme) -> Option<StoredHash> {
        match scheme {
            HashScheme::Sha256 => Some(StoredHash {
                scheme,
                digest: key.sha256(),
            }),
            HashScheme::HmacSha256 { pepper_version } => self
                .current
                .iter()
                .chain(&self.previous)
                .find(|p| p.version == pepper_version)
                .map(|p| hmac_hash(p, key.as_bytes())),
        }
    }

    /// Whether `key` hashes to `stored`, in constant time for the digest.
    ///
    /// Plain SHA-256 hashes verify even when a pepper is configured, so keys
    /// created before the pepper keep working; reissue them to move them
    /// under the pepper.
    pub fn verify(&self, key: &PresentedKey, stored: &StoredHash) -> bool {
        self.hash_with(key, stored.scheme)
            .is_some_and(|h| h.ct_eq(stored))
    }
}

impl KeyHasher {
    /// Every stored form `key` can have under this hasher: plain SHA-256 and
    /// HMAC-SHA-256 under each pepper held. The same work for every key, so
    /// a store that compares against these does not reveal, by its timing,
    /// whether a key id exists or which scheme its stored hash uses.
    ///
    /// A store's [`verify`](crate::Verifier::verify) computes them once and
    /// asks [`Candidates::matches`] about the current and the previous hash,
    /// with `None` where the key or its previous hash does not exist:
    ///
    /// ```
    /// use tower_api_key::hash::{KeyHasher, StoredHash};
    /// use tower_api_key::KeyFormat;
    ///
    /// let format = KeyFormat::default();
    /// let key = format.generate().unwrap();
    /// let presented = format.parse(key.expose_secret()).unwrap();
    /// let hasher = KeyHasher::default();
    /// let stored: Option<StoredHash> = Some(hasher.hash(&presented)); // read by id
    /// let candidates = hasher.candidates(&presented);
    /// assert!(candidates.matches(stored.as_ref()));
    /// assert!(!candidates.matches(None)); // no such key: the same work, no match
    /// ```
    pub fn candidates(&self, key: &PresentedKey) -> Candidates {
        let mut all = Vec::with_capacity(2 + self.previous.len());
        // Only here, on a cache miss, is SHA-256 of the whole key computed.
        all.push(StoredHash {
            scheme: HashScheme::Sha256,
            digest: key.sha256(),
        });
        all.extend(
            self.current
                .iter()
                .chain(&self.previous)
                .map(|p| hmac_hash(p, key.as_bytes())),
        );
        Candidates {
            all,
            // The current pepper's HMAC comes right after SHA-256.
            current: usize::from(self.current.is_some()),
        }
    }
}

/// The stored forms one presented key can have; see
/// [`KeyHasher::candidates`]. Holds digests of the key, never the key: not
/// `Debug`, so it cannot reach a log.
pub struct Candidates {
    all: Vec<StoredHash>,
    current: usize,
}

impl Candidates {
    /// Whether `stored` is one of them. Compares with every candidate, in
    /// constant time, whatever `stored`'s scheme: the work does not depend
    /// on it. `None` (no such hash) is compared with a placeholder the same
    /// way, and never matches.
    pub fn matches(&self, stored: Option<&StoredHash>) -> bool {
        let placeholder = StoredHash {
            scheme: self.all[self.current].scheme,
            digest: [0; 32],
        };
        let against = stored.unwrap_or(&placeholder);
        let mut found = subtle::Choice::from(0);
        for candidate in &self.all {
            work::comparison();
            let same_scheme = subtle::Choice::from(u8::from(candidate.scheme == against.scheme));
            found |= same_scheme & candidate.digest.ct_eq(&against.digest);
        }
        stored.is_some() & bool::from(found)
    }
}

fn hmac_hash(pepper: &Pepper, key: &[u8]) -> StoredHash {
    work::hmac();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&pepper.secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(key);
    StoredHash {
        scheme: HashScheme::HmacSha256 {
            pepper_version: pepper.version,
        },
        digest: mac.finalize().into_bytes().into(),
    }
}

/// Counts of hashing work done on the current thread (feature `test-util`):
/// they let tests check that verification does the same work whether or not
/// a key id exists, which timing alone cannot show deterministically.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod work {
    use std::cell::Cell;

    thread_local! {
        static HMACS: Cell<u64> = const { Cell::new(0) };
        static COMPARISONS: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn hmac() {
        HMACS.with(|n| n.set(n.get().wrapping_add(1)));
    }

    pub(super) fn comparison() {
        COMPARISONS.with(|n| n.set(n.get().wrapping_add(1)));
    }

    /// HMACs computed and digests compared on this thread so far.
    pub fn on_this_thread() -> (u64, u64) {
        (HMACS.with(Cell::get), COMPARISONS.with(Cell::get))
    }
}

/// Without `test-util` nothing is counted.
#[cfg(not(feature = "test-util"))]
mod work {
    pub(super) fn hmac() {}
    pub(super) fn comparison() {}
}
