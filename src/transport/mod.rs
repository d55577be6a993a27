//! The byte streams a session runs over, as two enums so that one pump
//! serves every pairing (plain or TLS browser; TCP, TLS or in-process
//! upstream), plus the two single-thread primitives the pump shares between
//! its directions: [`WriterLock`] (frames are written whole, so the relay's
//! own frames land only between them) and [`Signal`] (end of session).
//!
//! After the handshakes, a leg's socket is read and written by readiness:
//! [`Reader::ready`] waits (an io_uring `PollAdd`, or epoll) holding no
//! buffer, then [`Reader::try_read`] and the writers make plain
//! non-blocking `recv`/`send` calls. So an idle leg pins no read buffer
//! (the pump takes one from its worker's pool only when bytes are there),
//! and a write goes out at once instead of waiting for the ring's next
//! submission. BENCHMARKING.md ("readiness I/O") has the measurements.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut, Slice, SliceMut};
use monoio::net::{TcpStream, UnixStream};
use monoio::BufResult;
use nix::errno::Errno;
use nix::sys::socket::{self as sys, MsgFlags};
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
    Plain(Rc<Sock>),
    Tls(TlsReader),
}

/// The write half of a [`Stream`].
pub enum Writer {
    Plain(Rc<Sock>),
    Tls(TlsWriter),
}

impl Drop for Writer {
    /// FIN when the write half goes (as monoio's own halves do), so a peer
    /// reads the end of the stream before a close with unread bytes resets it.
    fn drop(&mut self) {
        if let Writer::Plain(s) = self {
            let _ = s.shutdown();
        }
    }
}

impl Drop for TlsWriter {
    /// FIN (no close_notify: that is [`TlsWriter::shutdown`]'s), as [`Writer`].
    fn drop(&mut self) {
        let _ = self.sock.shutdown();
    }
}

/// A connected socket after the split, shared by its two halves. Every
/// call is non-blocking; the waits are the driver's readiness (a one-shot
/// `PollAdd` on io_uring; on epoll the registration plus a `poll(0)` check,
/// since a `recv` made here does not tell monoio the socket drained).
pub struct Sock {
    io: SockIo,
    /// FIN sent: the write half's drop does not send it again.
    shut: Cell<bool>,
}

enum SockIo {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// `send` flags: never block, never raise SIGPIPE (a vanished peer is an error).
const SEND_FLAGS: MsgFlags = MsgFlags::MSG_DONTWAIT.union(MsgFlags::MSG_NOSIGNAL);

/// A socket the driver reports readiness for: after a wait, every read and
/// write is a plain non-blocking call (see the module doc). The handshakes
/// use it on the whole stream, the legs through [`Sock`].
trait Ready {
    fn fd(&self) -> RawFd;
    async fn readable(&self) -> io::Result<()>;
    async fn writable(&self) -> io::Result<()>;
}

impl Ready for TcpStream {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    async fn readable(&self) -> io::Result<()> {
        TcpStream::readable(self, false).await
    }
    async fn writable(&self) -> io::Result<()> {
        TcpStream::writable(self, false).await
    }
}

impl Ready for UnixStream {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    async fn readable(&self) -> io::Result<()> {
        UnixStream::readable(self, false).await
    }
    async fn writable(&self) -> io::Result<()> {
        UnixStream::writable(self, false).await
    }
}

impl Ready for SockIo {
    fn fd(&self) -> RawFd {
        match self {
            SockIo::Tcp(s) => s.as_raw_fd(),
            SockIo::Unix(s) => s.as_raw_fd(),
        }
    }
    async fn readable(&self) -> io::Result<()> {
        match self {
            SockIo::Tcp(s) => Ready::readable(s).await,
            SockIo::Unix(s) => Ready::readable(s).await,
        }
    }
    async fn writable(&self) -> io::Result<()> {
        match self {
            SockIo::Tcp(s) => Ready::writable(s).await,
            SockIo::Unix(s) => Ready::writable(s).await,
        }
    }
}

/// One non-blocking `recv` into `dst`: `WouldBlock` when nothing is there.
fn recv(fd: RawFd, dst: &mut [u8]) -> io::Result<usize> {
    loop {
        match sys::recv(fd, dst, MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Reads what is there onto the end of `buf`, at most `room` bytes,
/// without waiting. `Ok(0)` is the end, `WouldBlock` nothing yet.
fn try_read(fd: RawFd, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
    let at = buf.len();
    // Zeroed, not uninitialised, so no `unsafe`: a memset of the room is
    // noise next to the kernel's copy into it.
    buf.resize(at + room, 0);
    let r = recv(fd, &mut buf[at..]);
    buf.truncate(at + *r.as_ref().unwrap_or(&0));
    r
}

/// Waits for and reads bytes into `dst` (its `Vec` from its length up to
/// the slice's end). `Ok(0)` is the end.
async fn read_into<S: Ready>(s: &S, dst: ReadBuf) -> BufResult<usize, ReadBuf> {
    read_ready(&mut &*s, dst).await
}

/// Sends what the socket takes now; how much that was.
fn send_now(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < bytes.len() {
        match sys::send(fd, &bytes[at..], SEND_FLAGS) {
            Ok(n) => at += n,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(at)
}

/// Writes all of `bytes`: at once while the socket takes them, waiting for
/// room only when it is full.
async fn write_all<S: Ready>(s: &S, bytes: &[u8]) -> io::Result<()> {
    let at = send_now(s.fd(), bytes)?;
    if at == bytes.len() {
        return Ok(());
    }
    // The socket is full: wait for room. Boxed, so that the wait's state is
    // not part of every future that writes (an idle session's tasks are the
    // size of their largest state).
    Box::pin(write_rest(s, &bytes[at..])).await
}

async fn write_rest<S: Ready>(s: &S, bytes: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        s.writable().await?;
        at += send_now(s.fd(), &bytes[at..])?;
    }
    Ok(())
}

/// FIN after what was written; a peer already gone is no error.
fn shutdown_fd(fd: RawFd) -> io::Result<()> {
    match sys::shutdown(fd, sys::Shutdown::Write) {
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Sock {
    fn new(io: SockIo) -> Sock {
        Sock {
            io,
            shut: Cell::new(false),
        }
    }

    fn fd(&self) -> RawFd {
        self.io.fd()
    }

    /// Waits until a `recv` would find bytes, the end or an error.
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Reads what is there onto the end of `buf`, at most `room` bytes,
    /// without waiting. `Ok(0)` is the end, `WouldBlock` nothing yet.
    pub fn try_read(&self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        try_read(self.fd(), buf, room)
    }

    /// Writes all of `bytes`: at once while the socket takes them, waiting
    /// for room only when it is full.
    pub async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        write_all(&self.io, bytes).await
    }

    /// FIN after what was written (once).
    fn shutdown(&self) -> io::Result<()> {
        if self.shut.replace(true) {
            return Ok(());
        }
        shutdown_fd(self.fd())
    }
}

impl Stream {
    pub async fn read(&mut self, buf: ReadBuf) -> BufResult<usize, ReadBuf> {
        match self {
            Stream::Tcp(s) => read_into(s, buf).await,
            Stream::Tls(s) => s.reader.read(buf).await,
            Stream::Unix(s) => read_into(s, buf).await,
        }
    }

    pub async fn write_all<T: OwnedBytes>(&mut self, buf: T) -> BufResult<usize, T> {
        let res = match self {
            Stream::Tcp(s) => write_all(s, buf.as_bytes()).await,
            Stream::Tls(s) => s.writer.write(buf.as_bytes()).await,
            Stream::Unix(s) => write_all(s, buf.as_bytes()).await,
        };
        (res.map(|()| buf.as_bytes().len()), buf)
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
            Stream::Tcp(s) => shutdown_fd(s.as_raw_fd()),
            Stream::Tls(s) => s.writer.shutdown().await,
            Stream::Unix(s) => shutdown_fd(s.as_raw_fd()),
        }
    }

    pub fn into_split(self) -> (Reader, Writer) {
        let plain = |s: Sock| {
            let s = Rc::new(s);
            (Reader::Plain(s.clone()), Writer::Plain(s))
        };
        match self {
            Stream::Tcp(s) => plain(Sock::new(SockIo::Tcp(s))),
            Stream::Unix(s) => plain(Sock::new(SockIo::Unix(s))),
            Stream::Tls(s) => {
                let TlsStream { reader, writer } = *s;
                (Reader::Tls(reader), Writer::Tls(writer))
            }
        }
    }
}

impl Reader {
    /// Waits, holding no buffer, until [`Reader::try_read`] has something
    /// to say: bytes, the end or an error. May wake spuriously.
    pub async fn ready(&mut self) -> io::Result<()> {
        match self {
            Reader::Plain(s) => s.readable().await,
            Reader::Tls(s) => s.ready().await,
        }
    }

    /// Reads what is there onto the end of `buf`, at most `room` bytes,
    /// without waiting: `Ok(0)` is the end, `WouldBlock` nothing yet.
    pub fn try_read(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        match self {
            Reader::Plain(s) => s.try_read(buf, room),
            Reader::Tls(s) => s.try_read(buf, room),
        }
    }

    /// Waits for and reads bytes into `dst` (its `Vec` from its length up
    /// to the slice's end). `Ok(0)` is the end.
    pub async fn read(&mut self, dst: ReadBuf) -> BufResult<usize, ReadBuf> {
        read_ready(self, dst).await
    }
}

/// A reader that waits by readiness and then reads without waiting.
trait ReadyRead {
    async fn ready(&mut self) -> io::Result<()>;
    fn try_read(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize>;
}

impl ReadyRead for Reader {
    async fn ready(&mut self) -> io::Result<()> {
        Reader::ready(self).await
    }
    fn try_read(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        Reader::try_read(self, buf, room)
    }
}

/// A whole socket, before the split (the handshakes).
impl<S: Ready> ReadyRead for &S {
    async fn ready(&mut self) -> io::Result<()> {
        (**self).readable().await
    }
    fn try_read(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        try_read(self.fd(), buf, room)
    }
}

impl ReadyRead for TlsReader {
    async fn ready(&mut self) -> io::Result<()> {
        TlsReader::ready(self).await
    }
    fn try_read(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        TlsReader::try_read(self, buf, room)
    }
}

/// Waits for and reads bytes into `dst`: the owned-buffer read the
/// handshakes and tests use.
async fn read_ready<R: ReadyRead>(r: &mut R, dst: ReadBuf) -> BufResult<usize, ReadBuf> {
    let (begin, end) = (dst.begin(), dst.end());
    let mut vec = dst.into_inner();
    let res = loop {
        if let Err(e) = r.ready().await {
            break Err(e);
        }
        let room = end - vec.len();
        match r.try_read(&mut vec, room) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => break r,
        }
    };
    (res, vec.slice_mut(begin..end))
}

impl Writer {
    /// Writes all of `bytes` (encrypted on TLS). A write that is dropped
    /// before it finished may leave part of them sent.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Plain(s) => s.write_all(bytes).await,
            Writer::Tls(s) => s.write(bytes).await,
        }
    }

    /// [`Writer::write`] of an owned buffer, handed back.
    pub async fn write_all<T: OwnedBytes>(&mut self, buf: T) -> BufResult<usize, T> {
        let res = self.write(buf.as_bytes()).await;
        (res.map(|()| buf.as_bytes().len()), buf)
    }

    /// Sends FIN (and TLS close_notify) after what was written.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Writer::Plain(s) => s.shutdown(),
            Writer::Tls(s) => s.shutdown().await,
        }
    }
}

// ---- TLS over monoio, with rustls, without per-connection buffers ----
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
// After the handshake the socket is read into, and records are encrypted
// into, two scratch buffers of the worker thread ([`SCRATCH`]), used only
// between awaits: a connection keeps a buffer of its own only for TLS bytes
// rustls did not take yet, or the tail of a write the socket had no room
// for. An idle TLS console pins nothing but rustls' state.

/// TLS bytes read per call: one full record and its overhead.
const TLS_READ: usize = 16 * 1024 + 512;
/// TLS bytes read per call during the handshake.
const TLS_READ_HANDSHAKE: usize = 4096;

/// The most TLS bytes a [`TlsReader`] holds that rustls has not taken yet
/// (one socket read); see [`TlsReader::buffered`].
pub const TLS_HELD_MAX: usize = TLS_READ;

thread_local! {
    /// Per worker thread: TLS bytes just read, records just encrypted.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = RefCell::new((vec![0; TLS_READ], Vec::new()));
}

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

/// Handshake: encrypts what rustls has pending and writes it out.
async fn flush_handshake(conn: &RefCell<Connection>, tcp: &TcpStream) -> io::Result<()> {
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
        write_all(tcp, &out).await?;
    }
}

/// After the handshake: encrypts what rustls has pending into the scratch
/// buffer and sends it; only a tail the socket had no room for is copied
/// out, to wait for room.
async fn flush_tls(conn: &RefCell<Connection>, sock: &Sock) -> io::Result<()> {
    loop {
        let rest = SCRATCH.with(|s| -> io::Result<Option<Vec<u8>>> {
            let out = &mut s.borrow_mut().1;
            out.clear();
            let mut c = conn.borrow_mut();
            if !c.wants_write() {
                return Ok(None);
            }
            while c.wants_write() {
                c.write_tls(out)?;
            }
            let at = send_now(sock.fd(), out)?;
            Ok(Some(out[at..].to_vec()))
        })?;
        match rest {
            None => return Ok(()),
            Some(rest) if rest.is_empty() => {}
            Some(rest) => sock.write_all(&rest).await?,
        }
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

    /// Offers the held bytes to rustls (see [`feed`]). Returns whether it
    /// took any. Once all are taken the buffer is let go.
    fn feed(&mut self, c: &mut Connection) -> io::Result<bool> {
        let n = feed(c, &self.buf[self.at..])?;
        self.at += n;
        if self.at == self.buf.len() {
            *self = Held::default();
        }
        Ok(n > 0)
    }
}

/// Offers `bytes` to rustls for as long as it wants to read, processing
/// each piece it takes; returns how many it took.
fn feed(c: &mut Connection, bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < bytes.len() && c.wants_read() {
        // rustls takes at most what fits its one-record buffer.
        let n = c
            .read_tls(&mut &bytes[at..])
            .map_err(|e| tls_err(rustls::Error::General(e.to_string())))?;
        if n == 0 {
            // Only after close_notify, which `wants_read` rules out.
            break;
        }
        at += n;
        c.process_new_packets().map_err(tls_err)?;
    }
    Ok(at)
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
    async fn handshake(tcp: TcpStream, conn: Connection) -> io::Result<TlsStream> {
        let conn = RefCell::new(conn);
        let mut held = Held::default();
        loop {
            flush_handshake(&conn, &tcp).await?;
            if !conn.borrow().is_handshaking() {
                break;
            }
            let fed = held.feed(&mut conn.borrow_mut());
            match fed {
                // rustls may have a reply to send before it takes more.
                Ok(true) => continue,
                Ok(false) if held.len() > 0 => {
                    let _ = flush_handshake(&conn, &tcp).await;
                    return Err(stalled());
                }
                Ok(false) => {}
                Err(e) => {
                    // Send the alert rustls queued, then give up.
                    let _ = flush_handshake(&conn, &tcp).await;
                    return Err(e);
                }
            }
            let buf = Vec::with_capacity(TLS_READ_HANDSHAKE);
            let (res, slice) = read_into(&tcp, buf.slice_mut(0..TLS_READ_HANDSHAKE)).await;
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
        let sock = Rc::new(Sock::new(SockIo::Tcp(tcp)));
        Ok(TlsStream {
            reader: TlsReader {
                sock: sock.clone(),
                conn: conn.clone(),
                held,
            },
            writer: TlsWriter {
                sock,
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
    sock: Rc<Sock>,
    conn: Rc<RefCell<Connection>>,
    /// TLS bytes read but not yet taken by rustls.
    held: Held,
}

impl TlsReader {
    /// Waits, holding no buffer, until [`TlsReader::try_read`] has
    /// something to say: plaintext or held TLS bytes at once, else the
    /// socket's readiness.
    pub async fn ready(&mut self) -> io::Result<()> {
        {
            let mut c = self.conn.borrow_mut();
            let pending = !matches!(
                c.reader().fill_buf(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            );
            if pending || self.held.len() > 0 {
                return Ok(());
            }
        }
        self.sock.readable().await
    }

    /// Reads plaintext onto the end of `dst`, at most `room` bytes, without
    /// waiting. `Ok(0)` is the end: close_notify, or the peer closing TCP;
    /// `WouldBlock`: no plaintext yet.
    pub fn try_read(&mut self, dst: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        let mut c = self.conn.borrow_mut();
        loop {
            if let Some(n) = take_plaintext(&mut c, dst, room)? {
                return Ok(n);
            }
            match self.held.feed(&mut c)? {
                // Plaintext, or progress toward it: look again.
                true => continue,
                false if self.held.len() > 0 => return Err(stalled()),
                // Everything taken: only now read the socket.
                false => {}
            }
            let read = SCRATCH.with(|s| -> io::Result<usize> {
                let scratch = &mut s.borrow_mut().0;
                let n = recv(self.sock.fd(), scratch)?;
                if n == 0 {
                    // EOF: rustls learns it from a zero-byte read; the next
                    // look at its plaintext reports the end.
                    c.read_tls(&mut &[][..])?;
                    return Ok(0);
                }
                let took = feed(&mut c, &scratch[..n])?;
                if took < n {
                    // rustls has plaintext to hand out first: keep the rest.
                    self.held = Held {
                        buf: scratch[took..n].to_vec(),
                        at: 0,
                    };
                }
                Ok(n)
            });
            read?;
        }
    }

    /// Waits for and reads plaintext into `dst` (its `Vec` from its length
    /// up to the slice's end). `Ok(0)` is the end.
    pub async fn read(&mut self, dst: ReadBuf) -> BufResult<usize, ReadBuf> {
        read_ready(self, dst).await
    }

    /// TLS bytes read from the socket that rustls has not taken yet: never
    /// more than [`TLS_HELD_MAX`].
    pub fn buffered(&self) -> usize {
        self.held.len()
    }
}

/// The write half of a TLS connection.
pub struct TlsWriter {
    sock: Rc<Sock>,
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
    /// Encrypts and writes all of `bytes`.
    ///
    /// Not cancel-safe: records encrypted for a dropped write may be lost,
    /// and any later write fails with `BrokenPipe` rather than send records
    /// the peer cannot decrypt after the gap.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.cut {
            return Err(cut_err());
        }
        let mut at = 0;
        while at < bytes.len() {
            // rustls takes what fits its send buffer and reports how much;
            // the rest is offered again once that went out.
            let n = {
                let mut c = self.conn.borrow_mut();
                match c.writer().write(&bytes[at..]) {
                    Ok(0) if !c.wants_write() => {
                        // Nothing taken and nothing to send: never spin.
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "TLS refused data"));
                    }
                    Ok(n) => n,
                    Err(e) => return Err(e),
                }
            };
            at += n;
            self.cut = true;
            // A failed flush may have sent part of the records: a gap too.
            flush_tls(&self.conn, &self.sock).await?;
            self.cut = false;
        }
        Ok(())
    }

    /// [`TlsWriter::write`] of an owned buffer, handed back.
    pub async fn write_all<T: OwnedBytes>(&mut self, buf: T) -> BufResult<usize, T> {
        let res = self.write(buf.as_bytes()).await;
        (res.map(|()| buf.as_bytes().len()), buf)
    }

    /// close_notify, then FIN (only FIN after a cancelled write).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if self.cut {
            self.sock.shutdown()?;
            return Err(cut_err());
        }
        self.conn.borrow_mut().send_close_notify();
        self.cut = true;
        flush_tls(&self.conn, &self.sock).await?;
        self.cut = false;
        self.sock.shutdown()
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
