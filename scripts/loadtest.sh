#!/usr/bin/env bash
# Load test: /open (no auth) against /protected (API-key layer, cache hit) on
# the same server, interleaved, several rounds; prints each round's
# requests/second and the ratio protected/open, then the median ratio.
#
#   scripts/loadtest.sh                 # 7 rounds of 5 s per route
#   ROUNDS=9 DURATION=10s scripts/loadtest.sh
#   KEYS=1000000 scripts/loadtest.sh    # with a million keys preloaded in the cache
#
# Environment: ROUNDS (7), DURATION (5s, per run), CONNECTIONS (64),
# WRK_THREADS (1), PORT (38080), KEYS (0), SERVER_CPU (0), CLIENT_CPU (1).
# Traffic goes to 127.0.0.1 only; every run is bounded by DURATION, the
# server start by STARTUP_TIMEOUT seconds (600), and the server is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
PORT=${PORT:-38080}
KEYS=${KEYS:-0}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-600}
ADDR="127.0.0.1:${PORT}"

if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: fewer than 2 CPUs; server and wrk share one" >&2
    CLIENT_CPU=$SERVER_CPU
fi

echo "== building"
cargo build --release --example bench_server

echo "== machine"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; kernel $(uname -r)"
echo "load before: $(uptime | sed 's/.*load average: //')"
echo "server: 1 tokio worker on cpu ${SERVER_CPU}; wrk: ${WRK_THREADS} thread(s), ${CONNECTIONS} connections on cpu ${CLIENT_CPU}; ${DURATION} per run; ${ROUNDS} rounds"

LOG=$(mktemp)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$LOG"
}
trap cleanup EXIT

BIND="$ADDR" KEYS="$KEYS" WORKERS=1 taskset -c "$SERVER_CPU" \
    target/release/examples/bench_server >"$LOG" 2>&1 &
SERVER_PID=$!

for _ in $(seq "$STARTUP_TIMEOUT"); do
    grep -q '^listening on' "$LOG" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG"; echo "server exited" >&2; exit 1; }
    sleep 1
done
grep -q '^listening on' "$LOG" || { cat "$LOG"; echo "server did not start in ${STARTUP_TIMEOUT}s" >&2; exit 1; }
grep -v '^API_KEY_BENCH=' "$LOG" | sed 's/^/server: /'
KEY=$(sed -n 's/^API_KEY_BENCH=//p' "$LOG")

# Sanity: the protected route refuses a request without the key and admits one with it.
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
[ "$(status "http://${ADDR}/open")" = 200 ] || { echo "/open is not 200" >&2; exit 1; }
[ "$(status "http://${ADDR}/protected")" = 401 ] || { echo "/protected without a key is not 401" >&2; exit 1; }
[ "$(status -H "Authorization: Api-Key ${KEY}" "http://${ADDR}/protected")" = 200 ] \
    || { echo "/protected with the key is not 200" >&2; exit 1; }

# run PATH [extra wrk args...] -> requests/second; fails on any non-2xx answer or error.
run() {
    local path=$1; shift
    local out
    out=$(taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        --timeout 5s "$@" "http://${ADDR}${path}")
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        echo "$out" >&2
        echo "errors during the run of ${path}" >&2
        exit 1
    fi
    awk '/^Requests\/sec:/ { print $2 }' <<<"$out"
}

echo "== warm-up"
run /open -d2s >/dev/null
run /protected -d2s -H "Authorization: Api-Key ${KEY}" >/dev/null

echo "== rounds"
printf '%-6s %12s %12s %8s\n' round open/s protected/s ratio
RATIOS=()
OPENS=()
PROTS=()
for round in $(seq "$ROUNDS"); do
    # Alternate which route goes first, so drift in the machine's load cancels out.
    if [ $((round % 2)) = 1 ]; then
        open=$(run /open)
        prot=$(run /protected -H "Authorization: Api-Key ${KEY}")
    else
        prot=$(run /protected -H "Authorization: Api-Key ${KEY}")
        open=$(run /open)
    fi
    ratio=$(awk -v p="$prot" -v o="$open" 'BEGIN { printf "%.3f", p / o }')
    RATIOS+=("$ratio"); OPENS+=("$open"); PROTS+=("$prot")
    printf '%-6s %12s %12s %8s\n' "$round" "$open" "$prot" "$ratio"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "== result"
echo "median open/s: $(median "${OPENS[@]}"), median protected/s: $(median "${PROTS[@]}")"
echo "median ratio protected/open: $(median "${RATIOS[@]}") (target >= 0.93)"
echo "load after: $(uptime | sed 's/.*load average: //')"
