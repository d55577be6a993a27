//! Ticket and session policy (docs/design.md §2) through the real relay:
//! single use and the reconnect grant, limits per VM / user / relay,
//! lifetime and idle closes, origin, audience and IP binding, and the
//! client IP behind PROXY protocol and trusted proxies.

mod common;

use std::io::Write;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use nexor_relay::ticket::{Claims, Console};

fn echo_relay(b: RelayBuilder, echo: &Server) -> Relay {
    b.upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start()
}

fn claims() -> Claims {
    Relay::claims("t", Console::Vnc)
}

/// Upgrades with `ticket` and returns the status (and the open stream).
fn try_open(relay: &Relay, ticket: &str, extra: &str) -> (u16, Conn, Vec<u8>) {
    let (status, _, c, rest) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={ticket}"), extra));
    (status, c, rest)
}

fn expect_close(c: &mut Conn, pending: &mut Vec<u8>) -> u16 {
    loop {
        let f = read_frame(c, pending).expect("a close frame");
        if f.opcode == 8 {
            return close_code(&f).unwrap();
        }
    }
}

/// Through the glue: a live ticket is refused, a network drop (1006)
/// grants a reconnect from the same IP, and a clean close does not. The
/// time windows (past `exp`, after the grace, the lifetime deadline) are
/// src/admission/tests.rs's, with a fixed clock instead of sleeps.
#[test]
fn a_ticket_opens_one_session_and_reconnects_from_the_same_ip_within_grace() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).tickets("reconnect_grace = \"30s\""),
        &echo,
    );
    let t = relay.sign(&claims());
    let (s1, conn, _) = try_open(&relay, &t, "");
    assert_eq!(s1, 101);
    // A second session with the same ticket while the first lives: 403.
    assert_eq!(try_open(&relay, &t, "").0, 403);
    // The network drops the browser (no close frame: 1006).
    drop(conn);
    assert!(relay.wait_log("\"event\":\"session_end\""));
    relay.wait_released();
    assert!(relay.logs().contains("\"code\":1006"));
    // Reconnect after the drop, same IP: admitted as a reconnect.
    let (s2, mut conn2, mut pending) = try_open(&relay, &t, "");
    assert_eq!(s2, 101);
    assert!(relay.wait_log("\"reconnect\":true"));
    // A clean close (the tab closing) grants nothing.
    write_frame(&mut conn2, true, 8, &1000u16.to_be_bytes(), true);
    assert_eq!(expect_close(&mut conn2, &mut pending), 1000);
    drop(conn2);
    relay.wait_released();
    assert_eq!(try_open(&relay, &t, "").0, 403);
}

#[test]
fn reconnect_from_another_ip_is_refused() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).server("trusted_proxies = [\"127.0.0.1\"]"),
        &echo,
    );
    let t = relay.sign(&claims());
    let (s, conn, _) = try_open(&relay, &t, "X-Forwarded-For: 198.51.100.1\r\n");
    assert_eq!(s, 101);
    drop(conn);
    assert!(relay.wait_log("\"event\":\"session_end\""));
    relay.wait_released();
    assert_eq!(
        try_open(&relay, &t, "X-Forwarded-For: 198.51.100.2\r\n").0,
        403
    );
    assert_eq!(
        try_open(&relay, &t, "X-Forwarded-For: 198.51.100.1\r\n").0,
        101
    );
}

fn vm_claims(vmid: u64, sub: &str) -> Claims {
    let mut c = claims();
    c.node = Some("pve-a".into());
    c.vmid = Some(vmid);
    c.sub = sub.into();
    c
}

#[test]
fn vm_limit_reject_answers_429() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).limits("max_sessions_per_vm = 1"),
        &echo,
    );
    let (s, _keep, _) = try_open(&relay, &relay.sign(&vm_claims(100, "a")), "");
    assert_eq!(s, 101);
    let (s, head, mut c, rest) = relay.raw(&relay.upgrade_request(
        &format!("/console?ticket={}", relay.sign(&vm_claims(100, "b"))),
        "",
    ));
    assert_eq!(s, 429);
    assert!(read_body(&mut c, &head, rest).contains("too many"));
    // Another VM is not affected.
    assert_eq!(
        try_open(&relay, &relay.sign(&vm_claims(101, "b")), "").0,
        101
    );
}

#[test]
fn vm_limit_replace_closes_the_oldest_with_4001() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(true).limits("max_sessions_per_vm = 1\non_vm_limit = \"replace\""),
        &echo,
    );
    let (s, mut first, mut p) = try_open(&relay, &relay.sign(&vm_claims(100, "a")), "");
    assert_eq!(s, 101);
    let (s, mut second, mut p2) = try_open(&relay, &relay.sign(&vm_claims(100, "b")), "");
    assert_eq!(s, 101);
    assert_eq!(expect_close(&mut first, &mut p), 4001);
    // The newer session works.
    write_frame(&mut second, true, 2, b"still here", true);
    let f = read_frame(&mut second, &mut p2).unwrap();
    assert_eq!(f.payload, b"still here");
    assert!(relay.wait_log("\"reason\":\"replaced\""));
}

#[test]
fn user_and_global_limits_answer_429() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).limits("max_sessions_per_user = 1\nmax_sessions = 2"),
        &echo,
    );
    let (s, _a, _) = try_open(&relay, &relay.sign(&vm_claims(1, "alice")), "");
    assert_eq!(s, 101);
    assert_eq!(
        try_open(&relay, &relay.sign(&vm_claims(2, "alice")), "").0,
        429
    );
    let (s, _b, _) = try_open(&relay, &relay.sign(&vm_claims(3, "bob")), "");
    assert_eq!(s, 101);
    assert_eq!(
        try_open(&relay, &relay.sign(&vm_claims(4, "carol")), "").0,
        429
    );
    assert!(relay.wait_log("global_session_limit") && relay.wait_log("user_session_limit"));
}

#[test]
fn session_lifetime_closes_with_4002() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &echo);
    let mut c = claims();
    c.max_session = Some(1);
    let (s, mut conn, mut p) = try_open(&relay, &relay.sign(&c), "");
    assert_eq!(s, 101);
    let t = Instant::now();
    assert_eq!(expect_close(&mut conn, &mut p), 4002);
    assert!(t.elapsed() >= Duration::from_millis(500));
}

#[test]
fn idle_sessions_close_with_4003_and_pings_do_not_count() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false)
            .server("ping_interval = \"1s\"")
            .limits("idle_timeout = \"2s\""),
        &echo,
    );
    let (s, mut conn, mut p) = try_open(&relay, &relay.ticket("t"), "");
    assert_eq!(s, 101);
    // Data keeps it alive...
    for _ in 0..3 {
        sleep(Duration::from_millis(800));
        write_frame(&mut conn, true, 2, b"k", true);
    }
    // ...pings (answered) do not.
    let mut saw_ping = false;
    let code = loop {
        let f = read_frame(&mut conn, &mut p).unwrap();
        match f.opcode {
            9 => {
                saw_ping = true;
                write_frame(&mut conn, true, 10, &f.payload, true);
            }
            8 => break close_code(&f).unwrap(),
            _ => {}
        }
    };
    assert!(saw_ping);
    assert_eq!(code, 4003);
}

#[test]
fn origin_policy() {
    let echo = Server::tcp_echo();
    let same_host = echo_relay(RelayBuilder::new(false), &echo);
    let port = same_host.addr.port();
    let cases = [
        (format!("Origin: http://localhost:{port}\r\n"), 101),
        ("Origin: https://evil.example\r\n".to_string(), 403),
        ("Origin: null\r\n".to_string(), 403),
        (String::new(), 101),
    ];
    for (h, want) in &cases {
        assert_eq!(
            try_open(&same_host, &same_host.ticket("t"), h).0,
            *want,
            "{h}"
        );
    }
    let listed = echo_relay(
        RelayBuilder::new(false)
            .server("allowed_origins = [\"https://portal.example\"]\nrequire_origin = true"),
        &echo,
    );
    let cases = [
        ("Origin: https://portal.example\r\n", 101),
        ("Origin: https://PORTAL.example\r\n", 101),
        ("Origin: https://portal.example.evil\r\n", 403),
        ("", 403),
    ];
    for (h, want) in cases {
        assert_eq!(try_open(&listed, &listed.ticket("t"), h).0, want, "{h}");
    }
}

#[test]
fn audience_and_ip_binding() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).tickets("audience = \"relay-1\""),
        &echo,
    );
    let mut c = claims();
    assert_eq!(try_open(&relay, &relay.sign(&c), "").0, 401, "aud required");
    c.aud = Some("relay-2".into());
    assert_eq!(
        try_open(&relay, &relay.sign(&c), "").0,
        403,
        "another relay's ticket"
    );
    let mut c = claims();
    c.aud = Some("relay-1".into());
    c.ip = Some("10.9.9.9".into());
    assert_eq!(
        try_open(&relay, &relay.sign(&c), "").0,
        403,
        "bound to another IP"
    );
    let mut c = claims();
    c.aud = Some("relay-1".into());
    c.ip = Some("127.0.0.1".into());
    assert_eq!(try_open(&relay, &relay.sign(&c), "").0, 101);
}

#[test]
fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let echo = Server::tcp_echo();
    let trusting = echo_relay(
        RelayBuilder::new(false).server("trusted_proxies = [\"127.0.0.0/8\"]"),
        &echo,
    );
    let mut c = claims();
    c.ip = Some("203.0.113.9".into());
    // The default header is X-Forwarded-For; the others are ignored.
    for ignored in [
        "CF-Connecting-IP: 203.0.113.9\r\n",
        "Forwarded: for=203.0.113.9;proto=https\r\n",
        "X-Real-IP: 203.0.113.9\r\n",
    ] {
        c.jti = format!("test-{:016x}", rand_u64());
        assert_eq!(
            try_open(&trusting, &trusting.sign(&c), ignored).0,
            403,
            "{ignored}"
        );
    }
    c.jti = format!("test-{:016x}", rand_u64());
    assert_eq!(
        try_open(
            &trusting,
            &trusting.sign(&c),
            "X-Forwarded-For: 203.0.113.9, 127.0.0.5\r\n"
        )
        .0,
        101
    );
    assert!(trusting.wait_log("\"client\":\"203.0.113.9\""));
    // Each header when configured, and then only that one.
    for (name, header) in [
        ("cf-connecting-ip", "CF-Connecting-IP: 203.0.113.9\r\n"),
        ("forwarded", "Forwarded: for=203.0.113.9;proto=https\r\n"),
        ("x-real-ip", "X-Real-IP: 203.0.113.9\r\n"),
    ] {
        let relay = echo_relay(
            RelayBuilder::new(false).server(&format!(
                "trusted_proxies = [\"127.0.0.0/8\"]\nclient_ip_header = \"{name}\""
            )),
            &echo,
        );
        c.jti = format!("test-{:016x}", rand_u64());
        assert_eq!(try_open(&relay, &relay.sign(&c), header).0, 101, "{name}");
        c.jti = format!("test-{:016x}", rand_u64());
        assert_eq!(
            try_open(&relay, &relay.sign(&c), "X-Forwarded-For: 203.0.113.9\r\n").0,
            403,
            "{name}: X-Forwarded-For is not read"
        );
    }
    let untrusting = echo_relay(RelayBuilder::new(false), &echo);
    c.jti = format!("test-{:016x}", rand_u64());
    assert_eq!(
        try_open(
            &untrusting,
            &untrusting.sign(&c),
            "X-Forwarded-For: 203.0.113.9\r\n"
        )
        .0,
        403
    );
}

fn proxy_v2(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut v = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0, 12,
    ];
    v.extend_from_slice(&src);
    v.extend_from_slice(&[127, 0, 0, 1]);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&443u16.to_be_bytes());
    v
}

#[test]
fn proxy_protocol_v1_and_v2_give_the_client_ip_before_tls() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(true).server("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]"),
        &echo,
    );
    for (header, ip) in [
        (proxy_v2([198, 51, 100, 7], 50000), "198.51.100.7"),
        (
            b"PROXY TCP4 198.51.100.8 127.0.0.1 50001 443\r\n".to_vec(),
            "198.51.100.8",
        ),
    ] {
        let mut c = claims();
        c.ip = Some(ip.into());
        let t = relay.sign(&c);
        let tcp = std::net::TcpStream::connect(relay.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        (&tcp).write_all(&header).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = rustls::ClientConnection::new(client_tls(), name).unwrap();
        let mut conn = Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp)));
        conn.write_all(&relay.upgrade_request(&format!("/console?ticket={t}"), ""))
            .unwrap();
        let (status, _, _) = read_response_head(&mut conn);
        assert_eq!(status, 101, "{ip}");
        assert!(relay.wait_log(&format!("\"client\":\"{ip}\"")));
    }
    // No header, or garbage: dropped without an answer.
    for junk in [
        &b"GET /console HTTP/1.1\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
    ] {
        let mut tcp = std::net::TcpStream::connect(relay.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.write_all(junk).unwrap();
        let mut b = [0u8; 64];
        assert!(matches!(
            std::io::Read::read(&mut tcp, &mut b),
            Ok(0) | Err(_)
        ));
    }
    assert!(relay.wait_log("proxy_header_missing") && relay.wait_log("proxy_v1_malformed"));
}

#[test]
fn handshakes_per_ip_are_rate_limited() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).limits("handshakes_per_ip = 3"),
        &echo,
    );
    let statuses: Vec<u16> = (0..10)
        .map(|_| try_open(&relay, &relay.ticket("t"), "").0)
        .collect();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert!(limited >= 4, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 101 || s == 429),
        "{statuses:?}"
    );
}

#[test]
fn concurrent_handshakes_are_capped() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).limits("max_handshakes = 1\nhandshake_timeout = \"2s\""),
        &echo,
    );
    // One slow client holds the only handshake slot...
    let mut slow = relay.conn();
    slow.write_all(b"GET /console HTTP/1.1\r\n").unwrap();
    sleep(Duration::from_millis(200));
    // ...so the next connection is dropped without an answer.
    let mut c = relay.conn();
    let _ =
        c.write_all(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), ""));
    let mut b = [0u8; 16];
    assert!(matches!(
        std::io::Read::read(&mut c, &mut b),
        Ok(0) | Err(_)
    ));
    assert!(relay.wait_log("handshake_capacity"));
    // After the slow one times out, handshakes work again.
    sleep(Duration::from_millis(2200));
    assert_eq!(try_open(&relay, &relay.ticket("t"), "").0, 101);
}
