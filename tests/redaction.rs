//! No formatting of any public type ever prints a key, its secret part or a pepper.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_api_key::cache::LookupError;
use tower_api_key::hash::{KeyHasher, Pepper};
use tower_api_key::store::{ListRequest, NewKey, StoreError};
use tower_api_key::Caller;
use tower_api_key::KeyRecord;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::VerifierError;
use tower_api_key::{GeneratedKey, KeyFormat, KeyParseError, CHECKSUM_LEN};
use tower_api_key::{ScopeDenied, ScopeError, ScopePolicy, ScopeSet};

const PEPPER: &[u8] = b"PEPPER-SENTINEL-do-not-print-0123456789";

/// The texts that must never show up in formatted output.
struct Sentinels {
    whole: String,
    secret: String,
    pepper_text: String,
    pepper_bytes_debug: String,
}

impl Sentinels {
    fn of(key: &GeneratedKey) -> Self {
        let whole = key.expose_secret().to_owned();
        // `<prefix>_<id>_<secret><checksum>`: the secret is what follows the
        // second '_', minus the checksum.
        let after_second = whole.splitn(3, '_').nth(2).unwrap();
        let secret = after_second[..after_second.len() - CHECKSUM_LEN].to_owned();
        assert_eq!(secret.len(), 32);
        Self {
            whole,
            secret,
            pepper_text: String::from_utf8(PEPPER.to_vec()).unwrap(),
            pepper_bytes_debug: format!("{:?}", PEPPER.to_vec()),
        }
    }

    #[track_caller]
    fn assert_absent(&self, what: &str, text: &str) {
        for (name, needle) in [
            ("whole key", &self.whole),
            ("secret", &self.secret),
            ("pepper", &self.pepper_text),
            ("pepper bytes", &self.pepper_bytes_debug),
        ] {
            assert!(
                !text.contains(needle.as_str()),
                "{what} prints the {name}: {text}"
            );
        }
        // Also no long run of the secret (say, a prefix of it printed alone).
        for window in self.secret.as_bytes().windows(12) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(
                !text.contains(window),
                "{what} prints part of the secret: {text}"
            );
        }
    }

    #[track_caller]
    fn assert_debug_absent(&self, what: &str, value: &impl std::fmt::Debug) {
        let out = format!("{value:?}");
        assert!(!out.is_empty());
        self.assert_absent(what, &out);
        self.assert_absent(what, &format!("{value:#?}"));
    }

    #[track_caller]
    fn assert_all_absent(&self, what: &str, value: &(impl std::fmt::Debug + std::fmt::Display)) {
        self.assert_debug_absent(what, value);
        let out = value.to_string();
        assert!(!out.is_empty());
        self.assert_absent(what, &out);
    }
}

fn peppered_hasher() -> KeyHasher {
    KeyHasher::with_pepper(Pepper::new(3, PEPPER.to_vec()))
}

#[test]
fn the_sentinel_check_itself_catches_a_leak() {
    let key = KeyFormat::default().generate().unwrap();
    let s = Sentinels::of(&key);
    let leak = std::panic::catch_unwind(|| s.assert_absent("a leak", key.expose_secret()));
    assert!(leak.is_err());
    let leak = std::panic::catch_unwind(|| s.assert_absent("a leak", &format!("{PEPPER:?}")));
    assert!(leak.is_err());
}

#[test]
fn generated_and_presented_keys_format_without_their_secret() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let s = Sentinels::of(&key);
    s.assert_all_absent("GeneratedKey", &key);
    s.assert_all_absent("GeneratedKey clone", &key.clone());
    let presented = format.parse(key.expose_secret()).unwrap();
    s.assert_all_absent("PresentedKey", &presented);
    s.assert_debug_absent("KeyDigest", presented.digest());
    s.assert_all_absent("KeyId", &key.id());
    // The public parts are still there, so the output is useful.
    assert!(key.to_string().starts_with(&format!("tak_{}_", key.id())));
    assert!(presented.to_string().contains(key.id().as_str()));
    assert!(format!("{presented:?}").contains(key.id().as_str()));
}

#[test]
fn records_and_callers_format_without_the_secret() {
    let key = KeyFormat::default().generate().unwrap();
    let s = Sentinels::of(&key);
    let record = KeyRecord::new(key.id(), "sa-redaction")
        .with_scopes(ScopeSet::new(["yc.ai.translate.execute"]).unwrap())
        .with_description("a description")
        .with_expires_at(Some(SystemTime::now() + Duration::from_secs(60)));
    s.assert_debug_absent("KeyRecord", &record);
    let caller = Caller::from(record);
    s.assert_debug_absent("Caller", &caller);
    assert!(format!("{caller:?}").contains("sa-redaction"));
}

#[tokio::test]
async fn store_results_format_without_the_secret_or_the_pepper() {
    let store = MemoryStore::builder().hasher(peppered_hasher()).build();
    let created = store
        .create(NewKey::new("sa-redaction").with_description("store test"))
        .await
        .unwrap();
    let s = Sentinels::of(&created.key);
    s.assert_debug_absent("CreatedKey", &created);
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    s.assert_debug_absent("KeyInfo", &info);
    let page = store
        .list("sa-redaction", ListRequest::default())
        .await
        .unwrap();
    assert_eq!(page.keys.len(), 1);
    s.assert_debug_absent("KeyPage", &page);
    s.assert_debug_absent("MemoryStore", &store);

    let reissued = store
        .reissue(created.record.key_id, Duration::from_secs(10), None)
        .await
        .unwrap()
        .unwrap();
    // Neither the old nor the new secret shows.
    s.assert_debug_absent("reissued CreatedKey", &reissued);
    Sentinels::of(&reissued.key).assert_debug_absent("reissued CreatedKey", &reissued);
    let info = store.get(created.record.key_id).await.unwrap().unwrap();
    s.assert_debug_absent("KeyInfo after reissue", &info);
    Sentinels::of(&reissued.key).assert_debug_absent("KeyInfo after reissue", &info);
}

#[test]
fn peppers_hashers_and_stored_hashes_format_without_the_pepper_or_the_key() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let s = Sentinels::of(&key);
    let pepper = Pepper::new(3, PEPPER.to_vec());
    s.assert_debug_absent("Pepper", &pepper);
    let hasher = peppered_hasher().with_previous_pepper(Pepper::new(2, PEPPER.to_vec()));
    s.assert_debug_absent("KeyHasher", &hasher);
    let presented = format.parse(key.expose_secret()).unwrap();
    let stored = hasher.hash(&presented);
    s.assert_debug_absent("StoredHash", &stored);
    // Debug keeps even the digest out of logs.
    let hex: String = stored.digest().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!format!("{stored:?}").contains(&hex));
    assert!(!format!("{stored:#?}").contains(&hex));
    // The text form (for the database) holds the digest, never key or pepper.
    s.assert_absent("StoredHash text", &stored.to_string());
    let plain = KeyHasher::sha256().hash(&presented);
    s.assert_debug_absent("plain StoredHash", &plain);
}

#[test]
fn key_parse_errors_never_contain_the_input() {
    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let s = Sentinels::of(&key);
    let text = key.expose_secret();
    let inputs = [
        String::new(),
        format!("{text}x"),
        text.replacen("tak", "tax", 1),
        text.replacen('_', "-", 2).replacen('-', "_", 1),
        format!(
            "{}{}",
            &text[..58],
            if text.ends_with('0') { '1' } else { '0' }
        ),
    ];
    let mut seen = Vec::new();
    for input in &inputs {
        let err = format.parse(input).unwrap_err();
        s.assert_all_absent("KeyParseError", &err);
        seen.push(err);
    }
    assert_eq!(
        seen,
        [
            KeyParseError::Empty,
            KeyParseError::Length,
            KeyParseError::Prefix,
            KeyParseError::Alphabet,
            KeyParseError::Checksum,
        ]
    );
}

fn verifier_errors() -> Vec<VerifierError> {
    vec![
        VerifierError::backend("database is down"),
        VerifierError::backend(std::io::Error::other("connection reset")),
        VerifierError::Timeout(Duration::from_secs(5)),
    ]
}

#[test]
fn verifier_and_lookup_errors_never_contain_the_key() {
    let key = KeyFormat::default().generate().unwrap();
    let s = Sentinels::of(&key);
    for err in verifier_errors() {
        s.assert_all_absent("VerifierError", &err);
        let lookup = LookupError::Unavailable(Arc::new(err));
        s.assert_all_absent("LookupError::Unavailable", &lookup);
    }
    for lookup in [
        LookupError::Unknown,
        LookupError::Expired,
        LookupError::VerifierPanicked,
    ] {
        s.assert_all_absent("LookupError", &lookup);
    }
}

fn blow_up() -> Result<Option<KeyRecord>, VerifierError> {
    panic!("verifier blew up")
}

#[tokio::test]
async fn errors_produced_by_the_cache_never_contain_the_key() {
    use tower_api_key::cache::{CacheConfig, CachedVerifier};
    use tower_api_key::PresentedKey;

    let format = KeyFormat::default();
    let key = format.generate().unwrap();
    let s = Sentinels::of(&key);
    let presented = format.parse(key.expose_secret()).unwrap();

    // A verifier that returns someone else's record: the cache's own error text.
    let other = KeyFormat::default().generate().unwrap().id();
    let wrong_id = CachedVerifier::new(
        move |_key: PresentedKey| async move {
            Ok::<_, VerifierError>(Some(KeyRecord::new(other, "sa")))
        },
        CacheConfig::default(),
    );
    let err = wrong_id.lookup(&presented).await.unwrap_err();
    assert!(matches!(err, LookupError::Unavailable(_)), "{err:?}");
    s.assert_all_absent("LookupError (wrong id)", &err);

    let panics = CachedVerifier::new(
        |_key: PresentedKey| async move { blow_up() },
        CacheConfig::default(),
    );
    let err = panics.lookup(&presented).await.unwrap_err();
    assert!(matches!(err, LookupError::VerifierPanicked), "{err:?}");
    s.assert_all_absent("LookupError (panic)", &err);

    let unknown = CachedVerifier::new(
        |_key: PresentedKey| async move { Ok::<Option<KeyRecord>, VerifierError>(None) },
        CacheConfig::default(),
    );
    let err = unknown.lookup(&presented).await.unwrap_err();
    assert!(matches!(err, LookupError::Unknown), "{err:?}");
    s.assert_all_absent("LookupError (unknown)", &err);
    s.assert_debug_absent("CachedVerifier", &unknown);
}

#[tokio::test]
async fn store_errors_never_contain_the_key() {
    let store = MemoryStore::builder().hasher(peppered_hasher()).build();
    let created = store.create(NewKey::new("sa-1")).await.unwrap();
    let s = Sentinels::of(&created.key);
    let errors = [
        store.create(NewKey::new("")).await.unwrap_err(),
        store
            .create(NewKey::new("sa-1").with_expires_at(SystemTime::UNIX_EPOCH))
            .await
            .unwrap_err(),
        store.list("sa-1", ListRequest::first(0)).await.unwrap_err(),
        store
            .list("sa-1", ListRequest::after(10, created.key.expose_secret()))
            .await
            .unwrap_err(),
        StoreError::backend("connection refused"),
    ];
    for err in &errors {
        s.assert_all_absent("StoreError", err);
    }
    assert!(matches!(errors[0], StoreError::InvalidField { .. }));
    assert!(matches!(errors[2], StoreError::InvalidPageSize { .. }));
    assert!(matches!(errors[3], StoreError::InvalidPageToken));
}

#[test]
fn scope_errors_and_denials_never_contain_the_key() {
    let key = KeyFormat::default().generate().unwrap();
    let s = Sentinels::of(&key);
    let scope_errors = [
        ScopeSet::new([""]).unwrap_err(),
        ScopeSet::new(["x".repeat(300).as_str()]).unwrap_err(),
        // Someone pastes the key where a scope goes: refused without echoing it.
        ScopeSet::new([format!("{}/", key.expose_secret())]).unwrap_err(),
        ScopeSet::new((0..101).map(|i| format!("s{i}"))).unwrap_err(),
        ScopePolicy::require_any(Vec::<&str>::new()).unwrap_err(),
    ];
    assert_eq!(
        scope_errors,
        [
            ScopeError::Empty,
            ScopeError::TooLong,
            ScopeError::Invalid,
            ScopeError::TooMany,
            ScopeError::NoneRequired,
        ]
    );
    for err in &scope_errors {
        s.assert_all_absent("ScopeError", err);
    }
    let scoped = ScopeSet::new(["a.b"]).unwrap();
    let denials = [
        ScopePolicy::require_any(["c.d"])
            .unwrap()
            .check(&scoped)
            .unwrap_err(),
        ScopePolicy::unscoped_keys_only()
            .check(&scoped)
            .unwrap_err(),
    ];
    assert_eq!(
        denials,
        [
            ScopeDenied::MissingScope,
            ScopeDenied::ScopedKeyOnUnscopedRoute
        ]
    );
    for denial in &denials {
        s.assert_all_absent("ScopeDenied", denial);
    }
}
