//! `ws::mask::apply`: split at any offset equals whole; twice is identity;
//! matches the RFC 6455 §5.3 definition byte by byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::ws::mask::apply;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let key = [data[0], data[1], data[2], data[3]];
    let start = u64::from(u32::from_le_bytes([data[4], data[5], data[6], data[7]]));
    let payload = &data[8..];

    let mut whole = payload.to_vec();
    apply(&mut whole, key, start);
    for (i, (&o, &m)) in payload.iter().zip(&whole).enumerate() {
        let want = o ^ key[((start + i as u64) % 4) as usize];
        assert_eq!(m, want, "byte {i}");
    }

    // Cuts taken from the payload itself, plus every offset for short ones.
    let cuts: Vec<usize> = if payload.len() <= 64 {
        (0..=payload.len()).collect()
    } else {
        payload.iter().take(16).map(|&b| usize::from(b) * payload.len() / 255).collect()
    };
    for cut in cuts {
        let mut parts = payload.to_vec();
        let (a, b) = parts.split_at_mut(cut);
        apply(a, key, start);
        apply(b, key, start + cut as u64);
        assert_eq!(parts, whole, "cut at {cut}");
    }
    // Three pieces at fuzzer-chosen offsets.
    if payload.len() >= 2 {
        let c1 = usize::from(data[4]) % payload.len();
        let c2 = c1 + usize::from(data[5]) % (payload.len() - c1);
        let mut parts = payload.to_vec();
        apply(&mut parts[..c1], key, start);
        apply(&mut parts[c1..c2], key, start + c1 as u64);
        apply(&mut parts[c2..], key, start + c2 as u64);
        assert_eq!(parts, whole, "cuts {c1} {c2}");
    }

    let mut twice = whole.clone();
    apply(&mut twice, key, start);
    assert_eq!(twice, payload, "applying twice is not the identity");
    // Offsets differing by a multiple of 4 are equivalent.
    let mut shifted = payload.to_vec();
    apply(&mut shifted, key, start + 4 * u64::from(data[6]));
    assert_eq!(shifted, whole);
});
