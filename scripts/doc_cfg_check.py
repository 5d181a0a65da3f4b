#!/usr/bin/env python3
"""Every feature-gated public item carries the matching docs.rs label.

docs.rs builds with `--cfg docsrs` on nightly, where `doc(cfg(...))` shows
"Available on crate feature X only". Stable rustdoc rejects the nightly
feature gate, so CI cannot build the docs that way; this keeps the labels
right by reading the sources instead: an item gated by
`#[cfg(feature ...)]` that is public (`pub`, not `pub(crate)`) or a trait
impl (`impl ... for ...`) must also carry
`#[cfg_attr(docsrs, doc(cfg(<the same predicate>)))]`, and each crate root
must enable the feature with `#![cfg_attr(docsrs, feature(doc_cfg))]`
(`doc_auto_cfg` was merged into `doc_cfg` in Rust 1.92).

Usage: python3 scripts/doc_cfg_check.py   (from the repository root)
"""
import pathlib
import re
import sys

ROOTS = {
    "src": "src/lib.rs",
    "crates/tower-api-key-sql/src": "crates/tower-api-key-sql/src/lib.rs",
    "crates/tower-api-key-sqlite/src": "crates/tower-api-key-sqlite/src/lib.rs",
    "crates/tower-api-key-postgres/src": "crates/tower-api-key-postgres/src/lib.rs",
    "crates/tower-api-key-conformance/src": "crates/tower-api-key-conformance/src/lib.rs",
}
CFG = re.compile(r"^\s*#\[cfg\((.*feature\s*=.*)\)\]\s*$")
ATTR = re.compile(r"^\s*#\[")
PUBLIC = re.compile(r"^\s*(pub\s|pub$|impl\b.*\bfor\b|impl<.*>.*\bfor\b)")


def check_file(path, problems):
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        match = CFG.match(line)
        if not match:
            continue
        predicate = match.group(1).replace(" ", "")
        # The item's other attributes, doc comments and the item line.
        attrs = []
        j = number + 1
        while j < len(lines) and (
            ATTR.match(lines[j]) or lines[j].strip().startswith("///")
        ):
            attrs.append(lines[j].replace(" ", ""))
            j += 1
        # Attributes may sit above the cfg too.
        k = number - 1
        while k >= 0 and (ATTR.match(lines[k]) or lines[k].strip().startswith("///")):
            attrs.append(lines[k].replace(" ", ""))
            k -= 1
        if j >= len(lines) or not PUBLIC.match(lines[j]):
            continue
        wanted = f"#[cfg_attr(docsrs,doc(cfg({predicate})))]"
        if wanted not in attrs:
            problems.append(
                f"{path}:{number + 1}: `{lines[j].strip()}` is gated by "
                f"cfg({match.group(1)}) without "
                f'#[cfg_attr(docsrs, doc(cfg({match.group(1)})))]'
            )


def main():
    problems = []
    for directory, root in ROOTS.items():
        text = pathlib.Path(root).read_text()
        if "#![cfg_attr(docsrs, feature(doc_cfg))]" not in text:
            problems.append(f"{root}: no #![cfg_attr(docsrs, feature(doc_cfg))]")
        for path in sorted(pathlib.Path(directory).rglob("*.rs")):
            check_file(path, problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print("doc(cfg) labels: every feature-gated public item is labelled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
