//! What each command does.

use std::io::Read;
use std::process::ExitCode;
use std::time::SystemTime;
use zeroize::Zeroizing;

use serde_json::json;
use tower_api_key::hash::{HashScheme, KeyHasher};
use tower_api_key::management::CreditsResource;
use tower_api_key::store::{
    CreatedKey, KeyUpdate, ListRequest, NewKey, StoreError, MAX_EXPORT_PAGE, MAX_PAGE_SIZE,
};
use tower_api_key::{KeyId, MAX_KEY_LEN};

use crate::error::CliError;
use crate::output::{self, write_stdout, Format};
use crate::pepper::{self, can_verify, describe};
use crate::store::Store;
use crate::{
    time, transfer, validate, AccountLimitsCommand, AccountsCommand, Command, KeysCommand,
};

pub struct Context<'a> {
    pub store: &'a Store,
    pub hasher: &'a KeyHasher,
    pub output: Format,
}

pub async fn run(ctx: &Context<'_>, command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Migrate => {
            let report = ctx.store.migrate().await?;
            eprintln!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { skip_unreadable } => {
            let (keys, revoked) = transfer::export(ctx.store, skip_unreadable).await?;
            eprintln!("exported {keys} keys and {revoked} revoked ids");
            Ok(ExitCode::SUCCESS)
        }
        Command::Import => {
            let summary = transfer::import(ctx.store, std::io::stdin().lock()).await?;
            eprintln!(
                "imported: {} added, {} already present, {} refused, {} revoked ids",
                summary.added, summary.present, summary.refused, summary.revoked
            );
            Ok(if summary.refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Keys(keys) => run_keys(ctx, keys).await,
        // Handled before a store is opened (it may run without one).
        Command::Scan { .. } => Ok(ExitCode::SUCCESS),
        Command::Accounts(AccountsCommand::RateLimits(command)) => {
            run_account_limits(ctx, command).await
        }
    }
}

async fn run_account_limits(
    ctx: &Context<'_>,
    command: AccountLimitsCommand,
) -> Result<ExitCode, CliError> {
    let store = ctx.store.keys();
    match command {
        AccountLimitsCommand::Get { account } => {
            validate::account("SA", &account)?;
            let limits = store.account_rate_limits(&account).await?;
            output::rate_limits(&limits, ctx.output)?;
        }
        AccountLimitsCommand::Set {
            account,
            rate_limits,
            none: _,
        } => {
            validate::account("SA", &account)?;
            validate::no_key_in_account(&account, &ctx.store.format())?;
            validate::rate_limits(&rate_limits)?;
            store
                .set_account_rate_limits(&account, rate_limits.clone())
                .await?;
            if rate_limits.is_empty() {
                eprintln!("removed the rate limits of account {account}");
            } else {
                eprintln!("set the rate limits of account {account}");
            }
            output::rate_limits(&rate_limits, ctx.output)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_keys(ctx: &Context<'_>, command: KeysCommand) -> Result<ExitCode, CliError> {
    let store = ctx.store.keys();
    let format = ctx.store.format();
    match command {
        KeysCommand::Create {
            account,
            scopes,
            description,
            expiry,
            limits,
            extras,
            operator_locked,
        } => {
            validate::account("--account", &account)?;
            validate::description(&description, &format)?;
            let scopes = validate::scopes(&scopes, &format)?;
            validate::rate_limits(&limits.rate_limits)?;
            let mut new = NewKey::new(account)
                .with_scopes(scopes)
                .with_description(description)
                .with_rate_limits(limits.rate_limits.clone())
                .with_operator_locked(operator_locked);
            if let Some(credits) = limits.credits()? {
                new = new.with_credits(credits);
            }
            if let Some(at) = expiry.resolve(SystemTime::now())? {
                new = new.with_expires_at(at);
            }
            new = new.with_allowed_networks(validate::networks(&extras.allow_networks)?);
            if let Some(text) = &extras.metadata {
                new = new.with_metadata(Some(validate::metadata(text, &format)?));
            }
            if let Some(retire) = extras.retire_when_unused {
                new = new.with_retire_when_unused(retire);
            }
            check_pepper(ctx).await?;
            let created = store.create(new).await?;
            print_created(ctx, &created, "created")?;
        }
        KeysCommand::List {
            account: None,
            compromised,
            unused_for,
        } => {
            // Every account's keys: the export's pages, which hold them all
            // (an operator's sweep; one account's listing uses its index).
            let unused_before = unused_for.and_then(|d| {
                ListRequest::default()
                    .with_unused_for(d)
                    .unused_before(SystemTime::now())
            });
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let page = store.export(after, MAX_EXPORT_PAGE).await?;
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(last.info.record.key_id);
                all.extend(
                    page.into_iter()
                        .map(|k| k.info)
                        .filter(|info| !compromised || info.record.compromise.is_some())
                        .filter(|info| ListRequest::keeps(unused_before, info.last_used_at)),
                );
            }
            output::keys(&all, ctx.output)?;
        }
        KeysCommand::List {
            account: Some(account),
            compromised,
            unused_for,
        } => {
            validate::account("--account", &account)?;
            let filter = |page: ListRequest| match unused_for {
                Some(d) => page.with_unused_for(d),
                None => page,
            };
            let mut all = Vec::new();
            let mut page = store
                .list(&account, filter(ListRequest::first(MAX_PAGE_SIZE)))
                .await?;
            loop {
                all.append(&mut page.keys);
                let Some(token) = page.next_page_token.take() else {
                    break;
                };
                page = store
                    .list(&account, filter(ListRequest::after(MAX_PAGE_SIZE, token)))
                    .await?;
            }
            if compromised {
                all.retain(|info| info.record.compromise.is_some());
            }
            output::keys(&all, ctx.output)?;
        }
        KeysCommand::Get { id } => {
            let info = store.get(id).await?.ok_or_else(|| no_key(id))?;
            output::key(&info, ctx.output)?;
        }
        KeysCommand::Update {
            id,
            description,
            scopes,
            unscoped,
            expiry,
            no_expiry,
            limits,
            no_rate_limits,
            no_credits,
            extras,
            no_allowed_networks,
            no_metadata,
            operator_locked,
        } => {
            let mut update = KeyUpdate::default();
            if let Some(description) = description {
                validate::description(&description, &format)?;
                update = update.with_description(description);
            }
            if unscoped || !scopes.is_empty() {
                update = update.with_scopes(validate::scopes(&scopes, &format)?);
            }
            if no_expiry {
                update = update.with_expires_at(None);
            } else if let Some(at) = expiry.resolve(SystemTime::now())? {
                update = update.with_expires_at(Some(at));
            }
            if no_rate_limits || !limits.rate_limits.is_empty() {
                validate::rate_limits(&limits.rate_limits)?;
                update = update.with_rate_limits(limits.rate_limits.clone());
            }
            if no_credits {
                update = update.with_credits(None);
            } else if let Some(credits) = limits.credits()? {
                update = update.with_credits(Some(credits));
            }
            if no_allowed_networks {
                update = update.with_allowed_networks(None);
            } else if !extras.allow_networks.is_empty() {
                update = update.with_allowed_networks(validate::networks(&extras.allow_networks)?);
            }
            if no_metadata {
                update = update.with_metadata(None);
            } else if let Some(text) = &extras.metadata {
                update = update.with_metadata(Some(validate::metadata(text, &format)?));
            }
            if let Some(locked) = operator_locked {
                update = update.with_operator_locked(locked);
            }
            if let Some(retire) = extras.retire_when_unused {
                update = update.with_retire_when_unused(retire);
            }
            if update.is_empty() {
                return Err(CliError::new(
                    "nothing to change: pass --description, --scope, --unscoped, --expires-at, \
                     --expires-in, --no-expiry, --rate-limit, --no-rate-limits, --credits, \
                     --no-credits, --allow-network, --no-allowed-networks, --metadata, \
                     --no-metadata, --operator-locked or --retire-when-unused",
                ));
            }
            let info = store
                .update(id, update, None)
                .await?
                .ok_or_else(|| no_key(id))?;
            eprintln!("updated key {id}");
            output::key(&info, ctx.output)?;
        }
        KeysCommand::AddCredits { id, amount } => {
            validate::amount(amount)?;
            let info = match store.add_credits(id, amount, None).await {
                Err(StoreError::NoCredits { .. }) => {
                    return Err(CliError::new(format!(
                        "key {id} has no credits to add to; give it some with \
                         `keys update {id} --credits N`"
                    )))
                }
                other => other?.ok_or_else(|| no_key(id))?,
            };
            eprintln!(
                "added {amount} credits to key {id}: {} remaining",
                info.record.credits.map_or(0, |c| c.remaining())
            );
            output::key(&info, ctx.output)?;
        }
        KeysCommand::Reissue { id, grace } => {
            validate::grace(grace)?;
            check_pepper(ctx).await?;
            let created = store
                .reissue(id, grace, None)
                .await?
                .ok_or_else(|| no_key(id))?;
            print_created(ctx, &created, "reissued")?;
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke(id, None).await? {
                return Err(no_key(id));
            }
            eprintln!("revoked key {id}");
            if ctx.output == Format::Json {
                write_stdout(&format!(
                    "{}\n",
                    json!({ "id": id.as_str(), "revoked": true })
                ))?;
            }
        }
        KeysCommand::Check { .. } => return check(ctx).await,
    }
    Ok(ExitCode::SUCCESS)
}

fn no_key(id: KeyId) -> CliError {
    CliError::new(format!("no key {id}"))
}

fn print_created(ctx: &Context<'_>, created: &CreatedKey, verb: &str) -> Result<(), CliError> {
    // The masked hint the stores keep: prefix and last four characters.
    let secret = created.key.expose_secret();
    let prefix = ctx.store.format().prefix().to_owned();
    let tail = secret
        .get(secret.len().saturating_sub(4)..)
        .unwrap_or_default();
    output::created(created, &format!("{prefix}_…{tail}"), ctx.output, verb)
}

/// Refuses to write a hash that the store's other keys say the servers do
/// not make. The records (up to one export page) show which pepper
/// versions the servers hash with; when some are peppered and none with
/// the CLI's version (or the CLI has no pepper), the CLI would make a key
/// the servers refuse, or one outside the pepper. Plain SHA-256 records
/// say nothing: every hasher verifies them. A store in the middle of a
/// rotation holds two versions, and the CLI may hold either.
async fn check_pepper(ctx: &Context<'_>) -> Result<(), CliError> {
    let ours = ctx.hasher.scheme();
    let sample = ctx.store.keys().export(None, MAX_EXPORT_PAGE).await?;
    let mut peppered: Vec<HashScheme> = Vec::new();
    for key in &sample {
        let scheme = key.hash.scheme();
        if scheme != HashScheme::Sha256 && !peppered.contains(&scheme) {
            peppered.push(scheme);
        }
    }
    if peppered.is_empty() || peppered.contains(&ours) {
        return Ok(());
    }
    peppered.sort_by_key(|s| match s {
        HashScheme::HmacSha256 { pepper_version } => *pepper_version,
        _ => u32::MAX,
    });
    let found: Vec<String> = peppered.iter().map(|s| describe(*s)).collect();
    Err(CliError::new(format!(
        "pepper mismatch: keys in this store are hashed with {}, but this CLI would hash with \
         {} and cannot verify them; configure the pepper your servers use ({} or {}, and {}) \
         (nothing was written)",
        found.join(" and "),
        describe(ours),
        pepper::PEPPER_FILE_ENV,
        pepper::PEPPER_ENV,
        pepper::PEPPER_VERSION_ENV,
    )))
}

/// `keys check`: the key from stdin, never printed.
async fn check(ctx: &Context<'_>) -> Result<ExitCode, CliError> {
    // Allocated once, large enough that reading never moves (and so never
    // leaves a copy behind), and wiped when dropped.
    let mut input = Zeroizing::new(Vec::with_capacity(MAX_KEY_LEN * 4 + 64));
    // A key is short; anything much longer is not one (and is not kept).
    std::io::stdin()
        .lock()
        .take((MAX_KEY_LEN * 4) as u64)
        .read_to_end(&mut input)
        .map_err(|e| CliError::new(format!("cannot read the key from stdin: {e}")))?;
    let text = input.trim_ascii();
    let verdict = judge(ctx, text).await;
    // Our copy is wiped on drop; the parsed key wipes its own.
    drop(input);
    let verdict = verdict?;
    match ctx.output {
        Format::Table => write_stdout(&format!("{}\n", verdict.text))?,
        Format::Json => write_stdout(&format!("{}\n", verdict.json))?,
    }
    Ok(if verdict.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct Verdict {
    valid: bool,
    text: String,
    json: serde_json::Value,
}

impl Verdict {
    fn invalid(reason: String) -> Self {
        Self {
            valid: false,
            text: format!("invalid: {reason}"),
            json: json!({ "valid": false, "reason": reason }),
        }
    }
}

async fn judge(ctx: &Context<'_>, text: &[u8]) -> Result<Verdict, CliError> {
    if text.is_empty() {
        return Err(CliError::new(
            "no key on stdin: pipe one in, such as printf %s \"$KEY\" | tower-api-key keys check",
        ));
    }
    let format = ctx.store.format();
    let presented = match format.parse_bytes(text) {
        Ok(presented) => presented,
        // The reason names the rule broken (length, prefix...), never the input.
        Err(e) => {
            return Ok(Verdict::invalid(format!(
                "not a key of this store's format ({e})"
            )))
        }
    };
    let id = presented.id();
    match ctx.store.keys().verify(&presented).await? {
        Some(record) => {
            let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
            let expires = record.expires_at.map(time::format);
            if record.is_expired_at(SystemTime::now()) {
                return Ok(Verdict::invalid(format!(
                    "key {id} of {} expired at {}",
                    record.service_account_id,
                    expires.unwrap_or_default()
                )));
            }
            let scope_text = if scopes.is_empty() {
                "(unscoped)".to_owned()
            } else {
                scopes.join(",")
            };
            Ok(Verdict {
                valid: true,
                text: format!(
                    "valid: key {id}\naccount: {}\nscopes: {scope_text}\nexpires: {}\n\
                     rate limits: {}\ncredits: {}",
                    record.service_account_id,
                    expires.as_deref().unwrap_or("never"),
                    output::limits_text(&record.rate_limits),
                    output::credits_text(record.credits.as_ref()),
                ),
                json: json!({
                    "valid": true,
                    "id": id.as_str(),
                    "service_account_id": &*record.service_account_id,
                    "scopes": scopes,
                    "expires_at": expires,
                    "rate_limits": output::limits_json(&record.rate_limits),
                    "credits": record.credits.as_ref().map(|c| json!(CreditsResource::from(c))),
                }),
            })
        }
        None => {
            // Unknown, revoked or a wrong secret, unless the record is
            // hashed under a pepper this CLI does not hold: say so.
            if let Some(stored) = ctx.store.stored_key(id).await? {
                let scheme = stored.hash.scheme();
                if !can_verify(ctx.hasher, scheme) {
                    return Ok(Verdict::invalid(format!(
                        "cannot verify key {id} here: its record is hashed with {}, and this CLI \
                         holds {}; configure the pepper your servers use",
                        describe(scheme),
                        describe(ctx.hasher.scheme())
                    )));
                }
            }
            Ok(Verdict::invalid(format!(
                "no key matches (unknown id {id}, revoked, or a wrong secret)"
            )))
        }
    }
}
