//! Tests of the ticket verifier and minter (`super`): the shared HS256 vectors
//! in tests/data/jwt-hs256.json, tampering, header and claim rules, time edges,
//! key parsing, and that no error or Debug text shows a secret.

use super::*;
use serde_json::json;
use std::sync::OnceLock;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/jwt-hs256.json"
));
const K1_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const NOW: u64 = 1_790_000_000;

fn vectors() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(VECTORS).unwrap())
}

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(load_ring)
}

fn load_ring() -> KeyRing {
    let v = vectors();
    let keys = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let id = k["id"].as_str().unwrap();
            Key::from_secret_b64(id, k["secret"].as_str().unwrap()).unwrap()
        })
        .collect();
    KeyRing::new(keys)
}

fn policy() -> Policy {
    let v = vectors();
    Policy {
        max_ttl: v["max_ttl_s"].as_u64().unwrap(),
        leeway: v["leeway_s"].as_u64().unwrap(),
        audience: None,
    }
}

fn k1() -> Key {
    Key::from_secret_b64("k1", K1_B64).unwrap()
}

fn good_token() -> String {
    vectors()["vectors"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn good_payload() -> Value {
    vectors()["claims_of_valid"].clone()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs raw header and payload text with HS256, whatever they say.
fn sign_raw(header: &str, payload: &str, key: &Key) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let tag = hmac::sign(&key.hmac, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

const HEADER: &str = r#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#;

fn with_payload(payload: &Value) -> String {
    sign_raw(HEADER, &payload.to_string(), &k1())
}

fn with_header(header: &str) -> String {
    sign_raw(header, &good_payload().to_string(), &k1())
}

fn check(token: &str) -> Result<Claims, TicketError> {
    verify(token, ring(), &policy(), NOW)
}

fn full_claims() -> Claims {
    Claims {
        exp: NOW + 60,
        iat: NOW - 5,
        nbf: Some(NOW - 5),
        jti: "t-0123456789abcdef".into(),
        sub: "customer-42".into(),
        aud: Some("relay-a".into()),
        upstream: "pve1".into(),
        node: Some("pve-a".into()),
        vmid: Some(101),
        guest: Some(Guest::Lxc),
        console: Console::Term,
        ip: Some("192.0.2.7".into()),
        max_session: Some(3600),
        mode: Mode::View,
        record: true,
    }
}

#[test]
fn every_vector_gets_its_status() {
    let v = vectors();
    assert_eq!(v["now"].as_u64(), Some(NOW));
    let want: Claims = serde_json::from_value(v["claims_of_valid"].clone()).unwrap();
    for vec in v["vectors"].as_array().unwrap() {
        let name = vec["name"].as_str().unwrap();
        let got = check(vec["token"].as_str().unwrap());
        match &vec["expect"] {
            Value::String(s) if s == "valid" => {
                let claims = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                if name != "valid-term-lxc" {
                    assert_eq!(claims, want, "{name}");
                }
            }
            status => {
                let e = got.expect_err(name);
                assert_eq!(Some(u64::from(e.status())), status.as_u64(), "{name}");
            }
        }
    }
}

#[test]
fn every_vector_gets_its_precise_error() {
    use TicketError::*;
    let want = [
        ("alg-none", BadAlgorithm),
        ("alg-none-with-mac", BadAlgorithm),
        ("hs512", BadAlgorithm),
        ("unknown-kid", UnknownKid),
        ("missing-kid", MissingKid),
        ("wrong-key", BadSignature),
        ("tampered-payload", BadSignature),
        ("expired", Expired),
        ("missing-exp", MissingClaim("exp")),
        ("missing-jti", MissingClaim("jti")),
        ("ttl-over-max", TtlTooLong),
        ("future-iat", IssuedInFuture),
        ("nbf-future", NotYetValid),
        ("exp-string", BadClaim("exp")),
        ("padded-base64", BadBase64),
        ("four-segments", Malformed),
        ("payload-array", MalformedClaims),
    ];
    let v = vectors();
    for (name, err) in want {
        let vec = v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("vector {name} gone"));
        assert_eq!(check(vec["token"].as_str().unwrap()), Err(err), "{name}");
    }
}

#[test]
fn valid_term_lxc_vector_reads_optional_claims() {
    let v = vectors();
    let c = check(v["vectors"][2]["token"].as_str().unwrap()).unwrap();
    assert_eq!(c.console, Console::Term);
    assert_eq!(c.guest, Some(Guest::Lxc));
    assert_eq!(c.max_session, Some(3600));
    assert_eq!(c.vmid, Some(101));
    assert_eq!(c.nbf, None);
}

#[test]
fn refuses_every_single_character_tamper() {
    let good = good_token();
    assert!(check(&good).is_ok());
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut tried = 0;
    for i in 0..good.len() {
        for &c in alphabet.iter() {
            if good.as_bytes()[i] == c {
                continue;
            }
            let mut bytes = good.clone().into_bytes();
            bytes[i] = c;
            let bad = String::from_utf8(bytes).unwrap();
            assert!(check(&bad).is_err(), "position {i} -> {}", c as char);
            assert!(verify_signature(&bad, ring()).is_err());
            tried += 1;
        }
    }
    assert!(tried > 300 * 62);
}

#[test]
fn refuses_every_prefix_and_suffix() {
    let good = good_token();
    for i in 0..good.len() {
        assert!(check(&good[..i]).is_err(), "prefix {i}");
        assert!(check(&good[i + 1..]).is_err(), "suffix {i}");
    }
}

#[test]
fn refuses_other_algorithms_even_when_hs256_signed() {
    for alg in ["none", "HS512", "RS256", "ES256", "hs256", "HS256 ", ""] {
        let h = format!(r#"{{"alg":"{alg}","kid":"k1","typ":"JWT"}}"#);
        assert_eq!(
            check(&with_header(&h)),
            Err(TicketError::BadAlgorithm),
            "{alg}"
        );
    }
    for h in [
        r#"{"kid":"k1"}"#,
        r#"{"alg":null,"kid":"k1"}"#,
        r#"{"alg":["HS256"],"kid":"k1"}"#,
    ] {
        assert_eq!(
            check(&with_header(h)),
            Err(TicketError::BadAlgorithm),
            "{h}"
        );
    }
}

#[test]
fn refuses_empty_signature_after_algorithm() {
    let good = good_token();
    let unsigned = &good[..good.rfind('.').unwrap() + 1];
    assert_eq!(check(unsigned), Err(TicketError::EmptySignature));
    assert_eq!(
        decode_unverified(unsigned),
        Err(TicketError::EmptySignature)
    );
}

#[test]
fn header_rules_for_kid_typ_and_crit() {
    use TicketError::*;
    let cases = [
        (r#"{"alg":"HS256","kid":"k1"}"#, Ok(())),
        (r#"{"alg":"HS256","kid":"k1","typ":"jwt"}"#, Ok(())),
        (r#"{"alg":"HS256","kid":"k2","cty":"x"}"#, Err(BadSignature)),
        (r#"{"alg":"HS256","kid":"k1","typ":"JOSE"}"#, Err(BadTyp)),
        (r#"{"alg":"HS256","kid":"k1","typ":1}"#, Err(BadTyp)),
        (
            r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#,
            Err(CritHeader),
        ),
        (r#"{"alg":"HS256","kid":"k1","crit":[]}"#, Err(CritHeader)),
        (r#"{"alg":"HS256"}"#, Err(MissingKid)),
        (r#"{"alg":"HS256","kid":1}"#, Err(BadKid)),
        (r#"{"alg":"HS256","kid":null}"#, Err(BadKid)),
        (r#"{"alg":"HS256","kid":"K1"}"#, Err(UnknownKid)),
        (r#"{"alg":"HS256","kid":""}"#, Err(UnknownKid)),
        (r#"["HS256"]"#, Err(BadHeader)),
        (r#"{"alg":"HS256","kid":"k1"} x"#, Err(BadHeader)),
        (r#"{"alg":"HS256","kid":"k1""#, Err(BadHeader)),
        ("", Err(BadHeader)),
    ];
    for (h, want) in cases {
        assert_eq!(check(&with_header(h)).map(|_| ()), want, "{h}");
    }
}

#[test]
fn header_must_be_utf8() {
    let t = sign_raw("{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{}", &k1());
    let (_, rest) = t.split_once('.').unwrap();
    let bad = format!("{}.{rest}", b64(b"{\"alg\":\"HS256\",\"kid\":\"\xff\"}"));
    assert_eq!(check(&bad), Err(TicketError::BadHeader));
}

#[test]
fn refuses_duplicate_keys_anywhere() {
    let dup_alg = r#"{"alg":"HS256","kid":"k1","alg":"none"}"#;
    assert_eq!(check(&with_header(dup_alg)), Err(TicketError::DuplicateKey));
    let dup_kid = r#"{"alg":"HS256","kid":"k2","kid":"k1"}"#;
    assert_eq!(check(&with_header(dup_kid)), Err(TicketError::DuplicateKey));
    let good = good_payload().to_string();
    let dup_exp = good.replacen('{', r#"{"exp":1,"#, 1);
    let t = sign_raw(HEADER, &dup_exp, &k1());
    assert_eq!(check(&t), Err(TicketError::DuplicateKey));
    let dup_sub = good.replacen('{', r#"{"sub":"admin","#, 1);
    let t = sign_raw(HEADER, &dup_sub, &k1());
    assert_eq!(check(&t), Err(TicketError::DuplicateKey));
    let nested = good.replacen('{', r#"{"x":[{"a":1,"a":2}],"#, 1);
    let t = sign_raw(HEADER, &nested, &k1());
    assert_eq!(check(&t), Err(TicketError::DuplicateKey));
    assert_eq!(decode_unverified(&t), Err(TicketError::DuplicateKey));
}

#[test]
fn mac_is_checked_before_claims_are_parsed() {
    let t = sign_raw(HEADER, "not json", &k1());
    assert_eq!(check(&t), Err(TicketError::MalformedClaims));
    let other = Key::from_secret_b64("k1", &b64(&[7; 32])).unwrap();
    let forged = sign_raw(HEADER, "not json", &other);
    assert_eq!(check(&forged), Err(TicketError::BadSignature));
}

#[test]
fn claims_must_be_a_json_object() {
    for p in [
        "[]",
        "null",
        "1",
        "\"x\"",
        "",
        "{",
        "{} {}",
        "{\"a\":\"\u{0}\"}",
    ] {
        let t = sign_raw(HEADER, p, &k1());
        assert_eq!(check(&t), Err(TicketError::MalformedClaims), "{p:?}");
    }
    let t = sign_raw(HEADER, "{}", &k1());
    assert_eq!(check(&t), Err(TicketError::MissingClaim("exp")));
}

#[test]
fn deep_nesting_is_refused_without_overflow() {
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let p = good_payload()
        .to_string()
        .replacen('{', &format!("{{\"x\":{deep},"), 1);
    let t = sign_raw(HEADER, &p, &k1());
    assert!(t.len() <= MAX_TICKET_LEN);
    assert_eq!(check(&t), Err(TicketError::MalformedClaims));
    let h = format!(r#"{{"alg":"HS256","kid":"k1","x":{deep}}}"#);
    assert_eq!(check(&with_header(&h)), Err(TicketError::BadHeader));
}

#[test]
fn names_each_missing_required_claim() {
    for name in ["exp", "iat", "jti", "sub", "upstream", "console"] {
        let mut p = good_payload();
        p.as_object_mut().unwrap().remove(name);
        assert_eq!(
            check(&with_payload(&p)),
            Err(TicketError::MissingClaim(name))
        );
    }
    for name in ["node", "vmid", "guest"] {
        let mut p = good_payload();
        p.as_object_mut().unwrap().remove(name);
        assert!(check(&with_payload(&p)).is_ok(), "{name} is optional");
    }
}

#[test]
fn names_each_wrongly_typed_claim() {
    let long = |n: usize| Value::String("j".repeat(n));
    let cases: Vec<(&str, Value)> = vec![
        ("exp", json!("1790000060")),
        ("exp", json!(1790000060.0)),
        ("exp", json!(-1)),
        ("exp", json!(null)),
        ("exp", json!(1e30)),
        ("exp", json!(true)),
        ("iat", json!("1789999995")),
        ("iat", json!(1789999995.5)),
        ("nbf", json!("0")),
        ("nbf", json!(-5)),
        ("nbf", json!(null)),
        ("jti", json!(12345678901234567_u64)),
        ("jti", long(15)),
        ("jti", long(129)),
        ("jti", json!("t-0123456789abcd\nef")),
        ("sub", json!("")),
        ("sub", long(257)),
        ("sub", json!(42)),
        ("sub", json!("a\u{1b}[31m")),
        ("upstream", json!("")),
        ("upstream", long(129)),
        ("upstream", json!(["pve1"])),
        ("console", json!("VNC")),
        ("console", json!("ssh")),
        ("console", json!(null)),
        ("guest", json!("kvm")),
        ("guest", json!(0)),
        ("vmid", json!(-1)),
        ("vmid", json!("101")),
        ("vmid", json!(101.0)),
        ("node", json!(5)),
        ("ip", json!(["192.0.2.1"])),
        ("ip", json!(null)),
        ("max_session", json!(1.5)),
        ("max_session", json!(-60)),
        ("max_session", json!("3600")),
        ("aud", json!(["a", "b"])),
        ("aud", json!([])),
        ("aud", json!([1])),
        ("aud", json!(5)),
        ("aud", json!({"a": 1})),
    ];
    for (name, value) in cases {
        let mut p = good_payload();
        p[name] = value.clone();
        assert_eq!(
            check(&with_payload(&p)),
            Err(TicketError::BadClaim(name)),
            "{name} = {value}"
        );
    }
}

#[test]
fn accepts_claim_edges_and_ignores_unknown_claims() {
    let mut p = good_payload();
    p["jti"] = Value::String("j".repeat(16));
    p["sub"] = Value::String("é".repeat(256));
    p["upstream"] = Value::String("u".repeat(128));
    p["role"] = json!({"admin": true, "list": [1, 2.5, null]});
    p["aud"] = json!(["relay-a"]);
    p["vmid"] = json!(0);
    let c = check(&with_payload(&p)).unwrap();
    assert_eq!(c.aud.as_deref(), Some("relay-a"));
    assert_eq!(c.vmid, Some(0));
    p["jti"] = Value::String("j".repeat(128));
    assert!(check(&with_payload(&p)).is_ok());
}

#[test]
fn time_edges_follow_rfc_7519() {
    let mut c = full_claims();
    let mut pol = Policy {
        max_ttl: 120,
        leeway: 0,
        audience: None,
    };
    c.iat = NOW - 60;
    c.nbf = None;
    c.exp = NOW;
    assert_eq!(c.check_time(&pol, NOW), Err(TicketError::Expired));
    c.exp = NOW + 1;
    assert_eq!(c.check_time(&pol, NOW), Ok(()));
    c.exp = NOW - 5;
    pol.leeway = 5;
    assert_eq!(c.check_time(&pol, NOW), Err(TicketError::Expired));
    pol.leeway = 6;
    assert_eq!(c.check_time(&pol, NOW), Ok(()));

    pol.leeway = 10;
    c.exp = NOW + 60;
    c.iat = NOW + 10;
    assert_eq!(c.check_time(&pol, NOW), Ok(()));
    c.iat = NOW + 11;
    assert_eq!(c.check_time(&pol, NOW), Err(TicketError::IssuedInFuture));
    c.iat = NOW;
    c.nbf = Some(NOW + 10);
    assert_eq!(c.check_time(&pol, NOW), Ok(()));
    c.nbf = Some(NOW + 11);
    assert_eq!(c.check_time(&pol, NOW), Err(TicketError::NotYetValid));

    c.nbf = None;
    c.exp = c.iat + 120;
    assert_eq!(c.check_time(&pol, NOW), Ok(()));
    c.exp = c.iat + 121;
    assert_eq!(c.check_time(&pol, NOW), Err(TicketError::TtlTooLong));
}

#[test]
fn time_checks_saturate() {
    let mut c = full_claims();
    let pol = Policy {
        max_ttl: u64::MAX,
        leeway: u64::MAX,
        audience: None,
    };
    c.exp = u64::MAX;
    c.iat = 0;
    c.nbf = Some(u64::MAX);
    assert_eq!(c.check_time(&pol, u64::MAX - 1), Ok(()));
    assert_eq!(c.check_time(&pol, u64::MAX), Err(TicketError::Expired));
    let strict = Policy {
        max_ttl: 0,
        leeway: 0,
        audience: None,
    };
    c.iat = u64::MAX;
    c.nbf = None;
    assert_eq!(c.check_time(&strict, 0), Err(TicketError::IssuedInFuture));
    c.iat = 0;
    c.exp = 0;
    assert_eq!(c.check_time(&strict, 0), Err(TicketError::Expired));
}

#[test]
fn verify_signature_accepts_an_expired_ticket() {
    let v = vectors();
    let t = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "expired")
        .unwrap()["token"]
        .as_str()
        .unwrap();
    let c = verify_signature(t, ring()).unwrap();
    assert_eq!(c.check_time(&policy(), NOW), Err(TicketError::Expired));
}

#[test]
fn audience_binding() {
    let mut c = full_claims();
    let mut pol = policy();
    assert_eq!(c.check_audience(&pol), Ok(()));
    pol.audience = Some("relay-a".into());
    assert_eq!(c.check_audience(&pol), Ok(()));
    pol.audience = Some("relay-b".into());
    let e = c.check_audience(&pol).unwrap_err();
    assert_eq!((e, e.status()), (TicketError::WrongAudience, 403));
    c.aud = None;
    let e = c.check_audience(&pol).unwrap_err();
    assert_eq!((e, e.status()), (TicketError::MissingAudience, 401));
    pol.audience = None;
    assert_eq!(c.check_audience(&pol), Ok(()));

    let mut c = full_claims();
    c.exp = NOW + 60;
    c.iat = NOW;
    let t = mint(&c, &k1());
    pol.audience = Some("relay-b".into());
    assert_eq!(
        verify(&t, ring(), &pol, NOW),
        Err(TicketError::WrongAudience)
    );
}

#[test]
fn refuses_huge_tickets_before_decoding() {
    let mut last_ok = 0;
    for n in 2000.. {
        let mut p = good_payload();
        p["pad"] = Value::String("p".repeat(n));
        let t = with_payload(&p);
        if t.len() > MAX_TICKET_LEN {
            assert_eq!(check(&t), Err(TicketError::TooLarge));
            break;
        }
        assert!(check(&t).is_ok(), "len {}", t.len());
        last_ok = t.len();
    }
    assert!(last_ok >= MAX_TICKET_LEN - 1);
    let junk = "!".repeat(MAX_TICKET_LEN + 1);
    assert_eq!(check(&junk), Err(TicketError::TooLarge));
    assert_eq!(decode_unverified(&junk), Err(TicketError::TooLarge));
}

#[test]
fn refuses_anything_but_strict_base64url() {
    let good = good_token();
    let segs: Vec<&str> = good.split('.').collect();
    let join = |h: &str, p: &str, s: &str| format!("{h}.{p}.{s}");
    let padded_sig = format!("{}=", segs[2]);
    let space = format!("{} ", segs[2]);
    let plus = format!("+{}", &segs[1][1..]);
    let mut trailing = segs[2].to_owned();
    // Last char of a 32-byte MAC carries 2 unused bits: flip them.
    let last = trailing.pop().unwrap();
    let alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let pos = alpha.find(last).unwrap();
    trailing.push(alpha.as_bytes()[pos ^ 1] as char);
    // A length of 4n+1 characters encodes no whole byte.
    let mut one_mod_four = segs[1].to_owned();
    while one_mod_four.len() % 4 != 1 {
        one_mod_four.push('A');
    }
    let cases = [
        join(segs[0], segs[1], &padded_sig),
        join(segs[0], segs[1], &space),
        join(&format!("{}=", segs[0]), segs[1], segs[2]),
        join(segs[0], &plus, segs[2]),
        join(segs[0], &format!("{}/", segs[1]), segs[2]),
        join(segs[0], segs[1], &trailing),
        join(segs[0], &one_mod_four, segs[2]),
        join(segs[0], segs[1], &format!("{}\n", segs[2])),
        join(segs[0], segs[1], "é"),
    ];
    for t in &cases {
        assert_eq!(check(t), Err(TicketError::BadBase64), "{t}");
        assert_eq!(decode_unverified(t), Err(TicketError::BadBase64));
    }
}

#[test]
fn refuses_wrong_segment_counts() {
    let good = good_token();
    let cases = [
        String::new(),
        ".".into(),
        "...".into(),
        format!("{good}."),
        format!("{good}.{}", good.split('.').nth(2).unwrap()),
        good.replacen('.', "", 1),
        good.replace('.', ""),
    ];
    for t in &cases {
        assert_eq!(check(t), Err(TicketError::Malformed), "{t}");
    }
    // Three empty segments are the right shape with an empty header.
    assert_eq!(check(".."), Err(TicketError::BadHeader));
}

#[test]
fn mint_then_verify_round_trips() {
    let mut c = full_claims();
    c.aud = Some("relay \"a\"".into());
    let key = Key::from_secret_b64("k\"2", K1_B64).unwrap();
    let t = mint(&c, &key);
    let keys = KeyRing::new(vec![k1(), key]);
    let pol = Policy {
        max_ttl: 120,
        leeway: 0,
        audience: Some("relay \"a\"".into()),
    };
    assert_eq!(verify(&t, &keys, &pol, NOW), Ok(c.clone()));

    let mut bare = full_claims();
    bare.nbf = None;
    bare.aud = None;
    bare.node = None;
    bare.vmid = None;
    bare.guest = None;
    bare.ip = None;
    bare.max_session = None;
    bare.console = Console::Vnc;
    let t = mint(&bare, &k1());
    assert_eq!(check(&t), Ok(bare.clone()));
    let (_, payload) = decode_unverified(&t).unwrap();
    assert!(!payload.to_string().contains("null"));
    // mint's hand-built JSON and the serde derive agree.
    assert_eq!(payload, serde_json::to_value(&bare).unwrap());
    let (_, payload) = decode_unverified(&mint(&c, &k1())).unwrap();
    assert_eq!(payload, serde_json::to_value(&c).unwrap());
}

#[test]
fn mint_header_matches_pyjwt_byte_for_byte() {
    let t = mint(&full_claims(), &k1());
    let good = good_token();
    assert_eq!(t.split('.').next(), good.split('.').next());
    let (h, _) = decode_unverified(&t).unwrap();
    assert_eq!(h, json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}));
}

#[test]
fn decode_unverified_skips_only_the_mac() {
    let v = vectors();
    let wrong_key = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "wrong-key")
        .unwrap()["token"]
        .as_str()
        .unwrap();
    let (h, p) = decode_unverified(wrong_key).unwrap();
    assert_eq!(h["kid"], "k1");
    assert_eq!(p, v["claims_of_valid"]);
    let arr = sign_raw(HEADER, "[1]", &k1());
    assert_eq!(decode_unverified(&arr), Err(TicketError::MalformedClaims));
    let hdr = sign_raw("[]", "{}", &k1());
    assert_eq!(decode_unverified(&hdr), Err(TicketError::BadHeader));
}

#[test]
fn replay_key_is_sha256_of_jti() {
    let c = check(&good_token()).unwrap();
    let hex: String = c.replay_key().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "ad02e4196a25bd8077cea6840b3ae3e3424eab968fd02753e038991f98410273"
    );
}

#[test]
fn key_accepts_both_alphabets_with_or_without_padding() {
    let bytes: Vec<u8> = (0xe0..=0xff).collect();
    let std_pad = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let std_nopad = std_pad.trim_end_matches('=').to_owned();
    let url_pad = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
    let url_nopad = URL_SAFE_NO_PAD.encode(&bytes);
    assert!(std_pad.contains(['+', '/']) && url_pad.contains(['-', '_']));
    let reference = Key::from_secret_b64("k", &std_pad).unwrap();
    let t = mint(&full_claims(), &reference);
    for s in [&std_nopad, &url_pad, &url_nopad, &format!("{std_pad}\n")] {
        let key = Key::from_secret_b64("k", s).unwrap();
        let keys = KeyRing::new(vec![key]);
        assert!(verify_signature(&t, &keys).is_ok(), "{s}");
    }
}

#[test]
fn key_refuses_short_bad_or_unnamed_secrets() {
    assert_eq!(
        Key::from_secret_b64("k", &b64(&[1; 31])).unwrap_err(),
        KeyError::TooShort { bytes: 31 }
    );
    assert_eq!(
        Key::from_secret_b64("k", "").unwrap_err(),
        KeyError::TooShort { bytes: 0 }
    );
    assert_eq!(
        Key::from_secret_b64("", K1_B64).unwrap_err(),
        KeyError::EmptyId
    );
    for bad in ["not base64!", "AAEC AwQF", "ab+cd-ef", "A", "AA=A"] {
        assert_eq!(
            Key::from_secret_b64("k", bad).unwrap_err(),
            KeyError::BadBase64,
            "{bad}"
        );
    }
    let e = Key::from_secret_b64("k", "c2VjcmV0").unwrap_err();
    assert!(!e.to_string().contains("c2VjcmV0"));
    assert!(!e.to_string().contains("secret\""));
}

#[test]
fn debug_never_shows_secrets() {
    let secret: Vec<u8> = (0u8..32).collect();
    let forms = [
        base64::engine::general_purpose::STANDARD.encode(&secret),
        URL_SAFE_NO_PAD.encode(&secret),
        format!("{secret:?}"),
        secret.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    let key = Key::from_secret_b64("k1", K1_B64).unwrap();
    let keys = KeyRing::new(vec![key.clone(), ring().get("k2").unwrap().clone()]);
    let debug = [
        format!("{key:?}"),
        format!("{key:#?}"),
        format!("{keys:?}"),
        format!("{keys:#?}"),
    ];
    for d in &debug {
        assert!(d.contains("k1"), "{d}");
        for f in &forms {
            assert!(!d.contains(f.as_str()), "{d}");
        }
        assert!(!d.contains("AAECAwQF") && !d.contains("ZGVmZ2hp"), "{d}");
    }
    assert_eq!(format!("{keys:?}"), r#"["k1", "k2"]"#);
    assert_eq!(keys.first().map(Key::id), Some("k1"));
    assert!(keys.get("k3").is_none());
}

#[test]
fn errors_have_fixed_labels_and_safe_text() {
    use TicketError::*;
    let all = [
        TooLarge,
        Malformed,
        BadBase64,
        EmptySignature,
        BadHeader,
        DuplicateKey,
        BadAlgorithm,
        MissingKid,
        BadKid,
        UnknownKid,
        BadTyp,
        CritHeader,
        BadSignature,
        MalformedClaims,
        MissingClaim("exp"),
        BadClaim("jti"),
        Expired,
        IssuedInFuture,
        NotYetValid,
        TtlTooLong,
        MissingAudience,
        WrongAudience,
    ];
    let labels: Vec<&str> = all.iter().map(TicketError::label).collect();
    assert_eq!(labels, TicketError::LABELS);
    for e in all {
        let l = e.label();
        let snake = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        assert!(l.bytes().all(snake), "{l}");
        let want = if e == WrongAudience { 403 } else { 401 };
        assert_eq!(e.status(), want, "{l}");
        assert!(e.to_string().starts_with("ticket"), "{e}");
    }
    assert_eq!(Expired.to_string(), "ticket expired");
    assert_eq!(BadClaim("exp").to_string(), "ticket claim exp invalid");
}

#[test]
fn error_text_never_echoes_the_ticket() {
    let v = vectors();
    for vec in v["vectors"].as_array().unwrap() {
        let token = vec["token"].as_str().unwrap();
        if let Err(e) = check(token) {
            let text = format!("{e} {e:?}");
            for seg in token.split('.').filter(|s| s.len() > 3) {
                assert!(!text.contains(seg), "{text}");
            }
            for value in ["customer-42", "t-0123456789abcdef", "pve1", "k1"] {
                assert!(!text.contains(value), "{text}");
            }
        }
    }
}

#[test]
fn record_claim_is_a_bool_and_defaults_to_false() {
    let mut p = good_payload();
    assert!(!check(&with_payload(&p)).unwrap().record);
    p["record"] = Value::Bool(true);
    assert!(check(&with_payload(&p)).unwrap().record);
    for bad in [Value::String("yes".into()), Value::from(1), Value::Null] {
        p["record"] = bad;
        assert_eq!(
            check(&with_payload(&p)),
            Err(TicketError::BadClaim("record"))
        );
    }
}
