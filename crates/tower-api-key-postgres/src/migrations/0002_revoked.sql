-- tower-api-key, migration 2: the ids of revoked keys.
--
-- A revoke deletes the key's row and records its id here, so an import
-- (of an export taken before the revoke, say) never brings the key back.
-- Ids only: nothing here can give back or verify a key.
CREATE TABLE tower_api_key_revoked (
    key_id     text COLLATE "C" PRIMARY KEY,
    revoked_at timestamptz NOT NULL
);
