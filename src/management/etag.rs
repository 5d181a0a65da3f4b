//! Entity tags: a key's [`Version`] as a strong `ETag`, and the `If-Match`
//! a client sends back (RFC 9110, 13.1.1).

use http::header::{HeaderValue, IF_MATCH};
use http::HeaderMap;

use super::error::ApiError;
use crate::store::Version;

/// The `ETag` of a key at `version`: `"<version>"`, strong.
pub(crate) fn etag(version: Version) -> HeaderValue {
    match HeaderValue::from_str(&format!("\"{version}\"")) {
        Ok(value) => value,
        Err(_) => unreachable!("a quoted number is a valid header value"),
    }
}

/// What a request's `If-Match` headers ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IfMatch {
    /// No `If-Match`: the request applies to the key as it is (still
    /// checked and written in one step).
    Absent,
    /// `If-Match: *`: the key must exist, at any version.
    Any,
    /// The key must be at one of these versions. Weak tags and tags that
    /// are not ours never match (the comparison is strong), so they are
    /// not kept.
    Versions(Vec<Version>),
}

impl IfMatch {
    /// Reads every `If-Match` header of a request; 400 if one is not a
    /// list of entity tags.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut seen = false;
        let mut any = false;
        let mut versions = Vec::new();
        for value in headers.get_all(IF_MATCH) {
            seen = true;
            let text = value
                .to_str()
                .map_err(|_| ApiError::invalid("If-Match is not a list of entity tags"))?;
            for tag in text.split(',').map(str::trim) {
                match tag {
                    "*" => any = true,
                    _ => {
                        if let Some(version) = parse_tag(tag)? {
                            versions.push(version);
                        }
                    }
                }
            }
        }
        Ok(match (seen, any) {
            (false, _) => Self::Absent,
            (true, true) => Self::Any,
            (true, false) => Self::Versions(versions),
        })
    }

    /// Whether the client named versions (not `*`, not absent): only then
    /// does a write lost to a concurrent change answer 412 rather than try
    /// again, and only then is a write that checks nothing on the key but
    /// its account (which never changes) conditional.
    pub(crate) fn names_versions(&self) -> bool {
        matches!(self, Self::Versions(_))
    }

    /// Whether a key at `current` satisfies it.
    pub(crate) fn matches(&self, current: Version) -> bool {
        match self {
            Self::Absent | Self::Any => true,
            Self::Versions(versions) => versions.contains(&current),
        }
    }
}

/// One entity tag: `Some` for a strong tag of ours, `None` for a weak tag
/// or one we never issued; 400 for something that is not an entity tag.
fn parse_tag(tag: &str) -> Result<Option<Version>, ApiError> {
    let malformed = || ApiError::invalid("If-Match is not a list of entity tags");
    let (weak, quoted) = match tag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    };
    let inner = quoted
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(malformed)?;
    // etagc: %x21 / %x23-7E / obs-text; no quote inside.
    if !inner
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err(malformed());
    }
    if weak {
        return Ok(None);
    }
    let ours =
        !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) && !inner.starts_with('0');
    Ok(ours
        .then(|| inner.parse::<u64>().ok())
        .flatten()
        .map(Version::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn if_match(values: &[&str]) -> Result<IfMatch, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        IfMatch::from_headers(&headers)
    }

    #[test]
    fn an_etag_is_the_version_quoted_and_strong() {
        assert_eq!(etag(Version::new(7)), "\"7\"");
        assert_eq!(etag(Version::FIRST), "\"1\"");
    }

    #[test]
    fn if_match_lists_any_and_absence() {
        assert_eq!(if_match(&[]).unwrap(), IfMatch::Absent);
        assert_eq!(if_match(&["*"]).unwrap(), IfMatch::Any);
        assert_eq!(
            if_match(&["\"3\", \"5\"", "\"8\""]).unwrap(),
            IfMatch::Versions(vec![Version::new(3), Version::new(5), Version::new(8)])
        );
        let three = if_match(&["\"3\""]).unwrap();
        assert!(three.matches(Version::new(3)));
        assert!(!three.matches(Version::new(4)));
        assert!(three.names_versions());
        assert!(!IfMatch::Absent.names_versions());
        assert!(!IfMatch::Any.names_versions());
    }

    #[test]
    fn weak_and_foreign_tags_never_match() {
        for value in [
            "W/\"3\"",
            "\"abc\"",
            "\"03\"",
            "\"\"",
            "\"99999999999999999999999\"",
        ] {
            let parsed = if_match(&[value]).unwrap();
            assert!(parsed.names_versions(), "{value}");
            assert!(!parsed.matches(Version::new(3)), "{value}");
        }
    }

    #[test]
    fn a_header_that_is_not_an_entity_tag_list_is_400() {
        for value in ["3", "\"3", "\"a\"b\"", "W/3", "\"3\" \"4\""] {
            let e = if_match(&[value]).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{value}");
        }
    }
}
