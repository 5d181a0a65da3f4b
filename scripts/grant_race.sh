#!/usr/bin/env bash
# Issue 20's three-request race against a running quickstart, as an attacker
# would send it: the admin key may grant yc.ai.translate.execute (T) and
# yc.ai.foundationModels.execute (T2) but not ops.race.secret (X). Each round the CLI (an operator) creates a key holding
# [T, X]; then, over HTTP with the admin key:
#   1. 30 concurrent PATCH {"scopes":[T,X]}   (keeping what the key holds: allowed),
#      half of them {"scopes":[T,T2,X]}        (also adding T2: allowed)
#   2. PATCH {"scopes":[T]}                   (narrowing: allowed)
#   3. POST :reissue with a 30-day grace      (allowed once it reads [T])
# and checks that the key never ends holding X after the narrowing, nor
# after the admin received its reissued secret. Then the ETag / If-Match
# check: a GET's ETag, a PATCH with it (200), the same If-Match again (412).
#
# Usage, with the quickstart running on DATABASE_URL and its exports pasted:
#     DATABASE_URL=... ADDR=... API_KEY_ADMIN=... scripts/grant_race.sh
# ROUNDS (default 200); CLI: the tower-api-key binary (default
# target/debug/tower-api-key; `cargo build -p tower-api-key-cli` makes it).
set -euo pipefail
: "${ADDR:?set ADDR as the quickstart prints it}" "${API_KEY_ADMIN:?set API_KEY_ADMIN as the quickstart prints it}"
: "${DATABASE_URL:?set DATABASE_URL to the quickstart database}"
ROUNDS=${ROUNDS:-200}
CLI=${CLI:-target/debug/tower-api-key}
T=yc.ai.translate.execute
T2=yc.ai.foundationModels.execute
X=ops.race.secret
auth="Authorization: Api-Key $API_KEY_ADMIN"
json="content-type: application/json"

patch() { # id body -> status
    curl -s -o /dev/null -w '%{http_code}\n' -X PATCH "$ADDR/admin/keys/$1" -H "$auth" -H "$json" -d "$2"
}

declare -A seen=()
count() {
    local n=${seen[$1]:-0}
    seen[$1]=$((n + 1))
}
for round in $(seq 1 "$ROUNDS"); do
    id=$("$CLI" keys create --account sa-race --scope "$T" --scope "$X" -o json 2>/dev/null | jq -r .key.id)
    statuses=$(mktemp)
    for n in $(seq 30); do
        if [ $((n % 2)) = 0 ]; then body="{\"scopes\":[\"$T\",\"$X\"]}"; else body="{\"scopes\":[\"$T\",\"$T2\",\"$X\"]}"; fi
        patch "$id" "$body" >>"$statuses" &
    done
    narrow=$(patch "$id" "{\"scopes\":[\"$T\"]}")
    reissue=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$ADDR/admin/keys/$id:reissue" \
        -H "$auth" -H "$json" -d '{"grace_period_seconds":2592000}')
    wait
    while read -r s; do count "keep:$s"; done <"$statuses"
    rm -f "$statuses"
    count "narrow:$narrow"
    count "reissue:$reissue"
    scopes=$(curl -s "$ADDR/admin/keys/$id" -H "$auth" | jq -c .scopes)
    if [ "$narrow" = 200 ] || [ "$reissue" = 200 ]; then
        if [ "$scopes" != "[\"$T\"]" ]; then
            echo "round $round: key $id holds $scopes after narrow=$narrow reissue=$reissue" >&2
            exit 1
        fi
    fi
    "$CLI" keys revoke "$id" >/dev/null 2>&1
done
for k in "${!seen[@]}"; do echo "$k: ${seen[$k]}"; done | sort
echo "$ROUNDS rounds: no key held $X after a narrowing or a reissue"

id=$("$CLI" keys create --account sa-race --scope "$T" -o json 2>/dev/null | jq -r .key.id)
etag=$(curl -s -D - -o /dev/null "$ADDR/admin/keys/$id" -H "$auth" | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
first=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH "$ADDR/admin/keys/$id" -H "$auth" -H "$json" \
    -H "If-Match: $etag" -d '{"description":"first"}')
again=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH "$ADDR/admin/keys/$id" -H "$auth" -H "$json" \
    -H "If-Match: $etag" -d '{"description":"again"}')
echo "GET ETag: $etag; PATCH with it: $first; the same If-Match again: $again"
[ "$first" = 200 ] && [ "$again" = 412 ]
