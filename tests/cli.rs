//! The command line: `check-config`, `ticket mint`, `ticket inspect`, and
//! `demo` as a person runs them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use tungstenite::Message;

fn relay_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nexor-relay"))
}

/// The shipped example's key line, commented out: no key ships.
const KEY_LINE: &str = "  # { id = \"k1\", secret = \"<base64 of 32 random bytes>\" },";

fn shipped_example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/relay.toml")).unwrap()
}

/// 32 random bytes in base64, as `openssl rand -base64 32` makes them.
fn random_secret() -> String {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The shipped example with its key line filled in as the operator does,
/// next to the certificate files it names; and the secret.
fn example_dir() -> tempfile::TempDir {
    example_dir_with_key().0
}

fn example_dir_with_key() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let secret = random_secret();
    let text = shipped_example();
    assert!(text.contains(KEY_LINE));
    let text = text.replacen(
        KEY_LINE,
        &format!("  {{ id = \"k1\", secret = \"{secret}\" }},"),
        1,
    );
    std::fs::write(dir.path().join("relay.toml"), text).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &certs().leaf_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &certs().key_pem).unwrap();
    (dir, secret)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = relay_cmd().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let (dir, secret) = example_dir_with_key();
    let cfg = dir.path().join("relay.toml");
    let (code, out, err) = run(&["check-config", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("config ok") && out.contains("wss") && out.contains("any, demo, lab"),
        "{out}"
    );
    // No secret in what check-config prints.
    assert!(!out.contains(&secret[..12]) && !err.contains(&secret[..12]));
}

#[test]
fn no_well_known_key_can_sign_tickets() {
    // As shipped: no key, and the error says how to make one.
    let (dir, _) = example_dir_with_key();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, shipped_example()).unwrap();
    let (code, _, err) = run(&["check-config", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tickets.keys") && err.contains("openssl rand -base64 32"),
        "{err}"
    );
    // Every sample an operator could copy: refused by `serve`, `check-config`
    // and `ticket mint`, naming the key and its line, never showing the secret.
    for sample in [
        // The bytes 0..31: the old README and config example.
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKT",
    ] {
        let text = shipped_example().replacen(
            KEY_LINE,
            &format!("  {{ id = \"portal-7\", secret = \"{sample}\" }},"),
            1,
        );
        // The line the sample is on: the error points there.
        let line = 1 + text[..text.find(sample).unwrap()].matches('\n').count();
        std::fs::write(&cfg, text).unwrap();
        let c = cfg.to_str().unwrap();
        for args in [
            &["check-config", "-c", c][..],
            &["serve", "-c", c][..],
            &["ticket", "mint", "-c", c, "--upstream", "lab"][..],
        ] {
            let (code, out, err) = run(args);
            assert_eq!(code, 2, "{args:?}: {out}{err}");
            assert!(
                err.contains("tickets.keys[0].secret")
                    && err.contains("published sample")
                    && err.contains(&format!("line {line}, column ")),
                "{args:?}: {err}"
            );
            assert!(!err.contains(&sample[..12]) && !out.contains(&sample[..12]));
        }
    }
}

#[test]
fn check_config_errors_name_the_key() {
    let (dir, secret) = example_dir_with_key();
    let cfg = dir.path().join("relay.toml");
    let base = std::fs::read_to_string(&cfg).unwrap();
    for (from, to, key) in [
        (
            "addr = \"127.0.0.1:5901\"",
            "addr = \"127.0.0.1\"",
            "upstreams.lab.addr",
        ),
        ("max_ttl = \"120s\"", "max_ttl = \"120\"", "tickets.max_ttl"),
        (
            "max_frame = \"1MiB\"",
            "max_frame = \"1 MB\"",
            "limits.max_frame",
        ),
        (
            "tls_key = \"key.pem\"",
            "tls_key = \"missing.pem\"",
            "server.tls_key",
        ),
        ("path = \"/console\"", "pathh = \"/console\"", "pathh"),
        ("kind = \"ws\"", "kind = \"wss\"", "upstreams.any.kind"),
    ] {
        assert!(base.contains(from), "{from}");
        std::fs::write(&cfg, base.replacen(from, to, 1)).unwrap();
        let (code, _, err) = run(&["check-config", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{to}");
        assert!(err.contains(key), "{to}: {err}");
        assert!(!err.contains(&secret[..12]), "{err}");
    }
}

#[test]
fn ticket_mint_then_inspect() {
    let dir = example_dir();
    let cfg = dir.path().join("relay.toml");
    let cfg = cfg.to_str().unwrap();
    let (code, token, err) = run(&[
        "ticket",
        "mint",
        "-c",
        cfg,
        "--upstream",
        "lab",
        "--console",
        "term",
        "--sub",
        "cust-7",
        "--ttl",
        "90s",
        "--vmid",
        "101",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3);
    let (code, out, _) = run(&["ticket", "inspect", "-c", cfg, token]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"sub\": \"cust-7\"")
            && out.contains("\"vmid\": 101")
            && out.trim_end().ends_with("valid"),
        "{out}"
    );
    // Without a config: decoded, signature not checked.
    let (code, out, _) = run(&["ticket", "inspect", token]);
    assert_eq!(code, 0);
    assert!(out.contains("not checked"), "{out}");
    // Tampered: refused with its reason and status.
    // Tampered inside the signature (not its last char, whose low bits are
    // padding): refused as a bad signature.
    let mut bad = token.as_bytes().to_vec();
    let i = bad.len() - 5;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let (code, out, _) = run(&["ticket", "inspect", "-c", cfg, &bad]);
    assert_eq!(code, 1);
    assert!(
        out.contains("bad_signature") && out.contains("401"),
        "{out}"
    );
    // A lifetime over max_ttl is refused at mint time, not handed out.
    let (code, _, err) = run(&[
        "ticket",
        "mint",
        "-c",
        cfg,
        "--upstream",
        "lab",
        "--ttl",
        "10m",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("max_ttl") || err.contains("lifetime") || err.contains("ttl"),
        "{err}"
    );
    let (code, _, err) = run(&["ticket", "mint", "-c", cfg, "--upstream", "nowhere"]);
    assert_eq!(code, 2);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn demo_prints_working_console_urls() {
    let mut child = relay_cmd()
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut text = String::new();
    while !text.contains("stop with") {
        text.push_str(&lines.next().unwrap().unwrap());
        text.push('\n');
    }
    let url_after = |label: &str| -> String {
        let i = text.find(label).unwrap();
        text[i..].lines().nth(1).unwrap().trim().to_string()
    };
    let term = url_after("terminal (line echo)");
    let vnc = url_after("VNC console");
    let fp_line = text.lines().find(|l| l.contains("SHA-256")).unwrap();
    let fp = nexor_relay::config::parse_fingerprint(fp_line.rsplit(' ').next().unwrap()).unwrap();
    let tls =
        nexor_relay::tls::client_config(&nexor_relay::config::Trust::Fingerprint(fp)).unwrap();
    let open = |url: &str| {
        let port: u16 = url
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&tls), name).unwrap();
        let s = rustls::StreamOwned::new(conn, tcp);
        tungstenite::client::client(url, s)
            .map_err(|e| e.to_string())
            .unwrap()
            .0
    };
    let mut ws = open(&term);
    ws.send(Message::binary(b"hi\r".to_vec())).unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("you typed: hi") {
        if let Message::Binary(b) = ws.read().unwrap() {
            got.extend_from_slice(&b);
        }
    }
    let mut ws = open(&vnc);
    match ws.read().unwrap() {
        Message::Binary(b) => assert_eq!(&b[..], b"RFB 003.008\n"),
        other => panic!("{other:?}"),
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(Path::new(env!("CARGO_BIN_EXE_nexor-relay")).exists());
}

#[test]
fn fingerprint_prints_the_leaf_sha256_to_pin() {
    let tls_server = Server::ws_echo(true);
    let url = format!("https://127.0.0.1:{}", tls_server.addr.port());
    let (code, out, err) = run(&["fingerprint", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), leaf_fingerprint());
    let (code, _, err) = run(&[
        "fingerprint",
        &format!("https://127.0.0.1:{}", refused_addr().port()),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("127.0.0.1"), "{err}");
}
