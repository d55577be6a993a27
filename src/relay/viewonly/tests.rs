//! The view-only filter fed every split of real client streams.

use super::*;

/// Feeds `input` in the pieces cut at `cuts`; each call's output, or the
/// violation.
fn feed_cut(view: View, input: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>, Violation> {
    let mut f = ViewFilter::new(view);
    let mut outs = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let mut out = Vec::new();
        f.feed(&input[at..c], &mut out)?;
        assert!(out.len() <= c - at + MAX_RESIZE, "output bounded by input");
        outs.push(out);
        at = c;
    }
    Ok(outs)
}

/// Every one-cut and two-cut split, and byte by byte, give `expected`
/// (or the same violation).
fn every_split(view: View, input: &[u8], expected: Result<&[u8], Violation>) {
    let mut splits: Vec<Vec<usize>> = vec![vec![], (1..input.len()).collect()];
    for a in 1..input.len() {
        splits.push(vec![a]);
        if input.len() < 120 {
            for b in a + 1..input.len() {
                splits.push(vec![a, b]);
            }
        } else {
            splits.push(vec![a, (a + 7).min(input.len())]);
        }
    }
    for cuts in splits {
        let got = feed_cut(view, input, &cuts).map(|o| o.concat());
        assert_eq!(got.as_deref().map_err(|v| *v), expected, "cuts {cuts:?}");
    }
}

const V38: &[u8] = b"RFB 003.008\n";

fn set_pixel_format() -> Vec<u8> {
    let mut m = vec![0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0];
    m.extend_from_slice(&[0, 0, 0]);
    assert_eq!(m.len(), 20);
    m
}

fn set_encodings(n: u16) -> Vec<u8> {
    let mut m = vec![2, 0];
    m.extend_from_slice(&n.to_be_bytes());
    for i in 0..n {
        m.extend_from_slice(&(i32::from(i) - 300).to_be_bytes());
    }
    m
}

fn fbur() -> Vec<u8> {
    vec![3, 1, 0, 0, 0, 0, 2, 128, 1, 224]
}

fn key_event(down: u8) -> Vec<u8> {
    vec![4, down, 0, 0, 0, 0, 0, 0x61]
}

fn pointer(mask: u8) -> Vec<u8> {
    vec![5, mask, 0, 10, 0, 20]
}

fn extended_pointer() -> Vec<u8> {
    vec![5, 0x81, 0, 10, 0, 20, 1]
}

fn cut_text(text: &[u8], extended: bool) -> Vec<u8> {
    let len = text.len() as i32;
    let len = if extended { -len } else { len };
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(text);
    m
}

fn qemu_key() -> Vec<u8> {
    vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]
}

fn continuous_updates() -> Vec<u8> {
    vec![150, 1, 0, 0, 0, 0, 2, 128, 1, 224]
}

fn fence(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![248, 0, 0, 0, 0, 0, 0, 3, payload.len() as u8];
    m.extend_from_slice(payload);
    m
}

fn xvp(op: u8) -> Vec<u8> {
    vec![250, 0, 1, op]
}

fn set_desktop_size(screens: u8) -> Vec<u8> {
    let mut m = vec![251, 0, 4, 0, 3, 0, screens, 0];
    for i in 0..screens {
        m.extend_from_slice(&[0, 0, 0, i, 0, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0]);
    }
    m
}

/// What noVNC sends after ClientInit, every message type it knows, and
/// what of it reaches the console in view mode.
fn messages() -> (Vec<u8>, Vec<u8>) {
    let (mut all, mut kept) = (Vec::new(), Vec::new());
    let mut add = |m: Vec<u8>, keep: bool| {
        if keep {
            kept.extend_from_slice(&m);
        }
        all.extend_from_slice(&m);
    };
    add(set_pixel_format(), true);
    add(set_encodings(12), true);
    add(fbur(), true);
    add(key_event(1), false);
    add(key_event(0), false);
    add(pointer(1), false);
    add(extended_pointer(), false);
    add(cut_text(b"secret clipboard", false), false);
    add(cut_text(&[0, 0, 0, 1, 9, 9], true), false);
    add(cut_text(b"", false), false);
    add(qemu_key(), false);
    add(continuous_updates(), true);
    add(fence(b"abc"), true);
    add(fence(b""), true);
    add(xvp(2), false);
    add(set_desktop_size(1), false);
    add(set_desktop_size(0), false);
    add(fbur(), true);
    (all, kept)
}

#[test]
fn forwards_viewer_messages_and_drops_input_at_every_split() {
    let (all, kept) = messages();
    every_split(View::Rfb, &all, Ok(&kept));
}

#[test]
fn each_message_alone_at_every_split() {
    let keep: [(Vec<u8>, bool); 15] = [
        (set_pixel_format(), true),
        (set_encodings(0), true),
        (set_encodings(3), true),
        (fbur(), true),
        (key_event(1), false),
        (pointer(0), false),
        (extended_pointer(), false),
        (cut_text(b"hello", false), false),
        (cut_text(b"hello", true), false),
        (qemu_key(), false),
        (continuous_updates(), true),
        (fence(b"xyz"), true),
        (xvp(4), false),
        (set_desktop_size(2), false),
        (set_desktop_size(0), false),
    ];
    for (m, k) in keep {
        // Twice, so the filter is seen to come back to a message start.
        let input = [m.clone(), m.clone()].concat();
        let expected = if k { input.clone() } else { Vec::new() };
        every_split(View::Rfb, &input, Ok(&expected));
    }
}

#[test]
fn follows_the_handshake_and_forces_the_shared_flag() {
    let (msgs, kept) = messages();
    // None (3.8), ClientInit shared-flag 0.
    let input = [V38, &[1], &[0], &msgs].concat();
    let expected = [V38, &[1], &[1], &kept].concat();
    every_split(View::RfbHandshake, &input, Ok(&expected));
    // VNC Authentication (3.7), 16-byte response, shared-flag 0.
    let resp: Vec<u8> = (0..16).map(|i| 0xa0 + i).collect();
    let v37 = b"RFB 003.007\n";
    let input = [v37, &[2][..], &resp, &[0], &msgs].concat();
    let expected = [v37, &[2][..], &resp, &[1], &kept].concat();
    every_split(View::RfbHandshake, &input, Ok(&expected));
    // Apple's 3.889 counts as 3.8; a shared-flag of 1 stays 1.
    let input = [b"RFB 003.889\n", &[1][..], &[1], &fbur()].concat();
    every_split(View::RfbHandshake, &input, Ok(&input));
}

#[test]
fn a_handshake_it_cannot_follow_is_a_violation() {
    let v33 = [b"RFB 003.003\n".as_slice(), &[0]].concat();
    every_split(View::RfbHandshake, &v33, Err(Violation::RfbVersion));
    every_split(
        View::RfbHandshake,
        b"GET / HTTP/1.1\r\n",
        Err(Violation::RfbVersion),
    );
    // VeNCrypt (19), Tight (16): sub-protocols it does not follow.
    for t in [0, 16, 19, 30] {
        let input = [V38, &[t], &[0; 4]].concat();
        every_split(View::RfbHandshake, &input, Err(Violation::RfbSecurity(t)));
    }
}

#[test]
fn unknown_types_end_the_session_wherever_they_are_cut() {
    // gii (253), TightVNC file transfer (132), SetScale (8), KeepAlive (13).
    for t in [1u8, 7, 8, 13, 127, 132, 252, 253, 254] {
        let input = [fbur(), vec![t, 0, 0, 0, 0, 0, 0, 0]].concat();
        every_split(View::Rfb, &input, Err(Violation::RfbMessage(t)));
    }
    // QEMU audio (subtype 1) is not sent by noVNC: unknown.
    let input = [qemu_key(), vec![255, 1, 0, 0]].concat();
    every_split(View::Rfb, &input, Err(Violation::QemuSubtype(1)));
}

#[test]
fn after_a_violation_nothing_passes() {
    let mut f = ViewFilter::new(View::Rfb);
    let mut out = Vec::new();
    // The FramebufferUpdateRequest before the bad byte is not forwarded
    // either: the call failed as a whole.
    assert_eq!(
        f.feed(&[fbur(), vec![9]].concat(), &mut out),
        Err(Violation::RfbMessage(9))
    );
    assert!(out.is_empty());
    assert_eq!(f.feed(&fbur(), &mut out), Err(Violation::RfbMessage(9)));
    assert!(out.is_empty());
}

#[test]
fn a_huge_set_encodings_streams_through_in_bounded_memory() {
    // The largest count there is (u16): 262,140 bytes of encodings,
    // forwarded as they come in 1 KiB pieces; the filter holds no buffer.
    let m = set_encodings(u16::MAX);
    let mut f = ViewFilter::new(View::Rfb);
    let mut total = Vec::new();
    for piece in m.chunks(1024) {
        let mut out = Vec::new();
        f.feed(piece, &mut out).unwrap();
        assert_eq!(out, piece);
        total.extend_from_slice(&out);
    }
    assert_eq!(total, m);
    let mut out = Vec::new();
    f.feed(&fbur(), &mut out).unwrap();
    assert_eq!(out, fbur(), "back at a message start");
    // A huge dropped message (ClientCutText of 2 GiB announced) is
    // skipped by counting, never stored.
    let mut f = ViewFilter::new(View::Rfb);
    let mut head = vec![6, 0, 0, 0];
    head.extend_from_slice(&i32::MIN.to_be_bytes());
    let mut out = Vec::new();
    f.feed(&head, &mut out).unwrap();
    for _ in 0..64 {
        f.feed(&[0x55; 4096], &mut out).unwrap();
    }
    assert!(out.is_empty());
    assert!(std::mem::size_of::<ViewFilter>() <= 96);
}

#[test]
fn termproxy_input_is_dropped_resize_and_ping_pass() {
    let input = b"0:5:hello1:80:24:20:3:\xe2\x82\xac0:0:1:132:50:0:2:\r\n2";
    let expected = b"1:80:24:21:132:50:2";
    every_split(View::Termproxy, input, Ok(expected));
}

#[test]
fn termproxy_resize_goes_out_whole() {
    // termproxy loses its place in a resize header cut across reads
    // (docs/proxmox.md §5.2): each piece of output holds whole messages.
    let input = b"1:80:24:21:200:60:0:1:x2";
    for a in 1..input.len() {
        for b in a + 1..input.len() {
            let outs = feed_cut(View::Termproxy, input, &[a, b]).unwrap();
            for o in outs {
                let ok = ["", "2", "1:80:24:", "1:200:60:"];
                let s = String::from_utf8(o).unwrap();
                let mut rest = s.as_str();
                while !rest.is_empty() {
                    let m = ok[1..].iter().find(|m| rest.starts_with(**m));
                    let Some(m) = m else {
                        panic!("partial message {s:?} at cuts {a} {b}")
                    };
                    rest = &rest[m.len()..];
                }
            }
        }
    }
}

#[test]
fn termproxy_garbage_is_a_violation() {
    every_split(View::Termproxy, b"2x", Err(Violation::TermType(b'x')));
    every_split(View::Termproxy, b"3:", Err(Violation::TermType(b'3')));
    for bad in [
        &b"0x"[..],
        b"0::",
        b"0:1a",
        b"1:80:",
        b"1::24:",
        b"1:80;24:",
        b"0:123456789012345678901:",
        b"0:99999999999999999999:",
    ] {
        let input = [bad, b":::::"].concat();
        every_split(View::Termproxy, &input, Err(Violation::TermHeader));
    }
}

#[test]
fn raw_terminals_pass_nothing() {
    let input = b"rm -rf /\r\n\x1b[A\x03";
    every_split(View::DropAll, input, Ok(b""));
}
