//! The WebSocket pieces the generator needs: handshakes on both ends, frame
//! headers, a frame buffer, and one stream type over plain TCP or TLS.
//!
//! Client frames use the all-zero masking key: RFC 6455 requires a mask, and
//! a zero key keeps the payload unchanged, so the generator never spends CPU
//! masking (the relay and nginx forward or unmask exactly the same bytes).

use anyhow::{bail, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Opcodes used here.
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// A browser-side connection: plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl Conn {
    /// TLS only: whether the handshake resumed an earlier session
    /// (`None` for plaintext, or before the kind is known).
    pub fn tls_resumed(&self) -> Option<bool> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => s
                .get_ref()
                .1
                .handshake_kind()
                .map(|k| k == rustls::HandshakeKind::Resumed),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads an HTTP head; returns (head length, everything read so far).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<(usize, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 2048];
    loop {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = find(&buf[from..], b"\r\n\r\n") {
            return Ok((from + p + 4, buf));
        }
        if buf.len() > 16384 {
            bail!("handshake head too long");
        }
    }
}

/// Client upgrade for `target` (path and query); returns bytes read past the
/// 101 head (early frames).
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    target: &str,
) -> Result<Vec<u8>> {
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let (hl, buf) = read_head(s).await?;
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        bail!("upgrade refused: {}", String::from_utf8_lossy(line));
    }
    Ok(buf[hl..].to_vec())
}

/// Server upgrade: returns (request path, bytes read past the head).
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<(String, Vec<u8>)> {
    let (hl, buf) = read_head(s).await?;
    let head = std::str::from_utf8(&buf[..hl])?;
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let (mut key, mut proto) = (None, None);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(v.trim());
            } else if k.eq_ignore_ascii_case("sec-websocket-protocol") {
                proto = v.split(',').next().map(str::trim);
            }
        }
    }
    let Some(key) = key else {
        bail!("no Sec-WebSocket-Key")
    };
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = STANDARD.encode(h.finalize());
    let proto = proto
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{proto}\r\n"
    );
    s.write_all(resp.as_bytes()).await?;
    Ok((path, buf[hl..].to_vec()))
}

/// Appends a final-frame header; `masked` adds the all-zero masking key.
pub fn put_header(out: &mut Vec<u8>, opcode: u8, len: usize, masked: bool) {
    let m = if masked { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&[0; 4]);
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: usize,
    pub hlen: usize,
}

/// Parses a frame header at the start of `b`, if complete.
pub fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut hlen) = match b[1] & 0x7f {
        126 => (
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let k: [u8; 4] = b.get(hlen..hlen + 4)?.try_into().ok()?;
        hlen += 4;
        Some(k)
    } else {
        None
    };
    Some(Header {
        opcode,
        mask,
        len,
        hlen,
    })
}

/// XORs `data` with `key` (a no-op for the zero key).
pub fn unmask(data: &mut [u8], key: [u8; 4]) {
    if key != [0; 4] {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }
}

/// A read buffer that yields complete frames.
pub struct FrameBuf {
    pub buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    /// A buffer of `cap` bytes holding `initial` (early bytes from a handshake).
    pub fn new(cap: usize, initial: &[u8]) -> Self {
        let mut buf = vec![0; cap.max(initial.len())];
        buf[..initial.len()].copy_from_slice(initial);
        FrameBuf {
            buf,
            start: 0,
            end: initial.len(),
        }
    }

    /// The next complete frame: its header and payload range in `buf`.
    pub fn next_frame(&mut self) -> Option<(Header, std::ops::Range<usize>)> {
        let h = parse_header(&self.buf[self.start..self.end])?;
        let total = h.hlen + h.len;
        if self.end - self.start < total {
            if total > self.buf.len() {
                self.buf.resize(total, 0);
            }
            return None;
        }
        let p = self.start + h.hlen..self.start + total;
        self.start += total;
        Some((h, p))
    }

    /// Moves unparsed bytes to the front and reads more; Ok(0) is EOF.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = s.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// `fill` as a poll, for a task that waits on several streams at once.
    pub fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut S,
    ) -> Poll<io::Result<usize>> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
        match Pin::new(s).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.end += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}
