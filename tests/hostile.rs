//! Hostile input: each case is a test of its own (`http::te_chunked`, one
//! module per group), sent to a relay of its own with its exact expected
//! answer (an HTTP status, a close code, or a silent drop). After the case a
//! good session on the same relay must still work, and the relay is alive and
//! never panicked. One more test sends every case twice to one relay: it
//! stays alive and its memory is flat.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Status(u16),
    /// 101, then this close code after the frame bytes.
    Close(u16),
    /// No answer at all: the connection is closed.
    Dropped,
}

#[derive(Clone)]
struct Case {
    name: String,
    /// Raw bytes sent on a fresh connection (after TLS / PROXY handling).
    request: Vec<u8>,
    /// Frame bytes sent after a 101 (for `Want::Close`).
    frames: Vec<u8>,
    want: Want,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn key_bytes() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(KEY_B64)
        .unwrap()
}

/// A JWT from raw header and payload JSON text, signed HS256 with `key`.
fn jwt_raw(header: &str, payload: &str, key: &[u8]) -> String {
    let signing = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let sig = ring::hmac::sign(&k, signing.as_bytes());
    format!("{signing}.{}", b64(sig.as_ref()))
}

fn claims_json(over: &[(&str, &str)], drop: &[&str]) -> String {
    let n = now();
    let base = [
        ("exp", format!("{}", n + 60)),
        ("iat", format!("{n}")),
        ("jti", format!("\"h-{:016x}\"", rand_u64())),
        ("sub", "\"mallory\"".to_string()),
        ("upstream", "\"t\"".to_string()),
        ("console", "\"vnc\"".to_string()),
    ];
    let mut parts: Vec<String> = base
        .iter()
        .filter(|(k, _)| !drop.contains(k) && !over.iter().any(|(o, _)| o == k))
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    for (k, v) in over {
        parts.push(format!("\"{k}\":{v}"));
    }
    format!("{{{}}}", parts.join(","))
}

const HDR: &str = r#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#;

fn good_claims() -> String {
    claims_json(&[], &[])
}

fn upgrade(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn with_ticket(t: &str) -> Vec<u8> {
    upgrade(&format!("/console?ticket={t}"), "")
}

fn good_ticket() -> String {
    jwt_raw(HDR, &good_claims(), &key_bytes())
}

fn http_cases() -> Vec<Case> {
    let t = good_ticket();
    let mut v = Vec::new();
    let mut add = |name: &str, req: Vec<u8>, status: u16| {
        v.push(Case {
            name: name.into(),
            request: req,
            frames: vec![],
            want: Want::Status(status),
        })
    };
    let up = |extra: &str| upgrade(&format!("/console?ticket={}", good_ticket()), extra);
    add("te chunked", up("Transfer-Encoding: chunked\r\n"), 400);
    add("te identity", up("Transfer-Encoding: identity\r\n"), 400);
    add("content-length body", up("Content-Length: 5\r\n"), 400);
    add(
        "cl and te",
        up("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
        400,
    );
    add(
        "two content-lengths",
        up("Content-Length: 0\r\nContent-Length: 7\r\n"),
        400,
    );
    add(
        "te with space before colon",
        up("Transfer-Encoding : chunked\r\n"),
        400,
    );
    add("duplicate host", up("Host: other\r\n"), 400);
    add("missing host", format!("GET /console?ticket={t} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes(), 400);
    add(
        "empty host",
        String::from_utf8(up(""))
            .unwrap()
            .replace("Host: localhost", "Host: ")
            .into_bytes(),
        400,
    );
    add(
        "absolute-form target",
        upgrade(&format!("http://localhost/console?ticket={t}"), ""),
        404,
    );
    add("asterisk target", upgrade("*", ""), 404);
    add(
        "over-long target",
        upgrade(&format!("/console?ticket={t}&pad={}", "a".repeat(9000)), ""),
        400,
    );
    for (ver, status) in [
        ("HTTP/1.0", 400),
        ("HTTP/2.0", 400),
        ("http/1.1", 400),
        ("HTTP/1.1x", 400),
        ("HTTP/0.9", 400),
    ] {
        add(
            &format!("version {ver}"),
            String::from_utf8(up(""))
                .unwrap()
                .replacen("HTTP/1.1", ver, 1)
                .into_bytes(),
            status,
        );
    }
    for m in [
        "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "get", "TRACE",
    ] {
        add(
            &format!("method {m}"),
            String::from_utf8(up(""))
                .unwrap()
                .replacen("GET", m, 1)
                .into_bytes(),
            400,
        );
    }
    add(
        "connect method",
        b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        404,
    );
    add(
        "method with NUL",
        String::from_utf8(up(""))
            .unwrap()
            .replacen("GET", "G\0T", 1)
            .into_bytes(),
        400,
    );
    add("header without colon", up("NoColonHere\r\n"), 400);
    add("obs-fold", up("X-A: a\r\n folded\r\n"), 400);
    add("NUL in value", up("X-A: a\0b\r\n"), 400);
    add("non-UTF-8 value", up("X-A: \u{e9}\r\n"), 400);
    let mut raw = up("");
    raw.splice(
        raw.len() - 2..raw.len() - 2,
        b"X-B: \xff\xfe\r\n".iter().copied(),
    );
    add("invalid UTF-8 value", raw, 400);
    add(
        "bare LF lines",
        String::from_utf8(up(""))
            .unwrap()
            .replace("\r\n", "\n")
            .into_bytes(),
        101,
    );
    add(
        "CR without LF",
        String::from_utf8(up(""))
            .unwrap()
            .replacen("\r\nHost", "\rHost", 1)
            .into_bytes(),
        400,
    );
    add(
        "head over the cap",
        up(&format!("X-Big: {}\r\n", "b".repeat(9000))),
        400,
    );
    add(
        "too many headers",
        up(&(0..40).map(|i| format!("X-{i}: v\r\n")).collect::<String>()),
        400,
    );
    add("space in header name", up("X A: v\r\n"), 400);
    add("empty header name", up(": v\r\n"), 400);
    add("binary junk", b"\x00\x01\x02\x03\r\n\r\n".to_vec(), 400);
    add(
        "TLS hello on plain port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        400,
    );
    for p in [
        "/",
        "/console/",
        "/CONSOLE",
        "/console%20",
        "//console",
        "/console/../console",
        "/consolex",
    ] {
        add(
            &format!("path {p}"),
            upgrade(&format!("{p}?ticket={t}"), ""),
            404,
        );
    }
    add(
        "plain GET",
        format!("GET /console?ticket={t} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes(),
        426,
    );
    v
}

fn handshake_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |name: &str, extra_or_replace: (&str, &str), status: u16| {
        let base =
            String::from_utf8(upgrade(&format!("/console?ticket={}", good_ticket()), "")).unwrap();
        let (from, to) = extra_or_replace;
        let text = if from.is_empty() {
            base.replacen("\r\n\r\n", &format!("\r\n{to}\r\n"), 1)
        } else {
            base.replacen(from, to, 1)
        };
        v.push(Case {
            name: name.into(),
            request: text.into_bytes(),
            frames: vec![],
            want: Want::Status(status),
        })
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    add("missing key", (key, ""), 400);
    add(
        "short key",
        (key, "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"),
        400,
    );
    add(
        "long key",
        (
            key,
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSBsb25nZXI=\r\n",
        ),
        400,
    );
    add(
        "non-base64 key",
        (key, "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\n"),
        400,
    );
    add(
        "unpadded key",
        (key, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n"),
        400,
    );
    add(
        "two keys",
        ("", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
        400,
    );
    for ver in ["8", "12", "14", "13, 8", "abc", ""] {
        add(
            &format!("version '{ver}'"),
            (
                "Sec-WebSocket-Version: 13",
                &format!("Sec-WebSocket-Version: {ver}"),
            ),
            426,
        );
    }
    add(
        "missing version",
        ("Sec-WebSocket-Version: 13\r\n", ""),
        426,
    );
    add("two versions", ("", "Sec-WebSocket-Version: 13\r\n"), 426);
    add("missing upgrade", ("Upgrade: websocket\r\n", ""), 426);
    add("upgrade h2c", ("Upgrade: websocket", "Upgrade: h2c"), 426);
    add(
        "upgrade websocket2",
        ("Upgrade: websocket", "Upgrade: websocket2"),
        426,
    );
    add("missing connection", ("Connection: Upgrade\r\n", ""), 400);
    add(
        "connection keep-alive",
        ("Connection: Upgrade", "Connection: keep-alive"),
        400,
    );
    add(
        "connection close",
        ("Connection: Upgrade", "Connection: close"),
        400,
    );
    add(
        "hundreds of subprotocols",
        (
            "",
            &format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                (0..300)
                    .map(|i| format!("p{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        400,
    );
    add(
        "nine subprotocols",
        ("", "Sec-WebSocket-Protocol: a,b,c,d,e,f,g,h,i\r\n"),
        400,
    );
    add(
        "bad subprotocol token",
        ("", "Sec-WebSocket-Protocol: bin ary\r\n"),
        400,
    );
    add(
        "subprotocol with slash",
        ("", "Sec-WebSocket-Protocol: a/b\r\n"),
        400,
    );
    add(
        "ticket in query and subprotocol",
        ("", "Sec-WebSocket-Protocol: nexor.ticket.x.y.z\r\n"),
        400,
    );
    add(
        "extensions offered",
        (
            "",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        ),
        101,
    );
    add(
        "base64 subprotocol only",
        ("", "Sec-WebSocket-Protocol: base64\r\n"),
        101,
    );
    v
}

fn frame_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |name: &str, frames: Vec<u8>, code: u16| {
        v.push(Case {
            name: name.into(),
            request: vec![],
            frames,
            want: Want::Close(code),
        })
    };
    add("unmasked binary", frame_bytes(true, 2, b"x", false), 1002);
    add("unmasked ping", frame_bytes(true, 9, b"", false), 1002);
    for (bit, name) in [
        (0x40u8, "rsv1"),
        (0x20, "rsv2"),
        (0x10, "rsv3"),
        (0x70, "all rsv"),
    ] {
        let mut f = frame_bytes(true, 2, b"x", true);
        f[0] |= bit;
        add(name, f, 1002);
    }
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        add(
            &format!("reserved opcode {op:#x}"),
            frame_bytes(true, op, b"", true),
            1002,
        );
    }
    for op in [8u8, 9, 10] {
        add(
            &format!("control {op} over 125"),
            frame_bytes(true, op, &[0x03; 126], true),
            1002,
        );
        add(
            &format!("fragmented control {op}"),
            frame_bytes(false, op, b"", true),
            1002,
        );
    }
    add(
        "continuation without start",
        frame_bytes(true, 0, b"x", true),
        1002,
    );
    let mut f = frame_bytes(false, 1, b"a", true);
    f.extend(frame_bytes(true, 2, b"b", true));
    add("new message inside a fragmented one", f, 1002);
    add(
        "64-bit length top bit",
        vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
        1002,
    );
    add(
        "length one over the cap",
        {
            let mut h = vec![0x82, 0xFF];
            h.extend_from_slice(&(65537u64).to_be_bytes());
            h.extend_from_slice(&[1, 2, 3, 4]);
            h
        },
        1009,
    );
    add(
        "length 2^40",
        {
            let mut h = vec![0x82, 0xFF];
            h.extend_from_slice(&(1u64 << 40).to_be_bytes());
            h.extend_from_slice(&[1, 2, 3, 4]);
            h
        },
        1009,
    );
    add(
        "length 2^62",
        {
            let mut h = vec![0x82, 0xFF];
            h.extend_from_slice(&(1u64 << 62).to_be_bytes());
            h.extend_from_slice(&[1, 2, 3, 4]);
            h
        },
        1009,
    );
    add(
        "close with 1-byte payload",
        frame_bytes(true, 8, &[0x03], true),
        1002,
    );
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        add(
            &format!("close code {code}"),
            frame_bytes(true, 8, &code.to_be_bytes(), true),
            1002,
        );
    }
    add(
        "close reason not UTF-8",
        frame_bytes(true, 8, &[0x03, 0xe8, 0xc3, 0x28], true),
        1007,
    );
    v
}

fn ticket_cases() -> Vec<Case> {
    let key = key_bytes();
    let mut v = Vec::new();
    let mut add = |name: &str, ticket: String, status: u16| {
        v.push(Case {
            name: name.into(),
            request: with_ticket(&ticket),
            frames: vec![],
            want: Want::Status(status),
        })
    };
    let c = good_claims();
    for (alg, name) in [
        ("none", "alg none"),
        ("HS512", "alg HS512"),
        ("RS256", "alg RS256"),
        ("ES256", "alg ES256"),
        ("hs256", "alg lowercase"),
        ("HS256 ", "alg trailing space"),
    ] {
        add(
            name,
            jwt_raw(&format!(r#"{{"alg":"{alg}","kid":"k1"}}"#), &c, &key),
            401,
        );
    }
    add(
        "alg none unsigned",
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"k1"}"#),
            b64(c.as_bytes())
        ),
        401,
    );
    add("missing alg", jwt_raw(r#"{"kid":"k1"}"#, &c, &key), 401);
    add(
        "alg number",
        jwt_raw(r#"{"alg":256,"kid":"k1"}"#, &c, &key),
        401,
    );
    add(
        "unknown kid",
        jwt_raw(r#"{"alg":"HS256","kid":"k9"}"#, &c, &key),
        401,
    );
    add("missing kid", jwt_raw(r#"{"alg":"HS256"}"#, &c, &key), 401);
    add(
        "kid path traversal",
        jwt_raw(r#"{"alg":"HS256","kid":"../../etc/passwd"}"#, &c, &key),
        401,
    );
    add(
        "kid number",
        jwt_raw(r#"{"alg":"HS256","kid":1}"#, &c, &key),
        401,
    );
    add(
        "kid empty",
        jwt_raw(r#"{"alg":"HS256","kid":""}"#, &c, &key),
        401,
    );
    add(
        "kid with NUL",
        jwt_raw(r#"{"alg":"HS256","kid":"k1\u0000"}"#, &c, &key),
        401,
    );
    add(
        "crit header",
        jwt_raw(r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#, &c, &key),
        401,
    );
    add(
        "duplicate alg",
        jwt_raw(r#"{"alg":"none","alg":"HS256","kid":"k1"}"#, &c, &key),
        401,
    );
    add("header not JSON", jwt_raw("not json", &c, &key), 401);
    add("header array", jwt_raw("[1]", &c, &key), 401);
    add("wrong key", jwt_raw(HDR, &c, &[7u8; 32]), 401);
    add(
        "key confusion: signed with the base64 text",
        jwt_raw(HDR, &c, KEY_B64.as_bytes()),
        401,
    );
    for claim in ["exp", "iat", "jti", "sub", "upstream", "console"] {
        add(
            &format!("missing {claim}"),
            jwt_raw(HDR, &claims_json(&[], &[claim]), &key),
            401,
        );
    }
    let n = now();
    // (case, claim, value): each claim with a value of the wrong type or range.
    let wrong: Vec<(&str, &str, String)> = vec![
        ("exp as a string", "exp", format!("\"{}\"", n + 60)),
        ("exp with a fraction", "exp", format!("{}.5", n + 60)),
        ("exp negative", "exp", "-1".into()),
        ("exp null", "exp", "null".into()),
        ("iat as a string", "iat", format!("\"{n}\"")),
        ("jti a number", "jti", "12345678901234567".into()),
        ("jti too short", "jti", "\"short\"".into()),
        ("jti too long", "jti", format!("\"{}\"", "j".repeat(129))),
        ("sub empty", "sub", "\"\"".into()),
        ("sub a number", "sub", "42".into()),
        ("upstream a number", "upstream", "7".into()),
        ("console rdp", "console", "\"rdp\"".into()),
        ("vmid as a string", "vmid", "\"101\"".into()),
        ("vmid negative", "vmid", "-5".into()),
        ("nbf as a string", "nbf", "\"0\"".into()),
        ("max_session negative", "max_session", "-1".into()),
        ("ip a number", "ip", "4".into()),
        ("aud a number", "aud", "5".into()),
        ("guest kvm", "guest", "\"kvm\"".into()),
        ("node null", "node", "null".into()),
    ];
    for (name, k, val) in &wrong {
        add(
            name,
            jwt_raw(HDR, &claims_json(&[(k, val.as_str())], &[]), &key),
            401,
        );
    }
    add(
        "duplicate exp",
        jwt_raw(HDR, &format!("{{\"exp\":1,{}", &good_claims()[1..]), &key),
        401,
    );
    add("payload array", jwt_raw(HDR, "[]", &key), 401);
    add("payload null", jwt_raw(HDR, "null", &key), 401);
    add(
        "expired",
        jwt_raw(
            HDR,
            &claims_json(
                &[
                    ("exp", &format!("{}", n - 10)),
                    ("iat", &format!("{}", n - 30)),
                ],
                &[],
            ),
            &key,
        ),
        401,
    );
    add(
        "future iat",
        jwt_raw(
            HDR,
            &claims_json(
                &[
                    ("iat", &format!("{}", n + 60)),
                    ("exp", &format!("{}", n + 90)),
                ],
                &[],
            ),
            &key,
        ),
        401,
    );
    add(
        "nbf in the future",
        jwt_raw(
            HDR,
            &claims_json(&[("nbf", &format!("{}", n + 60))], &[]),
            &key,
        ),
        401,
    );
    add(
        "ttl over max",
        jwt_raw(
            HDR,
            &claims_json(&[("exp", &format!("{}", n + 500))], &[]),
            &key,
        ),
        401,
    );
    add(
        "unknown upstream",
        jwt_raw(
            HDR,
            &claims_json(&[("upstream", "\"elsewhere\"")], &[]),
            &key,
        ),
        403,
    );
    let good = good_ticket();
    add("huge ticket", format!("{good}{}", "A".repeat(5000)), 401);
    add("padded base64", format!("{}=", good), 401);
    add(
        "two segments",
        good.rsplit_once('.').unwrap().0.to_string(),
        401,
    );
    add("four segments", format!("{good}.abc"), 401);
    add("empty ticket", String::new(), 401);
    add("percent-encoded ticket", good.replacen('.', "%2E", 1), 401);
    add(
        "standard base64 alphabet",
        good.replace('-', "+").replace('_', "/") + "+/",
        401,
    );
    let mut flipped = good.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    add("flipped byte", String::from_utf8(flipped).unwrap(), 401);
    v
}

fn proxy_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| {
        v.push(Case {
            name: name.into(),
            request: bytes,
            frames: vec![],
            want: Want::Dropped,
        })
    };
    let sig = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    add("no header", upgrade("/console", ""));
    add(
        "v1 no CRLF",
        format!("PROXY TCP4 1.2.3.4 5.6.7.8 1 2{}", " ".repeat(120)).into_bytes(),
    );
    add("v1 TCP5", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec());
    add(
        "v1 bad ip",
        b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n".to_vec(),
    );
    add(
        "v1 port 99999",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n".to_vec(),
    );
    add(
        "v1 leading zero port",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(),
    );
    add(
        "v1 extra field",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
    );
    add(
        "v1 v6 addr for TCP4",
        b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
    );
    add(
        "v2 version 1",
        [sig.clone(), vec![0x11, 0x11, 0, 12], vec![0; 12]].concat(),
    );
    add(
        "v2 command 2",
        [sig.clone(), vec![0x22, 0x11, 0, 12], vec![0; 12]].concat(),
    );
    add(
        "v2 bad family",
        [sig.clone(), vec![0x21, 0x99, 0, 12], vec![0; 12]].concat(),
    );
    add(
        "v2 length too big",
        [sig.clone(), vec![0x21, 0x11, 0xff, 0xff]].concat(),
    );
    add(
        "v2 truncated addresses",
        [sig.clone(), vec![0x21, 0x11, 0, 4], vec![1, 2, 3, 4]].concat(),
    );
    add(
        "half a signature then junk",
        [sig[..6].to_vec(), b"junk!!!!!!".to_vec()].concat(),
    );
    v
}

/// Sends one case and checks the exact answer.
fn run_case(relay: &Relay, case: &Case) {
    let mut c = relay.conn();
    let _ = c.write_all(&case.request);
    let _ = c.flush();
    match case.want {
        Want::Dropped => {
            let mut b = [0u8; 256];
            let r = c.read(&mut b);
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "{}: expected a silent drop, got {r:?}",
                case.name
            );
        }
        Want::Status(want) => {
            let (status, head, _) = read_response_head(&mut c);
            assert_eq!(status, want, "{}: {head}", case.name);
            if want == 101 {
                assert!(
                    !head
                        .to_ascii_lowercase()
                        .contains("sec-websocket-extensions"),
                    "{}",
                    case.name
                );
            } else {
                assert!(head.contains("Connection: close"), "{}", case.name);
            }
        }
        Want::Close(code) => {
            let mut r = with_ticket(&good_ticket());
            r.extend_from_slice(&case.frames);
            let _ = c.write_all(&r);
            let (status, _, mut rest) = read_response_head(&mut c);
            assert_eq!(status, 101, "{}", case.name);
            let f = read_frame(&mut c, &mut rest).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(close_code(&f), Some(code), "{}", case.name);
        }
    }
}

fn good_session_works(relay: &Relay, proxy: bool) {
    let mut c = if proxy {
        let mut tcp = std::net::TcpStream::connect(relay.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.write_all(b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 443\r\n")
            .unwrap();
        Conn::Plain(tcp)
    } else {
        relay.conn()
    };
    c.write_all(&with_ticket(&good_ticket())).unwrap();
    let (status, _, mut rest) = read_response_head(&mut c);
    assert_eq!(status, 101);
    write_frame(&mut c, true, 2, b"alive?", true);
    let f = read_frame(&mut c, &mut rest).unwrap();
    assert_eq!(f.payload, b"alive?");
}

fn hostile_relay(echo: &Server, proxy: bool) -> Relay {
    let mut b = RelayBuilder::new(false)
        .limits("max_frame = \"64KiB\"\nhandshake_timeout = \"2s\"")
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr));
    if proxy {
        b = b.server("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]");
    }
    b.start()
}

/// One case on a relay of its own: the exact answer, then a good session on
/// the same relay; the relay is alive and never panicked.
fn check(cases: Vec<Case>, proxy: bool, name: &str) {
    let case = cases
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no hostile case named {name:?}"));
    let echo = Server::tcp_echo();
    let mut relay = hostile_relay(&echo, proxy);
    run_case(&relay, &case);
    good_session_works(&relay, proxy);
    assert!(relay.alive(), "{name}: the relay died");
    assert!(
        !relay.logs().contains("panicked"),
        "{name}: the relay panicked"
    );
}

/// Every case a builder makes has exactly one test below.
fn each_case_has_a_test(cases: Vec<Case>, tested: &[&str]) {
    let made: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    let untested: Vec<_> = made.iter().filter(|n| !tested.contains(n)).collect();
    let unknown: Vec<_> = tested.iter().filter(|n| !made.contains(n)).collect();
    assert!(
        untested.is_empty() && unknown.is_empty(),
        "cases without a test: {untested:?}; tests without a case: {unknown:?}"
    );
    let mut once = made.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), made.len(), "two cases share a name");
    assert_eq!(tested.len(), made.len(), "a case is listed twice");
}

/// One `#[test]` per case, in a module per builder, so a failing case hides
/// none of the others: `cargo test --test hostile ticket::` runs one group,
/// `ticket::expired` one case. Each group also checks that its list below
/// names every case its builder makes.
macro_rules! one_test_per_case {
    ($group:ident, $build:ident, proxy: $proxy:literal; $($test:ident: $name:literal,)+) => {
        mod $group {
            $(
                #[test]
                fn $test() {
                    super::check(super::$build(), $proxy, $name);
                }
            )+

            #[test]
            fn every_case_has_a_test() {
                super::each_case_has_a_test(super::$build(), &[$($name),+]);
            }
        }
    };
}

one_test_per_case! { http, http_cases, proxy: false;
    te_chunked: "te chunked",
    te_identity: "te identity",
    content_length_body: "content-length body",
    cl_and_te: "cl and te",
    two_content_lengths: "two content-lengths",
    te_with_space_before_colon: "te with space before colon",
    duplicate_host: "duplicate host",
    missing_host: "missing host",
    empty_host: "empty host",
    absolute_form_target: "absolute-form target",
    asterisk_target: "asterisk target",
    over_long_target: "over-long target",
    version_http_1_0: "version HTTP/1.0",
    version_http_2_0: "version HTTP/2.0",
    version_lowercase_http: "version http/1.1",
    version_http_1_1x: "version HTTP/1.1x",
    version_http_0_9: "version HTTP/0.9",
    method_post: "method POST",
    method_put: "method PUT",
    method_delete: "method DELETE",
    method_options: "method OPTIONS",
    method_head: "method HEAD",
    method_patch: "method PATCH",
    method_lowercase_get: "method get",
    method_trace: "method TRACE",
    connect_method: "connect method",
    method_with_nul: "method with NUL",
    header_without_colon: "header without colon",
    obs_fold: "obs-fold",
    nul_in_value: "NUL in value",
    non_utf8_value: "non-UTF-8 value",
    invalid_utf8_value: "invalid UTF-8 value",
    bare_lf_lines: "bare LF lines",
    cr_without_lf: "CR without LF",
    head_over_the_cap: "head over the cap",
    too_many_headers: "too many headers",
    space_in_header_name: "space in header name",
    empty_header_name: "empty header name",
    binary_junk: "binary junk",
    tls_hello_on_plain_port: "TLS hello on plain port",
    path_root: "path /",
    path_trailing_slash: "path /console/",
    path_upper_case: "path /CONSOLE",
    path_percent_20: "path /console%20",
    path_double_slash: "path //console",
    path_dot_dot: "path /console/../console",
    path_consolex: "path /consolex",
    plain_get: "plain GET",
}

one_test_per_case! { handshake, handshake_cases, proxy: false;
    missing_key: "missing key",
    short_key: "short key",
    long_key: "long key",
    non_base64_key: "non-base64 key",
    unpadded_key: "unpadded key",
    two_keys: "two keys",
    version_8: "version '8'",
    version_12: "version '12'",
    version_14: "version '14'",
    version_13_and_8: "version '13, 8'",
    version_abc: "version 'abc'",
    version_empty: "version ''",
    missing_version: "missing version",
    two_versions: "two versions",
    missing_upgrade: "missing upgrade",
    upgrade_h2c: "upgrade h2c",
    upgrade_websocket2: "upgrade websocket2",
    missing_connection: "missing connection",
    connection_keep_alive: "connection keep-alive",
    connection_close: "connection close",
    hundreds_of_subprotocols: "hundreds of subprotocols",
    nine_subprotocols: "nine subprotocols",
    bad_subprotocol_token: "bad subprotocol token",
    subprotocol_with_slash: "subprotocol with slash",
    ticket_in_query_and_subprotocol: "ticket in query and subprotocol",
    extensions_offered: "extensions offered",
    base64_subprotocol_only: "base64 subprotocol only",
}

one_test_per_case! { frame, frame_cases, proxy: false;
    unmasked_binary: "unmasked binary",
    unmasked_ping: "unmasked ping",
    rsv1: "rsv1",
    rsv2: "rsv2",
    rsv3: "rsv3",
    all_rsv: "all rsv",
    reserved_opcode_0x3: "reserved opcode 0x3",
    reserved_opcode_0x4: "reserved opcode 0x4",
    reserved_opcode_0x5: "reserved opcode 0x5",
    reserved_opcode_0x6: "reserved opcode 0x6",
    reserved_opcode_0x7: "reserved opcode 0x7",
    reserved_opcode_0xb: "reserved opcode 0xb",
    reserved_opcode_0xc: "reserved opcode 0xc",
    reserved_opcode_0xd: "reserved opcode 0xd",
    reserved_opcode_0xe: "reserved opcode 0xe",
    reserved_opcode_0xf: "reserved opcode 0xf",
    control_8_over_125: "control 8 over 125",
    fragmented_control_8: "fragmented control 8",
    control_9_over_125: "control 9 over 125",
    fragmented_control_9: "fragmented control 9",
    control_10_over_125: "control 10 over 125",
    fragmented_control_10: "fragmented control 10",
    continuation_without_start: "continuation without start",
    new_message_inside_a_fragmented_one: "new message inside a fragmented one",
    length_64_bit_top_bit: "64-bit length top bit",
    length_one_over_the_cap: "length one over the cap",
    length_2_pow_40: "length 2^40",
    length_2_pow_62: "length 2^62",
    close_with_1_byte_payload: "close with 1-byte payload",
    close_code_0: "close code 0",
    close_code_999: "close code 999",
    close_code_1004: "close code 1004",
    close_code_1005: "close code 1005",
    close_code_1006: "close code 1006",
    close_code_1015: "close code 1015",
    close_code_1016: "close code 1016",
    close_code_2000: "close code 2000",
    close_code_2999: "close code 2999",
    close_code_5000: "close code 5000",
    close_code_65535: "close code 65535",
    close_reason_not_utf8: "close reason not UTF-8",
}

one_test_per_case! { ticket, ticket_cases, proxy: false;
    alg_none: "alg none",
    alg_hs512: "alg HS512",
    alg_rs256: "alg RS256",
    alg_es256: "alg ES256",
    alg_lowercase: "alg lowercase",
    alg_trailing_space: "alg trailing space",
    alg_none_unsigned: "alg none unsigned",
    missing_alg: "missing alg",
    alg_number: "alg number",
    unknown_kid: "unknown kid",
    missing_kid: "missing kid",
    kid_path_traversal: "kid path traversal",
    kid_number: "kid number",
    kid_empty: "kid empty",
    kid_with_nul: "kid with NUL",
    crit_header: "crit header",
    duplicate_alg: "duplicate alg",
    header_not_json: "header not JSON",
    header_array: "header array",
    wrong_key: "wrong key",
    key_confusion_signed_with_base64_text: "key confusion: signed with the base64 text",
    missing_exp: "missing exp",
    missing_iat: "missing iat",
    missing_jti: "missing jti",
    missing_sub: "missing sub",
    missing_upstream: "missing upstream",
    missing_console: "missing console",
    exp_as_a_string: "exp as a string",
    exp_with_a_fraction: "exp with a fraction",
    exp_negative: "exp negative",
    exp_null: "exp null",
    iat_as_a_string: "iat as a string",
    jti_a_number: "jti a number",
    jti_too_short: "jti too short",
    jti_too_long: "jti too long",
    sub_empty: "sub empty",
    sub_a_number: "sub a number",
    upstream_a_number: "upstream a number",
    console_rdp: "console rdp",
    vmid_as_a_string: "vmid as a string",
    vmid_negative: "vmid negative",
    nbf_as_a_string: "nbf as a string",
    max_session_negative: "max_session negative",
    ip_a_number: "ip a number",
    aud_a_number: "aud a number",
    guest_kvm: "guest kvm",
    node_null: "node null",
    duplicate_exp: "duplicate exp",
    payload_array: "payload array",
    payload_null: "payload null",
    expired: "expired",
    future_iat: "future iat",
    nbf_in_the_future: "nbf in the future",
    ttl_over_max: "ttl over max",
    unknown_upstream: "unknown upstream",
    huge_ticket: "huge ticket",
    padded_base64: "padded base64",
    two_segments: "two segments",
    four_segments: "four segments",
    empty_ticket: "empty ticket",
    percent_encoded_ticket: "percent-encoded ticket",
    standard_base64_alphabet: "standard base64 alphabet",
    flipped_byte: "flipped byte",
}

one_test_per_case! { proxy, proxy_cases, proxy: true;
    no_header: "no header",
    v1_no_crlf: "v1 no CRLF",
    v1_tcp5: "v1 TCP5",
    v1_bad_ip: "v1 bad ip",
    v1_port_99999: "v1 port 99999",
    v1_leading_zero_port: "v1 leading zero port",
    v1_extra_field: "v1 extra field",
    v1_v6_addr_for_tcp4: "v1 v6 addr for TCP4",
    v2_version_1: "v2 version 1",
    v2_command_2: "v2 command 2",
    v2_bad_family: "v2 bad family",
    v2_length_too_big: "v2 length too big",
    v2_truncated_addresses: "v2 truncated addresses",
    half_a_signature_then_junk: "half a signature then junk",
}

/// Every case twice on one relay, a good session after each in the first
/// round: the relay stays alive, never panics, and its memory does not grow
/// with the number of attacks. (Which case fails is what the tests above
/// tell, one test each.)
#[test]
fn one_relay_takes_every_case_twice_with_flat_memory() {
    let echo = Server::tcp_echo();
    let mut relay = hostile_relay(&echo, false);
    let cases: Vec<Case> = [
        http_cases(),
        handshake_cases(),
        frame_cases(),
        ticket_cases(),
    ]
    .concat();
    let proxy = proxy_cases();
    assert!(
        cases.len() + proxy.len() >= 150,
        "{} cases",
        cases.len() + proxy.len()
    );
    // Warm up, then measure memory across all cases.
    for _ in 0..20 {
        good_session_works(&relay, false);
    }
    let rss_before = relay.rss_kib();
    for case in &cases {
        run_case(&relay, case);
        good_session_works(&relay, false);
    }
    // And again: memory must not grow with the number of attacks.
    for case in &cases {
        run_case(&relay, case);
    }
    good_session_works(&relay, false);
    let grown = relay.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 8 * 1024,
        "relay RSS grew {grown} KiB over {} hostile cases",
        2 * cases.len()
    );
    assert!(relay.alive());
    assert!(!relay.logs().contains("panicked"));

    let mut prelay = hostile_relay(&echo, true);
    for case in &proxy {
        run_case(&prelay, case);
        good_session_works(&prelay, true);
    }
    assert!(prelay.alive());
    assert!(!prelay.logs().contains("panicked"));
    eprintln!("hostile cases passed: {}", cases.len() + proxy.len());
}

#[test]
fn replayed_ticket_is_refused_while_the_first_session_lives() {
    let echo = Server::tcp_echo();
    let relay = hostile_relay(&echo, false);
    let t = good_ticket();
    let mut first = relay.conn();
    first.write_all(&with_ticket(&t)).unwrap();
    assert_eq!(read_response_head(&mut first).0, 101);
    for _ in 0..5 {
        let (status, _, _, _) = relay.raw(&with_ticket(&t));
        assert_eq!(status, 403);
    }
}

#[test]
fn one_byte_per_second_is_cut_at_the_deadline() {
    let echo = Server::tcp_echo();
    let relay = hostile_relay(&echo, false);
    let mut c = relay.conn();
    let req = with_ticket(&good_ticket());
    let mut cut = false;
    for b in req.iter().take(5) {
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let mut buf = [0u8; 64];
    assert!(cut || matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert!(relay.wait_log("handshake_timeout"));
    good_session_works(&relay, false);
}
