//! The byte streams a session runs over, as two enums so that one pump
//! serves every pairing (plain or TLS browser; TCP, TLS or in-process
//! upstream), plus the two single-thread primitives the pump shares between
//! its directions: [`WriterLock`] (frames are written whole, so the relay's
//! own frames land only between them) and [`Signal`] (end of session).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::{TcpStream, UnixStream};
use monoio::BufResult;
use monoio_rustls::{ClientTlsStream, ServerTlsStream};

/// A whole stream, before the split.
pub enum Stream {
    Tcp(TcpStream),
    ServerTls(Box<ServerTlsStream<TcpStream>>),
    ClientTls(Box<ClientTlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// The read half of a [`Stream`].
pub enum Reader {
    Tcp(OwnedReadHalf<TcpStream>),
    ServerTls(OwnedReadHalf<ServerTlsStream<TcpStream>>),
    ClientTls(OwnedReadHalf<ClientTlsStream<TcpStream>>),
    Unix(OwnedReadHalf<UnixStream>),
}

/// The write half of a [`Stream`].
pub enum Writer {
    Tcp(OwnedWriteHalf<TcpStream>),
    ServerTls(OwnedWriteHalf<ServerTlsStream<TcpStream>>),
    ClientTls(OwnedWriteHalf<ClientTlsStream<TcpStream>>),
    Unix(OwnedWriteHalf<UnixStream>),
}

macro_rules! each {
    ($value:expr, $s:ident => $body:expr) => {
        match $value {
            Self::Tcp($s) => $body,
            Self::ServerTls($s) => $body,
            Self::ClientTls($s) => $body,
            Self::Unix($s) => $body,
        }
    };
}

impl Stream {
    pub async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.read(buf).await)
    }

    pub async fn write_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write_all(buf).await)
    }

    /// Reads more bytes onto the end of `buf` (growing it when full).
    /// `Ok(0)` is EOF.
    pub async fn read_more(&mut self, mut buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().clamp(1024, 8192));
        }
        let (filled, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self
            .read(monoio::buf::IoBufMut::slice_mut(buf, filled..cap))
            .await;
        (res, slice.into_inner())
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await)
    }

    pub fn into_split(self) -> (Reader, Writer) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Writer::Tcp(w))
            }
            Stream::ServerTls(s) => {
                let (r, w) = (*s).into_split();
                (Reader::ServerTls(r), Writer::ServerTls(w))
            }
            Stream::ClientTls(s) => {
                let (r, w) = (*s).into_split();
                (Reader::ClientTls(r), Writer::ClientTls(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (Reader::Unix(r), Writer::Unix(w))
            }
        }
    }
}

impl Reader {
    pub async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.read(buf).await)
    }
}

impl Writer {
    pub async fn write_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        each!(self, s => s.write_all(buf).await)
    }

    /// Sends FIN (and TLS close_notify) after what was written.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, s => s.shutdown().await)
    }
}

/// An async lock around one [`Writer`], for one thread. Whoever writes a
/// frame holds it for the whole frame.
#[derive(Clone)]
pub struct WriterLock(Rc<LockInner>);

struct LockInner {
    slot: RefCell<Option<Writer>>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl WriterLock {
    pub fn new(w: Writer) -> WriterLock {
        WriterLock(Rc::new(LockInner {
            slot: RefCell::new(Some(w)),
            waiters: RefCell::new(VecDeque::new()),
        }))
    }

    /// Waits until the writer is free and takes it.
    pub fn lock(&self) -> impl Future<Output = WriterGuard> + '_ {
        poll_fn(move |cx| match self.0.slot.borrow_mut().take() {
            Some(w) => Poll::Ready(WriterGuard {
                lock: self.clone(),
                writer: Some(w),
            }),
            None => {
                let mut ws = self.0.waiters.borrow_mut();
                if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                    ws.push_back(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }
}

/// Exclusive use of a [`Writer`]; gives it back on drop.
pub struct WriterGuard {
    lock: WriterLock,
    writer: Option<Writer>,
}

impl std::ops::Deref for WriterGuard {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        self.writer.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for WriterGuard {
    fn deref_mut(&mut self) -> &mut Writer {
        self.writer.as_mut().expect("present until drop")
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        *self.lock.0.slot.borrow_mut() = self.writer.take();
        // Wake every waiter: one wins, the others re-register. Waiters are
        // at most the session's three tasks.
        for w in self.lock.0.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A one-shot, many-listener flag for one thread: the session's end.
///
/// Each waiting [`Fired`] future owns one slot, overwritten when it is
/// polled again and freed when it is dropped, so a session that waits on
/// the signal around every read keeps a list as short as its live waiters.
#[derive(Clone, Default)]
pub struct Signal(Rc<SignalInner>);

#[derive(Default)]
struct SignalInner {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
}

impl Signal {
    pub fn fire(&self) {
        if !self.0.fired.replace(true) {
            let wakers: Vec<Waker> = self
                .0
                .waiters
                .borrow_mut()
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for w in wakers {
                w.wake();
            }
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Resolves once [`Signal::fire`] was called.
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            slot: None,
        }
    }

    #[cfg(test)]
    fn waiter_slots(&self) -> usize {
        self.0.waiters.borrow().len()
    }
}

/// The future of [`Signal::fired`].
pub struct Fired<'a> {
    signal: &'a Signal,
    slot: Option<usize>,
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.signal.0.fired.get() {
            return Poll::Ready(());
        }
        let inner = self.signal.0.clone();
        let mut ws = inner.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut ws[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match ws.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        ws.push(None);
                        ws.len() - 1
                    }
                };
                ws[i] = Some(cx.waker().clone());
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Fired<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Ok(mut ws) = self.signal.0.waiters.try_borrow_mut() {
                if let Some(s) = ws.get_mut(i) {
                    *s = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Wake};

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn waiting_around_every_read_keeps_one_slot() {
        let sig = Signal::default();
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // A million waits, each polled twice and dropped, as the pump does.
        for _ in 0..1_000_000 {
            let mut f = std::pin::pin!(sig.fired());
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(sig.waiter_slots(), 1);
        let mut f = std::pin::pin!(sig.fired());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        sig.fire();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
}
