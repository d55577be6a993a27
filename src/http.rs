//! HTTP/1.1 heads, parsed with httparse under named caps, and the short
//! responses the relay writes. Only what a WebSocket upgrade needs: no
//! bodies, no keep-alive, no chunked encoding.

use std::fmt;

/// Caps on a request or response head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes up to and including the blank line. Browsers send ~1 KiB for
    /// an upgrade (a ticket in the URL or subprotocol adds < 4 KiB).
    pub max_head: usize,
    /// Header lines. Browsers send ~15 for an upgrade.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head: 8 * 1024,
            max_headers: 32,
        }
    }
}

/// Why a head was refused. All are the client's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// No end of head within `max_head` bytes.
    TooLarge,
    TooManyHeaders,
    /// Not HTTP/1.x syntax (httparse's reason).
    Malformed(&'static str),
    /// A header value that is not visible ASCII (obs-text, NUL, ...).
    BadHeaderValue,
}

impl HeadError {
    pub fn label(self) -> &'static str {
        match self {
            HeadError::TooLarge => "head_too_large",
            HeadError::TooManyHeaders => "too_many_headers",
            HeadError::Malformed(_) => "malformed_head",
            HeadError::BadHeaderValue => "bad_header_value",
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed head: {why}"),
            other => f.write_str(other.label()),
        }
    }
}

/// One header: name as sent, value as (ASCII) text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<Header>,
}

/// A header that must appear once appeared several times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// Header lookups shared by requests and responses.
pub trait Headers {
    fn headers(&self) -> &[Header];

    /// All values of header `name` (case-insensitive).
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The single value of `name`; [`Repeated`] if it appears more than once.
    fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, Repeated> {
        let mut it = self.all(name);
        let first = it.next();
        match it.next() {
            Some(_) => Err(Repeated),
            None => Ok(first),
        }
    }

    /// True if the comma-separated token lists of `name` contain `token`
    /// (case-insensitive), e.g. `Connection: keep-alive, Upgrade`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

impl Headers for RequestHead {
    fn headers(&self) -> &[Header] {
        &self.headers
    }
}

impl Headers for ResponseHead {
    fn headers(&self) -> &[Header] {
        &self.headers
    }
}

/// The longest header list httparse is ever given; `max_headers` caps below.
const HEADER_SLOTS: usize = 128;

fn convert(headers: &[httparse::Header<'_>]) -> Result<Vec<Header>, HeadError> {
    headers
        .iter()
        .map(|h| {
            // RFC 9110 §5.5: field values are visible ASCII, SP and HTAB;
            // obs-text is refused here, since nothing we read needs it.
            if !h
                .value
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err(HeadError::BadHeaderValue);
            }
            Ok(Header {
                name: h.name.to_string(),
                value: String::from_utf8_lossy(h.value).trim().to_string(),
            })
        })
        .collect()
}

fn partial_or_too_large<T>(buf: &[u8], limits: HeadLimits) -> Result<Option<T>, HeadError> {
    if buf.len() >= limits.max_head {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    }
}

fn map_err(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        other => HeadError::Malformed(match other {
            httparse::Error::HeaderName => "header name",
            httparse::Error::HeaderValue => "header value",
            httparse::Error::NewLine => "line ending",
            httparse::Error::Status => "status",
            httparse::Error::Token => "token",
            httparse::Error::Version => "version",
            _ => "syntax",
        }),
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete and
/// still under the cap. On success returns the head and its length; bytes
/// after it (early frames) belong to the caller.
pub fn parse_request(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_head)];
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let n = limits.max_headers.min(HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut slots[..n]);
    // Requests are strict: no obs-fold, no space before the colon
    // (both are request-smuggling shapes).
    match httparse::ParserConfig::default().parse_request(&mut req, window) {
        Ok(httparse::Status::Complete(len)) => {
            let head = RequestHead {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                version: req.version.unwrap_or(1),
                headers: convert(req.headers)?,
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) => partial_or_too_large(buf, limits),
        Err(e) => Err(map_err(e)),
    }
}

/// Parses a response head at the start of `buf` (the upstream's 101).
pub fn parse_response(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_head)];
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let n = limits.max_headers.min(HEADER_SLOTS);
    let mut res = httparse::Response::new(&mut slots[..n]);
    match res.parse(window) {
        Ok(httparse::Status::Complete(len)) => {
            let head = ResponseHead {
                status: res.code.unwrap_or(0),
                version: res.version.unwrap_or(1),
                headers: convert(res.headers)?,
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) => partial_or_too_large(buf, limits),
        Err(e) => Err(map_err(e)),
    }
}

/// Splits an origin-form target into path and query (without the `?`).
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// Every raw value of query parameter `name` (no percent-decoding: the
/// values we read, JWTs, are URL-safe as they are).
pub fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query
        .split('&')
        .filter_map(move |pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// The reason phrase for the statuses the relay sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A complete refusal: status line, `extra` headers, a one-line text body,
/// and `Connection: close` (the relay never keeps a refused connection).
pub fn refusal(status: u16, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in extra {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Cache-Control: no-store\r\n");
    out.push_str("Connection: close\r\n");
    out.push_str(&format!(
        "Content-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    ));
    out.into_bytes()
}

/// A 200 for the console page or one of its assets (`Connection: close`).
pub fn page_response(r: &crate::page::Response, csp: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\n\
X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: {csp}\r\n\
Connection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        r.cache
    )
    .into_bytes();
    out.extend_from_slice(&r.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /console?ticket=abc HTTP/1.1\r\nHost: relay.example\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn every_prefix_is_partial_and_the_whole_parses() {
        let l = HeadLimits::default();
        for cut in 0..UPGRADE.len() {
            assert_eq!(parse_request(&UPGRADE[..cut], l), Ok(None), "prefix {cut}");
        }
        let mut with_frame = UPGRADE.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (head, n) = parse_request(&with_frame, l).unwrap().unwrap();
        assert_eq!(n, UPGRADE.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/console?ticket=abc");
        assert_eq!(head.version, 1);
        assert!(head.has_token("connection", "upgrade"));
        assert_eq!(head.one("host"), Ok(Some("relay.example")));
        assert_eq!(head.one("absent"), Ok(None));
    }

    #[test]
    fn caps_are_enforced() {
        let l = HeadLimits {
            max_head: 64,
            max_headers: 3,
        };
        assert_eq!(parse_request(&[b'G'; 64], l), Err(HeadError::TooLarge));
        let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        let l = HeadLimits {
            max_head: 1024,
            max_headers: 3,
        };
        assert_eq!(parse_request(many, l), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn refuses_bytes_that_are_not_http() {
        let l = HeadLimits::default();
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(parse_request(bad, l).is_err(), "{bad:?}");
        }
        let obs = b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n";
        assert_eq!(parse_request(obs, l), Err(HeadError::BadHeaderValue));
    }

    #[test]
    fn query_values_finds_each_occurrence() {
        let v: Vec<_> = query_values("a=1&ticket=x.y.z&ticket=q&b", "ticket").collect();
        assert_eq!(v, ["x.y.z", "q"]);
        assert_eq!(split_target("/console?x"), ("/console", Some("x")));
    }

    #[test]
    fn refusal_is_one_line_and_closes() {
        let r = String::from_utf8(refusal(404, &[], "not found")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nnot found\n"));
        assert!(r.contains("Content-Length: 10\r\n"));
    }
}
