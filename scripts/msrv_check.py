#!/usr/bin/env python3
"""MSRV check without an old toolchain: every published crate's normal and
build dependency closure, as the lock resolves it, must declare no
`rust_version` above the crate's own `rust-version`.

Debian's rustc is too old and no other toolchain can be installed on CI, so
this reads `cargo metadata` instead of building with the declared version.
Dependencies of every target platform count (a Windows-only crate can raise
the MSRV of Windows users). Dev-dependencies do not: users never build them.

Usage: python3 scripts/msrv_check.py   (from anywhere in the workspace)
Exit status 1 lists each offending dependency and the path that pulls it in.
"""
import json
import subprocess
import sys


def version_tuple(text):
    # "1.89.0" and "1.89" compare equal: missing parts are zeros.
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    failures = []
    for member_id in sorted(members, key=lambda i: packages[i]["name"]):
        crate = packages[member_id]
        # `publish = false` is an empty list in metadata; null means crates.io.
        if crate.get("publish") == []:
            continue
        if not crate.get("rust_version"):
            failures.append(f"{crate['name']}: no rust-version declared")
            continue
        msrv = version_tuple(crate["rust_version"])
        # Breadth-first over normal and build edges; remember one path each.
        via = {member_id: [crate["name"]]}
        queue = [member_id]
        while queue:
            current = queue.pop(0)
            for dep in nodes[current]["deps"]:
                kinds = {k["kind"] for k in dep["dep_kinds"]}
                if not kinds & {None, "build"} or dep["pkg"] in via:
                    continue
                via[dep["pkg"]] = via[current] + [packages[dep["pkg"]]["name"]]
                queue.append(dep["pkg"])
        checked = 0
        for dep_id, path in via.items():
            if dep_id == member_id:
                continue
            checked += 1
            dep = packages[dep_id]
            needed = dep.get("rust_version")
            if needed and version_tuple(needed) > msrv:
                failures.append(
                    f"{crate['name']} (rust-version {crate['rust_version']}): "
                    f"{dep['name']} {dep['version']} needs {needed}, via "
                    + " -> ".join(path)
                )
        print(f"{crate['name']}: rust-version {crate['rust_version']}, "
              f"{checked} normal and build dependencies checked")
    if failures:
        print("MSRV check failed:", file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
        print("Either raise the crate's rust-version or re-resolve the lock "
              "(the workspace uses resolver 3: `cargo update -p NAME` picks "
              "a compatible version).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
