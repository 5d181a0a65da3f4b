//! The `RateLimit-Policy` and `RateLimit` response headers of
//! draft-ietf-httpapi-ratelimit-headers: which limits apply to the request,
//! and where the tightest of them stands.
//!
//! ```text
//! RateLimit-Policy: "key";q=5;w=1, "account";q=1000;w=3600
//! RateLimit: "key";r=3;t=1
//! ```
//! `q` is the limit per window of `w` seconds; `r` is what the tightest
//! limit still admits now; `t` is the seconds until it is full again (on a
//! refusal: until the next request would be admitted).

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// `RateLimit-Policy`.
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The two header values, ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    pub(crate) policy: HeaderValue,
    pub(crate) state: HeaderValue,
}

impl RateHeaders {
    /// Adds them, replacing any the response had.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        headers.insert(RATELIMIT.clone(), self.state.clone());
    }
}

/// Whole seconds, rounded up, at least 1 when `ns` is not zero.
pub(crate) fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}
