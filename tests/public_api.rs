//! The public API, listed (issue 12, part 4): an addition, removal or rename
//! shows in review as a change to `tests/public_api.txt`.
//!
//! Reads `src/` (not rustdoc: this runs on stable, offline) and lists, one a
//! line, every public item with its one path: the root's re-exports, the
//! items of public modules, and the `pub` methods and associated constants
//! of public types (including those of private modules re-exported at the
//! root). An item behind `test-util` is marked so. An approximation by
//! reading lines, kept simple and deterministic; it needs `cargo fmt`'s
//! layout (items at column 0, methods indented four spaces).
//!
//! After a deliberate change:
//! `UPDATE_PUBLIC_API=1 cargo test --all-features --test public_api`, and
//! review the diff of `tests/public_api.txt`. `PUBLIC_API_SRC=<dir>` lists
//! another checkout's `src/` (the numbers before a change).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    match std::env::var_os("PUBLIC_API_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    }
}

const KINDS: &[&str] = &[
    "fn", "struct", "enum", "trait", "type", "const", "static", "mod", "use",
];

/// `pub <kind> <name>` at the start of `line` (after its indent), with
/// `async`/`const`/`unsafe` qualifiers of functions skipped.
fn pub_item(line: &str) -> Option<(&'static str, String)> {
    let mut rest = line.trim_start().strip_prefix("pub ")?;
    for qualifier in ["async ", "unsafe "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    if let Some(after) = rest.strip_prefix("const fn ") {
        rest = after;
        return Some(("fn", ident(rest)));
    }
    for kind in KINDS {
        if let Some(after) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
            let name = if *kind == "use" {
                after.trim_end_matches(';').to_string()
            } else {
                ident(after)
            };
            return Some((kind, name));
        }
    }
    None
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The type an `impl` line is for: `impl<T> Trait for Foo<T> {` is `Foo`.
fn impl_target(line: &str) -> Option<String> {
    let rest = line.strip_prefix("impl")?;
    let rest = match rest.strip_prefix('<') {
        Some(generics) => {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in generics.char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i + 1;
                    break;
                }
            }
            &generics[end..]
        }
        None => rest,
    };
    let rest = match rest.find(" for ") {
        Some(i) => &rest[i + 5..],
        None => rest,
    };
    let name = ident(rest.trim_start());
    (!name.is_empty()).then_some(name)
}

/// Whether one of the attribute lines just above `i` gates on `test-util`.
fn test_util(lines: &[&str], i: usize) -> bool {
    lines[..i]
        .iter()
        .rev()
        .take_while(|l| {
            let l = l.trim_start();
            l.starts_with("#[") || l.starts_with("///")
        })
        .any(|l| l.contains("cfg(feature = \"test-util\")"))
}

/// A module file: its path (`store::postgres`), whether it is public, and
/// its source.
struct Module {
    path: String,
    public: bool,
    text: String,
}

/// The modules under `dir` whose parent is `path`, read from the `mod`
/// declarations of `file`.
fn modules(dir: &Path, file: &Path, path: &str, public: bool, out: &mut Vec<Module>) {
    let text = fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut children: BTreeMap<String, bool> = BTreeMap::new();
    for line in &lines {
        let (is_pub, rest) = if let Some(rest) = line.strip_prefix("pub mod ") {
            (true, rest)
        } else if let Some(rest) = line
            .strip_prefix("pub(crate) mod ")
            .or_else(|| line.strip_prefix("mod "))
        {
            (false, rest)
        } else {
            continue;
        };
        if !rest.ends_with(';') {
            continue; // an inline module: listed with its file
        }
        let name = ident(rest);
        // A module public under some configuration (`clock` with
        // `test-util`) counts as public.
        *children.entry(name).or_insert(false) |= is_pub;
    }
    out.push(Module {
        path: path.to_string(),
        public,
        text,
    });
    for (name, is_pub) in children {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}::{name}")
        };
        let (child_file, child_dir) = if dir.join(&name).join("mod.rs").exists() {
            (dir.join(&name).join("mod.rs"), dir.join(&name))
        } else {
            (dir.join(format!("{name}.rs")), dir.join(&name))
        };
        if name == "tests" || !child_file.exists() {
            continue;
        }
        modules(&child_dir, &child_file, &child_path, public && is_pub, out);
    }
}

/// The names a `pub use` brings in: `a::{B, c::D as E}` is `B`, `E`.
fn use_names(tree: &str) -> Vec<String> {
    let tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let inner = match (tree.find('{'), tree.rfind('}')) {
        (Some(open), Some(close)) => tree[open + 1..close].to_string(),
        _ => tree.clone(),
    };
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.rsplit(" as ").next().unwrap();
            s.rsplit("::").next().unwrap().trim().to_string()
        })
        .collect()
}

/// `pub use` statements of a file, joined over lines, with their gate.
fn pub_uses(lines: &[&str]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("pub use ") {
            let gated = test_util(lines, i);
            let mut statement = lines[i].to_string();
            while !statement.trim_end().ends_with(';') {
                i += 1;
                statement.push(' ');
                statement.push_str(lines[i].trim());
            }
            out.push((
                statement["pub use ".len()..]
                    .trim_end_matches(';')
                    .to_string(),
                gated,
            ));
        }
        i += 1;
    }
    out
}

fn public_api() -> Vec<String> {
    public_api_of(&src_dir())
}

/// The public API of the crate whose `src/` is `src`.
fn public_api_of(src: &Path) -> Vec<String> {
    let src = src.to_path_buf();
    let mut mods = Vec::new();
    modules(&src, &src.join("lib.rs"), "", true, &mut mods);
    let root = mods.iter().find(|m| m.path.is_empty()).unwrap();
    let root_lines: Vec<&str> = root.text.lines().collect();
    let root_names: BTreeSet<String> = pub_uses(&root_lines)
        .into_iter()
        .flat_map(|(tree, _)| use_names(&tree))
        .collect();
    // Names re-exported by a public module: name -> its public paths (two
    // modules may each re-export a same-named item of their own).
    let mut exported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for module in mods.iter().filter(|m| m.public) {
        let lines: Vec<&str> = module.text.lines().collect();
        for (tree, _) in pub_uses(&lines) {
            for name in use_names(&tree) {
                let path = if module.path.is_empty() {
                    name.clone()
                } else {
                    format!("{}::{name}", module.path)
                };
                exported.entry(name).or_default().push(path);
            }
        }
    }
    let mut items = BTreeSet::new();
    let mut defined = BTreeSet::new();
    let mark = |gated: bool| if gated { "  [test-util]" } else { "" };
    for module in &mods {
        let lines: Vec<&str> = module.text.lines().collect();
        let in_module = |name: &str| -> String {
            if module.path.is_empty() || (root_names.contains(name) && !module.public) {
                name.to_string()
            } else if module.public {
                format!("{}::{name}", module.path)
            } else {
                // The re-export by the nearest enclosing module.
                let encloses = |path: &&String| {
                    let parent = path.rsplit_once("::").map_or("", |(parent, _)| parent);
                    parent.is_empty()
                        || module.path == parent
                        || module.path.starts_with(&format!("{parent}::"))
                };
                exported
                    .get(name)
                    .and_then(|paths| paths.iter().filter(encloses).max_by_key(|p| p.len()))
                    .cloned()
                    .unwrap_or_default()
            }
        };
        // Re-exports of a public module (the root's included).
        if module.public {
            for (tree, gated) in pub_uses(&lines) {
                for name in use_names(&tree) {
                    let path = if module.path.is_empty() {
                        name
                    } else {
                        format!("{}::{name}", module.path)
                    };
                    items.insert(format!("use {path}{}", mark(gated)));
                }
            }
        }
        let mut owner: Option<String> = None;
        let mut inline_mod: Option<String> = None;
        let mut skip_tests = false;
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("mod tests") || line.starts_with("#[cfg(test)]") {
                skip_tests = true;
            }
            if *line == "}" {
                owner = None;
                inline_mod = None;
                skip_tests = false;
                continue;
            }
            if skip_tests {
                continue;
            }
            let code_at_column_0 = !line.is_empty()
                && !line.starts_with(' ')
                && !line.starts_with("//")
                && !line.starts_with("#[");
            if code_at_column_0 {
                owner = impl_target(line);
            }
            // The setters the SQL core's macro writes into a store's builder.
            if line.trim() == "tower_api_key_sql::settings_setters!();" {
                if let Some(path) = owner.as_deref().map(&in_module).filter(|p| !p.is_empty()) {
                    for name in ["format", "hasher", "max_keys_per_account"] {
                        items.insert(format!("fn {path}::{name}"));
                    }
                    items.insert(format!("fn {path}::clock{}", mark(true)));
                }
                continue;
            }
            let Some((kind, name)) = pub_item(line) else {
                continue;
            };
            if kind == "use" {
                continue;
            }
            let gated = test_util(&lines, i);
            let top_level = !line.starts_with(' ');
            if top_level {
                if kind == "mod" {
                    if !line.trim_end().ends_with(';') {
                        inline_mod = Some(name.clone());
                    }
                    if module.public {
                        let path = in_module(&name);
                        items.insert(format!("mod {path}{}", mark(gated)));
                    }
                    continue;
                }
                let path = in_module(&name);
                if !path.is_empty() {
                    items.insert(format!("{kind} {path}{}", mark(gated)));
                    defined.insert(path);
                }
            } else if let Some(inner) = &inline_mod {
                if module.public && line.starts_with("    pub ") {
                    let path = in_module(&format!("{inner}::{name}"));
                    items.insert(format!("{kind} {path}{}", mark(gated)));
                }
            } else if let Some(owner) = &owner {
                if line.starts_with("    pub ") && matches!(kind, "fn" | "const" | "type") {
                    let path = in_module(owner);
                    if !path.is_empty() {
                        items.insert(format!("{kind} {path}::{name}{}", mark(gated)));
                    }
                }
            }
        }
    }
    // A re-export of an item listed where it is defined adds nothing.
    items
        .into_iter()
        .filter(|item| {
            let Some(path) = item.strip_prefix("use ") else {
                return true;
            };
            !defined.contains(path.trim_end_matches("  [test-util]"))
        })
        .collect()
}

#[test]
fn the_public_api_is_the_listed_one() {
    let listed_at = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/public_api.txt");
    check_listing(&listed_at, &public_api());
}

/// The store crates (crates/tower-api-key-{sql,sqlite,postgres}) list
/// theirs in their own tests/public_api.txt, from this test.
#[test]
fn each_store_crate_lists_its_public_api() {
    for name in ["sql", "sqlite", "postgres"] {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("crates/tower-api-key-{name}"));
        check_listing(
            &dir.join("tests/public_api.txt"),
            &public_api_of(&dir.join("src")),
        );
    }
}

/// Compares `actual` with the listing at `listed_at` (or, with
/// `UPDATE_PUBLIC_API`, writes it there).
fn check_listing(listed_at: &Path, actual: &[String]) {
    let mut text = String::from(
        "# The public API (tests/public_api.rs of the root crate). Regenerate after a deliberate change:\n\
         # UPDATE_PUBLIC_API=1 cargo test --all-features --test public_api\n",
    );
    for item in actual {
        text.push_str(item);
        text.push('\n');
    }
    if std::env::var_os("UPDATE_PUBLIC_API").is_some() {
        fs::write(listed_at, &text).unwrap();
        return;
    }
    let listed = fs::read_to_string(listed_at).unwrap_or_default();
    let listed: BTreeSet<&str> = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let actual_set: BTreeSet<&str> = actual.iter().map(String::as_str).collect();
    let added: Vec<_> = actual_set.difference(&listed).collect();
    let removed: Vec<_> = listed.difference(&actual_set).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the public API listed in {} changed; if on purpose, run \
         UPDATE_PUBLIC_API=1 cargo test --all-features --test public_api\n\
         added:\n  {}\nremoved:\n  {}",
        listed_at.display(),
        added
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n  "),
        removed
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n  "),
    );
}

#[test]
fn the_lister_reads_items_impls_and_gates() {
    assert_eq!(
        pub_item("pub fn new() -> Self {"),
        Some(("fn", "new".into()))
    );
    assert_eq!(
        pub_item("    pub const fn new(prefix: &str)"),
        Some(("fn", "new".into()))
    );
    assert_eq!(pub_item("pub(crate) fn hidden()"), None);
    assert_eq!(
        impl_target("impl<S> Service<R> for ApiKeyService<S> {").as_deref(),
        Some("ApiKeyService")
    );
    assert_eq!(
        impl_target("impl KeyFormat {").as_deref(),
        Some("KeyFormat")
    );
    assert_eq!(use_names("a::{B, c::D as E}"), ["B", "E"]);
    let lines = ["#[cfg(feature = \"test-util\")]", "pub fn hook() {}"];
    assert!(test_util(&lines, 1));
}
