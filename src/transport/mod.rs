//! The byte streams a session runs over, as two enums so that one pump
//! serves every pairing (plain or TLS browser; TCP, TLS or in-process
//! upstream), plus the two single-thread primitives the pump shares between
//! its directions: [`WriterLock`] (frames are written whole, so the relay's
//! own frames land only between them) and [`Signal`] (end of session).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut, Slice, SliceMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::{TcpStream, UnixStream};
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// A read buffer: a `Vec` read into from its length up to `end`.
pub type ReadBuf = SliceMut<Vec<u8>>;

/// An owned buffer whose bytes can also be seen (TLS encrypts them).
pub trait OwnedBytes: IoBuf {
    fn as_bytes(&self) -> &[u8];
}

impl OwnedBytes for Vec<u8> {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl OwnedBytes for Slice<Vec<u8>> {
    fn as_bytes(&self) -> &[u8] {
        &self.get_ref()[self.begin()..self.end()]
    }
}

/// A whole stream, before the split.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    Unix(UnixStream),
}

/// The read half of a [`Stream`].
pub enum Reader {
    Tcp(OwnedReadHalf<TcpStream>),
    Tls(TlsReader),
    Unix(OwnedReadHalf<UnixStream>),
}

/// The write half of a [`Stream`].
pub enum Writer {
    Tcp(OwnedWriteHalf<TcpStream>),
    Tls(TlsWriter),
    Unix(OwnedWriteHalf<UnixStream>),
}

impl Stream {
    pub async fn read(&mut self, buf: ReadBuf) -> BufResult<usize, ReadBuf> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Tls(s) => s.reader.read(buf).await,
            Stream::Unix(s) => s.read(buf).await,
        }
    }

    pub async fn write_all<T: OwnedBytes>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Tls(s) => s.writer.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    /// Reads more bytes onto the end of `buf` (growing it when full).
    /// `Ok(0)` is EOF.
    pub async fn read_more(&mut self, mut buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().clamp(1024, 8192));
        }
        let (filled, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self.read(buf.slice_mut(filled..cap)).await;
        (res, slice.into_inner())
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.writer.shutdown().await,
            Stream::Unix(s) => s.shutdown().await,
        }
    }

    pub fn into_split(self) -> (Reader, Writer) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Writer::Tcp(w))
            }
            Stream::Tls(s) => {
                let TlsStream { reader, writer } = *s;
                (Reader::Tls(reader), Writer::Tls(writer))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (Reader::Unix(r), Writer::Unix(w))
            }
        }
    }
}

impl Reader {
    pub async fn read(&mut self, buf: ReadBuf) -> BufResult<usize, ReadBuf> {
        match self {
            Reader::Tcp(s) => s.read(buf).await,
            Reader::Tls(s) => s.read(buf).await,
            Reader::Unix(s) => s.read(buf).await,
        }
    }
}

impl Writer {
    pub async fn write_all<T: OwnedBytes>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Writer::Tcp(s) => s.write_all(buf).await,
            Writer::Tls(s) => s.write_all(buf).await,
            Writer::Unix(s) => s.write_all(buf).await,
        }
    }

    /// Sends FIN (and TLS close_notify) after what was written.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Writer::Tcp(s) => s.shutdown().await,
            Writer::Tls(s) => s.shutdown().await,
            Writer::Unix(s) => s.shutdown().await,
        }
    }
}

// ---- TLS over monoio, with rustls, without fixed per-connection buffers ----
//
// rustls does the protocol; this glue only moves bytes. The connection
// sits in an `Rc<RefCell<_>>` shared by the two halves and is borrowed only
// between awaits, never across one, so each half can wait on its socket
// while the other works.
//
// Reading follows rustls' own back-pressure. TLS bytes are offered to rustls
// only while it `wants_read()` (it holds no plaintext not yet handed out);
// the bytes it has not taken stay in the reader ([`Held`]); the plaintext it
// has is handed out before the socket is read again, and the socket is read
// only once every held byte was taken. So rustls holds at most about one
// record of plaintext, the reader at most one socket read of TLS bytes, and
// a peer that writes faster than the relay drains is slowed down by TCP,
// never refused.
//
// TLS bytes are read into a small buffer that grows while a connection is
// busy and shrinks when it goes quiet, and no buffer is kept once rustls
// took its bytes: an idle TLS console pins 1 KiB, not two fixed 16 KiB
// buffers.

/// TLS bytes read per call while quiet (a pending io_uring read pins it).
const TLS_READ_SMALL: usize = 1024;
/// TLS bytes read per call while busy: one full record and its overhead.
const TLS_READ_LARGE: usize = 16 * 1024 + 512;
/// TLS bytes read per call during the handshake.
const TLS_READ_HANDSHAKE: usize = 4096;

/// The most TLS bytes a [`TlsReader`] holds that rustls has not taken yet
/// (one socket read); see [`TlsReader::buffered`].
pub const TLS_HELD_MAX: usize = TLS_READ_LARGE;

/// Every TLS failure is `InvalidData` around a `rustls::Error`, so callers
/// tell it from socket errors with `e.get_ref().is::<rustls::Error>()`.
fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Accepts TLS connections (the browser-facing side).
#[derive(Clone)]
pub struct TlsAcceptor(Arc<ServerConfig>);

impl From<Arc<ServerConfig>> for TlsAcceptor {
    fn from(c: Arc<ServerConfig>) -> Self {
        TlsAcceptor(c)
    }
}

impl TlsAcceptor {
    /// Runs the server handshake on `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = ServerConnection::new(self.0.clone()).map_err(tls_err)?;
        TlsStream::handshake(tcp, conn.into()).await
    }
}

/// Opens TLS connections (toward `wss://` and Proxmox upstreams).
#[derive(Clone)]
pub struct TlsConnector(Arc<ClientConfig>);

impl From<Arc<ClientConfig>> for TlsConnector {
    fn from(c: Arc<ClientConfig>) -> Self {
        TlsConnector(c)
    }
}

impl TlsConnector {
    /// Runs the client handshake on `tcp` for `name` (SNI, certificate check).
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<TlsStream> {
        let conn = ClientConnection::new(self.0.clone(), name).map_err(tls_err)?;
        TlsStream::handshake(tcp, conn.into()).await
    }
}

/// A TLS connection after its handshake: already two halves.
pub struct TlsStream {
    reader: TlsReader,
    writer: TlsWriter,
}

/// Encrypts what rustls has pending and writes it out.
async fn flush_tls<W: AsyncWriteRent>(conn: &RefCell<Connection>, tcp: &mut W) -> io::Result<()> {
    loop {
        let mut out = Vec::new();
        {
            let mut c = conn.borrow_mut();
            if !c.wants_write() {
                return Ok(());
            }
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        let (res, _) = tcp.write_all(out).await;
        res?;
    }
}

/// TLS bytes read from the socket that rustls has not taken yet:
/// `buf[at..]`, at most one socket read.
#[derive(Default)]
struct Held {
    buf: Vec<u8>,
    at: usize,
}

impl Held {
    fn len(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Offers the held bytes to rustls for as long as it wants to read,
    /// processing each piece it takes. Returns whether it took any. Once
    /// all are taken the buffer is let go.
    fn feed(&mut self, c: &mut Connection) -> io::Result<bool> {
        let mut took = false;
        while self.at < self.buf.len() && c.wants_read() {
            // rustls takes at most what fits its one-record buffer.
            let n = c
                .read_tls(&mut &self.buf[self.at..])
                .map_err(|e| tls_err(rustls::Error::General(e.to_string())))?;
            if n == 0 {
                // Only after close_notify, which `wants_read` rules out.
                break;
            }
            self.at += n;
            took = true;
            c.process_new_packets().map_err(tls_err)?;
        }
        if self.at == self.buf.len() {
            *self = Held::default();
        }
        Ok(took)
    }
}

/// rustls holds TLS bytes it neither wants to process nor answer.
fn stalled() -> io::Error {
    tls_err(rustls::Error::General("TLS connection stalled".into()))
}

/// Moves the plaintext rustls has onto `dst`, at most `room` bytes.
/// `None`: it has none yet (read more TLS bytes). `Some(0)`: the end
/// (close_notify, or TCP closed without it).
fn take_plaintext(c: &mut Connection, dst: &mut Vec<u8>, room: usize) -> io::Result<Option<usize>> {
    let mut r = c.reader();
    let mut n = 0;
    loop {
        match r.fill_buf() {
            Ok(chunk) => {
                let k = chunk.len().min(room - n);
                dst.extend_from_slice(&chunk[..k]);
                r.consume(k);
                n += k;
                if k == 0 || n == room {
                    return Ok(Some(n));
                }
            }
            // What was taken first; the end or the error on the next call.
            Err(_) if n > 0 => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // A peer closing TCP without close_notify: the end all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
            Err(e) => return Err(e),
        }
    }
}

impl TlsStream {
    async fn handshake(mut tcp: TcpStream, conn: Connection) -> io::Result<TlsStream> {
        let conn = RefCell::new(conn);
        let mut held = Held::default();
        loop {
            flush_tls(&conn, &mut tcp).await?;
            if !conn.borrow().is_handshaking() {
                break;
            }
            let fed = held.feed(&mut conn.borrow_mut());
            match fed {
                // rustls may have a reply to send before it takes more.
                Ok(true) => continue,
                Ok(false) if held.len() > 0 => {
                    let _ = flush_tls(&conn, &mut tcp).await;
                    return Err(stalled());
                }
                Ok(false) => {}
                Err(e) => {
                    // Send the alert rustls queued, then give up.
                    let _ = flush_tls(&conn, &mut tcp).await;
                    return Err(e);
                }
            }
            let buf = Vec::with_capacity(TLS_READ_HANDSHAKE);
            let (res, slice) = tcp.read(buf.slice_mut(0..TLS_READ_HANDSHAKE)).await;
            if res? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            held = Held {
                buf: slice.into_inner(),
                at: 0,
            };
        }
        // Bytes after the handshake (the peer's first request, say) stay
        // held for the reader.
        let conn = Rc::new(conn);
        let (r, w) = tcp.into_split();
        Ok(TlsStream {
            reader: TlsReader {
                tcp: r,
                conn: conn.clone(),
                held,
                room: TLS_READ_SMALL,
            },
            writer: TlsWriter {
                tcp: w,
                conn,
                cut: false,
            },
        })
    }

    /// The peer's ALPN choice, if any.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.reader
            .conn
            .borrow()
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    /// The two halves.
    pub fn into_split(self) -> (TlsReader, TlsWriter) {
        (self.reader, self.writer)
    }
}

/// The read half of a TLS connection.
pub struct TlsReader {
    tcp: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<Connection>>,
    /// TLS bytes read but not yet taken by rustls.
    held: Held,
    /// TLS bytes to ask for next (adapts between the two sizes).
    room: usize,
}

impl TlsReader {
    /// Reads plaintext onto the end of `dst`'s `Vec`, at most its room.
    /// `Ok(0)` is the end: close_notify, or the peer closing TCP.
    ///
    /// Dropping it while it waits on the socket keeps the plaintext and the
    /// held TLS bytes; only what that one socket read brought is lost (the
    /// pump drops a read only when the session ends).
    pub async fn read(&mut self, dst: ReadBuf) -> BufResult<usize, ReadBuf> {
        let (begin, end) = (dst.begin(), dst.end());
        let mut vec = dst.into_inner();
        loop {
            {
                let mut c = self.conn.borrow_mut();
                match take_plaintext(&mut c, &mut vec, end - begin) {
                    Ok(Some(n)) => return (Ok(n), vec.slice_mut(begin..end)),
                    Ok(None) => {}
                    Err(e) => return (Err(e), vec.slice_mut(begin..end)),
                }
                match self.held.feed(&mut c) {
                    // Plaintext, or progress toward it: look again.
                    Ok(true) => continue,
                    Ok(false) if self.held.len() > 0 => {
                        return (Err(stalled()), vec.slice_mut(begin..end))
                    }
                    // Everything taken: only now read the socket.
                    Ok(false) => {}
                    Err(e) => return (Err(e), vec.slice_mut(begin..end)),
                }
            }
            let buf = Vec::with_capacity(self.room);
            let (res, slice) = self.tcp.read(buf.slice_mut(0..self.room)).await;
            let n = match res {
                Ok(n) => n,
                Err(e) => return (Err(e), vec.slice_mut(begin..end)),
            };
            self.room = if n == self.room {
                TLS_READ_LARGE
            } else if n < TLS_READ_SMALL / 4 {
                TLS_READ_SMALL
            } else {
                self.room
            };
            if n == 0 {
                // EOF: rustls learns it from a zero-byte read; the next
                // look at its plaintext reports the end.
                if let Err(e) = self.conn.borrow_mut().read_tls(&mut &[][..]) {
                    return (Err(e), vec.slice_mut(begin..end));
                }
                continue;
            }
            self.held = Held {
                buf: slice.into_inner(),
                at: 0,
            };
        }
    }

    /// TLS bytes read from the socket that rustls has not taken yet: never
    /// more than [`TLS_HELD_MAX`].
    pub fn buffered(&self) -> usize {
        self.held.len()
    }
}

/// The write half of a TLS connection.
pub struct TlsWriter {
    tcp: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<Connection>>,
    /// A write was dropped (cancelled) while its records were on their way:
    /// the peer may lack some of them, so nothing more can be sent.
    cut: bool,
}

/// A cancelled write left the TLS stream with a gap.
fn cut_err() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS stream cut by a cancelled write",
    )
}

impl TlsWriter {
    /// Encrypts and writes all of `buf`.
    ///
    /// Not cancel-safe: records encrypted for a dropped write may be lost,
    /// and any later write fails with `BrokenPipe` rather than send records
    /// the peer cannot decrypt after the gap.
    pub async fn write_all<T: OwnedBytes>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.cut {
            return (Err(cut_err()), buf);
        }
        let mut at = 0;
        while at < buf.as_bytes().len() {
            // rustls takes what fits its send buffer and reports how much;
            // the rest is offered again once that went out.
            let n = {
                let mut c = self.conn.borrow_mut();
                match c.writer().write(&buf.as_bytes()[at..]) {
                    Ok(0) if !c.wants_write() => {
                        // Nothing taken and nothing to send: never spin.
                        let e = io::Error::new(io::ErrorKind::WriteZero, "TLS refused data");
                        return (Err(e), buf);
                    }
                    Ok(n) => n,
                    Err(e) => return (Err(e), buf),
                }
            };
            at += n;
            self.cut = true;
            let flushed = flush_tls(&self.conn, &mut self.tcp).await;
            // A failed flush may have sent part of the records: a gap too.
            self.cut = flushed.is_err();
            if let Err(e) = flushed {
                return (Err(e), buf);
            }
        }
        (Ok(at), buf)
    }

    /// close_notify, then FIN (only FIN after a cancelled write).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if self.cut {
            self.tcp.shutdown().await?;
            return Err(cut_err());
        }
        self.conn.borrow_mut().send_close_notify();
        self.cut = true;
        flush_tls(&self.conn, &mut self.tcp).await?;
        self.cut = false;
        self.tcp.shutdown().await
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
mod tests;
