//! `kind = "demo"`: the built-in backends of `crate::demo`, run in-process
//! on one end of a socketpair; the session relays the other end like a TCP
//! console, so the demo exercises the same pump as production.
//!
//! The backend's tasks run behind the worker's panic net
//! ([`crate::task::spawn`]): a panic in a backend ends that session's
//! backend (its socket closes, so the session ends), never the worker.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::net::UnixStream;

use super::Opened;
use crate::demo::{rfb::RfbDemo, term::TermDemo, Backend};
use crate::error::UpstreamError;
use crate::relay::Mode;
use crate::ticket::Console;
use crate::transport::{Reader, Signal, Stream, WriterLock};

pub fn open(console: Console) -> Result<Opened, UpstreamError> {
    let (ours, theirs) = UnixStream::pair().map_err(|_| UpstreamError::Connect)?;
    let backend: Box<dyn Backend> = match console {
        Console::Vnc => Box::new(RfbDemo::default()),
        Console::Term => Box::new(TermDemo::new()),
    };
    crate::task::spawn(drive(theirs, backend));
    Ok(Opened {
        stream: Stream::Unix(ours),
        early: Vec::new(),
        protocol: None,
        mode: Mode::Bytes,
        pending: None,
        to_browser: Vec::new(),
    })
}

/// Runs a backend over its end of the pair: one task feeds input, one ticks
/// the animation; both write through the same lock.
async fn drive(stream: UnixStream, backend: Box<dyn Backend>) {
    let (reader, writer) = Stream::Unix(stream).into_split();
    let writer = WriterLock::new(writer);
    let backend = Rc::new(RefCell::new(backend));
    let done = Signal::default();
    // Fired however `drive` ends (a panic drops it): the ticker then stops
    // and lets go of the writer, so the socket closes.
    let _stop_ticker = FireOnDrop(done.clone());
    let t0 = Instant::now();

    let mut out = Vec::new();
    backend.borrow_mut().start(&mut out);
    if !write(&writer, out).await {
        return;
    }
    let ticker = crate::task::spawn(tick(backend.clone(), writer.clone(), done.clone(), t0));
    read_loop(reader, &backend, &writer, t0).await;
    done.fire();
    ticker.await;
    if let Ok(mut g) = monoio::time::timeout(Duration::from_secs(1), writer.lock()).await {
        let _ = g.shutdown().await;
    }
}

struct FireOnDrop(Signal);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        self.0.fire();
    }
}

async fn write(writer: &WriterLock, out: Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let mut g = writer.lock().await;
    g.write_all(out).await.0.is_ok()
}

async fn read_loop(
    mut reader: Reader,
    backend: &Rc<RefCell<Box<dyn Backend>>>,
    writer: &WriterLock,
    t0: Instant,
) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let cap = buf.capacity();
        let (res, slice) = reader.read(buf.slice_mut(0..cap)).await;
        buf = slice.into_inner();
        let n = match res {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        #[cfg(debug_assertions)]
        fault::check(&buf[..n]);
        let mut out = Vec::new();
        let result = backend
            .borrow_mut()
            .on_input(&buf[..n], t0.elapsed(), &mut out);
        buf.clear();
        if !write(writer, out).await || result.is_err() || backend.borrow().wants_close() {
            return;
        }
    }
}

async fn tick(
    backend: Rc<RefCell<Box<dyn Backend>>>,
    writer: WriterLock,
    done: Signal,
    t0: Instant,
) {
    // With no update due, look again soon: input may have asked for one.
    const IDLE_POLL: Duration = Duration::from_millis(50);
    loop {
        let wait = match backend.borrow().next_tick() {
            Some(at) => at.saturating_sub(t0.elapsed()),
            None => IDLE_POLL,
        };
        monoio::select! {
            _ = done.fired() => return,
            _ = monoio::time::sleep(wait) => {},
        }
        let mut out = Vec::new();
        backend.borrow_mut().poll_tick(t0.elapsed(), &mut out);
        if !write(&writer, out).await {
            return;
        }
    }
}

/// Faults for the tests of the panic net, compiled into debug builds only
/// (release builds have none) and armed only when the relay runs with
/// `NEXOR_TEST_FAULTS=1`: a browser line holding [`fault::PANIC`] makes
/// this session's backend task panic (caught by the net); one holding
/// [`fault::KILL_WORKER`] starts a task *outside* the net that panics, so
/// its worker thread dies (what an unguarded spawn would do); and a delay
/// before a session's `session_end` line ([`fault::session_end_delay`]).
#[cfg(debug_assertions)]
pub mod fault {
    pub const PANIC: &[u8] = b"nexor-test-fault:panic";
    pub const KILL_WORKER: &[u8] = b"nexor-test-fault:kill-worker";
    /// In the panic message, which must never reach a log line.
    pub const SECRET_IN_MESSAGE: &str = "fault-secret-6b1d2e";

    /// `NEXOR_TEST_FAULTS` is a comma-separated list: `1` arms the
    /// browser-line faults above, `slow-session-end` the delay below.
    fn has(fault: &str) -> bool {
        std::env::var("NEXOR_TEST_FAULTS").is_ok_and(|v| v.split(',').any(|f| f == fault))
    }

    fn armed() -> bool {
        has("1")
    }

    /// With `slow-session-end`, a session waits this long between its end
    /// and its `session_end` audit line: a drain that exited as soon as the
    /// session's slots were gone would lose the line if the slots were
    /// released first.
    pub fn session_end_delay() -> Option<std::time::Duration> {
        has("slow-session-end").then(|| std::time::Duration::from_millis(300))
    }

    fn holds(input: &[u8], needle: &[u8]) -> bool {
        input.windows(needle.len()).any(|w| w == needle)
    }

    pub fn check(input: &[u8]) {
        if !armed() {
            return;
        }
        if holds(input, KILL_WORKER) {
            monoio::spawn(async { panic!("test fault: unguarded task, {SECRET_IN_MESSAGE}") });
        } else if holds(input, PANIC) {
            panic!("test fault: session task, {SECRET_IN_MESSAGE}");
        }
    }
}
