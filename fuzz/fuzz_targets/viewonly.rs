//! `relay::viewonly::ViewFilter` (view-only tickets) fed a browser stream
//! whole, byte by byte and cut at fuzzer-chosen points.
//!
//! Invariants: every cut gives the byte-by-byte output and the same
//! violation, except that a call that fails outputs nothing, so a cut run
//! that fails gives a prefix of it; each call outputs at most its input
//! plus `MAX_HELD`; after a violation every call fails and outputs
//! nothing; a raw terminal passes nothing; and the output is a fixed
//! point: filtered again it comes out unchanged (so no input message is
//! left in it, and RFB's shared flag is 1).
//!
//! Input: kind (low 2 bits: RfbHandshake, Rfb, Termproxy, DropAll),
//! schedule length, schedule (chunk lengths), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::relay::viewonly::{View, ViewFilter, Violation, MAX_HELD};

fn run(view: View, stream: &[u8], sizes: &[usize]) -> (Vec<u8>, Option<Violation>) {
    let mut f = ViewFilter::new(view);
    let mut out = Vec::new();
    let mut at: usize = 0;
    let cuts = sizes.iter().copied().chain(std::iter::once(usize::MAX));
    for s in cuts {
        let end = at.saturating_add(s).min(stream.len());
        let before = out.len();
        if let Err(v) = f.feed(&stream[at..end], &mut out) {
            assert_eq!(out.len(), before, "a failed call output something");
            let mut more = Vec::new();
            assert_eq!(f.feed(b"\x03", &mut more), Err(v));
            assert!(more.is_empty());
            return (out, Some(v));
        }
        assert!(out.len() - before <= end - at + MAX_HELD, "output not bounded by input");
        at = end;
        if at == stream.len() {
            break;
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let Some((&n, rest)) = rest.split_first() else { return };
    let n = usize::from(n % 32).min(rest.len());
    let (sched, stream) = rest.split_at(n);
    let view = [View::RfbHandshake, View::Rfb, View::Termproxy, View::DropAll][usize::from(kind & 3)];

    let bytewise = run(view, stream, &vec![1; stream.len()]);
    let sizes: Vec<usize> = sched.iter().map(|&s| usize::from(s)).collect();
    for r in [run(view, stream, &[]), run(view, stream, &sizes)] {
        assert_eq!(r.1, bytewise.1, "violation depends on the cut");
        if r.1.is_none() {
            assert_eq!(r.0, bytewise.0, "output depends on the cut");
        } else {
            assert!(bytewise.0.starts_with(&r.0), "a cut run is not a prefix");
        }
    }
    let (out, _) = bytewise;
    if view == View::DropAll {
        assert!(out.is_empty());
    }
    // A fixed point: nothing left to drop, nothing it cannot follow.
    let again = run(view, &out, &[]);
    assert_eq!(again.1, None, "its own output is a violation");
    assert_eq!(again.0, out, "its own output is filtered again");
});
