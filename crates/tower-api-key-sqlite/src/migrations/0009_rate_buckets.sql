-- tower-api-key, SQLite migration 9: rate-limit buckets shared by the
-- processes on one file (`SqliteKeyStore::rate_limit_sync`).
--
-- One row per (subject, limit): `key:<key id>` or `account:<service account
-- id>`, and the limit's text form (`5/1s`). `tat_ns` is the bucket's
-- theoretical arrival time (GCRA) in nanoseconds since the Unix epoch: a
-- bucket whose TAT lies in the past holds nothing, and such rows are
-- deleted now and then by the syncs.
CREATE TABLE tower_api_key_rate_buckets (
    subject    TEXT    NOT NULL,
    rate_limit TEXT    NOT NULL,
    tat_ns     INTEGER NOT NULL,
    PRIMARY KEY (subject, rate_limit)
) STRICT, WITHOUT ROWID;
