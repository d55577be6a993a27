//! View-only tickets end to end (`"mode": "view"`, src/relay/viewonly.rs):
//! the real relay in front of an echo console (what it forwards comes
//! back, so the test sees exactly what the upstream got), the Proxmox
//! emulator's termproxy, and a real QEMU whose screen shows every key that
//! reaches it (its monitor as the VNC screen). Run on both drivers:
//! io_uring by default, epoll with `MONOIO_FORCE_LEGACY_DRIVER=1`.

mod common;
#[path = "browser/support.rs"]
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::pve::{PveEmu, Qemu, TOKEN_ID, TOKEN_SECRET};
use common::*;
use nexor_relay::ticket::{Claims, Console, Guest, Mode};

/// A raw WebSocket client: frames out, binary payloads in.
struct Ws {
    conn: Conn,
    pending: Vec<u8>,
    data: Vec<u8>,
}

impl Ws {
    fn open(relay: &Relay, claims: &Claims) -> Result<Ws, u16> {
        let t = relay.sign(claims);
        let proto = format!("Sec-WebSocket-Protocol: binary, nexor.ticket.{t}\r\n");
        let (status, _, conn, rest) = relay.raw(&relay.upgrade_request("/console", &proto));
        if status != 101 {
            return Err(status);
        }
        Ok(Ws {
            conn,
            pending: rest,
            data: Vec::new(),
        })
    }

    fn send(&mut self, payload: &[u8]) {
        write_frame(&mut self.conn, true, 2, payload, true);
    }

    /// Sends `stream` in frames of the sizes `cut` gives, in turn.
    fn send_cut(&mut self, stream: &[u8], cut: &mut impl FnMut() -> usize) {
        let mut wire = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = cut().clamp(1, stream.len() - at);
            wire.extend_from_slice(&frame_bytes(true, 2, &stream[at..at + n], true));
            at += n;
        }
        use std::io::Write;
        self.conn.write_all(&wire).unwrap();
        self.conn.flush().unwrap();
    }

    /// The next frame that is not a ping or pong.
    fn frame(&mut self) -> Frame {
        loop {
            let f = read_frame(&mut self.conn, &mut self.pending).expect("frame from the relay");
            if f.opcode != 9 && f.opcode != 10 {
                return f;
            }
        }
    }

    /// `n` payload bytes; panics on a close.
    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.data.len() < n {
            let f = self.frame();
            assert_ne!(f.opcode, 8, "closed: {:?}", close_code(&f));
            self.data.extend_from_slice(&f.payload);
        }
        self.data.drain(..n).collect()
    }

    /// Reads until a close frame: its code and reason.
    fn closed(&mut self) -> (u16, String) {
        loop {
            let f = self.frame();
            if f.opcode == 8 {
                let reason = String::from_utf8_lossy(&f.payload[2..]).into_owned();
                return (close_code(&f).unwrap_or(1005), reason);
            }
        }
    }
}

fn view(upstream: &str, console: Console) -> Claims {
    let mut c = Relay::claims(upstream, console);
    c.mode = Mode::View;
    c
}

/// The audit lines of `event` whose fields include `with`.
fn audit(relay: &Relay, event: &str, with: &[&str]) -> Vec<String> {
    relay
        .logs()
        .lines()
        .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

fn wait_audit(relay: &Relay, event: &str, with: &[&str]) -> String {
    let t = Instant::now();
    loop {
        if let Some(l) = audit(relay, event, with).pop() {
            return l;
        }
        assert!(
            t.elapsed() < IO_TIMEOUT,
            "no {event} with {with:?}: {}",
            relay.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- RFB as noVNC sends it ----------------------------------------------------------

const FBUR: [u8; 10] = [3, 1, 0, 0, 0, 0, 2, 128, 1, 224];

fn key(down: u8, keysym: u32) -> Vec<u8> {
    let mut m = vec![4, down, 0, 0];
    m.extend_from_slice(&keysym.to_be_bytes());
    m
}

fn qemu_key(down: u8, keysym: u32, keycode: u32) -> Vec<u8> {
    let mut m = vec![255, 0, 0, down];
    m.extend_from_slice(&keysym.to_be_bytes());
    m.extend_from_slice(&keycode.to_be_bytes());
    m
}

fn set_encodings(n: u16) -> Vec<u8> {
    let mut m = vec![2, 0];
    m.extend_from_slice(&n.to_be_bytes());
    for i in 0..n {
        // Raw, CopyRect, then pseudo-encodings QEMU ignores.
        let e: i32 = match i {
            0 => 0,
            1 => 1,
            _ => -1000 - i32::from(i),
        };
        m.extend_from_slice(&e.to_be_bytes());
    }
    m
}

/// Typing `text` as KeyEvents and QEMU extended key events, a click, a
/// paste and a screen resize: all input.
fn input(text: &str) -> Vec<u8> {
    let mut m = typing(text);
    m.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 5]);
    m.extend_from_slice(b"hello");
    m.extend_from_slice(&[
        251, 0, 3, 32, 2, 88, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 32, 2, 88, 0, 0, 0, 0,
    ]);
    m
}

/// Typing `text` (KeyEvents and QEMU extended key events) and a click.
fn typing(text: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for (i, c) in text.chars().enumerate() {
        let sym = if c == '\r' { 0xff0d } else { c as u32 };
        if i % 2 == 0 {
            m.extend_from_slice(&key(1, sym));
            m.extend_from_slice(&key(0, sym));
        } else {
            m.extend_from_slice(&qemu_key(1, sym, 0));
            m.extend_from_slice(&qemu_key(0, sym, 0));
        }
    }
    m.extend_from_slice(&[5, 1, 0, 100, 0, 100, 5, 0, 0, 100, 0, 100]);
    m
}

#[test]
fn the_mode_claim_is_control_or_view_and_nothing_else() {
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(false)
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start();
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY_B64)
        .unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let status = |mode: Option<&str>| {
        let n = now();
        let mode = mode.map_or(String::new(), |m| format!(",\"mode\":{m}"));
        let payload = format!(
            "{{\"exp\":{},\"iat\":{n},\"jti\":\"v-{:016x}\",\"sub\":\"s\",\"upstream\":\"t\",\"console\":\"vnc\"{mode}}}",
            n + 60,
            rand_u64()
        );
        let header = format!("{{\"alg\":\"HS256\",\"kid\":\"{KEY_ID}\"}}");
        let signing = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let t = format!(
            "{signing}.{}",
            b64(ring::hmac::sign(&k, signing.as_bytes()).as_ref())
        );
        let req = relay.upgrade_request(&format!("/console?ticket={t}"), "");
        relay.raw(&req).0
    };
    assert_eq!(status(None), 101);
    assert_eq!(status(Some("\"control\"")), 101);
    assert_eq!(status(Some("\"view\"")), 101);
    for bad in [
        "\"VIEW\"",
        "\"admin\"",
        "\"\"",
        "null",
        "1",
        "true",
        "[\"view\"]",
    ] {
        assert_eq!(status(Some(bad)), 401, "mode {bad}");
    }
    assert!(relay.wait_log("\"reason\":\"bad_claim\""));
    // Minted claims carry it (and only when it is not the default).
    let t = relay.sign(&view("t", Console::Vnc));
    let (_, payload) = nexor_relay::ticket::decode_unverified(&t).unwrap();
    assert_eq!(payload["mode"], "view");
    let t = relay.sign(&Relay::claims("t", Console::Vnc));
    let (_, payload) = nexor_relay::ticket::decode_unverified(&t).unwrap();
    assert!(payload.get("mode").is_none(), "{payload}");
}

/// A view-only VNC console over `tcp` (the browser's own RFB handshake
/// passes through): what reaches the console, cut at every byte.
#[test]
fn view_only_vnc_over_tcp_forwards_only_viewer_messages() {
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(true)
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start();
    let handshake = [&b"RFB 003.008\n"[..], &[1], &[0]].concat();
    let viewer = [
        vec![
            0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ],
        set_encodings(5),
        FBUR.to_vec(),
        vec![150, 1, 0, 0, 0, 0, 2, 128, 1, 224],
        vec![248, 0, 0, 0, 0, 0, 0, 3, 2, 0xab, 0xcd],
    ];
    let mut stream = handshake.clone();
    let mut expected = [&b"RFB 003.008\n"[..], &[1], &[1]].concat(); // shared forced
    for m in &viewer {
        stream.extend_from_slice(&input("ls\r"));
        stream.extend_from_slice(m);
        expected.extend_from_slice(m);
    }
    stream.extend_from_slice(&input("x"));
    for frame_size in [1usize, 2, 3, 5, 7, 64, 1000] {
        let mut ws = Ws::open(&relay, &view("t", Console::Vnc)).unwrap();
        ws.send_cut(&stream, &mut || frame_size);
        // The echo console sends back exactly what it received.
        assert_eq!(ws.take(expected.len()), expected, "frames of {frame_size}");
        // A marker after the dropped tail: nothing else came back before it.
        ws.send(&FBUR);
        assert_eq!(ws.take(10), FBUR);
    }
    // The largest SetEncodings there is (65535 encodings, 256 KiB) in
    // frames that cut its entries anywhere: streamed through whole.
    let mut ws = Ws::open(&relay, &view("t", Console::Vnc)).unwrap();
    ws.send(&handshake);
    assert_eq!(ws.take(14), [&b"RFB 003.008\n"[..], &[1], &[1]].concat());
    let huge = set_encodings(u16::MAX);
    ws.send_cut(&huge, &mut || 4093);
    assert_eq!(ws.take(huge.len()), huge);
    // A type noVNC never sends, whose length the relay cannot know: 1008.
    ws.send(&FBUR);
    assert_eq!(ws.take(10), FBUR);
    ws.send(&[8, 1, 0, 0]);
    assert_eq!(ws.closed(), (1008, "view_only_violation".to_string()));
    let end = wait_audit(
        &relay,
        "session_end",
        &["\"reason\":\"view_only_violation\""],
    );
    assert!(end.contains("\"code\":1008"), "{end}");
    assert!(end.contains("\"mode\":\"view\""), "{end}");
    assert!(
        end.contains("unknown RFB message type 8"),
        "the audit says why: {end}"
    );
    assert_eq!(
        audit(&relay, "session_start", &["\"mode\":\"view\""]).len(),
        8
    );
}

/// A control session of the same console gets everything, unchanged.
#[test]
fn control_sessions_are_not_filtered() {
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(false)
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start();
    let stream = [
        &b"RFB 003.008\n"[..],
        &[1],
        &[0],
        &input("ls\r"),
        &[8, 1, 0, 0],
    ]
    .concat();
    let mut ws = Ws::open(&relay, &Relay::claims("t", Console::Vnc)).unwrap();
    ws.send_cut(&stream, &mut || 3);
    assert_eq!(ws.take(stream.len()), stream);
    let start = wait_audit(&relay, "session_start", &[]);
    assert!(start.contains("\"mode\":\"control\""), "{start}");
}

/// A `ws` upstream (frames mode): what passes goes out re-framed, as whole
/// masked binary frames the upstream's own WebSocket stack accepts.
#[test]
fn view_only_vnc_over_a_websocket_upstream() {
    let echo = Server::ws_echo(false);
    let relay = RelayBuilder::new(false)
        .upstream(
            "w",
            &format!("kind = \"ws\"\nurl = \"ws://{}/\"", echo.addr),
        )
        .start();
    let stream = [
        &b"RFB 003.008\n"[..],
        &[1],
        &[0],
        &input("reboot\r"),
        &FBUR,
        &input("y"),
        &FBUR,
    ]
    .concat();
    let expected = [&b"RFB 003.008\n"[..], &[1], &[1], &FBUR, &FBUR].concat();
    for size in [1usize, 4, 9, 100] {
        let mut ws = Ws::open(&relay, &view("w", Console::Vnc)).unwrap();
        ws.send_cut(&stream, &mut || size);
        assert_eq!(ws.take(expected.len()), expected, "frames of {size}");
    }
}

/// Raw terminals (`tcp`, `demo`): every byte is input, nothing passes.
#[test]
fn view_only_raw_terminals_pass_nothing() {
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(false)
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .upstream("demo", "kind = \"demo\"")
        .start();
    let mut ws = Ws::open(&relay, &view("t", Console::Term)).unwrap();
    ws.send(b"rm -rf /\r");
    ws.send(b"\x03");
    write_frame(&mut ws.conn, true, 8, &1000u16.to_be_bytes(), true);
    assert_eq!(ws.closed().0, 1000);
    let end = wait_audit(&relay, "session_end", &["\"console\":\"term\""]);
    assert!(end.contains("\"bytes_up\":0"), "{end}");
    assert!(end.contains("\"mode\":\"view\""), "{end}");
    // The demo shell prints its prompt, and never sees a line.
    let mut ws = Ws::open(&relay, &view("demo", Console::Term)).unwrap();
    let mut text = Vec::new();
    while !text.ends_with(b"$ ") {
        text.extend_from_slice(&ws.take(1));
    }
    ws.send(b"hello\r");
    ws.send(b"exit\r");
    write_frame(&mut ws.conn, true, 8, &1000u16.to_be_bytes(), true);
    let mut rest = Vec::new();
    loop {
        let f = ws.frame();
        if f.opcode == 8 {
            break;
        }
        rest.extend_from_slice(&f.payload);
    }
    assert!(rest.is_empty(), "the demo answered: {rest:?}");
}

/// The demo VNC console: the browser's own handshake, input dropped,
/// updates still come, an unknown type ends it.
#[test]
fn view_only_demo_vnc() {
    let relay = RelayBuilder::new(false)
        .upstream("demo", "kind = \"demo\"")
        .start();
    let mut ws = Ws::open(&relay, &view("demo", Console::Vnc)).unwrap();
    assert_eq!(ws.take(12), b"RFB 003.008\n");
    ws.send(b"RFB 003.008\n");
    assert_eq!(ws.take(2), [1, 1]);
    ws.send(&[1]);
    assert_eq!(ws.take(4), [0, 0, 0, 0]);
    ws.send(&[&[0u8][..], &input("q"), &[3, 0, 0, 0, 0, 0, 0, 4, 0, 4]].concat());
    let init = ws.take(24);
    let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    ws.take(len);
    // The demo refuses SetDesktopSize and QEMU messages: had they passed,
    // it would have closed; a 4x4 update comes instead.
    assert_eq!(ws.take(4), [0, 0, 0, 1]);
    ws.take(12 + 4 * 4 * 4);
    ws.send(&[9]);
    assert_eq!(
        ws.closed_after_data(),
        (1008, "view_only_violation".to_string())
    );
}

// ---- Proxmox: termproxy and VNC through the emulator --------------------------------

fn pve_relay(emu: &PveEmu) -> Relay {
    let r = RelayBuilder::new(true)
        .upstream(
            "pve",
            &format!(
                "kind = \"proxmox\"\napi = \"https://127.0.0.1:{}\"\ntoken_id = \"{TOKEN_ID}\"\ntoken_secret = \"{TOKEN_SECRET}\"\n\
fingerprint = \"{}\"\nconnect_timeout = \"3s\"",
                emu.addr.port(),
                emu.fingerprint
            ),
        )
        .start();
    r.add_secret(TOKEN_SECRET);
    r
}

fn vm(console: Console, mode: Mode) -> Claims {
    let mut c = Relay::claims("pve", console);
    c.node = Some("pve1".into());
    c.vmid = Some(100);
    c.guest = Some(Guest::Qemu);
    c.mode = mode;
    c
}

fn until(ws: &mut Ws, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        text.push(ws.take(1)[0] as char);
    }
    text
}

fn wait_resize(emu: &PveEmu, cols: u64, rows: u64) {
    let t = Instant::now();
    while !emu.stats()["resizes"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!([cols, rows]))
    {
        assert!(t.elapsed() < IO_TIMEOUT, "no resize {cols}x{rows}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn view_only_termproxy_gets_no_input_but_resizes() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-view-term").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = pve_relay(&emu);
    let mut ws = Ws::open(&relay, &vm(Console::Term, Mode::View)).unwrap();
    until(&mut ws, "(qemu) ");
    ws.send(b"1:100:30:");
    let cmd = "info status\n";
    ws.send(format!("0:{}:{cmd}", cmd.len()).as_bytes());
    ws.send(b"2");
    // Input and a resize in one frame, and a resize cut over frames.
    ws.send(format!("0:{}:{cmd}1:101:31:", cmd.len()).as_bytes());
    ws.send(b"1:102");
    ws.send(b":32:");
    // Resizes after the input arrived, so the input would have too.
    wait_resize(&emu, 100, 30);
    wait_resize(&emu, 101, 31);
    wait_resize(&emu, 102, 32);
    let stats = emu.stats();
    assert_eq!(stats["term_bytes_to_pty"], 0, "{stats}");
    assert_eq!(stats["desyncs"], 0, "{stats}");
    // Garbage where a message starts: 1008.
    ws.send(b"x");
    assert_eq!(ws.closed(), (1008, "view_only_violation".to_string()));

    // A control session's input reaches the console.
    let mut ws = Ws::open(&relay, &vm(Console::Term, Mode::Control)).unwrap();
    until(&mut ws, "(qemu) ");
    ws.send(format!("0:{}:{cmd}", cmd.len()).as_bytes());
    until(&mut ws, "VM status: paused");
    assert!(emu.stats()["term_bytes_to_pty"].as_u64().unwrap() >= cmd.len() as u64);
    let view_start = wait_audit(&relay, "session_start", &["\"mode\":\"view\""]);
    assert!(view_start.contains("\"console\":\"term\""), "{view_start}");
    wait_audit(&relay, "session_start", &["\"mode\":\"control\""]);
    wait_audit(
        &relay,
        "session_end",
        &["\"mode\":\"view\"", "\"reason\":\"view_only_violation\""],
    );
}

#[test]
fn view_only_proxmox_vnc_sees_the_screen_and_sends_no_input() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-view-vnc").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    let relay = pve_relay(&emu);
    let mut ws = Ws::open(&relay, &view_vm_vnc()).unwrap();
    // The relay is the browser's RFB server up to ClientInit.
    assert_eq!(ws.take(12), b"RFB 003.008\n");
    ws.send(b"RFB 003.008\n");
    assert_eq!(ws.take(2), [1, 1]);
    ws.send(&[1]);
    assert_eq!(ws.take(4), [0, 0, 0, 0]);
    // ClientInit with input right behind it in the same frame.
    ws.send(&[&[0u8][..], &input("q"), &FBUR].concat());
    let init = ws.take(24);
    let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    assert_eq!(ws.take(len), b"QEMU (vm-view-vnc)");
    assert_eq!(ws.take(1), [0], "a FramebufferUpdate");
    ws.send(&[2, 0, 0, 1, 0, 0, 0, 0, 8, 0, 0]); // an unknown type after a message
    assert_eq!(
        ws.closed_after_data(),
        (1008, "view_only_violation".to_string())
    );
    wait_audit(
        &relay,
        "session_end",
        &["\"mode\":\"view\"", "\"reason\":\"view_only_violation\""],
    );

    // An unknown type in ClientInit's own frame, still inside the relay's
    // RFB preamble: 1008 as well, and the refusal is audited.
    let mut ws = Ws::open(&relay, &view_vm_vnc()).unwrap();
    assert_eq!(ws.take(12), b"RFB 003.008\n");
    ws.send(b"RFB 003.008\n");
    assert_eq!(ws.take(2), [1, 1]);
    ws.send(&[1]);
    assert_eq!(ws.take(4), [0, 0, 0, 0]);
    ws.send(&[0, 253, 0, 0, 0]);
    assert_eq!(ws.closed(), (1008, "view_only_violation".to_string()));
    wait_audit(&relay, "refused", &["\"reason\":\"view_only_violation\""]);
}

fn view_vm_vnc() -> Claims {
    vm(Console::Vnc, Mode::View)
}

impl Ws {
    /// Reads (and drops) data until a close frame.
    fn closed_after_data(&mut self) -> (u16, String) {
        self.data.clear();
        self.closed()
    }
}

// ---- a real QEMU, its screen the monitor ---------------------------------------------

/// An RFB session over the relay up to ServerInit (security None).
fn rfb_login(ws: &mut Ws) {
    assert_eq!(ws.take(12), b"RFB 003.008\n");
    ws.send(b"RFB 003.008\n");
    let n = ws.take(1)[0] as usize;
    assert!(ws.take(n).contains(&1), "QEMU offers None");
    ws.send(&[1]);
    assert_eq!(ws.take(4), [0, 0, 0, 0]);
    ws.send(&[0]); // shared-flag 0: the relay forces 1 in view mode
    let init = ws.take(24);
    let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    ws.take(len);
}

/// Asks for the whole screen (non-incremental: QEMU answers at once) and
/// reads the FramebufferUpdate whole (Raw, 4 bytes a pixel): once it is
/// here, QEMU has handled every byte sent before the request.
fn one_update(ws: &mut Ws) {
    ws.send(&[3, 0, 0, 0, 0, 0, 2, 128, 1, 224]);
    let h = ws.take(4);
    assert_eq!(h[0], 0, "FramebufferUpdate");
    for _ in 0..u16::from_be_bytes([h[2], h[3]]) {
        let r = ws.take(12);
        let w = u16::from_be_bytes([r[4], r[5]]) as usize;
        let hh = u16::from_be_bytes([r[6], r[7]]) as usize;
        assert_eq!(r[8..12], [0, 0, 0, 0], "Raw");
        ws.take(w * hh * 4);
    }
}

/// A direct RFB client of QEMU with shared-flag 1: it stays connected
/// only if no later client asks for the console exclusively.
fn direct_client(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut b = [0u8; 12];
    s.read_exact(&mut b).unwrap();
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    s.write_all(&[1]).unwrap();
    let mut r = [0u8; 4];
    s.read_exact(&mut r).unwrap();
    s.write_all(&[1]).unwrap();
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let mut name = vec![0u8; len];
    s.read_exact(&mut name).unwrap();
    s
}

fn still_connected(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    if s.write_all(&[3, 0, 0, 0, 0, 0, 0, 8, 0, 8]).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1))
}

#[test]
fn view_only_vnc_to_qemu_leaves_its_screen_alone() {
    if skip_without(&["qemu"]) {
        return;
    }
    let qemu = support::QemuVnc::start_text("nexor-view");
    let relay = RelayBuilder::new(false)
        .upstream("qemu", &format!("kind = \"tcp\"\naddr = \"{}\"", qemu.vnc))
        .start();
    let mut other = direct_client(qemu.vnc);

    let mut ws = Ws::open(&relay, &view("qemu", Console::Vnc)).unwrap();
    rfb_login(&mut ws);
    one_update(&mut ws);
    let (_, _, before) = qemu.screendump();
    // Typing `info status` + Enter, clicks, a paste: all dropped.
    ws.send_cut(&typing("info status\r"), &mut || 5);
    one_update(&mut ws);
    let (_, _, after) = qemu.screendump();
    let changed = support::pixels_differing(&before, &after);
    assert!(
        changed <= 256,
        "view-only typing changed {changed} pixels of QEMU's screen"
    );
    // Its shared-flag 0 was forced to 1: the other client is still there.
    assert!(still_connected(&mut other), "a viewer took the console");
    drop(ws);

    // The same typing in a control session does change the screen.
    let mut ws = Ws::open(&relay, &Relay::claims("qemu", Console::Vnc)).unwrap();
    rfb_login(&mut ws);
    one_update(&mut ws);
    ws.send_cut(&typing("info status\r"), &mut || 5);
    let t = Instant::now();
    loop {
        one_update(&mut ws);
        let (_, _, now) = qemu.screendump();
        if support::pixels_differing(&before, &now) > 512 {
            break;
        }
        assert!(
            t.elapsed() < IO_TIMEOUT,
            "a control session's typing never reached QEMU"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = wait_audit(&relay, "session_start", &["\"mode\":\"view\""]);
    assert!(start.contains("\"console\":\"vnc\""), "{start}");
    wait_audit(&relay, "session_end", &["\"mode\":\"view\""]);
}

/// 64 of the largest SetEncodings (16 MiB) through a view-only session:
/// streamed, never gathered, so the relay does not grow by their size.
#[test]
fn huge_set_encodings_stream_through_in_bounded_memory() {
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(false)
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start();
    let mut ws = Ws::open(&relay, &view("t", Console::Vnc)).unwrap();
    let handshake = [&b"RFB 003.008\n"[..], &[1], &[0]].concat();
    ws.send(&handshake);
    ws.take(14);
    let huge = set_encodings(u16::MAX);
    // Warm up buffers and allocator first.
    ws.send_cut(&huge, &mut || 60_000);
    assert_eq!(ws.take(huge.len()), huge);
    let before = relay.rss_kib();
    for _ in 0..64 {
        ws.send_cut(&huge, &mut || 60_000);
        assert_eq!(ws.take(huge.len()), huge);
    }
    let grown = relay.rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "the relay grew by {grown} KiB relaying 16 MiB of SetEncodings"
    );
}
