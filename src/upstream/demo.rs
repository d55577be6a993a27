//! `kind = "demo"`: the built-in backends of `crate::demo`, run in-process
//! on one end of a socketpair; the session relays the other end like a TCP
//! console, so the demo exercises the same pump as production.

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
    monoio::spawn(drive(theirs, backend));
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
    let t0 = Instant::now();

    let mut out = Vec::new();
    backend.borrow_mut().start(&mut out);
    if !write(&writer, out).await {
        return;
    }
    let ticker = monoio::spawn(tick(backend.clone(), writer.clone(), done.clone(), t0));
    read_loop(reader, &backend, &writer, t0).await;
    done.fire();
    ticker.await;
    if let Ok(mut g) = monoio::time::timeout(Duration::from_secs(1), writer.lock()).await {
        let _ = g.shutdown().await;
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
