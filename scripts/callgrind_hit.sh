#!/usr/bin/env bash
# Instructions per operation on the hit path, counted by callgrind: exact and
# independent of the machine's load, unlike timings. For comparing commits
# and for the profile of what the remaining time is spent on.
#
#   scripts/callgrind_hit.sh                 # every case, 20,000 iterations, 10,000 keys
#   ITERATIONS=50000 scripts/callgrind_hit.sh lookup layer
#   ANNOTATE=1 scripts/callgrind_hit.sh layer   # also print the profile
set -euo pipefail
cd "$(dirname "$0")/.."
ITERATIONS=${ITERATIONS:-20000}
KEYS=${KEYS:-10000}
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(parse lookup hit_path bare bearer layer)

. scripts/need.sh
need valgrind
# HIT_LOOP=path runs an already built binary (to compare builds).
BIN=${HIT_LOOP:-${CARGO_TARGET_DIR:-target}/release/hit_loop}
[ -n "${HIT_LOOP:-}" ] || cargo build --release -p tower-api-key-perf --bin hit_loop
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

printf '%-10s %14s\n' case "instr/op"
for case in "${CASES[@]}"; do
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$case.out" \
        --toggle-collect='hit_loop::run_*' \
        "$BIN" "$case" "$ITERATIONS" "$KEYS" >/dev/null 2>"$OUT/$case.log"
    total=$(sed -n 's/^summary: //p' "$OUT/$case.out" | awk '{ print $1 }')
    awk -v c="$case" -v t="$total" -v n="$ITERATIONS" 'BEGIN { printf "%-10s %14.0f\n", c, t / n }'
    if [ -n "${ANNOTATE:-}" ]; then
        callgrind_annotate --inclusive=no "$OUT/$case.out" 2>/dev/null | sed -n '1,/^$/d; 1,40p' | head -45
    fi
done
