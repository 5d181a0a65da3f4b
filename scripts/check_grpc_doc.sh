#!/usr/bin/env bash
# docs/grpc.md's programs work when pasted into a fresh crate (issue 22).
#
# Every fenced block of the page whose first line names a file
# (`# Cargo.toml`, `// build.rs`, `// src/main.rs`, ...) is written to that
# path in a new crate under a temporary directory, exactly as the page shows
# it; the only change is the path of the `tower-api-key` dependency, which
# the page gives for a clone next to the new crate, pointed at this checkout.
# Then it builds both programs and, when their ports are free, runs each and
# checks the layer answers: the gRPC server refuses a call without a key
# with UNAUTHENTICATED, the one-port server answers HTTP with 401.
#
# CARGO_TARGET_DIR defaults to this checkout's target/ so that the
# dependencies are built once (about 6 minutes the first time on 2 cores,
# then seconds). KEEP=1 keeps the crate.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
page="$root/docs/grpc.md"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

crate="$(mktemp -d "${TMPDIR:-/tmp}/grpc-doc.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$crate"; else echo "kept $crate"; fi
}
trap cleanup EXIT

# Write each named block to its file.
awk -v dir="$crate" '
    /^```/ {
        if (inside) { inside = 0; if (out) close(out); out = ""; next }
        inside = 1; first = 1; next
    }
    inside && first {
        first = 0
        if (match($0, /^(#|\/\/) (Cargo\.toml|build\.rs|[a-z_]+\/[a-z_\/]+\.(rs|proto))$/)) {
            name = $0; sub(/^(#|\/\/) /, "", name)
            out = dir "/" name
            system("mkdir -p \"$(dirname \"" out "\")\"")
        }
    }
    inside && out { print > out }
' "$page"

for file in Cargo.toml build.rs proto/demo.proto src/main.rs examples/one_port.rs; do
    [ -s "$crate/$file" ] || { echo "docs/grpc.md shows no $file" >&2; exit 1; }
done
grep -q '^tower-api-key = { path = "../tower-api-key"' "$crate/Cargo.toml" ||
    { echo "docs/grpc.md: the tower-api-key line is not a path to a clone" >&2; exit 1; }
sed -i "s|^tower-api-key = { path = \"../tower-api-key\"|tower-api-key = { path = \"$root\"|" "$crate/Cargo.toml"
# The workspace's versions of the dependencies (cargo adds the new crate and
# drops what it does not use): the same build as the tests', and no newer
# release breaking this check rather than the page.
cp "$root/Cargo.lock" "$crate/Cargo.lock"

echo "== building docs/grpc.md's crate in $crate"
(cd "$crate" && cargo build --quiet --bins --examples)

# Runs a built program until the check passes (or 60 s), then stops it.
# $1: the program, $2: its port, $3: a command that succeeds once it answers.
check_answers() {
    local program="$1" port="$2" probe="$3"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use: $program built, not run"
        return 0
    fi
    "$CARGO_TARGET_DIR/debug/$program" >"$crate/$(basename "$program").out" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do
        if out="$(eval "$probe" 2>/dev/null)"; then
            echo "$program answers: $out"
            kill "${pids[-1]}"
            return 0
        fi
        sleep 0.1
    done
    echo "$program never answered as expected:" >&2
    cat "$crate/$(basename "$program").out" >&2
    return 1
}

# A gRPC call without a key: trailers-only UNAUTHENTICATED (16).
check_answers assistant 50051 \
    "curl -sS --http2-prior-knowledge -X POST -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary '' -D - -o /dev/null http://127.0.0.1:50051/demo.Assistant/WhoAmI | grep -i '^grpc-status: 16'"
check_answers examples/one_port 3000 \
    "curl -sS -o /dev/null -w 'HTTP %{http_code}' http://127.0.0.1:3000/whoami | grep -x 'HTTP 401'"
echo "docs/grpc.md: both programs build and answer"
