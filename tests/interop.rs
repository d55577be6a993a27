//! Interop with clients this team did not write: Python `websockets` with a
//! PyJWT-minted ticket (tests/interop/python_client.py), through the real
//! `nexor-relay serve` with TLS. The README's test command installs both
//! Python packages; without them this test skips with one line.

mod common;

use std::process::Command;

use common::*;

#[test]
fn python_websockets_with_pyjwt_ticket() {
    if skip_without(&["python"]) {
        return;
    }
    let ws_echo = Server::ws_echo(false);
    let tcp_echo = Server::tcp_echo();
    let relay = RelayBuilder::new(true)
        .upstream(
            "echo",
            &format!("kind = \"ws\"\nurl = \"ws://{}/\"", ws_echo.addr),
        )
        .upstream(
            "lab",
            &format!("kind = \"tcp\"\naddr = \"{}\"", tcp_echo.addr),
        )
        .start();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs().ca_pem).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/python_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(relay.url("/console"))
        .arg(KEY_B64)
        .arg(KEY_ID)
        .arg(&ca)
        .output()
        .expect("python3 runs (install: see the README's test command)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (needs `pip install websockets pyjwt`, done by scripts/test):\n{stdout}\n{stderr}\nrelay:\n{}",
        relay.logs()
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}
