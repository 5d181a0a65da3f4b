-- tower-api-key, SQLite migration 6: a key's allowed networks and metadata.
--
-- `allowed_networks`: the CIDRs the key may be used from, space-separated
-- as `scopes` are ('' = any network, at most 64). `metadata`: a JSON
-- object of at most 1 KiB for the application's handlers, or NULL.
ALTER TABLE tower_api_key_keys ADD COLUMN allowed_networks TEXT NOT NULL DEFAULT '';
ALTER TABLE tower_api_key_keys ADD COLUMN metadata TEXT
    CHECK (metadata IS NULL OR length(CAST(metadata AS BLOB)) <= 1024);
