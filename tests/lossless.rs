//! No byte is lost through the real relay when a peer writes faster than the
//! relay drains, with every core busy: the shapes that lost live consoles
//! (issue 10). Every byte is checked where it lands, and the session must
//! end with the browser's close 1000, recorded as such.
//!
//! Run on both drivers (`MONOIO_FORCE_LEGACY_DRIVER=1` for epoll). A failing
//! seed is printed; rerun one with `NEXOR_TLS_SEED=<seed>`.

mod common;
mod stress;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use stress::{check, fill, Rng, Spinners};
use tungstenite::Message;

/// CPU load for one test; stopped when the test ends.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

fn seed() -> u64 {
    let seed = std::env::var("NEXOR_TLS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        // Fixed: every run sends the same bytes (the load varies the rest).
        .unwrap_or(0x6c6f_7373);
    eprintln!("seed {seed} (NEXOR_TLS_SEED=<n> tries another)");
    seed
}

// ---- a wss browser that reads and writes at once --------------------------------

/// A browser's TLS connection to the relay after the 101, usable from two
/// threads: each does its socket I/O outside the lock on the connection.
#[derive(Clone)]
struct Browser {
    conn: Arc<Mutex<rustls::ClientConnection>>,
    tcp: Arc<TcpStream>,
}

/// Opens a wss session for a ticket to `upstream`; returns the browser and
/// the bytes that came after the 101 head.
fn open_browser(relay: &Relay, upstream: &str) -> (Browser, Vec<u8>) {
    let mut c = relay.conn();
    c.tcp().set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let req = relay.upgrade_request(
        &format!("/console?ticket={}", relay.ticket(upstream)),
        "Sec-WebSocket-Protocol: binary\r\n",
    );
    c.write_all(&req).unwrap();
    c.flush().unwrap();
    let (status, head, rest) = read_response_head(&mut c);
    assert_eq!(status, 101, "{head}");
    let Conn::Tls(s) = c else {
        panic!("the relay under test speaks TLS")
    };
    let s = *s;
    (
        Browser {
            conn: Arc::new(Mutex::new(s.conn)),
            tcp: Arc::new(s.sock),
        },
        rest,
    )
}

/// The reading side of a [`Browser`], with the plaintext it took from
/// rustls but not yet handed out.
struct BrowserReader {
    b: Browser,
    plain: Vec<u8>,
    at: usize,
}

impl Browser {
    fn reader(&self, rest: Vec<u8>) -> BrowserReader {
        BrowserReader {
            b: self.clone(),
            plain: rest,
            at: 0,
        }
    }
}

/// Moves all plaintext rustls has onto `plain`. True at the end
/// (close_notify).
fn drain(c: &mut rustls::ClientConnection, plain: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match c.reader().read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(k) => plain.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

impl Read for BrowserReader {
    /// Plaintext from the relay; `Ok(0)` after its close_notify.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tls = vec![0u8; 64 * 1024];
        loop {
            if self.at < self.plain.len() {
                let k = buf.len().min(self.plain.len() - self.at);
                buf[..k].copy_from_slice(&self.plain[self.at..self.at + k]);
                self.at += k;
                return Ok(k);
            }
            self.plain.clear();
            self.at = 0;
            if drain(&mut self.b.conn.lock().unwrap(), &mut self.plain)? && self.plain.is_empty() {
                return Ok(0);
            }
            if !self.plain.is_empty() {
                continue;
            }
            let n = (&*self.b.tcp).read(&mut tls)?;
            let mut c = self.b.conn.lock().unwrap();
            if n == 0 {
                c.read_tls(&mut &[][..])?;
                continue;
            }
            // Plaintext is taken after each piece, so rustls never holds
            // more than it allows.
            let mut fed = &tls[..n];
            while !fed.is_empty() {
                c.read_tls(&mut fed)?;
                c.process_new_packets().map_err(io::Error::other)?;
                if drain(&mut c, &mut self.plain)? {
                    break;
                }
            }
        }
    }
}

impl Write for Browser {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = Vec::new();
        let n = {
            let mut c = self.conn.lock().unwrap();
            let n = c.writer().write(buf)?;
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
            n
        };
        (&*self.tcp).write_all(&out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads slowly (small reads, pauses) until `until`, then as fast as it can.
struct SlowThenFast<R> {
    inner: R,
    until: Instant,
    rng: Rng,
}

impl<R: Read> Read for SlowThenFast<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() < self.until {
            thread::sleep(Duration::from_millis(self.rng.range(2, 10) as u64));
            let k = buf.len().min(self.rng.range(1, 512));
            return self.inner.read(&mut buf[..k]);
        }
        self.inner.read(buf)
    }
}

// ---- the session's end ----------------------------------------------------------

fn audit_end(relay: &Relay) -> serde_json::Value {
    let t = Instant::now();
    loop {
        if let Some(l) = relay
            .logs()
            .lines()
            .find(|l| l.contains("\"event\":\"session_end\""))
        {
            return serde_json::from_str(l).unwrap();
        }
        assert!(t.elapsed() < IO_TIMEOUT, "no session_end: {}", relay.logs());
        thread::sleep(Duration::from_millis(20));
    }
}

/// The browser's close 1000 ended the session, and was recorded so.
fn assert_clean_end(relay: &Relay, bytes_down: u64) {
    let end = audit_end(relay);
    assert_eq!(end["code"], 1000, "{end}");
    assert_eq!(end["reason"], "close", "{end}");
    assert_eq!(end["by"], "browser", "{end}");
    assert!(end.get("error").is_none(), "{end}");
    assert!(end["bytes_down"].as_u64().unwrap() >= bytes_down, "{end}");
}

/// Sends the browser's close 1000, then reads to the answering close: its code.
fn close_1000(b: &mut Browser, r: &mut impl Read, pending: &mut Vec<u8>) -> Option<u16> {
    write_frame(b, true, 8, &1000u16.to_be_bytes(), true);
    loop {
        let f = read_frame(r, pending).expect("the answering close");
        match f.opcode {
            8 => return close_code(&f),
            9 | 10 => {}
            op => panic!("opcode {op} after the browser's close"),
        }
    }
}

// ---- (a) a wss upstream bursting right after the upgrade -----------------------

const BURST: usize = 4 << 20;
const BURST_FRAME: usize = 128 << 10;

/// A TLS WebSocket server that sends `BURST` bytes as `BURST_FRAME` binary
/// frames right after the upgrade, then echoes a close.
fn wss_burst(stream: u64) -> Server {
    Server::start(move |tcp| {
        let c = rustls::ServerConnection::new(server_tls()).unwrap();
        let conn = Conn::ServerTls(Box::new(rustls::StreamOwned::new(c, tcp)));
        let Ok(mut ws) = tungstenite::accept(conn) else {
            return;
        };
        let mut at = 0;
        while at < BURST {
            let mut f = vec![0u8; BURST_FRAME];
            fill(stream, at as u64, &mut f);
            if ws.send(Message::binary(f)).is_err() {
                return;
            }
            at += BURST_FRAME;
        }
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

fn ca_file(dir: &tempfile::TempDir) -> String {
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs().ca_pem).unwrap();
    ca.display().to_string()
}

#[test]
fn wss_upstream_burst_reaches_a_slow_then_fast_browser_whole() {
    let _load = Spinners::start(LOAD_LIMIT);
    let seed = seed();
    let stream = stress::mix(seed);
    let up = wss_burst(stream);
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayBuilder::new(true)
        .upstream(
            "burst",
            &format!(
                "kind = \"ws\"\nurl = \"wss://localhost:{}/\"\nca_file = \"{}\"",
                up.addr.port(),
                ca_file(&dir)
            ),
        )
        .start();
    let (mut b, rest) = open_browser(&relay, "burst");
    let mut r = SlowThenFast {
        inner: b.reader(rest),
        until: Instant::now() + Duration::from_secs(1),
        rng: Rng::new(seed),
    };
    let mut pending = Vec::new();
    let mut got = 0u64;
    while got < BURST as u64 {
        let f = match read_frame(&mut r, &mut pending) {
            Ok(f) => f,
            Err(e) => panic!("browser: {e} after {got} of {BURST} bytes"),
        };
        match f.opcode {
            2 | 0 => {
                check("browser", stream, got, &f.payload);
                got += f.payload.len() as u64;
            }
            9 | 10 => {}
            8 => panic!("close {:?} after {got} of {BURST} bytes", close_code(&f)),
            op => panic!("opcode {op}"),
        }
    }
    assert_eq!(close_1000(&mut b, &mut r, &mut pending), Some(1000));
    assert_clean_end(&relay, BURST as u64);
}

// ---- (b), (c) a browser writing big messages while it reads the echo -----------

/// Sends messages of 1 B to 300 kB (about `total` bytes) from one thread
/// while another reads the echo and checks every byte; then closes.
fn echo_while_sending(relay: &Relay, upstream: &str, total: usize) {
    let seed = seed();
    let up_stream = stress::mix(seed ^ 0x7570);
    let mut rng = Rng::new(seed);
    let mut sizes = Vec::new();
    let mut sum = 0;
    while sum < total {
        let n = match rng.next() % 4 {
            0 => rng.range(1, 125),
            1 => rng.range(126, 70_000),
            _ => rng.range(1, 300_000),
        };
        sizes.push(n);
        sum += n;
    }
    let (mut b, rest) = open_browser(relay, upstream);
    let mut w = b.clone();
    let writer = thread::spawn(move || {
        let mut at = 0u64;
        for n in sizes {
            let mut m = vec![0u8; n];
            fill(up_stream, at, &mut m);
            write_frame(&mut w, true, 2, &m, true);
            at += n as u64;
        }
    });
    let (done_tx, done_rx) = mpsc::channel();
    let mut r = b.reader(rest);
    let reader = thread::spawn(move || {
        let mut pending = Vec::new();
        let mut got = 0u64;
        while got < sum as u64 {
            let f = match read_frame(&mut r, &mut pending) {
                Ok(f) => f,
                Err(e) => panic!("browser: {e} after {got} of {sum} echoed bytes"),
            };
            match f.opcode {
                2 | 0 => {
                    check("browser", up_stream, got, &f.payload);
                    got += f.payload.len() as u64;
                }
                9 | 10 => {}
                8 => panic!("close {:?} after {got} of {sum} bytes", close_code(&f)),
                op => panic!("opcode {op}"),
            }
        }
        done_tx.send(()).unwrap();
        (r, pending)
    });
    writer.join().expect("browser writer");
    let (mut r, mut pending) = match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => reader.join().unwrap(),
        Err(_) => {
            // The reader panics (its socket times out) or finishes: report it.
            match reader.join() {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    };
    assert_eq!(close_1000(&mut b, &mut r, &mut pending), Some(1000));
    assert_clean_end(relay, sum as u64);
}

#[test]
fn wss_browser_to_tcp_echo_sending_while_reading_loses_nothing() {
    let _load = Spinners::start(LOAD_LIMIT);
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(true)
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start();
    echo_while_sending(&relay, "t", 6 << 20);
}

#[test]
fn wss_browser_to_wss_echo_sending_while_reading_loses_nothing() {
    let _load = Spinners::start(LOAD_LIMIT);
    let echo = Server::ws_echo(true);
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayBuilder::new(true)
        .upstream(
            "w",
            &format!(
                "kind = \"ws\"\nurl = \"wss://localhost:{}/\"\nca_file = \"{}\"",
                echo.addr.port(),
                ca_file(&dir)
            ),
        )
        .start();
    echo_while_sending(&relay, "w", 6 << 20);
}
