//! One test per crash input the fuzzers in `fuzz/` found (inputs kept under
//! `fuzz/regressions/<target>/`), calling the public API directly.

use std::path::Path;

use nexor_relay::config::Config;

/// The `[tickets]` key every config input below carries.
const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The Proxmox API token secret of the token_secret input.
const TOKEN_SECRET: &str = "5f2b6c1e-8d3a-4b7f-9c21-0e4d5a6b7c8d";

fn config_error(text: &str) -> String {
    match Config::from_toml(text, Path::new("/nonexistent")) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts no 16-character piece of `secret` appears in `shown`.
fn assert_no_secret(shown: &str, secret: &str) {
    for piece in secret.as_bytes().windows(16) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            !shown.contains(piece),
            "error text shows secret material {piece:?}: {shown}"
        );
    }
}

// fuzz target `config`: toml's error Display quotes the offending source
// line, so a typo next to a key's secret prints the secret (check-config
// output, startup log).
#[test]
fn config_unknown_field_beside_secret_is_not_echoed() {
    let text = include_str!("../fuzz/regressions/config/unknown-field-beside-secret.toml");
    assert!(text.contains(SECRET));
    let shown = config_error(text);
    assert!(
        shown.contains("kid"),
        "the error still names the field: {shown}"
    );
    assert_no_secret(&shown, SECRET);
}

#[test]
fn config_syntax_error_on_secret_line_is_not_echoed() {
    let text = include_str!("../fuzz/regressions/config/syntax-error-on-secret-line.toml");
    assert!(text.contains(SECRET));
    let shown = config_error(text);
    assert!(
        shown.contains("line 2"),
        "the error still gives the line: {shown}"
    );
    assert_no_secret(&shown, SECRET);
}

#[test]
fn config_syntax_error_on_token_secret_line_is_not_echoed() {
    let text = include_str!("../fuzz/regressions/config/syntax-error-on-token-secret-line.toml");
    assert!(text.contains(TOKEN_SECRET));
    let shown = config_error(text);
    assert!(
        shown.contains("line 7"),
        "the error still gives the line: {shown}"
    );
    assert_no_secret(&shown, TOKEN_SECRET);
}

// fuzz target `config`: an unknown key whose (quoted) name holds a secret's
// text; the error names unknown keys, so long names are cut.
fn assert_no_long_run_of(text: &str, shown: &str) {
    for run in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/')) {
        if run.len() >= 40 {
            assert!(!shown.contains(run), "error shows {run:?}: {shown}");
        }
    }
}

#[test]
fn config_secret_inside_an_unknown_key_name_is_not_echoed() {
    let text = include_str!("../fuzz/regressions/config/secret-inside-unknown-key.toml");
    let shown = config_error(text);
    assert!(shown.contains("unknown field"), "{shown}");
    assert_no_long_run_of(text, &shown);
}

// The same with backticks inside the key name (they end serde's quoting early).
#[test]
fn config_backtick_inside_an_unknown_key_name_is_not_echoed() {
    let text = include_str!("../fuzz/regressions/config/backtick-inside-unknown-key.toml");
    let shown = config_error(text);
    assert_no_long_run_of(text, &shown);
}

// fuzz target `config`: a key id holding text that looks like a secret
// assignment was printed back by `Config`'s Debug; ids are now plain tokens.
#[test]
fn config_key_id_must_be_a_plain_token() {
    let text = include_str!("../fuzz/regressions/config/secret-text-inside-key-id.toml");
    let shown = config_error(text);
    assert!(shown.contains(".id"), "{shown}");
    assert_no_long_run_of(text, &shown);
}

// fuzz target `config`: an unknown `kind` holding a newline (a TOML
// multi-line string) made a two-line error; errors are always one line now.
#[test]
fn config_errors_are_one_line() {
    let text = include_str!("../fuzz/regressions/config/newline-in-unknown-kind.toml");
    let shown = config_error(text);
    assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown:?}");
}
