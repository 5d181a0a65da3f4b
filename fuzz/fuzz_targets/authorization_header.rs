//! (b) A whole request's credentials through the layer: arbitrary header
//! bytes, repeated headers, lengths, HTTP or gRPC.
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run authorization_header -- -max_total_time=600
//! ```
#![no_main]

#[path = "../../tests/common/fuzz.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::authorization(data));
