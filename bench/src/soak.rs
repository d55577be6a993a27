//! The `soak` and `control` scenarios (issue 10, items 8 and 5).
//!
//! `soak`: N concurrent TLS sessions of four shapes for a set time: TCP echo
//! and WebSocket echo (the browser sends 1 B–`max_msg` binary messages while
//! it reads the echo), and a TCP and a TLS WebSocket upstream that burst a
//! stream at connect (the `wss` one in 128 KiB frames, read slowly, then
//! fast; those sessions close after a hold and open again). Every byte is
//! checked at its offset in a deterministic stream; a session that does not
//! end with all its bytes and the close code 1000 is lost. Reported: sessions
//! lost (must be 0), bytes verified, the relay's peak RSS, its audit lines.
//!
//! `control`: 400,000 masked empty pongs (with a ping after every 100) sent
//! as one write right after a 1 MiB data frame, against the same bytes sent
//! 100 pongs at a time, each batch waiting for its ping's answer. The cost is
//! the relay's CPU time for each; their ratio is the figure.

use crate::load::{Dial, Metrics};
use crate::peers::{Peer, Up};
use crate::upstream::{BURST_SEED, SINK_BYTES};
use crate::ws::{self, Conn};
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify, Semaphore};

// ---- deterministic byte streams ---------------------------------------------------

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes at offsets `off..` of stream `seed` (no period: a lost,
/// doubled or reordered chunk shows at its offset).
pub fn fill(seed: u64, off: u64, out: &mut [u8]) {
    let mut p = off;
    let mut i = 0;
    while i < out.len() {
        let word = splitmix(seed ^ (p / 8).wrapping_mul(0x2545_f491_4f6c_dd1d)).to_le_bytes();
        let from = (p % 8) as usize;
        let n = (8 - from).min(out.len() - i);
        out[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
        p += n as u64;
    }
}

pub fn stream(seed: u64, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, off, &mut v);
    v
}

/// A uniform float in [0, 1) from a state stepped in place.
fn rand01(state: &mut u64) -> f64 {
    *state = splitmix(*state);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

// ---- soak -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    TcpEcho,
    WsEcho,
    TcpBurst,
    WssBurst,
}

const SHAPES: [Shape; 4] = [
    Shape::TcpEcho,
    Shape::WsEcho,
    Shape::TcpBurst,
    Shape::WssBurst,
];

impl Shape {
    fn up(self) -> Up {
        match self {
            Shape::TcpEcho => Up::TcpEcho,
            Shape::WsEcho => Up::WsEcho,
            Shape::TcpBurst => Up::TcpBurst,
            Shape::WssBurst => Up::WssBurst,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Shape::TcpEcho => "tcp_echo",
            Shape::WsEcho => "ws_echo",
            Shape::TcpBurst => "tcp_burst",
            Shape::WssBurst => "wss_burst",
        }
    }
    fn echo(self) -> bool {
        matches!(self, Shape::TcpEcho | Shape::WsEcho)
    }
}

/// Soak settings.
#[derive(Clone, Copy, Debug)]
pub struct SoakCfg {
    pub secs: f64,
    /// Mean seconds between an echo session's messages; burst sessions hold
    /// about 3 periods after their burst, then reopen.
    pub period: f64,
    /// Largest echo message (sizes are log-uniform from 1 B).
    pub max_msg: usize,
    /// Bytes each burst upstream sends at connect.
    pub burst: usize,
}

/// No byte for this long on a session that expects some: lost.
const STALL: Duration = Duration::from_secs(60);

/// A session's end as the browser saw it.
type Verdict = std::result::Result<(), String>;

/// One browser session of `shape`, from open to the close handshake.
async fn session(
    dial: &Dial,
    gate: &Semaphore,
    shape: Shape,
    seed: u64,
    cfg: SoakCfg,
    deadline: tokio::time::Instant,
    verified: &AtomicU64,
) -> Verdict {
    let (c, early) = {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        dial.open(shape.up())
            .await
            .map_err(|e| format!("open: {e:#}"))?
    };
    let (rd, wr) = tokio::io::split(c);
    let (ptx, prx) = mpsc::unbounded_channel::<Vec<u8>>();
    let got = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(if shape.echo() {
        u64::MAX
    } else {
        cfg.burst as u64
    }));
    let all_in = Arc::new(Notify::new());
    let closed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let writer = tokio::spawn(write_side(
        wr,
        shape,
        seed,
        cfg,
        deadline,
        prx,
        [got.clone(), total.clone()],
        all_in.clone(),
        closed_at.clone(),
    ));
    let r = read_side(
        rd, early, shape, seed, cfg, ptx, got, total, all_in, verified,
    )
    .await;
    if let Err(e) = r {
        writer.abort();
        // How long after the browser's close the session ended, if it had sent one.
        let since = closed_at.lock().unwrap().map(|t| t.elapsed());
        return Err(match since {
            Some(d) => format!("{e} ({} ms after the browser's close)", d.as_millis()),
            None => e,
        });
    }
    match tokio::time::timeout(Duration::from_secs(10), writer).await {
        Ok(Ok(w)) => w,
        _ => Err("writer did not finish".into()),
    }
}

async fn send(wr: &mut WriteHalf<Conn>, frame: &[u8], what: &str) -> Verdict {
    wr.write_all(frame)
        .await
        .map_err(|e| format!("writing {what}: {e}"))
}

fn pong(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 6);
    ws::put_header(&mut f, ws::OP_PONG, payload.len(), true);
    f.extend_from_slice(payload);
    f
}

#[allow(clippy::too_many_arguments)]
async fn write_side(
    mut wr: WriteHalf<Conn>,
    shape: Shape,
    seed: u64,
    cfg: SoakCfg,
    deadline: tokio::time::Instant,
    mut pings: mpsc::UnboundedReceiver<Vec<u8>>,
    [got, total]: [Arc<AtomicU64>; 2],
    all_in: Arc<Notify>,
    closed_at: Arc<Mutex<Option<Instant>>>,
) -> Verdict {
    let mut rng = seed ^ 0x5eed;
    let mut frame = Vec::new();
    if shape.echo() {
        let mut off = 0u64;
        let period = Duration::from_secs_f64(cfg.period);
        let mut next = tokio::time::Instant::now() + period.mul_f64(rand01(&mut rng));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    if next >= deadline {
                        break;
                    }
                    let len = ((cfg.max_msg as f64).powf(rand01(&mut rng)) as usize)
                        .clamp(1, cfg.max_msg);
                    frame.clear();
                    ws::put_header(&mut frame, ws::OP_BINARY, len, true);
                    let at = frame.len();
                    frame.resize(at + len, 0);
                    fill(seed, off, &mut frame[at..]);
                    off += len as u64;
                    send(&mut wr, &frame, "a message").await?;
                    next += period.mul_f64(0.5 + rand01(&mut rng));
                }
                Some(p) = pings.recv() => send(&mut wr, &pong(&p), "a pong").await?,
            }
        }
        total.store(off, Ordering::SeqCst);
    }
    // Every byte expected in, answering pings meanwhile.
    if got.load(Ordering::SeqCst) != total.load(Ordering::SeqCst) {
        let stall = tokio::time::sleep(STALL);
        tokio::pin!(stall);
        loop {
            tokio::select! {
                _ = all_in.notified() => break,
                Some(p) = pings.recv() => send(&mut wr, &pong(&p), "a pong").await?,
                _ = &mut stall => return Err("not every byte came back".into()),
            }
        }
    }
    if !shape.echo() {
        // A console left open a while, then closed.
        let hold = Duration::from_secs_f64(cfg.period * 3.0 * (0.5 + rand01(&mut rng)));
        let until = (tokio::time::Instant::now() + hold).min(deadline);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                Some(p) = pings.recv() => send(&mut wr, &pong(&p), "a pong").await?,
            }
        }
    }
    frame.clear();
    ws::put_header(&mut frame, ws::OP_CLOSE, 2, true);
    frame.extend_from_slice(&1000u16.to_be_bytes());
    *closed_at.lock().unwrap() = Some(Instant::now());
    send(&mut wr, &frame, "the close").await?;
    let _ = wr.flush().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn read_side(
    mut rd: ReadHalf<Conn>,
    early: Vec<u8>,
    shape: Shape,
    seed: u64,
    cfg: SoakCfg,
    pings: mpsc::UnboundedSender<Vec<u8>>,
    got: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    all_in: Arc<Notify>,
    verified: &AtomicU64,
) -> Verdict {
    let seed = if shape.echo() { seed } else { BURST_SEED };
    let mut buf = early;
    let mut tmp = vec![0u8; 16 << 10];
    let mut scratch = Vec::new();
    let mut off = 0u64;
    let mut close = None;
    let where_ = |off: u64| {
        let t = total.load(Ordering::SeqCst);
        if t == u64::MAX {
            format!("after {off} bytes")
        } else {
            format!("after {off} of {t} bytes")
        }
    };
    loop {
        let mut start = 0;
        while close.is_none() {
            let Some(h) = ws::parse_header(&buf[start..]) else {
                break;
            };
            if buf.len() - start < h.hlen + h.len {
                break;
            }
            if h.mask.is_some() {
                return Err("a masked frame from the relay".into());
            }
            let p = start + h.hlen..start + h.hlen + h.len;
            match h.opcode {
                0 | 2 => {
                    let data = &buf[p];
                    scratch.resize(data.len(), 0);
                    fill(seed, off, &mut scratch);
                    if let Some(i) = data.iter().zip(&scratch).position(|(a, b)| a != b) {
                        return Err(format!("byte {} differs", off + i as u64));
                    }
                    off += data.len() as u64;
                    verified.fetch_add(data.len() as u64, Ordering::Relaxed);
                    got.store(off, Ordering::SeqCst);
                    let t = total.load(Ordering::SeqCst);
                    if off > t {
                        return Err(format!("{off} bytes, more than the {t} sent"));
                    }
                    if off == t {
                        all_in.notify_one();
                    }
                }
                ws::OP_PING => {
                    let _ = pings.send(buf[p].to_vec());
                }
                ws::OP_PONG => {}
                ws::OP_CLOSE => {
                    let b = &buf[p];
                    close = Some(if b.len() >= 2 {
                        u16::from_be_bytes([b[0], b[1]])
                    } else {
                        1005
                    });
                }
                op => return Err(format!("opcode {op} from the relay")),
            }
            start += h.hlen + h.len;
        }
        buf.drain(..start);
        if close.is_some() {
            break;
        }
        // The wss-burst browser reads its first half slowly: small reads, naps.
        let slow = shape == Shape::WssBurst && off < cfg.burst as u64 / 2;
        let want = if slow { 4096 } else { tmp.len() };
        if slow {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match tokio::time::timeout(STALL, rd.read(&mut tmp[..want])).await {
            Err(_) => return Err(format!("stalled {STALL:?} {}", where_(off))),
            Ok(Err(e)) => return Err(format!("read {}: {e}", where_(off))),
            Ok(Ok(0)) => {
                return Err(format!(
                    "ended without a close frame {} (+{} bytes of a frame)",
                    where_(off),
                    buf.len()
                ))
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
    }
    let t = total.load(Ordering::SeqCst);
    if off != t {
        return Err(format!("close {close:?} {}", where_(off)));
    }
    if close != Some(1000) {
        return Err(format!("close code {close:?}, not 1000"));
    }
    // The relay closes the connection after the close handshake.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while matches!(rd.read(&mut tmp).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

/// Counts by shape.
#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 4],
    lost: [AtomicU64; 4],
    reasons: Mutex<Vec<String>>,
}

/// `soak`: `n` concurrent sessions (a quarter of each shape) for `cfg.secs`.
pub async fn soak(peer: &Peer, dial: &Dial, n: usize, cfg: SoakCfg) -> Result<Metrics> {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(cfg.secs);
    let gate = Arc::new(Semaphore::new(128));
    let tally = Arc::new(Tally::default());
    let verified = Arc::new(AtomicU64::new(0));
    let nonce = splitmix(std::process::id() as u64 ^ t0.elapsed().as_nanos() as u64);
    let cpu0 = peer.cpu_secs();
    let mem0 = peer.mem_bytes();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let shape = SHAPES[i % 4];
        let (dial, gate, tally, verified) =
            (dial.clone(), gate.clone(), tally.clone(), verified.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = splitmix(nonce ^ i as u64);
            loop {
                let seed = splitmix(rng ^ 0xabc);
                let r = session(&dial, &gate, shape, seed, cfg, deadline, &verified).await;
                let k = shape as usize;
                match r {
                    Ok(()) => tally.ok[k].fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let mut v = tally.reasons.lock().unwrap();
                        if v.len() < 8 {
                            v.push(format!("{}: {e}", shape.name()));
                        }
                        tally.lost[k].fetch_add(1, Ordering::Relaxed)
                    }
                };
                if shape.echo() || tokio::time::Instant::now() >= deadline {
                    return;
                }
                // A burst console reopens after a pause.
                let pause = Duration::from_secs_f64(cfg.period * rand01(&mut rng));
                tokio::time::sleep(pause).await;
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
            }
        }));
    }
    let mut peak = mem0;
    let mut unfinished = 0;
    let hard_end = deadline + Duration::from_secs(120);
    loop {
        peak = peak.max(peer.mem_bytes());
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        if tokio::time::Instant::now() > hard_end {
            for t in tasks.iter().filter(|t| !t.is_finished()) {
                t.abort();
                unfinished += 1;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = peer.cpu_secs() - cpu0;
    // The relay's audit: one session_end per session, code 1000, no error.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = peer
        .log
        .as_ref()
        .map(std::fs::read_to_string)
        .transpose()?
        .unwrap_or_default();
    let ends: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"session_end\""))
        .collect();
    let bad_audit = ends
        .iter()
        .filter(|l| !l.contains("\"code\":1000") || l.contains("\"error\""))
        .count();
    let ok: u64 = tally.ok.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    let lost: u64 = tally
        .lost
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum::<u64>()
        + unfinished;
    for r in tally.reasons.lock().unwrap().iter() {
        eprintln!("    lost: {r}");
    }
    if let Some(l) = ends
        .iter()
        .find(|l| l.contains("\"error\"") || !l.contains("\"code\":1000"))
    {
        eprintln!("    audit: {l}");
    }
    let bytes = verified.load(Ordering::Relaxed);
    let mut m = Metrics::new();
    m.insert("concurrent".into(), n as f64);
    m.insert("sessions".into(), (ok + lost) as f64);
    m.insert("lost".into(), lost as f64);
    m.insert("errors".into(), lost as f64);
    for s in SHAPES {
        m.insert(
            format!("ok_{}", s.name()),
            tally.ok[s as usize].load(Ordering::Relaxed) as f64,
        );
        m.insert(
            format!("lost_{}", s.name()),
            tally.lost[s as usize].load(Ordering::Relaxed) as f64,
        );
    }
    m.insert("bytes_verified".into(), bytes as f64);
    m.insert("gib".into(), bytes as f64 / (1u64 << 30) as f64);
    m.insert("seconds".into(), secs);
    m.insert("cpu_s".into(), cpu);
    m.insert("rss_before_mib".into(), mem0 as f64 / 1048576.0);
    m.insert("peak_rss_mib".into(), peak as f64 / 1048576.0);
    m.insert("audit_session_end".into(), ends.len() as f64);
    m.insert("audit_bad".into(), bad_audit as f64);
    Ok(m)
}

// ---- control frames ---------------------------------------------------------------

/// A masked (zero key) ping carrying `id`.
fn ping(out: &mut Vec<u8>, id: u32) {
    ws::put_header(out, ws::OP_PING, 4, true);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Reads until the pong carrying `id` arrives (earlier ones are skipped:
/// the relay answers only the latest ping it has not answered yet).
async fn wait_pong(c: &mut Conn, fb: &mut ws::FrameBuf, id: u32) -> Result<()> {
    loop {
        while let Some((h, r)) = fb.next_frame() {
            if h.opcode == ws::OP_PONG && fb.buf[r] == id.to_be_bytes() {
                return Ok(());
            }
            if h.opcode == ws::OP_CLOSE {
                bail!("the relay closed the session");
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(120), fb.fill(c))
            .await
            .context("no pong in 120 s")??;
        if n == 0 {
            bail!("the relay closed the connection");
        }
    }
}

/// `control`: relay CPU for `pongs` empty masked pongs in one write after a
/// 1 MiB frame, vs the same bytes `per` pongs (and a ping) at a time, each
/// batch waiting for its pong; `rounds` of each, alternating which goes first.
pub async fn control(
    peer: &Peer,
    dial: &Dial,
    pongs: usize,
    per: usize,
    rounds: usize,
) -> Result<Metrics> {
    let (mut c, early) = dial.open(Up::WsSink).await?;
    let mut fb = ws::FrameBuf::new(4096, &early);
    let mut big = Vec::with_capacity((1 << 20) + 14);
    ws::put_header(&mut big, ws::OP_BINARY, 1 << 20, true);
    big.resize(big.len() + (1 << 20), 0x42);
    let batch_pongs: Vec<u8> = [0x80 | ws::OP_PONG, 0x80, 0, 0, 0, 0].repeat(per);
    let batches = pongs.div_ceil(per);
    let (mut burst_cpu, mut paced_cpu, mut burst_wall, mut paced_wall) = (0.0, 0.0, 0.0, 0.0);
    let mut id = 0u32;
    for round in 0..rounds {
        for burst in [round % 2 == 0, round % 2 == 1] {
            let sink0 = SINK_BYTES.load(Ordering::Relaxed);
            let t = Instant::now();
            let cpu0 = peer.cpu_secs();
            if burst {
                let mut all = big.clone();
                for _ in 0..batches {
                    id += 1;
                    all.extend_from_slice(&batch_pongs);
                    ping(&mut all, id);
                }
                c.write_all(&all).await?;
                wait_pong(&mut c, &mut fb, id).await?;
            } else {
                c.write_all(&big).await?;
                let mut b = Vec::with_capacity(batch_pongs.len() + 10);
                for _ in 0..batches {
                    id += 1;
                    b.clear();
                    b.extend_from_slice(&batch_pongs);
                    ping(&mut b, id);
                    c.write_all(&b).await?;
                    wait_pong(&mut c, &mut fb, id).await?;
                }
            }
            let cpu = peer.cpu_secs() - cpu0;
            let wall = t.elapsed().as_secs_f64();
            if burst {
                (burst_cpu, burst_wall) = (burst_cpu + cpu, burst_wall + wall);
            } else {
                (paced_cpu, paced_wall) = (paced_cpu + cpu, paced_wall + wall);
            }
            // The 1 MiB frame reached the upstream.
            let t = Instant::now();
            while SINK_BYTES.load(Ordering::Relaxed) < sink0 + (1 << 20) {
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("the 1 MiB frame did not reach the upstream");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut m = Metrics::new();
    m.insert("sessions".into(), 1.0);
    m.insert("pongs".into(), (batches * per) as f64);
    m.insert("rounds".into(), rounds as f64);
    m.insert("burst_cpu_s".into(), burst_cpu);
    m.insert("paced_cpu_s".into(), paced_cpu);
    m.insert("burst_wall_s".into(), burst_wall);
    m.insert("paced_wall_s".into(), paced_wall);
    if paced_cpu > 0.0 {
        m.insert("burst_over_paced".into(), burst_cpu / paced_cpu);
    }
    Ok(m)
}
