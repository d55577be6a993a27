//! HS256 ticket minting (the portal's side of the relay's ticket check).
//!
//! Twenty lines instead of a dependency on the relay crate: the load
//! generator must not share code with what it measures.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Mints fresh tickets (unique `jti` each) for one random key.
pub struct Minter {
    key: hmac::Key,
    secret_b64: String,
    header: String,
    nonce: u64,
    counter: AtomicU64,
}

/// Key id used in the relay config and in every ticket header.
pub const KID: &str = "bench";

impl Minter {
    /// A minter with a fresh random 32-byte key.
    pub fn new() -> Self {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("system random");
        let nonce = u64::from_le_bytes(secret[..8].try_into().unwrap()) ^ std::process::id() as u64;
        Minter {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            secret_b64: STANDARD.encode(secret),
            header: URL_SAFE_NO_PAD
                .encode(format!(r#"{{"alg":"HS256","kid":"{KID}","typ":"JWT"}}"#)),
            nonce,
            counter: AtomicU64::new(0),
        }
    }

    /// The secret as the relay's `[tickets] keys` wants it (standard base64).
    pub fn secret_b64(&self) -> &str {
        &self.secret_b64
    }

    /// A ticket for `upstream`, valid for 60 s from now.
    pub fn mint(&self, upstream: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let claims = format!(
            r#"{{"exp":{},"iat":{now},"jti":"{:016x}{n:016x}","sub":"bench","upstream":"{upstream}","console":"vnc"}}"#,
            now + 60,
            self.nonce
        );
        let mut t = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims));
        let tag = hmac::sign(&self.key, t.as_bytes());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        t
    }
}
