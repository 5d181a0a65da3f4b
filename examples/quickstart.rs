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
//! it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use support::{DemoKey, FOUNDATION_MODELS, TRANSLATE};
use tower_api_key::auth::FailedAttemptLimit;
use tower_api_key::management::{self, AccountAccess, ManagementApiBuilder};
use tower_api_key::secret_scanning::{self, ReceiverConfig, ReporterKey, StaticKeys};
use tower_api_key::store::NewKey;
use tower_api_key::usage::UsageRecorder;
use tower_api_key::KeyStore;
use tower_api_key::MemoryStore;
use tower_api_key::ScopeSet;
use tower_api_key::{Authenticator, Caller};

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

async fn serve<S: KeyStore + Clone>(
    store: S,
    prometheus: PrometheusHandle,
    upkeep: tokio::task::JoinHandle<()>,
    demo: DemoKeys,
) -> Result<(), Box<dyn std::error::Error>> {
    // `last_used_at`, written behind every 2 s.
    let usage = UsageRecorder::builder(store.clone())
        .flush_interval(Duration::from_secs(2))
        .build();
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        // 30 failed attempts per minute per client address, then 429.
        .failed_attempt_limit(FailedAttemptLimit::new(30, Duration::from_secs(60)))
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
    let demo_keys = std::iter::once(admin_key).chain(support::demo_keys()?);
    match demo {
        DemoKeys::Create => support::mint(&store, "quickstart", demo_keys).await?,
        DemoKeys::Reissue => reissue_demo_keys(&store, "quickstart", demo_keys).await?,
    }

    // Leak reports, as GitHub's secret scanning sends them, revoke the key
    // they name. The demo trusts a key pair of its own (see the module docs).
    let (reporter, signing_key_file) = demo_reporter()?;
    let leaks = secret_scanning::router(
        store.clone(),
        ReceiverConfig::github(reporter).on_compromised(|event| {
            eprintln!(
                "key {} of {} reported leaked at {} and revoked",
                event.key.record.key_id, event.key.record.service_account_id, event.compromise.url
            )
        }),
    );

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
        .route(
            "/v1/translate",
            post(translate).route_layer(auth.require_any([TRANSLATE, FOUNDATION_MODELS])),
        )
        .route(
            "/v1/legacy",
            get(legacy).route_layer(auth.unscoped_keys_only()),
        )
        .route("/whoami", get(whoami).route_layer(auth.any_valid_key()))
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
    let _ = std::fs::remove_file(signing_key_file);
    // One last flush, so no noted use is lost.
    flusher.shutdown().await?;
    Ok(())
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
                    .with_credits(new.credits);
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
    }))
}
