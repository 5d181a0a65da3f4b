-- tower-api-key, SQLite migration 7: keys the operator marked read-only for
-- managers.
--
-- `operator_locked`: 1 when a management router refuses every change of the
-- key's fields (deleting and reissuing it stay allowed) unless it may lock
-- keys; 0 otherwise.
ALTER TABLE tower_api_key_keys ADD COLUMN operator_locked INTEGER NOT NULL DEFAULT 0
    CHECK (operator_locked IN (0, 1));
