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
. scripts/quickstart_lib.sh
work=$(mktemp -d)
export DATABASE_URL="sqlite:$work/keys.db"
start_quickstart

keys=()
for _ in 1 2 3; do
    keys+=("$("$cli" keys create --account sa-idle 2>/dev/null)")
done
used=$(id_of "${keys[1]}")
unused=$(printf '%s\n' "$(id_of "${keys[0]}")" "$(id_of "${keys[2]}")" | sort)

code=$(status "${keys[1]}" /whoami)
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
