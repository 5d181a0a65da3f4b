//! The `tower-api-key` binary, run as a user runs it: in its own process,
//! with arguments, environment and stdin, judged by exit code, stdout and
//! stderr.
//!
//! Tests that need a store use `DATABASE_URL` (`.ci/postgres.sh` sets it)
//! or, without it, a throwaway server the test process starts when
//! PostgreSQL is installed (the PostgreSQL store's `tests/common/server.rs`).
//! Without either they print `SKIPPED` and pass, with a count at exit,
//! unless `CI` is set: then they fail, so CI never skips them silently. Each works in a PostgreSQL schema
//! of its own, so they run in parallel. Nothing sleeps hoping for timing:
//! the revocation tests poll with an explicit deadline.

use std::io::Write as _;
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Config, NoTls};
use tower_api_key::cache::{LookupError, Source};
use tower_api_key::hash::{KeyHasher, Pepper};
use tower_api_key::store::NewKey;
use tower_api_key::{Authenticator, KeyFormat, KeyId, KeyStore, PresentedKey, Verifier};
use tower_api_key_postgres::{ListenerStatus, PgKeyStore};
use tower_api_key_sqlite::SqliteKeyStore;

// The PostgreSQL server: DATABASE_URL's, or one this process starts.
#[path = "../../tower-api-key-postgres/tests/common/server.rs"]
mod pg_server;

const BIN: &str = env!("CARGO_BIN_EXE_tower-api-key");

/// How long a revocation by the CLI may take to reach a running server.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Fails if `secret` appears anywhere in the output.
    fn never_shows(&self, secret: &str) -> &Self {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "a secret leaked into the output of the CLI"
        );
        self
    }
}

/// A command line: arguments, environment and stdin.
struct Cli {
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
}

fn cli<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Cli {
    Cli {
        args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        env: Vec::new(),
        stdin: Vec::new(),
    }
}

impl Cli {
    fn db(mut self, db: &Db) -> Self {
        self.env.push(("DATABASE_URL".into(), db.url.clone()));
        self
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = input.into();
        self
    }

    async fn run(self) -> Run {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(&self.args)
            // Only what the test says: not the developer's own settings.
            .env_remove("DATABASE_URL")
            .env_remove("TOWER_API_KEY_PEPPER")
            .env_remove("TOWER_API_KEY_PEPPER_FILE")
            .env_remove("TOWER_API_KEY_PEPPER_VERSION")
            .envs(self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("run the tower-api-key binary");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&self.stdin).await.expect("write stdin");
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the CLI finishes within 60 s")
            .expect("wait for the CLI");
        Run {
            code: out.status.code().expect("exited, not killed by a signal"),
            stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        }
    }
}

/// Runs `args` with `--output json`; the parsed stdout.
async fn json_of(db: &Db, args: &[&str]) -> Value {
    cli(args.iter().chain(&["--output", "json"]))
        .db(db)
        .run()
        .await
        .ok()
        .json()
}

/// Creates a key through the CLI; returns its secret (the whole stdout line).
async fn create_key(db: &Db, args: &[&str]) -> String {
    let run = cli(["keys", "create"].iter().chain(args))
        .db(db)
        .run()
        .await
        .ok();
    run.stdout.trim_end().to_owned()
}

fn id_of(secret: &str) -> KeyId {
    KeyFormat::default().parse(secret).expect("a key").id()
}

fn parse(secret: &str) -> PresentedKey {
    KeyFormat::default().parse(secret).expect("a key")
}

// ---------------------------------------------------------------------------
// A database of its own per test
// ---------------------------------------------------------------------------

/// A fresh schema on `DATABASE_URL`, and a URL whose connections use it.
struct Db {
    url: String,
    schema: String,
    admin: tokio_postgres::Client,
}

impl Db {
    /// `None` (after saying so) when `DATABASE_URL` is unset outside CI.
    async fn new(test: &str) -> Option<Db> {
        let base = pg_server::url_or_skip(test)?;
        let suffix = KeyId::random().unwrap().as_str()[..10].to_ascii_lowercase();
        let schema = format!("tak_cli_{test}_{suffix}");
        let config = Config::from_str(&base).expect("DATABASE_URL parses");
        let (admin, connection) = config.connect(NoTls).await.expect("connect");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create the test schema");
        // libpq's `options` URL parameter, percent-encoded: `-c search_path=...`.
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(Db { url, schema, admin })
    }

    /// A migrated store on this schema, as a server would open it.
    async fn store(&self, hasher: KeyHasher) -> PgKeyStore {
        let store = PgKeyStore::builder(&self.url)
            .unwrap()
            .hasher(hasher)
            .connect()
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    async fn migrated(test: &str) -> Option<Db> {
        let db = Db::new(test).await?;
        cli(["migrate"]).db(&db).run().await.ok();
        Some(db)
    }

    async fn drop_schema(self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await;
    }
}

// ---------------------------------------------------------------------------
// Usage, help and configuration (no database)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn usage_errors_exit_2() {
    let url = ["--database-url", "postgres://nobody@127.0.0.1:1/none"];
    for args in [
        vec![],
        vec!["keys"],
        vec!["frobnicate"],
        vec!["keys", "create"],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--expires-in",
            "90d",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ],
        vec!["keys", "create", "--account", "sa", "--expires-in", "soon"],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--expires-at",
            "tomorrow",
        ],
        vec!["keys", "get", "not-a-key-id"],
        vec![
            "keys",
            "update",
            "0000000000000000",
            "--scope",
            "a",
            "--unscoped",
        ],
        vec![
            "keys",
            "update",
            "0000000000000000",
            "--no-expiry",
            "--expires-in",
            "1d",
        ],
        vec!["keys", "reissue", "0000000000000000", "--grace", "forever"],
        vec!["migrate", "--output", "yaml"],
        // Limits and credits.
        vec!["keys", "create", "--account", "sa", "--rate-limit", "5/1w"],
        vec!["keys", "create", "--account", "sa", "--rate-limit", "0/1s"],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--rate-limit",
            "5/1s,brust=2",
        ],
        vec!["keys", "create", "--account", "sa", "--refill", "daily:5"],
        vec!["keys", "create", "--account", "sa", "--credits", "-1"],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--credits",
            "1",
            "--refill",
            "weekly:5",
        ],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--credits",
            "1",
            "--refill",
            "monthly:5",
        ],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--credits",
            "1",
            "--refill",
            "monthly:5:32",
        ],
        vec![
            "keys",
            "create",
            "--account",
            "sa",
            "--credits",
            "1",
            "--refill",
            "daily:5:1",
        ],
        vec![
            "keys",
            "update",
            "0000000000000000",
            "--rate-limit",
            "5/1s",
            "--no-rate-limits",
        ],
        vec![
            "keys",
            "update",
            "0000000000000000",
            "--credits",
            "3",
            "--no-credits",
        ],
        vec!["keys", "add-credits", "0000000000000000"],
        vec!["keys", "add-credits", "0000000000000000", "-5"],
        vec!["keys", "add-credits", "not-a-key-id", "5"],
        vec!["accounts", "rate-limits", "set", "sa"],
        vec![
            "accounts",
            "rate-limits",
            "set",
            "sa",
            "--none",
            "--rate-limit",
            "5/1s",
        ],
        vec!["accounts", "rate-limits", "get"],
    ] {
        let run = cli(args.iter().chain(&url)).run().await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
    // Without a store to work on.
    let run = cli(["keys", "list", "--account", "sa"]).run().await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("DATABASE_URL"), "{run:?}");
}

#[tokio::test]
async fn every_command_has_help_with_an_example() {
    for command in [
        vec![],
        vec!["migrate"],
        vec!["export"],
        vec!["import"],
        vec!["keys"],
        vec!["keys", "create"],
        vec!["keys", "list"],
        vec!["keys", "get"],
        vec!["keys", "update"],
        vec!["keys", "reissue"],
        vec!["keys", "revoke"],
        vec!["keys", "check"],
        vec!["keys", "add-credits"],
        vec!["accounts"],
        vec!["accounts", "rate-limits"],
        vec!["accounts", "rate-limits", "get"],
        vec!["accounts", "rate-limits", "set"],
    ] {
        let run = cli(command.iter().chain(&["--help"])).run().await.ok();
        assert!(run.stdout.contains("tower-api-key"), "{command:?}: {run:?}");
        assert!(
            run.stdout.contains("Example"),
            "{command:?} has no example: {run:?}"
        );
    }
}

#[tokio::test]
async fn help_never_shows_the_database_url_from_the_environment() {
    let url = "postgres://app:hunter2-db-password@db.internal/app";
    let run = cli(["keys", "list", "--help"])
        .env("DATABASE_URL", url)
        .run()
        .await
        .ok();
    run.never_shows("hunter2-db-password");
}

#[tokio::test]
async fn a_pepper_is_never_taken_from_a_flag_and_never_echoed() {
    let run = cli([
        "--pepper",
        "hunter2-pepper",
        "keys",
        "list",
        "--account",
        "sa",
    ])
    .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
    .run()
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    run.never_shows("hunter2-pepper");
}

#[tokio::test]
async fn a_pepper_needs_its_version_and_one_source() {
    let url = "postgres://nobody@127.0.0.1:1/none";
    let run = cli(["keys", "list", "--account", "sa"])
        .env("DATABASE_URL", url)
        .env("TOWER_API_KEY_PEPPER", "hunter2-pepper")
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("TOWER_API_KEY_PEPPER_VERSION"),
        "{run:?}"
    );
    run.never_shows("hunter2-pepper");

    let dir = temp_dir("pepper_sources");
    let file = dir.join("pepper");
    std::fs::write(&file, "hunter2-pepper\n").unwrap();
    let run = cli(["keys", "list", "--account", "sa"])
        .env("DATABASE_URL", url)
        .env("TOWER_API_KEY_PEPPER", "hunter2-pepper")
        .env("TOWER_API_KEY_PEPPER_FILE", file.to_str().unwrap())
        .env("TOWER_API_KEY_PEPPER_VERSION", "1")
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("keep one"), "{run:?}");
    run.never_shows("hunter2-pepper");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn check_refuses_a_key_on_the_command_line_without_echoing_it() {
    let key = KeyFormat::default().generate().unwrap();
    let run = cli(["keys", "check", key.expose_secret()])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .run()
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("stdin"), "{run:?}");
    run.never_shows(key.expose_secret());
}

#[tokio::test]
async fn a_database_url_of_another_kind_is_an_error_on_one_line() {
    let run = cli(["keys", "list", "--account", "sa"])
        .env("DATABASE_URL", "mysql://root@localhost/keys")
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.contains("postgres://") && run.stderr.contains("sqlite:"),
        "{run:?}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_on_one_line_without_the_password() {
    let run = cli(["keys", "get", "0000000000000000"])
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-db-password@127.0.0.1:1/app",
        )
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    run.never_shows("hunter2-db-password");
}

#[tokio::test]
async fn a_sqlite_url_without_a_file_is_an_error_on_one_line() {
    let run = cli(["migrate"]).env("DATABASE_URL", "sqlite:").run().await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("sqlite:PATH"), "{run:?}");
}

fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tak_cli_{test}_{}",
        KeyId::random().unwrap().as_str()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn migrate_is_idempotent() {
    let Some(db) = Db::new("migrate").await else {
        return;
    };
    let first = cli(["migrate"]).db(&db).run().await.ok();
    let second = cli(["migrate"]).db(&db).run().await.ok();
    assert!(first.stderr.contains("applied"), "{first:?}");
    assert!(second.stderr.contains("already"), "{second:?}");
    db.drop_schema().await;
}

#[tokio::test]
async fn a_store_without_its_schema_says_to_run_migrate() {
    let Some(db) = Db::new("unmigrated").await else {
        return;
    };
    let dir = temp_dir("unmigrated");
    let sqlite = format!("sqlite:{}", dir.join("keys.db").display());
    for url in [db.url.as_str(), sqlite.as_str()] {
        let run = cli(["keys", "list", "--account", "sa-1"])
            .env("DATABASE_URL", url)
            .run()
            .await;
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(run.stderr.contains("tower-api-key migrate"), "{run:?}");
    }
    db.drop_schema().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn create_prints_only_the_secret_on_stdout_and_the_details_on_stderr() {
    let Some(db) = Db::migrated("create_stdout").await else {
        return;
    };
    let run = cli([
        "keys",
        "create",
        "--account",
        "sa-1",
        "--scope",
        "reports.read",
    ])
    .db(&db)
    .run()
    .await
    .ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    let key = parse(lines[0]);
    assert!(run.stderr.contains(key.id().as_str()), "{run:?}");
    assert!(run.stderr.contains("sa-1") && run.stderr.contains("reports.read"));
    assert!(
        !run.stderr.contains(lines[0]),
        "the secret is on stdout only"
    );
    db.drop_schema().await;
}

#[tokio::test]
async fn json_output_parses_for_every_keys_command() {
    let Some(db) = Db::migrated("json_output").await else {
        return;
    };
    let created = json_of(
        &db,
        &[
            "keys",
            "create",
            "--account",
            "sa-1",
            "--scope",
            "a.read",
            "--expires-in",
            "90d",
        ],
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(parse(&secret).id().as_str(), id);
    assert_eq!(created["key"]["scopes"], serde_json::json!(["a.read"]));
    assert!(created["key"]["expires_at"].is_string());

    let listed = json_of(&db, &["keys", "list", "--account", "sa-1"]).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["keys"][0]["id"], id.as_str());

    let got = json_of(&db, &["keys", "get", &id]).await;
    assert_eq!(got["service_account_id"], "sa-1");
    assert!(got["hint"]
        .as_str()
        .unwrap()
        .ends_with(&secret[secret.len() - 4..]));

    let updated = json_of(
        &db,
        &[
            "keys",
            "update",
            &id,
            "--description",
            "nightly",
            "--no-expiry",
        ],
    )
    .await;
    assert_eq!(updated["description"], "nightly");
    assert!(updated["expires_at"].is_null());

    let reissued = json_of(&db, &["keys", "reissue", &id]).await;
    assert_ne!(reissued["secret"].as_str().unwrap(), secret);
    assert_eq!(reissued["key"]["id"], id.as_str());

    let revoked = json_of(&db, &["keys", "revoke", &id]).await;
    assert_eq!(revoked["revoked"], true);
    db.drop_schema().await;
}

#[tokio::test]
async fn list_pages_through_every_key_of_the_account() {
    let Some(db) = Db::migrated("list_pages").await else {
        return;
    };
    let store = db.store(KeyHasher::sha256()).await;
    // More than one page of 200.
    for _ in 0..205 {
        store.create(NewKey::new("sa-many")).await.unwrap();
    }
    store.create(NewKey::new("sa-other")).await.unwrap();
    let run = cli(["keys", "list", "--account", "sa-many", "-o", "json"])
        .db(&db)
        .run()
        .await
        .ok();
    let keys = run.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 205);
    assert!(keys.iter().all(|k| k["service_account_id"] == "sa-many"));
    let table = cli(["keys", "list", "--account", "sa-many"])
        .db(&db)
        .run()
        .await
        .ok();
    assert_eq!(
        table.stdout.lines().count(),
        206,
        "a header and one row per key"
    );
    store.shutdown().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn get_update_and_revoke_act_on_the_stored_key() {
    let Some(db) = Db::migrated("get_update_revoke").await else {
        return;
    };
    let secret = create_key(
        &db,
        &[
            "--account",
            "sa-1",
            "--scope",
            "a.read",
            "--description",
            "first",
        ],
    )
    .await;
    let id = id_of(&secret).to_string();

    let got = cli(["keys", "get", &id]).db(&db).run().await.ok();
    assert!(
        got.stdout.contains("first") && got.stdout.contains("a.read"),
        "{got:?}"
    );
    got.never_shows(&secret);

    let at = "2031-05-06T07:08:09Z";
    let updated = cli([
        "keys",
        "update",
        &id,
        "--scope",
        "b.write",
        "--scope",
        "c.read",
        "--expires-at",
        at,
        "-o",
        "json",
    ])
    .db(&db)
    .run()
    .await
    .ok();
    let updated = updated.json();
    assert_eq!(updated["scopes"], serde_json::json!(["b.write", "c.read"]));
    assert_eq!(updated["expires_at"], "2031-05-06T07:08:09.000000Z");
    assert_eq!(updated["description"], "first", "unchanged when not asked");

    let unscoped = cli(["keys", "update", &id, "--unscoped", "-o", "json"])
        .db(&db)
        .run()
        .await
        .ok();
    assert_eq!(unscoped.json()["scopes"], serde_json::json!([]));

    let nothing = cli(["keys", "update", &id]).db(&db).run().await;
    assert_eq!(nothing.code, 1, "{nothing:?}");

    cli(["keys", "revoke", &id]).db(&db).run().await.ok();
    for args in [
        vec!["keys", "get", &id],
        vec!["keys", "revoke", &id],
        vec!["keys", "update", &id, "--no-expiry"],
        vec!["keys", "reissue", &id],
    ] {
        let run = cli(&args).db(&db).run().await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert_eq!(
            run.stderr.trim_end(),
            format!("error: no key {id}"),
            "{args:?}"
        );
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn invalid_input_is_refused_with_the_librarys_rules_and_never_echoes_a_key() {
    let Some(db) = Db::migrated("validation").await else {
        return;
    };
    let secret = create_key(&db, &["--account", "sa-1"]).await;
    let id = id_of(&secret).to_string();
    let description = format!("see {secret}");
    for args in [
        vec!["keys", "create", "--account", ""],
        vec!["keys", "create", "--account", "has space"],
        vec![
            "keys",
            "create",
            "--account",
            "sa-1",
            "--scope",
            "not a scope",
        ],
        vec!["keys", "create", "--account", "sa-1", "--scope", &secret],
        vec![
            "keys",
            "create",
            "--account",
            "sa-1",
            "--description",
            &description,
        ],
        vec![
            "keys",
            "create",
            "--account",
            "sa-1",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
        vec![
            "keys",
            "create",
            "--account",
            "sa-1",
            "--expires-at",
            "9999-12-31T23:59:59.999999Z",
        ],
        vec!["keys", "update", &id, "--description", &description],
        vec!["keys", "reissue", &id, "--grace", "31d"],
    ] {
        let run = cli(&args).db(&db).run().await;
        // A key in an argument is refused before parsing, as a usage error.
        let code = if args.iter().any(|a| a.contains(&secret)) {
            2
        } else {
            1
        };
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
        run.never_shows(&secret);
    }
    // Nothing was created or changed.
    let listed = cli(["keys", "list", "--account", "sa-1", "-o", "json"])
        .db(&db)
        .run()
        .await
        .ok();
    assert_eq!(listed.json()["keys"].as_array().unwrap().len(), 1);
    db.drop_schema().await;
}

#[tokio::test]
async fn reissue_prints_the_new_secret_alone_and_the_old_one_works_for_the_grace() {
    let Some(db) = Db::migrated("reissue").await else {
        return;
    };
    let old = create_key(&db, &["--account", "sa-1"]).await;
    let id = id_of(&old).to_string();
    let run = cli(["keys", "reissue", &id, "--grace", "1h"])
        .db(&db)
        .run()
        .await
        .ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    let new = lines[0];
    assert_eq!(id_of(new).to_string(), id);
    assert_ne!(new, old);
    run.never_shows(&old);
    for secret in [&old, new] {
        let check = cli(["keys", "check"])
            .db(&db)
            .stdin(secret.as_bytes())
            .run()
            .await;
        assert_eq!(check.code, 0, "{check:?}");
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn check_reads_the_key_from_stdin_and_never_prints_it() {
    let Some(db) = Db::migrated("check").await else {
        return;
    };
    let secret = create_key(
        &db,
        &[
            "--account",
            "sa-check",
            "--scope",
            "a.read",
            "--scope",
            "b.write",
        ],
    )
    .await;
    let id = id_of(&secret).to_string();

    // Valid, with a trailing newline as `echo` writes it.
    let run = cli(["keys", "check"])
        .db(&db)
        .stdin(format!("{secret}\n"))
        .run()
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("valid"), "{run:?}");
    assert!(run.stdout.contains("sa-check") && run.stdout.contains("a.read,b.write"));
    assert!(run.stdout.contains("never"), "no expiry: {run:?}");
    run.never_shows(&secret);

    let json = cli(["keys", "check", "-o", "json"])
        .db(&db)
        .stdin(secret.as_bytes())
        .run()
        .await;
    assert_eq!(json.code, 0, "{json:?}");
    let verdict = json.json();
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["id"], id.as_str());
    assert_eq!(verdict["service_account_id"], "sa-check");
    json.never_shows(&secret);

    // A wrong secret for the same id, and something that is not a key.
    let other = KeyFormat::default().generate_for(id_of(&secret)).unwrap();
    let wrong = other.expose_secret().to_owned();
    for bad in [wrong.as_str(), "not a key at all"] {
        let run = cli(["keys", "check"])
            .db(&db)
            .stdin(bad.as_bytes())
            .run()
            .await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stdout.starts_with("invalid"), "{run:?}");
        run.never_shows(bad).never_shows(&secret);
    }

    // Revoked.
    cli(["keys", "revoke", &id]).db(&db).run().await.ok();
    let run = cli(["keys", "check"])
        .db(&db)
        .stdin(secret.as_bytes())
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.starts_with("invalid"), "{run:?}");
    run.never_shows(&secret);

    // Nothing on stdin.
    let run = cli(["keys", "check"]).db(&db).run().await;
    assert_eq!(run.code, 1, "{run:?}");
    db.drop_schema().await;
}

#[tokio::test]
async fn check_says_when_a_key_has_expired() {
    let Some(db) = Db::migrated("check_expired").await else {
        return;
    };
    // An expired key can only arrive by import (create refuses a past
    // expiry), into a store that never revoked it: a fresh file here.
    let secret = create_key(&db, &["--account", "sa-old"]).await;
    let mut line: Value =
        serde_json::from_str(cli(["export"]).db(&db).run().await.ok().stdout.trim_end()).unwrap();
    line["expires_at"] = Value::from("2020-01-01T00:00:00.000000Z");
    line["created_at"] = Value::from("2019-01-01T00:00:00.000000Z");
    let dir = temp_dir("check_expired");
    let file = format!("sqlite:{}", dir.join("keys.db").display());
    cli(["migrate"]).env("DATABASE_URL", &file).run().await.ok();
    cli(["import"])
        .env("DATABASE_URL", &file)
        .stdin(line.to_string())
        .run()
        .await
        .ok();

    let run = cli(["keys", "check"])
        .env("DATABASE_URL", &file)
        .stdin(secret.as_bytes())
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.starts_with("invalid"), "{run:?}");
    assert!(
        run.stdout
            .contains("expired at 2020-01-01T00:00:00.000000Z"),
        "{run:?}"
    );
    run.never_shows(&secret);
    std::fs::remove_dir_all(&dir).ok();
    db.drop_schema().await;
}

#[tokio::test]
async fn import_never_brings_back_a_key_the_store_revoked() {
    let Some(db) = Db::migrated("import_revoked").await else {
        return;
    };
    let secret = create_key(&db, &["--account", "sa-old"]).await;
    let id = id_of(&secret);
    let old_export = cli(["export"]).db(&db).run().await.ok().stdout;
    cli(["keys", "revoke", id.as_str()])
        .db(&db)
        .run()
        .await
        .ok();

    let run = cli(["import"]).db(&db).stdin(old_export).run().await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(id.as_str()) && run.stderr.contains("revoked"),
        "{run:?}"
    );
    run.never_shows(&secret);
    let check = cli(["keys", "check"])
        .db(&db)
        .stdin(secret.as_bytes())
        .run()
        .await;
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stdout.starts_with("invalid"), "{check:?}");
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Pepper
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_pepper_mismatch_is_reported_and_nothing_is_written() {
    let Some(db) = Db::migrated("pepper_mismatch").await else {
        return;
    };
    let dir = temp_dir("pepper_mismatch");
    let file = dir.join("pepper");
    std::fs::write(&file, "a long random server secret\n").unwrap();
    let file = file.to_str().unwrap();

    // A server peppered with version 3 made a key.
    let server = db
        .store(KeyHasher::with_pepper(Pepper::new(
            3,
            b"a long random server secret".to_vec(),
        )))
        .await;
    let server_key = server.create(NewKey::new("sa-1")).await.unwrap();
    let server_secret = server_key.key.expose_secret().to_owned();

    // No pepper, or another version: refused before anything is written.
    for (what, version) in [("no pepper", None), ("another version", Some("4"))] {
        let mut command = cli(["keys", "create", "--account", "sa-1"]).db(&db);
        if let Some(version) = version {
            command = command
                .env("TOWER_API_KEY_PEPPER_FILE", file)
                .env("TOWER_API_KEY_PEPPER_VERSION", version);
        }
        let run = command.run().await;
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(run.stderr.contains("pepper mismatch"), "{what}: {run:?}");
        assert!(run.stderr.contains("pepper version 3"), "{what}: {run:?}");
        assert!(run.stdout.is_empty(), "{what}: {run:?}");
        run.never_shows("a long random server secret");

        let id = server_key.record.key_id.to_string();
        let mut command = cli(["keys", "reissue", &id]).db(&db);
        if let Some(version) = version {
            command = command
                .env("TOWER_API_KEY_PEPPER_FILE", file)
                .env("TOWER_API_KEY_PEPPER_VERSION", version);
        }
        let run = command.run().await;
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(run.stderr.contains("pepper mismatch"), "{what}: {run:?}");

        // `keys check` says why it cannot tell, rather than "unknown".
        let check = cli(["keys", "check"])
            .db(&db)
            .stdin(server_secret.as_bytes())
            .run()
            .await;
        assert_eq!(check.code, 1, "{check:?}");
        assert!(check.stdout.contains("pepper version 3"), "{check:?}");
        check.never_shows(&server_secret);
    }
    assert_eq!(
        server
            .list("sa-1", Default::default())
            .await
            .unwrap()
            .keys
            .len(),
        1
    );
    assert!(
        server
            .get(server_key.record.key_id)
            .await
            .unwrap()
            .is_some(),
        "the refused reissue left the key as it was"
    );

    // The same pepper and version as the server: the CLI's key works on it.
    let secret = cli(["keys", "create", "--account", "sa-1"])
        .db(&db)
        .env("TOWER_API_KEY_PEPPER_FILE", file)
        .env("TOWER_API_KEY_PEPPER_VERSION", "3")
        .run()
        .await
        .ok()
        .stdout
        .trim_end()
        .to_owned();
    let record = server.verify(&parse(&secret)).await.unwrap();
    assert_eq!(
        record
            .expect("the server accepts the CLI's key")
            .service_account_id
            .as_ref(),
        "sa-1"
    );
    let check = cli(["keys", "check"])
        .db(&db)
        .env("TOWER_API_KEY_PEPPER", "a long random server secret")
        .env("TOWER_API_KEY_PEPPER_VERSION", "3")
        .stdin(server_secret.as_bytes())
        .run()
        .await;
    assert_eq!(check.code, 0, "{check:?}");
    server.shutdown().await;
    db.drop_schema().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn during_a_pepper_rotation_the_cli_may_hold_either_version() {
    let Some(db) = Db::migrated("pepper_rotation").await else {
        return;
    };
    let old = Pepper::new(1, b"the old server secret".to_vec());
    let new = Pepper::new(2, b"the new server secret".to_vec());
    let before = db.store(KeyHasher::with_pepper(old.clone())).await;
    before.create(NewKey::new("sa-1")).await.unwrap();
    let server = db
        .store(KeyHasher::with_pepper(new).with_previous_pepper(old))
        .await;
    server.create(NewKey::new("sa-1")).await.unwrap();

    for (version, secret) in [
        ("1", "the old server secret"),
        ("2", "the new server secret"),
    ] {
        let key = cli(["keys", "create", "--account", "sa-1"])
            .db(&db)
            .env("TOWER_API_KEY_PEPPER", secret)
            .env("TOWER_API_KEY_PEPPER_VERSION", version)
            .run()
            .await
            .ok()
            .stdout;
        let accepted = server.verify(&parse(key.trim_end())).await.unwrap();
        assert!(
            accepted.is_some(),
            "version {version}: the rotating server accepts it"
        );
    }
    // A version the store has never seen is refused.
    let run = cli(["keys", "create", "--account", "sa-1"])
        .db(&db)
        .env("TOWER_API_KEY_PEPPER", "some other secret")
        .env("TOWER_API_KEY_PEPPER_VERSION", "7")
        .run()
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("pepper version 1 and HMAC-SHA-256 with pepper version 2"),
        "{run:?}"
    );
    before.shutdown().await;
    server.shutdown().await;
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Export and import
// ---------------------------------------------------------------------------

#[tokio::test]
async fn export_holds_hashes_never_secrets_and_import_is_idempotent() {
    let Some(from) = Db::migrated("export_from").await else {
        return;
    };
    let Some(to) = Db::migrated("export_to").await else {
        return;
    };
    let kept = create_key(
        &from,
        &[
            "--account",
            "sa-1",
            "--scope",
            "a.read",
            "--expires-in",
            "30d",
        ],
    )
    .await;
    let old = create_key(&from, &["--account", "sa-2", "--description", "rotated"]).await;
    let id = id_of(&old).to_string();
    let new = cli(["keys", "reissue", &id, "--grace", "1h"])
        .db(&from)
        .run()
        .await
        .ok()
        .stdout
        .trim_end()
        .to_owned();

    let export = cli(["export"]).db(&from).run().await.ok();
    export
        .never_shows(&kept)
        .never_shows(&old)
        .never_shows(&new);
    let lines: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let rotated = lines.iter().find(|l| l["key_id"] == id.as_str()).unwrap();
    assert!(rotated["hash"].as_str().unwrap().starts_with("sha256$"));
    assert!(rotated["previous_hash"]
        .as_str()
        .unwrap()
        .starts_with("sha256$"));
    // RFC 3339 with microseconds.
    let until = rotated["previous_valid_until"].as_str().unwrap();
    assert_eq!(until.len(), "2030-01-31T12:00:00.000000Z".len(), "{until}");
    for line in &lines {
        let mut fields: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "created_at",
                "credits",
                "description",
                "expires_at",
                "hash",
                "hint",
                "key_id",
                "last_used_at",
                "previous_hash",
                "previous_valid_until",
                "rate_limits",
                "scopes",
                "service_account_id",
                "version"
            ]
        );
    }

    let first = cli(["import"])
        .db(&to)
        .stdin(export.stdout.as_bytes())
        .run()
        .await
        .ok();
    assert!(
        first
            .stderr
            .contains("2 added, 0 already present, 0 refused"),
        "{first:?}"
    );
    let again = cli(["import"])
        .db(&to)
        .stdin(export.stdout.as_bytes())
        .run()
        .await
        .ok();
    assert!(
        again
            .stderr
            .contains("0 added, 2 already present, 0 refused"),
        "{again:?}"
    );

    // Every secret that worked before the move works after it.
    let target = to.store(KeyHasher::sha256()).await;
    for secret in [&kept, &old, &new] {
        assert!(target.verify(&parse(secret)).await.unwrap().is_some());
    }
    assert_eq!(
        cli(["export"]).db(&to).run().await.ok().stdout,
        export.stdout,
        "the copy exports the same records"
    );
    target.shutdown().await;
    from.drop_schema().await;
    to.drop_schema().await;
}

#[tokio::test]
async fn import_names_each_refused_record_goes_on_and_exits_1() {
    let Some(db) = Db::migrated("import_refused").await else {
        return;
    };
    let Some(other) = Db::migrated("import_refused_other").await else {
        return;
    };
    let secret = create_key(&other, &["--account", "sa-1"]).await;
    let good = cli(["export"]).db(&other).run().await.ok().stdout;
    let good: Value = serde_json::from_str(good.trim_end()).unwrap();
    let id = id_of(&secret).to_string();

    // The same id with another hash: a conflict once the good line is in.
    let mut conflict = good.clone();
    conflict["hash"] = Value::from(format!("sha256${}", "ab".repeat(32)));
    let mut unknown_field = good.clone();
    unknown_field["key_id"] = Value::from("AAAAAAAAAAAAAAAA");
    unknown_field["colour"] = Value::from("blue");
    let mut bad_hash = good.clone();
    bad_hash["key_id"] = Value::from("BBBBBBBBBBBBBBBB");
    bad_hash["hash"] = Value::from("md5$0000");
    let mut secret_in_scopes = good.clone();
    secret_in_scopes["key_id"] = Value::from("CCCCCCCCCCCCCCCC");
    secret_in_scopes["scopes"] = Value::from(secret.as_str());
    let input = [
        good.to_string(),
        "{ not json".to_owned(),
        unknown_field.to_string(),
        String::new(),
        bad_hash.to_string(),
        conflict.to_string(),
        secret_in_scopes.to_string(),
    ]
    .join("\n");

    let run = cli(["import"]).db(&db).stdin(input).run().await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("1 added, 0 already present, 5 refused"),
        "{run:?}"
    );
    for (line, key) in [
        (2, "unknown"),
        (3, "AAAAAAAAAAAAAAAA"),
        (5, "BBBBBBBBBBBBBBBB"),
        (6, id.as_str()),
        (7, "CCCCCCCCCCCCCCCC"),
    ] {
        let named = format!("refused line {line} (key {key})");
        assert!(run.stderr.contains(&named), "{named}: {run:?}");
    }
    run.never_shows(&secret);
    // The good line went in, the refused ones did not.
    let check = cli(["keys", "check"])
        .db(&db)
        .stdin(secret.as_bytes())
        .run()
        .await;
    assert_eq!(check.code, 0, "{check:?}");
    let listed = cli(["keys", "list", "--account", "sa-1", "-o", "json"])
        .db(&db)
        .run()
        .await
        .ok();
    assert_eq!(listed.json()["keys"].as_array().unwrap().len(), 1);
    db.drop_schema().await;
    other.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Done when: two servers on PostgreSQL, the CLI in another process
// ---------------------------------------------------------------------------

/// A server's view of keys: a store of its own behind an authenticator
/// whose cache keeps a valid key for a minute, so only the store's
/// invalidation (NOTIFY) can make it refuse a revoked key in time.
struct Server {
    store: PgKeyStore,
    auth: Authenticator,
}

impl Server {
    async fn start(db: &Db) -> Server {
        let store = db.store(KeyHasher::sha256()).await;
        store
            .listener_status()
            .wait_for(ListenerStatus::is_listening)
            .await
            .expect("the store listens");
        let auth = Authenticator::builder(store.clone())
            .positive_ttl(Duration::from_secs(60))
            .build();
        Server { store, auth }
    }

    async fn accepts(&self, key: &PresentedKey) -> bool {
        match self.auth.cache().lookup(key).await {
            Ok(caller) => caller.service_account_id() == "sa-two-servers",
            Err(LookupError::Unknown) => false,
            Err(e) => panic!("unexpected lookup error: {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_key_revoked_by_the_cli_is_refused_by_two_postgres_servers_within_one_second() {
    let Some(db) = Db::migrated("two_servers").await else {
        return;
    };
    let servers = [Server::start(&db).await, Server::start(&db).await];

    let secret = create_key(&db, &["--account", "sa-two-servers"]).await;
    let key = parse(&secret);
    for server in &servers {
        assert!(server.accepts(&key).await, "a key made by the CLI works");
        // Now served from the cache: only an invalidation can change that.
        let (_, source) = server.auth.cache().lookup_with_source(&key).await.unwrap();
        assert_eq!(source, Source::Cache);
    }

    let run = cli(["keys", "revoke", key.id().as_str()])
        .db(&db)
        .run()
        .await
        .ok();
    let exited = Instant::now();
    run.never_shows(&secret);

    let deadline = exited + REFUSED_WITHIN;
    let mut refused_after = [None; 2];
    while refused_after.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, server) in servers.iter().enumerate() {
            if refused_after[i].is_none() && !server.accepts(&key).await {
                refused_after[i] = Some(exited.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = writeln!(
        std::io::stderr(),
        "revoke by the CLI to refusal, measured from its exit: {refused_after:?}"
    );
    assert!(
        refused_after.iter().all(Option::is_some),
        "both servers refuse within {REFUSED_WITHIN:?}: {refused_after:?}"
    );
    for server in servers {
        server.store.shutdown().await;
    }
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// Done when: a server on a SQLite file, the CLI in another process
// ---------------------------------------------------------------------------

/// A server on `path`: a store behind an authenticator whose cache keeps a
/// valid key for a minute, so only the store's watch of the file can make
/// it refuse a key the CLI revoked.
async fn sqlite_server(path: &std::path::Path) -> (SqliteKeyStore, Authenticator) {
    let store = SqliteKeyStore::builder(path).open().await.expect("open");
    let auth = Authenticator::builder(store.clone())
        .positive_ttl(Duration::from_secs(60))
        .build();
    (store, auth)
}

async fn accepts(auth: &Authenticator, key: &PresentedKey) -> bool {
    match auth.cache().lookup(key).await {
        Ok(_) => true,
        Err(LookupError::Unknown) => false,
        Err(e) => panic!("unexpected lookup error: {e:?}"),
    }
}

#[tokio::test]
async fn a_sqlite_server_takes_cli_keys_refuses_a_cli_revoke_within_one_second_and_keeps_keys_across_a_restart(
) {
    let dir = temp_dir("sqlite_server");
    let path = dir.join("keys.db");
    let url = format!("sqlite:{}", path.display());
    let sqlite = |args: &[&str]| cli(args).env("DATABASE_URL", &url);
    sqlite(&["migrate"]).run().await.ok();
    let (store, auth) = sqlite_server(&path).await;

    let create = || async {
        let run = sqlite(&["keys", "create", "--account", "sa-file"])
            .run()
            .await
            .ok();
        parse(run.stdout.trim_end())
    };
    let kept = create().await;
    let revoked = create().await;
    for key in [&kept, &revoked] {
        assert!(accepts(&auth, key).await, "a key made by the CLI works");
        let (_, source) = auth.cache().lookup_with_source(key).await.unwrap();
        assert_eq!(
            source,
            Source::Cache,
            "only an invalidation can refuse it now"
        );
    }

    sqlite(&["keys", "revoke", revoked.id().as_str()])
        .run()
        .await
        .ok();
    let exited = Instant::now();
    let deadline = exited + REFUSED_WITHIN;
    let mut refused_after = None;
    while refused_after.is_none() && Instant::now() < deadline {
        if !accepts(&auth, &revoked).await {
            refused_after = Some(exited.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SQLite: revoke by the CLI to refusal, measured from its exit: {refused_after:?}"
    );
    assert!(refused_after.is_some(), "refused within {REFUSED_WITHIN:?}");
    assert!(accepts(&auth, &kept).await);

    // Restart: a new store and cache on the same file.
    store.shutdown().await;
    drop((store, auth));
    let (store, auth) = sqlite_server(&path).await;
    assert!(
        accepts(&auth, &kept).await,
        "a key made earlier still works"
    );
    assert!(
        !accepts(&auth, &revoked).await,
        "a revoked key stays refused"
    );
    store.shutdown().await;
}

#[tokio::test]
async fn export_from_sqlite_then_import_into_postgres_keeps_every_key_working() {
    let Some(db) = Db::migrated("sqlite_to_postgres").await else {
        return;
    };
    let dir = temp_dir("sqlite_to_postgres");
    let url = format!("sqlite:{}", dir.join("keys.db").display());
    let sqlite = |args: &[&str]| cli(args).env("DATABASE_URL", &url);
    sqlite(&["migrate"]).run().await.ok();
    let plain = sqlite(&[
        "keys",
        "create",
        "--account",
        "sa-move",
        "--scope",
        "a.read",
        "--expires-in",
        "30d",
    ])
    .run()
    .await
    .ok()
    .stdout;
    let old = sqlite(&["keys", "create", "--account", "sa-move"])
        .run()
        .await
        .ok()
        .stdout;
    let new = sqlite(&[
        "keys",
        "reissue",
        id_of(old.trim_end()).as_str(),
        "--grace",
        "1h",
    ])
    .run()
    .await
    .ok()
    .stdout;

    let export = sqlite(&["export"]).run().await.ok();
    for secret in [&plain, &old, &new] {
        export.never_shows(secret.trim_end());
    }
    let import = cli(["import"])
        .db(&db)
        .stdin(export.stdout.as_bytes())
        .run()
        .await
        .ok();
    assert!(
        import
            .stderr
            .contains("2 added, 0 already present, 0 refused"),
        "{import:?}"
    );

    // A server on PostgreSQL accepts them: the plain key, and both secrets
    // of the reissued one (the old one until its grace ends).
    let server = Server::start(&db).await;
    for secret in [&plain, &old, &new] {
        let key = parse(secret.trim_end());
        let caller = server
            .auth
            .cache()
            .lookup(&key)
            .await
            .expect("accepted on PostgreSQL");
        assert_eq!(caller.service_account_id(), "sa-move");
    }
    server.store.shutdown().await;
    db.drop_schema().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Rate limits and credits (on a SQLite file: no server needed)
// ---------------------------------------------------------------------------

/// Runs `args` with `--output json` on the store at `url`; the parsed stdout.
async fn json_at(url: &str, args: &[&str]) -> Value {
    cli(args.iter().chain(&["--output", "json"]))
        .env("DATABASE_URL", url)
        .run()
        .await
        .ok()
        .json()
}

/// A migrated SQLite file in a directory of its own; its URL.
async fn sqlite_db(test: &str) -> (std::path::PathBuf, String) {
    let dir = temp_dir(test);
    let url = format!("sqlite:{}", dir.join("keys.db").display());
    cli(["migrate"]).env("DATABASE_URL", &url).run().await.ok();
    (dir, url)
}

#[tokio::test]
async fn limits_and_credits_are_set_shown_topped_up_and_removed_like_the_management_api() {
    let (dir, url) = sqlite_db("limits").await;
    let run = |args: &[&str]| cli(args).env("DATABASE_URL", &url).run();

    let created = json_at(
        &url,
        &[
            "keys",
            "create",
            "--account",
            "sa-1",
            "--scope",
            "a.read",
            "--rate-limit",
            "5/1s",
            "--rate-limit",
            "100/60s,burst=20",
            "--credits",
            "3",
            "--refill",
            "monthly:100:15",
        ],
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let limits = serde_json::json!([
        {"limit": 5, "period": "1s", "burst": 5},
        {"limit": 100, "period": "1m", "burst": 20}
    ]);
    assert_eq!(created["key"]["rate_limits"], limits);
    assert_eq!(
        created["key"]["credits"],
        serde_json::json!({"remaining": 3, "refill": {"amount": 100, "interval": "monthly", "day": 15}})
    );
    let got = json_at(&url, &["keys", "get", &id]).await;
    assert_eq!(got["rate_limits"], limits);
    assert_eq!(got["credits"]["remaining"], 3);
    let listed = json_at(&url, &["keys", "list", "--account", "sa-1"]).await;
    assert_eq!(listed["keys"][0]["rate_limits"], limits);

    // A server on the same file sees them.
    let store = SqliteKeyStore::builder(dir.join("keys.db"))
        .open()
        .await
        .unwrap();
    let record = store.verify(&parse(&secret)).await.unwrap().unwrap();
    assert_eq!(record.rate_limits.len(), 2);
    assert_eq!(record.credits.map(|c| c.remaining()), Some(3));

    // The table shows the text forms.
    let table = run(&["keys", "get", &id]).await.ok();
    assert!(table.stdout.contains("RATE LIMITS") && table.stdout.contains("CREDITS"));
    assert!(table.stdout.contains("5/1s 100/1m,burst=20"), "{table:?}");
    assert!(
        table.stdout.contains("3 (monthly 100 on day 15)"),
        "{table:?}"
    );
    table.never_shows(&secret);
    let check = cli(["keys", "check"])
        .env("DATABASE_URL", &url)
        .stdin(secret.as_bytes())
        .run()
        .await
        .ok();
    assert!(
        check.stdout.contains("rate limits: 5/1s 100/1m,burst=20\n"),
        "{check:?}"
    );
    assert!(
        check.stdout.contains("credits: 3 (monthly 100 on day 15)"),
        "{check:?}"
    );
    let verdict = cli(["keys", "check", "-o", "json"])
        .env("DATABASE_URL", &url)
        .stdin(secret.as_bytes())
        .run()
        .await
        .ok()
        .json();
    assert_eq!(verdict["rate_limits"], limits);
    assert_eq!(verdict["credits"]["remaining"], 3);

    // Top up, replace, remove.
    let topped = run(&["keys", "add-credits", &id, "5", "-o", "json"])
        .await
        .ok();
    assert_eq!(topped.json()["credits"]["remaining"], 8);
    assert!(topped.stderr.contains("8 remaining"), "{topped:?}");
    let updated = json_at(
        &url,
        &[
            "keys",
            "update",
            &id,
            "--rate-limit",
            "1/500ms",
            "--credits",
            "10",
            "--refill",
            "daily:50",
        ],
    )
    .await;
    assert_eq!(
        updated["rate_limits"],
        serde_json::json!([{"limit": 1, "period": "500ms", "burst": 1}])
    );
    assert_eq!(
        updated["credits"],
        serde_json::json!({"remaining": 10, "refill": {"amount": 50, "interval": "daily", "day": 1}})
    );
    assert_eq!(
        updated["scopes"],
        serde_json::json!(["a.read"]),
        "unchanged"
    );
    let removed = json_at(
        &url,
        &["keys", "update", &id, "--no-rate-limits", "--no-credits"],
    )
    .await;
    assert_eq!(removed["rate_limits"], serde_json::json!([]));
    assert!(removed["credits"].is_null());
    let record = store.verify(&parse(&secret)).await.unwrap().unwrap();
    assert!(record.rate_limits.is_empty() && record.credits.is_none());

    let none = run(&["keys", "add-credits", &id, "5"]).await;
    assert_eq!(none.code, 1, "{none:?}");
    assert_eq!(none.stderr.lines().count(), 1, "{none:?}");
    assert!(none.stderr.contains("no credits"), "{none:?}");
    let unknown = run(&["keys", "add-credits", "0123456789abcdef", "5"]).await;
    assert_eq!(unknown.code, 1);
    assert_eq!(unknown.stderr.trim_end(), "error: no key 0123456789abcdef");
    store.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn account_rate_limits_are_set_shown_and_removed() {
    let (dir, url) = sqlite_db("account_limits").await;
    let run = |args: &[&str]| cli(args).env("DATABASE_URL", &url).run();
    let secret = {
        let run = run(&["keys", "create", "--account", "sa-shared"])
            .await
            .ok();
        run.stdout.trim_end().to_owned()
    };
    let get = run(&["accounts", "rate-limits", "get", "sa-shared", "-o", "json"])
        .await
        .ok();
    assert_eq!(get.json(), serde_json::json!({"rate_limits": []}));
    let empty = run(&["accounts", "rate-limits", "get", "sa-shared"])
        .await
        .ok();
    assert_eq!(empty.stdout, "no rate limits\n");

    let set = run(&[
        "accounts",
        "rate-limits",
        "set",
        "sa-shared",
        "--rate-limit",
        "2/3600s",
        "--rate-limit",
        "50/1d,burst=5",
        "-o",
        "json",
    ])
    .await
    .ok();
    let limits = serde_json::json!({"rate_limits": [
        {"limit": 2, "period": "1h", "burst": 2},
        {"limit": 50, "period": "1d", "burst": 5}
    ]});
    assert_eq!(set.json(), limits);
    let get = run(&["accounts", "rate-limits", "get", "sa-shared", "-o", "json"])
        .await
        .ok();
    assert_eq!(get.json(), limits);
    let table = run(&["accounts", "rate-limits", "get", "sa-shared"])
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(
        lines[1].split_whitespace().eq(["2", "1h", "2"]),
        "{table:?}"
    );
    assert!(
        lines[2].split_whitespace().eq(["50", "1d", "5"]),
        "{table:?}"
    );

    // A server sees them on the account's keys; the key's own stay empty.
    let store = SqliteKeyStore::builder(dir.join("keys.db"))
        .open()
        .await
        .unwrap();
    let record = store.verify(&parse(&secret)).await.unwrap().unwrap();
    assert_eq!(record.account_rate_limits.len(), 2);
    assert!(record.rate_limits.is_empty());
    let key = run(&["keys", "get", id_of(&secret).as_str(), "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(key["rate_limits"], serde_json::json!([]));
    assert!(key.get("account_rate_limits").is_none());

    let cleared = run(&[
        "accounts",
        "rate-limits",
        "set",
        "sa-shared",
        "--none",
        "-o",
        "json",
    ])
    .await
    .ok();
    assert_eq!(cleared.json(), serde_json::json!({"rate_limits": []}));
    assert!(cleared.stderr.contains("removed"), "{cleared:?}");
    assert!(store
        .account_rate_limits("sa-shared")
        .await
        .unwrap()
        .is_empty());
    store.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn invalid_limits_and_credits_are_refused_on_one_line_and_change_nothing() {
    let (dir, url) = sqlite_db("limits_validation").await;
    let run = |args: Vec<String>| cli(args).env("DATABASE_URL", &url).run();
    let secret = run(vec![
        "keys".into(),
        "create".into(),
        "--account".into(),
        "sa-1".into(),
    ])
    .await
    .ok()
    .stdout
    .trim_end()
    .to_owned();
    let id = id_of(&secret).to_string();
    let nine: Vec<String> = (1..=9)
        .flat_map(|n| ["--rate-limit".to_owned(), format!("{n}/1s")])
        .collect();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for args in [
        [s(&["keys", "create", "--account", "sa-1"]), nine.clone()].concat(),
        s(&[
            "keys",
            "create",
            "--account",
            "sa-1",
            "--rate-limit",
            "5/1s",
            "--rate-limit",
            "5/1000ms",
        ]),
        s(&[
            "keys",
            "create",
            "--account",
            "sa-1",
            "--credits",
            "1000000000001",
        ]),
        [s(&["keys", "update", &id]), nine].concat(),
        s(&["keys", "update", &id, "--credits", "1000000000001"]),
        s(&["keys", "add-credits", &id, "0"]),
        s(&["accounts", "rate-limits", "set", "sa 1", "--none"]),
        s(&["accounts", "rate-limits", "set", &secret, "--none"]),
        s(&["accounts", "rate-limits", "get", ""]),
    ] {
        let out = run(args.clone()).await;
        // A key in an argument is refused before parsing, as a usage error.
        let code = if args.iter().any(|a| a.contains(&secret)) {
            2
        } else {
            1
        };
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        out.never_shows(&secret);
    }
    let listed = run(s(&["keys", "list", "--account", "sa-1", "-o", "json"]))
        .await
        .ok()
        .json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["keys"][0]["rate_limits"], serde_json::json!([]));
    assert!(listed["keys"][0]["credits"].is_null());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn export_and_import_carry_a_keys_limits_and_credits() {
    let (from_dir, from) = sqlite_db("limits_export").await;
    let (to_dir, to) = sqlite_db("limits_import").await;
    let created = json_at(
        &from,
        &[
            "keys",
            "create",
            "--account",
            "sa-1",
            "--rate-limit",
            "5/1s,burst=10",
            "--credits",
            "7",
            "--refill",
            "daily:20",
        ],
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let export = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    export.never_shows(&secret);
    let line: Value = serde_json::from_str(export.stdout.trim_end()).unwrap();
    assert_eq!(
        line["rate_limits"],
        serde_json::json!([{"limit": 5, "period": "1s", "burst": 10}])
    );
    assert_eq!(
        line["credits"],
        serde_json::json!({"remaining": 7, "refill": {"amount": 20, "interval": "daily", "day": 1}})
    );
    let imported = cli(["import"])
        .env("DATABASE_URL", &to)
        .stdin(export.stdout.as_bytes())
        .run()
        .await
        .ok();
    assert!(imported.stderr.contains("1 added"), "{imported:?}");
    let got = json_at(&to, &["keys", "get", &id]).await;
    assert_eq!(got["rate_limits"], line["rate_limits"]);
    assert_eq!(got["credits"], line["credits"]);
    let _ = std::fs::remove_dir_all(from_dir);
    let _ = std::fs::remove_dir_all(to_dir);
}

// ---------------------------------------------------------------------------
// Issue 20: keys on the command line, times, unmigrated files
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_key_in_any_argument_is_refused_with_exit_2_and_never_shown() {
    let (dir, url) = sqlite_db("key_in_argv").await;
    let key = KeyFormat::default().generate().unwrap();
    let k = key.expose_secret();
    let glued = format!("x{k}");
    let id = "0000000000000000";
    for (args, names) in [
        (vec!["keys", "get", k], "ID"),
        (vec!["keys", "revoke", k], "ID"),
        (vec!["keys", "update", k, "--description", "d"], "ID"),
        (vec!["keys", "reissue", k], "ID"),
        (vec!["keys", "add-credits", id, k], "N"),
        (vec!["keys", "add-credits", id, &glued], "N"),
        (
            vec!["keys", "create", "--account", "sa", "--expires-at", k],
            "--expires-at",
        ),
        (
            vec!["keys", "update", id, "--expires-at", k],
            "--expires-at",
        ),
        (vec!["keys", "check", "x", k], "stdin"),
        (vec!["keys", "check", k], "stdin"),
        (vec!["keys", "create", "--account", k], "--account"),
        (vec!["keys", "create", "--account", &glued], "--account"),
        (vec!["keys", "list", "--account", k], "--account"),
        (vec!["accounts", "rate-limits", "get", k], "SA"),
        (
            vec!["keys", "create", "--account", "sa", "--description", k],
            "--description",
        ),
        (
            vec!["keys", "create", "--account", "sa", "--scope", k],
            "--scope",
        ),
    ] {
        let run = cli(&args).env("DATABASE_URL", &url).run().await;
        assert_eq!(run.code, 2, "{names}: {run:?}");
        run.never_shows(k);
        assert!(run.stdout.is_empty(), "{names}");
        assert!(run.stderr.contains(names), "{names}: {}", run.stderr);
        assert!(
            run.stderr.contains("revoke"),
            "says it is exposed: {}",
            run.stderr
        );
    }
    // Nothing was stored under any of those names.
    let export = cli(["export"]).env("DATABASE_URL", &url).run().await.ok();
    assert!(export.stdout.is_empty(), "{export:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A key written straight into the file, as another tool could.
fn write_raw(path: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn a_leap_second_is_read_as_the_last_instant_of_its_minute_as_the_api_reads_it() {
    let (dir, url) = sqlite_db("leap_second").await;
    // The old CLI refused it; the API read it as :59.000.
    let created = json_at(
        &url,
        &[
            "keys",
            "create",
            "--account",
            "sa-leap",
            "--expires-at",
            "2098-12-31T23:59:60Z",
        ],
    )
    .await;
    assert_eq!(
        created["key"]["expires_at"], "2098-12-31T23:59:59.999999Z",
        "{created}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn stored_times_past_year_9999_are_shown_clamped_as_the_api_shows_them() {
    let (dir, url) = sqlite_db("clamped_times").await;
    let created = json_at(&url, &["keys", "create", "--account", "sa-far"]).await;
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    // i64::MAX microseconds (year 294247), written by another tool.
    write_raw(
        &dir.join("keys.db"),
        &format!(
            "UPDATE tower_api_key_keys SET expires_at = {0}, last_used_at = {0} WHERE key_id = '{id}'",
            i64::MAX
        ),
    );
    let shown = json_at(&url, &["keys", "get", &id]).await;
    assert_eq!(
        shown["expires_at"], "9999-12-31T23:59:59.999000Z",
        "{shown}"
    );
    assert_eq!(
        shown["last_used_at"], "9999-12-31T23:59:59.999000Z",
        "{shown}"
    );
    let table = cli(["keys", "get", &id])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    assert!(
        table.stdout.contains("9999-12-31T23:59:59.999000Z"),
        "{table:?}"
    );
    assert!(!table.stdout.contains("294247"), "{table:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn only_migrate_creates_a_sqlite_file() {
    let dir = temp_dir("create_if_missing");
    let path = dir.join("typo.db");
    let url = format!("sqlite:{}", path.display());
    for args in [
        vec!["keys", "list", "--account", "sa"],
        vec!["keys", "create", "--account", "sa"],
        vec!["export"],
        vec!["import"],
    ] {
        let run = cli(&args).env("DATABASE_URL", &url).run().await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(run.stderr.contains("tower-api-key migrate"), "{run:?}");
        assert!(!path.exists(), "{args:?} created the file");
    }
    cli(["migrate"]).env("DATABASE_URL", &url).run().await.ok();
    assert!(path.exists());
    cli(["keys", "list", "--account", "sa"])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn import_into_a_file_not_migrated_says_to_migrate_and_writes_nothing() {
    let (dir, from) = sqlite_db("import_unmigrated").await;
    create_key_at(&from).await;
    let export = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    assert_eq!(export.stdout.lines().count(), 1, "{export:?}");

    // An existing file without the schema: empty, or migrated by an older
    // release (only migration 1).
    let empty = dir.join("empty.db");
    std::fs::File::create(&empty).unwrap();
    let old = dir.join("old.db");
    write_raw(
        &old,
        &format!(
            "CREATE TABLE tower_api_key_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER); \
             INSERT INTO tower_api_key_migrations VALUES (1, 'keys', 0); {}",
            tower_api_key_sqlite::migrations()[0].sql()
        ),
    );
    for path in [&empty, &old] {
        let url = format!("sqlite:{}", path.display());
        let run = cli(["import"])
            .env("DATABASE_URL", &url)
            .stdin(export.stdout.clone())
            .run()
            .await;
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(
            run.stderr.contains("run `tower-api-key migrate` first"),
            "{run:?}"
        );
        assert!(!run.stderr.contains("no such table"), "{run:?}");
        let conn = rusqlite::Connection::open(path).unwrap();
        let has_keys: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tower_api_key_keys'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap()
            > 0;
        if has_keys {
            let rows: i64 = conn
                .query_row("SELECT count(*) FROM tower_api_key_keys", [], |row| {
                    row.get(0)
                })
                .unwrap();
            assert_eq!(rows, 0, "nothing imported");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Creates a key through the CLI on the store at `url`.
async fn create_key_at(url: &str) -> String {
    let run = cli(["keys", "create", "--account", "sa-import"])
        .env("DATABASE_URL", url)
        .run()
        .await
        .ok();
    run.stdout.trim_end().to_owned()
}

// ---------------------------------------------------------------------------
// import applies the rules of create; revocations travel (issue 20)
// ---------------------------------------------------------------------------

/// `line` with its `key_id` first (as `export` writes it), then the rest.
fn line_with_id_first(line: &Value, id: &str) -> String {
    let mut rest = line.clone();
    rest.as_object_mut().unwrap().remove("key_id");
    let rest = rest.to_string();
    format!("{{\"key_id\":{},{}", Value::from(id), &rest[1..])
}

#[tokio::test]
async fn import_of_crafted_lines_adds_only_the_valid_one_and_names_each_refused_key() {
    let (from_dir, from) = sqlite_db("crafted_from").await;
    let (to_dir, to) = sqlite_db("crafted_to").await;
    let created = json_at(&from, &["keys", "create", "--account", "sa-1"]).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let export = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    let good: Value = serde_json::from_str(export.stdout.trim_end()).unwrap();

    let set = |field: &str, value: Value| {
        let mut line = good.clone();
        line[field] = value;
        line
    };
    let mut graced = good.clone();
    graced["previous_hash"] = Value::from(format!("sha256${}", "cd".repeat(32)));
    graced["previous_valid_until"] = Value::from("9999-12-31T00:00:00Z");
    let cases: Vec<(&str, Value)> = vec![
        (
            "service_account_id",
            set("service_account_id", "sa h".into()),
        ),
        (
            "service_account_id",
            set("service_account_id", "sa h\u{200b} (hidden)".into()),
        ),
        (
            "service_account_id",
            set("service_account_id", "sa\nh".into()),
        ),
        (
            "service_account_id",
            set("service_account_id", "sa\u{1b}[31mh".into()),
        ),
        (
            "service_account_id",
            set("service_account_id", "a".repeat(300).into()),
        ),
        (
            "description",
            set("description", format!("ci {secret}").into()),
        ),
        ("hint", set("hint", secret.clone().into())),
        (
            "longer than",
            set("description", "x".repeat(1 << 20).into()),
        ),
        (
            "longer than",
            set("description", "x".repeat(10 << 20).into()),
        ),
        ("previous_valid_until", graced),
        (
            "created_at",
            set("created_at", "0001-01-01T00:00:00Z".into()),
        ),
    ];
    let mut input = vec![export.stdout.trim_end().to_owned()];
    let mut refused = Vec::new();
    for (field, line) in &cases {
        let id = KeyId::random().unwrap().to_string();
        input.push(line_with_id_first(line, &id));
        refused.push((input.len(), id, *field));
    }
    let run = cli(["import"])
        .env("DATABASE_URL", &to)
        .stdin(input.join("\n"))
        .run()
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    run.never_shows(&secret);
    assert!(
        run.stderr.contains(&format!(
            "1 added, 0 already present, {} refused",
            cases.len()
        )),
        "{}",
        run.stderr
    );
    for (line, id, field) in refused {
        let named = format!("refused line {line} (key {id}):");
        let said = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&named))
            .unwrap_or_else(|| panic!("{named} in {}", run.stderr));
        assert!(said.contains(field), "{said}");
        assert!(said.len() < 400, "the value is not echoed: {said}");
    }
    let listed = json_at(&to, &["keys", "list", "--account", "sa-1"]).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(from_dir);
    let _ = std::fs::remove_dir_all(to_dir);
}

#[tokio::test]
async fn an_export_carries_revocations_so_an_older_export_cannot_bring_a_key_back() {
    let (from_dir, from) = sqlite_db("revocations_from").await;
    let (to_dir, to) = sqlite_db("revocations_to").await;
    let revoked = json_at(&from, &["keys", "create", "--account", "sa-1"]).await;
    let kept = json_at(&from, &["keys", "create", "--account", "sa-1"]).await;
    let revoked_id = revoked["key"]["id"].as_str().unwrap().to_owned();
    let before = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    cli(["keys", "revoke", &revoked_id])
        .env("DATABASE_URL", &from)
        .run()
        .await
        .ok();
    let after = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    assert!(
        after
            .stdout
            .lines()
            .any(|l| l == format!("{{\"revoked\":\"{revoked_id}\"}}")),
        "{}",
        after.stdout
    );
    assert!(
        after.stderr.contains("1 keys and 1 revoked ids"),
        "{after:?}"
    );

    // The new export first, then the one taken before the revoke.
    let first = cli(["import"])
        .env("DATABASE_URL", &to)
        .stdin(after.stdout.as_bytes())
        .run()
        .await
        .ok();
    assert!(first.stderr.contains("1 added"), "{first:?}");
    let old = cli(["import"])
        .env("DATABASE_URL", &to)
        .stdin(before.stdout.as_bytes())
        .run()
        .await;
    assert_eq!(old.code, 1, "{old:?}");
    assert!(
        old.stderr.contains(&format!("(key {revoked_id})")) && old.stderr.contains("revoked"),
        "{old:?}"
    );
    assert!(
        old.stderr.contains("0 added, 1 already present, 1 refused"),
        "{old:?}"
    );
    for (secret, valid) in [(&revoked["secret"], false), (&kept["secret"], true)] {
        let check = cli(["keys", "check"])
            .env("DATABASE_URL", &to)
            .stdin(secret.as_str().unwrap().as_bytes())
            .run()
            .await;
        assert_eq!(check.code == 0, valid, "{check:?}");
    }

    // The other order: the key is in the target, then its revocation comes.
    let (again_dir, again) = sqlite_db("revocations_again").await;
    cli(["import"])
        .env("DATABASE_URL", &again)
        .stdin(before.stdout.as_bytes())
        .run()
        .await
        .ok();
    cli(["import"])
        .env("DATABASE_URL", &again)
        .stdin(after.stdout.as_bytes())
        .run()
        .await
        .ok();
    let check = cli(["keys", "check"])
        .env("DATABASE_URL", &again)
        .stdin(revoked["secret"].as_str().unwrap().as_bytes())
        .run()
        .await;
    assert_ne!(check.code, 0, "{check:?}");
    for dir in [from_dir, to_dir, again_dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn export_stops_before_writing_at_an_unreadable_row_unless_told_to_skip_it() {
    let (dir, url) = sqlite_db("unreadable").await;
    let bad = json_at(&url, &["keys", "create", "--account", "sa-1"]).await;
    let good = json_at(&url, &["keys", "create", "--account", "sa-1"]).await;
    let bad_id = bad["key"]["id"].as_str().unwrap().to_owned();
    let good_id = good["key"]["id"].as_str().unwrap().to_owned();
    let conn = rusqlite::Connection::open(dir.join("keys.db")).unwrap();
    conn.execute(
        "UPDATE tower_api_key_keys SET scopes = 'not a scope!' WHERE key_id = ?1",
        [&bad_id],
    )
    .unwrap();
    drop(conn);

    let refused = cli(["export"]).env("DATABASE_URL", &url).run().await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.is_empty(), "nothing written: {refused:?}");
    assert!(
        refused.stderr.contains(&bad_id) && refused.stderr.contains("--skip-unreadable"),
        "{refused:?}"
    );
    let skipped = cli(["export", "--skip-unreadable"])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    assert!(skipped.stderr.contains(&bad_id), "{skipped:?}");
    let lines: Vec<&str> = skipped.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{skipped:?}");
    assert!(lines[0].contains(&good_id));
    // The account still lists its readable key.
    let listed = json_at(&url, &["keys", "list", "--account", "sa-1"]).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["keys"][0]["id"], Value::from(good_id));
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 20 review: a key pasted into any place of an import line (any
/// field, a field's name, a revocation line, a bare line) is never shown,
/// whole or in part, whatever the import says about the line.
#[tokio::test]
async fn import_never_shows_a_key_pasted_anywhere_in_a_line() {
    let (from_dir, from) = sqlite_db("pasted_from").await;
    let (to_dir, to) = sqlite_db("pasted_to").await;
    let created = json_at(&from, &["keys", "create", "--account", "sa-1"]).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let export = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    let good: Value = serde_json::from_str(export.stdout.trim_end()).unwrap();
    let set = |field: &str, value: Value| {
        let mut line = good.clone();
        line[field] = value;
        line.to_string()
    };
    let s = Value::from(secret.clone());
    let mut as_name = good.as_object().unwrap().clone();
    as_name.insert(secret.clone(), Value::from(1));
    let mut limit = serde_json::json!([{"limit": 5, "period": secret, "burst": 5}]);
    let limit_line = set("rate_limits", limit.take());
    let credits_line = set(
        "credits",
        serde_json::json!({"remaining": 5, "refill": {"amount": 5, "interval": secret, "day": 1}}),
    );
    let lines = vec![
        set("key_id", s.clone()),
        set("scopes", Value::from(vec![s.clone()])),
        set("created_at", s.clone()),
        set("expires_at", s.clone()),
        set("last_used_at", s.clone()),
        set("hash", s.clone()),
        set("previous_hash", s.clone()),
        set("previous_valid_until", s.clone()),
        set("service_account_id", s.clone()),
        set("service_account_id", Value::from(7)),
        limit_line,
        credits_line,
        Value::Object(as_name).to_string(),
        serde_json::json!({ "revoked": secret }).to_string(),
        serde_json::json!({ "revoked": "x", secret.clone(): 1 }).to_string(),
        secret.clone(),
        format!("{{\"key_id\": {s}"),
    ];
    let run = cli(["import"])
        .env("DATABASE_URL", &to)
        .stdin(lines.join("\n"))
        .run()
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "0 added, 0 already present, {} refused",
            lines.len()
        )),
        "{}",
        run.stderr
    );
    run.never_shows(&secret);
    // Not even most of it: the hint shows the last four characters only.
    run.never_shows(&secret[secret.len() - 16..secret.len() - 4]);
    let _ = std::fs::remove_dir_all(from_dir);
    let _ = std::fs::remove_dir_all(to_dir);
}

/// Issue 20 review: a key in an environment variable the CLI reads (the
/// store URL, the pepper file's path, the pepper's version) is never shown
/// in the error it leads to. Arguments are scanned before parsing; these
/// values reach the CLI's own errors instead.
#[tokio::test]
async fn a_key_in_an_environment_value_is_never_shown_in_an_error() {
    let (dir, url) = sqlite_db("key_in_env").await;
    let key = KeyFormat::default().generate().unwrap();
    let k = key.expose_secret();
    let missing = dir.join(format!("gone-{k}.db"));
    let in_password = format!("postgres://u:{k}@127.0.0.1:1/db");
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![("DATABASE_URL", format!("sqlite:{}", missing.display()))],
        vec![("DATABASE_URL", k.to_owned())],
        vec![("DATABASE_URL", in_password)],
        vec![
            ("DATABASE_URL", url.clone()),
            (
                "TOWER_API_KEY_PEPPER_FILE",
                dir.join(k).display().to_string(),
            ),
            ("TOWER_API_KEY_PEPPER_VERSION", "1".to_owned()),
        ],
        vec![
            ("DATABASE_URL", url.clone()),
            ("TOWER_API_KEY_PEPPER", "pepper".to_owned()),
            ("TOWER_API_KEY_PEPPER_VERSION", k.to_owned()),
        ],
    ];
    for env in cases {
        let mut command = cli(["keys", "list", "--account", "sa-1"]);
        for (name, value) in &env {
            command = command.env(name, value);
        }
        let run = command.run().await;
        assert_ne!(
            run.code,
            0,
            "{:?}",
            env.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        run.never_shows(k);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 20 review: a key cut short or mistyped in its checksum still
/// holds its whole secret (the checksum can be recomputed); on the command
/// line it is refused like a whole key and never shown.
#[tokio::test]
async fn a_key_cut_short_or_mistyped_in_any_argument_is_refused_and_never_shown() {
    let (dir, url) = sqlite_db("key_cut_short_in_argv").await;
    let key = KeyFormat::default().generate().unwrap();
    let k = key.expose_secret();
    let secret = &k[k.len() - 6 - 32..k.len() - 6];
    let cut = &k[..k.len() - 1];
    let no_checksum = &k[..k.len() - 6];
    let mut typo = k.to_owned().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'0' { b'1' } else { b'0' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [cut, no_checksum, typo.as_str()] {
        for args in [
            vec!["keys", "get", bad],
            vec!["keys", "create", "--account", bad],
            vec!["keys", "create", "--account", "sa", "--description", bad],
            vec!["keys", "update", "0000000000000000", "--expires-at", bad],
        ] {
            let run = cli(&args).env("DATABASE_URL", &url).run().await;
            assert_eq!(run.code, 2, "{:?}", &args[..2]);
            run.never_shows(secret);
        }
    }
    let export = cli(["export"]).env("DATABASE_URL", &url).run().await.ok();
    assert!(export.stdout.is_empty(), "nothing stored: {export:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 20 review: more crafted import lines. Deep nesting, numbers past
/// every integer type, a duplicated field (the second `key_id` naming
/// another key), NUL and other control bytes in stored fields, and a valid
/// record padded to exactly the line cap (taken) or one byte past it
/// (refused): one clear refusal per bad line, never a crash, and only the
/// valid records added.
#[tokio::test]
async fn import_of_more_crafted_lines_refuses_each_clearly_and_takes_a_record_at_the_cap() {
    let (from_dir, from) = sqlite_db("crafted2_from").await;
    let (to_dir, to) = sqlite_db("crafted2_to").await;
    json_at(&from, &["keys", "create", "--account", "sa-1"]).await;
    json_at(&from, &["keys", "create", "--account", "sa-1"]).await;
    let export = cli(["export"]).env("DATABASE_URL", &from).run().await.ok();
    let records: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (good, other) = (&records[0], &records[1]);
    let set = |field: &str, value: Value| {
        let mut line = good.clone();
        line[field] = value;
        line.to_string()
    };
    const CAP: usize = 64 * 1024;
    let at_cap = {
        let text = other.to_string();
        format!("{text}{}", " ".repeat(CAP - text.len()))
    };
    assert_eq!(at_cap.len(), CAP);
    let past_cap = format!("{} ", good);
    let past_cap = format!("{past_cap}{}", " ".repeat(CAP + 1 - past_cap.len()));
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let duplicated = {
        let text = good.to_string();
        format!("{{\"key_id\":{},{}", other["key_id"], &text[1..])
    };
    let bad = vec![
        deep,
        set(
            "credits",
            serde_json::json!({"remaining": 7_777_777_u64, "refill": null}),
        )
        .replace("7777777", "1e400"),
        set(
            "credits",
            serde_json::json!({"remaining": u64::MAX, "refill": null}),
        ),
        duplicated,
        set("description", "a\u{0}b".into()),
        set("hint", "tak_\u{0}abc".into()),
        set("service_account_id", "sa\u{0}".into()),
        set("scopes", serde_json::json!(["a\u{0}"])),
        past_cap,
    ];
    let mut input = bad.clone();
    input.push(at_cap);
    let run = cli(["import"])
        .env("DATABASE_URL", &to)
        .stdin(input.join("\n"))
        .run()
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "1 added, 0 already present, {} refused",
            bad.len()
        )),
        "{}",
        run.stderr
    );
    for n in 1..=bad.len() {
        assert!(
            run.stderr.contains(&format!("refused line {n} ")),
            "line {n}: {}",
            run.stderr
        );
    }
    assert!(
        run.stderr.len() < 8 * 1024,
        "no line is echoed: {} bytes",
        run.stderr.len()
    );
    let listed = json_at(&to, &["keys", "list", "--account", "sa-1"]).await;
    let ids: Vec<&Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["id"])
        .collect();
    assert_eq!(ids, vec![&other["key_id"]], "only the record at the cap");
    let _ = std::fs::remove_dir_all(from_dir);
    let _ = std::fs::remove_dir_all(to_dir);
}

// ---------------------------------------------------------------------------
// Leaked keys (issue 24): `scan`, and the leak report in `keys get` and
// `keys list --compromised`
// ---------------------------------------------------------------------------

/// Creates a key of `account` through the CLI; its secret.
async fn leak_key_at(url: &str, account: &str) -> String {
    let run = cli(["keys", "create", "--account", account])
        .env("DATABASE_URL", url)
        .run()
        .await
        .ok();
    run.stdout.trim_end().to_owned()
}

/// The acceptance case: a directory holding one live key, one revoked key
/// and one near miss (a live key with its checksum broken). With the
/// database, two lines (the live and the revoked key, by id, never the
/// secret) and exit 1 for the live one.
#[tokio::test]
async fn scan_finds_a_live_and_a_revoked_key_but_no_near_miss_and_exits_1() {
    let (dir, url) = sqlite_db("scan").await;
    let live = leak_key_at(&url, "sa-scan").await;
    let revoked = leak_key_at(&url, "sa-scan").await;
    let format = KeyFormat::default();
    let live_id = format.parse(&live).unwrap().id().to_string();
    let revoked_id = format.parse(&revoked).unwrap().id().to_string();
    cli(["keys", "revoke", &revoked_id])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    let mut near_miss = live.clone().into_bytes();
    let last = near_miss.len() - 1;
    near_miss[last] = if near_miss[last] == b'0' { b'1' } else { b'0' };
    let near_miss = String::from_utf8(near_miss).unwrap();
    let tree = dir.join("repo");
    std::fs::create_dir_all(tree.join("config")).unwrap();
    std::fs::write(tree.join("app.env"), format!("# demo\nAPI_KEY={live}\n")).unwrap();
    std::fs::write(
        tree.join("config/old.yaml"),
        format!("key: \"{revoked}\"\n"),
    )
    .unwrap();
    std::fs::write(tree.join("notes.txt"), format!("typo: {near_miss}\n")).unwrap();

    let run = cli(["scan", tree.to_str().unwrap()])
        .env("DATABASE_URL", &url)
        .run()
        .await;
    run.never_shows(&live).never_shows(&revoked);
    assert_eq!(run.code, 1, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{}:2: key {live_id} live", tree.join("app.env").display()),
            format!(
                "{}:1: key {revoked_id} revoked",
                tree.join("config/old.yaml").display()
            ),
        ],
        "{run:?}"
    );

    // Without the live key, nothing live is left: exit 0.
    std::fs::remove_file(tree.join("app.env")).unwrap();
    let run = cli(["scan", tree.to_str().unwrap()])
        .env("DATABASE_URL", &url)
        .run()
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
}

/// Without a database, `scan` reads stdin, reports every key it finds (it
/// cannot tell a live one) and exits 1; `--prefix` picks the issuer.
#[tokio::test]
async fn scan_without_a_database_reads_stdin_and_fails_on_any_key() {
    let key = KeyFormat::new("acme").unwrap().generate().unwrap();
    let text = format!("diff\n+TOKEN={}\n", key.expose_secret());
    let run = cli(["scan", "--prefix", "acme"])
        .stdin(text.clone())
        .run()
        .await;
    run.never_shows(key.expose_secret());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .starts_with(&format!("-:2: key {} found", key.id())),
        "{run:?}"
    );
    let run = cli(["scan"]).stdin(text).run().await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
}

/// A leak report recorded on a key shows in `keys get` (JSON and table),
/// and `keys list --compromised` lists only reported keys, of every account
/// or of the one named.
#[tokio::test]
async fn keys_get_and_list_compromised_show_the_leak_report() {
    use tower_api_key::store::{CompromiseReport, LeakAction};
    let (_dir, url) = sqlite_db("leaked").await;
    let leaked = leak_key_at(&url, "sa-a").await;
    let clean = leak_key_at(&url, "sa-a").await;
    let format = KeyFormat::default();
    let leaked_id = format.parse(&leaked).unwrap().id().to_string();
    let clean_id = format.parse(&clean).unwrap().id().to_string();
    let path = url.strip_prefix("sqlite:").unwrap();
    let store = SqliteKeyStore::builder(path).open().await.unwrap();
    store
        .record_compromise(
            &format.parse(&leaked).unwrap(),
            CompromiseReport::new(
                "https://github.com/o/r/blob/x/.env",
                "content",
                LeakAction::Quarantine,
            ),
        )
        .await
        .unwrap();
    store.shutdown().await;

    let got = json_at(&url, &["keys", "get", &leaked_id]).await;
    assert_eq!(
        got["compromise"]["url"],
        "https://github.com/o/r/blob/x/.env"
    );
    assert_eq!(got["compromise"]["action"], "quarantine");
    assert_eq!(got["compromise"]["quarantined"], true);
    assert!(got["compromise"]["compromised_at"].is_string());
    let clean_json = json_at(&url, &["keys", "get", &clean_id]).await;
    assert!(clean_json["compromise"].is_null());
    let table = cli(["keys", "get", &leaked_id])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    assert!(table.stdout.contains("COMPROMISED"), "{table:?}");
    assert!(
        table.stdout.contains("quarantine (quarantined)"),
        "{table:?}"
    );

    for args in [
        vec!["keys", "list", "--compromised"],
        vec!["keys", "list", "--compromised", "--account", "sa-a"],
    ] {
        let listed = json_at(&url, &args).await;
        let ids: Vec<&str> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![leaked_id.as_str()], "{args:?}");
    }
    let all = json_at(&url, &["keys", "list", "--account", "sa-a"]).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 2);

    // export | import carries the report and its binding: the leaked
    // secret is still quarantined in the other store.
    let exported = cli(["export"]).env("DATABASE_URL", &url).run().await.ok();
    let (_other_dir, other) = sqlite_db("leaked_to").await;
    cli(["import"])
        .env("DATABASE_URL", &other)
        .stdin(exported.stdout)
        .run()
        .await
        .ok();
    let moved = json_at(&other, &["keys", "get", &leaked_id]).await;
    assert_eq!(moved["compromise"], got["compromise"]);
}

#[tokio::test]
async fn allowed_networks_and_metadata_are_set_shown_changed_and_removed() {
    let Some(db) = Db::migrated("networks_metadata").await else {
        return;
    };
    let created = json_of(
        &db,
        &[
            "keys",
            "create",
            "--account",
            "sa-net",
            "--allow-network",
            "10.0.0.0/8",
            "--allow-network",
            "203.0.113.7",
            "--metadata",
            r#"{"plan":"pro"}"#,
        ],
    )
    .await;
    let key = &created["key"];
    assert_eq!(
        key["allowed_networks"],
        json!(["10.0.0.0/8", "203.0.113.7/32"])
    );
    assert_eq!(key["metadata"], json!({"plan": "pro"}));
    let id = key["id"].as_str().unwrap().to_owned();
    let table = cli(["keys", "get", &id]).db(&db).run().await.ok();
    assert!(table.stdout.contains("NETWORKS"), "{table:?}");
    assert!(
        table.stdout.contains("10.0.0.0/8,203.0.113.7/32"),
        "{table:?}"
    );
    assert!(table.stdout.contains(r#"{"plan":"pro"}"#), "{table:?}");

    let updated = json_of(
        &db,
        &[
            "keys",
            "update",
            &id,
            "--allow-network",
            "2001:db8::/32",
            "--no-metadata",
        ],
    )
    .await;
    assert_eq!(updated["allowed_networks"], json!(["2001:db8::/32"]));
    assert_eq!(updated["metadata"], Value::Null);
    let updated = json_of(&db, &["keys", "update", &id, "--no-allowed-networks"]).await;
    assert_eq!(updated["allowed_networks"], json!([]));

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1100));
    for (args, says) in [
        (
            vec!["--metadata", "[1]"],
            "--metadata: metadata: must be a JSON object",
        ),
        (vec!["--metadata", big.as_str()], "--metadata: metadata: "),
        (
            vec!["--allow-network", "10.0.0.0/33"],
            "--allow-network: allowed_networks[0]",
        ),
    ] {
        let run = cli(["keys", "update", id.as_str()].into_iter().chain(args))
            .db(&db)
            .run()
            .await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains(says), "{run:?}");
    }
    db.drop_schema().await;
}

#[tokio::test]
async fn operator_locked_is_set_shown_changed_exported_and_imported() {
    let (dir, url) = sqlite_db("operator_locked").await;
    let created = json_at(
        &url,
        &[
            "keys",
            "create",
            "--account",
            "sa-lock",
            "--operator-locked",
        ],
    )
    .await;
    assert_eq!(created["key"]["operator_locked"], json!(true));
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let plain = json_at(&url, &["keys", "create", "--account", "sa-lock"]).await;
    assert_eq!(
        plain["key"]["operator_locked"],
        json!(false),
        "off by default"
    );

    let table = cli(["keys", "get", &id])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    let mut lines = table.stdout.lines();
    let (header, row) = (lines.next().unwrap(), lines.next().unwrap());
    // Cells are padded to their column's width: LOCKED's starts where its
    // header does.
    let at = header.find("LOCKED").expect("a LOCKED column");
    let cell: String = row.chars().skip(at).take(6).collect();
    assert_eq!(cell.trim_end(), "yes", "{table:?}");
    let listed = json_at(&url, &["keys", "list", "--account", "sa-lock"]).await;
    let locked: Vec<bool> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["operator_locked"].as_bool().unwrap())
        .collect();
    assert_eq!(locked.iter().filter(|l| **l).count(), 1, "{listed}");

    let unlocked = json_at(&url, &["keys", "update", &id, "--operator-locked", "false"]).await;
    assert_eq!(unlocked["operator_locked"], json!(false));
    let locked = json_at(&url, &["keys", "update", &id, "--operator-locked", "true"]).await;
    assert_eq!(locked["operator_locked"], json!(true));
    let got = json_at(&url, &["keys", "get", &id]).await;
    assert_eq!(got["operator_locked"], json!(true), "stored");
    let bad = cli(["keys", "update", &id, "--operator-locked", "yes"])
        .env("DATABASE_URL", &url)
        .run()
        .await;
    assert_ne!(bad.code, 0, "{bad:?}");
    assert!(bad.stderr.contains("--operator-locked"), "{bad:?}");

    // An export line carries the mark (and only when set); an import keeps it.
    let exported = cli(["export"]).env("DATABASE_URL", &url).run().await.ok();
    let lines: Vec<&str> = exported
        .stdout
        .lines()
        .filter(|l| l.contains("sa-lock"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", exported.stdout.len());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(r#""operator_locked":true"#))
            .count(),
        1
    );
    assert!(!exported.stdout.contains(r#""operator_locked":false"#));
    let (other_dir, other) = sqlite_db("operator_locked_to").await;
    cli(["import"])
        .env("DATABASE_URL", &other)
        .stdin(exported.stdout)
        .run()
        .await
        .ok();
    let moved = json_at(&other, &["keys", "get", &id]).await;
    assert_eq!(moved["operator_locked"], json!(true));
    let moved = json_at(
        &other,
        &["keys", "get", plain["key"]["id"].as_str().unwrap()],
    )
    .await;
    assert_eq!(moved["operator_locked"], json!(false));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other_dir);
}

#[tokio::test]
async fn retire_when_unused_is_set_shown_changed_and_a_retirement_travels_in_an_export() {
    use tower_api_key::store::LifecycleStore;
    let (dir, url) = sqlite_db("retire_when_unused").await;
    let created = json_at(
        &url,
        &[
            "keys",
            "create",
            "--account",
            "sa-life",
            "--retire-when-unused",
            "false",
        ],
    )
    .await;
    let key = &created["key"];
    assert_eq!(key["retire_when_unused"], false);
    assert_eq!(key["retired_unused_since"], Value::Null);
    let id = key["id"].as_str().unwrap().to_owned();
    let table = cli(["keys", "get", &id])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    assert!(table.stdout.contains("RETIREMENT"), "{table:?}");
    assert!(
        table.stdout.split_whitespace().any(|cell| cell == "off"),
        "{table:?}"
    );
    let plain = json_at(&url, &["keys", "create", "--account", "sa-life"]).await;
    assert_eq!(plain["key"]["retire_when_unused"], true, "on by default");
    let listed = json_at(&url, &["keys", "list", "--account", "sa-life"]).await;
    let flags: Vec<Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["retire_when_unused"].clone())
        .collect();
    assert!(
        flags.contains(&json!(false)) && flags.contains(&json!(true)),
        "{listed}"
    );
    let updated = json_at(
        &url,
        &["keys", "update", &id, "--retire-when-unused", "true"],
    )
    .await;
    assert_eq!(updated["retire_when_unused"], true);
    let run = cli(["keys", "update", &id, "--retire-when-unused", "maybe"])
        .env("DATABASE_URL", &url)
        .run()
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--retire-when-unused"), "{run:?}");

    // The lifecycle retires it: shown by get, carried by an export.
    let store = SqliteKeyStore::builder(dir.join("keys.db"))
        .open()
        .await
        .unwrap();
    let key_id: KeyId = id.parse().unwrap();
    let info = store.get(key_id).await.unwrap().unwrap();
    let at = std::time::SystemTime::now() + Duration::from_secs(86_400);
    store
        .retire_unused(key_id, None, info.record.created_at, at)
        .await
        .unwrap()
        .expect("retired");
    store
        .update(
            key_id,
            tower_api_key::store::KeyUpdate::default().with_retire_when_unused(false),
            None,
        )
        .await
        .unwrap();
    store.shutdown().await;
    let got = json_at(&url, &["keys", "get", &id]).await;
    assert_eq!(got["retired_unused_since"], got["created_at"]);
    let table = cli(["keys", "get", &id])
        .env("DATABASE_URL", &url)
        .run()
        .await
        .ok();
    assert!(table.stdout.contains("retired, unused since"), "{table:?}");
    let exported = cli(["export"]).env("DATABASE_URL", &url).run().await.ok();
    let line: Value = exported
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["key_id"] == json!(id))
        .unwrap();
    assert_eq!(line["retire_when_unused"], false);
    assert_eq!(line["retired_unused_since"], got["created_at"]);
    let (_other_dir, other) = sqlite_db("retire_when_unused_import").await;
    cli(["import"])
        .env("DATABASE_URL", &other)
        .stdin(exported.stdout)
        .run()
        .await
        .ok();
    let moved = json_at(&other, &["keys", "get", &id]).await;
    assert_eq!(moved["retire_when_unused"], false);
    assert_eq!(moved["retired_unused_since"], got["created_at"]);
    assert_eq!(moved["expires_at"], got["expires_at"]);
}
