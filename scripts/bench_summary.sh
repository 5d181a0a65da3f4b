#!/usr/bin/env bash
# Prints the medians of the last `cargo bench` run (criterion's
# target/criterion/*/*/new/estimates.json) and the ratios the issue asks for.
#
#   cargo bench -p tower-api-key-perf --bench hit_path &&
#       cargo bench -p tower-api-key-perf --bench layer && scripts/bench_summary.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${CRITERION_DIR:-${CARGO_TARGET_DIR:-target}/criterion}

if ! command -v jq >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
fi

median() { # group/bench -> median in ns, or empty
    local f="$DIR/$1/new/estimates.json"
    [ -f "$f" ] && jq -r '.median.point_estimate' "$f" || true
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }

printf '%-34s %12s\n' benchmark "median ns"
for f in $(find "$DIR" -path '*/new/estimates.json' | sort); do
    id=${f#"$DIR"/}; id=${id%/new/estimates.json}
    case "$id" in report* | */report*) continue ;; esac
    printf '%-34s %12.1f\n' "$id" "$(jq -r '.median.point_estimate' "$f")"
done

echo
no_auth=$(median layer/no_auth)
bearer=$(median layer/tower_http_bearer)
api_key=$(median layer/api_key_hit)
if [ -n "$no_auth" ] && [ -n "$api_key" ]; then
    echo "layer: tower_http_bearer / no_auth = $(ratio "$bearer" "$no_auth"), api_key_hit / no_auth = $(ratio "$api_key" "$no_auth"), api_key_hit / tower_http_bearer = $(ratio "$api_key" "$bearer")"
    echo "layer: api-key layer adds $(awk -v a="$api_key" -v b="$no_auth" 'BEGIN { printf "%.0f", a - b }') ns per request over the bare service"
fi
small=$(median lookup_cached/10000); large=$(median lookup_cached/1000000)
[ -n "$small" ] && [ -n "$large" ] && echo "lookup_cached: 1,000,000 keys / 10,000 keys = $(ratio "$large" "$small") (target <= 1.5)"
small=$(median hit_path/10000); large=$(median hit_path/1000000)
[ -n "$small" ] && [ -n "$large" ] && echo "hit_path: 1,000,000 keys / 10,000 keys = $(ratio "$large" "$small") (target <= 1.5)"
true
