//! Frame headers and the per-direction frame tracker (RFC 6455 §5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! The relay is frame-transparent: it reads only headers, so [`Tracker`]
//! walks a byte stream and says, step by step, where each data frame's
//! header and payload lie and which complete control frame it met. Nothing
//! is copied; incomplete input is `Ok(None)` and consumes nothing.

use std::fmt;

/// Longest possible frame header: 2 + 8 (length) + 4 (mask key).
pub const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: control frames carry at most 125 payload bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// A whole control frame always fits in this many bytes.
pub const MAX_CONTROL_FRAME: usize = MAX_HEADER + MAX_CONTROL_PAYLOAD;

/// The 4-bit opcode. Reserved values are kept so a header round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    Reserved(u8),
}

impl OpCode {
    pub fn from_u8(v: u8) -> OpCode {
        match v & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
            OpCode::Reserved(v) => v & 0x0f,
        }
    }

    /// Opcodes 0x8..=0xF are control frames (§5.5), reserved ones included.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

impl FrameHeader {
    /// Parses a header at the start of `buf`: `Ok(None)` if incomplete,
    /// else the header and its length in bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let len = u64::from_be_bytes(a);
                    // §5.2: "the most significant bit MUST be 0".
                    if len >> 63 != 0 {
                        return Err(FrameError::BadLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (n as u64, 2),
        };
        let mask = if masked {
            match buf.get(at..at + 4) {
                Some(k) => {
                    at += 4;
                    Some([k[0], k[1], k[2], k[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: OpCode::from_u8(b0),
            mask,
            len,
        };
        Ok(Some((header, at)))
    }

    /// Writes the header with the shortest length encoding; returns its size.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = if self.len < 126 {
            out[1] = mask_bit | self.len as u8;
            2
        } else if self.len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }

    /// Encoded size of a header for an unmasked payload of `len` bytes.
    pub fn unmasked_len(len: u64) -> usize {
        if len < 126 {
            2
        } else if len <= u16::MAX as u64 {
            4
        } else {
            10
        }
    }
}

/// A protocol violation in a peer's frames. Each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// 64-bit length with the top bit set.
    BadLength,
    /// RSV bits set: no extension was negotiated.
    RsvSet,
    ReservedOpcode(u8),
    /// A client frame without a mask (§5.1).
    UnmaskedFrame,
    /// A server frame with a mask (§5.1).
    MaskedFrame,
    ControlTooLong,
    FragmentedControl,
    /// A continuation frame with no message open.
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is open.
    ExpectedContinuation,
    /// Payload over the configured frame-size cap.
    TooLarge,
    /// A close payload of one byte, a code not allowed on the wire.
    BadCloseCode,
    /// A close reason that is not UTF-8.
    BadCloseReason,
}

impl FrameError {
    /// The close code the relay sends to the peer that broke the rule.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => close::TOO_BIG,
            FrameError::BadCloseReason => close::INVALID_DATA,
            _ => close::PROTOCOL_ERROR,
        }
    }

    /// Stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            FrameError::BadLength => "bad_length",
            FrameError::RsvSet => "rsv_set",
            FrameError::ReservedOpcode(_) => "reserved_opcode",
            FrameError::UnmaskedFrame => "unmasked_frame",
            FrameError::MaskedFrame => "masked_frame",
            FrameError::ControlTooLong => "control_too_long",
            FrameError::FragmentedControl => "fragmented_control",
            FrameError::UnexpectedContinuation => "unexpected_continuation",
            FrameError::ExpectedContinuation => "expected_continuation",
            FrameError::TooLarge => "frame_too_large",
            FrameError::BadCloseCode => "bad_close_code",
            FrameError::BadCloseReason => "bad_close_reason",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for FrameError {}

/// Close codes (RFC 6455 §7.4.1, and the relay's own in docs/design.md §2).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const UPSTREAM_FAILED: u16 = 1011;
    pub const REPLACED: u16 = 4001;
    pub const LIFETIME: u16 = 4002;
    pub const IDLE: u16 = 4003;

    /// Codes a peer may put on the wire (§7.4.1, §7.4.2; 1012-1014 are
    /// IANA-registered since). 1004, 1005, 1006 and 1015 must never be sent.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Checks a close frame's payload (§5.5.1): empty, or a valid code and a
/// UTF-8 reason. Returns the code (1005 "no status" for an empty payload).
pub fn check_close_payload(payload: &[u8]) -> Result<u16, FrameError> {
    match payload.len() {
        0 => Ok(1005),
        1 => Err(FrameError::BadCloseCode),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close::is_valid_on_wire(code) {
                return Err(FrameError::BadCloseCode);
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::BadCloseReason)?;
            Ok(code)
        }
    }
}

/// Writes a whole control frame (`opcode` must be a control opcode and
/// `payload` at most 125 bytes) into `out`, masked with `mask` if given.
/// Returns its length.
pub fn write_control(
    out: &mut [u8; MAX_CONTROL_FRAME],
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> usize {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask,
        len: payload.len() as u64,
    };
    let mut h = [0u8; MAX_HEADER];
    let hl = header.encode(&mut h);
    out[..hl].copy_from_slice(&h[..hl]);
    out[hl..hl + payload.len()].copy_from_slice(payload);
    if let Some(key) = mask {
        crate::ws::mask::apply(&mut out[hl..hl + payload.len()], key, 0);
    }
    hl + payload.len()
}

/// A close frame with `code` and a short ASCII `reason`.
pub fn write_close(
    out: &mut [u8; MAX_CONTROL_FRAME],
    code: u16,
    reason: &str,
    mask: Option<[u8; 4]>,
) -> usize {
    let mut p = [0u8; MAX_CONTROL_PAYLOAD];
    p[..2].copy_from_slice(&code.to_be_bytes());
    let r = &reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
    p[2..2 + r.len()].copy_from_slice(r);
    write_control(out, OpCode::Close, &p[..2 + r.len()], mask)
}

/// Which side wrote the frames a [`Tracker`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A client (browser): every frame must be masked.
    Client,
    /// A server (upstream): no frame may be masked.
    Server,
}

/// One step through a frame stream. Ranges are relative to the input given
/// to [`Tracker::step`]; the step consumed `len()` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A data frame's header (`len` bytes).
    DataHeader { len: usize, header: FrameHeader },
    /// `len` payload bytes of the current data frame, starting at payload
    /// position `offset`; `mask` is the frame's key. `frame_done` is set when
    /// these are its last bytes.
    Payload {
        len: usize,
        offset: u64,
        mask: Option<[u8; 4]>,
        frame_done: bool,
    },
    /// A whole control frame of `len` bytes; its payload (still masked if
    /// the sender masked it) is `payload_at..len`.
    Control {
        len: usize,
        header: FrameHeader,
        payload_at: usize,
    },
}

impl Step {
    /// Bytes of input this step covers.
    pub fn len(&self) -> usize {
        match *self {
            Step::DataHeader { len, .. }
            | Step::Payload { len, .. }
            | Step::Control { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walks one direction's frame stream, validating each header.
#[derive(Debug, Clone)]
pub struct Tracker {
    from: Sender,
    max_frame: u64,
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// Payload bytes of the current data frame already passed.
    offset: u64,
    mask: Option<[u8; 4]>,
    /// A fragmented message is open: only continuations may follow.
    in_message: bool,
}

impl Tracker {
    pub fn new(from: Sender, max_frame: u64) -> Tracker {
        Tracker {
            from,
            max_frame,
            remaining: 0,
            offset: 0,
            mask: None,
            in_message: false,
        }
    }

    /// True between frames: the relay may inject its own frames here.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// True when no fragmented message is open either.
    pub fn at_message_boundary(&self) -> bool {
        self.remaining == 0 && !self.in_message
    }

    /// The next step over `input`, or `Ok(None)` when `input` holds no whole
    /// step (an incomplete header or control frame, or nothing at all).
    pub fn step(&mut self, input: &[u8]) -> Result<Option<Step>, FrameError> {
        if self.remaining > 0 {
            if input.is_empty() {
                return Ok(None);
            }
            let len = (input.len() as u64).min(self.remaining);
            let step = Step::Payload {
                len: len as usize,
                offset: self.offset,
                mask: self.mask,
                frame_done: len == self.remaining,
            };
            self.remaining -= len;
            self.offset += len;
            return Ok(Some(step));
        }
        let Some((header, hlen)) = FrameHeader::parse(input)? else {
            return Ok(None);
        };
        self.check(&header)?;
        if header.opcode.is_control() {
            let total = hlen + header.len as usize;
            if input.len() < total {
                return Ok(None);
            }
            if header.opcode == OpCode::Close {
                let mut p = [0u8; MAX_CONTROL_PAYLOAD];
                let p = &mut p[..header.len as usize];
                p.copy_from_slice(&input[hlen..total]);
                if let Some(key) = header.mask {
                    crate::ws::mask::apply(p, key, 0);
                }
                check_close_payload(p)?;
            }
            return Ok(Some(Step::Control {
                len: total,
                header,
                payload_at: hlen,
            }));
        }
        self.in_message = !header.fin;
        self.remaining = header.len;
        self.offset = 0;
        self.mask = header.mask;
        Ok(Some(Step::DataHeader { len: hlen, header }))
    }

    fn check(&self, h: &FrameHeader) -> Result<(), FrameError> {
        if h.rsv != 0 {
            return Err(FrameError::RsvSet);
        }
        if let OpCode::Reserved(v) = h.opcode {
            return Err(FrameError::ReservedOpcode(v));
        }
        match (self.from, h.mask.is_some()) {
            (Sender::Client, false) => return Err(FrameError::UnmaskedFrame),
            (Sender::Server, true) => return Err(FrameError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(FrameError::FragmentedControl);
            }
            if h.len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::ControlTooLong);
            }
            return Ok(());
        }
        match (h.opcode, self.in_message) {
            (OpCode::Continuation, false) => return Err(FrameError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => return Err(FrameError::ExpectedContinuation),
            _ => {}
        }
        if h.len > self.max_frame {
            return Err(FrameError::TooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a tracker over `input` delivered in the given chunks, keeping
    /// unconsumed tails like the pump does, and records each step with the
    /// bytes it covered.
    fn drive(chunks: &[&[u8]], from: Sender) -> Result<Vec<(String, Vec<u8>)>, FrameError> {
        let mut t = Tracker::new(from, 1 << 20);
        let mut buf: Vec<u8> = Vec::new();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            while let Some(step) = t.step(&buf[pos..])? {
                let bytes = buf[pos..pos + step.len()].to_vec();
                let name = match step {
                    Step::DataHeader { header, .. } => format!("hdr {:?}", header.opcode),
                    Step::Payload { .. } => "payload".to_string(),
                    Step::Control { header, .. } => format!("ctl {:?}", header.opcode),
                };
                // Coalesce split payload pieces so splits compare equal.
                match (out.last_mut(), name.as_str()) {
                    (Some((n, b)), "payload") if n == "payload" => b.extend_from_slice(&bytes),
                    _ => out.push((name, bytes)),
                }
                pos += step.len();
            }
            buf.drain(..pos);
        }
        assert!(buf.is_empty(), "input left over");
        Ok(out)
    }

    #[test]
    fn rfc6455_examples_parse() {
        // §5.7 single-frame unmasked "Hello".
        let (h, n) = FrameHeader::parse(&[0x81, 0x05, 0x48]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.len, n), (true, OpCode::Text, 5, 2));
        // §5.7 masked "Hello".
        let m = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = FrameHeader::parse(&m).unwrap().unwrap();
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut p = m[n..].to_vec();
        crate::ws::mask::apply(&mut p, h.mask.unwrap(), 0);
        assert_eq!(p, b"Hello");
        // §5.7 256 bytes and 64 KiB binary.
        let (h, n) = FrameHeader::parse(&[0x82, 0x7E, 0x01, 0x00])
            .unwrap()
            .unwrap();
        assert_eq!((h.len, n), (256, 4));
        let b = [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        let (h, n) = FrameHeader::parse(&b).unwrap().unwrap();
        assert_eq!((h.len, n), (65536, 10));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for header in [
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Binary,
                mask: Some([1, 2, 3, 4]),
                len: 70000,
            },
            FrameHeader {
                fin: false,
                rsv: 0,
                opcode: OpCode::Text,
                mask: None,
                len: 300,
            },
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Ping,
                mask: None,
                len: 3,
            },
        ] {
            let mut b = [0u8; MAX_HEADER];
            let n = header.encode(&mut b);
            for cut in 0..n {
                assert_eq!(FrameHeader::parse(&b[..cut]), Ok(None), "prefix {cut}");
            }
            assert_eq!(FrameHeader::parse(&b[..n]), Ok(Some((header, n))));
        }
    }

    #[test]
    fn encode_then_parse_is_identity() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                for (fin, rsv, op) in [(true, 0, 2), (false, 5, 0), (true, 7, 0xB)] {
                    let h = FrameHeader {
                        fin,
                        rsv,
                        opcode: OpCode::from_u8(op),
                        mask,
                        len,
                    };
                    let mut b = [0u8; MAX_HEADER];
                    let n = h.encode(&mut b);
                    assert_eq!(FrameHeader::parse(&b[..n]), Ok(Some((h, n))));
                }
            }
        }
    }

    #[test]
    fn rejects_length_with_top_bit_set() {
        let b = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(FrameHeader::parse(&b), Err(FrameError::BadLength));
    }

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        let h = FrameHeader {
            fin,
            rsv: 0,
            opcode: OpCode::from_u8(op),
            mask: Some(key),
            len: payload.len() as u64,
        };
        let mut b = [0u8; MAX_HEADER];
        let n = h.encode(&mut b);
        let mut v = b[..n].to_vec();
        let mut p = payload.to_vec();
        crate::ws::mask::apply(&mut p, key, 0);
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn every_two_way_split_gives_the_same_steps() {
        let mut stream = masked(0x2, false, &[7u8; 300]);
        stream.extend(masked(0x9, true, b"ping!"));
        stream.extend(masked(0x0, true, b"tail"));
        stream.extend(masked(0x8, true, &[0x03, 0xe8, b'o', b'k']));
        let whole = drive(&[&stream], Sender::Client).unwrap();
        assert_eq!(whole.len(), 6, "{whole:?}");
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(drive(&[a, b], Sender::Client).unwrap(), whole, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(drive(&bytes, Sender::Client).unwrap(), whole);
    }

    #[test]
    fn rejects_each_violation() {
        let cases: Vec<(Vec<u8>, Sender, FrameError)> = vec![
            (vec![0x82, 0x00], Sender::Client, FrameError::UnmaskedFrame),
            (
                masked(0x2, true, b""),
                Sender::Server,
                FrameError::MaskedFrame,
            ),
            (
                {
                    let mut f = masked(0x2, true, b"x");
                    f[0] |= 0x40;
                    f
                },
                Sender::Client,
                FrameError::RsvSet,
            ),
            (
                masked(0x3, true, b""),
                Sender::Client,
                FrameError::ReservedOpcode(3),
            ),
            (
                masked(0xB, true, b""),
                Sender::Client,
                FrameError::ReservedOpcode(0xB),
            ),
            (
                masked(0x9, true, &[0; 126]),
                Sender::Client,
                FrameError::ControlTooLong,
            ),
            (
                masked(0x9, false, b""),
                Sender::Client,
                FrameError::FragmentedControl,
            ),
            (
                masked(0x0, true, b"x"),
                Sender::Client,
                FrameError::UnexpectedContinuation,
            ),
            (
                {
                    let mut f = masked(0x1, false, b"a");
                    f.extend(masked(0x1, true, b"b"));
                    f
                },
                Sender::Client,
                FrameError::ExpectedContinuation,
            ),
            (
                masked(0x8, true, &[0x03]),
                Sender::Client,
                FrameError::BadCloseCode,
            ),
            (
                masked(0x8, true, &[0x03, 0xed]),
                Sender::Client,
                FrameError::BadCloseCode,
            ), // 1005
            (
                masked(0x8, true, &[0x03, 0xe8, 0xff]),
                Sender::Client,
                FrameError::BadCloseReason,
            ),
        ];
        for (bytes, from, want) in cases {
            assert_eq!(drive(&[&bytes], from), Err(want), "{bytes:02x?}");
        }
        let mut t = Tracker::new(Sender::Client, 10);
        assert_eq!(
            t.step(&masked(0x2, true, &[0; 11])),
            Err(FrameError::TooLarge)
        );
        assert_eq!(FrameError::TooLarge.close_code(), 1009);
    }

    #[test]
    fn control_frame_writer_round_trips() {
        let mut b = [0u8; MAX_CONTROL_FRAME];
        let n = write_close(&mut b, 4002, "lifetime", Some([1, 2, 3, 4]));
        let mut t = Tracker::new(Sender::Client, 1 << 20);
        match t.step(&b[..n]).unwrap() {
            Some(Step::Control {
                len,
                header,
                payload_at,
            }) => {
                assert_eq!(len, n);
                let mut p = b[payload_at..n].to_vec();
                crate::ws::mask::apply(&mut p, header.mask.unwrap(), 0);
                assert_eq!(check_close_payload(&p), Ok(4002));
                assert_eq!(&p[2..], b"lifetime");
            }
            other => panic!("{other:?}"),
        }
    }
}
