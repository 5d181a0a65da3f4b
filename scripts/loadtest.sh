#!/usr/bin/env bash
# Load test: /open (no auth) against /protected (API-key layer, cache hit) on
# the same server, interleaved, several rounds; prints each round's
# requests/second and the ratio protected/open, then the median ratio.
# It also reads the server's CPU time around every run and prints server CPU
# per request: on a machine shared with other work the server does not get a
# whole core, and open-CPU/protected-CPU is the throughput ratio it would
# reach if it did.
#
#   scripts/loadtest.sh                 # 7 rounds of 5 s per route
#   ROUNDS=9 DURATION=10s scripts/loadtest.sh
#   KEYS=1000000 scripts/loadtest.sh    # with a million keys preloaded in the cache
#
# Environment: ROUNDS (7), DURATION (5s, per run), CONNECTIONS (64),
# WRK_THREADS (1), PORT (38080), KEYS (0), SERVER_CPU (0), CLIENT_CPU (1),
# SAME_REQUEST (1: /open gets the same Authorization header as /protected,
# so the layer is the only difference between the two; 0: /open gets none).
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
SAME_REQUEST=${SAME_REQUEST:-1}
ADDR="127.0.0.1:${PORT}"

MISSING=()
command -v wrk >/dev/null 2>&1 || MISSING+=(wrk)
command -v curl >/dev/null 2>&1 || MISSING+=(curl)
command -v taskset >/dev/null 2>&1 || MISSING+=(util-linux)
if [ ${#MISSING[@]} -gt 0 ]; then
    echo "== installing ${MISSING[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}" >/dev/null
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
RESULT=$(mktemp)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$LOG" "$RESULT"
}
trap cleanup EXIT

BIND="$ADDR" KEYS="$KEYS" WORKERS=1 taskset -c "$SERVER_CPU" \
    "${CARGO_TARGET_DIR:-target}/release/examples/bench_server" >"$LOG" 2>&1 &
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

# Server CPU time so far, in nanoseconds (all its threads, from schedstat).
server_cpu_ns() {
    cat /proc/"$SERVER_PID"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'
}

# run PATH [extra wrk args...] -> "requests/second server-ns-per-request";
# fails on any non-2xx answer or socket error.
run() {
    local path=$1; shift
    local out cpu0 cpu1
    cpu0=$(server_cpu_ns)
    out=$(taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        --timeout 5s "$@" "http://${ADDR}${path}")
    cpu1=$(server_cpu_ns)
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        echo "$out" >&2
        echo "errors during the run of ${path}" >&2
        exit 1
    fi
    awk -v c0="$cpu0" -v c1="$cpu1" '
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { n = $1 }
        END { printf "%s %.0f\n", rps, (c1 - c0) / n }' <<<"$out"
}

OPEN_ARGS=()
[ "$SAME_REQUEST" = 1 ] && OPEN_ARGS=(-H "Authorization: Api-Key ${KEY}")
echo "/open requests carry the Authorization header too: $([ "$SAME_REQUEST" = 1 ] && echo yes || echo no)"

echo "== warm-up"
run /open -d2s "${OPEN_ARGS[@]}" >/dev/null
run /protected -d2s -H "Authorization: Api-Key ${KEY}" >/dev/null

echo "== rounds"
printf '%-6s %11s %12s %7s %11s %14s %9s\n' round open/s protected/s ratio "open ns/req" "protected ns/req" "cpu ratio"
RATIOS=(); CPU_RATIOS=(); OPENS=(); PROTS=(); OPEN_NS=(); PROT_NS=()
for round in $(seq "$ROUNDS"); do
    # Alternate which route goes first, so drift in the machine's load cancels out.
    if [ $((round % 2)) = 1 ]; then
        run /open "${OPEN_ARGS[@]}" >"$RESULT"; read -r open open_ns <"$RESULT"
        run /protected -H "Authorization: Api-Key ${KEY}" >"$RESULT"; read -r prot prot_ns <"$RESULT"
    else
        run /protected -H "Authorization: Api-Key ${KEY}" >"$RESULT"; read -r prot prot_ns <"$RESULT"
        run /open "${OPEN_ARGS[@]}" >"$RESULT"; read -r open open_ns <"$RESULT"
    fi
    ratio=$(awk -v p="$prot" -v o="$open" 'BEGIN { printf "%.3f", p / o }')
    cpu_ratio=$(awk -v p="$prot_ns" -v o="$open_ns" 'BEGIN { printf "%.3f", o / p }')
    RATIOS+=("$ratio"); CPU_RATIOS+=("$cpu_ratio"); OPENS+=("$open"); PROTS+=("$prot")
    OPEN_NS+=("$open_ns"); PROT_NS+=("$prot_ns")
    printf '%-6s %11s %12s %7s %11s %14s %9s\n' "$round" "$open" "$prot" "$ratio" "$open_ns" "$prot_ns" "$cpu_ratio"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "== result"
echo "median open/s: $(median "${OPENS[@]}"), median protected/s: $(median "${PROTS[@]}")"
echo "median server CPU per request: open $(median "${OPEN_NS[@]}") ns, protected $(median "${PROT_NS[@]}") ns"
echo "median ratio protected/open: $(median "${RATIOS[@]}") requests/s (target >= 0.93); $(median "${CPU_RATIOS[@]}") by server CPU per request"
echo "load after: $(uptime | sed 's/.*load average: //')"
