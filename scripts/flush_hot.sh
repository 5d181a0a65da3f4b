#!/usr/bin/env bash
# Issue 26's measure of the usage flush on PostgreSQL: whether the flush's
# UPDATE of last_used_at stays a HOT update (no index entry written) with
# the schema as shipped, against the same schema plus a plain index on
# last_used_at (what "find the unused keys" would naively add), and the plan
# of the `unused_for` listing. Applies the crate's migrations to a scratch
# database, inserts 10,000 keys of 100 accounts, then runs 40 flushes of 500
# keys each (the store's own statement, one transaction each) and prints
# pg_stat_user_tables' n_tup_upd and n_tup_hot_upd for them.
#
#   . .ci/postgres.sh && bash scripts/flush_hot.sh
set -euo pipefail
: "${DATABASE_URL:?source .ci/postgres.sh first}"
cd "$(dirname "$0")/.."
psql="psql -qAtX -v ON_ERROR_STOP=1"
db=flush_hot_$$
$psql "$DATABASE_URL" -c "CREATE DATABASE $db"
url="${DATABASE_URL%/*}/$db"
trap '$psql "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT
for m in crates/tower-api-key-postgres/src/migrations/*.sql; do $psql "$url" -f "$m"; done

$psql "$url" <<'SQL'
INSERT INTO tower_api_key_keys (key_id, service_account_id, hash, hash_scheme, created_at, hint)
SELECT lpad(i::text, 16, '0'), 'sa-' || (i % 100),
       sha256(i::text::bytea), 'sha256',
       timestamptz '2026-01-01' + i * interval '1 s', 'tak_…' || right(i::text, 4)
  FROM generate_series(1, 10000) AS i;
VACUUM ANALYZE tower_api_key_keys;
SQL

# 40 flushes, each the store's statement (crates/tower-api-key-postgres,
# `touch`) for 500 random keys at a later time (each run later than the
# last: $2 minutes on); prints updates and HOT ones.
flushes() {
    local before after
    before=$($psql "$url" -c "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'tower_api_key_keys'")
    for round in $(seq 1 40); do
        $psql "$url" -c "
            UPDATE tower_api_key_keys AS k
               SET last_used_at = GREATEST(k.last_used_at, u.at)
              FROM unnest(ARRAY(SELECT lpad((1 + floor(random() * 10000))::int::text, 16, '0')
                                  FROM generate_series(1, 500)),
                          array_fill(timestamptz '2026-06-01' + ($2 + $round) * interval '1 min', ARRAY[500]))
                   AS u(id, at)
             WHERE k.key_id = u.id
               AND (k.last_used_at IS NULL OR k.last_used_at < u.at)"
    done
    # Statistics reach the shared counters when a backend goes idle; a new
    # session after a pause sees them.
    $psql "$url" -c "SELECT pg_sleep(1.5)" >/dev/null
    after=$($psql "$url" -c "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'tower_api_key_keys'")
    read -r u0 h0 <<<"$before"
    read -r u1 h1 <<<"$after"
    local upd=$((u1 - u0)) hot=$((h1 - h0))
    echo "$1: $upd rows updated by 40 flushes, $hot HOT ($((100 * hot / upd)) %)"
}

echo "== the unused_for listing of one account (100 keys of 10,000)"
$psql "$url" -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
    SELECT key_id FROM tower_api_key_keys
     WHERE service_account_id = 'sa-7'
       AND (NULL::timestamptz IS NULL OR (created_at, key_id) > (NULL, NULL::text))
       AND (timestamptz '2026-06-01' IS NULL OR last_used_at IS NULL OR last_used_at < timestamptz '2026-06-01')
     ORDER BY created_at, key_id LIMIT 101"
echo "== usage flushes"
flushes "schema as shipped (no index on last_used_at)" 0
$psql "$url" -c "CREATE INDEX flush_hot_last_used_idx ON tower_api_key_keys (last_used_at)"
$psql "$url" -c "VACUUM ANALYZE tower_api_key_keys"
flushes "with an index on last_used_at" 100
