//! The `proxmox` upstream end to end: the real relay → `pve-emu` (the
//! Proxmox emulator, docs/proxmox.md to the byte) → a real QEMU whose VNC
//! password the emulator sets over QMP, and QEMU's monitor as the
//! termproxy text backend. The test command builds `pve-emu` first and
//! installs QEMU; without either, each test skips with one line.

mod common;

use std::io::Write;
use std::thread;
use std::time::Duration;

use common::pve::{PveEmu, Qemu, TOKEN_ID, TOKEN_SECRET};
use common::*;
use nexor_relay::ticket::{Claims, Console, Guest};

fn relay_for(emu: &PveEmu, extra: &str) -> Relay {
    let r = RelayBuilder::new(true)
        .upstream(
            "pve",
            &format!(
                "kind = \"proxmox\"\napi = \"https://127.0.0.1:{}\"\ntoken_id = \"{TOKEN_ID}\"\ntoken_secret = \"{TOKEN_SECRET}\"\n\
fingerprint = \"{}\"\nconnect_timeout = \"3s\"\n{extra}",
                emu.addr.port(),
                emu.fingerprint
            ),
        )
        .start();
    r.add_secret(TOKEN_SECRET);
    r
}

fn vm_claims(console: Console, guest: Guest) -> Claims {
    let mut c = Relay::claims("pve", console);
    c.node = Some("pve1".into());
    c.vmid = Some(100);
    c.guest = Some(guest);
    c
}

/// A browser-side capture: every payload byte the relay sent after the 101.
struct Browser {
    conn: Conn,
    pending: Vec<u8>,
    data: Vec<u8>,
    seen: Vec<u8>,
}

impl Browser {
    fn open(relay: &Relay, claims: &Claims) -> Result<Browser, u16> {
        let t = relay.sign(claims);
        let proto = format!("Sec-WebSocket-Protocol: binary, nexor.ticket.{t}\r\n");
        let (status, head, conn, rest) = relay.raw(&relay.upgrade_request("/console", &proto));
        if status != 101 {
            return Err(status);
        }
        assert!(head.contains("Sec-WebSocket-Protocol: binary"), "{head}");
        Ok(Browser::from(conn, rest))
    }

    fn from(conn: Conn, rest: Vec<u8>) -> Browser {
        Browser {
            conn,
            seen: rest.clone(),
            pending: rest,
            data: Vec::new(),
        }
    }

    /// Reads payload until `n` bytes are buffered; returns them.
    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.data.len() < n {
            let f = read_frame(&mut self.conn, &mut self.pending).expect("frame from the relay");
            assert!(!f.masked);
            if f.opcode == 2 {
                self.seen.extend_from_slice(&f.payload);
                self.data.extend_from_slice(&f.payload);
            } else {
                assert_ne!(f.opcode, 8, "closed: {:?}", close_code(&f));
            }
        }
        self.data.drain(..n).collect()
    }

    /// Reads until `needle` shows up in the payload stream.
    fn until(&mut self, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            let b = self.take(1);
            text.push(b[0] as char);
        }
        text
    }

    fn send(&mut self, payload: &[u8]) {
        write_frame(&mut self.conn, true, 2, payload, true);
    }
}

/// The RFB conversation a noVNC client has through the relay: security
/// None from the relay, then QEMU's own ServerInit and an update.
fn rfb_session(b: &mut Browser, version: &[u8; 12]) -> (u16, u16, String) {
    let (w, h, name) = rfb_login(b, version);
    b.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]);
    let upd = b.take(4);
    assert_eq!(upd[0], 0, "FramebufferUpdate");
    (w, h, name)
}

/// The RFB login up to QEMU's ServerInit: width, height, desktop name.
fn rfb_login(b: &mut Browser, version: &[u8; 12]) -> (u16, u16, String) {
    assert_eq!(&b.take(12), b"RFB 003.008\n");
    b.send(version);
    if version == b"RFB 003.003\n" {
        assert_eq!(b.take(4), [0, 0, 0, 1], "3.3: security None");
    } else {
        assert_eq!(b.take(2), [1, 1], "one type: None");
        b.send(&[1]);
        if version == b"RFB 003.008\n" {
            assert_eq!(b.take(4), [0, 0, 0, 0]);
        }
    }
    b.send(&[0]); // ClientInit, shared = 0 (the relay forces 1)
    let init = b.take(24);
    let w = u16::from_be_bytes([init[0], init[1]]);
    let h = u16::from_be_bytes([init[2], init[3]]);
    let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let name = String::from_utf8(b.take(len)).unwrap();
    (w, h, name)
}

/// Reads one FramebufferUpdate of Raw rectangles (4 bytes a pixel) in a
/// `fb_w`×`fb_h` framebuffer and checks its structure exactly: every
/// rectangle Raw, inside the framebuffer, overlapping none before it, and
/// followed by exactly w×h×4 pixel bytes. A lost or extra byte anywhere
/// misaligns a later header and fails here (or in the next update).
/// Returns the pixels covered and the pixel bytes read.
fn read_raw_update(b: &mut Browser, fb_w: u16, fb_h: u16) -> (u64, u64) {
    let head = b.take(4);
    assert_eq!(head[0], 0, "FramebufferUpdate");
    let rects = u16::from_be_bytes([head[2], head[3]]);
    assert!(rects >= 1);
    let (fw, fh) = (usize::from(fb_w), usize::from(fb_h));
    let mut painted = vec![false; fw * fh];
    let (mut covered, mut bytes) = (0u64, 0u64);
    for i in 0..rects {
        let r = b.take(12);
        let be = |k: usize| usize::from(u16::from_be_bytes([r[k], r[k + 1]]));
        let (x, y, w, h) = (be(0), be(2), be(4), be(6));
        let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
        assert_eq!(enc, 0, "rectangle {i}: Raw only was asked for");
        assert!(
            x + w <= fw && y + h <= fh,
            "rectangle {i} {x},{y} {w}x{h} outside {fw}x{fh}"
        );
        for row in y..y + h {
            for p in &mut painted[row * fw + x..row * fw + x + w] {
                assert!(!*p, "rectangle {i} overlaps an earlier one");
                *p = true;
            }
        }
        let len = w * h * 4;
        assert_eq!(b.take(len).len(), len);
        covered += (w * h) as u64;
        bytes += len as u64;
    }
    (covered, bytes)
}

fn assert_no_proxmox_secret(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for s in [TOKEN_SECRET, TOKEN_ID, "PVEVNC", "PVEAPIToken", "vncticket"] {
        assert!(!text.contains(s), "the browser received {s}");
    }
}

#[test]
fn vnc_console_reaches_qemu_with_security_none_for_3_3_3_7_3_8() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-alpha").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = relay_for(&emu, "");
    for v in [b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n"] {
        let mut b = Browser::open(&relay, &vm_claims(Console::Vnc, Guest::Qemu)).unwrap();
        let (w, h, name) = rfb_session(&mut b, v);
        assert_eq!((w, h, name.as_str()), (640, 480, "QEMU (vm-alpha)"));
        assert_no_proxmox_secret(&b.seen);
    }
    let stats = emu.stats();
    assert_eq!(stats["vnc_passwords_set"], 3, "{stats}");
    assert_eq!(stats["non_binary_subprotocol"], false);
    assert_eq!(stats["violations"]["unmasked"], 0);
    assert_eq!(stats["token_ids"], serde_json::json!([TOKEN_ID]));
}

#[test]
fn old_response_format_and_port_as_string_work() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-old").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &["--format", "old", "--port-as-string"]).unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Vnc, Guest::Qemu)).unwrap();
    let (w, h, name) = rfb_session(&mut b, b"RFB 003.008\n");
    assert_eq!((w, h, name.as_str()), (640, 480, "QEMU (vm-old)"));
    // Old termproxy cannot log a token in: refused cleanly, not hung.
    assert_eq!(
        Browser::open(&relay, &vm_claims(Console::Term, Guest::Qemu)).err(),
        Some(502)
    );
    assert!(relay.wait_log("term_auth_failed"));
}

#[test]
fn terminal_round_trip_through_termproxy() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-term").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = relay_for(&emu, "");
    for guest in [Guest::Qemu, Guest::Lxc] {
        let mut b = Browser::open(&relay, &vm_claims(Console::Term, guest)).unwrap();
        // The relay logged in and swallowed `OK`: the first bytes are the monitor's.
        let banner = b.until("(qemu) ");
        assert!(banner.starts_with("QEMU "), "{banner:?}");
        // xterm.js's framing, one message per frame: resize, then a command.
        b.send(b"1:100:30:");
        let cmd = "info status\n";
        b.send(format!("0:{}:{cmd}", cmd.len()).as_bytes());
        let out = b.until("VM status: paused");
        assert!(out.contains("info status"), "{out:?}");
        assert_no_proxmox_secret(&b.seen);
    }
    let stats = emu.stats();
    assert_eq!(stats["desyncs"], 0, "{stats}");
    assert_eq!(stats["term_auth_ok"], 2);
    assert!(stats["resizes"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!([100, 30])));
}

#[test]
fn lxc_vnc_path() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("ct-101").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Vnc, Guest::Lxc)).unwrap();
    let (_, _, name) = rfb_session(&mut b, b"RFB 003.008\n");
    assert_eq!(name, "QEMU (ct-101)");
    assert_eq!(emu.stats()["posts"]["lxc_vncproxy"], 1);
}

#[test]
fn five_simultaneous_consoles_of_one_vm_all_log_in() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-busy").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = relay_for(&emu, "");
    let tickets: Vec<String> = (0..5)
        .map(|_| relay.sign(&vm_claims(Console::Vnc, Guest::Qemu)))
        .collect();
    let relay = &relay;
    thread::scope(|s| {
        let handles: Vec<_> = tickets
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let req = relay.upgrade_request(
                        &format!("/console?ticket={t}"),
                        "Sec-WebSocket-Protocol: binary\r\n",
                    );
                    let (status, _, conn, rest) = relay.raw(&req);
                    assert_eq!(status, 101);
                    rfb_session(&mut Browser::from(conn, rest), b"RFB 003.008\n")
                })
            })
            .collect();
        for h in handles {
            let (w, h2, name) = h.join().unwrap();
            assert_eq!((w, h2, name.as_str()), (640, 480, "QEMU (vm-busy)"));
        }
    });
    assert_eq!(emu.stats()["vnc_passwords_set"], 5);
}

#[test]
fn large_and_fragmented_browser_messages_are_recut_for_pveproxy() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-paste").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Term, Guest::Qemu)).unwrap();
    b.until("(qemu) ");
    // A 300 KiB message (pveproxy dies on > 128 KiB) and a fragmented one.
    b.send(&vec![b'2'; 300 * 1024]);
    let mut frag = frame_bytes(false, 2, b"2", true);
    frag.extend(frame_bytes(true, 0, b"2", true));
    b.conn.write_all(&frag).unwrap();
    // The session survives: the monitor still answers.
    let cmd = "info status\n";
    b.send(format!("0:{}:{cmd}", cmd.len()).as_bytes());
    b.until("VM status");
    let stats = emu.stats();
    for k in ["unmasked", "fin0", "rsv", "too_big", "bad_opcode"] {
        assert_eq!(stats["violations"][k], 0, "{k}: {stats}");
    }
    assert!(
        stats["max_payload_seen"].as_u64().unwrap() <= 128 * 1024,
        "{stats}"
    );
    assert!(stats["frames_received"].as_u64().unwrap() >= 5, "{stats}");
}

#[test]
fn every_proxmox_failure_maps_to_its_status() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-faults").unwrap();
    let claims = vm_claims(Console::Vnc, Guest::Qemu);
    let cases: &[(&[&str], u16, &str)] = &[
        (&["--fault", "api-500"], 502, "proxmox_api_5xx"),
        (&["--fault", "api-hang"], 504, "upstream_timeout"),
        (&["--fault", "expired-ticket"], 502, "proxmox_websocket_401"),
        (&["--fault", "foreign-ticket"], 502, "proxmox_websocket_401"),
        (&["--fault", "wrong-port"], 502, "proxmox_websocket_closed"),
    ];
    for (args, want, reason) in cases {
        let emu = PveEmu::with_qemu(&qemu, 100, args).unwrap();
        let relay = relay_for(&emu, "");
        assert_eq!(
            Browser::open(&relay, &claims).err(),
            Some(*want),
            "{args:?}"
        );
        assert!(relay.wait_log(reason), "{args:?}: {}", relay.logs());
    }
    // A token Proxmox does not know: 401 from the API → 502.
    let emu = PveEmu::start(&[
        "--token",
        "other@pve!x=00000000-0000-0000-0000-000000000000",
        "--auth-delay-ms",
        "300",
    ])
    .unwrap();
    let relay = relay_for(&emu, "");
    assert_eq!(Browser::open(&relay, &claims).err(), Some(502));
    assert!(relay.wait_log("proxmox_api_401"));
    // A certificate that is not the pinned one: 502 before any request.
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let pin = "00".repeat(32);
    let relay = RelayBuilder::new(false)
        .upstream(
            "pve",
            &format!(
                "kind = \"proxmox\"\napi = \"https://127.0.0.1:{}\"\ntoken_id = \"{TOKEN_ID}\"\ntoken_secret = \"{TOKEN_SECRET}\"\nfingerprint = \"{pin}\"",
                emu.addr.port()
            ),
        )
        .start();
    relay.add_secret(TOKEN_SECRET);
    assert_eq!(Browser::open(&relay, &claims).err(), Some(502));
    assert!(relay.wait_log("upstream_tls"));
    assert_eq!(emu.stats()["requests"], 0);
    // A ticket without the VM claims: refused, nothing asked of Proxmox.
    let relay = relay_for(&emu, "");
    let mut c = claims.clone();
    c.vmid = None;
    assert_eq!(Browser::open(&relay, &c).err(), Some(401));
    assert!(relay.wait_log("ticket_without_vm"));
}

#[test]
fn a_late_backend_window_is_met_and_mid_stream_close_ends_cleanly() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-late").unwrap();
    // The backend waits only 1 s for the websocket: the relay is well within it.
    let emu = PveEmu::with_qemu(&qemu, 100, &["--fault", "late-backend"]).unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Vnc, Guest::Qemu)).unwrap();
    assert_eq!(rfb_session(&mut b, b"RFB 003.008\n").2, "QEMU (vm-late)");
    // pveproxy ends a console by closing TCP: the browser gets a clean 1000.
    let emu = PveEmu::with_qemu(&qemu, 100, &["--fault", "mid-stream-close=40"]).unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Term, Guest::Qemu)).unwrap();
    let code = loop {
        match read_frame(&mut b.conn, &mut b.pending) {
            Ok(f) if f.opcode == 8 => break close_code(&f),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1000));
}

#[test]
fn a_first_full_update_over_a_megabyte_arrives_whole() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-big").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Vnc, Guest::Qemu)).unwrap();
    let (w, h, _) = rfb_login(&mut b, b"RFB 003.008\n");
    assert_eq!((w, h), (640, 480));
    // SetPixelFormat: 32 bpp, depth 24, little endian, true colour.
    b.send(&[
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ]);
    // SetEncodings: Raw only.
    b.send(&[2, 0, 0, 1, 0, 0, 0, 0]);
    let full = u64::from(w) * u64::from(h);
    // The first full update, then another: the second starts exactly where
    // the first ended, or its header does not parse.
    for round in 0..2 {
        let mut req = vec![3, 0, 0, 0, 0, 0];
        req.extend_from_slice(&w.to_be_bytes());
        req.extend_from_slice(&h.to_be_bytes());
        b.send(&req);
        let (covered, bytes) = read_raw_update(&mut b, w, h);
        assert_eq!(covered, full, "round {round}: the whole screen");
        assert_eq!(bytes, full * 4);
        assert!(bytes >= 1 << 20, "{bytes}");
        assert!(b.data.is_empty(), "round {round}: bytes after the update");
    }
    assert_no_proxmox_secret(&b.seen);
    let stats = emu.stats();
    // pveproxy's way: every read of the backend as 1–3 binary frames of
    // random sizes (at most 128 KiB each).
    let frames = stats["frames_sent"].as_u64().unwrap();
    assert!(frames >= 2 * 10, "{stats}");
    assert!(
        stats["bytes_to_client"].as_u64().unwrap() >= 2 * full * 4,
        "{stats}"
    );
    assert_eq!(stats["violations"]["unmasked"], 0);
}

/// pve-emu's `--fault burst=N` pattern (pve-emu/src/backend.rs `burst_byte`).
fn burst_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

#[test]
fn a_four_megabyte_burst_after_the_upgrade_arrives_byte_for_byte() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    const N: u64 = 4 << 20;
    let token = format!("{TOKEN_ID}={TOKEN_SECRET}");
    let burst = format!("burst={N}");
    let emu = PveEmu::start(&[
        "--token",
        &token,
        "--auth-delay-ms",
        "300",
        "--fault",
        &burst,
    ])
    .unwrap();
    let relay = relay_for(&emu, "");
    let mut b = Browser::open(&relay, &vm_claims(Console::Term, Guest::Qemu)).unwrap();
    // termproxy bursts 4 MiB right after its OK, while the browser reads
    // nothing, then reads slowly, then fast.
    thread::sleep(Duration::from_millis(500));
    let mut at = 0u64;
    while at < N {
        let n = if at < 512 * 1024 {
            thread::sleep(Duration::from_millis(2));
            4096
        } else {
            256 * 1024
        }
        .min(N - at);
        let got = b.take(n as usize);
        if let Some(k) = (0..n).find(|&k| got[k as usize] != burst_byte(at + k)) {
            panic!("byte {} of the burst differs", at + k);
        }
        at += n;
    }
    assert!(b.data.is_empty());
    // The session goes on: the echo "PTY" answers.
    let msg = "after the burst";
    b.send(format!("0:{}:{msg}", msg.len()).as_bytes());
    assert_eq!(b.take(msg.len()), msg.as_bytes());
    let stats = emu.stats();
    assert_eq!(stats["burst_bytes"], N, "{stats}");
    assert_eq!(stats["desyncs"], 0, "{stats}");
    // "OK" (swallowed by the relay), the burst, the echo: in many frames.
    assert_eq!(
        stats["bytes_to_client"],
        2 + N + msg.len() as u64,
        "{stats}"
    );
    assert!(stats["frames_sent"].as_u64().unwrap() >= 32, "{stats}");
    assert!(relay.logs().contains("session_start"));
}
