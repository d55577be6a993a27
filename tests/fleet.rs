//! Fleet mode on a real `redis-server` (Debian package; scripts/test
//! installs it): the Lua scripts' semantics called directly, the store
//! thread of src/fleet/store.rs, and three relays with the same `[fleet]`
//! behind HAProxy round robin.
//!
//! Tests whose tools are missing skip with one line (tests/common/mod.rs
//! `skip_without`).

mod common;
#[path = "common/fleet.rs"]
mod fleet_support;
#[path = "browser/support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fleet_support::*;
use nexor_relay::fleet::store::{Fleet, StoreError};
use nexor_relay::fleet::{
    self, Admit, AdmitArgs, Deny, Event, FleetConfig, Keys, ReleaseArgs, Selector,
};
use nexor_relay::registry::JtiHash;

// ---- the scripts, called directly ----------------------------------------------------

fn jti(n: u64) -> JtiHash {
    use sha2::Digest;
    JtiHash(sha2::Sha256::digest(format!("jti-{n}-{}", rand_u64())).into())
}

fn args(j: JtiHash, sid: u64, now_ms: u64) -> AdmitArgs {
    AdmitArgs {
        now_ms,
        jti: j,
        sid,
        client: "203.0.113.7".into(),
        time_failed: false,
        deadline: now_ms / 1000 + 3600,
        keep_ms: now_ms + 65_000,
        grace_ms: 30_000,
        lease_ms: 15_000,
        max_sessions: 0,
        max_per_user: 0,
        max_per_vm: 0,
        replace: false,
        sub: "customer-42".into(),
        vm: "pve/n1/101".into(),
        upstream: "pve".into(),
    }
}

struct Direct {
    con: redis::Connection,
    keys: Keys,
}

impl Direct {
    fn new(r: &RedisServer) -> Direct {
        Direct {
            con: r.con(),
            keys: Keys::new("t:"),
        }
    }

    fn admit(&mut self, node: &str, a: &AdmitArgs) -> Admit {
        let s = redis::Script::new(fleet::ADMIT_LUA);
        let mut inv = s.prepare_invoke();
        for k in a.keys(&self.keys, node) {
            inv.key(k);
        }
        for v in a.argv(&self.keys, "r", node) {
            inv.arg(v);
        }
        let v: redis::Value = inv.invoke(&mut self.con).expect("admit script");
        let items = fleet::store::items(&v).expect("array reply");
        fleet::decode_admit(&items).unwrap_or_else(|| panic!("reply {v:?}"))
    }

    fn release(&mut self, node: &str, a: &AdmitArgs, now_ms: u64, grant: bool) -> i64 {
        let r = ReleaseArgs {
            now_ms,
            jti: a.jti,
            member: fleet::member(a.now_ms, node, a.sid),
            sid: a.sid,
            grant,
            grace_ms: a.grace_ms,
            sub: a.sub.clone(),
            vm: a.vm.clone(),
            client: a.client.clone(),
            deadline: a.deadline,
            keep_ms: a.keep_ms,
        };
        let s = redis::Script::new(fleet::RELEASE_LUA);
        let mut inv = s.prepare_invoke();
        for k in r.keys(&self.keys, node) {
            inv.key(k);
        }
        for v in r.argv() {
            inv.arg(v);
        }
        inv.invoke(&mut self.con).expect("release script")
    }

    fn revoke(&mut self, sel: &Selector, now_ms: u64) -> fleet::Revoked {
        let (keys, argv) =
            fleet::revoke_call(&self.keys, sel, &[], now_ms, 30_000, now_ms + 200_000);
        let s = redis::Script::new(fleet::REVOKE_LUA);
        let mut inv = s.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for v in argv {
            inv.arg(v);
        }
        let v: redis::Value = inv.invoke(&mut self.con).expect("revoke script");
        fleet::decode_revoke(&fleet::store::items(&v).unwrap()).unwrap()
    }
}

const USED: Admit = Admit::Denied(Deny::Used);

fn ok(reconnect: bool, deadline: u64) -> Admit {
    Admit::Admitted {
        reconnect,
        deadline,
        replaced: 0,
    }
}

/// Claim twice: the second is refused, from any relay, until the grant
/// after an abnormal end, which only the same IP within the grace and before
/// the lifetime deadline may use.
#[test]
fn script_single_use_and_grant_by_ip_and_deadline() {
    if skip_without(&["redis-server"]) {
        return;
    }
    let r = RedisServer::start(false);
    let mut d = Direct::new(&r);
    let t0 = 1_800_000_000_000u64;
    let j = jti(1);
    let a = args(j, 1, t0);
    let dl = a.deadline;
    assert_eq!(d.admit("r1#1", &a), ok(false, dl));
    // Used: refused everywhere while live.
    assert_eq!(d.admit("r2#1", &args(j, 1, t0 + 10)), USED);
    assert_eq!(d.admit("r1#1", &args(j, 2, t0 + 10)), USED);
    // A clean end grants nothing.
    assert_eq!(d.release("r1#1", &a, t0 + 1000, false), 0);
    assert_eq!(d.admit("r2#1", &args(j, 1, t0 + 1100)), USED);

    // An abnormal end: the grant, for the same IP only, within the grace.
    let j = jti(2);
    let a = args(j, 3, t0);
    assert_eq!(d.admit("r1#1", &a), ok(false, a.deadline));
    assert_eq!(d.release("r1#1", &a, t0 + 1000, true), 1);
    let mut other_ip = args(j, 4, t0 + 2000);
    other_ip.client = "198.51.100.1".into();
    assert_eq!(d.admit("r2#1", &other_ip), USED);
    // Even with the ticket expired (time check failed): the grant applies,
    // and the deadline of the first use is kept.
    let mut again = args(j, 5, t0 + 2000);
    again.time_failed = true;
    again.deadline = 1;
    assert_eq!(d.admit("r2#1", &again), ok(true, a.deadline));
    // One live session at a time.
    assert_eq!(d.admit("r3#1", &args(j, 6, t0 + 2100)), USED);
    assert_eq!(d.release("r2#1", &again, t0 + 3000, true), 1);
    // Past the grace (3000 + 30 s): refused.
    assert_eq!(d.admit("r3#1", &args(j, 7, t0 + 33_001)), USED);

    // Past the lifetime deadline: no grant applies.
    let j = jti(3);
    let mut a = args(j, 8, t0);
    a.deadline = t0 / 1000 + 2;
    assert_eq!(d.admit("r1#1", &a), ok(false, a.deadline));
    d.release("r1#1", &a, t0 + 1000, true);
    assert_eq!(d.admit("r1#1", &args(j, 9, t0 + 2000)), USED);

    // A first use whose time check failed: refused as such.
    let mut late = args(jti(4), 10, t0);
    late.time_failed = true;
    assert_eq!(d.admit("r1#1", &late), Admit::Denied(Deny::Time));
}

/// Leases: a relay that stops renewing (died) stops counting after the
/// lease, and its session's ticket may then reconnect on another relay.
#[test]
fn script_leases_expire_and_a_dead_relays_ticket_reconnects() {
    if skip_without(&["redis-server"]) {
        return;
    }
    let r = RedisServer::start(false);
    let mut d = Direct::new(&r);
    let t0 = 1_800_000_000_000u64;
    let lim = |mut a: AdmitArgs| {
        a.lease_ms = 1000;
        a.max_per_vm = 1;
        a
    };
    let j = jti(10);
    let a = lim(args(j, 1, t0));
    assert_eq!(d.admit("dead#1", &a), ok(false, a.deadline));
    // Within the lease: the VM is full, the ticket is live.
    assert_eq!(
        d.admit("r2#1", &lim(args(jti(11), 1, t0 + 500))),
        Admit::Denied(Deny::VmLimit)
    );
    assert_eq!(d.admit("r2#1", &lim(args(j, 2, t0 + 500))), USED);
    // After the lease: the dead relay's session no longer counts...
    let b = lim(args(jti(12), 3, t0 + 1500));
    assert_eq!(d.admit("r2#1", &b), ok(false, b.deadline));
    d.release("r2#1", &b, t0 + 1600, false);
    // ...and its ticket reconnects from the same IP, as after an abnormal
    // end at the lease's end (t0 + 1000), within the grace.
    assert_eq!(
        d.admit("r2#1", &lim(args(j, 4, t0 + 2000))),
        ok(true, a.deadline)
    );
    // The keys expire on their own: the ticket entry is not kept forever.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(d.keys.ticket(&j))
        .query(&mut d.con)
        .unwrap();
    assert!(ttl > 0, "ticket key without expiry: {ttl}");
}

/// Per-user and global counts, VM reject and replace (the oldest session
/// goes, and its relay hears it on the events channel).
#[test]
fn script_limits_and_replace_publish() {
    if skip_without(&["redis-server"]) {
        return;
    }
    let r = RedisServer::start(false);
    let mut d = Direct::new(&r);
    let mut sub = r.con();
    let mut ps = sub.as_pubsub();
    ps.subscribe(d.keys.events()).unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = 1_800_000_000_000u64;
    let mk = |n: u64, sid: u64, at: u64, f: &dyn Fn(&mut AdmitArgs)| {
        let mut a = args(jti(n), sid, at);
        f(&mut a);
        a
    };
    let user = |a: &mut AdmitArgs| a.max_per_user = 1;
    let a = mk(20, 1, t0, &user);
    assert!(matches!(d.admit("r1#1", &a), Admit::Admitted { .. }));
    let mut other_vm = mk(21, 2, t0 + 1, &user);
    other_vm.vm = "pve/n1/102".into();
    assert_eq!(d.admit("r2#1", &other_vm), Admit::Denied(Deny::UserLimit));
    let global = |a: &mut AdmitArgs| {
        a.max_sessions = 1;
        a.sub = "someone-else".into();
        a.vm = "pve/n9/9".into();
    };
    assert_eq!(
        d.admit("r2#1", &mk(22, 3, t0 + 2, &global)),
        Admit::Denied(Deny::GlobalLimit)
    );
    // Replace: the VM's oldest goes (r1's), published for its relay.
    let replace = |a: &mut AdmitArgs| {
        a.max_per_vm = 1;
        a.replace = true;
        a.sub = "u2".into();
    };
    let b = mk(23, 4, t0 + 3, &replace);
    assert_eq!(
        d.admit("r3#1", &b),
        Admit::Admitted {
            reconnect: false,
            deadline: b.deadline,
            replaced: 1
        }
    );
    let msg = ps.get_message().unwrap();
    let ev = Event::decode(msg.get_payload_bytes()).unwrap();
    assert_eq!(ev, Event::Replace(fleet::member(t0, "r1#1", 1)));
    // And under reject, the VM is full with r3's session.
    let reject = |a: &mut AdmitArgs| {
        a.max_per_vm = 1;
        a.sub = "u3".into();
    };
    assert_eq!(
        d.admit("r1#1", &mk(24, 5, t0 + 4, &reject)),
        Admit::Denied(Deny::VmLimit)
    );
}

/// Revoke by jti (also before first use), user and VM: grants voided, the
/// tickets refused, live sessions counted, the selector published.
#[test]
fn script_revoke() {
    if skip_without(&["redis-server"]) {
        return;
    }
    let r = RedisServer::start(false);
    let mut d = Direct::new(&r);
    let t0 = 1_800_000_000_000u64;
    // Before first use.
    let j = jti(30);
    let rv = d.revoke(&Selector::Jti(j), t0);
    assert!(rv.barred && rv.sessions == 0);
    assert_eq!(
        d.admit("r1#1", &args(j, 1, t0 + 1)),
        Admit::Denied(Deny::Revoked)
    );
    // A granted ticket, by user: the grant is voided.
    let j = jti(31);
    let mut a = args(j, 2, t0);
    a.sub = "u31".into();
    d.admit("r1#1", &a);
    d.release("r1#1", &a, t0 + 10, true);
    let rv = d.revoke(&Selector::Sub("u31".into()), t0 + 20);
    assert_eq!((rv.sessions, rv.grants), (0, 1));
    let mut again = args(j, 3, t0 + 30);
    again.sub = "u31".into();
    assert_eq!(d.admit("r1#1", &again), Admit::Denied(Deny::Revoked));
    // A live session, by VM: counted.
    let mut a = args(jti(32), 4, t0);
    a.vm = "pve/n1/132".into();
    d.admit("r2#1", &a);
    let rv = d.revoke(&Selector::Vm("pve/n1/132".into()), t0 + 10);
    assert_eq!(rv.sessions, 1);
}

/// docs/deploy.md's persistence: with the append-only file, a store that
/// is killed and started again still knows a ticket used and closed before
/// (and its reconnect grant); without it, the ticket is forgotten (what the
/// relays' rewrite of their live sessions cannot cover).
#[test]
fn script_state_survives_a_restart_with_aof_only() {
    if skip_without(&["redis-server"]) {
        return;
    }
    let t0 = 1_800_000_000_000u64;
    for aof in [true, false] {
        let mut r = RedisServer::start(aof);
        let mut d = Direct::new(&r);
        let (used, granted) = (jti(50), jti(51));
        let a = args(used, 1, t0);
        d.admit("r1#1", &a);
        d.release("r1#1", &a, t0 + 1000, false);
        let b = args(granted, 2, t0);
        d.admit("r1#1", &b);
        d.release("r1#1", &b, t0 + 1000, true);
        r.kill();
        r.start_again();
        let mut d = Direct::new(&r);
        let again = d.admit("r2#1", &args(used, 3, t0 + 2000));
        let grant = d.admit("r2#1", &args(granted, 4, t0 + 2000));
        if aof {
            assert_eq!(again, USED);
            assert_eq!(grant, ok(true, b.deadline));
        } else {
            assert_eq!(again, ok(false, a.deadline + 2));
            assert_eq!(grant, ok(false, b.deadline + 2));
        }
    }
}

// ---- the store thread ----------------------------------------------------------------

fn store_config(r: &RedisServer, lease: &str) -> FleetConfig {
    FleetConfig {
        redis: fleet::RedisUrl::parse(&r.url()).unwrap(),
        relay_id: Some("test-relay".into()),
        on_store_error: fleet::OnStoreError::Refuse,
        lease: nexor_relay::config::parse_duration(lease).unwrap(),
        key_prefix: "st:".into(),
        ca: None,
    }
}

fn wait_up(f: &Fleet, up: bool) {
    let t = Instant::now();
    while f.up() != up {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "store never became {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The store thread: admits in one round trip, renews leases (a 1 s lease
/// outlives 3 s of waiting), delivers events, fails fast while Redis is
/// down, reconnects by itself, and writes its live sessions again into a
/// store that came back empty, so their tickets stay used.
#[test]
fn store_thread_renews_reconnects_and_resyncs() {
    if skip_without(&["redis-server"]) {
        return;
    }
    let mut r = RedisServer::start(false);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    let f = Fleet::start(
        store_config(&r, "1s"),
        Box::new(move |e| ev2.lock().unwrap().push(e)),
    )
    .unwrap();
    wait_up(&f, true);
    let block = |o| futures_block(o);
    let j = jti(40);
    let mut a = args(j, f.next_sid(), now_ms());
    a.lease_ms = 1000;
    a.max_per_vm = 1;
    let dl = a.deadline;
    assert_eq!(block(f.admit(a.clone())), Ok(ok(false, dl)));
    // Renewed: still counted after three leases. The store forgets its
    // scripts meanwhile (SCRIPT FLUSH): they are loaded again (NOSCRIPT).
    std::thread::sleep(Duration::from_secs(3));
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut r.con())
        .unwrap();
    let mut b = args(jti(41), f.next_sid(), now_ms());
    b.lease_ms = 1000;
    b.max_per_vm = 1;
    assert_eq!(block(f.admit(b)), Ok(Admit::Denied(Deny::VmLimit)));
    // Listed.
    let list = f.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["jti_sha256"], j.to_string());
    assert_eq!(list[0]["relay"], "test-relay");
    // Revoke through the store: published and heard by the listener.
    let other = jti(42);
    let rv = f
        .revoke(Selector::Jti(other), now_ms(), 30_000, now_ms() + 100_000)
        .unwrap();
    assert!(rv.barred);
    let t = Instant::now();
    while events.lock().unwrap().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "no event heard");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        events.lock().unwrap()[0],
        Event::Revoke(Selector::Jti(other))
    );

    // The store dies: calls fail at once.
    r.kill();
    wait_up(&f, false);
    let t = Instant::now();
    let mut c = args(jti(43), f.next_sid(), now_ms());
    c.lease_ms = 1000;
    assert_eq!(block(f.admit(c)), Err(StoreError::Unavailable));
    assert!(t.elapsed() < Duration::from_millis(500));
    // It comes back empty: the live session is written again, so its
    // ticket is still used and the VM still full.
    r.start_again();
    wait_up(&f, true);
    let mut again = args(j, f.next_sid(), now_ms());
    again.lease_ms = 1000;
    assert_eq!(block(f.admit(again)), Ok(USED));
    let mut d = args(jti(44), f.next_sid(), now_ms());
    d.lease_ms = 1000;
    d.max_per_vm = 1;
    assert_eq!(block(f.admit(d)), Ok(Admit::Denied(Deny::VmLimit)));
    // Released with a grant: the same IP reconnects.
    f.release(ReleaseArgs {
        now_ms: now_ms(),
        jti: j,
        member: f.member(&a),
        sid: a.sid,
        grant: true,
        grace_ms: 30_000,
        sub: a.sub.clone(),
        vm: a.vm.clone(),
        client: a.client.clone(),
        deadline: a.deadline,
        keep_ms: a.keep_ms,
    });
    let t = Instant::now();
    loop {
        let mut e = args(j, f.next_sid(), now_ms());
        e.lease_ms = 1000;
        match block(f.admit(e)) {
            Ok(Admit::Admitted { reconnect, .. }) => {
                assert!(reconnect);
                break;
            }
            other => assert!(t.elapsed() < Duration::from_secs(5), "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = f.stats.errors.load(std::sync::atomic::Ordering::Relaxed);
    assert!(m >= 1, "the outage was not counted");
    let mut text = String::new();
    f.stats.render(&mut text);
    assert!(text.contains("nexor_fleet_store_up 1"), "{text}");
    assert!(
        text.contains("nexor_fleet_store_rtt_seconds_count "),
        "{text}"
    );
}

/// Blocks the test thread on a oneshot (the store thread wakes it).
fn futures_block<T>(o: nexor_relay::fleet::store::Oneshot<T>) -> T {
    o.wait(Duration::from_secs(10))
        .expect("no reply from the store thread")
}

// ---- three relays behind HAProxy round robin -------------------------------------------

/// A fleet: one Redis, `n` relays with the same `[fleet]`, HAProxy in front.
struct Fleet3 {
    redis: RedisServer,
    relays: Vec<Relay>,
    hap: FleetHaproxy,
    _echo: Server,
}

impl Fleet3 {
    fn start(n: usize, fleet: &str, tickets: &str, limits: &str) -> Fleet3 {
        let redis = RedisServer::start(false);
        Self::start_on(redis, n, fleet, tickets, limits)
    }

    fn start_on(redis: RedisServer, n: usize, fleet: &str, tickets: &str, limits: &str) -> Fleet3 {
        let echo = Server::ws_echo(false);
        let up = format!("kind = \"ws\"\nurl = \"ws://{}/\"", echo.addr);
        let relays: Vec<Relay> = (1..=n)
            .map(|i| {
                fleet_relay(
                    &redis,
                    &format!("relay-{i}"),
                    fleet,
                    tickets,
                    limits,
                    &[("echo", up.clone())],
                )
            })
            .collect();
        let hap = FleetHaproxy::start(&relays.iter().map(|r| r.addr).collect::<Vec<_>>());
        let f = Fleet3 {
            redis,
            relays,
            hap,
            _echo: echo,
        };
        // Every relay connected to the store before the test starts.
        for r in &f.relays {
            assert!(
                eventually(|| metric(r, "nexor_fleet_store_up") == Some(1.0)),
                "{}",
                r.logs()
            );
        }
        f
    }

    fn ticket(&self) -> (String, String) {
        let c = Relay::claims("echo", nexor_relay::ticket::Console::Vnc);
        let h = hash_hex(&c.jti);
        (self.relays[0].sign(&c), h)
    }

    /// The index of the relay holding the session with this jti hash.
    fn holder(&self, jti_sha256: &str) -> Option<usize> {
        self.relays.iter().position(|r| {
            r.alive_admin()
                && r.admin_request("GET", "/sessions", None)
                    .1
                    .contains(jti_sha256)
        })
    }
}

trait AdminAlive {
    fn alive_admin(&self) -> bool;
}

impl AdminAlive for Relay {
    fn alive_admin(&self) -> bool {
        std::net::TcpStream::connect_timeout(&self.admin.unwrap(), Duration::from_millis(200))
            .is_ok()
    }
}

fn hash_hex(jti: &str) -> String {
    use sha2::Digest;
    JtiHash(sha2::Sha256::digest(jti.as_bytes()).into()).to_string()
}

fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A metric's value from the relay's `/metrics`.
fn metric(r: &Relay, name: &str) -> Option<f64> {
    let (_, body) = r.admin_request("GET", "/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Audit lines of refused handshakes with this status.
fn refused(r: &Relay, status: u16) -> usize {
    r.logs()
        .lines()
        .filter(|l| {
            l.contains("\"event\":\"refused\"") && l.contains(&format!("\"status\":{status},"))
        })
        .count()
}

fn starts(r: &Relay) -> Vec<String> {
    r.logs()
        .lines()
        .filter(|l| l.contains("\"event\":\"session_start\""))
        .map(String::from)
        .collect()
}

/// A console through `addr` (TLS, ticket as subprotocol): the socket after
/// the 101, or the refusal's status.
fn open(addr: std::net::SocketAddr, ticket: &str) -> Result<(Conn, Vec<u8>), u16> {
    let mut c = Conn::connect(addr, true);
    let req = format!(
        "GET /console HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: binary, nexor.ticket.{ticket}\r\n\r\n",
        addr.port()
    );
    use std::io::Write;
    c.write_all(req.as_bytes()).unwrap();
    c.flush().unwrap();
    let (status, _, rest) = read_response_head(&mut c);
    if status == 101 {
        Ok((c, rest))
    } else {
        Err(status)
    }
}

/// Sends a binary frame and reads its echo.
fn echo(c: &mut Conn, pending: &mut Vec<u8>, payload: &[u8]) {
    write_frame(c, true, 2, payload, true);
    let f = read_frame(c, pending).expect("echo");
    assert_eq!((f.opcode, f.payload.as_slice()), (2, payload));
}

/// Reads frames until a close; its code.
fn close_code_of(c: &mut Conn, pending: &mut Vec<u8>) -> Option<u16> {
    loop {
        match read_frame(c, pending) {
            Ok(f) if f.opcode == 8 => return common::close_code(&f),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// A ticket used on one relay is refused (403) on the other two, and every
/// relay lists the session.
#[test]
fn single_use_across_relays() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let f = Fleet3::start(3, "", "", "");
    let (t, h) = f.ticket();
    let (mut c, mut pending) = open(f.hap.addr(), &t).expect("first use");
    echo(&mut c, &mut pending, b"hello fleet");
    let holder = f.holder(&h).expect("a relay holds it");
    // Round robin: the next three attempts reach every relay once.
    for _ in 0..3 {
        assert_eq!(open(f.hap.addr(), &t).err(), Some(403));
    }
    for (i, r) in f.relays.iter().enumerate() {
        if i != holder {
            assert!(
                eventually(|| refused(r, 403) >= 1),
                "relay-{} never refused it: {}",
                i + 1,
                r.logs()
            );
        }
    }
    let total: usize = f.relays.iter().map(|r| starts(r).len()).sum();
    assert_eq!(total, 1);
    // Every relay's admin lists the fleet's sessions.
    for r in &f.relays {
        let (status, body) = r.admin_request("GET", "/sessions?fleet=1", None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 1, "{body}");
        assert_eq!(list[0]["jti_sha256"], h.as_str());
        assert_eq!(list[0]["relay"], format!("relay-{}", holder + 1));
    }
    echo(&mut c, &mut pending, b"still there");
}

/// SIGKILL the relay carrying a live console: the same ticket reconnects
/// through HAProxy to another relay within the grace (once the dead relay's
/// lease ran out), from the same client IP.
#[test]
fn killed_relay_console_reconnects_elsewhere() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let mut f = Fleet3::start(3, "lease = \"2s\"", "reconnect_grace = \"20s\"", "");
    let (t, h) = f.ticket();
    let (mut c, mut pending) = open(f.hap.addr(), &t).expect("first use");
    echo(&mut c, &mut pending, b"before");
    let holder = f.holder(&h).expect("a relay holds it");
    f.relays[holder].signal("KILL");
    assert_eq!(f.relays[holder].wait_exit(Duration::from_secs(5)), None);
    let killed = Instant::now();
    // The browser sees its connection drop.
    assert!(close_code_of(&mut c, &mut pending).is_none());
    // It reconnects as noVNC would, every 500 ms, through the balancer.
    let mut refusals = 0;
    let (mut c, mut pending) = loop {
        match open(f.hap.addr(), &t) {
            Ok(v) => break v,
            Err(s) => {
                assert!(s == 403 || s == 503, "status {s}");
                refusals += 1;
                assert!(killed.elapsed() < Duration::from_secs(15), "no reconnect");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    let took = killed.elapsed();
    echo(&mut c, &mut pending, b"after");
    let now_at = f.holder(&h).expect("a relay holds it again");
    assert_ne!(now_at, holder);
    assert!(
        eventually(|| starts(&f.relays[now_at])
            .last()
            .is_some_and(|l| l.contains("\"reconnect\":true"))),
        "{:?}",
        starts(&f.relays[now_at])
    );
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} ({refusals} refusals)"
    );
    // The fleet's list has the new session only: the dead relay's entries
    // went with its lease.
    let (status, body) = f.relays[now_at].admin_request("GET", "/sessions?fleet=1", None);
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["relay"], format!("relay-{}", now_at + 1));
    assert_eq!(list[0]["reconnect"], true);
    // Still single use: a second browser gets nothing.
    assert_eq!(open(f.hap.addr(), &t).err(), Some(403));
}

/// `max_sessions_per_vm = 1` across relays: `reject` refuses the second
/// session wherever it lands (429); `replace` closes the first with 4001 on
/// the relay that holds it.
#[test]
fn per_vm_reject_and_replace_across_relays() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let f = Fleet3::start(3, "", "", "max_sessions_per_vm = 1");
    let (t1, h1) = f.ticket();
    let (mut c1, mut p1) = open(f.hap.addr(), &t1).expect("first");
    let at = f.holder(&h1).unwrap();
    for _ in 0..3 {
        assert_eq!(open(f.hap.addr(), &f.ticket().0).err(), Some(429));
    }
    echo(&mut c1, &mut p1, b"first still here");
    drop(f);

    let f = Fleet3::start(
        3,
        "",
        "",
        "max_sessions_per_vm = 1\non_vm_limit = \"replace\"",
    );
    let (t1, h1) = f.ticket();
    let (mut c1, mut p1) = open(f.hap.addr(), &t1).expect("first");
    let first_at = f.holder(&h1).unwrap();
    let (t2, h2) = f.ticket();
    let (mut c2, mut p2) = open(f.hap.addr(), &t2).expect("second");
    let second_at = f.holder(&h2).unwrap();
    assert_ne!(first_at, second_at, "round robin put both on one relay");
    let t = Instant::now();
    assert_eq!(close_code_of(&mut c1, &mut p1), Some(4001));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    echo(&mut c2, &mut p2, b"second works");
    let _ = at;
}

/// `POST /sessions/revoke` on another relay's admin closes the session
/// (1008) within 1 s, and the ticket stays refused.
#[test]
fn revoke_through_another_relay_closes_the_session() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let f = Fleet3::start(3, "", "", "");
    let (t, h) = f.ticket();
    let (mut c, mut pending) = open(f.hap.addr(), &t).expect("first use");
    let at = f.holder(&h).unwrap();
    let via = (at + 2) % 3;
    let t0 = Instant::now();
    let (status, body) =
        f.relays[via].admin_request("POST", &format!("/sessions/revoke?jti_sha256={h}"), None);
    assert_eq!((status, body.as_str()), (200, "{\"revoked\":1}"));
    assert_eq!(close_code_of(&mut c, &mut pending), Some(1008));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // Revoked, fleet-wide: no reconnect anywhere.
    for _ in 0..3 {
        assert_eq!(open(f.hap.addr(), &t).err(), Some(403));
    }
    // A jti revoked before its first use: refused on every relay.
    let (t2, h2) = f.ticket();
    let (status, _) =
        f.relays[0].admin_request("POST", &format!("/sessions/revoke?jti_sha256={h2}"), None);
    assert_eq!(status, 200);
    for _ in 0..3 {
        assert_eq!(open(f.hap.addr(), &t2).err(), Some(403));
    }
    // Audit lines reach the log through the writer thread: wait for them.
    for r in &f.relays {
        assert!(r.wait_log("\"reason\":\"ticket_revoked\""), "{}", r.logs());
    }
}

/// Redis stops: new handshakes get 503 and live consoles keep flowing. It
/// starts again (empty): new consoles work, and the live console's ticket
/// is still used (the relays wrote their sessions again).
#[test]
fn store_down_refuses_new_and_live_keep_flowing() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let mut f = Fleet3::start(3, "lease = \"3s\"", "", "");
    let (t, _) = f.ticket();
    let (mut c, mut pending) = open(f.hap.addr(), &t).expect("first use");
    f.redis.kill();
    for _ in 0..3 {
        assert_eq!(open(f.hap.addr(), &f.ticket().0).err(), Some(503));
    }
    for r in &f.relays {
        assert!(eventually(|| metric(r, "nexor_fleet_store_up") == Some(0.0)));
        assert!(metric(r, "nexor_fleet_store_errors_total").unwrap() >= 1.0);
        assert!(
            r.wait_log("\"reason\":\"fleet_store_unavailable\""),
            "{}",
            r.logs()
        );
    }
    echo(&mut c, &mut pending, b"live while the store is down");
    f.redis.start_again();
    assert!(eventually(|| f
        .relays
        .iter()
        .all(|r| metric(r, "nexor_fleet_store_up") == Some(1.0))));
    for _ in 0..3 {
        let (mut c2, mut p2) =
            open(f.hap.addr(), &f.ticket().0).expect("new console after restart");
        echo(&mut c2, &mut p2, b"new");
    }
    for _ in 0..3 {
        assert_eq!(open(f.hap.addr(), &t).err(), Some(403));
    }
    echo(&mut c, &mut pending, b"live after the store came back");
}

/// `on_store_error = "local"` with `[tickets] audience`: while Redis is
/// down the relay decides alone, tickets for it keep working, once each.
#[test]
fn local_mode_with_audience_serves_while_store_down() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let mut f = Fleet3::start(
        1,
        "on_store_error = \"local\"",
        "audience = \"relay-1\"",
        "",
    );
    let ticket = |f: &Fleet3| {
        let mut c = Relay::claims("echo", nexor_relay::ticket::Console::Vnc);
        c.aud = Some("relay-1".into());
        f.relays[0].sign(&c)
    };
    f.redis.kill();
    assert!(eventually(
        || metric(&f.relays[0], "nexor_fleet_store_up") == Some(0.0)
    ));
    let t = ticket(&f);
    let (mut c, mut pending) = open(f.hap.addr(), &t).expect("served locally");
    echo(&mut c, &mut pending, b"local");
    assert_eq!(open(f.hap.addr(), &t).err(), Some(403));
    // Without audience the config is refused, naming the key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexor-relay"))
        .args(["check-config", "-c"])
        .arg(write_config(
            "[fleet]\nredis = \"redis://127.0.0.1:1/0\"\non_store_error = \"local\"\n",
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fleet.on_store_error"), "{err}");
}

fn write_config(extra: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let p = dir.join("relay.toml");
    std::fs::write(
        &p,
        format!(
            "[tickets]\nkeys = [{{ id = \"{KEY_ID}\", secret = \"{KEY_B64}\" }}]\n[upstreams.d]\nkind = \"demo\"\n{extra}"
        ),
    )
    .unwrap();
    p
}

// ---- the browser ------------------------------------------------------------------------

/// Stock noVNC in Chromium through HAProxy (round robin) to two relays of a
/// fleet, on QEMU's VNC console. The relay carrying the console is killed
/// (SIGKILL): the page reconnects by itself through HAProxy with the same
/// ticket, the other relay admits it (the dead relay's lease ran out, the
/// grant is in the store) and the screen comes back, compared pixel by
/// pixel with QEMU's own screendump.
#[test]
fn browser_novnc_fails_over_to_the_other_relay() {
    if skip_without(&["redis-server", "haproxy", "chromium", "novnc", "qemu"]) {
        return;
    }
    use support::{console_url_reconnecting, page_config, Browser, QemuVnc};
    let qemu = QemuVnc::start("nexor-failover");
    let redis = RedisServer::start(false);
    let up = format!("kind = \"tcp\"\naddr = \"{}\"", qemu.vnc);
    let mk = |id: &str| {
        let fleet = format!(
            "[fleet]\nredis = \"{}\"\nrelay_id = \"{id}\"\nlease = \"2s\"\n",
            redis.url()
        );
        RelayBuilder::new(true)
            .server(&page_config())
            .server("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]")
            .upstream("qemu", &format!("{up}\n{fleet}"))
            .start()
    };
    let mut relays = [mk("relay-1"), mk("relay-2")];
    let hap = FleetHaproxy::start(&[relays[0].addr, relays[1].addr]);
    let c = Relay::claims("qemu", nexor_relay::ticket::Console::Vnc);
    let h = hash_hex(&c.jti);
    let t = relays[0].sign(&c);
    let mut b = Browser::start("fleet-failover");
    let base = format!("https://localhost:{}", hap.port);
    // The relay's console page with its own reconnect on (`reconnect=1`).
    b.open("fo", &console_url_reconnecting(&base, &t));
    b.wait_event("fo", "connect", Duration::from_secs(20));
    assert_eq!(
        b.wait("fo", "window.nexor.desktopName", Duration::from_secs(20)),
        "QEMU (nexor-failover)"
    );
    let screen_matches = |b: &mut Browser| {
        let t = Instant::now();
        loop {
            let c = b.canvas("fo");
            let (w, hh, rgb) = qemu.screendump();
            // QEMU's screen has its text drawn (not a blank first frame)
            // and the canvas shows exactly it.
            if (c.width, c.height) == (w, hh)
                && c.non_uniform() >= 500
                && c.equal_fraction(&rgb) > 0.99
            {
                return c;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "the canvas ({}x{}) never matched QEMU's screen ({w}x{hh})",
                c.width,
                c.height
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let before = screen_matches(&mut b);
    let holder = relays
        .iter()
        .position(|r| r.admin_request("GET", "/sessions", None).1.contains(&h))
        .expect("a relay holds the console");
    let killed = Instant::now();
    relays[holder].signal("KILL");
    // The page sees the drop, and reconnects by itself.
    let expr = "window.nexor.events.filter(e => e === 'connect').length >= 2";
    if let Err(e) = b.try_wait("fo", expr, Duration::from_secs(25)) {
        panic!("no reconnect: {e}; events {:?}", b.events("fo"));
    }
    let took = killed.elapsed();
    let ev = b.events("fo");
    assert_eq!(ev[0], "connect");
    assert!(ev[1].starts_with("disconnect"), "{ev:?}");
    let other = 1 - holder;
    assert!(eventually(|| !starts(&relays[other]).is_empty()));
    let starts = starts(&relays[other]);
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(starts[0].contains("\"reconnect\":true"), "{}", starts[0]);
    // The screen is back: QEMU's screen, pixel for pixel.
    let after = screen_matches(&mut b);
    assert_eq!((after.width, after.height), (before.width, before.height));
    b.shot(
        "fo",
        &support::artifacts().join("fleet-failover-after.png"),
        true,
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let _ = &mut relays;
    drop(hap);
}

/// `rediss://` with `ca_file`: the relay trusts only that CA for the store.
/// The same store without `ca_file` (Mozilla roots) is never trusted: the
/// relay stays down and refuses new consoles with 503.
#[test]
fn tls_store_with_its_own_ca() {
    if skip_without(&["redis-server", "haproxy"]) {
        return;
    }
    let redis = RedisServer::start_tls();
    let ca = redis.dir.path().join("ca.pem");
    let echo_up = Server::ws_echo(false);
    let up = format!("kind = \"ws\"\nurl = \"ws://{}/\"", echo_up.addr);
    let trusted = fleet_relay(
        &redis,
        "relay-1",
        &format!("ca_file = {:?}", ca.display().to_string()),
        "",
        "",
        &[("echo", up.clone())],
    );
    let untrusted = fleet_relay(&redis, "relay-2", "", "", "", &[("echo", up)]);
    assert!(
        eventually(|| metric(&trusted, "nexor_fleet_store_up") == Some(1.0)),
        "{}",
        trusted.logs()
    );
    let hap = FleetHaproxy::start(&[trusted.addr]);
    let t = trusted.sign(&Relay::claims("echo", nexor_relay::ticket::Console::Vnc));
    let (mut c, mut pending) = open(hap.addr(), &t).expect("console through a TLS store");
    echo(&mut c, &mut pending, b"over rediss");
    assert_eq!(open(hap.addr(), &t).err(), Some(403));
    assert!(eventually(|| metric(
        &untrusted,
        "nexor_fleet_store_errors_total"
    )
    .is_some_and(|e| e >= 1.0)));
    assert_eq!(metric(&untrusted, "nexor_fleet_store_up"), Some(0.0));
    let hap2 = FleetHaproxy::start(&[untrusted.addr]);
    assert_eq!(
        open(
            hap2.addr(),
            &trusted.sign(&Relay::claims("echo", nexor_relay::ticket::Console::Vnc))
        )
        .err(),
        Some(503)
    );
}
