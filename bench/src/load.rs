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
use std::task::Poll;
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

/// What the paired echo keeps per peer.
struct PairStats {
    /// Round trips (ns) in the window.
    rtt: Vec<Histogram<u64>>,
    /// rtt(peer) - rtt(direct) of the same tick (ns), clamped at 0.
    added: Vec<Histogram<u64>>,
    /// Ticks where both the peer and direct answered, and of those the
    /// ones where the peer was faster than direct (negative added).
    paired: Vec<u64>,
    negative: Vec<u64>,
    /// Sum of the signed added latency (ns), for the mean.
    added_sum: Vec<i128>,
    /// Sessions that broke (closed, failed write, wrong echo, no answer in 10 s).
    broken: Vec<u64>,
}

/// Paired `echo`: every peer in `peers` runs at once, each with `n`
/// sessions to the same WebSocket echo upstream. Tuple j is session j of
/// every peer, driven by one task: at each tick (`rate` a second, phases
/// spread over the period) the same `size`-byte message (its first 8 bytes
/// a sequence number) is written on each of the tuple's sessions one right
/// after the other, rotating which peer goes first, and the task waits for
/// every echo; each peer's round trip is taken from its own write. The
/// added latency of a tick is rtt(peer) - rtt(direct) of that tick: a stall
/// of the machine hits both and cancels. Returns one `Metrics` per peer.
pub async fn echo_paired(
    peers: &[(&Peer, Dial)],
    n: usize,
    rate: f64,
    size: usize,
    secs: f64,
) -> Result<Vec<Metrics>> {
    let k = peers.len();
    let base = peers.iter().position(|(p, _)| p.kind == PeerKind::Direct);
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3);
    let stats = Arc::new(Mutex::new(PairStats {
        rtt: (0..k).map(|_| hist()).collect::<Result<_, _>>()?,
        added: (0..k).map(|_| hist()).collect::<Result<_, _>>()?,
        paired: vec![0; k],
        negative: vec![0; k],
        added_sum: vec![0; k],
        broken: vec![0; k],
    }));
    let opened: Arc<Vec<AtomicUsize>> = Arc::new((0..k).map(|_| AtomicUsize::new(0)).collect());
    let failed: Arc<Vec<AtomicUsize>> = Arc::new((0..k).map(|_| AtomicUsize::new(0)).collect());
    let tuples_up = Arc::new(AtomicUsize::new(0));
    let record = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / rate);
    let dials: Arc<Vec<Dial>> = Arc::new(peers.iter().map(|(_, d)| d.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut openers = Vec::new();
    for _ in 0..64.min(n).max(1) {
        let (dials, next, opened, failed, up) = (
            dials.clone(),
            next.clone(),
            opened.clone(),
            failed.clone(),
            tuples_up.clone(),
        );
        let (stats, record) = (stats.clone(), record.clone());
        openers.push(tokio::spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= n {
                    return;
                }
                let mut conns = Vec::with_capacity(dials.len());
                for (i, d) in dials.iter().enumerate() {
                    match d.open(Up::WsEcho).await {
                        Ok((c, early)) => {
                            opened[i].fetch_add(1, Ordering::Relaxed);
                            conns.push(Some((c, FrameBuf::new(4096, &early))));
                        }
                        Err(e) => {
                            if failed[i].fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("    {} session open failed: {e:#}", d.kind.name());
                            }
                            conns.push(None);
                        }
                    }
                }
                up.fetch_add(1, Ordering::Relaxed);
                let t = PairTuple {
                    j,
                    conns,
                    base,
                    size,
                    period,
                    stats: stats.clone(),
                    record: record.clone(),
                };
                track(tokio::spawn(t.run()));
            }
        }));
    }
    let t_open = Instant::now();
    while tuples_up.load(Ordering::Relaxed) < n && t_open.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for o in &openers {
        o.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let broken0: Vec<u64> = stats.lock().unwrap().broken.clone();
    let snaps = |_: ()| peers.iter().map(|(p, _)| snap(p, 0)).collect::<Vec<_>>();
    let a = snaps(());
    record.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    record.store(false, Ordering::Relaxed);
    let b = snaps(());
    end_run().await;
    let st = stats.lock().unwrap();
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let h = &st.rtt[i];
        let dt = (b[i].t - a[i].t).as_secs_f64();
        let cpu = b[i].cpu - a[i].cpu;
        let mut m = Metrics::new();
        m.insert("sessions".into(), opened[i].load(Ordering::Relaxed) as f64);
        m.insert(
            "errors".into(),
            failed[i].load(Ordering::Relaxed) as f64 + st.broken[i].max(broken0[i]) as f64,
        );
        m.insert("tuples".into(), n as f64);
        m.insert("msgs".into(), h.len() as f64);
        m.insert("msgs_per_s".into(), h.len() as f64 / dt);
        // Below this, the generator (or the peers' core) could not keep up.
        m.insert("offered_msgs_per_s".into(), n as f64 * rate);
        for p in PCTS {
            m.insert(
                format!("p{p}_us"),
                h.value_at_quantile(p / 100.0) as f64 / 1000.0,
            );
        }
        m.insert("max_us".into(), h.max() as f64 / 1000.0);
        m.insert("gen_cpu_s".into(), b[i].gen - a[i].gen);
        if peers[i].0.kind != PeerKind::Direct {
            m.insert("cpu_s".into(), cpu);
            if cpu > 0.0 {
                m.insert("msgs_per_cpu_s".into(), h.len() as f64 / cpu);
            }
        }
        if Some(i) != base && st.paired[i] > 0 {
            let ad = &st.added[i];
            for p in PCTS {
                m.insert(
                    format!("added_p{p}_us"),
                    ad.value_at_quantile(p / 100.0) as f64 / 1000.0,
                );
            }
            m.insert("paired".into(), st.paired[i] as f64);
            m.insert(
                "added_negative_frac".into(),
                st.negative[i] as f64 / st.paired[i] as f64,
            );
            m.insert(
                "added_mean_us".into(),
                st.added_sum[i] as f64 / st.paired[i] as f64 / 1000.0,
            );
        }
        out.push(m);
    }
    Ok(out)
}

/// One tuple of the paired echo: session j of every peer.
struct PairTuple {
    j: usize,
    conns: Vec<Option<(Conn, FrameBuf)>>,
    base: Option<usize>,
    size: usize,
    period: Duration,
    stats: Arc<Mutex<PairStats>>,
    record: Arc<AtomicBool>,
}

impl PairTuple {
    async fn run(mut self) {
        let k = self.conns.len();
        let size = self.size;
        let mut msg = Vec::with_capacity(size + 14);
        ws::put_header(&mut msg, ws::OP_BINARY, size, true);
        let at = msg.len();
        msg.resize(at + size, 0x42);
        let tag = size.min(8);
        let phase = self
            .period
            .mul_f64((self.j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as f64 / u64::MAX as f64);
        let mut next = tokio::time::Instant::now() + phase;
        let mut seq = (self.j as u64) << 32;
        let now = Instant::now();
        let mut t0 = vec![now; k];
        let mut rtt: Vec<Option<Duration>> = vec![None; k];
        let mut got = vec![0usize; k];
        let mut dead = vec![false; k];
        loop {
            tokio::time::sleep_until(next).await;
            seq += 1;
            msg[at..at + tag].copy_from_slice(&seq.to_le_bytes()[..tag]);
            let want = seq.to_le_bytes();
            rtt.iter_mut().for_each(|r| *r = None);
            got.iter_mut().for_each(|g| *g = 0);
            // The same bytes on every peer's session, back to back; the
            // first peer rotates so none is always first.
            for r in 0..k {
                let i = (r + seq as usize) % k;
                if let Some((c, _)) = self.conns[i].as_mut() {
                    t0[i] = Instant::now();
                    if c.write_all(&msg).await.is_err() {
                        dead[i] = true;
                    }
                }
            }
            let conns = &mut self.conns;
            let wait = std::future::poll_fn(|cx| {
                let mut pending = false;
                for i in 0..k {
                    if rtt[i].is_some() || dead[i] {
                        continue;
                    }
                    let Some((c, fb)) = conns[i].as_mut() else {
                        continue;
                    };
                    loop {
                        match fb.next_frame() {
                            Some((h, r)) if h.opcode == ws::OP_BINARY || h.opcode == 0 => {
                                if got[i] == 0
                                    && r.len() >= tag
                                    && fb.buf[r.start..r.start + tag] != want[..tag]
                                {
                                    dead[i] = true; // not this tick's echo
                                    break;
                                }
                                got[i] += r.len();
                                if got[i] >= size {
                                    rtt[i] = Some(t0[i].elapsed());
                                    break;
                                }
                            }
                            Some((h, _)) if h.opcode == ws::OP_CLOSE => {
                                dead[i] = true;
                                break;
                            }
                            Some(_) => {}
                            None => match fb.poll_fill(cx, c) {
                                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                    dead[i] = true;
                                    break;
                                }
                                Poll::Ready(Ok(_)) => {}
                                Poll::Pending => {
                                    pending = true;
                                    break;
                                }
                            },
                        }
                    }
                }
                if pending {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            });
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
            {
                let mut st = self.stats.lock().unwrap();
                for i in 0..k {
                    if self.conns[i].is_some() && (dead[i] || rtt[i].is_none()) {
                        self.conns[i] = None;
                        st.broken[i] += 1;
                    }
                }
                if self.record.load(Ordering::Relaxed) {
                    let b = self.base.and_then(|b| rtt[b]);
                    for (i, r) in rtt.iter().enumerate() {
                        let Some(r) = *r else { continue };
                        let ns = r.as_nanos() as i128;
                        let _ = st.rtt[i].record(ns.max(1) as u64);
                        if let (Some(b), false) = (b, Some(i) == self.base) {
                            let d = ns - b.as_nanos() as i128;
                            let _ = st.added[i].record(d.max(1) as u64);
                            st.paired[i] += 1;
                            st.added_sum[i] += d;
                            if d < 0 {
                                st.negative[i] += 1;
                            }
                        }
                    }
                }
            }
            if self.conns.iter().all(Option::is_none) {
                return;
            }
            next += self.period;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
        }
    }
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
///
/// `resume`: each loop is one browser with its own TLS session store
/// (`churn-resume`), so every session after a loop's first can resume;
/// otherwise every handshake is a full one. Either way the handshakes that
/// resumed are counted (`resumed_frac`).
pub async fn churn(
    peer: &Peer,
    dial: &Dial,
    up: Up,
    conc: usize,
    secs: f64,
    resume: bool,
) -> Result<Metrics> {
    let done = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(true));
    // Connect → TLS → 101, per session (the handshake latency).
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let a = snap(peer, 0);
    let store_a = peer.store_cpu_secs();
    for _ in 0..conc {
        let (mut dial, done, failed, go) = (dial.clone(), done.clone(), failed.clone(), go.clone());
        let (hist, resumed) = (hist.clone(), resumed.clone());
        if resume && dial.tls.is_some() {
            dial.tls = Some(TlsConnector::from(crate::tls::client_config_resuming()?));
        }
        track(tokio::spawn(async move {
            while go.load(Ordering::Relaxed) {
                let t = Instant::now();
                match dial.open(up).await {
                    Ok((c, _)) => {
                        let us = t.elapsed().as_micros() as u64;
                        let _ = hist.lock().unwrap().record(us.max(1));
                        if c.tls_resumed() == Some(true) {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
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
    let r = resumed.load(Ordering::Relaxed);
    let b = snap(peer, 0);
    let store_b = peer.store_cpu_secs();
    end_run().await;
    let mut m = Metrics::new();
    let dt = (b.t - a.t).as_secs_f64();
    m.insert("sessions".into(), n as f64);
    m.insert("errors".into(), failed.load(Ordering::Relaxed) as f64);
    m.insert("sessions_per_s".into(), n as f64 / dt);
    if dial.tls.is_some() && n > 0 {
        m.insert("resumed".into(), r as f64);
        m.insert("resumed_frac".into(), r as f64 / n as f64);
    }
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
    if !h.is_empty() {
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
