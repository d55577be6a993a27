//! Tests of the demo VNC server (`super`): the handshake for each RFB version,
//! refused input, pixel formats, paced and banded updates, and any split of
//! the input giving the same output.

use super::*;

const T0: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn server_init_default() -> Vec<u8> {
    let mut v = vec![0x02, 0x80, 0x01, 0xe0];
    v.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    v.extend_from_slice(&16u32.to_be_bytes());
    v.extend_from_slice(b"nexor-relay demo");
    v
}

fn feed(d: &mut RfbDemo, input: &[u8], now: Duration) -> Result<Vec<u8>, DemoError> {
    let mut out = Vec::new();
    d.on_input(input, now, &mut out).map(|()| out)
}

fn must(r: Result<Vec<u8>, DemoError>) -> Vec<u8> {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// A server past the 3.8 handshake and init.
fn ready(w: u16, h: u16) -> RfbDemo {
    let mut d = RfbDemo::new(w, h, "t");
    let mut out = Vec::new();
    d.start(&mut out);
    must(feed(&mut d, b"RFB 003.008\n\x01\x01", T0));
    assert!(d.is_initialised());
    d
}

fn fbur(incremental: bool, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental)];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

fn set_pixel_format(pf: &PixelFormat) -> Vec<u8> {
    let mut m = vec![0, 0, 0, 0];
    m.extend_from_slice(&pf.to_bytes());
    m
}

/// Splits a FramebufferUpdate with one rect into (x, y, w, h, pixels).
fn one_rect(u: &[u8]) -> (u16, u16, u16, u16, &[u8]) {
    assert_eq!(&u[..4], &[0, 0, 0, 1], "one-rectangle update header");
    let be = |i: usize| u16::from_be_bytes([u[i], u[i + 1]]);
    assert_eq!(&u[12..16], &[0, 0, 0, 0], "Raw encoding");
    (be(4), be(6), be(8), be(10), &u[16..])
}

fn rect_of(u: &[u8]) -> [u16; 4] {
    let (x, y, w, h, _) = one_rect(u);
    [x, y, w, h]
}

#[test]
fn handshake_3_8_exact() {
    let mut d = RfbDemo::default();
    let mut out = Vec::new();
    d.start(&mut out);
    assert_eq!(out, b"RFB 003.008\n");
    assert_eq!(must(feed(&mut d, b"RFB 003.008\n", T0)), [1, 1]);
    assert_eq!(must(feed(&mut d, &[1], T0)), [0, 0, 0, 0]);
    assert_eq!(must(feed(&mut d, &[0], T0)), server_init_default());
    assert!(d.is_initialised());
}

#[test]
fn handshake_3_7_exact() {
    let mut d = RfbDemo::default();
    assert_eq!(must(feed(&mut d, b"RFB 003.007\n", T0)), [1, 1]);
    // No SecurityResult for None in 3.7.
    assert_eq!(must(feed(&mut d, &[1], T0)), b"");
    assert_eq!(must(feed(&mut d, &[1], T0)), server_init_default());
}

#[test]
fn handshake_3_3_exact() {
    let mut d = RfbDemo::default();
    assert_eq!(must(feed(&mut d, b"RFB 003.003\n", T0)), [0, 0, 0, 1]);
    assert_eq!(must(feed(&mut d, &[1], T0)), server_init_default());
}

#[test]
fn version_aliases() {
    for v in [b"RFB 003.004\n", b"RFB 003.005\n"] {
        let mut d = RfbDemo::default();
        assert_eq!(must(feed(&mut d, v, T0)), [0, 0, 0, 1]);
    }
    for v in [b"RFB 003.889\n", b"RFB 003.009\n"] {
        let mut d = RfbDemo::default();
        assert_eq!(must(feed(&mut d, v, T0)), [1, 1]);
        assert_eq!(must(feed(&mut d, &[1], T0)), [0, 0, 0, 0]);
    }
}

#[test]
fn bad_versions_refused() {
    for v in [
        &b"RFB 003.006\n"[..],
        b"RFB 003.002\n",
        b"RFB 004.000\n",
        b"RFB 003.008\r",
        b"RFB 0x3.008\n",
        b"GET / HTTP/1",
    ] {
        let mut d = RfbDemo::default();
        let mut raw = [0u8; 12];
        raw.copy_from_slice(v);
        assert_eq!(feed(&mut d, v, T0), Err(DemoError::BadVersion(raw)));
        assert_eq!(feed(&mut d, b"x", T0), Err(DemoError::AfterError));
        assert_eq!(d.next_tick(), None);
    }
    // Eleven bytes are not yet a version: no verdict, no output.
    let mut d = RfbDemo::default();
    assert_eq!(must(feed(&mut d, b"RFB 003.008", T0)), b"");
}

#[test]
fn bad_security_choice_refused() {
    let mut d = RfbDemo::default();
    must(feed(&mut d, b"RFB 003.008\n", T0));
    let mut out = Vec::new();
    assert_eq!(
        d.on_input(&[2], T0, &mut out),
        Err(DemoError::BadSecurityType(2))
    );
    // 3.8: SecurityResult failed + reason.
    let reason = b"security type not offered";
    let mut want = vec![0, 0, 0, 1, 0, 0, 0, reason.len() as u8];
    want.extend_from_slice(reason);
    assert_eq!(out, want);

    let mut d = RfbDemo::default();
    must(feed(&mut d, b"RFB 003.007\n", T0));
    let mut out = Vec::new();
    assert_eq!(
        d.on_input(&[0], T0, &mut out),
        Err(DemoError::BadSecurityType(0))
    );
    assert!(out.is_empty(), "3.7 closes without a reason");
}

#[test]
fn unknown_message_refused() {
    let mut d = ready(64, 48);
    assert_eq!(feed(&mut d, &[7], T0), Err(DemoError::UnknownMessage(7)));
    assert_eq!(feed(&mut d, &[3], T0), Err(DemoError::AfterError));
    let mut d = ready(64, 48);
    assert_eq!(
        feed(&mut d, &[1, 0, 0], T0),
        Err(DemoError::UnknownMessage(1))
    );
}

#[test]
fn unsupported_pixel_formats_refused() {
    let mut d = ready(64, 48);
    let mut m = set_pixel_format(&PixelFormat::SERVER);
    m[7] = 0; // true-colour off: colour map
    assert_eq!(
        feed(&mut d, &m, T0),
        Err(DemoError::UnsupportedPixelFormat {
            bits_per_pixel: 32,
            true_colour: false
        })
    );
    let mut d = ready(64, 48);
    let mut m = set_pixel_format(&PixelFormat::SERVER);
    m[4] = 24;
    assert_eq!(
        feed(&mut d, &m, T0),
        Err(DemoError::UnsupportedPixelFormat {
            bits_per_pixel: 24,
            true_colour: true
        })
    );
}

#[test]
fn cut_text_capped_and_streamed() {
    let mut d = ready(64, 48);
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&(MAX_CUT_TEXT + 1).to_be_bytes());
    assert_eq!(
        feed(&mut d, &m, T0),
        Err(DemoError::CutTextTooLong(MAX_CUT_TEXT + 1))
    );

    // At the cap: accepted, skipped in pieces without being stored.
    let mut d = ready(64, 48);
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&MAX_CUT_TEXT.to_be_bytes());
    must(feed(&mut d, &m, T0));
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..16 {
        assert_eq!(must(feed(&mut d, &chunk, T0)), b"");
        assert!(d.buf.capacity() <= 20, "cut text must not be buffered");
    }
    // The next bytes are a message again.
    let out = must(feed(&mut d, &fbur(false, 0, 0, 1, 1), T0));
    assert_eq!(one_rect(&out).4, [255, 255, 255, 0]);
}

#[test]
fn set_encodings_any_count_streamed() {
    let mut d = ready(64, 48);
    let mut m = vec![2, 0, 0xff, 0xff];
    for i in 0..0xffffi32 {
        m.extend_from_slice(&(-i).to_be_bytes());
    }
    assert_eq!(must(feed(&mut d, &m, T0)), b"");
    must(feed(&mut d, &[2, 0, 0, 0], T0)); // zero encodings
    let out = must(feed(&mut d, &fbur(false, 0, 0, 1, 1), T0));
    assert_eq!(out.len(), 16 + 4);
}

#[test]
fn full_request_answered_at_once() {
    let mut d = ready(WIDTH, HEIGHT);
    let out = must(feed(&mut d, &fbur(false, 0, 0, WIDTH, HEIGHT), T0));
    let (x, y, w, h, px) = one_rect(&out);
    assert_eq!((x, y, w, h), (0, 0, WIDTH, HEIGHT));
    assert_eq!(px.len(), 640 * 480 * 4);
    // Little-endian 0x00RRGGBB: white, then yellow at x = 80, black at x = 639.
    assert_eq!(&px[..4], &[255, 255, 255, 0]);
    assert_eq!(&px[80 * 4..81 * 4], &[0, 255, 255, 0]);
    assert_eq!(&px[639 * 4..640 * 4], &[0, 0, 0, 0]);
    // Grey ramp on the last row: black at the left, white at the right.
    let last = &px[479 * 640 * 4..];
    assert_eq!(&last[..4], &[0, 0, 0, 0]);
    assert_eq!(&last[639 * 4..], &[255, 255, 255, 0]);
}

#[test]
fn request_clipped_to_screen() {
    let mut d = ready(WIDTH, HEIGHT);
    let out = must(feed(&mut d, &fbur(false, 600, 470, 100, 100), T0));
    let (x, y, w, h, px) = one_rect(&out);
    assert_eq!((x, y, w, h), (600, 470, 40, 10));
    assert_eq!(px.len(), 40 * 10 * 4);
    assert_eq!(out.len(), 16 + 40 * 10 * 4);

    // Huge width/height do not overflow.
    let mut d = ready(WIDTH, HEIGHT);
    let out = must(feed(&mut d, &fbur(false, 639, 0, u16::MAX, 1), T0));
    assert_eq!(rect_of(&out), [639, 0, 1, 1]);

    // Wholly off-screen: answered with zero rectangles.
    let mut d = ready(WIDTH, HEIGHT);
    let out = must(feed(&mut d, &fbur(false, 640, 0, 10, 10), T0));
    assert_eq!(out, [0, 0, 0, 0]);
    assert_eq!(d.next_tick(), None);
}

#[test]
fn pixel_format_16bpp_big_endian() {
    let rgb565 = PixelFormat {
        bits_per_pixel: 16,
        depth: 16,
        big_endian: true,
        red_max: 31,
        green_max: 63,
        blue_max: 31,
        red_shift: 11,
        green_shift: 5,
        blue_shift: 0,
    };
    let mut d = ready(WIDTH, HEIGHT);
    must(feed(&mut d, &set_pixel_format(&rgb565), T0));
    assert_eq!(d.pixel_format(), rgb565);
    // Yellow (bar 1 at x = 80): r=31, g=63, b=0 → 0xFFE0, big-endian.
    let out = must(feed(&mut d, &fbur(false, 80, 0, 1, 1), T0));
    assert_eq!(one_rect(&out).4, [0xff, 0xe0]);
    // Cyan (x = 160): 0x07FF; magenta (x = 320): 0xF81F.
    let out = must(feed(&mut d, &fbur(false, 160, 0, 161, 1), ms(100)));
    let px = one_rect(&out).4;
    assert_eq!(&px[..2], &[0x07, 0xff]);
    assert_eq!(&px[320..322], &[0xf8, 0x1f]);

    // Same format little-endian: bytes swapped.
    let mut d = ready(WIDTH, HEIGHT);
    let le = PixelFormat {
        big_endian: false,
        ..rgb565
    };
    must(feed(&mut d, &set_pixel_format(&le), T0));
    let out = must(feed(&mut d, &fbur(false, 80, 0, 1, 1), T0));
    assert_eq!(one_rect(&out).4, [0xe0, 0xff]);
}

#[test]
fn pixel_format_8bpp_and_32bpp_big_endian() {
    let bgr233 = PixelFormat {
        bits_per_pixel: 8,
        depth: 8,
        big_endian: false,
        red_max: 7,
        green_max: 7,
        blue_max: 3,
        red_shift: 0,
        green_shift: 3,
        blue_shift: 6,
    };
    let mut d = ready(WIDTH, HEIGHT);
    must(feed(&mut d, &set_pixel_format(&bgr233), T0));
    // Yellow: r=7, g=7<<3 → 0x3F; blue (x = 480): 3<<6 = 0xC0.
    let out = must(feed(&mut d, &fbur(false, 80, 0, 401, 1), T0));
    let px = one_rect(&out).4;
    assert_eq!(px[0], 0x3f);
    assert_eq!(px[400], 0xc0);

    let be32 = PixelFormat {
        big_endian: true,
        ..PixelFormat::SERVER
    };
    let mut d = ready(WIDTH, HEIGHT);
    must(feed(&mut d, &set_pixel_format(&be32), T0));
    // Cyan (x = 160) is 0x0000FFFF: big-endian 00 00 ff ff.
    let out = must(feed(&mut d, &fbur(false, 160, 0, 1, 1), T0));
    assert_eq!(one_rect(&out).4, [0, 0, 255, 255]);

    // Shifts past the pixel width do not panic; the bits are dropped.
    let odd = PixelFormat {
        red_shift: 200,
        green_shift: 31,
        blue_shift: 40,
        red_max: u16::MAX,
        ..PixelFormat::SERVER
    };
    let mut d = ready(8, 8);
    must(feed(&mut d, &set_pixel_format(&odd), T0));
    let out = must(feed(&mut d, &fbur(false, 0, 0, 1, 1), T0));
    assert_eq!(one_rect(&out).4, [0, 0, 0, 0x80]);
}

#[test]
fn one_update_per_request() {
    let mut d = ready(WIDTH, HEIGHT);
    assert_eq!(d.next_tick(), None);
    let out = must(feed(&mut d, &fbur(false, 0, 0, 10, 10), T0));
    assert!(!out.is_empty());
    assert_eq!(d.next_tick(), None);
    for t in [100, 200, 5000] {
        let mut out = Vec::new();
        d.poll_tick(ms(t), &mut out);
        assert!(out.is_empty(), "no update without a request");
    }
    // Key and pointer events are not requests either.
    let mut ev = vec![4, 1, 0, 0, 0, 0, 0, 0x41];
    ev.extend_from_slice(&[5, 1, 0, 10, 0, 10]);
    assert_eq!(must(feed(&mut d, &ev, ms(6000))), b"");
    assert_eq!(d.next_tick(), None);
}

#[test]
fn incremental_updates_paced_and_banded() {
    let mut d = ready(WIDTH, HEIGHT);
    must(feed(&mut d, &fbur(false, 0, 0, WIDTH, HEIGHT), T0));
    // Incremental request 30 ms later: not yet due.
    assert_eq!(
        must(feed(&mut d, &fbur(true, 0, 0, WIDTH, HEIGHT), ms(30))),
        b""
    );
    assert_eq!(d.next_tick(), Some(ms(100)));
    let mut out = Vec::new();
    d.poll_tick(ms(99), &mut out);
    assert!(out.is_empty());
    d.poll_tick(ms(100), &mut out);
    let (x, y, w, h, px) = one_rect(&out);
    assert_eq!((x, y, w, h), (0, 360, 640, 60), "only the live band");
    assert_eq!(px.len(), 640 * 60 * 4);
    assert_eq!(d.next_tick(), None);

    // Late request after the interval: answered at once.
    let out = must(feed(&mut d, &fbur(true, 0, 0, WIDTH, HEIGHT), ms(500)));
    assert_eq!(rect_of(&out), [0, 360, 640, 60]);

    // Incremental request that misses the band: never answered as such.
    let out = must(feed(&mut d, &fbur(true, 0, 0, 100, 100), ms(1000)));
    assert!(out.is_empty());
    assert_eq!(d.next_tick(), None);
    let mut out = Vec::new();
    d.poll_tick(ms(2000), &mut out);
    assert!(out.is_empty());
    // A second request reaching the band merges with it: one update of
    // (bounding box 0,0 .. 100,410) ∩ band.
    let out = must(feed(&mut d, &fbur(true, 0, 400, 10, 10), ms(2000)));
    assert_eq!(rect_of(&out), [0, 360, 100, 50]);
    assert_eq!(d.next_tick(), None);
}

#[test]
fn first_incremental_is_full_and_floods_are_paced() {
    let mut d = ready(64, 48);
    let out = must(feed(&mut d, &fbur(true, 0, 0, 64, 48), T0));
    assert_eq!(rect_of(&out), [0, 0, 64, 48]);
    // Many full requests at once: one more update, 100 ms later.
    let flood: Vec<u8> = (0..1000).flat_map(|_| fbur(false, 0, 0, 64, 48)).collect();
    assert_eq!(must(feed(&mut d, &flood, ms(1))), b"");
    assert_eq!(d.next_tick(), Some(ms(100)));
    let mut out = Vec::new();
    d.poll_tick(ms(150), &mut out);
    assert_eq!(rect_of(&out), [0, 0, 64, 48]);
    assert_eq!(out.len(), 16 + 64 * 48 * 4);
    assert_eq!(d.next_tick(), None);
}

#[test]
fn band_moves_with_time() {
    let band = |t: u64| {
        let mut d = ready(WIDTH, HEIGHT);
        let out = must(feed(&mut d, &fbur(false, 0, 360, WIDTH, 60), ms(t)));
        out[16..].to_vec()
    };
    let (a, b, c) = (band(0), band(1000), band(1000));
    assert_ne!(a, b, "the band animates");
    assert_eq!(b, c, "frames are a function of time");
    // Bars scroll right at 60 px/s: at t = 1 s, row 0 of the band (above the
    // block) has white until x = 140 and yellow from there.
    let px = |x: usize| &b[x * 4..x * 4 + 4];
    assert_eq!(px(139), [255, 255, 255, 0]);
    assert_eq!(px(140), [0, 255, 255, 0]);
    // The static area does not change.
    let top = |t: u64| {
        let mut d = ready(WIDTH, HEIGHT);
        must(feed(&mut d, &fbur(false, 0, 0, WIDTH, 360), ms(t)))
    };
    assert_eq!(top(0), top(7777));
}

#[test]
fn tiny_screens_do_not_panic() {
    for (w, h) in [(0, 0), (1, 1), (3, 2), (17, 5)] {
        let mut d = ready(w, h);
        let out = must(feed(
            &mut d,
            &fbur(false, 0, 0, u16::MAX, u16::MAX),
            ms(12345),
        ));
        let (_, _, rw, rh, px) = one_rect(&out);
        assert_eq!(px.len(), usize::from(rw) * usize::from(rh) * 4);
        let mut out = Vec::new();
        must(feed(
            &mut d,
            &fbur(true, 0, 0, u16::MAX, u16::MAX),
            ms(20000),
        ));
        d.poll_tick(ms(30000), &mut out);
    }
}

/// Handshake and a spread of messages, with updates small enough to
/// compare cheaply.
fn conversation() -> Vec<u8> {
    let mut c = b"RFB 003.008\n\x01\x00".to_vec();
    let rgb565 = PixelFormat {
        bits_per_pixel: 16,
        depth: 16,
        big_endian: true,
        red_max: 31,
        green_max: 63,
        blue_max: 31,
        red_shift: 11,
        green_shift: 5,
        blue_shift: 0,
    };
    c.extend(set_pixel_format(&rgb565));
    c.extend([2, 0, 0, 3, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21, 0, 0, 0, 1]);
    c.extend(fbur(false, 70, 10, 30, 4));
    c.extend([4, 1, 0, 0, 0, 0, 0xff, 0x0d]);
    c.extend([5, 0, 0, 1, 0, 2]);
    c.extend([6, 0, 0, 0, 0, 0, 0, 5]);
    c.extend(b"hello");
    c.extend(fbur(true, 0, 355, 20, 10));
    c.extend(set_pixel_format(&PixelFormat::SERVER));
    c.extend([6, 0, 0, 0, 0, 0, 0, 0]);
    c.extend([2, 0, 0, 0]);
    c
}

fn run_split(parts: &[&[u8]], now: Duration) -> Vec<u8> {
    let mut d = RfbDemo::new(WIDTH, HEIGHT, "split");
    let mut out = Vec::new();
    d.start(&mut out);
    for p in parts {
        if let Err(e) = d.on_input(p, now, &mut out) {
            panic!("split feed failed: {e}");
        }
    }
    d.poll_tick(now + ms(100), &mut out);
    out
}

#[test]
fn byte_at_a_time_equals_all_at_once() {
    let c = conversation();
    let whole = run_split(&[&c], ms(250));
    let bytes: Vec<&[u8]> = c.chunks(1).collect();
    assert_eq!(run_split(&bytes, ms(250)), whole);
    // Sanity: two updates (the second from the tick), in different formats.
    assert!(whole.len() > 12 + 2 + 4 + 4 + 16 + 4 + 5 + 16 + 30 * 4 * 2);
}

#[test]
fn every_two_way_split_equals_whole() {
    let c = conversation();
    let whole = run_split(&[&c], ms(250));
    for i in 0..=c.len() {
        let (a, b) = c.split_at(i);
        assert_eq!(run_split(&[a, b], ms(250)), whole, "split at {i}");
    }
}

#[test]
fn pending_stays_small() {
    let mut d = ready(8, 8);
    // 19 of the 20 bytes of SetPixelFormat.
    let m = set_pixel_format(&PixelFormat::SERVER);
    must(feed(&mut d, &m[..19], T0));
    assert_eq!(d.buf.len(), 19);
    must(feed(&mut d, &m[19..], T0));
    assert!(d.buf.is_empty());
}
