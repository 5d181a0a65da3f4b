//! The JSON error of the management API.

use std::fmt;

use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::grant::Refused;
use crate::store::StoreError;

/// The body of every management error response:
/// `{"error":"invalid_argument","message":"scopes[3]: scope name ..."}`.
///
/// `error` is a stable code (the table in `docs/management.md`, "Errors");
/// `message` says what is wrong, for people. Neither ever holds key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `invalid_argument`.
    pub error: String,
    /// What is wrong.
    pub message: String,
}

/// What went wrong with a management request; becomes a JSON response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 400: the request is invalid; `message` says why.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// 404: no such key (or one the caller may not see).
    pub(crate) fn key_not_found(id: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("api key {id} not found"),
        )
    }

    /// 404: an unknown custom method such as `:frobnicate`.
    pub(crate) fn unknown_method(action: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "unknown method `:{}`; the custom methods are `:reissue` and `:addCredits`",
                scrub(action)
            ),
        )
    }

    /// 409: `:addCredits` on a key without credits.
    pub(crate) fn no_credits(id: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "failed_precondition",
            format!(
                "api key {id} has no credits to add to; give it credits with PATCH \
                 {{\"credits\": {{\"remaining\": N}}}} first"
            ),
        )
    }

    /// 403: the caller presented a secret a reissue replaced.
    pub(crate) fn replaced_secret() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "this secret was replaced by a reissue: it still authenticates until its grace \
             period ends, but may not manage keys; use the key's new secret",
        )
    }

    /// 412: the request's `If-Match` names a version the key is no longer at.
    pub(crate) fn precondition_failed(id: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition",
            format!(
                "api key {id} is no longer at the version `If-Match` names; read it again \
                 (its ETag) and decide again"
            ),
        )
    }

    /// 409: the key kept changing while this request read, checked and
    /// wrote it; nothing was written.
    pub(crate) fn aborted(id: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "aborted",
            format!("api key {id} was changed concurrently; nothing was written, try again"),
        )
    }

    /// 403: the caller's own key is limited, and `action` is what only an
    /// unlimited caller may do.
    pub(crate) fn limited_caller(action: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "this api key carries rate limits or credits (its own or its service \
                 account's), so it may not {action}: a limited key could otherwise hand out or \
                 gain what it was not given, unless the router allows limited callers"
            ),
        )
    }

    /// 403: the caller has allowed networks, and the key would be usable
    /// beyond them.
    pub(crate) fn networks_beyond_caller() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "this api key may be used only from its allowed networks, so it may give a key \
             only networks inside them (and never none)",
        )
    }

    /// 403: the caller may not manage this service account's keys.
    pub(crate) fn account_denied(account: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "this api key may not manage the keys of service account `{}`",
                scrub(account)
            ),
        )
    }

    /// 403: the caller may not give a key these scopes, or make it unscoped.
    pub(crate) fn grant_denied(refused: &Refused) -> Self {
        let mut message = String::from("this api key may not ");
        if !refused.scopes.is_empty() {
            let names: Vec<String> = refused
                .scopes
                .iter()
                .map(|s| format!("`{}`", scrub(s.as_str())))
                .collect();
            message.push_str(&format!(
                "hand out a key holding {}: a key hands out only scopes it holds itself, and \
                 never the management scope, unless the router grants them",
                names.join(", ")
            ));
        } else {
            message.push_str(
                "hand out an unscoped key: only an unscoped key may, unless the router allows \
                 unscoped keys",
            );
        }
        Self::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    /// 403: the operator marked key `id` read-only for managers, and this
    /// router may not change locked keys.
    pub(crate) fn key_locked(id: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "key_locked",
            format!(
                "api key {id} is locked by the operator: its fields may not be changed through \
                 this router (it may still be deleted or reissued)"
            ),
        )
    }

    /// 403: the request sets or clears `operator_locked`, which this router
    /// may not do.
    pub(crate) fn lock_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "key_locked",
            "operator_locked is reserved to the operator: this router may not lock or unlock keys",
        )
    }

    /// 405 with an `Allow` header.
    pub(crate) fn method_not_allowed(allow: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        );
        e.allow = Some(allow);
        e
    }

    /// 413: the body is over the limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 415: the body is not JSON.
    pub(crate) fn not_json() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON (content-type: application/json)",
        )
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

/// Every store error's answer, in one place: the match is exhaustive, so a
/// new variant is mapped here before it compiles.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidPageToken => Self::invalid("page_token is not valid"),
            StoreError::InvalidPageSize { max } => {
                Self::invalid(format!("page_size must be between 1 and {max}"))
            }
            // Only an import conflicts (no route imports, but a store behind
            // the router may answer so); names the key id, never a hash.
            e @ StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            StoreError::NoCredits { id } => Self::no_credits(id),
            StoreError::KeyLocked { id } => {
                tracing::info!(key_id = %id, "api key management: change of a locked key refused");
                Self::key_locked(id)
            }
            // The handlers retry or answer 412 themselves; one that reaches
            // here lost every retry.
            StoreError::VersionMismatch { id, .. } => Self::aborted(id),
            // Names the key and the field, never the value.
            StoreError::InvalidField { id, error } => Self::invalid(match id {
                Some(id) => format!("key {id}: {error}"),
                None => error.to_string(),
            }),
            // The store's message names the limit, never the account or a key.
            e @ StoreError::KeyLimitReached { .. } => {
                Self::new(StatusCode::CONFLICT, "key_limit_reached", e.to_string())
            }
            StoreError::KeyGen(e) => {
                tracing::error!(error = %e, "api key management: key generation failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "could not generate a key",
                )
            }
            other @ (StoreError::Backend(_) | StoreError::Config(_)) => {
                tracing::error!(error = %other, "api key management: key store failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the key store is unavailable; try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Text echoed from a request into an error message, made safe: anything
/// shaped like key material (a run of key characters starting with an issuer
/// prefix and `_`, or 24 and more such characters) becomes `[REDACTED]`, and
/// the whole is cut to 300 characters. A client that pastes a key into the
/// wrong field must not find it echoed into responses and logs.
pub(crate) fn scrub(text: &str) -> String {
    const MAX: usize = 300;
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len().min(MAX));
    let mut rest = text;
    while let Some(start) = rest.find(is_key_char) {
        out.push_str(&rest[..start]);
        let run = &rest[start..];
        let end = run.find(|c: char| !is_key_char(c)).unwrap_or(run.len());
        let token = &run[..end];
        if looks_like_key_material(token) {
            out.push_str("[REDACTED]");
        } else {
            out.push_str(token);
        }
        rest = &run[end..];
    }
    out.push_str(rest);
    if out.chars().count() > MAX {
        let cut: String = out.chars().take(MAX).collect();
        return format!("{cut}…");
    }
    out
}

fn looks_like_key_material(token: &str) -> bool {
    if token.len() >= 24 {
        return true;
    }
    // `<prefix>_<something>`: a prefix is 1-16 lowercase letters and digits.
    match token.split_once('_') {
        Some((prefix, rest)) => {
            !prefix.is_empty()
                && prefix.len() <= crate::key::MAX_PREFIX_LEN
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && rest.len() >= 8
                && rest
                    .bytes()
                    .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyFormat, KeyId};
    use crate::store::rules::{Field, FieldError, Problem};
    use crate::store::{ConfigError, ConflictKind};

    #[test]
    fn scrub_hides_keys_and_key_like_runs() {
        let key = KeyFormat::default().generate().unwrap();
        let text = format!(
            "invalid type: string \"{}\", expected u64",
            key.expose_secret()
        );
        let scrubbed = scrub(&text);
        assert!(!scrubbed.contains(key.expose_secret()));
        assert!(!scrubbed.contains(&key.expose_secret()[4..]));
        assert_eq!(
            scrubbed,
            "invalid type: string \"[REDACTED]\", expected u64"
        );
        // A key cut short is still hidden.
        let partial = &key.expose_secret()[..30];
        assert!(!scrub(partial).contains(partial));
        // Ordinary messages are unchanged.
        for plain in [
            "unknown field `service_acount_id`, expected one of `service_account_id`, `description`",
            "scopes[3]: scope name is empty",
            "invalid type: integer `5`, expected a string",
            "sa_translator",
        ] {
            assert_eq!(scrub(plain), plain);
        }
    }

    #[test]
    fn scrub_bounds_the_length() {
        let long = "a ".repeat(1000);
        assert!(scrub(&long).chars().count() <= 301);
    }

    #[test]
    fn store_errors_map_to_statuses_without_details() {
        let e = ApiError::from(StoreError::backend("connection refused to 10.0.0.1"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.message().contains("10.0.0.1"));
        let e = ApiError::from(StoreError::invalid_field(
            None,
            FieldError::new(Field::ExpiresAt, Problem::NotInFuture),
        ));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.message(), "expires_at: must be in the future");
        let e = ApiError::from(StoreError::InvalidPageToken);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_argument");
        assert_eq!(e.message(), "page_token is not valid");
        let e = ApiError::from(StoreError::invalid_page_size(200));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.message(), "page_size must be between 1 and 200");
        let id = KeyId::random().unwrap();
        for kind in [
            ConflictKind::IdTaken,
            ConflictKind::Revoked,
            ConflictKind::IdOrHashTaken,
        ] {
            let e = ApiError::from(StoreError::conflict(id, kind));
            assert_eq!(e.status(), StatusCode::CONFLICT, "{kind:?}");
            assert_eq!(e.code, "already_exists");
            assert!(
                e.message().starts_with(&format!("key {id} ")),
                "{}",
                e.message()
            );
        }
        let e = ApiError::from(StoreError::from(ConfigError::EmptyPath));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(StoreError::KeyLimitReached { limit: 7 });
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.code, "key_limit_reached");
        assert!(e.message().contains("7 keys"), "{}", e.message());
    }
}
