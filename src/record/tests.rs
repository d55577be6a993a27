//! The recording encoders and decoders, fed every split of their input.

use super::*;
use crate::ws::frame::{FrameHeader, OpCode, MAX_HEADER};

fn frame(payload: &[u8], key: Option<[u8; 4]>, fin: bool, opcode: OpCode) -> Vec<u8> {
    let h = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: key,
        len: payload.len() as u64,
    };
    let mut hb = [0u8; MAX_HEADER];
    let n = h.encode(&mut hb);
    let mut out = hb[..n].to_vec();
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = key {
        mask::apply(&mut out[at..], k, 0);
    }
    out
}

#[test]
fn file_names_are_sanitised_and_dated() {
    assert_eq!(utc_stamp(0), "19700101T000000Z");
    assert_eq!(utc_stamp(1_765_050_794), "20251206T195314Z");
    assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    assert_eq!(
        file_name(1_765_050_794, "cust/42 ö", "pve/pve1/100", "0-7", CAST_EXT),
        "20251206T195314Z_cust_42___pve_pve1_100_0-7.cast"
    );
    assert_eq!(sanitize_part(".."), "__");
    assert_eq!(sanitize_part(""), "_");
    assert_eq!(sanitize_part(&"a".repeat(300)).len(), 64);
    assert!(file_name(0, "../../etc", "/", "\n", VNC_EXT)
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
}

#[test]
fn asciicast_v3_lines() {
    let (mut c, header) = Cast::start(80, 24, 1_765_050_794, "alice on pve/n/100 (0-1)");
    let h: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(h["version"], 3);
    assert_eq!(h["term"]["cols"], 80);
    assert_eq!(h["term"]["rows"], 24);
    assert_eq!(h["timestamp"], 1_765_050_794);
    assert!(header.ends_with(b"\n") && !header[..header.len() - 1].contains(&b'\n'));
    let mut out = Vec::new();
    c.data(
        1_500_000,
        CastDir::Output,
        b"$ \x1b[1m\"q\"\\\r\n",
        &mut out,
    );
    c.data(1_600_001, CastDir::Input, b"ls\r", &mut out);
    c.resize(3_600_001, 120, 40, &mut out);
    // Not monotonic (two pumps stamp independently): the interval is 0.
    c.data(3_500_000, CastDir::Output, b"x", &mut out);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            r#"[1.500000, "o", "$ \u001b[1m\"q\"\\\r\n"]"#,
            r#"[0.100001, "i", "ls\r"]"#,
            r#"[2.000000, "r", "120x40"]"#,
            r#"[0.000000, "o", "x"]"#,
        ]
    );
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
    }
}

#[test]
fn utf8_split_across_chunks_comes_out_exactly() {
    let text = "héllo €𝄞 wörld ✓".as_bytes();
    for cut in 0..=text.len() {
        let mut u = Utf8Text::default();
        let mut s = String::new();
        u.push(&text[..cut], &mut s);
        u.push(&text[cut..], &mut s);
        u.finish(&mut s);
        assert_eq!(s.as_bytes(), text, "cut at {cut}");
    }
    // Byte by byte.
    let mut u = Utf8Text::default();
    let mut s = String::new();
    for b in text {
        u.push(std::slice::from_ref(b), &mut s);
    }
    assert_eq!(s.as_bytes(), text);
    // Truly invalid bytes (and a sequence cut off at the end) become U+FFFD.
    let mut u = Utf8Text::default();
    let mut s = String::new();
    u.push(b"a\xffb\xc3", &mut s);
    assert!(u.holds());
    u.push(b"(", &mut s);
    u.push(b"\xe2\x82", &mut s);
    u.finish(&mut s);
    assert_eq!(s, "a\u{FFFD}b\u{FFFD}(\u{FFFD}");
    // The cast encoder writes no line for a chunk that completes nothing.
    let (mut c, _) = Cast::start(80, 24, 0, "");
    let mut out = Vec::new();
    c.data(1, CastDir::Output, b"\xe2\x82", &mut out);
    assert!(out.is_empty());
    c.data(2, CastDir::Output, b"\xac", &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[0.000002, \"o\", \"€\"]\n"
    );
}

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    In(Vec<u8>),
    Resize(u16, u16),
}

fn termproxy_events(chunks: &[&[u8]]) -> Vec<Ev> {
    let mut tp = Termproxy::default();
    let mut evs: Vec<Ev> = Vec::new();
    for c in chunks {
        tp.feed(c, &mut |e| match e {
            TermEvent::Input(d) => match evs.last_mut() {
                Some(Ev::In(v)) => v.extend_from_slice(d),
                _ => evs.push(Ev::In(d.to_vec())),
            },
            TermEvent::Resize { cols, rows } => evs.push(Ev::Resize(cols, rows)),
        });
    }
    evs
}

#[test]
fn termproxy_frames_cut_at_every_byte() {
    let stream = "1:120:40:0:5:hello20:2:é1:99999999:3:x0:0:0:3:0:1".as_bytes();
    let want = vec![
        Ev::Resize(120, 40),
        Ev::In(b"hello".to_vec()),
        // `2` is a ping; then `0:2:é`.
        Ev::In("é".as_bytes().to_vec()),
        Ev::Resize(u16::MAX, 3),
        // `x` skipped, `0:0:` empty, `0:3:0:1` is three data bytes.
        Ev::In(b"0:1".to_vec()),
    ];
    // Inputs in a row merge in the helper: split them back by position.
    let whole = termproxy_events(&[stream]);
    let flat = |v: &[Ev]| -> (Vec<u8>, Vec<(u16, u16)>) {
        let mut input = Vec::new();
        let mut rs = Vec::new();
        for e in v {
            match e {
                Ev::In(d) => input.extend_from_slice(d),
                Ev::Resize(c, r) => rs.push((*c, *r)),
            }
        }
        (input, rs)
    };
    assert_eq!(flat(&whole), flat(&want));
    for a in 0..=stream.len() {
        for b in a..=stream.len() {
            let got = termproxy_events(&[&stream[..a], &stream[a..b], &stream[b..]]);
            assert_eq!(flat(&got), flat(&want), "cuts at {a}, {b}");
        }
    }
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(flat(&termproxy_events(&bytewise)), flat(&want));
    // A number of more than 20 digits is dropped, as termproxy does.
    let long = format!("0:{}:abc0:1:z", "1".repeat(21));
    assert_eq!(
        flat(&termproxy_events(&[long.as_bytes()])),
        (b"z".to_vec(), vec![])
    );
}

#[test]
fn frame_payloads_cut_at_every_byte() {
    let key = Some([0x37, 0xfa, 0x21, 0x3d]);
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    let mut stream = frame(b"Hello", key, true, OpCode::Binary);
    stream.extend(frame(b"frag-", key, false, OpCode::Text));
    stream.extend(frame(b"", key, false, OpCode::Continuation));
    stream.extend(frame(b"ment", key, true, OpCode::Continuation));
    stream.extend(frame(&big[..300], key, true, OpCode::Binary));
    let want = [b"Hello".as_slice(), b"frag-ment", &big[..300]].concat();
    let run = |chunks: &[&[u8]]| {
        let mut p = Payloads::new(Sender::Client);
        let mut got = Vec::new();
        for c in chunks {
            p.feed(c, &mut |s| got.extend_from_slice(s));
        }
        assert!(p.broken().is_none());
        got
    };
    assert_eq!(run(&[&stream]), want);
    for a in 0..=stream.len() {
        assert_eq!(run(&[&stream[..a], &stream[a..]]), want, "cut at {a}");
    }
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&bytewise), want);
    // Server frames (unmasked), a 64-bit length.
    let s = frame(&big, None, true, OpCode::Binary);
    let mut p = Payloads::new(Sender::Server);
    let mut got = Vec::new();
    for c in s.chunks(999) {
        p.feed(c, &mut |d| got.extend_from_slice(d));
    }
    assert_eq!(got, big);
    // Garbage stops decoding for good, without growing.
    let mut p = Payloads::new(Sender::Server);
    p.feed(&frame(b"x", key, true, OpCode::Binary), &mut |_| {});
    assert!(p.broken().is_some());
}

const SERVER_INIT: &[u8] = &[
    2, 128, 1, 224, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0, 0, 0, 0, 4, b'Q',
    b'E', b'M', b'U',
];

/// (server bytes, client bytes, server bytes after the handshake, client ones).
fn handshakes() -> Vec<(Vec<u8>, Vec<u8>)> {
    let upd = [0u8, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 9, 9, 9, 9];
    let s_after = [SERVER_INIT, &upd].concat();
    let c_after = vec![2u8, 0, 0, 1, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 2, 128, 1, 224];
    vec![
        // 3.8, None (QEMU without a password).
        (
            [
                b"RFB 003.008\n".as_slice(),
                &[1, 1],
                &[0, 0, 0, 0],
                &s_after,
            ]
            .concat(),
            [b"RFB 003.008\n".as_slice(), &[1], &[1], &c_after].concat(),
        ),
        // 3.8, VNC authentication: challenge and response never recorded.
        (
            [
                b"RFB 003.008\n".as_slice(),
                &[2, 1, 2],
                &[0xcc; 16],
                &[0, 0, 0, 0],
                &s_after,
            ]
            .concat(),
            [
                b"RFB 003.008\n".as_slice(),
                &[2],
                &[0xdd; 16],
                &[0],
                &c_after,
            ]
            .concat(),
        ),
        // 3.7, None: no SecurityResult.
        (
            [b"RFB 003.007\n".as_slice(), &[1, 1], &s_after].concat(),
            [b"RFB 003.007\n".as_slice(), &[1], &[1], &c_after].concat(),
        ),
        // 3.3 server, None.
        (
            [b"RFB 003.003\n".as_slice(), &[0, 0, 0, 1], &s_after].concat(),
            [b"RFB 003.003\n".as_slice(), &[1], &c_after].concat(),
        ),
    ]
}

#[test]
fn rfb_handshake_is_skipped_at_every_split() {
    let s_after_len = SERVER_INIT.len() + 20;
    for (server, client) in handshakes() {
        let want_s = server[server.len() - s_after_len..].to_vec();
        let want_c = client[client.len() - 18..].to_vec();
        // Interleave in causal order byte by byte, and at every cut.
        for cut in 0..=server.len() {
            let mut k = RfbSkip::default();
            let (mut got_s, mut got_c) = (Vec::new(), Vec::new());
            let mut out = |d: VncDir, b: &[u8]| match d {
                VncDir::ToBrowser => got_s.extend_from_slice(b),
                VncDir::FromBrowser => got_c.extend_from_slice(b),
            };
            k.feed(VncDir::ToBrowser, &server[..cut], &mut out);
            for b in client.chunks(1) {
                k.feed(VncDir::FromBrowser, b, &mut out);
            }
            k.feed(VncDir::ToBrowser, &server[cut..], &mut out);
            assert!(k.done() && !k.unparsed(), "cut {cut}");
            assert_eq!(got_s, want_s, "cut {cut}");
            assert_eq!(got_c, want_c, "cut {cut}");
            assert!(!got_c.windows(16).any(|w| w == [0xdd; 16]));
        }
    }
    // Not RFB: recorded raw, flagged.
    let mut k = RfbSkip::default();
    let mut n = 0;
    k.feed(VncDir::ToBrowser, b"HTTP/1.1 400 x\r\n", &mut |_, b| {
        n += b.len()
    });
    k.feed(VncDir::FromBrowser, b"RFB 003.008\n", &mut |_, b| {
        n += b.len()
    });
    assert!(k.unparsed() && n > 0);
}

#[test]
fn vnc_records_read_back() {
    let mut f = vnc_header(1_765_050_794_000_000);
    vnc_record(VncDir::ToBrowser, 0, SERVER_INIT, &mut f);
    vnc_record(VncDir::FromBrowser, 5, b"\x02abc", &mut f);
    vnc_record(VncDir::ToBrowser, 70, b"\x00\x00upd", &mut f);
    let full = f.len();
    // A record cut off at the end (the relay stopped) is dropped.
    vnc_record(VncDir::ToBrowser, 90, b"lost", &mut f);
    f.truncate(full + 15);
    let v = parse_vnc(&f).unwrap();
    assert_eq!(v.start_unix_micros, 1_765_050_794_000_000);
    assert_eq!(v.records.len(), 3);
    assert_eq!(
        v.records[1],
        VncRecord {
            dir: VncDir::FromBrowser,
            micros: 5,
            data: b"\x02abc"
        }
    );
    let s = server_stream(&v).unwrap();
    assert_eq!(s, vec![(0, SERVER_INIT), (70, b"\x00\x00upd".as_slice())]);
    assert_eq!(
        parse_vnc(b"NXVNCREC").err(),
        Some(VncFileError::NotVncRecording)
    );
    let mut bad = f.clone();
    bad[8] = 9;
    assert_eq!(parse_vnc(&bad).err(), Some(VncFileError::UnknownVersion(9)));
    assert_eq!(
        server_stream(&parse_vnc(&vnc_header(0)).unwrap()).err(),
        Some(VncFileError::NoServerInit)
    );
    // Every prefix parses or fails cleanly.
    for n in 0..f.len() {
        let _ = parse_vnc(&f[..n]);
    }
}

#[test]
fn utf8_text_is_lossy_utf8_of_the_whole_however_cut() {
    // A fixed-seed walk over byte strings rich in UTF-8 lead and
    // continuation bytes: any cut gives `String::from_utf8_lossy` of the whole.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = [
        b'a', 0x80, 0xbf, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9d, 0x84, 0x9e, 0xff, 0xc0,
    ];
    for _ in 0..3000 {
        let len = (next() % 24) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let want = String::from_utf8_lossy(&data).into_owned();
        let mut u = Utf8Text::default();
        let mut got = String::new();
        let mut at = 0;
        while at < data.len() {
            let n = 1 + (next() % 4) as usize;
            let end = (at + n).min(data.len());
            u.push(&data[at..end], &mut got);
            at = end;
        }
        u.finish(&mut got);
        assert_eq!(got, want, "{data:x?}");
    }
}
