-- tower-api-key, SQLite migration 5: leak reports recorded on a key.
--
-- When a key was reported leaked, where, by what and what was done
-- (`revoke`, `quarantine`, `notify`), and the digest of the secret the
-- report named: a quarantine holds for that secret only, so the secret a
-- reissue gives is not quarantined.
ALTER TABLE tower_api_key_keys ADD COLUMN compromised_at INTEGER;
ALTER TABLE tower_api_key_keys ADD COLUMN compromise_url TEXT;
ALTER TABLE tower_api_key_keys ADD COLUMN compromise_source TEXT;
ALTER TABLE tower_api_key_keys ADD COLUMN compromise_action TEXT
    CHECK (compromise_action IN ('revoke', 'quarantine', 'notify'));
ALTER TABLE tower_api_key_keys ADD COLUMN compromised_hash BLOB;
