//! What the examples share: the listening address, the demo keys, and
//! shutdown on Ctrl-C or SIGTERM. Not an example itself (Cargo builds only
//! `examples/*.rs` and `examples/*/main.rs` as examples); each example reads
//! it with `mod support;`.
//!
//! The examples print shell lines on stdout and nothing else, so they can be
//! pasted or sourced:
//!
//! ```text
//! export ADDR=127.0.0.1:3000
//! export API_KEY_TRANSLATE=tak_...   # sa-translator: yc.ai.translate.execute
//! ```
//!
//! Logs and everything else go to stderr.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tower_api_key::limits::Credits;
use tower_api_key::store::NewKey;
use tower_api_key::KeyStore;
use tower_api_key::Metadata;
use tower_api_key::ScopeSet;

pub const TRANSLATE: &str = "yc.ai.translate.execute";
pub const FOUNDATION_MODELS: &str = "yc.ai.foundationModels.execute";

/// How long the `EXPIRING` demo key lives: long enough to paste its line
/// into another shell and try it.
pub const EXPIRING_AFTER: Duration = Duration::from_secs(60);

/// Logs to stderr, `info` and the crate's `debug` unless `RUST_LOG` says
/// otherwise; in colour only when stderr is a terminal, so a log redirected
/// to a file holds no escape codes.
pub fn init_logging() {
    use std::io::IsTerminal;

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_api_key=debug".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// An error `main` returns, shown in plain words: `main` prints an error's
/// `Debug`, which for an I/O error is `Os { code: 98, kind: AddrInUse, .. }`.
pub struct Plain(String);

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Plain {}

/// Binds `BIND` (else `default`), then prints `export ADDR=<address>` on
/// stdout: with `BIND=127.0.0.1:0` the port is whatever is free. A busy or
/// malformed address is an error saying which, and that `BIND` picks another.
pub async fn bind(default: &str) -> Result<TcpListener, Box<dyn std::error::Error>> {
    let text = std::env::var("BIND").unwrap_or_else(|_| default.into());
    let bind: SocketAddr = text.parse().map_err(|_| {
        Plain(format!(
            "BIND={text} is not an address such as 127.0.0.1:3000 (BIND=127.0.0.1:0: any free port)"
        ))
    })?;
    let listener = TcpListener::bind(bind).await.map_err(|e| {
        Plain(format!(
            "cannot listen on {bind}: {e}; set BIND to choose another address, such as \
             BIND=127.0.0.1:0 for any free port"
        ))
    })?;
    let addr = listener.local_addr()?;
    println!("export ADDR={addr}");
    eprintln!("listening on http://{addr}");
    Ok(listener)
}

/// One demo key: its variable name (`API_KEY_<name>`), what to create, and
/// a note printed after it.
pub struct DemoKey {
    pub name: &'static str,
    pub new: NewKey,
    pub note: String,
}

/// The demo keys every example mints: one per case of the scope rules, and
/// one that expires [`EXPIRING_AFTER`] from now, one limited to 5 requests
/// per second and one with 3 credits.
pub fn demo_keys() -> Result<Vec<DemoKey>, Box<dyn std::error::Error>> {
    let expires_at = SystemTime::now() + EXPIRING_AFTER;
    Ok(vec![
        DemoKey {
            name: "TRANSLATE",
            new: NewKey::new("sa-translator")
                .with_scopes(ScopeSet::new([TRANSLATE])?)
                .with_metadata(Some(Metadata::new(r#"{"plan":"pro"}"#)?)),
            note: format!("sa-translator: {TRANSLATE}, metadata {{\"plan\":\"pro\"}}"),
        },
        DemoKey {
            name: "AI",
            new: NewKey::new("sa-assistant").with_scopes(ScopeSet::new([FOUNDATION_MODELS])?),
            note: format!("sa-assistant: {FOUNDATION_MODELS}"),
        },
        DemoKey {
            name: "UNSCOPED",
            new: NewKey::new("sa-legacy"),
            note: "sa-legacy: no scopes".into(),
        },
        DemoKey {
            name: "EXPIRING",
            new: NewKey::new("sa-translator")
                .with_scopes(ScopeSet::new([TRANSLATE])?)
                .with_expires_at(expires_at),
            note: format!(
                "sa-translator: {TRANSLATE}, expires {} ({} s after start)",
                humantime::format_rfc3339_seconds(expires_at),
                EXPIRING_AFTER.as_secs()
            ),
        },
        DemoKey {
            name: "LIMITED",
            new: NewKey::new("sa-limited").with_rate_limits(vec!["5/1s".parse()?]),
            note: "sa-limited: no scopes, 5 requests per second".into(),
        },
        DemoKey {
            name: "METERED",
            new: NewKey::new("sa-metered").with_credits(Credits::new(3)?),
            note: "sa-metered: no scopes, 3 credits".into(),
        },
    ])
}

/// Creates each key in `store` and prints it once, as `export
/// API_KEY_<name>=<key>   # <note>`: the store keeps only its hash, as a
/// real service would, so this is the only time it is shown.
pub async fn mint(
    store: &impl KeyStore,
    example: &str,
    keys: impl IntoIterator<Item = DemoKey>,
) -> Result<(), Box<dyn std::error::Error>> {
    for DemoKey { name, new, note } in keys {
        let created = store
            .create(new.with_description(format!("{example} {name}")))
            .await?;
        let line = format!("export API_KEY_{name}={}", created.key.expose_secret());
        println!("{line:<84} # {note}");
    }
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    eprintln!("shutting down");
}
