//! One response, read whole, as every test sees it: from the in-process
//! router ([`super::http::send`]) or over real TCP ([`super::tcp::Client`]).
//! Its `Debug` never prints anything that looks like key material.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use tower_api_key::Reason;
use tower_api_key::Rejection;

/// The prefix of every key the default format issues; used to spot key
/// material in anything a test might print.
const KEY_PREFIX: &str = "tak_";

/// A response, read to the end.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The rejection in the response's extensions; always `None` over the
    /// wire (extensions do not cross it).
    pub rejection: Option<Rejection>,
}

/// Text for failure messages, with anything that looks like a key hidden.
fn redacted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains(KEY_PREFIX) {
        format!(
            "<{} bytes that look like key material, not shown>",
            bytes.len()
        )
    } else {
        text.into_owned()
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), redacted(value.as_bytes())))
            .collect();
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body", &redacted(&self.body))
            .field("reason", &self.rejection.as_ref().map(Rejection::reason))
            .finish()
    }
}

impl Reply {
    /// The reason of the rejection in the response's extensions.
    pub fn reason(&self) -> Option<Reason> {
        self.rejection.as_ref().map(Rejection::reason)
    }

    /// A header as text ("" when missing).
    pub fn header(&self, name: impl http::header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<not visible ASCII>"))
            .unwrap_or("")
    }

    /// Whether `secret` appears anywhere in headers or body.
    pub fn contains(&self, secret: &str) -> bool {
        let needle = secret.as_bytes();
        let within = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        within(&self.body) || self.headers.values().any(|v| within(v.as_bytes()))
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The JSON error code of an error response, checking its shape.
    pub fn error(&self) -> String {
        assert_eq!(self.header("content-type"), "application/json", "{self:?}");
        let body = self.json();
        let code = body["error"].as_str().expect("an error code").to_owned();
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        code
    }

    /// The `message` of a JSON error response ("" when missing).
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
