//! `http::parse_request` / `parse_response` with the default limits.
//!
//! Invariants: consumed ≤ input; a `Complete(n)` head parses again from
//! `input[..n]` to the same head and length; a strict prefix of the head is
//! never a (different) complete head; `TooLarge` only past `max_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexor_relay::http::{parse_request, parse_response, HeadError, HeadLimits};

/// The strict prefixes checked: all of them for short heads, else a spread
/// plus the last 16 (where the terminator is being completed).
fn prefixes(n: usize) -> Vec<usize> {
    if n <= 96 {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..64).map(|i| i * n / 64).collect();
    v.extend(n - 16..n);
    v
}

fn check<H: PartialEq + std::fmt::Debug>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<(H, usize)>, HeadError>,
) {
    let limits = HeadLimits::default();
    match parse(data) {
        Ok(Some((head, n))) => {
            assert!(n <= data.len(), "consumed {n} > {}", data.len());
            assert!(n <= limits.max_head, "head of {n} bytes over max_head");
            assert!(n > 0);
            match parse(&data[..n]) {
                Ok(Some((again, m))) => {
                    assert_eq!(m, n, "re-parse of the head consumed differently");
                    assert_eq!(again, head, "re-parse of the head differs");
                }
                other => panic!("head [..{n}] re-parsed as {other:?}"),
            }
            for cut in prefixes(n) {
                if let Ok(Some((h, m))) = parse(&data[..cut]) {
                    panic!("strict prefix {cut} of a {n}-byte head is complete ({m}): {h:?}");
                }
            }
        }
        Ok(None) => {
            assert!(
                data.len() <= limits.max_head,
                "incomplete with {} bytes > max_head",
                data.len()
            );
        }
        Err(HeadError::TooLarge) => {
            assert!(data.len() >= limits.max_head, "TooLarge on {} bytes", data.len());
        }
        Err(e) => {
            assert!(!e.label().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    check(data, |b| parse_request(b, limits));
    check(data, |b| parse_response(b, limits));
});
