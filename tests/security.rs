//! Security hardening (issue 11), each item through the real relay with a
//! hostile client: who names the client IP, PROXY headers from strangers,
//! handshake slots per IP, reconnect grants and revoke, the admin listener
//! against web pages and slow peers, Proxmox claims, the audit's last line
//! on drain, close-code labels, the console page's pinned files.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

fn fresh(c: &Claims) -> Claims {
    let mut c = c.clone();
    c.jti = format!("test-{:016x}", rand_u64());
    c
}

/// Upgrades with `ticket` and returns the status (and the open stream).
fn try_open(relay: &Relay, ticket: &str, extra: &str) -> (u16, Conn, Vec<u8>) {
    let (status, _, c, rest) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={ticket}"), extra));
    (status, c, rest)
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.2...).
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let tcp: TcpStream = s.into();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp
}

/// True once the peer closed (EOF or reset) without sending anything.
fn closed_without_answer(c: &mut impl Read) -> bool {
    let mut b = [0u8; 64];
    matches!(c.read(&mut b), Ok(0) | Err(_))
}

fn count(relay: &Relay, needle: &str) -> usize {
    relay.logs().matches(needle).count()
}

fn wait_count(relay: &Relay, needle: &str, n: usize) -> bool {
    let t = Instant::now();
    while t.elapsed() < IO_TIMEOUT {
        if count(relay, needle) >= n {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

fn close_normally(c: &mut Conn, pending: &mut Vec<u8>, code: u16) {
    write_frame(c, true, 8, &code.to_be_bytes(), true);
    loop {
        let f = read_frame(c, pending).unwrap();
        if f.opcode == 8 {
            break;
        }
    }
}

// ---- 1. which header names the client ---------------------------------------------

#[test]
fn client_ip_header_is_configuration_not_precedence() {
    let echo = Server::tcp_echo();
    // nginx's shipped config: the relay trusts it and reads X-Forwarded-For.
    let relay = echo_relay(
        RelayBuilder::new(false).server("trusted_proxies = [\"127.0.0.1\"]"),
        &echo,
    );
    let mut c = claims();
    c.ip = Some("198.51.100.7".into());
    // A browser's own headers, passed through by the proxy, name nobody.
    for spoof in [
        "CF-Connecting-IP: 198.51.100.7\r\n",
        "Forwarded: for=198.51.100.7\r\n",
        "X-Real-IP: 198.51.100.7\r\n",
        "CF-Connecting-IP: 198.51.100.7\r\nForwarded: for=198.51.100.7\r\nX-Forwarded-For: 203.0.113.4\r\n",
    ] {
        let (status, _, _) = try_open(&relay, &relay.sign(&fresh(&c)), spoof);
        assert_eq!(status, 403, "{spoof}");
    }
    // A leftmost X-Forwarded-For entry is the browser's: the rightmost
    // untrusted hop (what nginx appended) is the client.
    let (status, _, _) = try_open(
        &relay,
        &relay.sign(&fresh(&c)),
        "X-Forwarded-For: 198.51.100.7, 203.0.113.4\r\n",
    );
    assert_eq!(status, 403);
    let (status, _, _) = try_open(
        &relay,
        &relay.sign(&fresh(&c)),
        "X-Forwarded-For: 203.0.113.4, 198.51.100.7\r\n",
    );
    assert_eq!(status, 101);
    assert!(relay.wait_log("\"client\":\"198.51.100.7\""));
    assert!(relay.logs().contains("\"reason\":\"ticket_ip_mismatch\""));
}

// ---- 2. PROXY headers only from trusted peers -------------------------------------

#[test]
fn proxy_header_only_from_trusted_peers() {
    let echo = Server::tcp_echo();
    // The balancer is 127.0.0.2; 127.0.0.1 is a stranger that reached the port.
    let relay = echo_relay(
        RelayBuilder::new(false).server("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.2\"]"),
        &echo,
    );
    let mut c = claims();
    c.ip = Some("198.51.100.8".into());
    let header = b"PROXY TCP4 198.51.100.8 127.0.0.1 50001 8443\r\n";
    let request = |t: &str| relay.upgrade_request(&format!("/console?ticket={t}"), "");
    // From the stranger: dropped before anything else is read.
    let mut tcp = connect_from("127.0.0.1", relay.addr);
    tcp.write_all(header).unwrap();
    let _ = tcp.write_all(&request(&relay.sign(&fresh(&c))));
    assert!(closed_without_answer(&mut tcp));
    assert!(relay.wait_log("\"reason\":\"proxy_untrusted\""));
    assert!(relay.logs().contains("\"client\":\"127.0.0.1\""));
    assert!(!relay.logs().contains("198.51.100.8"));
    // From the balancer: its client is the PROXY source.
    let mut tcp = connect_from("127.0.0.2", relay.addr);
    tcp.write_all(header).unwrap();
    tcp.write_all(&request(&relay.sign(&fresh(&c)))).unwrap();
    let (status, head, _) = read_response_head(&mut tcp);
    assert_eq!(status, 101, "{head}");
    assert!(relay.wait_log("\"client\":\"198.51.100.8\""));
}

// ---- 3. handshake slots per IP ------------------------------------------------------

#[test]
fn handshake_slots_are_per_ip() {
    let echo = Server::tcp_echo();
    // max_handshakes_per_ip keeps its default, 64.
    let relay = echo_relay(
        RelayBuilder::new(false).limits("max_handshakes = 80\nhandshake_timeout = \"20s\""),
        &echo,
    );
    // One IP opens more idle connections than max_handshakes and sends nothing.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| connect_from("127.0.0.1", relay.addr))
        .collect();
    // 64 hold a slot; the other 36 are dropped at once.
    assert!(
        wait_count(&relay, "\"reason\":\"handshake_capacity_ip\"", 36),
        "{}",
        relay.logs()
    );
    assert_eq!(count(&relay, "\"reason\":\"handshake_capacity\""), 0);
    // Another IP still gets its 101.
    let mut tcp = connect_from("127.0.0.2", relay.addr);
    tcp.write_all(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), ""))
        .unwrap();
    let (status, head, _) = read_response_head(&mut tcp);
    assert_eq!(status, 101, "{head}");
    // And so does the first IP once one of its own is given up.
    drop(idle);
    let (status, _, _) = try_open(&relay, &relay.ticket("t"), "");
    assert_eq!(status, 101);
}

// ---- 5. reconnect grants only after an abnormal end ---------------------------------

#[test]
fn grants_only_after_abnormal_end() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &echo);
    // The browser closes: 1000, its 1001 (tab closed) and codes of its
    // own grant nothing.
    for code in [1000u16, 1001, 4001, 4003] {
        let t = relay.sign(&claims());
        let (s, mut conn, mut p) = try_open(&relay, &t, "");
        assert_eq!(s, 101);
        let ends = count(&relay, "\"event\":\"session_end\"");
        close_normally(&mut conn, &mut p, code);
        drop(conn);
        assert!(wait_count(&relay, "\"event\":\"session_end\"", ends + 1));
        relay.wait_released();
        assert_eq!(try_open(&relay, &t, "").0, 403, "after {code}");
    }
    // The browser vanishes without a close (a network cut): 1006, a grant.
    let t = relay.sign(&claims());
    let (s, conn, _) = try_open(&relay, &t, "");
    assert_eq!(s, 101);
    let ends = count(&relay, "\"event\":\"session_end\"");
    drop(conn);
    assert!(wait_count(&relay, "\"event\":\"session_end\"", ends + 1));
    relay.wait_released();
    let (s, _conn, _) = try_open(&relay, &t, "");
    assert_eq!(s, 101);
    assert!(relay.wait_log("\"reconnect\":true"));
}

#[test]
fn grants_only_after_abnormal_end_lifetime_and_idle_grant_nothing() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).limits("idle_timeout = \"1s\""),
        &echo,
    );
    let t = relay.sign(&claims());
    let (s, mut conn, mut p) = try_open(&relay, &t, "");
    assert_eq!(s, 101);
    let f = loop {
        let f = read_frame(&mut conn, &mut p).unwrap();
        if f.opcode == 8 {
            break f;
        }
    };
    assert_eq!(close_code(&f), Some(4003));
    drop(conn);
    assert!(relay.wait_log("\"event\":\"session_end\""));
    relay.wait_released();
    assert_eq!(try_open(&relay, &t, "").0, 403);
}

fn admin(relay: &Relay, req: &str) -> (u16, String) {
    let addr = relay.admin.unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(req.replace("{addr}", &addr.to_string()).as_bytes())
        .unwrap();
    let (status, head, rest) = read_response_head(&mut c);
    (status, read_body(&mut c, &head, rest))
}

fn revoke(relay: &Relay, query: &str) -> (u16, String) {
    admin(
        relay,
        &format!(
            "POST /sessions/revoke?{query} HTTP/1.1\r\nHost: {{addr}}\r\nContent-Length: 0\r\n\r\n"
        ),
    )
}

#[test]
fn revoke_voids_pending_grants() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &echo);
    let mk = |sub: &str, vmid: u64| {
        let mut c = claims();
        c.sub = sub.into();
        c.node = Some("n1".into());
        c.vmid = Some(vmid);
        c
    };
    for (c, q) in [
        (mk("alice", 101), None),
        (mk("bob", 102), Some("sub=bob".to_string())),
        (mk("carol", 103), Some("vm=t%2Fn1%2F103".to_string())),
    ] {
        let q = q.unwrap_or_else(|| format!("jti={}", c.jti));
        let t = relay.sign(&c);
        let (s, conn, _) = try_open(&relay, &t, "");
        assert_eq!(s, 101);
        let ends = count(&relay, "\"event\":\"session_end\"");
        drop(conn); // 1006: a grant is pending
        assert!(wait_count(&relay, "\"event\":\"session_end\"", ends + 1));
        relay.wait_released();
        // No session is live; the revoke still voids the grant.
        assert_eq!(revoke(&relay, &q), (200, "{\"revoked\":0}".to_string()));
        assert_eq!(try_open(&relay, &t, "").0, 403, "{q}");
    }
}

#[test]
fn revoked_jti_is_refused_until_exp_plus_grace() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &echo);
    // Revoked before its first use, by jti and by its full SHA-256.
    let a = claims();
    assert_eq!(revoke(&relay, &format!("jti={}", a.jti)).0, 200);
    assert_eq!(try_open(&relay, &relay.sign(&a), "").0, 403);
    let b = claims();
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b.jti.as_bytes())
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    assert_eq!(revoke(&relay, &format!("jti_sha256={hash}")).0, 200);
    assert_eq!(try_open(&relay, &relay.sign(&b), "").0, 403);
    // Said as what it is: revoked, not "already used".
    assert!(
        relay.wait_log("\"reason\":\"ticket_revoked\""),
        "{}",
        relay.logs()
    );
    assert!(!relay.logs().contains("ticket_used"), "{}", relay.logs());
    // Other tickets are untouched.
    assert_eq!(try_open(&relay, &relay.ticket("t"), "").0, 101);
}

// ---- 6. the admin listener against web pages and slow peers ------------------------

#[test]
fn admin_refuses_foreign_hosts_and_origins() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(
        RelayBuilder::new(false).admin("host = \"relay-admin.internal\""),
        &echo,
    );
    let port = relay.admin.unwrap().port();
    let get = |host: &str, extra: &str| {
        admin(
            &relay,
            &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"),
        )
        .0
    };
    assert_eq!(get("{addr}", ""), 200);
    assert_eq!(get(&format!("localhost:{port}"), ""), 200);
    assert_eq!(get("relay-admin.internal", ""), 200);
    assert_eq!(get(&format!("relay-admin.internal:{port}"), ""), 200);
    // DNS rebinding: a page's own name.
    assert_eq!(get(&format!("evil.example:{port}"), ""), 403);
    assert_eq!(get("evil.example", ""), 403);
    // No Host at all (HTTP/1.0 style).
    assert_eq!(
        admin(&relay, "GET /metrics HTTP/1.0\r\n\r\n").0,
        403,
        "no Host"
    );
    // Any Origin, even the listener's own: a browser sent it (CSRF).
    for origin in ["https://evil.example", "null", "http://127.0.0.1"] {
        assert_eq!(get("{addr}", &format!("Origin: {origin}\r\n")), 403);
    }
    // A cross-site form POST to revoke: refused, and nothing revoked.
    let t = relay.ticket("t");
    let (s, _live, _) = try_open(&relay, &t, "");
    assert_eq!(s, 101);
    let (status, _) = admin(
        &relay,
        "POST /sessions/revoke?sub=customer-42 HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://evil.example\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 403);
    let (status, body) = admin(&relay, "GET /sessions HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("customer-42"), "{body}");
}

#[test]
fn admin_drops_slow_peers_and_caps_connections() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &echo);
    let addr = relay.admin.unwrap();
    // One byte every 4 s: dropped within 10 s although no read waits 5 s.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let start = Instant::now();
    let mut dropped = None;
    for b in req.bytes() {
        if slow.write_all(&[b]).is_err() {
            dropped = Some(start.elapsed());
            break;
        }
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let mut buf = [0u8; 64];
            match slow.read(&mut buf) {
                Ok(0) => dropped = Some(start.elapsed()),
                Ok(_) => panic!("answered a request never finished"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => dropped = Some(start.elapsed()),
            }
            if dropped.is_some() {
                break;
            }
        }
        if dropped.is_some() {
            break;
        }
    }
    let after = dropped.expect("the slow peer was never dropped");
    assert!(after < Duration::from_secs(10), "{after:?}");
    // More idle connections than the cap: the rest are closed at accept,
    // and the listener serves again once they go.
    let idle: Vec<TcpStream> = (0..nexor_relay::admin::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let t = Instant::now();
    let _ = extra.write_all(req.as_bytes());
    assert!(closed_without_answer(&mut extra));
    assert!(t.elapsed() < Duration::from_secs(3), "closed at accept");
    drop(idle);
    sleep(Duration::from_millis(300));
    assert_eq!(
        admin(&relay, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").0,
        200
    );
}

// ---- 7. smaller items ---------------------------------------------------------------

#[test]
fn proxmox_claims_are_checked() {
    // A stand-in for pveproxy that counts connections (no TLS: a claim that
    // passes gets a 502, one that is refused never connects).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            n.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    let relay = RelayBuilder::new(false)
        .upstream(
            "pve",
            &format!(
                "kind = \"proxmox\"\napi = \"https://127.0.0.1:{port}\"\ntoken_id = \"relay@pve!console\"\n\
token_secret = \"0b9a4c52-7d1e-4f0a-9c3b-5e6f7a8b9c0d\"\nconnect_timeout = \"2s\""
            ),
        )
        .start();
    let mk = |node: &str, vmid: u64| {
        let mut c = Relay::claims("pve", Console::Vnc);
        c.node = Some(node.into());
        c.vmid = Some(vmid);
        c
    };
    for (node, vmid) in [
        ("../../access/users", 101),
        ("pve-a/qemu/101/vncproxy?x=", 101),
        ("pve a", 101),
        ("pve%2Fa", 101),
        (&*"a".repeat(64), 101),
        ("pve-a", 99),
        ("pve-a", 1_000_000_000),
    ] {
        let (status, _, _) = try_open(&relay, &relay.sign(&mk(node, vmid)), "");
        assert_eq!(status, 401, "{node} {vmid}");
    }
    assert!(relay.wait_log("ticket_bad_vm"));
    // No node or vmid at all: 401 too, before any API call.
    let (status, _, _) = try_open(&relay, &relay.sign(&Relay::claims("pve", Console::Vnc)), "");
    assert_eq!(status, 401);
    assert!(relay.wait_log("ticket_without_vm"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a bad claim reached pveproxy"
    );
    // A well-formed claim does reach it.
    let (status, _, _) = try_open(&relay, &relay.sign(&mk("pve-a", 101)), "");
    assert!(status >= 500, "{status}");
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

#[test]
fn session_end_is_written_before_slots_are_released() {
    let echo = Server::tcp_echo();
    let mut relay = echo_relay(
        RelayBuilder::new(false)
            .server("drain_timeout = \"1s\"")
            .limits("max_handshakes = 4096")
            // Debug builds: 300 ms between each session's end and its
            // audit line, so a drain that exits once the slots are gone
            // loses the lines if the slots go first.
            .env("NEXOR_TEST_FAULTS", "slow-session-end"),
        &echo,
    );
    const N: usize = 200;
    let conns: Vec<(Conn, Vec<u8>)> = (0..N)
        .map(|_| {
            let (s, c, p) = try_open(&relay, &relay.ticket("t"), "");
            assert_eq!(s, 101);
            (c, p)
        })
        .collect();
    assert!(wait_count(&relay, "\"event\":\"session_start\"", N));
    relay.signal("TERM");
    // The drain closes them all at its deadline and exits once none is
    // live: every session_end line is out by then.
    assert_eq!(relay.wait_exit(IO_TIMEOUT), Some(0));
    sleep(Duration::from_millis(200)); // the pipe reader's last lines
    assert_eq!(count(&relay, "\"event\":\"session_end\""), N);
    drop(conns);
}

#[test]
fn close_codes_are_bucketed_in_metrics() {
    let echo = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &echo);
    for code in [4321u16, 3999, 1000] {
        let (s, mut c, mut p) = try_open(&relay, &relay.ticket("t"), "");
        assert_eq!(s, 101);
        close_normally(&mut c, &mut p, code);
    }
    assert!(wait_count(&relay, "\"event\":\"session_end\"", 3));
    let (status, text) = admin(&relay, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        text.contains("nexor_sessions_closed_total{code=\"other\"} 2"),
        "{text}"
    );
    assert!(text.contains("nexor_sessions_closed_total{code=\"1000\"} 1"));
    assert!(!text.contains("code=\"4321\"") && !text.contains("code=\"3999\""));
}

#[test]
fn console_page_pins_cdn_files() {
    let relay = RelayBuilder::new(false)
        .server("console_page = true")
        .upstream("d", "kind = \"demo\"")
        .start();
    let (status, head, mut c, rest) = relay.raw(
        format!(
            "GET / HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            relay.addr.port()
        )
        .as_bytes(),
    );
    assert_eq!(status, 200);
    let body = read_body(&mut c, &head, rest);
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
        .or_else(|| {
            head.lines()
                .find_map(|l| l.strip_prefix("content-security-policy: "))
        })
        .expect("a CSP");
    for src in csp.split([';', ' ']) {
        assert!(
            src != "https://cdn.jsdelivr.net" && src != "https://cdn.jsdelivr.net/",
            "the whole CDN host is allowed: {csp}"
        );
    }
    assert!(csp.contains("https://cdn.jsdelivr.net/npm/@novnc/novnc@1.7.0/"));
    assert!(body.contains("<script type=\"importmap\">{\"integrity\":"));
    assert!(body.contains("integrity=\"sha384-"));
    let js = {
        let (_, head, mut c, rest) = relay.raw(
            format!(
                "GET /console.js HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
                relay.addr.port()
            )
            .as_bytes(),
        );
        read_body(&mut c, &head, rest)
    };
    assert!(js.contains("history.replaceState("), "{js}");
}
