//! `ws::frame::FrameHeader::parse` / `encode`.
//!
//! Invariants: a parsed header consumed 2..=14 bytes of the input and
//! parse(encode(h)) == h; every strict prefix of a header is incomplete;
//! encoding an arbitrary (valid-domain) header parses back equal, with the
//! shortest length form and exactly `encode`'s byte count.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nexor_relay::ws::frame::{FrameError, FrameHeader, OpCode, MAX_HEADER};

#[derive(Debug, Arbitrary)]
struct Fields {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Picks a length class so 16- and 64-bit forms are hit often.
    class: u8,
}

fn roundtrip(h: &FrameHeader) {
    let mut b = [0u8; MAX_HEADER];
    let n = h.encode(&mut b);
    assert!((2..=MAX_HEADER).contains(&n));
    let expect = FrameHeader::unmasked_len(h.len) + if h.mask.is_some() { 4 } else { 0 };
    assert_eq!(n, expect, "encode size vs unmasked_len for {h:?}");
    assert_eq!(FrameHeader::parse(&b[..n]), Ok(Some((*h, n))), "{h:?}");
    // Trailing bytes do not change the result.
    assert_eq!(FrameHeader::parse(&b), Ok(Some((*h, n))));
    for cut in 0..n {
        assert_eq!(FrameHeader::parse(&b[..cut]), Ok(None), "prefix {cut} of {h:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: parse → encode → parse.
    match FrameHeader::parse(data) {
        Ok(Some((h, n))) => {
            assert!((2..=MAX_HEADER).contains(&n) && n <= data.len());
            assert!(h.rsv < 8 && h.len >> 63 == 0);
            assert_eq!(OpCode::from_u8(h.opcode.as_u8()), h.opcode);
            assert_eq!(h.opcode.as_u8(), data[0] & 0x0f);
            assert_eq!(h.fin, data[0] & 0x80 != 0);
            assert_eq!(h.mask.is_some(), data[1] & 0x80 != 0);
            roundtrip(&h);
        }
        Ok(None) => assert!(data.len() < MAX_HEADER),
        Err(e) => {
            assert_eq!(e, FrameError::BadLength);
            assert!(data.len() >= 10 && data[1] & 0x7f == 127 && data[2] & 0x80 != 0);
        }
    }

    // Arbitrary fields: encode → parse.
    let mut u = Unstructured::new(data);
    while let Ok(f) = Fields::arbitrary(&mut u) {
        let len = match f.class % 4 {
            0 => f.len % 126,
            1 => 126 + f.len % (65536 - 126),
            2 => 65536 + f.len % ((1 << 63) - 65536),
            _ => f.len & ((1 << 63) - 1),
        };
        let h = FrameHeader {
            fin: f.fin,
            rsv: f.rsv & 7,
            opcode: OpCode::from_u8(f.opcode),
            mask: f.mask,
            len,
        };
        roundtrip(&h);
        if u.is_empty() {
            break;
        }
    }
});
