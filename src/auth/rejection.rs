//! Rejection responses: what a refused request gets back.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use super::grpc_details;
use super::rate_headers::{ceil_secs, RateHeaders};
use super::LOG_TARGET;
use crate::key::KeyId;
use crate::scope::ScopeSet;
use crate::telemetry;

/// Why a request was refused. Finer than the response, which does not tell
/// the 401 reasons apart; use it for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No credential at all.
    Missing,
    /// More than one credential header.
    DuplicateCredentials,
    /// An `Authorization` header with another scheme.
    WrongScheme,
    /// Something that cannot be a key: bad length, prefix, alphabet or checksum.
    Malformed,
    /// A well-formed key the verifier does not know (or revoked, or a wrong secret).
    Unknown,
    /// The key expired.
    Expired,
    /// The route requires scopes the key does not hold.
    InsufficientScope,
    /// The route declares no scopes and the key is scoped.
    ScopedKeyOnUnscopedRoute,
    /// Too many failed attempts from this client.
    TooManyAttempts,
    /// The key (or its service account) is over a rate limit.
    RateLimited,
    /// The key has no credits left.
    QuotaExhausted,
    /// The verifier failed or timed out.
    Unavailable,
    /// The verifier panicked.
    VerifierPanicked,
    /// The key carries credits and the authenticator has no
    /// [`CreditLedger`](crate::CreditLedger) to count them: a configuration
    /// fault (see [`AuthenticatorBuilder`](crate::AuthenticatorBuilder#credits)).
    NoCreditLedger,
    /// The key is valid, but its secret was reported leaked and is
    /// quarantined ([`LeakAction::Quarantine`](crate::store::LeakAction)):
    /// refused on every route until the key is reissued.
    KeyCompromised,
    /// The key is valid, but carries [allowed networks](crate::Networks)
    /// and the client's address is in none of them (or cannot be told).
    NetworkNotAllowed,
}

impl Reason {
    /// The HTTP status this reason maps to.
    pub fn status(self) -> StatusCode {
        match self {
            Self::DuplicateCredentials => StatusCode::BAD_REQUEST,
            Self::Missing | Self::WrongScheme | Self::Malformed | Self::Unknown | Self::Expired => {
                StatusCode::UNAUTHORIZED
            }
            Self::InsufficientScope
            | Self::ScopedKeyOnUnscopedRoute
            | Self::KeyCompromised
            | Self::NetworkNotAllowed => StatusCode::FORBIDDEN,
            Self::TooManyAttempts | Self::RateLimited | Self::QuotaExhausted => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::VerifierPanicked | Self::NoCreditLedger => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code this reason maps to.
    pub fn grpc_code(self) -> u8 {
        match self.status() {
            StatusCode::FORBIDDEN => grpc_code::PERMISSION_DENIED,
            StatusCode::TOO_MANY_REQUESTS => grpc_code::RESOURCE_EXHAUSTED,
            StatusCode::SERVICE_UNAVAILABLE => grpc_code::UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR => grpc_code::INTERNAL,
            _ => grpc_code::UNAUTHENTICATED,
        }
    }

    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::DuplicateCredentials => "duplicate_credentials",
            Self::WrongScheme => "wrong_scheme",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::InsufficientScope => "insufficient_scope",
            Self::ScopedKeyOnUnscopedRoute => "scoped_key_on_unscoped_route",
            Self::TooManyAttempts => "too_many_attempts",
            Self::RateLimited => "rate_limited",
            Self::QuotaExhausted => "quota_exhausted",
            Self::Unavailable => "unavailable",
            Self::VerifierPanicked => "verifier_panicked",
            Self::NoCreditLedger => "no_credit_ledger",
            Self::KeyCompromised => "key_compromised",
            Self::NetworkNotAllowed => "network_not_allowed",
        }
    }

    /// Whether this counts as a failed authentication attempt: a credential
    /// was presented and it did not authenticate (two at once included).
    pub fn is_failed_attempt(self) -> bool {
        matches!(
            self,
            Self::DuplicateCredentials
                | Self::WrongScheme
                | Self::Malformed
                | Self::Unknown
                | Self::Expired
        )
    }
}

/// The gRPC status codes a rejection uses, by their names in
/// `google.rpc.Code` (and tonic's `Code`).
mod grpc_code {
    pub(super) const PERMISSION_DENIED: u8 = 7;
    pub(super) const RESOURCE_EXHAUSTED: u8 = 8;
    pub(super) const INTERNAL: u8 = 13;
    pub(super) const UNAVAILABLE: u8 = 14;
    pub(super) const UNAUTHENTICATED: u8 = 16;
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: the reason, the key id when one was parsed, and what
/// the route required. Inserted into the rejection response's extensions.
///
/// What a refused request gets back:
///
/// | outcome | HTTP | gRPC (`content-type: application/grpc*`) |
/// |---|---|---|
/// | no key, malformed, unknown, revoked or expired key | 401, one identical body | 200 trailers-only, `grpc-status: 16` UNAUTHENTICATED |
/// | two credentials in one request | 400 | 16 UNAUTHENTICATED |
/// | valid key, route scope not satisfied | 403 `insufficient_scope` | 7 PERMISSION_DENIED |
/// | valid key whose secret is quarantined after a leak report | 403 `key_compromised` | 7 PERMISSION_DENIED |
/// | valid key used from outside its allowed networks | 403 `network_not_allowed` | 7 PERMISSION_DENIED |
/// | too many failed attempts | 429 `too_many_attempts` + `Retry-After` | 8 RESOURCE_EXHAUSTED |
/// | key or account over a rate limit | 429 `rate_limited` + `Retry-After`, `RateLimit-Policy`, `RateLimit` | 8 RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` |
/// | key out of credits | 429 `quota_exhausted` (+ `Retry-After` when a refill is scheduled) | 8 RESOURCE_EXHAUSTED (with `RetryInfo` when a refill is scheduled) |
/// | verifier failed or timed out | 503 + `Retry-After` | 14 UNAVAILABLE |
/// | verifier panicked | 500 | 13 INTERNAL |
/// | key carries credits, authenticator has no credit ledger | 500 | 13 INTERNAL |
///
/// Every rejection carries `Cache-Control: no-store`; 401 and 403 carry
/// `WWW-Authenticate: Api-Key realm="..."` (403 adds `error="insufficient_scope"`
/// and the accepted scopes). The [`Rejection`] itself rides in the response's
/// extensions, for logging and tests; the bodies never tell the 401 reasons apart.
///
/// HTTP bodies are short JSON by default; replace them with a
/// [`RejectionResponder`], for example a closure:
///
/// ```
/// use bytes::Bytes;
/// use http::{Response, header};
/// use tower_api_key::Rejection;
/// use tower_api_key::Authenticator;
/// use tower_api_key::MemoryStore;
///
/// let auth = Authenticator::builder(MemoryStore::new())
///     .rejection_responder(|r: &Rejection| {
///         Response::builder()
///             .status(r.status())
///             .header(header::CONTENT_TYPE, "text/plain")
///             .body(Bytes::from_static(b"no entry"))
///             .unwrap()
///     })
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct Rejection {
    pub(crate) reason: Reason,
    pub(crate) key_id: Option<KeyId>,
    pub(crate) required: Option<ScopeSet>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) rate_limit: Option<Box<RateHeaders>>,
    pub(crate) client: Option<IpAddr>,
}

// One constructor per kind of refusal; the fields are only read after.
impl Rejection {
    /// A refusal that names no key: no usable credential, or a 429 of the
    /// failed-attempt limiter (see [`Rejection::too_many_attempts`]).
    pub(crate) fn new(reason: Reason) -> Self {
        Self {
            reason,
            key_id: None,
            required: None,
            retry_after: None,
            rate_limit: None,
            client: None,
        }
    }

    /// A refusal of the parsed key `key_id`, with nothing more to say:
    /// unknown, expired, a scoped key on an unscoped route, a panicking
    /// verifier.
    pub(crate) fn of_key(reason: Reason, key_id: KeyId) -> Self {
        Self {
            key_id: Some(key_id),
            ..Self::new(reason)
        }
    }

    /// A valid key without any of the route's scopes, `required`.
    pub(crate) fn insufficient_scope(key_id: KeyId, required: Option<ScopeSet>) -> Self {
        Self {
            required,
            ..Self::of_key(Reason::InsufficientScope, key_id)
        }
    }

    /// A valid key with allowed networks used from `client`, which is in
    /// none of them (`None`: the address could not be told).
    pub(crate) fn network_not_allowed(key_id: KeyId, client: Option<IpAddr>) -> Self {
        Self {
            client,
            ..Self::of_key(Reason::NetworkNotAllowed, key_id)
        }
    }

    /// The verifier could not answer for `key_id` (failed, timed out, or the
    /// wait for an attempt outlasted its timeout): retry in a second.
    pub(crate) fn unavailable(key_id: KeyId) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::of_key(Reason::Unavailable, key_id)
        }
    }

    /// A client with no failed attempt left. It names no key: the answer is
    /// the same whatever the credential was.
    pub(crate) fn too_many_attempts(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(Reason::TooManyAttempts)
        }
    }

    /// `key_id` (or its account) over a rate limit: retry after
    /// `retry_after` (`None`: the cost exceeds the burst, no retry helps),
    /// with the `RateLimit-Policy` and `RateLimit` headers when known.
    pub(crate) fn rate_limited(
        key_id: KeyId,
        retry_after: Option<Duration>,
        headers: Option<Box<RateHeaders>>,
    ) -> Self {
        Self {
            retry_after,
            rate_limit: headers,
            ..Self::of_key(Reason::RateLimited, key_id)
        }
    }

    /// `key_id` out of credits: retry after `retry_after` when known.
    pub(crate) fn no_credits(key_id: KeyId, retry_after: Option<Duration>) -> Self {
        Self {
            retry_after,
            ..Self::of_key(Reason::QuotaExhausted, key_id)
        }
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.reason.status()
    }

    /// The presented key's public id, when the key parsed.
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id
    }

    /// The scopes the route accepts, for insufficient-scope rejections.
    pub fn required_scopes(&self) -> Option<&ScopeSet> {
        self.required.as_ref()
    }

    /// The client address refused, for `network_not_allowed` rejections
    /// (`None` there: it could not be told).
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client
    }

    /// When to retry, for rate limiting, a scheduled refill of credits and
    /// unavailability.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api key rejected: {}", self.reason)?;
        if let Some(id) = self.key_id {
            write!(f, " (key id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Builds the HTTP response for a [`Rejection`]. The middleware then adds
/// `Cache-Control: no-store` and, for 401 and 403, `WWW-Authenticate` when the
/// response lacks them. gRPC requests always get gRPC statuses instead.
pub trait RejectionResponder: Send + Sync + 'static {
    /// The response for `rejection`.
    fn respond(&self, rejection: &Rejection) -> Response<Bytes>;
}

impl<F> RejectionResponder for F
where
    F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn respond(&self, rejection: &Rejection) -> Response<Bytes> {
        self(rejection)
    }
}

/// The default: short JSON bodies, one per status.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonRejection;

impl RejectionResponder for JsonRejection {
    fn respond(&self, rejection: &Rejection) -> Response<Bytes> {
        let body: &'static [u8] = match rejection.status() {
            StatusCode::BAD_REQUEST => {
                br#"{"error":"invalid_request","message":"send exactly one API key"}"#
            }
            StatusCode::UNAUTHORIZED => {
                br#"{"error":"unauthenticated","message":"a valid API key is required"}"#
            }
            StatusCode::FORBIDDEN if rejection.reason == Reason::KeyCompromised => {
                br#"{"error":"key_compromised","message":"the API key was reported leaked and is quarantined; reissue it"}"#
            }
            StatusCode::FORBIDDEN if rejection.reason == Reason::NetworkNotAllowed => {
                br#"{"error":"network_not_allowed","message":"the API key may not be used from this network"}"#
            }
            StatusCode::FORBIDDEN => {
                br#"{"error":"insufficient_scope","message":"the API key is not allowed to access this resource"}"#
            }
            StatusCode::TOO_MANY_REQUESTS => match rejection.reason {
                Reason::RateLimited => {
                    br#"{"error":"rate_limited","message":"the API key is over its rate limit; retry later"}"#
                }
                Reason::QuotaExhausted => {
                    br#"{"error":"quota_exhausted","message":"the API key has no credits left"}"#
                }
                _ => {
                    br#"{"error":"too_many_attempts","message":"too many failed authentication attempts; retry later"}"#
                }
            },
            StatusCode::SERVICE_UNAVAILABLE => {
                br#"{"error":"unavailable","message":"API key verification is temporarily unavailable; retry later"}"#
            }
            _ => br#"{"error":"internal","message":"API key verification failed"}"#,
        };
        let mut response = Response::new(Bytes::from_static(body));
        *response.status_mut() = rejection.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// `Api-Key realm="<realm>"`, plus the scope error for 403.
pub(crate) fn www_authenticate(realm: &str, rejection: &Rejection) -> Option<HeaderValue> {
    let mut value = format!("Api-Key realm=\"{realm}\"");
    match rejection.status() {
        StatusCode::UNAUTHORIZED => {}
        StatusCode::FORBIDDEN if rejection.reason == Reason::KeyCompromised => {
            value.push_str(", error=\"key_compromised\"");
        }
        StatusCode::FORBIDDEN if rejection.reason == Reason::NetworkNotAllowed => {
            value.push_str(", error=\"network_not_allowed\"");
        }
        StatusCode::FORBIDDEN => {
            value.push_str(", error=\"insufficient_scope\"");
            if let Some(required) = &rejection.required {
                value.push_str(", scope=\"");
                for (i, scope) in required.iter().enumerate() {
                    if i > 0 {
                        value.push(' ');
                    }
                    value.push_str(scope.as_str());
                }
                value.push('"');
            }
        }
        _ => return None,
    }
    // Realm and scope names are validated visible ASCII without quotes.
    HeaderValue::from_str(&value).ok()
}

/// The response to a refused request, HTTP or gRPC after the request's
/// `content-type`; logs the rejection and counts it. Every rejection of the
/// middleware ends here, so each is logged and counted exactly once.
pub(crate) fn respond(
    rejection: Rejection,
    request: &http::HeaderMap,
    responder: &dyn RejectionResponder,
    realm: &str,
) -> Response<Bytes> {
    telemetry::outcome(rejection.reason.as_str());
    if rejection.reason == Reason::NetworkNotAllowed {
        // Worth more than debug: a key used from elsewhere may be a leaked
        // one. The address, never the secret.
        let client = rejection
            .client
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if let Some(id) = rejection.key_id {
            tracing::info!(target: LOG_TARGET, reason = %rejection.reason, key_id = %id, %client, "api key used from outside its allowed networks");
        }
    } else {
        match rejection.key_id {
            Some(id) => {
                tracing::debug!(target: LOG_TARGET, reason = %rejection.reason, key_id = %id, "api key rejected")
            }
            None => {
                tracing::debug!(target: LOG_TARGET, reason = %rejection.reason, "api key rejected")
            }
        }
    }
    if is_grpc(request) {
        grpc_response(rejection)
    } else {
        http_response(responder, realm, rejection)
    }
}

/// The HTTP response: the responder's, completed with the mandatory headers.
fn http_response(
    responder: &dyn RejectionResponder,
    realm: &str,
    rejection: Rejection,
) -> Response<Bytes> {
    let mut response = responder.respond(&rejection);
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !headers.contains_key(WWW_AUTHENTICATE) {
        if let Some(value) = www_authenticate(realm, &rejection) {
            headers.insert(WWW_AUTHENTICATE, value);
        }
    }
    if let Some(after) = rejection.retry_after {
        if !headers.contains_key(RETRY_AFTER) {
            // Whole seconds, rounded up: retrying early would only fail again.
            let nanos = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(nanos).max(1)));
        }
    }
    if let Some(rate) = &rejection.rate_limit {
        rate.apply(headers);
    }
    response.extensions_mut().insert(rejection);
    response
}

/// Whether the request is gRPC: `content-type: application/grpc` or
/// `application/grpc+<codec>` (parameters allowed; the media type compared
/// case-insensitively). gRPC-Web (`application/grpc-web*`) is not gRPC here:
/// it gets the HTTP responses.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers
        .get(CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.len() >= GRPC.len() && v[..GRPC.len()].eq_ignore_ascii_case(GRPC))
        .is_some_and(|v| matches!(v.get(GRPC.len()), None | Some(b'+' | b';' | b' ' | b'\t')))
}

/// The `grpc-message` of a rejection. Never names the key, nor which of the
/// unauthenticated cases it was.
fn grpc_message(reason: Reason) -> &'static str {
    match reason {
        Reason::RateLimited => return "the API key is over its rate limit; retry later",
        Reason::QuotaExhausted => return "the API key has no credits left",
        Reason::KeyCompromised => {
            return "the API key was reported leaked and is quarantined; reissue it"
        }
        Reason::NetworkNotAllowed => return "the API key may not be used from this network",
        _ => {}
    }
    match reason.grpc_code() {
        grpc_code::PERMISSION_DENIED => "the API key is not allowed to call this method",
        grpc_code::RESOURCE_EXHAUSTED => "too many failed authentication attempts; retry later",
        grpc_code::UNAVAILABLE => "API key verification is temporarily unavailable; retry later",
        grpc_code::INTERNAL => "API key verification failed",
        _ => "a valid API key is required",
    }
}

/// Percent-encodes a `grpc-message` exactly as tonic does (controls,
/// non-ASCII bytes, space, the backtick and `" # % < > ? { }`), so the header
/// is byte for byte what `tonic::Status::into_http` writes.
fn grpc_percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len() * 2);
    for b in message.bytes() {
        if !(0x20..0x7f).contains(&b) || b" \"#%<>`?{}".contains(&b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// A gRPC trailers-only response, as `tonic::Status::into_http` makes it:
/// HTTP 200, `content-type: application/grpc`, `grpc-status` and a
/// percent-encoded `grpc-message` in the headers, and an empty body (so the
/// headers frame ends the stream). Adds `Cache-Control: no-store`.
fn grpc_response(rejection: Rejection) -> Response<Bytes> {
    let code = rejection.reason.grpc_code();
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(message) = HeaderValue::try_from(grpc_percent_encode(grpc_message(rejection.reason)))
    {
        headers.insert("grpc-message", message);
    }
    // A limit's retry delay, where gRPC clients look for it: a
    // `google.rpc.RetryInfo` in the status details.
    if matches!(
        rejection.reason,
        Reason::RateLimited | Reason::QuotaExhausted
    ) {
        if let Some(after) = rejection.retry_after {
            let details =
                grpc_details::status_with_retry_info(code, grpc_message(rejection.reason), after);
            if let Ok(value) = HeaderValue::try_from(grpc_details::base64(&details)) {
                headers.insert("grpc-status-details-bin", value);
            }
        }
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(rejection);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised() {
        let mut headers = http::HeaderMap::new();
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc+json; charset=utf-8", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/grpcx", false),
            ("application/grp", false),
            ("application/json", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&headers), grpc, "{ct}");
        }
        headers.clear();
        assert!(!is_grpc(&headers));
    }

    #[test]
    fn every_unauthenticated_reason_has_the_same_body() {
        let bodies: Vec<_> = [
            Reason::Missing,
            Reason::WrongScheme,
            Reason::Malformed,
            Reason::Unknown,
            Reason::Expired,
        ]
        .into_iter()
        .map(|r| http_response(&JsonRejection, "api", Rejection::new(r)))
        .map(|resp| (resp.status(), resp.headers().clone(), resp.into_body()))
        .collect();
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(bodies[0].0, StatusCode::UNAUTHORIZED);
    }

    /// The trailers-only response is what tonic's own `Status::into_http`
    /// makes for the same code and message (plus `Cache-Control`).
    #[test]
    fn grpc_rejections_match_tonic_status_into_http() {
        for (reason, code) in [
            (Reason::Missing, tonic::Code::Unauthenticated),
            (Reason::DuplicateCredentials, tonic::Code::Unauthenticated),
            (Reason::WrongScheme, tonic::Code::Unauthenticated),
            (Reason::Malformed, tonic::Code::Unauthenticated),
            (Reason::Unknown, tonic::Code::Unauthenticated),
            (Reason::Expired, tonic::Code::Unauthenticated),
            (Reason::InsufficientScope, tonic::Code::PermissionDenied),
            (
                Reason::ScopedKeyOnUnscopedRoute,
                tonic::Code::PermissionDenied,
            ),
            (Reason::TooManyAttempts, tonic::Code::ResourceExhausted),
            (Reason::Unavailable, tonic::Code::Unavailable),
            (Reason::VerifierPanicked, tonic::Code::Internal),
            (Reason::NoCreditLedger, tonic::Code::Internal),
            (Reason::KeyCompromised, tonic::Code::PermissionDenied),
            (Reason::NetworkNotAllowed, tonic::Code::PermissionDenied),
        ] {
            assert_eq!(i32::from(reason.grpc_code()), code as i32, "{reason}");
            let ours = grpc_response(Rejection::new(reason));
            let theirs: Response<()> = tonic::Status::new(code, grpc_message(reason)).into_http();
            assert_eq!(ours.status(), theirs.status(), "{reason}");
            assert_eq!(ours.status(), StatusCode::OK);
            assert!(ours.body().is_empty());
            let mut headers = ours.headers().clone();
            assert_eq!(headers.remove(CACHE_CONTROL).unwrap(), "no-store");
            assert_eq!(&headers, theirs.headers(), "{reason}");
            // And tonic reads it back as the same status.
            let read = tonic::Status::from_header_map(ours.headers()).unwrap();
            assert_eq!(read.code(), code);
            assert_eq!(read.message(), grpc_message(reason));
        }
    }

    #[test]
    fn grpc_messages_are_encoded_like_tonic() {
        assert_eq!(grpc_percent_encode("a b%c\n\"é"), "a%20b%25c%0A%22%C3%A9");
        assert_eq!(grpc_percent_encode("plain;text.-_"), "plain;text.-_");
    }
}
