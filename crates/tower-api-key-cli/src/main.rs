//! `tower-api-key`: operate a key store from a shell.
//!
//! Create, list, update, reissue, revoke and check keys, set rate limits
//! and credits, apply the schema, and move keys between stores with
//! `export | import`. The full reference
//! is docs/cli.md; every command has `--help` with an example.
//!
//! Exit codes: 0 done, 1 error (one line on stderr), 2 usage. Secrets
//! appear only on stdout, once, from `keys create` and `keys reissue`.

mod argv;
mod commands;
mod error;
mod output;
mod pepper;
mod scan;
mod store;
mod time;
mod transfer;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, CommandFactory, Parser, Subcommand};
use tower_api_key::limits::{Credits, RateLimit, Refill};
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
pub struct Global {
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
    /// Set and show what a service account carries: its rate limits.
    #[command(
        subcommand,
        after_help = "Example:\n  tower-api-key accounts rate-limits get sa-reports"
    )]
    Accounts(AccountsCommand),
    /// Write every key record with its hashes (never a secret) as JSON lines,
    /// after one line per revoked key id (`{"revoked":"<key id>"}`).
    ///
    /// A key the store cannot read (a row changed outside the tool) stops
    /// the export before anything is written, naming it; with
    /// `--skip-unreadable` the export warns and writes the rest.
    #[command(after_help = "Example (move from SQLite to PostgreSQL):\n  \
                  tower-api-key export --database-url sqlite:keys.db \\\n    \
                  | tower-api-key import --database-url postgres://app@db/app")]
    Export {
        /// Leave out the keys the store cannot read (named on stderr)
        /// instead of refusing to export.
        #[arg(long)]
        skip_unreadable: bool,
    },
    /// Read JSON lines from `export` on stdin and add the keys (idempotent).
    ///
    /// Keys already present with the same hash are left as they are; a
    /// revoked id is recorded as revoked (a key present with it is revoked,
    /// and never imported again). A line that breaks a rule of create (or
    /// is longer than any valid record) is refused and named on stderr
    /// (line, key id and field), and the import goes on with the next; the
    /// exit code is then 1.
    #[command(after_help = "Example:\n  \
                  tower-api-key import --database-url postgres://app@db/app < keys.jsonl")]
    Import,
    /// Find API keys in files (stdin when no path is given): prints file,
    /// line and key id of each string that passes the checksum (never the
    /// secret), with `live`, `revoked` or `unknown` when a database is
    /// configured; exits 1 when it finds a live key (without a database,
    /// any key), so it serves as a pre-commit hook or a CI step.
    #[command(after_help = "Example (a pre-commit hook):\n  \
                  git diff --cached | tower-api-key scan\n  \
                  tower-api-key scan --prefix acme src/ config/")]
    Scan {
        /// Files or directories (searched recursively, `.git` left out).
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The issuer prefix of the keys to find.
        #[arg(long, default_value = tower_api_key::KeyFormat::DEFAULT_PREFIX)]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints its secret once, alone on stdout.
    #[command(after_help = "Example:\n  \
                  KEY=$(tower-api-key keys create --account sa-reports \\\n    \
                  --scope reports.read --description 'nightly export' --expires-in 90d \\\n    \
                  --rate-limit 5/1s --rate-limit 1000/1d --credits 100 --refill monthly:100:1 \\\n    \
                  --allow-network 10.0.0.0/8 --metadata '{\"plan\":\"pro\"}' --operator-locked)")]
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
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        extras: Extras,
        /// Lock the key: read-only for managers of the management API
        /// (403 `key_locked`) unless their router may lock keys; they may
        /// still delete or reissue it.
        #[arg(long)]
        operator_locked: bool,
    },
    /// List a service account's keys (every page); with `--compromised`,
    /// only keys reported leaked, with `--unused-for`, only keys never used
    /// or not used for that long (of every account when none is named).
    #[command(
        after_help = "Example:\n  tower-api-key keys list --account sa-reports -o json\n  \
                  tower-api-key keys list --compromised\n  \
                  tower-api-key keys list --unused-for 90d --account sa-reports"
    )]
    List {
        /// The service account.
        #[arg(
            long,
            value_name = "SA",
            required_unless_present_any = ["compromised", "unused_for"]
        )]
        account: Option<String>,
        /// Only keys with a leak report recorded (`compromised_at`).
        #[arg(long)]
        compromised: bool,
        /// Only keys never used, or last used longer ago than this
        /// (90d, 12h, 30m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        unused_for: Option<Duration>,
    },
    /// Show one key.
    #[command(after_help = "Example:\n  tower-api-key keys get 7Hq2xQpLrT0aBcDe")]
    Get {
        /// The key id (the public part of a key).
        #[arg(value_parser = parse_key_id)]
        id: KeyId,
    },
    /// Change a key's description, scopes, expiry, rate limits, credits,
    /// allowed networks, metadata, lock or retirement for disuse (a new
    /// expiry revives a key the lifecycle retired).
    #[command(after_help = "Example:\n  \
                  tower-api-key keys update 7Hq2xQpLrT0aBcDe --scope reports.read --expires-in 30d\n  \
                  tower-api-key keys update 7Hq2xQpLrT0aBcDe --rate-limit 10/1s,burst=20 --no-credits\n  \
                  tower-api-key keys update 7Hq2xQpLrT0aBcDe --operator-locked true\n  \
                  tower-api-key keys update 7Hq2xQpLrT0aBcDe --retire-when-unused false")]
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
        #[command(flatten)]
        limits: Limits,
        /// Remove every rate limit of the key.
        #[arg(long, conflicts_with = "rate_limits")]
        no_rate_limits: bool,
        /// Remove the key's credits (and their refill): no quota.
        #[arg(long, conflicts_with_all = ["credits", "refill"])]
        no_credits: bool,
        #[command(flatten)]
        extras: Extras,
        /// Remove the key's allowed networks: any network.
        #[arg(long, conflicts_with = "allow_networks")]
        no_allowed_networks: bool,
        /// Remove the key's metadata.
        #[arg(long, conflicts_with = "metadata")]
        no_metadata: bool,
        /// Lock (`true`) or unlock (`false`) the key: a locked key is
        /// read-only for managers of the management API unless their router
        /// may lock keys; they may still delete or reissue it.
        #[arg(long, value_name = "true|false", value_parser = clap::value_parser!(bool))]
        operator_locked: Option<bool>,
    },
    /// Add credits to a key that has credits (never past 10^12).
    #[command(after_help = "Example:\n  tower-api-key keys add-credits 7Hq2xQpLrT0aBcDe 500")]
    AddCredits {
        /// The key id.
        #[arg(value_parser = parse_key_id)]
        id: KeyId,
        /// How many credits to add.
        #[arg(value_name = "N")]
        amount: u64,
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

#[derive(Subcommand)]
enum AccountsCommand {
    /// The rate limits shared by all keys of a service account.
    #[command(
        subcommand,
        after_help = "Example:\n  tower-api-key accounts rate-limits set sa-reports --rate-limit 100/1s"
    )]
    RateLimits(AccountLimitsCommand),
}

#[derive(Subcommand)]
enum AccountLimitsCommand {
    /// Show a service account's rate limits.
    #[command(
        after_help = "Example:\n  tower-api-key accounts rate-limits get sa-reports -o json"
    )]
    Get {
        /// The service account.
        #[arg(value_name = "SA")]
        account: String,
    },
    /// Replace a service account's rate limits (--none removes them).
    #[command(after_help = "Example:\n  \
                  tower-api-key accounts rate-limits set sa-reports --rate-limit 100/1s --rate-limit 1000000/1d\n  \
                  tower-api-key accounts rate-limits set sa-reports --none")]
    Set {
        /// The service account.
        #[arg(value_name = "SA")]
        account: String,
        /// A rate limit such as 100/1s or 100/1m,burst=20; repeat for several.
        #[arg(
            long = "rate-limit",
            value_name = "LIMIT/PERIOD[,burst=N]",
            value_parser = parse_rate_limit,
            required_unless_present = "none"
        )]
        rate_limits: Vec<RateLimit>,
        /// Remove every rate limit of the account.
        #[arg(long, conflicts_with = "rate_limits")]
        none: bool,
    },
}

/// Allowed networks and metadata of a key, for create and update.
#[derive(Args)]
struct Extras {
    /// A network the key may be used from (CIDR such as 10.0.0.0/8, or one
    /// address); repeat for several (at most 64). None: any network.
    #[arg(long = "allow-network", value_name = "CIDR")]
    allow_networks: Vec<String>,
    /// A JSON object (at most 1 KiB) for the application's handlers, such
    /// as '{"plan":"pro"}'.
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Whether the lifecycle task may retire the key once nobody used it
    /// for its retirement period (a new key: true); false opts it out.
    #[arg(long, value_name = "true|false")]
    retire_when_unused: Option<bool>,
}

/// Rate limits and credits of a key, for create and update.
#[derive(Args)]
struct Limits {
    /// A rate limit such as 5/1s or 100/1m,burst=20 (periods in ms, s, m, h
    /// or d); repeat for several. In an update, replaces the key's limits.
    #[arg(
        long = "rate-limit",
        value_name = "LIMIT/PERIOD[,burst=N]",
        value_parser = parse_rate_limit
    )]
    rate_limits: Vec<RateLimit>,
    /// Credits: what the key may still spend (a request spends its cost).
    /// In an update, replaces the count and the refill.
    #[arg(long, value_name = "N")]
    credits: Option<u64>,
    /// Refill the credits to AMOUNT at 00:00 UTC: daily:AMOUNT, or
    /// monthly:AMOUNT:DAY (DAY 1 to 31, the last day in shorter months).
    #[arg(
        long,
        value_name = "daily:N | monthly:N:DAY",
        value_parser = parse_refill,
        requires = "credits"
    )]
    refill: Option<Refill>,
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

impl Limits {
    /// The credits asked for, with their refill, if any.
    fn credits(&self) -> Result<Option<Credits>, CliError> {
        let Some(n) = self.credits else {
            return Ok(None);
        };
        let credits = Credits::new(n).map_err(|e| CliError::new(format!("--credits: {e}")))?;
        Ok(Some(match self.refill {
            Some(refill) => credits.with_refill(refill),
            None => credits,
        }))
    }
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

fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    text.parse().map_err(|e| format!("{e}"))
}

/// `daily:AMOUNT` or `monthly:AMOUNT:DAY`.
fn parse_refill(text: &str) -> Result<Refill, String> {
    let expected = || "a refill reads daily:AMOUNT or monthly:AMOUNT:DAY, such as monthly:100:1";
    let number = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected().to_owned());
        }
        s.parse().map_err(|_| expected().to_owned())
    };
    let parts: Vec<&str> = text.split(':').collect();
    let refill = match parts.as_slice() {
        ["daily", amount] => Refill::daily(number(amount)?),
        ["monthly", amount, day] => {
            let day = u8::try_from(number(day)?).unwrap_or(0);
            Refill::monthly(number(amount)?, day)
        }
        _ => return Err(expected().to_owned()),
    };
    refill.map_err(|e| e.to_string())
}

/// The management API's parser, so both read a duration alike.
fn parse_duration(text: &str) -> Result<Duration, String> {
    tower_api_key::time::parse_duration(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before clap: it would store the key (`--account`) or quote it in its
    // error (`keys get <key>`).
    if let Some(message) = argv::key_refusal(&args, &Cli::command()) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // No argument holds a key by now; this keeps one from any other
            // source (an environment value) out of clap's message too.
            if argv::holds_key(&e.render().to_string()) {
                eprintln!("error: an argument or environment value holds an API key: refused, and not shown here; treat that key as exposed");
                return ExitCode::from(2);
            }
            e.exit();
        }
    };
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
    if let Command::Scan { paths, prefix } = &cli.command {
        return scan::main(&cli.global, paths, prefix).await;
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
            let message = e.to_string();
            // Arguments were scanned before parsing, but an environment
            // value (the store URL, the pepper file's path) is quoted by
            // errors like this one.
            if argv::holds_key(&message) {
                eprintln!(
                    "error: the command failed on a value that holds an API key (an environment \
                     value such as DATABASE_URL or {}): not shown here; treat that key as exposed",
                    pepper::PEPPER_FILE_ENV
                );
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, url: &str) -> Result<ExitCode, CliError> {
    let hasher = pepper::hasher(
        cli.global.pepper_file.as_deref(),
        cli.global.pepper_version.as_deref(),
    )?;
    let migrate = matches!(cli.command, Command::Migrate);
    let store = store::open(url, hasher.clone(), migrate).await?;
    if !migrate {
        if let Err(e) = store.check_schema().await {
            store.shutdown().await;
            return Err(e);
        }
    }
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
