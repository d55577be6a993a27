use super::*;
use crate::error::Refusal;
use crate::ticket::TicketError;

fn h(b: u8) -> JtiHash {
    JtiHash([b; 32])
}

#[test]
fn key_names_and_members() {
    let k = Keys::new("nexor:");
    assert_eq!(k.ticket(&h(0xab)), format!("nexor:t:{}", "ab".repeat(32)));
    assert_eq!(k.vm("pve/n1/101"), "nexor:vm:pve/n1/101");
    assert_eq!(k.user("customer-42"), "nexor:user:customer-42");
    assert_eq!(k.sessions("relay-1#00"), "nexor:s:relay-1#00");
    assert_eq!(k.events(), "nexor:events");
    assert_eq!(Keys::new("a*b:").ticket_pattern("abcd"), "a\\*b:t:abcd*");
    let node = node_name("relay-1", 0x1234);
    assert_eq!(node, "relay-1#0000000000001234");
    let m = member(1_700_000_000_123, &node, 42);
    assert_eq!(m, "1700000000123|relay-1#0000000000001234|42");
    assert_eq!(parse_member(&m), Some((node.as_str(), 42)));
    assert_eq!(parse_member("x|y"), None);
    assert_eq!(parse_member("1|n|notanumber"), None);
    // Older sessions sort first, as the script's replace needs.
    assert!(member(999_999_999_999, &node, 9) < member(1_000_000_000_000, &node, 1));
}

#[test]
fn events_round_trip_and_garbage_is_ignored() {
    let evs = [
        Event::Revoke(Selector::Jti(h(0x01))),
        Event::Revoke(Selector::JtiPrefix("0123456789abcdef".into())),
        Event::Revoke(Selector::Sub("customer 42".into())),
        Event::Revoke(Selector::Vm("pve/n1/101".into())),
        Event::Replace(member(1, "relay-2#00", 7)),
    ];
    for e in evs {
        assert_eq!(
            Event::decode(e.encode().as_bytes()),
            Some(e.clone()),
            "{e:?}"
        );
    }
    for bad in [
        &b""[..],
        b"revoke",
        b"revoke jti",
        b"revoke jti zz",
        b"revoke sub ",
        b"revoke jti_prefix 0123",
        b"revoke jti_prefix 0123456789ABCDEF",
        b"revoke what x",
        b"replace nonsense",
        b"\xff\xfe",
        b"hello world",
    ] {
        assert_eq!(Event::decode(bad), None, "{bad:?}");
    }
}

#[test]
fn selectors_map_to_the_registry() {
    use crate::registry::Revoke;
    let sels = [
        Selector::Jti(h(3)),
        Selector::JtiPrefix("abababababababab".into()),
        Selector::Sub("u".into()),
        Selector::Vm("v".into()),
    ];
    for s in sels {
        assert_eq!(Selector::from_revoke(&s.as_revoke()), s);
    }
    assert_eq!(Selector::Sub("u".into()).as_revoke(), Revoke::Sub("u"));
}

fn args() -> AdmitArgs {
    AdmitArgs {
        now_ms: 1_000_000,
        jti: h(7),
        sid: 3,
        client: "203.0.113.7".into(),
        time_failed: false,
        deadline: 4600,
        keep_ms: 1_065_000,
        grace_ms: 30_000,
        lease_ms: 15_000,
        max_sessions: 0,
        max_per_user: 2,
        max_per_vm: 1,
        replace: true,
        sub: "customer-42".into(),
        vm: "pve/n1/101".into(),
        upstream: "pve".into(),
    }
}

#[test]
fn admit_call_shape() {
    let k = Keys::new("p:");
    let a = args();
    let keys = a.keys(&k, "r#1");
    assert_eq!(keys.len(), 8);
    assert_eq!(keys[0], k.ticket(&h(7)));
    assert_eq!(keys[4], "p:s:r#1");
    let argv = a.argv(&k, "r", "r#1");
    assert_eq!(argv.len(), 19);
    assert_eq!(argv[1], member(1_000_000, "r#1", 3));
    assert_eq!(argv[11], "1");
    let rec: serde_json::Value = serde_json::from_str(&argv[12]).unwrap();
    assert_eq!(rec["jti_sha256"], h(7).to_string());
    assert_eq!(rec["relay"], "r");
    assert_eq!(rec["reconnect"], false);
    assert_eq!(rec["started"], 1000);
    // Nothing secret in the record: the jti only as its hash.
    assert!(!argv[12].contains("jti\""));
}

#[test]
fn admit_and_revoke_replies() {
    let s = |v: &str| Item::Str(v.into());
    assert_eq!(
        decode_admit(&[s("ok"), Item::Int(1), Item::Int(4600), Item::Int(0)]),
        Some(Admit::Admitted {
            reconnect: true,
            deadline: 4600,
            replaced: 0
        })
    );
    for (label, d) in [
        ("used", Deny::Used),
        ("revoked", Deny::Revoked),
        ("time", Deny::Time),
        ("vm", Deny::VmLimit),
        ("user", Deny::UserLimit),
        ("global", Deny::GlobalLimit),
    ] {
        assert_eq!(decode_admit(&[s("deny"), s(label)]), Some(Admit::Denied(d)));
    }
    assert_eq!(decode_admit(&[s("deny"), s("other")]), None);
    assert_eq!(decode_admit(&[s("ok"), Item::Int(1)]), None);
    assert_eq!(
        decode_admit(&[s("ok"), Item::Int(0), Item::Int(-1), Item::Int(0)]),
        None
    );
    assert_eq!(decode_admit(&[]), None);
    assert_eq!(
        Deny::Time.refusal(Some(TicketError::Expired)),
        Refusal::Ticket(TicketError::Expired)
    );
    assert_eq!(Deny::Used.refusal(None).status(), 403);
    assert_eq!(Deny::Revoked.refusal(None).label(), "ticket_revoked");
    assert_eq!(Deny::VmLimit.refusal(None).status(), 429);
    assert_eq!(
        decode_revoke(&[Item::Int(2), Item::Int(1), Item::Int(0)]),
        Some(Revoked {
            sessions: 2,
            grants: 1,
            barred: false
        })
    );
    assert_eq!(decode_revoke(&[Item::Int(2)]), None);
}

#[test]
fn revoke_calls() {
    let k = Keys::new("p:");
    let (keys, argv) = revoke_call(&k, &Selector::Sub("u1".into()), &[], 5, 30_000, 99);
    assert_eq!(keys, ["p:ix:sub:u1"]);
    assert_eq!(
        &argv[..7],
        [
            "index",
            "5",
            "30000",
            "99",
            "p:",
            "p:events",
            "revoke sub u1"
        ]
    );
    let (keys, argv) = revoke_call(&k, &Selector::Jti(h(1)), &[], 5, 30_000, 99);
    assert_eq!(keys, [k.ticket(&h(1))]);
    assert_eq!(argv[0], "jti");
    assert_eq!(argv[7], h(1).to_string());
    let p = Selector::JtiPrefix("0101010101010101".into());
    let (keys, argv) = revoke_call(&k, &p, &[h(1), h(2)], 5, 30_000, 99);
    assert_eq!(keys.len(), 2);
    assert_eq!(argv[0], "list");
    assert_eq!(argv.len(), 9);
    assert!(
        is_hash_prefix("0123456789abcdef")
            && !is_hash_prefix("0123")
            && !is_hash_prefix("0123456789ABCDEF")
    );
}

#[test]
fn the_password_never_shows() {
    for (url, shown) in [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:s3cret@h:6380", "rediss://user:***@h:6380"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        (
            "redis+unix:///run/r.sock?db=1&pass=s3cret",
            "redis+unix:///run/r.sock?db=1&pass=***",
        ),
    ] {
        let u = RedisUrl::parse(url).unwrap();
        assert_eq!(u.to_string(), shown);
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.expose(), url);
    }
    assert!(RedisUrl::parse("redis://:s3cret@[bad").is_none());
    assert!(RedisUrl::parse("http://h").is_none());
}
