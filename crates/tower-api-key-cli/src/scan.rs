//! `tower-api-key scan`: finds API keys in files or stdin, for a pre-commit
//! hook or a CI step. Prints where each key is and its id, never its
//! secret; with a database, whether it is live, revoked or unknown.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tower_api_key::store::MAX_EXPORT_PAGE;
use tower_api_key::{KeyFormat, KeyId, PresentedKey};

use crate::error::CliError;
use crate::store::Store;
use crate::{pepper, Global};

/// A key found: where, and the key.
struct Found {
    place: String,
    line: usize,
    key: PresentedKey,
}

/// Every key of `format` in `text` (a whole key that passes the checksum,
/// even glued to other characters), with its line number; each key once
/// per line.
fn keys_in(text: &[u8], format: &KeyFormat) -> Vec<(usize, PresentedKey)> {
    let mut found = Vec::new();
    let needle = format!("{}_", format.prefix());
    let len = format.key_len();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let mut ids = HashSet::new();
        for at in 0..line.len().saturating_sub(len - 1) {
            if !line[at..].starts_with(needle.as_bytes()) {
                continue;
            }
            if let Ok(key) = format.parse_bytes(&line[at..at + len]) {
                if ids.insert(key.id()) {
                    found.push((n + 1, key));
                }
            }
        }
    }
    found
}

/// The files under `path` (itself if a file), in name order; `.git`
/// directories and symbolic links left out.
fn files_under(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() {
        out.push(path.to_owned());
    } else if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            files_under(&entry, out)?;
        }
    }
    Ok(())
}

/// What the store says of a key found.
async fn status(
    store: &Store,
    key: &PresentedKey,
    revoked: &mut Option<HashSet<KeyId>>,
) -> Result<&'static str, CliError> {
    let keys = store.keys();
    if let Some(record) = keys
        .verify(key)
        .await
        .map_err(|e| CliError::new(format!("the store could not check a key: {e}")))?
    {
        if record.is_expired_at(std::time::SystemTime::now()) {
            return Ok("expired");
        }
        return Ok("live");
    }
    if revoked.is_none() {
        let mut all = HashSet::new();
        let mut after = None;
        loop {
            let page = keys.export_revoked(after, MAX_EXPORT_PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(*last);
            all.extend(page);
        }
        *revoked = Some(all);
    }
    Ok(if revoked.as_ref().is_some_and(|r| r.contains(&key.id())) {
        "revoked"
    } else {
        "unknown"
    })
}

/// Runs the scan: exit 0 when no live key was found, 1 when one was (or,
/// without a database, when any key was), 2 on a usage error.
pub async fn main(global: &Global, paths: &[PathBuf], prefix: &str) -> ExitCode {
    match run(global, paths, prefix).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(global: &Global, paths: &[PathBuf], prefix: &str) -> Result<ExitCode, CliError> {
    let format = KeyFormat::new(prefix)
        .map_err(|_| CliError::new("--prefix must be 1 to 16 of a-z0-9, starting with a letter"))?;
    let mut found = Vec::new();
    if paths.is_empty() {
        let mut text = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut text)
            .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
        found.extend(
            keys_in(&text, &format)
                .into_iter()
                .map(|(line, key)| Found {
                    place: "-".into(),
                    line,
                    key,
                }),
        );
    }
    for path in paths {
        let mut files = Vec::new();
        files_under(path, &mut files)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
        for file in files {
            let text = match std::fs::read(&file) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("warning: cannot read {}: {e}", file.display());
                    continue;
                }
            };
            let place = file.display().to_string();
            found.extend(
                keys_in(&text, &format)
                    .into_iter()
                    .map(|(line, key)| Found {
                        place: place.clone(),
                        line,
                        key,
                    }),
            );
        }
    }
    let store = match &global.database_url {
        None => None,
        Some(url) => {
            let hasher = pepper::hasher(
                global.pepper_file.as_deref(),
                global.pepper_version.as_deref(),
            )?;
            let store = crate::store::open(url, hasher, false).await?;
            if let Err(e) = store.check_schema().await {
                store.shutdown().await;
                return Err(e);
            }
            Some(store)
        }
    };
    let mut live = false;
    let mut revoked = None;
    let mut out = String::new();
    for f in &found {
        let status = match &store {
            Some(store) => status(store, &f.key, &mut revoked).await?,
            None => "found (no database to check it against)",
        };
        live |= store.is_none() || status == "live";
        out.push_str(&format!(
            "{}:{}: key {} {status}\n",
            f.place,
            f.line,
            f.key.id()
        ));
    }
    if let Some(store) = store {
        store.shutdown().await;
    }
    crate::output::write_stdout(&out)?;
    Ok(if live {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_key_once_per_line_with_its_line_and_no_near_miss() {
        let format = KeyFormat::default();
        let a = format.generate().unwrap();
        let b = format.generate().unwrap();
        let a_text = a.expose_secret();
        let mut miss = a_text.to_owned().into_bytes();
        let last = miss.len() - 1;
        miss[last] = if miss[last] == b'0' { b'1' } else { b'0' };
        let miss = String::from_utf8(miss).unwrap();
        let text = format!(
            "first line\nK={a_text} again {a_text}\nnear {miss}\n\"{}\"x{}",
            b.expose_secret(),
            &a_text[..20]
        );
        let found: Vec<(usize, KeyId)> = keys_in(text.as_bytes(), &format)
            .into_iter()
            .map(|(n, k)| (n, k.id()))
            .collect();
        assert_eq!(found, vec![(2, a.id()), (4, b.id())]);
        assert!(keys_in(b"", &format).is_empty());
        assert!(keys_in(a_text.as_bytes(), &KeyFormat::new("yc").unwrap()).is_empty());
    }
}
