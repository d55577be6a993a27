//! The relay's sans-io core: every decision of the pump, no sockets, no
//! clock (`now` is an argument), no async.
//!
//! The glue in [`super`] owns the sockets, a read buffer per leg while
//! bytes are there, and one timer. It feeds the core what happened and does what the core says:
//!
//! | input (glue → core)                     | effect / output (core → glue)                          |
//! |-----------------------------------------|--------------------------------------------------------|
//! | [`Core::on_read`] `n` bytes from a leg  | the leg counts as alive (pong timeout cleared)         |
//! | [`Core::next`] over the read buffer     | [`Next::Forward`] a range of the buffer to the other leg, [`Next::Header`] a relay-made header, [`Next::Read`] (drop the walked prefix, read again), [`Next::Stop`] |
//! | ping in a leg's frames                  | pong queued for that leg (latest ping only)            |
//! | pong in a leg's frames                  | swallowed (hop by hop)                                 |
//! | close in a leg's frames                 | close passed on end to end (rules per [`Mode`] below)  |
//! | protocol violation                      | 1002/1009/1007 to the sender, the other leg closed     |
//! | [`Core::on_read_end`] EOF / read error  | leg gone: 1006 (browser) or 1000/1011 (upstream)       |
//! | [`Core::on_write_error`]                | that leg gone                                          |
//! | [`Core::on_timer`] at [`Core::deadline`]| keepalive pings, pong timeout, lifetime 4002, idle 4003, close grace over |
//! | [`Core::on_request`] replace/revoke/drain | 4001 / 1008 / 1001 to the browser, 1001 upstream     |
//! | [`Core::take_control`] for a leg        | the relay's own frames (pong, ping, close) or a FIN, handed out only while that leg's writer is at a frame boundary |
//!
//! Session phases:
//!
//! ```text
//!  Open ──close sent, waiting for the answer──▶ Closing ──answer, leg gone, CLOSE_GRACE──▶ Done
//!    │                                                                                   ▲
//!    └──────── close answered at once, browser gone, pong timeout ───────────────────────┘
//! ```
//!
//! In `Done` the glue writes what [`Core::take_control`] still holds
//! (bounded by CLOSE_GRACE), then shuts both legs down and reports
//! [`Core::outcome`]. Close rules per mode:
//!
//! * [`Mode::Frames`]: a close from one leg is forwarded byte for byte to
//!   the other; the session ends when the answer comes back (or at once if
//!   it answers a close already sent).
//! * [`Mode::Proxmox`]: as Frames for closes from pveproxy; a browser close
//!   is forwarded and answered by the relay itself (pveproxy never answers).
//! * [`Mode::Bytes`]: the relay answers the browser's close and FINs the
//!   upstream.
//!
//! Data never moves: forwarded frames are ranges of the read buffer (in
//! Bytes mode the browser's payloads are unmasked in place, and the frame
//! header for raw upstream bytes is written into headroom in front of
//! them). The walk keeps its offset between calls and the glue drops the
//! walked prefix once per read, so control frames cost O(their size).
//!
//! View-only sessions ([`Settings::view`]) are the exception: the
//! browser's payloads are unmasked in place and fed to the
//! [`ViewFilter`]; what it lets through goes upstream as relay-made bytes
//! ([`Next::Own`]): raw in Bytes mode, else complete binary frames under a
//! fresh mask key (at most [`PVE_MAX_PAYLOAD`] each). A stream the filter
//! cannot follow ends the session: 1008 `view_only_violation`.
//!
//! [`Decoder`] is the same walk on its own: the Proxmox preamble
//! (src/upstream/proxmox.rs) reads its frames with it, so frames are
//! decoded in one place.
//!
//! Dead peers: a relay ping starts a clock on its leg ([`Settings::pong_timeout`]);
//! any byte read from that leg stops it (a pong is bytes, and so is any
//! traffic: a peer that talks is alive). The clock starts when the ping is
//! queued, not written, so a peer that stops reading is caught too.

use std::io;
use std::time::Instant;

use crate::registry::CloseRequest;
use crate::ws::frame::{
    self, close, FrameError, FrameHeader, OpCode, Sender, Step, Tracker, MAX_CONTROL_FRAME,
    MAX_CONTROL_PAYLOAD, MAX_HEADER,
};
use crate::ws::mask;

use super::viewonly::{ViewFilter, Violation};
use super::{Mode, Outcome, Settings, Side, CLOSE_GRACE};

/// Room in front of a raw upstream read for the frame header (2 + 8 bytes).
pub const HEADROOM: usize = 10;
/// pveproxy's payload cap (docs/proxmox.md §2.2).
pub const PVE_MAX_PAYLOAD: u64 = 128 * 1024;
/// The payload of the relay's keepalive pings.
const PING_PAYLOAD: &[u8] = b"nexor";

/// One of the two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegId {
    Browser = 0,
    Upstream = 1,
}

impl LegId {
    pub fn other(self) -> LegId {
        match self {
            LegId::Browser => LegId::Upstream,
            LegId::Upstream => LegId::Browser,
        }
    }

    fn i(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            LegId::Browser => "browser",
            LegId::Upstream => "upstream",
        }
    }

    fn side(self) -> Side {
        match self {
            LegId::Browser => Side::Browser,
            LegId::Upstream => Side::Upstream,
        }
    }
}

/// Why a session failed: a class of `metrics::ERROR_CLASSES` and a short
/// detail (an io or rustls error's text, a protocol label; never data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    pub class: &'static str,
    pub detail: Option<String>,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.class),
            None => f.write_str(self.class),
        }
    }
}

fn class(leg: LegId, what: &str) -> &'static str {
    crate::metrics::ERROR_CLASSES
        .iter()
        .copied()
        .find(|c| c.strip_prefix(leg.name()).and_then(|c| c.strip_prefix('_')) == Some(what))
        .unwrap_or("other")
}

fn err(leg: LegId, what: &str, detail: Option<String>) -> SessionError {
    SessionError {
        class: class(leg, what),
        detail,
    }
}

/// How a leg's read side ended.
pub enum ReadEnd<'a> {
    Eof,
    Error(&'a io::Error),
}

/// What the glue does next with a direction's read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Write `buf[range]` to the other leg; `count` data bytes for metrics.
    Forward {
        range: std::ops::Range<usize>,
        count: u64,
    },
    /// Write this relay-made frame header to the other leg (Proxmox re-cut).
    Header { bytes: [u8; MAX_HEADER], len: u8 },
    /// Write these relay-made bytes to the other leg (view-only: what the
    /// filter let through, framed for the upstream); `count` data bytes.
    Own { bytes: Vec<u8>, count: u64 },
    /// All whole steps are walked: remove `buf[headroom..headroom +
    /// consumed]` and read more after what is left.
    Read { consumed: usize },
    /// This direction is over: stop reading.
    Stop,
}

/// A frame or action of the relay's own for one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Frame(Vec<u8>),
    /// FIN (the raw upstream of Bytes mode has no close frame).
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// Closes were sent; the session ends at the answer or at the deadline.
    Closing(Instant),
    Done,
}

#[derive(Clone, Copy)]
struct End {
    code: u16,
    reason: &'static str,
    by: Side,
}

/// A frame being re-cut for pveproxy.
#[derive(Clone, Copy)]
struct Recut {
    total: u64,
    key: [u8; 4],
    off: u64,
    header_due: bool,
}

/// One direction, named by the leg it reads.
struct Dir {
    /// None: raw bytes (the upstream of Bytes mode).
    tracker: Option<Tracker>,
    /// Unmask payloads, drop headers (browser → raw upstream).
    unmask: bool,
    /// Re-cut frames pveproxy would die on.
    recut_mode: bool,
    /// View-only: payloads go through this filter (browser → upstream).
    /// Boxed: control sessions, the many, keep one word for it.
    filter: Option<Box<ViewFilter>>,
    /// With `filter`: what passes goes out as masked frames (else raw).
    reframe: bool,
    pos: usize,
    run: Option<(usize, usize)>,
    recut: Option<Recut>,
    /// A step met while a run of forwarded bytes was still unwritten (a
    /// [`Walk::Control`] or [`Walk::Error`]): handed out once the run is
    /// out, so order is kept.
    held: Option<Walk>,
    stopped: bool,
    /// Raw mode: the buffered bytes were handed out.
    raw_sent: bool,
}

/// What the relay owes one leg.
#[derive(Default)]
struct Out {
    pong: Option<Vec<u8>>,
    ping: bool,
    close: Option<Vec<u8>>,
    shutdown: bool,
    /// A close (or FIN) was decided for this leg, or the leg is gone.
    sent_close: bool,
    /// The close (or FIN) was handed out: no more data to this leg.
    closed: bool,
    /// The leg is gone: nothing more is written to it.
    dead: bool,
    /// A relay ping is unanswered: the leg is dead at this instant.
    pong_due: Option<Instant>,
}

/// The sans-io relay state machine of one session.
pub struct Core {
    mode: Mode,
    settings: Settings,
    start: Instant,
    dirs: [Dir; 2],
    out: [Out; 2],
    phase: Phase,
    end: Option<End>,
    error: Option<SessionError>,
    last_data: Instant,
    next_ping: Option<Instant>,
    request_seen: bool,
    /// The close code (1005: none) a leg's close frame carried, while the
    /// relay still owes that leg an answer (see [`Core::on_timer`]).
    close_seen: [Option<u16>; 2],
    bytes: [u64; 2],
    dirty: bool,
    /// Test hook: panic when a leg's read reaches this many bytes.
    #[cfg(test)]
    pub panic_after: Option<u64>,
}

fn needs_recut(h: &FrameHeader) -> bool {
    !h.fin || h.opcode == OpCode::Continuation || h.len > PVE_MAX_PAYLOAD
}

fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let mut f = [0u8; MAX_CONTROL_FRAME];
    let n = frame::write_close(&mut f, code, reason, masked.then(mask::random_key));
    f[..n].to_vec()
}

fn control_frame(opcode: OpCode, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = [0u8; MAX_CONTROL_FRAME];
    let n = frame::write_control(&mut f, opcode, payload, masked.then(mask::random_key));
    f[..n].to_vec()
}

impl Core {
    pub fn new(mode: Mode, mut settings: Settings, now: Instant) -> Core {
        let filter = settings.view.take();
        let mut up = Dir::new(
            Some(Tracker::new(Sender::Client, settings.max_frame)),
            mode == Mode::Bytes || filter.is_some(),
            mode == Mode::Proxmox && filter.is_none(),
        );
        up.filter = filter.map(Box::new);
        up.reframe = mode != Mode::Bytes;
        let down = Dir::new(
            (mode != Mode::Bytes).then(|| Tracker::new(Sender::Server, settings.max_frame)),
            false,
            false,
        );
        Core {
            mode,
            settings,
            start: now,
            dirs: [up, down],
            out: [Out::default(), Out::default()],
            phase: Phase::Open,
            end: None,
            error: None,
            last_data: now,
            next_ping: settings.ping_interval.map(|p| now + p),
            request_seen: false,
            close_seen: [None; 2],
            bytes: [0, 0],
            dirty: false,
            #[cfg(test)]
            panic_after: None,
        }
    }

    /// Bytes the glue keeps free in front of what it reads from `from`.
    pub fn headroom(&self, from: LegId) -> usize {
        if self.dirs[from.i()].tracker.is_none() {
            HEADROOM
        } else {
            0
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once since the last call if the core queued control output or
    /// changed phase: the glue's control writer should look.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The writer of the other leg is inside a frame that `from`'s bytes
    /// are still completing: keep it, nothing may be injected.
    pub fn mid_frame(&self, from: LegId) -> bool {
        let d = &self.dirs[from.i()];
        match &d.tracker {
            Some(t) => !d.unmask && !t.at_boundary() && !self.out[from.other().i()].closed,
            None => false,
        }
    }

    /// When [`Core::on_timer`] must run next.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done => None,
            Phase::Closing(at) => Some(at),
            Phase::Open => {
                let s = &self.settings;
                [
                    self.next_ping,
                    s.lifetime.map(|l| self.start + l),
                    s.idle_timeout.map(|i| self.last_data + i),
                    self.out[0].pong_due,
                    self.out[1].pong_due,
                ]
                .into_iter()
                .flatten()
                .min()
            }
        }
    }

    /// Bytes were read from `leg` (before walking them with [`Core::next`]).
    pub fn on_read(&mut self, leg: LegId, n: usize, _now: Instant) {
        if n > 0 {
            self.out[leg.i()].pong_due = None;
        }
        #[cfg(test)]
        if let Some(limit) = self.panic_after {
            if self.bytes[0] + self.bytes[1] + n as u64 >= limit {
                panic!("test hook: core panics");
            }
        }
    }

    /// The leg's read side ended.
    pub fn on_read_end(&mut self, leg: LegId, how: ReadEnd<'_>, now: Instant) {
        self.dirs[leg.i()].stopped = true;
        let e = match how {
            ReadEnd::Eof => err(leg, "eof", None),
            ReadEnd::Error(e) => {
                let tls = e.get_ref().is_some_and(|i| i.is::<rustls::Error>());
                err(leg, if tls { "tls" } else { "reset" }, Some(e.to_string()))
            }
        };
        // A TCP or Proxmox console ends by closing its connection.
        let clean = leg == LegId::Upstream
            && e.class == "upstream_eof"
            && matches!(self.mode, Mode::Bytes | Mode::Proxmox);
        self.leg_gone(leg, (!clean).then_some(e), now);
    }

    /// Writing to `leg` failed.
    pub fn on_write_error(&mut self, leg: LegId, e: &io::Error, now: Instant) {
        self.leg_gone(leg, Some(err(leg, "write", Some(e.to_string()))), now);
    }

    /// A control request from another core.
    pub fn on_request(&mut self, r: CloseRequest, now: Instant) {
        if std::mem::replace(&mut self.request_seen, true) {
            return;
        }
        if self.phase == Phase::Open {
            self.relay_end(r.code(), r.label(), now);
        }
    }

    /// The deadline passed (calling early is harmless).
    pub fn on_timer(&mut self, now: Instant) {
        match self.phase {
            Phase::Done => {}
            Phase::Closing(at) => {
                if at <= now {
                    // A peer whose close the other side never answered
                    // still gets its answer (RFC 6455 §5.5.1): the relay
                    // is its peer, and a browser left without one reports
                    // an abnormal end.
                    self.answer_close(LegId::Browser);
                    self.answer_close(LegId::Upstream);
                    self.set_phase(Phase::Done);
                }
            }
            Phase::Open => {
                for leg in [LegId::Browser, LegId::Upstream] {
                    if self.out[leg.i()].pong_due.is_some_and(|at| at <= now) {
                        return self.pong_timeout(leg);
                    }
                }
                let s = self.settings;
                if s.lifetime.is_some_and(|l| self.start + l <= now) {
                    return self.relay_end(close::LIFETIME, "lifetime", now);
                }
                if s.idle_timeout.is_some_and(|i| self.last_data + i <= now) {
                    return self.relay_end(close::IDLE, "idle", now);
                }
                if let (Some(at), Some(every)) = (self.next_ping, s.ping_interval) {
                    if at <= now {
                        self.queue_ping(LegId::Browser, now);
                        if self.mode != Mode::Bytes {
                            self.queue_ping(LegId::Upstream, now);
                        }
                        self.next_ping = Some(now + every);
                    }
                }
            }
        }
    }

    fn queue_ping(&mut self, leg: LegId, now: Instant) {
        let o = &mut self.out[leg.i()];
        if o.sent_close || o.dead {
            return;
        }
        o.ping = true;
        if o.pong_due.is_none() {
            o.pong_due = self.settings.pong_timeout.map(|t| now + t);
        }
        self.dirty = true;
    }

    /// The relay's close (or FIN) went to `leg`: data for it is dropped.
    pub fn closed(&self, leg: LegId) -> bool {
        self.out[leg.i()].closed
    }

    /// True if [`Core::take_control`] has something for `leg`.
    pub fn has_control(&self, leg: LegId) -> bool {
        let o = &self.out[leg.i()];
        !o.dead && !o.closed && (o.pong.is_some() || o.ping || o.close.is_some() || o.shutdown)
    }

    /// The relay's next own frame for `leg`. Call only while holding the
    /// leg's writer at a frame boundary ([`Core::mid_frame`] false for the
    /// other leg's direction). A close or FIN is last: after it, data to
    /// the leg is dropped.
    pub fn take_control(&mut self, leg: LegId) -> Option<Control> {
        let masked = leg == LegId::Upstream;
        let o = &mut self.out[leg.i()];
        if o.dead || o.closed {
            return None;
        }
        if let Some(p) = o.pong.take() {
            return Some(Control::Frame(control_frame(OpCode::Pong, &p, masked)));
        }
        if std::mem::take(&mut o.ping) {
            return Some(Control::Frame(control_frame(
                OpCode::Ping,
                PING_PAYLOAD,
                masked,
            )));
        }
        if let Some(f) = o.close.take() {
            o.closed = true;
            return Some(Control::Frame(f));
        }
        if std::mem::take(&mut o.shutdown) {
            o.closed = true;
            return Some(Control::Shutdown);
        }
        None
    }

    /// How the session ended (valid once [`Phase::Done`]).
    pub fn outcome(&self) -> Outcome {
        let end = self.end.unwrap_or(End {
            code: 1006,
            reason: "aborted",
            by: Side::Relay,
        });
        Outcome {
            code: end.code,
            reason: end.reason,
            by: end.by,
            bytes_up: self.bytes[0],
            bytes_down: self.bytes[1],
            error: self.error.clone(),
        }
    }

    // ---- the walk ----

    /// The next thing to do with the read buffer of the direction reading
    /// `from`. `buf` is the glue's whole buffer (headroom included); the
    /// glue must not change it between calls except as [`Next::Read`] says.
    pub fn next(&mut self, from: LegId, buf: &mut [u8], now: Instant) -> Next {
        let d = from.i();
        if self.dirs[d].stopped || (self.phase == Phase::Done && !self.mid_frame(from)) {
            return Next::Stop;
        }
        if self.dirs[d].tracker.is_none() {
            return self.next_raw(from, buf, now);
        }
        loop {
            let discard = self.out[from.other().i()].closed;
            match self.dirs[d].walk(buf, discard) {
                Walk::Data(r) => {
                    let n = r.len() as u64;
                    self.count(from, n, now);
                    return Next::Forward { range: r, count: n };
                }
                Walk::Header { bytes, len } => return Next::Header { bytes, len },
                Walk::Own { bytes, count } => {
                    self.count(from, count, now);
                    return Next::Own { bytes, count };
                }
                Walk::Violation(v) => {
                    self.view_violation(v, now);
                    return Next::Stop;
                }
                Walk::Read { consumed } => return Next::Read { consumed },
                Walk::Error(e) => {
                    self.protocol_error(from, e, now);
                    return Next::Stop;
                }
                Walk::Control {
                    at,
                    payload_at,
                    end,
                    header,
                } => {
                    if self.control(from, buf, at, payload_at, end, header, now) {
                        return Next::Stop;
                    }
                }
            }
        }
    }

    /// Upstream → browser in Bytes mode: what was read becomes one binary
    /// frame, its header written into the headroom.
    fn next_raw(&mut self, from: LegId, buf: &mut [u8], now: Instant) -> Next {
        let d = &mut self.dirs[from.i()];
        let n = buf.len().saturating_sub(HEADROOM);
        if n == 0 || d.raw_sent || self.out[from.other().i()].closed {
            d.raw_sent = false;
            return Next::Read { consumed: n };
        }
        d.raw_sent = true;
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: None,
            len: n as u64,
        };
        let mut h = [0u8; MAX_HEADER];
        let hl = header.encode(&mut h);
        buf[HEADROOM - hl..HEADROOM].copy_from_slice(&h[..hl]);
        self.count(from, n as u64, now);
        Next::Forward {
            range: HEADROOM - hl..buf.len(),
            count: n as u64,
        }
    }

    fn count(&mut self, from: LegId, n: u64, now: Instant) {
        self.bytes[from.i()] += n;
        self.last_data = now;
    }

    /// Handles a whole control frame; true if the direction ends.
    #[allow(clippy::too_many_arguments)]
    fn control(
        &mut self,
        from: LegId,
        buf: &[u8],
        at: usize,
        payload_at: usize,
        end: usize,
        header: FrameHeader,
        now: Instant,
    ) -> bool {
        let mut p = [0u8; MAX_CONTROL_PAYLOAD];
        let n = end - payload_at;
        p[..n].copy_from_slice(&buf[payload_at..end]);
        if let Some(k) = header.mask {
            mask::apply(&mut p[..n], k, 0);
        }
        match header.opcode {
            OpCode::Ping => {
                // RFC 6455 §5.5.3: answering the latest ping is enough.
                let o = &mut self.out[from.i()];
                if !o.sent_close && !o.dead {
                    o.pong = Some(p[..n].to_vec());
                    self.dirty = true;
                }
                false
            }
            OpCode::Close => {
                self.dirs[from.i()].stopped = true;
                self.on_close(from, &p[..n], &buf[at..end], now);
                true
            }
            _ => false, // Pong: hop by hop, swallowed.
        }
    }

    // ---- endings ----

    fn set_phase(&mut self, p: Phase) {
        self.phase = p;
        self.dirty = true;
    }

    fn record(&mut self, code: u16, reason: &'static str, by: Side, e: Option<SessionError>) {
        if self.end.is_none() {
            self.end = Some(End { code, reason, by });
            self.error = e;
        }
    }

    fn finish(&mut self) {
        self.set_phase(Phase::Done);
    }

    /// Waits for the peers' answers, unless neither leg can say anything
    /// more (both read sides over): then there is nothing to wait for.
    fn begin_closing(&mut self, now: Instant) {
        if self.dirs[0].stopped && self.dirs[1].stopped {
            self.finish();
        } else if self.phase == Phase::Open {
            self.set_phase(Phase::Closing(now + CLOSE_GRACE));
        }
    }

    fn queue_close(&mut self, leg: LegId, frame: Vec<u8>) {
        let o = &mut self.out[leg.i()];
        if !std::mem::replace(&mut o.sent_close, true) {
            o.close = Some(frame);
            self.dirty = true;
        }
    }

    /// Answers the close `leg` sent, echoing its code, unless the relay
    /// already sent that leg a close (the other side's answer, say).
    fn answer_close(&mut self, leg: LegId) {
        if let Some(code) = self.close_seen[leg.i()] {
            let payload = if code == 1005 {
                Vec::new()
            } else {
                code.to_be_bytes().to_vec()
            };
            let masked = leg == LegId::Upstream;
            self.queue_close(leg, control_frame(OpCode::Close, &payload, masked));
        }
    }

    fn close_browser(&mut self, code: u16, reason: &str) {
        if !self.out[0].sent_close {
            self.queue_close(LegId::Browser, close_frame(code, reason, false));
        }
    }

    /// A close frame (masked: the relay is the client there), or FIN in
    /// Bytes mode.
    fn close_upstream(&mut self, code: u16) {
        let o = &mut self.out[1];
        if o.sent_close {
            return;
        }
        match self.mode {
            Mode::Frames | Mode::Proxmox => {
                self.queue_close(LegId::Upstream, close_frame(code, "", true))
            }
            Mode::Bytes => {
                o.sent_close = true;
                o.shutdown = true;
                self.dirty = true;
            }
        }
    }

    /// The relay ends the session: lifetime, idle, replaced, revoked, drain.
    fn relay_end(&mut self, code: u16, reason: &'static str, now: Instant) {
        self.record(code, reason, Side::Relay, None);
        self.close_browser(code, reason);
        self.close_upstream(close::GOING_AWAY);
        self.begin_closing(now);
    }

    /// A close frame came from `from`; `raw` is the frame as received.
    fn on_close(&mut self, from: LegId, payload: &[u8], raw: &[u8], now: Instant) {
        let code = frame::check_close_payload(payload).unwrap_or(close::PROTOCOL_ERROR);
        let code = if code == 1005 { close::NORMAL } else { code };
        self.record(code, "close", from.side(), None);
        let code2: Vec<u8> = payload.iter().take(2).copied().collect();
        match (self.mode, from) {
            (Mode::Proxmox, LegId::Browser) => {
                // pveproxy half-closes on a close frame and never answers
                // it (docs/proxmox.md §2.2): pass it on, answer the browser.
                self.queue_close(LegId::Upstream, raw.to_vec());
                self.queue_close(LegId::Browser, control_frame(OpCode::Close, &code2, false));
                self.finish();
            }
            (Mode::Bytes, _) => {
                // Only the browser sends frames here: answer it, FIN upstream.
                self.queue_close(LegId::Browser, control_frame(OpCode::Close, &code2, false));
                self.close_upstream(code);
                self.finish();
            }
            _ => {
                // End to end: forward the close byte for byte.
                if !self.out[from.i()].sent_close {
                    self.close_seen[from.i()] =
                        Some(frame::check_close_payload(payload).unwrap_or(close::PROTOCOL_ERROR));
                }
                self.queue_close(from.other(), raw.to_vec());
                if self.out[from.i()].sent_close {
                    // It answers a close already sent: handshake complete.
                    self.finish();
                } else {
                    self.begin_closing(now);
                }
            }
        }
    }

    /// Nothing more is written to `leg`, nor expected from it.
    fn mark_dead(&mut self, leg: LegId) {
        let o = &mut self.out[leg.i()];
        o.sent_close = true;
        o.dead = true;
        o.pong_due = None;
    }

    /// `leg` vanished (EOF, read or write error) without a close frame.
    /// `e` is None only for a console that really closed.
    fn leg_gone(&mut self, leg: LegId, e: Option<SessionError>, now: Instant) {
        self.mark_dead(leg);
        match leg {
            LegId::Browser => {
                self.record(1006, "browser_gone", Side::Browser, e);
                self.close_upstream(close::GOING_AWAY);
                self.finish();
            }
            LegId::Upstream => {
                let (code, reason) = if e.is_none() {
                    (close::NORMAL, "upstream_closed")
                } else {
                    (close::UPSTREAM_FAILED, "upstream_gone")
                };
                self.record(code, reason, Side::Upstream, e);
                // A browser whose close was on its way gets its answer.
                self.answer_close(LegId::Browser);
                self.close_browser(code, "");
                self.begin_closing(now);
            }
        }
    }

    /// `from` broke the protocol: close it with the matching code, close
    /// the other leg, wait for the answers.
    fn protocol_error(&mut self, from: LegId, e: FrameError, now: Instant) {
        self.dirs[from.i()].stopped = true;
        let se = err(from, "protocol", Some(e.label().to_string()));
        match from {
            LegId::Browser => {
                self.record(e.close_code(), e.label(), Side::Browser, Some(se));
                self.close_browser(e.close_code(), e.label());
                self.close_upstream(close::GOING_AWAY);
            }
            LegId::Upstream => {
                self.record(close::UPSTREAM_FAILED, e.label(), Side::Upstream, Some(se));
                self.close_upstream(e.close_code());
                self.close_browser(close::UPSTREAM_FAILED, "");
            }
        }
        self.begin_closing(now);
    }

    /// A view-only browser sent what the filter cannot follow: 1008 to
    /// it, the upstream closed, nothing more of the browser's is read.
    fn view_violation(&mut self, v: Violation, now: Instant) {
        self.dirs[LegId::Browser.i()].stopped = true;
        let se = err(
            LegId::Browser,
            "protocol",
            Some(format!("{}: {v}", Violation::LABEL)),
        );
        self.record(close::POLICY, Violation::LABEL, Side::Browser, Some(se));
        self.close_browser(close::POLICY, Violation::LABEL);
        self.close_upstream(close::GOING_AWAY);
        self.begin_closing(now);
    }

    /// `leg` answered no ping in time: it is dead. Close the other side
    /// with 1011 and end now.
    fn pong_timeout(&mut self, leg: LegId) {
        let e = Some(err(leg, "pong_timeout", None));
        self.mark_dead(leg);
        match leg {
            LegId::Browser => {
                self.record(1006, "pong_timeout", Side::Browser, e);
                self.close_upstream(close::UPSTREAM_FAILED);
            }
            LegId::Upstream => {
                self.record(close::UPSTREAM_FAILED, "pong_timeout", Side::Upstream, e);
                self.close_browser(close::UPSTREAM_FAILED, "");
            }
        }
        self.finish();
    }

    /// The glue caught a panic in the core: record it (best effort; the
    /// core may be inconsistent, so the glue writes the closes itself).
    pub fn panicked(&mut self) {
        self.end = Some(End {
            code: close::UPSTREAM_FAILED,
            reason: "panic",
            by: Side::Relay,
        });
        self.error = Some(SessionError {
            class: "panic",
            detail: None,
        });
        self.phase = Phase::Done;
    }
}

/// `payload` as complete binary frames for an upstream WebSocket: masked
/// with a fresh key (the relay is the client there), none over pveproxy's
/// cap.
fn masked_frames(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER);
    for chunk in payload.chunks(PVE_MAX_PAYLOAD as usize) {
        let key = mask::random_key();
        let h = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: Some(key),
            len: chunk.len() as u64,
        };
        let mut hb = [0u8; MAX_HEADER];
        let n = h.encode(&mut hb);
        out.extend_from_slice(&hb[..n]);
        let at = out.len();
        out.extend_from_slice(chunk);
        mask::apply(&mut out[at..], key, 0);
    }
    out
}

/// Extends the run of bytes to forward by `a..b`; returns the old run if
/// `a..b` does not follow it (it must be written first).
fn add(run: &mut Option<(usize, usize)>, a: usize, b: usize) -> Option<(usize, usize)> {
    match *run {
        Some((s, e)) if e == a => {
            *run = Some((s, b));
            None
        }
        old => {
            *run = Some((a, b));
            old
        }
    }
}

/// One step of a direction's walk over its read buffer: what the frames
/// say, before the core decides what it means for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// Bytes to pass on: whole frames (Frames), payload (unmasking walks,
    /// unmasked in place), or a re-cut piece.
    Data(std::ops::Range<usize>),
    /// A re-cut frame header (Proxmox), before its payload.
    Header {
        bytes: [u8; MAX_HEADER],
        len: u8,
    },
    /// View-only: what the filter let through, ready for the upstream;
    /// `count` payload bytes.
    Own {
        bytes: Vec<u8>,
        count: u64,
    },
    /// View-only: the filter cannot follow the browser's stream.
    Violation(Violation),
    /// A whole control frame at `at..end`; payload (still masked if it was)
    /// at `payload_at..end`.
    Control {
        at: usize,
        payload_at: usize,
        end: usize,
        header: FrameHeader,
    },
    Error(FrameError),
    /// All whole steps are walked: drop `consumed` bytes, read more.
    Read {
        consumed: usize,
    },
}

impl Dir {
    fn new(tracker: Option<Tracker>, unmask: bool, recut_mode: bool) -> Dir {
        Dir {
            tracker,
            unmask,
            recut_mode,
            pos: 0,
            run: None,
            recut: None,
            filter: None,
            reframe: false,
            held: None,
            stopped: false,
            raw_sent: false,
        }
    }

    /// Walks on from `pos`. Data is gathered into runs and handed out
    /// before anything that must follow it (a header, a control frame, an
    /// error, the end of the buffer). With `discard`, data is skipped.
    fn walk(&mut self, buf: &mut [u8], discard: bool) -> Walk {
        loop {
            if self.run.is_none() {
                if let Some(step) = self.held.take() {
                    return step;
                }
            }
            if let Some(rc) = self.recut.as_mut() {
                if rc.header_due {
                    if let Some(r) = self.run.take() {
                        return Walk::Data(r.0..r.1);
                    }
                    rc.header_due = false;
                    let h = FrameHeader {
                        fin: true,
                        rsv: 0,
                        opcode: OpCode::Binary,
                        mask: Some(rc.key),
                        len: (rc.total - rc.off).min(PVE_MAX_PAYLOAD),
                    };
                    if discard {
                        continue;
                    }
                    let mut bytes = [0u8; MAX_HEADER];
                    let len = h.encode(&mut bytes) as u8;
                    return Walk::Header { bytes, len };
                }
            }
            let end = match &self.recut {
                // Pieces end at multiples of 128 KiB (of 4): each starts at
                // mask phase 0, so the browser's key stays valid.
                Some(rc) => buf
                    .len()
                    .min(self.pos + (PVE_MAX_PAYLOAD - rc.off % PVE_MAX_PAYLOAD) as usize),
                None => buf.len(),
            };
            let at = self.pos;
            let tracker = self.tracker.as_mut().expect("tracked direction");
            match tracker.step(&buf[at..end]) {
                Err(e) => {
                    if let Some(r) = self.run.take() {
                        self.held = Some(Walk::Error(e));
                        return Walk::Data(r.0..r.1);
                    }
                    return Walk::Error(e);
                }
                Ok(None) => {
                    if let Some(r) = self.run.take() {
                        return Walk::Data(r.0..r.1);
                    }
                    let consumed = std::mem::take(&mut self.pos);
                    return Walk::Read { consumed };
                }
                Ok(Some(Step::DataHeader { len, header })) => {
                    self.pos += len;
                    if self.recut_mode && needs_recut(&header) {
                        // Our own headers replace this one; its payload
                        // passes unchanged, still masked with its key.
                        self.recut = (header.len > 0).then(|| Recut {
                            total: header.len,
                            key: header.mask.unwrap_or_default(),
                            off: 0,
                            header_due: true,
                        });
                        continue;
                    }
                    if self.unmask || discard {
                        continue;
                    }
                    if let Some(r) = add(&mut self.run, at, at + len) {
                        return Walk::Data(r.0..r.1);
                    }
                }
                Ok(Some(Step::Payload {
                    len, offset, mask, ..
                })) => {
                    self.pos += len;
                    if let Some(rc) = self.recut.as_mut() {
                        rc.off += len as u64;
                        if rc.off == rc.total {
                            self.recut = None;
                        } else if rc.off % PVE_MAX_PAYLOAD == 0 {
                            rc.header_due = true;
                        }
                    }
                    if discard {
                        continue;
                    }
                    if self.unmask {
                        if let Some(k) = mask {
                            mask::apply(&mut buf[at..at + len], k, offset);
                        }
                    }
                    if let Some(f) = self.filter.as_mut() {
                        // No run is ever open here: data leaves as Own.
                        let mut out = Vec::new();
                        if let Err(v) = f.feed(&buf[at..at + len], &mut out) {
                            return Walk::Violation(v);
                        }
                        if out.is_empty() {
                            continue;
                        }
                        let count = out.len() as u64;
                        let bytes = if self.reframe {
                            masked_frames(&out)
                        } else {
                            out
                        };
                        return Walk::Own { bytes, count };
                    }
                    if let Some(r) = add(&mut self.run, at, at + len) {
                        return Walk::Data(r.0..r.1);
                    }
                }
                Ok(Some(Step::Control {
                    len,
                    header,
                    payload_at,
                })) => {
                    self.pos += len;
                    self.held = Some(Walk::Control {
                        at,
                        payload_at: at + payload_at,
                        end: at + len,
                        header,
                    });
                    if let Some(r) = self.run.take() {
                        return Walk::Data(r.0..r.1);
                    }
                }
            }
        }
    }
}

/// The core's frame walk on its own, for the Proxmox preamble: payloads
/// come out unmasked in place (headers dropped), control frames whole.
pub struct Decoder(Dir);

impl Decoder {
    pub fn new(from: Sender, max_frame: u64) -> Decoder {
        Decoder(Dir::new(Some(Tracker::new(from, max_frame)), true, false))
    }

    /// The next step over `buf` (see [`Walk`]; never `Header`).
    pub fn walk(&mut self, buf: &mut [u8]) -> Walk {
        self.0.walk(buf, false)
    }

    /// Between frames: the pump's own tracker may take over here.
    pub fn at_boundary(&self) -> bool {
        self.0.tracker.as_ref().is_some_and(Tracker::at_boundary)
    }
}
