//! The opening handshake (RFC 6455 §4), both sides.
//!
//! Server side: [`check_upgrade`] turns a browser's request head into an
//! [`Upgrade`] (key, offered subprotocols, ticket subprotocol) or the exact
//! refusal. Client side: [`client_request`] and [`check_response`] for the
//! upstream leg. Extensions are never negotiated: offers are ignored and an
//! upstream that answers with one is refused.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::http::{Headers, RequestHead, ResponseHead};

/// §1.3: appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The subprotocol prefix that carries a ticket (docs/design.md §2).
pub const TICKET_PROTOCOL_PREFIX: &str = "nexor.ticket.";
/// The real subprotocol the relay selects when a client offers it.
pub const BINARY: &str = "binary";
/// Offered subprotocols beyond this are refused (noVNC offers 1, the ticket
/// makes 2); bounds the work a hostile list can cause.
pub const MAX_PROTOCOLS: usize = 8;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2 step 5.4).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Why an upgrade request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    NotGet,
    /// HTTP/1.0: §4.1 requires 1.1 or higher.
    OldHttp,
    MissingHost,
    DuplicateHost,
    /// `Content-Length`/`Transfer-Encoding` on an upgrade: a smuggling shape.
    BodyOnUpgrade,
    /// No `Upgrade: websocket`: the client wants plain HTTP (426).
    NoUpgrade,
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` other than 13 (426 with the version we speak).
    BadVersion,
    /// Key missing, repeated, or not base64 of 16 bytes (§4.1 item 7).
    BadKey,
    TooManyProtocols,
    BadProtocol,
    /// More than one ticket (subprotocols, query, or both).
    DuplicateTicket,
}

impl HandshakeError {
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::NoUpgrade | HandshakeError::BadVersion => 426,
            _ => 400,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            HandshakeError::NotGet => "method_not_get",
            HandshakeError::OldHttp => "http_1_0",
            HandshakeError::MissingHost => "missing_host",
            HandshakeError::DuplicateHost => "duplicate_host",
            HandshakeError::BodyOnUpgrade => "body_on_upgrade",
            HandshakeError::NoUpgrade => "no_upgrade",
            HandshakeError::NoConnectionUpgrade => "no_connection_upgrade",
            HandshakeError::BadVersion => "bad_ws_version",
            HandshakeError::BadKey => "bad_ws_key",
            HandshakeError::TooManyProtocols => "too_many_protocols",
            HandshakeError::BadProtocol => "bad_protocol",
            HandshakeError::DuplicateTicket => "duplicate_ticket",
        }
    }
}

/// An acceptable upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The client's `Sec-WebSocket-Key`, as sent.
    pub key: String,
    /// Real subprotocols offered, in order (the ticket one removed).
    pub protocols: Vec<String>,
    /// A ticket offered as `nexor.ticket.<JWT>`.
    pub ticket: Option<String>,
    pub origin: Option<String>,
    pub host: String,
}

impl Upgrade {
    /// The subprotocol to select: `binary` when offered (docs/design.md §2),
    /// otherwise none (the relay cannot translate other encodings).
    pub fn selected_protocol(&self) -> Option<&'static str> {
        self.protocols.iter().any(|p| p == BINARY).then_some(BINARY)
    }
}

fn is_token(s: &str) -> bool {
    // RFC 7230 tchar.
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Validates the upgrade part of a request whose method, path and version
/// the caller has routed here.
pub fn check_upgrade(head: &RequestHead) -> Result<Upgrade, HandshakeError> {
    if head.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if head.version < 1 {
        return Err(HandshakeError::OldHttp);
    }
    let host = match head.one("host") {
        Ok(Some(h)) if !h.is_empty() => h.to_string(),
        Ok(_) => return Err(HandshakeError::MissingHost),
        Err(_) => return Err(HandshakeError::DuplicateHost),
    };
    if head.all("transfer-encoding").next().is_some()
        || head.all("content-length").any(|v| v.trim() != "0")
    {
        return Err(HandshakeError::BodyOnUpgrade);
    }
    if !head.has_token("upgrade", "websocket") {
        return Err(HandshakeError::NoUpgrade);
    }
    if !head.has_token("connection", "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    match head.one("sec-websocket-version") {
        Ok(Some("13")) => {}
        _ => return Err(HandshakeError::BadVersion),
    }
    let key = match head.one("sec-websocket-key") {
        Ok(Some(k)) => k.to_string(),
        _ => return Err(HandshakeError::BadKey),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    let mut protocols = Vec::new();
    let mut ticket = None;
    let mut offered = 0;
    for p in head
        .all("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
    {
        let p = p.trim();
        offered += 1;
        if offered > MAX_PROTOCOLS {
            return Err(HandshakeError::TooManyProtocols);
        }
        if !is_token(p) {
            return Err(HandshakeError::BadProtocol);
        }
        if let Some(t) = p.strip_prefix(TICKET_PROTOCOL_PREFIX) {
            if ticket.replace(t.to_string()).is_some() {
                return Err(HandshakeError::DuplicateTicket);
            }
        } else {
            protocols.push(p.to_string());
        }
    }
    let origin = head.one("origin").ok().flatten().map(str::to_string);
    Ok(Upgrade {
        key,
        protocols,
        ticket,
        origin,
        host,
    })
}

/// The 101 answer. `protocol` is what the upstream selected.
pub fn response_101(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = String::with_capacity(160);
    out.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.push_str("Sec-WebSocket-Accept: ");
    out.push_str(&accept_key(key));
    out.push_str("\r\n");
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (§4.1 item 7).
pub fn client_key() -> String {
    let mut k = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The upstream upgrade request. `host` is the `Host` header value.
pub fn client_request(
    host: &str,
    path_and_query: &str,
    key: &str,
    protocol: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    for (k, v) in extra {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Why an upstream's answer to our upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// Not 101: the upstream's status.
    Status(u16),
    NotWebSocket,
    BadAccept,
    /// A subprotocol we did not offer (or several).
    BadProtocol,
    /// Any extension: none was offered.
    Extension,
}

/// Checks the upstream's 101 (§4.1, client requirements 1-6); returns the
/// subprotocol it selected.
pub fn check_response(
    head: &ResponseHead,
    key: &str,
    offered: Option<&str>,
) -> Result<Option<String>, ResponseError> {
    if head.status != 101 {
        return Err(ResponseError::Status(head.status));
    }
    if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
        return Err(ResponseError::NotWebSocket);
    }
    match head.one("sec-websocket-accept") {
        Ok(Some(a)) if a == accept_key(key) => {}
        _ => return Err(ResponseError::BadAccept),
    }
    if head
        .all("sec-websocket-extensions")
        .any(|v| !v.trim().is_empty())
    {
        return Err(ResponseError::Extension);
    }
    match head.one("sec-websocket-protocol") {
        Ok(None) => Ok(None),
        Ok(Some(p)) if Some(p) == offered => Ok(Some(p.to_string())),
        _ => Err(ResponseError::BadProtocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, parse_response, HeadLimits};

    fn req(extra: &str) -> RequestHead {
        let text = format!(
            "GET /console HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        parse_request(text.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn rfc6455_accept_vector() {
        // §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_a_browser_upgrade_and_splits_out_the_ticket() {
        let u = check_upgrade(&req(
            "Sec-WebSocket-Protocol: binary, nexor.ticket.a.b.c\r\nOrigin: https://x\r\n",
        ))
        .unwrap();
        assert_eq!(u.protocols, ["binary"]);
        assert_eq!(u.ticket.as_deref(), Some("a.b.c"));
        assert_eq!(u.selected_protocol(), Some("binary"));
        assert_eq!(u.origin.as_deref(), Some("https://x"));
        let r = String::from_utf8(response_101(&u.key, u.selected_protocol())).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
        );
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let text = "GET /c HTTP/1.1\r\nHost: r\r\nUPGRADE: WebSocket\r\nconnection: UPGRADE\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
        let head = parse_request(text.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0;
        assert!(check_upgrade(&head).is_ok());
    }

    #[test]
    fn refuses_each_bad_handshake() {
        let base = "GET /console HTTP/1.1\r\n";
        let cases: &[(&str, HandshakeError)] = &[
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                HandshakeError::BadKey,
            ),
            ("Content-Length: 5\r\n", HandshakeError::BodyOnUpgrade),
            // Never parsed as a number: u64::MAX, 2^64 and garbage are refused alike.
            (
                "Content-Length: 18446744073709551615\r\n",
                HandshakeError::BodyOnUpgrade,
            ),
            (
                "Content-Length: 18446744073709551616\r\n",
                HandshakeError::BodyOnUpgrade,
            ),
            ("Content-Length: -1\r\n", HandshakeError::BodyOnUpgrade),
            (
                "Transfer-Encoding: chunked\r\n",
                HandshakeError::BodyOnUpgrade,
            ),
            ("Host: other\r\n", HandshakeError::DuplicateHost),
            (
                "Sec-WebSocket-Protocol: nexor.ticket.a, nexor.ticket.b\r\n",
                HandshakeError::DuplicateTicket,
            ),
            (
                "Sec-WebSocket-Protocol: a,b,c,d,e,f,g,h,i\r\n",
                HandshakeError::TooManyProtocols,
            ),
            (
                "Sec-WebSocket-Protocol: bad proto\r\n",
                HandshakeError::BadProtocol,
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(check_upgrade(&req(extra)), Err(*want), "{extra}");
        }
        let variants: &[(&str, &str, HandshakeError)] = &[
            (
                "GET /console HTTP/1.1",
                "POST /console HTTP/1.1",
                HandshakeError::NotGet,
            ),
            (
                "GET /console HTTP/1.1",
                "GET /console HTTP/1.0",
                HandshakeError::OldHttp,
            ),
            ("Host: relay\r\n", "", HandshakeError::MissingHost),
            ("Upgrade: websocket\r\n", "", HandshakeError::NoUpgrade),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                HandshakeError::NoUpgrade,
            ),
            (
                "keep-alive, Upgrade",
                "keep-alive",
                HandshakeError::NoConnectionUpgrade,
            ),
            ("Version: 13", "Version: 8", HandshakeError::BadVersion),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZQ==",
                HandshakeError::BadKey,
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "not base64!!",
                HandshakeError::BadKey,
            ),
        ];
        let good = format!(
            "{base}Host: relay\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        for (from, to, want) in variants {
            let text = good.replacen(from, to, 1);
            let head = parse_request(text.as_bytes(), HeadLimits::default())
                .unwrap()
                .unwrap()
                .0;
            assert_eq!(check_upgrade(&head), Err(*want), "{from} -> {to}");
        }
        assert_eq!(HandshakeError::BadVersion.status(), 426);
        assert_eq!(HandshakeError::BadKey.status(), 400);
    }

    fn resp(text: &str) -> ResponseHead {
        parse_response(text.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn checks_the_upstream_101() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        // pveproxy's exact answer (docs/proxmox.md §2.1), lowercase `upgrade`.
        let ok =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: binary\r\n\r\n";
        assert_eq!(
            check_response(&resp(ok), key, Some("binary")),
            Ok(Some("binary".into()))
        );
        assert_eq!(
            check_response(&resp(ok), key, None),
            Err(ResponseError::BadProtocol)
        );
        let both = ok.replace("binary", "binary, base64");
        assert_eq!(
            check_response(&resp(&both), key, Some("binary")),
            Err(ResponseError::BadProtocol)
        );
        let bad = ok.replace("s3pP", "AAAA");
        assert_eq!(
            check_response(&resp(&bad), key, Some("binary")),
            Err(ResponseError::BadAccept)
        );
        let ext = ok.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert_eq!(
            check_response(&resp(&ext), key, Some("binary")),
            Err(ResponseError::Extension)
        );
        let denied = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(&resp(denied), key, None),
            Err(ResponseError::Status(403))
        );
    }

    #[test]
    fn client_request_round_trips_through_the_server_check() {
        let key = client_key();
        let r = client_request(
            "up:9001",
            "/ws?x=1",
            &key,
            Some("binary"),
            &[("Authorization", "x")],
        );
        let head = parse_request(&r, HeadLimits::default()).unwrap().unwrap().0;
        let u = check_upgrade(&head).unwrap();
        assert_eq!(u.key, key);
        assert_eq!(u.protocols, ["binary"]);
        assert_eq!(head.target, "/ws?x=1");
    }
}
