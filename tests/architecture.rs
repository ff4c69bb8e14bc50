//! The module structure of docs/architecture.md holds: every `use crate::X`
//! and `crate::X::…` in `src/` (outside `src/bin`, tests inside `src/`
//! included) is an edge its module's row of the table allows ("may call"),
//! and no two top-level modules import each other, directly or through
//! others. The table in the document is the only copy: this test reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// What a module's row says it may call.
#[derive(Debug)]
enum MayCall {
    Everything,
    Only(BTreeSet<String>),
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The table under `## Modules`: module → what it may call.
fn allowed_edges() -> BTreeMap<String, MayCall> {
    let text =
        std::fs::read_to_string(repo().join("docs/architecture.md")).expect("read docs/architecture.md");
    let section = text
        .split("\n## Modules\n")
        .nth(1)
        .expect("docs/architecture.md has a `## Modules` section");
    let mut rows = section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'));
    let header = cells(rows.next().expect("the table's header"));
    assert_eq!(
        header,
        ["module", "owns", "may call"],
        "the module table's columns"
    );
    let mut table = BTreeMap::new();
    for row in rows.skip(1) {
        let cells = cells(row);
        assert_eq!(cells.len(), 3, "a row of three cells: {row}");
        let modules = modules_of(&cells[0]);
        let may_call = match cells[2].trim() {
            "everything" => MayCall::Everything,
            "—" => MayCall::Only(BTreeSet::new()),
            list => MayCall::Only(
                list.split(',')
                    .map(|name| name.trim().trim_matches('`').to_owned())
                    .collect(),
            ),
        };
        for module in modules {
            let previous = table.insert(module.clone(), may_call_clone(&may_call));
            assert!(previous.is_none(), "`{module}` has two rows in the module table");
        }
    }
    table
}

fn may_call_clone(may_call: &MayCall) -> MayCall {
    match may_call {
        MayCall::Everything => MayCall::Everything,
        MayCall::Only(set) => MayCall::Only(set.clone()),
    }
}

/// The cells of a markdown table row, trimmed (no `|` occurs inside a cell).
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|cell| cell.trim().to_owned()).collect()
}

/// The top-level modules a row's first cell names: `src/X/`, `src/X.rs`
/// and `crate::X`, in backticks; `src/bin/…` and files outside `src/` name none.
fn modules_of(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| {
            if let Some(module) = quoted.strip_prefix("crate::") {
                return Some(module.to_owned());
            }
            let path = quoted.strip_prefix("src/")?;
            if path.starts_with("bin/") {
                return None;
            }
            let first = path.split('/').next()?;
            Some(first.trim_end_matches(".rs").to_owned())
        })
        .collect()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if !path.ends_with("bin") {
                rust_files(&path, into);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// One reference from a file to a top-level module of the crate.
#[derive(Debug, Clone)]
struct Reference {
    file: String,
    line: usize,
    target: String,
}

/// Every `crate::X` in `tokens` (paths, `use` trees, macro bodies; not
/// comments, and doc comments are string literals to the tokenizer).
fn references(tokens: TokenStream, file: &str, into: &mut Vec<Reference>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        if let TokenTree::Group(group) = token {
            references(group.stream(), file, into);
        }
        let TokenTree::Ident(ident) = token else {
            continue;
        };
        if ident != "crate" {
            continue;
        }
        let path_separator = matches!(
            (tokens.get(i + 1), tokens.get(i + 2)),
            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
        );
        if !path_separator {
            continue;
        }
        match tokens.get(i + 3) {
            Some(TokenTree::Ident(target)) => into.push(Reference {
                file: file.to_owned(),
                line: target.span().start().line,
                target: target.to_string(),
            }),
            // `use crate::{a, b::c}`: the first name of each item.
            Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
                let mut first = true;
                for inner in group.stream() {
                    match &inner {
                        TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                        TokenTree::Ident(target) if first => {
                            first = false;
                            into.push(Reference {
                                file: file.to_owned(),
                                line: target.span().start().line,
                                target: target.to_string(),
                            });
                        }
                        _ => first = false,
                    }
                }
            }
            _ => {}
        }
    }
}

/// The top-level module of a file under `src/`: `src/store/cache.rs` →
/// `store`, `src/tls.rs` → `tls`; `None` for the crate root (`lib.rs`).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// Every edge between top-level modules: (from, to) → where it is made.
fn edges() -> BTreeMap<(String, String), Vec<Reference>> {
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<(String, String), Vec<Reference>> = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(repo()).expect("under the repository");
        let Some(module) = module_of(path.strip_prefix(&src).expect("under src")) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("read a source file");
        let tokens = TokenStream::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not Rust tokens: {e}", relative.display()));
        let mut found = Vec::new();
        references(tokens, &relative.display().to_string(), &mut found);
        for reference in found.into_iter().filter(|r| r.target != module) {
            edges
                .entry((module.clone(), reference.target.clone()))
                .or_default()
                .push(reference);
        }
    }
    edges
}

#[test]
fn every_import_is_an_edge_the_module_table_allows() {
    let table = allowed_edges();
    let known: BTreeSet<&String> = table.keys().collect();
    let mut problems = Vec::new();
    for (module, may_call) in &table {
        if let MayCall::Only(targets) = may_call {
            for target in targets.iter().filter(|t| !known.contains(t)) {
                problems.push(format!(
                    "docs/architecture.md: `{module}` may call `{target}`, which has no row in the module table"
                ));
            }
        }
    }
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for path in &files {
        if let Some(module) = module_of(path.strip_prefix(&src).expect("under src"))
            && !table.contains_key(&module)
        {
            problems.push(format!(
                "{}: its module `{module}` has no row in docs/architecture.md's module table",
                path.strip_prefix(repo()).expect("under the repository").display()
            ));
        }
    }
    for ((from, to), references) in edges() {
        let allowed = match table.get(&from) {
            None => continue, // reported above
            Some(MayCall::Everything) => true,
            Some(MayCall::Only(targets)) => targets.contains(&to),
        };
        if allowed {
            continue;
        }
        let why = if known.contains(&to) {
            format!("`{from}` may not call `{to}`")
        } else {
            format!("`crate::{to}` is not a module of the table")
        };
        for reference in references {
            problems.push(format!(
                "{}:{}: {why} (docs/architecture.md, the module table's \"may call\")",
                reference.file, reference.line
            ));
        }
    }
    assert!(problems.is_empty(), "forbidden edges:\n{}", problems.join("\n"));
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let edges = edges();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().insert(to);
    }
    // Depth-first search; a back edge closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut BTreeSet<Vec<&'a str>>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<&str> = path[at..].to_vec();
            // The same cycle found from another node reads the same.
            let start = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(start);
            cycles.insert(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, cycles);
        }
        path.pop();
        done.insert(node);
    }
    let mut cycles = BTreeSet::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    let described: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let steps: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(from, to)| {
                    let witness = &edges[&((*from).to_owned(), (*to).to_owned())][0];
                    format!("{from} → {to} ({}:{})", witness.file, witness.line)
                })
                .collect();
            steps.join(", ")
        })
        .collect();
    assert!(
        described.is_empty(),
        "import cycles between top-level modules:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_crate_root_maps_every_module() {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).expect("read src/lib.rs");
    let map: String = lib
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(';').trim_end_matches(" {"))
        .filter(|module| *module != "pb" && !map.contains(&format!("[`{module}`]")))
        .collect();
    assert!(
        missing.is_empty(),
        "src/lib.rs's module map does not name {missing:?}"
    );
}
