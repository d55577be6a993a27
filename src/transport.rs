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
#[derive(Clone, Default)]
pub struct Signal(Rc<SignalInner>);

#[derive(Default)]
struct SignalInner {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn fire(&self) {
        if !self.0.fired.replace(true) {
            for w in self.0.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Resolves once [`Signal::fire`] was called.
    pub fn fired(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.0.fired.get() {
                Poll::Ready(())
            } else {
                // Each task registers once, however often it polls: a
                // session's reads poll this on every iteration.
                let mut ws = self.0.waiters.borrow_mut();
                if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                    ws.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }
}
