//! What runs behind a one-shot port (docs/proxmox.md §3.3, §4, §5.2):
//! * VNC with a `--vnc-socket`: QMP `set_password` + `expire_password +30` like
//!   `qm vncproxy`, then the bytes of QEMU's real VNC unix socket.
//! * VNC without one: a built-in RFB 3.8 server (VNC auth, DES with the bit-reversed
//!   key, password valid 30 s). lxc: vncterm-like (`VNC Command Terminal`, 744x400,
//!   failure reason `password check failed!`); qemu: QEMU-like (`QEMU (emu-VMID)`,
//!   640x480, `Authentication failed`).
//! * termproxy: the auth line / `OK` / message parser of termproxy, with its split-header
//!   quirk, in front of QEMU's human monitor (`--monitor-socket`) or an echo "PTY".

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use serde_json::{json, Value};

use crate::app::{App, Slot, SlotKind};
use crate::http::now_secs;

/// termproxy's ByteBuffer size (auth line limit and read chunk).
const TERM_BUF: usize = 4096;
/// termproxy's auth line timeout.
const TERM_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU `expire_password +30` / vncterm.
const PASSWORD_LIFETIME: Duration = Duration::from_secs(30);

/// Type of the client→upstream writer.
pub type ChunkSink = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;

/// The "TCP connection to localhost:port" as seen by the websocket proxy.
pub struct Upstream {
    /// Writes one client frame payload (one TCP write in pveproxy).
    pub tx: ChunkSink,
    /// Reads upstream output.
    pub rx: Box<dyn Read + Send>,
    /// Tears the upstream down (unblocks readers).
    pub shutdown: Box<dyn Fn() + Send + Sync>,
}

fn stream_upstream(s: UnixStream) -> io::Result<Upstream> {
    let mut w = s.try_clone()?;
    let r = s.try_clone()?;
    Ok(Upstream {
        tx: Box::new(move |d| w.write_all(d)),
        rx: Box::new(r),
        shutdown: Box::new(move || {
            let _ = s.shutdown(Shutdown::Both);
        }),
    })
}

/// Connects the backend of a claimed slot (called right after the 101).
pub fn open(app: &Arc<App>, slot: &Slot) -> io::Result<Upstream> {
    if !slot.websocket {
        // without websocket=1 the real worker listens with TLS: nothing useful happens
        let (ours, theirs) = UnixStream::pair()?;
        thread::spawn(move || {
            let mut theirs = theirs;
            let _ = theirs.set_read_timeout(Some(PASSWORD_LIFETIME));
            let mut b = [0u8; 1];
            let _ = theirs.read(&mut b);
        });
        return stream_upstream(ours);
    }
    match slot.kind {
        SlotKind::Vnc => {
            if let Some(vnc) = app.cfg.vnc_sockets.get(&slot.vmid) {
                match app.cfg.qmp_sockets.get(&slot.vmid) {
                    Some(qmp) => {
                        qmp_set_password(app, qmp, &slot.vnc_password)?;
                        app.stats.vnc_password_set();
                    }
                    None => eprintln!(
                        "pve-emu: no --qmp-socket for {}: password not set",
                        slot.vmid
                    ),
                }
                stream_upstream(UnixStream::connect(vnc)?)
            } else {
                let (ours, theirs) = UnixStream::pair()?;
                let (app2, pw) = (Arc::clone(app), slot.vnc_password.clone());
                let spec = if slot.lxc {
                    RfbSpec {
                        name: "VNC Command Terminal".into(),
                        width: 744,
                        height: 400,
                        reason: "password check failed!",
                    }
                } else {
                    RfbSpec {
                        name: format!("QEMU (emu-{})", slot.vmid),
                        width: 640,
                        height: 480,
                        reason: "Authentication failed",
                    }
                };
                thread::spawn(move || {
                    let _ = rfb_server(&app2, theirs, &pw, &spec);
                });
                stream_upstream(ours)
            }
        }
        SlotKind::Term => {
            let (ours, theirs) = UnixStream::pair()?;
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(64);
            let (app2, slot2) = (Arc::clone(app), slot.clone());
            thread::spawn(move || term_server(&app2, &slot2, rx, theirs));
            let r = ours.try_clone()?;
            Ok(Upstream {
                tx: Box::new(move |d| {
                    tx.send(d.to_vec())
                        .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
                }),
                rx: Box::new(r),
                shutdown: Box::new(move || {
                    let _ = ours.shutdown(Shutdown::Both);
                }),
            })
        }
    }
}

// ---- QMP ---------------------------------------------------------------------

fn qmp_cmd(r: &mut impl BufRead, w: &mut impl Write, cmd: &Value) -> io::Result<Value> {
    w.write_all(format!("{cmd}\n").as_bytes())?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP closed"));
        }
        let v: Value = serde_json::from_str(&line).map_err(io::Error::other)?;
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if let Some(e) = v.get("error") {
            return Err(io::Error::other(format!("QMP error: {e}")));
        }
        // an event: skip
    }
}

/// `qm vncproxy`: set_password + expire_password +30 over QMP.
pub fn qmp_set_password(app: &App, path: &Path, password: &str) -> io::Result<()> {
    let _g = match app.qmp_lock.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting)?;
    if !greeting.contains("QMP") {
        return Err(io::Error::other("no QMP greeting"));
    }
    qmp_cmd(&mut r, &mut w, &json!({"execute": "qmp_capabilities"}))?;
    qmp_cmd(
        &mut r,
        &mut w,
        &json!({"execute": "set_password", "arguments": {"protocol": "vnc", "password": password}}),
    )?;
    qmp_cmd(
        &mut r,
        &mut w,
        &json!({"execute": "expire_password", "arguments": {"protocol": "vnc", "time": "+30"}}),
    )?;
    Ok(())
}

// ---- built-in RFB server --------------------------------------------------------

struct RfbSpec {
    name: String,
    width: u16,
    height: u16,
    reason: &'static str,
}

/// The VNC Authentication response (§6.2): DES-ECB with the bit-reversed password.
pub fn des_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password.iter()) {
        *k = p.reverse_bits();
    }
    let cipher = des::Des::new(GenericArray::from_slice(&key));
    let mut out = *challenge;
    for half in out.chunks_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(half));
    }
    out
}

fn rfb_server(app: &App, mut s: UnixStream, password: &str, spec: &RfbSpec) -> io::Result<()> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15 * 60)))?;
    s.write_all(b"RFB 003.008\n")?;
    let mut v = [0u8; 12];
    s.read_exact(&mut v)?;
    let minor = match &v {
        b"RFB 003.003\n" | b"RFB 003.004\n" | b"RFB 003.005\n" => 3,
        b"RFB 003.007\n" => 7,
        b"RFB 003.008\n" => 8,
        _ => return Ok(()),
    };
    let fail = |s: &mut UnixStream| -> io::Result<()> {
        app.stats.add("rfb_auth_failed", 1);
        s.write_all(&1u32.to_be_bytes())?;
        if minor == 8 {
            s.write_all(&(spec.reason.len() as u32).to_be_bytes())?;
            s.write_all(spec.reason.as_bytes())?;
        }
        Ok(())
    };
    if minor == 3 {
        s.write_all(&2u32.to_be_bytes())?;
    } else {
        s.write_all(&[1, 2])?;
        let mut c = [0u8; 1];
        s.read_exact(&mut c)?;
        if c[0] != 2 {
            return fail(&mut s);
        }
    }
    let challenge = crate::ticket::random_bytes::<16>();
    s.write_all(&challenge)?;
    let mut resp = [0u8; 16];
    s.read_exact(&mut resp)?;
    if resp != des_response(password.as_bytes(), &challenge) || start.elapsed() >= PASSWORD_LIFETIME
    {
        return fail(&mut s);
    }
    app.stats.add("rfb_auth_ok", 1);
    s.write_all(&0u32.to_be_bytes())?;
    let mut shared = [0u8; 1];
    s.read_exact(&mut shared)?;
    let mut init = Vec::new();
    init.extend_from_slice(&spec.width.to_be_bytes());
    init.extend_from_slice(&spec.height.to_be_bytes());
    // 32 bpp, depth 24, little endian, true colour, 255/255/255, shifts 16/8/0
    init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    init.extend_from_slice(&(spec.name.len() as u32).to_be_bytes());
    init.extend_from_slice(spec.name.as_bytes());
    s.write_all(&init)?;
    let mut bpp = 32usize;
    loop {
        let mut t = [0u8; 1];
        s.read_exact(&mut t)?;
        match t[0] {
            0 => {
                let mut b = [0u8; 19];
                s.read_exact(&mut b)?;
                bpp = usize::from(b[3]).max(8);
            }
            2 => {
                let mut b = [0u8; 3];
                s.read_exact(&mut b)?;
                let n = u16::from_be_bytes([b[1], b[2]]) as usize;
                let mut e = vec![0u8; 4 * n];
                s.read_exact(&mut e)?;
            }
            3 => {
                let mut b = [0u8; 9];
                s.read_exact(&mut b)?;
                if b[0] != 0 {
                    continue; // incremental: nothing changes on this screen
                }
                let x = u16::from_be_bytes([b[1], b[2]]).min(spec.width);
                let y = u16::from_be_bytes([b[3], b[4]]).min(spec.height);
                let w = u16::from_be_bytes([b[5], b[6]]).min(spec.width - x);
                let h = u16::from_be_bytes([b[7], b[8]]).min(spec.height - y);
                let mut u = vec![0u8, 0, 0, 1];
                for v in [x, y, w, h] {
                    u.extend_from_slice(&v.to_be_bytes());
                }
                u.extend_from_slice(&0i32.to_be_bytes());
                u.resize(u.len() + usize::from(w) * usize::from(h) * (bpp / 8), 0);
                s.write_all(&u)?;
            }
            4 => {
                let mut b = [0u8; 7];
                s.read_exact(&mut b)?;
            }
            5 => {
                let mut b = [0u8; 5];
                s.read_exact(&mut b)?;
            }
            6 => {
                let mut b = [0u8; 7];
                s.read_exact(&mut b)?;
                let n = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as u64;
                io::copy(&mut (&mut s).take(n), &mut io::sink())?;
            }
            _ => return Ok(()),
        }
    }
}

// ---- termproxy ------------------------------------------------------------------

/// Byte `i` of `--fault burst=N`: a position-dependent sequence, so a lost,
/// doubled or reordered byte shows as a mismatch at its position.
pub fn burst_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// termproxy's `remove_number`: digits up to ':' (consumed even when unparsable);
/// without ':' more than 20 bytes are discarded 20 at a time.
fn remove_number(buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(pos) = buf.iter().position(|&x| x == b':') {
            let data: Vec<u8> = buf.drain(..pos).collect();
            buf.drain(..1);
            return std::str::from_utf8(&data).ok()?.parse().ok();
        } else if buf.len() > 20 {
            buf.drain(..20);
        } else {
            return None;
        }
    }
}

/// Parser events reported by [`process_queue`].
#[derive(Debug, PartialEq)]
enum TermEvent {
    Resize(usize, usize),
    Desync,
}

/// termproxy's `process_queue`: returns the length of the next data message.
/// Reports a desync each time a header was consumed without its number(s).
fn process_queue(buf: &mut Vec<u8>, ev: &mut impl FnMut(TermEvent)) -> Option<usize> {
    loop {
        if buf.len() < 2 {
            return None;
        }
        match buf[0].wrapping_sub(b'0') {
            0 => {
                buf.drain(..2);
                if let Some(len) = remove_number(buf) {
                    return Some(len);
                }
                ev(TermEvent::Desync);
            }
            1 => {
                buf.drain(..2);
                match remove_number(buf) {
                    Some(cols) => match remove_number(buf) {
                        Some(rows) => ev(TermEvent::Resize(cols, rows)),
                        None => ev(TermEvent::Desync),
                    },
                    None => ev(TermEvent::Desync),
                }
            }
            _ => {
                buf.drain(..1);
            }
        }
    }
}

/// Moves at most the free space of termproxy's buffer from `pending` into `buf`.
fn fill(buf: &mut Vec<u8>, pending: &mut Vec<u8>) {
    let n = TERM_BUF.saturating_sub(buf.len()).min(pending.len());
    buf.extend(pending.drain(..n));
}

fn term_server(app: &App, slot: &Slot, rx: Receiver<Vec<u8>>, out: UnixStream) {
    let ok = term_session(app, slot, &rx, &out);
    if let Err(e) = ok {
        eprintln!("pve-emu: termproxy on port {}: {e}", slot.port);
    }
    let _ = out.shutdown(Shutdown::Both);
}

fn term_session(
    app: &App,
    slot: &Slot,
    rx: &Receiver<Vec<u8>>,
    out: &UnixStream,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(TERM_BUF);
    let mut pending: Vec<u8> = Vec::new();
    let deadline = Instant::now() + TERM_AUTH_TIMEOUT;
    let nl = loop {
        if pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(c) => pending = c,
                Err(RecvTimeoutError::Timeout) => {
                    app.stats.add("term_auth_failed", 1);
                    return Err(io::Error::other("failed reading ticket: timed out"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("connection closed before authentication"))
                }
            }
        }
        fill(&mut buf, &mut pending);
        if let Some(p) = buf.iter().position(|&b| b == b'\n') {
            break p;
        }
        if buf.len() >= TERM_BUF {
            app.stats.add("term_auth_failed", 1);
            return Err(io::Error::other("authentication data is incomplete"));
        }
    };
    let line: Vec<u8> = buf.drain(..nl).collect();
    buf.drain(..1);
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        app.stats.add("term_auth_failed", 1);
        return Err(io::Error::other("authentication data is invalid"));
    };
    let user = String::from_utf8_lossy(&line[..colon]).into_owned();
    let ticket = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
    let path = format!("/vms/{}", slot.vmid);
    let old = app.cfg.old_format;
    // old systems verify via /access/ticket with username=authid: tokens cannot log in
    let valid = !(old && user.contains('!'))
        && app.signer.verify(
            &ticket,
            &user,
            &path,
            (!old).then_some(slot.port),
            now_secs(),
        );
    if !valid {
        app.stats.add("term_auth_failed", 1);
        return Err(io::Error::other(format!(
            "invalid authentication for {user}"
        )));
    }
    app.stats.add("term_auth_ok", 1);
    let mut out_w = out.try_clone()?;
    out_w.write_all(b"OK")?;
    if let Some(n) = app.cfg.faults.burst {
        let mut at = 0u64;
        let mut chunk = Vec::with_capacity(64 * 1024);
        while at < n {
            chunk.clear();
            let end = n.min(at.saturating_add(64 * 1024));
            chunk.extend((at..end).map(burst_byte));
            out_w.write_all(&chunk)?;
            at = end;
        }
        app.stats.add("burst_bytes", n);
    }
    // the "PTY": QEMU's monitor, or an echo
    let monitor = match app.cfg.monitor_sockets.get(&slot.vmid) {
        Some(p) => Some(UnixStream::connect(p)?),
        None => None,
    };
    let mut pty: Box<dyn Write> = match &monitor {
        Some(m) => {
            let mut mr = m.try_clone()?;
            let mut ow = out.try_clone()?;
            let oc = out.try_clone()?;
            thread::spawn(move || {
                let _ = io::copy(&mut mr, &mut ow);
                let _ = oc.shutdown(Shutdown::Both);
            });
            Box::new(m.try_clone()?)
        }
        None => Box::new(out.try_clone()?),
    };
    let mut remaining = 0usize;
    let result = loop {
        while !buf.is_empty() {
            if remaining == 0 {
                let mut ev = |e| match e {
                    TermEvent::Resize(c, r) => app.stats.resize(c as u64, r as u64),
                    TermEvent::Desync => app.stats.add("desyncs", 1),
                };
                match process_queue(&mut buf, &mut ev) {
                    Some(n) => remaining = n,
                    None => break,
                }
            }
            let len = remaining.min(buf.len());
            if let Err(e) = pty.write_all(&buf[..len]) {
                break_out(&monitor);
                return Err(e);
            }
            app.stats.add("term_bytes_to_pty", len as u64);
            remaining -= len;
            buf.drain(..len);
        }
        if pending.is_empty() {
            match rx.recv() {
                Ok(c) => pending = c,
                Err(_) => break Ok(()),
            }
        }
        fill(&mut buf, &mut pending);
    };
    break_out(&monitor);
    result
}

fn break_out(monitor: &Option<UnixStream>) {
    if let Some(m) = monitor {
        let _ = m.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn des_vectors() {
        let mut ch = [0u8; 16];
        for (i, b) in ch.iter_mut().enumerate() {
            *b = i as u8;
        }
        let hex = |b: [u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(des_response(b"password", &ch)),
            "b866924125c8eebb9debc1db61c538e2"
        );
        assert_eq!(
            hex(des_response(b"Ab3!x:Z9", &ch)),
            "e4d64cf5c2ee8375299ac44ed9419cc5"
        );
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<TermEvent>) {
        let (mut buf, mut data, mut evs, mut remaining) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for c in chunks {
            buf.extend_from_slice(c);
            while !buf.is_empty() {
                if remaining == 0 {
                    match process_queue(&mut buf, &mut |e| evs.push(e)) {
                        Some(n) => remaining = n,
                        None => break,
                    }
                }
                let len = remaining.min(buf.len());
                data.extend(buf.drain(..len));
                remaining -= len;
            }
        }
        (data, evs)
    }

    #[test]
    fn termproxy_parser() {
        let (d, e) = run(&[b"0:5:hello1:80:24:2", b"0:3:abc"]);
        assert_eq!(d, b"helloabc");
        assert_eq!(e, vec![TermEvent::Resize(80, 24)]);
        // split right after the type digit: harmless
        let (d, e) = run(&[b"0", b":5:hello"]);
        assert_eq!((d.as_slice(), e.len()), (&b"hello"[..], 0));
        // split after "0:" desynchronises: the length digits are taken as type bytes
        let (d, e) = run(&[b"0:", b"5:hello"]);
        assert_eq!(e, vec![TermEvent::Desync]);
        assert_ne!(d, b"hello");
        // split inside the number
        // ("12:..." is then read as a resize header with an empty number: 2 desyncs)
        let (_, e) = run(&[b"0:1", b"2:hello world!"]);
        assert_eq!(e, vec![TermEvent::Desync, TermEvent::Desync]);
        // split inside a resize
        let (_, e) = run(&[b"1:80:", b"24:"]);
        assert_eq!(e, vec![TermEvent::Desync]);
        // payload split across chunks is fine
        let (d, e) = run(&[b"0:11:hello", b" world"]);
        assert_eq!((d.as_slice(), e.len()), (&b"hello world"[..], 0));
    }
}
