//! Built-in demo console backends: the upstream of `kind = "demo"`.
//!
//! A `demo` upstream needs no Proxmox, no VM and no network: the relay answers
//! the browser itself, in-process. It serves two consoles (DESIGN §2, upstream
//! kinds):
//!
//! * `console = "vnc"` → [`rfb::RfbDemo`], an RFB 3.3/3.7/3.8 server (RFC 6143)
//!   with security type None that draws a moving test pattern (colour bars, a
//!   scrolling band and a bouncing block), so a screenshot proves liveness;
//! * `console = "term"` → [`term::TermDemo`], a line-echo terminal for xterm.js.
//!
//! Both are pure state machines (sans-io, like rustls or quinn-proto): bytes
//! in, bytes out, and time passed in as a [`Duration`] since the session
//! started. They read no clock, own no socket and spawn nothing. A thin async
//! driver runs one per session:
//!
//! ```text
//! open:      backend.start(&mut out)                      → write out
//! readable:  backend.on_input(bytes, now, &mut out)?      → write out
//!            (Err: write out, then close the connection)
//! timer:     at backend.next_tick(): backend.poll_tick(now, &mut out) → write out
//! after any write: if backend.wants_close() → close
//! ```
//!
//! Memory is bounded: bytes that do not yet form a whole message are kept, at
//! most [`MAX_PENDING`] of them; variable-length payloads the backends do not
//! need (RFB ClientCutText, SetEncodings lists) are consumed as they stream
//! past and never stored.

use std::fmt;
use std::time::Duration;

pub mod rfb;
pub mod term;

/// The most input bytes a backend keeps while waiting for the rest of a
/// message. Both backends stay far below it by construction (RFB keeps at most
/// one fixed-size message of ≤ 20 bytes; the terminal keeps one line of at
/// most [`term::MAX_LINE`] bytes); it is the backstop behind
/// [`DemoError::PendingTooLarge`].
pub const MAX_PENDING: usize = 64 * 1024;

/// A built-in console backend, driven by the session glue.
///
/// All methods append to `out` and never clear it, so the driver may batch.
pub trait Backend {
    /// Bytes the backend sends first, right after the connection opens.
    fn start(&mut self, out: &mut Vec<u8>);

    /// Feed bytes the client sent (any split, any size). Appends replies to `out`.
    ///
    /// Err = client violated the protocol; the driver then closes the
    /// connection. On Err, `out` holds the replies to everything before the
    /// violation plus, where the protocol defines one, a failure message (RFB
    /// 3.8 SecurityResult "failed" with a reason): write it, then close. Any
    /// further call returns [`DemoError::AfterError`].
    fn on_input(&mut self, input: &[u8], now: Duration, out: &mut Vec<u8>)
        -> Result<(), DemoError>;

    /// Called periodically; appends what is due (e.g. an animation frame) to `out`.
    fn poll_tick(&mut self, now: Duration, out: &mut Vec<u8>);

    /// When the driver should call poll_tick next (None = only after input).
    ///
    /// The value is a time since session start, like `now`; it may already be
    /// in the past, which means "tick now".
    fn next_tick(&self) -> Option<Duration>;

    /// True once the backend has finished the session (the terminal after
    /// `exit`): the driver writes what is in `out`, then closes the
    /// connection. Defaults to false.
    fn wants_close(&self) -> bool {
        false
    }
}

/// The backend for a `console` value of a `demo` upstream: `"vnc"` →
/// [`rfb::RfbDemo`] (640×480), `"term"` → [`term::TermDemo`]; anything else →
/// `None`.
pub fn backend_for(console: &str) -> Option<Box<dyn Backend + Send>> {
    match console {
        "vnc" => Some(Box::new(rfb::RfbDemo::default())),
        "term" => Some(Box::new(term::TermDemo::new())),
        _ => None,
    }
}

/// A protocol violation by the client; the driver closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoError {
    /// RFB ProtocolVersion (RFC 6143 §7.1.1) that is malformed or not 3.3–3.8
    /// (the 12 bytes received).
    BadVersion([u8; 12]),
    /// RFB security type chosen by the client is not 1 (None), RFC 6143 §7.1.2.
    BadSecurityType(u8),
    /// RFB SetPixelFormat (RFC 6143 §7.5.1) asks for a format the demo does not
    /// draw: colour-map (not true-colour) or a bits-per-pixel other than 8, 16, 32.
    UnsupportedPixelFormat {
        /// bits-per-pixel requested.
        bits_per_pixel: u8,
        /// true-colour flag requested.
        true_colour: bool,
    },
    /// RFB client message type the demo does not know (RFC 6143 §7.5).
    UnknownMessage(u8),
    /// RFB ClientCutText (RFC 6143 §7.5.6) longer than [`rfb::MAX_CUT_TEXT`].
    CutTextTooLong(u32),
    /// More than [`MAX_PENDING`] bytes of an incomplete message.
    PendingTooLarge(usize),
    /// Input after an earlier error; the connection should be closed already.
    AfterError,
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::BadVersion(v) => {
                write!(f, "unsupported RFB client version \"{}\"", v.escape_ascii())
            }
            DemoError::BadSecurityType(t) => {
                write!(
                    f,
                    "RFB client chose security type {t}, only 1 (None) is offered"
                )
            }
            DemoError::UnsupportedPixelFormat {
                bits_per_pixel,
                true_colour,
            } => write!(
                f,
                "unsupported RFB pixel format: {bits_per_pixel} bpp, true-colour {true_colour} \
                 (need true-colour 8/16/32 bpp)"
            ),
            DemoError::UnknownMessage(t) => write!(f, "unknown RFB client message type {t}"),
            DemoError::CutTextTooLong(n) => write!(
                f,
                "RFB ClientCutText of {n} bytes exceeds the {} byte cap",
                rfb::MAX_CUT_TEXT
            ),
            DemoError::PendingTooLarge(n) => write!(
                f,
                "{n} bytes of incomplete input exceed the {MAX_PENDING} byte cap"
            ),
            DemoError::AfterError => f.write_str("input after a protocol error"),
        }
    }
}

impl std::error::Error for DemoError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_for_console_kinds() {
        let mut out = Vec::new();
        let mut vnc = backend_for("vnc").into_iter().next();
        if let Some(b) = vnc.as_mut() {
            b.start(&mut out);
        }
        assert_eq!(out, b"RFB 003.008\n");
        out.clear();
        let mut term = backend_for("term").into_iter().next();
        if let Some(b) = term.as_mut() {
            b.start(&mut out);
            assert_eq!(b.next_tick(), None);
        }
        assert_eq!(out, b"nexor-relay demo terminal\r\n$ ");
        assert!(backend_for("spice").is_none());
    }

    #[test]
    fn errors_display() {
        let e = DemoError::BadVersion(*b"RFB 004.000\n");
        assert!(e.to_string().contains("RFB 004.000\\n"), "{e}");
        assert!(DemoError::CutTextTooLong(5).to_string().contains("1048576"));
        assert!(DemoError::UnknownMessage(9).to_string().contains('9'));
    }
}
