//! `ws::frame::Tracker` over a stream delivered whole and cut at
//! fuzzer-chosen points, keeping unconsumed tails as the pump does.
//!
//! Invariants: the step sequence (payload pieces coalesced), the final
//! Ok/Err and the unconsumed tail are identical for every split; steps are
//! non-empty, never run past the input and never overlap; payload pieces of
//! a frame are contiguous and add up to its length; every header step
//! re-parses to the header it reports; limits (max_frame, 125-byte
//! controls, masking by sender) hold for every accepted frame.
//!
//! Input: byte 0 = sender (bit 0) and max_frame class, bytes 1..3 = split
//! count/seed, then `count` u16 cut positions, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::ws::frame::{
    check_close_payload, FrameError, FrameHeader, OpCode, Sender, Step, Tracker,
    MAX_CONTROL_PAYLOAD,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Header(FrameHeader, Vec<u8>),
    Payload {
        offset: u64,
        mask: Option<[u8; 4]>,
        done: bool,
        bytes: Vec<u8>,
    },
    Control(FrameHeader, usize, Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    recs: Vec<Rec>,
    end: Result<(), FrameError>,
    left: usize,
    consumed: usize,
}

fn drive(chunks: &[&[u8]], from: Sender, max_frame: u64) -> Run {
    let mut t = Tracker::new(from, max_frame);
    let mut buf: Vec<u8> = Vec::new();
    let mut recs: Vec<Rec> = Vec::new();
    let mut consumed = 0usize;
    let mut end = Ok(());
    'outer: for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let step = match t.step(&buf[pos..]) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    end = Err(e);
                    buf.drain(..pos);
                    break 'outer;
                }
            };
            let n = step.len();
            assert!(n >= 1, "empty step {step:?}");
            assert!(pos + n <= buf.len(), "step {step:?} runs past the input");
            let bytes = buf[pos..pos + n].to_vec();
            match step {
                Step::DataHeader { len, header } => {
                    assert_eq!(FrameHeader::parse(&bytes), Ok(Some((header, len))));
                    assert!(!header.opcode.is_control());
                    assert!(header.len <= max_frame);
                    assert_eq!(header.rsv, 0);
                    assert_eq!(header.mask.is_some(), from == Sender::Client);
                    recs.push(Rec::Header(header, bytes));
                }
                Step::Control {
                    len,
                    header,
                    payload_at,
                } => {
                    assert_eq!(len, n);
                    assert!(header.opcode.is_control() && header.fin);
                    assert!(header.len as usize <= MAX_CONTROL_PAYLOAD);
                    assert_eq!(payload_at + header.len as usize, len);
                    assert_eq!(
                        FrameHeader::parse(&bytes),
                        Ok(Some((header, payload_at)))
                    );
                    assert_eq!(header.mask.is_some(), from == Sender::Client);
                    if header.opcode == OpCode::Close {
                        let mut p = bytes[payload_at..].to_vec();
                        if let Some(k) = header.mask {
                            nexor_relay::ws::mask::apply(&mut p, k, 0);
                        }
                        assert!(check_close_payload(&p).is_ok());
                    }
                    recs.push(Rec::Control(header, payload_at, bytes));
                }
                Step::Payload {
                    len,
                    offset,
                    mask,
                    frame_done,
                } => {
                    assert_eq!(len, n);
                    match recs.last_mut() {
                        Some(Rec::Payload {
                            offset: o0,
                            mask: m0,
                            done,
                            bytes: b,
                        }) if !*done => {
                            assert_eq!(*o0 + b.len() as u64, offset, "payload gap");
                            assert_eq!(*m0, mask);
                            *done = frame_done;
                            b.extend_from_slice(&bytes);
                        }
                        _ => {
                            // A new frame's payload must follow its header
                            // (interleaved controls are whole frames).
                            assert_eq!(offset, 0, "payload piece without its start");
                            recs.push(Rec::Payload {
                                offset,
                                mask,
                                done: frame_done,
                                bytes,
                            });
                        }
                    }
                }
            }
            pos += n;
            consumed += n;
        }
        buf.drain(..pos);
    }
    // Each finished frame's payload length matches its header.
    let mut want: Option<u64> = None;
    for r in &recs {
        match r {
            Rec::Header(h, _) => {
                assert!(want.is_none(), "header before the previous payload ended");
                want = (h.len > 0).then_some(h.len);
            }
            Rec::Payload { done, bytes, .. } => {
                let w = want.expect("payload without a header");
                assert!(bytes.len() as u64 <= w);
                assert_eq!(*done, bytes.len() as u64 == w);
                if *done {
                    want = None;
                }
            }
            Rec::Control(..) => {}
        }
    }
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    assert!(consumed <= total);
    if end.is_ok() {
        assert_eq!(consumed + buf.len(), total);
    }
    // After an error the tail depends on where the input was cut; only the
    // error and the position it was found at are compared.
    let left = if end.is_ok() { buf.len() } else { 0 };
    Run {
        recs,
        end,
        left,
        consumed,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let from = if data[0] & 1 == 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let max_frame = [0u64, 1, 16, 125, 126, 300, 65536, 1 << 20][usize::from(data[0] >> 1) & 7];
    let count = usize::from(data[1] % 16);
    let head = 3 + 2 * count;
    if data.len() < head {
        return;
    }
    let stream = &data[head..];
    let mut cuts: Vec<usize> = data[3..head]
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    for c in cuts {
        chunks.push(&stream[at..c]);
        at = c;
    }
    chunks.push(&stream[at..]);

    for from in [from, if from == Sender::Client { Sender::Server } else { Sender::Client }] {
        let whole = drive(&[stream], from, max_frame);
        let split = drive(&chunks, from, max_frame);
        assert_eq!(split, whole, "split {:?}", chunks.iter().map(|c| c.len()).collect::<Vec<_>>());
        if data[2] & 1 == 1 && stream.len() <= 512 {
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(drive(&bytes, from, max_frame), whole, "byte by byte");
        }
    }
});
