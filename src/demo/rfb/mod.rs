//! Demo VNC screen: an RFB server (RFC 6143) with security type None that
//! draws a moving test pattern in Raw encoding.
//!
//! Owns the whole server side of one RFB connection: the handshake (§7.1
//! ProtocolVersion, §7.1.2 Security, §7.1.3 SecurityResult), initialisation
//! (§7.3.1 ClientInit, §7.3.2 ServerInit), the client messages of §7.5 and
//! FramebufferUpdate (§7.6.1) with Raw encoding (§7.7.1). Pure: bytes and a
//! `now` in, bytes out (see [`crate::demo`]).
//!
//! # Handshake (server → S, client → C)
//!
//! ```text
//! S: "RFB 003.008\n"
//! C: "RFB 003.00x\n"            x = 3 (also 4, 5), 7 or 8 (also any 3.y, y > 8)
//! 3.7 / 3.8:  S: 01 01           one security type: 1 = None
//!             C: 01              the client's choice; anything else → error
//!             S: 00 00 00 00     SecurityResult OK — 3.8 only (§7.1.3: 3.8 sends it
//!                                also for None; 3.7 does not)
//! 3.3:        S: 00 00 00 01     u32 security type None, no SecurityResult
//! C: ClientInit  u8 shared-flag (value ignored: every client may share)
//! S: ServerInit  u16 width, u16 height, 16-byte PIXEL_FORMAT, u32 name-length, name
//! ```
//!
//! PIXEL_FORMAT (§7.4), 16 bytes; the server's own is 32 bpp, depth 24,
//! little-endian, true colour, max 255/255/255, shifts 16/8/0:
//!
//! ```text
//! u8 bits-per-pixel | u8 depth | u8 big-endian | u8 true-colour
//! u16 red-max | u16 green-max | u16 blue-max
//! u8 red-shift | u8 green-shift | u8 blue-shift | 3 × padding
//! ```
//!
//! # Client messages (§7.5), all big-endian
//!
//! ```text
//! 0 SetPixelFormat            u8 0, 3 pad, PIXEL_FORMAT                      20 bytes
//! 2 SetEncodings              u8 2, 1 pad, u16 n, n × s32 encoding         4 + 4n bytes
//! 3 FramebufferUpdateRequest  u8 3, u8 incremental, u16 x, y, w, h          10 bytes
//! 4 KeyEvent                  u8 4, u8 down, 2 pad, u32 keysym               8 bytes
//! 5 PointerEvent              u8 5, u8 button-mask, u16 x, y                 6 bytes
//! 6 ClientCutText             u8 6, 3 pad, u32 len, len × text           8 + len bytes
//! ```
//!
//! SetPixelFormat is honoured for true-colour 8/16/32 bpp in either byte order
//! and with any max/shift; anything else is an error. SetEncodings, KeyEvent
//! and PointerEvent are read and ignored (only Raw is ever sent; Raw needs no
//! negotiation). ClientCutText is skipped as it streams past, never stored, and
//! refused above [`MAX_CUT_TEXT`]. Any other message type is an error.
//!
//! # The picture
//!
//! ```text
//! y 0 .. ¾h         static colour bars: white yellow cyan green magenta red blue black
//! y ¾h .. ¾h+60     live band: the same bars scrolling right at 60 px/s, and a
//!                   16×16 block (black, white border) bouncing left↔right at 120 px/s
//! below             static grey ramp, black → white
//! ```
//!
//! Only the live band ever changes, so the client's picture always equals the
//! server's current frame at the time of its last update.
//!
//! # Updates and flow control
//!
//! One FramebufferUpdate (one Raw rectangle, or zero rectangles) answers all
//! requests outstanding when it is sent; nothing is sent without an
//! outstanding request. Updates are at least [`MIN_INTERVAL`] (100 ms) apart,
//! except the first, which goes out at once:
//!
//! * non-incremental request: the requested rectangle clipped to the screen,
//!   at once (or, if an update went out less than 100 ms ago, when that
//!   interval ends — bounding what a flood of 10-byte requests can make the
//!   relay send). A rectangle wholly off-screen is answered with zero
//!   rectangles.
//! * incremental request: the requested rectangle ∩ the live band (640×60 at
//!   640×480: ~150 KB per update at 32 bpp, ≤ 1.5 MB/s), when due. A request
//!   that does not meet the band waits until a later request widens it, since
//!   nothing in it ever changes (`next_tick` is then `None`). An incremental
//!   request before any update has been sent is treated as non-incremental.
//!
//! Pixels are encoded in the client's pixel format current when the update is
//! sent.

use std::time::Duration;

use super::{Backend, DemoError, MAX_PENDING};

/// Default screen width in pixels.
pub const WIDTH: u16 = 640;
/// Default screen height in pixels.
pub const HEIGHT: u16 = 480;
/// Default desktop name sent in ServerInit.
pub const NAME: &str = "nexor-relay demo";
/// Largest ClientCutText accepted (1 MiB); longer → [`DemoError::CutTextTooLong`].
pub const MAX_CUT_TEXT: u32 = 1024 * 1024;
/// Minimum time between two FramebufferUpdates (the first goes out at once).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The version the server announces (§7.1.1).
const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";
/// Reason sent with a failed 3.8 SecurityResult.
const BAD_SECURITY_REASON: &[u8] = b"security type not offered";
/// Height of the live (animated) band in pixels.
const BAND_HEIGHT: u16 = 60;
/// Side of the bouncing block in pixels.
const BLOCK: u16 = 16;
/// Scroll speed of the bars in the live band, px/s.
const SCROLL_PX_PER_S: u128 = 60;
/// Speed of the bouncing block, px/s.
const BLOCK_PX_PER_S: u128 = 120;

/// White, yellow, cyan, green, magenta, red, blue, black.
const BARS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
    [0, 0, 0],
];

/// A true-colour pixel format (RFC 6143 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    /// 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Informational; not used to encode.
    pub depth: u8,
    /// Multi-byte pixels are sent most significant byte first.
    pub big_endian: bool,
    /// Maximum red value (e.g. 255, or 31 for RGB565).
    pub red_max: u16,
    /// Maximum green value.
    pub green_max: u16,
    /// Maximum blue value.
    pub blue_max: u16,
    /// Left shift of the red value within the pixel.
    pub red_shift: u8,
    /// Left shift of the green value.
    pub green_shift: u8,
    /// Left shift of the blue value.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's native format: 32 bpp, depth 24, little-endian, true
    /// colour, max 255/255/255, shifts r=16 g=8 b=0.
    pub const SERVER: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// Parses the 16-byte PIXEL_FORMAT.
    ///
    /// # Errors
    /// [`DemoError::UnsupportedPixelFormat`] unless true-colour 8/16/32 bpp.
    pub fn parse(b: &[u8; 16]) -> Result<PixelFormat, DemoError> {
        let bits_per_pixel = b[0];
        let true_colour = b[3] != 0;
        if !true_colour || !matches!(bits_per_pixel, 8 | 16 | 32) {
            return Err(DemoError::UnsupportedPixelFormat {
                bits_per_pixel,
                true_colour,
            });
        }
        Ok(PixelFormat {
            bits_per_pixel,
            depth: b[1],
            big_endian: b[2] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        })
    }

    /// The 16-byte wire form (always true colour).
    pub fn to_bytes(&self) -> [u8; 16] {
        let [rm0, rm1] = self.red_max.to_be_bytes();
        let [gm0, gm1] = self.green_max.to_be_bytes();
        let [bm0, bm1] = self.blue_max.to_be_bytes();
        [
            self.bits_per_pixel,
            self.depth,
            u8::from(self.big_endian),
            1,
            rm0,
            rm1,
            gm0,
            gm1,
            bm0,
            bm1,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
            0,
            0,
            0,
        ]
    }

    /// Bytes per pixel (1, 2 or 4).
    fn bytes(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// Appends one pixel of colour `rgb` (0..=255 each) in this format.
    /// Channels are scaled to their max; bits shifted past 32 are dropped.
    fn put(&self, rgb: [u8; 3], out: &mut Vec<u8>) {
        let chan = |v: u8, max: u16, shift: u8| -> u32 {
            let scaled = u32::from(v) * u32::from(max) / 255;
            scaled.checked_shl(u32::from(shift)).unwrap_or(0)
        };
        let value = chan(rgb[0], self.red_max, self.red_shift)
            | chan(rgb[1], self.green_max, self.green_shift)
            | chan(rgb[2], self.blue_max, self.blue_shift);
        let n = self.bytes();
        if self.big_endian {
            out.extend_from_slice(&value.to_be_bytes()[4 - n..]);
        } else {
            out.extend_from_slice(&value.to_le_bytes()[..n]);
        }
    }
}

/// A screen rectangle, already clipped; empty when `w == 0 || h == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x: u16,
    y: u16,
    w: u16,
    h: u16,
}

impl Rect {
    const EMPTY: Rect = Rect {
        x: 0,
        y: 0,
        w: 0,
        h: 0,
    };

    fn is_empty(self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// `x, y, w, h` clipped to a `width × height` screen.
    fn clipped(x: u16, y: u16, w: u16, h: u16, width: u16, height: u16) -> Rect {
        let x0 = x.min(width);
        let y0 = y.min(height);
        let x1 = (u32::from(x) + u32::from(w)).min(u32::from(width));
        let y1 = (u32::from(y) + u32::from(h)).min(u32::from(height));
        // x1 ≤ width ≤ u16::MAX, so the differences fit a u16.
        let w = u16::try_from(x1.saturating_sub(u32::from(x0))).unwrap_or(0);
        let h = u16::try_from(y1.saturating_sub(u32::from(y0))).unwrap_or(0);
        if w == 0 || h == 0 {
            Rect::EMPTY
        } else {
            Rect { x: x0, y: y0, w, h }
        }
    }

    fn intersect(self, o: Rect) -> Rect {
        let x0 = self.x.max(o.x);
        let y0 = self.y.max(o.y);
        let x1 = (self.x + self.w).min(o.x + o.w);
        let y1 = (self.y + self.h).min(o.y + o.h);
        if x1 <= x0 || y1 <= y0 {
            Rect::EMPTY
        } else {
            Rect {
                x: x0,
                y: y0,
                w: x1 - x0,
                h: y1 - y0,
            }
        }
    }

    /// Bounding box of both (clipped rects, so no overflow).
    fn union(self, o: Rect) -> Rect {
        if self.is_empty() {
            return o;
        }
        if o.is_empty() {
            return self;
        }
        let x0 = self.x.min(o.x);
        let y0 = self.y.min(o.y);
        let x1 = (self.x + self.w).max(o.x + o.w);
        let y1 = (self.y + self.h).max(o.y + o.h);
        Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }
}

/// Negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V33,
    V37,
    V38,
}

/// Where the parser is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 12-byte ProtocolVersion.
    Version,
    /// Waiting for the 1-byte security type choice (3.7 / 3.8).
    Security(Version),
    /// Waiting for the 1-byte ClientInit.
    ClientInit,
    /// Between messages, or inside a fixed-size one (in `buf`).
    Message,
    /// Inside SetEncodings: this many 4-byte encodings still to read.
    Encodings(u16),
    /// Inside ClientCutText: this many text bytes still to skip.
    CutText(u32),
    /// A protocol error happened; all input is refused.
    Failed,
}

/// Outstanding FramebufferUpdateRequest(s), merged.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// False if any merged request was non-incremental.
    incremental: bool,
    /// Bounding box of the requested rectangles, clipped to the screen.
    rect: Rect,
}

/// The demo RFB server for `console = "vnc"`. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RfbDemo {
    width: u16,
    height: u16,
    name: String,
    phase: Phase,
    /// Bytes of the current fixed-size step (≤ 20).
    buf: Vec<u8>,
    format: PixelFormat,
    pending: Option<Pending>,
    last_update: Option<Duration>,
}

impl Default for RfbDemo {
    /// [`WIDTH`] × [`HEIGHT`], named [`NAME`].
    fn default() -> Self {
        RfbDemo::new(WIDTH, HEIGHT, NAME)
    }
}

impl RfbDemo {
    /// A server for a `width × height` screen called `name` (a zero size is
    /// raised to 1).
    pub fn new(width: u16, height: u16, name: &str) -> RfbDemo {
        RfbDemo {
            width: width.max(1),
            height: height.max(1),
            name: name.to_owned(),
            phase: Phase::Version,
            buf: Vec::with_capacity(20),
            format: PixelFormat::SERVER,
            pending: None,
            last_update: None,
        }
    }

    /// The pixel format updates are currently encoded in.
    pub fn pixel_format(&self) -> PixelFormat {
        self.format
    }

    /// True once ServerInit has been sent (normal protocol phase).
    pub fn is_initialised(&self) -> bool {
        matches!(
            self.phase,
            Phase::Message | Phase::Encodings(_) | Phase::CutText(_)
        )
    }

    /// The animated band: full width, rows ¾h .. ¾h + 60 (clipped).
    fn band(&self) -> Rect {
        let y = u16::try_from(u32::from(self.height) * 3 / 4).unwrap_or(0);
        Rect::clipped(0, y, self.width, BAND_HEIGHT, self.width, self.height)
    }

    /// Bytes the current step needs in `buf`, or an error for an unknown
    /// message type.
    fn need(&self) -> Result<usize, DemoError> {
        Ok(match self.phase {
            Phase::Version => 12,
            Phase::Security(_) | Phase::ClientInit => 1,
            Phase::Encodings(_) => 4,
            Phase::Message => match self.buf.first() {
                None => 1,
                Some(0) => 20,
                Some(2) => 4,
                Some(3) => 10,
                Some(4) => 8,
                Some(5) => 6,
                Some(6) => 8,
                Some(&t) => return Err(DemoError::UnknownMessage(t)),
            },
            // Not reached: handled before `need` in `consume`.
            Phase::CutText(_) | Phase::Failed => 0,
        })
    }

    fn consume(
        &mut self,
        mut input: &[u8],
        now: Duration,
        out: &mut Vec<u8>,
    ) -> Result<(), DemoError> {
        loop {
            if let Phase::CutText(left) = self.phase {
                let skip = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                input = &input[skip..];
                // skip ≤ left, so this fits and does not underflow.
                let left = left - u32::try_from(skip).unwrap_or(left);
                self.phase = if left == 0 {
                    Phase::Message
                } else {
                    Phase::CutText(left)
                };
                if left > 0 {
                    return Ok(());
                }
                continue;
            }
            let need = self.need()?;
            let have = self.buf.len();
            if have < need {
                if input.is_empty() {
                    if have > MAX_PENDING {
                        return Err(DemoError::PendingTooLarge(have));
                    }
                    return Ok(());
                }
                let take = (need - have).min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                input = &input[take..];
                continue;
            }
            // `buf` holds exactly one complete step.
            let msg = std::mem::take(&mut self.buf);
            let r = self.step(&msg, now, out);
            self.buf = msg;
            self.buf.clear();
            r?;
        }
    }

    /// Acts on one complete step held in `m` (its length is `need()`).
    fn step(&mut self, m: &[u8], now: Duration, out: &mut Vec<u8>) -> Result<(), DemoError> {
        match self.phase {
            Phase::Version => {
                let v = parse_version(m)?;
                match v {
                    Version::V33 => {
                        out.extend_from_slice(&1u32.to_be_bytes());
                        self.phase = Phase::ClientInit;
                    }
                    Version::V37 | Version::V38 => {
                        out.extend_from_slice(&[1, 1]);
                        self.phase = Phase::Security(v);
                    }
                }
            }
            Phase::Security(v) => {
                let choice = m[0];
                if choice != 1 {
                    if v == Version::V38 {
                        // §7.1.3: SecurityResult failed (1) + reason, 3.8 only.
                        out.extend_from_slice(&1u32.to_be_bytes());
                        out.extend_from_slice(&(BAD_SECURITY_REASON.len() as u32).to_be_bytes());
                        out.extend_from_slice(BAD_SECURITY_REASON);
                    }
                    return Err(DemoError::BadSecurityType(choice));
                }
                if v == Version::V38 {
                    out.extend_from_slice(&0u32.to_be_bytes());
                }
                self.phase = Phase::ClientInit;
            }
            Phase::ClientInit => {
                // The shared-flag is ignored: the demo lets every client share.
                self.server_init(out);
                self.phase = Phase::Message;
            }
            Phase::Encodings(left) => {
                // Encodings are noted by nobody: the demo only sends Raw, which
                // needs no negotiation.
                let left = left.saturating_sub(1);
                self.phase = if left == 0 {
                    Phase::Message
                } else {
                    Phase::Encodings(left)
                };
            }
            Phase::Message => self.message(m, now, out)?,
            Phase::CutText(_) | Phase::Failed => {}
        }
        Ok(())
    }

    /// One complete fixed-size client message (§7.5).
    fn message(&mut self, m: &[u8], now: Duration, out: &mut Vec<u8>) -> Result<(), DemoError> {
        match m[0] {
            0 => {
                let mut pf = [0u8; 16];
                pf.copy_from_slice(&m[4..20]);
                self.format = PixelFormat::parse(&pf)?;
            }
            2 => {
                let n = u16::from_be_bytes([m[2], m[3]]);
                if n > 0 {
                    self.phase = Phase::Encodings(n);
                }
            }
            3 => {
                let incremental = m[1] != 0;
                let be = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
                let rect = Rect::clipped(be(2), be(4), be(6), be(8), self.width, self.height);
                self.request(incremental, rect, now, out);
            }
            // KeyEvent, PointerEvent: accepted and ignored.
            4 | 5 => {}
            6 => {
                let len = u32::from_be_bytes([m[4], m[5], m[6], m[7]]);
                if len > MAX_CUT_TEXT {
                    return Err(DemoError::CutTextTooLong(len));
                }
                if len > 0 {
                    self.phase = Phase::CutText(len);
                }
            }
            t => return Err(DemoError::UnknownMessage(t)),
        }
        Ok(())
    }

    fn request(&mut self, incremental: bool, rect: Rect, now: Duration, out: &mut Vec<u8>) {
        // Before any update the client has nothing to increment on.
        let incremental = incremental && self.last_update.is_some();
        self.pending = Some(match self.pending {
            None => Pending { incremental, rect },
            Some(p) => Pending {
                incremental: p.incremental && incremental,
                rect: p.rect.union(rect),
            },
        });
        self.send_due(now, out);
    }

    /// The rectangle to send for the pending request, or None if the request
    /// can never be answered as it stands (incremental, outside the band).
    fn pending_rect(&self) -> Option<Rect> {
        let p = self.pending?;
        if p.incremental {
            let r = p.rect.intersect(self.band());
            (!r.is_empty()).then_some(r)
        } else {
            Some(p.rect)
        }
    }

    fn due_at(&self) -> Duration {
        self.last_update
            .map_or(Duration::ZERO, |t| t.saturating_add(MIN_INTERVAL))
    }

    /// Sends the pending update if one is answerable and due.
    fn send_due(&mut self, now: Duration, out: &mut Vec<u8>) {
        let Some(rect) = self.pending_rect() else {
            return;
        };
        if now < self.due_at() {
            return;
        }
        self.pending = None;
        self.last_update = Some(now);
        self.framebuffer_update(rect, now, out);
    }

    /// ServerInit (§7.3.2).
    fn server_init(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.width.to_be_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&PixelFormat::SERVER.to_bytes());
        let name = self.name.as_bytes();
        let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&name[..usize::try_from(len).unwrap_or(0).min(name.len())]);
    }

    /// FramebufferUpdate (§7.6.1) with one Raw rectangle (§7.7.1), or none if
    /// `rect` is empty:
    ///
    /// ```text
    /// u8 0 | pad | u16 n-rects | n × (u16 x, y, w, h | s32 encoding 0 | w·h pixels)
    /// ```
    fn framebuffer_update(&self, rect: Rect, now: Duration, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, 0]);
        if rect.is_empty() {
            out.extend_from_slice(&0u16.to_be_bytes());
            return;
        }
        out.extend_from_slice(&1u16.to_be_bytes());
        for v in [rect.x, rect.y, rect.w, rect.h] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&0i32.to_be_bytes());
        out.reserve(usize::from(rect.w) * usize::from(rect.h) * self.format.bytes());
        let frame = Frame::at(self, now);
        for y in rect.y..rect.y + rect.h {
            for x in rect.x..rect.x + rect.w {
                self.format.put(frame.colour(x, y), out);
            }
        }
    }
}

/// The animation state of one frame.
struct Frame {
    width: u32,
    band_y0: u32,
    /// First row below the band (the grey ramp starts here).
    band_y1: u32,
    /// Scroll offset of the band's bars, 0..width.
    offset: u32,
    /// Block's top-left corner and side.
    block_x: u32,
    block_y: u32,
    block: u32,
}

impl Frame {
    fn at(demo: &RfbDemo, now: Duration) -> Frame {
        let width = u32::from(demo.width);
        let band = demo.band();
        let band_y0 = u32::from(band.y);
        let band_y1 = band_y0 + u32::from(band.h);
        let ms = now.as_millis();
        let offset = u32::try_from(ms * SCROLL_PX_PER_S / 1000 % u128::from(width)).unwrap_or(0);
        let block = u32::from(BLOCK).min(width).min(u32::from(band.h));
        let travel = u128::from(width - block);
        let block_x = if travel == 0 {
            0
        } else {
            let p = ms * BLOCK_PX_PER_S / 1000 % (2 * travel);
            u32::try_from(if p > travel { 2 * travel - p } else { p }).unwrap_or(0)
        };
        Frame {
            width,
            band_y0,
            band_y1,
            offset,
            block_x,
            block_y: band_y0 + (u32::from(band.h) - block) / 2,
            block,
        }
    }

    fn bar(&self, x: u32) -> [u8; 3] {
        let i = usize::try_from(x * 8 / self.width).unwrap_or(7).min(7);
        BARS[i]
    }

    fn colour(&self, x: u16, y: u16) -> [u8; 3] {
        let (x, y) = (u32::from(x), u32::from(y));
        if y < self.band_y0 {
            return self.bar(x);
        }
        if y >= self.band_y1 {
            let v = if self.width > 1 {
                x * 255 / (self.width - 1)
            } else {
                255
            };
            let v = u8::try_from(v).unwrap_or(255);
            return [v, v, v];
        }
        let (bx, by, b) = (self.block_x, self.block_y, self.block);
        if x >= bx && x < bx + b && y >= by && y < by + b {
            let border = x < bx + 2 || x + 2 >= bx + b || y < by + 2 || y + 2 >= by + b;
            return if border { [255, 255, 255] } else { [0, 0, 0] };
        }
        // Bars move right: the pixel at x shows what was at x - offset.
        self.bar((x + self.width - self.offset) % self.width)
    }
}

/// Parses `RFB xxx.yyy\n` (§7.1.1).
///
/// Accepted: 3.3, 3.7, 3.8; 3.4 and 3.5 are treated as 3.3 (as QEMU does, and
/// as RFC 6143 §7.1.1 advises for unknown versions below 3.7: they do not do
/// the 3.7/3.8 security handshake); any 3.y with y > 8 (e.g. Apple's 3.889) is
/// treated as 3.8, the highest we speak. Everything else (3.0–3.2, 3.6, other
/// majors, malformed) is refused.
fn parse_version(m: &[u8]) -> Result<Version, DemoError> {
    let mut raw = [0u8; 12];
    let n = m.len().min(12);
    raw[..n].copy_from_slice(&m[..n]);
    let bad = || DemoError::BadVersion(raw);
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if &raw[..4] != b"RFB " || raw[7] != b'.' || raw[11] != b'\n' {
        return Err(bad());
    }
    let (Some(major), Some(minor)) = (digits(&raw[4..7]), digits(&raw[8..11])) else {
        return Err(bad());
    };
    match (major, minor) {
        (3, 3..=5) => Ok(Version::V33),
        (3, 7) => Ok(Version::V37),
        (3, 8..) => Ok(Version::V38),
        _ => Err(bad()),
    }
}

impl Backend for RfbDemo {
    /// Sends the server ProtocolVersion `RFB 003.008\n`.
    fn start(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(SERVER_VERSION);
    }

    fn on_input(
        &mut self,
        input: &[u8],
        now: Duration,
        out: &mut Vec<u8>,
    ) -> Result<(), DemoError> {
        if self.phase == Phase::Failed {
            return Err(DemoError::AfterError);
        }
        let r = self.consume(input, now, out);
        if r.is_err() {
            self.phase = Phase::Failed;
            self.buf.clear();
            self.pending = None;
        }
        r
    }

    /// Sends the pending update if it is due.
    fn poll_tick(&mut self, now: Duration, out: &mut Vec<u8>) {
        if self.is_initialised() {
            self.send_due(now, out);
        }
    }

    /// `Some(time)` while an answerable request is outstanding: the previous
    /// update's time + [`MIN_INTERVAL`]. `None` when no request is
    /// outstanding or the outstanding one is incremental and outside the
    /// live band (it can only be answered after more input).
    fn next_tick(&self) -> Option<Duration> {
        if self.phase == Phase::Failed {
            return None;
        }
        self.pending_rect().map(|_| self.due_at())
    }
}

#[cfg(test)]
mod tests;
