//! Counters exposed at `GET /emu/stats` so tests can assert what the relay did on the wire.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// A framing violation of docs/proxmox.md §2.2 by the client (each one drops the connection).
#[derive(Clone, Copy, Debug)]
pub enum Violation {
    /// Client frame without the mask bit.
    Unmasked,
    /// Client frame with FIN=0 (fragmentation / continuation).
    Fin0,
    /// Any RSV bit set (e.g. permessage-deflate).
    Rsv,
    /// Payload larger than 131072 bytes.
    TooBig,
    /// Opcode other than 1, 2, 8, 9, 10.
    BadOpcode,
}

impl Violation {
    fn key(self) -> &'static str {
        match self {
            Violation::Unmasked => "unmasked",
            Violation::Fin0 => "fin0",
            Violation::Rsv => "rsv",
            Violation::TooBig => "too_big",
            Violation::BadOpcode => "bad_opcode",
        }
    }
}

/// All counters; one instance behind a mutex for the whole emulator.
#[derive(Default)]
pub struct Stats {
    counters: BTreeMap<&'static str, u64>,
    posts: BTreeMap<&'static str, u64>,
    violations: BTreeMap<&'static str, u64>,
    max_payload_seen: u64,
    resizes: Vec<(u64, u64)>,
    token_ids: Vec<String>,
    subprotocols: Vec<String>,
    non_binary_subprotocol: bool,
    vnc_passwords: u64,
}

/// The shared stats handle.
pub struct SharedStats(Mutex<Stats>);

impl SharedStats {
    /// Empty stats.
    pub fn new() -> Self {
        SharedStats(Mutex::new(Stats::default()))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Adds `n` to the named counter.
    pub fn add(&self, name: &'static str, n: u64) {
        self.with(|s| *s.counters.entry(name).or_default() += n);
    }

    /// Counts one POST to the named endpoint.
    pub fn post(&self, endpoint: &'static str) {
        self.with(|s| *s.posts.entry(endpoint).or_default() += 1);
    }

    /// Records a framing violation.
    pub fn violation(&self, v: Violation) {
        self.with(|s| *s.violations.entry(v.key()).or_default() += 1);
    }

    /// Records one received client frame and its payload size.
    pub fn frame(&self, payload: u64) {
        self.with(|s| {
            *s.counters.entry("frames_received").or_default() += 1;
            s.max_payload_seen = s.max_payload_seen.max(payload);
        });
    }

    /// Records a termproxy resize message.
    pub fn resize(&self, cols: u64, rows: u64) {
        self.with(|s| s.resizes.push((cols, rows)));
    }

    /// Records the token id (never the secret) of an Authorization header.
    pub fn token_id(&self, id: &str) {
        self.with(|s| {
            if !s.token_ids.iter().any(|t| t == id) {
                s.token_ids.push(id.to_string());
            }
        });
    }

    /// Records the Sec-WebSocket-Protocol header of an upgrade request.
    pub fn subprotocol(&self, value: &str) {
        self.with(|s| {
            if value != "binary" {
                s.non_binary_subprotocol = true;
            }
            if !s.subprotocols.iter().any(|t| t == value) {
                s.subprotocols.push(value.to_string());
            }
        });
    }

    /// Counts one QMP `set_password`.
    pub fn vnc_password_set(&self) {
        self.with(|s| s.vnc_passwords += 1);
    }

    /// The JSON document served at `/emu/stats`.
    pub fn to_json(&self) -> Value {
        self.with(|s| {
            let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
            let p = |k: &str| s.posts.get(k).copied().unwrap_or(0);
            let v = |k: &str| s.violations.get(k).copied().unwrap_or(0);
            json!({
                "requests": c("requests"),
                "auth_failures": c("auth_failures"),
                "posts": {
                    "qemu_vncproxy": p("qemu_vncproxy"),
                    "lxc_vncproxy": p("lxc_vncproxy"),
                    "qemu_termproxy": p("qemu_termproxy"),
                    "lxc_termproxy": p("lxc_termproxy"),
                },
                "websocket_requests": c("websocket_requests"),
                "websockets_opened": c("websockets_opened"),
                "websockets_closed": c("websockets_closed"),
                "backend_missing": c("backend_missing"),
                "backends_expired": c("backends_expired"),
                "frames_received": c("frames_received"),
                "text_frames": c("text_frames"),
                "binary_frames": c("binary_frames"),
                "close_frames": c("close_frames"),
                "max_payload_seen": s.max_payload_seen,
                "violations": {
                    "unmasked": v("unmasked"),
                    "fin0": v("fin0"),
                    "rsv": v("rsv"),
                    "too_big": v("too_big"),
                    "bad_opcode": v("bad_opcode"),
                },
                "pings_received": c("pings_received"),
                "pongs_sent": c("pongs_sent"),
                "pongs_received": c("pongs_received"),
                "frames_sent": c("frames_sent"),
                "bytes_to_backend": c("bytes_to_backend"),
                "bytes_to_client": c("bytes_to_client"),
                "mid_stream_closes": c("mid_stream_closes"),
                "burst_bytes": c("burst_bytes"),
                "resize_count": s.resizes.len(),
                "resizes": s.resizes.iter().map(|(c, r)| json!([c, r])).collect::<Vec<_>>(),
                "desyncs": c("desyncs"),
                "term_auth_ok": c("term_auth_ok"),
                "term_auth_failed": c("term_auth_failed"),
                "term_bytes_to_pty": c("term_bytes_to_pty"),
                "vnc_passwords_set": s.vnc_passwords,
                "rfb_auth_ok": c("rfb_auth_ok"),
                "rfb_auth_failed": c("rfb_auth_failed"),
                "token_ids": s.token_ids,
                "subprotocols": s.subprotocols,
                "non_binary_subprotocol": s.non_binary_subprotocol,
            })
        })
    }
}
