# Starts a throwaway PostgreSQL server for the tests and exports DATABASE_URL.
#
# Usage: source it, then run the tests:
#     . .ci/postgres.sh          # from .ci/run, or by hand in a shell
#     cargo test --all-features  # the PostgreSQL store's tests read DATABASE_URL
#
# - Installs PostgreSQL with apt-get (Debian) when no `initdb` is found on PATH
#   or in /usr/lib/postgresql/*/bin. Needs root for that step only.
# - Runs the server as an unprivileged user (`postgres` if it exists, else a
#   created system user `tak-pg`; as a non-root user, as that user) from a new
#   temporary data directory, listening on 127.0.0.1 only, on a free port,
#   with trust authentication (a test server: never expose it).
# - Creates the database `tower_api_key_test` and exports
#   DATABASE_URL=postgres://postgres@127.0.0.1:<port>/tower_api_key_test
#   (also TAK_PG_DATA, TAK_PG_PORT, TAK_PG_BIN). `max_connections` is 300, or
#   TAK_PG_MAX_CONNECTIONS (100 is PostgreSQL's default, for docs/scale.md).
# - Registers an EXIT trap (chained after any EXIT trap already set) that stops
#   the server and removes the data directory; `tak_pg_stop` does it by hand.
# Works without interaction, as root on a fresh Debian 12 machine.

tak_pg_find_bin() {
    local found
    found="$(command -v initdb 2>/dev/null || true)"
    if [ -n "$found" ]; then
        # /usr/local/bin/initdb may be a symlink into /usr/lib/postgresql/N/bin.
        dirname "$(readlink -f "$found")"
        return 0
    fi
    found="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$found" ]; then
        dirname "$found"
        return 0
    fi
    return 1
}

tak_pg_port_in_use() {
    # A successful TCP connect means something already listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

tak_pg_stop() {
    if [ -n "${TAK_PG_DATA:-}" ] && [ -d "$TAK_PG_DATA" ]; then
        tak_pg_as_user "$TAK_PG_BIN/pg_ctl" -D "$TAK_PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$TAK_PG_DATA"
        echo "postgres.sh: PostgreSQL on port ${TAK_PG_PORT:-?} stopped" >&2
    fi
    TAK_PG_DATA=
}

tak_pg_as_user() {
    if [ "$(id -u)" = 0 ]; then
        # runuser (util-linux) is on every Debian; su works too but needs a shell.
        # From /, which every user can enter (the caller's directory may be /root).
        (cd / && runuser -u "$TAK_PG_USER" -- "$@")
    else
        "$@"
    fi
}

tak_pg_start() {
    local bin user data port attempt

    if ! bin="$(tak_pg_find_bin)"; then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres.sh: initdb not found and not root: install PostgreSQL first" >&2
            return 1
        fi
        echo "postgres.sh: installing PostgreSQL with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 || return 1
        apt-get install -y -q --no-install-recommends postgresql >&2 || return 1
        bin="$(tak_pg_find_bin)" || { echo "postgres.sh: initdb still not found" >&2; return 1; }
    fi
    TAK_PG_BIN="$bin"

    if [ "$(id -u)" = 0 ]; then
        if id -u postgres >/dev/null 2>&1; then
            user=postgres
        else
            user=tak-pg
            id -u "$user" >/dev/null 2>&1 \
                || useradd --system --no-create-home --shell /usr/sbin/nologin "$user" \
                || return 1
        fi
    else
        user="$(id -un)"
    fi
    TAK_PG_USER="$user"

    data="$(mktemp -d "${TMPDIR:-/tmp}/tak-pg.XXXXXX")" || return 1
    chmod 700 "$data"
    if [ "$(id -u)" = 0 ]; then
        chown "$user" "$data" || return 1
    fi
    TAK_PG_DATA="$data"

    if ! tak_pg_as_user "$bin/initdb" -D "$data" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$data.initdb.log" 2>&1; then
        cat "$data.initdb.log" >&2
        rm -f "$data.initdb.log"
        rm -rf "$data"
        TAK_PG_DATA=
        return 1
    fi
    rm -f "$data.initdb.log"

    # A port picked at random can be taken between the check and the start:
    # try a few.
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 20000))
        tak_pg_port_in_use "$port" && continue
        # The Unix socket goes into the data directory, so no /var/run is needed.
        if tak_pg_as_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=${TAK_PG_MAX_CONNECTIONS:-300} -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null; then
            TAK_PG_PORT="$port"
            break
        fi
        echo "postgres.sh: start on port $port failed (attempt $attempt):" >&2
        tail -n 5 "$data/server.log" >&2 2>/dev/null || true
    done
    if [ -z "${TAK_PG_PORT:-}" ]; then
        echo "postgres.sh: could not start PostgreSQL" >&2
        rm -rf "$data"
        TAK_PG_DATA=
        return 1
    fi

    if ! "$bin/psql" -X -q -h 127.0.0.1 -p "$TAK_PG_PORT" -U postgres -d postgres \
        -c "CREATE DATABASE tower_api_key_test" >&2; then
        tak_pg_stop
        return 1
    fi

    export TAK_PG_BIN TAK_PG_DATA TAK_PG_PORT TAK_PG_USER
    export DATABASE_URL="postgres://postgres@127.0.0.1:$TAK_PG_PORT/tower_api_key_test"
    echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk "{print \$3}") on 127.0.0.1:$TAK_PG_PORT as $user, data in $data" >&2
}

tak_pg_trap() {
    # Chain after an EXIT trap the sourcing shell already has.
    local quoted previous=
    # `trap -p` prints the command shell-quoted; eval undoes the quoting.
    quoted="$(trap -p EXIT | sed -e 's/^trap -- //' -e 's/ EXIT$//')"
    [ -n "$quoted" ] && eval "previous=$quoted"
    if [ -n "$previous" ]; then
        # shellcheck disable=SC2064
        trap "tak_pg_stop; $previous" EXIT
    else
        trap tak_pg_stop EXIT
    fi
}

if tak_pg_start; then
    tak_pg_trap
else
    echo "postgres.sh: failed; DATABASE_URL is not set" >&2
    # Sourced: fail the caller's `set -e`, or let it test `$?`.
    false
fi
