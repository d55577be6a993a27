//! View-only consoles (ticket claim `"mode": "view"`, docs/design.md §2):
//! the filter of the browser → upstream byte stream, sans-io.
//!
//! The relay core feeds it the browser's payload bytes in order, cut
//! anywhere (src/relay/core.rs); it returns the bytes that may reach the
//! console. State is a few fixed-size fields: nothing is buffered beyond
//! one message header, whatever the message's length (a huge SetEncodings
//! streams through in pieces).
//!
//! # VNC (RFB, RFC 6143)
//!
//! For `tcp`, `ws` and `demo` VNC consoles the browser's handshake passes
//! through the relay, so the filter follows it first ([`View::RfbHandshake`]):
//!
//! ```text
//! C: "RFB 003.00x\n"   12 bytes; 3.7 or 3.8 (any 3.y, y >= 7): the client
//!                      names its security type. 3.3 cannot be followed
//!                      (the server picks the type): a violation.
//! C: u8 type           1 None → ClientInit; 2 VNC Authentication → 16
//!                      bytes of DES response; anything else: a violation
//! C: 16 bytes          VNC Authentication response (type 2 only)
//! C: ClientInit        u8 shared-flag, forced to 1 (RFC 6143 §7.3.1):
//!                      a viewer never disconnects the other clients
//! ```
//!
//! For `proxmox` VNC the relay itself ends the browser's handshake at
//! ClientInit (src/preamble/rfb.rs, shared-flag forced there) and the
//! filter starts at the messages ([`View::Rfb`]).
//!
//! Client messages (RFC 6143 §7.5 and the extensions noVNC 1.7 sends,
//! `RFB.messages` in its core/rfb.js), all big-endian:
//!
//! ```text
//! type                          length                         view mode
//!   0 SetPixelFormat            20                             forwarded
//!   2 SetEncodings              4 + 4 × u16 at [2..4]          forwarded
//!   3 FramebufferUpdateRequest  10                             forwarded
//!   4 KeyEvent                  8                              dropped
//!   5 PointerEvent              6, 7 if [1] & 0x80 (extended)  dropped
//!   6 ClientCutText             8 + |s32 at [4..8]|            dropped
//!                               (negative: extended clipboard)
//! 150 EnableContinuousUpdates   10                             forwarded
//! 248 Fence                     9 + u8 at [8]                  forwarded
//! 250 XVP                       4 (power: shutdown, reboot)    dropped
//! 251 SetDesktopSize            8 + 16 × u8 at [6]             dropped
//! 255 QEMU, subtype [1] = 0     12 (extended key event)        dropped
//! ```
//!
//! Anything else (another type, another QEMU subtype) has a length the
//! filter cannot know: [`Violation`], and the session ends (1008
//! `view_only_violation`).
//!
//! # Terminals
//!
//! * [`View::Termproxy`] (`proxmox` terminals, docs/proxmox.md §5.2):
//!   `0:LEN:DATA` (input) is dropped; `1:COLS:ROWS:` (resize) and `2`
//!   (ping) are forwarded, each whole in one piece of output (termproxy
//!   loses its place in a header cut across reads). Any other byte where
//!   a message starts, or a malformed header: [`Violation`].
//! * [`View::DropAll`] (`tcp`, `demo` and `ws` terminals: raw bytes, all
//!   of it input): everything is dropped.

use std::fmt;

use crate::ticket::Console;

/// What the filter follows, per console (chosen by src/session.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// RFB, from the browser's ProtocolVersion on (tcp, ws, demo VNC).
    RfbHandshake,
    /// RFB client messages, after a ClientInit the relay sent itself
    /// (proxmox VNC).
    Rfb,
    /// termproxy's framing (proxmox terminals).
    Termproxy,
    /// A raw terminal: every byte is input.
    DropAll,
}

impl View {
    /// What to follow on a console spoken over `mode`: Proxmox speaks
    /// termproxy and ends the browser's RFB handshake itself; other
    /// upstreams carry the browser's own RFB, or raw terminal bytes.
    pub fn of(mode: super::Mode, console: Console) -> View {
        match (mode, console) {
            (super::Mode::Proxmox, Console::Vnc) => View::Rfb,
            (super::Mode::Proxmox, Console::Term) => View::Termproxy,
            (_, Console::Vnc) => View::RfbHandshake,
            (_, Console::Term) => View::DropAll,
        }
    }
}

/// Why a view-only stream cannot be filtered: the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// An RFB ProtocolVersion other than 3.7 or 3.8 (3.3: the server picks
    /// the security type, which this direction does not see).
    RfbVersion,
    /// A security type other than None (1) or VNC Authentication (2).
    RfbSecurity(u8),
    /// A client message type whose length is unknown.
    RfbMessage(u8),
    /// A QEMU client message (255) of an unknown subtype.
    QemuSubtype(u8),
    /// A termproxy message that is not `0:`, `1:` or `2`.
    TermType(u8),
    /// A termproxy header that is not `digits:` (at most 20 digits).
    TermHeader,
}

impl Violation {
    /// The audit reason and close reason of every violation.
    pub const LABEL: &'static str = "view_only_violation";
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::RfbVersion => f.write_str("RFB version other than 3.7/3.8"),
            Violation::RfbSecurity(t) => write!(f, "RFB security type {t}"),
            Violation::RfbMessage(t) => write!(f, "unknown RFB message type {t}"),
            Violation::QemuSubtype(t) => write!(f, "unknown QEMU message subtype {t}"),
            Violation::TermType(b) => write!(f, "unknown termproxy message byte {b}"),
            Violation::TermHeader => f.write_str("malformed termproxy header"),
        }
    }
}

/// The longest RFB header read before a message's length is known
/// (ClientCutText: type, 3 padding, s32 length).
const MAX_RFB_HEAD: usize = 9;
/// termproxy numbers: more than 20 digits is garbage to termproxy too.
const MAX_DIGITS: usize = 20;
/// The longest resize message: `1:` 20 digits `:` 20 digits `:`.
const MAX_RESIZE: usize = 2 + 2 * (MAX_DIGITS + 1);
/// The most bytes one [`ViewFilter::feed`] outputs beyond its input: a
/// resize held over from earlier calls.
pub const MAX_HELD: usize = MAX_RESIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rfb {
    /// `got` bytes of the 12-byte ProtocolVersion.
    Version {
        got: u8,
        v: [u8; 12],
    },
    /// The u8 security type.
    Security,
    /// Bytes left of the VNC Authentication response.
    AuthResponse(u8),
    ClientInit,
    /// A message type is next.
    Idle,
    /// Reading the header of message `head[0]` (`got` bytes of `need`).
    Head {
        keep: bool,
        got: u8,
        need: u8,
        head: [u8; MAX_RFB_HEAD],
    },
    /// Bytes left of the current message's body.
    Body {
        keep: bool,
        left: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    /// A message type is next.
    Idle,
    /// After `0:`: the length digits (`len`, `digits` so far).
    DataLen { len: u64, digits: u8 },
    /// Input bytes left to drop.
    Data(u64),
    /// A resize, held whole until its last `:`; `fields` numbers done.
    Resize {
        held: [u8; MAX_RESIZE],
        n: u8,
        fields: u8,
        digits: u8,
    },
    /// After `1` or `0`, the `:`.
    Colon { data: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Rfb(Rfb),
    Term(Term),
    DropAll,
}

/// The filter of one view-only session's browser → upstream stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewFilter {
    state: State,
    /// Set once a violation was returned: every later call fails too.
    failed: Option<Violation>,
}

/// How an RFB client message is handled: kept or not, the header bytes
/// needed to know its length.
fn rfb_message(ty: u8) -> Result<(bool, u8), Violation> {
    Ok(match ty {
        0 => (true, 1),
        2 => (true, 4),
        3 => (true, 1),
        4 => (false, 1),
        5 => (false, 2),
        6 => (false, 8),
        150 => (true, 1),
        248 => (true, 9),
        250 => (false, 1),
        251 => (false, 7),
        255 => (false, 2),
        t => return Err(Violation::RfbMessage(t)),
    })
}

/// The whole length of a message from its first `need` bytes.
fn rfb_length(head: &[u8]) -> Result<u64, Violation> {
    let u16_at = |i: usize| u64::from(u16::from_be_bytes([head[i], head[i + 1]]));
    Ok(match head[0] {
        0 => 20,
        2 => 4 + 4 * u16_at(2),
        3 => 10,
        4 => 8,
        5 if head[1] & 0x80 != 0 => 7,
        5 => 6,
        6 => {
            let len = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            8 + u64::from(len.unsigned_abs())
        }
        150 => 10,
        248 => 9 + u64::from(head[8]),
        250 => 4,
        251 => 8 + 16 * u64::from(head[6]),
        255 if head[1] == 0 => 12,
        255 => return Err(Violation::QemuSubtype(head[1])),
        t => return Err(Violation::RfbMessage(t)),
    })
}

impl ViewFilter {
    pub fn new(view: View) -> ViewFilter {
        let state = match view {
            View::RfbHandshake => State::Rfb(Rfb::Version { got: 0, v: [0; 12] }),
            View::Rfb => State::Rfb(Rfb::Idle),
            View::Termproxy => State::Term(Term::Idle),
            View::DropAll => State::DropAll,
        };
        ViewFilter {
            state,
            failed: None,
        }
    }

    /// Filters the next bytes of the browser's stream: appends to `out`
    /// what may reach the console (at most `input.len()` bytes plus one
    /// held resize message).
    ///
    /// # Errors
    /// A message the filter cannot follow; this and every later call fail
    /// (nothing of `input` should be forwarded).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Violation> {
        if let Some(v) = self.failed {
            return Err(v);
        }
        let start = out.len();
        let r = match &mut self.state {
            State::Rfb(s) => rfb(s, input, out),
            State::Term(s) => term(s, input, out),
            State::DropAll => Ok(()),
        };
        if let Err(v) = r {
            self.failed = Some(v);
            out.truncate(start);
        }
        r
    }
}

fn rfb(s: &mut Rfb, input: &[u8], out: &mut Vec<u8>) -> Result<(), Violation> {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match s {
            Rfb::Version { got, v } => {
                v[usize::from(*got)] = b;
                *got += 1;
                i += 1;
                out.push(b);
                if *got == 12 {
                    *s = match rfb_version(v) {
                        Some((3, 7..)) => Rfb::Security,
                        _ => return Err(Violation::RfbVersion),
                    };
                }
            }
            Rfb::Security => {
                i += 1;
                out.push(b);
                *s = match b {
                    1 => Rfb::ClientInit,
                    2 => Rfb::AuthResponse(16),
                    t => return Err(Violation::RfbSecurity(t)),
                };
            }
            Rfb::AuthResponse(left) => {
                let n = usize::from(*left).min(input.len() - i);
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                *left -= n as u8;
                if *left == 0 {
                    *s = Rfb::ClientInit;
                }
            }
            Rfb::ClientInit => {
                i += 1;
                out.push(1);
                *s = Rfb::Idle;
            }
            Rfb::Idle => {
                let (keep, need) = rfb_message(b)?;
                i += 1;
                if keep {
                    out.push(b);
                }
                let mut head = [0u8; MAX_RFB_HEAD];
                head[0] = b;
                *s = Rfb::Head {
                    keep,
                    got: 1,
                    need,
                    head,
                };
                rfb_head_done(s)?;
            }
            Rfb::Head {
                keep, got, head, ..
            } => {
                head[usize::from(*got)] = b;
                *got += 1;
                i += 1;
                if *keep {
                    out.push(b);
                }
                rfb_head_done(s)?;
            }
            Rfb::Body { keep, left } => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                if *keep {
                    out.extend_from_slice(&input[i..i + n]);
                }
                i += n;
                *left -= n as u64;
                if *left == 0 {
                    *s = Rfb::Idle;
                }
            }
        }
    }
    Ok(())
}

/// A header read to its end gives the message's length: on to its body.
fn rfb_head_done(s: &mut Rfb) -> Result<(), Violation> {
    if let Rfb::Head {
        keep,
        got,
        need,
        head,
    } = *s
    {
        if got == need {
            let left = rfb_length(&head[..usize::from(got)])? - u64::from(got);
            *s = if left == 0 {
                Rfb::Idle
            } else {
                Rfb::Body { keep, left }
            };
        }
    }
    Ok(())
}

/// `RFB xxx.yyy\n` as (major, minor).
fn rfb_version(v: &[u8; 12]) -> Option<(u32, u32)> {
    let num = |s: &[u8]| {
        s.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if &v[..4] != b"RFB " || v[7] != b'.' || v[11] != b'\n' {
        return None;
    }
    Some((num(&v[4..7])?, num(&v[8..11])?))
}

fn term(s: &mut Term, input: &[u8], out: &mut Vec<u8>) -> Result<(), Violation> {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match s {
            Term::Idle => {
                i += 1;
                *s = match b {
                    b'0' => Term::Colon { data: true },
                    b'1' => Term::Colon { data: false },
                    b'2' => {
                        out.push(b'2');
                        Term::Idle
                    }
                    other => return Err(Violation::TermType(other)),
                };
            }
            Term::Colon { data } => {
                if b != b':' {
                    return Err(Violation::TermHeader);
                }
                i += 1;
                *s = if *data {
                    Term::DataLen { len: 0, digits: 0 }
                } else {
                    let mut held = [0u8; MAX_RESIZE];
                    held[..2].copy_from_slice(b"1:");
                    Term::Resize {
                        held,
                        n: 2,
                        fields: 0,
                        digits: 0,
                    }
                };
            }
            Term::DataLen { len, digits } => {
                i += 1;
                match b {
                    b'0'..=b'9' if usize::from(*digits) < MAX_DIGITS => {
                        *len = len
                            .checked_mul(10)
                            .and_then(|l| l.checked_add(u64::from(b - b'0')))
                            .ok_or(Violation::TermHeader)?;
                        *digits += 1;
                    }
                    b':' if *digits > 0 => {
                        *s = if *len == 0 {
                            Term::Idle
                        } else {
                            Term::Data(*len)
                        };
                    }
                    _ => return Err(Violation::TermHeader),
                }
            }
            Term::Data(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                i += n;
                *left -= n as u64;
                if *left == 0 {
                    *s = Term::Idle;
                }
            }
            Term::Resize {
                held,
                n,
                fields,
                digits,
            } => {
                i += 1;
                match b {
                    b'0'..=b'9' if usize::from(*digits) < MAX_DIGITS => *digits += 1,
                    b':' if *digits > 0 => {
                        *digits = 0;
                        *fields += 1;
                    }
                    _ => return Err(Violation::TermHeader),
                }
                held[usize::from(*n)] = b;
                *n += 1;
                if *fields == 2 {
                    out.extend_from_slice(&held[..usize::from(*n)]);
                    *s = Term::Idle;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
