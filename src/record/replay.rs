//! `nexor-relay replay FILE [--listen ADDR] [--assets DIR]`: serves a
//! recording to a browser through the console page (src/page.rs, same
//! assets and Content-Security-Policy) in replay mode:
//!
//! ```text
//! GET /                 the replay page (pause, speed, clock)
//! GET /replay.js        its script (src/page/replay.js)
//! GET /recording.cast   the cast, played by xterm.js in the page
//! GET /replay?speed=N   WebSocket: the relay is noVNC's RFB server
//! GET /control?speed=N&pause=0|1    the page's controls (VNC)
//! GET /status           {"at","total","done"} of the VNC stream
//! ```
//!
//! For a VNC recording the server does the RFB handshake itself (3.3, 3.7
//! or 3.8, security None), sends the recorded ServerInit, then the
//! recorded server → browser messages at their recorded times (scaled by
//! the speed; 0 = as fast as possible), and reads and ignores whatever
//! the client sends. A local tool: plain HTTP, a thread per connection,
//! one set of controls for all viewers; bind it to loopback.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{parse_vnc, server_stream, VNC_MAGIC};
use crate::http::{self, HeadLimits};
use crate::page::{Page, ReplayKind};
use crate::ws::frame::{FrameHeader, OpCode, MAX_HEADER};
use crate::ws::{handshake, mask};

/// The most a replay request head may hold.
const MAX_HEAD: usize = 16 * 1024;
/// A client that sends nothing for this long during the handshake is gone.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the stream looks at the controls while it waits.
const TICK: Duration = Duration::from_millis(50);

/// What `replay` serves.
pub struct Options {
    pub file: PathBuf,
    pub listen: SocketAddr,
    /// Local copies of noVNC and xterm.js (else the pinned CDN).
    pub assets: Option<PathBuf>,
}

#[derive(Clone, Copy)]
struct Control {
    /// Recording seconds per second; 0: as fast as possible.
    speed: f64,
    paused: bool,
}

#[derive(Clone, Copy, Default)]
struct Progress {
    at: f64,
    total: f64,
    done: bool,
}

struct Shared {
    page: Page,
    kind: ReplayKind,
    title: String,
    file: Vec<u8>,
    /// VNC: the server's bytes from ServerInit on, with their micros.
    stream: Vec<(u64, Vec<u8>)>,
    control: Mutex<Control>,
    progress: Mutex<Progress>,
}

/// Reads and checks the recording; binds the listener. Returns the
/// address and a function that serves until the process ends.
pub fn bind(opts: &Options) -> Result<(SocketAddr, impl FnOnce()), String> {
    let file = std::fs::read(&opts.file).map_err(|e| format!("{}: {e}", opts.file.display()))?;
    let (kind, stream) = if file.starts_with(VNC_MAGIC) {
        let v = parse_vnc(&file).map_err(|e| e.to_string())?;
        let s = server_stream(&v).map_err(|e| e.to_string())?;
        let owned = s.into_iter().map(|(m, d)| (m, d.to_vec())).collect();
        (ReplayKind::Vnc, owned)
    } else {
        let first = file.split(|&b| b == b'\n').next().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(first)
            .map_err(|_| "neither a VNC recording nor an asciicast file".to_string())?;
        if v["version"] != 3 {
            return Err("an asciicast file, but not version 3".into());
        }
        (ReplayKind::Cast, Vec::new())
    };
    let page = Page::new("/replay", opts.assets.as_deref())?;
    let total = stream
        .last()
        .zip(stream.first())
        .map_or(0.0, |(l, f)| (l.0 - f.0) as f64 / 1e6);
    let shared = Arc::new(Shared {
        page,
        kind,
        title: title_of(&opts.file),
        file,
        stream,
        control: Mutex::new(Control {
            speed: 1.0,
            paused: false,
        }),
        progress: Mutex::new(Progress {
            total,
            ..Progress::default()
        }),
    });
    let listener = TcpListener::bind(opts.listen).map_err(|e| format!("{}: {e}", opts.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((addr, move || {
        for conn in listener.incoming().flatten() {
            let s = shared.clone();
            std::thread::spawn(move || {
                let _ = handle(&s, conn);
            });
        }
    }))
}

fn title_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn respond(tcp: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    tcp.write_all(bytes)?;
    tcp.flush()
}

fn plain(status: u16, content_type: &'static str, body: Vec<u8>) -> crate::page::Response {
    crate::page::Response {
        status,
        content_type,
        body,
        cache: "no-store",
    }
}

fn handle(s: &Shared, mut tcp: TcpStream) -> io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    let _ = tcp.set_nodelay(true);
    let limits = HeadLimits {
        max_head: MAX_HEAD,
        max_headers: 64,
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, used) = loop {
        let n = tcp.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_request(&buf, limits) {
            Ok(Some(v)) => break v,
            Ok(None) => continue,
            Err(_) => return respond(&mut tcp, &http::refusal(400, &[], "malformed request")),
        }
    };
    let early = buf.split_off(used);
    let (path, query) = http::split_target(&head.target);
    let q = |name: &'static str| query.and_then(|q| http::query_values(q, name).next());
    let csp = s.page.csp();
    match path {
        "/replay" if s.kind == ReplayKind::Vnc => {
            let up = match handshake::check_upgrade(&head) {
                Ok(u) => u,
                Err(e) => return respond(&mut tcp, &http::refusal(e.status(), &[], e.label())),
            };
            if let Some(v) = q("speed").and_then(|v| v.parse::<f64>().ok()) {
                if let Ok(mut c) = s.control.lock() {
                    c.speed = v.max(0.0);
                }
            }
            respond(
                &mut tcp,
                &handshake::response_101(&up.key, up.selected_protocol()),
            )?;
            rfb(s, tcp, early)
        }
        "/recording.cast" if s.kind == ReplayKind::Cast => {
            let r = plain(200, "application/x-asciicast", s.file.clone());
            respond(&mut tcp, &http::page_response(&r, &csp))
        }
        "/control" => {
            if let Ok(mut c) = s.control.lock() {
                if let Some(v) = q("speed").and_then(|v| v.parse::<f64>().ok()) {
                    c.speed = v.max(0.0);
                }
                if let Some(p) = q("pause") {
                    c.paused = p == "1";
                }
            }
            let r = plain(200, "text/plain; charset=utf-8", b"ok".to_vec());
            respond(&mut tcp, &http::page_response(&r, &csp))
        }
        "/status" => {
            let p = s.progress.lock().map(|p| *p).unwrap_or_default();
            let body = serde_json::json!({"at": p.at, "total": p.total, "done": p.done});
            let r = plain(200, "application/json", body.to_string().into_bytes());
            respond(&mut tcp, &http::page_response(&r, &csp))
        }
        p => match s.page.replay_get(p, s.kind, &s.title) {
            Some(r) if head.method == "GET" => respond(&mut tcp, &http::page_response(&r, &csp)),
            _ => respond(&mut tcp, &http::refusal(404, &[], "not found")),
        },
    }
}

/// The browser's side of the WebSocket: payload bytes, unmasked.
struct Incoming {
    tcp: TcpStream,
    pending: Vec<u8>,
    data: Vec<u8>,
}

impl Incoming {
    /// Reads frames until `n` payload bytes are there; takes them.
    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.data.len() < n {
            self.frame()?;
        }
        Ok(self.data.drain(..n).collect())
    }

    /// Reads one whole frame (data kept, close an error, the rest dropped).
    fn frame(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let bad = |_| io::Error::new(io::ErrorKind::InvalidData, "bad frame");
            if let Some((h, hl)) = FrameHeader::parse(&self.pending).map_err(bad)? {
                if h.len > (1 << 20) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "frame too large",
                    ));
                }
                let total = hl + h.len as usize;
                if self.pending.len() >= total {
                    let mut p: Vec<u8> = self.pending.drain(..total).skip(hl).collect();
                    if let Some(k) = h.mask {
                        mask::apply(&mut p, k, 0);
                    }
                    return match h.opcode {
                        OpCode::Close => Err(io::ErrorKind::ConnectionAborted.into()),
                        o if o.is_control() => Ok(()),
                        _ => {
                            self.data.extend_from_slice(&p);
                            Ok(())
                        }
                    };
                }
            }
            let n = self.tcp.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

fn send(tcp: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let h = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Binary,
        mask: None,
        len: payload.len() as u64,
    };
    let mut hb = [0u8; MAX_HEADER];
    let n = h.encode(&mut hb);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&hb[..n]);
    out.extend_from_slice(payload);
    tcp.write_all(&out)
}

/// The RFB server (RFC 6143 §7.1-7.3, security None), then the recording.
fn rfb(s: &Shared, mut tcp: TcpStream, early: Vec<u8>) -> io::Result<()> {
    let mut inc = Incoming {
        tcp: tcp.try_clone()?,
        pending: early,
        data: Vec::new(),
    };
    send(&mut tcp, b"RFB 003.008\n")?;
    let v = inc.take(12)?;
    let minor: u32 = std::str::from_utf8(&v[8..11])
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(3);
    if minor < 7 {
        send(&mut tcp, &[0, 0, 0, 1])?;
    } else {
        send(&mut tcp, &[1, 1])?;
        if inc.take(1)? != [1] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not security None",
            ));
        }
        if minor >= 8 {
            send(&mut tcp, &[0, 0, 0, 0])?;
        }
    }
    inc.take(1)?; // ClientInit
                  // From here on the client's messages are read and ignored.
    inc.tcp.set_read_timeout(None)?;
    let gone = Arc::new(AtomicBool::new(false));
    let g = gone.clone();
    std::thread::spawn(move || {
        while inc.frame().is_ok() {
            inc.data.clear();
        }
        g.store(true, Ordering::Relaxed);
    });
    let t0 = s.stream.first().map_or(0, |r| r.0);
    let mut played = 0f64; // recording micros shown
    let mut last = Instant::now();
    for (micros, data) in &s.stream {
        let target = micros.saturating_sub(t0) as f64;
        loop {
            if gone.load(Ordering::Relaxed) {
                return Ok(());
            }
            let c = s.control.lock().map(|c| *c).unwrap_or(Control {
                speed: 0.0,
                paused: false,
            });
            let now = Instant::now();
            if c.paused {
                last = now;
                std::thread::sleep(TICK);
                continue;
            }
            if c.speed == 0.0 {
                played = played.max(target);
                break;
            }
            played += now.duration_since(last).as_micros() as f64 * c.speed;
            last = now;
            if played >= target {
                break;
            }
            let wait = ((target - played) / c.speed).min(TICK.as_micros() as f64);
            std::thread::sleep(Duration::from_micros(wait as u64));
        }
        send(&mut tcp, data)?;
        if let Ok(mut p) = s.progress.lock() {
            p.at = target / 1e6;
        }
    }
    if let Ok(mut p) = s.progress.lock() {
        p.done = true;
    }
    // The screen stays up (noVNC drops its canvas on a close) until the
    // viewer leaves.
    while !gone.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
