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

// ---- the store thread ----------------------------------------------------------------

fn store_config(r: &RedisServer, lease: &str) -> FleetConfig {
    let text = format!(
        "[fleet]\nredis = \"{}\"\nrelay_id = \"test-relay\"\nlease = \"{lease}\"\nkey_prefix = \"st:\"",
        r.url()
    );
    let v: toml::Value = toml::from_str(&text).unwrap();
    FleetConfig::parse(&v["fleet"], false).unwrap()
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
    // Renewed: still counted after three leases.
    std::thread::sleep(Duration::from_secs(3));
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
