//! `config::parse(text)`: the pure phase of the config (src/config/mod.rs),
//! on any text (bytes that are not UTF-8 are replaced, never skipped).
//!
//! The claim under test: an error is built only from a position, the key
//! path and an `ErrorKind` with a fixed message, so it cannot show a value
//! from the file; and a parsed config's `Debug` hides the secrets.
//!
//! Invariants:
//! * never panics;
//! * an error's Display is non-empty, one line, printable, and exactly
//!   `line L, column C: ` + key path + `: ` + the kind's message; the pure
//!   phase names no file;
//! * text that is not TOML is a `Syntax` error with no key; TOML text never is;
//! * every segment of the key path is a key of the config (`KEY_NAMES`), a
//!   key written in the input, or `HIDDEN_NAME`;
//! * no value leaks. The input's string values are cut into pieces: maximal
//!   runs of base64/word characters (`A-Z a-z 0-9 + / = _ -`) of 8 or more.
//!   Display and Debug join their parts with other characters, so a piece
//!   found in them lies inside one part: it is a leak unless that part may
//!   hold it (a key name of the input or of the config, the kind's fixed
//!   text, a number);
//! * a parsed config's `Debug` shows no piece of a secret value (`[admin]
//!   token`, a ticket key's `secret`, an upstream's `token_secret`) inside a
//!   quoted string, unless the piece is
//!   also in a key, in a value that is not secret (shown as written,
//!   escaped, or lowercased) or in a default the parse fills in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::config::{parse, ErrorKind, DEFAULT_PATH, HIDDEN_NAME, KEY_NAMES};

/// The strings a parse puts in a config itself (defaults).
const DEFAULTS: &[&str] = &[DEFAULT_PATH];
use toml_edit::{Item, Table, Value};

/// The keys whose values are secrets, by path (array indices left out).
fn is_secret(path: &[String]) -> bool {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(
        p.as_slice(),
        ["admin", "token"] | ["tickets", "keys", "secret"] | ["upstreams", _, "token_secret"]
    )
}

fn word(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+/=_-".contains(c)
}

/// Maximal runs of word characters of 8 or more.
fn pieces(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| !word(c)).filter(|p| p.len() >= 8)
}

/// The string literals of a Debug text, escapes left as written.
fn quoted(debug: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = debug.chars();
    while let Some(c) = chars.next() {
        match (&mut cur, c) {
            (None, '"') => cur = Some(String::new()),
            (None, _) => {}
            (Some(s), '\\') => {
                s.push(c);
                s.extend(chars.next());
            }
            (Some(_), '"') => out.extend(cur.take()),
            (Some(s), _) => s.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Seen {
    keys: Vec<String>,
    /// (value, is a secret).
    values: Vec<(String, bool)>,
}

impl Seen {
    fn item(&mut self, path: &mut Vec<String>, item: &Item) {
        match item {
            Item::None => {}
            Item::Value(v) => self.value(path, v),
            Item::Table(t) => self.table(path, t),
            Item::ArrayOfTables(a) => a.iter().for_each(|t| self.table(path, t)),
        }
    }

    fn table(&mut self, path: &mut Vec<String>, t: &Table) {
        for (k, item) in t.iter() {
            self.keys.push(k.to_string());
            path.push(k.to_string());
            self.item(path, item);
            path.pop();
        }
    }

    fn value(&mut self, path: &mut Vec<String>, v: &Value) {
        match v {
            Value::String(s) => self.values.push((s.value().clone(), is_secret(path))),
            Value::Array(a) => a.iter().for_each(|v| self.value(path, v)),
            Value::InlineTable(t) => {
                for (k, v) in t.iter() {
                    self.keys.push(k.to_string());
                    path.push(k.to_string());
                    self.value(path, v);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let result = parse(&text);
    let doc = toml_edit::ImDocument::parse(text.as_ref());
    let mut seen = Seen::default();
    if let Ok(doc) = &doc {
        seen.table(&mut Vec::new(), doc.as_table());
    }
    let in_key = |p: &str| {
        seen.keys.iter().any(|k| k.contains(p)) || KEY_NAMES.iter().any(|k| k.contains(p))
    };
    match &result {
        Err(e) => {
            let shown = e.to_string();
            let debug = format!("{e:?}");
            assert!(!shown.is_empty(), "empty error: {debug}");
            assert!(!shown.contains(|c: char| c.is_control()), "{shown:?}");
            assert!(e.file.is_none(), "the pure phase names a file: {debug}");
            let mut rebuilt = String::new();
            if let Some(p) = e.at {
                rebuilt += &format!("line {}, column {}: ", p.line, p.column);
            }
            if !e.key.is_empty() {
                rebuilt += &format!("{}: ", e.key);
            }
            rebuilt += &e.kind.to_string();
            assert_eq!(shown, rebuilt, "Display adds to the parts");
            assert_eq!(
                doc.is_err(),
                e.kind == ErrorKind::Syntax && e.key.is_empty(),
                "{shown}"
            );
            for seg in e.key.split('.').filter(|s| !s.is_empty()) {
                let seg = seg.split('[').next().unwrap_or_default();
                assert!(
                    seg == HIDDEN_NAME
                        || KEY_NAMES.contains(&seg)
                        || seen.keys.iter().any(|k| k == seg),
                    "key path segment {seg:?} is no key of the input: {shown}"
                );
            }
            let fixed = format!("{} {:?} ConfigError", e.kind, e.kind);
            for (v, _) in &seen.values {
                for p in pieces(v) {
                    if (shown.contains(p) || debug.contains(p))
                        && !(in_key(p) || fixed.contains(p) || p.bytes().all(|b| b.is_ascii_digit()))
                    {
                        panic!("error shows value text {p:?}: {debug}");
                    }
                }
            }
        }
        Ok(parsed) => {
            assert!(doc.is_ok(), "parsed what is not TOML");
            let debug = format!("{parsed:?}");
            let quoted = quoted(&debug);
            let plain: Vec<String> = seen
                .values
                .iter()
                .filter(|(_, secret)| !secret)
                .flat_map(|(v, _)| [v.to_ascii_lowercase(), format!("{v:?}").to_ascii_lowercase()])
                .collect();
            for (v, secret) in &seen.values {
                if !secret {
                    continue;
                }
                for p in pieces(v) {
                    let low = p.to_ascii_lowercase();
                    if quoted.iter().any(|q| q.contains(p))
                        && !(in_key(p)
                            || plain.iter().any(|v| v.contains(&low))
                            || DEFAULTS.iter().any(|d| d.contains(p)))
                    {
                        panic!("parsed config's Debug shows secret text {p:?}: {debug}");
                    }
                }
            }
        }
    }
});
