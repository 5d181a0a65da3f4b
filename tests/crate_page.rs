//! The crate page (the docs of `src/lib.rs`, a newcomer's first screen on
//! docs.rs) shows the README's "Use it" program as it is, so the two cannot
//! drift apart; rustdoc compiles it there as a doctest (issue 22, point 5).

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first fenced block opening with `fence` after `after`, without its fences.
fn block<'a>(text: &'a str, after: &str, fence: &str) -> &'a str {
    let from = text.find(after).unwrap_or_else(|| panic!("no {after:?}"));
    let start = text[from..]
        .find(fence)
        .map(|at| from + at + fence.len())
        .unwrap_or_else(|| panic!("no {fence:?} after {after:?}"));
    let end = text[start..].find("\n```").expect("a closed block");
    &text[start..start + end + 1]
}

#[test]
fn the_crate_page_shows_the_readmes_program() {
    let readme = read("README.md");
    let program = block(&readme, "\n## Use it\n", "```rust,no_run\n");
    assert!(program.contains("route_layer") && program.contains("axum::serve"));
    // The crate docs without their `//!` markers.
    let page: String = read("src/lib.rs")
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
        .collect();
    let shown = block(&page, "\n# Use it\n", "```no_run\n");
    assert_eq!(
        shown, program,
        "src/lib.rs's \"Use it\" program differs from the README's"
    );
}
