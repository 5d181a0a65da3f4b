//! The key format, key generation and parsing.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use siphasher::sip128::SipHasher24;
use zeroize::{Zeroize, Zeroizing};

mod base62;
mod error;

use base62::{decode_checksum, encode_checksum, fill_base62, is_base62};
pub use error::{InvalidKeyId, InvalidPrefix, KeyGenError, KeyParseError};

/// Length of the public key id, in characters.
pub const ID_LEN: usize = 16;
/// Length of the secret part, in characters (32 base62 characters: about 190 bits).
pub const SECRET_LEN: usize = 32;
/// Length of the checksum, in characters.
pub const CHECKSUM_LEN: usize = 6;
/// Longest allowed issuer prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Longest key any [`KeyFormat`] produces; anything longer is rejected before parsing.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const REDACTED: &str = "[REDACTED]";

/// The public identifier of a key: 16 base62 characters.
///
/// It is safe to log and display; it is what revocation and the management API
/// refer to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; ID_LEN]);

impl KeyId {
    /// A new random id from the OS random source.
    pub fn random() -> Result<Self, KeyGenError> {
        let mut id = [0u8; ID_LEN];
        fill_base62(&mut id)?;
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Constructed only from base62 bytes, which are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; ID_LEN] = bytes.try_into().ok()?;
        is_base62(&id).then_some(Self(id))
    }
}

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes()).ok_or(InvalidKeyId::new())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// The in-process cache key of a presented key: a keyed 128-bit PRF
/// (SipHash-2-4-128) of the whole key, under a key drawn from the OS at the
/// first parse and held only in this process's memory.
///
/// It is **not** the stored hash (stores keep SHA-256 or HMAC-SHA-256, made
/// only on a cache miss), and it means nothing outside this process: the
/// same key gives another digest in every process. Never logged.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]
pub struct KeyDigest(pub(crate) [u8; 16]);

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The 16 bytes alone, without the slice length prefix the derived
        // impl would add: the cache's hasher reads them in two words.
        state.write(&self.0);
    }
}

impl KeyDigest {
    fn of(bytes: &[u8]) -> Self {
        Self(prf().hash(bytes).as_bytes())
    }

    /// The raw digest bytes.
    #[cfg_attr(not(feature = "test-util"), allow(unreachable_pub, dead_code))]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// The process's cache-key PRF. Its key comes from the OS random source; if
/// that fails (it does not on any supported system), from the standard
/// library's per-process random hash keys, which are secret too.
fn prf() -> &'static SipHasher24 {
    static PRF: std::sync::OnceLock<SipHasher24> = std::sync::OnceLock::new();
    PRF.get_or_init(|| {
        let mut key = Zeroizing::new([0u8; 16]);
        if getrandom::fill(&mut key[..]).is_err() {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            key[..8].copy_from_slice(&random.hash_one(1u8).to_le_bytes());
            key[8..].copy_from_slice(&random.hash_one(2u8).to_le_bytes());
        }
        SipHasher24::new_with_key(&key)
    })
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// The shape of the keys one issuer hands out (today, its prefix): it
/// generates keys and parses presented ones. Cheap to copy; the default
/// prefix is `tak`.
///
/// A key reads `<prefix>_<id>_<secret><checksum>`:
///
/// | part | length | what it is |
/// |---|---|---|
/// | prefix | 1-16 of `a-z0-9`, starting with a letter | names the issuer (default `tak`), so secret scanners can find leaked keys |
/// | id | 16 base62 characters (about 95 random bits) | the public [`KeyId`]: logs, metrics, the management API and revocation use it |
/// | secret | 32 base62 characters (about 190 random bits) | never stored, logged or shown again after creation |
/// | checksum | 6 base62 characters | CRC-32 of everything before it, so typos and random strings are rejected offline |
///
/// Base62 (`0-9A-Za-z`) and `_` are URL- and shell-safe and select with one
/// double click. With the default prefix a key is 59 characters long.
///
/// ```
/// use tower_api_key::KeyFormat;
///
/// let format = KeyFormat::default();
/// let key = format.generate().expect("the OS random source works");
/// // The secret is shown once; formatting never prints it.
/// assert!(!format!("{key} {key:?}").contains(key.expose_secret()));
///
/// let presented = format.parse(key.expose_secret()).unwrap();
/// assert_eq!(presented.id(), key.id());
/// assert!(format.parse("tak_not-a-key").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: [u8; MAX_PREFIX_LEN],
    prefix_len: u8,
}

impl Default for KeyFormat {
    fn default() -> Self {
        match Self::new(Self::DEFAULT_PREFIX) {
            Ok(format) => format,
            Err(_) => unreachable!("the default prefix is valid"),
        }
    }
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFormat")
            .field("prefix", &self.prefix())
            .finish()
    }
}

impl KeyFormat {
    /// The prefix of [`KeyFormat::default`].
    pub const DEFAULT_PREFIX: &'static str = "tak";

    /// A format with the given issuer prefix: 1 to 16 characters of `a-z0-9`,
    /// starting with a letter.
    pub const fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let bytes = prefix.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_PREFIX_LEN || !bytes[0].is_ascii_lowercase() {
            return Err(InvalidPrefix::new());
        }
        let mut out = [0u8; MAX_PREFIX_LEN];
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if !(b.is_ascii_lowercase() || b.is_ascii_digit()) {
                return Err(InvalidPrefix::new());
            }
            out[i] = b;
            i += 1;
        }
        Ok(Self {
            prefix: out,
            prefix_len: bytes.len() as u8,
        })
    }

    /// The issuer prefix.
    pub fn prefix(&self) -> &str {
        std::str::from_utf8(self.prefix_bytes()).unwrap_or_default()
    }

    fn prefix_bytes(&self) -> &[u8] {
        &self.prefix[..self.prefix_len as usize]
    }

    /// The regular expression that finds keys of this format in text:
    /// what an issuer registers with a secret-scanning program (GitHub's
    /// partner program, a CI scanner).
    ///
    /// `\b<prefix>_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}\b`: the prefix, the id,
    /// the secret and checksum, each in base62, between word boundaries, so
    /// a key glued to other letters, digits or `_` is not taken for one. It
    /// cannot check the checksum; the receiver does (a string that matches
    /// but fails it is a false positive at no cost). The syntax is the
    /// common subset of RE2, PCRE and Rust's `regex`.
    ///
    /// ```
    /// use tower_api_key::KeyFormat;
    ///
    /// assert_eq!(
    ///     KeyFormat::default().pattern(),
    ///     r"\btak_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}\b"
    /// );
    /// ```
    pub fn pattern(&self) -> String {
        format!(
            r"\b{}_[0-9A-Za-z]{{{ID_LEN}}}_[0-9A-Za-z]{{{}}}\b",
            self.prefix(),
            SECRET_LEN + CHECKSUM_LEN
        )
    }

    /// The length of every key of this format.
    pub fn key_len(&self) -> usize {
        self.prefix_len as usize + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
    }

    /// A new key with a new random id.
    pub fn generate(&self) -> Result<GeneratedKey, KeyGenError> {
        self.generate_for(KeyId::random()?)
    }

    /// A new random secret for an existing id (reissue).
    pub fn generate_for(&self, id: KeyId) -> Result<GeneratedKey, KeyGenError> {
        let len = self.key_len();
        let mut key = Zeroizing::new(Vec::with_capacity(len));
        key.extend_from_slice(self.prefix_bytes());
        key.push(b'_');
        key.extend_from_slice(&id.0);
        key.push(b'_');
        let secret_at = key.len();
        key.resize(secret_at + SECRET_LEN, 0);
        fill_base62(&mut key[secret_at..])?;
        let crc = crc32fast::hash(&key);
        key.extend_from_slice(&encode_checksum(crc));
        debug_assert_eq!(key.len(), len);
        let text = String::from_utf8(std::mem::take(&mut *key)).map_err(|_| KeyGenError::new())?;
        Ok(GeneratedKey {
            key: Zeroizing::new(text),
            id,
        })
    }

    /// Whether a whole key of this format (checksum included) appears
    /// anywhere in `text`, even glued to other characters: for refusing keys
    /// pasted into fields that are stored and shown to others.
    pub(crate) fn occurs_in(&self, text: &str) -> bool {
        let prefix = self.prefix_bytes();
        text.as_bytes().windows(self.key_len()).any(|window| {
            window.starts_with(prefix)
                && window[prefix.len()] == b'_'
                && self.parse_bytes(window).is_ok()
        })
    }

    /// Parses a presented key: length, prefix, separators, alphabet and checksum,
    /// in that order, without allocating.
    pub fn parse(&self, key: &str) -> Result<PresentedKey, KeyParseError> {
        self.parse_bytes(key.as_bytes())
    }

    /// [`KeyFormat::parse`] over raw bytes (for example a header value).
    pub fn parse_bytes(&self, key: &[u8]) -> Result<PresentedKey, KeyParseError> {
        let id_at = self.check_shape(key)?;
        self.check_body(key, id_at)?;
        Ok(PresentedKey::new(key, id_at))
    }

    /// The middleware's parse: the checks that locate the id (length,
    /// prefix, separators) and the cache key, but not the alphabet and the
    /// checksum. A cache hit needs no more: every cached answer, positive
    /// or negative, is keyed by the PRF of a key that passed
    /// [`parse_bytes`](Self::parse_bytes) whole. A miss must call
    /// [`Candidate::check`] before any verifier sees the key.
    pub(crate) fn candidate<'k>(&self, key: &'k [u8]) -> Result<Candidate<'k>, KeyParseError> {
        let id_at = self.check_shape(key)?;
        Ok(Candidate {
            key,
            id_at,
            digest: KeyDigest::of(key),
        })
    }

    /// Length, prefix and separators; the id's offset.
    fn check_shape(&self, key: &[u8]) -> Result<usize, KeyParseError> {
        if key.is_empty() {
            return Err(KeyParseError::Empty);
        }
        if key.len() != self.key_len() {
            return Err(KeyParseError::Length);
        }
        let p = self.prefix_len as usize;
        if &key[..p] != self.prefix_bytes() || key[p] != b'_' {
            return Err(KeyParseError::Prefix);
        }
        if key[p + 1 + ID_LEN] != b'_' {
            return Err(KeyParseError::Alphabet);
        }
        Ok(p + 1)
    }

    /// Alphabet and checksum of a key whose shape passed.
    fn check_body(&self, key: &[u8], id_at: usize) -> Result<(), KeyParseError> {
        let id_end = id_at + ID_LEN;
        if !is_base62(&key[id_at..id_end]) || !is_base62(&key[id_end + 1..]) {
            return Err(KeyParseError::Alphabet);
        }
        let body_len = key.len() - CHECKSUM_LEN;
        let expected = crc32fast::hash(&key[..body_len]) as u64;
        if decode_checksum(&key[body_len..]) != expected {
            return Err(KeyParseError::Checksum);
        }
        Ok(())
    }
}

/// A presented key whose shape passed but whose alphabet and checksum are
/// not checked yet ([`KeyFormat::candidate`]): enough to ask the cache,
/// never enough for a verifier. It borrows the header's bytes: a hit copies
/// (and so wipes) nothing; [`check`](Self::check) copies them into a
/// [`PresentedKey`].
pub(crate) struct Candidate<'k> {
    key: &'k [u8],
    id_at: usize,
    digest: KeyDigest,
}

impl Candidate<'_> {
    pub(crate) fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    /// The presented id, unchecked (it may hold bytes outside the
    /// alphabet): equal to a cached entry's id only if it is that checked id.
    pub(crate) fn unchecked_id(&self) -> KeyId {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.key[self.id_at..self.id_at + ID_LEN]);
        KeyId(id)
    }

    /// The rest of [`KeyFormat::parse_bytes`]: alphabet and checksum.
    pub(crate) fn check(self, format: &KeyFormat) -> Result<PresentedKey, KeyParseError> {
        format.check_body(self.key, self.id_at)?;
        Ok(PresentedKey::with_digest(self.key, self.id_at, self.digest))
    }
}

/// A freshly created key: the only place the whole secret exists after creation.
///
/// Hand [`GeneratedKey::expose_secret`] to the key's owner once; the server keeps
/// only its hash. Formatting prints the prefix, the id and a redaction marker;
/// the memory is wiped on drop.
pub struct GeneratedKey {
    key: Zeroizing<String>,
    id: KeyId,
}

impl GeneratedKey {
    /// The public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The whole key, secret included. Show it to its owner once.
    pub fn expose_secret(&self) -> &str {
        &self.key
    }

    fn prefix(&self) -> &str {
        self.key.split('_').next().unwrap_or_default()
    }
}

impl Clone for GeneratedKey {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            id: self.id,
        }
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("id", &self.id)
            .field("secret", &REDACTED)
            .finish()
    }
}

impl fmt::Display for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{REDACTED}", self.prefix(), self.id)
    }
}

/// A key presented by a client that passed the offline checks of
/// [`KeyFormat::parse`]; it may still be unknown, revoked or expired.
///
/// Kept on the stack (no allocation); wiped on drop.
#[derive(Clone)]
pub struct PresentedKey {
    bytes: [u8; MAX_KEY_LEN],
    len: u8,
    id: KeyId,
    digest: KeyDigest,
}

impl PresentedKey {
    /// `key`, checked (`id_at` is the id's offset).
    fn new(key: &[u8], id_at: usize) -> Self {
        Self::with_digest(key, id_at, KeyDigest::of(key))
    }

    fn with_digest(key: &[u8], id_at: usize, digest: KeyDigest) -> Self {
        let mut bytes = [0u8; MAX_KEY_LEN];
        bytes[..key.len()].copy_from_slice(key);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&key[id_at..id_at + ID_LEN]);
        Self {
            bytes,
            len: key.len() as u8,
            id: KeyId(id),
            digest,
        }
    }

    /// The public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The in-process cache key ([`KeyDigest`]), computed once by parsing.
    /// A test hook (feature `test-util`): it means nothing outside this
    /// process, so a verifier looks keys up by [`id`](Self::id) and checks
    /// them with [`KeyHasher::verify`](crate::hash::KeyHasher::verify).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    #[cfg(not(feature = "test-util"))]
    pub(crate) fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    /// SHA-256 of the whole key: the unpeppered stored form. Computed on
    /// each call; the middleware needs it only on a cache miss.
    pub(crate) fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.as_bytes()).into()
    }

    /// The whole key as presented, for verifiers that must forward it (to a
    /// remote service, say). Never log it.
    pub fn expose_secret(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    fn prefix(&self) -> &str {
        self.expose_secret().split('_').next().unwrap_or_default()
    }
}

impl Drop for PresentedKey {
    fn drop(&mut self) {
        // Only the key's own bytes were ever written.
        self.bytes[..self.len as usize].zeroize();
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .field("secret", &REDACTED)
            .finish()
    }
}

impl fmt::Display for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{REDACTED}", self.prefix(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The middleware's two-step parse (shape on every request, alphabet
    /// and checksum on a miss) accepts and refuses exactly what
    /// `parse_bytes` does, with the same error.
    fn two_steps(format: &KeyFormat, bytes: &[u8]) -> Result<PresentedKey, KeyParseError> {
        format.candidate(bytes)?.check(format)
    }

    proptest::proptest! {
        #[test]
        fn the_two_step_parse_agrees_with_parse_bytes_on_keys_with_one_byte_changed(
            at in 0usize..59,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let format = KeyFormat::default();
            let mut bytes = format.generate().unwrap().expose_secret().as_bytes().to_vec();
            bytes[at] = byte;
            let whole = format.parse_bytes(&bytes).map(|k| (k.id(), *k.digest()));
            let stepped = two_steps(&format, &bytes).map(|k| (k.id(), *k.digest()));
            proptest::prop_assert_eq!(whole, stepped);
        }

        #[test]
        fn the_two_step_parse_agrees_with_parse_bytes_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70),
        ) {
            let format = KeyFormat::new("a").unwrap();
            proptest::prop_assert_eq!(
                format.parse_bytes(&bytes).map(|k| k.id()),
                two_steps(&format, &bytes).map(|k| k.id())
            );
        }
    }

    #[test]
    fn a_candidate_with_a_bad_checksum_has_the_cache_key_but_fails_its_check() {
        let format = KeyFormat::default();
        let key = format.generate().unwrap();
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        let candidate = format.candidate(&bytes).expect("the shape is a key's");
        assert_eq!(candidate.unchecked_id(), key.id());
        assert!(matches!(
            candidate.check(&format),
            Err(KeyParseError::Checksum)
        ));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(KeyFormat::new("yc").is_ok());
        assert!(KeyFormat::new("a1234567890bcdef").is_ok());
        for bad in ["", "1ab", "Ab", "a_b", "a-b", "a1234567890bcdefg", "é"] {
            assert!(KeyFormat::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_key_has_the_documented_length() {
        let key = KeyFormat::default().generate().unwrap();
        assert_eq!(key.expose_secret().len(), 59);
        assert!(key.expose_secret().starts_with("tak_"));
    }

    #[test]
    fn a_key_is_found_anywhere_in_a_text_and_near_misses_are_not() {
        let format = KeyFormat::default();
        let key = format.generate().unwrap();
        let key = key.expose_secret();
        for text in [
            key.to_owned(),
            format!("ci key {key}"),
            format!("x{key}y"),
            format!("é{key}"),
        ] {
            assert!(format.occurs_in(&text), "found in {} bytes", text.len());
        }
        let mut typo = key.to_owned().into_bytes();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        for text in [
            typo.as_str(),
            &key[..key.len() - 1],
            "",
            "tak_",
            "sa-translator",
        ] {
            assert!(!format.occurs_in(text), "{} bytes", text.len());
        }
        let other = KeyFormat::new("yc").unwrap();
        assert!(!other.occurs_in(key), "another issuer's format");
    }
}
