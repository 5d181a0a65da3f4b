-- tower-api-key, migration 4: rate-limit buckets shared by replicas.
--
-- One row per (subject, limit): `key:<key id>` or `account:<service account
-- id>`, and the limit's text form (`5/1s`). `tat_ns` is the bucket's
-- theoretical arrival time (GCRA) in nanoseconds since the Unix epoch: a
-- bucket whose TAT lies in the past holds nothing, and such rows are
-- deleted now and then by the replicas' syncs.
CREATE TABLE tower_api_key_rate_buckets (
    subject    text   NOT NULL,
    rate_limit text   NOT NULL,
    tat_ns     bigint NOT NULL,
    PRIMARY KEY (subject, rate_limit)
);
