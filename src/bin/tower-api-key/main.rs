//! `tower-api-key`: operate a key store from a shell (feature `cli`).
//!
//! Create, list, update, reissue, revoke and check keys, apply the schema,
//! and move keys between stores with `export | import`. The full reference
//! is docs/cli.md; every command has `--help` with an example.
//!
//! Exit codes: 0 done, 1 error (one line on stderr), 2 usage. Secrets
//! appear only on stdout, once, from `keys create` and `keys reissue`.

mod commands;
mod error;
mod output;
mod pepper;
mod store;
mod time;
mod transfer;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, CommandFactory, Parser, Subcommand};
use tower_api_key::KeyId;

use crate::error::CliError;
use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "tower-api-key",
    version,
    about = "Manage the API keys of a tower-api-key store (PostgreSQL or SQLite)",
    after_help = "Example:\n  export DATABASE_URL=postgres://app@localhost/app\n  \
                  tower-api-key migrate\n  \
                  KEY=$(tower-api-key keys create --account sa-reports --scope reports.read)\n  \
                  printf %s \"$KEY\" | tower-api-key keys check\n\n\
                  The pepper (if your servers use one) comes from TOWER_API_KEY_PEPPER_FILE or \
                  TOWER_API_KEY_PEPPER, with TOWER_API_KEY_PEPPER_VERSION; see docs/cli.md."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// The store: postgres://USER@HOST/DB or sqlite:PATH.
    // `hide_env_values`: the URL may hold a password; --help must not show it.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// A file holding the pepper your servers hash keys with (never the
    /// pepper itself on the command line: others can read it in `ps`).
    #[arg(long, env = pepper::PEPPER_FILE_ENV, global = true, value_name = "PATH")]
    pepper_file: Option<PathBuf>,
    /// The version of that pepper, as your servers number it.
    #[arg(long, env = pepper::PEPPER_VERSION_ENV, global = true, value_name = "N")]
    pepper_version: Option<String>,
    /// Output: a table for people or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update the store's schema (idempotent).
    #[command(after_help = "Example:\n  tower-api-key migrate --database-url sqlite:keys.db")]
    Migrate,
    /// Create, list, show, change, reissue, revoke and check keys.
    #[command(
        subcommand,
        after_help = "Example:\n  tower-api-key keys list --account sa-reports"
    )]
    Keys(KeysCommand),
    /// Write every key record with its hashes (never a secret) as JSON lines.
    #[command(after_help = "Example (move from SQLite to PostgreSQL):\n  \
                  tower-api-key export --database-url sqlite:keys.db \\\n    \
                  | tower-api-key import --database-url postgres://app@db/app")]
    Export,
    /// Read JSON lines from `export` on stdin and add the keys (idempotent).
    ///
    /// Keys already present with the same hash are left as they are. A
    /// record the store cannot take is refused and named (line and key id),
    /// and the import goes on with the next; the exit code is then 1.
    #[command(after_help = "Example:\n  \
                  tower-api-key import --database-url postgres://app@db/app < keys.jsonl")]
    Import,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints its secret once, alone on stdout.
    #[command(after_help = "Example:\n  \
                  KEY=$(tower-api-key keys create --account sa-reports \\\n    \
                  --scope reports.read --description 'nightly export' --expires-in 90d)")]
    Create {
        /// The owning service account.
        #[arg(long, value_name = "SA")]
        account: String,
        /// A scope; repeat for several. None: an unscoped key.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Free text shown in listings.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// List a service account's keys (every page).
    #[command(after_help = "Example:\n  tower-api-key keys list --account sa-reports -o json")]
    List {
        /// The service account.
        #[arg(long, value_name = "SA")]
        account: String,
    },
    /// Show one key.
    #[command(after_help = "Example:\n  tower-api-key keys get 7Hq2xQpLrT0aBcDe")]
    Get {
        /// The key id (the public part of a key).
        #[arg(value_parser = parse_key_id)]
        id: KeyId,
    },
    /// Change a key's description, scopes or expiry.
    #[command(after_help = "Example:\n  \
                  tower-api-key keys update 7Hq2xQpLrT0aBcDe --scope reports.read --expires-in 30d")]
    Update {
        /// The key id.
        #[arg(value_parser = parse_key_id)]
        id: KeyId,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New scopes (replace the old ones); repeat for several.
        #[arg(long = "scope", value_name = "SCOPE", conflicts_with = "unscoped")]
        scopes: Vec<String>,
        /// Remove every scope: the key becomes unscoped.
        #[arg(long)]
        unscoped: bool,
        #[command(flatten)]
        expiry: Expiry,
        /// Remove the expiry.
        #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
        no_expiry: bool,
    },
    /// Give a key a new secret (printed once, like create); the old one
    /// keeps working for the grace period.
    #[command(after_help = "Example:\n  \
                  KEY=$(tower-api-key keys reissue 7Hq2xQpLrT0aBcDe --grace 1h)")]
    Reissue {
        /// The key id.
        #[arg(value_parser = parse_key_id)]
        id: KeyId,
        /// How long the old secret keeps working (at most 30 days).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        grace: Duration,
    },
    /// Delete a key: every server refuses it within its invalidation delay.
    #[command(after_help = "Example:\n  tower-api-key keys revoke 7Hq2xQpLrT0aBcDe")]
    Revoke {
        /// The key id.
        #[arg(value_parser = parse_key_id)]
        id: KeyId,
    },
    /// Read a key from stdin and say whether it is valid, for which account,
    /// scopes and expiry (never from the command line: `ps` shows it).
    #[command(after_help = "Example:\n  printf %s \"$KEY\" | tower-api-key keys check")]
    Check {
        /// Not accepted: only here to refuse a key given on the command
        /// line without echoing it (clap would quote an unexpected one).
        #[arg(hide = true, value_name = "KEY")]
        on_command_line: Option<String>,
    },
}

#[derive(Args)]
struct Expiry {
    /// Expire this long from now (such as 90d, 12h, 1month).
    #[arg(long, value_parser = parse_duration, conflicts_with = "expires_at")]
    expires_in: Option<Duration>,
    /// Expire at this RFC 3339 time (such as 2030-01-31T12:00:00Z).
    #[arg(long, value_parser = time::parse)]
    expires_at: Option<SystemTime>,
}

impl Expiry {
    /// The expiry asked for, if any; `None` when neither flag is given.
    fn resolve(&self, now: SystemTime) -> Result<Option<SystemTime>, CliError> {
        match (self.expires_in, self.expires_at) {
            (Some(after), _) => now
                .checked_add(after)
                .map(Some)
                .ok_or_else(|| CliError::new("--expires-in is too long")),
            (None, at) => Ok(at),
        }
    }
}

fn parse_key_id(text: &str) -> Result<KeyId, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (such as 90d, 1h, 30min)"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Keys(KeysCommand::Check {
        on_command_line: Some(_),
    }) = &cli.command
    {
        Cli::command()
            .error(
                clap::error::ErrorKind::UnknownArgument,
                "keys check reads the key from stdin, never from the command line, where \
                 other users can see it (ps); treat a key typed there as exposed",
            )
            .exit();
    }
    let Some(url) = cli.global.database_url.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no store: pass --database-url or set DATABASE_URL",
            )
            .exit();
    };
    match run(cli, &url).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, url: &str) -> Result<ExitCode, CliError> {
    let hasher = pepper::hasher(
        cli.global.pepper_file.as_deref(),
        cli.global.pepper_version.as_deref(),
    )?;
    let store = store::open(url, hasher.clone()).await?;
    let ctx = commands::Context {
        store: &store,
        hasher: &hasher,
        output: cli.global.output,
    };
    let result = commands::run(&ctx, cli.command).await;
    // Every store call above has returned, so its change is committed (and
    // on PostgreSQL its NOTIFY sent); now close connections before exiting.
    store.shutdown().await;
    result
}
