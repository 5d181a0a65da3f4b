-- tower-api-key, migration 7: the change log, for invalidations without LISTEN.
--
-- Every write that changes what a key verifies as appends a row here in the
-- same transaction (as it sends its NOTIFY). Replicas poll the log, so a
-- change reaches them through a transaction pooler, where LISTEN does not
-- work, and a lost notification is caught within the poll interval.
--
-- Rows commit out of `seq` order, so pollers position themselves by
-- transaction id (`xid`): a poll reads the rows of transactions at or after
-- the oldest one still running at its previous poll.
CREATE TABLE tower_api_key_changes (
    seq                bigserial   PRIMARY KEY,
    xid                xid8        NOT NULL DEFAULT pg_current_xact_id(),
    key_id             text        NOT NULL,
    service_account_id text        NOT NULL,
    changed_at         timestamptz NOT NULL
);
CREATE INDEX tower_api_key_changes_xid_idx ON tower_api_key_changes (xid);
CREATE INDEX tower_api_key_changes_at_idx ON tower_api_key_changes (changed_at);

-- The newest transaction id whose rows writers have pruned: a poller whose
-- position is at or below it may have missed changes and invalidates
-- everything.
CREATE TABLE tower_api_key_changes_pruned (
    id   integer PRIMARY KEY CHECK (id = 1),
    upto xid8    NOT NULL
);
INSERT INTO tower_api_key_changes_pruned (id, upto) VALUES (1, '0');
