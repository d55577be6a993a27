//! Demo terminal: a line-echo shell for xterm.js (`console = "term"`).
//!
//! Owns the whole conversation of one terminal session: a banner, a prompt,
//! local echo with minimal line editing, and a reply per line. Pure: bytes and
//! a `now` in, bytes out (see [`crate::demo`]); it never needs a tick.
//!
//! ```text
//! start:          "nexor-relay demo terminal\r\n$ "
//! printable byte  (≥ 0x20 except 0x7f, including UTF-8) → stored and echoed
//! 0x7f / 0x08     line non-empty → drop its last character, echo "\x08 \x08"; else nothing
//! 0x03 (Ctrl-C)   "^C\r\n$ ", line cleared
//! CR, LF, CRLF    (CRLF, even split across inputs, is one enter)
//!                 "\r\n" + ("you typed: <line>\r\n" unless empty) + "$ "
//!                 line "exit": "\r\nbye\r\n", then wants_close() and all later input is ignored
//! ESC sequences   (arrow keys etc.: ESC [ … final, ESC O x, ESC x) dropped silently
//! other C0        (tab, Ctrl-D, …) dropped silently
//! past MAX_LINE   the character is dropped and a bell "\x07" echoed
//! ```
//!
//! Backspace removes one UTF-8 character (its lead byte and continuation
//! bytes), erasing one cell; wide (CJK) characters are not accounted for. The
//! cap is applied per character, so a stored line never ends in a partial
//! UTF-8 sequence; invalid UTF-8 is echoed as received.

use std::time::Duration;

use super::{Backend, DemoError};

/// Longest line kept, in bytes; further characters are dropped with a bell.
pub const MAX_LINE: usize = 4096;

/// The banner sent on start, before the first prompt.
pub const BANNER: &[u8] = b"nexor-relay demo terminal\r\n";
/// The prompt.
pub const PROMPT: &[u8] = b"$ ";

const BELL: u8 = 0x07;
const ESC: u8 = 0x1b;

/// Escape-sequence parsing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// Not in a sequence.
    None,
    /// After ESC.
    Start,
    /// After `ESC [`: parameter/intermediate bytes until a final 0x40..=0x7e.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// The demo terminal for `console = "term"`. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TermDemo {
    line: Vec<u8>,
    /// The previous byte was CR: a following LF is part of the same enter.
    after_cr: bool,
    /// Continuation bytes still to drop, of a character refused by the cap.
    skip_cont: u8,
    esc: Esc,
    closed: bool,
}

impl Default for TermDemo {
    fn default() -> Self {
        TermDemo::new()
    }
}

impl TermDemo {
    /// A terminal before its banner.
    pub fn new() -> TermDemo {
        TermDemo {
            line: Vec::new(),
            after_cr: false,
            skip_cont: 0,
            esc: Esc::None,
            closed: false,
        }
    }

    /// The line typed so far (not yet entered).
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match self.esc {
            Esc::None => {}
            Esc::Start => {
                self.esc = match b {
                    b'[' => Esc::Csi,
                    b'O' => Esc::Ss3,
                    _ => Esc::None,
                };
                return;
            }
            Esc::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.esc = Esc::None;
                }
                return;
            }
            Esc::Ss3 => {
                self.esc = Esc::None;
                return;
            }
        }
        if is_continuation(b) && self.skip_cont > 0 {
            self.skip_cont -= 1;
            return;
        }
        self.skip_cont = 0;
        match b {
            b'\n' if after_cr => {}
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                self.enter(out);
            }
            0x7f | 0x08 => self.backspace(out),
            0x03 => {
                self.line.clear();
                out.extend_from_slice(b"^C\r\n");
                out.extend_from_slice(PROMPT);
            }
            ESC => self.esc = Esc::Start,
            0x00..=0x1f => {}
            _ => self.printable(b, out),
        }
    }

    fn printable(&mut self, b: u8, out: &mut Vec<u8>) {
        let len = utf8_len(b);
        if self.line.len() + len > MAX_LINE {
            out.push(BELL);
            self.skip_cont = u8::try_from(len - 1).unwrap_or(0);
            return;
        }
        self.line.push(b);
        out.push(b);
    }

    fn backspace(&mut self, out: &mut Vec<u8>) {
        if self.line.is_empty() {
            return;
        }
        // Drop continuation bytes, then the lead byte: one character.
        while let Some(&last) = self.line.last() {
            self.line.pop();
            if !is_continuation(last) {
                break;
            }
        }
        out.extend_from_slice(b"\x08 \x08");
    }

    fn enter(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        if self.line == b"exit" {
            out.extend_from_slice(b"bye\r\n");
            self.closed = true;
            self.line.clear();
            return;
        }
        if !self.line.is_empty() {
            out.extend_from_slice(b"you typed: ");
            out.extend_from_slice(&self.line);
            out.extend_from_slice(b"\r\n");
            self.line.clear();
        }
        out.extend_from_slice(PROMPT);
    }
}

/// A UTF-8 continuation byte (10xxxxxx).
fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// Bytes of the character a lead byte starts (1 for ASCII and for bytes that
/// cannot lead: they are stored as one-byte characters).
fn utf8_len(b: u8) -> usize {
    match b {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 1,
    }
}

impl Backend for TermDemo {
    /// Sends the banner and the first prompt.
    fn start(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(BANNER);
        out.extend_from_slice(PROMPT);
    }

    /// Echoes and handles `input`; never fails. After `exit` all input is
    /// ignored.
    fn on_input(
        &mut self,
        input: &[u8],
        _now: Duration,
        out: &mut Vec<u8>,
    ) -> Result<(), DemoError> {
        for &b in input {
            if self.closed {
                break;
            }
            self.byte(b, out);
        }
        Ok(())
    }

    /// Nothing is ever due.
    fn poll_tick(&mut self, _now: Duration, _out: &mut Vec<u8>) {}

    /// Always `None`: the terminal only answers input.
    fn next_tick(&self) -> Option<Duration> {
        None
    }

    /// True after the line `exit` was entered.
    fn wants_close(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&[u8]]) -> (TermDemo, Vec<u8>) {
        let mut t = TermDemo::new();
        let mut out = Vec::new();
        for p in parts {
            assert_eq!(t.on_input(p, Duration::ZERO, &mut out), Ok(()));
        }
        (t, out)
    }

    fn typed(input: &[u8]) -> Vec<u8> {
        run(&[input]).1
    }

    #[test]
    fn banner_and_prompt() {
        let mut t = TermDemo::new();
        let mut out = Vec::new();
        t.start(&mut out);
        assert_eq!(out, b"nexor-relay demo terminal\r\n$ ");
        assert_eq!(t.next_tick(), None);
        t.poll_tick(Duration::from_secs(9), &mut out);
        assert_eq!(out, b"nexor-relay demo terminal\r\n$ ");
    }

    #[test]
    fn echo_and_enter() {
        assert_eq!(typed(b"ls -l"), b"ls -l");
        assert_eq!(typed(b"ls\r"), b"ls\r\nyou typed: ls\r\n$ ");
        assert_eq!(typed(b"ls\n"), b"ls\r\nyou typed: ls\r\n$ ");
        assert_eq!(typed(b"\r"), b"\r\n$ ");
        assert_eq!(
            typed("grüß 世界\r".as_bytes()),
            "grüß 世界\r\nyou typed: grüß 世界\r\n$ ".as_bytes()
        );
    }

    #[test]
    fn crlf_is_one_enter() {
        let want = b"a\r\nyou typed: a\r\n$ b\r\nyou typed: b\r\n$ ";
        assert_eq!(typed(b"a\r\nb\r\n"), want);
        assert_eq!(run(&[b"a\r", b"\nb\r", b"\n"]).1, want);
        // LF CR and CR CR are two enters; LF LF too.
        assert_eq!(typed(b"\n\r"), b"\r\n$ \r\n$ ");
        assert_eq!(typed(b"\r\r"), b"\r\n$ \r\n$ ");
        assert_eq!(typed(b"\n\n"), b"\r\n$ \r\n$ ");
        // CR, other byte, LF: the LF is its own enter.
        assert_eq!(typed(b"\rx\n"), b"\r\n$ x\r\nyou typed: x\r\n$ ");
    }

    #[test]
    fn backspace() {
        assert_eq!(typed(b"ab\x7f\r"), b"ab\x08 \x08\r\nyou typed: a\r\n$ ");
        assert_eq!(typed(b"ab\x08\r"), b"ab\x08 \x08\r\nyou typed: a\r\n$ ");
        // Empty line: nothing to erase, nothing echoed.
        assert_eq!(typed(b"\x7f\x7f"), b"");
        assert_eq!(typed(b"a\x7f\x7f\r"), b"a\x08 \x08\r\n$ ");
        // One backspace removes a whole multi-byte character.
        let (t, out) = run(&["aé世".as_bytes(), b"\x7f\x7f"]);
        assert_eq!(t.line(), b"a");
        assert_eq!(out, "aé世\x08 \x08\x08 \x08".as_bytes());
    }

    #[test]
    fn ctrl_c_clears_line() {
        assert_eq!(typed(b"abc\x03"), b"abc^C\r\n$ ");
        assert_eq!(typed(b"abc\x03d\r"), b"abc^C\r\n$ d\r\nyou typed: d\r\n$ ");
    }

    #[test]
    fn escape_sequences_and_controls_dropped() {
        // Arrow keys (CSI and SS3 forms), Alt-x, F5, tab, Ctrl-D.
        assert_eq!(
            typed(b"a\x1b[A\x1bOB\x1bx\x1b[15~\t\x04b\r"),
            b"ab\r\nyou typed: ab\r\n$ "
        );
    }

    #[test]
    fn line_capped_with_bell() {
        let mut input = vec![b'x'; MAX_LINE];
        input.extend_from_slice(b"yz");
        let (t, out) = run(&[&input]);
        assert_eq!(t.line().len(), MAX_LINE);
        assert_eq!(&out[..MAX_LINE], &vec![b'x'; MAX_LINE][..]);
        assert_eq!(&out[MAX_LINE..], b"\x07\x07");
        // A multi-byte character that does not fit is dropped whole: one bell,
        // and its continuation bytes are not stored or echoed.
        let mut input = vec![b'x'; MAX_LINE - 1];
        input.extend_from_slice("é\x7fé".as_bytes());
        let (t, out) = run(&[&input]);
        assert_eq!(t.line().len(), MAX_LINE);
        assert_eq!(&out[MAX_LINE - 1..], "\x07\x08 \x08é".as_bytes());
        assert!(std::str::from_utf8(t.line()).is_ok());
    }

    #[test]
    fn exit_closes() {
        let (t, out) = run(&[b"exi", b"t\r\nls\r"]);
        assert!(t.wants_close());
        assert_eq!(out, b"exit\r\nbye\r\n");
        // Not exactly "exit": an ordinary line.
        let (t, out) = run(&[b"exit now\r"]);
        assert!(!t.wants_close());
        assert_eq!(out, b"exit now\r\nyou typed: exit now\r\n$ ");
        let (t, _) = run(&[b"exitt\x7f\r"]);
        assert!(t.wants_close());
    }

    #[test]
    fn split_feeding_equivalence() {
        let session =
            "hi\r\nwörld\x7f\x7fx\x1b[D\r\x03abc\x08\n\n世界\r\nexit\rignored\r".as_bytes();
        let (_, whole) = run(&[session]);
        let bytes: Vec<&[u8]> = session.chunks(1).collect();
        assert_eq!(run(&bytes).1, whole);
        for i in 0..=session.len() {
            let (a, b) = session.split_at(i);
            let (t, out) = run(&[a, b]);
            assert_eq!(out, whole, "split at {i}");
            assert!(t.wants_close());
        }
    }
}
