#!/usr/bin/env bash
# Issue 26's end-to-end check on SQLite, as a user runs it: the quickstart
# on a SQLite file, the CLI on the same file. The CLI creates three keys of
# one account, one of them is used once through the server, and once the
# server has flushed that use (it writes `last_used_at` behind, every 2 s),
# both `keys list --unused-for 1h -o json` and
# `GET /admin/keys?service_account_id=...&unused_for=1h` list exactly the
# other two. Fails on any other answer, or if the use is not flushed within
# 10 s.
#
#   bash scripts/unused_quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Two builds: `--example` alone would leave the CLI's binary unbuilt.
cargo build --quiet --all-features -p tower-api-key-cli
cargo build --quiet --all-features -p tower-api-key-examples --example quickstart
target=${CARGO_TARGET_DIR:-target}

work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# Copies, so another build into a shared target directory cannot swap them.
cp "$target/debug/tower-api-key" "$target/debug/examples/quickstart" "$work/"
cli="$work/tower-api-key"
export DATABASE_URL="sqlite:$work/keys.db"

BIND=127.0.0.1:0 "$work/quickstart" >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 600); do
    grep -q '^export ADDR=' "$work/out" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$work/err" >&2; echo "the quickstart exited" >&2; exit 1; }
    sleep 0.1
done
addr=$(sed -n 's/^export ADDR=//p' "$work/out")
[ -n "$addr" ] || { echo "the quickstart did not print its address within 60 s" >&2; exit 1; }
# The admin key is printed after the address; wait for it too.
for _ in $(seq 1 100); do
    grep -q '^export API_KEY_ADMIN=' "$work/out" && break
    sleep 0.1
done
admin=$(sed -n 's/^export API_KEY_ADMIN=\([^ ]*\).*/\1/p' "$work/out")
[ -n "$admin" ] || { echo "the quickstart printed no admin key" >&2; exit 1; }

id_of() { local id=${1#*_}; echo "${id%%_*}"; }
keys=()
for _ in 1 2 3; do
    keys+=("$("$cli" keys create --account sa-idle 2>/dev/null)")
done
used=$(id_of "${keys[1]}")
unused=$(printf '%s\n' "$(id_of "${keys[0]}")" "$(id_of "${keys[2]}")" | sort)

code=$(printf 'header = "Authorization: Api-Key %s"\n' "${keys[1]}" |
    curl -s -o /dev/null -w '%{http_code}' -K - "http://$addr/whoami")
[ "$code" = 200 ] || { echo "the used key: $code, not 200" >&2; exit 1; }

start=$(date +%s)
until [ "$("$cli" keys get "$used" -o json | jq -r .last_used_at)" != null ]; do
    [ $(( $(date +%s) - start )) -lt 10 ] || { echo "the use was not flushed within 10 s" >&2; exit 1; }
    sleep 0.2
done

from_cli=$("$cli" keys list --account sa-idle --unused-for 1h -o json | jq -r '.keys[].id' | sort)
[ "$from_cli" = "$unused" ] || { printf 'CLI listed:\n%s\nexpected:\n%s\n' "$from_cli" "$unused" >&2; exit 1; }
# Across accounts (an operator's sweep): the demo keys are unused too, so
# only check that the used key is not there and the unused ones are.
everyone=$("$cli" keys list --unused-for 1h -o json | jq -r '.keys[].id')
for id in $unused; do grep -qx "$id" <<<"$everyone" || { echo "$id missing across accounts" >&2; exit 1; }; done
! grep -qx "$used" <<<"$everyone" || { echo "the used key listed across accounts" >&2; exit 1; }

from_api=$(printf 'header = "Authorization: Api-Key %s"\n' "$admin" |
    curl -sf -K - "http://$addr/admin/keys?service_account_id=sa-idle&unused_for=1h" |
    jq -r '.keys[].id' | sort)
[ "$from_api" = "$unused" ] || { printf 'API listed:\n%s\nexpected:\n%s\n' "$from_api" "$unused" >&2; exit 1; }
code=$(printf 'header = "Authorization: Api-Key %s"\n' "$admin" |
    curl -s -o "$work/bad" -w '%{http_code}' -K - "http://$addr/admin/keys?service_account_id=sa-idle&unused_for=soon")
[ "$code" = 400 ] || { echo "a bad duration: $code, not 400" >&2; exit 1; }
echo "unused_quickstart: CLI and API both list exactly the two unused keys; a bad duration is 400 ($(jq -r .message "$work/bad" 2>/dev/null || cat "$work/bad"))"
