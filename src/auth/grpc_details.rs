//! The `grpc-status-details-bin` of a limit's refusal: a `google.rpc.Status`
//! holding one `google.rpc.RetryInfo`, the standard place where gRPC
//! clients (tonic-types, grpc-go's `status.Details`, ...) read a retry
//! delay. Encoded by hand: three small messages do not need a protobuf
//! runtime.

use std::time::Duration;

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A varint field, left out when zero (proto3 defaults).
fn varint_field(out: &mut Vec<u8>, field: u64, n: u64) {
    if n != 0 {
        varint(out, field << 3);
        varint(out, n);
    }
}

/// `google.rpc.Status { code, message, details: [Any(RetryInfo { retry_delay })] }`.
pub(crate) fn status_with_retry_info(code: u8, message: &str, delay: Duration) -> Vec<u8> {
    let mut duration = Vec::new();
    varint_field(&mut duration, 1, delay.as_secs());
    varint_field(&mut duration, 2, u64::from(delay.subsec_nanos()));
    let mut retry_info = Vec::new();
    bytes_field(&mut retry_info, 1, &duration);
    let mut any = Vec::new();
    bytes_field(&mut any, 1, RETRY_INFO_TYPE.as_bytes());
    bytes_field(&mut any, 2, &retry_info);
    let mut status = Vec::new();
    varint_field(&mut status, 1, u64::from(code));
    bytes_field(&mut status, 2, message.as_bytes());
    bytes_field(&mut status, 3, &any);
    status
}

/// Standard base64 without padding, as gRPC writes binary headers.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        for (input, output) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"\xff\xfe\xfd\x00", "//79AA"),
        ] {
            assert_eq!(base64(input), output);
        }
    }

    #[test]
    fn varints_take_seven_bits_a_byte() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
