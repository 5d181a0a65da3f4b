# Sourced by the end-to-end scripts (pooler_quickstart.sh, unused_quickstart.sh):
# builds the CLI and the quickstart, starts the quickstart on the store that
# DATABASE_URL names, and stops it on exit.
#
# After `start_quickstart`: $work (a temporary directory, removed on exit),
# $cli (the CLI binary), $addr (the server's address), $admin (its admin key).
# `status KEY PATH` prints the HTTP status of GET PATH with that key, passing
# the key to curl on stdin, never on its command line.
. "$(dirname "${BASH_SOURCE[0]}")/need.sh"
need curl jq

start_quickstart() {
    # Two builds: `--example` alone would leave the CLI's binary unbuilt.
    cargo build --quiet --all-features -p tower-api-key-cli
    cargo build --quiet --all-features -p tower-api-key-examples --example quickstart
    local target=${CARGO_TARGET_DIR:-target}
    work=${work:-$(mktemp -d)}
    server=
    trap stop_quickstart EXIT
    # Copies, so another build into the same target directory cannot swap them.
    cp "$target/debug/tower-api-key" "$target/debug/examples/quickstart" "$work/"
    cli="$work/tower-api-key"
    BIND=127.0.0.1:0 "$work/quickstart" >"$work/out" 2>"$work/err" &
    server=$!
    # The admin key is printed after the address: wait for both.
    for _ in $(seq 1 600); do
        grep -q '^export API_KEY_ADMIN=' "$work/out" 2>/dev/null && break
        kill -0 "$server" 2>/dev/null || { cat "$work/err" >&2; echo "the quickstart exited" >&2; exit 1; }
        sleep 0.1
    done
    addr=$(sed -n 's/^export ADDR=//p' "$work/out")
    admin=$(sed -n 's/^export API_KEY_ADMIN=\([^ ]*\).*/\1/p' "$work/out")
    [ -n "$addr" ] && [ -n "$admin" ] || { echo "the quickstart printed no address or admin key within 60 s" >&2; exit 1; }
}

stop_quickstart() {
    [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}

status() {
    printf 'header = "Authorization: Api-Key %s"\n' "$1" |
        curl -s -o /dev/null -w '%{http_code}' -K - "http://$addr$2"
}

# The key id of a key `<prefix>_<key id>_<secret>`: public.
id_of() { local id=${1#*_}; echo "${id%%_*}"; }
