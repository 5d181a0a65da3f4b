//! The key format: generation, parsing, key ids and stored hashes.

use proptest::prelude::*;
use tower_api_key::hash::{HashScheme, KeyHasher, Pepper, StoredHash};
use tower_api_key::{
    KeyFormat, KeyId, KeyParseError, CHECKSUM_LEN, ID_LEN, MAX_KEY_LEN, SECRET_LEN,
};

const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn is_base62(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn prefix_strategy() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,15}"
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn generated_keys_with_the_default_prefix_parse_back_to_the_same_id_and_digest(_seed in any::<u8>()) {
        let format = KeyFormat::default();
        let key = format.generate().unwrap();
        let text = key.expose_secret();
        prop_assert_eq!(text.len(), format.key_len());
        prop_assert!(text.starts_with("tak_"));

        let first = format.parse(text).unwrap();
        // A copy of the text, parsed again, gives the same digest.
        let copy = String::from(text);
        let second = format.parse(&copy).unwrap();
        prop_assert_eq!(first.id(), key.id());
        prop_assert_eq!(second.id(), key.id());
        prop_assert_eq!(first.digest(), second.digest());
        prop_assert_eq!(first.expose_secret(), text);
        // parse_bytes is the same parser.
        let third = format.parse_bytes(text.as_bytes()).unwrap();
        prop_assert_eq!(third.digest(), first.digest());
    }

    #[test]
    fn generated_keys_with_any_valid_prefix_round_trip(prefix in prefix_strategy()) {
        let format = KeyFormat::new(&prefix).unwrap();
        prop_assert_eq!(format.prefix(), prefix.as_str());
        let key = format.generate().unwrap();
        let text = key.expose_secret();
        prop_assert_eq!(text.len(), prefix.len() + 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
        prop_assert!(text.len() <= MAX_KEY_LEN);
        let expected_start = format!("{prefix}_{}_", key.id());
        prop_assert!(text.starts_with(&expected_start));

        let presented = format.parse(text).unwrap();
        prop_assert_eq!(presented.id(), key.id());
        let again = format.parse(text).unwrap();
        prop_assert_eq!(presented.digest(), again.digest());

        // A reissued secret for the same id is a different key with the same id.
        let reissued = format.generate_for(key.id()).unwrap();
        let re = format.parse(reissued.expose_secret()).unwrap();
        prop_assert_eq!(re.id(), key.id());
        prop_assert_ne!(re.digest(), presented.digest());
    }

    #[test]
    fn parse_bytes_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        let _ = KeyFormat::default().parse_bytes(&bytes);
        let _ = KeyFormat::new("a").unwrap().parse_bytes(&bytes);
    }

    #[test]
    fn parse_bytes_never_panics_on_arbitrary_bytes_of_the_exact_key_length(
        bytes in proptest::collection::vec(any::<u8>(), 59)
    ) {
        // Right length: the parser gets past the length check into the rest.
        let result = KeyFormat::default().parse_bytes(&bytes);
        if !bytes.starts_with(b"tak_") {
            prop_assert_eq!(result.err(), Some(KeyParseError::Prefix));
        } else {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn parse_bytes_rejects_a_valid_key_with_arbitrary_bytes_overwritten(
        edits in proptest::collection::vec((0usize..59, any::<u8>()), 1..4)
    ) {
        let format = KeyFormat::default();
        let key = format.generate().unwrap();
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        for (at, b) in edits {
            bytes[at] = b;
        }
        let result = format.parse_bytes(&bytes);
        if bytes == key.expose_secret().as_bytes() {
            prop_assert!(result.is_ok());
        } else {
            // A few random edits could in theory collide on CRC-32; one in 2^32.
            prop_assert!(result.is_err());
        }
    }
}

// ---------------------------------------------------------------------------
// Every single-character change is rejected
// ---------------------------------------------------------------------------

/// What the parser must say when character `at` of a default-format key is
/// replaced by the ASCII character `c`.
fn expected_error_for_ascii_change(at: usize, c: char) -> KeyParseError {
    let prefix_len = 3;
    let id_end = prefix_len + 1 + ID_LEN;
    if at <= prefix_len {
        // Inside the prefix or its separator.
        KeyParseError::Prefix
    } else if at == id_end {
        // The separator between id and secret.
        KeyParseError::Alphabet
    } else if is_base62(c) {
        KeyParseError::Checksum
    } else {
        KeyParseError::Alphabet
    }
}

#[test]
fn every_single_character_change_of_a_valid_key_is_rejected() {
    let format = KeyFormat::default();
    let mut replacements: Vec<char> = BASE62.chars().collect();
    replacements.extend(['_', '-', '.', ' ', '=', '+', '/', '\0', '\x7f', '~']);
    let multibyte = ['é', 'Ω', '€', '😀'];

    let mut checked = 0usize;
    for _ in 0..10 {
        let key = format.generate().unwrap();
        let original: Vec<char> = key.expose_secret().chars().collect();
        assert_eq!(original.len(), 59);
        format.parse(key.expose_secret()).unwrap();

        for at in 0..original.len() {
            for &c in replacements.iter().chain(multibyte.iter()) {
                if original[at] == c {
                    continue;
                }
                let mut changed = original.clone();
                changed[at] = c;
                let changed: String = changed.into_iter().collect();
                let expected = if c.is_ascii() {
                    expected_error_for_ascii_change(at, c)
                } else {
                    // Multibyte characters change the byte length.
                    KeyParseError::Length
                };
                assert_eq!(
                    format.parse(&changed).err(),
                    Some(expected),
                    "position {at}, replacement {c:?}"
                );
                checked += 1;
            }
        }
    }
    // 10 keys x 59 positions x (62 + 10 + 4 - 1) replacements, at least.
    assert!(checked >= 10 * 59 * 75, "{checked}");
}

#[test]
fn every_single_character_deletion_and_insertion_is_rejected_as_length() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let text = key.expose_secret();
    for at in 0..text.len() {
        let mut deleted = text.to_owned();
        deleted.remove(at);
        assert_eq!(format.parse(&deleted).err(), Some(KeyParseError::Length));
        let mut inserted = text.to_owned();
        inserted.insert(at, 'a');
        assert_eq!(format.parse(&inserted).err(), Some(KeyParseError::Length));
    }
}

// ---------------------------------------------------------------------------
// Garbage, each with its error
// ---------------------------------------------------------------------------

#[test]
fn an_empty_key_is_rejected_as_empty() {
    assert_eq!(
        KeyFormat::default().parse("").err(),
        Some(KeyParseError::Empty)
    );
    assert_eq!(
        KeyFormat::default().parse_bytes(b"").err(),
        Some(KeyParseError::Empty)
    );
}

#[test]
fn a_key_of_another_prefix_with_the_same_length_is_rejected_as_prefix() {
    let other = KeyFormat::new("xyz").unwrap().generate().unwrap();
    assert_eq!(
        KeyFormat::default().parse(other.expose_secret()).err(),
        Some(KeyParseError::Prefix)
    );
    // Same prefix in another case.
    let key = KeyFormat::default().generate().unwrap();
    let upper = key.expose_secret().replacen("tak", "TAK", 1);
    assert_eq!(
        KeyFormat::default().parse(&upper).err(),
        Some(KeyParseError::Prefix)
    );
}

#[test]
fn a_key_of_another_prefix_length_is_rejected_as_length() {
    let other = KeyFormat::new("yc").unwrap().generate().unwrap();
    assert_eq!(
        KeyFormat::default().parse(other.expose_secret()).err(),
        Some(KeyParseError::Length)
    );
    let tak = KeyFormat::default().generate().unwrap();
    assert_eq!(
        KeyFormat::new("yc")
            .unwrap()
            .parse(tak.expose_secret())
            .err(),
        Some(KeyParseError::Length)
    );
}

#[test]
fn keys_one_character_too_short_or_too_long_are_rejected_as_length() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let text = key.expose_secret();
    assert_eq!(
        format.parse(&text[..text.len() - 1]).err(),
        Some(KeyParseError::Length)
    );
    assert_eq!(
        format.parse(&format!("{text}0")).err(),
        Some(KeyParseError::Length)
    );
    assert_eq!(
        format.parse("tak_not-a-key").err(),
        Some(KeyParseError::Length)
    );
}

#[test]
fn characters_outside_the_alphabet_are_rejected_as_alphabet() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let text = key.expose_secret();
    for (at, bad) in [(4, "-"), (10, "+"), (25, "/"), (40, "="), (58, " ")] {
        let mut changed = text.to_owned();
        changed.replace_range(at..at + 1, bad);
        assert_eq!(
            format.parse(&changed).err(),
            Some(KeyParseError::Alphabet),
            "{at}"
        );
    }
    // A misplaced separator: the id/secret separator moved one place.
    let mut moved = text.to_owned();
    moved.replace_range(20..22, &format!("{}_", &text[21..22]));
    assert_eq!(format.parse(&moved).err(), Some(KeyParseError::Alphabet));
}

#[test]
fn multibyte_utf8_of_the_same_byte_length_is_rejected_as_alphabet() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let text = key.expose_secret();
    // 'é' is two bytes: replacing two ASCII characters keeps the byte length.
    let mut changed = text.to_owned();
    changed.replace_range(30..32, "é");
    assert_eq!(changed.len(), text.len());
    assert_eq!(format.parse(&changed).err(), Some(KeyParseError::Alphabet));
    // Three bytes, in the id.
    let mut changed = text.to_owned();
    changed.replace_range(5..8, "€");
    assert_eq!(changed.len(), text.len());
    assert_eq!(format.parse(&changed).err(), Some(KeyParseError::Alphabet));
    // Invalid UTF-8 through parse_bytes.
    let mut bytes = text.as_bytes().to_vec();
    bytes[33] = 0xff;
    assert_eq!(
        format.parse_bytes(&bytes).err(),
        Some(KeyParseError::Alphabet)
    );
}

#[test]
fn multibyte_utf8_of_another_byte_length_is_rejected_as_length() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let mut changed = key.expose_secret().to_owned();
    changed.replace_range(30..31, "😀");
    assert_eq!(changed.chars().count(), 59);
    assert_eq!(format.parse(&changed).err(), Some(KeyParseError::Length));
    let all_multibyte: String = "é".repeat(59);
    assert_eq!(
        format.parse(&all_multibyte).err(),
        Some(KeyParseError::Length)
    );
}

#[test]
fn a_64_kib_string_is_rejected_as_length() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let huge = key.expose_secret().repeat(65536 / 59 + 1)[..65536].to_owned();
    assert_eq!(huge.len(), 64 * 1024);
    assert_eq!(format.parse(&huge).err(), Some(KeyParseError::Length));
    let zeros = vec![0u8; 64 * 1024];
    assert_eq!(
        format.parse_bytes(&zeros).err(),
        Some(KeyParseError::Length)
    );
}

#[test]
fn a_valid_looking_key_with_a_wrong_checksum_is_rejected_as_checksum() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let other = format.generate().unwrap();
    // Body of one key with the checksum of another.
    let text = key.expose_secret();
    let spliced = format!(
        "{}{}",
        &text[..text.len() - CHECKSUM_LEN],
        &other.expose_secret()[text.len() - CHECKSUM_LEN..]
    );
    if spliced != text {
        assert_eq!(format.parse(&spliced).err(), Some(KeyParseError::Checksum));
    }
    // The largest checksum value: above u32::MAX, so it can never match.
    let max = format!("{}zzzzzz", &text[..text.len() - CHECKSUM_LEN]);
    assert_eq!(format.parse(&max).err(), Some(KeyParseError::Checksum));
}

// ---------------------------------------------------------------------------
// Key ids
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn key_ids_round_trip_through_display_and_parse(text in "[0-9A-Za-z]{16}") {
        let id: KeyId = text.parse().unwrap();
        prop_assert_eq!(id.to_string(), text.clone());
        prop_assert_eq!(id.as_str(), text.as_str());
        prop_assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        prop_assert_eq!(format!("{id:?}"), format!("KeyId({text})"));
    }

    #[test]
    fn strings_that_are_not_16_base62_characters_are_not_key_ids(text in "\\PC{0,40}") {
        let valid = text.len() == 16 && text.chars().all(is_base62);
        prop_assert_eq!(text.parse::<KeyId>().is_ok(), valid);
    }
}

#[test]
fn random_key_ids_are_valid_and_distinct() {
    let a = KeyId::random().unwrap();
    let b = KeyId::random().unwrap();
    assert_ne!(a, b);
    assert_eq!(a.to_string().parse::<KeyId>().unwrap(), a);
}

#[test]
fn bad_key_ids_are_rejected() {
    for bad in [
        "",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789abcde_",
        "0123456789abcde-",
        "0123456789abcde ",
        "0123456789abcdé",
        "0123456789abcd\u{0}f",
        "ÀÀÀÀÀÀÀÀ",
    ] {
        assert!(bad.parse::<KeyId>().is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------
// Stored hashes and peppers
// ---------------------------------------------------------------------------

fn presented(format: &KeyFormat) -> tower_api_key::PresentedKey {
    let key = format.generate().unwrap();
    format.parse(key.expose_secret()).unwrap()
}

fn pepper_v1() -> Pepper {
    Pepper::new(1, b"pepper number one, 32 bytes long".to_vec())
}

fn pepper_v2() -> Pepper {
    Pepper::new(2, b"pepper number two, 32 bytes long".to_vec())
}

#[test]
fn stored_hashes_round_trip_through_text() {
    let format = KeyFormat::default();
    let key = presented(&format);
    for hasher in [
        KeyHasher::sha256(),
        KeyHasher::with_pepper(pepper_v1()),
        KeyHasher::with_pepper(Pepper::new(u32::MAX, b"x".to_vec())),
    ] {
        let stored = hasher.hash(&key);
        let text = stored.to_string();
        let back: StoredHash = text.parse().unwrap();
        assert_eq!(back, stored);
        assert!(back.ct_eq(&stored));
        assert_eq!(back.to_string(), text);
        assert!(hasher.verify(&key, &back));
    }
    let plain = KeyHasher::sha256().hash(&key);
    assert_eq!(plain.scheme(), HashScheme::Sha256);
    assert!(plain.to_string().starts_with("sha256$"));
    let sha256: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        key.expose_secret(),
    ))
    .into();
    assert_eq!(plain.digest(), &sha256);
    // The cache key is a keyed PRF of the key, not (a part of) its stored hash.
    assert_ne!(&sha256[..16], key.digest().as_bytes());
    let peppered = KeyHasher::with_pepper(pepper_v1()).hash(&key);
    assert_eq!(
        peppered.scheme(),
        HashScheme::HmacSha256 { pepper_version: 1 }
    );
    assert!(peppered.to_string().starts_with("hmac-sha256$1$"));
    assert_ne!(peppered.digest(), plain.digest());
}

/// Text of a stored hash, sometimes with one character of the digest replaced
/// or a sign before the version.
fn near_stored_hash_text() -> impl Strategy<Value = String> {
    (
        any::<[u8; 32]>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of((
            0usize..64,
            proptest::sample::select(vec!['+', '-', ' ', 'g', 'A', 'F', '0']),
        )),
        any::<bool>(),
    )
        .prop_map(|(digest, version, edit, signed_version)| {
            let mut hex: Vec<char> = digest
                .iter()
                .flat_map(|b| format!("{b:02x}").chars().collect::<Vec<_>>())
                .collect();
            if let Some((at, c)) = edit {
                hex[at] = c;
            }
            let hex: String = hex.into_iter().collect();
            match version {
                None => format!("sha256${hex}"),
                Some(v) if signed_version => format!("hmac-sha256$+{v}${hex}"),
                Some(v) => format!("hmac-sha256${v}${hex}"),
            }
        })
}

proptest! {
    #[test]
    fn stored_hash_text_round_trips_for_any_parts(
        digest in any::<[u8; 32]>(),
        version in proptest::option::of(any::<u32>()),
    ) {
        let scheme = match version {
            None => HashScheme::Sha256,
            Some(pepper_version) => HashScheme::HmacSha256 { pepper_version },
        };
        let stored = StoredHash::from_parts(scheme, digest);
        let text = stored.to_string();
        prop_assert_eq!(text.parse::<StoredHash>().unwrap(), stored);
    }

    #[test]
    fn stored_hash_parse_never_panics_and_accepts_no_sign_or_other_non_digit_characters(
        text in prop_oneof![
            "\\PC{0,90}".boxed(),
            near_stored_hash_text().boxed(),
        ]
    ) {
        if let Ok(stored) = text.parse::<StoredHash>() {
            // Hex digits may come in either case; otherwise what parses is
            // what Display prints (the generator writes no zero-padded versions).
            prop_assert_eq!(stored.to_string(), text.to_ascii_lowercase());
        }
    }
}

#[test]
fn malformed_stored_hash_text_is_rejected() {
    let hex = "ab".repeat(32);
    assert!(format!("sha256${hex}").parse::<StoredHash>().is_ok());
    assert!(format!("hmac-sha256$7${hex}").parse::<StoredHash>().is_ok());
    for bad in [
        String::new(),
        hex.clone(),
        format!("sha256${}", &hex[..63]),
        format!("sha256${hex}0"),
        format!("sha256${}g", &hex[..63]),
        format!("sha512${hex}"),
        format!("hmac-sha256${hex}"),
        format!("hmac-sha256$$${hex}"),
        format!("hmac-sha256$-1${hex}"),
        format!("hmac-sha256$4294967296${hex}"),
        format!("hmac-sha256$x${hex}"),
        // Sign characters are not hex digits.
        format!("sha256$+a{}", &hex[2..]),
        format!("sha256${}", "+0".repeat(32)),
        format!("hmac-sha256$+1${hex}"),
        // Multibyte text of the right byte length.
        format!("sha256$é{}", &hex[2..]),
    ] {
        assert!(bad.parse::<StoredHash>().is_err(), "{bad:?}");
    }
}

#[test]
fn a_rotated_hasher_verifies_hashes_made_with_the_previous_pepper() {
    let format = KeyFormat::default();
    let key = presented(&format);
    let old = KeyHasher::with_pepper(pepper_v1());
    let stored_v1 = old.hash(&key);

    let rotated = KeyHasher::with_pepper(pepper_v2()).with_previous_pepper(pepper_v1());
    assert!(rotated.verify(&key, &stored_v1));
    // New hashes use the current pepper.
    let stored_v2 = rotated.hash(&key);
    assert_eq!(
        stored_v2.scheme(),
        HashScheme::HmacSha256 { pepper_version: 2 }
    );
    assert!(rotated.verify(&key, &stored_v2));
    assert!(!old.verify(&key, &stored_v2), "v1 alone cannot check v2");
}

#[test]
fn a_hasher_without_the_previous_pepper_rejects_its_hashes() {
    let format = KeyFormat::default();
    let key = presented(&format);
    let stored_v1 = KeyHasher::with_pepper(pepper_v1()).hash(&key);
    let only_v2 = KeyHasher::with_pepper(pepper_v2());
    assert!(!only_v2.verify(&key, &stored_v1));
    assert!(only_v2
        .hash_with(&key, HashScheme::HmacSha256 { pepper_version: 1 })
        .is_none());
    // A different secret claiming version 1 does not verify either.
    let impostor = KeyHasher::with_pepper(Pepper::new(1, b"not the real pepper".to_vec()));
    assert!(!impostor.verify(&key, &stored_v1));
}

#[test]
fn a_wrong_key_never_verifies() {
    let format = KeyFormat::default();
    let key = presented(&format);
    let other = presented(&format);
    let same_id_other_secret = {
        let reissued = format.generate_for(key.id()).unwrap();
        format.parse(reissued.expose_secret()).unwrap()
    };
    for hasher in [
        KeyHasher::sha256(),
        KeyHasher::with_pepper(pepper_v1()),
        KeyHasher::with_pepper(pepper_v2()).with_previous_pepper(pepper_v1()),
    ] {
        let stored = hasher.hash(&key);
        assert!(hasher.verify(&key, &stored));
        assert!(!hasher.verify(&other, &stored));
        assert!(!hasher.verify(&same_id_other_secret, &stored));
    }
    // A v1 hash of the key is no good for another key under the rotated hasher.
    let stored_v1 = KeyHasher::with_pepper(pepper_v1()).hash(&key);
    let rotated = KeyHasher::with_pepper(pepper_v2()).with_previous_pepper(pepper_v1());
    assert!(!rotated.verify(&other, &stored_v1));
    // Same digest, other scheme: no match.
    let plain = KeyHasher::sha256().hash(&key);
    let relabelled = StoredHash::from_parts(
        HashScheme::HmacSha256 { pepper_version: 1 },
        *plain.digest(),
    );
    assert!(!rotated.verify(&key, &relabelled));
}

/// `KeyFormat::pattern()` (issue 24: what an issuer registers with a secret
/// scanner) finds every generated key whole, in text, and none of the near
/// misses: a character short or over, another prefix, another separator, a
/// character outside base62, a key glued to a word.
#[test]
fn the_pattern_finds_generated_keys_and_no_near_miss() {
    for prefix in ["tak", "yc", "a1234567890bcdef"] {
        let format = KeyFormat::new(prefix).unwrap();
        let pattern = regex::Regex::new(&format.pattern()).unwrap();
        for _ in 0..200 {
            let key = format.generate().unwrap();
            let key = key.expose_secret();
            for text in [
                key.to_owned(),
                format!("API_KEY={key}\n"),
                format!("\"{key}\","),
                format!("key: {key} (rotated)"),
            ] {
                let found: Vec<&str> = pattern.find_iter(&text).map(|m| m.as_str()).collect();
                assert_eq!(found, vec![key], "{prefix}: {} bytes", text.len());
            }
            let (head, _) = key.split_at(key.len() - 1);
            let near_misses = [
                head.to_owned(),
                format!("{key}A"),
                format!("x{key}"),
                format!("_{key}"),
                format!("{key}_"),
                key.replacen(&format!("{prefix}_"), &format!("{prefix}-"), 1),
                key.replacen(prefix, "zz9", 1),
                format!("{head}-"),
                format!("{head}é"),
            ];
            for text in near_misses {
                assert!(
                    !pattern.is_match(&text),
                    "{prefix}: a near miss of {} bytes matched",
                    text.len()
                );
            }
        }
    }
}
