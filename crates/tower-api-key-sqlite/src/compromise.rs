//! Leak reports in SQLite: [`KeyStore::record_compromise`](tower_api_key::KeyStore::record_compromise)
//! as one `BEGIN IMMEDIATE` transaction (compare the reported secret with the
//! stored hashes, check it was not reported before, write or revoke), and the
//! compromise columns an import writes.

use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{
    account_limits_text, log_change, micros_or_invalid, stored_hash, RawInfo, SqliteKeyStore,
    REVOKED, TABLE,
};
use tower_api_key::store::{CompromiseReport, Compromised, LeakAction, StoreError, StoredKey};
use tower_api_key::PresentedKey;

/// The compromise columns of an imported key: time, URL, source, action and
/// the digest of the secret it binds to.
pub(super) type CompromiseColumns = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<&'static str>,
    Option<[u8; 32]>,
);

pub(super) fn compromise_columns(key: &StoredKey) -> Result<CompromiseColumns, StoreError> {
    let Some(c) = &key.info.record.compromise else {
        return Ok((None, None, None, None, None));
    };
    Ok((
        Some(micros_or_invalid(c.at)?),
        Some(c.url.clone()),
        Some(c.source.clone()),
        Some(c.action.as_str()),
        key.compromised_hash.map(|h| *h.digest()),
    ))
}

impl SqliteKeyStore {
    pub(super) async fn compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        // Hashed before the transaction; compared and written inside it.
        let candidates = self.inner.hasher.candidates(key);
        let id = key.id();
        let (_, now) = self.now()?;
        let change = self.change(id, now);
        let outcome = self
            .run_write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let row = tx
                    .prepare_cached(&format!(
                        "SELECT hash, hash_scheme, hash_pepper_version, previous_hash,
                                previous_hash_scheme, previous_hash_pepper_version,
                                previous_valid_until, compromised_hash
                           FROM {TABLE} WHERE key_id = ?1"
                    ))?
                    .query_row([&change.key_id], |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Option<i64>>(2)?,
                            row.get::<_, Option<Vec<u8>>>(3)?,
                            row.get::<_, Option<String>>(4)?,
                            row.get::<_, Option<i64>>(5)?,
                            row.get::<_, Option<i64>>(6)?,
                            row.get::<_, Option<Vec<u8>>>(7)?,
                        ))
                    })
                    .optional()?;
                let Some((hash, scheme, pepper, prev, prev_scheme, prev_pepper, until, bound)) =
                    row
                else {
                    let revoked = tx
                        .prepare_cached(&format!("SELECT 1 FROM {REVOKED} WHERE key_id = ?1"))?
                        .exists([&change.key_id])?;
                    return Ok((
                        if revoked {
                            Compromised::AlreadyRevoked
                        } else {
                            Compromised::Unknown
                        },
                        None,
                    ));
                };
                let current = stored_hash(Some(&hash), Some(&scheme), pepper)?;
                let previous = stored_hash(prev.as_deref(), prev_scheme.as_deref(), prev_pepper)?
                    .filter(|_| until.is_some_and(|until| now < until));
                let matched = if candidates.matches(current.as_ref()) {
                    current
                } else if candidates.matches(previous.as_ref()) {
                    previous
                } else {
                    None
                };
                let Some(matched) = matched else {
                    return Ok((Compromised::Unknown, None));
                };
                if bound.as_deref() == Some(matched.digest().as_slice()) {
                    return Ok((Compromised::AlreadyReported, None));
                }
                let raw = tx
                    .prepare_cached(&format!(
                        "UPDATE {TABLE} SET version = version + 1, compromised_at = ?2,
                             compromise_url = ?3, compromise_source = ?4,
                             compromise_action = ?5, compromised_hash = ?6
                          WHERE key_id = ?1
                      RETURNING {}",
                        super::INFO_COLUMNS
                    ))?
                    .query_row(
                        (
                            &change.key_id,
                            change.at,
                            &report.url,
                            &report.source,
                            report.action.as_str(),
                            matched.digest().as_slice(),
                        ),
                        RawInfo::read,
                    );
                let mut raw = raw?;
                raw.account_rate_limits = account_limits_text(&tx, &raw.service_account_id)?;
                let info = raw.info()?;
                if report.action == LeakAction::Revoke {
                    tx.prepare_cached(&format!("DELETE FROM {TABLE} WHERE key_id = ?1"))?
                        .execute([&change.key_id])?;
                    tx.prepare_cached(&format!(
                        "INSERT OR IGNORE INTO {REVOKED} (key_id, revoked_at) VALUES (?1, ?2)"
                    ))?
                    .execute((&change.key_id, change.at))?;
                }
                log_change(&tx, &change, &raw.service_account_id)?;
                tx.commit()?;
                let account = raw.service_account_id;
                Ok((
                    Compromised::Acted {
                        key: Box::new(info),
                    },
                    Some(account),
                ))
            })
            .await
            .map_err(StoreError::Backend)?;
        if let (_, Some(account)) = &outcome {
            self.changed(id, account);
        }
        Ok(outcome.0)
    }
}
