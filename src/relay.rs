//! The only pump between the two legs.
//!
//! ```text
//!            ┌──────────── browser→upstream ────────────┐
//! browser ───┤ read → Tracker(Client) → forward / unmask │──▶ upstream
//!            └───────────────────────────────────────────┘
//!            ┌──────────── upstream→browser ────────────┐
//! browser ◀──┤ forward / frame  ← Tracker(Server) ← read │─── upstream
//!            └───────────────────────────────────────────┘
//!            watchdog: pings both legs every ping_interval; lifetime, idle, revoke
//! ```
//!
//! Two modes. [`Mode::Frames`] (`ws` upstreams): both legs speak WebSocket;
//! browser frames are already masked as the upstream needs and upstream
//! frames unmasked as the browser needs, so data frames are forwarded byte
//! for byte and only headers are parsed. [`Mode::Bytes`] (`tcp`, `demo`):
//! browser payloads are unmasked in place and written raw; upstream bytes
//! go out as one binary frame per read, the header written into headroom in
//! front of the payload (one write, no copy, the same over TLS, where
//! monoio-rustls's `writev` would send only its first buffer).
//!
//! Ping/pong are hop-by-hop: the relay answers pings on each leg and
//! swallows pongs. Close is end to end. Writers are shared through
//! [`WriterLock`], held for a whole frame, so the relay's own frames (pongs,
//! pings, closes) land only between frames. A direction writes what it read
//! before reading again: a slow reader stalls its writer, nothing queues.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};

use crate::registry::SessionCtl;
use crate::transport::{Reader, Signal, Writer, WriterGuard, WriterLock};
use crate::ws::frame::{
    self, close, FrameError, FrameHeader, OpCode, Sender, Step, Tracker, MAX_CONTROL_FRAME,
    MAX_CONTROL_PAYLOAD, MAX_HEADER,
};
use crate::ws::mask;

/// Read buffer of a quiet direction. Small, so idle consoles stay cheap:
/// on io_uring a pending read pins its buffer for as long as it waits.
pub const SMALL_BUF: usize = 1024;
/// Read buffer of a busy direction (a read filled the small one).
pub const LARGE_BUF: usize = 64 * 1024;
/// Room in front of a raw upstream read for the frame header (2 + 8 bytes).
const HEADROOM: usize = 10;
/// How long a relay-sent close waits for the peer's close before teardown,
/// and how long the relay waits for a writer to reach a frame boundary.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How the upstream leg is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// WebSocket upstream: frames pass through unchanged.
    Frames,
    /// Raw byte stream upstream (TCP console, in-process demo).
    Bytes,
    /// pveproxy's websocket (PROXMOX.md §2.2): as Frames, except that
    /// browser frames it would die on (fragments, payloads over 128 KiB)
    /// are re-cut into complete binary frames, and it never sends or
    /// answers close frames.
    Proxmox,
}

/// Per-session settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_frame: u64,
    pub ping_interval: Option<Duration>,
    /// Time left until the session's lifetime deadline (then 4002).
    pub lifetime: Option<Duration>,
    /// No data frames either way for this long: 4003. Pings do not count.
    pub idle_timeout: Option<Duration>,
}

/// Where a session counts its bytes: its worker's metrics block.
pub struct Meter {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub core: usize,
}

/// One leg after its handshake: halves plus bytes read past the handshake.
pub struct Leg {
    pub reader: Reader,
    pub writer: Writer,
    pub early: Vec<u8>,
}

/// Who ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Browser,
    Upstream,
    Relay,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Browser => "browser",
            Side::Upstream => "upstream",
            Side::Relay => "relay",
        }
    }
}

/// How a session ended and what it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The close code of the first close (1006 when a leg vanished).
    pub code: u16,
    /// A stable label: "close", "browser_gone", "unmasked_frame", ...
    pub reason: &'static str,
    pub by: Side,
    /// Bytes forwarded browser → upstream (frames or payload).
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Browser → upstream.
    Up,
    /// Upstream → browser.
    Down,
}

/// A reason to end the session, recorded once (the first wins).
#[derive(Clone, Copy)]
struct End {
    code: u16,
    reason: &'static str,
    by: Side,
}

struct Shared {
    mode: Mode,
    browser: WriterLock,
    upstream: WriterLock,
    /// Closes were sent: tear down once the peer answers or CLOSE_GRACE passes.
    closing: Signal,
    /// Tear down now.
    done: Signal,
    end: Cell<Option<End>>,
    sent_close_browser: Cell<bool>,
    sent_close_upstream: Cell<bool>,
    /// Latest unanswered ping payload per leg (RFC 6455 §5.5.3 allows
    /// answering only the most recent one), so a ping flood costs nothing.
    pong_browser: RefCell<Option<Vec<u8>>>,
    pong_upstream: RefCell<Option<Vec<u8>>>,
    bytes_up: Cell<u64>,
    bytes_down: Cell<u64>,
    /// When a data frame (or raw bytes) last went either way.
    last_data: Cell<Instant>,
    meter: Option<Meter>,
}

impl Shared {
    fn record(&self, end: End) {
        if self.end.get().is_none() {
            self.end.set(Some(end));
        }
    }

    fn finish(&self, end: End) {
        self.record(end);
        self.done.fire();
    }

    fn begin_closing(&self, end: End) {
        self.record(end);
        self.closing.fire();
    }

    fn lock_of(&self, to_browser: bool) -> &WriterLock {
        if to_browser {
            &self.browser
        } else {
            &self.upstream
        }
    }
}

/// Awaits `f` unless the session is torn down first.
async fn or_done<F: Future>(done: &Signal, f: F) -> Option<F::Output> {
    if done.is_fired() {
        return None;
    }
    monoio::select! {
        _ = done.fired() => None,
        out = f => Some(out),
    }
}

/// Writes one relay-made control frame to a leg, between frames. Gives up
/// (returns false) if the leg stays mid-frame for CLOSE_GRACE or the write
/// fails; the teardown then simply closes the socket.
async fn send_control(lock: &WriterLock, opcode: OpCode, payload: &[u8], masked: bool) -> bool {
    let Ok(mut guard) = monoio::time::timeout(CLOSE_GRACE, lock.lock()).await else {
        return false;
    };
    let mut f = [0u8; MAX_CONTROL_FRAME];
    let key = masked.then(mask::random_key);
    let n = frame::write_control(&mut f, opcode, payload, key);
    let buf = f[..n].to_vec();
    matches!(
        monoio::time::timeout(CLOSE_GRACE, guard.write_all(buf)).await,
        Ok((Ok(_), _))
    )
}

async fn send_close(lock: &WriterLock, code: u16, reason: &str, masked: bool) -> bool {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)]);
    send_control(lock, OpCode::Close, &p, masked).await
}

/// Relay-initiated close of the browser leg (once).
async fn close_browser(s: &Shared, code: u16, reason: &str) {
    if !s.sent_close_browser.replace(true) {
        send_close(&s.browser, code, reason, false).await;
    }
}

/// Relay-initiated close of the upstream leg (once): a close frame in
/// Frames mode (masked: the relay is the client there), FIN in Bytes mode.
async fn close_upstream(s: &Shared, code: u16) {
    if s.sent_close_upstream.replace(true) {
        return;
    }
    match s.mode {
        Mode::Frames | Mode::Proxmox => {
            send_close(&s.upstream, code, "", true).await;
        }
        Mode::Bytes => {
            if let Ok(mut g) = monoio::time::timeout(CLOSE_GRACE, s.upstream.lock()).await {
                let _ = monoio::time::timeout(CLOSE_GRACE, g.shutdown()).await;
            }
        }
    }
}

/// Answers a ping on the leg it came from, without blocking the reader.
fn queue_pong(s: &Rc<Shared>, to_browser: bool, payload: Vec<u8>) {
    let slot = if to_browser {
        &s.pong_browser
    } else {
        &s.pong_upstream
    };
    let sender_running = slot.replace(Some(payload)).is_some();
    if sender_running {
        return;
    }
    let s = s.clone();
    monoio::spawn(async move {
        let lock = s.lock_of(to_browser).clone();
        let Some(mut guard) = or_done(&s.done, lock.lock()).await else {
            return;
        };
        let slot = if to_browser {
            &s.pong_browser
        } else {
            &s.pong_upstream
        };
        let Some(p) = slot.borrow_mut().take() else {
            return;
        };
        let mut f = [0u8; MAX_CONTROL_FRAME];
        let key = (!to_browser).then(mask::random_key);
        let n = frame::write_control(&mut f, OpCode::Pong, &p, key);
        let _ = or_done(&s.done, guard.write_all(f[..n].to_vec())).await;
    });
}

/// Runs a session from the two handshaken legs to its end. `ctl` lets
/// other cores close it (replace, revoke, drain).
pub async fn run(
    browser: Leg,
    upstream: Leg,
    mode: Mode,
    settings: Settings,
    ctl: Option<Arc<SessionCtl>>,
    meter: Option<Meter>,
) -> Outcome {
    let s = Rc::new(Shared {
        mode,
        browser: WriterLock::new(browser.writer),
        upstream: WriterLock::new(upstream.writer),
        closing: Signal::default(),
        done: Signal::default(),
        end: Cell::new(None),
        sent_close_browser: Cell::new(false),
        sent_close_upstream: Cell::new(false),
        pong_browser: RefCell::new(None),
        pong_upstream: RefCell::new(None),
        bytes_up: Cell::new(0),
        bytes_down: Cell::new(0),
        last_data: Cell::new(Instant::now()),
        meter,
    });
    let up = monoio::spawn(pump(
        s.clone(),
        Dir::Up,
        browser.reader,
        browser.early,
        settings,
    ));
    let down = match mode {
        Mode::Frames | Mode::Proxmox => monoio::spawn(pump(
            s.clone(),
            Dir::Down,
            upstream.reader,
            upstream.early,
            settings,
        )),
        Mode::Bytes => monoio::spawn(pump_raw_down(s.clone(), upstream.reader, upstream.early)),
    };

    monoio::select! {
        _ = s.done.fired() => {},
        _ = s.closing.fired() => {
            let _ = monoio::time::timeout(CLOSE_GRACE, s.done.fired()).await;
        },
        (code, reason) = watchdog(&s, ctl.as_deref(), settings) => {
            // The relay ends it: lifetime, idle, replaced, revoked, shutdown.
            s.record(End { code, reason, by: Side::Relay });
            Box::pin(async {
                close_browser(&s, code, reason).await;
                close_upstream(&s, close::GOING_AWAY).await;
            })
            .await;
            s.closing.fire();
            let _ = monoio::time::timeout(CLOSE_GRACE, s.done.fired()).await;
        },
    }
    s.done.fire();
    up.await;
    down.await;
    // Everything the pumps wrote is out; FIN both legs (close_notify on TLS).
    for lock in [&s.browser, &s.upstream] {
        if let Ok(mut g) = monoio::time::timeout(Duration::from_millis(100), lock.lock()).await {
            let _ = monoio::time::timeout(CLOSE_GRACE, g.shutdown()).await;
        }
    }
    let end = s.end.get().unwrap_or(End {
        code: 1006,
        reason: "aborted",
        by: Side::Relay,
    });
    Outcome {
        code: end.code,
        reason: end.reason,
        by: end.by,
        bytes_up: s.bytes_up.get(),
        bytes_down: s.bytes_down.get(),
    }
}

/// The session's one timer: keepalive pings on both legs every
/// `ping_interval` (hop by hop, so proxies' idle cuts never fire), and the
/// reasons the relay itself ends a session — its lifetime deadline, the
/// idle timeout, or a request from another core — with their close code.
async fn watchdog(s: &Shared, ctl: Option<&SessionCtl>, settings: Settings) -> (u16, &'static str) {
    let start = Instant::now();
    let mut next_ping = settings.ping_interval.map(|every| start + every);
    loop {
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_ping, settings.ping_interval) {
            if at <= now {
                if !s.closing.is_fired()
                    && send_control(&s.browser, OpCode::Ping, b"nexor", false).await
                    && s.mode != Mode::Bytes
                {
                    send_control(&s.upstream, OpCode::Ping, b"nexor", true).await;
                }
                next_ping = Some(Instant::now() + every);
                continue;
            }
        }
        let mut wake = next_ping;
        if let Some(life) = settings.lifetime {
            if start + life <= now {
                return (close::LIFETIME, "lifetime");
            }
            wake = Some(wake.map_or(start + life, |w| w.min(start + life)));
        }
        if let Some(idle) = settings.idle_timeout {
            let at = s.last_data.get() + idle;
            if at <= now {
                return (close::IDLE, "idle");
            }
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        let sleep = async {
            match wake {
                Some(at) => monoio::time::sleep(at.saturating_duration_since(now)).await,
                None => std::future::pending::<()>().await,
            }
        };
        match ctl {
            Some(c) => monoio::select! {
                r = c.wait() => return (r.code(), r.label()),
                _ = sleep => {},
            },
            None => sleep.await,
        }
    }
}

/// Picks the next read buffer size: grow when a read filled the buffer,
/// shrink back when traffic is light, so idle sessions hold little.
/// `headroom` is capacity kept in front of the read room (the raw pump's
/// frame header).
fn resize(buf: &mut Vec<u8>, last_read: usize, room: usize, headroom: usize) {
    let cap = buf.capacity();
    if last_read == room && cap < LARGE_BUF + headroom {
        buf.reserve_exact(LARGE_BUF + headroom - buf.len());
    } else if cap > SMALL_BUF && last_read < SMALL_BUF / 4 && buf.len() < SMALL_BUF / 2 {
        let mut small = Vec::with_capacity(SMALL_BUF);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// A WebSocket-reading direction: browser → upstream (both modes) or
/// upstream → browser (Frames mode).
async fn pump(s: Rc<Shared>, dir: Dir, mut reader: Reader, early: Vec<u8>, settings: Settings) {
    let from_browser = dir == Dir::Up;
    let mut tracker = Tracker::new(
        if from_browser {
            Sender::Client
        } else {
            Sender::Server
        },
        settings.max_frame,
    );
    let target = s.lock_of(!from_browser).clone();
    let unmask = from_browser && s.mode == Mode::Bytes;
    let recut_mode = from_browser && s.mode == Mode::Proxmox;
    // A browser frame being re-cut for pveproxy: (payload length, mask key).
    let mut recut: Option<(u64, [u8; 4])> = None;
    let mut buf = early;
    buf.reserve(SMALL_BUF.saturating_sub(buf.len()));
    let mut guard: Option<WriterGuard> = None;
    let mut first = true;
    loop {
        let mut last_read = 0;
        let mut room = 0;
        if !first || buf.is_empty() {
            if buf.capacity() - buf.len() < MAX_CONTROL_FRAME {
                buf.reserve(SMALL_BUF);
            }
            let filled = buf.len();
            room = buf.capacity() - filled;
            let cap = buf.capacity();
            let Some((res, slice)) =
                or_done(&s.done, reader.read(buf.slice_mut(filled..cap))).await
            else {
                return;
            };
            buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return Box::pin(leg_gone(&s, dir)).await,
                Ok(n) => last_read = n,
            }
        }
        first = false;

        // Walk the frames in the buffer. `run` is the stretch of bytes
        // waiting to be written to the target in one go.
        let mut pos = 0;
        let mut run: Option<(usize, usize)> = None;
        let mut control: Option<(FrameHeader, usize, usize, usize)> = None;
        let mut error: Option<FrameError> = None;
        loop {
            match tracker.step(&buf[pos..]) {
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
                Ok(Some(Step::DataHeader { len, header })) => {
                    if recut_mode && needs_recut(&header) {
                        // Our own headers replace this one; its payload
                        // passes unchanged, still masked with its key.
                        if let Some(r) = run.take() {
                            buf = match flush(&s, dir, &target, &mut guard, buf, r).await {
                                Some(b) => b,
                                None => return,
                            };
                        }
                        recut =
                            (header.len > 0).then(|| (header.len, header.mask.unwrap_or_default()));
                    } else if !unmask {
                        extend(&mut run, pos, pos + len);
                    } else if let Some(r) = run.take() {
                        // Headers are dropped: write the payload stretch so far.
                        buf = match flush(&s, dir, &target, &mut guard, buf, r).await {
                            Some(b) => b,
                            None => return,
                        };
                    }
                    pos += len;
                }
                Ok(Some(Step::Payload {
                    len,
                    offset,
                    mask: key,
                    ..
                })) => {
                    if unmask {
                        if let Some(k) = key {
                            mask::apply(&mut buf[pos..pos + len], k, offset);
                        }
                    }
                    if let Some((total, k)) = recut {
                        // Cut at multiples of 128 KiB (of 4): each piece
                        // starts at mask phase 0, so the key stays valid.
                        let (mut at, mut off) = (pos, offset);
                        while at < pos + len {
                            if off % PVE_MAX_PAYLOAD == 0 {
                                if let Some(r) = run.take() {
                                    buf = match flush(&s, dir, &target, &mut guard, buf, r).await {
                                        Some(b) => b,
                                        None => return,
                                    };
                                }
                                let h = FrameHeader {
                                    fin: true,
                                    rsv: 0,
                                    opcode: OpCode::Binary,
                                    mask: Some(k),
                                    len: (total - off).min(PVE_MAX_PAYLOAD),
                                };
                                if !write_header(&s, &target, &mut guard, &h).await {
                                    return;
                                }
                            }
                            let end = (pos + len)
                                .min(at + (PVE_MAX_PAYLOAD - off % PVE_MAX_PAYLOAD) as usize);
                            extend(&mut run, at, end);
                            off += (end - at) as u64;
                            at = end;
                        }
                        if off == total {
                            recut = None;
                        }
                    } else {
                        extend(&mut run, pos, pos + len);
                    }
                    pos += len;
                }
                Ok(Some(Step::Control {
                    len,
                    header,
                    payload_at,
                })) => {
                    control = Some((header, pos, pos + payload_at, pos + len));
                    break;
                }
            }
        }
        if let Some(r) = run.take() {
            buf = match flush(&s, dir, &target, &mut guard, buf, r).await {
                Some(b) => b,
                None => return,
            };
        }
        if tracker.at_boundary() {
            guard = None;
        }
        if let Some(e) = error {
            drop(guard);
            return Box::pin(protocol_error(&s, dir, e)).await;
        }
        if let Some((header, start, payload_at, end)) = control {
            let mut payload = buf[payload_at..end].to_vec();
            if let Some(k) = header.mask {
                mask::apply(&mut payload, k, 0);
            }
            match header.opcode {
                OpCode::Ping => queue_pong(&s, from_browser, payload),
                OpCode::Close => {
                    drop(guard);
                    let raw = buf[start..end].to_vec();
                    return Box::pin(on_close(&s, dir, &payload, raw)).await;
                }
                _ => {} // Pong: hop-by-hop, swallowed.
            }
            // Continue after the control frame with whatever follows it.
            buf.drain(..end);
            first = true;
            if buf.is_empty() {
                first = false;
            }
            continue;
        }
        // Keep an incomplete header or control frame for the next read.
        buf.drain(..pos);
        resize(&mut buf, last_read, room, 0);
    }
}

/// pveproxy's payload cap (PROXMOX.md §2.2).
const PVE_MAX_PAYLOAD: u64 = 128 * 1024;

/// Browser frames pveproxy would die on: fragments and big payloads.
fn needs_recut(h: &FrameHeader) -> bool {
    !h.fin || h.opcode == OpCode::Continuation || h.len > PVE_MAX_PAYLOAD
}

/// Writes one relay-made header mid-stream (the guard is held: it is part
/// of the frame being re-cut).
async fn write_header(
    s: &Rc<Shared>,
    target: &WriterLock,
    guard: &mut Option<WriterGuard>,
    h: &FrameHeader,
) -> bool {
    if guard.is_none() {
        match or_done(&s.done, target.lock()).await {
            Some(g) => *guard = Some(g),
            None => return false,
        }
    }
    let mut b = [0u8; MAX_HEADER];
    let n = h.encode(&mut b);
    let Some(g) = guard.as_mut() else {
        return false;
    };
    matches!(
        or_done(&s.done, g.write_all(b[..n].to_vec())).await,
        Some((Ok(_), _))
    )
}

fn extend(run: &mut Option<(usize, usize)>, a: usize, b: usize) {
    *run = match *run {
        Some((start, end)) if end == a => Some((start, b)),
        Some(r) => Some(r), // never happens: steps are contiguous
        None => Some((a, b)),
    };
}

/// Writes `buf[r.0..r.1]` to the target, taking its lock if not held.
async fn flush(
    s: &Rc<Shared>,
    dir: Dir,
    target: &WriterLock,
    guard: &mut Option<WriterGuard>,
    buf: Vec<u8>,
    r: (usize, usize),
) -> Option<Vec<u8>> {
    if guard.is_none() {
        *guard = Some(or_done(&s.done, target.lock()).await?);
    }
    let g = guard.as_mut()?;
    let (res, slice) = or_done(&s.done, g.write_all(buf.slice(r.0..r.1))).await?;
    if res.is_err() {
        *guard = None;
        let gone = if dir == Dir::Up { Dir::Down } else { Dir::Up };
        Box::pin(leg_gone(s, gone)).await;
        return None;
    }
    let n = (r.1 - r.0) as u64;
    let counter = if dir == Dir::Up {
        &s.bytes_up
    } else {
        &s.bytes_down
    };
    counter.set(counter.get() + n);
    s.last_data.set(Instant::now());
    if let Some(m) = &s.meter {
        let (up, down) = if dir == Dir::Up { (n, 0) } else { (0, n) };
        m.metrics.core(m.core).add_bytes(up, down);
    }
    Some(slice.into_inner())
}

/// A close frame arrived from the leg `dir` reads. `raw` is the frame's
/// bytes as received (forwarded unchanged in Frames mode).
async fn on_close(s: &Rc<Shared>, dir: Dir, payload: &[u8], raw: Vec<u8>) {
    let code = frame::check_close_payload(payload).unwrap_or(close::PROTOCOL_ERROR);
    let by = if dir == Dir::Up {
        Side::Browser
    } else {
        Side::Upstream
    };
    let (replied, sent_other) = match dir {
        Dir::Up => (&s.sent_close_browser, &s.sent_close_upstream),
        Dir::Down => (&s.sent_close_upstream, &s.sent_close_browser),
    };
    let end = End {
        code: if code == 1005 { close::NORMAL } else { code },
        reason: "close",
        by,
    };
    if s.mode == Mode::Proxmox && dir == Dir::Up {
        // pveproxy half-closes on a close frame and never answers it
        // (PROXMOX.md §2.2): pass it on, answer the browser ourselves.
        if !sent_other.replace(true) {
            if let Ok(mut g) = monoio::time::timeout(CLOSE_GRACE, s.upstream.lock()).await {
                let _ = monoio::time::timeout(CLOSE_GRACE, g.write_all(raw)).await;
            }
        }
        if !replied.replace(true) {
            let p: Vec<u8> = payload.iter().take(2).copied().collect();
            send_control(&s.browser, OpCode::Close, &p, false).await;
        }
        return s.finish(end);
    }
    if s.mode == Mode::Bytes {
        // Only the browser sends frames here; answer it and FIN the upstream.
        if !replied.replace(true) {
            let mut p = Vec::new();
            if payload.len() >= 2 {
                p.extend_from_slice(&payload[..2]);
            }
            send_control(&s.browser, OpCode::Close, &p, false).await;
        }
        close_upstream(s, code).await;
        return s.finish(end);
    }
    if !sent_other.replace(true) {
        // End to end: forward the close byte for byte to the other leg.
        let lock = s.lock_of(dir == Dir::Down);
        if let Ok(mut g) = monoio::time::timeout(CLOSE_GRACE, lock.lock()).await {
            let _ = monoio::time::timeout(CLOSE_GRACE, g.write_all(raw)).await;
        }
    }
    if replied.get() {
        // This close answers one already sent to this leg: handshake complete.
        s.finish(end);
    } else {
        s.begin_closing(end);
    }
}

/// The leg `dir` reads from ended (EOF or error) without a close frame.
async fn leg_gone(s: &Rc<Shared>, dir: Dir) {
    match dir {
        Dir::Up => {
            s.sent_close_browser.set(true);
            s.record(End {
                code: 1006,
                reason: "browser_gone",
                by: Side::Browser,
            });
            close_upstream(s, close::GOING_AWAY).await;
            s.done.fire();
        }
        Dir::Down => {
            s.sent_close_upstream.set(true);
            let (code, reason) = match s.mode {
                // pveproxy ends every console by closing TCP (no close frame).
                Mode::Bytes | Mode::Proxmox => (close::NORMAL, "upstream_closed"),
                Mode::Frames => (close::UPSTREAM_FAILED, "upstream_gone"),
            };
            s.record(End {
                code,
                reason,
                by: Side::Upstream,
            });
            close_browser(s, code, "").await;
            s.closing.fire();
        }
    }
}

/// The leg `dir` reads from broke the protocol: close it with the matching
/// code, close the other leg, and wait for the closes to be answered.
async fn protocol_error(s: &Rc<Shared>, dir: Dir, e: FrameError) {
    match dir {
        Dir::Up => {
            s.record(End {
                code: e.close_code(),
                reason: e.label(),
                by: Side::Browser,
            });
            close_browser(s, e.close_code(), e.label()).await;
            close_upstream(s, close::GOING_AWAY).await;
        }
        Dir::Down => {
            s.record(End {
                code: close::UPSTREAM_FAILED,
                reason: e.label(),
                by: Side::Upstream,
            });
            close_upstream(s, e.close_code()).await;
            close_browser(s, close::UPSTREAM_FAILED, "").await;
        }
    }
    s.closing.fire();
}

/// Upstream → browser in Bytes mode: each read becomes one binary frame.
async fn pump_raw_down(s: Rc<Shared>, mut reader: Reader, early: Vec<u8>) {
    let mut buf = Vec::with_capacity(SMALL_BUF);
    buf.resize(HEADROOM, 0);
    buf.extend_from_slice(&early);
    let mut pending = early.len();
    loop {
        let (n, room) = if pending > 0 {
            (std::mem::take(&mut pending), 0)
        } else {
            let cap = buf.capacity();
            let room = cap - HEADROOM;
            let Some((res, slice)) =
                or_done(&s.done, reader.read(buf.slice_mut(HEADROOM..cap))).await
            else {
                return;
            };
            buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return Box::pin(leg_gone(&s, Dir::Down)).await,
                Ok(n) => (n, room),
            }
        };
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: None,
            len: n as u64,
        };
        let mut h = [0u8; MAX_HEADER];
        let hl = header.encode(&mut h);
        buf[HEADROOM - hl..HEADROOM].copy_from_slice(&h[..hl]);
        let Some(mut g) = or_done(&s.done, s.browser.lock()).await else {
            return;
        };
        let Some((res, slice)) =
            or_done(&s.done, g.write_all(buf.slice(HEADROOM - hl..HEADROOM + n))).await
        else {
            return;
        };
        drop(g);
        buf = slice.into_inner();
        if res.is_err() {
            return Box::pin(leg_gone(&s, Dir::Up)).await;
        }
        s.bytes_down.set(s.bytes_down.get() + n as u64);
        s.last_data.set(Instant::now());
        if let Some(m) = &s.meter {
            m.metrics.core(m.core).add_bytes(0, n as u64);
        }
        buf.truncate(HEADROOM);
        if room > 0 {
            resize(&mut buf, n, room, HEADROOM);
        }
    }
}
