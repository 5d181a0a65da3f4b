//! The pepper: from a file or the environment, never from a flag value
//! (argv is visible to every user in `ps`). Servers should read the same
//! variables so that both hash keys alike (docs/cli.md, "Pepper").

use std::path::Path;

use zeroize::Zeroizing;

use tower_api_key::hash::{HashScheme, KeyHasher, Pepper};

use crate::error::CliError;

/// The pepper itself (its bytes, not a path).
pub const PEPPER_ENV: &str = "TOWER_API_KEY_PEPPER";
/// A file holding the pepper (one trailing newline is ignored).
pub const PEPPER_FILE_ENV: &str = "TOWER_API_KEY_PEPPER_FILE";
/// The pepper's version, recorded in every hash made with it.
pub const PEPPER_VERSION_ENV: &str = "TOWER_API_KEY_PEPPER_VERSION";

/// The hasher the CLI writes new hashes with: HMAC-SHA-256 under the
/// configured pepper, else plain SHA-256 (what a store without a pepper
/// writes). `file` is `--pepper-file` or `TOWER_API_KEY_PEPPER_FILE`.
pub fn hasher(file: Option<&Path>, version: Option<&str>) -> Result<KeyHasher, CliError> {
    let from_env = std::env::var_os(PEPPER_ENV);
    let secret = match (file, from_env) {
        (Some(_), Some(_)) => {
            return Err(CliError::new(format!(
                "both a pepper file and {PEPPER_ENV} are set: keep one"
            )))
        }
        (Some(path), None) => Some(read_file(path)?),
        (None, Some(value)) => Some(Zeroizing::new(
            value
                .into_string()
                .map_err(|_| CliError::new(format!("{PEPPER_ENV} is not valid UTF-8")))?
                .into_bytes(),
        )),
        (None, None) => None,
    };
    match (secret, version) {
        (None, None) => Ok(KeyHasher::sha256()),
        (None, Some(_)) => Err(CliError::new(format!(
            "{PEPPER_VERSION_ENV} is set but no pepper is: set {PEPPER_FILE_ENV} or {PEPPER_ENV}"
        ))),
        (Some(_), None) => Err(CliError::new(format!(
            "a pepper is set but not its version: set {PEPPER_VERSION_ENV} to the version \
             your servers use"
        ))),
        (Some(secret), Some(version)) => {
            let version: u32 = version
                .trim()
                .parse()
                .map_err(|_| CliError::new(format!("{PEPPER_VERSION_ENV} is not a number")))?;
            if secret.is_empty() {
                return Err(CliError::new("the pepper is empty"));
            }
            // `secret` (wiped when dropped, on every path) lends a copy.
            Ok(KeyHasher::with_pepper(Pepper::new(
                version,
                secret.to_vec(),
            )))
        }
    }
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        // The path is the operator's own argument; the contents never appear.
        CliError::new(format!(
            "cannot read the pepper file {}: {e}",
            path.display()
        ))
    })?);
    // Editors add a final newline; it is not part of the secret.
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// Whether `hasher` can verify a hash made under `scheme`.
pub fn can_verify(hasher: &KeyHasher, scheme: HashScheme) -> bool {
    match scheme {
        HashScheme::Sha256 => true,
        HashScheme::HmacSha256 { pepper_version } => {
            hasher.scheme() == HashScheme::HmacSha256 { pepper_version }
        }
        // A scheme newer than this CLI: it cannot verify it.
        _ => false,
    }
}

/// A scheme in words.
pub fn describe(scheme: HashScheme) -> String {
    match scheme {
        HashScheme::Sha256 => "plain SHA-256 (no pepper)".to_owned(),
        HashScheme::HmacSha256 { pepper_version } => {
            format!("HMAC-SHA-256 with pepper version {pepper_version}")
        }
        _ => "an unknown hash scheme".to_owned(),
    }
}
