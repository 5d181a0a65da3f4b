#!/usr/bin/env bash
# Non-test lines of a crate's src/ (issue 21's measure): every line of each .rs
# file before its first `#[cfg(test)]`, files named tests.rs excluded.
set -euo pipefail
for dir in "$@"; do
  total=0
  while IFS= read -r f; do
    [ "$(basename "$f")" = tests.rs ] && continue
    n=$(awk '/^[[:space:]]*#\[cfg\(test\)\]/{exit} {n++} END{print n+0}' "$f")
    printf '%6d %s\n' "$n" "$f"
    total=$((total + n))
  done < <(find "$dir/src" -name '*.rs' | sort)
  printf '%6d total %s\n' "$total" "$dir"
done
