//! Operations through the real binary: metrics after known traffic, the
//! audit trail field by field, revoke by each selector, SIGHUP with 1,000
//! live sessions, a bad config on SIGHUP, drain on SIGTERM, and the panic
//! net: a panicking session task ends only itself; a dead worker fails
//! `/healthz` (debug builds, whose demo backend has test faults); a stdout
//! nobody reads never stalls a session (the log queue drops and counts); an
//! upgrade beside the old relay refuses no one.

mod common;

use std::time::Duration;

use common::*;
use nexor_relay::ticket::{Console, Key};
use sha2::Digest;

fn echo_relay(b: RelayBuilder, echo: &Server) -> Relay {
    b.upstream("t", &format!("kind = \"tcp\"\naddr = \"{}\"", echo.addr))
        .start()
}

fn open(relay: &Relay, ticket: &str) -> (Conn, Vec<u8>) {
    let (status, head, c, rest) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={ticket}"), ""));
    assert_eq!(status, 101, "{head}");
    (c, rest)
}

/// Sends `data` and reads the same bytes back (a TCP echo may re-frame them).
fn echo(c: &mut Conn, pending: &mut Vec<u8>, data: &[u8]) {
    write_frame(c, true, 2, data, true);
    let mut got = Vec::new();
    while got.len() < data.len() {
        let f = read_frame(c, pending).unwrap();
        assert_eq!(f.opcode, 2, "unexpected frame {:?}", f.opcode);
        got.extend_from_slice(&f.payload);
    }
    assert!(got == data, "echo differs");
}

fn close_normally(c: &mut Conn, pending: &mut Vec<u8>) {
    write_frame(c, true, 8, &[0x03, 0xe8], true);
    loop {
        let f = read_frame(c, pending).unwrap();
        if f.opcode == 8 {
            break;
        }
    }
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(line_prefix)
            .and_then(|v| v.trim().parse().ok())
    })
}

fn audit_lines(relay: &Relay, event: &str) -> Vec<serde_json::Value> {
    relay
        .logs()
        .lines()
        .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_events(relay: &Relay, event: &str, n: usize) {
    let t = std::time::Instant::now();
    while audit_lines(relay, event).len() < n {
        assert!(
            t.elapsed() < IO_TIMEOUT,
            "waiting for {n} {event}: {}",
            relay.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_known_traffic() {
    let e = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &e);
    for i in 0..3 {
        let (mut c, mut p) = open(&relay, &relay.ticket("t"));
        echo(&mut c, &mut p, &pattern(1000, i));
        close_normally(&mut c, &mut p);
    }
    let mut expired = Relay::claims("t", Console::Vnc);
    expired.iat = now() - 100;
    expired.exp = now() - 50;
    assert_eq!(
        relay
            .raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.sign(&expired)), ""))
            .0,
        401
    );
    assert_eq!(relay.raw(&relay.upgrade_request("/nope", "")).0, 404);
    wait_events(&relay, "session_end", 3);
    let (status, m) = relay.admin_request("GET", "/metrics", None);
    assert_eq!(status, 200);
    let checks: &[(&str, f64)] = &[
        (
            "nexor_sessions_opened_total{upstream=\"t\",console=\"vnc\"}",
            3.0,
        ),
        ("nexor_sessions_live{upstream=\"t\",console=\"vnc\"}", 0.0),
        ("nexor_sessions_closed_total{code=\"1000\"}", 3.0),
        (
            "nexor_sessions_refused_total{reason=\"expired\",status=\"401\"}",
            1.0,
        ),
        (
            "nexor_sessions_refused_total{reason=\"not_found\",status=\"404\"}",
            1.0,
        ),
        ("nexor_bytes_total{direction=\"up\"}", 3000.0),
        ("nexor_bytes_total{direction=\"down\"}", 3000.0),
        ("nexor_session_duration_seconds_count", 3.0),
        ("nexor_upstream_connect_seconds_count", 3.0),
        ("nexor_draining", 0.0),
    ];
    for (name, want) in checks {
        assert_eq!(metric(&m, name), Some(*want), "{name}\n{m}");
    }
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("nexor_worker_info{"))
            .count(),
        2
    );
    let driver = if std::env::var("MONOIO_FORCE_LEGACY_DRIVER").is_ok_and(|v| v == "1") {
        "epoll"
    } else {
        "io_uring"
    };
    assert!(m.contains(&format!("driver=\"{driver}\"")), "{m}");
    // Every metric name is declared with HELP and TYPE.
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            m.contains(&format!("# TYPE {base} ")) || m.contains(&format!("# TYPE {name} ")),
            "{name} undeclared"
        );
    }
    assert_eq!(relay.admin_request("GET", "/healthz", None).0, 200);
    assert_eq!(relay.admin_request("GET", "/readyz", None).0, 200);
    assert_eq!(relay.admin_request("GET", "/other", None).0, 404);
    assert_eq!(relay.admin_request("DELETE", "/metrics", None).0, 405);
}

#[test]
fn audit_lines_carry_every_field_and_no_secret() {
    let e = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &e);
    let mut claims = Relay::claims("t", Console::Term);
    claims.node = Some("pve-a".into());
    claims.vmid = Some(101);
    claims.sub = "customer-7".into();
    let ticket = relay.sign(&claims);
    let (mut c, mut p) = open(&relay, &ticket);
    echo(&mut c, &mut p, &pattern(700, 1));
    close_normally(&mut c, &mut p);
    relay.raw(&relay.upgrade_request("/console?ticket=x.y.z", ""));
    wait_events(&relay, "session_end", 1);
    wait_events(&relay, "refused", 1);
    let jti_hash: String = sha2::Sha256::digest(claims.jti.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let start = &audit_lines(&relay, "session_start")[0];
    let end = &audit_lines(&relay, "session_end")[0];
    for (v, k, want) in [
        (start, "jti_sha256", serde_json::json!(jti_hash)),
        (start, "sub", serde_json::json!("customer-7")),
        (start, "upstream", serde_json::json!("t")),
        (start, "vm", serde_json::json!("t/pve-a/101")),
        (start, "console", serde_json::json!("term")),
        (start, "client", serde_json::json!("127.0.0.1")),
        (start, "reconnect", serde_json::json!(false)),
        (end, "jti_sha256", serde_json::json!(jti_hash)),
        (end, "code", serde_json::json!(1000)),
        (end, "reason", serde_json::json!("close")),
        (end, "by", serde_json::json!("browser")),
        (end, "bytes_up", serde_json::json!(700)),
        (end, "bytes_down", serde_json::json!(700)),
        (end, "vm", serde_json::json!("t/pve-a/101")),
    ] {
        assert_eq!(v[k], want, "{k} in {v}");
    }
    assert_eq!(start["sid"], end["sid"]);
    assert!(start["ts"].as_str().unwrap().ends_with('Z'));
    assert!(end["duration_ms"].as_u64().is_some() && start["connect_ms"].as_u64().is_some());
    let refused = &audit_lines(&relay, "refused")[0];
    assert_eq!(
        (refused["status"].as_u64(), refused["client"].as_str()),
        (Some(401), Some("127.0.0.1"))
    );
    assert!(refused["reason"].as_str().is_some());
    // The raw jti is not logged either (the audit key is its hash).
    assert!(!relay.logs().contains(&claims.jti));
}

#[test]
fn revoke_by_jti_sub_and_vm_closes_with_1008() {
    let e = Server::tcp_echo();
    let token = "admin-token-0123456789";
    let relay = echo_relay(
        RelayBuilder::new(true).admin(&format!("token = \"{token}\"")),
        &e,
    );
    assert_eq!(relay.admin_request("GET", "/sessions", None).0, 401);
    assert_eq!(
        relay
            .admin_request("GET", "/metrics", Some("wrong-token-000000000"))
            .0,
        401
    );
    let mk = |sub: &str, vmid: u64| {
        let mut c = Relay::claims("t", Console::Vnc);
        c.sub = sub.into();
        c.node = Some("n1".into());
        c.vmid = Some(vmid);
        c
    };
    let a = mk("alice", 1);
    let b = mk("bob", 2);
    let d = mk("dave", 3);
    let mut conns: Vec<(Conn, Vec<u8>)> = [&a, &b, &d]
        .iter()
        .map(|c| open(&relay, &relay.sign(c)))
        .collect();
    let (status, list) = relay.admin_request("GET", "/sessions", Some(token));
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(
        !list.to_string().contains(&a.jti),
        "sessions list shows hashes, not jti"
    );
    for (i, q) in [
        format!("jti={}", a.jti),
        "sub=bob".to_string(),
        "vm=t%2Fn1%2F3".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) =
            relay.admin_request("POST", &format!("/sessions/revoke?{q}"), Some(token));
        assert_eq!((status, body.as_str()), (200, "{\"revoked\":1}"), "{q}");
        let (c, p) = &mut conns[i];
        c.tcp()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let f = read_frame(c, p).unwrap();
        assert_eq!(close_code(&f), Some(1008), "{q}");
    }
    assert_eq!(
        relay
            .admin_request("POST", "/sessions/revoke", Some(token))
            .0,
        400
    );
    assert_eq!(
        relay
            .admin_request("POST", "/sessions/revoke?sub=a&vm=b", Some(token))
            .0,
        400
    );
    // A revoked ticket gets no reconnect grant.
    assert_eq!(
        relay
            .raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.sign(&a)), ""))
            .0,
        403
    );
}

/// A second random key (sample keys such as a counting run are refused).
const K2: &str = "uXq0k9Dw4cJH1t6WgkYy0m8rV3bLp7aZsE2nQfN5xTo=";

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn sighup_with_1000_live_sessions_drops_nothing_and_rotates_keys() {
    raise_nofile();
    const N: usize = 1000;
    const ROUNDS: usize = 6;
    let e = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false).limits("max_handshakes = 4096"), &e);
    let mut sessions: Vec<(Conn, Vec<u8>)> =
        (0..N).map(|_| open(&relay, &relay.ticket("t"))).collect();
    let mut total = 0usize;
    for round in 0..ROUNDS {
        if round == ROUNDS / 2 {
            // Rotate: the new file has only k2. Live sessions keep running.
            let text = std::fs::read_to_string(&relay.config).unwrap();
            let rotated = text.replace(
                &format!("{{ id = \"{KEY_ID}\", secret = \"{KEY_B64}\" }}"),
                &format!("{{ id = \"k2\", secret = \"{K2}\" }}"),
            );
            assert_ne!(text, rotated);
            std::fs::write(&relay.config, rotated).unwrap();
            relay.signal("HUP");
            assert!(relay.wait_log("config reloaded"));
        }
        for (i, (c, _)) in sessions.iter_mut().enumerate() {
            write_frame(c, true, 2, &pattern(512, (i + round) as u8), true);
        }
        for (i, (c, p)) in sessions.iter_mut().enumerate() {
            let want = pattern(512, (i + round) as u8);
            let mut got = Vec::new();
            while got.len() < want.len() {
                let f =
                    read_frame(c, p).unwrap_or_else(|e| panic!("session {i} round {round}: {e}"));
                assert_eq!(
                    f.opcode, 2,
                    "session {i} got opcode {} in round {round}",
                    f.opcode
                );
                got.extend_from_slice(&f.payload);
            }
            assert!(got == want, "session {i} round {round}: bytes differ");
            total += got.len();
        }
    }
    assert_eq!(total, N * ROUNDS * 512);
    assert_eq!(
        audit_lines(&relay, "session_end").len(),
        0,
        "no live session ended"
    );
    // New sessions use the new key; the removed key is refused.
    let k2 = Key::from_secret_b64("k2", K2).unwrap();
    let (mut c, mut p) = open(
        &relay,
        &relay.sign_with(&Relay::claims("t", Console::Vnc), &k2),
    );
    echo(&mut c, &mut p, b"new key");
    assert_eq!(
        relay
            .raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), ""))
            .0,
        401
    );
}

#[test]
fn a_bad_config_on_sighup_keeps_the_old_one() {
    let e = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &e);
    let (mut live, mut p) = open(&relay, &relay.ticket("t"));
    let good = std::fs::read_to_string(&relay.config).unwrap();
    std::fs::write(
        &relay.config,
        good.replace("max_ttl = \"120s\"", "max_ttl = \"forever\""),
    )
    .unwrap();
    relay.signal("HUP");
    assert!(relay.wait_log("config reload failed"));
    assert!(
        relay.logs().contains("tickets.max_ttl"),
        "the error names the key"
    );
    echo(&mut live, &mut p, b"still relaying");
    let (mut c, mut p2) = open(&relay, &relay.ticket("t"));
    echo(&mut c, &mut p2, b"old config serves new sessions");
    let (_, m) = relay.admin_request("GET", "/metrics", None);
    assert_eq!(
        metric(&m, "nexor_config_reloads_total{result=\"failed\"}"),
        Some(1.0)
    );
}

#[test]
fn sigterm_drains_503_then_1001_then_exit_0() {
    let e = Server::tcp_echo();
    let mut relay = echo_relay(
        RelayBuilder::new(false).server("drain_timeout = \"1s\""),
        &e,
    );
    let (mut live, mut p) = open(&relay, &relay.ticket("t"));
    relay.signal("TERM");
    assert!(relay.wait_log("\"msg\":\"draining\""));
    let (status, head, mut c, rest) =
        relay.raw(&relay.upgrade_request(&format!("/console?ticket={}", relay.ticket("t")), ""));
    assert_eq!(status, 503);
    assert!(read_body(&mut c, &head, rest).contains("shutting down"));
    assert_eq!(relay.admin_request("GET", "/readyz", None).0, 503);
    // The live session still relays until the deadline...
    echo(&mut live, &mut p, b"during drain");
    // ...then gets 1001.
    let f = loop {
        let f = read_frame(&mut live, &mut p).unwrap();
        if f.opcode == 8 {
            break f;
        }
    };
    assert_eq!(close_code(&f), Some(1001));
    assert_eq!(relay.wait_exit(IO_TIMEOUT), Some(0));
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let e = Server::tcp_echo();
    let mut relay = echo_relay(
        RelayBuilder::new(false).server("drain_timeout = \"60s\""),
        &e,
    );
    let (_live, _) = open(&relay, &relay.ticket("t"));
    relay.signal("TERM");
    assert!(relay.wait_log("\"msg\":\"draining\""));
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(5)), Some(1));
}

#[test]
fn the_grafana_dashboard_uses_only_real_metric_names() {
    let e = Server::tcp_echo();
    let relay = echo_relay(RelayBuilder::new(false), &e);
    let (_, m) = relay.admin_request("GET", "/metrics", None);
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../config/grafana-dashboard.json")).unwrap();
    let mut names = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("nexor_") {
                    let base = format!("nexor_{name}");
                    let base = base.trim_end_matches("_bucket");
                    assert!(
                        m.contains(&format!("# TYPE {base} ")),
                        "{base} is not exported"
                    );
                    names += 1;
                }
            }
        }
    }
    assert!(names >= 9);
}

// ---- the panic net (debug builds: the demo backend's test faults) ----------------

/// Arms the demo backend's test faults in the relays this test binary
/// starts (they inherit the environment); see `upstream::demo::fault`.
fn arm_faults() {
    std::env::set_var("NEXOR_TEST_FAULTS", "1");
}

/// In the faults' panic messages; no log line may carry it.
const FAULT_SECRET: &str = "fault-secret-6b1d2e";

fn demo_relay() -> Relay {
    arm_faults();
    RelayBuilder::new(false)
        .upstream("d", "kind = \"demo\"")
        .start()
}

/// Reads the demo terminal's output until `needle` shows up.
fn term_until(c: &mut Conn, p: &mut Vec<u8>, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let f = read_frame(c, p).expect("terminal output");
        assert_eq!(f.opcode, 2, "{:?} {:?}", close_code(&f), text);
        text.push_str(&String::from_utf8_lossy(&f.payload));
    }
    text
}

/// Opens a demo terminal; returns it and the worker its session runs on
/// (the first part of the audit `sid`).
fn open_term(relay: &Relay, nth: usize) -> (Conn, Vec<u8>, String) {
    let (mut c, mut p) = open(relay, &relay.sign(&Relay::claims("d", Console::Term)));
    term_until(&mut c, &mut p, "$ ");
    wait_events(relay, "session_start", nth + 1);
    let sid = audit_lines(relay, "session_start")[nth]["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let worker = sid.split('-').next().unwrap().to_string();
    (c, p, worker)
}

fn type_line(c: &mut Conn, p: &mut Vec<u8>, line: &str) {
    write_frame(c, true, 2, format!("{line}\r").as_bytes(), true);
    term_until(c, p, &format!("you typed: {line}"));
}

/// Reads until the relay closes the socket; the close code if it sent a
/// close frame first.
fn until_closed(c: &mut Conn, p: &mut Vec<u8>) -> Option<u16> {
    let mut code = None;
    loop {
        match read_frame(c, p) {
            Ok(f) if f.opcode == 8 => {
                code = close_code(&f);
                // Answer it, as a browser does, and wait for the TCP close.
                write_frame(c, true, 8, &f.payload, true);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return code,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return code,
            Err(e) => panic!("the socket was not closed: {e}"),
        }
    }
}

#[test]
fn a_panicking_session_ends_only_itself() {
    let relay = demo_relay();
    // Six sessions on two workers: one worker has at least three.
    let mut sessions: Vec<(Conn, Vec<u8>, String)> = (0..6).map(|i| open_term(&relay, i)).collect();
    let busy = ["0", "1"]
        .into_iter()
        .max_by_key(|w| sessions.iter().filter(|s| s.2 == *w).count())
        .unwrap()
        .to_string();
    let at = sessions.iter().position(|s| s.2 == busy).unwrap();
    let (mut vc, mut vp, _) = sessions.remove(at);
    assert!(
        sessions.iter().any(|s| s.2 == busy),
        "a neighbour on {busy}"
    );
    write_frame(&mut vc, true, 2, b"nexor-test-fault:panic\r", true);
    let code = until_closed(&mut vc, &mut vp);
    eprintln!("panicked session closed with {code:?}");
    assert!(relay.wait_log("session task panicked"), "{}", relay.logs());
    // The panic was in the session's backend task; the session's pump saw
    // its upstream close and ended the session.
    wait_events(&relay, "session_end", 1);
    let end = &audit_lines(&relay, "session_end")[0];
    assert_eq!(end["code"].as_u64().map(|c| c as u16), code, "{end}");
    // Every other session, on both workers, still relays.
    for (i, (c, p, _)) in sessions.iter_mut().enumerate() {
        type_line(c, p, &format!("still here {i}"));
    }
    // New sessions still get their 101 and relay.
    for i in 0..4 {
        let (mut c, mut p, _) = open_term(&relay, 6 + i);
        type_line(&mut c, &mut p, "new");
    }
    assert_eq!(
        relay.admin_request("GET", "/healthz", None),
        (200, "ok\n".to_string())
    );
    let (_, m) = relay.admin_request("GET", "/metrics", None);
    assert_eq!(metric(&m, "nexor_session_panics_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "nexor_workers_alive"), Some(2.0), "{m}");
    let logs = relay.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("session task panicked"))
        .unwrap();
    assert!(
        line.contains(&format!("\"worker\":{busy}")) && line.contains("src/upstream/demo.rs:"),
        "{line}"
    );
    // The panic message held data: it never reaches a log line.
    assert!(!logs.contains(FAULT_SECRET), "{logs}");
    assert_eq!(logs.matches("panic").count(), 1, "one line: {logs}");
}

#[test]
fn a_dead_worker_fails_healthz() {
    let mut relay = demo_relay();
    let (mut c, p, worker) = open_term(&relay, 0);
    assert_eq!(
        relay.admin_request("GET", "/healthz", None),
        (200, "ok\n".to_string())
    );
    // A task outside the net panics: its worker thread dies.
    write_frame(&mut c, true, 2, b"nexor-test-fault:kill-worker\r", true);
    assert!(relay.wait_log("worker thread died"), "{}", relay.logs());
    drop((c, p));
    assert!(relay.alive(), "the process lives on");
    assert_eq!(
        relay.admin_request("GET", "/healthz", None),
        (503, format!("worker {worker} not running\n"))
    );
    let (_, m) = relay.admin_request("GET", "/metrics", None);
    assert_eq!(metric(&m, "nexor_workers_alive"), Some(1.0), "{m}");
    // The dead worker's listener left the port: every new session lands
    // on the live worker.
    for i in 0..8 {
        let (mut c, mut p, w) = open_term(&relay, 1 + i);
        assert_ne!(w, worker);
        type_line(&mut c, &mut p, "after");
    }
    let logs = relay.logs();
    assert!(!logs.contains(FAULT_SECRET), "{logs}");
    // The hook's line says where, and which thread, without the message.
    assert!(
        logs.contains(&format!("\"thread\":\"nexor-w{worker}\"")),
        "{logs}"
    );
}

/// A relay whose stdout (the audit trail) is a pipe nobody reads: its stderr is
/// read, its stdout handed back unread. The queue is made small
/// (`NEXOR_TEST_LOG_QUEUE`, debug builds) so a few hundred lines overflow it.
fn relay_with_stalled_stdout(
    echo: &Server,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
    std::process::ChildStdout,
    tempfile::TempDir,
) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\
         [tickets]\nkeys = [{{ id = \"{KEY_ID}\", secret = \"{KEY_B64}\" }}]\nmax_ttl = \"120s\"\n\
         [limits]\nhandshakes_per_ip = 10000\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.t]\nkind = \"tcp\"\naddr = \"{}\"\n",
        echo.addr
    );
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nexor-relay"))
        .env("NEXOR_TEST_LOG_QUEUE", "64")
        .args(["serve", "-c"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if l.contains("\"msg\":\"listening\"") {
                let _ = tx.send(l);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("listening");
    let field = |name: &str| -> std::net::SocketAddr {
        line.split(&format!("\"{name}\":\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    (child, field("addr"), field("admin"), stdout, dir)
}

/// Logs and audit never block a worker: with stdout a pipe nobody reads, 300
/// sessions are still admitted and relayed; the lines that did not fit are
/// counted in `nexor_log_lines_dropped_total{stream="audit"}`, and once the pipe is
/// read again one `lines_dropped` line says how many, and every line is accounted for.
#[test]
fn a_stalled_stdout_never_stalls_sessions() {
    use std::io::{Read, Write};
    const SESSIONS: u64 = 300;
    let echo = Server::tcp_echo();
    let (mut child, addr, admin, mut stdout, _dir) = relay_with_stalled_stdout(&echo);
    let key = Relay::key();
    for i in 0..SESSIONS {
        let t = nexor_relay::ticket::mint(&Relay::claims("t", Console::Vnc), &key);
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "GET /console?ticket={t} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let (status, head, mut pending) = read_response_head(&mut c);
        assert_eq!(status, 101, "session {i}: {head}");
        let data = format!("session {i}").into_bytes();
        write_frame(&mut c, true, 2, &data, true);
        let mut got = Vec::new();
        while got.len() < data.len() {
            let f = read_frame(&mut c, &mut pending).expect("echo while stdout is stalled");
            got.extend_from_slice(&f.payload);
        }
        assert_eq!(got, data);
        write_frame(&mut c, true, 8, &[0x03, 0xe8], true);
        while let Ok(f) = read_frame(&mut c, &mut pending) {
            if f.opcode == 8 {
                break;
            }
        }
    }
    // Every session_end is queued (or dropped) before its slot is released; give the
    // last ones a moment to be counted, then read the counter.
    let metric = |admin| {
        let mut c = std::net::TcpStream::connect(admin).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        let _ = c.read_to_string(&mut body);
        body.lines()
            .find_map(|l| l.strip_prefix("nexor_log_lines_dropped_total{stream=\"audit\"} "))
            .unwrap_or_else(|| panic!("the dropped-lines metric in {body}"))
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let dropped = metric(admin);
    assert!(dropped > 0, "the audit queue never overflowed");
    // The reader returns: everything queued arrives, then one line with the count.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(&mut stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let (mut events, mut reported) = (0u64, None);
    while reported.is_none() {
        let l = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a lines_dropped report once stdout is read");
        if l.contains("\"event\":\"session_start\"") || l.contains("\"event\":\"session_end\"") {
            events += 1;
        }
        if l.contains("\"event\":\"lines_dropped\"") {
            assert!(l.contains("\"stream\":\"audit\""), "{l}");
            let count: u64 = l
                .split("\"count\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{l}"));
            reported = Some(count);
        }
    }
    assert_eq!(reported, Some(dropped), "the report matches the metric");
    // Nothing else is lost: what arrived plus what was dropped is every line.
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        if l.contains("\"event\":\"session_start\"") || l.contains("\"event\":\"session_end\"") {
            events += 1;
        }
    }
    assert_eq!(events + dropped, 2 * SESSIONS);
    assert_eq!(
        metric(admin),
        dropped,
        "nothing dropped once the reader is back"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A relay from a config file, both outputs collected; waits for "listening".
struct Proc {
    child: std::process::Child,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    fn start(config: &std::path::Path) -> Proc {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nexor-relay"))
            .args(["serve", "-c"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let mut g = logs.lock().unwrap();
                    g.push_str(&l);
                    g.push('\n');
                }
            });
        }
        let p = Proc { child, logs };
        assert!(
            p.wait_log("\"msg\":\"listening\"", Duration::from_secs(20)),
            "relay did not start: {}",
            p.logs()
        );
        p
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        eventually(timeout, || self.logs().contains(needle))
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One console through `addr`: the upgrade (must be 101) and one echo.
fn console(
    addr: std::net::SocketAddr,
    key: &Key,
) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    use std::io::Write;
    let t = nexor_relay::ticket::mint(&Relay::claims("t", Console::Vnc), key);
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /console?ticket={t} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let (status, head, mut pending) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_response_head(&mut c)))
            .map_err(|_| "no response head (connection dropped)".to_string())?;
    if status != 101 {
        return Err(format!("refused: {head}"));
    }
    echo_once(&mut c, &mut pending)?;
    Ok((c, pending))
}

fn echo_once(c: &mut std::net::TcpStream, pending: &mut Vec<u8>) -> Result<(), String> {
    let data = pattern(64, rand_u64() as u8);
    write_frame(c, true, 2, &data, true);
    let mut got = Vec::new();
    while got.len() < data.len() {
        let f = read_frame(c, pending).map_err(|e| format!("echo: {e}"))?;
        if f.opcode != 2 {
            return Err(format!("echo: frame {:?} {:?}", f.opcode, close_code(&f)));
        }
        got.extend_from_slice(&f.payload);
    }
    (got == data).then_some(()).ok_or("echo differs".into())
}

/// An upgrade on one host: relay B starts beside relay A with the same config (same
/// console port through SO_REUSEPORT, same admin port), then A gets SIGTERM. A client
/// opening consoles all along sees no refusal and no dropped handshake; A's live
/// consoles keep working until `drain_timeout`; B's admin listener, pending while A
/// held the port, comes up once A has exited.
#[test]
fn upgrade_beside_the_old_relay_refuses_no_one() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    const DRAIN: Duration = Duration::from_secs(3);
    // Without net.ipv4.tcp_migrate_req, Linux resets the connections still
    // in A's accept queue at the instant A lets go of the port (README,
    // "Upgrading in place"): set it as an operator would, for this test.
    if skip_without(&["tcp_migrate_req"]) {
        return;
    }
    let _migrate = MigrateReq::on();
    let echo = Server::tcp_echo();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (addr, admin) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{addr}\"\nworkers = 2\ndrain_timeout = \"{}s\"\n\
             [tickets]\nkeys = [{{ id = \"{KEY_ID}\", secret = \"{KEY_B64}\" }}]\nmax_ttl = \"120s\"\n\
             [limits]\nhandshakes_per_ip = 100000\n\
             [admin]\nlisten = \"{admin}\"\n\
             [upstreams.t]\nkind = \"tcp\"\naddr = \"{}\"\n",
            DRAIN.as_secs(),
            echo.addr
        ),
    )
    .unwrap();
    let mut a = Proc::start(&path);
    let b = Proc::start(&path);
    assert!(b.logs().contains("\"admin_pending\":true"), "{}", b.logs());
    let key = Relay::key();
    // Consoles opened before the upgrade; some land on A, some on B.
    let mut held: Vec<_> = (0..16).map(|_| console(addr, &key).unwrap()).collect();
    // The client that opens consoles continuously (one at a time, each closed after its echo).
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let (stop, opened, failures, key) =
            (stop.clone(), opened.clone(), failures.clone(), Relay::key());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match console(addr, &key) {
                    Ok(_) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = opened.load(Ordering::Relaxed);
    let term = std::time::Instant::now();
    a.signal("TERM");
    // Until shortly before drain_timeout every held console still relays.
    std::thread::sleep(DRAIN - Duration::from_millis(800));
    for (i, (c, p)) in held.iter_mut().enumerate() {
        echo_once(c, p).unwrap_or_else(|e| panic!("held console {i} ended early: {e}"));
    }
    assert!(
        term.elapsed() < DRAIN,
        "the check ran too late to mean anything"
    );
    // A exits after its drain; B's admin comes up.
    let st = eventually(DRAIN + Duration::from_secs(10), || {
        matches!(a.child.try_wait(), Ok(Some(_)))
    });
    assert!(st, "A did not exit: {}", a.logs());
    assert!(a.logs().contains("\"handed_over\":true"), "{}", a.logs());
    assert!(
        b.wait_log(
            "admin listening (the port was freed)",
            Duration::from_secs(5)
        ),
        "{}",
        b.logs()
    );
    let mut c = std::net::TcpStream::connect(admin).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    {
        use std::io::Write;
        write!(
            c,
            "GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
    }
    assert_eq!(read_response_head(&mut c).0, 200, "B's /readyz");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let after = opened.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{failures:?}\nA:\n{}\nB:\n{}",
        a.logs(),
        b.logs()
    );
    assert!(
        after > before + 20,
        "the client kept opening consoles ({before} then {after})"
    );
    assert!(
        !a.logs().contains("\"status\":503"),
        "A refused someone: {}",
        a.logs()
    );
    drop(held);
}

fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
