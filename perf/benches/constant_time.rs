//! dudect-style timing tests (Welch's t-test on cropped run-time distributions,
//! via the `dudect-bencher` crate) of every comparison of secret material.
//!
//! ```sh
//! cargo bench -p tower-api-key-perf --bench constant_time   # 1,000,000 samples per test
//! DUDECT_SAMPLES=5000000 cargo bench -p tower-api-key-perf --bench constant_time -- --filter ct_eq
//! ```
//!
//! Each test times one operation on inputs of two classes, randomly
//! interleaved, and prints `max t`: |t| above 5 means the two classes are
//! told apart by timing (not constant-time); below 5, no difference was found
//! with that many samples.
//!
//! - `stored_hash_ct_eq`: `StoredHash::ct_eq` on equal digests (left) vs
//!   digests differing in the first byte (right).
//! - `key_hasher_verify_sha256` / `key_hasher_verify_hmac`: `KeyHasher::verify`
//!   of a key against its stored hash (left) vs that hash with its first byte
//!   changed (right).
//! - `memory_store_unknown_id_vs_wrong_secret`: `MemoryStore::verify` of a key
//!   whose id does not exist (left) vs a known id with a wrong secret (right).
//! - `memory_store_rotated_unknown_id_vs_graced_wrong_secret`: the same with
//!   a rotated pepper (current and previous) and known keys that have a
//!   graced previous secret: verify hashes under every pepper held and
//!   compares both hashes whether or not the id exists.
//! - `control_naive_slice_eq`: a plain `==` on 32-byte slices, equal vs
//!   differing in the first byte. Not constant-time; it shows what a leak
//!   looks like at this sample size (its t may stay small when the early exit
//!   saves less than the timer's resolution).
//!
//! `cargo bench` passes `--bench` to this binary; it is ignored. Accepted
//! flags: `--filter NAME`, `--continuous NAME` (until interrupted), `--out FILE`
//! (raw run times as CSV).

use std::hint::black_box;

use dudect_bencher::ctbench::{run_benches_console, BenchMetadata, BenchName, BenchOpts};
use dudect_bencher::rand::Rng;
use dudect_bencher::{BenchRng, Class, CtRunner};
use futures_util::FutureExt;
use tower_api_key::hash::{HashScheme, KeyHasher, Pepper, StoredHash};
use tower_api_key::store::NewKey;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::Verifier;
use tower_api_key::{KeyFormat, PresentedKey};

fn samples() -> usize {
    std::env::var("DUDECT_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn class(rng: &mut BenchRng) -> Class {
    if rng.next_u64() & 1 == 0 {
        Class::Left
    } else {
        Class::Right
    }
}

fn digest(rng: &mut BenchRng) -> [u8; 32] {
    let mut d = [0u8; 32];
    rng.fill_bytes(&mut d);
    d
}

fn stored_hash_ct_eq(runner: &mut CtRunner, rng: &mut BenchRng) {
    let scheme = HashScheme::Sha256;
    let inputs: Vec<(Class, StoredHash, StoredHash)> = (0..samples())
        .map(|_| {
            let class = class(rng);
            let a = digest(rng);
            let mut b = a;
            if let Class::Right = class {
                b[0] ^= 0x01;
            }
            (
                class,
                StoredHash::from_parts(scheme, a),
                StoredHash::from_parts(scheme, b),
            )
        })
        .collect();
    for (class, a, b) in inputs {
        runner.run_one(class, || black_box(&a).ct_eq(black_box(&b)));
    }
}

/// A few hundred keys to draw from (parsing is outside the timed part).
fn keys(n: usize) -> Vec<PresentedKey> {
    let format = KeyFormat::default();
    (0..n)
        .map(|_| {
            let key = format.generate().unwrap();
            format.parse(key.expose_secret()).unwrap()
        })
        .collect()
}

fn verify_with(hasher: KeyHasher, runner: &mut CtRunner, rng: &mut BenchRng) {
    let keys = keys(256);
    let stored: Vec<StoredHash> = keys.iter().map(|k| hasher.hash(k)).collect();
    let inputs: Vec<(Class, usize, StoredHash)> = (0..samples())
        .map(|_| {
            let class = class(rng);
            let i = (rng.next_u64() % keys.len() as u64) as usize;
            let mut digest = *stored[i].digest();
            if let Class::Right = class {
                digest[0] ^= 0x01;
            }
            (class, i, StoredHash::from_parts(stored[i].scheme(), digest))
        })
        .collect();
    for (class, i, against) in inputs {
        let key = &keys[i];
        runner.run_one(class, || hasher.verify(black_box(key), black_box(&against)));
    }
}

fn key_hasher_verify_sha256(runner: &mut CtRunner, rng: &mut BenchRng) {
    verify_with(KeyHasher::sha256(), runner, rng);
}

fn key_hasher_verify_hmac(runner: &mut CtRunner, rng: &mut BenchRng) {
    let pepper = Pepper::new(1, b"a long random server secret, 32+ bytes".to_vec());
    verify_with(KeyHasher::with_pepper(pepper), runner, rng);
}

fn memory_store_unknown_id_vs_wrong_secret(runner: &mut CtRunner, rng: &mut BenchRng) {
    unknown_id_vs_wrong_secret(MemoryStore::new(), false, runner, rng);
}

fn memory_store_rotated_unknown_id_vs_graced_wrong_secret(
    runner: &mut CtRunner,
    rng: &mut BenchRng,
) {
    let v1 = Pepper::new(1, b"the first pepper, 32 bytes long!".to_vec());
    let v2 = Pepper::new(2, b"the second pepper, also 32 bytes".to_vec());
    let store = MemoryStore::builder()
        .hasher(KeyHasher::with_pepper(v2).with_previous_pepper(v1))
        .build();
    unknown_id_vs_wrong_secret(store, true, runner, rng);
}

/// Left: ids the store does not hold; right: held ids (reissued with a grace
/// period when `graced`, so they have a previous secret too), wrong secrets.
fn unknown_id_vs_wrong_secret(
    store: MemoryStore,
    graced: bool,
    runner: &mut CtRunner,
    rng: &mut BenchRng,
) {
    let format = store.format();
    let mut known = Vec::new();
    for i in 0..256 {
        let created = store
            .create(NewKey::new(format!("sa-{i}")))
            .now_or_never()
            .expect("the memory store never waits")
            .unwrap();
        if graced {
            store
                .reissue(
                    created.record.key_id,
                    std::time::Duration::from_secs(3600),
                    None,
                )
                .now_or_never()
                .expect("the memory store never waits")
                .unwrap();
        }
        // The same id with a fresh secret: a wrong secret, well-formed.
        let other = format.generate_for(created.record.key_id).unwrap();
        known.push(format.parse(other.expose_secret()).unwrap());
    }
    let unknown = keys(256);
    let inputs: Vec<(Class, &PresentedKey)> = (0..samples())
        .map(|_| {
            let class = class(rng);
            let i = (rng.next_u64() % 256) as usize;
            let key = match class {
                Class::Left => &unknown[i],
                Class::Right => &known[i],
            };
            (class, key)
        })
        .collect();
    for (class, key) in inputs {
        runner.run_one(class, || {
            let answer = store.verify(black_box(key)).now_or_never();
            assert!(matches!(answer, Some(Ok(None))));
        });
    }
}

fn control_naive_slice_eq(runner: &mut CtRunner, rng: &mut BenchRng) {
    let inputs: Vec<(Class, [u8; 32], [u8; 32])> = (0..samples())
        .map(|_| {
            let class = class(rng);
            let a = digest(rng);
            let mut b = a;
            if let Class::Right = class {
                b[0] ^= 0x01;
            }
            (class, a, b)
        })
        .collect();
    for (class, a, b) in inputs {
        runner.run_one(class, || black_box(&a[..]) == black_box(&b[..]));
    }
}

fn main() {
    let mut opts = BenchOpts::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--filter" => opts.filter = args.next(),
            "--out" => opts.file_out = args.next().map(Into::into),
            "--continuous" => {
                opts.continuous = true;
                opts.filter = args.next();
            }
            // `cargo bench` adds `--bench`; anything else is ignored too.
            _ => {}
        }
    }
    let bench = |name: &'static str, benchfn: fn(&mut CtRunner, &mut BenchRng)| BenchMetadata {
        name: BenchName(name),
        seed: Some(0x0008_dec7),
        benchfn,
    };
    let benches = vec![
        bench("stored_hash_ct_eq", stored_hash_ct_eq),
        bench("key_hasher_verify_sha256", key_hasher_verify_sha256),
        bench("key_hasher_verify_hmac", key_hasher_verify_hmac),
        bench(
            "memory_store_unknown_id_vs_wrong_secret",
            memory_store_unknown_id_vs_wrong_secret,
        ),
        bench(
            "memory_store_rotated_unknown_id_vs_graced_wrong_secret",
            memory_store_rotated_unknown_id_vs_graced_wrong_secret,
        ),
        bench("control_naive_slice_eq", control_naive_slice_eq),
    ];
    run_benches_console(opts, benches).unwrap();
}
