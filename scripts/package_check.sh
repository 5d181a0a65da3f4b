#!/usr/bin/env bash
# What crates.io would receive: prints each published crate's file list,
# fails if a package holds tests, fixtures, fuzz corpora, perf tools,
# scripts or CI files, then runs `cargo publish --workspace --dry-run`
# (packages every published crate and builds each against the others'
# packages, as crates.io would see them). Needs the crates.io index.
#
# Usage: bash scripts/package_check.sh   (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

# Published crates: workspace members without `publish = false`.
mapfile -t crates < <(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c '
import json, sys
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
for p in meta["packages"]:
    if p["id"] in members and p.get("publish") != []:
        print(p["name"])
')

status=0
for crate in "${crates[@]}"; do
    files=$(cargo package --list --locked --allow-dirty -p "$crate" 2>/dev/null)
    echo "== $crate: $(wc -l <<<"$files") files"
    sed 's/^/    /' <<<"$files"
    # Paths relative to the package root: none of these belong in a package.
    if unwanted=$(grep -E '^(tests|benches|fuzz|perf|examples|scripts|proto|\.ci)/|proptest-regressions$|^\.gitignore$' <<<"$files"); then
        echo "error: $crate packages files it does not need:" >&2
        sed 's/^/    /' <<<"$unwanted" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] || exit "$status"

echo "== cargo publish --workspace --dry-run"
# The dry run unpacks this workspace's packages into CARGO_HOME, under its
# temporary registry's directory (`registry/src/-<hash>`), and a later run
# of the same version reuses those sources instead of today's: remove them
# so each run verifies the packages as they are now.
for dir in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/ "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/-*/; do
    [ -d "$dir" ] && rm -rf "$dir"tower-api-key*
done
excludes=()
while read -r name; do
    excludes+=(--exclude "$name")
done < <(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c '
import json, sys
meta = json.load(sys.stdin)
for p in meta["packages"]:
    if p.get("publish") == []:
        print(p["name"])
')
# --allow-dirty: CI may run after generating files; the lists above show
# exactly what would go out. The "ignoring test" warnings are expected
# (tests stay in the repository) and are left out of the log.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
publish_status=0
cargo publish --workspace --dry-run --locked --allow-dirty "${excludes[@]}" >"$log" 2>&1 ||
    publish_status=$?
grep -v "^warning: ignoring test" "$log" | grep -v "Compiling\|Checking" || true
exit "$publish_status"
