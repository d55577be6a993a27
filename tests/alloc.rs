//! No allocation per message in steady state (issue 15): a counting global
//! allocator counts what the relay's thread allocates while a browser and
//! an upstream, on threads of their own, echo thousands of small messages
//! through `relay::run` over real loopback sockets: a WebSocket upstream
//! (frames pass through), a raw TCP upstream (the relay frames its bytes),
//! and a TLS browser leg (where rustls itself allocates, see its test).
//!
//! Runs on the driver the environment picks (`MONOIO_FORCE_LEGACY_DRIVER=1`
//! for epoll).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nexor_relay::relay::{self, Leg, Mode, Settings};
use nexor_relay::transport::{Stream, TlsAcceptor};

/// Allocations made by threads that opted in (the relay's), all of them.
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Heap bytes the opted-in threads hold: allocated minus freed.
static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// One session at a time: the count is global.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count(n as i64 - l.size() as i64);
        System.realloc(p, l, n)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if counted() {
            LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        }
        System.dealloc(p, l)
    }
}

fn counted() -> bool {
    // `try_with`: no count while the thread-local is torn down.
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

fn count(bytes: i64) {
    if counted() {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Messages before counting (buffers, pools and tables reach their size).
const WARM: usize = 500;
/// Messages counted.
const MSGS: usize = 5000;
const PAYLOAD: usize = 64;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let s = l.accept().unwrap().0;
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// A masked binary frame (what a browser sends) with a small payload.
fn masked(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Reads one unmasked small binary frame; returns its payload.
fn read_frame(r: &mut impl Read) -> Vec<u8> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x82, "a binary frame");
    assert_eq!(h[1] & 0x80, 0, "unmasked");
    let mut p = vec![0u8; (h[1] & 0x7f) as usize];
    r.read_exact(&mut p).unwrap();
    p
}

/// The upstream: echoes what it reads, as frames (WebSocket upstream:
/// unmasks the relay's masked frames, answers unmasked) or raw bytes.
fn upstream(mut tcp: TcpStream, frames: bool) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            if frames {
                let mut h = [0u8; 2];
                if tcp.read_exact(&mut h).is_err() {
                    return;
                }
                if h[0] & 0x0f == 0x8 {
                    // Close: answer it and end.
                    let mut rest = vec![0u8; 4 + (h[1] & 0x7f) as usize];
                    let _ = tcp.read_exact(&mut rest);
                    let _ = tcp.write_all(&[0x88, 0x00]);
                    return;
                }
                let len = (h[1] & 0x7f) as usize;
                let mut key = [0u8; 4];
                tcp.read_exact(&mut key).unwrap();
                let mut p = vec![0u8; len];
                tcp.read_exact(&mut p).unwrap();
                for (i, b) in p.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
                let mut f = vec![0x82, len as u8];
                f.extend_from_slice(&p);
                tcp.write_all(&f).unwrap();
            } else {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => tcp.write_all(&buf[..n]).unwrap(),
                }
            }
        }
    })
}

/// The browser: `WARM` messages, then `MSGS` counted ones, one at a time,
/// each echo checked; returns the allocations the relay's thread made
/// during the counted ones.
fn browser<S: Read + Write>(s: &mut S) -> u64 {
    let mut before = 0;
    for i in 0..WARM + MSGS {
        if i == WARM {
            before = ALLOCS.load(Ordering::Relaxed);
        }
        let mut payload = [0u8; PAYLOAD];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        s.write_all(&masked(&payload)).unwrap();
        s.flush().unwrap();
        assert_eq!(read_frame(s), payload, "echo {i}");
    }
    ALLOCS.load(Ordering::Relaxed) - before
}

fn settings() -> Settings {
    Settings {
        max_frame: 1 << 20,
        ping_interval: Some(Duration::from_secs(30)),
        pong_timeout: Some(Duration::from_secs(10)),
        lifetime: Some(Duration::from_secs(3600)),
        idle_timeout: Some(Duration::from_secs(600)),
        view: None,
    }
}

fn runtime() -> monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// Runs one session on this thread with its allocations counted; the
/// browser's side runs `client` on another thread over `b_peer`.
fn session(
    mode: Mode,
    tls: Option<TlsAcceptor>,
    client: impl FnOnce(TcpStream) -> u64 + Send + 'static,
) -> u64 {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (b_peer, b_relay) = pair();
    let (u_peer, u_relay) = pair();
    let up = upstream(u_peer, mode == Mode::Frames);
    let br = thread::spawn(move || client(b_peer));
    let mut rt = runtime();
    rt.block_on(async move {
        COUNTED.with(|c| c.set(true));
        let b = monoio::net::TcpStream::from_std(b_relay).unwrap();
        let b = match tls {
            Some(a) => Stream::Tls(Box::new(a.accept(b).await.unwrap())),
            None => Stream::Tcp(b),
        };
        let u = Stream::Tcp(monoio::net::TcpStream::from_std(u_relay).unwrap());
        let ((brd, bwr), (urd, uwr)) = (b.into_split(), u.into_split());
        let leg = |reader, writer| Leg {
            reader,
            writer,
            early: Vec::new(),
        };
        let out = relay::run(leg(brd, bwr), leg(urd, uwr), mode, settings(), None, None).await;
        COUNTED.with(|c| c.set(false));
        assert_eq!(out.error, None, "{out:?}");
    });
    let allocs = br.join().unwrap();
    up.join().unwrap();
    allocs
}

/// Ends the session as a browser does: a masked close, then its answer.
fn close<S: Read + Write>(s: &mut S) {
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).unwrap();
    s.flush().unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x88, "the close answer");
}

fn plain_browser(mut tcp: TcpStream) -> u64 {
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let n = browser(&mut tcp);
    close(&mut tcp);
    n
}

/// `allowed` per message: 0, except on a TLS leg (see the TLS test).
fn check(what: &str, allocs: u64, allowed: u64) {
    eprintln!("{what}: {allocs} allocations on the relay's thread in {MSGS} echoed messages");
    assert!(
        allocs <= allowed * MSGS as u64,
        "{what}: the relay allocated {allocs} times in {MSGS} messages (at most {allowed} per message)"
    );
}

#[test]
fn frames_upstream_allocates_nothing_per_message() {
    check("ws upstream", session(Mode::Frames, None, plain_browser), 0);
}

#[test]
fn raw_upstream_allocates_nothing_per_message() {
    check("tcp upstream", session(Mode::Bytes, None, plain_browser), 0);
}

#[test]
fn tls_browser_allocates_nothing_per_message() {
    let ss = nexor_relay::tls::self_signed().unwrap();
    let acceptor = TlsAcceptor::from(ss.config.clone());
    let trust = nexor_relay::config::Trust::Fingerprint(ss.fingerprint);
    let client_cfg = nexor_relay::tls::client_config(&trust).unwrap();
    let allocs = session(Mode::Bytes, Some(acceptor), move |tcp| {
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&client_cfg), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let n = browser(&mut tls);
        close(&mut tls);
        n
    });
    // rustls' buffered connection keeps each record it decrypts, and each
    // it encrypts, in a `Vec` of its own: one allocation per message each
    // way, inside rustls. The glue adds none (its buffers are the thread's
    // scratch). Only rustls' unbuffered API would remove these two
    // (BENCHMARKING.md, "Allocation").
    check("tls browser", allocs, 2);
}

/// Sessions held idle for the memory check.
const IDLE: usize = 300;
/// What the relay core's glue may hold per idle session, in heap bytes:
/// the two pump tasks, the main task with its timer, the shared core and
/// the legs' sockets (about 4.9 KiB in a debug build). A read buffer
/// pinned per leg (1 KiB each) or a future held twice (as the panic net
/// once did, 1.2 KiB a pump) breaks it.
const IDLE_BUDGET: i64 = 6 * 1024;

/// An idle session pins no read buffer: the heap the relay's thread holds
/// per idle session (plaintext, WebSocket upstream) stays under budget.
#[test]
fn idle_sessions_hold_no_read_buffer() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pairs: Vec<_> = (0..IDLE).map(|_| (pair(), pair())).collect();
    let mut rt = runtime();
    let per = rt.block_on(async move {
        let mut peers = Vec::new();
        let mut legs = Vec::new();
        for ((b_peer, b_relay), (u_peer, u_relay)) in pairs {
            peers.push((b_peer, u_peer));
            legs.push((b_relay, u_relay));
        }
        COUNTED.with(|c| c.set(true));
        let before = LIVE.load(Ordering::Relaxed);
        let mut tasks = Vec::new();
        for (b, u) in legs {
            let b = Stream::Tcp(monoio::net::TcpStream::from_std(b).unwrap());
            let u = Stream::Tcp(monoio::net::TcpStream::from_std(u).unwrap());
            let ((brd, bwr), (urd, uwr)) = (b.into_split(), u.into_split());
            let leg = |reader, writer| Leg {
                reader,
                writer,
                early: Vec::new(),
            };
            let run = relay::run(
                leg(brd, bwr),
                leg(urd, uwr),
                Mode::Frames,
                settings(),
                None,
                None,
            );
            tasks.push(monoio::spawn(run));
        }
        // Every session starts and waits on its sockets.
        monoio::time::sleep(Duration::from_millis(200)).await;
        let held = LIVE.load(Ordering::Relaxed) - before;
        // The task handles are the test's, not the sessions'.
        let per =
            (held - (tasks.capacity() * std::mem::size_of_val(&tasks[0])) as i64) / IDLE as i64;
        COUNTED.with(|c| c.set(false));
        drop(peers); // both legs vanish: every session ends
        for t in tasks {
            let _ = t.await;
        }
        per
    });
    eprintln!("an idle session holds {per} heap bytes in the relay core's glue");
    assert!(
        per <= IDLE_BUDGET,
        "an idle session holds {per} heap bytes, over the budget of {IDLE_BUDGET}"
    );
}
