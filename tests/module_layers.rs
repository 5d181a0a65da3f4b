//! The crate's modules import only downwards (issue 12, part 3).
//!
//! Reads every file under `src/`, collects the `crate::<module>` paths its
//! code names (comments and string literals do not count; tests inside
//! `src/` do), and checks them against [`LAYERS`], which `src/lib.rs` repeats
//! in its comment:
//! - a top-level module names only modules listed before it;
//! - a root re-export (`crate::Caller`) counts as the module it comes from
//!   (`cache`), as `src/lib.rs` re-exports it;
//! - inside `auth/`, `cache/`, `store/` and `management/`, no two sibling
//!   modules import each other, except the pairs [`SIBLING_CYCLES`] lists:
//!   within one cohesive module a type's methods stay with the type even
//!   when they name a sibling (between top-level modules there is no such
//!   exception).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, bottom first. Each may import only
/// modules before it. Keep in step with the comment in `src/lib.rs`.
const LAYERS: &[&str] = &[
    // The foundations: key format, scopes, clock, RFC 3339 times, hashing, metrics.
    "clock",
    "time",
    "telemetry",
    "key",
    "scope",
    "hash",
    // A key's allowed networks and metadata, as values.
    "network",
    "metadata",
    // Rate limits and credits as values, and the GCRA state.
    "limits",
    // What a verifier returns.
    "record",
    // How keys are checked and changes announced.
    "invalidation",
    "verifier",
    // Credit leasing, apart from the hot path.
    "ledger",
    // The cache owns its entry type and defines `Caller` over it.
    "cache",
    // Stores: verifiers with management operations.
    "store",
    // What happened to a key (leaks, expiries, retirements), for hooks.
    "event",
    // The lifecycle task: expiry warnings and retirement, over a store.
    "lifecycle",
    // `last_used_at`, written behind to a store: above the stores it writes to.
    "usage",
    // The middleware, then the HTTP API built on it.
    "auth",
    "management",
    // Leak reports, acted on in a store: beside the HTTP API.
    "secret_scanning",
];

/// Sibling imports allowed although they form a cycle, with the reason:
/// the rule would push a type's methods into the sibling they return.
const SIBLING_CYCLES: &[(&str, &str, &str, &str)] = &[
    (
        "auth",
        "authenticator",
        "builder",
        "`Authenticator::builder` sits with the type it configures, and the builder builds it",
    ),
    (
        "auth",
        "authenticator",
        "layer",
        "the per-route layers are `Authenticator`'s methods, and a layer holds its authenticator",
    ),
];

/// Folders whose sibling modules must not import each other.
const CHECKED_FOLDERS: &[&str] = &["auth", "cache", "store", "management"];

/// `src/` of this crate, or of another checkout named by
/// `MODULE_LAYERS_SRC` (to run the check on another tree, e.g. main's).
fn src_dir() -> PathBuf {
    match std::env::var_os("MODULE_LAYERS_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without comments and without the contents of string and char
/// literals, so doc links and SQL never count as imports.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('#') | Some('"')) && !ident_char_before(&chars, i)
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '"'); a lifetime has no closing quote.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn ident_at(code: &str) -> &str {
    let end = code
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(code.len());
    &code[..end]
}

/// The first path segment of every item of a `{...}` group starting at
/// `code` (just after the `{`).
fn group_heads(code: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 1;
    let mut expecting = true;
    for (i, c) in code.char_indices() {
        match c {
            '{' => {
                depth += 1;
                expecting = false;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expecting = true,
            c if expecting && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident_at(&code[i..]).to_string());
                expecting = false;
            }
            _ => {}
        }
    }
    heads
}

/// Every name that follows `prefix` (`crate::` or `super::`), including each
/// head of a `prefix{a, b::c}` group.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'));
        let after = &rest[at + prefix.len()..];
        if boundary {
            let after = after.trim_start();
            if let Some(group) = after.strip_prefix('{') {
                names.extend(group_heads(group));
            } else {
                let name = ident_at(after);
                if !name.is_empty() {
                    names.push(name.to_string());
                }
            }
        }
        rest = after;
    }
    names
}

/// A file's place: its top-level module and, inside a folder, its module
/// there (`src/cache/inner.rs` is `("cache", Some("inner"))`;
/// `src/cache/mod.rs` and `src/key.rs` have none).
fn place(path: &Path) -> (String, Option<String>) {
    let rel = path.strip_prefix(src_dir()).unwrap();
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let sub = match parts.get(1) {
        Some(s) if s != "mod" => Some(s.clone()),
        _ => None,
    };
    (parts[0].clone(), sub)
}

struct Crate {
    /// Per top-level module: the top-level modules it names, with a file
    /// that names each.
    top: BTreeMap<String, BTreeMap<String, String>>,
    /// Per folder: for each module, the sibling modules it names.
    siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Names after `crate::` that are neither modules nor root re-exports.
    unknown: Vec<(String, String)>,
}

/// The root's re-exports (`pub use cache::{Caller, ..};`): name -> module.
fn root_re_exports() -> BTreeMap<String, String> {
    let lib = code_only(&fs::read_to_string(src_dir().join("lib.rs")).unwrap());
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident_at(path).to_string();
        let rest = path[module.len()..].trim_start_matches("::");
        let items = match rest.strip_prefix('{') {
            Some(group) => group.trim_end_matches('}').split(',').collect(),
            None => vec![rest],
        };
        for item in items {
            let item = item.trim();
            let name = item.rsplit("::").next().unwrap_or(item);
            let name = name.rsplit(" as ").next().unwrap_or(name).trim();
            names.insert(name.to_string(), module.clone());
        }
    }
    names
}

fn read_crate() -> Crate {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| place(f).0)
        .filter(|m| m != "lib")
        .collect();
    let mut crate_ = Crate {
        top: BTreeMap::new(),
        siblings: BTreeMap::new(),
        unknown: Vec::new(),
    };
    let re_exports = root_re_exports();
    for file in &files {
        let (top, sub) = place(file);
        if top == "lib" {
            // The crate root declares and re-exports; it is no layer.
            continue;
        }
        let code = code_only(&fs::read_to_string(file).unwrap());
        let shown = file.strip_prefix(src_dir()).unwrap().display().to_string();
        for name in names_after(&code, "crate::") {
            let name = match re_exports.get(&name) {
                Some(module) => module.clone(),
                None => name,
            };
            if !modules.contains(&name) {
                crate_.unknown.push((shown.clone(), name));
            } else if name != top {
                crate_
                    .top
                    .entry(top.clone())
                    .or_default()
                    .entry(name)
                    .or_insert_with(|| shown.clone());
            }
        }
        let Some(sub) = sub else { continue };
        let mut named = BTreeSet::new();
        // Siblings by `super::x`, and by `crate::top::x`.
        named.extend(names_after(&code, "super::"));
        named.extend(names_after(&code, &format!("crate::{top}::")));
        let known: BTreeSet<String> = files
            .iter()
            .filter_map(|f| match place(f) {
                (t, Some(s)) if t == top => Some(s),
                _ => None,
            })
            .collect();
        named.retain(|n| known.contains(n) && *n != sub);
        crate_
            .siblings
            .entry(top)
            .or_default()
            .entry(sub)
            .or_default()
            .extend(named);
    }
    crate_
}

#[test]
fn every_top_level_module_is_layered() {
    let crate_ = read_crate();
    let mut missing: Vec<&String> = crate_
        .top
        .keys()
        .filter(|m| !LAYERS.contains(&m.as_str()))
        .collect();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut all: Vec<String> = files.iter().map(|f| place(f).0).collect();
    all.retain(|m| m != "lib");
    all.sort();
    all.dedup();
    for m in &all {
        if !LAYERS.contains(&m.as_str()) && !missing.contains(&m) {
            missing.push(m);
        }
    }
    assert!(
        missing.is_empty(),
        "modules missing from LAYERS: {missing:?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let crate_ = read_crate();
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    for (module, imports) in &crate_.top {
        for (imported, file) in imports {
            match (rank(module), rank(imported)) {
                (Some(a), Some(b)) if b < a => {}
                _ => upward.push(format!("{file}: {module} -> {imported}")),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down the layers ({LAYERS:?}):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let crate_ = read_crate();
    let mut cycles = Vec::new();
    for (a, imports) in &crate_.top {
        for b in imports.keys() {
            if a < b && crate_.top.get(b).is_some_and(|i| i.contains_key(a)) {
                cycles.push(format!(
                    "{a} <-> {b} ({} and {})",
                    imports[b], crate_.top[b][a]
                ));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn every_crate_path_is_understood() {
    let crate_ = read_crate();
    assert!(
        crate_.unknown.is_empty(),
        "crate:: paths naming neither a module nor a root re-export: {:?}",
        crate_.unknown
    );
    assert_eq!(
        root_re_exports().get("Caller").map(String::as_str),
        Some("cache")
    );
}

#[test]
fn no_two_sibling_modules_import_each_other() {
    let crate_ = read_crate();
    let mut cycles = Vec::new();
    for folder in CHECKED_FOLDERS {
        let Some(modules) = crate_.siblings.get(*folder) else {
            continue;
        };
        for (a, named) in modules {
            for b in named {
                let mutual = a < b && modules.get(b).is_some_and(|n| n.contains(a));
                let known = SIBLING_CYCLES.iter().any(|&(f, x, y, _why)| {
                    f == *folder && ((x, y) == (a, b.as_str()) || (y, x) == (a, b.as_str()))
                });
                if mutual && !known {
                    cycles.push(format!("{folder}/: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "sibling modules importing each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_scanner_sees_imports_and_skips_comments_and_strings() {
    let code = code_only(
        "use crate::key::KeyId; // crate::auth\n\
         /// [x](crate::store::KeyStore)\n\
         let s = \"crate::usage\"; let c = '\"'; let r = r#\"crate::management\"#;\n\
         use crate::{scope::Scope, record};\n\
         fn f<'a>(x: &'a crate::clock::SystemClock) {}",
    );
    let mut names = names_after(&code, "crate::");
    names.sort();
    assert_eq!(names, ["clock", "key", "record", "scope"]);
}
