#!/usr/bin/env bash
# Server instructions per HTTP request, counted by callgrind, and where the
# difference between /open and /protected goes: `bench_server` runs under
# callgrind with instrumentation off, wrk warms it up, then instrumentation
# is switched on for a measured run and the profile dumped. Instruction
# counts do not depend on the machine's load, unlike timings.
#
#   scripts/callgrind_http.sh                 # bare and metrics, 8 s each
#   SECONDS_PER_RUN=20 scripts/callgrind_http.sh metrics
#   TOP=60 scripts/callgrind_http.sh bare     # longer list of differences
#   BENCH_SERVER=/tmp/old/bench_server scripts/callgrind_http.sh bare
#                                             # an already built server (another commit)
#   KEEP=/tmp/cg scripts/callgrind_http.sh bare   # keep the dumps
#   REFERENCE=1 scripts/callgrind_http.sh bare     # also /static (tower-http's
#                                             # static header check): what any
#                                             # route layer costs in axum
#
# Prints, per configuration, instructions per request on /open and on
# /protected (the same request: both carry the Authorization header), then
# the functions whose own instructions per request grow the most.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(bare metrics)

. scripts/need.sh
need valgrind wrk
BIN=${BENCH_SERVER:-${CARGO_TARGET_DIR:-target}/release/bench_server}
[ -n "${BENCH_SERVER:-}" ] || cargo build --release -p tower-api-key-perf --bin bench_server
# KEEP=DIR keeps the dumps there (for callgrind_annotate --tree=caller).
if [ -n "${KEEP:-}" ]; then
    OUT=$KEEP; mkdir -p "$OUT"
    trap 'kill -KILL $(jobs -p) 2>/dev/null || true' EXIT
else
    OUT=$(mktemp -d)
    trap 'kill -KILL $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
fi

# profile CONFIG ROUTE: leaves $OUT/CONFIG-ROUTE.out (the dump) and .wrk.
profile() {
    local config=$1 route=$2 port flag=0 pid key
    port=$((39000 + RANDOM % 1000))
    [ "$config" = metrics ] && flag=1
    BIND=127.0.0.1:$port WORKERS=1 METRICS=$flag valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$OUT/$config-$route.%p" "$BIN" >"$OUT/$config-$route.log" 2>/dev/null &
    pid=$!
    for _ in $(seq 300); do grep -q '^listening' "$OUT/$config-$route.log" && break; sleep 1; done
    grep -q '^listening' "$OUT/$config-$route.log" || { echo "server did not start" >&2; exit 1; }
    key=$(sed -n 's/^API_KEY_BENCH=//p' "$OUT/$config-$route.log")
    wrk -t1 -c4 -d2s -H "Authorization: Api-Key $key" "http://127.0.0.1:$port/$route" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    wrk -t1 -c4 -d"${SECONDS_PER_RUN}s" -H "Authorization: Api-Key $key" \
        "http://127.0.0.1:$port/$route" >"$OUT/$config-$route.wrk"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
    mv "$OUT/$config-$route.$pid.1" "$OUT/$config-$route.out"
}

for config in "${CONFIGS[@]}"; do
    profile "$config" open
    profile "$config" protected
    python3 scripts/callgrind_diff.py "$OUT" "$config" "${TOP:-30}"
    if [ -n "${REFERENCE:-}" ]; then
        profile "$config" static
        python3 scripts/callgrind_diff.py "$OUT" "$config" "${TOP:-30}" open static
        python3 scripts/callgrind_diff.py "$OUT" "$config" "${TOP:-30}" static protected
    fi
done
