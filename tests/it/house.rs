//! The house's rules, read from the code itself: no import runs both ways between `src/`'s
//! top-level modules (directly or around a ring), no file over 500 lines and no function over
//! 80 (tests and benches included), a README a newcomer reads in one screen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(ROOT).join(dir), &mut out);
    out.sort();
    out
}

/// The top-level module a file of `src/` belongs to: `src/db/verify/mod.rs` is `db`.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(Path::new(ROOT).join("src")).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The code of a file with its comments and the insides of its string and char literals
/// blanked (lines kept), so that braces and `crate::` in text are not read as code.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |s: &[u8], out: &mut String| {
        out.extend(s.iter().map(|&c| if c == b'\n' { '\n' } else { ' ' }));
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let start = 2 + hashes;
            rest[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| start + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' && (rest.get(2) == Some(&b'\'') || rest.get(1) == Some(&b'\\')) {
            // A char literal ('x', '\'' , '\n'); a lifetime ('a) has no closing quote.
            let mut j = 2;
            while j < rest.len() && rest[j] != b'\'' {
                j += 1;
            }
            j + 1
        } else {
            out.push(rest[0] as char);
            i += 1;
            continue;
        };
        let end = end.min(rest.len());
        blank(&rest[..end], &mut out);
        i += end;
    }
    out
}

/// Which top-level modules each top-level module of `src/` names with a `crate::` path.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files("src");
    let mut macros: BTreeMap<String, String> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            if let Some(name) = line.trim().strip_prefix("macro_rules! ") {
                macros.insert(name.trim_end_matches(" {").to_string(), module.clone());
            }
        }
    }
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let text = code(&std::fs::read_to_string(file).unwrap());
        let edges = graph.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let after = &text[at + "crate::".len()..];
            let names: Vec<&str> = match after.strip_prefix('{') {
                Some(list) => list[..list.find('}').unwrap_or(0)]
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![
                    after
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or(""),
                ],
            };
            for name in names {
                let target = if after.starts_with(&format!("{name}!")) {
                    macros.get(name).cloned()
                } else {
                    modules.contains(name).then(|| name.to_string())
                };
                if let Some(target) = target
                    && target != module
                {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// A ring of imports, if there is one: each module imports the next, the last the first.
fn ring(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(ring) = visit(next, graph, path, done) {
                return Some(ring);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_runs_both_ways_between_the_top_level_modules() {
    let graph = imports();
    assert!(
        graph["daemon"].contains("state"),
        "the graph is read: {graph:#?}"
    );
    assert!(
        graph["db"].contains("sql"),
        "macros are followed: {graph:#?}"
    );
    if let Some(ring) = ring(&graph) {
        panic!("a circle of imports: {} -> {}", ring.join(" -> "), ring[0]);
    }
    // The check finds a ring when there is one.
    let mut bent = graph.clone();
    bent.get_mut("sql").unwrap().insert("daemon".into());
    assert!(ring(&bent).is_some());
}

/// Each function of a file longer than `limit` lines: `path:line name (n lines)`.
fn long_functions(path: &Path, limit: usize) -> Vec<String> {
    let label = path.strip_prefix(ROOT).unwrap().display().to_string();
    long_functions_in(&label, &std::fs::read_to_string(path).unwrap(), limit)
}

fn long_functions_in(label: &str, text: &str, limit: usize) -> Vec<String> {
    let text = code(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else { continue };
        let before = line[..at].trim();
        let words_ok = before
            .split_whitespace()
            .all(|w| matches!(w, "pub" | "async" | "const" | "unsafe") || w.starts_with("pub("));
        if !words_ok {
            continue;
        }
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body: from the first `{` after the signature to its match.
        let mut depth = 0i32;
        let mut opened = false;
        let mut end = None;
        'lines: for (i, l) in lines.iter().enumerate().skip(start) {
            for c in l.chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'lines,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            end = Some(i);
                            break 'lines;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(end) = end
            && end - start + 1 > limit
        {
            found.push(format!(
                "{label}:{} {name} ({} lines)",
                start + 1,
                end - start + 1
            ));
        }
    }
    found
}

#[test]
fn no_file_over_500_lines_and_no_function_over_80() {
    let mut files = rust_files("src");
    files.extend(rust_files("tests"));
    files.extend(rust_files("benches"));
    let long_files: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 500).then(|| format!("{} ({n} lines)", f.strip_prefix(ROOT).unwrap().display()))
        })
        .collect();
    assert!(
        long_files.is_empty(),
        "files over 500 lines: {long_files:#?}"
    );
    let long: Vec<String> = files.iter().flat_map(|f| long_functions(f, 80)).collect();
    assert!(long.is_empty(), "functions over 80 lines: {long:#?}");
    // The measure finds a long one, and braces in text do not fool it.
    let body = "    let x = '}';\n".repeat(85);
    let sample = format!("pub async fn long() {{\n{body}}}\nfn short() {{ \"}}}}\" }}\n");
    assert_eq!(
        long_functions_in("sample.rs", &sample, 80),
        ["sample.rs:1 long (87 lines)"]
    );
}

#[test]
fn the_readme_is_one_screen() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let n = readme.lines().count();
    assert!(
        n <= 200,
        "README.md has {n} lines: the rest belongs in docs/"
    );
}
