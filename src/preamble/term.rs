//! Proxmox termproxy preamble (docs/proxmox.md §5.2): the relay logs in to
//! termproxy itself, so xterm.js never sees the ticket.
//!
//! ```text
//! R → termproxy:  "<user>:<ticket>\n"     first, at once (10 s limit upstream)
//! termproxy → R:  "OK"                    2 bytes, swallowed; may share a frame
//!                                         with the first PTY output
//! termproxy → R:  raw PTY output ...      → browser, unchanged
//! browser → R:    "0:<LEN>:<data>" ...    held until OK, then upstream, unchanged
//! ```
//!
//! > termproxy splits at the first `:`; max ~4 KiB; 10 s limit.
//! > On failure termproxy exits → socket closed, no reply.
//!
//! So anything but `OK` first, or a close before it, is a refused login.
//! Browser bytes are passed through byte for byte (never re-split: a
//! termproxy message header split across reads desynchronises its parser,
//! docs/proxmox.md §12), so the glue should send the held bytes in one frame.

use std::fmt;

use super::{sanitize, Fault, PreambleError, MAX_HELD};

/// The longest auth line sent, `\n` included (termproxy reads "max ~4 KiB").
pub const MAX_AUTH_LINE: usize = 4096;

/// What termproxy answers a good auth line with.
const OK: &[u8; 2] = b"OK";

/// The termproxy preamble of one terminal console. See the module doc.
///
/// `Debug` prints the user, never the ticket; the auth line is dropped once
/// it has been handed out by [`TermPreamble::start`].
pub struct TermPreamble {
    user: String,
    /// `<user>:<ticket>\n`; emptied by `start`.
    line: Vec<u8>,
    started: bool,
    /// How many bytes of `OK` have arrived (0, 1; 2 = done).
    matched: usize,
    /// Browser bytes waiting for `OK`.
    held: Vec<u8>,
    failed: bool,
}

impl fmt::Debug for TermPreamble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TermPreamble")
            .field("user", &self.user)
            .field("started", &self.started)
            .field("matched", &self.matched)
            .field("held", &self.held.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl TermPreamble {
    /// A preamble for the termproxy answer's `user` and `ticket`.
    ///
    /// # Errors
    /// [`PreambleError::TermBadCredentials`] when they cannot form one auth
    /// line: empty, a `\n` or `\r` in either, a `:` in the user (termproxy
    /// splits at the first `:`; tickets contain `:` and that is fine), or a
    /// line longer than [`MAX_AUTH_LINE`].
    pub fn new(user: &str, ticket: &str) -> Result<Self, PreambleError> {
        let breaks = |s: &str| s.bytes().any(|b| b == b'\n' || b == b'\r');
        let why = if user.is_empty() {
            Some("empty user")
        } else if ticket.is_empty() {
            Some("empty ticket")
        } else if breaks(user) {
            Some("line break in user")
        } else if breaks(ticket) {
            Some("line break in ticket")
        } else if user.contains(':') {
            Some("':' in user")
        } else if user.len() + ticket.len() + 2 > MAX_AUTH_LINE {
            Some("auth line too long")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(PreambleError::TermBadCredentials(why));
        }
        let mut line = Vec::with_capacity(user.len() + ticket.len() + 2);
        line.extend_from_slice(user.as_bytes());
        line.push(b':');
        line.extend_from_slice(ticket.as_bytes());
        line.push(b'\n');
        Ok(TermPreamble {
            user: user.to_owned(),
            line,
            started: false,
            matched: 0,
            held: Vec::new(),
            failed: false,
        })
    }

    /// Appends the auth line `<user>:<ticket>\n` to `to_upstream`. Call it as
    /// soon as the upstream websocket is open. The other calls send it first
    /// themselves if `start` was not called; it is never sent twice.
    pub fn start(&mut self, to_upstream: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            to_upstream.append(&mut self.line);
            self.line = Vec::new();
        }
    }

    /// Feeds payload bytes from termproxy (any split). After `OK`, the held
    /// browser bytes are appended to `to_upstream` and the rest of `data` to
    /// `to_browser`.
    ///
    /// # Errors
    /// [`PreambleError::TermAuthFailed`] when the first two bytes are not
    /// `OK`; close both legs. Any later call returns
    /// [`PreambleError::AfterError`].
    pub fn on_upstream(
        &mut self,
        data: &[u8],
        to_upstream: &mut Vec<u8>,
        to_browser: &mut Vec<u8>,
    ) -> Result<(), PreambleError> {
        self.guard(to_upstream)?;
        let mut rest = data;
        while !self.is_done() {
            let Some((&b, tail)) = rest.split_first() else {
                return Ok(());
            };
            if OK.get(self.matched) != Some(&b) {
                let mut answer = OK.get(..self.matched).unwrap_or_default().to_vec();
                answer.push(b);
                return self.fail(PreambleError::TermAuthFailed {
                    answer: sanitize(&answer, false),
                });
            }
            self.matched += 1;
            rest = tail;
        }
        if !self.held.is_empty() {
            to_upstream.append(&mut self.held);
            self.held = Vec::new();
        }
        to_browser.extend_from_slice(rest);
        Ok(())
    }

    /// Feeds payload bytes from the browser: held until `OK`, then passed
    /// upstream unchanged.
    ///
    /// # Errors
    /// [`PreambleError::HeldTooLarge`] beyond [`MAX_HELD`] held bytes.
    pub fn on_browser(
        &mut self,
        data: &[u8],
        to_upstream: &mut Vec<u8>,
        _to_browser: &mut Vec<u8>,
    ) -> Result<(), PreambleError> {
        self.guard(to_upstream)?;
        if self.is_done() {
            to_upstream.extend_from_slice(data);
            return Ok(());
        }
        if self.held.len().saturating_add(data.len()) > MAX_HELD {
            return self.fail(PreambleError::HeldTooLarge(Fault::Browser));
        }
        self.held.extend_from_slice(data);
        Ok(())
    }

    /// termproxy closed its leg. Ok once done; before `OK` it is a refused
    /// login.
    ///
    /// # Errors
    /// [`PreambleError::TermAuthFailed`] before [`TermPreamble::is_done`].
    pub fn on_upstream_eof(&mut self) -> Result<(), PreambleError> {
        if self.failed {
            return Err(PreambleError::AfterError);
        }
        if self.is_done() {
            return Ok(());
        }
        let answer = sanitize(OK.get(..self.matched).unwrap_or_default(), false);
        self.fail(PreambleError::TermAuthFailed { answer })
    }

    /// True once `OK` arrived: from now on bytes pass unchanged (the glue
    /// splices; if it keeps calling `on_*`, they pass through as well).
    pub fn is_done(&self) -> bool {
        self.matched == OK.len()
    }

    /// Sends the auth line if needed; refuses calls after an error.
    fn guard(&mut self, to_upstream: &mut Vec<u8>) -> Result<(), PreambleError> {
        if self.failed {
            return Err(PreambleError::AfterError);
        }
        self.start(to_upstream);
        Ok(())
    }

    fn fail(&mut self, e: PreambleError) -> Result<(), PreambleError> {
        self.failed = true;
        self.held = Vec::new();
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"root@pam:PVEVNC:6650A1B2::sig/+=\n";

    fn new() -> TermPreamble {
        match TermPreamble::new("root@pam", "PVEVNC:6650A1B2::sig/+=") {
            Ok(t) => t,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn must(r: Result<(), PreambleError>) {
        if let Err(e) = r {
            panic!("unexpected error: {e}");
        }
    }

    /// Outputs of one run: (to_upstream, to_browser).
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Out {
        up: Vec<u8>,
        br: Vec<u8>,
    }

    fn up(t: &mut TermPreamble, data: &[u8], o: &mut Out) -> Result<(), PreambleError> {
        t.on_upstream(data, &mut o.up, &mut o.br)
    }

    fn br(t: &mut TermPreamble, data: &[u8], o: &mut Out) -> Result<(), PreambleError> {
        t.on_browser(data, &mut o.up, &mut o.br)
    }

    #[test]
    fn sends_exact_auth_line_once() {
        let mut t = new();
        let mut out = Vec::new();
        t.start(&mut out);
        t.start(&mut out);
        assert_eq!(out, LINE);
        assert!(!t.is_done());
    }

    #[test]
    fn ok_alone_finishes() {
        let mut t = new();
        let mut o = Out::default();
        must(up(&mut t, b"OK", &mut o));
        assert!(t.is_done());
        assert_eq!(o.up, LINE, "start is implied");
        assert!(o.br.is_empty());
        must(up(&mut t, b"$ ", &mut o));
        must(br(&mut t, b"0:1:x", &mut o));
        assert_eq!(o.br, b"$ ");
        assert_eq!(o.up, [LINE, b"0:1:x"].concat());
        must(t.on_upstream_eof());
    }

    #[test]
    fn ok_glued_to_output_passes_the_output() {
        let mut t = new();
        let mut o = Out::default();
        t.start(&mut o.up);
        must(up(&mut t, b"OKroot@pve:~# ", &mut o));
        assert!(t.is_done());
        assert_eq!(o.br, b"root@pve:~# ");
    }

    #[test]
    fn ok_split_across_chunks() {
        let mut t = new();
        let mut o = Out::default();
        t.start(&mut o.up);
        must(up(&mut t, b"O", &mut o));
        assert!(!t.is_done());
        must(up(&mut t, b"K", &mut o));
        assert!(t.is_done());
        must(up(&mut t, b"", &mut o));
        assert!(o.br.is_empty());
    }

    #[test]
    fn refuses_anything_but_ok() {
        for (input, answer) in [
            (&b"HTTP/1.1 401"[..], "H"),
            (b"Ok", "Ok"),
            (b"\x00K", "\\x00"),
            (b"KO", "K"),
        ] {
            let mut t = new();
            let mut o = Out::default();
            let r = up(&mut t, input, &mut o);
            assert_eq!(
                r,
                Err(PreambleError::TermAuthFailed {
                    answer: answer.into()
                }),
                "{input:?}"
            );
            assert_eq!(r.map_err(|e| e.label()), Err("term_auth_failed"));
            assert!(o.br.is_empty());
            assert_eq!(up(&mut t, b"OK", &mut o), Err(PreambleError::AfterError));
            assert_eq!(br(&mut t, b"x", &mut o), Err(PreambleError::AfterError));
        }
    }

    #[test]
    fn eof_before_ok_is_a_refused_login() {
        for got in [&b""[..], b"O"] {
            let mut t = new();
            let mut o = Out::default();
            must(up(&mut t, got, &mut o));
            let e = t.on_upstream_eof();
            assert_eq!(e.as_ref().map_err(|e| e.label()), Err("term_auth_failed"));
            assert_eq!(e.map_err(|e| e.fault()), Err(Fault::Upstream));
            assert_eq!(t.on_upstream_eof(), Err(PreambleError::AfterError));
        }
    }

    #[test]
    fn early_browser_bytes_are_held_then_released_in_order() {
        let mut t = new();
        let mut o = Out::default();
        t.start(&mut o.up);
        must(br(&mut t, b"1:80:24:", &mut o));
        must(br(&mut t, b"0:2:ls", &mut o));
        assert_eq!(o.up, LINE, "held, not sent");
        must(up(&mut t, b"O", &mut o));
        assert_eq!(o.up, LINE);
        must(up(&mut t, b"Kx", &mut o));
        assert_eq!(o.up, [LINE, b"1:80:24:0:2:ls"].concat());
        assert_eq!(o.br, b"x");
        must(br(&mut t, b"2", &mut o));
        assert_eq!(o.up, [LINE, b"1:80:24:0:2:ls2"].concat());
    }

    #[test]
    fn held_browser_bytes_are_capped() {
        let mut t = new();
        let mut o = Out::default();
        must(br(&mut t, &vec![b'a'; MAX_HELD], &mut o));
        let r = br(&mut t, b"a", &mut o);
        assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Browser)));
        assert_eq!(up(&mut t, b"OK", &mut o), Err(PreambleError::AfterError));
    }

    /// Every two-way split of the upstream input, with the browser's bytes
    /// fed before, between or after, gives the same output as whole.
    #[test]
    fn every_split_gives_the_same_output() {
        let upstream = b"OK\x1b[?2004hroot@pve:~# ";
        let browser = b"1:80:24:0:3:ls\r";
        let mut whole = Out::default();
        let mut t = new();
        must(up(&mut t, upstream, &mut whole));
        must(br(&mut t, browser, &mut whole));
        assert_eq!(whole.up, [LINE, browser].concat());
        assert_eq!(whole.br, &upstream[2..]);
        for i in 0..=upstream.len() {
            for j in 0..=browser.len() {
                for browser_first in [false, true] {
                    let mut t = new();
                    let mut o = Out::default();
                    t.start(&mut o.up);
                    if browser_first {
                        must(br(&mut t, &browser[..j], &mut o));
                    }
                    must(up(&mut t, &upstream[..i], &mut o));
                    if !browser_first {
                        must(br(&mut t, &browser[..j], &mut o));
                    }
                    assert_eq!(t.is_done(), i >= 2);
                    must(up(&mut t, &upstream[i..], &mut o));
                    must(br(&mut t, &browser[j..], &mut o));
                    assert_eq!(o, whole, "split {i}/{j}");
                }
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut t = new();
        let mut o = Out::default();
        for &b in b"0:1:a" {
            must(br(&mut t, &[b], &mut o));
        }
        for &b in b"OK$ " {
            must(up(&mut t, &[b], &mut o));
        }
        assert_eq!(o.up, [LINE, b"0:1:a"].concat());
        assert_eq!(o.br, b"$ ");
    }

    #[test]
    fn refuses_credentials_that_break_the_line() {
        for (user, ticket) in [
            ("root@pam\n", "t"),
            ("root@pam", "PVE\r\nx"),
            ("root:pam", "t"),
            ("", "t"),
            ("root@pam", ""),
        ] {
            let r = TermPreamble::new(user, ticket).map(|_| ());
            assert_eq!(r.map_err(|e| e.label()), Err("term_bad_credentials"));
        }
        let long = "t".repeat(MAX_AUTH_LINE);
        assert!(TermPreamble::new("u", &long).is_err());
        assert!(TermPreamble::new("root@pam!tok", "PVEVNC:1:2::x").is_ok());
    }

    #[test]
    fn debug_hides_the_ticket() {
        let t = new();
        let d = format!("{t:?}");
        assert!(d.contains("root@pam"));
        assert!(!d.contains("PVEVNC"), "{d}");
    }
}
