-- tower-api-key, SQLite migration 1: the key table and the change log.
--
-- Holds only hashes of keys: `hash` is the 32-byte digest of the whole key
-- (SHA-256, or HMAC-SHA-256 with a server-side pepper that is not in the
-- database), with the scheme and pepper version that made it. Nothing here
-- can give back a key. Times are integer microseconds since the Unix epoch.
CREATE TABLE tower_api_key_keys (
    -- The public key id; the default BINARY collation orders it bytewise,
    -- like the other stores.
    key_id                       TEXT    PRIMARY KEY NOT NULL,
    service_account_id           TEXT    NOT NULL,
    -- The current secret's hash.
    hash                         BLOB    NOT NULL,
    hash_scheme                  TEXT    NOT NULL,
    hash_pepper_version          INTEGER,
    -- The secret replaced by a reissue with grace, accepted until
    -- previous_valid_until.
    previous_hash                BLOB,
    previous_hash_scheme         TEXT,
    previous_hash_pepper_version INTEGER,
    previous_valid_until         INTEGER,
    -- Scope names separated by one space (a scope name holds no space),
    -- sorted; '' for an unscoped key.
    scopes                       TEXT    NOT NULL DEFAULT '',
    description                  TEXT    NOT NULL DEFAULT '',
    created_at                   INTEGER NOT NULL,
    expires_at                   INTEGER,
    -- Written behind, forward only.
    last_used_at                 INTEGER,
    -- Prefix and last four characters, e.g. tak_…x7Qa.
    hint                         TEXT    NOT NULL,

    CHECK (length(hash) = 32),
    CHECK (
        (hash_scheme = 'sha256' AND hash_pepper_version IS NULL)
        OR (hash_scheme = 'hmac-sha256' AND hash_pepper_version IS NOT NULL)
    ),
    CHECK (
        (previous_hash IS NULL AND previous_hash_scheme IS NULL
            AND previous_hash_pepper_version IS NULL AND previous_valid_until IS NULL)
        OR (length(previous_hash) = 32 AND previous_valid_until IS NOT NULL
            AND ((previous_hash_scheme = 'sha256' AND previous_hash_pepper_version IS NULL)
                 OR (previous_hash_scheme = 'hmac-sha256' AND previous_hash_pepper_version IS NOT NULL)))
    )
) STRICT;

-- No two keys share a hash.
CREATE UNIQUE INDEX tower_api_key_keys_hash_idx
    ON tower_api_key_keys (hash);
CREATE UNIQUE INDEX tower_api_key_keys_previous_hash_idx
    ON tower_api_key_keys (previous_hash) WHERE previous_hash IS NOT NULL;
-- Listing a service account's keys, oldest first; counting them.
CREATE INDEX tower_api_key_keys_account_idx
    ON tower_api_key_keys (service_account_id, created_at, key_id);

-- Revokes, reissues and updates, written in the same transaction as the
-- change, so that other processes on this file can invalidate their caches.
-- AUTOINCREMENT: a sequence number is never used twice, even after pruning.
CREATE TABLE tower_api_key_changes (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id             TEXT    NOT NULL,
    service_account_id TEXT    NOT NULL,
    -- The store instance that wrote it (every watcher, its own included,
    -- announces the row: a write whose call was cancelled after its commit
    -- never told its own caches).
    origin             TEXT    NOT NULL,
    changed_at         INTEGER NOT NULL
) STRICT;
CREATE INDEX tower_api_key_changes_at_idx ON tower_api_key_changes (changed_at);

-- The highest sequence number pruned from the change log: a watcher whose
-- position is below it may have missed changes and invalidates everything.
CREATE TABLE tower_api_key_changes_pruned (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
) STRICT;
INSERT INTO tower_api_key_changes_pruned (id, upto) VALUES (1, 0);
