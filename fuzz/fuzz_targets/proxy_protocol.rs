//! `client_addr::parse` (PROXY protocol v1/v2) and `client_addr::client_ip`.
//!
//! parse: consumed ≤ input; a complete header is at most 107 (v1) or
//! 16 + 1024 (v2) bytes and parses the same from `input[..n]`; every strict
//! prefix of it is `Ok(None)`; for any prefix of the input the result is
//! `Ok(None)` or exactly the full input's result (errors and headers are
//! stable as more bytes arrive).
//!
//! client_ip: never panics; an untrusted peer, or no configured header, is
//! returned as is (IPv4-mapped normalised); otherwise the answer is the peer
//! or an address written in the configured header — never one from another
//! forwarding header.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexor_relay::config::{Cidr, ClientIpHeader};
use nexor_relay::http::{Header, RequestHead};
use nexor_relay::client_addr::{canonical, client_ip, parse, ProxyHeader, V2_MAX_LEN};

fn check_parse(data: &[u8]) {
    let full = parse(data);
    if let Ok(Some((h, n))) = &full {
        let n = *n;
        assert!(n <= data.len());
        let v2 = data.starts_with(&[0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51]);
        assert!(n <= if v2 { 16 + V2_MAX_LEN } else { 107 }, "{n}-byte header");
        assert_eq!(parse(&data[..n]), Ok(Some((*h, n))));
        for cut in 0..n {
            assert_eq!(parse(&data[..cut]), Ok(None), "strict prefix {cut} of {n}");
        }
        if let ProxyHeader::Proxied { source } = h {
            if !v2 {
                let line = std::str::from_utf8(&data[..n]).unwrap();
                assert!(line.ends_with("\r\n"));
                assert!(line.contains(&format!(" {} ", source.port())), "{line:?}");
            }
        }
    }
    let cuts: Vec<usize> = if data.len() <= 128 {
        (0..data.len()).collect()
    } else {
        (0..64).map(|i| i * data.len() / 64).chain(0..128).collect()
    };
    for cut in cuts {
        let p = parse(&data[..cut]);
        assert!(p == Ok(None) || p == full, "prefix {cut}: {p:?} vs whole {full:?}");
    }
}

const NAMES: [&str; 5] = [
    "CF-Connecting-IP",
    "Forwarded",
    "X-Forwarded-For",
    "x-forwarded-for",
    "X-Real-IP",
];
const POOL: [&str; 10] = [
    "203.0.113.7",
    "10.0.0.1",
    "127.0.0.1",
    "::1",
    "::ffff:10.0.0.2",
    "2001:db8::5",
    "unknown",
    "_hidden",
    "[2001:db8::7]:443",
    "198.51.100.4:8080",
];

#[derive(Debug, Arbitrary)]
enum Value {
    Pool(Vec<(u8, bool)>),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    peer_v6: bool,
    peer: [u8; 16],
    proxies: Vec<(bool, [u8; 16], u8)>,
    proxy_text: Vec<String>,
    headers: Vec<(u8, Value)>,
    /// `[server] client_ip_header`: none, or one of the four.
    which: u8,
}

const KINDS: [Option<ClientIpHeader>; 5] = [
    None,
    Some(ClientIpHeader::XForwardedFor),
    Some(ClientIpHeader::Forwarded),
    Some(ClientIpHeader::CfConnectingIp),
    Some(ClientIpHeader::XRealIp),
];

fn ip(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

/// Every address that `client_ip` could read out of `value`: maximal runs of
/// address characters, whole or before their last `:` (v4:port).
fn candidates(value: &str, out: &mut Vec<IpAddr>) {
    for run in value.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':')) {
        if let Ok(a) = run.parse::<IpAddr>() {
            out.push(canonical(a));
        }
        if let Some((h, _)) = run.rsplit_once(':') {
            if let Ok(a) = h.parse::<Ipv4Addr>() {
                out.push(IpAddr::V4(a));
            }
        }
    }
}

fn check_client_ip(u: &mut Unstructured<'_>) {
    let Ok(inp) = Input::arbitrary(u) else { return };
    let peer = ip(inp.peer_v6, inp.peer);
    let mut proxies: Vec<Cidr> = inp
        .proxies
        .iter()
        .take(8)
        .map(|&(v6, b, p)| Cidr {
            addr: ip(v6, b),
            prefix: p % if v6 { 129 } else { 33 },
        })
        .collect();
    proxies.extend(inp.proxy_text.iter().take(8).filter_map(|s| Cidr::parse(s).ok()));
    let head = RequestHead {
        method: "GET".into(),
        target: "/console".into(),
        version: 1,
        headers: inp
            .headers
            .into_iter()
            .take(16)
            .map(|(n, v)| Header {
                name: NAMES[usize::from(n) % NAMES.len()].into(),
                value: match v {
                    Value::Raw(s) => s,
                    Value::Pool(items) => items
                        .iter()
                        .take(8)
                        .map(|&(i, fwd)| {
                            let a = POOL[usize::from(i) % POOL.len()];
                            if fwd {
                                format!("for=\"{a}\";proto=https")
                            } else {
                                a.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            })
            .collect(),
    };
    let which = KINDS[usize::from(inp.which) % KINDS.len()];
    let got = client_ip(peer, &head, &proxies, which);
    let trusted = proxies.iter().any(|c| c.contains(canonical(peer)));
    let Some(which) = which.filter(|_| trusted) else {
        assert_eq!(got, canonical(peer), "peer replaced without a trusted header");
        return;
    };
    let mut cands = vec![canonical(peer)];
    for h in head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(which.name()))
    {
        candidates(&h.value, &mut cands);
    }
    assert!(
        cands.contains(&got),
        "{got} is neither the peer nor in the {} header",
        which.name()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check_parse(rest);
    } else {
        check_client_ip(&mut Unstructured::new(rest));
    }
});
