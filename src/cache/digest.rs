//! The caches' hash of a key digest.

use std::hash::{BuildHasher, Hasher};

/// The caches' hash of a [`KeyDigest`].
///
/// The digest is already keyed PRF output; hashing it once more with SipHash
/// (the default) was a sixth of a hit's instructions. This folds its two
/// words with 64x64->128-bit multiplies under a per-process random key, so
/// the bucket a digest lands in cannot be predicted from outside, and a
/// flood of crafted keys cannot pile onto one bucket.
#[derive(Clone)]
pub(super) struct DigestHash {
    seed: u64,
    multiplier: u64,
}

impl DigestHash {
    pub(super) fn new() -> Self {
        // Seeded from the OS by the standard library, once per process.
        let random = std::collections::hash_map::RandomState::new();
        Self {
            seed: random.hash_one(0x243f_6a88_85a3_08d3_u64),
            // Odd, and so never zero.
            multiplier: random.hash_one(0x1319_8a2e_0370_7344_u64) | 1,
        }
    }
}

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            state: self.seed,
            multiplier: self.multiplier,
        }
    }
}

pub(super) struct DigestHasher {
    state: u64,
    multiplier: u64,
}

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = (a as u128).wrapping_mul(b as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Any input works (the in-flight map and tests may hash other
        // things); a KeyDigest is exactly two words.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = folded_multiply(self.state ^ u64::from_le_bytes(word), self.multiplier);
        }
    }

    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.multiplier.rotate_left(32) | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyDigest;

    fn digest(i: u32) -> KeyDigest {
        use sha2::{Digest, Sha256};
        let full: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
        KeyDigest(full[..16].try_into().unwrap())
    }

    #[test]
    fn digest_hash_is_stable_per_builder_and_spreads_digests() {
        let hash = DigestHash::new();
        assert_eq!(hash.hash_one(digest(1)), hash.hash_one(digest(1)));
        // Another process (another builder) puts the same digest elsewhere.
        assert_ne!(
            hash.hash_one(digest(1)),
            DigestHash::new().hash_one(digest(1))
        );
        // 10,000 digests over 2^20 buckets: about 48 collisions expected.
        let buckets: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| hash.hash_one(digest(i)) & ((1 << 20) - 1))
            .collect();
        assert!(buckets.len() > 9_800, "{}", buckets.len());
        let high: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| hash.hash_one(digest(i)) >> 44)
            .collect();
        assert!(high.len() > 9_800, "{}", high.len());
    }
}
