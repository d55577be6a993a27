//! `ticket::verify` / `verify_signature` / `decode_unverified` / `mint`
//! with the keys of tests/data/jwt-hs256.json.
//!
//! Invariants: never panics; every error's label is in `LABELS`, its status
//! is 401, or 403 exactly for `WrongAudience`, its text is non-empty;
//! `decode_unverified` and `verify_signature` agree on shape (what one calls
//! well-formed the other never calls malformed); `verify` Ok ⇒
//! `verify_signature` Ok with the same claims; `mint(valid claims, key)`
//! verifies back to equal claims (or is `TooLarge` past 4096 bytes), fails
//! under the other key, and fails once any byte is changed.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexor_relay::ticket::{
    decode_unverified, mint, verify, verify_signature, Claims, Console, Guest, Key, KeyRing, Mode,
    Policy, TicketError, MAX_TICKET_LEN,
};

const NOW: u64 = 1_790_000_000;
const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKT";
/// A valid secret to compare `Debug` texts against.
const OTHER_SECRET: &str = K2;

fn keys() -> (Key, Key) {
    (
        Key::from_secret_b64("k1", K1).unwrap(),
        Key::from_secret_b64("k2", K2).unwrap(),
    )
}

fn check_err(e: &TicketError) {
    assert!(TicketError::LABELS.contains(&e.label()), "{e:?}");
    assert_eq!(e.status() == 403, *e == TicketError::WrongAudience);
    assert!(matches!(e.status(), 401 | 403));
    assert!(!e.to_string().is_empty());
}

fn is_shape(e: &TicketError) -> bool {
    matches!(
        e,
        TicketError::TooLarge
            | TicketError::Malformed
            | TicketError::BadBase64
            | TicketError::EmptySignature
            | TicketError::BadHeader
            | TicketError::DuplicateKey
            | TicketError::MalformedClaims
    )
}

fn check_token(token: &str, ring: &KeyRing, policy: &Policy, now: u64) {
    let full = verify(token, ring, policy, now);
    let sig = verify_signature(token, ring);
    let dec = decode_unverified(token);
    for e in [full.as_ref().err(), sig.as_ref().err(), dec.as_ref().err()]
        .into_iter()
        .flatten()
    {
        check_err(e);
    }
    if token.len() > MAX_TICKET_LEN {
        assert_eq!(sig, Err(TicketError::TooLarge));
        assert_eq!(dec, Err(TicketError::TooLarge));
    }
    match (&sig, &dec) {
        (Ok(c), Ok((_, claims))) => {
            assert_eq!(claims["exp"].as_u64(), Some(c.exp));
            assert_eq!(claims["jti"].as_str(), Some(c.jti.as_str()));
        }
        (Ok(_), Err(e)) => panic!("verify_signature Ok but decode_unverified {e:?}"),
        (Err(e), Ok(_)) => assert!(!is_shape(e), "decode Ok but verify_signature {e:?}"),
        (Err(se), Err(de)) => {
            // Errors found before the header is interpreted are the same.
            if matches!(
                de,
                TicketError::TooLarge
                    | TicketError::Malformed
                    | TicketError::BadBase64
                    | TicketError::BadHeader
            ) {
                assert_eq!(se, de);
            }
        }
    }
    match &full {
        Ok(c) => {
            assert_eq!(sig.as_ref(), Ok(c));
            assert!(c.check_time(policy, now).is_ok());
            assert!(c.check_audience(policy).is_ok());
            assert!((16..=128).contains(&c.jti.chars().count()));
        }
        Err(e) => {
            if let Ok(c) = &sig {
                assert!(matches!(
                    e,
                    TicketError::Expired
                        | TicketError::IssuedInFuture
                        | TicketError::NotYetValid
                        | TicketError::TtlTooLong
                        | TicketError::MissingAudience
                        | TicketError::WrongAudience
                ));
                let _ = c.replay_key();
            } else {
                assert_eq!(Some(e), sig.as_ref().err());
            }
        }
    }
}

fn text(u: &mut Unstructured<'_>, min: usize, max: usize) -> arbitrary::Result<String> {
    let s: String = String::arbitrary(u)?
        .chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect();
    let n = s.chars().count();
    Ok(s + &"x".repeat(min.saturating_sub(n)))
}

fn claims(u: &mut Unstructured<'_>) -> arbitrary::Result<Claims> {
    let opt = |u: &mut Unstructured<'_>, max: usize| -> arbitrary::Result<Option<String>> {
        Ok(if bool::arbitrary(u)? { Some(text(u, 0, max)?) } else { None })
    };
    Ok(Claims {
        exp: u64::arbitrary(u)?,
        iat: u64::arbitrary(u)?,
        nbf: Option::<u64>::arbitrary(u)?,
        jti: text(u, 16, 128)?,
        sub: text(u, 1, 256)?,
        aud: opt(u, 64)?,
        upstream: text(u, 1, 128)?,
        node: opt(u, 64)?,
        vmid: Option::<u64>::arbitrary(u)?,
        guest: match u8::arbitrary(u)? % 3 {
            0 => None,
            1 => Some(Guest::Qemu),
            _ => Some(Guest::Lxc),
        },
        console: if bool::arbitrary(u)? { Console::Vnc } else { Console::Term },
        ip: opt(u, 64)?,
        max_session: Option::<u64>::arbitrary(u)?,
        mode: if bool::arbitrary(u)? { Mode::View } else { Mode::Control },
        record: bool::arbitrary(u)?,
    })
}

fuzz_target!(|data: &[u8]| {
    let (k1, k2) = keys();
    let ring = KeyRing::new(vec![k1.clone(), k2.clone()]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let policy = Policy {
        max_ttl: 120,
        leeway: u64::from(mode >> 5),
        audience: (mode & 0x10 != 0).then(|| "relay-a".to_string()),
    };
    match mode % 3 {
        // A token from the input, as text.
        0 => {
            let token = String::from_utf8_lossy(rest);
            check_token(&token, &ring, &policy, NOW);
            check_token(&token, &KeyRing::new(vec![]), &policy, NOW);
        }
        // Valid claims, minted and verified back.
        1 => {
            let mut u = Unstructured::new(rest);
            let Ok(c) = claims(&mut u) else { return };
            let use_k2 = bool::arbitrary(&mut u).unwrap_or(false);
            let (key, other) = if use_k2 { (&k2, &k1) } else { (&k1, &k2) };
            let token = mint(&c, key);
            check_token(&token, &ring, &policy, NOW);
            if token.len() > MAX_TICKET_LEN {
                assert_eq!(verify_signature(&token, &ring), Err(TicketError::TooLarge));
                return;
            }
            assert_eq!(verify_signature(&token, &ring).as_ref(), Ok(&c), "{token}");
            let (header, _) = decode_unverified(&token).expect("minted token decodes");
            assert_eq!(header["kid"].as_str(), Some(key.id()));
            // The same kid under the other key's secret: bad signature.
            let swapped = KeyRing::new(vec![
                Key::from_secret_b64(key.id(), if use_k2 { K1 } else { K2 }).unwrap(),
                Key::from_secret_b64(other.id(), if use_k2 { K2 } else { K1 }).unwrap(),
            ]);
            assert_eq!(
                verify_signature(&token, &swapped),
                Err(TicketError::BadSignature)
            );
            // Within its lifetime, with a policy that allows it, it verifies.
            if c.exp > c.iat && c.nbf.map_or(true, |n| n <= c.iat) {
                let p = Policy {
                    max_ttl: u64::MAX,
                    leeway: 0,
                    audience: c.aud.clone(),
                };
                assert_eq!(verify(&token, &ring, &p, c.iat), Ok(c.clone()));
            }
            // Any single changed byte breaks it.
            if let Ok(pos) = usize::arbitrary(&mut u) {
                let mut b = token.clone().into_bytes();
                let i = pos % b.len();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                let t = String::from_utf8(b).unwrap();
                assert!(verify_signature(&t, &ring).is_err(), "changed byte {i} still verifies");
            }
        }
        // Key construction from arbitrary ids and secrets.
        _ => {
            let mut u = Unstructured::new(rest);
            let (Ok(id), Ok(secret)) = (String::arbitrary(&mut u), String::arbitrary(&mut u)) else {
                return;
            };
            match Key::from_secret_b64(&id, &secret) {
                Ok(k) => {
                    assert!(!id.is_empty());
                    assert_eq!(k.id(), id);
                    // No Debug field holds the secret: the Debug text is the
                    // same as for the same id with another secret.
                    let other = Key::from_secret_b64(&id, OTHER_SECRET).expect("valid id, valid secret");
                    assert_eq!(format!("{k:?}"), format!("{other:?}"), "Debug shows the secret");
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
});
