//! The handlers.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, LOCATION};
use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{scrub, ApiError, ErrorBody};
use super::etag::{etag, IfMatch};
use super::grant::{Change, Grants, Target};
use super::resource::{
    self, AccountRateLimits, AccountRateLimitsRequest, AddCreditsRequest, CreateKeyRequest,
    KeyList, KeyResource, KeyWithSecret, ListQuery, ReissueKeyRequest, UpdateKeyRequest,
};
use super::{AccountAccess, MAX_PAGE_BYTES};
use crate::cache::Caller;
use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::store::{KeyInfo, KeyStore, KeyUpdate, ListRequest, StoreError, Version, MAX_PAGE_SIZE};
use crate::Authenticator;

/// The state every handler of the management API shares.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) auth: Authenticator,
    pub(crate) access: AccountAccess,
    pub(crate) grants: Arc<Grants>,
    pub(crate) body_limit: usize,
}

/// What one attempt at a conditional write did.
enum Written<T> {
    Done(T),
    /// The key moved on between the read and the write; nothing was written.
    Moved,
}

/// A store's answer to a conditional write, with a moved key told apart.
fn written<T>(result: Result<T, StoreError>) -> Result<Written<T>> {
    match result {
        Err(StoreError::VersionMismatch { .. }) => Ok(Written::Moved),
        other => Ok(Written::Done(other?)),
    }
}

/// Attempts of a read-check-write whose key keeps moving before it answers
/// 409 `aborted`.
const WRITE_ATTEMPTS: usize = 3;

/// The part of `update` that changes `current`: a PATCH that sends back
/// values the key already holds writes nothing for them, so a key's version
/// (and so concurrent writers) moves only for real changes, and an
/// idempotent retry does not abort other requests. Credits always count: a
/// setting replaces the count and starts a new generation.
fn changes(update: &KeyUpdate, current: &KeyRecord) -> KeyUpdate {
    let mut changes = update.clone();
    if changes.description.as_ref() == Some(&current.description) {
        changes.description = None;
    }
    if changes.scopes.as_ref() == Some(&current.scopes) {
        changes.scopes = None;
    }
    if changes.expires_at == Some(current.expires_at) {
        changes.expires_at = None;
    }
    if changes.rate_limits.as_ref() == Some(&current.rate_limits) {
        changes.rate_limits = None;
    }
    if changes.operator_locked == Some(current.operator_locked) {
        changes.operator_locked = None;
    }
    changes
}

/// Adds the `ETag` of a key at `version`.
fn with_etag(mut response: Response, version: Version) -> Response {
    response.headers_mut().insert(ETAG, etag(version));
    response
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A JSON response that no cache keeps.
fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "api key management: response did not serialize");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Reads a JSON body. An empty body is `{}` when `empty_ok`.
fn body<T: DeserializeOwned>(
    api: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> Result<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(api.body_limit)
        } else {
            ApiError::invalid("the request body could not be read")
        }
    })?;
    if bytes.is_empty() {
        if empty_ok {
            return decode(b"{}");
        }
        return Err(ApiError::invalid("a JSON object is required as the body"));
    }
    if !is_json(headers) {
        return Err(ApiError::not_json());
    }
    decode(&bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    // serde would also read a struct from an array of its fields in order.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends " at line 1 column 9": keep the what, drop the where,
        // unless it is a syntax error.
        let what = match inner.classify() {
            serde_json::error::Category::Data => strip_position(&inner.to_string()),
            _ => inner.to_string(),
        };
        // For an unknown field the path ends in that field: say it once.
        if path == "." || path.is_empty() || what.starts_with("unknown field") {
            ApiError::invalid(scrub(&what))
        } else {
            ApiError::invalid(scrub(&format!("{path}: {what}")))
        }
    })?;
    de.end()
        .map_err(|_| ApiError::invalid("trailing characters after the JSON body"))?;
    Ok(value)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The `{id}` segment, or `{id}:{method}` for a custom method.
enum Segment<'a> {
    Id(&'a str),
    Method(&'a str, &'a str),
}

fn segment(path: &str) -> Segment<'_> {
    match path.split_once(':') {
        Some((id, method)) => Segment::Method(id, method),
        None => Segment::Id(path),
    }
}

fn path_text(path: Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(p)| p)
        .map_err(|_| ApiError::invalid("the key id in the path could not be read"))
}

/// The id of a plain `/keys/{id}` request (GET, PATCH, DELETE).
fn plain_id(path: &str, method: &str) -> Result<KeyId> {
    match segment(path) {
        Segment::Id(id) => resource::key_id(id),
        Segment::Method(_, custom @ ("reissue" | "addCredits")) => Err(
            ApiError::method_not_allowed("POST", format!("`:{custom}` takes POST, not {method}")),
        ),
        Segment::Method(_, other) => Err(ApiError::unknown_method(other)),
    }
}

impl ApiState {
    /// Now, by the authenticator's clock: the one expiry is checked by.
    fn now(&self) -> SystemTime {
        self.auth.cache().config().clock().now()
    }

    /// Refuses a caller that presented a secret replaced by a reissue: it
    /// works on the data plane until its grace ends, but manages nothing, so
    /// a leaked old secret cannot reissue (take over) its key or mint keys.
    fn check_current_secret(&self, caller: &Caller) -> Result<()> {
        if caller.record().replaced_secret {
            tracing::info!(
                caller_key_id = %caller.key_id(),
                "api key management: a replaced secret refused"
            );
            return Err(ApiError::replaced_secret());
        }
        Ok(())
    }

    /// The key, if it exists and the caller may manage its account; 404
    /// otherwise (a key of another account is not revealed).
    async fn visible_key(&self, caller: &Caller, id: KeyId) -> Result<KeyInfo> {
        self.check_current_secret(caller)?;
        match self.store.get(id).await? {
            Some(info) if self.access.allows(caller, &info.record.service_account_id) => Ok(info),
            Some(info) => {
                tracing::info!(
                    key_id = %id,
                    service_account_id = %scrub(&info.record.service_account_id),
                    caller_key_id = %caller.key_id(),
                    "api key management: key of another service account refused"
                );
                Err(ApiError::key_not_found(id))
            }
            None => Err(ApiError::key_not_found(id)),
        }
    }

    fn check_account(&self, caller: &Caller, account: &str) -> Result<()> {
        self.check_current_secret(caller)?;
        if self.access.allows(caller, account) {
            Ok(())
        } else {
            tracing::info!(
                service_account_id = %scrub(account),
                caller_key_id = %caller.key_id(),
                "api key management: service account refused"
            );
            Err(ApiError::account_denied(account))
        }
    }

    /// Refuses `action` to a caller whose own key (or account) is limited,
    /// unless the router allows limited callers; see [`super::grant`].
    fn check_unlimited(&self, caller: &Caller, action: &str) -> Result<()> {
        if self.grants.refuses_limited(caller) {
            tracing::info!(
                caller_key_id = %caller.key_id(),
                action,
                "api key management: limited caller refused"
            );
            return Err(ApiError::limited_caller(action));
        }
        Ok(())
    }

    /// Refuses, unless the router may lock keys, any change of a key the
    /// operator locked and any request that would lock or unlock one
    /// (`locks`: the `operator_locked` it asks for). Made on the key as
    /// read, before a write conditional on its version: a lock landing in
    /// between moves the version, and the write fails.
    fn check_lock(
        &self,
        caller: &Caller,
        current: Option<&KeyInfo>,
        locks: Option<bool>,
    ) -> Result<()> {
        if self.grants.lock_keys {
            return Ok(());
        }
        let was = current.is_some_and(|c| c.record.operator_locked);
        if let Some(current) = current.filter(|_| was) {
            tracing::info!(
                key_id = %current.record.key_id,
                caller_key_id = %caller.key_id(),
                "api key management: change of a locked key refused"
            );
            return Err(ApiError::key_locked(current.record.key_id));
        }
        if locks.is_some_and(|locks| locks != was) {
            tracing::info!(
                caller_key_id = %caller.key_id(),
                "api key management: operator_locked change refused"
            );
            return Err(ApiError::lock_denied());
        }
        Ok(())
    }

    /// Whether `caller` may make `change` to `target`; see [`super::grant`].
    fn check_grant(&self, caller: &Caller, target: Target<'_>, change: Change<'_>) -> Result<()> {
        self.grants
            .check(caller, &self.auth.management_scopes(), target, change)
            .map_err(|refused| {
                tracing::info!(
                    caller_key_id = %caller.key_id(),
                    refused_scopes = refused.scopes.len(),
                    unscoped = refused.unscoped,
                    "api key management: grant refused"
                );
                ApiError::grant_denied(&refused)
            })
    }
}

impl ApiState {
    /// Reads key `id`, checks the request's `If-Match` against it, and runs
    /// `attempt` on it: `attempt` checks the request against the key as read
    /// and writes conditional on its version, so the check holds for exactly
    /// the state the write replaces. When the key moved on in between, the
    /// whole read-check-write runs again (412 instead when the client named
    /// the version it read in `If-Match`; `*` asks only that the key
    /// exists), at most [`WRITE_ATTEMPTS`] times, then 409 `aborted`.
    async fn read_check_write<T, F, Fut>(
        &self,
        caller: &Caller,
        id: KeyId,
        if_match: &IfMatch,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(KeyInfo) -> Fut,
        Fut: Future<Output = Result<Written<T>>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.visible_key(caller, id).await?;
            if !if_match.matches(current.version) {
                return Err(ApiError::precondition_failed(id));
            }
            match attempt(current).await? {
                Written::Done(done) => return Ok(done),
                Written::Moved if if_match.names_versions() => {
                    return Err(ApiError::precondition_failed(id))
                }
                Written::Moved => {}
            }
        }
        tracing::info!(
            key_id = %id,
            caller_key_id = %caller.key_id(),
            "api key management: key kept changing, request aborted"
        );
        Err(ApiError::aborted(id))
    }

    /// Whether `caller` may apply `update` to `current`.
    fn check_update(&self, caller: &Caller, current: &KeyInfo, update: &KeyUpdate) -> Result<()> {
        let now = self.now();
        let revives = current.record.is_expired_at(now)
            && update
                .expires_at
                .is_some_and(|at| at.is_none_or(|at| at > now));
        if revives {
            // An expired key is accepted nowhere: bringing it back is
            // giving its scopes anew, checked as a create is.
            let to = update.scopes.as_ref().unwrap_or(&current.record.scopes);
            check_grant_on(self, caller, current, Change::Revive(to))?;
            self.check_unlimited(caller, "bring an expired key back")?;
        }
        if let Some(to) = &update.scopes {
            let from = &current.record.scopes;
            check_grant_on(self, caller, current, Change::Replace { from, to })?;
            let adds = to.iter().any(|s| !from.contains(s)) || (to.is_empty() && !from.is_empty());
            if adds {
                self.check_unlimited(caller, "add scopes to a key")?;
            }
        }
        if update.rate_limits.is_some() || update.credits.is_some() {
            self.check_unlimited(caller, "change the rate limits or credits of a key")?;
        }
        if let Some(networks) = &update.allowed_networks {
            check_networks(caller, networks.as_ref())?;
        }
        Ok(())
    }
}

/// A caller with allowed networks gives keys only networks inside them.
fn check_networks(caller: &Caller, requested: Option<&crate::network::Networks>) -> Result<()> {
    if super::grant::networks_within(caller, requested) {
        return Ok(());
    }
    tracing::info!(
        caller_key_id = %caller.key_id(),
        "api key management: networks beyond the caller's refused"
    );
    Err(ApiError::networks_beyond_caller())
}

/// [`ApiState::check_grant`] for a change of the existing key `current`.
fn check_grant_on(
    api: &ApiState,
    caller: &Caller,
    current: &KeyInfo,
    change: Change<'_>,
) -> Result<()> {
    let target = Target {
        service_account_id: &current.record.service_account_id,
        current: Some(&current.record),
    };
    api.check_grant(caller, target, change)
}

/// `POST /keys`
#[utoipa::path(
    post,
    path = "/keys",
    operation_id = "create_key",
    tag = "keys",
    summary = "Create a key",
    description = "Creates a key for a service account. The response holds the whole key (`secret`), shown only here and in a reissue.",
    request_body(content = CreateKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key was created.", body = KeyWithSecret,
            headers(("Location" = String, description = "`keys/{id}`, relative to `.../keys`."), ("ETag" = String, description = "The key's version, for `If-Match`."), ("Cache-Control" = String, description = "`no-store`."))),
        (status = 403, description = "`insufficient_scope` (the key lacks the management scope), `key_compromised` (it was reported leaked and is quarantined), `permission_denied` (the caller may not do this to this key or account), or `key_locked` (`operator_locked` is true and the router may not lock keys).", body = ErrorBody),
        (status = 409, description = "`already_exists` or `key_limit_reached`: the store refused the key.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over the router's limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON.", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(api): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let request: CreateKeyRequest = body(&api, &headers, raw, false)?;
    let new = request.validate(api.now(), &api.store.key_format().unwrap_or_default())?;
    api.check_account(&caller, &new.service_account_id)?;
    api.check_lock(&caller, None, Some(new.operator_locked))?;
    let target = Target {
        service_account_id: &new.service_account_id,
        current: None,
    };
    api.check_grant(&caller, target, Change::Create(&new.scopes))?;
    api.check_unlimited(&caller, "create keys")?;
    check_networks(&caller, new.allowed_networks.as_ref())?;
    let created = api.store.create(new).await?;
    let id = created.record.key_id;
    tracing::info!(
        key_id = %id,
        // Scrubbed like errors: a key pasted into the wrong field stays out of logs.
        service_account_id = %scrub(&created.record.service_account_id),
        caller_key_id = %caller.key_id(),
        "api key created"
    );
    let mut response = with_etag(
        json(StatusCode::CREATED, &KeyWithSecret::new(&created, None)),
        created.version,
    );
    // Relative to `.../keys`, this resolves to `.../keys/{id}` under any prefix.
    if let Ok(location) = HeaderValue::from_str(&format!("keys/{id}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// `GET /keys?service_account_id=...&page_size=...&page_token=...&unused_for=...`
#[utoipa::path(
    get,
    path = "/keys",
    operation_id = "list_keys",
    tag = "keys",
    summary = "List a service account's keys",
    description = "One page of a service account's keys, oldest first; with `unused_for`, only those never used or last used longer ago than that. A page also stops at 1 MiB of JSON; `next_page_token` continues it.",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of keys.", body = KeyList,
            headers(("Cache-Control" = String, description = "`no-store`."))),
    )
)]
pub(crate) async fn list(
    State(api): State<ApiState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query: ListQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(scrub(&format!("query: {e}"))))?;
    let Some(account) = query.service_account_id else {
        return Err(ApiError::invalid("query: service_account_id is required"));
    };
    let account = resource::service_account_id(&account)?;
    api.check_account(&caller, &account)?;
    let unused_for = query
        .unused_for
        .as_deref()
        .map(|text| {
            crate::time::parse_duration(text)
                .map_err(|e| ApiError::invalid(format!("query: unused_for is {e}")))
        })
        .transpose()?;
    let mut request = ListRequest {
        page_size: query.page_size,
        page_token: query.page_token,
        unused_for,
    };
    loop {
        let page = api.store.list(&account, request.clone()).await?;
        let fit = keys_within(&page.keys, MAX_PAGE_BYTES);
        if fit == page.keys.len() {
            return Ok(json(
                StatusCode::OK,
                &KeyList::new(&page.keys, page.next_page_token),
            ));
        }
        // Over the budget: ask the store for the keys that fit, so that its
        // token continues after the last key shown (a token is the store's
        // own). Each round asks for fewer keys, and one key always fits.
        request.page_size = Some(fit);
    }
}

/// How many of `keys`, from the first, fit in `budget` bytes of this API's
/// JSON (each key's and a comma): at least one when there are keys.
fn keys_within(keys: &[KeyInfo], budget: usize) -> usize {
    let mut bytes = 0usize;
    for (i, key) in keys.iter().enumerate() {
        bytes = bytes.saturating_add(json_len(&KeyResource::from(key)) + 1);
        if bytes > budget {
            return i.max(1);
        }
    }
    keys.len()
}

/// The bytes `value` takes in JSON, counted without keeping them.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter fails only if serializing does, and then the
    // response fails too (`json`).
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `GET /keys/{id}`
#[utoipa::path(
    get,
    path = "/keys/{id}",
    operation_id = "get_key",
    tag = "keys",
    summary = "Read a key",
    params(("id" = String, Path, description = "The key's id (`id` in its resource).")),
    responses(
        (status = 200, description = "The key (never its secret).", body = KeyResource, headers(("ETag" = String, description = "The key's version, for `If-Match`."), ("Cache-Control" = String, description = "`no-store`."))),
        (status = 404, description = "`not_found`: no such key, or one the caller may not see.", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = plain_id(&path_text(path)?, "GET")?;
    let info = api.visible_key(&caller, id).await?;
    Ok(with_etag(
        json(StatusCode::OK, &KeyResource::from(&info)),
        info.version,
    ))
}

/// `PATCH /keys/{id}`
#[utoipa::path(
    patch,
    path = "/keys/{id}",
    operation_id = "update_key",
    tag = "keys",
    summary = "Change a key",
    description = "Changes the fields present in the body; absent fields stay as they are.",
    params(("id" = String, Path, description = "The key's id (`id` in its resource)."), ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the key is still at this version: its `ETag` (or a list of them, or `*`); else 412.")),
    request_body(content = UpdateKeyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The key as changed.", body = KeyResource, headers(("ETag" = String, description = "The key's version, for `If-Match`."), ("Cache-Control" = String, description = "`no-store`."))),
        (status = 403, description = "`insufficient_scope` (the key lacks the management scope), `key_compromised` (it was reported leaked and is quarantined), `permission_denied` (the caller may not do this to this key or account), or `key_locked` (the operator locked the key, or the request sets or clears `operator_locked`, and the router may not lock keys).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such key, or one the caller may not see.", body = ErrorBody),
        (status = 409, description = "`aborted`: the key kept changing concurrently; nothing was written.", body = ErrorBody),
        (status = 412, description = "`failed_precondition`: the key is no longer at the version `If-Match` names.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over the router's limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON.", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let id = plain_id(&path_text(path)?, "PATCH")?;
    let if_match = IfMatch::from_headers(&headers)?;
    let request: UpdateKeyRequest = body(&api, &headers, raw, false)?;
    let update = request.validate(api.now(), &api.store.key_format().unwrap_or_default())?;
    let (shared, who, change) = (&api, &caller, &update);
    let info = api
        .read_check_write(&caller, id, &if_match, move |current| async move {
            shared.check_lock(who, Some(&current), change.operator_locked)?;
            shared.check_update(who, &current, change)?;
            let result = shared
                .store
                .update(id, changes(change, &current.record), Some(current.version))
                .await;
            written(result)
        })
        .await?
        .ok_or_else(|| ApiError::key_not_found(id))?;
    // The store announces the change; this also covers an authenticator
    // whose verifier is not this store. Naming the account keeps a flood of
    // changes to one account from re-verifying every account's keys.
    let account = info.record.service_account_id.clone();
    api.auth.cache().invalidate_key_of(id, account);
    tracing::info!(key_id = %id, caller_key_id = %caller.key_id(), "api key updated");
    Ok(with_etag(
        json(StatusCode::OK, &KeyResource::from(&info)),
        info.version,
    ))
}

/// `DELETE /keys/{id}`
#[utoipa::path(
    delete,
    path = "/keys/{id}",
    operation_id = "delete_key",
    tag = "keys",
    summary = "Delete (revoke) a key",
    params(("id" = String, Path, description = "The key's id (`id` in its resource)."), ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the key is still at this version: its `ETag` (or a list of them, or `*`); else 412.")),
    responses(
        (status = 204, description = "The key was deleted; it is refused from now on.",
            headers(("Cache-Control" = String, description = "`no-store`."))),
        (status = 404, description = "`not_found`: no such key, or one the caller may not see.", body = ErrorBody),
        (status = 409, description = "`aborted`: the key kept changing concurrently; nothing was written.", body = ErrorBody),
        (status = 412, description = "`failed_precondition`: the key is no longer at the version `If-Match` names.", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let id = plain_id(&path_text(path)?, "DELETE")?;
    let if_match = IfMatch::from_headers(&headers)?;
    let store = &api.store;
    let info = if if_match.names_versions() {
        api.read_check_write(&caller, id, &if_match, move |current| async move {
            let revoked = written(store.revoke(id, Some(current.version)).await)?;
            Ok(match revoked {
                Written::Done(true) => Written::Done(Some(current)),
                Written::Done(false) => Written::Done(None),
                Written::Moved => Written::Moved,
            })
        })
        .await?
    } else {
        // Nothing of the key is checked but its account, which never
        // changes: the revoke holds whatever the version, and a key that
        // keeps changing (its holder PATCHing itself in a loop) cannot keep
        // itself alive by making conditional revokes abort.
        let current = api.visible_key(&caller, id).await?;
        store.revoke(id, None).await?.then_some(current)
    }
    .ok_or_else(|| ApiError::key_not_found(id))?;
    let account = info.record.service_account_id.clone();
    api.auth.cache().invalidate_key_of(id, account);
    tracing::info!(key_id = %id, caller_key_id = %caller.key_id(), "api key deleted");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /keys/{id}:{method}`: the custom methods, `:reissue` and
/// `:addCredits`.
pub(crate) async fn custom(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let path = path_text(path)?;
    match segment(&path) {
        Segment::Method(id, "reissue") => {
            let id = resource::key_id(id)?;
            reissue(&api, &caller, id, &headers, raw).await
        }
        Segment::Method(id, "addCredits") => {
            let id = resource::key_id(id)?;
            add_credits(&api, &caller, id, &headers, raw).await
        }
        Segment::Method(_, other) => Err(ApiError::unknown_method(other)),
        Segment::Id(_) => Err(ApiError::method_not_allowed(
            "GET, PATCH, DELETE",
            "POST creates keys at /keys; a key takes GET, PATCH, DELETE, POST :reissue or \
             POST :addCredits",
        )),
    }
}

/// `POST /keys/{id}:reissue`
#[utoipa::path(
    post,
    path = "/keys/{id}:reissue",
    operation_id = "reissue_key",
    tag = "keys",
    summary = "Reissue a key",
    description = "Gives the key a new secret; the old one keeps working for `grace_period_seconds` (default 0). An empty body is `{}`.",
    params(("id" = String, Path, description = "The key's id (`id` in its resource)."), ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the key is still at this version: its `ETag` (or a list of them, or `*`); else 412.")),
    // Optional (an empty body is `{}`): `document::api` marks it so.
    request_body(content = ReissueKeyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The key and its new secret.", body = KeyWithSecret, headers(("ETag" = String, description = "The key's version, for `If-Match`."), ("Cache-Control" = String, description = "`no-store`."))),
        (status = 404, description = "`not_found`: no such key, or one the caller may not see.", body = ErrorBody),
        (status = 409, description = "`aborted`: the key kept changing concurrently; nothing was written.", body = ErrorBody),
        (status = 412, description = "`failed_precondition`: the key is no longer at the version `If-Match` names.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over the router's limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON.", body = ErrorBody),
    )
)]
pub(crate) async fn reissue(
    api: &ApiState,
    caller: &Caller,
    id: KeyId,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let if_match = IfMatch::from_headers(headers)?;
    let request: ReissueKeyRequest = body(api, headers, raw, true)?;
    let grace = request.validate()?;
    if id != caller.key_id() {
        // The caller receives the key: one with fewer limits than its own
        // would lift them.
        api.check_unlimited(caller, "reissue a key other than itself")?;
    }
    let (created, last_used_at) = api
        .read_check_write(caller, id, &if_match, move |current| async move {
            check_grant_on(
                api,
                caller,
                &current,
                Change::Reissue(&current.record.scopes),
            )?;
            let result = api.store.reissue(id, grace, Some(current.version)).await;
            Ok(match written(result)? {
                Written::Done(created) => Written::Done((created, current.last_used_at)),
                Written::Moved => Written::Moved,
            })
        })
        .await?;
    let created = created.ok_or_else(|| ApiError::key_not_found(id))?;
    let account = created.record.service_account_id.clone();
    api.auth.cache().invalidate_key_of(id, account);
    tracing::info!(
        key_id = %id,
        grace_period_seconds = grace.as_secs(),
        caller_key_id = %caller.key_id(),
        "api key reissued"
    );
    Ok(with_etag(
        json(StatusCode::OK, &KeyWithSecret::new(&created, last_used_at)),
        created.version,
    ))
}

/// `POST /keys/{id}:addCredits`
#[utoipa::path(
    post,
    path = "/keys/{id}:addCredits",
    operation_id = "add_credits",
    tag = "keys",
    summary = "Add credits to a key",
    params(("id" = String, Path, description = "The key's id (`id` in its resource)."), ("If-Match" = Option<String>, Header, nullable = false, description = "Write only if the key is still at this version: its `ETag` (or a list of them, or `*`); else 412.")),
    request_body(content = AddCreditsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The key with its credits added.", body = KeyResource, headers(("ETag" = String, description = "The key's version, for `If-Match`."), ("Cache-Control" = String, description = "`no-store`."))),
        (status = 403, description = "`insufficient_scope` (the key lacks the management scope), `key_compromised` (it was reported leaked and is quarantined), `permission_denied` (the caller may not do this to this key or account), or `key_locked` (the operator locked the key and the router may not lock keys).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such key, or one the caller may not see.", body = ErrorBody),
        (status = 409, description = "`failed_precondition` (the key has no credits) or `aborted` (it kept changing concurrently); nothing was written.", body = ErrorBody),
        (status = 412, description = "`failed_precondition`: the key is no longer at the version `If-Match` names.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over the router's limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON.", body = ErrorBody),
    )
)]
pub(crate) async fn add_credits(
    api: &ApiState,
    caller: &Caller,
    id: KeyId,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let request: AddCreditsRequest = body(api, headers, raw, false)?;
    let amount = request.validate()?;
    let if_match = IfMatch::from_headers(headers)?;
    api.check_unlimited(caller, "add credits")?;
    // A key without credits is the store's answer (409), not a check on a
    // read that credits could be given between; so is a locked key (403
    // `key_locked`) unless the router may change locked keys: the store
    // checks the lock in the same atomic step as the write.
    let may_lock = api.grants.lock_keys;
    let credit = move |expected| async move {
        if may_lock {
            api.store.add_credits(id, amount, expected).await
        } else {
            api.store
                .add_credits_unless_locked(id, amount, expected)
                .await
        }
    };
    let info = if if_match.names_versions() {
        api.read_check_write(caller, id, &if_match, move |current| async move {
            written(credit(Some(current.version)).await)
        })
        .await?
    } else {
        // As for a DELETE: only the account is checked on the read, so a
        // key that keeps changing cannot make this abort.
        api.visible_key(caller, id).await?;
        credit(None).await?
    }
    .ok_or_else(|| ApiError::key_not_found(id))?;
    let account = info.record.service_account_id.clone();
    api.auth.cache().invalidate_key_of(id, account);
    tracing::info!(
        key_id = %id,
        amount,
        caller_key_id = %caller.key_id(),
        "api key credits added"
    );
    Ok(with_etag(
        json(StatusCode::OK, &KeyResource::from(&info)),
        info.version,
    ))
}

/// The account of an `/accounts/{service_account_id}/...` path, if the
/// caller may manage it.
fn account_of(
    api: &ApiState,
    caller: &Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<String> {
    let text = path
        .map(|Path(p)| p)
        .map_err(|_| ApiError::invalid("the service account id in the path could not be read"))?;
    let account = resource::service_account_id(&text)?;
    api.check_account(caller, &account)?;
    Ok(account)
}

/// `GET /accounts/{service_account_id}/rate-limits`
#[utoipa::path(
    get,
    path = "/accounts/{service_account_id}/rate-limits",
    operation_id = "get_account_rate_limits",
    tag = "accounts",
    summary = "Read a service account's rate limits",
    params(("service_account_id" = String, Path, description = "The service account.")),
    responses(
        (status = 200, description = "The account's limits, shared by all its keys.", body = AccountRateLimits,
            headers(("Cache-Control" = String, description = "`no-store`."))),
    )
)]
pub(crate) async fn get_account_limits(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let account = account_of(&api, &caller, path)?;
    let limits = api.store.account_rate_limits(&account).await?;
    Ok(json(StatusCode::OK, &AccountRateLimits::new(&limits)))
}

/// `PUT /accounts/{service_account_id}/rate-limits`
#[utoipa::path(
    put,
    path = "/accounts/{service_account_id}/rate-limits",
    operation_id = "put_account_rate_limits",
    tag = "accounts",
    summary = "Set a service account's rate limits",
    description = "Replaces the account's limits; an empty list removes them.",
    params(("service_account_id" = String, Path, description = "The service account.")),
    request_body(content = AccountRateLimitsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The account's limits as set.", body = AccountRateLimits,
            headers(("Cache-Control" = String, description = "`no-store`."))),
        (status = 413, description = "`payload_too_large`: the body is over the router's limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON.", body = ErrorBody),
    )
)]
pub(crate) async fn put_account_limits(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let account = account_of(&api, &caller, path)?;
    resource::no_key_in_account(&account, &api.store.key_format().unwrap_or_default())?;
    let request: AccountRateLimitsRequest = body(&api, &headers, raw, false)?;
    let limits = request.validate()?;
    api.check_unlimited(&caller, "set the rate limits of a service account")?;
    api.store
        .set_account_rate_limits(&account, limits.clone())
        .await?;
    tracing::info!(
        service_account_id = %scrub(&account),
        rate_limits = limits.len(),
        caller_key_id = %caller.key_id(),
        "service account rate limits set"
    );
    api.invalidate_account(&account).await;
    Ok(json(StatusCode::OK, &AccountRateLimits::new(&limits)))
}

impl ApiState {
    /// Drops every key of `account` from the authenticator's cache, so the
    /// account's new limits apply at once on this replica even when the
    /// authenticator verifies through something other than the store. The
    /// store announces the change too; a failure here is only logged.
    async fn invalidate_account(&self, account: &str) {
        let account: Arc<str> = account.into();
        let mut page = ListRequest::first(MAX_PAGE_SIZE);
        loop {
            match self.store.list(&account, page).await {
                Ok(listed) => {
                    for key in &listed.keys {
                        self.auth
                            .cache()
                            .invalidate_key_of(key.record.key_id, account.clone());
                    }
                    match listed.next_page_token {
                        Some(token) => page = ListRequest::after(MAX_PAGE_SIZE, token),
                        None => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "api key management: could not list an account's keys to invalidate them"
                    );
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn decode_errors_name_the_field_and_never_echo_keys() {
        let e = decode::<CreateKeyRequest>(br#"{"service_account_id":"sa","scopes":["a",5]}"#)
            .unwrap_err();
        assert_eq!(
            e.message(),
            "scopes[1]: invalid type: integer `5`, expected a string"
        );
        let key = crate::key::KeyFormat::default().generate().unwrap();
        let json = format!(
            r#"{{"service_account_id":"sa","scopes":{:?}}}"#,
            key.expose_secret()
        );
        let e = decode::<CreateKeyRequest>(json.as_bytes()).unwrap_err();
        assert!(
            !e.message().contains(key.expose_secret()),
            "{}",
            e.message()
        );
        let e =
            decode::<CreateKeyRequest>(br#"{"service_account_id":"sa","expiry":1}"#).unwrap_err();
        assert_eq!(
            e.message(),
            "unknown field `expiry`, expected one of `service_account_id`, `description`, `scopes`, `expires_at`, `rate_limits`, `credits`, `allowed_networks`, `metadata`, `operator_locked`, `retire_when_unused`"
        );
        let e = decode::<CreateKeyRequest>(br#"{"service_account_id":"sa"} x"#).unwrap_err();
        assert_eq!(e.message(), "trailing characters after the JSON body");
    }
}
