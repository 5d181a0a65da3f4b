-- tower-api-key, SQLite migration 8: the key lifecycle (issue 26).
--
-- `retire_when_unused`: whether the lifecycle task may retire the key once
-- nobody used it for its retirement period (1, the default; 0 opts out).
-- `retired_unused_since`: set by that retirement (with `expires_at`): the
-- key was unused since this time (microseconds); NULL otherwise.
ALTER TABLE tower_api_key_keys ADD COLUMN retire_when_unused INTEGER NOT NULL DEFAULT 1
    CHECK (retire_when_unused IN (0, 1));
ALTER TABLE tower_api_key_keys ADD COLUMN retired_unused_since INTEGER;

-- Keys expiring in a window (the lifecycle's warnings), by expiry.
CREATE INDEX tower_api_key_keys_expires_at_idx
    ON tower_api_key_keys (expires_at) WHERE expires_at IS NOT NULL;

-- The notices the lifecycle task sent: one row per key, kind and window
-- (the expiry or last use the notice is about), so replicas and restarts
-- send each at most once. Deleted with the key.
CREATE TABLE tower_api_key_notices (
    key_id    TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    window_at INTEGER NOT NULL,
    sent_at   INTEGER NOT NULL,
    announced INTEGER,
    PRIMARY KEY (key_id, kind, window_at)
) STRICT, WITHOUT ROWID;

-- Leases: which replica runs a task (the lifecycle), until when.
CREATE TABLE tower_api_key_leases (
    name   TEXT    PRIMARY KEY NOT NULL,
    holder TEXT    NOT NULL,
    until  INTEGER NOT NULL
) STRICT;
