//! The core driven in memory: a browser and an upstream that send frames
//! (or raw bytes), every input cut into random chunks, the two directions
//! and the relay's own frames interleaved at random. Each case runs for
//! many seeds of a small xorshift generator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{Control, Core, LegId, Next, Phase, ReadEnd};
use super::{Mode, Outcome, Settings, Side, CLOSE_GRACE};
use crate::registry::CloseRequest;
use crate::ws::frame::{FrameHeader, OpCode, MAX_HEADER};
use crate::ws::mask;

/// xorshift64*: small, seeded, good enough to cut streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn frame(fin: bool, opcode: OpCode, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let h = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: key,
        len: payload.len() as u64,
    };
    let mut b = [0u8; MAX_HEADER];
    let n = h.encode(&mut b);
    let mut out = b[..n].to_vec();
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = key {
        mask::apply(&mut out[at..], k, 0);
    }
    out
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A parsed frame: header, unmasked payload, raw bytes.
#[derive(Debug)]
struct Parsed {
    h: FrameHeader,
    payload: Vec<u8>,
    raw: Vec<u8>,
}

fn parse_all(mut b: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (h, hl) = FrameHeader::parse(b)
            .expect("valid header")
            .expect("whole frame");
        let total = hl + h.len as usize;
        assert!(b.len() >= total, "truncated frame");
        let mut payload = b[hl..total].to_vec();
        if let Some(k) = h.mask {
            mask::apply(&mut payload, k, 0);
        }
        out.push(Parsed {
            h,
            payload,
            raw: b[..total].to_vec(),
        });
        b = &b[total..];
    }
    out
}

fn code_of(p: &Parsed) -> Option<u16> {
    (p.h.opcode == OpCode::Close && p.payload.len() >= 2)
        .then(|| u16::from_be_bytes([p.payload[0], p.payload[1]]))
}

fn settings() -> Settings {
    Settings {
        max_frame: 1 << 20,
        ping_interval: None,
        pong_timeout: None,
        lifetime: None,
        idle_timeout: None,
        view: None,
    }
}

/// The relay core between two in-memory peers.
struct Sim {
    core: Core,
    now: Instant,
    rng: Rng,
    /// What each peer sent (index: LegId), and how much the relay read.
    inbox: [Vec<u8>; 2],
    read: [usize; 2],
    /// The glue's read buffers.
    bufs: [Vec<u8>; 2],
    heads: [usize; 2],
    stopped: [bool; 2],
    /// What the relay wrote to each peer.
    outbox: [Vec<u8>; 2],
    shut: [bool; 2],
    /// Largest chunk the relay reads at once.
    max_chunk: u64,
}

impl Sim {
    fn new(mode: Mode, s: Settings, seed: u64) -> Sim {
        let now = Instant::now();
        let core = Core::new(mode, s, now);
        let heads = [
            core.headroom(LegId::Browser),
            core.headroom(LegId::Upstream),
        ];
        let mut rng = Rng::new(seed);
        let max_chunk = [1, 7, 200, 5000, 70_000][rng.below(5) as usize];
        Sim {
            core,
            now,
            rng,
            inbox: [Vec::new(), Vec::new()],
            read: [0, 0],
            bufs: [vec![0; heads[0]], vec![0; heads[1]]],
            heads,
            stopped: [false, false],
            outbox: [Vec::new(), Vec::new()],
            shut: [false, false],
            max_chunk,
        }
    }

    /// Walks a direction's buffer as the glue does, writing what it says.
    fn pump(&mut self, from: LegId) {
        let f = from as usize;
        let to = from.other() as usize;
        loop {
            if self.stopped[f] {
                return;
            }
            let next = self.core.next(from, &mut self.bufs[f], self.now);
            match next {
                Next::Stop => {
                    self.stopped[f] = true;
                    return;
                }
                Next::Read { consumed } => {
                    let h = self.heads[f];
                    self.bufs[f].drain(h..h + consumed);
                    return;
                }
                Next::Forward { range, .. } => {
                    assert!(!self.shut[to], "data after FIN");
                    let bytes = self.bufs[f][range].to_vec();
                    self.outbox[to].extend_from_slice(&bytes);
                }
                Next::Header { bytes, len } => {
                    self.outbox[to].extend_from_slice(&bytes[..len as usize]);
                }
                Next::Own { bytes, .. } => {
                    assert!(!self.shut[to], "data after FIN");
                    self.outbox[to].extend_from_slice(&bytes);
                }
            }
            // The relay's own frames may go out whenever the writer is free.
            if self.rng.chance(30) {
                self.controls(from.other());
            }
        }
    }

    /// Writes the relay's frames for `leg` if its writer is at a boundary.
    fn controls(&mut self, leg: LegId) {
        if self.core.mid_frame(leg.other()) {
            return;
        }
        while let Some(c) = self.core.take_control(leg) {
            match c {
                Control::Frame(f) => self.outbox[leg as usize].extend_from_slice(&f),
                Control::Shutdown => self.shut[leg as usize] = true,
            }
        }
    }

    /// Reads one random chunk from `leg` into the relay.
    fn deliver(&mut self, leg: LegId) -> bool {
        let l = leg as usize;
        let left = self.inbox[l].len() - self.read[l];
        if left == 0 || self.stopped[l] {
            return false;
        }
        let n = (1 + self.rng.below(self.max_chunk)).min(left as u64) as usize;
        let chunk = self.inbox[l][self.read[l]..self.read[l] + n].to_vec();
        self.read[l] += n;
        self.bufs[l].extend_from_slice(&chunk);
        self.core.on_read(leg, n, self.now);
        self.pump(leg);
        true
    }

    /// Random steps until both inboxes are read (or both directions stop).
    fn run(&mut self) {
        for leg in [LegId::Browser, LegId::Upstream] {
            // Early bytes: walked before the first read.
            self.pump(leg);
        }
        loop {
            let legs = [LegId::Browser, LegId::Upstream];
            let leg = legs[self.rng.below(2) as usize];
            if self.rng.chance(10) {
                self.controls(leg);
                continue;
            }
            if !self.deliver(leg) && !self.deliver(leg.other()) {
                break;
            }
        }
        self.controls(LegId::Browser);
        self.controls(LegId::Upstream);
    }

    fn pending(&self, leg: LegId) -> usize {
        self.inbox[leg as usize].len() - self.read[leg as usize]
    }

    fn timer(&mut self, at: Instant) {
        self.now = at;
        self.core.on_timer(at);
    }

    fn outcome(&self) -> Outcome {
        self.core.outcome()
    }

    fn frames_to(&self, leg: LegId) -> Vec<Parsed> {
        parse_all(&self.outbox[leg as usize])
    }
}

/// Browser messages: masked frames, some fragmented, some empty, some over
/// 128 KiB, pings between frames. Returns (wire bytes, data frames' raw
/// bytes, message payloads, last ping payload).
fn browser_stream(
    rng: &mut Rng,
    max: usize,
    big: usize,
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let (mut wire, mut raw, mut payloads, mut ping) = (Vec::new(), Vec::new(), Vec::new(), None);
    for _ in 0..1 + rng.below(12) {
        let parts = if rng.chance(25) { 1 + rng.below(4) } else { 1 };
        for i in 0..parts {
            let len = match rng.below(10) {
                0 => 0,
                1 => big,
                2 => rng.below(max as u64) as usize,
                _ => rng.below(300) as usize,
            };
            let data = rng.bytes(len);
            let op = if i > 0 {
                OpCode::Continuation
            } else if rng.chance(50) {
                OpCode::Binary
            } else {
                OpCode::Text
            };
            let key = (rng.next() as u32).to_be_bytes();
            let f = frame(i + 1 == parts, op, &data, Some(key));
            wire.extend_from_slice(&f);
            raw.extend_from_slice(&f);
            payloads.extend_from_slice(&data);
            if rng.chance(30) {
                let n = rng.below(126) as usize;
                let p = rng.bytes(n);
                let key = (rng.next() as u32).to_be_bytes();
                wire.extend_from_slice(&frame(true, OpCode::Ping, &p, Some(key)));
                ping = Some(p);
            }
            if rng.chance(10) {
                let key = (rng.next() as u32).to_be_bytes();
                wire.extend_from_slice(&frame(true, OpCode::Pong, b"x", Some(key)));
            }
        }
    }
    (wire, raw, payloads, ping)
}

/// Upstream frames (unmasked), pings between them.
fn upstream_stream(rng: &mut Rng, big: usize) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let (mut wire, mut raw, mut ping) = (Vec::new(), Vec::new(), None);
    for _ in 0..1 + rng.below(12) {
        let len = match rng.below(8) {
            0 => 0,
            1 => big / 2 + rng.below(big as u64 / 2) as usize,
            _ => rng.below(2000) as usize,
        };
        let f = frame(true, OpCode::Binary, &rng.bytes(len), None);
        wire.extend_from_slice(&f);
        raw.extend_from_slice(&f);
        if rng.chance(30) {
            let n = rng.below(126) as usize;
            let p = rng.bytes(n);
            wire.extend_from_slice(&frame(true, OpCode::Ping, &p, None));
            ping = Some(p);
        }
    }
    (wire, raw, ping)
}

fn data_raw(frames: &[Parsed]) -> Vec<u8> {
    frames
        .iter()
        .filter(|f| !f.h.opcode.is_control())
        .flat_map(|f| f.raw.clone())
        .collect()
}

fn data_payload(frames: &[Parsed]) -> Vec<u8> {
    frames
        .iter()
        .filter(|f| !f.h.opcode.is_control())
        .flat_map(|f| f.payload.clone())
        .collect()
}

fn last_pong(frames: &[Parsed]) -> Option<Vec<u8>> {
    frames
        .iter()
        .rev()
        .find(|f| f.h.opcode == OpCode::Pong)
        .map(|f| f.payload.clone())
}

/// One full session: both streams, keepalive pings ticking, then the
/// browser closes; every byte checked both ways.
fn session(mode: Mode, seed: u64) {
    let mut s = settings();
    s.ping_interval = Some(Duration::from_secs(1));
    let mut sim = Sim::new(mode, s, seed);
    // Byte-by-byte reads get smaller streams, to keep the test quick.
    let big = if sim.max_chunk < 100 { 3000 } else { 200_000 };
    let (b_wire, b_raw, b_payload, b_ping) = browser_stream(&mut sim.rng, big, big);
    let (u_wire, u_raw, u_ping) = match mode {
        Mode::Bytes => {
            let n = sim.rng.below(big as u64) as usize;
            let raw = sim.rng.bytes(n);
            (raw.clone(), raw, None)
        }
        _ => upstream_stream(&mut sim.rng, big),
    };
    // Some bytes arrived with the handshake (early bytes).
    for (leg, wire) in [(LegId::Browser, &b_wire), (LegId::Upstream, &u_wire)] {
        let l = leg as usize;
        if sim.rng.chance(30) {
            let n = sim.rng.below(wire.len() as u64 + 1) as usize;
            sim.bufs[l].extend_from_slice(&wire[..n]);
            sim.inbox[l] = wire[n..].to_vec();
        } else {
            sim.inbox[l] = wire.clone();
        }
    }
    // Keepalive pings land in the middle of the traffic.
    let t0 = sim.now;
    let mut tick = 0;
    while sim.pending(LegId::Browser) + sim.pending(LegId::Upstream) > 0 {
        for _ in 0..3 {
            let leg = [LegId::Browser, LegId::Upstream][sim.rng.below(2) as usize];
            sim.deliver(leg);
        }
        if sim.rng.chance(20) {
            tick += 1;
            sim.timer(t0 + Duration::from_secs(tick));
        }
        if sim.rng.chance(20) {
            let leg = [LegId::Browser, LegId::Upstream][sim.rng.below(2) as usize];
            sim.controls(leg);
        }
    }
    sim.run();
    assert_eq!(sim.core.phase(), Phase::Open, "seed {seed}");
    // The browser closes; in Frames mode the upstream answers.
    let key = (sim.rng.next() as u32).to_be_bytes();
    let bye = frame(true, OpCode::Close, &close_payload(1000, "bye"), Some(key));
    sim.inbox[0].extend_from_slice(&bye);
    sim.run();
    if mode == Mode::Frames {
        assert!(matches!(sim.core.phase(), Phase::Closing(_)), "seed {seed}");
        let answer = frame(true, OpCode::Close, &close_payload(1000, ""), None);
        sim.inbox[1].extend_from_slice(&answer);
        sim.run();
    }
    assert_eq!(sim.core.phase(), Phase::Done, "seed {seed}");
    let out = sim.outcome();
    assert_eq!(
        (out.code, out.reason, out.by, out.error),
        (1000, "close", Side::Browser, None),
        "seed {seed}"
    );

    let to_b = sim.frames_to(LegId::Browser);
    // Relay-made frames to the browser: unmasked, only pings, pongs and
    // the close, which is last.
    assert!(to_b.iter().all(|f| f.h.mask.is_none()), "seed {seed}");
    assert_eq!(to_b.last().and_then(code_of), Some(1000), "seed {seed}");
    if let Some(p) = b_ping {
        assert_eq!(
            last_pong(&to_b),
            Some(p),
            "latest browser ping answered, seed {seed}"
        );
    }
    assert!(
        to_b.iter().any(|f| f.h.opcode == OpCode::Ping) || tick == 0,
        "seed {seed}"
    );
    match mode {
        Mode::Bytes => {
            assert_eq!(data_payload(&to_b), u_raw, "seed {seed}");
            assert!(to_b
                .iter()
                .filter(|f| !f.h.opcode.is_control())
                .all(|f| f.h.fin && f.h.opcode == OpCode::Binary));
            assert_eq!(sim.outbox[1], b_payload, "seed {seed}");
            assert!(sim.shut[1], "upstream FIN, seed {seed}");
        }
        Mode::Frames | Mode::Proxmox => {
            assert_eq!(data_raw(&to_b), u_raw, "seed {seed}");
            let to_u = sim.frames_to(LegId::Upstream);
            assert!(to_u.iter().all(|f| f.h.mask.is_some()), "seed {seed}");
            assert_eq!(to_u.last().map(|f| f.raw.clone()), Some(bye.clone()));
            if let Some(p) = u_ping {
                assert_eq!(last_pong(&to_u), Some(p), "seed {seed}");
            }
            if mode == Mode::Frames {
                assert_eq!(data_raw(&to_u), b_raw, "seed {seed}");
            } else {
                assert_eq!(data_payload(&to_u), b_payload, "seed {seed}");
                for f in to_u.iter().filter(|f| !f.h.opcode.is_control()) {
                    assert!(f.h.fin && f.h.len <= 128 * 1024, "seed {seed}: {:?}", f.h);
                    assert_ne!(f.h.opcode, OpCode::Continuation);
                }
            }
        }
    }
    assert_eq!(out.bytes_down as usize, u_raw.len(), "seed {seed}");
}

#[test]
fn frames_mode_is_byte_exact_both_ways() {
    for seed in 0..150 {
        session(Mode::Frames, seed);
    }
}

#[test]
fn bytes_mode_is_byte_exact_both_ways() {
    for seed in 1000..1150 {
        session(Mode::Bytes, seed);
    }
}

#[test]
fn proxmox_mode_recuts_and_is_byte_exact_both_ways() {
    for seed in 2000..2150 {
        session(Mode::Proxmox, seed);
    }
}

fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, Some([1, 2, 3, 4]))
}

fn plain(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, None)
}

/// Feeds both wires in random chunks; returns the sim for inspection.
fn feed(mode: Mode, s: Settings, seed: u64, browser: &[u8], upstream: &[u8]) -> Sim {
    let mut sim = Sim::new(mode, s, seed);
    sim.inbox = [browser.to_vec(), upstream.to_vec()];
    sim.run();
    sim
}

fn last_close(sim: &Sim, leg: LegId) -> Option<u16> {
    sim.frames_to(leg).last().and_then(code_of)
}

fn summary(o: &Outcome) -> (u16, &'static str, Side, Option<&'static str>) {
    (o.code, o.reason, o.by, o.error.as_ref().map(|e| e.class))
}

#[test]
fn closes_go_end_to_end_per_mode() {
    for seed in 0..20 {
        // Upstream closes (Frames): forwarded, answered by the browser.
        let c = plain(OpCode::Close, &close_payload(4000, "vm off"));
        let mut sim = feed(Mode::Frames, settings(), seed, b"", &c);
        assert_eq!(sim.frames_to(LegId::Browser).last().unwrap().raw, c);
        assert!(matches!(sim.core.phase(), Phase::Closing(_)));
        sim.inbox[0].extend_from_slice(&masked(OpCode::Close, &close_payload(4000, "")));
        sim.run();
        assert_eq!(sim.core.phase(), Phase::Done);
        assert_eq!(
            summary(&sim.outcome()),
            (4000, "close", Side::Upstream, None)
        );
        // The browser closed; the upstream drops TCP instead of answering:
        // neither leg can say more, so no grace period is waited out.
        let c = masked(OpCode::Close, &close_payload(1000, ""));
        let mut sim = feed(Mode::Frames, settings(), seed, &c, b"");
        assert!(matches!(sim.core.phase(), Phase::Closing(_)));
        sim.core.on_read_end(LegId::Upstream, ReadEnd::Eof, sim.now);
        assert_eq!(sim.core.phase(), Phase::Done);
        sim.run();
        assert_eq!(last_close(&sim, LegId::Browser), Some(1000), "answered");
        assert_eq!(
            summary(&sim.outcome()),
            (1000, "close", Side::Browser, None)
        );
        // The browser closed; the upstream never answers and stays: after
        // the grace the relay answers the browser itself, with its code.
        let c = masked(OpCode::Close, &close_payload(4321, "bye"));
        let mut sim = feed(Mode::Frames, settings(), seed, &c, b"");
        assert!(matches!(sim.core.phase(), Phase::Closing(_)));
        assert_eq!(last_close(&sim, LegId::Browser), None);
        let at = sim.now + CLOSE_GRACE;
        sim.timer(at);
        assert_eq!(sim.core.phase(), Phase::Done);
        sim.run();
        assert_eq!(last_close(&sim, LegId::Browser), Some(4321), "answered");
        assert_eq!(sim.frames_to(LegId::Upstream).last().unwrap().raw, c);
        assert_eq!(
            summary(&sim.outcome()),
            (4321, "close", Side::Browser, None)
        );
        // Proxmox: a browser close is passed on and answered by the relay.
        let c = masked(OpCode::Close, &close_payload(1000, "bye"));
        let sim = feed(Mode::Proxmox, settings(), seed, &c, b"");
        assert_eq!(sim.core.phase(), Phase::Done);
        assert_eq!(sim.frames_to(LegId::Upstream).last().unwrap().raw, c);
        assert_eq!(last_close(&sim, LegId::Browser), Some(1000));
        assert_eq!(
            summary(&sim.outcome()),
            (1000, "close", Side::Browser, None)
        );
        // An empty close counts as 1000; Bytes mode answers it, FINs upstream.
        let sim = feed(
            Mode::Bytes,
            settings(),
            seed,
            &masked(OpCode::Close, b""),
            b"",
        );
        assert_eq!(sim.core.phase(), Phase::Done);
        assert!(sim.shut[1]);
        let f = sim.frames_to(LegId::Browser);
        assert_eq!(f.last().unwrap().h.opcode, OpCode::Close);
        assert_eq!(
            summary(&sim.outcome()),
            (1000, "close", Side::Browser, None)
        );
    }
}

#[test]
fn protocol_errors_get_their_codes_and_an_error_class() {
    for seed in 0..20 {
        let mut s = settings();
        s.max_frame = 100;
        let big = masked(OpCode::Binary, &[7; 200]);
        for mode in [Mode::Frames, Mode::Bytes, Mode::Proxmox] {
            let mut sim = feed(mode, s, seed, &big, b"");
            assert_eq!(last_close(&sim, LegId::Browser), Some(1009));
            assert_eq!(
                summary(&sim.outcome()),
                (
                    1009,
                    "frame_too_large",
                    Side::Browser,
                    Some("browser_protocol")
                )
            );
            assert_eq!(
                sim.outcome().error.unwrap().to_string(),
                "browser_protocol: frame_too_large"
            );
            if mode == Mode::Bytes {
                assert!(sim.shut[1]);
            } else {
                assert_eq!(last_close(&sim, LegId::Upstream), Some(1001));
            }
            // Nothing of the bad frame went upstream.
            assert!(
                sim.frames_to(LegId::Upstream)
                    .iter()
                    .all(|f| f.h.opcode == OpCode::Close)
                    || mode == Mode::Bytes
            );
            // Closing until the browser answers.
            assert!(matches!(sim.core.phase(), Phase::Closing(_)));
            let at = sim.now + CLOSE_GRACE;
            sim.timer(at);
            assert_eq!(sim.core.phase(), Phase::Done);
        }
        let sim = feed(
            Mode::Frames,
            settings(),
            seed,
            &plain(OpCode::Text, b"hi"),
            b"",
        );
        assert_eq!(last_close(&sim, LegId::Browser), Some(1002));
        assert_eq!(
            summary(&sim.outcome()),
            (
                1002,
                "unmasked_frame",
                Side::Browser,
                Some("browser_protocol")
            )
        );
        // The upstream breaks the rules: 1011 to the browser, 1002 to it.
        let sim = feed(
            Mode::Frames,
            settings(),
            seed,
            b"",
            &masked(OpCode::Text, b"hi"),
        );
        assert_eq!(last_close(&sim, LegId::Browser), Some(1011));
        assert_eq!(last_close(&sim, LegId::Upstream), Some(1002));
        assert_eq!(
            summary(&sim.outcome()),
            (
                1011,
                "masked_frame",
                Side::Upstream,
                Some("upstream_protocol")
            )
        );
    }
}

#[test]
fn vanished_legs_are_failures_except_a_console_that_closed() {
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    let tls = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::General("received plaintext buffer full".into()),
    );
    for mode in [Mode::Frames, Mode::Bytes, Mode::Proxmox] {
        let gone = |how: ReadEnd<'_>, leg: LegId| {
            let mut sim = feed(mode, settings(), 1, b"", b"");
            sim.core.on_read_end(leg, how, sim.now);
            sim.run();
            sim
        };
        // Upstream EOF: a tcp or Proxmox console that closed is a clean end.
        let sim = gone(ReadEnd::Eof, LegId::Upstream);
        let want = match mode {
            Mode::Frames => (1011, "upstream_gone", Side::Upstream, Some("upstream_eof")),
            _ => (1000, "upstream_closed", Side::Upstream, None),
        };
        assert_eq!(summary(&sim.outcome()), want, "{mode:?}");
        assert_eq!(last_close(&sim, LegId::Browser), Some(want.0));
        // Read errors never are.
        let sim = gone(ReadEnd::Error(&reset), LegId::Upstream);
        assert_eq!(
            summary(&sim.outcome()),
            (
                1011,
                "upstream_gone",
                Side::Upstream,
                Some("upstream_reset")
            )
        );
        assert_eq!(last_close(&sim, LegId::Browser), Some(1011));
        let sim = gone(ReadEnd::Error(&tls), LegId::Upstream);
        let e = sim.outcome().error.unwrap();
        assert_eq!(e.class, "upstream_tls");
        assert!(
            e.to_string().contains("received plaintext buffer full"),
            "{e}"
        );
        // The browser vanishing: 1006, the upstream told, ended at once.
        for (how, class) in [
            (ReadEnd::Eof, "browser_eof"),
            (ReadEnd::Error(&reset), "browser_reset"),
            (ReadEnd::Error(&tls), "browser_tls"),
        ] {
            let sim = gone(how, LegId::Browser);
            assert_eq!(sim.core.phase(), Phase::Done);
            assert_eq!(
                summary(&sim.outcome()),
                (1006, "browser_gone", Side::Browser, Some(class))
            );
            assert!(sim.outbox[0].is_empty());
            match mode {
                Mode::Bytes => assert!(sim.shut[1]),
                _ => assert_eq!(last_close(&sim, LegId::Upstream), Some(1001)),
            }
        }
        // Write failures.
        let mut sim = feed(mode, settings(), 1, b"", b"");
        sim.core.on_write_error(LegId::Upstream, &reset, sim.now);
        assert_eq!(
            summary(&sim.outcome()),
            (
                1011,
                "upstream_gone",
                Side::Upstream,
                Some("upstream_write")
            )
        );
        let mut sim = feed(mode, settings(), 1, b"", b"");
        sim.core.on_write_error(LegId::Browser, &reset, sim.now);
        assert_eq!(
            summary(&sim.outcome()),
            (1006, "browser_gone", Side::Browser, Some("browser_write"))
        );
    }
}

#[test]
fn the_relay_ends_sessions_without_an_error() {
    let mut s = settings();
    s.lifetime = Some(Duration::from_secs(100));
    s.idle_timeout = Some(Duration::from_secs(30));
    type Act<'a> = &'a dyn Fn(&mut Sim);
    let cases: [(Act, u16, &str); 5] = [
        (
            &|sim| sim.timer(sim.now + Duration::from_secs(100)),
            4002,
            "lifetime",
        ),
        (
            &|sim| sim.timer(sim.now + Duration::from_secs(30)),
            4003,
            "idle",
        ),
        (
            &|sim| sim.core.on_request(CloseRequest::Shutdown, sim.now),
            1001,
            "shutdown",
        ),
        (
            &|sim| sim.core.on_request(CloseRequest::Replaced, sim.now),
            4001,
            "replaced",
        ),
        (
            &|sim| sim.core.on_request(CloseRequest::Revoked, sim.now),
            1008,
            "revoked",
        ),
    ];
    for mode in [Mode::Frames, Mode::Bytes, Mode::Proxmox] {
        for (act, code, _) in &cases {
            let mut sim = feed(mode, s, 3, b"", b"");
            act(&mut sim);
            sim.run();
            let o = sim.outcome();
            assert_eq!((o.code, o.by, o.error.clone()), (*code, Side::Relay, None));
            assert_eq!(last_close(&sim, LegId::Browser), Some(*code));
            match mode {
                Mode::Bytes => assert!(sim.shut[1]),
                _ => assert_eq!(last_close(&sim, LegId::Upstream), Some(1001)),
            }
            // The browser answers: done.
            sim.inbox[0].extend_from_slice(&masked(OpCode::Close, &close_payload(*code, "")));
            sim.run();
            assert_eq!(sim.core.phase(), Phase::Done);
            assert_eq!(sim.outcome().code, *code);
        }
    }
    // Data keeps an idle session alive; pings do not.
    let mut sim = feed(Mode::Frames, s, 4, b"", b"");
    let t0 = sim.now;
    sim.now = t0 + Duration::from_secs(20);
    sim.inbox[1].extend_from_slice(&plain(OpCode::Binary, b"x"));
    sim.run();
    sim.timer(t0 + Duration::from_secs(31));
    assert_eq!(sim.core.phase(), Phase::Open);
    sim.inbox[0].extend_from_slice(&masked(OpCode::Ping, b"p"));
    sim.run();
    sim.timer(t0 + Duration::from_secs(50));
    assert_eq!(sim.outcome().reason, "idle");
}

#[test]
fn dead_legs_are_noticed_by_pong_timeout() {
    let mut s = settings();
    s.ping_interval = Some(Duration::from_secs(10));
    s.pong_timeout = Some(Duration::from_secs(20));
    for mode in [Mode::Frames, Mode::Bytes, Mode::Proxmox] {
        // Neither leg answers: the browser is checked first.
        let mut sim = feed(mode, s, 5, b"", b"");
        let t0 = sim.now;
        sim.timer(t0 + Duration::from_secs(10));
        sim.run();
        let pings = |sim: &Sim, leg| {
            sim.frames_to(leg)
                .iter()
                .filter(|f| f.h.opcode == OpCode::Ping)
                .count()
        };
        assert_eq!(pings(&sim, LegId::Browser), 1);
        assert_eq!(sim.core.deadline(), Some(t0 + Duration::from_secs(20)));
        sim.timer(t0 + Duration::from_secs(20));
        sim.run();
        assert_eq!(
            sim.core.phase(),
            Phase::Open,
            "a second ping does not restart the clock"
        );
        sim.timer(t0 + Duration::from_secs(30));
        sim.run();
        assert_eq!(sim.core.phase(), Phase::Done);
        assert_eq!(
            summary(&sim.outcome()),
            (
                1006,
                "pong_timeout",
                Side::Browser,
                Some("browser_pong_timeout")
            )
        );
        match mode {
            Mode::Bytes => {
                assert!(sim.shut[1]);
                assert!(sim.outbox[1].is_empty(), "tcp upstreams are not pinged");
            }
            _ => {
                assert_eq!(pings(&sim, LegId::Upstream), 2);
                assert_eq!(last_close(&sim, LegId::Upstream), Some(1011));
            }
        }
        // The browser answers; a silent upstream is the dead one.
        let mut sim = feed(mode, s, 6, b"", b"");
        let t0 = sim.now;
        for t in [10, 20, 30] {
            sim.timer(t0 + Duration::from_secs(t));
            sim.run();
            sim.inbox[0].extend_from_slice(&masked(OpCode::Pong, b"nexor"));
            sim.run();
        }
        if mode == Mode::Bytes {
            assert_eq!(sim.core.phase(), Phase::Open);
            continue;
        }
        assert_eq!(sim.core.phase(), Phase::Done);
        assert_eq!(
            summary(&sim.outcome()),
            (
                1011,
                "pong_timeout",
                Side::Upstream,
                Some("upstream_pong_timeout")
            )
        );
        assert_eq!(last_close(&sim, LegId::Browser), Some(1011));
    }
}

#[test]
fn control_frames_are_walked_in_place() {
    // 10,000 pongs behind a data frame, then half a frame: one walk, one
    // compaction, nothing copied or forwarded but the data frame.
    let mut core = Core::new(Mode::Frames, settings(), Instant::now());
    let now = Instant::now();
    let data = masked(OpCode::Binary, &[5; 1000]);
    let mut buf = data.clone();
    for _ in 0..10_000 {
        buf.extend_from_slice(&masked(OpCode::Pong, b""));
    }
    let whole = buf.len();
    buf.extend_from_slice(&data[..3]);
    core.on_read(LegId::Browser, buf.len(), now);
    assert_eq!(
        core.next(LegId::Browser, &mut buf, now),
        Next::Forward {
            range: 0..data.len(),
            count: data.len() as u64
        }
    );
    assert_eq!(
        core.next(LegId::Browser, &mut buf, now),
        Next::Read { consumed: whole }
    );
}

/// The glue around a core that panics, over real sockets: the session ends
/// with 1011 `panic` on both legs and a metric; the thread goes on and
/// runs the next session.
#[test]
fn a_panic_in_the_core_ends_only_its_session() {
    use super::{run_shared, Meter, Notify, Shared};
    use crate::transport::{Stream, WriterLock};
    use std::cell::{Cell, RefCell};
    use std::io::{Read, Write};
    use std::rc::Rc;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }
    fn peer(mut tcp: std::net::TcpStream, send: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tcp.write_all(&send).unwrap();
            let mut got = Vec::new();
            let _ = tcp.read_to_end(&mut got);
            got
        })
    }
    let metrics = Arc::new(crate::metrics::Metrics::new(1));
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let mut session = |panic_after: Option<u64>, browser_sends: Vec<u8>| {
        let (b_peer, b_relay) = pair();
        let (u_peer, u_relay) = pair();
        let b = peer(b_peer, browser_sends);
        let u = peer(u_peer, Vec::new());
        let m = metrics.clone();
        let out = rt.block_on(async move {
            let split = |t| Stream::Tcp(monoio::net::TcpStream::from_std(t).unwrap()).into_split();
            let (br, bw) = split(b_relay);
            let (ur, uw) = split(u_relay);
            let mut core = Core::new(Mode::Frames, settings(), Instant::now());
            core.panic_after = panic_after;
            let s = Rc::new(Shared {
                core: RefCell::new(core),
                locks: [WriterLock::new(bw), WriterLock::new(uw)],
                wake: Notify::default(),
                done: Default::default(),
                panicked: Cell::new(false),
                meter: Some(Meter {
                    metrics: m,
                    core: 0,
                    recording: None,
                }),
            });
            run_shared(s, br, Vec::new(), ur, Vec::new(), None).await
        });
        (out, b.join().unwrap(), u.join().unwrap())
    };
    let (out, to_b, to_u) = session(Some(1), masked(OpCode::Binary, b"boom"));
    assert_eq!(summary(&out), (1011, "panic", Side::Relay, Some("panic")));
    for wire in [to_b, to_u] {
        let f = parse_all(&wire);
        assert_eq!(f.last().and_then(code_of), Some(1011));
        assert_eq!(&f.last().unwrap().payload[2..], b"panic");
    }
    assert!(metrics.render().contains("nexor_session_panics_total 1"));
    // Same thread, next session: business as usual.
    let bye = masked(OpCode::Close, &close_payload(1000, ""));
    let mut send = masked(OpCode::Binary, b"hello");
    send.extend_from_slice(&bye);
    let (out, _, to_u) = session(None, send);
    assert_eq!(summary(&out).0, 1000);
    assert_eq!(data_payload(&parse_all(&to_u)), b"hello");
}

/// The preamble's decoder is the core's walk: payloads unmasked in place,
/// control frames whole, any chunking.
#[test]
fn the_preamble_decoder_walks_like_the_pump() {
    use super::core::{Decoder, Walk};
    use crate::ws::frame::Sender;
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let (wire, _, payloads, ping) = browser_stream(&mut rng, 3000, 3000);
        let mut dec = Decoder::new(Sender::Client, 1 << 20);
        let (mut buf, mut got, mut last_ping, mut at) = (Vec::new(), Vec::new(), None, 0);
        while at < wire.len() {
            let n = (1 + rng.below(500) as usize).min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            loop {
                match dec.walk(&mut buf) {
                    Walk::Data(r) => got.extend_from_slice(&buf[r]),
                    Walk::Control {
                        payload_at,
                        end,
                        header,
                        ..
                    } => {
                        if header.opcode == OpCode::Ping {
                            let mut p = buf[payload_at..end].to_vec();
                            mask::apply(&mut p, header.mask.unwrap(), 0);
                            last_ping = Some(p);
                        }
                    }
                    Walk::Read { consumed } => {
                        buf.drain(..consumed);
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(dec.at_boundary() && buf.is_empty());
        assert_eq!(got, payloads, "seed {seed}");
        assert_eq!(last_ping, ping, "seed {seed}");
    }
}

/// Garbage and half-valid frames on both legs, in every mode: the core
/// never panics, never writes more than it read plus its own few frames,
/// and whatever it wrote to a WebSocket peer parses as frames.
#[test]
fn hostile_bytes_never_panic_and_output_stays_bounded() {
    for seed in 0..3000 {
        let mode = [Mode::Frames, Mode::Bytes, Mode::Proxmox][seed as usize % 3];
        let mut s = settings();
        s.max_frame = 4096;
        let mut sim = Sim::new(mode, s, seed);
        let mut wires = [Vec::new(), Vec::new()];
        for wire in wires.iter_mut() {
            for _ in 0..sim.rng.below(20) {
                let n = sim.rng.below(200) as usize;
                let mut f = if sim.rng.chance(50) {
                    let op = OpCode::from_u8(sim.rng.below(16) as u8);
                    let key = sim
                        .rng
                        .chance(70)
                        .then(|| (sim.rng.next() as u32).to_be_bytes());
                    let payload = sim.rng.bytes(n);
                    frame(sim.rng.chance(80), op, &payload, key)
                } else {
                    sim.rng.bytes(n)
                };
                if sim.rng.chance(10) && !f.is_empty() {
                    let i = sim.rng.below(f.len() as u64) as usize;
                    f[i] ^= 1 << sim.rng.below(8);
                }
                wire.extend_from_slice(&f);
            }
        }
        let input = wires[0].len() + wires[1].len();
        sim.inbox = wires;
        sim.run();
        let at = sim.now + CLOSE_GRACE;
        sim.timer(at);
        sim.run();
        let out = sim.outbox[0].len() + sim.outbox[1].len();
        // Each raw read becomes a frame (one byte read: a 2-byte header).
        assert!(
            out <= 3 * input + 4 * 139,
            "seed {seed}: {out} out of {input}"
        );
        parse_all(&sim.outbox[0]);
        if mode != Mode::Bytes {
            parse_all(&sim.outbox[1]);
        }
    }
}

/// A view-only browser: noVNC's handshake and messages, input among them,
/// in frames cut anywhere (a message split over frames, pings between).
fn view_stream(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut msgs: Vec<(Vec<u8>, bool)> = vec![
        (b"RFB 003.008\n".to_vec(), true),
        (vec![1], true),
        (vec![0], false), // ClientInit: forced to 1 below
    ];
    for _ in 0..20 {
        msgs.push(match rng.below(5) {
            0 => (vec![3, 1, 0, 0, 0, 0, 2, 128, 1, 224], true),
            1 => (vec![4, 1, 0, 0, 0, 0, 0, 0x61], false),
            2 => (vec![5, 1, 0, 10, 0, 20], false),
            3 => {
                let mut m = vec![2, 0, 0, 3];
                m.extend_from_slice(&rng.bytes(12));
                (m, true)
            }
            _ => (vec![6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c'], false),
        });
    }
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (i, (m, keep)) in msgs.iter().enumerate() {
        stream.extend_from_slice(m);
        if *keep {
            expected.extend_from_slice(m);
        } else if i == 2 {
            expected.push(1);
        }
    }
    let mut wire = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = (1 + rng.below(30) as usize).min(stream.len() - at);
        let key = (rng.next() as u32).to_be_bytes();
        let op = if rng.chance(50) {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        wire.extend_from_slice(&frame(true, op, &stream[at..at + n], Some(key)));
        if rng.chance(20) {
            wire.extend_from_slice(&masked(OpCode::Ping, b"p"));
        }
        at += n;
    }
    (wire, expected)
}

fn view_settings(view: super::viewonly::View) -> Settings {
    let mut s = settings();
    s.view = Some(super::viewonly::ViewFilter::new(view));
    s
}

#[test]
fn view_only_sessions_pass_only_what_the_filter_lets_through() {
    use super::viewonly::View;
    for seed in 0..40 {
        let mut rng = Rng::new(seed);
        let (wire, expected) = view_stream(&mut rng);
        let down = plain(OpCode::Binary, b"RFB 003.008\n");
        for mode in [Mode::Bytes, Mode::Frames, Mode::Proxmox] {
            let up_wire: &[u8] = if mode == Mode::Bytes {
                b"RFB 003.008\n"
            } else {
                &down
            };
            let sim = feed(
                mode,
                view_settings(View::RfbHandshake),
                seed,
                &wire,
                up_wire,
            );
            let got = if mode == Mode::Bytes {
                sim.outbox[1].clone()
            } else {
                // Whole masked binary frames under pveproxy's cap.
                let frames = sim.frames_to(LegId::Upstream);
                for f in &frames {
                    assert!(f.h.fin && f.h.mask.is_some(), "{mode:?}");
                    assert!(f.h.opcode == OpCode::Binary && f.h.len <= 128 * 1024);
                }
                data_payload(&frames)
            };
            assert_eq!(got, expected, "seed {seed} {mode:?}");
            assert_eq!(sim.outcome().bytes_up, expected.len() as u64);
            // Pings are still answered, the console's output still flows.
            assert!(last_pong(&sim.frames_to(LegId::Browser)).is_some() || !wire_has_ping(&wire));
            assert_eq!(
                data_payload(&sim.frames_to(LegId::Browser)),
                b"RFB 003.008\n"
            );
        }
    }
}

fn wire_has_ping(wire: &[u8]) -> bool {
    parse_all(wire).iter().any(|f| f.h.opcode == OpCode::Ping)
}

#[test]
fn a_view_only_violation_ends_the_session_with_1008() {
    use super::viewonly::View;
    for seed in 0..20 {
        let mut wire = masked(OpCode::Binary, &[3, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
        // gii (253): not a message noVNC sends, its length unknown here.
        wire.extend_from_slice(&masked(OpCode::Binary, &[253, 0, 0, 4, 1, 2, 3, 4]));
        wire.extend_from_slice(&masked(OpCode::Binary, &[3, 0, 0, 0, 0, 0, 0, 1, 0, 1]));
        for mode in [Mode::Frames, Mode::Bytes, Mode::Proxmox] {
            let sim = feed(mode, view_settings(View::Rfb), seed, &wire, b"");
            assert_eq!(last_close(&sim, LegId::Browser), Some(1008));
            let close = sim.frames_to(LegId::Browser);
            assert_eq!(&close.last().unwrap().payload[2..], b"view_only_violation");
            assert_eq!(
                summary(&sim.outcome()),
                (
                    1008,
                    "view_only_violation",
                    Side::Browser,
                    Some("browser_protocol")
                )
            );
            assert_eq!(
                sim.outcome().error.unwrap().to_string(),
                "browser_protocol: view_only_violation: unknown RFB message type 253"
            );
            // Only the request before it went upstream.
            assert_eq!(sim.outcome().bytes_up, 10);
            if mode == Mode::Bytes {
                assert_eq!(sim.outbox[1], [3, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
                assert!(sim.shut[1]);
            } else {
                assert_eq!(last_close(&sim, LegId::Upstream), Some(1001));
            }
        }
    }
}
