//! Proxmox console preambles: the login steps the relay performs itself, on
//! the upstream leg, before it splices the two legs (docs/design.md §3
//! "Preambles before the splice").
//!
//! The browser never sees a Proxmox ticket or VNC password: the relay holds
//! them, logs in upstream, and only then lets bytes through unchanged.
//!
//! * [`rfb::VncPreamble`] — Proxmox VNC (docs/proxmox.md §6.4): the relay is the
//!   RFB client upstream (VNC Authentication, DES, §6.2) and an RFB server
//!   offering security type None to the browser (noVNC).
//! * [`term::TermPreamble`] — termproxy (docs/proxmox.md §5.2): the relay sends
//!   `<user>:<ticket>\n` and swallows the `OK`.
//!
//! Both are pure state machines (sans-io, like rustls or quinn-proto): the
//! glue feeds the *payload* bytes of each leg's WebSocket frames, in any
//! split, and sends (framed) what comes back. They read no clock and own no
//! socket; timeouts (Proxmox's 10 s and 30 s windows) are the glue's.
//!
//! ```text
//! open:              p.start(..)                         → send what it appended
//! upstream payload:  p.on_upstream(bytes, &mut up, &mut br)?  → send up, br
//! browser payload:   p.on_browser(bytes, &mut up, &mut br)?   → send up, br
//! after any call:    if p.is_done() → splice: bytes pass unchanged from now on
//! upstream EOF:      p.on_upstream_eof()? (an error unless done)
//! Err:               send `br` (it may hold an RFB 3.8 failure reason for the
//!                    browser), drop `up`, close both legs
//! ```
//!
//! `start` is VNC's browser greeting (`to_browser`) or termproxy's auth line
//! (`to_upstream`); the `on_*` calls send it first themselves if `start` was
//! not called.
//!
//! Every call appends to the output vectors and never clears them, so the
//! glue may batch. Bytes that arrive in the same chunk as the end of a phase
//! are never lost: they come out, in order, in the call that finishes the
//! preamble. Bytes that must wait (browser input before the upstream login
//! is done, upstream input before the browser is ready) are held, at most
//! [`MAX_HELD`] per leg.

use std::fmt;

pub mod rfb;
pub mod term;

/// The most bytes held per leg while the preamble runs (64 KiB). Real
/// clients stay far below it (noVNC sends 1 byte of ClientInit, xterm.js a
/// few keystrokes and a resize); beyond → [`PreambleError::HeldTooLarge`].
pub const MAX_HELD: usize = 64 * 1024;

/// The most bytes of an upstream failure reason kept (and waited for). A
/// longer reason is cut here and marked `...`; the rest is never read.
pub const MAX_REASON: usize = 256;

/// Which party broke the preamble; the glue maps it to its own notion of a
/// side (close code, audit line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The browser sent something the preamble does not accept.
    Browser,
    /// Proxmox (pveproxy, QEMU, vncterm, termproxy) refused or misbehaved.
    Upstream,
    /// The relay's own input: credentials from the Proxmox answer that cannot
    /// be sent, or a call after an error.
    Relay,
}

impl Fault {
    /// `"browser"`, `"upstream"` or `"relay"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Browser => "browser",
            Fault::Upstream => "upstream",
            Fault::Relay => "relay",
        }
    }
}

/// Why a preamble failed. Never carries a ticket or password; reasons quoted
/// from Proxmox are its own text, capped at [`MAX_REASON`] bytes and reduced
/// to printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreambleError {
    /// The upstream's RFB ProtocolVersion is malformed or below 3.8 (the 12
    /// bytes received). QEMU and vncterm both send `RFB 003.008\n`.
    UpstreamBadVersion([u8; 12]),
    /// The upstream offered no security type and said why (RFC 6143 §7.1.2:
    /// "If number-of-security-types is zero, then for some reason the
    /// connection failed").
    NoSecurityTypes {
        /// The upstream's reason.
        reason: String,
    },
    /// The upstream did not offer type 2 (VNC Authentication); the types it
    /// offered.
    VncAuthNotOffered(Vec<u8>),
    /// The upstream's SecurityResult was not OK: wrong or expired password
    /// (QEMU `Authentication failed`, vncterm `password check failed!`).
    VncAuthFailed {
        /// The SecurityResult status (1 = failed).
        status: u32,
        /// The upstream's reason.
        reason: String,
    },
    /// The upstream closed before the VNC preamble was done.
    UpstreamClosed,
    /// The browser's RFB ProtocolVersion is malformed or not 3.3–3.8 (the 12
    /// bytes received).
    BrowserBadVersion([u8; 12]),
    /// The browser chose a security type other than 1 (None), the only one
    /// offered.
    BrowserBadSecurityType(u8),
    /// termproxy did not answer the auth line with `OK`: it closes without a
    /// reply when the ticket is refused (docs/proxmox.md §5.2). The bytes it sent
    /// instead (empty if it closed).
    TermAuthFailed {
        /// What came instead of `OK`, sanitised.
        answer: String,
    },
    /// The termproxy user or ticket cannot be sent on the auth line: a line
    /// break, a `:` in the user (termproxy splits at the first `:`), empty, or
    /// longer than [`term::MAX_AUTH_LINE`].
    TermBadCredentials(&'static str),
    /// More than [`MAX_HELD`] bytes waited on one leg.
    HeldTooLarge(Fault),
    /// A call after an earlier error; the legs should be closed already.
    AfterError,
}

impl PreambleError {
    /// A stable snake_case label for logs, metrics and audit lines.
    pub fn label(&self) -> &'static str {
        match self {
            PreambleError::UpstreamBadVersion(_) => "vnc_upstream_version",
            PreambleError::NoSecurityTypes { .. } => "vnc_no_security_types",
            PreambleError::VncAuthNotOffered(_) => "vnc_auth_not_offered",
            PreambleError::VncAuthFailed { .. } => "vnc_auth_failed",
            PreambleError::UpstreamClosed => "vnc_upstream_closed",
            PreambleError::BrowserBadVersion(_) => "vnc_browser_version",
            PreambleError::BrowserBadSecurityType(_) => "vnc_browser_security_type",
            PreambleError::TermAuthFailed { .. } => "term_auth_failed",
            PreambleError::TermBadCredentials(_) => "term_bad_credentials",
            PreambleError::HeldTooLarge(_) => "preamble_held_too_large",
            PreambleError::AfterError => "preamble_after_error",
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            PreambleError::UpstreamBadVersion(_)
            | PreambleError::NoSecurityTypes { .. }
            | PreambleError::VncAuthNotOffered(_)
            | PreambleError::VncAuthFailed { .. }
            | PreambleError::UpstreamClosed
            | PreambleError::TermAuthFailed { .. } => Fault::Upstream,
            PreambleError::BrowserBadVersion(_) | PreambleError::BrowserBadSecurityType(_) => {
                Fault::Browser
            }
            PreambleError::HeldTooLarge(f) => *f,
            PreambleError::TermBadCredentials(_) | PreambleError::AfterError => Fault::Relay,
        }
    }
}

impl fmt::Display for PreambleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreambleError::UpstreamBadVersion(v) => write!(
                f,
                "unsupported RFB server version \"{}\" (need 3.8)",
                v.escape_ascii()
            ),
            PreambleError::NoSecurityTypes { reason } => {
                write!(f, "VNC server offered no security type: {reason}")
            }
            PreambleError::VncAuthNotOffered(types) => write!(
                f,
                "VNC server does not offer VNC Authentication (offered {types:?})"
            ),
            PreambleError::VncAuthFailed { status, reason } => {
                write!(f, "VNC authentication failed ({status}): {reason}")
            }
            PreambleError::UpstreamClosed => {
                f.write_str("VNC server closed before authentication finished")
            }
            PreambleError::BrowserBadVersion(v) => {
                write!(f, "unsupported RFB client version \"{}\"", v.escape_ascii())
            }
            PreambleError::BrowserBadSecurityType(t) => write!(
                f,
                "RFB client chose security type {t}, only 1 (None) is offered"
            ),
            PreambleError::TermAuthFailed { answer } if answer.is_empty() => {
                f.write_str("termproxy closed without OK (login refused)")
            }
            PreambleError::TermAuthFailed { answer } => {
                write!(f, "termproxy answered \"{answer}\" instead of OK")
            }
            PreambleError::TermBadCredentials(why) => {
                write!(f, "termproxy credentials cannot be sent: {why}")
            }
            PreambleError::HeldTooLarge(side) => write!(
                f,
                "{} sent over {MAX_HELD} bytes during the preamble",
                side.as_str()
            ),
            PreambleError::AfterError => f.write_str("input after a preamble error"),
        }
    }
}

impl std::error::Error for PreambleError {}

/// Upstream text made safe for logs: printable ASCII kept, every other byte
/// written `\xNN`, and `...` appended when the text was cut at
/// [`MAX_REASON`].
fn sanitize(text: &[u8], truncated: bool) -> String {
    let mut s = String::new();
    for &b in text.iter().take(MAX_REASON) {
        if (0x20..=0x7e).contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if truncated {
        s.push_str("...");
    }
    s
}

/// A C string's text: QEMU sends `"Authentication failed\0"`.
fn trim_nuls(text: &[u8]) -> &[u8] {
    let end = text.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_controls_and_trim_drops_trailing_nuls() {
        assert_eq!(
            sanitize(trim_nuls(b"Authentication failed\0"), false),
            "Authentication failed"
        );
        assert_eq!(sanitize(b"a\x1b[2Jb\xff", false), "a\\x1b[2Jb\\xff");
        assert_eq!(sanitize(b"cut", true), "cut...");
        assert_eq!(sanitize(trim_nuls(b"\0\0"), false), "");
        assert_eq!(sanitize(b"\0", false), "\\x00");
    }

    #[test]
    fn labels_are_stable_snake_case() {
        let all = [
            PreambleError::UpstreamBadVersion([0; 12]),
            PreambleError::NoSecurityTypes { reason: "x".into() },
            PreambleError::VncAuthNotOffered(vec![1]),
            PreambleError::VncAuthFailed {
                status: 1,
                reason: "x".into(),
            },
            PreambleError::UpstreamClosed,
            PreambleError::BrowserBadVersion([0; 12]),
            PreambleError::BrowserBadSecurityType(2),
            PreambleError::TermAuthFailed {
                answer: String::new(),
            },
            PreambleError::TermBadCredentials("x"),
            PreambleError::HeldTooLarge(Fault::Browser),
            PreambleError::AfterError,
        ];
        for e in &all {
            let l = e.label();
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(all[3].label(), "vnc_auth_failed");
        assert_eq!(all[7].label(), "term_auth_failed");
    }
}
