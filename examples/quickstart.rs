//! The quickstart server: an in-memory key store, demo keys printed at start,
//! routes that show the scope rules, the key-management API under `/admin`
//! and Prometheus metrics at `/metrics`.
//!
//! ```sh
//! cargo run --example quickstart            # BIND=127.0.0.1:0 for any free port
//! DATABASE_URL=postgres://... cargo run --example quickstart
//! DATABASE_URL=sqlite:keys.db cargo run --example quickstart
//! ```
//!
//! With SQLite, keys persist in the file across restarts. The demo keys are
//! found again by their description and reissued at every start (their old
//! secrets stop working), so the printed lines always work; keys created
//! through `/admin` or the CLI stay as they are.
//!
//! Its stdout is shell lines only, `export ADDR=...`, one
//! `export API_KEY_<NAME>=...` per demo key, and `export LEAK_SIGNING_KEY=...`
//! and `export LEAK_KEY_ID=...` for signing leak reports, to paste into
//! another shell; logs go to stderr.
//!
//! The secret-scanning receiver is mounted at `/secret-scanning/github`. As
//! a demo it trusts a P-256 key pair made at start (GitHub's keys in a real
//! deployment): the private key is written as PEM to a file (mode 0600)
//! named by `LEAK_SIGNING_KEY`, so a report can be signed with
//! `openssl dgst -sha256 -sign "$LEAK_SIGNING_KEY" body.json | base64 -w0`
//! (the README shows the whole exchange). A signed report of a key revokes
//! it. The key lifecycle task runs too: a key about to expire, or expired,
//! is told to stderr by the same function as a leaked one.
//!
//! Two demo keys carry allowed networks: `API_KEY_LOOPBACK` works from
//! 127.0.0.1 only, `API_KEY_ELSEWHERE` from 10.0.0.0/8 only (so a curl from
//! this machine gets 403 `network_not_allowed`). No proxy is trusted unless
//! `TRUSTED_PROXIES` (comma-separated CIDRs, e.g. `127.0.0.1/32`) names
//! some: a request from one of them is then from the rightmost untrusted
//! address of its `X-Forwarded-For`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use support::{DemoKey, FOUNDATION_MODELS, TRANSLATE};
use tower_api_key::auth::FailedAttemptLimit;
use tower_api_key::event::KeyEvent;
use tower_api_key::lifecycle::Lifecycle;
use tower_api_key::management::{self, AccountAccess, ManagementApiBuilder};
use tower_api_key::secret_scanning::{self, ReceiverConfig, ReporterKey, StaticKeys};
use tower_api_key::store::{LifecycleStore, NewKey};
use tower_api_key::usage::UsageRecorder;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::{Authenticator, AuthenticatorBuilder, Caller};
use tower_api_key::{IpNet, Networks, ScopeSet};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    support::init_logging();

    // Metrics from the middleware (feature `metrics`, on by default), served
    // as Prometheus text at GET /metrics.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = tokio::spawn(upkeep(prometheus.clone()));

    // A SQLite file when asked for (DATABASE_URL=sqlite:PATH).
    if let Some(path) = std::env::var("DATABASE_URL")
        .ok()
        .as_deref()
        .and_then(|url| url.strip_prefix("sqlite:"))
    {
        // It migrates at once, so it may create the file (the CLI creates
        // one only in `migrate`).
        let store = tower_api_key_sqlite::SqliteKeyStore::builder(path)
            .create_if_missing(true)
            .open()
            .await?;
        store.migrate().await?;
        eprintln!(
            "key store: SQLite file {path}: keys persist across restarts; the demo keys \
             are reissued at every start (their earlier secrets stop working), keys \
             you created are kept"
        );
        return serve(store, prometheus, upkeep, DemoKeys::Reissue).await;
    }
    // PostgreSQL when asked for (any other DATABASE_URL), else memory.
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let store = tower_api_key_postgres::PgKeyStore::connect(&url).await?;
        store.migrate().await?;
        eprintln!("key store: PostgreSQL");
        return serve(store, prometheus, upkeep, DemoKeys::Create).await;
    }
    eprintln!("key store: in memory");
    serve(MemoryStore::new(), prometheus, upkeep, DemoKeys::Create).await
}

/// How the demo keys come to be.
enum DemoKeys {
    /// Created anew.
    Create,
    /// Found again in a store that keeps them and reissued (or created if
    /// absent), so a restart does not pile up demo keys.
    Reissue,
}

async fn serve<S: LifecycleStore + Clone>(
    store: S,
    prometheus: PrometheusHandle,
    upkeep: tokio::task::JoinHandle<()>,
    demo: DemoKeys,
) -> Result<(), Box<dyn std::error::Error>> {
    // `last_used_at`, written behind every 2 s.
    let usage = UsageRecorder::builder(store.clone())
        .flush_interval(Duration::from_secs(2))
        .build();
    let trusted = trusted_proxies(std::env::var("TRUSTED_PROXIES").ok().as_deref())?;
    if !trusted.is_empty() {
        eprintln!("trusted proxies (X-Forwarded-For read from them): {trusted:?}");
    }
    let auth = auth_builder(store.clone(), trusted)
        .usage_recorder(usage.clone())
        .build();
    let flusher = usage.spawn_flusher();

    let listener = support::bind("127.0.0.1:3000").await?;
    // The admin key first, then one key per case of the scope rules.
    let admin_key = DemoKey {
        name: "ADMIN",
        new: NewKey::new("sa-admin").with_scopes(ScopeSet::new([management::DEFAULT_SCOPE])?),
        note: format!(
            "sa-admin: {}, every account, may grant the demo scopes and unscoped keys",
            management::DEFAULT_SCOPE
        ),
    };
    let demo_keys = std::iter::once(admin_key)
        .chain(support::demo_keys()?)
        .chain(network_keys()?);
    match demo {
        DemoKeys::Create => support::mint(&store, "quickstart", demo_keys).await?,
        DemoKeys::Reissue => reissue_demo_keys(&store, "quickstart", demo_keys).await?,
    }

    // Leak reports, as GitHub's secret scanning sends them, revoke the key
    // they name. The demo trusts a key pair of its own (see the module docs).
    let (reporter, signing_key_file) = demo_reporter()?;
    let leaks = secret_scanning::router(
        store.clone(),
        ReceiverConfig::github(reporter).on_compromised(tell_the_owner),
    );
    // Expiry warnings and expiries, to the same hook (docs/lifecycle.md).
    let lifecycle = Lifecycle::builder(store.clone())
        .on_event(tell_the_owner)
        .spawn();

    // The management API, for keys holding `apikeys.manage`. The admin key
    // is an operator's: it may manage every service account's keys (by
    // default a caller manages only its own account's) and hand out the
    // demo scopes and unscoped keys (by default a caller hands out only
    // scopes its own key holds, and never `apikeys.manage`).
    let admin = ManagementApiBuilder::new(store.clone(), &auth)
        .account_access(AccountAccess::any_account())
        .grantable_scopes([TRANSLATE, FOUNDATION_MODELS])
        .allow_unscoped_keys()
        .build();

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        // Unauthenticated here for the demo; protect it in a real service.
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .nest("/admin", admin)
        .merge(key_routes(&auth))
        // POST /secret-scanning/github: signed reports, no API key.
        .merge(leaks);

    // ConnectInfo gives the failed-attempt limiter each client's address.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(support::shutdown_signal())
    .await?;
    upkeep.abort();
    lifecycle.shutdown().await;
    let _ = std::fs::remove_file(signing_key_file);
    // One last flush, so no noted use is lost.
    flusher.shutdown().await?;
    Ok(())
}

/// What the demo does for every key event (a leak reported, a key expiring
/// soon or expired): a real service mails or pages the key's owner here.
fn tell_the_owner(event: KeyEvent) {
    let key = &event.key().record;
    match &event {
        KeyEvent::Compromised(leak) => eprintln!(
            "key {} of {} reported leaked at {} and revoked",
            key.key_id, key.service_account_id, leak.compromise.url
        ),
        _ => eprintln!(
            "key {} of {}: {}",
            key.key_id,
            key.service_account_id,
            event.kind()
        ),
    }
}

/// The authenticator's settings: caches, the failed-attempt limit, and the
/// proxies whose `X-Forwarded-For` is believed (none by default).
fn auth_builder<S: KeyStore + Clone>(store: S, trusted: Vec<IpNet>) -> AuthenticatorBuilder {
    Authenticator::builder(store)
        .positive_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        // 30 failed attempts per minute per client address, then 429.
        .failed_attempt_limit(FailedAttemptLimit::new(30, Duration::from_secs(60)))
        // The client address (for that limit and for keys' allowed
        // networks): the peer, or behind these proxies the rightmost
        // address of X-Forwarded-For they did not write.
        .trusted_proxies(trusted)
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs or addresses; none if unset.
fn trusted_proxies(value: Option<&str>) -> Result<Vec<IpNet>, String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("TRUSTED_PROXIES: {s:?} is not a CIDR"))
        })
        .collect()
}

/// The routes API keys open, one per case of the scope rules.
fn key_routes(auth: &Authenticator) -> Router {
    Router::new()
        .route(
            "/v1/translate",
            post(translate).route_layer(auth.require_any([TRANSLATE, FOUNDATION_MODELS])),
        )
        .route(
            "/v1/legacy",
            get(legacy).route_layer(auth.unscoped_keys_only()),
        )
        .route("/whoami", get(whoami).route_layer(auth.any_valid_key()))
}

/// The demo keys with allowed networks: one for this machine, one for a
/// network it is not on.
fn network_keys() -> Result<Vec<DemoKey>, Box<dyn std::error::Error>> {
    Ok(vec![
        DemoKey {
            name: "LOOPBACK",
            new: NewKey::new("sa-local")
                .with_allowed_networks(Some(Networks::parse(["127.0.0.1/32"])?)),
            note: "sa-local: no scopes, from 127.0.0.1 only".into(),
        },
        DemoKey {
            name: "ELSEWHERE",
            new: NewKey::new("sa-remote")
                .with_allowed_networks(Some(Networks::parse(["10.0.0.0/8"])?)),
            note: "sa-remote: no scopes, from 10.0.0.0/8 only".into(),
        },
    ])
}

/// Prints each demo key as [`support::mint`] does, reusing the key a
/// previous start left in `store` (same account and description): its
/// scopes and expiry are set as the demo defines them and it is reissued
/// with no grace. A demo key not found is created. Every demo key is looked
/// up before any is written, so a store it cannot read changes nothing.
async fn reissue_demo_keys(
    store: &impl KeyStore,
    example: &str,
    keys: impl IntoIterator<Item = DemoKey>,
) -> Result<(), Box<dyn std::error::Error>> {
    use tower_api_key::store::{KeyUpdate, ListRequest, MAX_PAGE_SIZE};

    let mut found = Vec::new();
    for demo in keys {
        let description = format!("{example} {}", demo.name);
        let mut id = None;
        let mut page = ListRequest::first(MAX_PAGE_SIZE);
        'pages: loop {
            let listed = store.list(&demo.new.service_account_id, page).await?;
            for key in &listed.keys {
                if key.record.description == description {
                    id = Some(key.record.key_id);
                    break 'pages;
                }
            }
            match listed.next_page_token {
                Some(token) => page = ListRequest::after(MAX_PAGE_SIZE, token),
                None => break,
            }
        }
        found.push((demo, description, id));
    }
    for (DemoKey { name, new, note }, description, id) in found {
        let reissued = match id {
            Some(id) => {
                let update = KeyUpdate::default()
                    .with_scopes(new.scopes.clone())
                    .with_expires_at(new.expires_at)
                    .with_rate_limits(new.rate_limits.clone())
                    .with_credits(new.credits)
                    .with_allowed_networks(new.allowed_networks.clone())
                    .with_metadata(new.metadata.clone());
                store.update(id, update, None).await?;
                store.reissue(id, Duration::ZERO, None).await?
            }
            None => None,
        };
        let key = match reissued {
            Some(reissued) => reissued.key,
            None => store.create(new.with_description(description)).await?.key,
        };
        let line = format!("export API_KEY_{name}={}", key.expose_secret());
        println!("{line:<84} # {note}");
    }
    Ok(())
}

/// A P-256 key pair made now, trusted as the demo's reporter: the private
/// key is written as PEM to a file only this user can read, and
/// `export LEAK_SIGNING_KEY=<path>` and `export LEAK_KEY_ID=<identifier>`
/// are printed; the public key is what the receiver verifies with. The
/// file is removed at shutdown.
fn demo_reporter() -> Result<(StaticKeys, std::path::PathBuf), Box<dyn std::error::Error>> {
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    let signing = loop {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut bytes[..])?;
        // Almost every 32 bytes are a valid scalar; draw again otherwise.
        if let Ok(key) = SigningKey::from_slice(&bytes[..]) {
            break key;
        }
    };
    let identifier = format!("quickstart-{}", tower_api_key::KeyId::random()?);
    let path = std::env::temp_dir().join(format!("{identifier}.pem"));
    let pem = signing.to_pkcs8_pem(LineEnding::LF)?;
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    std::io::Write::write_all(&mut file.open(&path)?, pem.as_bytes())?;
    let public = signing.verifying_key().to_public_key_pem(LineEnding::LF)?;
    println!(
        "{:<84} # signs leak reports (demo)",
        format!("export LEAK_SIGNING_KEY={}", path.display())
    );
    println!(
        "{:<84} # Github-Public-Key-Identifier",
        format!("export LEAK_KEY_ID={identifier}")
    );
    let keys = StaticKeys::new().with_key(identifier, ReporterKey::from_pem(&public)?);
    Ok((keys, path))
}

/// Histograms keep samples until upkeep folds them in: run it now and then.
async fn upkeep(prometheus: PrometheusHandle) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticks.tick().await;
        prometheus.run_upkeep();
    }
}

async fn translate(caller: Caller, Json(body): Json<Value>) -> Json<Value> {
    Json(json!({
        "service_account_id": caller.service_account_id(),
        "echo": body,
    }))
}

async fn legacy(caller: Caller) -> Json<Value> {
    Json(json!({ "service_account_id": caller.service_account_id(), "legacy": true }))
}

async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "service_account_id": caller.service_account_id(),
        "key_id": caller.key_id().to_string(),
        "scopes": caller.scopes().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        // Clamped: a record written by another tool may hold a time past what
        // RFC 3339 can write, and formatting it must not panic.
        "expires_at": caller.expires_at().map(|t| {
            humantime::format_rfc3339_seconds(t.min(tower_api_key::store::latest_time())).to_string()
        }),
        // What the operator attached to the key, as JSON (null: none).
        "metadata": caller.metadata_as::<Value>().and_then(Result::ok),
    }))
}

/// The Done-when scenarios of allowed networks and metadata through these
/// routes, as a curl from this machine would meet them.
#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    /// The routes with the demo keys in a fresh store, under
    /// `TRUSTED_PROXIES=trusted`; the secrets by name.
    async fn quickstart(trusted: Option<&str>) -> (Router, Vec<(&'static str, String)>) {
        let store = MemoryStore::new();
        let auth = auth_builder(store.clone(), trusted_proxies(trusted).unwrap()).build();
        let mut keys = Vec::new();
        for demo in support::demo_keys()
            .unwrap()
            .into_iter()
            .chain(network_keys().unwrap())
        {
            let created = store.create(demo.new).await.unwrap();
            keys.push((demo.name, created.key.expose_secret().to_owned()));
        }
        (key_routes(&auth), keys)
    }

    fn key(keys: &[(&str, String)], name: &str) -> String {
        keys.iter().find(|(n, _)| *n == name).unwrap().1.clone()
    }

    /// `GET /whoami` with `key` from 127.0.0.1, with an `X-Forwarded-For`.
    async fn whoami_from_loopback(
        app: &Router,
        key: &str,
        xff: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::get("/whoami").header("authorization", format!("Api-Key {key}"));
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        let mut request = request.body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50_000))));
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn the_loopback_key_works_here_and_the_other_network_s_key_does_not() {
        let (app, keys) = quickstart(None).await;
        let (status, _) = whoami_from_loopback(&app, &key(&keys, "LOOPBACK"), None).await;
        assert_eq!(status, StatusCode::OK);
        let elsewhere = key(&keys, "ELSEWHERE");
        let (status, body) = whoami_from_loopback(&app, &elsewhere, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "network_not_allowed");
        // No proxy is trusted: the header changes nothing.
        let (status, body) = whoami_from_loopback(&app, &elsewhere, Some("10.1.2.3")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "network_not_allowed");
    }

    #[tokio::test]
    async fn behind_a_trusted_proxy_the_rightmost_untrusted_address_counts() {
        let (app, keys) = quickstart(Some("127.0.0.1/32")).await;
        let elsewhere = key(&keys, "ELSEWHERE");
        let (status, _) = whoami_from_loopback(&app, &elsewhere, Some("10.1.2.3")).await;
        assert_eq!(status, StatusCode::OK);
        // A forged leftmost entry: the proxy appended the real address.
        let (status, body) =
            whoami_from_loopback(&app, &elsewhere, Some("10.1.2.3, 203.0.113.9")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "network_not_allowed");
        // The loopback key, from 10.1.2.3 through the proxy, is refused.
        let (status, _) =
            whoami_from_loopback(&app, &key(&keys, "LOOPBACK"), Some("10.1.2.3")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn whoami_shows_the_demo_key_s_metadata() {
        let (app, keys) = quickstart(None).await;
        let (status, body) = whoami_from_loopback(&app, &key(&keys, "TRANSLATE"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["metadata"], serde_json::json!({"plan": "pro"}));
        let (_, body) = whoami_from_loopback(&app, &key(&keys, "UNSCOPED"), None).await;
        assert_eq!(body["metadata"], Value::Null);
    }

    #[test]
    fn trusted_proxies_parse_and_bad_ones_are_named() {
        assert!(trusted_proxies(None).unwrap().is_empty());
        assert_eq!(
            trusted_proxies(Some(" 127.0.0.1/32, ::1 ")).unwrap().len(),
            2
        );
        assert!(trusted_proxies(Some("127.0.0.1/33"))
            .unwrap_err()
            .contains("127.0.0.1/33"));
    }
}
