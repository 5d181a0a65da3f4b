# Sourced by the measurement scripts. `need CMD[:PACKAGE]...` installs the
# Debian packages of the commands that are missing (PACKAGE defaults to CMD).
need() {
    local missing=() spec sudo=""
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    echo "== installing ${missing[*]}" >&2
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
