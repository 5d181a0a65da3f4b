#!/usr/bin/env bash
# Where the server's *time* goes per HTTP request, /open against /protected:
# `bench_server` (one tokio worker, CPU 0) under wrk (CPU 1), sampled by
# `perf record` (cpu-clock, so it works in VMs without hardware counters),
# then the difference per request by function and by group
# (scripts/perf_diff.py). Instruction counts (scripts/callgrind_http.sh) are
# exact but blind to stalls, atomics, clock reads and the kernel; this is
# the other half, sampled and so noisy (a few ns per function).
#
#   scripts/perf_http.sh                  # bare server, 8 s per route
#   METRICS=1 SECONDS_PER_RUN=15 scripts/perf_http.sh
#   ROUTE=static scripts/perf_http.sh     # the reference route instead
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
ROUTE=${ROUTE:-protected}
. scripts/need.sh
need perf:linux-perf wrk
BIN=${BENCH_SERVER:-${CARGO_TARGET_DIR:-target}/release/bench_server}
[ -n "${BENCH_SERVER:-}" ] || cargo build --release -p tower-api-key-perf --bin bench_server
OUT=${KEEP:-$(mktemp -d)}
mkdir -p "$OUT"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$OUT"' EXIT

# sample ROUTE: leaves $OUT/ROUTE.data and $OUT/ROUTE.requests
sample() {
    local route=$1 port pid key
    port=$((40000 + RANDOM % 1000))
    BIND=127.0.0.1:$port WORKERS=1 METRICS=${METRICS:-0} taskset -c 0 "$BIN" >"$OUT/$route.log" 2>/dev/null &
    pid=$!
    for _ in $(seq 300); do grep -q '^listening' "$OUT/$route.log" && break; sleep 1; done
    key=$(sed -n 's/^API_KEY_BENCH=//p' "$OUT/$route.log")
    taskset -c 1 wrk -t1 -c64 -d2s -H "Authorization: Api-Key $key" "http://127.0.0.1:$port/$route" >/dev/null
    perf record -q -F 4999 -p "$pid" -o "$OUT/$route.data" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
    local perf_pid=$!
    taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" -H "Authorization: Api-Key $key" \
        "http://127.0.0.1:$port/$route" | awk '/ requests in / { print $1 }' >"$OUT/$route.requests"
    wait "$perf_pid" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

sample open
sample "$ROUTE"
python3 scripts/perf_diff.py "$OUT" open "$ROUTE" "${TOP:-30}"
