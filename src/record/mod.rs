//! Console recordings (docs/recording.md): the pure encoders. The pump
//! hands the writer thread ([`writer`]) copies of what it forwarded; the
//! writer turns them into a file with the decoders and encoders here:
//!
//! ```text
//! forwarded bytes ──▶ Payloads (WebSocket frames → unmasked payload)
//!   terminal: Termproxy (0:LEN:DATA → "i", 1:COLS:ROWS: → "r") / raw ──▶ Cast (asciicast v3)
//!   VNC:      RfbSkip (drops the RFB handshake up to ServerInit)        ──▶ VncRec records
//! ```
//!
//! Everything in this file is pure: bytes and times in, bytes out (no
//! clock, no files). [`writer`] (the thread and the files), [`replay`]
//! (`nexor-relay replay`) and [`config`] are the glue around it.
#![deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)

pub mod config;
#[allow(clippy::disallowed_methods)] // glue: the replay server reads the file
pub mod replay;
#[cfg(test)]
mod tests;
#[allow(clippy::disallowed_methods)] // glue: the writer thread owns the files
pub mod writer;

use crate::ws::frame::{FrameError, Sender, Step, Tracker};
use crate::ws::mask;

pub use self::writer::{Recording, Summary};

/// File name extension of terminal recordings.
pub const CAST_EXT: &str = "cast";
/// File name extension of VNC recordings.
pub const VNC_EXT: &str = "vncrec";

// ---- file names ---------------------------------------------------------------

/// Keeps `[A-Za-z0-9._-]`, maps anything else to `_`, at most 64
/// characters; never empty, never `.`/`..` (a part of a file name).
pub fn sanitize_part(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out = out.replace('.', "_");
        if out.is_empty() {
            out.push('_');
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` of unix seconds (UTC, proleptic Gregorian).
pub fn utc_stamp(unix: u64) -> String {
    let secs = unix % 86_400;
    let (y, m, d) = crate::log::civil_from_days((unix / 86_400) as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `{UTC time}_{sub}_{vm}_{session id}.{ext}`, each part sanitised.
pub fn file_name(unix: u64, sub: &str, vm: &str, sid: &str, ext: &str) -> String {
    format!(
        "{}_{}_{}_{}.{ext}",
        utc_stamp(unix),
        sanitize_part(sub),
        sanitize_part(vm),
        sanitize_part(sid)
    )
}

// ---- WebSocket frames → payload -------------------------------------------------

/// Pending bytes a frame decoder holds at most: a header (14 bytes) or a
/// control frame (127); more means the stream is not what it should be.
const MAX_PENDING: usize = 1024;
/// The longest step: a control frame (2 + 4 + 125 bytes) or a header (14).
const STEP_MAX: usize = 2 + 4 + 125;

/// Unmasked data payloads of one direction's forwarded frame stream (the
/// pump forwards whole, already validated frames; the relay's own control
/// frames never pass here).
pub struct Payloads {
    tracker: Tracker,
    pending: Vec<u8>,
    broken: Option<FrameError>,
}

impl Payloads {
    pub fn new(from: Sender) -> Payloads {
        Payloads {
            tracker: Tracker::new(from, u64::MAX),
            pending: Vec::new(),
            broken: None,
        }
    }

    /// The frame error that stopped decoding, if any.
    pub fn broken(&self) -> Option<FrameError> {
        self.broken
    }

    /// Feeds forwarded bytes; `out` gets each run of payload, unmasked.
    pub fn feed(&mut self, data: &[u8], out: &mut impl FnMut(&[u8])) {
        if self.broken.is_some() {
            return;
        }
        let mut rest = data;
        // Finish a header or control frame begun in an earlier chunk, a
        // few bytes at a time (payload is never held).
        while !self.pending.is_empty() {
            if rest.is_empty() {
                return;
            }
            let take = rest.len().min(STEP_MAX);
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            let mut buf = std::mem::take(&mut self.pending);
            let Some(n) = self.walk(&buf, out) else {
                return;
            };
            buf.drain(..n);
            if buf.len() > MAX_PENDING {
                self.broken = Some(FrameError::TooLarge);
                return;
            }
            self.pending = buf;
        }
        if let Some(n) = self.walk(rest, out) {
            self.pending.extend_from_slice(&rest[n..]);
        }
    }

    /// Walks whole steps of `buf`; how many bytes they took (None: broken).
    fn walk(&mut self, buf: &[u8], out: &mut impl FnMut(&[u8])) -> Option<usize> {
        let mut at = 0;
        let mut scratch = [0u8; 4096];
        loop {
            match self.tracker.step(&buf[at..]) {
                Err(e) => {
                    self.broken = Some(e);
                    return None;
                }
                Ok(None) => return Some(at),
                Ok(Some(Step::Payload {
                    len, offset, mask, ..
                })) => {
                    let p = &buf[at..at + len];
                    match mask {
                        None => out(p),
                        Some(k) => {
                            let mut off = offset;
                            for c in p.chunks(scratch.len()) {
                                let s = &mut scratch[..c.len()];
                                s.copy_from_slice(c);
                                mask::apply(s, k, off);
                                off += c.len() as u64;
                                out(s);
                            }
                        }
                    }
                    at += len;
                }
                Ok(Some(step)) => at += step.len(),
            }
        }
    }
}

// ---- UTF-8 across chunks ------------------------------------------------------

/// Turns a byte stream into text, chunk by chunk, for asciicast's JSON
/// strings: a UTF-8 sequence split across chunks is held (at most 3
/// bytes) and completed by the next chunk, so valid UTF-8 comes out
/// exactly; only bytes that are not UTF-8 become U+FFFD.
#[derive(Default)]
pub struct Utf8Text {
    held: Vec<u8>,
}

impl Utf8Text {
    /// Appends the text of `data` (plus what was held) to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut String) {
        let joined;
        let mut rest: &[u8] = if self.held.is_empty() {
            data
        } else {
            let mut j = std::mem::take(&mut self.held);
            j.extend_from_slice(data);
            joined = j;
            &joined
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..good]).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            // Incomplete at the end: wait for the rest.
                            self.held = rest[good..].to_vec();
                            return;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &rest[good + bad..];
                        }
                    }
                }
            }
        }
    }

    /// The end of the stream: a held incomplete sequence becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if !std::mem::take(&mut self.held).is_empty() {
            out.push('\u{FFFD}');
        }
    }

    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }
}

// ---- termproxy input framing ----------------------------------------------------

/// A decoded piece of termproxy's client stream (docs/proxmox.md §5).
#[derive(Debug, PartialEq, Eq)]
pub enum TermEvent<'a> {
    /// Keyboard input (part of a `0:LEN:DATA` message).
    Input(&'a [u8]),
    /// `1:COLS:ROWS:`.
    Resize { cols: u16, rows: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tp {
    /// Waiting for a message type byte.
    Type,
    /// After `0` or `1`: the `:`.
    Colon(u8),
    /// Digits of a number; `which`: 0 = data length, 1 = cols, 2 = rows.
    Number { which: u8, value: u64, digits: u8 },
    /// Data bytes still to come.
    Data(u64),
}

/// termproxy's client framing, decoded byte by byte as termproxy does:
/// `0:LEN:DATA` input, `1:COLS:ROWS:` resize, `2` ping; any other byte
/// is skipped, and a number longer than 20 digits is dropped.
pub struct Termproxy {
    st: Tp,
    cols: u64,
}

/// termproxy drops a number of more digits than this.
const TP_MAX_DIGITS: u8 = 20;

impl Default for Termproxy {
    fn default() -> Self {
        Termproxy {
            st: Tp::Type,
            cols: 0,
        }
    }
}

impl Termproxy {
    pub fn feed<'a>(&mut self, data: &'a [u8], out: &mut impl FnMut(TermEvent<'a>)) {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                Tp::Data(left) => {
                    let n = (data.len() - i).min(left.min(usize::MAX as u64) as usize);
                    out(TermEvent::Input(&data[i..i + n]));
                    i += n;
                    self.st = if left == n as u64 {
                        Tp::Type
                    } else {
                        Tp::Data(left - n as u64)
                    };
                    continue;
                }
                Tp::Type => {
                    self.st = match data[i] {
                        b'0' => Tp::Colon(0),
                        b'1' => Tp::Colon(1),
                        _ => Tp::Type, // `2` (ping) and anything else
                    };
                }
                Tp::Colon(which) => {
                    self.st = if data[i] == b':' {
                        Tp::Number {
                            which,
                            value: 0,
                            digits: 0,
                        }
                    } else {
                        Tp::Type
                    };
                }
                Tp::Number {
                    which,
                    value,
                    digits,
                } => {
                    let b = data[i];
                    self.st = if b.is_ascii_digit() && digits < TP_MAX_DIGITS {
                        Tp::Number {
                            which,
                            value: value.saturating_mul(10).saturating_add(u64::from(b - b'0')),
                            digits: digits + 1,
                        }
                    } else if b == b':' && digits > 0 {
                        match which {
                            0 if value == 0 => Tp::Type,
                            0 => Tp::Data(value),
                            1 => {
                                self.cols = value;
                                Tp::Number {
                                    which: 2,
                                    value: 0,
                                    digits: 0,
                                }
                            }
                            _ => {
                                let clamp = |v: u64| v.min(u64::from(u16::MAX)) as u16;
                                out(TermEvent::Resize {
                                    cols: clamp(self.cols),
                                    rows: clamp(value),
                                });
                                Tp::Type
                            }
                        }
                    } else {
                        Tp::Type
                    };
                }
            }
            i += 1;
        }
    }
}

// ---- asciicast v3 ---------------------------------------------------------------

/// Writes asciicast v3 (https://docs.asciinema.org/manual/asciicast/v3/):
/// a header line, then one event line each:
///
/// ```text
/// {"version":3,"term":{"cols":80,"rows":24},"timestamp":1765050000,"title":"…"}
/// [0.104211, "o", "$ "]        output: what the browser received
/// [1.5, "i", "ls\r"]           input: what the browser sent
/// [0.002, "r", "120x40"]       resize
/// ```
///
/// Intervals are seconds since the previous event (v3), with microsecond
/// precision. Data are JSON strings: see [`Utf8Text`] for bytes that are
/// not UTF-8.
pub struct Cast {
    last: u64,
    text: [Utf8Text; 2],
}

/// Direction of a terminal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastDir {
    Output = 0,
    Input = 1,
}

impl Cast {
    /// The header line (with its newline) and the encoder.
    pub fn start(cols: u16, rows: u16, unix: u64, title: &str) -> (Cast, Vec<u8>) {
        let header = serde_json::json!({
            "version": 3,
            "term": {"cols": cols, "rows": rows},
            "timestamp": unix,
            "title": title,
        });
        let mut line = header.to_string().into_bytes();
        line.push(b'\n');
        (
            Cast {
                last: 0,
                text: Default::default(),
            },
            line,
        )
    }

    fn line(&mut self, micros: u64, code: &str, data: &str, out: &mut Vec<u8>) {
        let dt = micros.saturating_sub(self.last);
        self.last = self.last.max(micros);
        let data = serde_json::Value::String(data.to_string()).to_string();
        out.extend_from_slice(
            format!(
                "[{}.{:06}, \"{code}\", {data}]\n",
                dt / 1_000_000,
                dt % 1_000_000
            )
            .as_bytes(),
        );
    }

    /// An "o" or "i" event of `data` at `micros` since the start. A chunk
    /// that only completes nothing (an incomplete UTF-8 sequence) writes
    /// no line.
    pub fn data(&mut self, micros: u64, dir: CastDir, data: &[u8], out: &mut Vec<u8>) {
        let mut s = String::new();
        self.text[dir as usize].push(data, &mut s);
        if !s.is_empty() {
            let code = if dir == CastDir::Output { "o" } else { "i" };
            self.line(micros, code, &s, out);
        }
    }

    /// An "r" event.
    pub fn resize(&mut self, micros: u64, cols: u16, rows: u16, out: &mut Vec<u8>) {
        self.line(micros, "r", &format!("{cols}x{rows}"), out);
    }

    /// The end: held partial sequences are written out (as U+FFFD).
    pub fn finish(&mut self, micros: u64, out: &mut Vec<u8>) {
        for (dir, code) in [(CastDir::Output, "o"), (CastDir::Input, "i")] {
            let mut s = String::new();
            self.text[dir as usize].finish(&mut s);
            if !s.is_empty() {
                self.line(micros, code, &s, out);
            }
        }
    }
}

// ---- VNC recordings ---------------------------------------------------------------

/// The first bytes of a VNC recording.
pub const VNC_MAGIC: &[u8; 8] = b"NXVNCREC";
/// The format version this relay writes and replays.
pub const VNC_VERSION: u8 = 1;
/// Header: magic, version u8, flags u8, reserved u16, start unix micros u64.
pub const VNC_HEADER_LEN: usize = 20;
/// Record head: direction u8, micros u64, length u32.
pub const VNC_RECORD_HEAD: usize = 13;
/// The largest record this relay writes (the writer splits larger runs).
pub const VNC_MAX_RECORD: usize = 1 << 20;

/// Direction of a VNC record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncDir {
    /// Server → browser (the first record is the ServerInit).
    ToBrowser = 0,
    /// Browser → server (from the first message after ClientInit).
    FromBrowser = 1,
}

/// The file header of a VNC recording.
pub fn vnc_header(start_unix_micros: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(VNC_HEADER_LEN);
    h.extend_from_slice(VNC_MAGIC);
    h.push(VNC_VERSION);
    h.push(0); // flags
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&start_unix_micros.to_be_bytes());
    h
}

/// Appends records of `data` (split at [`VNC_MAX_RECORD`]).
pub fn vnc_record(dir: VncDir, micros: u64, data: &[u8], out: &mut Vec<u8>) {
    for c in data.chunks(VNC_MAX_RECORD) {
        out.push(dir as u8);
        out.extend_from_slice(&micros.to_be_bytes());
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
}

/// One record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VncRecord<'a> {
    pub dir: VncDir,
    pub micros: u64,
    pub data: &'a [u8],
}

/// Why a file is not a VNC recording this relay can replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncFileError {
    NotVncRecording,
    UnknownVersion(u8),
    BadDirection(u8),
    RecordTooLarge,
    NoServerInit,
}

impl std::fmt::Display for VncFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VncFileError::NotVncRecording => f.write_str("not a VNC recording (bad magic)"),
            VncFileError::UnknownVersion(v) => write!(f, "unknown VNC recording version {v}"),
            VncFileError::BadDirection(d) => write!(f, "bad record direction {d}"),
            VncFileError::RecordTooLarge => f.write_str("record larger than 1 MiB"),
            VncFileError::NoServerInit => f.write_str("no ServerInit: nothing to replay"),
        }
    }
}

/// A parsed VNC recording: its start and records. A truncated last
/// record (the relay stopped mid-write) is dropped.
pub struct VncFile<'a> {
    pub start_unix_micros: u64,
    pub records: Vec<VncRecord<'a>>,
}

pub fn parse_vnc(b: &[u8]) -> Result<VncFile<'_>, VncFileError> {
    if b.len() < VNC_HEADER_LEN || &b[..8] != VNC_MAGIC {
        return Err(VncFileError::NotVncRecording);
    }
    if b[8] != VNC_VERSION {
        return Err(VncFileError::UnknownVersion(b[8]));
    }
    let start = u64::from_be_bytes(b[12..20].try_into().unwrap_or_default());
    let mut at = VNC_HEADER_LEN;
    let mut records = Vec::new();
    while b.len() - at >= VNC_RECORD_HEAD {
        let dir = match b[at] {
            0 => VncDir::ToBrowser,
            1 => VncDir::FromBrowser,
            d => return Err(VncFileError::BadDirection(d)),
        };
        let micros = u64::from_be_bytes(b[at + 1..at + 9].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(b[at + 9..at + 13].try_into().unwrap_or_default()) as usize;
        if len > VNC_MAX_RECORD {
            return Err(VncFileError::RecordTooLarge);
        }
        let s = at + VNC_RECORD_HEAD;
        if b.len() - s < len {
            break;
        }
        records.push(VncRecord {
            dir,
            micros,
            data: &b[s..s + len],
        });
        at = s + len;
    }
    Ok(VncFile {
        start_unix_micros: start,
        records,
    })
}

/// The bytes the server sent, from ServerInit on, with their times.
pub fn server_stream<'a>(f: &VncFile<'a>) -> Result<Vec<(u64, &'a [u8])>, VncFileError> {
    let out: Vec<(u64, &[u8])> = f
        .records
        .iter()
        .filter(|r| r.dir == VncDir::ToBrowser)
        .map(|r| (r.micros, r.data))
        .collect();
    if out.iter().map(|(_, d)| d.len()).sum::<usize>() < SERVER_INIT_MIN {
        return Err(VncFileError::NoServerInit);
    }
    Ok(out)
}

/// ServerInit without its name: width, height, pixel format, name length.
pub const SERVER_INIT_MIN: usize = 24;

// ---- the RFB handshake, skipped -------------------------------------------------

/// A held handshake larger than this is not RFB: record raw from there.
const MAX_HANDSHAKE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hs {
    Versions,
    /// 3.3: the server's u32 security type.
    Type33,
    /// 3.7+: the server's list of types.
    Types,
    /// 3.7+: the client's choice.
    Choice,
    Challenge,
    Response,
    /// The server's u32 SecurityResult.
    Result,
    ClientInit,
    Done,
}

/// Follows an RFB handshake (RFC 6143 §7.1-7.3) passing through the relay
/// (`tcp`, `ws` and `demo` VNC) and drops it, so a recording starts at the
/// ServerInit on one side and at the first message after ClientInit on the
/// other, as for `proxmox` VNC, whose handshake the relay makes itself. A
/// VNC authentication challenge and response never reach the file. A
/// handshake it cannot follow (another security type, garbage) is
/// recorded from there on, flagged by [`RfbSkip::unparsed`].
pub struct RfbSkip {
    st: Hs,
    minor: u32,
    choice: u8,
    held: [Vec<u8>; 2],
    unparsed: bool,
}

impl Default for RfbSkip {
    fn default() -> Self {
        RfbSkip {
            st: Hs::Versions,
            minor: 0,
            choice: 0,
            held: [Vec::new(), Vec::new()],
            unparsed: false,
        }
    }
}

fn version_minor(v: &[u8]) -> Option<u32> {
    if v.len() != 12 || &v[..4] != b"RFB " || v[7] != b'.' || v[11] != b'\n' {
        return None;
    }
    std::str::from_utf8(&v[8..11]).ok()?.parse().ok()
}

impl RfbSkip {
    /// The handshake could not be followed: the file holds it raw.
    pub fn unparsed(&self) -> bool {
        self.unparsed
    }

    pub fn done(&self) -> bool {
        self.st == Hs::Done
    }

    /// Feeds bytes of one direction; `out` gets what follows the handshake.
    pub fn feed(&mut self, dir: VncDir, data: &[u8], out: &mut impl FnMut(VncDir, &[u8])) {
        if self.st == Hs::Done {
            return out(dir, data);
        }
        self.held[dir as usize].extend_from_slice(data);
        while self.step() {}
        if self.st != Hs::Done && self.held.iter().any(|h| h.len() > MAX_HANDSHAKE) {
            self.unparsed = true;
            self.st = Hs::Done;
        }
        if self.st == Hs::Done {
            for d in [VncDir::ToBrowser, VncDir::FromBrowser] {
                let h = std::mem::take(&mut self.held[d as usize]);
                if !h.is_empty() {
                    out(d, &h);
                }
            }
        }
    }

    /// Takes `n` bytes of `dir` if they are there.
    fn take(&mut self, dir: VncDir, n: usize) -> Option<Vec<u8>> {
        let h = &mut self.held[dir as usize];
        (h.len() >= n).then(|| h.drain(..n).collect())
    }

    fn give_up(&mut self) -> bool {
        self.unparsed = true;
        self.st = Hs::Done;
        false
    }

    /// One step of the handshake; false when it needs more bytes (or ended).
    fn step(&mut self) -> bool {
        use VncDir::{FromBrowser as C, ToBrowser as S};
        let (sh, ch) = (self.held[0].len(), self.held[1].len());
        match self.st {
            Hs::Done => false,
            Hs::Versions => {
                if sh < 12 || ch < 12 {
                    return false;
                }
                let (s, c) = (self.take(S, 12), self.take(C, 12));
                match (
                    s.as_deref().and_then(version_minor),
                    c.as_deref().and_then(version_minor),
                ) {
                    (Some(s), Some(c)) => {
                        self.minor = s.min(c);
                        self.st = if self.minor < 7 {
                            Hs::Type33
                        } else {
                            Hs::Types
                        };
                        true
                    }
                    _ => self.give_up(),
                }
            }
            Hs::Type33 => match self.take(S, 4) {
                Some(t) => {
                    self.choice = t[3];
                    self.st = match u32::from_be_bytes([t[0], t[1], t[2], t[3]]) {
                        1 => Hs::ClientInit,
                        2 => Hs::Challenge,
                        _ => return self.give_up(),
                    };
                    true
                }
                None => false,
            },
            Hs::Types => {
                if sh < 1 || sh < 1 + self.held[0][0] as usize {
                    return false;
                }
                let n = self.held[0][0] as usize;
                if n == 0 {
                    return self.give_up();
                }
                self.take(S, 1 + n);
                self.st = Hs::Choice;
                true
            }
            Hs::Choice => match self.take(C, 1) {
                Some(c) => {
                    self.choice = c[0];
                    self.st = match (c[0], self.minor >= 8) {
                        (1, true) => Hs::Result,
                        (1, false) => Hs::ClientInit,
                        (2, _) => Hs::Challenge,
                        _ => return self.give_up(),
                    };
                    true
                }
                None => false,
            },
            Hs::Challenge => {
                if self.take(S, 16).is_none() {
                    return false;
                }
                self.st = Hs::Response;
                true
            }
            Hs::Response => {
                if self.take(C, 16).is_none() {
                    return false;
                }
                self.st = Hs::Result;
                true
            }
            Hs::Result => match self.take(S, 4) {
                Some(r) if r == [0, 0, 0, 0] => {
                    self.st = Hs::ClientInit;
                    true
                }
                Some(_) => self.give_up(),
                None => false,
            },
            Hs::ClientInit => {
                if ch < 1 {
                    return false;
                }
                self.take(C, 1);
                self.st = Hs::Done;
                false
            }
        }
    }
}
