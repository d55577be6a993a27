//! pveproxy's websocket_proxy (docs/proxmox.md §2.2): strict client framing (masked, FIN=1,
//! RSV=0, ≤ 128 KiB, opcodes 1/2/8/9/10), pong on ping, never a close frame or ping
//! from the server, upstream bytes sent as 0x82 frames cut at random sizes.

use std::io::Read;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::app::{App, Slot};
use crate::backend;
use crate::stats::Violation;
use crate::tls::TlsConn;

/// pveproxy's `$max_payload_size`.
pub const MAX_PAYLOAD: u64 = 128 * 1024;

/// One parsed client frame, or why parsing stopped.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Need more bytes.
    Incomplete,
    /// Fatal framing violation.
    Violation(ViolationKind),
    /// A complete frame: opcode, unmasked payload, bytes consumed.
    Frame(u8, Vec<u8>, usize),
}

/// Copy of [`Violation`] that can be compared in tests.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum ViolationKind {
    /// No mask bit.
    Unmasked,
    /// FIN=0.
    Fin0,
    /// RSV bits.
    Rsv,
    /// Payload > 128 KiB.
    TooBig,
    /// Unknown opcode.
    BadOpcode,
}

impl From<ViolationKind> for Violation {
    fn from(v: ViolationKind) -> Violation {
        match v {
            ViolationKind::Unmasked => Violation::Unmasked,
            ViolationKind::Fin0 => Violation::Fin0,
            ViolationKind::Rsv => Violation::Rsv,
            ViolationKind::TooBig => Violation::TooBig,
            ViolationKind::BadOpcode => Violation::BadOpcode,
        }
    }
}

/// Parses one client frame at the start of `b`.
pub fn parse(b: &[u8]) -> Parsed {
    if b.len() < 2 {
        return Parsed::Incomplete;
    }
    let (b0, b1) = (b[0], b[1]);
    if b0 & 0x70 != 0 {
        return Parsed::Violation(ViolationKind::Rsv);
    }
    if b0 & 0x80 == 0 {
        return Parsed::Violation(ViolationKind::Fin0);
    }
    let op = b0 & 0x0f;
    if !matches!(op, 1 | 2 | 8 | 9 | 10) {
        return Parsed::Violation(ViolationKind::BadOpcode);
    }
    if b1 & 0x80 == 0 {
        return Parsed::Violation(ViolationKind::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if b.len() < 4 {
                return Parsed::Incomplete;
            }
            (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Parsed::Incomplete;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Parsed::Violation(ViolationKind::TooBig);
    }
    if b.len() < at + 4 {
        return Parsed::Incomplete;
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let len = len as usize;
    if b.len() < at + len {
        return Parsed::Incomplete;
    }
    let payload = b[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    Parsed::Frame(op, payload, at + len)
}

/// An unmasked server frame header + payload.
pub fn server_frame(op: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | op);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// xorshift64* for the random frame cuts.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(u64::from_le_bytes(crate::ticket::random_bytes::<8>()) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Runs a websocket session after the 101 until either side ends it.
pub fn run(app: &Arc<App>, conn: &Arc<TlsConn>, initial: Vec<u8>, slot: &Slot) {
    let up = match backend::open(app, slot) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("pve-emu: backend for port {} failed: {e}", slot.port);
            conn.close(Duration::ZERO);
            return;
        }
    };
    let backend::Upstream {
        mut tx,
        rx,
        shutdown,
    } = up;
    let shutdown = Arc::new(shutdown);
    let down = {
        let (app, conn, shutdown) = (Arc::clone(app), Arc::clone(conn), Arc::clone(&shutdown));
        thread::spawn(move || downstream(&app, &conn, rx, &**shutdown))
    };
    let mut buf = initial;
    'outer: loop {
        loop {
            match parse(&buf) {
                Parsed::Incomplete => break,
                Parsed::Violation(v) => {
                    app.stats.violation(v.into());
                    conn.abort();
                    break 'outer;
                }
                Parsed::Frame(op, payload, used) => {
                    buf.drain(..used);
                    app.stats.frame(payload.len() as u64);
                    match op {
                        1 | 2 => {
                            app.stats.add(
                                if op == 1 {
                                    "text_frames"
                                } else {
                                    "binary_frames"
                                },
                                1,
                            );
                            app.stats.add("bytes_to_backend", payload.len() as u64);
                            if tx(&payload).is_err() {
                                conn.close(Duration::ZERO);
                                break 'outer;
                            }
                        }
                        8 => {
                            // half-close upstream and ourselves; never answer with a close frame
                            app.stats.add("close_frames", 1);
                            conn.close(Duration::ZERO);
                            break 'outer;
                        }
                        9 => {
                            app.stats.add("pings_received", 1);
                            let mut f = Vec::with_capacity(payload.len() + 10);
                            server_frame(0x0A, &payload, &mut f);
                            if conn.write_all(&f).is_err() {
                                break 'outer;
                            }
                            app.stats.add("pongs_sent", 1);
                        }
                        _ => app.stats.add("pongs_received", 1),
                    }
                }
            }
        }
        match conn.read_more(&mut buf, None) {
            Ok(true) => {}
            _ => {
                conn.close(Duration::ZERO);
                break;
            }
        }
    }
    shutdown();
    drop(tx);
    let _ = down.join();
}

/// Upstream → client: each read becomes 1..=3 binary frames cut at random points.
fn downstream(
    app: &App,
    conn: &TlsConn,
    mut rx: Box<dyn Read + Send>,
    shutdown: &(dyn Fn() + Send + Sync),
) {
    let mut rng = Rng::new();
    let mut sent: u64 = 0;
    let limit = app.cfg.faults.mid_stream_close;
    let mut buf = vec![0u8; MAX_PAYLOAD as usize];
    loop {
        let mut n = match rx.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut cut_here = false;
        if let Some(l) = limit {
            let left = l.saturating_sub(sent);
            if (n as u64) >= left {
                n = left as usize;
                cut_here = true;
            }
        }
        let data = &buf[..n];
        let pieces = if n >= 3 {
            1 + rng.below(3) as usize
        } else {
            n.max(1)
        };
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| 1 + rng.below(n as u64 - 1) as usize)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::with_capacity(n + 30);
        let mut prev = 0;
        for c in cuts.into_iter().chain(std::iter::once(n)) {
            if c > prev {
                server_frame(0x02, &data[prev..c], &mut out);
                app.stats.add("frames_sent", 1);
                prev = c;
            }
        }
        if !out.is_empty() {
            if conn.write_all(&out).is_err() {
                break;
            }
            sent += n as u64;
            app.stats.add("bytes_to_client", n as u64);
        }
        if cut_here {
            app.stats.add("mid_stream_closes", 1);
            break;
        }
    }
    // upstream closed: just close TLS/TCP, no close frame
    conn.close(Duration::ZERO);
    shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(op_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![op_byte];
        let m = [1u8, 2, 3, 4];
        let mb = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(mb | payload.len() as u8);
        } else if payload.len() <= 0xffff {
            f.push(mb | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            f.push(mb | 127);
            f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[test]
    fn framing_rules() {
        let f = client(0x82, b"hello", true);
        assert_eq!(parse(&f), Parsed::Frame(2, b"hello".to_vec(), f.len()));
        assert_eq!(parse(&f[..f.len() - 1]), Parsed::Incomplete);
        assert_eq!(
            parse(&client(0x82, b"x", false)),
            Parsed::Violation(ViolationKind::Unmasked)
        );
        assert_eq!(
            parse(&client(0x02, b"x", true)),
            Parsed::Violation(ViolationKind::Fin0)
        );
        assert_eq!(
            parse(&client(0xC2, b"x", true)),
            Parsed::Violation(ViolationKind::Rsv)
        );
        assert_eq!(
            parse(&client(0x83, b"x", true)),
            Parsed::Violation(ViolationKind::BadOpcode)
        );
        assert_eq!(
            parse(&client(0x80, b"x", true)),
            Parsed::Violation(ViolationKind::BadOpcode)
        );
        let big = vec![0u8; 131072];
        let f = client(0x82, &big, true);
        assert!(matches!(parse(&f), Parsed::Frame(2, _, _)));
        let f = client(0x82, &vec![0u8; 131073], true);
        assert_eq!(parse(&f), Parsed::Violation(ViolationKind::TooBig));
    }

    #[test]
    fn extreme_lengths_are_refused_before_any_arithmetic() {
        // 64-bit lengths up to u64::MAX: refused from the header alone,
        // before `at + len` or a slice is computed.
        for len in [u64::MAX, u64::MAX / 2 + 1, u64::from(u32::MAX) + 1, 131073] {
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4]);
            assert_eq!(parse(&f), Parsed::Violation(ViolationKind::TooBig), "{len}");
            assert_eq!(parse(&f[..10]), Parsed::Violation(ViolationKind::TooBig));
        }
        // A 16-bit length of u16::MAX is within the limit: it waits for it.
        let mut f = vec![0x82, 0x80 | 126, 0xff, 0xff, 1, 2, 3, 4];
        assert_eq!(parse(&f), Parsed::Incomplete);
        f.resize(8 + 0xffff, 0);
        assert!(matches!(parse(&f), Parsed::Frame(2, p, n) if p.len() == 0xffff && n == f.len()));
    }
}
