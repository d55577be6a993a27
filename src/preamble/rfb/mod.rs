//! Proxmox VNC preamble (docs/proxmox.md §6.4): the relay terminates the RFB
//! security phase on both legs, so the browser never sees the VNC password.
//!
//! Upstream (QEMU or vncterm behind pveproxy) the relay is the RFB client and
//! logs in with VNC Authentication (RFC 6143 §7.2.2, docs/proxmox.md §6.2).
//! Downstream it is an RFB server offering only security type None (RFC 6143
//! §7.2.1), which noVNC accepts. After both security phases the two RFB
//! streams line up: the browser's ClientInit goes upstream, the upstream's
//! ServerInit comes back, and the legs are spliced.
//!
//! # Upstream (relay = client, R; QEMU/vncterm = S)
//!
//! ```text
//! S: "RFB 003.008\n"               any 3.y with y >= 8 is taken as 3.8
//! R: "RFB 003.008\n"
//! S: u8 n, n × u8 type             QEMU/vncterm: 01 02
//!    n = 0: u32 len, reason        → NoSecurityTypes
//! R: 02                            VNC Authentication; not offered → VncAuthNotOffered
//! S: 16-byte challenge
//! R: DES-ECB(key, ch[0..8]) ‖ DES-ECB(key, ch[8..16])
//! S: u32 SecurityResult            0 = OK
//!    else: u32 len, reason         → VncAuthFailed ("Authentication failed\0")
//! S: ServerInit ...                only after ClientInit; held until the splice
//! ```
//!
//! # Downstream (relay = server, R; noVNC = C)
//!
//! ```text
//! R: "RFB 003.008\n"               at once, from start()
//! C: "RFB 003.00x\n"               3.3 (also 3.4, 3.5), 3.7, 3.8 (also 3.y, y > 8)
//! 3.7 / 3.8:  R: 01 01             one security type: 1 = None
//!             C: 01                anything else → BrowserBadSecurityType
//!             R: 00 00 00 00       SecurityResult OK, 3.8 only (also sent for None)
//! 3.3:        R: 00 00 00 01       u32 security type None, no SecurityResult
//! C: ClientInit u8 shared-flag     held until the upstream login is OK;
//!                                  forced to 1 when force_shared
//! ```
//!
//! > QEMU's default share policy `allow-exclusive` lets a shared-flag 0
//! > client disconnect all other viewers (docs/proxmox.md §6.4)
//!
//! hence `force_shared`.
//!
//! # Timing
//!
//! Proxmox's VNC password expires 30 s after `qm vncproxy` starts, so the
//! upstream login runs at once, whatever the browser does; the browser's
//! handshake runs in parallel. The preamble is done when the upstream said
//! OK **and** the browser sent its ClientInit: then ClientInit and anything
//! after it go upstream, anything the upstream sent after its SecurityResult
//! goes to the browser, and from then on bytes pass unchanged.

use std::fmt;

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

use super::{sanitize, trim_nuls, Fault, PreambleError, MAX_HELD, MAX_REASON};

/// The version the relay speaks on both legs (RFC 6143 §7.1.1).
const VERSION_38: &[u8; 12] = b"RFB 003.008\n";
/// Security type VNC Authentication (RFC 6143 §7.2.2).
const SEC_VNC_AUTH: u8 = 2;
/// Security type None (RFC 6143 §7.2.1).
const SEC_NONE: u8 = 1;
/// More than either security phase ever consumes (upstream at most 12 + 1 +
/// 255 + 4 + [`MAX_REASON`] + 16 + 4 bytes; browser 13): input beyond this
/// plus [`MAX_HELD`] is refused before it is buffered.
const MAX_PHASE: usize = 1024;
/// Reason sent to a 3.8 browser that chose a type we did not offer.
const BAD_SECURITY_REASON: &[u8] = b"security type not offered";

/// The DES key of VNC Authentication for `password` (docs/proxmox.md §6.2):
/// `key[i] = bitreverse8(pw[i])` for the first 8 bytes, zero-padded. Bytes
/// past the eighth do not matter.
pub fn vnc_des_key(password: &[u8]) -> [u8; 8] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    key
}

/// The 16-byte answer to a VNC Authentication challenge (docs/proxmox.md §6.2):
/// `DES-ECB(key, challenge[0..8]) ‖ DES-ECB(key, challenge[8..16])` with
/// the key of [`vnc_des_key`].
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    des_response(&vnc_des_key(password), challenge)
}

/// DES-ECB of both challenge halves under an already bit-reversed key.
fn des_response(key: &[u8; 8], challenge: &[u8; 16]) -> [u8; 16] {
    let cipher = Des::new(&GenericArray::from(*key));
    let mut out = [0u8; 16];
    for (o, c) in out.chunks_exact_mut(8).zip(challenge.chunks_exact(8)) {
        let mut block = GenericArray::from(to_array::<8>(c));
        cipher.encrypt_block(&mut block);
        for (d, s) in o.iter_mut().zip(block) {
            *d = s;
        }
    }
    out
}

/// RFB version of a browser (RFC 6143 §7.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V33,
    V37,
    V38,
}

/// Parses `RFB xxx.yyy\n` into (major, minor); `None` if malformed.
fn parse_version(m: &[u8; 12]) -> Option<(u32, u32)> {
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if !m.starts_with(b"RFB ") || m.get(7) != Some(&b'.') || m.get(11) != Some(&b'\n') {
        return None;
    }
    Some((digits(m.get(4..7)?)?, digits(m.get(8..11)?)?))
}

/// Where the upstream (relay = RFB client) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    /// Waiting for the 12-byte server version.
    Version,
    /// Waiting for the u8 number of security types.
    SecCount,
    /// Waiting for that many security types.
    SecTypes(usize),
    /// n was 0: waiting for the u32 reason length.
    NoTypesLen,
    /// Waiting for the challenge.
    Challenge,
    /// Waiting for the u32 SecurityResult.
    Result,
    /// SecurityResult failed with this status: waiting for the u32 reason length.
    FailedLen(u32),
    /// Waiting for `len` reason bytes (already capped at [`MAX_REASON`]).
    Reason {
        failed: Option<u32>,
        len: usize,
        truncated: bool,
    },
    /// SecurityResult OK; later bytes are held for the browser.
    Authenticated,
}

/// Where the browser (relay = RFB server) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Br {
    /// Waiting for the 12-byte client version.
    Version,
    /// 3.7/3.8: waiting for the security type chosen.
    Choice(Version),
    /// Past security: the next byte is ClientInit; it and later bytes are held.
    ClientInit,
}

/// The Proxmox VNC preamble of one console: RFB client upstream, RFB server
/// (security None) to the browser. See the module doc for the wire.
///
/// Keeps only the derived 8-byte DES key, never the password, and forgets it
/// once the challenge is answered. `Debug` does not print it.
pub struct VncPreamble {
    /// DES key (bit-reversed password); `None` once used or after an error.
    key: Option<[u8; 8]>,
    force_shared: bool,
    greeted: bool,
    up: Up,
    /// Upstream bytes not yet consumed (a partial message, or held bytes).
    up_buf: Vec<u8>,
    br: Br,
    /// Browser bytes not yet consumed (a partial message, or held bytes
    /// starting with ClientInit).
    br_buf: Vec<u8>,
    done: bool,
    failed: bool,
}

impl fmt::Debug for VncPreamble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VncPreamble")
            .field("force_shared", &self.force_shared)
            .field("up", &self.up)
            .field("up_held", &self.up_buf.len())
            .field("br", &self.br)
            .field("br_held", &self.br_buf.len())
            .field("done", &self.done)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl VncPreamble {
    /// A preamble that logs in upstream with `password`: the vncproxy
    /// answer's `password` field if present, else its whole `ticket` (only
    /// the first 8 bytes matter to DES; do not split it at `:`).
    ///
    /// `force_shared` rewrites the browser's ClientInit shared-flag to 1 (the
    /// relay's default; see the module doc).
    ///
    /// Nothing goes upstream until the server's version arrives.
    pub fn new(password: &[u8], force_shared: bool) -> Self {
        VncPreamble {
            key: Some(vnc_des_key(password)),
            force_shared,
            greeted: false,
            up: Up::Version,
            up_buf: Vec::new(),
            br: Br::Version,
            br_buf: Vec::new(),
            done: false,
            failed: false,
        }
    }

    /// Appends the browser greeting `RFB 003.008\n` to `to_browser`. Send it
    /// at once; the other calls send it first themselves if `start` was not
    /// called, and it is never sent twice.
    pub fn start(&mut self, to_browser: &mut Vec<u8>) {
        if !self.greeted {
            self.greeted = true;
            to_browser.extend_from_slice(VERSION_38);
        }
    }

    /// Feeds payload bytes from the upstream (any split). Appends what to
    /// send upstream and to the browser.
    ///
    /// # Errors
    /// The upstream broke or refused the login ([`PreambleError::fault`] says
    /// who); close both legs. Any later call returns
    /// [`PreambleError::AfterError`].
    pub fn on_upstream(
        &mut self,
        data: &[u8],
        to_upstream: &mut Vec<u8>,
        to_browser: &mut Vec<u8>,
    ) -> Result<(), PreambleError> {
        self.guard(to_browser)?;
        if self.done {
            to_browser.extend_from_slice(data);
            return Ok(());
        }
        if self.up_buf.len().saturating_add(data.len()) > MAX_HELD + MAX_PHASE {
            return self.fail_on_err(Err(PreambleError::HeldTooLarge(Fault::Upstream)));
        }
        self.up_buf.extend_from_slice(data);
        let r = self.drive_upstream(to_upstream);
        self.fail_on_err(r)?;
        self.finish(to_upstream, to_browser);
        Ok(())
    }

    /// Feeds payload bytes from the browser (any split). Appends what to
    /// send upstream and to the browser.
    ///
    /// # Errors
    /// As [`VncPreamble::on_upstream`]. A 3.8 browser that chose a type other
    /// than None also gets a failed SecurityResult with a reason in
    /// `to_browser`: send it, then close.
    pub fn on_browser(
        &mut self,
        data: &[u8],
        to_upstream: &mut Vec<u8>,
        to_browser: &mut Vec<u8>,
    ) -> Result<(), PreambleError> {
        self.guard(to_browser)?;
        if self.done {
            to_upstream.extend_from_slice(data);
            return Ok(());
        }
        if self.br_buf.len().saturating_add(data.len()) > MAX_HELD + MAX_PHASE {
            return self.fail_on_err(Err(PreambleError::HeldTooLarge(Fault::Browser)));
        }
        self.br_buf.extend_from_slice(data);
        let r = self.drive_browser(to_browser);
        self.fail_on_err(r)?;
        self.finish(to_upstream, to_browser);
        Ok(())
    }

    /// The upstream closed its leg. Ok once done (the glue closes as usual);
    /// before, [`PreambleError::UpstreamClosed`].
    ///
    /// # Errors
    /// [`PreambleError::UpstreamClosed`] before [`VncPreamble::is_done`].
    pub fn on_upstream_eof(&mut self) -> Result<(), PreambleError> {
        if self.failed {
            return Err(PreambleError::AfterError);
        }
        if self.done {
            return Ok(());
        }
        self.fail_on_err(Err(PreambleError::UpstreamClosed))
    }

    /// True once the upstream said OK, the browser sent ClientInit, and the
    /// held bytes were emitted: from now on bytes pass unchanged (the glue
    /// splices; if it keeps calling `on_*`, they pass through as well).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once the upstream's SecurityResult was OK. The per-VM
    /// "websocket connect → RFB login" lock (docs/proxmox.md §12) can be released
    /// here, before the browser has finished.
    pub fn upstream_authenticated(&self) -> bool {
        self.up == Up::Authenticated
    }

    /// Sends the greeting if needed; refuses calls after an error.
    fn guard(&mut self, to_browser: &mut Vec<u8>) -> Result<(), PreambleError> {
        if self.failed {
            return Err(PreambleError::AfterError);
        }
        self.start(to_browser);
        Ok(())
    }

    /// On error: forget the key and held bytes; later calls fail.
    fn fail_on_err(&mut self, r: Result<(), PreambleError>) -> Result<(), PreambleError> {
        if r.is_err() {
            self.failed = true;
            self.key = None;
            self.up_buf = Vec::new();
            self.br_buf = Vec::new();
        }
        r
    }

    /// Consumes whole upstream messages from `up_buf` while any are complete.
    fn drive_upstream(&mut self, to_upstream: &mut Vec<u8>) -> Result<(), PreambleError> {
        loop {
            let need = match self.up {
                Up::Version => 12,
                Up::SecCount => 1,
                Up::SecTypes(n) => n,
                Up::NoTypesLen | Up::Result | Up::FailedLen(_) => 4,
                Up::Challenge => 16,
                Up::Reason { len, .. } => len,
                Up::Authenticated => break,
            };
            if self.up_buf.len() < need {
                break;
            }
            let msg: Vec<u8> = self.up_buf.drain(..need).collect();
            self.up = self.upstream_message(&msg, to_upstream)?;
        }
        if self.up_buf.len() > MAX_HELD {
            return Err(PreambleError::HeldTooLarge(Fault::Upstream));
        }
        Ok(())
    }

    /// Handles one whole upstream message; returns the next state.
    fn upstream_message(
        &mut self,
        msg: &[u8],
        to_upstream: &mut Vec<u8>,
    ) -> Result<Up, PreambleError> {
        Ok(match self.up {
            Up::Version => {
                let raw = to_array::<12>(msg);
                match parse_version(&raw) {
                    Some((3, 8..)) => {
                        to_upstream.extend_from_slice(VERSION_38);
                        Up::SecCount
                    }
                    _ => return Err(PreambleError::UpstreamBadVersion(raw)),
                }
            }
            Up::SecCount => match msg.first() {
                Some(0) | None => Up::NoTypesLen,
                Some(&n) => Up::SecTypes(usize::from(n)),
            },
            Up::SecTypes(_) => {
                if !msg.contains(&SEC_VNC_AUTH) {
                    return Err(PreambleError::VncAuthNotOffered(msg.to_vec()));
                }
                to_upstream.push(SEC_VNC_AUTH);
                Up::Challenge
            }
            Up::NoTypesLen => reason_state(None, msg),
            Up::Challenge => {
                let key = self.key.take().unwrap_or_default();
                to_upstream.extend_from_slice(&des_response(&key, &to_array::<16>(msg)));
                Up::Result
            }
            Up::Result => match u32::from_be_bytes(to_array::<4>(msg)) {
                0 => Up::Authenticated,
                status => Up::FailedLen(status),
            },
            Up::FailedLen(status) => reason_state(Some(status), msg),
            Up::Reason {
                failed, truncated, ..
            } => {
                let reason = sanitize(trim_nuls(msg), truncated);
                return Err(match failed {
                    None => PreambleError::NoSecurityTypes { reason },
                    Some(status) => PreambleError::VncAuthFailed { status, reason },
                });
            }
            Up::Authenticated => Up::Authenticated,
        })
    }

    /// Consumes whole browser messages from `br_buf` up to ClientInit.
    fn drive_browser(&mut self, to_browser: &mut Vec<u8>) -> Result<(), PreambleError> {
        loop {
            let need = match self.br {
                Br::Version => 12,
                Br::Choice(_) => 1,
                Br::ClientInit => break,
            };
            if self.br_buf.len() < need {
                break;
            }
            let msg: Vec<u8> = self.br_buf.drain(..need).collect();
            self.br = match self.br {
                Br::Version => {
                    let raw = to_array::<12>(&msg);
                    let v = match parse_version(&raw) {
                        Some((3, 3..=5)) => Version::V33,
                        Some((3, 7)) => Version::V37,
                        Some((3, 8..)) => Version::V38,
                        _ => return Err(PreambleError::BrowserBadVersion(raw)),
                    };
                    if v == Version::V33 {
                        // 3.3: the server decides; u32 type, no SecurityResult.
                        to_browser.extend_from_slice(&u32::from(SEC_NONE).to_be_bytes());
                        Br::ClientInit
                    } else {
                        to_browser.extend_from_slice(&[1, SEC_NONE]);
                        Br::Choice(v)
                    }
                }
                Br::Choice(v) => {
                    let chosen = msg.first().copied().unwrap_or_default();
                    if chosen != SEC_NONE {
                        if v == Version::V38 {
                            // RFC 6143 §7.1.3: failed, with a reason (3.8).
                            to_browser.extend_from_slice(&1u32.to_be_bytes());
                            to_browser.extend_from_slice(&reason_len(BAD_SECURITY_REASON));
                            to_browser.extend_from_slice(BAD_SECURITY_REASON);
                        }
                        return Err(PreambleError::BrowserBadSecurityType(chosen));
                    }
                    if v == Version::V38 {
                        // 3.8 sends SecurityResult also for None (RFC 6143 §7.1.3).
                        to_browser.extend_from_slice(&0u32.to_be_bytes());
                    }
                    Br::ClientInit
                }
                Br::ClientInit => Br::ClientInit,
            };
        }
        if self.br_buf.len() > MAX_HELD {
            return Err(PreambleError::HeldTooLarge(Fault::Browser));
        }
        Ok(())
    }

    /// Splices once the upstream is authenticated and ClientInit is here:
    /// ClientInit (shared-flag forced) and later browser bytes go upstream,
    /// held upstream bytes go to the browser.
    fn finish(&mut self, to_upstream: &mut Vec<u8>, to_browser: &mut Vec<u8>) {
        if self.done || self.up != Up::Authenticated || self.br != Br::ClientInit {
            return;
        }
        let Some(shared) = self.br_buf.first_mut() else {
            return;
        };
        if self.force_shared {
            *shared = 1;
        }
        to_upstream.append(&mut self.br_buf);
        to_browser.append(&mut self.up_buf);
        self.br_buf = Vec::new();
        self.up_buf = Vec::new();
        self.done = true;
    }
}

/// The state after a u32 reason length: wait for at most [`MAX_REASON`]
/// bytes of it.
fn reason_state(failed: Option<u32>, len_be: &[u8]) -> Up {
    let len = u32::from_be_bytes(to_array::<4>(len_be));
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    Up::Reason {
        failed,
        len: len.min(MAX_REASON),
        truncated: len > MAX_REASON,
    }
}

/// The u32 big-endian length of a reason string.
fn reason_len(reason: &[u8]) -> [u8; 4] {
    u32::try_from(reason.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
}

/// The first `N` bytes of `msg`, zero-padded (callers pass exactly `N`).
fn to_array<const N: usize>(msg: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, s) in a.iter_mut().zip(msg) {
        *d = *s;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The §6.2 test challenge 00 01 .. 0f.
    const CHALLENGE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    /// DES response for `password` to [`CHALLENGE`] (docs/proxmox.md §6.2).
    const RESPONSE: &str = "b866924125c8eebb9debc1db61c538e2";
    const V38: &[u8] = b"RFB 003.008\n";
    const V37: &[u8] = b"RFB 003.007\n";
    const V33: &[u8] = b"RFB 003.003\n";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(
                |i| match u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16) {
                    Ok(b) => b,
                    Err(e) => panic!("bad hex {s}: {e}"),
                },
            )
            .collect()
    }

    fn must(r: Result<(), PreambleError>) {
        if let Err(e) = r {
            panic!("unexpected error: {e}");
        }
    }

    /// A minimal ServerInit: 744x400, 32 bpp, name "VNC Command Terminal".
    fn server_init() -> Vec<u8> {
        let mut v = vec![0x02, 0xe8, 0x01, 0x90];
        v.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        v.extend_from_slice(&20u32.to_be_bytes());
        v.extend_from_slice(b"VNC Command Terminal");
        v
    }

    /// What QEMU sends up to and including SecurityResult OK.
    fn upstream_login() -> Vec<u8> {
        [V38, &[1, 2], &CHALLENGE, &[0, 0, 0, 0]].concat()
    }

    /// What the relay must send upstream for password `password`.
    fn relay_login() -> Vec<u8> {
        [V38, &[2], &hex(RESPONSE)].concat()
    }

    /// Browser messages after ClientInit: SetEncodings (Raw) and a
    /// FramebufferUpdateRequest. Contain 0 bytes that must not be touched.
    const AFTER_INIT: &[u8] = &[2, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 2, 0xe8, 1, 0x90];

    /// Everything a browser of `version` sends, ClientInit shared-flag 0.
    fn browser_all(version: &[u8]) -> Vec<u8> {
        let choice: &[u8] = if version == V33 { &[] } else { &[1] };
        [version, choice, &[0], AFTER_INIT].concat()
    }

    /// What the relay answers a browser of `version` in its security phase.
    fn browser_replies(version: &[u8]) -> Vec<u8> {
        match version {
            v if v == V33 => [V38, &[0, 0, 0, 1]].concat(),
            v if v == V37 => [V38, &[1, 1]].concat(),
            _ => [V38, &[1, 1], &[0, 0, 0, 0]].concat(),
        }
    }

    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    struct Out {
        up: Vec<u8>,
        br: Vec<u8>,
    }

    fn new() -> VncPreamble {
        VncPreamble::new(b"password", true)
    }

    fn up(p: &mut VncPreamble, data: &[u8], o: &mut Out) -> Result<(), PreambleError> {
        p.on_upstream(data, &mut o.up, &mut o.br)
    }

    fn br(p: &mut VncPreamble, data: &[u8], o: &mut Out) -> Result<(), PreambleError> {
        p.on_browser(data, &mut o.up, &mut o.br)
    }

    /// Whole upstream, then whole browser input.
    fn whole(upstream: &[u8], browser: &[u8]) -> Out {
        let mut p = new();
        let mut o = Out::default();
        p.start(&mut o.br);
        must(up(&mut p, upstream, &mut o));
        must(br(&mut p, browser, &mut o));
        assert!(p.is_done());
        o
    }

    #[test]
    fn des_matches_the_spec_vectors() {
        assert_eq!(vnc_des_key(b"password").to_vec(), hex("0e86ceceeef64e26"));
        assert_eq!(vnc_des_key(b"Ab3!x:Z9").to_vec(), hex("8246cc841e5c5a9c"));
        assert_eq!(
            vnc_auth_response(b"password", &CHALLENGE).to_vec(),
            hex(RESPONSE)
        );
        assert_eq!(
            vnc_auth_response(b"Ab3!x:Z9", &CHALLENGE).to_vec(),
            hex("e4d64cf5c2ee8375299ac44ed9419cc5")
        );
    }

    #[test]
    fn des_uses_only_the_first_8_bytes_zero_padded() {
        // A whole vncproxy ticket works as the password: only 8 bytes count.
        assert_eq!(
            vnc_auth_response(b"Ab3!x:Z9::rest-of-the-ticket", &CHALLENGE),
            vnc_auth_response(b"Ab3!x:Z9", &CHALLENGE)
        );
        assert_eq!(vnc_des_key(b"ab"), [0x86, 0x46, 0, 0, 0, 0, 0, 0]);
        assert_eq!(vnc_des_key(b""), [0; 8]);
    }

    #[test]
    fn full_conversation_for_each_browser_version() {
        for v in [V38, V37, V33] {
            let upstream = [upstream_login(), server_init()].concat();
            let mut p = new();
            let mut o = Out::default();
            p.start(&mut o.br);
            assert_eq!(o.br, V38, "greeting at once");
            assert!(o.up.is_empty(), "nothing upstream before its version");

            // The upstream login runs alone first (QEMU's 30 s window).
            must(up(&mut p, V38, &mut o));
            assert_eq!(o.up, V38);
            must(up(&mut p, &[1, 2], &mut o));
            assert_eq!(o.up, [V38, &[2]].concat());
            must(up(&mut p, &CHALLENGE, &mut o));
            assert_eq!(o.up, relay_login());
            must(up(&mut p, &[0, 0, 0, 0], &mut o));
            assert!(p.upstream_authenticated());
            assert!(!p.is_done());

            // Then the browser, all of it in one chunk.
            must(br(&mut p, &browser_all(v), &mut o));
            assert!(p.is_done());
            assert_eq!(o.br, browser_replies(v));
            assert_eq!(o.up, [relay_login(), vec![1], AFTER_INIT.to_vec()].concat());

            // ServerInit passes through once done.
            must(up(&mut p, &server_init(), &mut o));
            assert_eq!(o.br, [browser_replies(v), server_init()].concat());
            assert_eq!(o, whole(&upstream, &browser_all(v)), "{v:?}");
        }
    }

    #[test]
    fn accepts_later_server_versions_as_38() {
        for v in [&b"RFB 003.889\n"[..], b"RFB 003.010\n"] {
            let mut p = new();
            let mut o = Out::default();
            must(up(&mut p, v, &mut o));
            assert_eq!(o.up, V38);
        }
    }

    #[test]
    fn refuses_old_or_malformed_server_versions() {
        for v in [
            &b"RFB 003.007\n"[..],
            b"RFB 003.003\n",
            b"RFB 004.000\n",
            b"HTTP/1.1 400",
            b"RFB 003.00a\n",
            b"RFB 003.008\r",
        ] {
            let mut p = new();
            let mut o = Out::default();
            let r = up(&mut p, v, &mut o);
            assert_eq!(
                r.as_ref().map_err(|e| e.label()),
                Err("vnc_upstream_version")
            );
            assert_eq!(r.map_err(|e| e.fault()), Err(Fault::Upstream));
            assert!(o.up.is_empty(), "{v:?}");
        }
    }

    #[test]
    fn browser_version_aliases() {
        for (v, reply) in [
            (&b"RFB 003.004\n"[..], &[0, 0, 0, 1][..]),
            (b"RFB 003.005\n", &[0, 0, 0, 1]),
            (b"RFB 003.889\n", &[1, 1]),
            (b"RFB 003.008\n", &[1, 1]),
        ] {
            let mut p = new();
            let mut o = Out::default();
            must(br(&mut p, v, &mut o));
            assert_eq!(o.br, [V38, reply].concat(), "{v:?}");
        }
    }

    #[test]
    fn refuses_bad_browser_versions() {
        for v in [
            &b"RFB 003.006\n"[..],
            b"RFB 003.002\n",
            b"RFB 004.001\n",
            b"GET / HTTP/1",
        ] {
            let mut p = new();
            let mut o = Out::default();
            let r = br(&mut p, v, &mut o);
            assert_eq!(
                r.as_ref().map_err(|e| e.label()),
                Err("vnc_browser_version")
            );
            assert_eq!(r.map_err(|e| e.fault()), Err(Fault::Browser));
            assert_eq!(o.br, V38);
            assert_eq!(br(&mut p, b"", &mut o), Err(PreambleError::AfterError));
        }
    }

    #[test]
    fn refuses_a_bad_browser_choice() {
        // 3.8: a failed SecurityResult with a reason, then the error.
        let mut p = new();
        let mut o = Out::default();
        let r = br(&mut p, &[V38, &[2]].concat(), &mut o);
        assert_eq!(r, Err(PreambleError::BrowserBadSecurityType(2)));
        let mut expect = [V38, &[1, 1], &[0, 0, 0, 1], &[0, 0, 0, 25]].concat();
        expect.extend_from_slice(b"security type not offered");
        assert_eq!(o.br, expect);
        // 3.7: no SecurityResult on failure.
        let mut p = new();
        let mut o = Out::default();
        let r = br(&mut p, &[V37, &[0]].concat(), &mut o);
        assert_eq!(r, Err(PreambleError::BrowserBadSecurityType(0)));
        assert_eq!(o.br, [V38, &[1, 1]].concat());
    }

    #[test]
    fn auth_failure_carries_the_upstream_reason() {
        for (reason, text) in [
            (&b"Authentication failed\0"[..], "Authentication failed"),
            (b"password check failed!", "password check failed!"),
        ] {
            let mut p = new();
            let mut o = Out::default();
            let mut failure = vec![0, 0, 0, 1];
            failure.extend_from_slice(&reason_len(reason));
            failure.extend_from_slice(reason);
            let input = [V38, &[1, 2], &CHALLENGE, &failure].concat();
            if reason.len() == 22 {
                assert_eq!(&failure[4..8], &[0, 0, 0, 22], "QEMU's length");
            }
            // Every split point ends in the same error, never earlier.
            for i in 0..input.len() {
                let mut p2 = new();
                let mut o2 = Out::default();
                must(up(&mut p2, &input[..i], &mut o2));
                let r = up(&mut p2, &input[i..], &mut o2);
                assert_eq!(r.map_err(|e| e.label()), Err("vnc_auth_failed"));
            }
            let r = up(&mut p, &input, &mut o);
            assert_eq!(
                r,
                Err(PreambleError::VncAuthFailed {
                    status: 1,
                    reason: text.into()
                })
            );
            assert_eq!(o.up, relay_login());
            assert!(!p.upstream_authenticated());
            assert_eq!(up(&mut p, &[], &mut o), Err(PreambleError::AfterError));
        }
    }

    #[test]
    fn long_reasons_are_cut_without_waiting_for_the_rest() {
        let mut p = new();
        let mut o = Out::default();
        let mut input = [V38, &[1, 2], &CHALLENGE, &[0, 0, 0, 1]].concat();
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        input.extend_from_slice(&[b'x'; MAX_REASON]);
        match up(&mut p, &input, &mut o) {
            Err(PreambleError::VncAuthFailed { reason, .. }) => {
                assert_eq!(reason, format!("{}...", "x".repeat(MAX_REASON)));
            }
            r => panic!("unexpected {r:?}"),
        }
    }

    #[test]
    fn zero_security_types_fail_with_the_reason() {
        let mut p = new();
        let mut o = Out::default();
        let input = [V38, &[0], &[0, 0, 0, 14], b"Too many users"].concat();
        must(up(&mut p, &input[..input.len() - 1], &mut o));
        let r = up(&mut p, &input[input.len() - 1..], &mut o);
        assert_eq!(
            r,
            Err(PreambleError::NoSecurityTypes {
                reason: "Too many users".into()
            })
        );
        assert_eq!(o.up, V38, "no choice sent");
        // An empty reason fails at once.
        let mut p = new();
        let r = up(&mut p, &[V38, &[0, 0, 0, 0, 0]].concat(), &mut o);
        assert_eq!(r.map_err(|e| e.label()), Err("vnc_no_security_types"));
    }

    #[test]
    fn refuses_an_upstream_without_vnc_auth() {
        let mut p = new();
        let mut o = Out::default();
        let r = up(&mut p, &[V38, &[2, 1, 19]].concat(), &mut o);
        assert_eq!(r, Err(PreambleError::VncAuthNotOffered(vec![1, 19])));
        assert_eq!(o.up, V38);
        // Type 2 among others is chosen.
        let mut p = new();
        let mut o = Out::default();
        must(up(&mut p, &[V38, &[3, 19, 2, 1]].concat(), &mut o));
        assert_eq!(o.up, [V38, &[2]].concat());
    }

    #[test]
    fn forces_the_shared_flag_only_when_asked() {
        for (force, flag, sent) in [(true, 0, 1), (true, 1, 1), (false, 0, 0), (false, 1, 1)] {
            let mut p = VncPreamble::new(b"password", force);
            let mut o = Out::default();
            must(up(&mut p, &upstream_login(), &mut o));
            must(br(
                &mut p,
                &[V38, &[1], &[flag], AFTER_INIT].concat(),
                &mut o,
            ));
            assert_eq!(
                o.up,
                [relay_login(), vec![sent], AFTER_INIT.to_vec()].concat()
            );
        }
        // ClientInit arriving after the splice point is still forced.
        let mut p = new();
        let mut o = Out::default();
        must(up(&mut p, &upstream_login(), &mut o));
        must(br(&mut p, &[V38, &[1]].concat(), &mut o));
        assert!(!p.is_done(), "not done before ClientInit");
        must(br(&mut p, &[0], &mut o));
        assert!(p.is_done());
        assert_eq!(o.up, [relay_login(), vec![1]].concat());
    }

    #[test]
    fn server_init_glued_to_security_result_is_held_then_passed() {
        let mut p = new();
        let mut o = Out::default();
        p.start(&mut o.br);
        must(up(
            &mut p,
            &[upstream_login(), server_init()].concat(),
            &mut o,
        ));
        assert!(p.upstream_authenticated());
        assert_eq!(o.br, V38, "held until the browser is ready");
        must(br(&mut p, &[V38, &[1]].concat(), &mut o));
        assert_eq!(o.br, browser_replies(V38), "still held: no ClientInit");
        must(br(&mut p, &[0], &mut o));
        assert_eq!(o.br, [browser_replies(V38), server_init()].concat());
        assert_eq!(o.up, [relay_login(), vec![1]].concat());
    }

    #[test]
    fn client_init_before_upstream_auth_is_held_then_emitted() {
        let mut p = new();
        let mut o = Out::default();
        must(br(&mut p, &browser_all(V38), &mut o));
        assert_eq!(o.br, browser_replies(V38));
        assert!(o.up.is_empty());
        let login = upstream_login();
        must(up(&mut p, &login[..login.len() - 1], &mut o));
        assert_eq!(o.up, relay_login(), "held while the result is incomplete");
        assert!(!p.is_done());
        must(up(&mut p, &login[login.len() - 1..], &mut o));
        assert!(p.is_done());
        assert_eq!(o.up, [relay_login(), vec![1], AFTER_INIT.to_vec()].concat());
    }

    #[test]
    fn held_browser_bytes_are_capped() {
        let mut p = new();
        let mut o = Out::default();
        must(br(&mut p, &[V38, &[1]].concat(), &mut o));
        must(br(&mut p, &vec![0; MAX_HELD], &mut o));
        let r = br(&mut p, &[0], &mut o);
        assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Browser)));
        assert_eq!(r.map_err(|e| e.label()), Err("preamble_held_too_large"));
        assert_eq!(up(&mut p, V38, &mut o), Err(PreambleError::AfterError));
    }

    #[test]
    fn a_huge_chunk_is_refused_before_it_is_buffered() {
        let mut p = new();
        let mut o = Out::default();
        let r = br(&mut p, &vec![0; MAX_HELD + MAX_PHASE + 1], &mut o);
        assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Browser)));
        let mut p = new();
        let r = up(&mut p, &vec![0; MAX_HELD + MAX_PHASE + 1], &mut o);
        assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Upstream)));
    }

    #[test]
    fn held_upstream_bytes_are_capped() {
        let mut p = new();
        let mut o = Out::default();
        must(up(&mut p, &upstream_login(), &mut o));
        must(up(&mut p, &vec![0; MAX_HELD], &mut o));
        let r = up(&mut p, &[0], &mut o);
        assert_eq!(r, Err(PreambleError::HeldTooLarge(Fault::Upstream)));
    }

    #[test]
    fn upstream_eof_before_done_is_an_error() {
        let mut p = new();
        let mut o = Out::default();
        must(up(&mut p, V38, &mut o));
        assert_eq!(p.on_upstream_eof(), Err(PreambleError::UpstreamClosed));
        assert_eq!(p.on_upstream_eof(), Err(PreambleError::AfterError));
        let mut p = new();
        must(up(&mut p, &upstream_login(), &mut o));
        must(br(&mut p, &browser_all(V37), &mut o));
        must(p.on_upstream_eof());
    }

    #[test]
    fn debug_hides_the_key() {
        let p = VncPreamble::new(b"Ab3!x:Z9", true);
        let d = format!("{p:?}");
        assert!(!d.contains("key") && !d.contains("130"), "{d}");
    }

    /// Every prefix of each side's input is accepted and yields a prefix of
    /// the whole output; every two-way split of each side, in either order
    /// of the sides, yields exactly the whole output.
    #[test]
    fn every_prefix_and_split_gives_the_same_output() {
        for v in [V38, V37, V33] {
            let upstream = [upstream_login(), server_init()].concat();
            let browser = browser_all(v);
            let full = whole(&upstream, &browser);
            for i in 0..=upstream.len() {
                for j in 0..=browser.len() {
                    for upstream_first in [true, false] {
                        let mut p = new();
                        let mut o = Out::default();
                        p.start(&mut o.br);
                        if upstream_first {
                            must(up(&mut p, &upstream[..i], &mut o));
                            must(br(&mut p, &browser[..j], &mut o));
                        } else {
                            must(br(&mut p, &browser[..j], &mut o));
                            must(up(&mut p, &upstream[..i], &mut o));
                        }
                        assert!(full.up.starts_with(&o.up), "{v:?} {i}/{j}");
                        assert!(full.br.starts_with(&o.br), "{v:?} {i}/{j}");
                        let login = upstream_login().len();
                        assert_eq!(p.upstream_authenticated(), i >= login);
                        assert_eq!(p.is_done(), i >= login && j > browser.len() - 19);
                        must(up(&mut p, &upstream[i..], &mut o));
                        must(br(&mut p, &browser[j..], &mut o));
                        assert_eq!(o, full, "{v:?} split {i}/{j}");
                    }
                }
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_interleaved() {
        for v in [V38, V37, V33] {
            let upstream = [upstream_login(), server_init()].concat();
            let browser = browser_all(v);
            let mut p = new();
            let mut o = Out::default();
            for k in 0..upstream.len().max(browser.len()) {
                if let Some(b) = upstream.get(k) {
                    must(up(&mut p, &[*b], &mut o));
                }
                if let Some(b) = browser.get(k) {
                    must(br(&mut p, &[*b], &mut o));
                }
            }
            assert_eq!(o, whole(&upstream, &browser), "{v:?}");
        }
    }

    /// Random chunk sizes and random order of the two legs (xorshift, fixed
    /// seed: deterministic).
    #[test]
    fn random_interleavings_give_the_same_output() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % (n as u64)).unwrap_or(0)
        };
        for v in [V38, V37, V33] {
            let upstream = [upstream_login(), server_init()].concat();
            let browser = browser_all(v);
            let full = whole(&upstream, &browser);
            for _ in 0..300 {
                let mut p = new();
                let mut o = Out::default();
                let (mut i, mut j) = (0, 0);
                while i < upstream.len() || j < browser.len() {
                    if j == browser.len() || (i < upstream.len() && rand(2) == 0) {
                        let n = 1 + rand(upstream.len() - i);
                        must(up(&mut p, &upstream[i..i + n], &mut o));
                        i += n;
                    } else {
                        let n = 1 + rand(browser.len() - j);
                        must(br(&mut p, &browser[j..j + n], &mut o));
                        j += n;
                    }
                }
                assert_eq!(o, full);
            }
        }
    }
}
