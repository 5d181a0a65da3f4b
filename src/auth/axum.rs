//! `Caller` as an axum extractor.

use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::cache::Caller;

/// The route has no [`ApiKeyLayer`](crate::ApiKeyLayer) in front of it, so
/// there is no [`Caller`]: a server misconfiguration, answered with 500.
#[derive(Debug, Clone, Copy)]
pub struct MissingCaller;

impl fmt::Display for MissingCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no authenticated Caller in request extensions: put the route behind \
             an ApiKeyLayer (for example `.route_layer(auth.any_valid_key())`)",
        )
    }
}

impl std::error::Error for MissingCaller {}

impl IntoResponse for MissingCaller {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = MissingCaller;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(MissingCaller)
    }
}

/// `Option<Caller>`: `None` when the route has no layer.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}
