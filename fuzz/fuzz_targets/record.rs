//! The recording decoders (src/record/mod.rs) fed a stream whole and cut
//! at fuzzer-chosen points, and the `.vncrec` reader fed any file.
//!
//! Invariants: every cut gives the same output as the whole stream
//! (`Payloads` unless it broke, `Termproxy`, `Utf8Text`, `RfbSkip` per
//! direction); the output is never longer than the input; `Utf8Text` is
//! `String::from_utf8_lossy` of the whole; what `RfbSkip` passes on for a
//! direction is a suffix of that direction's bytes (only the handshake is
//! dropped); `parse_vnc` never reads past the file.
//!
//! Input: selector (low 3 bits), schedule length, schedule (chunk
//! lengths), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::record::{
    parse_vnc, server_stream, Payloads, RfbSkip, TermEvent, Termproxy, Utf8Text, VncDir,
    VNC_RECORD_HEAD,
};
use nexor_relay::ws::frame::Sender;

fn chunks<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at: usize = 0;
    for s in sizes.iter().copied().chain(std::iter::once(usize::MAX)) {
        let end = at.saturating_add(s).min(stream.len());
        out.push(&stream[at..end]);
        at = end;
        if at == stream.len() {
            break;
        }
    }
    out
}

fn payloads(from: Sender, parts: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut p = Payloads::new(from);
    let mut out = Vec::new();
    for c in parts {
        p.feed(c, &mut |s| out.extend_from_slice(s));
    }
    (out, p.broken().is_some())
}

fn termproxy(parts: &[&[u8]]) -> (Vec<u8>, Vec<(u16, u16)>) {
    let mut t = Termproxy::default();
    let (mut input, mut resizes) = (Vec::new(), Vec::new());
    for c in parts {
        t.feed(c, &mut |e| match e {
            TermEvent::Input(d) => input.extend_from_slice(d),
            TermEvent::Resize { cols, rows } => resizes.push((cols, rows)),
        });
    }
    (input, resizes)
}

fn utf8(parts: &[&[u8]]) -> String {
    let mut u = Utf8Text::default();
    let mut s = String::new();
    for c in parts {
        u.push(c, &mut s);
    }
    u.finish(&mut s);
    s
}

/// Server bytes are the first half, client bytes the second; the parts
/// alternate between the two directions.
fn rfb(stream: &[u8], sizes: &[usize]) -> [Vec<u8>; 2] {
    let (s, c) = stream.split_at(stream.len() / 2);
    let (sp, cp) = (chunks(s, sizes), chunks(c, sizes));
    let mut k = RfbSkip::default();
    let mut out = [Vec::new(), Vec::new()];
    for i in 0..sp.len().max(cp.len()) {
        for (d, p) in [(VncDir::ToBrowser, &sp), (VncDir::FromBrowser, &cp)] {
            if let Some(part) = p.get(i) {
                k.feed(d, part, &mut |d, b| out[d as usize].extend_from_slice(b));
            }
        }
    }
    for (d, input) in [s, c].iter().enumerate() {
        assert!(input.ends_with(&out[d]), "not a suffix of its direction");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let sel = data[0] & 7;
    let n = (data[1] as usize).min(data.len() - 2);
    let sizes: Vec<usize> = data[2..2 + n].iter().map(|&b| b as usize).collect();
    let stream = &data[2 + n..];
    let whole = [stream];
    let cut = chunks(stream, &sizes);
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    match sel {
        0 | 1 => {
            let from = if sel == 0 { Sender::Client } else { Sender::Server };
            let (a, broke_a) = payloads(from, &whole);
            let (b, broke_b) = payloads(from, &cut);
            assert!(a.len() <= stream.len() && b.len() <= stream.len());
            if !broke_a && !broke_b {
                assert_eq!(a, b, "payload depends on the cuts");
            }
        }
        2 => {
            let a = termproxy(&whole);
            assert!(a.0.len() <= stream.len());
            assert_eq!(a, termproxy(&cut));
            assert_eq!(a, termproxy(&bytewise));
        }
        3 => {
            let want = String::from_utf8_lossy(stream).into_owned();
            assert_eq!(utf8(&whole), want);
            assert_eq!(utf8(&cut), want);
        }
        // Past 8 KiB held the skip gives up, at a point the cuts decide.
        4 if stream.len() <= 8192 => {
            let a = rfb(stream, &[]);
            assert_eq!(a, rfb(stream, &sizes));
            assert_eq!(a, rfb(stream, &[1; 64]));
        }
        _ => {
            if let Ok(f) = parse_vnc(stream) {
                let used: usize = f.records.iter().map(|r| VNC_RECORD_HEAD + r.data.len()).sum();
                assert!(used <= stream.len());
                let _ = server_stream(&f);
            }
        }
    }
});
