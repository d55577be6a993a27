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
mod tests;
