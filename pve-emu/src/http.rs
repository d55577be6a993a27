//! Minimal HTTP/1.1 server side in the style of pveproxy (docs/proxmox.md §1, §12):
//! 5 s header/body timeout, no chunked bodies (501), ≤ 512 KiB bodies, pveproxy's
//! `decode_urlencoded` quirks, and its response header set.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::tls::TlsConn;

/// Largest accepted request head.
const MAX_HEAD: usize = 64 * 1024;
/// Largest accepted request body (pveproxy: 512 KiB).
pub const MAX_BODY: usize = 512 * 1024;

/// A parsed request.
pub struct Request {
    /// When its first byte arrived (or the wait began).
    pub start: Instant,
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (after `?`), if any.
    pub query: Option<String>,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// HTTP/1.0?
    pub http10: bool,
}

impl Request {
    /// First header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client asked to keep the connection open.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.http10 {
            conn.contains("keep-alive")
        } else {
            !conn.contains("close")
        }
    }
}

/// What reading a request produced.
pub enum ReadResult {
    /// A complete request.
    Request(Request),
    /// Clean EOF or timeout before a request: just close.
    Closed,
    /// A protocol error to answer with this status/message, then close.
    Error(u16, String),
}

/// Reads one request; `buf` keeps bytes of pipelined requests between calls.
pub fn read_request(conn: &TlsConn, buf: &mut Vec<u8>, deadline: Instant) -> ReadResult {
    let start = Instant::now();
    let head_len = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return ReadResult::Error(414, "request header too large".into());
        }
        match conn.read_more(buf, Some(deadline)) {
            Ok(true) => {}
            Ok(false) | Err(_) => return ReadResult::Closed,
        }
    };
    let mut hdrs = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut hdrs);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return ReadResult::Error(400, "bad request".into()),
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let http10 = req.version == Some(0);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.clone(), None),
    };
    let mut r = Request {
        start,
        method,
        path,
        query,
        headers,
        body: Vec::new(),
        http10,
    };
    buf.drain(..head_len);
    if let Some(te) = r.header("transfer-encoding") {
        if te.to_ascii_lowercase().contains("chunked") {
            return ReadResult::Error(501, "chunked transfer encoding not supported".into());
        }
    }
    let len = match body_len(r.header("content-length")) {
        Ok(n) => n,
        Err((status, why)) => return ReadResult::Error(status, why.into()),
    };
    while buf.len() < len {
        match conn.read_more(buf, Some(deadline)) {
            Ok(true) => {}
            Ok(false) | Err(_) => return ReadResult::Closed,
        }
    }
    r.body = buf.drain(..len).collect();
    ReadResult::Request(r)
}

/// The body length a Content-Length value announces: at most [`MAX_BODY`]
/// (413 beyond, up to u64::MAX and past it), digits only (400 otherwise).
fn body_len(v: Option<&str>) -> Result<usize, (u16, &'static str)> {
    let Some(v) = v else { return Ok(0) };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err((400, "invalid content-length"));
    }
    match v.parse::<u64>() {
        Ok(n) if n <= MAX_BODY as u64 => Ok(n as usize),
        // Too many digits for u64 is too large too, not malformed.
        _ => Err((413, "request too large")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Percent-decodes like pveproxy: `+` → space, `%XX` → byte, anything else kept.
pub fn unescape(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// pveproxy's `decode_urlencoded`: pairs split on `&` or `;`, each pair `split(/=/)`
/// (so only the text up to a second `=` survives), repeated keys joined with `\0`.
pub fn decode_urlencoded(data: &str, into: &mut BTreeMap<String, String>) {
    for kv in data.split(['&', ';']) {
        if kv.is_empty() {
            continue;
        }
        let mut parts = kv.split('=');
        let k = unescape(parts.next().unwrap_or(""));
        let v = unescape(parts.next().unwrap_or(""));
        match into.get_mut(&k) {
            Some(old) => {
                old.push('\0');
                old.push_str(&v);
            }
            None => {
                into.insert(k, v);
            }
        }
    }
}

/// An HTTP date (RFC 7231 IMF-fixdate) for `t` seconds since the epoch.
pub fn http_date(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // civil_from_days (H. Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Unix time now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds a response like pveproxy's. `body: None` = no body and no Content-Length
/// (the 401 shape of §12).
pub fn response(code: u16, reason: &str, body: Option<&[u8]>, keep_alive: bool) -> Vec<u8> {
    let date = http_date(now_secs());
    let mut h = format!(
        "HTTP/1.1 {code} {reason}\r\nCache-Control: max-age=0\r\nConnection: {}\r\nDate: {date}\r\nPragma: no-cache\r\nServer: pve-api-daemon/3.0\r\n",
        if keep_alive { "Keep-Alive" } else { "close" }
    );
    if let Some(b) = body {
        h.push_str(&format!(
            "Content-Length: {}\r\nContent-Type: application/json;charset=UTF-8\r\n",
            b.len()
        ));
    }
    h.push_str(&format!("Expires: {date}\r\n\r\n"));
    let mut out = h.into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_extremes() {
        assert_eq!(body_len(None), Ok(0));
        assert_eq!(body_len(Some("0")), Ok(0));
        assert_eq!(body_len(Some(&MAX_BODY.to_string())), Ok(MAX_BODY));
        for big in [
            (MAX_BODY + 1).to_string(),
            u32::MAX.to_string(),
            u64::MAX.to_string(),
            "18446744073709551616".to_string(),
            "9".repeat(100),
        ] {
            assert_eq!(
                body_len(Some(&big)),
                Err((413, "request too large")),
                "{big}"
            );
        }
        for bad in ["", "-1", "+5", "1 2", "0x10", "1e3"] {
            assert_eq!(
                body_len(Some(bad)),
                Err((400, "invalid content-length")),
                "{bad}"
            );
        }
    }

    #[test]
    fn urlencoded_quirks() {
        let mut m = BTreeMap::new();
        decode_urlencoded("a=x+y%2B&b=c=d;c=1&c=2&e", &mut m);
        assert_eq!(m["a"], "x y+");
        assert_eq!(m["b"], "c");
        assert_eq!(m["c"], "1\u{0}2");
        assert_eq!(m["e"], "");
    }

    #[test]
    fn date() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
