//! View-only tickets with stock noVNC 1.7 in headless Chromium (tests/browser.rs
//! has the setup): a real QEMU whose VNC screen is its monitor, so every key
//! that reaches QEMU shows on its screendump. noVNC itself is not told to be
//! view-only: it clicks and types as usual, and the relay drops the input.
//!
//! Needs `bash tests/browser/install.sh`; a test whose tools are missing skips
//! with one line (tests/common/mod.rs `skip_without`).

mod common;
#[path = "browser/support.rs"]
mod support;

use std::time::{Duration, Instant};

use common::*;
use nexor_relay::ticket::{Console, Mode};
use support::*;

const CONNECT: Duration = Duration::from_secs(20);

/// Waits until the page's noVNC shows QEMU's screen (the monitor's text).
fn wait_screen(b: &mut Browser, page: &str) {
    b.wait_event(page, "connect", CONNECT);
    let t = Instant::now();
    while b.canvas(page).non_uniform() < 500 {
        assert!(t.elapsed() < CONNECT, "page {page}: the canvas stays blank");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session_end audit lines carrying `mode`.
fn ends(relay: &Relay, mode: &str) -> usize {
    relay
        .logs()
        .lines()
        .filter(|l| l.contains("\"event\":\"session_end\""))
        .filter(|l| l.contains(&format!("\"mode\":\"{mode}\"")))
        .count()
}

#[test]
fn novnc_view_only_typing_and_clicking_never_reach_qemu() {
    if skip_without(&["chromium", "novnc", "qemu"]) {
        return;
    }
    let qemu = QemuVnc::start_text("nexor-viewonly");
    let relay = RelayBuilder::new(true)
        .server(&page_config())
        .upstream("qemu", &format!("kind = \"tcp\"\naddr = \"{}\"", qemu.vnc))
        .start();
    let base = format!("https://localhost:{}", relay.addr.port());
    let mut b = Browser::start("viewonly");

    let mut claims = Relay::claims("qemu", Console::Vnc);
    claims.mode = Mode::View;
    b.open(
        "view",
        &console_url(&base, "vnc", &relay.sign(&claims), false),
    );
    wait_screen(&mut b, "view");
    let (w, h, before) = qemu.screendump();
    assert_eq!((w, h), (640, 480));
    b.vnc_type("view", "info status");
    b.vnc_type("view", "info name");
    // Closing the page sends the close frame after every key: once the
    // relay logged the session's end, it has seen (and dropped) them all.
    b.close("view");
    let t = Instant::now();
    while ends(&relay, "view") == 0 {
        assert!(t.elapsed() < CONNECT, "no session_end: {}", relay.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, _, after) = qemu.screendump();
    let changed = pixels_differing(&before, &after);
    assert!(
        changed <= 256,
        "view-only typing changed {changed} pixels of QEMU's screen"
    );
    let start = relay
        .logs()
        .lines()
        .find(|l| l.contains("\"event\":\"session_start\""))
        .unwrap_or_default()
        .to_string();
    assert!(start.contains("\"mode\":\"view\""), "{start}");

    // The same typing in a control session reaches QEMU's monitor.
    let t = relay.sign(&Relay::claims("qemu", Console::Vnc));
    b.open("control", &console_url(&base, "vnc", &t, false));
    wait_screen(&mut b, "control");
    b.vnc_type("control", "info status");
    let t = Instant::now();
    loop {
        let (_, _, now) = qemu.screendump();
        if pixels_differing(&before, &now) > 512 {
            break;
        }
        assert!(
            t.elapsed() < CONNECT,
            "a control session's typing never reached QEMU"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And noVNC shows what QEMU shows.
    let t = Instant::now();
    loop {
        let (_, _, rgb) = qemu.screendump();
        if b.canvas("control").equal_fraction(&rgb) > 0.99 {
            break;
        }
        assert!(
            t.elapsed() < CONNECT,
            "the canvas never matched QEMU's screen"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b.shot("control", &artifacts().join("viewonly-control.png"), true);
}
