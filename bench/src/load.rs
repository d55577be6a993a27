//! The load itself: sessions that stream, echo, sit idle or churn, all on the
//! generator's single-threaded runtime.

use crate::peers::{Peer, PeerKind, Up};
use crate::ticket::Minter;
use crate::upstream::{CHUNK, EPOCH, HOLD, SINK_BYTES};
use crate::ws::{self, Conn, FrameBuf};
use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// Metrics of one run, by name.
pub type Metrics = BTreeMap<String, f64>;

/// How to reach a peer: copied into every session task.
#[derive(Clone)]
pub struct Dial {
    pub kind: PeerKind,
    pub addr: SocketAddr,
    pub tls: Option<TlsConnector>,
    pub minter: Arc<Minter>,
}

impl Dial {
    pub fn new(p: &Peer, tls: &TlsConnector, minter: &Arc<Minter>) -> Self {
        Dial {
            kind: p.kind,
            addr: p.addr,
            tls: p.tls.then(|| tls.clone()),
            minter: minter.clone(),
        }
    }

    /// Connects (from one of 127.0.0.2..=127.0.0.9, so 100k sessions fit
    /// the ephemeral port range), does TLS if any and the upgrade.
    pub async fn open(&self, up: Up) -> Result<(Conn, Vec<u8>)> {
        static SRC: AtomicUsize = AtomicUsize::new(0);
        let target = match self.kind {
            PeerKind::RelayUring | PeerKind::RelayEpoll | PeerKind::RelayFleet => {
                format!("/console?ticket={}", self.minter.mint(&up.name()))
            }
            PeerKind::Nginx => format!("/{}?ticket={}", up.name(), self.minter.mint(&up.name())),
            PeerKind::Websockify => format!("/?ticket={}", self.minter.mint(&up.name())),
            PeerKind::Direct => up.direct_path().to_string(),
        };
        let sock = TcpSocket::new_v4()?;
        let one: libc::c_int = 1;
        // IP_BIND_ADDRESS_NO_PORT: pick the port at connect, per destination.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                24,
                &one as *const _ as *const libc::c_void,
                4,
            );
        }
        let i = SRC.fetch_add(1, Ordering::Relaxed) % 8;
        sock.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + i as u8), 0)))?;
        let tcp = sock.connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut c = match &self.tls {
            Some(t) => Conn::Tls(Box::new(t.connect("localhost".try_into()?, tcp).await?)),
            None => Conn::Plain(tcp),
        };
        let early = ws::client_handshake(&mut c, &target).await?;
        Ok((c, early))
    }
}

/// Opens `n` sessions with `conc` in flight; each is handed to `f`.
/// Returns the tasks, and counters of sessions up and failed.
fn spawn_sessions<F, Fut>(
    dial: &Dial,
    n: usize,
    conc: usize,
    up: impl Fn(usize) -> Up + Send + Sync + 'static,
    f: F,
) -> Spawned
where
    F: Fn(usize, Conn, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut s = Spawned {
        ok: Arc::new(AtomicUsize::new(0)),
        failed: Arc::new(AtomicUsize::new(0)),
        tasks: Vec::new(),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let (f, up) = (Arc::new(f), Arc::new(up));
    let errors_shown = Arc::new(AtomicUsize::new(0));
    for _ in 0..conc.min(n).max(1) {
        let (dial, next, f, up, ok, failed, shown) = (
            dial.clone(),
            next.clone(),
            f.clone(),
            up.clone(),
            s.ok.clone(),
            s.failed.clone(),
            errors_shown.clone(),
        );
        s.tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                match dial.open(up(i)).await {
                    Ok((c, early)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(f(i, c, early));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if shown.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("    session open failed: {e:#}");
                        }
                    }
                }
            }
        }));
    }
    s
}

/// Sessions being opened.
struct Spawned {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Spawned {
    /// Waits until every session is up or failed (or `limit` passes).
    async fn settle(&self, n: usize, limit: Duration) -> (usize, usize) {
        let t0 = Instant::now();
        loop {
            let (ok, failed) = (
                self.ok.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            );
            if ok + failed >= n || t0.elapsed() > limit {
                return (ok, failed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Session tasks of the current run (aborted at its end).
static LIVE: Mutex<Vec<tokio::task::AbortHandle>> = Mutex::new(Vec::new());

fn track(h: JoinHandle<()>) {
    LIVE.lock().unwrap().push(h.abort_handle());
}

/// Ends a run: aborts its session tasks, stops sources, drops held legs.
async fn end_run() {
    for h in LIVE.lock().unwrap().drain(..) {
        h.abort();
    }
    EPOCH.fetch_add(1, Ordering::Relaxed);
    HOLD.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Bytes the browser side has read (bulk down).
static DOWN_BYTES: AtomicU64 = AtomicU64::new(0);

fn client_batch() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let mut b = Vec::new();
        for _ in 0..4 {
            ws::put_header(&mut b, ws::OP_BINARY, CHUNK, true);
            b.resize(b.len() + CHUNK, 0xa5);
        }
        b
    })
}

/// Snapshot of peer CPU, generator CPU and a byte counter.
struct Snap {
    t: Instant,
    cpu: f64,
    gen: f64,
    bytes: u64,
}

fn snap(peer: &Peer, bytes: u64) -> Snap {
    Snap {
        t: Instant::now(),
        cpu: peer.cpu_secs(),
        gen: crate::peers::self_cpu_secs(),
        bytes,
    }
}

/// `bulk`: `n` sessions streaming 64 KiB frames one way for `secs`.
pub async fn bulk(peer: &Peer, dial: &Dial, up: Up, n: usize, secs: f64) -> Result<Metrics> {
    let down = matches!(up, Up::WsSource | Up::TcpSource);
    let sp = spawn_sessions(
        dial,
        n,
        64,
        move |_| up,
        move |_, mut c, early| {
            let h = tokio::spawn(async move {
                if down {
                    DOWN_BYTES.fetch_add(early.len() as u64, Ordering::Relaxed);
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(k) = c.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        DOWN_BYTES.fetch_add(k as u64, Ordering::Relaxed);
                    }
                } else {
                    let b = client_batch();
                    while c.write_all(b).await.is_ok() {}
                }
            });
            track(h);
            async {}
        },
    );
    let (ok, failed) = sp.settle(n, Duration::from_secs(60)).await;
    let counter = || {
        if down {
            DOWN_BYTES.load(Ordering::Relaxed)
        } else {
            SINK_BYTES.load(Ordering::Relaxed)
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = snap(peer, counter());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let b = snap(peer, counter());
    let alive = LIVE
        .lock()
        .unwrap()
        .iter()
        .filter(|h| !h.is_finished())
        .count();
    end_run().await;
    drop(sp);
    let gib = (b.bytes - a.bytes) as f64 / (1u64 << 30) as f64;
    let cpu = b.cpu - a.cpu;
    let mut m = Metrics::new();
    m.insert("sessions".into(), ok as f64);
    m.insert("errors".into(), (failed + ok.saturating_sub(alive)) as f64);
    m.insert("seconds".into(), (b.t - a.t).as_secs_f64());
    m.insert("gib".into(), gib);
    m.insert("gib_per_s".into(), gib / (b.t - a.t).as_secs_f64());
    m.insert("cpu_s".into(), cpu);
    m.insert("gen_cpu_s".into(), b.gen - a.gen);
    if gib > 0.0 {
        m.insert("cpu_s_per_gib".into(), cpu / gib);
    }
    if cpu > 0.0 {
        m.insert("gib_per_cpu_s".into(), gib / cpu);
    }
    Ok(m)
}

/// Latency percentiles reported (and drawn).
pub const PCTS: [f64; 6] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99];

/// `echo`: `n` sessions each sending `size`-byte messages `rate` times a
/// second, one outstanding; round trips recorded for `secs` after a warm-up.
pub async fn echo(
    peer: &Peer,
    dial: &Dial,
    up: Up,
    n: usize,
    rate: f64,
    size: usize,
    secs: f64,
) -> Result<Metrics> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let record = Arc::new(AtomicBool::new(false));
    let broken = Arc::new(AtomicUsize::new(0));
    let period = Duration::from_secs_f64(1.0 / rate);
    let (h2, r2, b2) = (hist.clone(), record.clone(), broken.clone());
    let sp = spawn_sessions(
        dial,
        n,
        64,
        move |_| up,
        move |i, mut c, early| {
            let (hist, record, broken) = (h2.clone(), r2.clone(), b2.clone());
            let h = tokio::spawn(async move {
                let mut msg = Vec::with_capacity(size + 14);
                ws::put_header(&mut msg, ws::OP_BINARY, size, true);
                msg.resize(msg.len() + size, 0x42);
                let mut fb = FrameBuf::new(4096, &early);
                // Spread the sessions' phases over one period.
                let phase = period.mul_f64(
                    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as f64 / u64::MAX as f64,
                );
                let mut next = tokio::time::Instant::now() + phase;
                loop {
                    tokio::time::sleep_until(next).await;
                    let t0 = Instant::now();
                    if c.write_all(&msg).await.is_err() {
                        break;
                    }
                    let mut got = 0;
                    while got < size {
                        match fb.next_frame() {
                            Some((h, r)) if h.opcode == ws::OP_BINARY || h.opcode == 0 => {
                                got += r.len()
                            }
                            Some((h, _)) if h.opcode == ws::OP_CLOSE => got = usize::MAX,
                            Some(_) => {}
                            None => {
                                if !matches!(fb.fill(&mut c).await, Ok(k) if k > 0) {
                                    got = usize::MAX;
                                }
                            }
                        }
                    }
                    if got == usize::MAX {
                        break;
                    }
                    if record.load(Ordering::Relaxed) {
                        let us = t0.elapsed().as_micros().max(1) as u64;
                        let _ = hist.lock().unwrap().record(us);
                    }
                    next += period;
                    let now = tokio::time::Instant::now();
                    if next < now {
                        next = now;
                    }
                }
                broken.fetch_add(1, Ordering::Relaxed);
            });
            track(h);
            async {}
        },
    );
    let (ok, failed) = sp.settle(n, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let broken0 = broken.load(Ordering::Relaxed);
    let a = snap(peer, 0);
    record.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    record.store(false, Ordering::Relaxed);
    let b = snap(peer, 0);
    let lost = broken.load(Ordering::Relaxed);
    end_run().await;
    drop(sp);
    let h = hist.lock().unwrap();
    let mut m = Metrics::new();
    m.insert("sessions".into(), ok as f64);
    m.insert("errors".into(), (failed + lost.max(broken0)) as f64);
    m.insert("msgs".into(), h.len() as f64);
    m.insert(
        "msgs_per_s".into(),
        h.len() as f64 / (b.t - a.t).as_secs_f64(),
    );
    for p in PCTS {
        m.insert(format!("p{p}_us"), h.value_at_quantile(p / 100.0) as f64);
    }
    m.insert("max_us".into(), h.max() as f64);
    m.insert("cpu_s".into(), b.cpu - a.cpu);
    m.insert("gen_cpu_s".into(), b.gen - a.gen);
    if b.cpu - a.cpu > 0.0 {
        m.insert("msgs_per_cpu_s".into(), h.len() as f64 / (b.cpu - a.cpu));
    }
    Ok(m)
}

/// `idle`: `n` sessions opened and held; memory of the peer per session,
/// then every browser leg checked still open after `hold` seconds.
pub async fn idle(
    peer: &mut Peer,
    dial: &Dial,
    ups: Vec<Up>,
    n: usize,
    hold: f64,
) -> Result<Metrics> {
    let held: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let m0 = peer.mem_bytes();
    let h2 = held.clone();
    let k = ups.len();
    let t0 = Instant::now();
    let sp = spawn_sessions(
        dial,
        n,
        256,
        move |i| ups[i % k],
        move |_, c, _| {
            h2.lock().unwrap().push(c);
            async {}
        },
    );
    let (ok, failed) = sp.settle(n, Duration::from_secs(300)).await;
    let open_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m1 = peer.mem_bytes();
    let procs = peer.processes();
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    // A closed browser leg reads EOF (or an error); pings are data.
    let mut dropped = 0;
    let mut buf = [0u8; 256];
    for c in held.lock().unwrap().iter() {
        match c.tcp().try_read(&mut buf) {
            Ok(0) => dropped += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => dropped += 1,
            _ => {}
        }
    }
    let alive = peer.alive();
    held.lock().unwrap().clear();
    end_run().await;
    drop(sp);
    if !alive {
        bail!("{} died holding {ok} idle sessions", peer.kind.name());
    }
    let mut m = Metrics::new();
    m.insert("sessions".into(), ok as f64);
    m.insert("errors".into(), (failed + dropped) as f64);
    m.insert("open_s".into(), open_s);
    m.insert("mem_before_mib".into(), m0 as f64 / 1048576.0);
    m.insert("mem_after_mib".into(), m1 as f64 / 1048576.0);
    m.insert("processes".into(), procs as f64);
    if ok > 0 {
        m.insert(
            "kib_per_session".into(),
            (m1 as f64 - m0 as f64) / 1024.0 / ok as f64,
        );
    }
    Ok(m)
}

/// `churn`: `conc` loops opening a session (TCP, TLS, ticket, upgrade,
/// upstream connect), then dropping it, for `secs`.
pub async fn churn(peer: &Peer, dial: &Dial, up: Up, conc: usize, secs: f64) -> Result<Metrics> {
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(true));
    // Connect → TLS → 101, per session (the handshake latency).
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let a = snap(peer, 0);
    let store_a = peer.store_cpu_secs();
    for _ in 0..conc {
        let (dial, done, failed, go) = (dial.clone(), done.clone(), failed.clone(), go.clone());
        let hist = hist.clone();
        track(tokio::spawn(async move {
            while go.load(Ordering::Relaxed) {
                let t = Instant::now();
                match dial.open(up).await {
                    Ok(_) => {
                        let us = t.elapsed().as_micros() as u64;
                        let _ = hist.lock().unwrap().record(us.max(1));
                        done.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("    churn session failed: {e:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    go.store(false, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let b = snap(peer, 0);
    let store_b = peer.store_cpu_secs();
    end_run().await;
    let mut m = Metrics::new();
    let dt = (b.t - a.t).as_secs_f64();
    m.insert("sessions".into(), n as f64);
    m.insert("errors".into(), failed.load(Ordering::Relaxed) as f64);
    m.insert("sessions_per_s".into(), n as f64 / dt);
    m.insert("cpu_s".into(), b.cpu - a.cpu);
    m.insert("gen_cpu_s".into(), b.gen - a.gen);
    if b.cpu - a.cpu > 0.0 {
        m.insert("sessions_per_cpu_s".into(), n as f64 / (b.cpu - a.cpu));
    }
    if peer.kind == PeerKind::RelayFleet {
        let store = store_b - store_a;
        m.insert("store_cpu_s".into(), store);
        if b.cpu - a.cpu + store > 0.0 {
            m.insert(
                "sessions_per_cpu_s_with_store".into(),
                n as f64 / (b.cpu - a.cpu + store),
            );
        }
    }
    let h = hist.lock().unwrap();
    if h.len() > 0 {
        for (k, q) in [
            ("hs_p50_us", 0.5),
            ("hs_p99_us", 0.99),
            ("hs_p99.9_us", 0.999),
        ] {
            m.insert(k.into(), h.value_at_quantile(q) as f64);
        }
    }
    Ok(m)
}
