//! The public API of every published crate, listed (issues 12, 21, 22): an
//! addition, removal or rename shows in review as a change to a
//! `public_api.txt`.
//!
//! Regenerate every listing after a deliberate change (one command):
//!
//! ```text
//! UPDATE_PUBLIC_API=1 cargo test --all-features --test public_api
//! ```
//!
//! and review the diff. Without `UPDATE_PUBLIC_API` the test fails on any
//! difference and prints it.
//!
//! Each published crate (the root, and every workspace member without
//! `publish = false`) has its listing: the root's in `tests/public_api.txt`,
//! a member's in `crates/<name>/tests/public_api.txt`. A member with no
//! library (`tower-api-key-cli`, a binary) has no public API and no listing.
//!
//! The sources are parsed with `syn` (not rustdoc: this runs on stable,
//! offline). The lister follows `mod` declarations (files and inline
//! modules), evaluates `#[cfg(...)]` as under `--all-features` (`test`,
//! `doctest` and `docsrs` off, every feature on) and marks each item with the
//! features it needs; it resolves `pub use` re-exports (of private modules
//! too) to the item's public path, and lists under that path, one a line and
//! sorted: every public item (fn, struct, enum, union, trait, type, const,
//! static, mod, `#[macro_export]` macro), the `pub` fields of public structs,
//! the variants of public enums with their fields, every item of a public
//! trait, the `pub` fns, consts and types of inherent impls of public types,
//! and the traits each public type implements (`impl Trait for Type`, derives
//! included). `[non_exhaustive]` and `[doc(hidden)]` are noted. An item
//! reached by two public paths is listed under its own (through `pub`
//! modules alone, where rustdoc shows it) or else the shortest, the other as
//! a `use` line naming it. A re-export of another crate's item is a `use` line
//! with the path it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::{Attribute, Fields, Item, UseTree, Visibility};

// ---------------------------------------------------------------------------
// cfg evaluation

/// The features `attrs`' `#[cfg]`s name, or `None` when the item is compiled
/// out under `--all-features` (`cfg(test)` and the like).
fn cfg_features(attrs: &[Attribute]) -> Option<BTreeSet<String>> {
    let mut features = BTreeSet::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("cfg")) {
        let predicate: syn::Meta = attr.parse_args().ok()?;
        if !eval_cfg(&predicate, &mut features) {
            return None;
        }
    }
    Some(features)
}

/// Whether `predicate` holds with every feature on and `test`, `doctest`,
/// `docsrs` off; the features it needs go into `features`.
fn eval_cfg(predicate: &syn::Meta, features: &mut BTreeSet<String>) -> bool {
    match predicate {
        syn::Meta::Path(path) => !["test", "doctest", "docsrs", "miri"]
            .iter()
            .any(|name| path.is_ident(name)),
        syn::Meta::NameValue(nv) if nv.path.is_ident("feature") => {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(name),
                ..
            }) = &nv.value
            {
                features.insert(name.value());
            }
            true
        }
        syn::Meta::NameValue(_) => true,
        syn::Meta::List(list) => {
            let args: Vec<syn::Meta> = list
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
                )
                .map(|p| p.into_iter().collect())
                .unwrap_or_default();
            if list.path.is_ident("not") {
                // What `not(...)` needs is not a feature to turn on.
                let mut ignored = BTreeSet::new();
                !args.iter().all(|a| eval_cfg(a, &mut ignored))
            } else if list.path.is_ident("any") {
                let mut holds = false;
                for arg in &args {
                    let mut these = BTreeSet::new();
                    if eval_cfg(arg, &mut these) {
                        if !holds {
                            features.extend(these);
                        }
                        holds = true;
                    }
                }
                holds
            } else {
                // `all(...)`.
                args.iter().all(|a| eval_cfg(a, features))
            }
        }
    }
}

fn has_attr(attrs: &[Attribute], name: &str) -> bool {
    attrs.iter().any(|a| a.path().is_ident(name))
}

fn doc_hidden(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("doc")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().trim() == "hidden")
    })
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

// ---------------------------------------------------------------------------
// The crate's modules and items

/// Reads a source file by its path relative to the crate's `src/`.
type Reader<'a> = &'a dyn Fn(&Path) -> Option<String>;

/// A definition: what it is, its name, and what to list with it.
#[derive(Clone)]
struct Def {
    kind: &'static str,
    name: String,
    features: BTreeSet<String>,
    notes: Vec<String>,
    /// Members listed under the item's path.
    members: Vec<Member>,
    /// For `mod`: the module's index.
    module_index: Option<usize>,
}

/// A field, variant, trait item or inherent method listed under its
/// owner's path.
#[derive(Clone)]
struct Member {
    kind: &'static str,
    suffix: String,
    notes: Vec<String>,
    features: BTreeSet<String>,
}

/// A `use` leaf: the name it binds, the path it names, and whether it is
/// `pub`. A glob has name `*`.
struct Import {
    name: String,
    path: Vec<String>,
    public: bool,
    features: BTreeSet<String>,
}

struct Module {
    parent: Option<usize>,
    defs: Vec<usize>,
    imports: Vec<Import>,
}

struct Impl {
    module: usize,
    self_name: Vec<String>,
    trait_path: Option<String>,
    features: BTreeSet<String>,
    members: Vec<Member>,
}

#[derive(Default)]
struct Crate {
    modules: Vec<Module>,
    defs: Vec<Def>,
    impls: Vec<Impl>,
    /// Derives per def: trait names.
    derives: BTreeMap<usize, BTreeSet<String>>,
    /// `#[macro_export]` macros: name -> features.
    macros: BTreeMap<String, BTreeSet<String>>,
    /// The defs declared `pub`.
    public: BTreeSet<usize>,
}

fn tokens(t: &impl ToTokens) -> String {
    let text = t.to_token_stream().to_string();
    let mut out = text.replace(' ', "");
    out = out.replace(',', ", ");
    out.replace("dyn", "dyn ").replace("impl", "impl ")
}

fn fields_of(fields: &Fields, all_public: bool, prefix: &str, out: &mut Vec<Member>) {
    for (i, field) in fields.iter().enumerate() {
        if !(all_public || is_pub(&field.vis)) {
            continue;
        }
        let Some(features) = cfg_features(&field.attrs) else {
            continue;
        };
        let name = field
            .ident
            .as_ref()
            .map_or_else(|| i.to_string(), ToString::to_string);
        out.push(Member {
            kind: "field",
            suffix: format!("{prefix}::{name}"),
            notes: Vec::new(),
            features,
        });
    }
}

fn notes(attrs: &[Attribute]) -> Vec<String> {
    let mut notes = Vec::new();
    if has_attr(attrs, "non_exhaustive") {
        notes.push("non_exhaustive".into());
    }
    if doc_hidden(attrs) {
        notes.push("doc(hidden)".into());
    }
    notes
}

impl Crate {
    fn load(read: Reader<'_>, root_file: &str) -> Crate {
        let mut krate = Crate::default();
        let text = read(Path::new(root_file)).expect("the crate root");
        let file = syn::parse_file(&text).expect("the crate root parses");
        krate.modules.push(Module {
            parent: None,
            defs: Vec::new(),
            imports: Vec::new(),
        });
        krate.add_items(read, 0, &file.items, PathBuf::new(), &BTreeSet::new());
        krate
    }

    /// Adds `items` to module `module`, whose child module files live in
    /// `dir` (relative to `src/`).
    fn add_items(
        &mut self,
        read: Reader<'_>,
        module: usize,
        items: &[Item],
        dir: PathBuf,
        inherited: &BTreeSet<String>,
    ) {
        for item in items {
            let attrs: &[Attribute] = match item {
                Item::Const(i) => &i.attrs,
                Item::Enum(i) => &i.attrs,
                Item::Fn(i) => &i.attrs,
                Item::Impl(i) => &i.attrs,
                Item::Macro(i) => &i.attrs,
                Item::Mod(i) => &i.attrs,
                Item::Static(i) => &i.attrs,
                Item::Struct(i) => &i.attrs,
                Item::Trait(i) => &i.attrs,
                Item::Type(i) => &i.attrs,
                Item::Union(i) => &i.attrs,
                Item::Use(i) => &i.attrs,
                _ => continue,
            };
            let Some(mut features) = cfg_features(attrs) else {
                continue;
            };
            features.extend(inherited.iter().cloned());
            let def = |kind: &'static str, name: String, public: bool| Def {
                kind,
                name,
                features: features.clone(),
                notes: if public { notes(attrs) } else { Vec::new() },
                members: Vec::new(),
                module_index: None,
            };
            let new = match item {
                Item::Const(i) => def("const", i.ident.to_string(), is_pub(&i.vis)),
                Item::Static(i) => def("static", i.ident.to_string(), is_pub(&i.vis)),
                Item::Fn(i) => def("fn", i.sig.ident.to_string(), is_pub(&i.vis)),
                Item::Type(i) => def("type", i.ident.to_string(), is_pub(&i.vis)),
                Item::Union(i) => {
                    let mut d = def("union", i.ident.to_string(), is_pub(&i.vis));
                    fields_of(&Fields::Named(i.fields.clone()), false, "", &mut d.members);
                    d
                }
                Item::Struct(i) => {
                    let mut d = def("struct", i.ident.to_string(), is_pub(&i.vis));
                    fields_of(&i.fields, false, "", &mut d.members);
                    d
                }
                Item::Enum(i) => {
                    let mut d = def("enum", i.ident.to_string(), is_pub(&i.vis));
                    for variant in &i.variants {
                        let Some(features) = cfg_features(&variant.attrs) else {
                            continue;
                        };
                        let prefix = format!("::{}", variant.ident);
                        d.members.push(Member {
                            kind: "variant",
                            suffix: prefix.clone(),
                            notes: notes(&variant.attrs),
                            features,
                        });
                        fields_of(&variant.fields, true, &prefix, &mut d.members);
                    }
                    d
                }
                Item::Trait(i) => {
                    let mut d = def("trait", i.ident.to_string(), is_pub(&i.vis));
                    for member in &i.items {
                        let (kind, name, attrs) = match member {
                            syn::TraitItem::Fn(f) => ("fn", f.sig.ident.to_string(), &f.attrs),
                            syn::TraitItem::Const(c) => ("const", c.ident.to_string(), &c.attrs),
                            syn::TraitItem::Type(t) => ("type", t.ident.to_string(), &t.attrs),
                            _ => continue,
                        };
                        if let Some(features) = cfg_features(attrs) {
                            d.members.push(Member {
                                kind,
                                suffix: format!("::{name}"),
                                notes: notes(attrs),
                                features,
                            });
                        }
                    }
                    d
                }
                Item::Macro(i) if i.mac.path.segments.last().unwrap().ident == "pin_project" => {
                    // Items declared inside `pin_project! { ... }`.
                    if let Ok(file) = syn::parse2::<syn::File>(i.mac.tokens.clone()) {
                        self.add_items(read, module, &file.items, dir.clone(), &features);
                    }
                    continue;
                }
                Item::Macro(i) if i.mac.path.segments.last().unwrap().ident == "delegate_store" => {
                    // `tower_api_key_sql::delegate_store!(Store => path)`: the
                    // store traits, forwarded to the SQL core.
                    let text = i.mac.tokens.to_string();
                    let store = text.split("=>").next().unwrap_or_default().trim();
                    for trait_name in ["Verifier", "CreditLedger", "KeyStore"] {
                        self.impls.push(Impl {
                            module,
                            self_name: vec![store.to_string()],
                            trait_path: Some(trait_name.to_string()),
                            features: features.clone(),
                            members: Vec::new(),
                        });
                    }
                    // ... and the store's methods the macro writes.
                    let members = [
                        ("format", None),
                        ("migrate", None),
                        ("schema_version", None),
                        ("rate_limit_sync", None),
                        ("verify_work", Some("test-util")),
                    ]
                    .into_iter()
                    .map(|(name, gate)| Member {
                        kind: "fn",
                        suffix: format!("::{name}"),
                        notes: Vec::new(),
                        features: gate.map(String::from).into_iter().collect(),
                    })
                    .collect();
                    self.impls.push(Impl {
                        module,
                        self_name: vec![store.to_string()],
                        trait_path: None,
                        features: features.clone(),
                        members,
                    });
                    continue;
                }
                Item::Macro(i) => {
                    if has_attr(&i.attrs, "macro_export") {
                        if let Some(name) = &i.ident {
                            self.macros.insert(name.to_string(), features.clone());
                        }
                    }
                    continue;
                }
                Item::Use(i) => {
                    let mut leaves = Vec::new();
                    use_leaves(&i.tree, Vec::new(), &mut leaves);
                    for (name, path) in leaves {
                        self.modules[module].imports.push(Import {
                            name,
                            path,
                            public: is_pub(&i.vis),
                            features: features.clone(),
                        });
                    }
                    continue;
                }
                Item::Impl(i) => {
                    let syn::Type::Path(self_ty) = &*i.self_ty else {
                        continue;
                    };
                    let self_name = self_ty
                        .path
                        .segments
                        .iter()
                        .map(|s| s.ident.to_string())
                        .collect();
                    let mut members = Vec::new();
                    for member in &i.items {
                        let (kind, name, attrs, vis) = match member {
                            syn::ImplItem::Fn(f) => {
                                ("fn", f.sig.ident.to_string(), &f.attrs, &f.vis)
                            }
                            syn::ImplItem::Const(c) => {
                                ("const", c.ident.to_string(), &c.attrs, &c.vis)
                            }
                            syn::ImplItem::Type(t) => {
                                ("type", t.ident.to_string(), &t.attrs, &t.vis)
                            }
                            // The setters the SQL core's macros write into a
                            // store's builder.
                            syn::ImplItem::Macro(m) => {
                                let setters: &[(&str, Option<&str>)] = match m
                                    .mac
                                    .path
                                    .segments
                                    .last()
                                    .unwrap()
                                    .ident
                                    .to_string()
                                    .as_str()
                                {
                                    "settings_setters" => &[
                                        ("format", None),
                                        ("hasher", None),
                                        ("clock", Some("test-util")),
                                        ("max_keys_per_account", None),
                                    ],
                                    // `listener_setters!()`: the listener's settings.
                                    "listener_setters" => &[
                                        ("reconnect_backoff", None),
                                        ("reconnect_probe_interval", None),
                                        ("health_check_interval", None),
                                    ],
                                    _ => &[],
                                };
                                for &(name, gate) in setters {
                                    members.push(Member {
                                        kind: "fn",
                                        suffix: format!("::{name}"),
                                        notes: Vec::new(),
                                        features: gate.map(String::from).into_iter().collect(),
                                    });
                                }
                                continue;
                            }
                            _ => continue,
                        };
                        let Some(member_features) = cfg_features(attrs) else {
                            continue;
                        };
                        if i.trait_.is_none() && is_pub(vis) {
                            members.push(Member {
                                kind,
                                suffix: format!("::{name}"),
                                notes: notes(attrs),
                                features: member_features,
                            });
                        }
                    }
                    self.impls.push(Impl {
                        module,
                        self_name,
                        trait_path: i.trait_.as_ref().map(|(_, path, _)| {
                            let mut path = path.clone();
                            // The trait's name with its arguments: `From<X>`.
                            while path.segments.len() > 1 {
                                path.segments = path.segments.into_iter().skip(1).collect();
                            }
                            tokens(&path)
                        }),
                        features: features.clone(),
                        members,
                    });
                    continue;
                }
                Item::Mod(i) => {
                    let name = i.ident.to_string();
                    let index = self.modules.len();
                    self.modules.push(Module {
                        parent: Some(module),
                        defs: Vec::new(),
                        imports: Vec::new(),
                    });
                    let child_dir = dir.join(&name);
                    if let Some((_, items)) = &i.content {
                        self.add_items(read, index, items, child_dir, &features);
                    } else {
                        let text = read(&dir.join(format!("{name}.rs")))
                            .or_else(|| read(&child_dir.join("mod.rs")))
                            .unwrap_or_else(|| panic!("module file of {name} in {dir:?}"));
                        let file = syn::parse_file(&text).expect("a module parses");
                        self.add_items(read, index, &file.items, child_dir, &features);
                    }
                    let mut d = def("mod", name, is_pub(&i.vis));
                    d.module_index = Some(index);
                    d
                }
                _ => continue,
            };
            let public = match item {
                Item::Const(i) => is_pub(&i.vis),
                Item::Static(i) => is_pub(&i.vis),
                Item::Fn(i) => is_pub(&i.vis),
                Item::Type(i) => is_pub(&i.vis),
                Item::Union(i) => is_pub(&i.vis),
                Item::Struct(i) => is_pub(&i.vis),
                Item::Enum(i) => is_pub(&i.vis),
                Item::Trait(i) => is_pub(&i.vis),
                Item::Mod(i) => is_pub(&i.vis),
                _ => false,
            };
            let derives: BTreeSet<String> = attrs
                .iter()
                .filter(|a| a.path().is_ident("derive"))
                .flat_map(|a| {
                    a.parse_args_with(
                        syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
                    )
                    .map(|p| p.into_iter().collect::<Vec<_>>())
                    .unwrap_or_default()
                })
                .map(|p| p.segments.last().unwrap().ident.to_string())
                .collect();
            let index = self.defs.len();
            if !derives.is_empty() {
                self.derives.insert(index, derives);
            }
            self.defs.push(new);
            self.modules[module].defs.push(index);
            if public {
                self.public.insert(index);
            }
        }
    }
}

fn use_leaves(tree: &UseTree, prefix: Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
    let with = |segment: String| {
        let mut path = prefix.clone();
        path.push(segment);
        path
    };
    match tree {
        UseTree::Path(p) => use_leaves(&p.tree, with(p.ident.to_string()), out),
        UseTree::Name(n) if n.ident == "self" => {
            out.push((prefix.last().cloned().unwrap_or_default(), prefix.clone()))
        }
        UseTree::Name(n) => out.push((n.ident.to_string(), with(n.ident.to_string()))),
        UseTree::Rename(r) => out.push((r.rename.to_string(), with(r.ident.to_string()))),
        UseTree::Glob(_) => out.push(("*".into(), prefix.clone())),
        UseTree::Group(g) => {
            for tree in &g.items {
                use_leaves(tree, prefix.clone(), out);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Name resolution and public paths

#[derive(Clone, PartialEq)]
enum Target {
    Def(usize),
    /// Another crate's item, by the path the `use` names.
    External(String),
}

impl Crate {
    /// What `name` means in module `module`: an item defined there, or
    /// brought in by a `use` (of any visibility) or a glob.
    fn lookup(&self, module: usize, name: &str, depth: usize) -> Option<Target> {
        if depth > 32 {
            return None;
        }
        let m = &self.modules[module];
        if let Some(&def) = m.defs.iter().find(|&&d| self.defs[d].name == name) {
            return Some(Target::Def(def));
        }
        if let Some(import) = m.imports.iter().find(|i| i.name == name) {
            return self.resolve(module, &import.path, depth + 1);
        }
        for glob in m.imports.iter().filter(|i| i.name == "*") {
            if let Some(Target::Def(d)) = self.resolve(module, &glob.path, depth + 1) {
                if let Some(inner) = self.defs[d].module_index {
                    if let Some(found) = self.lookup(inner, name, depth + 1) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// What `path` (as written in a `use` or type in `module`) names.
    fn resolve(&self, module: usize, path: &[String], depth: usize) -> Option<Target> {
        let (mut current, rest) = match path.first().map(String::as_str) {
            Some("crate") => (0, &path[1..]),
            Some("self") => (module, &path[1..]),
            Some("super") => {
                let mut current = module;
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    current = self.modules[current].parent?;
                    rest = &rest[1..];
                }
                (current, rest)
            }
            Some(first) => match self.lookup(module, first, depth + 1) {
                Some(Target::Def(d)) if path.len() == 1 => return Some(Target::Def(d)),
                Some(Target::Def(d)) => (self.defs[d].module_index?, &path[1..]),
                Some(Target::External(base)) => {
                    let mut full = vec![base];
                    full.extend(path[1..].iter().cloned());
                    return Some(Target::External(full.join("::")));
                }
                None => return Some(Target::External(path.join("::"))),
            },
            None => return None,
        };
        let Some((last, walk)) = rest.split_last() else {
            // `self` or `super` alone: the module itself.
            let parent = self.modules[current].parent?;
            let def = self.modules[parent]
                .defs
                .iter()
                .find(|&&d| self.defs[d].module_index == Some(current))?;
            return Some(Target::Def(*def));
        };
        for segment in walk {
            match self.lookup(current, segment, depth + 1)? {
                Target::Def(d) => current = self.defs[d].module_index?,
                Target::External(_) => return Some(Target::External(path.join("::"))),
            }
        }
        self.lookup(current, last, depth + 1)
    }

    /// Every public path of every item: walks the public modules from the
    /// root, through `pub` items and `pub use` re-exports.
    fn public_paths(&self) -> PublicPaths {
        let mut paths = PublicPaths::default();
        let mut visited = BTreeSet::new();
        self.walk(0, "", &BTreeSet::new(), true, &mut visited, &mut paths);
        paths
    }

    fn walk(
        &self,
        module: usize,
        prefix: &str,
        features: &BTreeSet<String>,
        direct: bool,
        visited: &mut BTreeSet<(usize, String)>,
        out: &mut PublicPaths,
    ) {
        if !visited.insert((module, prefix.to_string())) {
            return;
        }
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}::{name}")
            }
        };
        let reach = |def: usize,
                     path: String,
                     features: BTreeSet<String>,
                     direct: bool,
                     out: &mut PublicPaths,
                     visited: &mut BTreeSet<(usize, String)>| {
            if let Some(inner) = self.defs[def].module_index {
                self.walk(inner, &path, &features, direct, visited, out);
            }
            if direct {
                out.direct.insert(path.clone());
            }
            out.defs.entry(def).or_default().insert(path, features);
        };
        for &def in &self.modules[module].defs {
            if self.public.contains(&def) {
                let path = join(&self.defs[def].name);
                reach(def, path, features.clone(), direct, out, visited);
            }
        }
        for import in self.modules[module].imports.iter().filter(|i| i.public) {
            let mut features = features.clone();
            features.extend(import.features.iter().cloned());
            if import.name == "*" {
                if let Some(Target::Def(d)) = self.resolve(module, &import.path, 0) {
                    if let Some(inner) = self.defs[d].module_index {
                        self.walk(inner, prefix, &features, false, visited, out);
                    }
                }
                continue;
            }
            let path = join(&import.name);
            match self.resolve(module, &import.path, 0) {
                Some(Target::Def(d)) => reach(d, path, features, false, out, visited),
                Some(Target::External(named)) => {
                    out.external.insert(path, (named, features));
                }
                None => {
                    out.external.insert(
                        path,
                        (format!("unresolved {}", import.path.join("::")), features),
                    );
                }
            }
        }
    }

    /// The listing: one line an item, sorted.
    fn listing(&self) -> Vec<String> {
        let paths = self.public_paths();
        let mut lines = BTreeSet::new();
        let marks = |notes: &[String], features: &BTreeSet<String>| -> String {
            let mut text = String::new();
            for note in notes {
                text.push_str(&format!("  [{note}]"));
            }
            for feature in features {
                text.push_str(&format!("  [feature: {feature}]"));
            }
            text
        };
        let mut canonical: BTreeMap<usize, (String, BTreeSet<String>)> = BTreeMap::new();
        for (&def, all) in &paths.defs {
            let (path, via) = all
                .iter()
                .min_by_key(|(path, _)| {
                    // The item's own path (as rustdoc), else the shortest.
                    let own = paths.direct.contains(path.as_str());
                    (!own, path.matches("::").count(), path.to_string())
                })
                .unwrap();
            let d = &self.defs[def];
            let mut features = d.features.clone();
            features.extend(via.iter().cloned());
            lines.insert(format!("{} {path}{}", d.kind, marks(&d.notes, &features)));
            for member in &d.members {
                let mut member_features = features.clone();
                member_features.extend(member.features.iter().cloned());
                lines.insert(format!(
                    "{} {path}{}{}",
                    member.kind,
                    member.suffix,
                    marks(&member.notes, &member_features)
                ));
            }
            for derive in self.derives.get(&def).into_iter().flatten() {
                lines.insert(format!("impl {derive} for {path}{}", marks(&[], &features)));
            }
            for (other, via) in all.iter().filter(|(p, _)| *p != path) {
                let mut features = d.features.clone();
                features.extend(via.iter().cloned());
                lines.insert(format!("use {other} -> {path}{}", marks(&[], &features)));
            }
            canonical.insert(def, (path.clone(), features));
        }
        for (path, (named, features)) in &paths.external {
            lines.insert(format!("use {path} -> {named}{}", marks(&[], features)));
        }
        for (name, features) in &self.macros {
            lines.insert(format!("macro {name}{}", marks(&[], features)));
        }
        for imp in &self.impls {
            let Some(Target::Def(def)) = self.resolve(imp.module, &imp.self_name, 0) else {
                continue;
            };
            let Some((path, features)) = canonical.get(&def) else {
                continue;
            };
            let mut features = features.clone();
            features.extend(imp.features.iter().cloned());
            if let Some(trait_path) = &imp.trait_path {
                lines.insert(format!(
                    "impl {trait_path} for {path}{}",
                    marks(&[], &features)
                ));
            }
            for member in &imp.members {
                let mut member_features = features.clone();
                member_features.extend(member.features.iter().cloned());
                lines.insert(format!(
                    "{} {path}{}{}",
                    member.kind,
                    member.suffix,
                    marks(&member.notes, &member_features)
                ));
            }
        }
        lines.into_iter().collect()
    }
}

#[derive(Default)]
struct PublicPaths {
    /// def -> its public paths, each with the features the path needs.
    defs: BTreeMap<usize, BTreeMap<String, BTreeSet<String>>>,
    /// The paths through `pub` items alone (no re-export).
    direct: BTreeSet<String>,
    /// Re-exports of other crates' items: path -> (path named, features).
    external: BTreeMap<String, (String, BTreeSet<String>)>,
}

/// The listing of the crate whose `src/` is `src`.
fn public_api_of(src: &Path) -> Vec<String> {
    let read = |rel: &Path| fs::read_to_string(src.join(rel)).ok();
    Crate::load(&read, "lib.rs").listing()
}

// ---------------------------------------------------------------------------
// The check

/// The published crates of the workspace: (name, directory) of each, the
/// root first; members with `publish = false` are left out.
fn published_crates() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut crates = vec![("tower-api-key".to_string(), root.to_path_buf())];
    let members = manifest
        .split("\nmembers = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the workspace members");
    for member in members.split(',') {
        let member = member.trim().trim_matches('"');
        if member.is_empty() {
            continue;
        }
        let dir = root.join(member);
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        if manifest
            .lines()
            .any(|l| l.replace(' ', "") == "publish=false")
        {
            continue;
        }
        crates.push((member.to_string(), dir));
    }
    crates
}

#[test]
fn every_published_crate_lists_its_public_api() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, dir) in published_crates() {
        if !dir.join("src/lib.rs").exists() {
            // A binary (the CLI): no library, no public API.
            assert!(
                dir.join("src/main.rs").exists(),
                "{name} has neither lib.rs nor main.rs"
            );
            continue;
        }
        checked += 1;
        if let Err(diff) = check_listing(
            &dir.join("tests/public_api.txt"),
            &public_api_of(&dir.join("src")),
        ) {
            failures.push(diff);
        }
    }
    // The root, the SQL core, SQLite, PostgreSQL and the conformance kit.
    assert!(checked >= 5, "only {checked} crates checked");
    assert!(
        failures.is_empty(),
        "{}\nIf on purpose, run: UPDATE_PUBLIC_API=1 cargo test --all-features --test public_api",
        failures.join("\n")
    );
}

/// Compares `actual` with the listing at `listed_at` (or, with
/// `UPDATE_PUBLIC_API`, writes it there); `Err` is the difference.
fn check_listing(listed_at: &Path, actual: &[String]) -> Result<(), String> {
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
        return Ok(());
    }
    let listed = fs::read_to_string(listed_at).unwrap_or_default();
    let listed: BTreeSet<&str> = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let actual: BTreeSet<&str> = actual.iter().map(String::as_str).collect();
    let mut diff = String::new();
    for added in actual.difference(&listed) {
        diff.push_str(&format!("\n+ {added}"));
    }
    for removed in listed.difference(&actual) {
        diff.push_str(&format!("\n- {removed}"));
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the public API listed in {} differs:{diff}",
            listed_at.display()
        ))
    }
}

// ---------------------------------------------------------------------------
// The lister's own tests, on small inline crates

/// The listing of a crate made of `files` (path under `src/`, source).
fn listing_of(files: &[(&str, &str)]) -> Vec<String> {
    let files: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(path, text)| (PathBuf::from(path), text.to_string()))
        .collect();
    let read = |rel: &Path| files.get(rel).cloned();
    Crate::load(&read, "lib.rs").listing()
}

#[test]
fn a_cfg_test_sibling_hides_nothing_after_it() {
    let listing = listing_of(&[(
        "lib.rs",
        "#[cfg(test)]\nuse std::fmt;\npub struct NewKey { pub id: u32, secret: u8 }\n\
         #[cfg(test)]\npub const HIDDEN: u8 = 0;\npub const SHOWN: u8 = 1;\n\
         #[cfg(test)]\nmod tests { pub fn t() {} }",
    )]);
    assert_eq!(
        listing,
        ["const SHOWN", "field NewKey::id", "struct NewKey"],
    );
}

#[test]
fn fields_variants_and_trait_items_are_listed() {
    let listing = listing_of(&[(
        "lib.rs",
        "pub trait Store { type Error; const N: u8; fn get(&self); fn put(&self) {} }\n\
         #[non_exhaustive]\npub enum E { A { x: u8 }, B(u8), #[non_exhaustive] C }\n\
         pub struct T(pub u8, u8);\n\
         #[derive(Clone)]\npub struct U;\nimpl U { pub fn new() -> U { U } fn private(&self) {} }\n\
         impl std::fmt::Display for U { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { Ok(()) } }",
    )]);
    let expected = [
        "const Store::N",
        "enum E  [non_exhaustive]",
        "field E::A::x",
        "field E::B::0",
        "field T::0",
        "fn Store::get",
        "fn Store::put",
        "fn U::new",
        "impl Clone for U",
        "impl Display for U",
        "struct T",
        "struct U",
        "trait Store",
        "type Store::Error",
        "variant E::A",
        "variant E::B",
        "variant E::C  [non_exhaustive]",
    ];
    assert_eq!(listing, expected);
}

#[test]
fn re_exports_of_private_modules_resolve_to_their_public_path() {
    let listing = listing_of(&[
        (
            "lib.rs",
            "mod key;\npub mod store;\n#[cfg(feature = \"test-util\")]\npub mod clock;\n\
             #[cfg(not(feature = \"test-util\"))]\nmod clock;\n\
             pub use key::{KeyId, inner::Deep as Renamed};\npub use store::memory::Memory;\n\
             pub use http::StatusCode;\n#[macro_export]\nmacro_rules! suite { () => {} }",
        ),
        (
            "key/mod.rs",
            "pub mod inner;\npub struct KeyId;\nimpl KeyId {\n #[cfg(feature = \"test-util\")]\n pub fn hook() {}\n pub(crate) fn no() {}\n}",
        ),
        ("key/inner.rs", "pub struct Deep;"),
        ("store.rs", "pub mod memory { pub struct Memory; }\npub(crate) struct NotPublic;"),
        ("clock.rs", "pub fn now() {}"),
    ]);
    let expected = [
        "fn KeyId::hook  [feature: test-util]",
        "fn clock::now  [feature: test-util]",
        "macro suite",
        "mod clock  [feature: test-util]",
        "mod store",
        "mod store::memory",
        "struct KeyId",
        "struct Renamed",
        "struct store::memory::Memory",
        "use Memory -> store::memory::Memory",
        "use StatusCode -> http::StatusCode",
    ];
    assert_eq!(listing, expected);
}

#[test]
fn a_difference_is_printed_line_by_line() {
    if std::env::var_os("UPDATE_PUBLIC_API").is_some() {
        return; // check_listing writes instead of comparing.
    }
    let dir = std::env::temp_dir().join(format!("public_api_{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let listed_at = dir.join("public_api.txt");
    fs::write(&listed_at, "# header\nfn kept\nfn removed\n").unwrap();
    let diff = check_listing(&listed_at, &["fn added".into(), "fn kept".into()]).unwrap_err();
    fs::remove_dir_all(&dir).unwrap();
    assert!(
        diff.ends_with("differs:\n+ fn added\n- fn removed"),
        "{diff}"
    );
    assert!(check_listing(&dir.join("none.txt"), &["fn new".into()]).is_err());
}
