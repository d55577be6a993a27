//! `preamble::term::TermPreamble` fed termproxy bytes U and browser bytes B
//! whole, cut at fuzzer-chosen points, and interleaved.
//!
//! Invariants: `new` refuses exactly the credentials its doc lists; every
//! cut and every interleaving gives the same outputs, error and done state
//! (only U can fail, and held browser bytes are released in order); the
//! transcript is exact: upstream gets `<user>:<ticket>\n` then all of B once
//! `OK` arrived, the browser gets U after `OK`; an error leaves only the
//! auth line sent; outputs bounded by the inputs; after an error every call
//! is `AfterError`; EOF is Ok once done, `TermAuthFailed` before.
//!
//! Input: flags, user length, user, ticket length (u16 LE), ticket, |U|
//! (u16 LE), U, schedule length, schedule (bit 7 = side, low 7 bits = chunk
//! length), then B.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::preamble::term::{TermPreamble, MAX_AUTH_LINE};
use nexor_relay::preamble::PreambleError;

#[derive(Debug, PartialEq, Eq)]
struct Out {
    up: Vec<u8>,
    br: Vec<u8>,
    err: Option<PreambleError>,
    done: bool,
}

fn run(user: &str, ticket: &str, start: bool, steps: &[(bool, &[u8])]) -> Out {
    let mut p = TermPreamble::new(user, ticket).unwrap();
    let (mut up, mut br) = (Vec::new(), Vec::new());
    if start {
        p.start(&mut up);
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
            assert!(!e.to_string().is_empty());
            err = Some(e);
            break;
        }
    }
    let done = p.is_done();
    if err.is_some() {
        assert!(!done);
        let n = (up.len(), br.len());
        assert_eq!(p.on_upstream(b"OK", &mut up, &mut br), Err(PreambleError::AfterError));
        assert_eq!(p.on_browser(b"x", &mut up, &mut br), Err(PreambleError::AfterError));
        assert_eq!(p.on_upstream_eof(), Err(PreambleError::AfterError));
        assert_eq!((up.len(), br.len()), n);
    } else {
        let eof = p.on_upstream_eof();
        if done {
            assert_eq!(eof, Ok(()));
        } else {
            assert!(matches!(eof, Err(PreambleError::TermAuthFailed { .. })), "{eof:?}");
        }
    }
    Out { up, br, err, done }
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

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (d.get(..n)?, d.get(n..)?);
        d = b;
        Some(a)
    };
    let Some(&[flags, ul]) = take(2) else { return };
    let Some(user) = take(usize::from(ul)) else { return };
    let Some(tl) = take(2) else { return };
    let Some(ticket) = take(usize::from(u16::from_le_bytes([tl[0], tl[1]])) % 4200) else { return };
    let Some(l) = take(2) else { return };
    let Some(u) = take(usize::from(u16::from_le_bytes([l[0], l[1]])) % 2048) else { return };
    let Some(&[ns]) = take(1) else { return };
    let Some(sched) = take(usize::from(ns % 32)) else { return };
    let b = d;
    let (Ok(user), Ok(ticket)) = (std::str::from_utf8(user), std::str::from_utf8(ticket)) else {
        return;
    };

    let bad = user.is_empty()
        || ticket.is_empty()
        || user.contains(['\n', '\r', ':'])
        || ticket.contains(['\n', '\r'])
        || user.len() + ticket.len() + 2 > MAX_AUTH_LINE;
    match TermPreamble::new(user, ticket) {
        Err(e) => {
            assert!(bad, "refused good credentials: {e:?}");
            assert!(matches!(e, PreambleError::TermBadCredentials(_)));
            let s = e.to_string();
            assert!(ticket.len() < 4 || !s.contains(ticket), "error shows the ticket");
            return;
        }
        Ok(p) => {
            assert!(!bad, "accepted bad credentials");
            // What matters: no Debug field holds the ticket, so the Debug
            // text is the same for any other ticket (of the same length).
            // A substring test would trip on text the escaping makes.
            let other = if ticket.bytes().all(|b| b == b'A') { "B" } else { "A" }.repeat(ticket.len());
            let q = TermPreamble::new(user, &other).expect("same shape as an accepted ticket");
            assert_eq!(format!("{p:?}"), format!("{q:?}"), "Debug shows the ticket");
        }
    }
    let start = flags & 1 != 0;

    let u_sizes: Vec<usize> = sched.iter().filter(|s| *s & 0x80 != 0).map(|s| usize::from(s & 0x7f)).collect();
    let b_sizes: Vec<usize> = sched.iter().filter(|s| *s & 0x80 == 0).map(|s| usize::from(s & 0x7f)).collect();
    let uc = chunks(u, &u_sizes);
    let bc = chunks(b, &b_sizes);

    let whole = run(user, ticket, start, &[(true, u), (false, b)]);
    let runs = [
        run(user, ticket, start, &[(false, b), (true, u)]),
        run(
            user,
            ticket,
            start,
            &uc.iter().map(|c| (true, *c)).chain(bc.iter().map(|c| (false, *c))).collect::<Vec<_>>(),
        ),
        run(
            user,
            ticket,
            start,
            &bc.iter().map(|c| (false, *c)).chain(uc.iter().map(|c| (true, *c))).collect::<Vec<_>>(),
        ),
        {
            let (mut iu, mut ib) = (uc.iter(), bc.iter());
            let mut steps: Vec<(bool, &[u8])> = Vec::new();
            for s in sched {
                if s & 0x80 != 0 {
                    if let Some(c) = iu.next() {
                        steps.push((true, c));
                    }
                } else if let Some(c) = ib.next() {
                    steps.push((false, c));
                }
            }
            steps.extend(iu.map(|c| (true, *c)));
            steps.extend(ib.map(|c| (false, *c)));
            run(user, ticket, start, &steps)
        },
    ];
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(*r, whole, "run {i} differs from whole");
    }

    let line = format!("{user}:{ticket}\n").into_bytes();
    let ok = u.starts_with(b"OK");
    assert_eq!(whole.done, ok);
    match (&whole.err, ok) {
        (None, true) => {
            let mut want = line.clone();
            want.extend_from_slice(b);
            assert_eq!(whole.up, want);
            assert_eq!(whole.br, &u[2..]);
        }
        (None, false) => {
            assert!(b"OK".starts_with(u), "not OK but no error");
            assert_eq!(whole.up, line);
            assert!(whole.br.is_empty());
        }
        (Some(e), _) => {
            assert!(!ok);
            assert!(matches!(e, PreambleError::TermAuthFailed { .. }), "{e:?}");
            assert_eq!(whole.up, line);
            assert!(whole.br.is_empty());
        }
    }
});
