//! The module import graph of each crate, and the check that it has no cycle.
//!
//! A crate's modules form a tree (`a`, `a::b`, ...). Module `x` imports `y` when its source
//! (tests, comments and string literals left out) names a path `crate::y::...`,
//! `super::...` or `self::...` that resolves to `y` or an item in it, including inside
//! grouped `use crate::{...}` trees. The rule checked, at every level of the tree: the
//! children of one parent, each taken together with everything below it, form a directed
//! acyclic graph. So the top-level modules of a crate are layered, and so are the files of
//! every directory module; a child naming its parent's items (or the parent re-exporting a
//! child's) is not a cycle, it is the same room.
//!
//! Run by `tests/run-all` (`cargo run -p outpost-tests --bin module-graph`), which fails on a
//! cycle and names the modules and the imports that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path inside one crate, `[]` for the crate root.
pub type ModPath = Vec<String>;

/// One crate's modules and the imports between them.
#[derive(Debug, Default)]
pub struct ModuleGraph {
    /// Every module of the crate.
    pub modules: BTreeSet<ModPath>,
    /// `from` → the modules it imports (never itself).
    pub imports: BTreeMap<ModPath, BTreeSet<ModPath>>,
    /// Glob imports of this crate's modules outside tests (`use super::*;`), by module: they
    /// hide which modules a module depends on, so the check refuses them.
    pub globs: BTreeMap<ModPath, Vec<String>>,
}

/// A set of sibling modules that import each other in a circle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The parent whose children are involved (`crate` for the top level).
    pub parent: String,
    /// The children in the cycle, each with one import that points at another of them.
    pub members: Vec<(String, String)>,
}

impl ModuleGraph {
    /// Reads the crate whose root file is `root` (`src/lib.rs`, `src/main.rs`, or a binary's
    /// `main.rs`): every module file below the root's directory, following `mod` files the
    /// usual way (`a.rs` or `a/mod.rs`, children of `a` in `a/`).
    pub fn read(root: &Path) -> std::io::Result<ModuleGraph> {
        let mut files = Vec::new();
        collect(root, Vec::new(), &mut files)?;
        let mut graph = ModuleGraph::default();
        for (path, _) in &files {
            graph.modules.insert(path.clone());
        }
        for (path, file) in &files {
            let text = fs::read_to_string(file)?;
            graph.add_source(path, &text);
        }
        Ok(graph)
    }

    /// Records the imports of module `path` whose source is `text` (modules known already).
    pub fn add_source(&mut self, path: &ModPath, text: &str) {
        let code = strip(text);
        let globs = glob_uses(&code);
        if !globs.is_empty() {
            self.globs.insert(path.clone(), globs);
        }
        let mut found = BTreeSet::new();
        for raw in paths_in(&code) {
            if let Some(target) = self.resolve(path, &raw) {
                if &target != path {
                    found.insert(target);
                }
            }
        }
        self.imports.entry(path.clone()).or_default().extend(found);
    }

    /// The module a path written in module `from` names (its longest module prefix).
    fn resolve(&self, from: &ModPath, raw: &[String]) -> Option<ModPath> {
        let (mut base, rest) = match raw.first().map(String::as_str) {
            Some("crate") => (Vec::new(), &raw[1..]),
            Some("super") => {
                let mut base = from.clone();
                let mut rest = raw;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                (base, rest)
            }
            Some("self") => (from.clone(), &raw[1..]),
            _ => return None,
        };
        let mut best = base.clone();
        for seg in rest {
            base.push(seg.clone());
            if self.modules.contains(&base) {
                best = base.clone();
            } else {
                break;
            }
        }
        Some(best)
    }

    /// Every cycle among siblings, at every level of the module tree.
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut parents: BTreeSet<ModPath> = BTreeSet::new();
        for m in &self.modules {
            if let Some((_, p)) = m.split_last() {
                parents.insert(p.to_vec());
            }
        }
        let mut out = Vec::new();
        for parent in parents {
            let child_of = |m: &ModPath| -> Option<ModPath> {
                (m.len() > parent.len() && m.starts_with(&parent))
                    .then(|| m[..=parent.len()].to_vec())
            };
            // Sibling graph: child → child, with one witness import per edge.
            let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, (ModPath, ModPath)>> =
                BTreeMap::new();
            for (from, tos) in &self.imports {
                let Some(a) = child_of(from) else { continue };
                for to in tos {
                    let Some(b) = child_of(to) else { continue };
                    if a != b {
                        edges
                            .entry(a.clone())
                            .or_default()
                            .entry(b)
                            .or_insert_with(|| (from.clone(), to.clone()));
                    }
                }
            }
            for scc in strongly_connected(&edges) {
                let members = scc
                    .iter()
                    .map(|m| {
                        let witness = edges
                            .get(m)
                            .and_then(|e| e.iter().find(|(to, _)| scc.contains(to)))
                            .map(|(_, (f, t))| format!("{} uses {}", show(f), show(t)))
                            .unwrap_or_default();
                        (show(m), witness)
                    })
                    .collect();
                out.push(Cycle {
                    parent: show(&parent),
                    members,
                });
            }
        }
        out
    }
}

/// `crate::a::b` for display.
fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        format!("crate::{}", m.join("::"))
    }
}

/// Finds the module files of the crate rooted at `file` (module path `path`).
fn collect(file: &Path, path: ModPath, out: &mut Vec<(ModPath, PathBuf)>) -> std::io::Result<()> {
    let text = fs::read_to_string(file)?;
    let code = strip(&text);
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().map(Path::to_path_buf),
        _ => file
            .parent()
            .zip(file.file_stem())
            .map(|(p, stem)| p.join(stem)),
    }
    .unwrap_or_default();
    out.push((path.clone(), file.to_path_buf()));
    for name in mod_declarations(&code) {
        let flat = dir.join(format!("{name}.rs"));
        let nested = dir.join(&name).join("mod.rs");
        let child = if flat.is_file() { flat } else { nested };
        if child.is_file() {
            let mut p = path.clone();
            p.push(name);
            collect(&child, p, out)?;
        }
    }
    Ok(())
}

/// Names of `mod x;` declarations (file modules) in stripped code.
fn mod_declarations(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let tokens = tokens(code);
    for w in tokens.windows(3) {
        if w[0] == "mod" && w[2] == ";" && is_ident(&w[1]) {
            out.push(w[1].clone());
        }
    }
    out
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Source without comments, string and char literals, and `#[cfg(test)]` items.
pub fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && raw_string_at(&b, i) {
            // r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1;
            while j < b.len() {
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && is_char_literal(&b, i) {
            i += 1;
            while i < b.len() && b[i] != '\'' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    remove_test_items(&out)
}

fn raw_string_at(b: &[char], i: usize) -> bool {
    let prev_ident = i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
    if prev_ident {
        return false;
    }
    let mut j = i + 1;
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    b.get(j) == Some(&'"')
}

/// A `'` that opens a char literal rather than a lifetime or label.
fn is_char_literal(b: &[char], i: usize) -> bool {
    matches!(
        (b.get(i + 1), b.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

/// Drops each `#[cfg(test)]` item (a `mod tests { ... }` or any braced or `;` item).
fn remove_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `use` declarations of this crate's paths (`crate`, `super`, `self`) that import with `*`.
fn glob_uses(code: &str) -> Vec<String> {
    let t = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if t[i] == "use"
            && matches!(
                t.get(i + 1).map(String::as_str),
                Some("crate" | "super" | "self")
            )
        {
            let end = t[i..]
                .iter()
                .position(|x| x == ";")
                .map_or(t.len(), |k| i + k);
            if t[i..end].iter().any(|x| x == "*") {
                out.push(t[i..end].concat());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Identifiers, `::` and single punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(b[start..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Every path starting at `crate`, `super` or `self` in stripped code, with grouped
/// `use` trees expanded (`crate::{a::b, c}` gives `crate::a::b` and `crate::c`).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let t = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let starts = matches!(t[i].as_str(), "crate" | "super" | "self")
            && (i == 0 || t[i - 1] != "::")
            && t.get(i + 1).map(String::as_str) == Some("::");
        if starts {
            i = expand(&t, i, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Expands the path or use tree at `t[i]` under `prefix`; returns the index after it.
fn expand(
    t: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match t.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match t.get(i).map(String::as_str) {
                        None => return i,
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        Some(_) => i = expand(t, i, prefix.clone(), out),
                    }
                }
            }
            Some(seg) if is_ident(seg) => {
                prefix.push(seg.to_owned());
                i += 1;
                if t.get(i).map(String::as_str) == Some("::") {
                    i += 1;
                    continue;
                }
                out.push(prefix);
                return i;
            }
            Some("*") => {
                out.push(prefix);
                return i + 1;
            }
            _ => {
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return i;
            }
        }
    }
}

/// Tarjan's strongly connected components with more than one member.
fn strongly_connected<V: Ord + Clone, W>(edges: &BTreeMap<V, BTreeMap<V, W>>) -> Vec<Vec<V>> {
    struct State<V> {
        index: BTreeMap<V, usize>,
        low: BTreeMap<V, usize>,
        stack: Vec<V>,
        on: BTreeSet<V>,
        next: usize,
        out: Vec<Vec<V>>,
    }
    fn visit<V: Ord + Clone, W>(v: &V, edges: &BTreeMap<V, BTreeMap<V, W>>, s: &mut State<V>) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        if let Some(ws) = edges.get(v) {
            for w in ws.keys() {
                if !s.index.contains_key(w) {
                    visit(w, edges, s);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(v, edges, &mut s);
        }
    }
    s.out
}

/// The crate roots of the workspace at `root`: every member's `src/lib.rs` or `src/main.rs`,
/// and each binary under `src/bin/` that is a directory (`src/bin/x/main.rs`).
pub fn workspace_roots(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut members: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .collect();
    members.sort();
    for m in members {
        for f in ["src/lib.rs", "src/main.rs"] {
            if m.join(f).is_file() {
                out.push(m.join(f));
            }
        }
        if let Ok(bins) = fs::read_dir(m.join("src/bin")) {
            let mut bins: Vec<PathBuf> = bins
                .filter_map(Result::ok)
                .map(|e| e.path().join("main.rs"))
                .filter(|p| p.is_file())
                .collect();
            bins.sort();
            out.extend(bins);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> ModuleGraph {
        let mut g = ModuleGraph::default();
        let path = |p: &str| -> ModPath {
            if p.is_empty() {
                Vec::new()
            } else {
                p.split("::").map(str::to_owned).collect()
            }
        };
        for (p, _) in files {
            g.modules.insert(path(p));
        }
        for (p, text) in files {
            g.add_source(&path(p), text);
        }
        g
    }

    #[test]
    fn a_cycle_between_top_level_modules_is_found_with_its_imports() {
        let g = graph(&[
            ("", "mod a; mod b; mod c;"),
            ("a", "use crate::b::Thing;"),
            ("b", "use crate::{c::{self, Other}, x};"),
            ("c", "fn f() { crate::a::go(); }"),
        ]);
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].parent, "crate");
        let names: Vec<&str> = cycles[0].members.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names, ["crate::a", "crate::b", "crate::c"]);
        assert_eq!(cycles[0].members[1].1, "crate::b uses crate::c");
    }

    #[test]
    fn comments_strings_and_tests_are_not_imports() {
        let g = graph(&[
            ("a", "//! See [`crate::b`].\nuse crate::b::X;"),
            (
                "b",
                "/* crate::a */ const S: &str = \"crate::a::x\";\n\
                 #[cfg(test)]\nmod tests { use crate::a::Y; }\nfn f() {}",
            ),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.cycles());
        assert_eq!(g.imports[&vec!["a".to_owned()]].len(), 1);
    }

    #[test]
    fn a_child_using_its_parent_is_not_a_cycle_but_siblings_are() {
        let g = graph(&[
            ("p", "pub use self::x::A; use crate::p::y::B;"),
            ("p::x", "use super::Shared; use super::y::B;"),
            ("p::y", "use super::*;"),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.cycles());
        let g = graph(&[
            ("p", ""),
            ("p::x", "use super::y::B;"),
            ("p::y", "use crate::p::x::A;"),
        ]);
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].parent, "crate::p");
    }

    #[test]
    fn glob_imports_outside_tests_are_recorded() {
        let g = graph(&[
            ("p", ""),
            (
                "p::x",
                "use super::*;\nuse std::io::*;\n#[cfg(test)]\nmod tests { use super::*; }",
            ),
            ("p::y", "use crate::p::{x::*, Z};"),
        ]);
        assert_eq!(g.globs.len(), 2, "{:?}", g.globs);
        assert_eq!(
            g.globs[&vec!["p".to_owned(), "x".to_owned()]],
            ["usesuper::*"]
        );
    }

    #[test]
    fn submodules_count_as_their_top_level_ancestor() {
        let g = graph(&[
            ("a", ""),
            ("a::deep", "use crate::b::C;"),
            ("b", "use crate::a::deep::D;"),
        ]);
        assert_eq!(g.cycles().len(), 1);
    }
}
