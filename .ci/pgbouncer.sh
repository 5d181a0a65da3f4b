# Starts PgBouncer in transaction mode in front of the server .ci/postgres.sh
# started, and exports PGBOUNCER_URL (same database, through the pooler).
#
# Usage: source it after .ci/postgres.sh:
#     . .ci/postgres.sh && . .ci/pgbouncer.sh
#
# - Installs PgBouncer with apt-get (Debian) when it is not on PATH or in
#   /usr/sbin. Needs root for that step only.
# - Runs it as the PostgreSQL server's user (PgBouncer refuses to run as
#   root), listening on 127.0.0.1 only, on a free port, `pool_mode =
#   transaction` (how managed PostgreSQL poolers take thousands of clients:
#   each transaction may run on another server connection), trust
#   authentication (a test pooler: never expose it), any database name
#   forwarded to the server's database of the same name.
# - Exports PGBOUNCER_URL=postgres://postgres@127.0.0.1:<port>/tower_api_key_test
#   (also TAK_PGB_DIR, TAK_PGB_PORT) and chains an EXIT trap that stops it;
#   `tak_pgb_stop` does it by hand.

tak_pgb_find() {
    command -v pgbouncer 2>/dev/null && return 0
    [ -x /usr/sbin/pgbouncer ] && { echo /usr/sbin/pgbouncer; return 0; }
    return 1
}

tak_pgb_stop() {
    if [ -n "${TAK_PGB_DIR:-}" ] && [ -d "$TAK_PGB_DIR" ]; then
        if [ -f "$TAK_PGB_DIR/pgbouncer.pid" ]; then
            kill "$(cat "$TAK_PGB_DIR/pgbouncer.pid")" 2>/dev/null || true
        fi
        rm -rf "$TAK_PGB_DIR"
        echo "pgbouncer.sh: PgBouncer on port ${TAK_PGB_PORT:-?} stopped" >&2
    fi
    TAK_PGB_DIR=
}

tak_pgb_start() {
    local bin dir port attempt
    if [ -z "${TAK_PG_PORT:-}" ]; then
        echo "pgbouncer.sh: source .ci/postgres.sh first" >&2
        return 1
    fi
    if ! bin="$(tak_pgb_find)"; then
        if [ "$(id -u)" != 0 ]; then
            echo "pgbouncer.sh: pgbouncer not found and not root: install it first" >&2
            return 1
        fi
        echo "pgbouncer.sh: installing PgBouncer with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 || return 1
        apt-get install -y -q --no-install-recommends pgbouncer >&2 || return 1
        bin="$(tak_pgb_find)" || { echo "pgbouncer.sh: pgbouncer still not found" >&2; return 1; }
    fi
    dir="$(mktemp -d "${TMPDIR:-/tmp}/tak-pgb.XXXXXX")" || return 1
    TAK_PGB_DIR="$dir"
    echo '"postgres" ""' >"$dir/users.txt"
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 20000))
        tak_pg_port_in_use "$port" && continue
        cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$TAK_PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
max_db_connections = 60
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
# The fleet harness reads SHOW POOLS / SHOW SERVERS through the admin console.
admin_users = postgres
stats_users = postgres
INI
        if [ "$(id -u)" = 0 ]; then
            chown -R "$TAK_PG_USER" "$dir" || return 1
        fi
        if tak_pg_as_user "$bin" -d "$dir/pgbouncer.ini" >/dev/null 2>&1; then
            # Daemonised: wait until it accepts connections.
            for _ in $(seq 1 50); do
                tak_pg_port_in_use "$port" && { TAK_PGB_PORT="$port"; break; }
                sleep 0.1
            done
            [ -n "${TAK_PGB_PORT:-}" ] && break
        fi
        echo "pgbouncer.sh: start on port $port failed (attempt $attempt):" >&2
        tail -n 5 "$dir/pgbouncer.log" >&2 2>/dev/null || true
    done
    if [ -z "${TAK_PGB_PORT:-}" ]; then
        echo "pgbouncer.sh: could not start PgBouncer" >&2
        tak_pgb_stop
        return 1
    fi
    export TAK_PGB_DIR TAK_PGB_PORT
    export PGBOUNCER_URL="postgres://postgres@127.0.0.1:$TAK_PGB_PORT/tower_api_key_test"
    echo "pgbouncer.sh: $("$bin" --version | head -n 1) on 127.0.0.1:$TAK_PGB_PORT, transaction mode, in front of 127.0.0.1:$TAK_PG_PORT" >&2
}

tak_pgb_trap() {
    local quoted previous=
    quoted="$(trap -p EXIT | sed -e 's/^trap -- //' -e 's/ EXIT$//')"
    [ -n "$quoted" ] && eval "previous=$quoted"
    if [ -n "$previous" ]; then
        # shellcheck disable=SC2064
        trap "tak_pgb_stop; $previous" EXIT
    else
        trap tak_pgb_stop EXIT
    fi
}

if tak_pgb_start; then
    tak_pgb_trap
else
    echo "pgbouncer.sh: failed; PGBOUNCER_URL is not set" >&2
    false
fi
