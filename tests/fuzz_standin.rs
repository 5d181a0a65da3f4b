//! The short fuzz run CI does on the stable toolchain: the same two entry
//! points as the cargo-fuzz targets in `fuzz/` (`tests/common/fuzz.rs`), fed by
//! proptest for a bounded number of cases (a few seconds), plus every input
//! kept under `fuzz/regressions/` from the real campaigns.
//!
//! The long campaigns: see `fuzz/README.md`.

mod common;

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;

use common::fuzz;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Raw bytes, and (first byte 0xA5) key-shaped bytes with a valid
    /// checksum, into the key parser.
    #[test]
    fn parse_key(shaped in any::<bool>(), data in vec(any::<u8>(), 0..96)) {
        let data = if shaped { [&[0xA5][..], &data].concat() } else { data };
        fuzz::parse_key(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    /// Bytes decoded (with `arbitrary`, as libFuzzer input is) into a
    /// request: Authorization and x-api-key headers built from raw bytes and
    /// key-shaped pieces, repeated or not, HTTP or gRPC.
    #[test]
    fn authorization_header(data in vec(any::<u8>(), 0..512)) {
        fuzz::authorization(&data);
    }
}

/// Every input the campaigns kept (crashes fixed since, and interesting
/// cases), replayed on each run.
#[test]
fn inputs_kept_from_fuzzing_campaigns_still_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (target, run) in [
        ("parse_key", fuzz::parse_key as fn(&[u8])),
        ("authorization_header", fuzz::authorization),
    ] {
        let dir = root.join(target);
        assert!(dir.is_dir(), "{} is missing", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            run(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no kept inputs found under {}",
        root.display()
    );
}
