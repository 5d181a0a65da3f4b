//! A key's metadata: a small JSON object the operator attaches to a key,
//! kept as validated bytes so that serde stays behind its feature.

use std::fmt;
use std::sync::Arc;

/// Largest metadata object, in bytes of JSON.
pub const MAX_METADATA_LEN: usize = 1024;

/// Deepest nesting of arrays and objects accepted (the object itself is 1).
const MAX_DEPTH: usize = 32;

/// What an operator attached to a key (a plan name, a tenant id, an owner's
/// address): one JSON object of at most [`MAX_METADATA_LEN`] bytes, kept as
/// the validated text. Handlers read it from the
/// [`Caller`](crate::Caller); the layer never authorizes on it.
///
/// ```
/// use tower_api_key::Metadata;
///
/// let meta = Metadata::new(r#"{"plan":"pro"}"#).unwrap();
/// assert_eq!(meta.as_str(), r#"{"plan":"pro"}"#);
/// assert!(Metadata::new("[1, 2]").is_err(), "an object, nothing else");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Metadata(Arc<str>);

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// Longer than [`MAX_METADATA_LEN`] bytes.
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// Not JSON: the first byte that cannot continue it.
    NotJson {
        /// Offset of that byte, from 0.
        at: usize,
    },
    /// JSON, but not an object.
    NotObject,
    /// Nested deeper than 32 arrays and objects.
    TooDeep,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len } => write!(
                f,
                "metadata: {len} bytes of JSON, at most {MAX_METADATA_LEN}"
            ),
            Self::NotJson { at } => write!(f, "metadata: not JSON (at byte {at})"),
            Self::NotObject => f.write_str("metadata: must be a JSON object"),
            Self::TooDeep => write!(
                f,
                "metadata: nested deeper than {MAX_DEPTH} arrays and objects"
            ),
        }
    }
}

impl std::error::Error for MetadataError {}

impl Metadata {
    /// `json`, if it is one JSON object of at most [`MAX_METADATA_LEN`]
    /// bytes (kept as given, whitespace included).
    pub fn new(json: &str) -> Result<Self, MetadataError> {
        validate(json)?;
        Ok(Self(Arc::from(json)))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The object decoded as a `T` (feature `serde`).
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn deserialize<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `json` is one JSON object (RFC 8259) within the bounds.
fn validate(json: &str) -> Result<(), MetadataError> {
    if json.len() > MAX_METADATA_LEN {
        return Err(MetadataError::TooLarge { len: json.len() });
    }
    let mut p = Parser {
        s: json.as_bytes(),
        i: 0,
    };
    p.ws();
    if p.peek() != Some(b'{') {
        // Tell "valid JSON, wrong kind" from garbage.
        return match p.value(0) {
            Ok(()) => {
                p.ws();
                if p.i == p.s.len() {
                    Err(MetadataError::NotObject)
                } else {
                    Err(MetadataError::NotJson { at: p.i })
                }
            }
            Err(e) => Err(e),
        };
    }
    p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(MetadataError::NotJson { at: p.i });
    }
    Ok(())
}

/// A recursive-descent JSON checker: it builds nothing.
struct Parser<'s> {
    s: &'s [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err(&self) -> MetadataError {
        MetadataError::NotJson { at: self.i }
    }

    fn eat(&mut self, b: u8) -> Result<(), MetadataError> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), MetadataError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(self.err()),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), MetadataError> {
        if depth > MAX_DEPTH {
            return Err(MetadataError::TooDeep);
        }
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), MetadataError> {
        if depth > MAX_DEPTH {
            return Err(MetadataError::TooDeep);
        }
        self.eat(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err()),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), MetadataError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn digits(&mut self) -> Result<(), MetadataError> {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        if self.i == start {
            Err(self.err())
        } else {
            Ok(())
        }
    }

    fn number(&mut self) -> Result<(), MetadataError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits()?,
            _ => return Err(self.err()),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, MetadataError> {
        let digits = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err())?;
        let mut value = 0u16;
        for &d in digits {
            let nibble = char::from(d).to_digit(16).ok_or_else(|| self.err())?;
            value = value * 16 + nibble as u16;
        }
        self.i += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<(), MetadataError> {
        self.eat(b'"')?;
        loop {
            match self.peek() {
                None => return Err(self.err()),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let unit = self.hex4()?;
                            match unit {
                                // A high surrogate must be followed by a low
                                // one (as serde_json requires).
                                0xD800..=0xDBFF => {
                                    if !self.s[self.i..].starts_with(b"\\u") {
                                        return Err(self.err());
                                    }
                                    self.i += 2;
                                    if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                                        return Err(self.err());
                                    }
                                }
                                0xDC00..=0xDFFF => return Err(self.err()),
                                _ => {}
                            }
                        }
                        _ => return Err(self.err()),
                    }
                }
                // Control characters must be escaped; the rest is valid
                // UTF-8 already (a `&str`).
                Some(0x00..=0x1f) => return Err(self.err()),
                Some(_) => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn objects_pass_and_everything_else_is_named() {
        for ok in [
            "{}",
            r#" {"plan":"pro"} "#,
            r#"{"a":[1,-2.5e+3,true,false,null,{"b":"\u00e9\ud83d\ude00\n"}]}"#,
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate("[1]"), Err(MetadataError::NotObject));
        assert_eq!(validate("\"x\""), Err(MetadataError::NotObject));
        assert_eq!(validate("{"), Err(MetadataError::NotJson { at: 1 }));
        assert_eq!(
            validate(r#"{"a":1,}"#),
            Err(MetadataError::NotJson { at: 7 })
        );
        assert_eq!(validate("{} x"), Err(MetadataError::NotJson { at: 3 }));
        assert_eq!(
            validate(r#"{"a":"\ud800"}"#),
            Err(MetadataError::NotJson { at: 12 }),
            "a lone surrogate"
        );
        assert_eq!(
            validate("{\"a\":01}"),
            Err(MetadataError::NotJson { at: 6 })
        );
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_METADATA_LEN));
        assert_eq!(
            validate(&big),
            Err(MetadataError::TooLarge { len: big.len() })
        );
        let deep = format!("{}{}", r#"{"a":"#.repeat(40), "}".repeat(40));
        assert_eq!(validate(&deep), Err(MetadataError::TooDeep));
    }

    /// JSON-ish text: JSON values, sometimes damaged.
    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            any::<i32>().prop_map(|n| n.to_string()),
            any::<f32>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            "[ -~é\u{1F600}]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            r#"[0-9eE.+\-]{1,6}"#,
            r#""(\\[u"\\/bfnrtx]|[0-9a-fA-FdD]){0,8}""#,
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z]{0,3}", inner), 0..4).prop_map(|v| {
                    let fields: Vec<String> = v
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\": {v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    /// The text, sometimes with one byte range cut out or a byte inserted.
    fn damaged() -> impl Strategy<Value = String> {
        (
            json_value(),
            any::<u8>(),
            any::<prop::sample::Index>(),
            any::<u8>(),
        )
            .prop_map(|(s, how, at, byte)| {
                let mut s = s.into_bytes();
                let i = at.index(s.len() + 1);
                match how % 4 {
                    0 if i < s.len() => {
                        s.remove(i);
                    }
                    1 => {
                        const BYTES: &[u8] = b"{}[],:\"\\ -0e.";
                        s.insert(i, BYTES[usize::from(byte) % BYTES.len()]);
                    }
                    _ => {}
                }
                String::from_utf8(s).unwrap_or_default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The checker agrees with serde_json on what is a JSON object.
        #[test]
        fn agrees_with_serde_json(text in damaged()) {
            let ours = validate(&text);
            let theirs = serde_json::from_str::<serde_json::Value>(&text);
            match &theirs {
                // serde_json refuses numbers out of f64's range; the
                // checker keeps them (opaque text).
                Err(e) if e.to_string().contains("out of range") => {}
                Ok(v) => prop_assert_eq!(ours.is_ok(), v.is_object(), "{:?}: {:?}", text, ours),
                Err(_) => prop_assert!(ours.is_err(), "{:?} accepted", text),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = validate(&text);
        }
    }
}
