#!/usr/bin/env bash
# Issue 23's end-to-end check through a transaction pooler, as a user of a
# managed database would run it: the quickstart and the CLI both get
# DATABASE_URL pointing at PgBouncer in transaction mode and nothing else.
# The CLI creates a key, the running quickstart accepts it, the CLI revokes
# it, and the script times until the quickstart refuses it (the default
# ChangeFeed polls the change log every 250 ms; LISTEN hears nothing
# through the pooler). Prints the time; fails if the key is not refused
# within 5 s, or on any other step.
#
#   . .ci/postgres.sh && . .ci/pgbouncer.sh && bash scripts/pooler_quickstart.sh
set -euo pipefail
: "${PGBOUNCER_URL:?source .ci/postgres.sh and .ci/pgbouncer.sh first}"
cd "$(dirname "$0")/.."
export DATABASE_URL="$PGBOUNCER_URL"
. scripts/quickstart_lib.sh
start_quickstart

key=$("$cli" keys create --account sa-pooler 2>/dev/null)
key_id=$(id_of "$key")
code=$(status "$key" /whoami)
[ "$code" = 200 ] || { echo "a key the CLI created through the pooler: $code, not 200" >&2; exit 1; }
echo "pooler_quickstart: the CLI's key is accepted by the quickstart (200), both through PgBouncer"

"$cli" keys revoke "$key_id" >/dev/null
start=$(date +%s%N)
while :; do
    code=$(status "$key" /whoami)
    now=$(date +%s%N)
    elapsed=$(( (now - start) / 1000000 ))
    [ "$code" = 401 ] && break
    [ "$code" = 200 ] || { echo "after the revoke: $code" >&2; exit 1; }
    [ "$elapsed" -lt 5000 ] || { echo "still accepted 5 s after the CLI's revoke" >&2; exit 1; }
    sleep 0.02
done
echo "pooler_quickstart: refused (401) ${elapsed} ms after the CLI's revoke returned"
