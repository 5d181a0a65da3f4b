//! Where the routes and their description come from: one table ([`api`])
//! routes the requests and makes the OpenAPI document. Each handler's
//! `#[utoipa::path]` says its path, method, parameters, bodies and answers,
//! and the JSON types' `ToSchema` derives give the schemas, so neither the
//! routes nor the fields can drift from the document.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::OriginalUri;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, Required};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::routes::{self, ApiState};

/// The name of the security scheme every operation requires (also in
/// `Base`'s `security`, which takes only a literal).
const SCHEME: &str = "api_key";

/// What the document holds besides the operations: its title, the security
/// scheme and the tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tower-api-key management API",
        description = "Create, read, list, change, reissue and delete API keys, and set the rate \
            limits of service accounts. Every operation requires an API key holding the \
            router's management scope (`apikeys.manage` by default), sent as \
            `Authorization: Api-Key <key>`. Paths are relative to where the router is mounted; \
            the document served at `{prefix}/openapi.json` names that prefix as its server. \
            Errors are JSON `ErrorBody` objects."
    ),
    modifiers(&ApiKeyScheme),
    security(("api_key" = [])),
    tags(
        (name = "keys", description = "API keys: never their secret, but in the answers of a create and a reissue."),
        (name = "accounts", description = "Settings of a service account, shared by all its keys."),
    )
)]
struct Base;

/// The custom methods: documented at their own paths (`/keys/{id}:reissue`,
/// `/keys/{id}:addCredits`), routed through [`routes::custom`] on
/// `/keys/{id}` (axum matches no suffix within a path segment).
#[derive(OpenApi)]
#[openapi(paths(routes::reissue, routes::add_credits))]
struct CustomMethods;

/// `Authorization: Api-Key <key>`.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Api-Key <key>`: a key holding the router's management scope.",
            ))),
        );
    }
}

/// The answers every route can give, from the authentication layer in front
/// of all of them or from every handler: status, description, whether it
/// carries `Retry-After`.
const EVERY_ROUTE: [(u16, &str, bool); 5] = [
    (
        400,
        "`invalid_argument`: a field, the path or the query is invalid (the message says \
         which); or `invalid_request`: the request sent more than one API key.",
        false,
    ),
    (401, "`unauthenticated`: no valid API key.", false),
    (
        403,
        "`insufficient_scope` (the key lacks the management scope), `key_compromised` (it was \
         reported leaked and is quarantined), or `permission_denied` (the caller may not do \
         this to this key or account).",
        false,
    ),
    (
        429,
        "`rate_limited` or `quota_exhausted` (the caller's key is over its limits), or \
         `too_many_attempts` (too many failed authentications from this client).",
        true,
    ),
    (
        503,
        "`unavailable`: the key store cannot be reached; nothing was written.",
        true,
    ),
];

/// Adds [`EVERY_ROUTE`] to each operation that does not document the status
/// itself.
fn every_route_answers(doc: &mut Document) {
    for item in doc.paths.paths.values_mut() {
        for operation in operations(item) {
            for (status, description, retry_after) in EVERY_ROUTE {
                let content = ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                    .build();
                let mut response = ResponseBuilder::new()
                    .description(description)
                    .content("application/json", content);
                if retry_after {
                    let mut header = Header::default();
                    header.description = Some("Seconds to wait before retrying.".to_owned());
                    response = response.header("Retry-After", header);
                }
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(response.build()));
            }
        }
    }
}

/// Every operation of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The routes of the API and their document, from one table: what
/// [`ManagementApiBuilder::build`](super::ManagementApiBuilder::build) serves
/// (behind the authentication layer, which answers [`EVERY_ROUTE`]) and
/// [`openapi`](super::openapi) returns.
pub(super) fn api() -> OpenApiRouter<ApiState> {
    let mut api = OpenApiRouter::with_openapi(Base::openapi())
        .routes(routes!(routes::create, routes::list))
        .routes(routes!(routes::get, routes::update, routes::delete))
        .routes(routes!(
            routes::get_account_limits,
            routes::put_account_limits
        ))
        .route("/keys/{id}", post(routes::custom));
    let doc = api.get_openapi_mut();
    doc.merge(CustomMethods::openapi());
    every_route_answers(doc);
    // A reissue takes an empty body as `{}` (an `Option` in the handler's
    // attribute would document a JSON `null`, which is refused).
    if let Some(body) = doc
        .paths
        .paths
        .get_mut("/keys/{id}:reissue")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut())
    {
        body.required = Some(Required::False);
    }
    api
}

/// The handler of `GET {prefix}/openapi.json`: the document, naming the
/// prefix the router is mounted under as its server (none at the root, so
/// that it is then [`openapi`](super::openapi) exactly).
pub(super) fn serve(doc: Document) -> impl Fn(OriginalUri) -> std::future::Ready<Response> + Clone {
    let doc = Arc::new(doc);
    move |OriginalUri(uri): OriginalUri| {
        let prefix = uri.path().strip_suffix("/openapi.json").unwrap_or("");
        let json = if prefix.is_empty() {
            doc.to_pretty_json()
        } else {
            let mut doc = Document::clone(&doc);
            doc.servers = Some(vec![Server::new(prefix)]);
            doc.to_pretty_json()
        };
        std::future::ready(match json {
            Ok(json) => {
                let mut response = Bytes::from(json).into_response();
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(e) => {
                tracing::error!(error = %e, "api key management: the OpenAPI document did not serialize");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        })
    }
}
