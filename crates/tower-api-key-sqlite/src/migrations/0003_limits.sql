-- tower-api-key, SQLite migration 3: rate limits and credits.
--
-- A key's own rate limits, as their text forms (`5/1s`,
-- `100/1m,burst=20`) separated by one space; '' for none.
ALTER TABLE tower_api_key_keys ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '';
-- A key's credits: NULL remaining for a key without credits. The refill,
-- if any: amount, 'daily' or 'monthly', and the day of the month.
ALTER TABLE tower_api_key_keys ADD COLUMN credits_remaining INTEGER
    CHECK (credits_remaining IS NULL OR credits_remaining >= 0);
ALTER TABLE tower_api_key_keys ADD COLUMN credits_refill_amount INTEGER;
ALTER TABLE tower_api_key_keys ADD COLUMN credits_refill_interval TEXT
    CHECK (credits_refill_interval IS NULL OR credits_refill_interval IN ('daily', 'monthly'));
ALTER TABLE tower_api_key_keys ADD COLUMN credits_refill_day INTEGER;
-- The refill time last due when the credits were set or last refilled
-- (microseconds since the Unix epoch): the next refill falls after it.
ALTER TABLE tower_api_key_keys ADD COLUMN credits_refilled_at INTEGER;
-- A refill or a new credit setting adds 1: credits leased under an older
-- generation are not given back.
ALTER TABLE tower_api_key_keys ADD COLUMN credits_generation INTEGER NOT NULL DEFAULT 0;

-- The rate limits a service account's keys share, in the same text form.
-- An account without limits has no row.
CREATE TABLE tower_api_key_account_limits (
    service_account_id TEXT PRIMARY KEY NOT NULL,
    rate_limits        TEXT NOT NULL
) STRICT;
