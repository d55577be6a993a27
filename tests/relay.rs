//! The relay end to end: real `nexor-relay serve`, real rustls, real
//! sockets, upstreams on loopback. Run on both drivers by the README's test
//! command (`MONOIO_FORCE_LEGACY_DRIVER=1` for epoll).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use nexor_relay::ticket::Console;
use tungstenite::Message;

const SIZES: &[usize] = &[0, 1, 125, 126, 65535, 65536, 300_000, 1 << 20];

fn relay_with(tls: bool, upstreams: &[(&str, String)]) -> Relay {
    let mut b = RelayBuilder::new(tls);
    for (name, body) in upstreams {
        b = b.upstream(name, body);
    }
    b.start()
}

/// Sends each size and reads the echo back. A TCP upstream cannot echo an
/// empty message (it is zero bytes on the stream), so `skip_empty` there.
fn echo_roundtrips(ws: &mut tungstenite::WebSocket<Conn>, skip_empty: bool) {
    for (i, &len) in SIZES.iter().enumerate() {
        if len == 0 && skip_empty {
            continue;
        }
        let data = pattern(len, i as u8);
        ws.send(Message::binary(data.clone())).unwrap();
        // A tcp echo may cut one message into several frames: gather bytes.
        let mut got = Vec::new();
        while got.len() < len || (len == 0 && got.is_empty()) {
            match ws.read().unwrap() {
                Message::Binary(b) => {
                    got.extend_from_slice(&b);
                    if len == 0 {
                        break;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got.len(), len, "size {len}");
        assert!(got == data, "payload of {len} bytes differs");
    }
}

#[test]
fn logs_the_driver_it_runs() {
    let relay = relay_with(false, &[("d", "kind = \"demo\"".into())]);
    let want = if std::env::var("MONOIO_FORCE_LEGACY_DRIVER").is_ok_and(|v| v == "1") {
        "epoll"
    } else {
        "io_uring"
    };
    assert!(
        relay.wait_log(&format!("\"driver\":\"{want}\"")),
        "{}",
        relay.logs()
    );
}

#[test]
fn wss_query_ticket_to_ws_echo_is_byte_exact() {
    let echo = Server::ws_echo(false);
    let relay = relay_with(
        true,
        &[(
            "any",
            format!("kind = \"ws\"\nurl = \"ws://{}/\"", echo.addr),
        )],
    );
    let t = relay.ticket("any");
    let (mut ws, resp) = relay
        .ws(&format!("/console?ticket={t}"), &["binary"])
        .unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "binary"
    );
    echo_roundtrips(&mut ws, false);
    ws.close(None).unwrap();
}

#[test]
fn wss_subprotocol_ticket_to_tcp_echo_is_byte_exact() {
    let echo = Server::tcp_echo();
    let relay = relay_with(
        true,
        &[("lab", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
    );
    let t = relay.ticket("lab");
    let ticket_proto = format!("nexor.ticket.{t}");
    let (mut ws, resp) = relay.ws("/console", &["binary", &ticket_proto]).unwrap();
    // The ticket subprotocol is never echoed; `binary` is selected.
    assert_eq!(
        resp.headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .count(),
        1
    );
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "binary"
    );
    echo_roundtrips(&mut ws, true);
}

#[test]
fn wss_upstream_with_pinned_fingerprint_and_ca_file() {
    let echo = Server::ws_echo(true);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs().ca_pem).unwrap();
    let wrong = "00:".repeat(31) + "00";
    let relay = relay_with(
        false,
        &[
            (
                "pinned",
                format!(
                    "kind = \"ws\"\nurl = \"wss://127.0.0.1:{}/\"\nfingerprint = \"{}\"",
                    echo.addr.port(),
                    leaf_fingerprint().to_lowercase()
                ),
            ),
            (
                "ca",
                format!(
                    "kind = \"ws\"\nurl = \"wss://localhost:{}/\"\nca_file = \"{}\"",
                    echo.addr.port(),
                    ca.display()
                ),
            ),
            (
                "wrongpin",
                format!(
                    "kind = \"ws\"\nurl = \"wss://127.0.0.1:{}/\"\nfingerprint = \"{wrong}\"",
                    echo.addr.port()
                ),
            ),
            (
                "roots",
                format!(
                    "kind = \"ws\"\nurl = \"wss://localhost:{}/\"",
                    echo.addr.port()
                ),
            ),
        ],
    );
    for ok in ["pinned", "ca"] {
        let (mut ws, _) = relay
            .ws(
                &format!("/console?ticket={}", relay.ticket(ok)),
                &["binary"],
            )
            .unwrap();
        ws.send(Message::binary(b"over tls".to_vec())).unwrap();
        assert_eq!(
            ws.read().unwrap(),
            Message::binary(b"over tls".to_vec()),
            "{ok}"
        );
    }
    // A certificate that is neither pinned nor from a system root: 502.
    for bad in ["wrongpin", "roots"] {
        let req = relay.upgrade_request(&format!("/console?ticket={}", relay.ticket(bad)), "");
        let (status, _, _, _) = relay.raw(&req);
        assert_eq!(status, 502, "{bad}");
    }
}

#[test]
fn fragmented_messages_pass_through() {
    let echo = Server::ws_echo(false);
    let relay = relay_with(
        false,
        &[(
            "any",
            format!("kind = \"ws\"\nurl = \"ws://{}/\"", echo.addr),
        )],
    );
    let (status, head, mut c, rest) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("any")), ""));
    assert_eq!(status, 101, "{head}");
    let parts: [&[u8]; 3] = [b"frag", b"men", b"ted!"];
    // A ping between fragments is allowed (RFC 6455 §5.4) and answered by the relay.
    let mut bytes = frame_bytes(false, 2, parts[0], true);
    bytes.extend(frame_bytes(true, 9, b"mid", true));
    bytes.extend(frame_bytes(false, 0, parts[1], true));
    bytes.extend(frame_bytes(true, 0, parts[2], true));
    // Written one byte at a time: the relay must cope with any split.
    for b in &bytes {
        c.write_all(&[*b]).unwrap();
    }
    c.flush().unwrap();
    let mut pending = rest;
    let mut got = Vec::new();
    let mut pong = false;
    // The pong may come before or after the echoed message: read both.
    while got.len() < 11 || !pong {
        let f = read_frame(&mut c, &mut pending).unwrap();
        assert!(!f.masked);
        match f.opcode {
            10 => {
                assert_eq!(f.payload, b"mid");
                pong = true;
            }
            2 => got.extend(f.payload),
            op => panic!("opcode {op}"),
        }
    }
    assert!(pong, "the relay answers pings itself");
    assert_eq!(got, b"fragmented!");
}

#[test]
fn pings_are_hop_by_hop_on_both_legs() {
    let (up, conns) = Server::ws_manual();
    let relay = RelayBuilder::new(false)
        .server("ping_interval = \"1s\"")
        .upstream("m", &format!("kind = \"ws\"\nurl = \"ws://{}/\"", up.addr))
        .start();
    let (status, _, mut c, rest) = relay.raw(&relay.upgrade_request(
        &format!("/console?ticket={}", relay.ticket("m")),
        "Sec-WebSocket-Protocol: binary\r\n",
    ));
    assert_eq!(status, 101);
    let (mut u, upending) = conns.recv_timeout(IO_TIMEOUT).unwrap();
    let (mut bp, mut upd) = (rest, upending);

    // Upstream pings: the relay answers with a masked pong and the browser sees nothing.
    write_frame(&mut u, true, 9, b"u-ping", false);
    let f = read_frame(&mut u, &mut upd).unwrap();
    let f = if f.opcode == 9 {
        read_frame(&mut u, &mut upd).unwrap()
    } else {
        f
    };
    assert_eq!(
        (f.opcode, f.masked, f.payload.as_slice()),
        (10, true, &b"u-ping"[..])
    );

    // Keepalive: both legs get a ping within the interval; the browser's
    // pong is swallowed, not forwarded.
    let f = read_frame(&mut c, &mut bp).unwrap();
    assert_eq!((f.opcode, f.masked), (9, false));
    write_frame(&mut c, true, 10, &f.payload, true);
    let mut saw_ping = false;
    for _ in 0..3 {
        let f = read_frame(&mut u, &mut upd).unwrap();
        assert_ne!(f.opcode, 10, "a browser pong reached the upstream");
        if f.opcode == 9 {
            assert!(f.masked, "client-side frames are masked");
            saw_ping = true;
            break;
        }
    }
    assert!(saw_ping);
    // Data still flows both ways after all that.
    write_frame(&mut c, true, 2, b"up", true);
    let f = loop {
        let f = read_frame(&mut u, &mut upd).unwrap();
        if f.opcode == 2 {
            break f;
        }
    };
    assert_eq!(f.payload, b"up");
    write_frame(&mut u, true, 2, b"down", false);
    let f = loop {
        let f = read_frame(&mut c, &mut bp).unwrap();
        if f.opcode == 2 {
            break f;
        }
    };
    assert_eq!(f.payload, b"down");
}

#[test]
fn browser_close_goes_end_to_end() {
    let (up, conns) = Server::ws_manual();
    let relay = relay_with(
        false,
        &[("m", format!("kind = \"ws\"\nurl = \"ws://{}/\"", up.addr))],
    );
    let (_, _, mut c, mut bp) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("m")), ""));
    let (mut u, mut upd) = conns.recv_timeout(IO_TIMEOUT).unwrap();
    let close = frame_bytes(true, 8, &[0x10, 0xe1, b'b', b'y', b'e'], true);
    c.write_all(&close).unwrap();
    // Forwarded byte for byte (same mask key).
    let mut got = vec![0u8; close.len()];
    u.read_exact(&mut got).unwrap();
    assert_eq!(got, close);
    write_frame(&mut u, true, 8, &[0x10, 0xe1], false);
    let f = read_frame(&mut c, &mut bp).unwrap();
    assert_eq!(close_code(&f), Some(4321));
    // Then the relay closes the TCP connection.
    assert!(read_frame(&mut c, &mut bp).is_err());
    let _ = &mut upd;
    assert!(relay.wait_log("\"code\":4321"), "{}", relay.logs());
}

#[test]
fn upstream_close_goes_end_to_end() {
    let (up, conns) = Server::ws_manual();
    let relay = relay_with(
        true,
        &[("m", format!("kind = \"ws\"\nurl = \"ws://{}/\"", up.addr))],
    );
    let t = relay.ticket("m");
    let (mut ws, _) = relay.ws(&format!("/console?ticket={t}"), &[]).unwrap();
    let (mut u, mut upd) = conns.recv_timeout(IO_TIMEOUT).unwrap();
    write_frame(&mut u, true, 8, &[0x0f, 0xa0, b'v', b'm'], false);
    match ws.read().unwrap() {
        Message::Close(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 4000);
            assert_eq!(cf.reason.as_str(), "vm");
        }
        other => panic!("{other:?}"),
    }
    // tungstenite answers the close; the relay forwards it upstream.
    let _ = ws.flush();
    let f = read_frame(&mut u, &mut upd).unwrap();
    assert_eq!((f.opcode, close_code(&f), f.masked), (8, Some(4000), true));
}

#[test]
fn tcp_upstream_eof_closes_the_browser_with_1000() {
    let up = Server::start(|mut tcp| {
        tcp.write_all(b"console says bye").unwrap();
    });
    let relay = relay_with(
        false,
        &[("t", format!("kind = \"tcp\"\naddr = \"{}\"", up.addr))],
    );
    let (mut ws, _) = relay
        .ws(
            &format!("/console?ticket={}", relay.ticket("t")),
            &["binary"],
        )
        .unwrap();
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => got.extend_from_slice(&b),
            Ok(Message::Close(Some(cf))) => {
                assert_eq!(u16::from(cf.code), 1000);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"console says bye");
}

#[test]
fn browser_close_to_tcp_upstream_is_answered_by_the_relay() {
    let echo = Server::tcp_echo();
    let relay = relay_with(
        false,
        &[("t", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
    );
    let (_, _, mut c, mut bp) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), ""));
    write_frame(&mut c, true, 8, &[0x03, 0xe8], true);
    let f = read_frame(&mut c, &mut bp).unwrap();
    assert_eq!(close_code(&f), Some(1000));
    assert!(read_frame(&mut c, &mut bp).is_err());
}

#[test]
fn upstream_refused_is_502_and_silent_is_504() {
    let silent = Server::silent();
    let relay = relay_with(
        true,
        &[
            (
                "down",
                format!("kind = \"tcp\"\naddr = \"{}\"", refused_addr()),
            ),
            (
                "wsdown",
                format!("kind = \"ws\"\nurl = \"ws://{}/\"", refused_addr()),
            ),
            (
                "mute",
                format!(
                    "kind = \"ws\"\nurl = \"ws://{}/\"\nconnect_timeout = \"1s\"",
                    silent.addr
                ),
            ),
        ],
    );
    for (up, want) in [("down", 502), ("wsdown", 502), ("mute", 504)] {
        let (status, head, mut c, rest) =
            relay.raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket(up)), ""));
        assert_eq!(status, want, "{up}: {head}");
        let body = read_body(&mut c, &head, rest);
        assert!(
            !body.contains("127.0.0.1") && body.lines().count() == 1,
            "{body}"
        );
    }
}

#[test]
fn refusals_have_their_status_and_leak_nothing() {
    let echo = Server::tcp_echo();
    let relay = relay_with(
        false,
        &[("t", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
    );
    let good = relay.ticket("t");
    let mut expired = Relay::claims("t", Console::Vnc);
    expired.iat = now() - 100;
    expired.exp = now() - 10;
    let expired = relay.sign(&expired);
    let unknown = relay.sign(&Relay::claims("nope", Console::Vnc));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (relay.upgrade_request(&format!("/other?ticket={good}"), ""), 404),
        (b"GET /console HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 426),
        (relay.upgrade_request("/console", ""), 401),
        (relay.upgrade_request("/console?ticket=abc.def.ghi", ""), 401),
        (relay.upgrade_request(&format!("/console?ticket={expired}"), ""), 401),
        (relay.upgrade_request(&format!("/console?ticket={unknown}"), ""), 403),
        (relay.upgrade_request(&format!("/console?ticket={good}&ticket={good}"), ""), 400),
        (relay.upgrade_request(&format!("/console?ticket={good}"), "Sec-WebSocket-Protocol: nexor.ticket.x.y.z\r\n"), 400),
        (relay.upgrade_request(&format!("/console?ticket={good}"), "Content-Length: 3\r\n"), 400),
        (b"GET /console HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec(), 426),
        (b"\x00\x01garbage\r\n\r\n".to_vec(), 400),
    ];
    // Every case runs and every mismatch is reported: one wrong answer
    // does not hide the others.
    let mut wrong = Vec::new();
    for (req, want) in cases {
        let what = String::from_utf8_lossy(&req[..req.len().min(60)]).into_owned();
        let (status, head, mut c, rest) = relay.raw(&req);
        let body = read_body(&mut c, &head, rest);
        let mut problems = Vec::new();
        if status != want {
            problems.push(format!("status {status}, want {want}"));
        }
        if !head.contains("Connection: close") {
            problems.push("no Connection: close".into());
        }
        if body.lines().count() != 1 {
            problems.push(format!("body not one line: {body:?}"));
        }
        if body.contains(&good) || body.contains("127.0.0.1") {
            problems.push(format!("body leaks the ticket or an address: {body:?}"));
        }
        if want == 426
            && head.contains("Sec-WebSocket-Version")
            && !head.contains("Sec-WebSocket-Version: 13")
        {
            problems.push("426 without Sec-WebSocket-Version: 13".into());
        }
        if !problems.is_empty() {
            wrong.push(format!("{what:?}: {}", problems.join("; ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} refusals wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The relay is still healthy after all that.
    let (mut ws, _) = relay
        .ws(&format!("/console?ticket={}", relay.ticket("t")), &[])
        .unwrap();
    ws.send(Message::binary(b"ok".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(b"ok".to_vec()));
}

#[test]
fn frame_violations_get_their_close_codes() {
    let echo = Server::tcp_echo();
    let relay = RelayBuilder::new(false)
        .limits("max_frame = \"64KiB\"")
        .upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (frame_bytes(true, 2, b"unmasked", false), 1002),
        (frame_bytes(true, 2, &vec![0u8; 65537], true), 1009),
        (
            {
                let mut f = frame_bytes(true, 2, b"x", true);
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        (frame_bytes(true, 3, b"", true), 1002),
        (frame_bytes(true, 9, &[0u8; 126], true), 1002),
        (frame_bytes(true, 0, b"cont", true), 1002),
        (frame_bytes(true, 8, &[0x03], true), 1002),
        (frame_bytes(true, 8, &[0x03, 0xed], true), 1002),
    ];
    // Every case runs; all mismatches are reported together.
    let mut wrong = Vec::new();
    for (bytes, want) in cases {
        let what = format!("{:02x?}", &bytes[..bytes.len().min(16)]);
        let (status, _, mut c, mut bp) = relay
            .raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), ""));
        if status != 101 {
            wrong.push(format!("{what}: upgrade got {status}"));
            continue;
        }
        let _ = c.write_all(&bytes);
        match read_frame(&mut c, &mut bp) {
            Ok(f) if close_code(&f) == Some(want) => {}
            Ok(f) => wrong.push(format!("{what}: close {:?}, want {want}", close_code(&f))),
            Err(e) => wrong.push(format!("{what}: no frame ({e}), want close {want}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} frames wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn large_upstream_stream_reaches_the_browser_intact() {
    const TOTAL: usize = 8 << 20;
    let up = Server::start(|mut tcp| {
        let data = pattern(TOTAL, 7);
        let _ = tcp.write_all(&data);
    });
    let relay = relay_with(
        true,
        &[("t", format!("kind = \"tcp\"\naddr = \"{}\"", up.addr))],
    );
    let (mut ws, _) = relay
        .ws(
            &format!("/console?ticket={}", relay.ticket("t")),
            &["binary"],
        )
        .unwrap();
    let mut got = Vec::with_capacity(TOTAL);
    while got.len() < TOTAL {
        match ws.read().unwrap() {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    }
    assert!(got == pattern(TOTAL, 7));
}

#[test]
fn demo_vnc_speaks_rfb_with_security_none() {
    let relay = relay_with(true, &[("demo", "kind = \"demo\"".into())]);
    let (mut ws, _) = relay
        .ws(
            &format!("/console?ticket={}", relay.ticket("demo")),
            &["binary"],
        )
        .unwrap();
    let mut rx = Vec::new();
    let need = |ws: &mut tungstenite::WebSocket<Conn>, n: usize, rx: &mut Vec<u8>| -> Vec<u8> {
        while rx.len() < n {
            if let Message::Binary(b) = ws.read().unwrap() {
                rx.extend_from_slice(&b);
            }
        }
        rx.drain(..n).collect()
    };
    assert_eq!(need(&mut ws, 12, &mut rx), b"RFB 003.008\n");
    ws.send(Message::binary(b"RFB 003.008\n".to_vec())).unwrap();
    assert_eq!(need(&mut ws, 2, &mut rx), [1, 1]);
    ws.send(Message::binary(vec![1])).unwrap();
    assert_eq!(need(&mut ws, 4, &mut rx), [0, 0, 0, 0]);
    ws.send(Message::binary(vec![1])).unwrap();
    let init = need(&mut ws, 24, &mut rx);
    assert_eq!(&init[..4], &[0x02, 0x80, 0x01, 0xe0], "640x480");
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    assert_eq!(need(&mut ws, name_len, &mut rx), b"nexor-relay demo");
    // A full update of a 16x16 corner: header + 16*16*4 bytes of Raw pixels.
    ws.send(Message::binary(vec![3, 0, 0, 0, 0, 0, 0, 16, 0, 16]))
        .unwrap();
    let upd = need(&mut ws, 4 + 12 + 16 * 16 * 4, &mut rx);
    assert_eq!(upd[0], 0);
    assert_eq!(&upd[4..12], &[0, 0, 0, 0, 0, 16, 0, 16]);
}

#[test]
fn demo_terminal_echoes_lines() {
    let relay = relay_with(false, &[("demo", "kind = \"demo\"".into())]);
    let mut c = Relay::claims("demo", Console::Term);
    c.sub = "someone".into();
    let t = relay.sign(&c);
    let (mut ws, _) = relay
        .ws(&format!("/console?ticket={t}"), &["binary"])
        .unwrap();
    ws.send(Message::binary(b"uptime\r".to_vec())).unwrap();
    let mut text = Vec::new();
    while !String::from_utf8_lossy(&text).contains("you typed: uptime") {
        if let Message::Binary(b) = ws.read().unwrap() {
            text.extend_from_slice(&b);
        }
    }
    assert!(String::from_utf8_lossy(&text).starts_with("nexor-relay demo terminal\r\n$ "));
}

#[test]
fn early_frames_after_the_head_are_not_lost() {
    let echo = Server::tcp_echo();
    let relay = relay_with(
        false,
        &[("t", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
    );
    let mut req = relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), "");
    req.extend(frame_bytes(true, 2, b"eager", true));
    let (status, _, mut c, mut bp) = relay.raw(&req);
    assert_eq!(status, 101);
    let f = read_frame(&mut c, &mut bp).unwrap();
    assert_eq!(f.payload, b"eager");
}

#[test]
fn slow_handshake_is_cut_at_the_deadline() {
    let relay = RelayBuilder::new(false)
        .limits("handshake_timeout = \"1s\"")
        .upstream("d", "kind = \"demo\"")
        .start();
    let mut c = relay.conn();
    c.write_all(b"GET /console HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut b = [0u8; 16];
    // Closed without an answer (a write may still succeed; the read sees EOF).
    let _ = c.write_all(b"Host: x\r\n");
    assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    assert!(relay.wait_log("handshake_timeout"));
}

// ---- failures are never recorded as clean ends ----

fn session_ends(relay: &Relay) -> Vec<serde_json::Value> {
    relay
        .logs()
        .lines()
        .filter(|l| l.contains("\"event\":\"session_end\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for the `n`th session_end line and returns it.
fn nth_end(relay: &Relay, n: usize) -> serde_json::Value {
    let t = std::time::Instant::now();
    loop {
        let ends = session_ends(relay);
        if ends.len() >= n {
            assert_eq!(ends.len(), n, "one session at a time: {}", relay.logs());
            return ends[n - 1].clone();
        }
        assert!(
            t.elapsed() < IO_TIMEOUT,
            "no session_end {n}: {}",
            relay.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_end(end: &serde_json::Value, code: u64, error: Option<&str>) {
    assert_eq!(end["code"], code, "{end}");
    match error {
        None => assert!(end.get("error").is_none(), "{end}"),
        Some(class) => {
            let e = end["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no error: {end}"));
            assert!(
                e == class || e.starts_with(&format!("{class}: ")),
                "want {class}: {end}"
            );
        }
    }
}

fn open_raw(relay: &Relay, upstream: &str) -> (Conn, Vec<u8>) {
    let (status, _, c, pending) = relay
        .raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket(upstream)), ""));
    assert_eq!(status, 101);
    (c, pending)
}

/// Reads frames until a close, answers it; returns its code.
fn read_close(c: &mut Conn, pending: &mut Vec<u8>) -> Option<u16> {
    loop {
        let f = read_frame(c, pending).ok()?;
        if f.opcode == 8 {
            let _ = c.write_all(&frame_bytes(true, 8, &f.payload, true));
            return close_code(&f);
        }
    }
}

#[test]
fn every_failure_has_an_audit_error_and_a_metric() {
    let bye = Server::start(|mut tcp| {
        tcp.write_all(b"console says bye").unwrap();
    });
    let rst = Server::start(|mut tcp| {
        let mut b = [0u8; 1];
        let _ = tcp.read(&mut b);
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let echo = Server::tcp_echo();
    let (ws, ws_conns) = Server::ws_manual();
    let relay = RelayBuilder::new(false)
        .server("ping_interval = \"1s\"\npong_timeout = \"1s\"")
        .upstream("bye", &format!("kind = \"tcp\"\naddr = \"{}\"", bye.addr))
        .upstream("rst", &format!("kind = \"tcp\"\naddr = \"{}\"", rst.addr))
        .upstream("echo", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .upstream("ws", &format!("kind = \"ws\"\nurl = \"ws://{}/\"", ws.addr))
        .start();
    let mut n = 0;

    // A tcp console that closes: a clean end, no error.
    let (mut c, mut p) = open_raw(&relay, "bye");
    assert_eq!(read_close(&mut c, &mut p), Some(1000));
    n += 1;
    check_end(&nth_end(&relay, n), 1000, None);

    // The console's TCP is reset: 1011 to the browser, upstream_reset.
    let (mut c, mut p) = open_raw(&relay, "rst");
    write_frame(&mut c, true, 2, b"x", true);
    assert_eq!(read_close(&mut c, &mut p), Some(1011));
    n += 1;
    let end = nth_end(&relay, n);
    check_end(&end, 1011, Some("upstream_reset"));
    assert!(end["error"].as_str().unwrap().contains("reset"), "{end}");

    // A ws upstream that vanishes: 1011 upstream_gone, upstream_eof.
    let (mut c, mut p) = open_raw(&relay, "ws");
    drop(ws_conns.recv_timeout(IO_TIMEOUT).unwrap());
    assert_eq!(read_close(&mut c, &mut p), Some(1011));
    n += 1;
    let end = nth_end(&relay, n);
    check_end(&end, 1011, Some("upstream_eof"));
    assert_eq!(end["reason"], "upstream_gone");

    // A ws upstream that breaks the protocol (a masked server frame).
    let (mut c, mut p) = open_raw(&relay, "ws");
    let (mut up, _) = ws_conns.recv_timeout(IO_TIMEOUT).unwrap();
    up.write_all(&frame_bytes(true, 2, b"masked", true))
        .unwrap();
    assert_eq!(read_close(&mut c, &mut p), Some(1011));
    n += 1;
    check_end(&nth_end(&relay, n), 1011, Some("upstream_protocol"));
    drop(up);

    // The browser goes away: FIN, then RST.
    let (c, _) = open_raw(&relay, "echo");
    c.tcp().shutdown(std::net::Shutdown::Write).unwrap();
    n += 1;
    check_end(&nth_end(&relay, n), 1006, Some("browser_eof"));
    drop(c);
    let (c, _) = open_raw(&relay, "echo");
    socket2::SockRef::from(c.tcp())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    n += 1;
    check_end(&nth_end(&relay, n), 1006, Some("browser_reset"));

    // The browser breaks the protocol.
    let (mut c, mut p) = open_raw(&relay, "echo");
    write_frame(&mut c, true, 2, b"unmasked", false);
    assert_eq!(read_close(&mut c, &mut p), Some(1002));
    n += 1;
    check_end(&nth_end(&relay, n), 1002, Some("browser_protocol"));

    // A browser that goes silent (reads nothing, answers no ping).
    let (c, _) = open_raw(&relay, "echo");
    n += 1;
    let end = nth_end(&relay, n);
    check_end(&end, 1006, Some("browser_pong_timeout"));
    assert_eq!(end["reason"], "pong_timeout");
    drop(c);

    // An upstream that goes silent while the browser talks: 1011 to it.
    let (mut c, mut p) = open_raw(&relay, "ws");
    let (up, _) = ws_conns.recv_timeout(IO_TIMEOUT).unwrap();
    let mut w = c.tcp().try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let talker = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if w.write_all(&frame_bytes(true, 2, b"still here", true))
                .is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(read_close(&mut c, &mut p), Some(1011));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    talker.join().unwrap();
    n += 1;
    check_end(&nth_end(&relay, n), 1011, Some("upstream_pong_timeout"));
    drop(up);

    let (_, m) = relay.admin_request("GET", "/metrics", None);
    for class in [
        "upstream_reset",
        "upstream_eof",
        "upstream_protocol",
        "browser_eof",
        "browser_reset",
        "browser_protocol",
        "browser_pong_timeout",
        "upstream_pong_timeout",
    ] {
        let line = format!("nexor_session_errors_total{{class=\"{class}\"}} 1");
        assert!(m.contains(&line), "{line}\n{m}");
    }
}

#[test]
fn a_tls_error_from_the_browser_is_browser_tls() {
    let echo = Server::tcp_echo();
    let relay = relay_with(
        true,
        &[("echo", format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))],
    );
    let (c, _) = open_raw(&relay, "echo");
    // An application-data record no key can open, under the TLS layer.
    let mut tcp = c.tcp().try_clone().unwrap();
    tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20])
        .and_then(|_| tcp.write_all(&[0x55; 0x20]))
        .unwrap();
    let end = nth_end(&relay, 1);
    check_end(&end, 1006, Some("browser_tls"));
    let (_, m) = relay.admin_request("GET", "/metrics", None);
    assert!(
        m.contains("nexor_session_errors_total{class=\"browser_tls\"} 1"),
        "{m}"
    );
}

// ---- the remaining classes: upstream_tls, browser_write, upstream_write ----

fn error_metric(relay: &Relay, class: &str) {
    let (_, m) = relay.admin_request("GET", "/metrics", None);
    let line = format!("nexor_session_errors_total{{class=\"{class}\"}} 1");
    assert!(m.contains(&line), "{line}\n{m}");
}

#[test]
fn a_tls_error_from_the_upstream_is_upstream_tls() {
    // A wss console that completes the TLS and WebSocket handshakes, then,
    // once the browser has its 101 (before it, the relay would still be in
    // its upstream handshake: a 502), sends an application-data record no
    // key can open.
    let (go, went) = std::sync::mpsc::channel::<()>();
    let went = std::sync::Mutex::new(went);
    let up = Server::start(move |tcp| {
        let c = rustls::ServerConnection::new(server_tls()).unwrap();
        let conn = Conn::ServerTls(Box::new(rustls::StreamOwned::new(c, tcp)));
        let Ok(mut ws) = tungstenite::accept(conn) else {
            return;
        };
        let Conn::ServerTls(s) = ws.get_mut() else {
            unreachable!()
        };
        if went.lock().unwrap().recv_timeout(IO_TIMEOUT).is_err() {
            return;
        }
        let sock = &mut s.sock;
        if sock
            .write_all(&[0x17, 0x03, 0x03, 0x00, 0x20])
            .and_then(|_| sock.write_all(&[0x55; 0x20]))
            .is_err()
        {
            return;
        }
        // Hold the connection until the relay drops it.
        let mut b = [0u8; 1024];
        while matches!(sock.read(&mut b), Ok(n) if n > 0) {}
    });
    let relay = relay_with(
        false,
        &[(
            "wss",
            format!(
                "kind = \"ws\"\nurl = \"wss://127.0.0.1:{}/\"\nfingerprint = \"{}\"",
                up.addr.port(),
                leaf_fingerprint()
            ),
        )],
    );
    let (mut c, mut p) = open_raw(&relay, "wss");
    go.send(()).unwrap();
    assert_eq!(read_close(&mut c, &mut p), Some(1011));
    let end = nth_end(&relay, 1);
    check_end(&end, 1011, Some("upstream_tls"));
    assert_eq!(end["reason"], "upstream_gone");
    error_metric(&relay, "upstream_tls");
}

/// A raw TCP console that hands each accepted connection to the test.
fn tcp_manual() -> (Server, std::sync::mpsc::Receiver<std::net::TcpStream>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let s = Server::start(move |tcp| {
        let _ = tx.lock().unwrap().send(tcp);
    });
    (s, rx)
}

/// A tcp session whose two ends both send and neither reads.
fn gridlocked() -> (Server, Relay, Conn, Vec<u8>, std::net::TcpStream) {
    let (srv, conns) = tcp_manual();
    // No pings: nothing but the test's own moves ends the session.
    let relay = RelayBuilder::new(false)
        .server("ping_interval = \"0s\"")
        .upstream("up", &format!("kind = \"tcp\"\naddr = \"{}\"", srv.addr))
        .start();
    let (c, p) = open_raw(&relay, "up");
    let up = conns.recv_timeout(IO_TIMEOUT).unwrap();
    gridlock(&c, &up);
    (srv, relay, c, p, up)
}

/// Floods both legs, reading nothing from either, until neither takes a
/// byte more for half a second. The relay forwards each direction with a
/// pump that writes all it read before it reads again; with both peers
/// full, each pump is parked in a write to a leg that will never drain and
/// neither has a read pending. A reset of either end can then only surface
/// as that parked write failing: `browser_write` or `upstream_write`. (A
/// pending read would see the reset first and make it `*_reset`; that is
/// why a merely idle session cannot provoke a write class.)
fn gridlock(browser: &Conn, upstream: &std::net::TcpStream) {
    const STALL: Duration = Duration::from_millis(500);
    let frame = frame_bytes(true, 2, &pattern(16 * 1024, 7), true);
    let raw = pattern(64 * 1024, 9);
    let b = browser.tcp();
    b.set_nonblocking(true).unwrap();
    upstream.set_nonblocking(true).unwrap();
    let (mut bpos, mut upos) = (0, 0);
    let start = std::time::Instant::now();
    let mut last = start;
    let push =
        |mut w: &std::net::TcpStream, data: &[u8], pos: &mut usize| match w.write(&data[*pos..]) {
            Ok(n) => {
                *pos = (*pos + n) % data.len();
                n > 0
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("flood: {e}"),
        };
    loop {
        let moved_b = push(b, &frame, &mut bpos);
        let moved_u = push(upstream, &raw, &mut upos);
        if moved_b || moved_u {
            last = std::time::Instant::now();
        } else if last.elapsed() >= STALL {
            break;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(start.elapsed() < IO_TIMEOUT, "the relay never stalled");
    }
    b.set_nonblocking(false).unwrap();
    upstream.set_nonblocking(false).unwrap();
}

#[test]
fn a_browser_reset_under_a_blocked_write_is_browser_write() {
    let (_srv, relay, c, _, up) = gridlocked();
    socket2::SockRef::from(c.tcp())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let end = nth_end(&relay, 1);
    check_end(&end, 1006, Some("browser_write"));
    assert_eq!(end["reason"], "browser_gone");
    error_metric(&relay, "browser_write");
    drop(up);
}

#[test]
fn an_upstream_reset_under_a_blocked_write_is_upstream_write() {
    let (_srv, relay, mut c, mut p, up) = gridlocked();
    socket2::SockRef::from(&up)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(up);
    // The browser drains the flood and finds the relay's close after it.
    assert_eq!(read_close(&mut c, &mut p), Some(1011));
    let end = nth_end(&relay, 1);
    check_end(&end, 1011, Some("upstream_write"));
    assert_eq!(end["reason"], "upstream_gone");
    error_metric(&relay, "upstream_write");
}

// Every class of `metrics::ERROR_CLASSES`, and where a real session provokes it:
// browser_eof, browser_reset, browser_protocol, browser_pong_timeout,
// upstream_eof, upstream_reset, upstream_protocol, upstream_pong_timeout:
// `every_failure_has_an_audit_error_and_a_metric`; browser_tls:
// `a_tls_error_from_the_browser_is_browser_tls`; upstream_tls:
// `a_tls_error_from_the_upstream_is_upstream_tls`; browser_write and
// upstream_write: the two `*_under_a_blocked_write_*` tests (see `gridlock`).
// Not provoked through sockets, on purpose:
// * `panic`: a panic in the pump's core needs a bug; the release binary has
//   no fault that plants one (`NEXOR_TEST_FAULTS` panics the demo backend,
//   whose session then ends by its upstream closing: tests/ops.rs). The
//   in-memory core test in src/relay/tests.rs (its `panic_after` hook is
//   `cfg(test)`) is the proof: 1011 `panic` to both legs, the class and
//   `nexor_session_panics_total`.
// * `other`: no session path yields it (src/relay/core.rs names every error
//   from the list); it is the metric's bucket for an unknown class, tested
//   in src/metrics.rs.
