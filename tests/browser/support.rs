//! Real clients and proxies for tests/browser.rs: headless Chromium driven by
//! playwright-core (tests/browser/driver.mjs), nginx and HAProxy started from
//! config/nginx.conf and config/haproxy.cfg with their placeholders filled in,
//! and QEMU with a plain VNC port. Everything is installed by
//! `bash tests/browser/install.sh`; a missing piece fails the test with a hint.
//! Every process is started in its own process group and stopped by that id
//! when its owner drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const INSTALL_HINT: &str = "run `bash tests/browser/install.sh` first";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where failure screenshots and logs go.
pub fn artifacts() -> PathBuf {
    let d = root().join("target").join("browser-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The folder holding real copies of the npm packages as `novnc/` and `xterm/`.
pub fn assets() -> PathBuf {
    let d = root().join("tests/browser/assets");
    for f in ["novnc/core/rfb.js", "xterm/lib/xterm.js"] {
        assert!(
            d.join(f).is_file(),
            "{} is missing: {INSTALL_HINT}",
            d.join(f).display()
        );
    }
    d
}

/// The `[server]` lines that turn the console page on with the local assets.
pub fn page_config() -> String {
    format!(
        "console_page = true\nconsole_assets = {:?}",
        assets().display().to_string()
    )
}

/// Panics (fails the test) unless `bin` can be found.
pub fn need(bin: &str) -> PathBuf {
    let found = if bin.contains('/') {
        Path::new(bin).is_file().then(|| PathBuf::from(bin))
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .map(|d| d.join(bin))
                .find(|c| c.is_file())
        })
    };
    found.unwrap_or_else(|| panic!("`{bin}` is not installed: {INSTALL_HINT}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str, logs: impl Fn() -> String) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on {addr}: {}", logs());
}

/// A child in its own process group; the group is stopped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} ({INSTALL_HINT})"));
        Proc {
            child,
            name: name.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let t = Instant::now();
        while t.elapsed() < grace {
            if !self.alive() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The leader may be gone while its workers linger: kill the group either way.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL to the group at once (a crash, as the peers see it).
    pub fn kill(&mut self) {
        self.stop(Duration::ZERO)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@@{k}@@"), v);
    }
    let body: String = s
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!body.contains("@@"), "unfilled placeholder in:\n{s}");
    s
}

fn write_tls(dir: &Path) -> (PathBuf, PathBuf) {
    let c = crate::common::certs();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, format!("{}{}", c.leaf_pem, c.ca_pem)).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    (cert, key)
}

// ---- nginx ----------------------------------------------------------------------------

/// nginx from config/nginx.conf, TLS on a loopback port, proxying to a relay.
pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    proc: Option<Proc>,
}

impl Nginx {
    pub fn start(relay: SocketAddr, read_timeout: &str) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("nexor-nginx-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let (cert, key) = write_tls(dir.path());
        let template = std::fs::read_to_string(root().join("config/nginx.conf")).unwrap();
        let conf = dir.path().join("nginx.conf");
        let text = fill(
            &template,
            &[
                ("PREFIX", dir.path().display().to_string()),
                ("LISTEN", format!("127.0.0.1:{port}")),
                ("CERT", cert.display().to_string()),
                ("KEY", key.display().to_string()),
                ("RELAY", relay.to_string()),
                ("READ_TIMEOUT", read_timeout.to_string()),
                ("MIME_TYPES", "/etc/nginx/mime.types".to_string()),
            ],
        );
        std::fs::write(&conf, text).unwrap();
        let mut n = Nginx {
            port,
            dir,
            conf,
            proc: None,
        };
        n.restart();
        n
    }

    /// Starts (again) on the same port with the same config.
    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(2));
        }
        let bin = need("nginx");
        let d = self.dir.path();
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.proc = Some(Proc::spawn("nginx", &mut cmd));
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_listening(addr, "nginx", || self.error_log());
    }

    /// Kills nginx and every worker at once (all proxied connections drop).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("nginx error log:\n{}", self.error_log());
        }
    }
}

// ---- HAProxy --------------------------------------------------------------------------

/// HAProxy from config/haproxy.cfg: TLS passthrough, SNI routing, PROXY v2.
pub struct Haproxy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    proc: Proc,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Haproxy {
    pub fn start(relay1: SocketAddr, relay2: SocketAddr, source: &str, timeout: &str) -> Haproxy {
        let bin = need("haproxy");
        let dir = tempfile::Builder::new()
            .prefix("nexor-haproxy-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let template = std::fs::read_to_string(root().join("config/haproxy.cfg")).unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        let text = fill(
            &template,
            &[
                (
                    "PIDFILE",
                    dir.path().join("haproxy.pid").display().to_string(),
                ),
                ("LISTEN", format!("127.0.0.1:{port}")),
                ("RELAY1", relay1.to_string()),
                ("RELAY2", relay2.to_string()),
                ("SOURCE", source.to_string()),
                ("TIMEOUT", timeout.to_string()),
            ],
        );
        std::fs::write(&cfg, text).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("haproxy", &mut cmd);
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for r in [
            Box::new(proc.child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(proc.child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut g = log.lock().unwrap();
                    g.push_str(&l);
                    g.push('\n');
                }
            });
        }
        let h = Haproxy {
            port,
            dir,
            proc,
            log,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, "haproxy", || h.log.lock().unwrap().clone());
        h
    }

    /// `https://<host>:PORT` (Chromium resolves *.localhost to loopback).
    pub fn base(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(2));
        if thread::panicking() {
            eprintln!("haproxy output:\n{}", self.logs());
        }
    }
}

// ---- QEMU with a plain VNC port ------------------------------------------------------

/// `qemu-system-x86_64 -S` with `-vnc 127.0.0.1:N` (security None), a monitor on a TCP
/// port and QMP on a unix socket (for screendump); killed on drop.
pub struct QemuVnc {
    pub name: String,
    pub vnc: SocketAddr,
    pub monitor: SocketAddr,
    pub dir: tempfile::TempDir,
    proc: Proc,
}

impl QemuVnc {
    pub fn start(name: &str) -> QemuVnc {
        QemuVnc::spawn(name, false)
    }

    /// As [`QemuVnc::start`], but the VNC screen (and QMP `screendump`) is
    /// QEMU's human monitor as a 640x480 text console (`-vga none -monitor
    /// vc`): keys typed over VNC show up on the screen, so a screendump
    /// says whether input reached QEMU. `monitor` is then unused. Only the
    /// blinking cursor (one 8x16 cell, 128 pixels) changes by itself.
    pub fn start_text(name: &str) -> QemuVnc {
        QemuVnc::spawn(name, true)
    }

    fn spawn(name: &str, text: bool) -> QemuVnc {
        let bin = need("qemu-system-x86_64");
        let dir = tempfile::Builder::new()
            .prefix("nexor-qemu-")
            .tempdir()
            .unwrap();
        // Ephemeral ports are far above 5900: display N listens on 5900 + N.
        let vnc_port = free_port();
        assert!(vnc_port > 5900);
        let mon_port = free_port();
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = Command::new(bin);
        let monitor = if text {
            cmd.args(["-vga", "none", "-serial", "none", "-parallel", "none"]);
            "vc:640x480".to_string()
        } else {
            format!("tcp:127.0.0.1:{mon_port},server=on,wait=off")
        };
        cmd.args(["-display", "none", "-nic", "none", "-m", "64", "-S"])
            .args(["-vnc", &format!("127.0.0.1:{}", vnc_port - 5900)])
            .args(["-monitor", &monitor])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .args(["-name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn("qemu", &mut cmd);
        let q = QemuVnc {
            name: name.into(),
            vnc: format!("127.0.0.1:{vnc_port}").parse().unwrap(),
            monitor: format!("127.0.0.1:{mon_port}").parse().unwrap(),
            dir,
            proc,
        };
        wait_listening(q.vnc, "qemu vnc", String::new);
        q
    }

    /// The guest screen as QEMU holds it: (width, height, RGB bytes).
    pub fn screendump(&self) -> (usize, usize, Vec<u8>) {
        screendump(&self.dir.path().join("qmp.sock"), self.dir.path())
    }
}

/// QMP `screendump` over `sock`; the PPM parsed.
pub fn screendump(sock: &Path, dir: &Path) -> (usize, usize, Vec<u8>) {
    use std::os::unix::net::UnixStream;
    let file = dir.join(format!("screen-{}.ppm", crate::common::rand_u64()));
    let s = UnixStream::connect(sock).expect("qmp socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    let mut call = |cmd: Value| -> Value {
        writeln!(w, "{cmd}").unwrap();
        loop {
            let mut l = String::new();
            assert!(r.read_line(&mut l).unwrap() > 0, "qmp closed");
            let v: Value = serde_json::from_str(&l).unwrap();
            if v.get("return").is_some() || v.get("error").is_some() {
                return v;
            }
        }
    };
    call(json!({"execute": "qmp_capabilities"}));
    let v = call(json!({"execute": "screendump", "arguments": {"filename": file}}));
    assert!(v.get("return").is_some(), "screendump: {v}");
    let ppm = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    parse_ppm(&ppm)
}

fn parse_ppm(b: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while b[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while !b[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&b[s..i]).to_string());
    }
    i += 1;
    assert_eq!(fields[0], "P6");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    (w, h, b[i..i + w * h * 3].to_vec())
}

/// Pixels that differ between two screendumps of the same size.
pub fn pixels_differing(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len(), "screens of different sizes");
    a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count()
}

// ---- the browser ----------------------------------------------------------------------

/// Headless Chromium behind tests/browser/driver.mjs. On a panic while it is alive,
/// every open page's screenshot and log go to target/browser-artifacts/<test>-<page>.*
pub struct Browser {
    test: String,
    proc: Proc,
    stdin: ChildStdin,
    rx: mpsc::Receiver<String>,
    next: u64,
    pub version: String,
}

/// What noVNC's canvas shows.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u8>,
}

impl Canvas {
    /// Distinct colours (capped at 1000).
    pub fn colours(&self) -> usize {
        let mut set = std::collections::HashSet::new();
        for p in self.rgba.chunks(4) {
            set.insert([p[0], p[1], p[2]]);
            if set.len() >= 1000 {
                break;
            }
        }
        set.len()
    }

    /// Pixels that differ from the top-left pixel.
    pub fn non_uniform(&self) -> usize {
        let first = &self.rgba[..3];
        self.rgba.chunks(4).filter(|p| &p[..3] != first).count()
    }

    /// Fraction of pixels equal (RGB) to `rgb` of the same size.
    pub fn equal_fraction(&self, rgb: &[u8]) -> f64 {
        let n = self.width * self.height;
        assert_eq!(rgb.len(), n * 3);
        let eq = self
            .rgba
            .chunks(4)
            .zip(rgb.chunks(3))
            .filter(|(a, b)| a[..3] == b[..])
            .count();
        eq as f64 / n as f64
    }
}

impl Browser {
    pub fn start(test: &str) -> Browser {
        let node = need("node");
        let chromium = need("/usr/bin/chromium");
        let dir = root().join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "playwright-core is missing: {INSTALL_HINT}"
        );
        let mut cmd = Command::new(node);
        cmd.arg(dir.join("driver.mjs"))
            .current_dir(&dir)
            .env("CHROMIUM", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Failure artifacts of an earlier run of this test would mislead: remove them.
        if let Ok(rd) = std::fs::read_dir(artifacts()) {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{test}-"))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut proc = Proc::spawn("node driver", &mut cmd);
        let stdin = proc.child.stdin.take().unwrap();
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("Chromium did not start ({INSTALL_HINT})"));
        let v: Value = serde_json::from_str(&first).expect("driver greeting");
        assert_eq!(v["ready"], true, "{first}");
        Browser {
            test: test.into(),
            proc,
            stdin,
            rx,
            next: 0,
            version: v["version"].as_str().unwrap_or("").into(),
        }
    }

    /// Sends one command; its value or its error.
    pub fn try_cmd(&mut self, mut cmd: Value, timeout: Duration) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        cmd["id"] = json!(id);
        writeln!(self.stdin, "{cmd}").map_err(|e| format!("driver gone: {e}"))?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .map_err(|_| format!("driver did not answer {cmd} in {timeout:?}"))?;
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
            if v["id"] != json!(id) {
                continue;
            }
            return if v["ok"] == true {
                Ok(v["value"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("?").to_string())
            };
        }
    }

    pub fn cmd(&mut self, cmd: Value) -> Value {
        let what = cmd.to_string();
        self.try_cmd(cmd, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("browser command {}: {e}", short(&what)))
    }

    pub fn open(&mut self, page: &str, url: &str) {
        self.cmd(json!({"op": "open", "page": page, "url": url}));
    }

    /// Waits for a JS expression to be truthy; its value.
    pub fn wait(&mut self, page: &str, expr: &str, timeout: Duration) -> Value {
        self.cmd(json!({"op": "wait", "page": page, "expr": expr, "timeout": timeout.as_millis() as u64}))
    }

    /// As `wait`, but a timeout is an Err instead of a failure.
    pub fn try_wait(&mut self, page: &str, expr: &str, timeout: Duration) -> Result<Value, String> {
        self.try_cmd(
            json!({"op": "wait", "page": page, "expr": expr, "timeout": timeout.as_millis() as u64}),
            timeout + Duration::from_secs(30),
        )
    }

    pub fn eval(&mut self, page: &str, expr: &str) -> Value {
        self.cmd(json!({"op": "eval", "page": page, "expr": expr}))
    }

    /// The page's console events (`window.nexor.events`).
    pub fn events(&mut self, page: &str) -> Vec<String> {
        let v = self.eval(page, "window.nexor ? window.nexor.events : []");
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    }

    /// Waits for the console event `ev` ("connect", "disconnect-error", "close-1006", ...).
    pub fn wait_event(&mut self, page: &str, ev: &str, timeout: Duration) {
        let expr = format!("window.nexor && window.nexor.events.includes({ev:?})");
        if let Err(e) = self.try_wait(page, &expr, timeout) {
            let events = self.events(page);
            panic!("page {page}: no {ev:?} event within {timeout:?} (events {events:?}): {e}");
        }
    }

    /// The WebSockets the page opened, as its own listeners saw them.
    pub fn sockets(&mut self, page: &str) -> Vec<Value> {
        self.eval(page, "window.__ws || []")
            .as_array()
            .unwrap()
            .clone()
    }

    /// The close code of the page's `i`-th WebSocket, once it closed.
    pub fn close_code(&mut self, page: &str, i: usize, timeout: Duration) -> u64 {
        let expr = format!("window.__ws && window.__ws[{i}] && window.__ws[{i}].close");
        self.wait(page, &expr, timeout)["code"].as_u64().unwrap()
    }

    pub fn canvas(&mut self, page: &str) -> Canvas {
        use base64::Engine;
        let v = self.cmd(json!({"op": "canvas", "page": page}));
        assert!(!v.is_null(), "page {page} has no canvas");
        let rgba = base64::engine::general_purpose::STANDARD
            .decode(v["rgba"].as_str().unwrap())
            .unwrap();
        Canvas {
            width: v["width"].as_u64().unwrap() as usize,
            height: v["height"].as_u64().unwrap() as usize,
            rgba,
        }
    }

    /// Types a line into xterm.js (then Enter).
    pub fn type_line(&mut self, page: &str, text: &str) {
        self.cmd(json!({"op": "type", "page": page, "text": text}));
    }

    /// Clicks noVNC's canvas, types a line into it (then Enter).
    pub fn vnc_type(&mut self, page: &str, text: &str) {
        self.cmd(json!({"op": "vnc_type", "page": page, "text": text}));
    }

    /// The terminal's buffer as text (lines joined with \n).
    pub fn term_text(&mut self, page: &str) -> String {
        self.eval(page, TERM_TEXT)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the terminal's buffer contains `needle`.
    pub fn wait_term(&mut self, page: &str, needle: &str, timeout: Duration) -> String {
        let expr = format!(
            "(() => {{ const t = {TERM_TEXT}; return t.includes({needle:?}) ? t : null; }})()"
        );
        match self.try_wait(page, &expr, timeout) {
            Ok(v) => v.as_str().unwrap().to_string(),
            Err(e) => {
                let t = self.term_text(page);
                panic!("page {page}: terminal never showed {needle:?}: {e}\nterminal:\n{t}")
            }
        }
    }

    pub fn shot(&mut self, page: &str, path: &Path, canvas_only: bool) {
        self.cmd(json!({"op": "shot", "page": page, "path": path, "canvas": canvas_only}));
    }

    pub fn reload(&mut self, page: &str) {
        self.cmd(json!({"op": "reload", "page": page}));
    }

    pub fn close(&mut self, page: &str) {
        self.cmd(json!({"op": "close", "page": page}));
    }
}

const TERM_TEXT: &str = "(() => { const b = window.nexor.term.buffer.active; const out = []; for (let i = 0; i < b.length; i++) { const l = b.getLine(i); if (l) out.push(l.translateToString(true)); } return out.join('\\n'); })()";

fn short(s: &str) -> String {
    if s.len() > 300 {
        format!("{}…", &s[..300])
    } else {
        s.to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if thread::panicking() {
            let r = self.try_cmd(
                json!({"op": "dump", "dir": artifacts(), "prefix": self.test}),
                Duration::from_secs(20),
            );
            eprintln!(
                "browser artifacts ({r:?}) in {}/{}-*",
                artifacts().display(),
                self.test
            );
        }
        let _ = self.try_cmd(json!({"op": "quit"}), Duration::from_secs(5));
        self.proc.stop(Duration::from_secs(3));
    }
}

/// `<base>/#console=<kind>&ticket=<t>` (+ `&proto=termproxy`).
pub fn console_url(base: &str, console: &str, ticket: &str, termproxy: bool) -> String {
    let proto = if termproxy { "&proto=termproxy" } else { "" };
    format!("{base}/#console={console}{proto}&ticket={ticket}")
}

/// As [`console_url`] for VNC, with the page's own reconnect on
/// (`reconnect=1`: after a drop it opens the console again, same ticket).
pub fn console_url_reconnecting(base: &str, ticket: &str) -> String {
    format!("{base}/#console=vnc&reconnect=1&ticket={ticket}")
}

// ---- a WebSocket client through a proxy -----------------------------------------------

/// Opens `wss://localhost:<port>/console` through `addr` (TLS, test CA) with extra
/// headers and the ticket as a subprotocol; the HTTP status (101 on success).
pub fn wss_status(addr: SocketAddr, ticket: &str, headers: &[(&str, &str)]) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let url = format!("wss://localhost:{}/console", addr.port());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("binary, nexor.ticket.{ticket}").parse().unwrap(),
    );
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let conn = crate::common::Conn::connect(addr, true);
    match tungstenite::client::client(req, conn) {
        Ok((mut ws, resp)) => {
            let _ = ws.close(None);
            let _ = ws.flush();
            resp.status().as_u16()
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            r.status().as_u16()
        }
        Err(e) => panic!("websocket through {addr}: {e}"),
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}
