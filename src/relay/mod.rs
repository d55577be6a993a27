//! The only pump between the two legs: glue around the sans-io [`core`].
//!
//! ```text
//!            ┌──────────── pump(Browser) ───────────────┐
//! browser ───┤ read → Core::next → write ranges          │──▶ upstream
//!            └───────────────────────────────────────────┘
//!            ┌──────────── pump(Upstream) ──────────────┐
//! browser ◀──┤ write ranges ← Core::next ← read          │─── upstream
//!            └───────────────────────────────────────────┘
//!            main task: one timer, control requests, the relay's own frames
//! ```
//!
//! Every decision (frame tracking, the close handshake, ping/pong, limits,
//! the Proxmox re-cut, framing for `tcp`/`demo`, the view-only filter of
//! [`viewonly`]) is in [`core::Core`]; this
//! file only reads, writes and sleeps. Two modes of upstream, see [`Mode`].
//!
//! Writers are shared through [`WriterLock`]: a pump holds the other leg's
//! writer while [`core::Core::mid_frame`] says a frame is half written, so
//! the relay's own frames ([`core::Core::take_control`]: pongs, pings,
//! closes), written by whoever holds the lock at a boundary, land only
//! between frames. A pump writes what it read before reading again: a slow
//! reader stalls its writer, nothing queues.
//!
//! Every call into the core runs under `catch_unwind`: a bug that panics
//! ends its session (1011 `panic` to both legs, `nexor_session_panics_total`),
//! never the worker.

#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod core;
#[cfg(test)]
mod tests;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod viewonly;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::registry::SessionCtl;
use crate::transport::{Reader, Signal, Writer, WriterGuard, WriterLock};
use crate::ws::frame::{self, close, MAX_CONTROL_FRAME};

pub use self::core::SessionError;
use self::core::{Control, Core, LegId, Next, Phase, ReadEnd};

/// Read buffer of a quiet direction: small, since a burst of keystrokes or
/// screen updates fits (buffers come from the worker's pool, see `pool`,
/// and an idle direction holds none).
pub const SMALL_BUF: usize = 1024;
/// Read buffer of a busy direction (a read filled the small one).
pub const LARGE_BUF: usize = 64 * 1024;
/// How long a relay-sent close waits for the peer's close before teardown,
/// and how long the relay waits for a writer to reach a frame boundary.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// The main task's wake-up when the session has no deadline at all.
const IDLE_WAKE: Duration = Duration::from_secs(86_400);

/// How the upstream leg is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// WebSocket upstream: frames pass through unchanged.
    Frames,
    /// Raw byte stream upstream (TCP console, in-process demo).
    Bytes,
    /// pveproxy's websocket (docs/proxmox.md §2.2): as Frames, except that
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
    /// A pinged leg that sends nothing for this long is dead.
    pub pong_timeout: Option<Duration>,
    /// Time left until the session's lifetime deadline (then 4002).
    pub lifetime: Option<Duration>,
    /// No data frames either way for this long: 4003. Pings do not count.
    pub idle_timeout: Option<Duration>,
    /// View-only session (ticket `mode = "view"`): the browser's stream
    /// goes through this filter, in the state the preamble left it in.
    pub view: Option<viewonly::ViewFilter>,
}

/// Where a session counts its bytes: its worker's metrics block, and its
/// recording if it has one ([`tap`]).
pub struct Meter {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub core: usize,
    pub recording: Option<Rc<crate::record::Recording>>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The close code of the first close (1006 when a leg vanished).
    pub code: u16,
    /// A stable label: "close", "browser_gone", "unmasked_frame", ...
    pub reason: &'static str,
    pub by: Side,
    /// Bytes forwarded browser → upstream (frames or payload).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Set when the session did not end by a peer's close frame or a
    /// decision of the relay (or a console that really closed).
    pub error: Option<SessionError>,
}

/// A re-armable wake-up for the session's main task (one waiter).
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

struct Shared {
    core: RefCell<Core>,
    locks: [WriterLock; 2],
    /// The core has control output or changed phase.
    wake: Notify,
    /// Tear down now: pumps stop waiting.
    done: Signal,
    panicked: Cell<bool>,
    meter: Option<Meter>,
}

impl Shared {
    /// Runs `f` on the core, catching a panic (then None, for good).
    fn core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> Option<R> {
        if self.panicked.get() {
            return None;
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut c = self.core.borrow_mut();
            let r = f(&mut c);
            (r, c.take_dirty())
        }));
        match r {
            Ok((r, dirty)) => {
                if dirty {
                    self.wake.notify();
                }
                Some(r)
            }
            Err(_) => {
                self.on_panic();
                None
            }
        }
    }

    /// A panic in the core or a pump: the session ends (1011 `panic`).
    fn on_panic(&self) {
        if self.panicked.replace(true) {
            return;
        }
        if let Ok(mut c) = self.core.try_borrow_mut() {
            c.panicked();
        }
        // Every session task runs inside the panic net, where the panic
        // hook stays quiet and leaves the location: log it here, once.
        let location = crate::task::take_panic_location();
        let mut fields = vec![(
            "location",
            crate::log::V::S(location.as_deref().unwrap_or("unknown")),
        )];
        if let Some(m) = &self.meter {
            m.metrics.worker(m.core).session_panic();
            fields.push(("worker", crate::log::V::N(m.core as u64)));
        }
        crate::log::error(
            "session panicked: it ended with 1011, the worker goes on",
            &fields,
        );
        self.done.fire();
        self.wake.notify();
    }

    fn lock(&self, leg: LegId) -> &WriterLock {
        &self.locks[leg as usize]
    }
}

/// Awaits `f` unless the session is torn down first. By hand, not with
/// `select!`: its state is most of a pump's, which an idle session holds
/// (the macro's was 240–310 bytes more per wait, BENCHMARKING.md).
async fn or_done<F: Future>(done: &Signal, f: F) -> Option<F::Output> {
    if done.is_fired() {
        return None;
    }
    let mut f = std::pin::pin!(f);
    let mut fired = std::pin::pin!(done.fired());
    std::future::poll_fn(|cx| {
        if fired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        f.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Awaits `f` if there is one, else never resolves.
async fn maybe<F: Future>(f: Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Writes the relay's pending frames for `leg` while holding its writer at
/// a frame boundary. False if a write failed (the core was told).
async fn write_controls(s: &Shared, leg: LegId, guard: &mut WriterGuard) -> bool {
    while let Some(c) = s.core(|c| c.take_control(leg)).flatten() {
        let res = match c {
            Control::Frame(f) => {
                match monoio::time::timeout(CLOSE_GRACE, guard.write_all(f)).await {
                    Ok((r, _)) => r.map(|_| ()),
                    Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                }
            }
            Control::Shutdown => monoio::time::timeout(CLOSE_GRACE, guard.shutdown())
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        };
        if let Err(e) = res {
            s.core(|c| c.on_write_error(leg, &e, Instant::now()));
            return false;
        }
    }
    true
}

/// Runs a session from the two handshaken legs to its end. `ctl` lets
/// other cores close it (replace, revoke, drain). Must be called on the
/// session's runtime: the pumps are spawned at once, so that the returned
/// future (held for the session's life) holds only what the main task
/// needs, not the legs.
pub fn run(
    browser: Leg,
    upstream: Leg,
    mode: Mode,
    settings: Settings,
    ctl: Option<Arc<SessionCtl>>,
    meter: Option<Meter>,
) -> impl Future<Output = Outcome> {
    let s = Rc::new(Shared {
        core: RefCell::new(Core::new(mode, settings, Instant::now())),
        locks: [
            WriterLock::new(browser.writer),
            WriterLock::new(upstream.writer),
        ],
        wake: Notify::default(),
        done: Signal::default(),
        panicked: Cell::new(false),
        meter,
    });
    run_shared(
        s,
        browser.reader,
        browser.early,
        upstream.reader,
        upstream.early,
        ctl,
    )
}

/// Spawns a pump behind the panic net: a panic in the glue (the core's own
/// are caught in [`Shared::core`]) ends the session as a core panic does.
fn spawn_pump(
    pump: impl Future<Output = ()> + 'static,
    s: &Rc<Shared>,
) -> monoio::task::JoinHandle<()> {
    let s = s.clone();
    // Boxed before the spawn, so the pump's future is held once (as in
    // `task::spawn`).
    let caught = crate::task::CatchPanic::new(pump);
    monoio::spawn(async move {
        if caught.await.is_err() {
            s.on_panic();
        }
    })
}

/// Spawns the two pumps and returns the main task's future.
fn run_shared(
    s: Rc<Shared>,
    browser: Reader,
    browser_early: Vec<u8>,
    upstream: Reader,
    upstream_early: Vec<u8>,
    ctl: Option<Arc<SessionCtl>>,
) -> impl Future<Output = Outcome> {
    let up = spawn_pump(pump(s.clone(), LegId::Browser, browser, browser_early), &s);
    let down = spawn_pump(
        pump(s.clone(), LegId::Upstream, upstream, upstream_early),
        &s,
    );
    main(s, up, down, ctl)
}

/// The session's main task: the timer, control requests, the relay's own
/// frames, the end.
async fn main(
    s: Rc<Shared>,
    up: monoio::task::JoinHandle<()>,
    down: monoio::task::JoinHandle<()>,
    ctl: Option<Arc<SessionCtl>>,
) -> Outcome {
    let mut request_seen = false;

    loop {
        if s.panicked.get() {
            break;
        }
        let Some((phase, deadline, want)) = s.core(|c| {
            (
                c.phase(),
                c.deadline(),
                [
                    c.has_control(LegId::Browser),
                    c.has_control(LegId::Upstream),
                ],
            )
        }) else {
            break;
        };
        if phase == Phase::Done {
            // Boxed, as every rare path here: the main future is held for
            // the session's life, so it keeps only the idle wait.
            Box::pin(last_frames(&s, want)).await;
            break;
        }
        let now = Instant::now();
        // A plain Sleep (640 bytes), not one wrapped in `maybe`, which
        // would hold it twice; without a deadline, wake daily and look.
        let sleep =
            monoio::time::sleep(deadline.map_or(IDLE_WAKE, |at| at.saturating_duration_since(now)));
        let request = maybe(ctl.as_deref().filter(|_| !request_seen).map(|c| c.wait()));
        monoio::select! {
            g = maybe(want[0].then(|| s.lock(LegId::Browser).lock())) => {
                let mut g = g;
                Box::pin(write_controls(&s, LegId::Browser, &mut g)).await;
            },
            g = maybe(want[1].then(|| s.lock(LegId::Upstream).lock())) => {
                let mut g = g;
                Box::pin(write_controls(&s, LegId::Upstream, &mut g)).await;
            },
            _ = sleep => { s.core(|c| c.on_timer(Instant::now())); },
            r = request => {
                request_seen = true;
                s.core(|c| c.on_request(r, Instant::now()));
            },
            _ = s.wake.wait() => {},
        }
    }
    s.done.fire();
    up.await;
    down.await;
    Box::pin(teardown(&s)).await;
    let out = s.core.borrow().outcome();
    out
}

/// Last frames (closes) out, each bounded.
async fn last_frames(s: &Shared, want: [bool; 2]) {
    for leg in [LegId::Browser, LegId::Upstream] {
        if want[leg as usize] {
            if let Ok(mut g) = monoio::time::timeout(CLOSE_GRACE, s.lock(leg).lock()).await {
                write_controls(s, leg, &mut g).await;
            }
        }
    }
}

/// After the pumps stopped: the goodbye after a panic, then FIN both legs.
async fn teardown(s: &Shared) {
    if s.panicked.get() {
        // The core is not trusted any more: the glue says goodbye itself.
        for (leg, masked) in [(LegId::Browser, false), (LegId::Upstream, true)] {
            if mode_has_frames(s, leg) {
                if let Ok(mut g) =
                    monoio::time::timeout(Duration::from_millis(100), s.lock(leg).lock()).await
                {
                    let mut f = [0u8; MAX_CONTROL_FRAME];
                    let key = masked.then(crate::ws::mask::random_key);
                    let n = frame::write_close(&mut f, close::UPSTREAM_FAILED, "panic", key);
                    let _ = monoio::time::timeout(CLOSE_GRACE, g.write_all(f[..n].to_vec())).await;
                }
            }
        }
    }
    // Everything the pumps wrote is out; FIN both legs (close_notify on TLS).
    for lock in &s.locks {
        if let Ok(mut g) = monoio::time::timeout(Duration::from_millis(100), lock.lock()).await {
            let _ = monoio::time::timeout(CLOSE_GRACE, g.shutdown()).await;
        }
    }
}

/// Whether the relay may write a close frame to `leg` after a panic.
fn mode_has_frames(s: &Shared, leg: LegId) -> bool {
    leg == LegId::Browser
        || s.core
            .try_borrow()
            .is_ok_and(|c| c.headroom(LegId::Upstream) == 0)
}

/// The read buffers of a worker thread's pumps. A pump holds a buffer only
/// from its socket's readiness until what it read was written on (or while
/// it holds an unfinished frame), so an idle session holds none, and a busy
/// worker reuses the same few instead of allocating per message.
mod pool {
    use std::cell::RefCell;

    use super::{LARGE_BUF, SMALL_BUF};
    use crate::relay::core::HEADROOM;

    /// Capacities handed out: headroom plus the read size.
    pub const SMALL: usize = SMALL_BUF + HEADROOM;
    pub const LARGE: usize = LARGE_BUF + HEADROOM;
    /// Buffers kept per worker beyond those in use (1 MiB and 2 MiB).
    const KEEP_SMALL: usize = 1024;
    const KEEP_LARGE: usize = 32;

    /// The free buffers of one worker thread, by size class.
    struct Free {
        small: Vec<Vec<u8>>,
        large: Vec<Vec<u8>>,
    }

    thread_local! {
        static FREE: RefCell<Free> = const {
            RefCell::new(Free {
                small: Vec::new(),
                large: Vec::new(),
            })
        };
    }

    /// An empty buffer of at least `cap` ([`SMALL`] or [`LARGE`]).
    pub fn take(cap: usize) -> Vec<u8> {
        let reused = FREE.with(|f| {
            let mut f = f.borrow_mut();
            if cap <= SMALL {
                f.small.pop()
            } else {
                f.large.pop()
            }
        });
        reused.unwrap_or_else(|| Vec::with_capacity(cap))
    }

    /// Gives a buffer back (dropped if the pool is full or it is odd-sized).
    pub fn give(mut buf: Vec<u8>) {
        buf.clear();
        let cap = buf.capacity();
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if cap >= LARGE && f.large.len() < KEEP_LARGE {
                f.large.push(buf);
            } else if (SMALL..LARGE).contains(&cap) && f.small.len() < KEEP_SMALL {
                f.small.push(buf);
            }
        });
    }
}

/// Makes `buf` ready for a read of the size class `large` asks for, keeping
/// what it holds (headroom and an unfinished frame); returns the room.
fn ready_buf(buf: &mut Vec<u8>, head: usize, large: bool) -> usize {
    let want = if large { pool::LARGE } else { pool::SMALL };
    if buf.capacity() == 0 {
        *buf = pool::take(want);
        buf.resize(head, 0);
    } else if (large && buf.capacity() < want)
        || (!large && buf.capacity() >= pool::LARGE && buf.len() <= SMALL_BUF / 2)
    {
        let mut other = pool::take(want);
        other.extend_from_slice(buf);
        pool::give(std::mem::replace(buf, other));
    }
    if buf.capacity() - buf.len() < MAX_CONTROL_FRAME {
        // An unfinished frame fills the buffer: room for a control frame.
        buf.reserve(SMALL_BUF);
    }
    buf.capacity() - buf.len()
}

/// One direction: reads `from`, writes what the core says to the other leg.
async fn pump(s: Rc<Shared>, from: LegId, mut reader: Reader, early: Vec<u8>) {
    let to = from.other();
    let Some(head) = s.core(|c| c.headroom(from)) else {
        return;
    };
    let rec = s.meter.as_ref().and_then(|m| m.recording.clone());
    let mut buf = Vec::new();
    if !early.is_empty() {
        buf = pool::take(pool::SMALL.max(head + early.len()));
        buf.resize(head, 0);
        buf.extend_from_slice(&early);
    }
    drop(early);
    let mut guard: Option<WriterGuard> = None;
    // The size class of the next read: large while reads fill the buffer.
    let mut large = false;
    // One clock read per read, not per frame.
    let mut now = Instant::now();
    loop {
        // Do what the core says with what the buffer holds.
        while buf.len() > head {
            let Some(next) = s.core(|c| c.next(from, &mut buf, now)) else {
                return;
            };
            let (res, n) = match next {
                Next::Stop => return,
                Next::Read { consumed } => {
                    buf.drain(head..head + consumed);
                    if !s.core(|c| c.mid_frame(from)).unwrap_or(false) {
                        guard = None;
                    }
                    break;
                }
                Next::Forward { range, count } => {
                    tap(rec.as_deref(), from, &buf[range.clone()]);
                    match hold_writer(&s, to, &mut guard).await {
                        None => return,
                        Some(false) => continue,
                        Some(true) => {}
                    }
                    let Some(g) = guard.as_mut() else { return };
                    let Some(res) = or_done(&s.done, g.write(&buf[range])).await else {
                        return;
                    };
                    (res, count)
                }
                Next::Header { bytes, len } => {
                    let bytes = &bytes[..len as usize];
                    tap(rec.as_deref(), from, bytes);
                    match hold_writer(&s, to, &mut guard).await {
                        None => return,
                        Some(false) => continue,
                        Some(true) => {}
                    }
                    let Some(g) = guard.as_mut() else { return };
                    let Some(res) = or_done(&s.done, g.write(bytes)).await else {
                        return;
                    };
                    (res, 0)
                }
                Next::Own { bytes, count } => {
                    tap(rec.as_deref(), from, &bytes);
                    match hold_writer(&s, to, &mut guard).await {
                        None => return,
                        Some(false) => continue,
                        Some(true) => {}
                    }
                    let Some(g) = guard.as_mut() else { return };
                    let Some(res) = or_done(&s.done, g.write(&bytes)).await else {
                        return;
                    };
                    (res, count)
                }
            };
            if let Err(e) = res {
                s.core(|c| c.on_write_error(to, &e, Instant::now()));
                return;
            }
            if let Some(m) = &s.meter {
                if n > 0 {
                    let (up, down) = if from == LegId::Browser {
                        (n, 0)
                    } else {
                        (0, n)
                    };
                    m.metrics.worker(m.core).add_bytes(up, down);
                }
            }
            if !s.core(|c| c.mid_frame(from)).unwrap_or(false) {
                guard = None;
            }
        }
        // Nothing unfinished: wait holding no buffer.
        if buf.len() <= head && buf.capacity() > 0 {
            pool::give(std::mem::take(&mut buf));
        }
        // A read that filled the buffer says more is there: read again
        // before asking the driver (a PollAdd on io_uring) whether it is.
        let mut optimistic = large;
        let res = loop {
            if !std::mem::take(&mut optimistic) {
                match or_done(&s.done, reader.ready()).await {
                    None => return,
                    Some(Err(e)) => break Err(e),
                    Some(Ok(())) => {}
                }
            } else if s.done.is_fired() {
                return;
            }
            let room = ready_buf(&mut buf, head, large);
            match reader.try_read(&mut buf, room) {
                // A spurious wake-up.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if buf.len() <= head {
                        pool::give(std::mem::take(&mut buf));
                    }
                }
                r => break r.map(|n| (n, room)),
            }
        };
        now = Instant::now();
        match res {
            Ok((0, _)) => {
                s.core(|c| c.on_read_end(from, ReadEnd::Eof, now));
                return;
            }
            Err(e) => {
                s.core(|c| c.on_read_end(from, ReadEnd::Error(&e), now));
                return;
            }
            Ok((n, room)) => {
                if n == room {
                    large = true;
                } else if n < SMALL_BUF / 4 {
                    large = false;
                }
                if s.core(|c| c.on_read(from, n, now)).is_none() {
                    return;
                }
            }
        }
    }
}

/// Makes sure the pump holds the writer of `to` for its next write. None:
/// stop the pump. `Some(false)`: the relay's close just went out on that
/// leg, so nothing may follow it (skip this write).
async fn hold_writer(s: &Shared, to: LegId, guard: &mut Option<WriterGuard>) -> Option<bool> {
    if guard.is_none() {
        *guard = Some(take_writer(s, to).await?);
        if s.core(|c| c.closed(to)).unwrap_or(true) {
            return Some(false);
        }
    }
    Some(true)
}

/// Takes the writer of `leg` at a frame boundary, writing the relay's own
/// frames queued for it first.
async fn take_writer(s: &Shared, leg: LegId) -> Option<WriterGuard> {
    let mut g = or_done(&s.done, s.lock(leg).lock()).await?;
    // Boxed: a rare path, kept out of the pump's future (idle sessions).
    if s.core(|c| c.has_control(leg))? && !Box::pin(write_controls(s, leg, &mut g)).await {
        return None;
    }
    Some(g)
}

/// Hands what the core decided to forward to the session's recording, if
/// any (docs/recording.md): before the write, so that the writer sees the
/// browser's bytes before the answer they cause. Unrecorded sessions pay
/// one branch; a recorded one a copy into the writer's queue, never a wait.
#[inline]
fn tap(rec: Option<&crate::record::Recording>, from: LegId, bytes: &[u8]) {
    if let Some(r) = rec {
        r.tap(from == LegId::Browser, bytes);
    }
}
