//! Who the client is, behind load balancers and proxies: the PROXY
//! protocol v1 and v2 header a balancer (HAProxy `send-proxy-v2`, nginx
//! stream `proxy_protocol on`) puts before the first byte, and the one
//! header an HTTP proxy names the client in (`[server] client_ip_header`:
//! `X-Forwarded-For`, `Forwarded`, `CF-Connecting-IP` or `X-Real-IP`) —
//! both believed only from `trusted_proxies`.
//!
//! ```text
//! v1: "PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"        (≤ 107 bytes)
//! v2: 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A | ver/cmd | fam | len(2) | addrs | TLVs
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Cidr, ClientIpHeader};
use crate::http::Headers;

const V2_SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// v1 lines are at most 107 bytes (spec §2.1).
const V1_MAX: usize = 107;
/// Largest v2 address+TLV block accepted. Balancers send tens of bytes;
/// the spec allows 64 KiB, which no relay needs to buffer for a stranger.
pub const V2_MAX_LEN: usize = 1024;

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer relays this client.
    Proxied { source: SocketAddr },
    /// A health check or an address family we cannot use (v1 UNKNOWN, v2
    /// LOCAL or UNSPEC/UNIX): keep the TCP peer.
    Local,
}

/// A broken PROXY header: the connection is dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither signature: the peer is not speaking PROXY protocol.
    NotProxy,
    BadV1,
    BadV2,
    TooLong,
}

impl ProxyError {
    pub fn label(self) -> &'static str {
        match self {
            ProxyError::NotProxy => "proxy_header_missing",
            ProxyError::BadV1 => "proxy_v1_malformed",
            ProxyError::BadV2 => "proxy_v2_malformed",
            ProxyError::TooLong => "proxy_header_too_long",
        }
    }
}

/// Parses a PROXY header at the start of `buf`: `Ok(None)` while
/// incomplete, else the header and its length (the bytes after it are the
/// client's own, TLS or HTTP).
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if n < V2_SIG.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::BadV1)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let hdr = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader::Local,
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| ProxyError::BadV1)?;
            let _dst: IpAddr = dst.parse().map_err(|_| ProxyError::BadV1)?;
            if (*fam == "TCP4") != src.is_ipv4() {
                return Err(ProxyError::BadV1);
            }
            let port = parse_port(sport)?;
            parse_port(dport)?;
            ProxyHeader::Proxied {
                source: SocketAddr::new(src, port),
            }
        }
        _ => return Err(ProxyError::BadV1),
    };
    Ok(Some((hdr, end + 2)))
}

fn parse_port(s: &str) -> Result<u16, ProxyError> {
    // Decimal without sign or leading zeros (spec §2.1).
    if s.is_empty()
        || s.len() > 5
        || (s.len() > 1 && s.starts_with('0'))
        || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ProxyError::BadV1);
    }
    s.parse().map_err(|_| ProxyError::BadV1)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyError::BadV2);
    }
    if len > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let local = ver_cmd & 0x0f == 0;
    let hdr = match fam {
        _ if local => ProxyHeader::Local,
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let b = body.get(..12).ok_or(ProxyError::BadV2)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]])),
            }
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let b = body.get(..36).ok_or(ProxyError::BadV2)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a)),
                    u16::from_be_bytes([b[32], b[33]]),
                ),
            }
        }
        // UNSPEC, UDP or UNIX: nothing we can use as a client IP.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => ProxyHeader::Local,
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Some((hdr, 16 + len)))
}

/// Normalises IPv4-mapped IPv6 addresses to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// Parses one `for=` value or X-Forwarded-For entry: an IP, `[v6]:port`,
/// `v4:port`, quoted or not.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')
        .and_then(|(h, _)| h.parse::<Ipv4Addr>().ok())
        .map(IpAddr::V4)
}

/// The client's address: `peer` (the TCP peer, or the PROXY source),
/// unless `peer` is a trusted proxy, in which case the one configured
/// `header` names the client (any other forwarding header is ignored: a
/// proxy passes a browser's own headers through). For the list headers
/// (`X-Forwarded-For`, `Forwarded`) the rightmost hop that is not a trusted
/// proxy wins, as nginx's `real_ip_header` with `real_ip_recursive on`; a
/// hop that does not parse stops the walk at the last trusted one. A
/// single-address header (`CF-Connecting-IP`, `X-Real-IP`) must appear
/// once and parse, else the peer is kept.
pub fn client_ip(
    peer: IpAddr,
    headers: &impl Headers,
    proxies: &[Cidr],
    header: Option<ClientIpHeader>,
) -> IpAddr {
    let peer = canonical(peer);
    let Some(header) = header else {
        return peer;
    };
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    match header {
        ClientIpHeader::CfConnectingIp | ClientIpHeader::XRealIp => {
            return match headers.one(header.name()) {
                Ok(Some(v)) => parse_hop(v).map(canonical).unwrap_or(peer),
                _ => peer,
            };
        }
        ClientIpHeader::Forwarded => {
            for element in headers.all("forwarded").flat_map(|v| v.split(',')) {
                let f = element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .map(|(_, v)| v);
                hops.push(f.and_then(parse_hop));
            }
        }
        ClientIpHeader::XForwardedFor => {
            for v in headers.all("x-forwarded-for").flat_map(|v| v.split(',')) {
                hops.push(parse_hop(v));
            }
        }
    }
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                let ip = canonical(*ip);
                if !trusted(ip, proxies) {
                    return ip;
                }
                nearest = ip;
            }
            // `unknown`, an obfuscated id or garbage: stop at the last hop we trust.
            None => return nearest,
        }
    }
    nearest
}

/// A PROXY header is believed only from a balancer in `trusted_proxies`.
pub fn proxy_header_trusted(peer: IpAddr, proxies: &[Cidr]) -> bool {
    trusted(canonical(peer), proxies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, HeadLimits, RequestHead};

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.extend_from_slice(&[0x20 | cmd, fam]);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v1_and_every_prefix() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\nGET";
        for cut in 0..line.len() - 3 {
            assert_eq!(parse(&line[..cut]), Ok(None), "{cut}");
        }
        let (h, n) = parse(line).unwrap().unwrap();
        assert_eq!(n, line.len() - 3);
        assert_eq!(
            h,
            ProxyHeader::Proxied {
                source: "203.0.113.7:51234".parse().unwrap()
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse(v6),
            Ok(Some((ProxyHeader::Proxied { .. }, _)))
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            ProxyHeader::Local
        );
    }

    #[test]
    fn v1_garbage_is_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert_eq!(parse(bad), Err(ProxyError::BadV1), "{bad:?}");
        }
        assert_eq!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(30)),
            Err(ProxyError::TooLong)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2_forms() {
        let mut body = vec![203, 0, 113, 7, 192, 0, 2, 1, 0xC8, 0x22, 0x01, 0xBB];
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "{cut}");
        }
        assert_eq!(
            parse(&h).unwrap().unwrap(),
            (
                ProxyHeader::Proxied {
                    source: "203.0.113.7:51234".parse().unwrap()
                },
                h.len()
            )
        );
        let mut b6 = vec![0u8; 36];
        b6[15] = 1;
        b6[32] = 0x12;
        b6[33] = 0x34;
        assert_eq!(
            parse(&v2(1, 0x21, &b6)).unwrap().unwrap().0,
            ProxyHeader::Proxied {
                source: "[::1]:4660".parse().unwrap()
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])).unwrap().unwrap().0,
            ProxyHeader::Local
        );
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(ProxyError::BadV2));
        assert_eq!(parse(&v2(1, 0x99, &[0; 12])), Err(ProxyError::BadV2));
        let mut bad_ver = v2(1, 0x11, &body);
        bad_ver[12] = 0x11;
        assert_eq!(parse(&bad_ver), Err(ProxyError::BadV2));
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
    }

    fn head(extra: &str) -> RequestHead {
        let t = format!("GET / HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        parse_request(t.as_bytes(), HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let proxies = [
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let xff = Some(ClientIpHeader::XForwardedFor);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = head("X-Forwarded-For: 198.51.100.9, 10.1.1.1\r\n");
        assert_eq!(
            client_ip(ip("10.0.0.2"), &h, &proxies, xff),
            ip("198.51.100.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.5"), &h, &proxies, xff),
            ip("203.0.113.5"),
            "untrusted peer"
        );
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &[], None), ip("10.0.0.2"));
        // A client-supplied leftmost entry cannot override the real one.
        let h = head("X-Forwarded-For: 1.1.1.1, 198.51.100.9\r\n");
        assert_eq!(
            client_ip(ip("10.0.0.2"), &h, &proxies, xff),
            ip("198.51.100.9")
        );
        let fwd = Some(ClientIpHeader::Forwarded);
        let h = head("Forwarded: for=\"[2001:db8::7]:4711\";proto=https, for=10.2.2.2\r\n");
        assert_eq!(client_ip(ip("::1"), &h, &proxies, fwd), ip("2001:db8::7"));
        let cf = Some(ClientIpHeader::CfConnectingIp);
        let h = head("CF-Connecting-IP: 198.51.100.77\r\nX-Forwarded-For: 1.2.3.4\r\n");
        assert_eq!(
            client_ip(ip("10.9.9.9"), &h, &proxies, cf),
            ip("198.51.100.77")
        );
        assert_eq!(client_ip(ip("8.8.8.8"), &h, &proxies, cf), ip("8.8.8.8"));
        let h = head("X-Forwarded-For: garbage, 10.3.3.3\r\n");
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies, xff), ip("10.3.3.3"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &head(""), &proxies, xff),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn client_ip_header_is_configuration_not_precedence() {
        let proxies = [Cidr::parse("127.0.0.1").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let peer = ip("127.0.0.1");
        // What a browser sends through nginx's shipped config: its own
        // CF-Connecting-IP, Forwarded and X-Real-IP, then nginx's XFF hop.
        let h = head(
            "CF-Connecting-IP: 198.51.100.7\r\nForwarded: for=198.51.100.8\r\nX-Real-IP: 198.51.100.9\r\n\
X-Forwarded-For: 198.51.100.10, 203.0.113.4\r\n",
        );
        let xff = Some(ClientIpHeader::XForwardedFor);
        assert_eq!(client_ip(peer, &h, &proxies, xff), ip("203.0.113.4"));
        assert_eq!(
            client_ip(peer, &h, &proxies, Some(ClientIpHeader::Forwarded)),
            ip("198.51.100.8")
        );
        assert_eq!(
            client_ip(peer, &h, &proxies, Some(ClientIpHeader::CfConnectingIp)),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(peer, &h, &proxies, Some(ClientIpHeader::XRealIp)),
            ip("198.51.100.9")
        );
        // The configured header absent: the peer, never another header.
        let h = head("CF-Connecting-IP: 198.51.100.7\r\nForwarded: for=198.51.100.8\r\n");
        assert_eq!(client_ip(peer, &h, &proxies, xff), peer);
        // A single-address header twice (the browser's and the proxy's): the peer.
        let h = head("X-Real-IP: 198.51.100.9\r\nX-Real-IP: 203.0.113.4\r\n");
        assert_eq!(
            client_ip(peer, &h, &proxies, Some(ClientIpHeader::XRealIp)),
            peer
        );
        // Every hop trusted: the leftmost trusted one.
        let h = head("X-Forwarded-For: 127.0.0.1\r\n");
        assert_eq!(client_ip(peer, &h, &proxies, xff), peer);
    }
}
