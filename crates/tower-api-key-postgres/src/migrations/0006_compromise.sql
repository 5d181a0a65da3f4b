-- tower-api-key, migration 6: leak reports recorded on a key.
--
-- When a key was reported leaked, where, by what and what was done
-- (`revoke`, `quarantine`, `notify`), and the digest of the secret the
-- report named: a quarantine holds for that secret only, so the secret a
-- reissue gives is not quarantined.
ALTER TABLE tower_api_key_keys
    ADD COLUMN compromised_at    timestamptz,
    ADD COLUMN compromise_url    text,
    ADD COLUMN compromise_source text,
    ADD COLUMN compromise_action text
        CHECK (compromise_action IN ('revoke', 'quarantine', 'notify')),
    ADD COLUMN compromised_hash  bytea;
