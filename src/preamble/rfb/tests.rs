//! Tests of the VNC preamble (`super`): the DES answer against the vectors in
//! docs/proxmox.md, each browser and server version, held and capped bytes,
//! and any split or interleaving of the two streams giving the same output.

use super::*;

/// The §6.2 test challenge 00 01 .. 0f.
const CHALLENGE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
/// DES response for `password` to [`CHALLENGE`] (docs/proxmox.md §6.2).
const RESPONSE: &str = "b866924125c8eebb9debc1db61c538e2";
const V38: &[u8] = b"RFB 003.008\n";
const V37: &[u8] = b"RFB 003.007\n";
const V33: &[u8] = b"RFB 003.003\n";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(
            |i| match u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16) {
                Ok(b) => b,
                Err(e) => panic!("bad hex {s}: {e}"),
            },
        )
        .collect()
}

fn must(r: Result<(), PreambleError>) {
    if let Err(e) = r {
        panic!("unexpected error: {e}");
    }
}

/// A minimal ServerInit: 744x400, 32 bpp, name "VNC Command Terminal".
fn server_init() -> Vec<u8> {
    let mut v = vec![0x02, 0xe8, 0x01, 0x90];
    v.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    v.extend_from_slice(&20u32.to_be_bytes());
    v.extend_from_slice(b"VNC Command Terminal");
    v
}

/// What QEMU sends up to and including SecurityResult OK.
fn upstream_login() -> Vec<u8> {
    [V38, &[1, 2], &CHALLENGE, &[0, 0, 0, 0]].concat()
}

/// What the relay must send upstream for password `password`.
fn relay_login() -> Vec<u8> {
    [V38, &[2], &hex(RESPONSE)].concat()
}

/// Browser messages after ClientInit: SetEncodings (Raw) and a
/// FramebufferUpdateRequest. Contain 0 bytes that must not be touched.
const AFTER_INIT: &[u8] = &[2, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 2, 0xe8, 1, 0x90];

/// Everything a browser of `version` sends, ClientInit shared-flag 0.
fn browser_all(version: &[u8]) -> Vec<u8> {
    let choice: &[u8] = if version == V33 { &[] } else { &[1] };
    [version, choice, &[0], AFTER_INIT].concat()
}

/// What the relay answers a browser of `version` in its security phase.
fn browser_replies(version: &[u8]) -> Vec<u8> {
    match version {
        v if v == V33 => [V38, &[0, 0, 0, 1]].concat(),
        v if v == V37 => [V38, &[1, 1]].concat(),
        _ => [V38, &[1, 1], &[0, 0, 0, 0]].concat(),
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Out {
    up: Vec<u8>,
    br: Vec<u8>,
}

fn new() -> VncPreamble {
    VncPreamble::new(b"password", true)
}

fn up(p: &mut VncPreamble, data: &[u8], o: &mut Out) -> Result<(), PreambleError> {
    p.on_upstream(data, &mut o.up, &mut o.br)
}

fn br(p: &mut VncPreamble, data: &[u8], o: &mut Out) -> Result<(), PreambleError> {
    p.on_browser(data, &mut o.up, &mut o.br)
}

/// Whole upstream, then whole browser input.
fn whole(upstream: &[u8], browser: &[u8]) -> Out {
    let mut p = new();
    let mut o = Out::default();
    p.start(&mut o.br);
    must(up(&mut p, upstream, &mut o));
    must(br(&mut p, browser, &mut o));
    assert!(p.is_done());
    o
}

#[test]
fn des_matches_the_spec_vectors() {
    assert_eq!(vnc_des_key(b"password").to_vec(), hex("0e86ceceeef64e26"));
    assert_eq!(vnc_des_key(b"Ab3!x:Z9").to_vec(), hex("8246cc841e5c5a9c"));
    assert_eq!(
        vnc_auth_response(b"password", &CHALLENGE).to_vec(),
        hex(RESPONSE)
    );
    assert_eq!(
        vnc_auth_response(b"Ab3!x:Z9", &CHALLENGE).to_vec(),
        hex("e4d64cf5c2ee8375299ac44ed9419cc5")
    );
}

#[test]
fn des_uses_only_the_first_8_bytes_zero_padded() {
    // A whole vncproxy ticket works as the password: only 8 bytes count.
    assert_eq!(
        vnc_auth_response(b"Ab3!x:Z9::rest-of-the-ticket", &CHALLENGE),
        vnc_auth_response(b"Ab3!x:Z9", &CHALLENGE)
    );
    assert_eq!(vnc_des_key(b"ab"), [0x86, 0x46, 0, 0, 0, 0, 0, 0]);
    assert_eq!(vnc_des_key(b""), [0; 8]);
}

#[test]
fn full_conversation_for_each_browser_version() {
    for v in [V38, V37, V33] {
        let upstream = [upstream_login(), server_init()].concat();
        let mut p = new();
        let mut o = Out::default();
        p.start(&mut o.br);
        assert_eq!(o.br, V38, "greeting at once");
        assert!(o.up.is_empty(), "nothing upstream before its version");

        // The upstream login runs alone first (QEMU's 30 s window).
        must(up(&mut p, V38, &mut o));
        assert_eq!(o.up, V38);
        must(up(&mut p, &[1, 2], &mut o));
        assert_eq!(o.up, [V38, &[2]].concat());
        must(up(&mut p, &CHALLENGE, &mut o));
        assert_eq!(o.up, relay_login());
        must(up(&mut p, &[0, 0, 0, 0], &mut o));
        assert!(p.upstream_authenticated());
        assert!(!p.is_done());

        // Then the browser, all of it in one chunk.
        must(br(&mut p, &browser_all(v), &mut o));
        assert!(p.is_done());
        assert_eq!(o.br, browser_replies(v));
        assert_eq!(o.up, [relay_login(), vec![1], AFTER_INIT.to_vec()].concat());

        // ServerInit passes through once done.
        must(up(&mut p, &server_init(), &mut o));
        assert_eq!(o.br, [browser_replies(v), server_init()].concat());
        assert_eq!(o, whole(&upstream, &browser_all(v)), "{v:?}");
    }
}

#[test]
fn accepts_later_server_versions_as_38() {
    for v in [&b"RFB 003.889\n"[..], b"RFB 003.010\n"] {
        let mut p = new();
        let mut o = Out::default();
        must(up(&mut p, v, &mut o));
        assert_eq!(o.up, V38);
    }
}

#[test]
fn refuses_old_or_malformed_server_versions() {
    for v in [
        &b"RFB 003.007\n"[..],
        b"RFB 003.003\n",
        b"RFB 004.000\n",
        b"HTTP/1.1 400",
        b"RFB 003.00a\n",
        b"RFB 003.008\r",
    ] {
        let mut p = new();
        let mut o = Out::default();
        let r = up(&mut p, v, &mut o);
        assert_eq!(
            r.as_ref().map_err(|e| e.label()),
            Err("vnc_upstream_version")
        );
        assert_eq!(r.map_err(|e| e.fault()), Err(Fault::Upstream));
        assert!(o.up.is_empty(), "{v:?}");
    }
}

#[test]
fn browser_version_aliases() {
    for (v, reply) in [
        (&b"RFB 003.004\n"[..], &[0, 0, 0, 1][..]),
        (b"RFB 003.005\n", &[0, 0, 0, 1]),
        (b"RFB 003.889\n", &[1, 1]),
        (b"RFB 003.008\n", &[1, 1]),
    ] {
        let mut p = new();
        let mut o = Out::default();
        must(br(&mut p, v, &mut o));
        assert_eq!(o.br, [V38, reply].concat(), "{v:?}");
    }
}

#[test]
fn refuses_bad_browser_versions() {
    for v in [
        &b"RFB 003.006\n"[..],
        b"RFB 003.002\n",
        b"RFB 004.001\n",
        b"GET / HTTP/1",
    ] {
        let mut p = new();
        let mut o = Out::default();
        let r = br(&mut p, v, &mut o);
        assert_eq!(
            r.as_ref().map_err(|e| e.label()),
            Err("vnc_browser_version")
        );
        assert_eq!(r.map_err(|e| e.fault()), Err(Fault::Browser));
        assert_eq!(o.br, V38);
        assert_eq!(br(&mut p, b"", &mut o), Err(PreambleError::AfterError));
    }
}

#[test]
fn refuses_a_bad_browser_choice() {
    // 3.8: a failed SecurityResult with a reason, then the error.
    let mut p = new();
    let mut o = Out::default();
    let r = br(&mut p, &[V38, &[2]].concat(), &mut o);
    assert_eq!(r, Err(PreambleError::BrowserBadSecurityType(2)));
    let mut expect = [V38, &[1, 1], &[0, 0, 0, 1], &[0, 0, 0, 25]].concat();
    expect.extend_from_slice(b"security type not offered");
    assert_eq!(o.br, expect);
    // 3.7: no SecurityResult on failure.
    let mut p = new();
    let mut o = Out::default();
    let r = br(&mut p, &[V37, &[0]].concat(), &mut o);
    assert_eq!(r, Err(PreambleError::BrowserBadSecurityType(0)));
    assert_eq!(o.br, [V38, &[1, 1]].concat());
}

#[test]
fn auth_failure_carries_the_upstream_reason() {
    for (reason, text) in [
        (&b"Authentication failed\0"[..], "Authentication failed"),
        (b"password check failed!", "password check failed!"),
    ] {
        let mut p = new();
        let mut o = Out::default();
        let mut failure = vec![0, 0, 0, 1];
        failure.extend_from_slice(&reason_len(reason));
        failure.extend_from_slice(reason);
        let input = [V38, &[1, 2], &CHALLENGE, &failure].concat();
        if reason.len() == 22 {
            assert_eq!(&failure[4..8], &[0, 0, 0, 22], "QEMU's length");
        }
        // Every split point ends in the same error, never earlier.
        for i in 0..input.len() {
            let mut p2 = new();
            let mut o2 = Out::default();
            must(up(&mut p2, &input[..i], &mut o2));
            let r = up(&mut p2, &input[i..], &mut o2);
            assert_eq!(r.map_err(|e| e.label()), Err("vnc_auth_failed"));
        }
        let r = up(&mut p, &input, &mut o);
        assert_eq!(
            r,
            Err(PreambleError::VncAuthFailed {
                status: 1,
                reason: text.into()
            })
        );
        assert_eq!(o.up, relay_login());
        assert!(!p.upstream_authenticated());
        assert_eq!(up(&mut p, &[], &mut o), Err(PreambleError::AfterError));
    }
}

#[test]
fn long_reasons_are_cut_without_waiting_for_the_rest() {
    let mut p = new();
    let mut o = Out::default();
    let mut input = [V38, &[1, 2], &CHALLENGE, &[0, 0, 0, 1]].concat();
    input.extend_from_slice(&u32::MAX.to_be_bytes());
    input.extend_from_slice(&[b'x'; MAX_REASON]);
    match up(&mut p, &input, &mut o) {
        Err(PreambleError::VncAuthFailed { reason, .. }) => {
            assert_eq!(reason, format!("{}...", "x".repeat(MAX_REASON)));
        }
        r => panic!("unexpected {r:?}"),
    }
}

#[test]
fn zero_security_types_fail_with_the_reason() {
    let mut p = new();
    let mut o = Out::default();
    let input = [V38, &[0], &[0, 0, 0, 14], b"Too many users"].concat();
    must(up(&mut p, &input[..input.len() - 1], &mut o));
    let r = up(&mut p, &input[input.len() - 1..], &mut o);
    assert_eq!(
        r,
        Err(PreambleError::NoSecurityTypes {
            reason: "Too many users".into()
        })
    );
    assert_eq!(o.up, V38, "no choice sent");
    // An empty reason fails at once.
    let mut p = new();
    let r = up(&mut p, &[V38, &[0, 0, 0, 0, 0]].concat(), &mut o);
    assert_eq!(r.map_err(|e| e.label()), Err("vnc_no_security_types"));
}

#[test]
fn refuses_an_upstream_without_vnc_auth() {
    let mut p = new();
    let mut o = Out::default();
    let r = up(&mut p, &[V38, &[2, 1, 19]].concat(), &mut o);
    assert_eq!(r, Err(PreambleError::VncAuthNotOffered(vec![1, 19])));
    assert_eq!(o.up, V38);
    // Type 2 among others is chosen.
    let mut p = new();
    let mut o = Out::default();
    must(up(&mut p, &[V38, &[3, 19, 2, 1]].concat(), &mut o));
    assert_eq!(o.up, [V38, &[2]].concat());
}

#[test]
fn forces_the_shared_flag_only_when_asked() {
    for (force, flag, sent) in [(true, 0, 1), (true, 1, 1), (false, 0, 0), (false, 1, 1)] {
        let mut p = VncPreamble::new(b"password", force);
        let mut o = Out::default();
        must(up(&mut p, &upstream_login(), &mut o));
        must(br(
            &mut p,
            &[V38, &[1], &[flag], AFTER_INIT].concat(),
            &mut o,
        ));
        assert_eq!(
            o.up,
            [relay_login(), vec![sent], AFTER_INIT.to_vec()].concat()
        );
    }
    // ClientInit arriving after the splice point is still forced.
    let mut p = new();
    let mut o = Out::default();
    must(up(&mut p, &upstream_login(), &mut o));
    must(br(&mut p, &[V38, &[1]].concat(), &mut o));
    assert!(!p.is_done(), "not done before ClientInit");
    must(br(&mut p, &[0], &mut o));
    assert!(p.is_done());
    assert_eq!(o.up, [relay_login(), vec![1]].concat());
}

#[test]
fn server_init_glued_to_security_result_is_held_then_passed() {
    let mut p = new();
    let mut o = Out::default();
    p.start(&mut o.br);
    must(up(
        &mut p,
        &[upstream_login(), server_init()].concat(),
        &mut o,
    ));
    assert!(p.upstream_authenticated());
    assert_eq!(o.br, V38, "held until the browser is ready");
    must(br(&mut p, &[V38, &[1]].concat(), &mut o));
    assert_eq!(o.br, browser_replies(V38), "still held: no ClientInit");
    must(br(&mut p, &[0], &mut o));
    assert_eq!(o.br, [browser_replies(V38), server_init()].concat());
    assert_eq!(o.up, [relay_login(), vec![1]].concat());
}

#[test]
fn client_init_before_upstream_auth_is_held_then_emitted() {
    let mut p = new();
    let mut o = Out::default();
    must(br(&mut p, &browser_all(V38), &mut o));
    assert_eq!(o.br, browser_replies(V38));
    assert!(o.up.is_empty());
    let login = upstream_login();
    must(up(&mut p, &login[..login.len() - 1], &mut o));
    assert_eq!(o.up, relay_login(), "held while the result is incomplete");
    assert!(!p.is_done());
    must(up(&mut p, &login[login.len() - 1..], &mut o));
    assert!(p.is_done());
    assert_eq!(o.up, [relay_login(), vec![1], AFTER_INIT.to_vec()].concat());
}

#[test]
fn held_browser_bytes_are_capped() {
    let mut p = new();
    let mut o = Out::default();
    must(br(&mut p, &[V38, &[1]].concat(), &mut o));
    must(br(&mut p, &vec![0; MAX_HELD], &mut o));
    let r = br(&mut p, &[0], &mut o);
    assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Browser)));
    assert_eq!(r.map_err(|e| e.label()), Err("preamble_held_too_large"));
    assert_eq!(up(&mut p, V38, &mut o), Err(PreambleError::AfterError));
}

#[test]
fn a_huge_chunk_is_refused_before_it_is_buffered() {
    let mut p = new();
    let mut o = Out::default();
    let r = br(&mut p, &vec![0; MAX_HELD + MAX_PHASE + 1], &mut o);
    assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Browser)));
    let mut p = new();
    let r = up(&mut p, &vec![0; MAX_HELD + MAX_PHASE + 1], &mut o);
    assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Upstream)));
}

#[test]
fn held_upstream_bytes_are_capped() {
    let mut p = new();
    let mut o = Out::default();
    must(up(&mut p, &upstream_login(), &mut o));
    must(up(&mut p, &vec![0; MAX_HELD], &mut o));
    let r = up(&mut p, &[0], &mut o);
    assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Upstream)));
}

#[test]
fn upstream_eof_before_done_is_an_error() {
    let mut p = new();
    let mut o = Out::default();
    must(up(&mut p, V38, &mut o));
    assert_eq!(p.on_upstream_eof(), Err(PreambleError::UpstreamClosed));
    assert_eq!(p.on_upstream_eof(), Err(PreambleError::AfterError));
    let mut p = new();
    must(up(&mut p, &upstream_login(), &mut o));
    must(br(&mut p, &browser_all(V37), &mut o));
    must(p.on_upstream_eof());
}

#[test]
fn debug_hides_the_key() {
    let p = VncPreamble::new(b"Ab3!x:Z9", true);
    let d = format!("{p:?}");
    assert!(!d.contains("key") && !d.contains("130"), "{d}");
}

/// Every prefix of each side's input is accepted and yields a prefix of
/// the whole output; every two-way split of each side, in either order
/// of the sides, yields exactly the whole output.
#[test]
fn every_prefix_and_split_gives_the_same_output() {
    for v in [V38, V37, V33] {
        let upstream = [upstream_login(), server_init()].concat();
        let browser = browser_all(v);
        let full = whole(&upstream, &browser);
        for i in 0..=upstream.len() {
            for j in 0..=browser.len() {
                for upstream_first in [true, false] {
                    let mut p = new();
                    let mut o = Out::default();
                    p.start(&mut o.br);
                    if upstream_first {
                        must(up(&mut p, &upstream[..i], &mut o));
                        must(br(&mut p, &browser[..j], &mut o));
                    } else {
                        must(br(&mut p, &browser[..j], &mut o));
                        must(up(&mut p, &upstream[..i], &mut o));
                    }
                    assert!(full.up.starts_with(&o.up), "{v:?} {i}/{j}");
                    assert!(full.br.starts_with(&o.br), "{v:?} {i}/{j}");
                    let login = upstream_login().len();
                    assert_eq!(p.upstream_authenticated(), i >= login);
                    assert_eq!(p.is_done(), i >= login && j > browser.len() - 19);
                    must(up(&mut p, &upstream[i..], &mut o));
                    must(br(&mut p, &browser[j..], &mut o));
                    assert_eq!(o, full, "{v:?} split {i}/{j}");
                }
            }
        }
    }
}

#[test]
fn one_byte_at_a_time_interleaved() {
    for v in [V38, V37, V33] {
        let upstream = [upstream_login(), server_init()].concat();
        let browser = browser_all(v);
        let mut p = new();
        let mut o = Out::default();
        for k in 0..upstream.len().max(browser.len()) {
            if let Some(b) = upstream.get(k) {
                must(up(&mut p, &[*b], &mut o));
            }
            if let Some(b) = browser.get(k) {
                must(br(&mut p, &[*b], &mut o));
            }
        }
        assert_eq!(o, whole(&upstream, &browser), "{v:?}");
    }
}

/// Random chunk sizes and random order of the two legs (xorshift, fixed
/// seed: deterministic).
#[test]
fn random_interleavings_give_the_same_output() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % (n as u64)).unwrap_or(0)
    };
    for v in [V38, V37, V33] {
        let upstream = [upstream_login(), server_init()].concat();
        let browser = browser_all(v);
        let full = whole(&upstream, &browser);
        for _ in 0..300 {
            let mut p = new();
            let mut o = Out::default();
            let (mut i, mut j) = (0, 0);
            while i < upstream.len() || j < browser.len() {
                if j == browser.len() || (i < upstream.len() && rand(2) == 0) {
                    let n = 1 + rand(upstream.len() - i);
                    must(up(&mut p, &upstream[i..i + n], &mut o));
                    i += n;
                } else {
                    let n = 1 + rand(browser.len() - j);
                    must(br(&mut p, &browser[j..j + n], &mut o));
                    j += n;
                }
            }
            assert_eq!(o, full);
        }
    }
}
