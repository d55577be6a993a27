//! The shared wrapper: an [`Admission`]'s slots are released when it
//! drops, with the grant its stage allows; replace and revoke reach the
//! live sessions' controls; handshake slots are counted and given back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::*;
use crate::config::VmLimit;
use crate::http::{parse_request, HeadLimits};
use crate::ticket::{mint, Key};

const SECRET: &str = "oneXZRCfi6j3Vry/VM6mIWTg8JeXRZGu55wYzKyy2kA=";
const NOW: u64 = 1_700_000_000;

/// The registry's clock in these tests: releases happen at `NOW + 1`.
fn clock() -> u64 {
    NOW + 1
}

fn config() -> Config {
    let text = format!(
        "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{SECRET}\" }}]\nreconnect_grace = \"30s\"\n\
[upstreams.lab]\nkind = \"demo\"\n"
    );
    Config::from_toml(&text, Path::new("/nonexistent")).unwrap()
}

fn claims(n: u32, sub: &str, vmid: u64) -> Claims {
    serde_json::from_value(serde_json::json!({
        "exp": NOW + 60,
        "iat": NOW,
        "jti": format!("jti-{n:016}"),
        "sub": sub,
        "upstream": "lab",
        "node": "n1",
        "vmid": vmid,
        "console": "term",
    }))
    .unwrap()
}

fn head(c: &Claims) -> RequestHead {
    let t = mint(c, &Key::from_secret_b64("k1", SECRET).unwrap());
    let raw = format!(
        "GET /console?ticket={t} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    parse_request(raw.as_bytes(), HeadLimits::default())
        .unwrap()
        .unwrap()
        .0
}

fn at(now: u64) -> Admit {
    Admit {
        client: "203.0.113.7".parse().unwrap(),
        now,
        draining: false,
    }
}

fn admit(reg: &Arc<Registry>, c: &Claims, now: u64, cfg: &Config) -> Result<Admission, Refusal> {
    reg.admit(&head(c), at(now), cfg)
}

#[test]
fn slots_are_released_on_drop_with_a_grant_before_the_relay_only() {
    let reg = Arc::new(Registry::new(clock));
    let cfg = config();
    let c = claims(1, "u1", 100);
    let a = admit(&reg, &c, NOW, &cfg).unwrap();
    let ctl = a.slots.ctl().clone();
    assert_eq!((ctl.sub.as_str(), ctl.vm.as_str()), ("u1", "lab/n1/100"));
    assert_eq!(ctl.started_unix, NOW);
    assert_eq!(reg.live().len(), 1);
    // A dial failure or a browser gone before the 101: the client may
    // retry with the same ticket.
    drop(a);
    assert!(reg.live().is_empty());
    let mut b = admit(&reg, &c, NOW + 2, &cfg).unwrap();
    assert!(b.slots.ctl().reconnect);
    // Relaying, then dropped without an outcome (a cancelled task): no grant.
    b.slots.relaying();
    drop(b);
    let e = admit(&reg, &c, NOW + 3, &cfg).err();
    assert_eq!(e, Some(Refusal::Replay));
    assert!(reg.live().is_empty());
}

#[test]
fn the_outcome_decides_the_grant() {
    let reg = Arc::new(Registry::new(clock));
    let cfg = config();
    for (n, (code, by, grant)) in [(1006, "browser", true), (1000, "browser", false)]
        .into_iter()
        .enumerate()
    {
        let c = claims(10 + n as u32, "u1", 100);
        let mut a = admit(&reg, &c, NOW, &cfg).unwrap();
        a.slots.relaying();
        a.slots.set_outcome(code, by);
        drop(a);
        assert_eq!(admit(&reg, &c, NOW + 2, &cfg).is_ok(), grant, "{code} {by}");
    }
}

#[test]
fn a_panic_releases_the_slots_and_grants_nothing() {
    let reg = Arc::new(Registry::new(clock));
    let cfg = config();
    let c = claims(1, "u1", 100);
    let a = admit(&reg, &c, NOW, &cfg).unwrap();
    let r = catch_unwind(AssertUnwindSafe(move || {
        let _held = a;
        panic!("test: a session task panics");
    }));
    assert!(r.is_err());
    assert!(reg.live().is_empty(), "no slot leaks");
    assert_eq!(admit(&reg, &c, NOW + 2, &cfg).err(), Some(Refusal::Replay));
}

#[test]
fn replace_and_revoke_reach_the_live_sessions() {
    let reg = Arc::new(Registry::new(clock));
    let mut cfg = config();
    cfg.limits.max_sessions_per_vm = Some(1);
    cfg.limits.on_vm_limit = VmLimit::Replace;
    let a = admit(&reg, &claims(1, "u1", 7), NOW, &cfg).unwrap();
    let b = admit(&reg, &claims(2, "u2", 7), NOW, &cfg).unwrap();
    assert_eq!(a.slots.ctl().requested(), Some(CloseRequest::Replaced));
    assert_eq!(b.slots.ctl().requested(), None);
    // Still listed until its task ends.
    assert_eq!(reg.live().len(), 2);
    drop(a);
    let r = reg.revoke(&Revoke::Sub("u2"), NOW + 1, 30, NOW + 500);
    assert_eq!(r.sessions, 1);
    assert_eq!(b.slots.ctl().requested(), Some(CloseRequest::Revoked));
    // The first request wins.
    b.slots.ctl().request_close(CloseRequest::Shutdown);
    assert_eq!(b.slots.ctl().requested(), Some(CloseRequest::Revoked));
    drop(b);
    assert!(reg.live().is_empty());
    assert_eq!(reg.remembered(), 2);
}

#[test]
fn handshake_slots_in_all_and_per_ip() {
    let reg = Arc::new(Registry::new(clock));
    let a = reg.begin_handshake(None, 2, 9).unwrap();
    let _b = reg.begin_handshake(None, 2, 9).unwrap();
    assert_eq!(
        reg.begin_handshake(None, 2, 9).err(),
        Some(Dropped::HandshakeCapacity)
    );
    drop(a);
    assert!(reg.begin_handshake(None, 2, 9).is_ok());
    drop(_b);

    let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let held: Vec<_> = (0..3)
        .map(|_| reg.begin_handshake(Some(x), 100, 3).unwrap())
        .collect();
    assert_eq!(
        reg.begin_handshake(Some(x), 100, 3).err(),
        Some(Dropped::HandshakeCapacityIp)
    );
    let mut other = reg.begin_handshake(Some(y), 100, 3).unwrap();
    // A balancer's connection, counted once its PROXY header names `x`.
    let mut via_lb = reg.begin_handshake(None, 100, 3).unwrap();
    assert!(!via_lb.rebind(x, 3));
    assert!(via_lb.rebind(y, 3));
    // Moving `other` to `x` fails; it then counts against nobody.
    assert!(!other.rebind(x, 3));
    drop(held);
    assert!(other.rebind(x, 3));
    drop((other, via_lb));
    let g = lock(&reg.shared);
    assert_eq!(
        (g.ledger.handshakes_from(x), g.ledger.handshakes_from(y)),
        (0, 0)
    );
    assert_eq!(reg.handshakes.load(Ordering::Acquire), 0);
}

#[test]
fn the_wrapper_answers_as_admit_does() {
    let mut cfg = config();
    cfg.limits.handshakes_per_ip = Some(3);
    let reg = Arc::new(Registry::new(clock));
    let mut ledger = Ledger::new();
    let c = claims(1, "u1", 100);
    let mut bad = claims(2, "u1", 100);
    bad.upstream = "nowhere".into();
    let heads = [head(&c), head(&c), head(&bad), head(&claims(3, "u1", 1))];
    let (mut got, mut held) = (Vec::new(), Vec::new());
    for h in &heads {
        // Admitted sessions stay held, as live ones are.
        let shared = reg.admit(h, at(NOW), &cfg).map(|a| held.push(a));
        let pure = admission::admit(h, at(NOW), &cfg, &mut ledger).map(|_| ());
        assert_eq!(shared, pure);
        got.push(shared.err().map(|r| r.label()));
    }
    assert_eq!(
        got,
        [
            None,
            Some("ticket_used"),
            Some("unknown_upstream"),
            Some("handshake_rate")
        ]
    );
    let draining = Admit {
        draining: true,
        ..at(NOW)
    };
    assert_eq!(
        reg.admit(&heads[0], draining, &cfg).err(),
        Some(Refusal::Draining)
    );
}
