//! Each public item's rustdoc summary says what the item is (issue 22,
//! point 5).
//!
//! docs.rs shows an item's first doc paragraph, its summary, in every module
//! listing and search result. Making modules private once pasted module docs
//! above type docs, so `KeyFormat` read "The key format, key generation and
//! parsing.", and cut some module headers mid-sentence. This test reads the
//! sources of every published crate of the workspace (this one and
//! `crates/*/src`) and checks, for every doc comment above a `pub` item,
//! field or method:
//! - its summary is a whole sentence: it ends with `.`, `?` or `!`;
//! - it is not the summary of a module of the same crate, nor starts with
//!   one (the pasted module header);
//!
//! and for every module (`//!` at the top of a file), that its summary is a
//! whole sentence too.
//!
//! It reads the source rather than rustdoc's output because the modules the
//! root re-exports from are private: rustdoc shows their items under the
//! root and their module docs nowhere.

use std::fs;
use std::path::{Path, PathBuf};

/// The `src/` folder of every published crate: the root and `crates/*`.
/// (perf/ is unpublished.)
fn crate_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    let mut members: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("crates/ exists")
        .map(|entry| entry.expect("readable crates/").path().join("src"))
        .filter(|src| src.is_dir())
        .collect();
    members.sort();
    dirs.extend(members);
    dirs
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The first paragraph of a doc block (lines without their `///` or `//!`),
/// joined by single spaces: what rustdoc shows as the summary.
fn summary(lines: &[String]) -> String {
    lines
        .iter()
        .map(|line| line.trim())
        .skip_while(|line| line.is_empty())
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_sentence(summary: &str) -> bool {
    let end = summary.trim_end_matches([')', '`', '*', '_', '"']);
    end.ends_with(['.', '?', '!'])
}

/// The text of a doc comment line with `marker` (`///` or `//!`), if it is one.
fn doc_text<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(marker)?;
    // `////` is an ordinary comment.
    if rest.starts_with('/') {
        return None;
    }
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// What a documented line declares, when it is public: `struct Foo`,
/// `fn bar`, `field baz`. `pub use` is skipped (its docs are the item's).
fn public_item(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("pub ")?;
    let words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || "(<:;{=!".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    // Qualifiers of a function: `pub const fn`, `pub async unsafe fn`.
    let mut at = 0;
    while words.get(at + 1).is_some()
        && matches!(words[at], "async" | "const" | "unsafe" | "extern" | "\"C\"")
        && words[at + 1..].iter().take(3).any(|w| *w == "fn")
    {
        at += 1;
    }
    let (word, name) = (*words.get(at)?, words.get(at + 1).copied());
    match word {
        "use" => None,
        "struct" | "enum" | "trait" | "fn" | "type" | "mod" | "static" | "union" | "macro"
        | "const" => Some(format!("{word} {}", name?)),
        field => Some(format!("field {field}")),
    }
}

struct Module {
    file: PathBuf,
    summary: String,
}

struct Item {
    file: PathBuf,
    line: usize,
    what: String,
    summary: String,
}

/// The module summaries and the documented public items of one crate.
fn scan(src: &Path) -> (Vec<Module>, Vec<Item>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let (mut modules, mut items) = (Vec::new(), Vec::new());
    for file in files {
        let text = fs::read_to_string(&file).expect("readable source");
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<String> = lines
            .iter()
            .map_while(|line| doc_text(line, "//!").map(str::to_owned))
            .collect();
        if !header.is_empty() {
            modules.push(Module {
                file: file.clone(),
                summary: summary(&header),
            });
        }
        let mut i = 0;
        while i < lines.len() {
            if doc_text(lines[i], "///").is_none() {
                i += 1;
                continue;
            }
            let start = i;
            let mut doc = Vec::new();
            while let Some(text) = lines.get(i).and_then(|line| doc_text(line, "///")) {
                doc.push(text.to_owned());
                i += 1;
            }
            // Attributes (one or several lines each) and plain comments may
            // sit between the docs and the item.
            let mut depth = 0i32;
            while let Some(line) = lines.get(i) {
                let trimmed = line.trim_start();
                if depth > 0 || trimmed.starts_with("#[") || trimmed.starts_with("//") {
                    if !trimmed.starts_with("//") {
                        depth += line.matches('[').count() as i32;
                        depth -= line.matches(']').count() as i32;
                    }
                    i += 1;
                } else {
                    break;
                }
            }
            if let Some(what) = lines.get(i).and_then(|line| public_item(line)) {
                items.push(Item {
                    file: file.clone(),
                    line: start + 1,
                    what,
                    summary: summary(&doc),
                });
            }
        }
    }
    (modules, items)
}

fn normalize(text: &str) -> String {
    text.trim().trim_end_matches(['.', ':', ',']).to_lowercase()
}

/// Whether two summaries open with the same words: a module's header
/// reworded into a type's ("Failed-attempt limiting: a client that ...").
fn same_opening(a: &str, b: &str) -> bool {
    const WORDS: usize = 5;
    let a: Vec<&str> = a.split_whitespace().take(WORDS).collect();
    let b: Vec<&str> = b.split_whitespace().take(WORDS).collect();
    a.len() == WORDS && a == b
}

/// Every problem found under one crate's `src/`, one line each.
fn problems(src: &Path) -> Vec<String> {
    let (modules, items) = scan(src);
    let mut found = Vec::new();
    for module in &modules {
        if !is_sentence(&module.summary) {
            found.push(format!(
                "{}: the module's summary stops mid-sentence: {:?}",
                module.file.display(),
                module.summary
            ));
        }
    }
    for item in &items {
        let place = format!("{}:{} ({})", item.file.display(), item.line, item.what);
        if item.summary.is_empty() {
            found.push(format!("{place}: the docs start with a blank line"));
            continue;
        }
        if !is_sentence(&item.summary) {
            found.push(format!(
                "{place}: the summary is not a whole sentence: {:?}",
                item.summary
            ));
        }
        let own = normalize(&item.summary);
        for module in &modules {
            let theirs = normalize(&module.summary);
            if !theirs.is_empty() && (own.starts_with(&theirs) || same_opening(&own, &theirs)) {
                found.push(format!(
                    "{place}: the summary is the module's ({}): {:?}",
                    module.file.display(),
                    item.summary
                ));
            }
        }
    }
    found
}

#[test]
fn every_public_item_summary_is_its_own_sentence() {
    let mut found = Vec::new();
    let mut items = 0;
    for src in crate_sources() {
        items += scan(&src).1.len();
        found.extend(problems(&src));
    }
    // The scan sees the crates at all: a broken parser finds nothing wrong.
    assert!(items > 500, "only {items} documented public items found");
    assert!(
        found.is_empty(),
        "{} doc summaries to fix:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_check_catches_a_pasted_module_header() {
    let dir = std::env::temp_dir().join(format!("doc_summaries_{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("key.rs"),
        "//! The key format, key generation and parsing.\n\n\
         /// The key format, key generation and parsing.\n///\n\
         /// The shape of keys one issuer hands out.\n#[derive(Clone)]\npub struct KeyFormat;\n",
    )
    .unwrap();
    fs::write(
        dir.join("verifier.rs"),
        "//! The pluggable verifier: given a well-formed key, is it a valid key, an\n\n\
         /// Checks keys.\npub trait Verifier {}\n",
    )
    .unwrap();
    let found = problems(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 2, "{found:#?}");
    let has = |text: &str| found.iter().any(|problem| problem.contains(text));
    assert!(
        has("(struct KeyFormat): the summary is the module's"),
        "{found:#?}"
    );
    assert!(
        has("verifier.rs: the module's summary stops mid-sentence"),
        "{found:#?}"
    );
}
