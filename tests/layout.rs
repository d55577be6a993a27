//! The module map of README.md's "Layout", checked: imports between the
//! crate's top-level modules go one way (main → server → {session, admin}
//! → state → the pure cores), so the graph has no cycle, and the pure
//! cores import no glue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that do protocol and policy work on bytes and a `now` passed in:
/// no sockets, runtime, clock, DNS or files (src/lib.rs denies clippy's
/// disallowed-methods on them).
const PURE: &[&str] = &[
    "admission",
    "client_addr",
    "config",
    "demo",
    "http",
    "preamble",
    "registry",
    "ticket",
    "ws",
];
/// Runtime glue: sockets, TLS, tasks, threads, process-wide state.
const GLUE: &[&str] = &[
    "admin",
    "relay",
    "server",
    "session",
    "state",
    "task",
    "tls",
    "transport",
    "upstream",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under src/ belongs to (`None` for lib.rs and
/// main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The file's lines without comments and without `#[cfg(test)]` items
/// (test modules may reach anywhere).
fn code_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("//") {
            continue;
        }
        if l.trim() == "#[cfg(test)]" {
            // Skip the item: through its closing brace, or one line.
            let mut depth = 0i32;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                if depth <= 0 && (item.contains('}') || item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push(l);
    }
    out
}

/// Top-level modules named by `crate::NAME` and `use crate::{NAME, ...}`.
fn references(text: &str) -> BTreeSet<String> {
    let code = code_lines(text).join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // use crate::{a::X, b, c::{..}}: the names at depth 0.
            let mut depth = 0;
            let mut word = String::new();
            let mut at_start = true;
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !word.is_empty() {
                            out.insert(std::mem::take(&mut word));
                        }
                        at_start = true;
                    }
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                        word.push(c)
                    }
                    _ if depth == 0 && at_start && !word.is_empty() => {
                        out.insert(std::mem::take(&mut word));
                        at_start = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                out.insert(word);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let refs = references(&text);
        let e = g.entry(m.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != m));
    }
    g
}

#[test]
fn the_reference_scanner_reads_use_groups() {
    let r = references("use crate::{a::X, b, c::{d, e::F}};\nfn f() { crate::g::h(); }\n// crate::comment\n#[cfg(test)]\nmod tests { use crate::t; }");
    let want: BTreeSet<String> = ["a", "b", "c", "g"].iter().map(|s| s.to_string()).collect();
    assert_eq!(r, want);
}

#[test]
fn imports_between_modules_have_no_cycle() {
    let g = graph();
    assert!(
        g.contains_key("server") && g.contains_key("registry"),
        "{g:?}"
    );
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == n) {
            panic!("import cycle: {} → {n}", path[i..].join(" → "));
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done);
    }
}

#[test]
fn pure_cores_import_no_glue() {
    let g = graph();
    for p in PURE {
        let refs = g.get(*p).unwrap_or_else(|| panic!("no module {p} in src/"));
        let glue: Vec<&String> = refs.iter().filter(|r| GLUE.contains(&r.as_str())).collect();
        assert!(glue.is_empty(), "pure module {p} imports glue: {glue:?}");
    }
}

#[test]
fn the_layers_import_downward() {
    let g = graph();
    let above = |m: &str, banned: &[&str]| {
        let refs = g.get(m).unwrap_or_else(|| panic!("no module {m} in src/"));
        for b in banned {
            assert!(
                !refs.contains(*b),
                "{m} must not import {b} (README Layout)"
            );
        }
    };
    // server → {session, admin} → state → cores
    above("session", &["server", "admin"]);
    above("admin", &["server", "session"]);
    above("state", &["server", "session", "admin"]);
    for m in ["relay", "upstream", "task", "transport", "tls"] {
        above(m, &["server", "session", "admin", "state"]);
    }
}
