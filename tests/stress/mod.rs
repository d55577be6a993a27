//! Helpers for the lossless tests (tests/tls_glue.rs, tests/lossless.rs):
//! a seeded PRNG, a byte stream that is a function of its seed and offset
//! (so every byte is checked where it lands), and CPU load.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---- deterministic randomness and data ----------------------------------------

/// xorshift64*, seeded through splitmix64 (never zero).
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// A write size from 1 B to 200 kB: tiny, about one record, or large.
    pub fn write_size(&mut self) -> usize {
        match self.next() % 3 {
            0 => self.range(1, 64),
            1 => self.range(1, 20_000),
            _ => self.range(1, 200_000),
        }
    }
}

pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream's bytes `at..at + out.len()`: a function of the stream's
/// seed and the offset, so a reader checks each chunk where it lands.
pub fn fill(stream: u64, at: u64, out: &mut [u8]) {
    let mut word = u64::MAX;
    let mut bytes = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        let pos = at + i as u64;
        if pos / 8 != word {
            word = pos / 8;
            bytes = mix(stream ^ word.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
        }
        *b = bytes[(pos % 8) as usize];
    }
}

/// Checks that `got` is the stream's bytes at `at`; panics at the first
/// byte that differs.
pub fn check(who: &str, stream: u64, at: u64, got: &[u8]) {
    let mut want = vec![0u8; got.len()];
    fill(stream, at, &mut want);
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{who}: byte {} differs (lost, duplicated or reordered)",
            at + i as u64
        );
    }
}

// ---- CPU load -------------------------------------------------------------------

/// One busy thread per core until dropped (or `limit` passed).
pub struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Spinners {
    pub fn start(limit: Duration) -> Spinners {
        let stop = Arc::new(AtomicBool::new(false));
        let n = thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let t = Instant::now();
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) && t.elapsed() < limit {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(mix(x));
                        }
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
