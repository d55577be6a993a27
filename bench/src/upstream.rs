//! Built-in upstream servers, shared by every peer in a run: a WebSocket
//! server (path `/echo`, `/sink`, `/source`, `/idle`), TCP echo, source
//! and sink listeners, and for the soak a TCP upstream and a TLS WebSocket
//! upstream that burst a checked byte stream at connect. They run on the
//! generator's own thread.

use crate::ws::{self, FrameBuf};
use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes received by the sinks (WebSocket and TCP), counted on the wire.
pub static SINK_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bumped at the end of every run; sources of older runs stop writing.
pub static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Upstream legs of idle sessions, held without a task until the run ends.
pub static HOLD: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());

/// Payload size of every bulk frame / chunk.
pub const CHUNK: usize = 64 * 1024;
/// Frames (or chunks) per bulk write.
const BATCH: usize = 4;

/// Where the upstreams listen.
#[derive(Clone, Debug)]
pub struct Upstreams {
    /// WebSocket server on 127.0.0.1.
    pub ws: SocketAddr,
    /// The same WebSocket server on 127.0.0.1..=127.0.0.k (many idle
    /// sessions: one relay→upstream address pair holds at most ~28k ports).
    pub ws_idle: Vec<SocketAddr>,
    pub tcp_echo: SocketAddr,
    pub tcp_source: SocketAddr,
    pub tcp_sink: SocketAddr,
    /// Bursts `BURST` bytes of the soak stream at connect (TCP).
    pub tcp_burst: SocketAddr,
    /// The same as 128 KiB binary frames over TLS + WebSocket.
    pub wss_burst: SocketAddr,
    /// SHA-256 of the `wss_burst` certificate, as the relay pins it.
    pub wss_fingerprint: String,
}

/// Bytes each burst upstream sends at connect (set once, before any session).
pub static BURST: AtomicU64 = AtomicU64::new(256 << 10);
/// Frame size of the `wss` burst (what pveproxy sends for a screen update).
pub const BURST_FRAME: usize = 128 << 10;
/// Seed of the burst stream (see `crate::soak::fill`).
pub const BURST_SEED: u64 = 0xb0b5_7ead;

fn listen(ip: Ipv4Addr) -> Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((ip, 0)).into())?;
    s.listen(8192)?;
    Ok(TcpListener::from_std(s.into())?)
}

#[derive(Clone, Copy)]
enum Kind {
    Ws,
    TcpEcho,
    TcpSource,
    TcpSink,
    TcpBurst,
    WssBurst,
}

fn serve(l: TcpListener, kind: Kind) {
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let _ = match kind {
                            Kind::Ws => ws_conn(s).await,
                            Kind::TcpEcho => tcp_echo(s).await,
                            Kind::TcpSource => source(s, tcp_batch()).await,
                            Kind::TcpSink => sink(s).await,
                            Kind::TcpBurst => tcp_burst(s).await,
                            Kind::WssBurst => wss_burst(s).await,
                        };
                    });
                }
                Err(e) => {
                    eprintln!("upstream accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    });
}

/// Binds and starts every upstream (inside the runtime).
pub fn start(idle_addrs: u8) -> Result<Upstreams> {
    let lo = Ipv4Addr::LOCALHOST;
    let ws = listen(lo)?;
    let mut ws_idle = vec![ws.local_addr()?];
    for i in 2..=idle_addrs {
        let l = listen(Ipv4Addr::new(127, 0, 0, i))?;
        ws_idle.push(l.local_addr()?);
        serve(l, Kind::Ws);
    }
    let (e, so, si) = (listen(lo)?, listen(lo)?, listen(lo)?);
    let (tb, wb) = (listen(lo)?, listen(lo)?);
    let u = Upstreams {
        ws: ws.local_addr()?,
        ws_idle,
        tcp_echo: e.local_addr()?,
        tcp_source: so.local_addr()?,
        tcp_sink: si.local_addr()?,
        tcp_burst: tb.local_addr()?,
        wss_burst: wb.local_addr()?,
        wss_fingerprint: crate::tls::upstream_fingerprint()?,
    };
    serve(ws, Kind::Ws);
    serve(e, Kind::TcpEcho);
    serve(so, Kind::TcpSource);
    serve(si, Kind::TcpSink);
    serve(tb, Kind::TcpBurst);
    serve(wb, Kind::WssBurst);
    Ok(u)
}

/// The burst, built once (every burst session gets the same bytes; the
/// browser checks each at its offset).
fn burst_bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| crate::soak::stream(BURST_SEED, 0, BURST.load(Ordering::Relaxed) as usize))
}

/// Writes the burst at connect, then drains until the relay closes.
async fn tcp_burst(mut s: TcpStream) -> Result<()> {
    s.write_all(burst_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

/// TLS, the WebSocket upgrade, the burst as 128 KiB binary frames, then
/// pings answered and the close returned.
async fn wss_burst(s: TcpStream) -> Result<()> {
    let mut s = crate::tls::upstream_acceptor().accept(s).await?;
    let (_, early) = ws::server_handshake(&mut s).await?;
    let mut out = Vec::with_capacity(BURST_FRAME + 16);
    for chunk in burst_bytes().chunks(BURST_FRAME) {
        out.clear();
        ws::put_header(&mut out, ws::OP_BINARY, chunk.len(), false);
        out.extend_from_slice(chunk);
        s.write_all(&out).await?;
    }
    s.flush().await?;
    let mut fb = FrameBuf::new(4096, &early);
    loop {
        while let Some((h, r)) = fb.next_frame() {
            if let Some(k) = h.mask {
                ws::unmask(&mut fb.buf[r.clone()], k);
            }
            let op = match h.opcode {
                ws::OP_PING => ws::OP_PONG,
                ws::OP_CLOSE => ws::OP_CLOSE,
                _ => continue,
            };
            out.clear();
            ws::put_header(&mut out, op, r.len(), false);
            out.extend_from_slice(&fb.buf[r]);
            s.write_all(&out).await?;
            s.flush().await?;
            if op == ws::OP_CLOSE {
                return Ok(());
            }
        }
        if fb.fill(&mut s).await? == 0 {
            return Ok(());
        }
    }
}

/// BATCH server frames of CHUNK bytes, built once.
fn ws_batch() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let mut b = Vec::with_capacity(BATCH * (CHUNK + 10));
        for _ in 0..BATCH {
            ws::put_header(&mut b, ws::OP_BINARY, CHUNK, false);
            b.resize(b.len() + CHUNK, 0x5a);
        }
        b
    })
}

fn tcp_batch() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| vec![0x5a; BATCH * CHUNK])
}

async fn ws_conn(mut s: TcpStream) -> Result<()> {
    let (path, early) = ws::server_handshake(&mut s).await?;
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/echo" => ws_echo(s, &early).await,
        "/sink" => {
            SINK_BYTES.fetch_add(early.len() as u64, Ordering::Relaxed);
            sink(s).await
        }
        "/source" => source(s, ws_batch()).await,
        "/idle" => {
            HOLD.lock().unwrap().push(s);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Echoes data frames back unmasked (as a server must), answers pings,
/// returns the close.
async fn ws_echo(mut s: TcpStream, early: &[u8]) -> Result<()> {
    let mut fb = FrameBuf::new(16 * 1024, early);
    let mut out = Vec::with_capacity(1024);
    loop {
        let mut closed = false;
        while let Some((h, r)) = fb.next_frame() {
            if let Some(k) = h.mask {
                ws::unmask(&mut fb.buf[r.clone()], k);
            }
            let op = match h.opcode {
                ws::OP_PING => ws::OP_PONG,
                ws::OP_PONG => continue,
                op => op,
            };
            ws::put_header(&mut out, op, r.len(), false);
            out.extend_from_slice(&fb.buf[r]);
            closed |= op == ws::OP_CLOSE;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if closed || fb.fill(&mut s).await? == 0 {
            return Ok(());
        }
    }
}

async fn tcp_echo(mut s: TcpStream) -> Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn sink(mut s: TcpStream) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        SINK_BYTES.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn source(mut s: TcpStream, batch: &'static [u8]) -> Result<()> {
    let epoch = EPOCH.load(Ordering::Relaxed);
    while EPOCH.load(Ordering::Relaxed) == epoch {
        s.write_all(batch).await?;
    }
    Ok(())
}
