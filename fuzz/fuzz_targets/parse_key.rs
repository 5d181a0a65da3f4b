//! (a) Key parsing: any bytes into `KeyFormat::parse_bytes`.
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run parse_key -- -max_total_time=600
//! ```
#![no_main]

#[path = "../../tests/common/fuzz.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::parse_key(data));
