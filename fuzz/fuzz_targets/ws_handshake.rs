//! `ws::handshake::check_upgrade` on request heads (parsed from the input,
//! and built from structured fields), and the client side that answers it.
//!
//! Invariants: never panics; a refusal has status 400 or 426 and a label;
//! an accepted upgrade has a base64 key of 16 bytes, at most 8 token
//! subprotocols without the ticket prefix, and `response_101(key,
//! selected)` parses as a complete response that `check_response(.., key,
//! selected)` accepts (and refuses for another key); `client_request` with
//! the same key, host and selection is accepted by `check_upgrade`.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexor_relay::http::{parse_request, parse_response, HeadLimits, Header, RequestHead};
use nexor_relay::ws::handshake::{
    accept_key, check_response, check_upgrade, client_request, response_101, ResponseError,
    MAX_PROTOCOLS, TICKET_PROTOCOL_PREFIX,
};

const NAMES: [&str; 12] = [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Origin",
    "Content-Length",
    "Transfer-Encoding",
    "sec-websocket-protocol",
    "CONNECTION",
    "X-Other",
];
const VALUES: [&str; 10] = [
    "relay.example",
    "websocket",
    "Upgrade",
    "keep-alive, Upgrade",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "13",
    "binary, nexor.ticket.abc",
    "binary",
    "0",
    "https://portal.example",
];

#[derive(Debug, Arbitrary)]
struct Fields {
    method_get: bool,
    version: u8,
    headers: Vec<(u8, u8, Option<String>)>,
}

fn structured(u: &mut Unstructured<'_>) -> Option<RequestHead> {
    let f = Fields::arbitrary(u).ok()?;
    Some(RequestHead {
        method: if f.method_get { "GET".into() } else { "POST".into() },
        target: "/console".into(),
        version: f.version % 3,
        headers: f
            .headers
            .into_iter()
            .take(40)
            .map(|(n, v, own)| Header {
                name: NAMES[usize::from(n) % NAMES.len()].into(),
                value: own.unwrap_or_else(|| VALUES[usize::from(v) % VALUES.len()].into()),
            })
            .collect(),
    })
}

fn check(head: &RequestHead, target_ok: bool) {
    let up = match check_upgrade(head) {
        Err(e) => {
            assert!(matches!(e.status(), 400 | 426), "{e:?}");
            assert!(!e.label().is_empty());
            return;
        }
        Ok(up) => up,
    };
    assert_eq!(
        base64_len(&up.key),
        Some(16),
        "accepted key {:?} is not base64 of 16 bytes",
        up.key
    );
    assert!(!up.host.is_empty());
    assert!(up.protocols.len() + usize::from(up.ticket.is_some()) <= MAX_PROTOCOLS);
    for p in &up.protocols {
        assert!(!p.is_empty() && !p.starts_with(TICKET_PROTOCOL_PREFIX), "{p:?}");
        assert!(p.bytes().all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b)));
    }
    let selected = up.selected_protocol();
    assert_eq!(selected.is_some(), up.protocols.iter().any(|p| p == "binary"));

    // Our 101 satisfies our own client-side check.
    let resp = response_101(&up.key, selected);
    let (rh, n) = parse_response(&resp, HeadLimits::default())
        .expect("101 parses")
        .expect("101 is complete");
    assert_eq!(n, resp.len());
    assert_eq!(rh.status, 101);
    assert_eq!(
        check_response(&rh, &up.key, selected),
        Ok(selected.map(str::to_string))
    );
    let other = if up.key == "dGhlIHNhbXBsZSBub25jZQ==" {
        "AAAAAAAAAAAAAAAAAAAAAA=="
    } else {
        "dGhlIHNhbXBsZSBub25jZQ=="
    };
    if accept_key(other) != accept_key(&up.key) {
        assert_eq!(
            check_response(&rh, other, selected),
            Err(ResponseError::BadAccept)
        );
    }

    // The upstream request we would send is one we accept ourselves.
    if target_ok {
        let req = client_request(&up.host, &head.target, &up.key, selected, &[]);
        let (rq, n) = parse_request(&req, HeadLimits::default())
            .expect("client request parses")
            .expect("client request is complete");
        assert_eq!(n, req.len());
        let again = check_upgrade(&rq).expect("our client request is accepted");
        assert_eq!(again.key, up.key);
        assert_eq!(again.host, up.host);
        assert_eq!(again.protocols, selected.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(again.ticket, None);
    }
}

fn base64_len(key: &str) -> Option<usize> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .ok()
        .map(|v| v.len())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, _))) = parse_request(data, HeadLimits::default()) {
        check(&head, true);
    }
    let mut u = Unstructured::new(data);
    if let Some(head) = structured(&mut u) {
        // Structured values may hold CR/LF, which a parsed head never does.
        check(&head, false);
    }
});
