//! `cargo xtask layers`: the shape of the tree, checked.
//!
//! Two rules, both from `docs/architecture.md`:
//! - **Crate arrows point one way.** Every workspace crate sits in a layer
//!   by its folder: `lib/` < `firmware/` < `drivers/` < `kernel/` <
//!   `boards/` < `boot/`; `user/` stands apart, and the tools (`xtask`,
//!   `qemu-tests`, `fuzz`) may use anything. A crate may depend on crates of
//!   its own layer or a lower one, and on the *contract leaves* every layer
//!   shares (crates with no workspace dependency of their own: `kernel/abi`,
//!   `kernel/ktest`, `boot/bootinfo`, `lib/*`). Only boards and boot
//!   binaries name an IOMMU driver (`drivers/` other than `iommu` and
//!   `io-pgtable`), and user crates depend only on `user/` and leaves.
//! - **No import circles inside a crate.** A module (a file or folder under
//!   `src/`, the crate root excepted) names others as `crate::x`; the
//!   directed graph of those names has no cycle. Test-only modules (those
//!   declared under a `cfg(test)` attribute) are left out.
//!
//! The checks run as a host test of `xtask` (so `cargo xtask test --host`
//! fails on a new arrow pointing the wrong way), and `cargo xtask layers`
//! prints the crate graph by layer with any finding.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A workspace crate: its folder (relative to the root, `/`-separated),
/// package name and the folders of the workspace crates it depends on.
#[derive(Debug, Clone)]
pub struct Crate {
    /// Folder relative to the workspace root, e.g. `drivers/vtd`.
    pub dir: String,
    /// Package name.
    pub name: String,
    /// Folders of the workspace crates it depends on (normal dependencies).
    pub deps: Vec<String>,
}

/// The layer rank of a folder (`None`: a tool, which may use anything).
fn rank(dir: &str) -> Option<u32> {
    let top = dir.split('/').next().unwrap_or("");
    match top {
        "lib" => Some(0),
        "firmware" => Some(1),
        "drivers" => Some(2),
        "kernel" => Some(3),
        "boards" => Some(4),
        "boot" => Some(5),
        "user" => Some(10),
        _ => None,
    }
}

/// Whether `dir` is an IOMMU driver crate (not the contract or the engine).
fn is_driver(dir: &str) -> bool {
    dir.starts_with("drivers/") && dir != "drivers/iommu" && dir != "drivers/io-pgtable"
}

/// Reads the `members` list of the workspace manifest at `root`.
fn members(root: &Path) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(root.join("Cargo.toml")).map_err(|e| format!("Cargo.toml: {e}"))?;
    let start = text.find("members = [").ok_or("no members list in Cargo.toml")?;
    let list = &text[start..];
    let end = list.find(']').ok_or("unterminated members list")?;
    Ok(list[..end].split('"').skip(1).step_by(2).map(str::to_string).collect())
}

/// The `path = "..."` dependencies of a crate manifest's normal
/// `[dependencies]` (and target-specific dependency) sections, resolved
/// relative to the workspace root.
fn path_deps(root: &Path, dir: &str, manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]" || (line.starts_with("[target.") && line.ends_with(".dependencies]"));
            continue;
        }
        if !in_deps {
            continue;
        }
        let Some(at) = line.find("path = \"") else { continue };
        let rest = &line[at + 8..];
        let Some(end) = rest.find('"') else { continue };
        let joined = root.join(dir).join(&rest[..end]);
        if let Some(rel) = normalize(&joined).strip_prefix(normalize(root)).ok().map(Path::to_path_buf) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    out
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every workspace crate with its dependencies.
pub fn crates(root: &Path) -> Result<Vec<Crate>, String> {
    let mut out = Vec::new();
    for dir in members(root)? {
        let manifest = fs::read_to_string(root.join(&dir).join("Cargo.toml")).map_err(|e| format!("{dir}: {e}"))?;
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
            .unwrap_or(&dir)
            .to_string();
        let deps = path_deps(root, &dir, &manifest);
        out.push(Crate { dir, name, deps });
    }
    Ok(out)
}

/// Arrows between crates that break the layering.
pub fn crate_findings(crates: &[Crate]) -> Vec<String> {
    let leaves: BTreeSet<&str> = crates.iter().filter(|c| c.deps.is_empty()).map(|c| c.dir.as_str()).collect();
    let mut out = Vec::new();
    for c in crates {
        let Some(from) = rank(&c.dir) else { continue };
        for d in &c.deps {
            let leaf = leaves.contains(d.as_str());
            let ok = match rank(d) {
                _ if from == 10 => d.starts_with("user/") || leaf,
                Some(10) => false,
                Some(to) => leaf || to <= from,
                None => false,
            };
            if !ok {
                out.push(format!("{} ({}) depends on {d}, a higher layer", c.dir, c.name));
            }
            if is_driver(d) && from < 4 && !is_driver(&c.dir) {
                out.push(format!("{} names the driver {d}: only boards and boot binaries may", c.dir));
            }
        }
    }
    out
}

/// Removes comments, string literals and `#[cfg(test)]` items' bodies
/// (roughly: from a `#[cfg(test)]` line to the end of the file when what
/// follows is a `mod`), so that only live code's paths are counted.
fn live_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The first path segments named after `crate::` in `code`, groups
/// (`crate::{a, b::c}`) included.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 7..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = j;
                    break;
                }
            }
            let mut depth = 0;
            let mut item = String::new();
            for ch in group[..end].chars().chain([',']) {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if let Some(first) = item.split("::").next().map(str::trim) {
                            if !first.is_empty() {
                                out.insert(first.to_string());
                            }
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
        } else {
            let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

/// The crate's top-level modules (name → files), from the `mod` items of its
/// root, leaving out those declared under a `cfg(test)` (or `testing`) attribute.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let root = ["lib.rs", "main.rs"].iter().map(|f| src.join(f)).find(|p| p.exists());
    let Some(root) = root else { return BTreeMap::new() };
    let text = fs::read_to_string(&root).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut test_only = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("#[cfg(") {
            test_only = t.contains("test") || t.contains("testing");
            continue;
        }
        if t.starts_with("#[") || t.starts_with("///") || t.starts_with("//") {
            continue;
        }
        let decl = t.trim_start_matches("pub(crate) ").trim_start_matches("pub ");
        if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            if !test_only {
                let file = src.join(format!("{name}.rs"));
                let dir = src.join(name);
                let mut files = Vec::new();
                if file.exists() {
                    files.push(file);
                }
                if dir.is_dir() {
                    collect_rs(&dir, &mut files);
                }
                out.insert(name.to_string(), files);
            }
        }
        test_only = false;
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Module graph of one crate: module → the other modules it names.
pub fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut graph = BTreeMap::new();
    for (name, files) in &mods {
        let mut uses = BTreeSet::new();
        for f in files {
            let code = live_code(&fs::read_to_string(f).unwrap_or_default());
            uses.extend(crate_refs(&code).into_iter().filter(|m| m != name && mods.contains_key(m)));
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
pub fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges {
                let w = w.as_str();
                if !s.graph.contains_key(w) {
                    continue;
                }
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
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
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Every finding in the workspace at `root`: wrong-way crate arrows and
/// import circles inside crates.
pub fn findings(root: &Path) -> Result<Vec<String>, String> {
    let crates = crates(root)?;
    let mut out = crate_findings(&crates);
    for c in &crates {
        for cycle in cycles(&module_graph(&root.join(&c.dir).join("src"))) {
            out.push(format!("{}: import circle between modules {}", c.dir, cycle.join(" <-> ")));
        }
    }
    Ok(out)
}

/// `cargo xtask layers`: prints each layer's crates and what they depend
/// on, then the findings; an error when there are any.
pub fn run(root: &Path) -> Result<(), String> {
    let crates = crates(root)?;
    let mut by_layer: BTreeMap<(u32, String), Vec<&Crate>> = BTreeMap::new();
    for c in &crates {
        let top = c.dir.split('/').next().unwrap_or("").to_string();
        by_layer.entry((rank(&c.dir).unwrap_or(20), top)).or_default().push(c);
    }
    for ((_, layer), members) in &by_layer {
        println!("{layer}/");
        for c in members {
            let deps: Vec<&str> = c.deps.iter().map(String::as_str).collect();
            println!("  {:<24} -> {}", c.dir, if deps.is_empty() { "(leaf)".to_string() } else { deps.join(", ") });
        }
    }
    let found = findings(root)?;
    if found.is_empty() {
        println!("layers: every arrow points down; no import circle in any crate");
        Ok(())
    } else {
        for f in &found {
            println!("layers: {f}");
        }
        Err(format!("{} layering finding(s)", found.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn cycles_are_found_and_chains_are_not() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &[])]);
        assert!(cycles(&g).is_empty());
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    }

    #[test]
    fn crate_paths_are_read_from_uses_and_groups() {
        let code = "use crate::a::X;\nuse crate::{b, c::{D, E}};\nfn f() { crate::d::g(); $crate::no::thing; }";
        let refs: Vec<String> = crate_refs(code).into_iter().collect();
        assert_eq!(refs, ["a", "b", "c", "d"]);
        assert!(crate_refs(&live_code("// crate::x\nlet s = 1; // crate::y\n")).is_empty());
    }

    #[test]
    fn wrong_way_arrows_are_reported() {
        let c = |dir: &str, deps: &[&str]| Crate {
            dir: dir.into(),
            name: dir.into(),
            deps: deps.iter().map(|s| s.to_string()).collect(),
        };
        let ws = [
            c("lib/fallible", &[]),
            c("firmware/pci", &[]),
            c("firmware/topology", &["firmware/pci"]),
            c("drivers/iommu", &["lib/fallible", "drivers/io-pgtable"]),
            c("drivers/io-pgtable", &["lib/fallible"]),
            c("drivers/vtd", &["drivers/iommu"]),
            c("kernel/core", &["drivers/iommu", "firmware/topology"]),
            c("boards/pc", &["kernel/core", "drivers/vtd"]),
        ];
        assert!(crate_findings(&ws).is_empty(), "{:?}", crate_findings(&ws));
        let bad = [c("firmware/topology", &["kernel/core"]), c("kernel/core", &["drivers/vtd", "lib/fallible"])];
        let found = crate_findings(&bad);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    /// The tree itself: run by `cargo xtask test --host`.
    #[test]
    fn the_workspace_keeps_its_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let found = findings(&root).unwrap_or_else(|e| vec![e]);
        assert!(found.is_empty(), "layering findings:\n{}", found.join("\n"));
    }
}
