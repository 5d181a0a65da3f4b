-- tower-api-key, migration 10: the key lifecycle (issue 26).
--
-- `retire_when_unused`: whether the lifecycle task may retire the key once
-- nobody used it for its retirement period (true by default; false opts
-- out). `retired_unused_since`: set by that retirement (with `expires_at`):
-- the key was unused since this time; NULL otherwise. Neither is indexed,
-- and neither is `last_used_at`: a usage flush changes no indexed column
-- and stays a HOT update (scripts/flush_hot.sh).
ALTER TABLE tower_api_key_keys
    ADD COLUMN retire_when_unused   boolean     NOT NULL DEFAULT true,
    ADD COLUMN retired_unused_since timestamptz;

-- Keys expiring in a window (the lifecycle's warnings), by expiry; keys
-- that never expire are not in it.
CREATE INDEX tower_api_key_keys_expires_at_idx
    ON tower_api_key_keys (expires_at) WHERE expires_at IS NOT NULL;

-- The notices the lifecycle task sent: one row per key, kind and window
-- (the expiry or last use the notice is about), so replicas and restarts
-- send each at most once. Deleted with the key.
CREATE TABLE tower_api_key_notices (
    key_id    text COLLATE "C" NOT NULL
              REFERENCES tower_api_key_keys (key_id) ON DELETE CASCADE,
    kind      text        NOT NULL,
    window_at timestamptz NOT NULL,
    sent_at   timestamptz NOT NULL,
    announced timestamptz,
    PRIMARY KEY (key_id, kind, window_at)
);

-- Leases: which replica runs a task (the lifecycle), until when. A row,
-- not a session advisory lock: it works through a transaction pooler.
CREATE TABLE tower_api_key_leases (
    name   text        PRIMARY KEY,
    holder text        NOT NULL,
    until  timestamptz NOT NULL
);
