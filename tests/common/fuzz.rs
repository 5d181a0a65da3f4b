//! The two fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/`
//! (which include this file by path) and by the stable-toolchain stand-in
//! `tests/fuzz_standin.rs` that CI runs for a bounded number of cases.
//!
//! - [`parse_key`]: raw bytes into `KeyFormat::parse_bytes` (three formats),
//!   plus a structured mode that fixes up the checksum so the fuzzer also
//!   reaches the success path with arbitrary ids and secrets.
//! - [`authorization`]: a whole request through an axum `Router` with the
//!   layer on it: any number of `Authorization` and `x-api-key` headers whose
//!   values are built from arbitrary bytes and key-shaped pieces, HTTP or gRPC,
//!   on a route that admits any valid key or one that requires a scope.
//!
//! Each checks properties that hold for every input and panics (a fuzzer
//! crash) when one does not.
#![allow(dead_code)]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_api_key::store::NewKey;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::Reason;
use tower_api_key::Rejection;
use tower_api_key::{Authenticator, Caller};
use tower_api_key::{KeyFormat, CHECKSUM_LEN, ID_LEN, SECRET_LEN};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The longest value a fuzz case builds (the layer refuses anything over 256
/// bytes before parsing; this is well past that without slowing the fuzzer).
const MAX_VALUE_LEN: usize = 8 * 1024;

/// The CRC-32 checksum of the key format: CRC-32 of everything before it, as
/// 6 base62 digits, most significant first.
pub fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body) as u64;
    let mut out = [0u8; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// `body` followed by its checksum.
pub fn with_checksum(body: &[u8]) -> Vec<u8> {
    let mut key = body.to_vec();
    key.extend_from_slice(&checksum(body));
    key
}

/// `key` (a whole key of any format) with its secret replaced by `secret`
/// (mapped into the alphabet, cycled to 32 characters) and a correct checksum:
/// the same id, a wrong secret, and still well-formed.
pub fn with_secret(key: &[u8], secret: &[u8]) -> Vec<u8> {
    let body_len = key.len() - CHECKSUM_LEN;
    let secret_at = body_len - SECRET_LEN;
    let mut body = key[..secret_at].to_vec();
    body.extend(base62(secret, SECRET_LEN));
    with_checksum(&body)
}

/// `len` alphabet characters derived from `bytes` (cycled; `0` when empty).
fn base62(bytes: &[u8], len: usize) -> impl Iterator<Item = u8> + '_ {
    (0..len).map(move |i| match bytes {
        [] => b'0',
        _ => ALPHABET[bytes[i % bytes.len()] as usize % 62],
    })
}

// ---------------------------------------------------------------------------
// (a) Key parsing.

/// Parses `data` with three formats (prefix `tak`, one letter, sixteen
/// letters). If the first byte is `0xA5`, the rest is first shaped into a
/// checksum-valid key of the default format (prefix, id and secret taken from
/// the bytes), so the success path is fuzzed too.
pub fn parse_key(data: &[u8]) {
    let formats = [
        KeyFormat::default(),
        KeyFormat::new("a").unwrap(),
        KeyFormat::new("abcdefghijklmnop").unwrap(),
    ];
    let shaped;
    let data = match data.split_first() {
        Some((0xA5, rest)) => {
            shaped = shape_key(rest);
            &shaped[..]
        }
        _ => data,
    };
    for format in formats {
        let parsed = format.parse_bytes(data);
        if let Ok(text) = std::str::from_utf8(data) {
            assert_eq!(
                format.parse(text).is_ok(),
                parsed.is_ok(),
                "parse and parse_bytes disagree"
            );
        }
        let Ok(key) = parsed else { continue };
        // Only a key of exactly this shape parses.
        let p = format.prefix().len();
        assert_eq!(data.len(), format.key_len());
        assert_eq!(&data[..p], format.prefix().as_bytes());
        assert_eq!(data[p], b'_');
        assert_eq!(data[p + 1 + ID_LEN], b'_');
        assert!(data[p + 1..p + 1 + ID_LEN]
            .iter()
            .chain(&data[p + 2 + ID_LEN..])
            .all(|b| ALPHABET.contains(b)));
        let body_len = data.len() - CHECKSUM_LEN;
        assert_eq!(checksum(&data[..body_len]), data[body_len..]);
        assert_eq!(key.expose_secret().as_bytes(), data);
        assert_eq!(key.id().as_str().as_bytes(), &data[p + 1..p + 1 + ID_LEN]);
        // Formatting shows the id, never the secret part.
        let secret = &key.expose_secret()[p + 2 + ID_LEN..];
        let shown = format!("{key} {key:?}");
        assert!(!shown.contains(secret), "secret part formatted");
    }
}

/// A checksum-valid default-format key made from `bytes` (a sprinkle of the
/// bytes themselves is kept, so near-misses are produced too).
fn shape_key(bytes: &[u8]) -> Vec<u8> {
    let (id, secret) = bytes.split_at(bytes.len() / 2);
    let mut body = b"tak_".to_vec();
    body.extend(base62(id, ID_LEN));
    body.push(b'_');
    body.extend(base62(secret, SECRET_LEN));
    let mut key = with_checksum(&body);
    // One raw byte in a position picked by the input: usually breaks the key.
    if let (Some(&at), Some(&byte)) = (bytes.first(), bytes.last()) {
        if at & 0x80 != 0 {
            let at = at as usize % key.len();
            key[at] = byte;
        }
    }
    key
}

// ---------------------------------------------------------------------------
// (b) A whole request's credentials through the layer.

/// One piece of a header value.
#[derive(Arbitrary, Debug)]
pub enum Piece {
    /// Bytes as they come (control characters make the value invalid; such a
    /// header is left out, as no HTTP stack would deliver it).
    Raw(Vec<u8>),
    /// `Api-Key`, in a case picked by the mask.
    Scheme(u8),
    /// A space or a tab.
    Blank(bool),
    /// The key the store knows.
    Known,
    /// The known key with one byte replaced.
    KnownWithByte(u8, u8),
    /// The known key's id with another secret, checksum fixed: well-formed,
    /// and refused exactly like an unknown key.
    KnownIdOtherSecret(Vec<u8>),
    /// A checksum-valid key nobody issued.
    Unknown(Vec<u8>),
    /// One byte repeated (up to 8 KiB).
    Run(u16, u8),
}

/// One request.
#[derive(Arbitrary, Debug)]
pub struct Case {
    /// Values of `Authorization` headers, in order (zero, one or several).
    pub authorization: Vec<Vec<Piece>>,
    /// Values of `x-api-key` headers (read only by the second router).
    pub extra: Vec<Vec<Piece>>,
    /// Use the router that also reads `x-api-key`.
    pub extra_router: bool,
    /// Send `content-type: application/grpc`.
    pub grpc: bool,
    /// Call the route that requires a scope the known key lacks.
    pub scoped_route: bool,
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    plain: Router,
    with_extra: Router,
    known: Vec<u8>,
    known_id: String,
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const SCOPE: &str = "fuzz.scope";

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = MemoryStore::new();
        let created = runtime
            .block_on(store.create(NewKey::new("sa-fuzz")))
            .unwrap();
        let auth = Authenticator::new(store.clone());
        let router = |auth: &Authenticator| {
            Router::new()
                .route(
                    "/whoami",
                    get(|caller: Caller| async move {
                        format!("{} {}", caller.service_account_id(), caller.key_id())
                    })
                    .route_layer(auth.any_valid_key()),
                )
                .route(
                    "/scoped",
                    get(|caller: Caller| async move { caller.key_id().to_string() })
                        .route_layer(auth.require_any([SCOPE])),
                )
        };
        let plain = router(&auth);
        let with_extra = router(
            &Authenticator::builder(store.clone())
                .api_key_header(X_API_KEY)
                .build(),
        );
        Harness {
            runtime,
            plain,
            with_extra,
            known: created.key.expose_secret().as_bytes().to_vec(),
            known_id: created.record.key_id.to_string(),
        }
    })
}

impl Piece {
    fn write(&self, known: &[u8], out: &mut Vec<u8>) {
        match self {
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
            Piece::Scheme(mask) => out.extend(b"Api-Key".iter().enumerate().map(|(i, &b)| {
                if mask >> (i % 8) & 1 == 1 {
                    b.to_ascii_lowercase()
                } else {
                    b.to_ascii_uppercase()
                }
            })),
            Piece::Blank(tab) => out.push(if *tab { b'\t' } else { b' ' }),
            Piece::Known => out.extend_from_slice(known),
            Piece::KnownWithByte(at, byte) => {
                let mut key = known.to_vec();
                let at = *at as usize % key.len();
                key[at] = *byte;
                out.extend_from_slice(&key);
            }
            Piece::KnownIdOtherSecret(secret) => out.extend(with_secret(known, secret)),
            Piece::Unknown(bytes) => out.extend(shape_key(bytes)),
            Piece::Run(len, byte) => {
                out.extend(std::iter::repeat_n(*byte, *len as usize % MAX_VALUE_LEN))
            }
        }
    }
}

/// The header values a case builds, without those no HTTP stack would carry.
fn values(pieces: &[Vec<Piece>], known: &[u8]) -> Vec<HeaderValue> {
    pieces
        .iter()
        .filter_map(|value| {
            let mut bytes = Vec::new();
            for piece in value {
                piece.write(known, &mut bytes);
                if bytes.len() > MAX_VALUE_LEN {
                    bytes.truncate(MAX_VALUE_LEN);
                    break;
                }
            }
            HeaderValue::from_bytes(&bytes).ok()
        })
        .collect()
}

/// Decodes a case from `data` and runs it; see [`run_case`].
pub fn authorization(data: &[u8]) {
    if let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(data)) {
        run_case(&case);
    }
}

/// Sends the request `case` describes and checks the response:
///
/// - there is one, whatever the headers (no panic, no hang);
/// - HTTP status 200, 400, 401 or 403; gRPC: HTTP 200 with `grpc-status`
///   16 or 7, or the handler's answer;
/// - the handler runs only for exactly one credential, and then sees the
///   known key's owner;
/// - two or more credentials are refused as such; none at all is `Missing`;
/// - a rejection carries `no-store` and never the known key's secret.
pub fn run_case(case: &Case) {
    let h = harness();
    let authorization = values(&case.authorization, &h.known);
    let extra = if case.extra_router {
        values(&case.extra, &h.known)
    } else {
        Vec::new()
    };
    let path = if case.scoped_route {
        "/scoped"
    } else {
        "/whoami"
    };
    let mut request = Request::get(path);
    if case.grpc {
        request = request.header(CONTENT_TYPE, "application/grpc");
    }
    for value in &authorization {
        request = request.header(AUTHORIZATION, value.clone());
    }
    for value in &extra {
        request = request.header(X_API_KEY, value.clone());
    }
    let request = request.body(Body::empty()).unwrap();
    let router = if case.extra_router {
        h.with_extra.clone()
    } else {
        h.plain.clone()
    };

    let (status, headers, body, rejection) = h.runtime.block_on(async move {
        let response = router.oneshot(request).await.expect("infallible");
        let rejection = response.extensions().get::<Rejection>().cloned();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("infallible").to_bytes();
        (parts.status, parts.headers, body, rejection)
    });

    let credentials = authorization.len() + extra.len();
    let secret = &h.known[h.known.len() - CHECKSUM_LEN - SECRET_LEN..];
    let contains_secret = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret);
    match &rejection {
        None => {
            // The handler answered.
            assert_eq!(status, StatusCode::OK);
            assert!(!headers.contains_key("grpc-status"));
            assert_eq!(credentials, 1, "admitted with {credentials} credentials");
            let expected = if case.scoped_route {
                unreachable!("the known key lacks the route's scope")
            } else {
                format!("sa-fuzz {}", h.known_id)
            };
            assert_eq!(body, expected.as_bytes());
        }
        Some(rejection) => {
            let reason = rejection.reason();
            if case.grpc {
                assert_eq!(status, StatusCode::OK);
                let code = headers.get("grpc-status").expect("a gRPC status");
                assert!(code == "16" || code == "7", "grpc-status {code:?}");
            } else {
                assert!(
                    matches!(
                        status,
                        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    ),
                    "status {status}"
                );
                assert_eq!(status, rejection.status());
            }
            assert_eq!(headers.get("cache-control").unwrap(), "no-store");
            match credentials {
                0 => assert_eq!(reason, Reason::Missing),
                1 => assert_ne!(reason, Reason::DuplicateCredentials),
                _ => assert_eq!(reason, Reason::DuplicateCredentials),
            }
            if reason == Reason::InsufficientScope {
                assert!(case.scoped_route);
                assert_eq!(rejection.key_id().unwrap().as_str(), h.known_id);
            }
            assert!(!contains_secret(&body), "key material in a rejection body");
            for value in headers.values() {
                assert!(
                    !contains_secret(value.as_bytes()),
                    "key material in a header"
                );
            }
        }
    }
}
