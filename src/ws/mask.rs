//! Payload masking (RFC 6455 §5.3).
//!
//! > The masking key is a 32-bit value chosen at random by the client.
//! > octet i of the transformed data is octet i of the original data XOR
//! > octet at index i modulo 4 of the masking key.
//!
//! Masking is its own inverse. `offset` is the position of `data[0]` inside
//! the frame payload, so a payload that arrives in several reads is unmasked
//! piece by piece without copying.

/// XORs `data` in place with `key`, starting at payload position `offset`.
#[inline]
pub fn apply(data: &mut [u8], key: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let key = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// A fresh masking key for a frame the relay sends as a client.
///
/// RFC 6455 §5.3 asks for keys an attacker cannot predict, so that a
/// malicious page cannot craft bytes that a transparent proxy misreads.
pub fn random_key() -> [u8; 4] {
    let mut key = [0u8; 4];
    // ring's SystemRandom reads getrandom(2); it cannot fail on Linux >= 3.17.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_hello_vector() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut p = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply(&mut p, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&p, b"Hello");
    }

    #[test]
    fn split_at_any_offset_equals_whole() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..=255u8).cycle().take(301).collect();
        let mut whole = orig.clone();
        apply(&mut whole, key, 0);
        for cut in 0..orig.len() {
            let mut parts = orig.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply(a, key, 0);
            apply(b, key, cut as u64);
            assert_eq!(parts, whole, "cut at {cut}");
        }
    }
}
