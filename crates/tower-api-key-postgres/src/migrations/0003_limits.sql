-- tower-api-key, migration 3: rate limits and credits.
--
-- A key's own rate limits, as their text forms (`5/1s`,
-- `100/1m,burst=20`) separated by one space; '' for none. A key's credits:
-- NULL remaining for a key without credits; the refill, if any (amount,
-- 'daily' or 'monthly', day of the month); the refill time last due when
-- the credits were set or last refilled; and the generation, which a
-- refill or a new credit setting moves on, so credits leased under an
-- older one are not given back.
ALTER TABLE tower_api_key_keys
    ADD COLUMN rate_limits             text        NOT NULL DEFAULT '',
    ADD COLUMN credits_remaining       bigint
        CONSTRAINT tower_api_key_keys_credits_remaining CHECK (credits_remaining >= 0),
    ADD COLUMN credits_refill_amount   bigint,
    ADD COLUMN credits_refill_interval text
        CONSTRAINT tower_api_key_keys_credits_refill_interval
        CHECK (credits_refill_interval IN ('daily', 'monthly')),
    ADD COLUMN credits_refill_day      bigint,
    ADD COLUMN credits_refilled_at     timestamptz,
    ADD COLUMN credits_generation      bigint      NOT NULL DEFAULT 0;

-- The rate limits a service account's keys share, in the same text form.
-- An account without limits has no row.
CREATE TABLE tower_api_key_account_limits (
    service_account_id text PRIMARY KEY,
    rate_limits        text NOT NULL
);
