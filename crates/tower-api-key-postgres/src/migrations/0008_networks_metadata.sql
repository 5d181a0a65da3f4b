-- tower-api-key, migration 8: a key's allowed networks and metadata.
--
-- `allowed_networks`: the CIDRs the key may be used from, as written
-- ('{}' = any network, at most 64). `metadata`: a JSON object of at most
-- 1 KiB for the application's handlers, kept as its text, or NULL.
ALTER TABLE tower_api_key_keys
    ADD COLUMN allowed_networks text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(allowed_networks) <= 64),
    ADD COLUMN metadata         text
        CHECK (metadata IS NULL OR octet_length(metadata) <= 1024);
