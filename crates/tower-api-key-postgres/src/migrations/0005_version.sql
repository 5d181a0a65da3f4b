-- tower-api-key, migration 5: a version per key.
--
-- Every change of a key's configuration (update, reissue, added credits)
-- adds 1 in the same statement, and a write conditional on the version it
-- read names it in its WHERE clause: a check made on what was read holds
-- for exactly the row the write replaces (under READ COMMITTED, an UPDATE
-- re-evaluates its WHERE on the row a concurrent writer committed). Usage
-- and credit spends leave it.
ALTER TABLE tower_api_key_keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1
    CHECK (version >= 1);
