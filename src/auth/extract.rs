//! Finding the one credential in a request, before anything is hashed.

use http::header::{HeaderMap, HeaderName, AUTHORIZATION};

use super::rejection::Reason;

/// The scheme of `Authorization: Api-Key <key>`, matched case-insensitively.
const SCHEME: &[u8] = b"api-key";

/// Longest header value looked at; a key is at most 72 characters, so anything
/// longer is garbage and is refused before parsing or hashing.
pub(crate) const MAX_CREDENTIAL_LEN: usize = 256;

/// The raw key bytes of the request's only credential.
///
/// `Authorization` must hold `Api-Key <key>`; `extra`, when configured, holds
/// the bare key. More than one credential header (or both kinds) is refused
/// rather than picking one.
pub(crate) fn credential<'h>(
    headers: &'h HeaderMap,
    extra: Option<&HeaderName>,
) -> Result<&'h [u8], Reason> {
    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    let from_authorization = authorization.next();
    if authorization.next().is_some() {
        return Err(Reason::DuplicateCredentials);
    }
    let from_extra = match extra {
        None => None,
        Some(name) => {
            let mut values = headers.get_all(name).iter();
            let first = values.next();
            if values.next().is_some() {
                return Err(Reason::DuplicateCredentials);
            }
            first
        }
    };
    match (from_authorization, from_extra) {
        (None, None) => Err(Reason::Missing),
        (Some(_), Some(_)) => Err(Reason::DuplicateCredentials),
        (Some(value), None) => {
            let value = value.as_bytes();
            if value.len() > MAX_CREDENTIAL_LEN {
                return Err(Reason::Malformed);
            }
            api_key_param(value)
        }
        (None, Some(value)) => {
            let value = value.as_bytes().trim_ascii();
            if value.len() > MAX_CREDENTIAL_LEN {
                return Err(Reason::Malformed);
            }
            Ok(value)
        }
    }
}

/// `Api-Key <key>` to `<key>`; any other scheme is refused.
fn api_key_param(value: &[u8]) -> Result<&[u8], Reason> {
    let value = value.trim_ascii();
    let split = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(Reason::WrongScheme);
    }
    let key = rest.trim_ascii();
    if key.is_empty() {
        return Err(Reason::Malformed);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn scheme_is_case_insensitive_and_key_is_trimmed() {
        for v in [
            &b"Api-Key abc"[..],
            b"api-key abc",
            b"API-KEY   abc",
            b"Api-Key\tabc ",
        ] {
            assert_eq!(credential(&headers(&[v]), None), Ok(&b"abc"[..]));
        }
    }

    #[test]
    fn other_schemes_and_empty_keys_are_refused() {
        assert_eq!(
            credential(&headers(&[b"Bearer abc"]), None),
            Err(Reason::WrongScheme)
        );
        assert_eq!(
            credential(&headers(&[b"Api-Keyabc"]), None),
            Err(Reason::WrongScheme)
        );
        assert_eq!(
            credential(&headers(&[b"Api-Key"]), None),
            Err(Reason::Malformed)
        );
        assert_eq!(
            credential(&headers(&[b"Api-Key   "]), None),
            Err(Reason::Malformed)
        );
        assert_eq!(credential(&headers(&[]), None), Err(Reason::Missing));
    }

    #[test]
    fn two_credentials_are_refused() {
        assert_eq!(
            credential(&headers(&[b"Api-Key a", b"Api-Key a"]), None),
            Err(Reason::DuplicateCredentials)
        );
        let extra = HeaderName::from_static("x-api-key");
        let mut map = headers(&[b"Api-Key a"]);
        map.insert(&extra, HeaderValue::from_static("a"));
        assert_eq!(
            credential(&map, Some(&extra)),
            Err(Reason::DuplicateCredentials)
        );
        map.remove(AUTHORIZATION);
        assert_eq!(credential(&map, Some(&extra)), Ok(&b"a"[..]));
        // Without the option the extra header is not read at all.
        assert_eq!(credential(&map, None), Err(Reason::Missing));
    }
}
