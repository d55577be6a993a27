//! Admission driven in memory: request heads built from bytes, a fixed
//! `now` and a [`Ledger`]; every status of docs/design.md §2 that the relay
//! decides itself, and the reconnect grant rules. No sockets, no sleeps.

use std::path::Path;

use super::*;
use crate::config::{Config, OriginPolicy, VmLimit};
use crate::http::{parse_request, HeadLimits};
use crate::ticket::{mint, Key, TicketError};

const SECRET: &str = "oneXZRCfi6j3Vry/VM6mIWTg8JeXRZGu55wYzKyy2kA=";
const OTHER_SECRET: &str = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";
const NOW: u64 = 1_700_000_000;
/// `reconnect_grace` in [`config`].
const GRACE: u64 = 30;
const ME: &str = "203.0.113.7";
const OTHER: &str = "198.51.100.9";

/// A relay with one upstream (`lab`) and every limit off.
fn config() -> Config {
    let text = format!(
        "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{SECRET}\" }}]\nreconnect_grace = \"{GRACE}s\"\n\
[upstreams.lab]\nkind = \"demo\"\n"
    );
    Config::from_toml(&text, Path::new("/nonexistent")).unwrap()
}

fn claims(jti: &str, sub: &str, vmid: u64) -> Claims {
    serde_json::from_value(serde_json::json!({
        "exp": NOW + 60,
        "iat": NOW,
        "jti": jti,
        "sub": sub,
        "upstream": "lab",
        "node": "n1",
        "vmid": vmid,
        "console": "vnc",
    }))
    .unwrap()
}

fn jti(n: u32) -> String {
    format!("jti-{n:016}")
}

fn ticket(c: &Claims) -> String {
    mint(c, &Key::from_secret_b64("k1", SECRET).unwrap())
}

/// An upgrade request for `target`, with `extra` header lines (each ending
/// in CRLF), parsed from bytes as the session parses it.
fn head(target: &str, extra: &str) -> RequestHead {
    let raw = format!(
        "GET {target} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    parse_request(raw.as_bytes(), HeadLimits::default())
        .unwrap()
        .unwrap()
        .0
}

/// The console path with `t` as its query ticket.
fn with_ticket(t: &str) -> RequestHead {
    head(&format!("/console?ticket={t}"), "")
}

fn at(ip: &str, now: u64) -> Admit {
    Admit {
        client: ip.parse().unwrap(),
        now,
        draining: false,
    }
}

/// Status and label, or 101 for an admitted request.
fn answer(r: &Result<Admitted, Refusal>) -> (u16, &'static str) {
    match r {
        Ok(_) => (101, "admitted"),
        Err(e) => (e.status(), e.label()),
    }
}

/// Admits `c`'s ticket from `ip` at `now`.
fn open(c: &Claims, ip: &str, now: u64, cfg: &Config, l: &mut Ledger) -> Result<Admitted, Refusal> {
    admit(&with_ticket(&ticket(c)), at(ip, now), cfg, l)
}

#[test]
fn an_admitted_request_carries_its_upgrade_claims_and_session() {
    let cfg = config();
    let mut l = Ledger::new();
    let c = claims(&jti(1), "u1", 100);
    let proto = format!("binary, nexor.ticket.{}", ticket(&c));
    let h = head(
        "/console",
        &format!("Sec-WebSocket-Protocol: {proto}\r\nOrigin: https://relay.example\r\n"),
    );
    let a = admit(&h, at(ME, NOW), &cfg, &mut l).unwrap();
    assert_eq!(a.claims, c);
    assert_eq!(a.upgrade.selected_protocol(), Some("binary"));
    assert_eq!(a.upgrade.key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(a.session.jti_hash, JtiHash(c.replay_key()));
    assert_eq!(a.session.vm, "lab/n1/100");
    assert!(!a.session.reconnect && a.session.replaced.is_empty());
    // The ticket's lifetime: the config's `max_session` (8 h by default).
    assert_eq!(a.session.lifetime, cfg.limits.max_session.as_secs());
    assert_eq!((l.live(), l.remembered()), (1, 1));
}

#[test]
fn route_draining_and_rate_come_first() {
    let mut cfg = config();
    let mut l = Ledger::new();
    let t = ticket(&claims(&jti(1), "u1", 100));
    let r = admit(&head("/other", ""), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r), (404, "not_found"));
    let r = admit(
        &head(&format!("/console/?ticket={t}"), ""),
        at(ME, NOW),
        &cfg,
        &mut l,
    );
    assert_eq!(answer(&r), (404, "not_found"), "the path is exact");
    let draining = Admit {
        draining: true,
        ..at(ME, NOW)
    };
    // Draining refuses even a request that would fail later (no ticket)...
    let r = admit(&head("/console", ""), draining, &cfg, &mut l);
    assert_eq!(answer(&r), (503, "draining"));
    assert_eq!(r.unwrap_err().headers(), &[] as &[(&str, &str)]);
    // ...but not another path.
    let r = admit(&head("/x", ""), draining, &cfg, &mut l);
    assert_eq!(answer(&r), (404, "not_found"));

    cfg.limits.handshakes_per_ip = Some(2);
    let bad = head("/console", ""); // counts too: every upgrade attempt does
    assert_eq!(answer(&admit(&bad, at(ME, NOW), &cfg, &mut l)).0, 401);
    assert_eq!(answer(&admit(&bad, at(ME, NOW), &cfg, &mut l)).0, 401);
    let r = admit(&with_ticket(&t), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r), (429, "handshake_rate"));
    assert_eq!(r.unwrap_err().headers(), &[("Retry-After", "1")]);
    // Another client, or the next second: admitted.
    assert_eq!(answer(&admit(&bad, at(OTHER, NOW), &cfg, &mut l)).0, 401);
    let r = admit(&with_ticket(&t), at(ME, NOW + 1), &cfg, &mut l);
    assert_eq!(answer(&r), (101, "admitted"));
    assert_eq!(l.live(), 1, "refusals count no session");
}

#[test]
fn upgrade_and_ticket_presence() {
    let cfg = config();
    let mut l = Ledger::new();
    let t = ticket(&claims(&jti(1), "u1", 100));
    // A head that does not parse is the session's 400, before admission.
    let e = parse_request(
        b"GET /console HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        HeadLimits::default(),
    )
    .unwrap_err();
    assert_eq!(Refusal::Head(e).status(), 400);
    let cases: [(RequestHead, (u16, &str)); 7] = [
        (
            parse_request(
                format!("GET /console?ticket={t} HTTP/1.1\r\nHost: relay.example\r\n\r\n").as_bytes(),
                HeadLimits::default(),
            )
            .unwrap()
            .unwrap()
            .0,
            (426, "no_upgrade"),
        ),
        (
            parse_request(
                format!(
                    "GET /console?ticket={t} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
                )
                .as_bytes(),
                HeadLimits::default(),
            )
            .unwrap()
            .unwrap()
            .0,
            (426, "bad_ws_version"),
        ),
        (
            parse_request(
                format!(
                    "POST /console?ticket={t} HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
                HeadLimits::default(),
            )
            .unwrap()
            .unwrap()
            .0,
            (400, "method_not_get"),
        ),
        (head("/console", ""), (401, "no_ticket")),
        (
            head(&format!("/console?ticket={t}&ticket={t}"), ""),
            (400, "duplicate_ticket"),
        ),
        (
            head(
                &format!("/console?ticket={t}"),
                &format!("Sec-WebSocket-Protocol: binary, nexor.ticket.{t}\r\n"),
            ),
            (400, "duplicate_ticket"),
        ),
        (head("/console?ticket=not.a.jwt", ""), (401, "")),
    ];
    for (h, (status, label)) in cases {
        let r = admit(&h, at(ME, NOW), &cfg, &mut l);
        let (s, got) = answer(&r);
        assert_eq!(s, status, "{} {got}", h.target.len());
        if !label.is_empty() {
            assert_eq!(got, label);
        }
    }
    assert_eq!(l.live(), 0);
}

#[test]
fn signature_audience_ip_binding_and_upstream() {
    let mut cfg = config();
    let mut l = Ledger::new();
    // Signed with a key the relay does not have under `k1`.
    let c = claims(&jti(1), "u1", 100);
    let forged = mint(&c, &Key::from_secret_b64("k1", OTHER_SECRET).unwrap());
    let r = admit(&with_ticket(&forged), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r), (401, TicketError::BadSignature.label()));
    let r = admit(&with_ticket(&ticket(&c)[1..]), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r).0, 401, "a mangled ticket");

    cfg.tickets.policy.audience = Some("relay-1".into());
    let mut other_relay = claims(&jti(2), "u1", 100);
    other_relay.aud = Some("relay-2".into());
    let r = open(&other_relay, ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (403, TicketError::WrongAudience.label()));
    let mut mine = claims(&jti(3), "u1", 100);
    mine.aud = Some("relay-1".into());
    assert!(open(&mine, ME, NOW, &cfg, &mut l).is_ok());
    cfg.tickets.policy.audience = None;

    let mut bound = claims(&jti(4), "u1", 100);
    bound.ip = Some(OTHER.into());
    let r = open(&bound, ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (403, "ticket_ip_mismatch"));
    bound.ip = Some("not an address".into());
    assert_eq!(
        answer(&open(&bound, ME, NOW, &cfg, &mut l)).1,
        "ticket_ip_mismatch"
    );
    bound.ip = Some(format!("::ffff:{ME}"));
    assert!(
        open(&bound, ME, NOW, &cfg, &mut l).is_ok(),
        "a v4-mapped address is the v4 one"
    );

    let mut elsewhere = claims(&jti(5), "u1", 100);
    elsewhere.upstream = "pve9".into();
    let r = open(&elsewhere, ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (403, "unknown_upstream"));
    assert_eq!(l.live(), 2);
    assert_eq!(l.remembered(), 2, "refused tickets are not burnt");
}

#[test]
fn origin_is_checked_before_the_ticket() {
    let mut cfg = config();
    let mut l = Ledger::new();
    let c = claims(&jti(1), "u1", 100);
    let h = |origin: &str| {
        head(
            &format!("/console?ticket={}", ticket(&c)),
            &format!("Origin: {origin}\r\n"),
        )
    };
    let r = admit(&h("https://evil.example"), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r), (403, "origin_not_allowed"));
    let r = admit(&h("null"), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r).1, "origin_not_allowed");
    cfg.server.origins = OriginPolicy {
        allowed: vec!["https://portal.example".into()],
        require: true,
    };
    let r = admit(&with_ticket(&ticket(&c)), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r).1, "origin_not_allowed", "required");
    assert_eq!(l.remembered(), 0);
    let r = admit(&h("https://portal.example"), at(ME, NOW), &cfg, &mut l);
    assert_eq!(answer(&r), (101, "admitted"));
}

#[test]
fn ticket_time_is_checked_for_new_tickets() {
    let cfg = config();
    let mut l = Ledger::new();
    let leeway = cfg.tickets.policy.leeway;
    let c = claims(&jti(1), "u1", 100);
    let r = open(&c, ME, NOW + 60 + leeway, &cfg, &mut l);
    assert_eq!(answer(&r), (401, TicketError::Expired.label()));
    let r = open(&c, ME, NOW - leeway - 1, &cfg, &mut l);
    assert_eq!(answer(&r), (401, TicketError::IssuedInFuture.label()));
    let mut later = claims(&jti(2), "u1", 100);
    later.nbf = Some(NOW + 30);
    let r = open(&later, ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (401, TicketError::NotYetValid.label()));
    let mut long = claims(&jti(3), "u1", 100);
    long.exp = NOW + cfg.tickets.policy.max_ttl + 1;
    let r = open(&long, ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (401, TicketError::TtlTooLong.label()));
    assert_eq!(l.remembered(), 0);
}

#[test]
fn single_use_and_the_reconnect_grant() {
    let cfg = config();
    let mut l = Ledger::new();
    let c = claims(&jti(1), "u1", 100);
    let a = open(&c, ME, NOW, &cfg, &mut l).unwrap();
    // Live: no second session, from anywhere.
    assert_eq!(
        answer(&open(&c, ME, NOW + 1, &cfg, &mut l)),
        (403, "ticket_used")
    );
    assert_eq!(
        answer(&open(&c, OTHER, NOW + 1, &cfg, &mut l)).1,
        "ticket_used"
    );
    // It drops abnormally at NOW + 100, long past exp (NOW + 60).
    l.release(a.session.id, NOW + 100, GRACE, true);
    // Another IP: refused. The same IP within the grace: a reconnect.
    assert_eq!(
        answer(&open(&c, OTHER, NOW + 101, &cfg, &mut l)).1,
        "ticket_used"
    );
    let b = open(&c, ME, NOW + 100 + GRACE, &cfg, &mut l).unwrap();
    assert!(b.session.reconnect);
    assert_eq!(
        b.session.lifetime,
        a.session.lifetime - 100 - GRACE,
        "the lifetime deadline is the first session's"
    );
    // One live session at a time, even on a grant.
    assert_eq!(
        answer(&open(&c, ME, NOW + 131, &cfg, &mut l)).1,
        "ticket_used"
    );
    l.release(b.session.id, NOW + 140, GRACE, true);
    // Past the new grace: forgotten, so just an expired ticket.
    let r = open(&c, ME, NOW + 140 + GRACE + 1, &cfg, &mut l);
    assert_eq!(answer(&r), (401, TicketError::Expired.label()));
    assert_eq!(l.remembered(), 0);
}

#[test]
fn a_grant_follows_an_abnormal_end_only() {
    for (code, by, grant) in [
        (1006, "browser", true),
        (1006, "relay", true),
        (1001, "relay", true),
        (1001, "browser", false),
        (1000, "browser", false),
        (1000, "upstream", false),
        (4001, "relay", false),
        (1008, "relay", false),
        (4002, "relay", false),
        (4003, "relay", false),
        (1011, "upstream", false),
        (1009, "browser", false),
    ] {
        assert_eq!(grant_allowed(code, by), grant, "{code} by {by}");
    }
    let cfg = config();
    let mut l = Ledger::new();
    let c = claims(&jti(1), "u1", 100);
    let a = open(&c, ME, NOW, &cfg, &mut l).unwrap();
    l.release(a.session.id, NOW + 1, GRACE, grant_allowed(1000, "browser"));
    assert_eq!(
        answer(&open(&c, ME, NOW + 2, &cfg, &mut l)),
        (403, "ticket_used")
    );
}

#[test]
fn no_grant_past_the_lifetime_deadline() {
    let cfg = config();
    let mut l = Ledger::new();
    let mut c = claims(&jti(1), "u1", 100);
    c.max_session = Some(20);
    let a = open(&c, ME, NOW, &cfg, &mut l).unwrap();
    assert_eq!(a.session.lifetime, 20);
    l.release(a.session.id, NOW + 15, GRACE, true);
    let b = open(&c, ME, NOW + 19, &cfg, &mut l).unwrap();
    assert_eq!(b.session.lifetime, 1);
    l.release(b.session.id, NOW + 19, GRACE, true);
    // Within the grace, but the deadline (NOW + 20) has come.
    assert_eq!(
        answer(&open(&c, ME, NOW + 20, &cfg, &mut l)).1,
        "ticket_used"
    );
}

#[test]
fn the_ticket_lifetime_is_capped_by_the_config() {
    let mut cfg = config();
    cfg.limits.max_session = std::time::Duration::from_secs(3600);
    let mut l = Ledger::new();
    let mut c = claims(&jti(1), "u1", 1);
    c.max_session = Some(60);
    assert_eq!(
        open(&c, ME, NOW, &cfg, &mut l).unwrap().session.lifetime,
        60
    );
    let mut c = claims(&jti(2), "u1", 2);
    c.max_session = Some(999_999);
    assert_eq!(
        open(&c, ME, NOW, &cfg, &mut l).unwrap().session.lifetime,
        3600
    );
}

#[test]
fn replaced_and_revoked_sessions_get_no_grant() {
    let mut cfg = config();
    cfg.limits.max_sessions_per_vm = Some(1);
    cfg.limits.on_vm_limit = VmLimit::Replace;
    let mut l = Ledger::new();
    let old = claims(&jti(1), "u1", 7);
    let a = open(&old, ME, NOW, &cfg, &mut l).unwrap();
    let b = open(&claims(&jti(2), "u2", 7), OTHER, NOW, &cfg, &mut l).unwrap();
    // The oldest of the VM is named for a close (4001)...
    assert_eq!(b.session.replaced, vec![a.session.id]);
    // ...and its end, even an abnormal one, grants nothing.
    l.release(a.session.id, NOW + 1, GRACE, true);
    assert_eq!(
        answer(&open(&old, ME, NOW + 2, &cfg, &mut l)).1,
        "ticket_used"
    );

    let c = claims(&jti(3), "u3", 8);
    let s = open(&c, ME, NOW, &cfg, &mut l).unwrap();
    let r = l.revoke(&Revoke::Sub("u3"), NOW + 1, GRACE, NOW + 500);
    assert_eq!((r.sessions, r.close.clone()), (1, vec![s.session.id]));
    l.release(s.session.id, NOW + 2, GRACE, true);
    let r = open(&c, ME, NOW + 3, &cfg, &mut l);
    assert_eq!(answer(&r), (403, "ticket_revoked"));
}

#[test]
fn session_limits_answer_429() {
    let mut cfg = config();
    let mut l = Ledger::new();
    cfg.limits.max_sessions_per_vm = Some(1);
    let a = open(&claims(&jti(1), "u1", 7), ME, NOW, &cfg, &mut l).unwrap();
    let r = open(&claims(&jti(2), "u2", 7), ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (429, "vm_session_limit"));
    // Another VM is fine; the VM is free again once its session ends.
    open(&claims(&jti(3), "u2", 8), ME, NOW, &cfg, &mut l).unwrap();
    l.release(a.session.id, NOW + 1, GRACE, false);
    open(&claims(&jti(4), "u2", 7), ME, NOW, &cfg, &mut l).unwrap();
    cfg.limits.max_sessions_per_vm = None;

    cfg.limits.max_sessions_per_user = Some(2);
    let r = open(&claims(&jti(5), "u2", 9), ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (429, "user_session_limit"));
    cfg.limits.max_sessions_per_user = None;
    cfg.limits.max_sessions = Some(2);
    let r = open(&claims(&jti(6), "u9", 9), ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (429, "global_session_limit"));
    assert_eq!(l.live(), 2);
    // The refused tickets were not burnt.
    cfg.limits.max_sessions = None;
    open(&claims(&jti(6), "u9", 9), ME, NOW, &cfg, &mut l).unwrap();
}

#[test]
fn a_full_replay_cache_answers_503() {
    let cfg = config();
    let mut l = Ledger::with_ticket_cap(2);
    let a = open(&claims(&jti(1), "u1", 1), ME, NOW, &cfg, &mut l).unwrap();
    open(&claims(&jti(2), "u1", 2), ME, NOW, &cfg, &mut l).unwrap();
    let r = open(&claims(&jti(3), "u1", 3), ME, NOW, &cfg, &mut l);
    assert_eq!(answer(&r), (503, "ticket_cache_full"));
    assert_eq!(r.unwrap_err().headers(), &[("Retry-After", "1")]);
    // A used ticket is remembered through exp + leeway (and its grace).
    l.release(a.session.id, NOW + 1, GRACE, true);
    let r = open(&claims(&jti(3), "u1", 3), ME, NOW + 50, &cfg, &mut l);
    assert_eq!(answer(&r).0, 503);
    let leeway = cfg.tickets.policy.leeway;
    let mut fresh = claims(&jti(3), "u1", 3);
    fresh.iat = NOW + 60;
    fresh.exp = NOW + 120;
    let r = open(&fresh, ME, NOW + 60 + leeway, &cfg, &mut l);
    assert_eq!(answer(&r).0, 503);
    assert!(open(&fresh, ME, NOW + 60 + leeway + 1, &cfg, &mut l).is_ok());
}

#[test]
fn revoke_voids_grants_and_bars_the_jti() {
    let h = JtiHash([0xabu8; 32]);
    assert!(h.has_hex_prefix("abababababababab") && h.has_hex_prefix(&"ab".repeat(32)));
    assert!(!h.has_hex_prefix("abababababababac") && !h.has_hex_prefix(&"ab".repeat(33)));
    assert_eq!(JtiHash::parse(&h.to_string()), Some(h));
    let cfg = config();
    let mut l = Ledger::new();
    for (n, sel) in ["jti", "sub", "vm"].into_iter().enumerate() {
        let c = claims(&jti(10 + n as u32), &format!("u-{sel}"), 7 + n as u64);
        let a = open(&c, ME, NOW, &cfg, &mut l).unwrap();
        l.release(a.session.id, NOW + 1, GRACE, true);
        let vm = vm_key(&c);
        let s = match sel {
            "jti" => Revoke::JtiHash(JtiHash(c.replay_key())),
            "sub" => Revoke::Sub(&c.sub),
            _ => Revoke::Vm(&vm),
        };
        let r = l.revoke(&s, NOW + 2, GRACE, NOW + 1000);
        assert_eq!((r.sessions, r.grants, r.barred), (0, 1, false), "{sel}");
        assert_eq!(
            answer(&open(&c, ME, NOW + 3, &cfg, &mut l)).1,
            "ticket_revoked",
            "{sel}"
        );
    }
    // A jti revoked before its first use: refused until the bar ends.
    let c = claims(&jti(20), "u1", 8);
    let r = l.revoke(
        &Revoke::JtiHash(JtiHash(c.replay_key())),
        NOW,
        GRACE,
        NOW + 40,
    );
    assert!(r.barred);
    assert_eq!(
        answer(&open(&c, ME, NOW + 1, &cfg, &mut l)),
        (403, "ticket_revoked")
    );
    // A live session: named for a close, and its end grants nothing.
    let c = claims(&jti(21), "u2", 9);
    let a = open(&c, ME, NOW, &cfg, &mut l).unwrap();
    let prefix = JtiHash(c.replay_key()).to_string();
    let short = l.revoke(
        &Revoke::JtiPrefix(&prefix[..15]),
        NOW + 1,
        GRACE,
        NOW + 1000,
    );
    assert_eq!(short.sessions, 0, "a prefix needs 16 digits");
    let r = l.revoke(
        &Revoke::JtiPrefix(&prefix[..16]),
        NOW + 1,
        GRACE,
        NOW + 1000,
    );
    assert_eq!(r.close, vec![a.session.id]);
    l.release(a.session.id, NOW + 2, GRACE, true);
    // Past exp + leeway, still barred until exp + grace.
    let leeway = cfg.tickets.policy.leeway;
    let past = NOW + 60 + leeway;
    assert!(past < NOW + 60 + GRACE);
    assert_eq!(
        answer(&open(&c, ME, past, &cfg, &mut l)).1,
        "ticket_revoked"
    );
    // Empty selectors match nothing.
    let r = l.revoke(&Revoke::Sub(""), NOW, GRACE, NOW + 1);
    assert_eq!((r.sessions, r.grants), (0, 0));
}

#[test]
fn handshake_rate_and_holds() {
    let mut l = Ledger::new();
    let ip: IpAddr = "9.9.9.9".parse().unwrap();
    assert!(l.rate(ip, 5, 2) && l.rate(ip, 5, 2));
    assert!(!l.rate(ip, 5, 2));
    assert!(l.rate(ip, 6, 2), "a new second");
    assert!(l.hold_handshake(ip, 2) && l.hold_handshake(ip, 2));
    assert!(!l.hold_handshake(ip, 2));
    assert_eq!(l.handshakes_from(ip), 2);
    l.let_go_handshake(ip);
    assert!(l.hold_handshake(ip, 2));
    l.let_go_handshake(ip);
    l.let_go_handshake(ip);
    assert_eq!(l.handshakes_from(ip), 0);
    assert!(!l.hold_handshake(ip, 0));
    assert!(l.in_flight.is_empty(), "no entry left behind");
}

#[test]
fn origin_rules() {
    let open = OriginPolicy::default();
    assert!(origin_allowed(&open, None, "relay.example"));
    assert!(origin_allowed(
        &open,
        Some("https://relay.example"),
        "relay.example"
    ));
    assert!(origin_allowed(
        &open,
        Some("https://Relay.Example:443"),
        "relay.example"
    ));
    assert!(origin_allowed(
        &open,
        Some("http://127.0.0.1:8080"),
        "127.0.0.1:8080"
    ));
    assert!(!origin_allowed(
        &open,
        Some("https://evil.example"),
        "relay.example"
    ));
    assert!(!origin_allowed(&open, Some("null"), "relay.example"));
    assert!(!origin_allowed(
        &open,
        Some("https://relay.example:8443"),
        "relay.example"
    ));
    let strict = OriginPolicy {
        allowed: vec!["https://portal.example".into()],
        require: true,
    };
    assert!(!origin_allowed(&strict, None, "relay.example"));
    assert!(origin_allowed(
        &strict,
        Some("https://portal.example/"),
        "relay.example"
    ));
    assert!(!origin_allowed(
        &strict,
        Some("https://relay.example"),
        "relay.example"
    ));
}

/// A fixed-seed walk of opens, releases, revokes and passing time, in both
/// `on_vm_limit` modes: after every step the ledger's counts agree with
/// the sessions it admitted, no limit is exceeded, memory stays under its
/// caps, and once every session ended and time passed, nothing is left.
#[test]
fn a_random_walk_keeps_the_ledger_consistent_and_bounded() {
    for mode in [VmLimit::Reject, VmLimit::Replace] {
        let mut cfg = config();
        cfg.limits.max_sessions_per_vm = Some(2);
        cfg.limits.max_sessions_per_user = Some(3);
        cfg.limits.max_sessions = Some(8);
        cfg.limits.on_vm_limit = mode;
        let policy = cfg.tickets.policy.clone();
        let mut l = Ledger::with_ticket_cap(48);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut live: Vec<SessionId> = Vec::new();
        let mut now = NOW;
        let (mut admitted, mut reconnects) = (0, 0);
        for step in 0..6000 {
            match next(10) {
                0..=4 => {
                    let mut c = claims(&jti(next(64) as u32), &format!("u{}", next(4)), next(5));
                    (c.iat, c.exp) = (now, now + 60);
                    let client = if next(4) == 0 { OTHER } else { ME };
                    let r = l.open(
                        Request {
                            claims: &c,
                            time: c.check_time(&policy, now),
                            client: client.parse().unwrap(),
                            now,
                            leeway: policy.leeway,
                            grace: GRACE,
                        },
                        &cfg.limits,
                    );
                    if let Ok(s) = r {
                        admitted += 1;
                        reconnects += usize::from(s.reconnect);
                        assert!(s.replaced.iter().all(|id| live.contains(id)));
                        live.push(s.id);
                    }
                }
                5..=7 if !live.is_empty() => {
                    let id = live.swap_remove(next(live.len() as u64) as usize);
                    l.release(id, now, GRACE, next(2) == 0);
                }
                8 => {
                    let sub = format!("u{}", next(4));
                    let r = l.revoke(&Revoke::Sub(&sub), now, GRACE, now + 200);
                    assert!(r.close.iter().all(|id| live.contains(id)));
                }
                _ => now += next(20),
            }
            // The counts agree with the sessions admitted and not released.
            assert_eq!(l.live.len(), live.len(), "step {step}");
            assert_eq!(l.per_user.values().sum::<usize>(), live.len());
            assert!(l.per_user.values().all(|&n| (1..=3).contains(&n)));
            assert!(l.live.len() <= 8);
            for ids in l.per_vm.values() {
                assert!(!ids.is_empty() && ids.len() <= 2, "step {step}");
                assert!(ids.iter().all(|id| l.live.contains_key(id)));
            }
            for (id, s) in &l.live {
                assert_eq!(l.tickets[&s.jti_hash].live, Some(*id), "step {step}");
            }
            assert!(l.tickets.len() <= 48);
        }
        assert!(admitted > 100 && reconnects > 0, "{admitted} {reconnects}");
        for id in live {
            l.release(id, now, GRACE, true);
        }
        l.purge(now + 3600);
        assert_eq!(l.remembered(), 0);
        assert!(l.purge.is_empty() && l.per_vm.is_empty() && l.per_user.is_empty());
    }
}
