//! The base62 alphabet (`0-9A-Za-z`): validation, random characters and the
//! checksum's digits.

use zeroize::Zeroizing;

use super::error::KeyGenError;
use super::CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const INVALID: u8 = 0xff;

/// Base62 digit values by byte, `INVALID` for bytes outside the alphabet.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

pub(super) fn is_base62(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| DECODE[b as usize] != INVALID)
}

/// Fills `out` with uniformly random base62 characters from the OS random source.
pub(super) fn fill_base62(out: &mut [u8]) -> Result<(), KeyGenError> {
    let mut filled = 0;
    let mut pool = Zeroizing::new([0u8; 64]);
    while filled < out.len() {
        getrandom::fill(&mut pool[..]).map_err(|_| KeyGenError::new())?;
        // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
        for &b in pool.iter().filter(|&&b| b < 248) {
            if filled == out.len() {
                break;
            }
            out[filled] = ALPHABET[(b % 62) as usize];
            filled += 1;
        }
    }
    Ok(())
}

pub(super) fn encode_checksum(crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [0u8; CHECKSUM_LEN];
    let mut n = crc as u64;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

pub(super) fn decode_checksum(digits: &[u8]) -> u64 {
    // 62^6 > 2^32, so a decoded value above u32::MAX is simply a mismatch.
    digits
        .iter()
        .fold(0u64, |acc, &d| acc * 62 + DECODE[d as usize] as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_round_trips_at_the_extremes() {
        for crc in [0, 1, 61, 62, u32::MAX] {
            assert_eq!(decode_checksum(&encode_checksum(crc)), crc as u64);
        }
    }
}
