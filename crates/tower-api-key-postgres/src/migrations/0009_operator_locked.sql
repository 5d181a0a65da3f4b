-- tower-api-key, migration 9: keys the operator marked read-only for
-- managers.
--
-- `operator_locked`: a management router refuses every change of the key's
-- fields (deleting and reissuing it stay allowed) unless it may lock keys.
ALTER TABLE tower_api_key_keys
    ADD COLUMN operator_locked boolean NOT NULL DEFAULT false;
