//! The PostgreSQL server the tests run against: `DATABASE_URL` when set;
//! else a throwaway server this test process starts itself when PostgreSQL
//! is installed; else none, and each test says it was skipped, with a count
//! and how to run them printed when the process exits.
//!
//! The throwaway server, as `.ci/postgres.sh` starts one: `initdb` into a new
//! directory under the temporary directory, `pg_ctl start` on 127.0.0.1 at a
//! free port with its Unix socket in that directory (so several test
//! binaries can each run one at once), trust authentication, fsync off. One
//! per test process, started by the first test that asks. As root it runs as
//! the user `postgres`, because initdb refuses root. A reaper process,
//! started before initdb, stops the server and removes the directory when
//! this process exits, however it exits (panic, abort, Ctrl-C): it waits for
//! the end of a pipe only this process holds.
//!
//! `TAK_PG_AUTOSTART=0` turns the throwaway server off.
//!
//! Shared by the CLI's tests (crates/tower-api-key-cli/tests/cli.rs).

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// How to run the tests when they were skipped.
const HOW_TO_RUN: &str = "install PostgreSQL (its `initdb` on the PATH or under \
    /usr/lib/postgresql/*/bin) and leave TAK_PG_AUTOSTART unset: the tests start a server \
    themselves; or set DATABASE_URL (`. .ci/postgres.sh` starts a server and sets it)";

/// The server's URL, or why there is none; decided once per process.
static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
/// Tests skipped in this process, for the summary at exit.
static SKIPPED: AtomicUsize = AtomicUsize::new(0);
static SUMMARY: Once = Once::new();

/// `DATABASE_URL`, or the URL of this process's throwaway server (started
/// on the first call); `None` after printing one SKIPPED line for `test`.
///
/// Panics when neither is available and `CI` is set: CI must run these.
pub fn url_or_skip(test: &str) -> Option<String> {
    let server = SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => start(),
    });
    match server {
        Ok(url) => Some(url.clone()),
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: no PostgreSQL ({why}) but CI is set: these tests must run in CI"
            );
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            // At exit, after libtest's "test result" line: the count it
            // calls passed includes these.
            // SAFETY: `summary` is a plain function with no unwinding out.
            SUMMARY.call_once(|| unsafe {
                libc::atexit(summary);
            });
            // Straight to the stream: libtest captures eprint!, not this.
            let _ = writeln!(std::io::stderr(), "SKIPPED: no PostgreSQL ({why}): {test}");
            None
        }
    }
}

extern "C" fn summary() {
    let n = SKIPPED.load(Ordering::Relaxed);
    let why = match SERVER.get() {
        Some(Err(why)) => why.as_str(),
        _ => "",
    };
    // The test target's name: cargo names the binary `<name>-<hash>`.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| match n.rsplit_once('-') {
            Some((name, _hash)) => format!("tests/{name}.rs"),
            None => n,
        })
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: {n} PostgreSQL tests of {binary} did NOT run (counted as passed above): \
         {why}.\nTo run them: {HOW_TO_RUN}.\n"
    );
}

/// Starts the throwaway server; its URL, or why not.
fn start() -> Result<String, String> {
    if std::env::var("TAK_PG_AUTOSTART").is_ok_and(|v| v == "0") {
        return Err("DATABASE_URL is not set and TAK_PG_AUTOSTART=0".into());
    }
    let bin = find_bin().ok_or(
        "DATABASE_URL is not set and PostgreSQL is not installed (no initdb on the PATH or \
         under /usr/lib/postgresql/*/bin)",
    )?;
    // SAFETY: geteuid has no preconditions.
    let as_user = if unsafe { libc::geteuid() } == 0 {
        let exists = Command::new("id")
            .args(["-u", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            return Err(
                "DATABASE_URL is not set, and running as root, where initdb needs \
                        another user: there is no user `postgres`"
                    .into(),
            );
        }
        Some("postgres")
    } else {
        None
    };

    let dir = std::env::temp_dir().join(format!(
        "tak-pg-test.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} failed: {e}");
    std::fs::create_dir(&dir).map_err(|e| fail("creating the data directory", &e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("chmod of the data directory", &e))?;
    reap_at_exit(&bin, &dir, as_user)?;
    if let Some(user) = as_user {
        run(Command::new("chown").arg(user).arg(&dir), "chown")?;
    }

    run(
        command_as(as_user, &bin.join("initdb"))
            .arg("-D")
            .arg(&dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ]),
        "initdb",
    )?;

    // pg_ctl hands -o to a shell: quote the directory for it.
    let dir_str = dir
        .to_str()
        .filter(|s| !s.contains('\''))
        .ok_or("the temporary directory's path is not plain UTF-8 without quotes: set TMPDIR")?;
    let mut last = String::new();
    // A free port can be taken between the check and the start: try again.
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| fail("finding a free port", &e))?
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k '{dir_str}' -c max_connections=300 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        );
        match run(
            command_as(as_user, &bin.join("pg_ctl"))
                .arg("-D")
                .arg(&dir)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        ) {
            Ok(()) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "tests: a PostgreSQL server from {} on 127.0.0.1:{port} for this test \
                     process (DATABASE_URL is not set); stopped and removed at exit",
                    bin.display()
                );
                return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// PostgreSQL's bin directory: `initdb`'s on the PATH (through any
/// symlink), else the newest /usr/lib/postgresql/*/bin holding one.
fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|f| f.is_file())
    });
    if let Some(initdb) = on_path {
        return std::fs::canonicalize(initdb)
            .ok()?
            .parent()
            .map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A command run as `user` (with runuser, from `/`, which every user can
/// enter), or as this process's user.
fn command_as(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program).current_dir("/");
            c
        }
        None => Command::new(program),
    }
}

/// Runs `command` to its end; its output in the error when it fails.
fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what} failed to start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!("{what} failed ({}): {}", out.status, stderr.trim()))
}

/// Starts the process that stops the server in `dir` and removes `dir`
/// once this process has exited: it reads its stdin to the end, which
/// comes when the pipe's write end closes, and only this process holds it
/// (std opens pipes close-on-exec, so no other child inherits it).
fn reap_at_exit(bin: &Path, dir: &Path, as_user: Option<&str>) -> Result<(), String> {
    // Ctrl-C and a closed terminal reach the whole process group: the
    // reaper outlives them to clean up.
    let script = r#"d=$1; p=$2; shift 2; trap '' INT HUP; cat >/dev/null
if [ -f "$d/postmaster.pid" ]; then (cd / && "$@" "$p" -D "$d" -m fast -w stop); fi
rm -rf "$d""#;
    let mut reaper = Command::new("sh");
    reaper
        .args(["-c", script, "sh"])
        .arg(dir)
        .arg(bin.join("pg_ctl"));
    if let Some(user) = as_user {
        reaper.args(["runuser", "-u", user, "--"]);
    }
    let child = reaper
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the cleanup process failed: {e}"))?;
    // Never closed: the write end goes when the process does.
    std::mem::forget(child.stdin);
    Ok(())
}
