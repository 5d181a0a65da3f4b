-- tower-api-key, migration 1: the key table.
--
-- Holds only hashes of keys: `hash` is the 32-byte digest of the whole key
-- (SHA-256, or HMAC-SHA-256 with a server-side pepper that is not in the
-- database), with the scheme and pepper version that made it. Nothing here
-- can give back a key.
CREATE TABLE tower_api_key_keys (
    -- The public key id; "C" collation so that ordering is bytewise, like
    -- the in-memory store's.
    key_id                       text COLLATE "C" PRIMARY KEY,
    service_account_id           text        NOT NULL,
    -- The current secret's hash.
    hash                         bytea       NOT NULL,
    hash_scheme                  text        NOT NULL,
    hash_pepper_version          bigint,
    -- The secret replaced by a reissue with grace, accepted until
    -- previous_valid_until.
    previous_hash                bytea,
    previous_hash_scheme         text,
    previous_hash_pepper_version bigint,
    previous_valid_until         timestamptz,
    scopes                       text[]      NOT NULL DEFAULT '{}',
    description                  text        NOT NULL DEFAULT '',
    created_at                   timestamptz NOT NULL,
    expires_at                   timestamptz,
    -- Written behind, forward only.
    last_used_at                 timestamptz,
    -- Prefix and last four characters, e.g. tak_…x7Qa.
    hint                         text        NOT NULL,

    CONSTRAINT tower_api_key_keys_hash_len CHECK (octet_length(hash) = 32),
    CONSTRAINT tower_api_key_keys_hash_scheme CHECK (
        (hash_scheme = 'sha256' AND hash_pepper_version IS NULL)
        OR (hash_scheme = 'hmac-sha256' AND hash_pepper_version IS NOT NULL)
    ),
    CONSTRAINT tower_api_key_keys_previous CHECK (
        (previous_hash IS NULL AND previous_hash_scheme IS NULL
            AND previous_hash_pepper_version IS NULL AND previous_valid_until IS NULL)
        OR (octet_length(previous_hash) = 32 AND previous_valid_until IS NOT NULL
            AND ((previous_hash_scheme = 'sha256' AND previous_hash_pepper_version IS NULL)
                 OR (previous_hash_scheme = 'hmac-sha256' AND previous_hash_pepper_version IS NOT NULL)))
    )
);

-- Verification looks keys up by hash.
CREATE UNIQUE INDEX tower_api_key_keys_hash_idx
    ON tower_api_key_keys (hash);
CREATE UNIQUE INDEX tower_api_key_keys_previous_hash_idx
    ON tower_api_key_keys (previous_hash) WHERE previous_hash IS NOT NULL;
-- Listing a service account's keys, oldest first.
CREATE INDEX tower_api_key_keys_account_idx
    ON tower_api_key_keys (service_account_id, created_at, key_id);
