//! `demo::rfb::RfbDemo` and `demo::term::TermDemo` through `demo::Backend`.
//!
//! Input byte 0 bit 0 picks the backend.
//!
//! RFB (bytes: flags, width, height, name length, name, then events of
//! `delta_ms, len, cut, bytes`): each event's bytes fed whole, cut in two,
//! and byte by byte (same `now`) give the same output, error, pixel format
//! and tick state after every event; `poll_tick(now)` leaves nothing due at
//! or before `now`; output per event is at most the handshake replies plus
//! one full-screen update at 4 bytes per pixel; after an error every call is
//! `AfterError` and nothing more is written. SetPixelFormat of any kind
//! never panics.
//!
//! Terminal (bytes: split count, split positions, then the input): the same
//! split equivalence; output ≤ 20 bytes per input byte (amortised: an
//! enter repeats the line); the line never holds
//! control bytes or more than `MAX_LINE` bytes; after `exit` nothing more.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nexor_relay::demo::rfb::{PixelFormat, RfbDemo};
use nexor_relay::demo::term::{TermDemo, MAX_LINE};
use nexor_relay::demo::{Backend, DemoError};

#[derive(Debug, PartialEq, Eq)]
struct Snap {
    out_len: usize,
    err: Option<DemoError>,
    format: PixelFormat,
    init: bool,
    tick: Option<Duration>,
}

struct Rfb {
    demo: RfbDemo,
    out: Vec<u8>,
    failed: Option<DemoError>,
}

impl Rfb {
    fn event(&mut self, pieces: &[&[u8]], now: Duration, bound: usize) -> Snap {
        let before = self.out.len();
        let mut err = None;
        for p in pieces {
            match self.demo.on_input(p, now, &mut self.out) {
                Ok(()) => {}
                Err(e) => {
                    if self.failed.is_some() {
                        assert_eq!(e, DemoError::AfterError);
                    } else {
                        assert_ne!(e, DemoError::AfterError);
                        assert!(!e.to_string().is_empty());
                        self.failed = Some(e.clone());
                    }
                    err = Some(e);
                    break;
                }
            }
        }
        if self.failed.is_some() {
            let n = self.out.len();
            assert_eq!(self.demo.on_input(b"\x03", now, &mut self.out), Err(DemoError::AfterError));
            assert_eq!(self.out.len(), n, "output after an error");
            assert_eq!(self.demo.next_tick(), None);
        }
        self.demo.poll_tick(now, &mut self.out);
        if let Some(t) = self.demo.next_tick() {
            assert!(t > now, "tick due at {t:?} still pending after poll_tick({now:?})");
        }
        let grew = self.out.len() - before;
        assert!(grew <= bound, "one event wrote {grew} bytes (bound {bound})");
        Snap {
            out_len: self.out.len(),
            err,
            format: self.demo.pixel_format(),
            init: self.demo.is_initialised(),
            tick: self.demo.next_tick(),
        }
    }
}

fn rfb(data: &[u8]) {
    let mut d = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (d.get(..n)?, d.get(n..)?);
        d = b;
        Some(a)
    };
    let Some(&[flags, w, h, nl]) = take(4) else { return };
    let Some(name) = take(usize::from(nl % 64)) else { return };
    let name = String::from_utf8_lossy(name);
    let (w, h) = if flags & 0x80 != 0 {
        (640, 480)
    } else {
        (u16::from(w % 96), u16::from(h % 96)) // 0 is raised to 1
    };
    let mut events: Vec<(u64, &[u8], usize)> = Vec::new();
    while let Some(&[delta, len, cut]) = take(3) {
        let Some(bytes) = take(usize::from(len)).or_else(|| take(0)) else { break };
        events.push((u64::from(delta) * 4, bytes, usize::from(cut)));
        if events.len() >= 64 {
            break;
        }
    }
    let bound = 64 + name.len() + 12 + usize::from(w.max(1)) * usize::from(h.max(1)) * 4 + 16;
    let mk = || {
        let mut demo = RfbDemo::new(w, h, &name);
        let mut out = Vec::new();
        demo.start(&mut out);
        assert_eq!(out, b"RFB 003.008\n");
        Rfb { demo, out, failed: None }
    };
    let (mut a, mut b, mut c) = (mk(), mk(), mk());
    let mut now = Duration::ZERO;
    for (delta, bytes, cut) in events {
        now += Duration::from_millis(delta);
        let cut = cut % (bytes.len() + 1);
        let sa = a.event(&[bytes], now, bound);
        let sb = b.event(&[&bytes[..cut], &bytes[cut..]], now, bound);
        let sc = if flags & 1 != 0 {
            let ones: Vec<&[u8]> = bytes.chunks(1).collect();
            c.event(&ones, now, bound)
        } else {
            c.event(&[bytes], now, bound)
        };
        // A piece after the error is AfterError in a split run (and an empty
        // event feeds no piece at all byte by byte), so compare the first
        // error only.
        let norm = |mut s: Snap, r: &Rfb| {
            s.err = r.failed.clone();
            s
        };
        let (sa, sb, sc) = (norm(sa, &a), norm(sb, &b), norm(sc, &c));
        assert_eq!(sb, sa, "two-piece split differs");
        assert_eq!(sc, sa, "byte-by-byte split differs");
        assert_eq!(b.out, a.out);
        assert_eq!(c.out, a.out);
    }
}

fn term(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8);
    if rest.len() < 2 * n {
        return;
    }
    let (cuts, input) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (input.len() + 1))
        .collect();
    cuts.sort_unstable();

    let feed = |pieces: &[&[u8]]| -> (Vec<u8>, bool, Vec<u8>) {
        let mut t = TermDemo::new();
        let mut out = Vec::new();
        t.start(&mut out);
        assert_eq!(t.next_tick(), None);
        let banner = out.len();
        let mut fed = 0usize;
        for p in pieces {
            let before = out.len();
            let was_closed = t.wants_close();
            assert_eq!(t.on_input(p, Duration::ZERO, &mut out), Ok(()));
            let grew = out.len() - before;
            fed += p.len();
            // Amortised: an enter repeats the line, whose bytes came earlier.
            assert!(out.len() - banner <= 20 * fed, "{} bytes out for {fed} in", out.len() - banner);
            if was_closed {
                assert_eq!(grew, 0, "output after exit");
            }
            assert!(t.line().len() <= MAX_LINE);
            assert!(!t.line().iter().any(|&b| b < 0x20 || b == 0x7f), "control byte in line");
            t.poll_tick(Duration::from_secs(1), &mut out);
        }
        (out, t.wants_close(), t.line().to_vec())
    };
    let whole = feed(&[input]);
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    for c in cuts {
        pieces.push(&input[at..c]);
        at = c;
    }
    pieces.push(&input[at..]);
    assert_eq!(feed(&pieces), whole, "split differs");
    if input.len() <= 256 {
        let ones: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(feed(&ones), whole, "byte by byte differs");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel & 1 == 0 {
        rfb(rest);
    } else {
        term(rest);
    }
});
