//! Recorded consoles end to end (docs/recording.md): the real relay records
//! a session while a real client drives it; the file is then read back and
//! compared with what crossed the wire, and its SHA-256 with the audit line.
//!
//! * terminals: the demo terminal (raw bytes) and a Proxmox terminal
//!   (pve-emu → QEMU's monitor, termproxy framing) as asciicast v3;
//! * VNC: a `tcp` session to real QEMU, replayed by `nexor-relay replay`
//!   to stock noVNC in Chromium, whose canvas must show QEMU's screen;
//! * trouble: a full disk (a small tmpfs), `max_bytes`, `required` with a
//!   directory that cannot be written.
//!
//! Data-path tests run on both drivers (io_uring, then epoll).

mod common;
#[path = "browser/support.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pve::{PveEmu, Qemu, TOKEN_ID, TOKEN_SECRET};
use common::*;
use nexor_relay::ticket::{Claims, Console, Guest};
use serde_json::Value;
use sha2::Digest;

const DRIVERS: [bool; 2] = [false, true];

fn driver_name(legacy: bool) -> &'static str {
    if legacy {
        "epoll"
    } else {
        "io_uring"
    }
}

/// A relay with `[recording]` (the text after the upstreams) on a driver.
fn relay(legacy: bool, upstreams: &[(&str, String)], recording: &str) -> Relay {
    let mut b = RelayBuilder::new(false);
    if legacy {
        b = b.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
    }
    for (name, body) in upstreams {
        b = b.upstream(name, body);
    }
    b.upstreams.push_str(recording);
    b.start()
}

fn recording_section(dir: &Path, extra: &str) -> String {
    format!(
        "[recording]\ndir = {:?}\n{extra}\n",
        dir.display().to_string()
    )
}

fn recorded(upstream: &str, console: Console) -> Claims {
    let mut c = Relay::claims(upstream, console);
    c.record = true;
    c
}

/// A browser on a raw WebSocket: what it sent and received, as payload.
struct Client {
    conn: Conn,
    pending: Vec<u8>,
    got: Vec<u8>,
    sent: Vec<u8>,
    closed: bool,
}

impl Client {
    fn open(relay: &Relay, claims: &Claims) -> Result<Client, u16> {
        let t = relay.sign(claims);
        let proto = format!("Sec-WebSocket-Protocol: binary, nexor.ticket.{t}\r\n");
        let (status, _, conn, rest) = relay.raw(&relay.upgrade_request("/console", &proto));
        if status != 101 {
            return Err(status);
        }
        Ok(Client {
            conn,
            pending: rest,
            got: Vec::new(),
            sent: Vec::new(),
            closed: false,
        })
    }

    fn send(&mut self, payload: &[u8]) {
        write_frame(&mut self.conn, true, 2, payload, true);
        self.sent.extend_from_slice(payload);
    }

    /// Reads one frame; false once closed.
    fn read_one(&mut self) -> bool {
        let f = read_frame(&mut self.conn, &mut self.pending).expect("frame from the relay");
        match f.opcode {
            0..=2 => self.got.extend_from_slice(&f.payload),
            8 => {
                self.closed = true;
                return false;
            }
            _ => {}
        }
        true
    }

    /// Reads until the received payload contains `needle`.
    fn until(&mut self, needle: &[u8]) {
        let t = Instant::now();
        while !self.got.windows(needle.len()).any(|w| w == needle) {
            assert!(t.elapsed() < IO_TIMEOUT, "no {needle:?} in {:?}", self.got);
            assert!(self.read_one(), "closed before {needle:?}");
        }
    }

    /// Reads until `n` payload bytes have arrived.
    fn until_len(&mut self, n: usize) {
        while self.got.len() < n {
            assert!(
                self.read_one(),
                "closed after {} of {n} bytes",
                self.got.len()
            );
        }
    }

    /// Sends a close and reads the rest until the relay's close.
    fn close(mut self) -> Vec<u8> {
        write_frame(&mut self.conn, true, 8, &1000u16.to_be_bytes(), true);
        while !self.closed && self.read_one() {}
        self.got
    }
}

/// The audit line of `event` whose `field` is `value`, once logged.
fn audit(relay: &Relay, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        for l in relay.logs().lines() {
            let Some(i) = l.find('{') else { continue };
            if let Ok(v) = serde_json::from_str::<Value>(&l[i..]) {
                if v["event"] == event && pred(&v) {
                    return v;
                }
            }
        }
        assert!(
            t.elapsed() < IO_TIMEOUT,
            "no {event} audit line: {}",
            relay.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn session_end(relay: &Relay) -> Value {
    audit(relay, "session_end", |_| true)
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The recording the audit line names: checks the name, the SHA-256 and
/// that no `.part` is left; its bytes.
fn recording_file(dir: &Path, end: &Value, ext: &str) -> Vec<u8> {
    let name = end["recording"].as_str().unwrap_or_else(|| panic!("{end}"));
    assert!(name.ends_with(&format!(".{ext}")), "{name}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{name}"
    );
    assert!(name.contains("_customer-42_"), "{name}");
    let bytes = std::fs::read(dir.join(name)).unwrap();
    assert_eq!(end["recording_sha256"], sha256_hex(&bytes), "{end}");
    assert_eq!(end["recording_bytes"], bytes.len() as u64, "{end}");
    let parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
    bytes
}

/// An asciicast v3 file, checked line by line.
struct CastFile {
    header: Value,
    events: Vec<(f64, String, String)>,
}

impl CastFile {
    fn parse(bytes: &[u8]) -> CastFile {
        let text = std::str::from_utf8(bytes).expect("a cast is UTF-8");
        assert!(text.ends_with('\n'));
        let mut lines = text.lines();
        let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(header["version"], 3, "{header}");
        assert!(header["term"]["cols"].as_u64().unwrap() > 0);
        assert!(header["term"]["rows"].as_u64().unwrap() > 0);
        let ts = header["timestamp"].as_u64().unwrap();
        assert!(ts.abs_diff(now()) < 600, "{header}");
        let mut events = Vec::new();
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let a = v.as_array().unwrap_or_else(|| panic!("{l}"));
            assert_eq!(a.len(), 3, "{l}");
            let dt = a[0].as_f64().unwrap_or_else(|| panic!("{l}"));
            assert!(dt >= 0.0, "{l}");
            let code = a[1].as_str().unwrap().to_string();
            let data = a[2].as_str().unwrap().to_string();
            match code.as_str() {
                "o" | "i" => assert!(!data.is_empty(), "{l}"),
                "r" => {
                    let (c, r) = data.split_once('x').unwrap();
                    c.parse::<u16>().unwrap();
                    r.parse::<u16>().unwrap();
                }
                other => panic!("unknown event {other}: {l}"),
            }
            events.push((dt, code, data));
        }
        CastFile { header, events }
    }

    fn joined(&self, code: &str) -> String {
        self.events
            .iter()
            .filter(|e| e.1 == code)
            .map(|e| e.2.as_str())
            .collect()
    }
}

#[test]
fn demo_terminal_is_recorded_as_asciicast_v3() {
    for legacy in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let r = relay(
            legacy,
            &[("demo", "kind = \"demo\"".into())],
            &recording_section(dir.path(), ""),
        );
        let mut c = Client::open(&r, &recorded("demo", Console::Term)).unwrap();
        c.until(b"$ ");
        // Input in pieces, a UTF-8 character cut between two frames.
        c.send(b"h\xc3");
        c.send(b"\xa9llo w\xc3\xb6rld\r");
        c.until("you typed: héllo wörld".as_bytes());
        c.until(b"\r\n$ ");
        c.send(b"exit\r");
        let sent = c.sent.clone();
        let got = c.close();
        let end = session_end(&r);
        let cast = CastFile::parse(&recording_file(dir.path(), &end, "cast"));
        let d = driver_name(legacy);
        assert_eq!(cast.header["term"]["cols"], 80, "{d}");
        assert_eq!(cast.joined("o").as_bytes(), &got[..], "{d}: output");
        assert_eq!(cast.joined("i").as_bytes(), &sent[..], "{d}: input");
        assert!(end.get("recording_truncated").is_none(), "{end}");
        let start = audit(&r, "session_start", |_| true);
        assert_eq!(start["recording"], end["recording"]);
    }
}

#[test]
fn proxmox_terminal_cast_has_input_output_and_resize() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    let qemu = Qemu::start("vm-rec").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    for legacy in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let pve = format!(
            "kind = \"proxmox\"\napi = \"https://127.0.0.1:{}\"\ntoken_id = \"{TOKEN_ID}\"\n\
token_secret = \"{TOKEN_SECRET}\"\nfingerprint = \"{}\"\nconnect_timeout = \"3s\"\nrecord = \"always\"",
            emu.addr.port(),
            emu.fingerprint
        );
        let r = relay(legacy, &[("pve", pve)], &recording_section(dir.path(), ""));
        r.add_secret(TOKEN_SECRET);
        // No record claim: the upstream records always.
        let mut claims = Relay::claims("pve", Console::Term);
        claims.node = Some("pve1".into());
        claims.vmid = Some(100);
        claims.guest = Some(Guest::Qemu);
        let mut c = Client::open(&r, &claims).unwrap();
        c.until(b"(qemu) ");
        c.send(b"1:100:30:");
        let cmd = "info status\n";
        c.send(format!("0:{}:{cmd}", cmd.len()).as_bytes());
        c.send(b"2");
        c.until(b"VM status: paused");
        let got = c.close();
        let end = session_end(&r);
        let bytes = recording_file(dir.path(), &end, "cast");
        let cast = CastFile::parse(&bytes);
        let d = driver_name(legacy);
        // termproxy's PTY starts at 80x20 (docs/proxmox.md §5).
        assert_eq!(cast.header["term"]["rows"], 20, "{d}");
        assert_eq!(cast.joined("o").as_bytes(), &got[..], "{d}: output");
        assert_eq!(cast.joined("i"), cmd, "{d}: input decoded from 0:LEN:DATA");
        assert_eq!(cast.joined("r"), "100x30", "{d}: resize");
        assert!(end["vm"].as_str().unwrap().contains("pve1"));
        let text = String::from_utf8_lossy(&bytes);
        for s in [TOKEN_SECRET, "PVEVNC", "PVEAPIToken"] {
            assert!(!text.contains(s), "the recording holds {s}");
        }
    }
}

#[test]
fn proxmox_vnc_recording_starts_at_qemus_server_init() {
    if skip_without(&["qemu", "pve-emu"]) {
        return;
    }
    use nexor_relay::record::{parse_vnc, VncDir};
    let qemu = Qemu::start("vm-pxrec").unwrap();
    let emu = PveEmu::with_qemu(&qemu, 100, &[]).unwrap();
    for legacy in DRIVERS {
        let d = driver_name(legacy);
        let dir = tempfile::tempdir().unwrap();
        let pve = format!(
            "kind = \"proxmox\"\napi = \"https://127.0.0.1:{}\"\ntoken_id = \"{TOKEN_ID}\"\n\
token_secret = \"{TOKEN_SECRET}\"\nfingerprint = \"{}\"\nconnect_timeout = \"3s\"",
            emu.addr.port(),
            emu.fingerprint
        );
        let r = relay(legacy, &[("pve", pve)], &recording_section(dir.path(), ""));
        let mut claims = recorded("pve", Console::Vnc);
        claims.node = Some("pve1".into());
        claims.vmid = Some(100);
        claims.guest = Some(Guest::Qemu);
        let mut c = Client::open(&r, &claims).unwrap();
        // The relay's own RFB handshake (security None), then QEMU's ServerInit.
        c.until_len(12);
        c.send(b"RFB 003.008\n");
        c.until_len(14);
        c.send(&[1]);
        c.until_len(18);
        c.send(&[1]);
        let name = b"QEMU (vm-pxrec)";
        c.until(name);
        let fbur = [3u8, 0, 0, 0, 0, 0, 0, 16, 0, 16];
        c.send(&fbur);
        c.until_len(18 + 24 + name.len() + 4);
        let got = c.close();
        let end = session_end(&r);
        let bytes = recording_file(dir.path(), &end, "vncrec");
        let v = parse_vnc(&bytes).unwrap();
        let down: Vec<u8> = (v.records.iter())
            .filter(|r| r.dir == VncDir::ToBrowser)
            .flat_map(|r| r.data.to_vec())
            .collect();
        let up: Vec<u8> = (v.records.iter())
            .filter(|r| r.dir == VncDir::FromBrowser)
            .flat_map(|r| r.data.to_vec())
            .collect();
        assert_eq!(
            &down[..],
            &got[18..],
            "{d}: server stream from ServerInit on"
        );
        assert_eq!(&down[..4], &[2, 128, 1, 224], "{d}: 640x480");
        assert_eq!(up, fbur, "{d}: the browser's messages after ClientInit");
        let micros: Vec<u64> = v.records.iter().map(|r| r.micros).collect();
        assert!(micros.windows(2).all(|w| w[0] <= w[1]), "{d}");
    }
}

/// A raw `tcp` terminal to an echo server: `n` pattern bytes there and back.
fn echo_session(r: &Relay, n: usize) -> (Vec<u8>, Value) {
    let mut c = Client::open(r, &recorded("echo", Console::Term)).unwrap();
    let data = pattern(n, 7);
    for chunk in data.chunks(16 * 1024) {
        c.send(chunk);
    }
    c.until_len(n);
    let got = c.close();
    assert_eq!(got.len(), n);
    assert!(got == data, "the console lost or changed bytes");
    (got, session_end(r))
}

#[test]
fn max_bytes_stops_the_recording_not_the_console() {
    let echo = Server::tcp_echo();
    for legacy in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let r = relay(
            legacy,
            &[("echo", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
            &recording_section(dir.path(), "max_bytes = \"16KiB\""),
        );
        let (_, end) = echo_session(&r, 1 << 20);
        assert_eq!(end["recording_truncated"], true, "{end}");
        assert_eq!(end["recording_truncated_reason"], "max_bytes", "{end}");
        let bytes = recording_file(dir.path(), &end, "cast");
        assert!(bytes.len() <= 16 * 1024, "{}", bytes.len());
        // Whole lines only: it still parses, with what fitted.
        assert!(!CastFile::parse(&bytes).events.is_empty());
    }
}

/// A tmpfs of `size` at a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let d = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(d.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(d))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Skips with one line (as `skip_without` does) when no tmpfs can be
/// mounted here (not root, or no CAP_SYS_ADMIN).
fn tmpfs_or_skip(size: &str) -> Option<Tmpfs> {
    let t = Tmpfs::mount(size);
    if t.is_none() {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("SKIP {test}: cannot mount a tmpfs (needs root)");
        let _ = writeln!(std::io::stderr(), "{line}");
        if let Some(path) = std::env::var_os("NEXOR_SKIP_LOG") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
    t
}

#[test]
fn full_disk_truncates_the_recording_and_the_console_goes_on() {
    let echo = Server::tcp_echo();
    for legacy in DRIVERS {
        let Some(fs) = tmpfs_or_skip("64k") else {
            return;
        };
        let r = relay(
            legacy,
            &[("echo", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
            &recording_section(fs.path(), ""),
        );
        let (_, end) = echo_session(&r, 1 << 20);
        assert_eq!(end["recording_truncated"], true, "{end}");
        assert_eq!(end["recording_truncated_reason"], "disk_error", "{end}");
        assert!(
            end["recording_error"].as_str().unwrap().contains("space"),
            "{end}"
        );
        let bytes = recording_file(fs.path(), &end, "cast");
        CastFile::parse(&bytes);
        assert_eq!(end["code"], 1000, "{end}");
    }
}

#[test]
fn a_writer_that_falls_behind_truncates_the_recording_not_the_console() {
    let echo = Server::tcp_echo();
    for legacy in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        // Debug-build fault: the writer sleeps per message, the queue is small.
        let mut b = RelayBuilder::new(false).env("NEXOR_TEST_FAULTS", "slow-recorder");
        if legacy {
            b = b.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        }
        b = b.upstream("echo", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr));
        b.upstreams.push_str(&recording_section(dir.path(), ""));
        let r = b.start();
        let (_, end) = echo_session(&r, 4 << 20);
        let d = driver_name(legacy);
        assert_eq!(end["recording_truncated"], true, "{d}: {end}");
        assert_eq!(
            end["recording_truncated_reason"], "queue_full",
            "{d}: {end}"
        );
        assert_eq!(end["code"], 1000, "{d}: {end}");
        CastFile::parse(&recording_file(dir.path(), &end, "cast"));
    }
}

#[test]
fn required_recording_that_cannot_open_refuses_with_503() {
    let echo = Server::tcp_echo();
    let up = [("echo", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))];
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("not-there");
    let r = relay(false, &up, &recording_section(&missing, "required = true"));
    assert_eq!(
        Client::open(&r, &recorded("echo", Console::Term)).err(),
        Some(503)
    );
    let refused = audit(&r, "refused", |v| v["reason"] == "recording_unavailable");
    assert_eq!(refused["status"], 503);
    assert!(r.wait_log("recording unavailable"));
    let (_, metrics) = r.admin_request("GET", "/metrics", None);
    assert!(
        metrics.contains(
            "nexor_sessions_refused_total{reason=\"recording_unavailable\",status=\"503\"} 1"
        ),
        "{metrics}"
    );
    // An unrecorded ticket is not refused.
    let mut c = Client::open(&r, &Relay::claims("echo", Console::Term)).unwrap();
    c.send(b"x");
    c.until(b"x");
    drop(c.close());
    // Not required: the console goes on, the audit says why there is no recording.
    let r = relay(false, &up, &recording_section(&missing, ""));
    let (_, end) = echo_session(&r, 1000);
    assert!(end.get("recording").is_none(), "{end}");
    assert!(
        end["recording_error"]
            .as_str()
            .unwrap()
            .contains("not-there"),
        "{end}"
    );
}

// ---- replay in Chromium -------------------------------------------------------------

/// `nexor-relay replay FILE` on a free port; its page URL.
fn replay(file: &Path) -> (support::Proc, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nexor-relay"));
    cmd.arg("replay")
        .arg(file)
        .args(["--listen", "127.0.0.1:0", "--assets"])
        .arg(support::assets())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut p = support::Proc::spawn("nexor-relay replay", &mut cmd);
    let out = p.child.stdout.take().unwrap();
    let mut out = std::io::BufReader::new(out);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    // Keep reading, so that the process never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix("replay: ")
        .unwrap_or_else(|| panic!("replay banner: {line:?}"))
        .to_string();
    (p, url)
}

/// Saves a page screenshot as docs/NAME when missing (or with
/// NEXOR_UPDATE_DEMO_PNG=1), for the README.
fn doc_shot(b: &mut support::Browser, page: &str, name: &str) {
    let shot = support::artifacts().join(name);
    b.shot(page, &shot, false);
    let docs = support::root().join("docs").join(name);
    if !docs.exists() || std::env::var_os("NEXOR_UPDATE_DEMO_PNG").is_some() {
        std::fs::copy(&shot, &docs).unwrap();
    }
}

const CONNECT: Duration = Duration::from_secs(20);

/// Polls the canvas until it equals QEMU's screen; the fraction equal.
fn canvas_matches(b: &mut support::Browser, page: &str, rgb: &[u8]) -> f64 {
    let t = Instant::now();
    loop {
        let c = b.canvas(page);
        let eq = if (c.width, c.height) == (640, 480) {
            c.equal_fraction(rgb)
        } else {
            0.0
        };
        if eq > 0.99 || t.elapsed() > CONNECT {
            return eq;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn vnc_recording_of_qemu_replays_to_the_same_screen_in_chromium() {
    if skip_without(&["chromium", "novnc", "qemu"]) {
        return;
    }
    let qemu = support::QemuVnc::start("vm-replay");
    let mut b = support::Browser::start("recording");
    for legacy in DRIVERS {
        let d = driver_name(legacy);
        let dir = tempfile::tempdir().unwrap();
        let mut rb = RelayBuilder::new(false).server(&support::page_config());
        if legacy {
            rb = rb.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        }
        rb = rb.upstream("qemu", &format!("kind = \"tcp\"\naddr = \"{}\"", qemu.vnc));
        rb.upstreams.push_str(&recording_section(dir.path(), ""));
        let r = rb.start();
        let page = format!("live-{d}");
        let t = r.sign(&recorded("qemu", Console::Vnc));
        let base = r.url("").replacen("ws://", "http://", 1);
        b.open(&page, &format!("{base}/#console=vnc&ticket={t}"));
        b.wait_event(&page, "connect", CONNECT);
        let (w, h, rgb) = qemu.screendump();
        assert_eq!((w, h), (640, 480));
        let live = canvas_matches(&mut b, &page, &rgb);
        assert!(live > 0.99, "{d}: live canvas matches QEMU at {live:.3}");
        b.close(&page);
        let end = session_end(&r);
        let file = dir.path().join(end["recording"].as_str().unwrap());
        let bytes = recording_file(dir.path(), &end, "vncrec");
        let v = nexor_relay::record::parse_vnc(&bytes).unwrap();
        // The ServerInit first: QEMU's 640x480 screen and its name.
        let first = v.records[0];
        assert_eq!(first.dir, nexor_relay::record::VncDir::ToBrowser);
        assert_eq!(&first.data[..4], &[2, 128, 1, 224], "{d}");
        let name = b"QEMU (vm-replay)";
        assert_eq!(&first.data[24..24 + name.len()], name, "{d}");
        assert!(v
            .records
            .iter()
            .any(|r| r.dir == nexor_relay::record::VncDir::FromBrowser));
        // Replayed to a fresh noVNC: the same screen.
        let (_server, url) = replay(&file);
        let page = format!("replay-{d}");
        b.open(&page, &format!("{url}?speed=0"));
        b.wait_event(&page, "connect", CONNECT);
        b.wait(
            &page,
            "window.nexor && window.nexor.replay && window.nexor.replay.done",
            CONNECT,
        );
        assert_eq!(
            b.wait(&page, "window.nexor && window.nexor.desktopName", CONNECT),
            "QEMU (vm-replay)"
        );
        let replayed = canvas_matches(&mut b, &page, &rgb);
        assert!(
            replayed > 0.99,
            "{d}: the replayed canvas matches QEMU's screendump at only {replayed:.3}"
        );
        if !legacy {
            doc_shot(&mut b, &page, "recording-replay-vnc.png");
        }
        b.close(&page);
    }
}

#[test]
fn terminal_cast_replays_in_xterm_js() {
    if skip_without(&["chromium", "novnc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = relay(
        false,
        &[("demo", "kind = \"demo\"".into())],
        &recording_section(dir.path(), ""),
    );
    let mut c = Client::open(&r, &recorded("demo", Console::Term)).unwrap();
    c.until(b"$ ");
    for line in ["hello replay", "recorded by nexor-relay"] {
        c.send(format!("{line}\r").as_bytes());
        c.until(format!("you typed: {line}\r\n$ ").as_bytes());
    }
    drop(c.close());
    let end = session_end(&r);
    let file = dir.path().join(end["recording"].as_str().unwrap());
    let (_server, url) = replay(&file);
    let mut b = support::Browser::start("recording-term");
    b.open("cast", &format!("{url}?speed=0"));
    b.wait(
        "cast",
        "window.nexor && window.nexor.replay && window.nexor.replay.done",
        CONNECT,
    );
    let text = b.wait_term("cast", "you typed: recorded by nexor-relay", CONNECT);
    assert!(text.starts_with("nexor-relay demo terminal"), "{text}");
    assert!(text.contains("you typed: hello replay"), "{text}");
    // Paused at 1×, the clock stands still.
    b.open("cast-slow", &format!("{url}?speed=1"));
    b.wait(
        "cast-slow",
        "!!(window.nexor && window.nexor.term)",
        CONNECT,
    );
    b.eval("cast-slow", "document.getElementById('pause').click()");
    assert_eq!(b.eval("cast-slow", "window.nexor.replay.paused"), true);
    doc_shot(&mut b, "cast", "recording-replay-term.png");
}

#[test]
fn replay_refuses_files_it_cannot_play() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("missing.cast", b"", "missing.cast"),
        (
            "garbage.bin",
            b"\x00\x01garbage",
            "neither a VNC recording nor an asciicast",
        ),
        (
            "v2.cast",
            b"{\"version\":2,\"width\":80,\"height\":24}\n",
            "not version 3",
        ),
        (
            "empty.vncrec",
            b"NXVNCREC\x01\x00\x00\x00\0\0\0\0\0\0\0\0",
            "no ServerInit",
        ),
    ];
    for (name, bytes, why) in cases {
        let path = dir.path().join(name);
        if !bytes.is_empty() {
            std::fs::write(&path, bytes).unwrap();
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexor-relay"))
            .arg("replay")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }
}

#[test]
fn a_console_that_never_opens_leaves_no_recording() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(
        false,
        &[(
            "down",
            format!("kind = \"tcp\"\naddr = \"{}\"", refused_addr()),
        )],
        &recording_section(dir.path(), "required = true"),
    );
    assert_eq!(
        Client::open(&r, &recorded("down", Console::Term)).err(),
        Some(502)
    );
    // The recording opened before the dial is removed, not left as .part.
    assert!(
        support::eventually(Duration::from_secs(5), || std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .is_none()),
        "{:?}",
        std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>()
    );
}
