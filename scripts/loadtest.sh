#!/usr/bin/env bash
# Load test: /open (no auth) against /protected (API-key layer, cache hit) on
# the same server, interleaved, several rounds; prints each round's
# requests/second and the ratio protected/open, then the median ratio.
# Two servers, one per configuration, measured in the same rounds: `bare`
# (no metrics recorder, no tracing subscriber) and `metrics` (the Prometheus
# recorder and tracing at info, as the quickstart and real deployments run).
# It also reads the server's CPU time around every run and prints server CPU
# per request: on a machine shared with other work the server does not get a
# whole core, and open-CPU/protected-CPU is the throughput ratio it would
# reach if it did.
#
#   scripts/loadtest.sh                 # 7 rounds of 5 s per route
#   ROUNDS=9 DURATION=10s scripts/loadtest.sh
#   KEYS=1000000 scripts/loadtest.sh    # with a million keys preloaded in the cache
#   CONFIGS=metrics scripts/loadtest.sh # one configuration only
#   BENCH_SERVER=/tmp/old/bench_server CONFIGS=bare scripts/loadtest.sh
#                                       # an already built server (another commit)
#   ROUTE=/static scripts/loadtest.sh   # the reference instead of /protected:
#                                       # tower-http's static header check
#
# Environment: ROUTE (/protected), ROUNDS (7), DURATION (5s, per run), CONNECTIONS (64),
# WRK_THREADS (1), PORT (38080; the metrics server takes PORT+1), KEYS (0),
# CONFIGS ("bare metrics"), SERVER_CPU (0), CLIENT_CPU (1),
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
ROUTE=${ROUTE:-/protected}
read -r -a CONFIGS <<<"${CONFIGS:-bare metrics}"

. scripts/need.sh
need wrk curl taskset:util-linux
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: fewer than 2 CPUs; server and wrk share one" >&2
    CLIENT_CPU=$SERVER_CPU
fi

BIN=${BENCH_SERVER:-${CARGO_TARGET_DIR:-target}/release/bench_server}
if [ -z "${BENCH_SERVER:-}" ]; then
    echo "== building"
    cargo build --release -p tower-api-key-perf --bin bench_server
fi

echo "== machine"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; kernel $(uname -r)"
echo "load before: $(uptime | sed 's/.*load average: //')"
echo "server: 1 tokio worker on cpu ${SERVER_CPU}; wrk: ${WRK_THREADS} thread(s), ${CONNECTIONS} connections on cpu ${CLIENT_CPU}; ${DURATION} per run; ${ROUNDS} rounds"

RESULT=$(mktemp)
declare -A PID LOG ADDR KEY
cleanup() {
    for config in "${CONFIGS[@]}"; do
        local pid=${PID[$config]:-}
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
        rm -f "${LOG[$config]:-}"
    done
    rm -f "$RESULT"
}
trap cleanup EXIT

port=$PORT
for config in "${CONFIGS[@]}"; do
    case "$config" in
        bare) METRICS_FLAG=0 ;;
        metrics) METRICS_FLAG=1 ;;
        *) echo "unknown configuration $config (bare, metrics)" >&2; exit 2 ;;
    esac
    [ "$config" = metrics ] && port=$((PORT + 1))
    ADDR[$config]="127.0.0.1:${port}"
    LOG[$config]=$(mktemp)
    BIND="${ADDR[$config]}" KEYS="$KEYS" WORKERS=1 METRICS="$METRICS_FLAG" taskset -c "$SERVER_CPU" \
        "$BIN" >"${LOG[$config]}" 2>/dev/null &
    PID[$config]=$!
done

for config in "${CONFIGS[@]}"; do
    log=${LOG[$config]}
    for _ in $(seq "$STARTUP_TIMEOUT"); do
        grep -q '^listening on' "$log" && break
        kill -0 "${PID[$config]}" 2>/dev/null || { cat "$log"; echo "server ($config) exited" >&2; exit 1; }
        sleep 1
    done
    grep -q '^listening on' "$log" || { cat "$log"; echo "server ($config) did not start in ${STARTUP_TIMEOUT}s" >&2; exit 1; }
    grep -v '^API_KEY_BENCH=' "$log" | sed "s/^/server ($config): /"
    KEY[$config]=$(sed -n 's/^API_KEY_BENCH=//p' "$log")

    # Sanity: the protected route refuses a request without the key and admits one with it.
    addr=${ADDR[$config]}
    status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
    [ "$(status "http://${addr}/open")" = 200 ] || { echo "/open ($config) is not 200" >&2; exit 1; }
    [ "$(status "http://${addr}${ROUTE}")" = 401 ] || { echo "${ROUTE} ($config) without a key is not 401" >&2; exit 1; }
    [ "$(status -H "Authorization: Api-Key ${KEY[$config]}" "http://${addr}${ROUTE}")" = 200 ] \
        || { echo "${ROUTE} ($config) with the key is not 200" >&2; exit 1; }
done

# Server CPU time so far, in nanoseconds (all its threads, from schedstat).
server_cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'
}

# run CONFIG PATH [extra wrk args...] -> "requests/second server-ns-per-request";
# fails on any non-2xx answer or socket error.
run() {
    local config=$1 path=$2; shift 2
    local out cpu0 cpu1
    cpu0=$(server_cpu_ns "${PID[$config]}")
    out=$(taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        --timeout 5s "$@" "http://${ADDR[$config]}${path}")
    cpu1=$(server_cpu_ns "${PID[$config]}")
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        echo "$out" >&2
        echo "errors during the run of ${path} ($config)" >&2
        exit 1
    fi
    awk -v c0="$cpu0" -v c1="$cpu1" '
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { n = $1 }
        END { printf "%s %.0f\n", rps, (c1 - c0) / n }' <<<"$out"
}

open_args() { [ "$SAME_REQUEST" = 1 ] && printf '%s\n' -H "Authorization: Api-Key ${KEY[$1]}"; true; }
echo "compared with /open: ${ROUTE} (shown as 'protected')"
echo "/open requests carry the Authorization header too: $([ "$SAME_REQUEST" = 1 ] && echo yes || echo no)"

echo "== warm-up"
for config in "${CONFIGS[@]}"; do
    mapfile -t OPEN_ARGS < <(open_args "$config")
    run "$config" /open -d2s "${OPEN_ARGS[@]}" >/dev/null
    run "$config" "$ROUTE" -d2s -H "Authorization: Api-Key ${KEY[$config]}" >/dev/null
done

echo "== rounds"
printf '%-6s %-8s %11s %12s %7s %11s %14s %9s\n' round config open/s protected/s ratio "open ns/req" "protected ns/req" "cpu ratio"
declare -A RATIOS CPU_RATIOS OPENS PROTS OPEN_NS PROT_NS
for round in $(seq "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        mapfile -t OPEN_ARGS < <(open_args "$config")
        # Alternate which route goes first, so drift in the machine's load cancels out.
        if [ $((round % 2)) = 1 ]; then
            run "$config" /open "${OPEN_ARGS[@]}" >"$RESULT"; read -r open open_ns <"$RESULT"
            run "$config" "$ROUTE" -H "Authorization: Api-Key ${KEY[$config]}" >"$RESULT"; read -r prot prot_ns <"$RESULT"
        else
            run "$config" "$ROUTE" -H "Authorization: Api-Key ${KEY[$config]}" >"$RESULT"; read -r prot prot_ns <"$RESULT"
            run "$config" /open "${OPEN_ARGS[@]}" >"$RESULT"; read -r open open_ns <"$RESULT"
        fi
        ratio=$(awk -v p="$prot" -v o="$open" 'BEGIN { printf "%.3f", p / o }')
        cpu_ratio=$(awk -v p="$prot_ns" -v o="$open_ns" 'BEGIN { printf "%.3f", o / p }')
        RATIOS[$config]+="$ratio "; CPU_RATIOS[$config]+="$cpu_ratio "
        OPENS[$config]+="$open "; PROTS[$config]+="$prot "
        OPEN_NS[$config]+="$open_ns "; PROT_NS[$config]+="$prot_ns "
        printf '%-6s %-8s %11s %12s %7s %11s %14s %9s\n' "$round" "$config" "$open" "$prot" "$ratio" "$open_ns" "$prot_ns" "$cpu_ratio"
    done
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "== result"
for config in "${CONFIGS[@]}"; do
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    {
        on=$(median ${OPEN_NS[$config]}); pn=$(median ${PROT_NS[$config]})
        echo "[$config] median open/s: $(median ${OPENS[$config]}), median protected/s: $(median ${PROTS[$config]})"
        echo "[$config] median server CPU per request: open $on ns, protected $pn ns (+$(awk -v p="$pn" -v o="$on" 'BEGIN { printf "%.0f", p - o }') ns)"
        echo "[$config] median ratio protected/open: $(median ${RATIOS[$config]}) requests/s (target >= 0.95); $(median ${CPU_RATIOS[$config]}) by server CPU per request"
    }
done
echo "load after: $(uptime | sed 's/.*load average: //')"
