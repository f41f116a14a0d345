//! No import circles between the top-level modules (issue 24, item 7): every `crate::x` a
//! module's code names (in `use` lines, grouped `use crate::{a, b}` lines, and paths written
//! inline) is an edge from it to `x`; the graph of `src/` must have no cycle. Test code
//! (`#[cfg(test)]` modules, inline or in their own files) is left out: a test may reach
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module -> the modules it names, with one place each is named (for the message).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The top-level module a file under `src/` belongs to (`journal/github.rs` -> `journal`), or
/// None for the crate roots.
fn top_module(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// `text` without its `#[cfg(test)]` items (a `mod x { ... }` block or the item that follows),
/// and the names of the `#[cfg(test)] mod x;` files it declares.
fn without_tests(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_files = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        // The item: up to its first `;` (a declaration) or its braces' end.
        let semi = after.find(';');
        let brace = after.find('{');
        let declaration = match (semi, brace) {
            (Some(s), Some(b)) => (s < b).then_some(s),
            (s, None) => s,
            (None, Some(_)) => None,
        };
        if let Some(s) = declaration {
            let item = after[..s].trim();
            if let Some(name) = item.rsplit_once("mod ").map(|(_, n)| n.trim()) {
                test_files.push(name.to_owned());
            }
            rest = &after[s + 1..];
        } else if let Some(b) = brace {
            let mut depth = 0usize;
            let mut end = after.len();
            for (i, c) in after[b..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = b + i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &after[end..];
        } else {
            rest = "";
        }
    }
    out.push_str(rest);
    (out, test_files)
}

/// The top-level modules `code` names through `crate::`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for line in code.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::{c, d}, e}`: the names at the group's first level.
                let mut depth = 0usize;
                let mut start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            start = false;
                            let name = word(&group[i..]);
                            if !name.is_empty() {
                                named.insert(name);
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                let name = word(rest);
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        }
    }
    named
}

/// The module graph of `files` (path under `src/`, text).
fn graph(files: &[(String, String)]) -> Graph {
    // Files that are test modules, declared `#[cfg(test)] mod x;` in a sibling file.
    let mut test_files = BTreeSet::new();
    for (rel, text) in files {
        let dir = Path::new(rel).parent().unwrap_or(Path::new(""));
        // A `mod.rs`, `lib.rs` or `main.rs` declares files beside it; `a.rs` declares `a/x.rs`.
        let stem = Path::new(rel)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        let base = if matches!(stem, "mod" | "lib" | "main") {
            dir.to_path_buf()
        } else {
            dir.join(stem)
        };
        for name in without_tests(text).1 {
            for candidate in [format!("{name}.rs"), format!("{name}/mod.rs")] {
                let path = base.join(candidate);
                test_files.insert(path.to_string_lossy().into_owned());
            }
        }
    }
    let mut g = Graph::new();
    for (rel, text) in files {
        if test_files.contains(rel) {
            continue;
        }
        let Some(from) = top_module(rel) else {
            continue;
        };
        let node = g.entry(from.clone()).or_default();
        for to in named_modules(&without_tests(text).0) {
            if to != from {
                node.entry(to).or_insert_with(|| rel.clone());
            }
        }
    }
    g
}

/// A cycle of `g`, as the modules around it (the first repeated at the end), if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        m: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_owned(), Mark::Open);
        path.push(m.to_owned());
        for next in g.get(m).into_iter().flat_map(|n| n.keys()) {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let start = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = visit(g, next, marks, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        marks.insert(m.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in g.keys() {
        if !marks.contains_key(m) {
            if let Some(c) = visit(g, m, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn the_top_level_modules_import_no_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let g = graph(&files);
    // The parse sees the edges that matter (a check that sees nothing passes for nothing).
    for (from, to) in [
        ("notify", "store"),
        ("github", "notify"),
        ("metrics", "store"),
        ("store", "config"),
        ("http", "notify"),
    ] {
        assert!(
            g.get(from).is_some_and(|n| n.contains_key(to)),
            "{from} -> {to} not seen: {g:?}"
        );
    }
    if let Some(cycle) = find_cycle(&g) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
            .collect();
        panic!("an import circle: {}", steps.join(", "));
    }
    // Settings live with the configuration, which names no domain module.
    let config: Vec<_> = g["config"].keys().cloned().collect();
    assert!(
        config
            .iter()
            .all(|m| matches!(m.as_str(), "ids" | "push_filter" | "client")),
        "config names {config:?}"
    );
}

#[test]
fn the_check_finds_a_circle_and_leaves_test_code_out() {
    let files = |config: &str| {
        vec![
            ("lib.rs".to_owned(), "mod config;\nmod notify;\n".to_owned()),
            ("config/mod.rs".to_owned(), config.to_owned()),
            (
                "notify/mod.rs".to_owned(),
                "use crate::{config::NotifyConfig, journal};\n#[cfg(test)]\nmod tests;\n"
                    .to_owned(),
            ),
            (
                "notify/tests.rs".to_owned(),
                "use crate::http::Server;\n".to_owned(),
            ),
            ("journal.rs".to_owned(), "pub fn f() {}\n".to_owned()),
            ("http/mod.rs".to_owned(), "use crate::notify;\n".to_owned()),
        ]
    };
    // config -> notify -> config: found, named.
    let g = graph(&files("pub x: crate::notify::Settings,\n"));
    let cycle = find_cycle(&g).expect("the circle is found");
    assert!(
        cycle.contains(&"config".to_owned()) && cycle.contains(&"notify".to_owned()),
        "{cycle:?}"
    );
    // Only a test names it: no circle (notify/tests.rs's `http` and the inline test module's
    // `notify` are left out), and a comment names nothing.
    let g = graph(&files(
        "// crate::notify in a comment\n#[cfg(test)]\nmod tests {\n    use crate::notify::{a, b};\n    fn f() { if true { } }\n}\npub fn g() {}\n",
    ));
    assert_eq!(find_cycle(&g), None, "{g:?}");
    assert!(!g["notify"].contains_key("http"), "{g:?}");
    assert!(g["notify"].contains_key("journal") && g["notify"].contains_key("config"));
    assert!(g.get("config").is_none_or(|n| n.is_empty()), "{g:?}");
    // A longer circle through a grouped import.
    let g = graph(&files("use crate::{ids, http::{a, b}};\n"));
    assert!(find_cycle(&g).is_some(), "{g:?}");
}
