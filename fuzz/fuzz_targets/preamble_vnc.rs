//! `preamble::rfb::VncPreamble` fed the upstream bytes U and browser bytes B
//! whole, cut at fuzzer-chosen points, and interleaved.
//!
//! Invariants:
//! * each side cut anywhere, sides in the same order → the same
//!   concatenated outputs, the same error and the same done state;
//! * any interleaving: no error iff U alone and B alone give none, and then
//!   the same outputs and done state; otherwise the error is U's or B's;
//! * outputs bounded: to_upstream ≤ |B| + 29, to_browser ≤ |U| + 64;
//! * once done, the transcript is exact: upstream gets our version, type 2,
//!   the DES answer to the challenge, then ClientInit (shared-flag forced)
//!   and the rest of B; the browser gets our version, the security
//!   exchange for its version, then U past the SecurityResult;
//! * after an error every call (and EOF) answers `AfterError`.
//!
//! Input: flags, password length, password, |U| (u16 LE), U, schedule length,
//! schedule (bit 7 = side, low 7 bits = chunk length), then B.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::preamble::rfb::{vnc_auth_response, VncPreamble};
use nexor_relay::preamble::PreambleError;

#[derive(Debug, PartialEq, Eq, Clone)]
struct Out {
    up: Vec<u8>,
    br: Vec<u8>,
    err: Option<PreambleError>,
    done: bool,
    authed: bool,
}

struct Case<'a> {
    pw: &'a [u8],
    force_shared: bool,
    start: bool,
}

impl Case<'_> {
    /// Feeds `(is_upstream, bytes)` steps in order, stopping at the first error.
    fn run(&self, steps: &[(bool, &[u8])]) -> Out {
        let mut p = VncPreamble::new(self.pw, self.force_shared);
        let (mut up, mut br) = (Vec::new(), Vec::new());
        if self.start {
            p.start(&mut br);
        }
        let mut err = None;
        for &(upstream, bytes) in steps {
            let r = if upstream {
                p.on_upstream(bytes, &mut up, &mut br)
            } else {
                p.on_browser(bytes, &mut up, &mut br)
            };
            if let Err(e) = r {
                assert_ne!(e, PreambleError::AfterError);
                assert!(!e.label().is_empty() && !e.to_string().is_empty());
                err = Some(e);
                break;
            }
        }
        let done = p.is_done();
        let authed = p.upstream_authenticated();
        if done {
            assert!(authed);
        }
        if err.is_some() {
            assert!(!done);
            let (a, b) = (up.len(), br.len());
            assert_eq!(p.on_upstream(b"x", &mut up, &mut br), Err(PreambleError::AfterError));
            assert_eq!(p.on_browser(b"x", &mut up, &mut br), Err(PreambleError::AfterError));
            assert_eq!(p.on_upstream_eof(), Err(PreambleError::AfterError));
            assert_eq!((up.len(), br.len()), (a, b), "output after an error");
        }
        Out {
            up,
            br,
            err,
            done,
            authed,
        }
    }
}

fn chunks<'a>(side: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut v = Vec::new();
    let mut at = 0;
    for &s in sizes {
        let end = (at + s).min(side.len());
        v.push(&side[at..end]);
        at = end;
    }
    v.push(&side[at..]);
    v
}

/// The browser's RFB minor version class, as the preamble reads it.
fn browser_class(b: &[u8]) -> Option<u8> {
    let m = b.get(..12)?;
    if !m.starts_with(b"RFB 003.") || m[11] != b'\n' || !m[8..11].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let minor: u32 = std::str::from_utf8(&m[8..11]).ok()?.parse().ok()?;
    match minor {
        3..=5 => Some(3),
        7 => Some(7),
        8.. => Some(8),
        _ => None,
    }
}

fn check_transcript(case: &Case<'_>, u: &[u8], b: &[u8], out: &Out) {
    // Upstream: version(12) count(1) types(n) challenge(16) result(4).
    let n = usize::from(u[12]);
    let ch_at = 13 + n;
    let challenge: [u8; 16] = u[ch_at..ch_at + 16].try_into().unwrap();
    let u_rest = &u[ch_at + 16 + 4..];
    let mut want_up = b"RFB 003.008\n".to_vec();
    want_up.push(2);
    want_up.extend_from_slice(&vnc_auth_response(case.pw, &challenge));
    let class = browser_class(b).expect("done with a bad browser version");
    let b_at = if class == 3 { 12 } else { 13 };
    let mut init = b[b_at..].to_vec();
    if case.force_shared {
        init[0] = 1;
    }
    want_up.extend_from_slice(&init);
    assert_eq!(out.up, want_up, "to_upstream transcript");
    let mut want_br = b"RFB 003.008\n".to_vec();
    match class {
        3 => want_br.extend_from_slice(&[0, 0, 0, 1]),
        7 => want_br.extend_from_slice(&[1, 1]),
        _ => want_br.extend_from_slice(&[1, 1, 0, 0, 0, 0]),
    }
    want_br.extend_from_slice(u_rest);
    assert_eq!(out.br, want_br, "to_browser transcript");
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (d.get(..n)?, d.get(n..)?);
        d = b;
        Some(a)
    };
    let Some(&[flags, pwlen]) = take(2) else { return };
    let Some(pw) = take(usize::from(pwlen % 12)) else { return };
    let Some(ul) = take(2) else { return };
    let Some(u) = take(usize::from(u16::from_le_bytes([ul[0], ul[1]])) % 2048) else { return };
    let Some(&[ns]) = take(1) else { return };
    let Some(sched) = take(usize::from(ns % 32)) else { return };
    let b = d;
    let case = Case {
        pw,
        force_shared: flags & 1 != 0,
        start: flags & 2 != 0,
    };

    let u_sizes: Vec<usize> = sched.iter().filter(|s| *s & 0x80 != 0).map(|s| usize::from(s & 0x7f)).collect();
    let b_sizes: Vec<usize> = sched.iter().filter(|s| *s & 0x80 == 0).map(|s| usize::from(s & 0x7f)).collect();
    let uc = chunks(u, &u_sizes);
    let bc = chunks(b, &b_sizes);
    let seq = |first_up: bool, uc: &[&[u8]], bc: &[&[u8]]| -> Vec<(bool, Vec<u8>)> {
        let us = uc.iter().map(|c| (true, c.to_vec()));
        let bs = bc.iter().map(|c| (false, c.to_vec()));
        if first_up { us.chain(bs).collect() } else { bs.chain(us).collect() }
    };
    let as_steps = |v: &[(bool, Vec<u8>)]| -> Vec<(bool, Vec<u8>)> { v.to_vec() };
    let run = |v: Vec<(bool, Vec<u8>)>| {
        let steps: Vec<(bool, &[u8])> = v.iter().map(|(s, c)| (*s, c.as_slice())).collect();
        case.run(&steps)
    };

    let ref_ub = run(seq(true, &[u], &[b]));
    let ref_bu = run(seq(false, &[u], &[b]));
    assert_eq!(run(as_steps(&seq(true, &uc, &bc))), ref_ub, "U then B, cut");
    assert_eq!(run(as_steps(&seq(false, &uc, &bc))), ref_bu, "B then U, cut");

    let only_u = run(vec![(true, u.to_vec())]);
    let only_b = run(vec![(false, b.to_vec())]);

    // Interleaved as the schedule says, then whatever is left of each side.
    let (mut iu, mut ib) = (uc.iter(), bc.iter());
    let mut inter: Vec<(bool, Vec<u8>)> = Vec::new();
    for s in sched {
        if s & 0x80 != 0 {
            if let Some(c) = iu.next() {
                inter.push((true, c.to_vec()));
            }
        } else if let Some(c) = ib.next() {
            inter.push((false, c.to_vec()));
        }
    }
    inter.extend(iu.map(|c| (true, c.to_vec())));
    inter.extend(ib.map(|c| (false, c.to_vec())));
    let mixed = run(inter);

    for o in [&ref_ub, &ref_bu, &mixed] {
        assert!(o.up.len() <= b.len() + 29, "to_upstream {} for |B| {}", o.up.len(), b.len());
        assert!(o.br.len() <= u.len() + 64, "to_browser {} for |U| {}", o.br.len(), u.len());
    }
    match (&only_u.err, &only_b.err) {
        (None, None) => {
            assert_eq!(mixed, ref_ub, "interleaving changed the result");
            assert_eq!(ref_bu, ref_ub);
            assert_eq!(ref_ub.err, None);
        }
        (eu, eb) => {
            let e = mixed.err.as_ref().expect("interleaving hid an error");
            assert!(Some(e) == eu.as_ref() || Some(e) == eb.as_ref(), "{e:?} vs {eu:?} / {eb:?}");
            assert_eq!(ref_ub.err.as_ref(), eu.as_ref().or(eb.as_ref()));
            assert_eq!(ref_bu.err.as_ref(), eb.as_ref().or(eu.as_ref()));
        }
    }
    if ref_ub.done {
        check_transcript(&case, u, b, &ref_ub);
    }
    if flags & 4 != 0 {
        // EOF: fine once done, UpstreamClosed before (unless already failed).
        let mut p = VncPreamble::new(pw, case.force_shared);
        let (mut up, mut br) = (Vec::new(), Vec::new());
        let r1 = p.on_upstream(u, &mut up, &mut br);
        let r2 = if r1.is_ok() { p.on_browser(b, &mut up, &mut br) } else { Ok(()) };
        let eof = p.on_upstream_eof();
        match (r1.is_ok() && r2.is_ok(), p.is_done()) {
            (true, true) => assert_eq!(eof, Ok(())),
            (true, false) => assert_eq!(eof, Err(PreambleError::UpstreamClosed)),
            _ => assert_eq!(eof, Err(PreambleError::AfterError)),
        }
    }
});
