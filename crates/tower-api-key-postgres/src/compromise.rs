//! Leak reports in PostgreSQL: [`KeyStore::record_compromise`](tower_api_key::KeyStore::record_compromise)
//! as one transaction that locks the key's row (`FOR UPDATE`), compares the
//! reported secret with its hashes, checks it was not reported before, and
//! writes (or revokes) with a NOTIFY that other replicas hear at the commit.

use std::time::SystemTime;

use super::{
    account_limits_column, info_of, notify_payload, stored_hash, BoxError, PgKeyStore,
    INFO_COLUMNS, REVOKED, TABLE,
};
use tower_api_key::store::{CompromiseReport, Compromised, LeakAction, StoreError};
use tower_api_key::PresentedKey;

impl PgKeyStore {
    pub(super) async fn compromise(
        &self,
        key: &PresentedKey,
        report: CompromiseReport,
    ) -> Result<Compromised, StoreError> {
        // Hashed before the transaction; compared and written inside it.
        let candidates = self.inner.hasher.candidates(key);
        let id = key.id();
        let now = self.now();
        let channel = self.inner.channel.as_str();
        let read = format!(
            "SELECT hash, hash_scheme, hash_pepper_version, previous_hash, previous_hash_scheme,
                    previous_hash_pepper_version, previous_valid_until, compromised_hash
               FROM {TABLE} WHERE key_id = $1 FOR UPDATE"
        );
        let was_revoked = format!("SELECT 1 FROM {REVOKED} WHERE key_id = $1");
        let write = format!(
            "WITH changed AS (UPDATE {TABLE} SET version = version + 1, compromised_at = $3,
                     compromise_url = $4, compromise_source = $5, compromise_action = $6,
                     compromised_hash = $7
                  WHERE key_id = $1
              RETURNING {INFO_COLUMNS})
             SELECT changed.*, {account}, pg_notify($2, {payload})::text AS notified
               FROM changed",
            account = account_limits_column("changed"),
            payload = notify_payload("changed"),
        );
        let revoke = format!(
            "WITH gone AS (DELETE FROM {TABLE} WHERE key_id = $1
                RETURNING key_id, service_account_id),
                  kept AS (INSERT INTO {REVOKED} (key_id, revoked_at)
                SELECT key_id, now() FROM gone ON CONFLICT (key_id) DO NOTHING)
             SELECT pg_notify($2, {payload})::text AS notified FROM gone",
            payload = notify_payload("gone"),
        );
        let mut client = self.client().await?;
        let outcome = async {
            let tx = client.transaction().await?;
            let Some(row) = tx.query_opt(&read, &[&id.as_str()]).await? else {
                let revoked = tx.query_opt(&was_revoked, &[&id.as_str()]).await?.is_some();
                return Ok::<_, BoxError>(if revoked {
                    Compromised::AlreadyRevoked
                } else {
                    Compromised::Unknown
                });
            };
            let current = stored_hash(
                row.try_get("hash")?,
                row.try_get("hash_scheme")?,
                row.try_get("hash_pepper_version")?,
            )?;
            let until: Option<SystemTime> = row.try_get("previous_valid_until")?;
            let previous = stored_hash(
                row.try_get("previous_hash")?,
                row.try_get("previous_hash_scheme")?,
                row.try_get("previous_hash_pepper_version")?,
            )?
            .filter(|_| until.is_some_and(|until| now < until));
            let matched = if candidates.matches(current.as_ref()) {
                current
            } else if candidates.matches(previous.as_ref()) {
                previous
            } else {
                None
            };
            let Some(matched) = matched else {
                return Ok(Compromised::Unknown);
            };
            let bound: Option<&[u8]> = row.try_get("compromised_hash")?;
            if bound == Some(matched.digest().as_slice()) {
                return Ok(Compromised::AlreadyReported);
            }
            let changed = tx
                .query_one(
                    &write,
                    &[
                        &id.as_str(),
                        &channel,
                        &now,
                        &report.url,
                        &report.source,
                        &report.action.as_str(),
                        &matched.digest().as_slice(),
                    ],
                )
                .await?;
            let info = info_of(&changed)?;
            if report.action == LeakAction::Revoke {
                tx.query(&revoke, &[&id.as_str(), &channel]).await?;
            }
            tx.commit().await?;
            Ok(Compromised::Acted {
                key: Box::new(info),
            })
        }
        .await
        .map_err(StoreError::Backend)?;
        self.database_answered();
        if let Compromised::Acted { key } = &outcome {
            self.changed(id, Some(&key.record.service_account_id));
        }
        Ok(outcome)
    }
}
