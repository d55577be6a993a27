//! The shared side of admission: the pure [`Ledger`] of src/admission
//! behind one lock touched only at handshake, session start and session
//! end (never on the data path), and what cannot be pure:
//!
//! * each live session's [`SessionCtl`]: another core (or the admin API)
//!   asks a session to close by setting its code and waking its task; the
//!   ledger names the sessions to close (replace, revoke), this wrapper
//!   wakes them;
//! * [`Admission`]: an admitted request and its guard ([`Slots`]), which
//!   releases the session's ledger slots when it drops (session end, dial
//!   failure, browser gone before the 101, panic), with a reconnect grant
//!   only as [`grant_allowed`] says;
//! * handshake slots: in flight in all (an atomic) and per client IP (in
//!   the ledger), released on drop;
//! * [`VmGates`]: one Proxmox VNC login per VM at a time.
//!
//! The clock is the glue's, passed in at [`Registry::new`]: releases on
//! drop need `now`.

use std::collections::{BTreeMap, HashMap};
use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::admission;
pub use crate::admission::{
    grant_allowed, vm_key, Admit, CloseRequest, JtiHash, Ledger, Revoke, Revoked, SessionId,
    MAX_TICKETS,
};
use crate::config::Config;
use crate::error::{Dropped, Refusal};
use crate::http::RequestHead;
use crate::ticket::Claims;
use crate::ws::handshake::Upgrade;

#[cfg(test)]
mod tests;

/// A live session as the rest of the relay sees it.
#[derive(Debug)]
pub struct SessionCtl {
    pub id: SessionId,
    /// SHA-256 of the ticket's `jti`: the audit and revoke key.
    pub jti_hash: JtiHash,
    pub sub: String,
    /// `upstream/node/vmid`, absent claims left empty.
    pub vm: String,
    pub upstream: String,
    pub client: IpAddr,
    pub started_unix: u64,
    pub reconnect: bool,
    request: AtomicU32,
    waker: Mutex<Option<Waker>>,
}

fn request_to_u32(r: CloseRequest) -> u32 {
    match r {
        CloseRequest::Replaced => 1,
        CloseRequest::Revoked => 2,
        CloseRequest::Shutdown => 3,
    }
}

fn request_from_u32(v: u32) -> Option<CloseRequest> {
    match v {
        1 => Some(CloseRequest::Replaced),
        2 => Some(CloseRequest::Revoked),
        3 => Some(CloseRequest::Shutdown),
        _ => None,
    }
}

impl SessionCtl {
    /// Asks the session to close; the first request wins. Safe from any thread.
    pub fn request_close(&self, why: CloseRequest) {
        if self
            .request
            .compare_exchange(0, request_to_u32(why), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(w) = lock(&self.waker).take() {
                w.wake();
            }
        }
    }

    pub fn requested(&self) -> Option<CloseRequest> {
        request_from_u32(self.request.load(Ordering::Acquire))
    }

    /// Resolves when a close was requested.
    pub fn wait(&self) -> impl Future<Output = CloseRequest> + '_ {
        poll_fn(move |cx| {
            if let Some(r) = self.requested() {
                return Poll::Ready(r);
            }
            *lock(&self.waker) = Some(cx.waker().clone());
            // A request may have landed between the check and the store.
            match self.requested() {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
    }
}

struct Shared {
    ledger: Ledger,
    /// The live sessions' controls, by the ledger's ids.
    sessions: BTreeMap<SessionId, Arc<SessionCtl>>,
}

/// The shared registry (one per process).
pub struct Registry {
    shared: Mutex<Shared>,
    handshakes: AtomicUsize,
    /// Unix seconds, for releases on drop.
    clock: fn() -> u64,
    /// Proxmox VNC logins, one at a time per VM.
    pub gates: Arc<VmGates>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these maps half-updated in a way that
    // matters more than refusing every later console would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An admitted request: its upgrade and claims for the dial and the 101,
/// and the guard of its session's slots.
pub struct Admission {
    pub upgrade: Upgrade,
    pub claims: Claims,
    pub slots: Slots,
}

/// A session counted in the ledger, released when this drops. Until
/// [`Slots::relaying`] a drop grants a reconnect (the console never opened:
/// the client may retry with the same ticket); after it, only the outcome
/// given to [`Slots::set_outcome`] does. A drop while panicking grants
/// nothing.
pub struct Slots {
    registry: Arc<Registry>,
    ctl: Arc<SessionCtl>,
    lifetime: Duration,
    grace: u64,
    grant: bool,
}

impl Slots {
    pub fn ctl(&self) -> &Arc<SessionCtl> {
        &self.ctl
    }

    /// Time left until the session's lifetime deadline.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The session relays from here: ending without an outcome grants nothing.
    pub fn relaying(&mut self) {
        self.grant = false;
    }

    /// The session ended with `code`, closed by `by`.
    pub fn set_outcome(&mut self, code: u16, by: &str) {
        self.grant = grant_allowed(code, by);
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let grant = self.grant && !std::thread::panicking();
        let now = (self.registry.clock)();
        self.registry.release(&self.ctl, now, self.grace, grant);
    }
}

impl Registry {
    /// A registry reading unix seconds from `clock` when a session's slots
    /// are released.
    pub fn new(clock: fn() -> u64) -> Registry {
        Registry {
            shared: Mutex::new(Shared {
                ledger: Ledger::new(),
                sessions: BTreeMap::new(),
            }),
            handshakes: AtomicUsize::new(0),
            clock,
            gates: Arc::default(),
        }
    }

    /// Decides a request as [`admission::admit`] does, with the lock held
    /// for its two ledger steps only (not for the signature check); an
    /// admitted one is counted until its [`Slots`] drop. Sessions it
    /// replaces are asked to close (4001).
    pub fn admit(
        self: &Arc<Self>,
        head: &RequestHead,
        at: Admit,
        cfg: &Config,
    ) -> Result<Admission, Refusal> {
        let query = admission::screen(head, at, cfg, &mut lock(&self.shared).ledger)?;
        let verified = admission::verify(head, query, at, cfg)?;
        // Booked and listed under one lock: a revoke or replace that sees
        // the session in the ledger finds its control here.
        let mut g = lock(&self.shared);
        let shared = &mut *g;
        let a = admission::book(verified, at, cfg, &mut shared.ledger)?;
        for id in &a.session.replaced {
            if let Some(ctl) = shared.sessions.get(id) {
                ctl.request_close(CloseRequest::Replaced);
            }
        }
        let s = a.session;
        let ctl = Arc::new(SessionCtl {
            id: s.id,
            jti_hash: s.jti_hash,
            sub: a.claims.sub.clone(),
            vm: s.vm,
            upstream: a.claims.upstream.clone(),
            client: at.client,
            started_unix: at.now,
            reconnect: s.reconnect,
            request: AtomicU32::new(0),
            waker: Mutex::new(None),
        });
        shared.sessions.insert(s.id, ctl.clone());
        drop(g);
        Ok(Admission {
            upgrade: a.upgrade,
            claims: a.claims,
            slots: Slots {
                registry: self.clone(),
                ctl,
                lifetime: Duration::from_secs(s.lifetime),
                grace: cfg.tickets.reconnect_grace.as_secs(),
                grant: true,
            },
        })
    }

    fn release(&self, ctl: &SessionCtl, now: u64, grace: u64, grant: bool) {
        let mut g = lock(&self.shared);
        g.sessions.remove(&ctl.id);
        g.ledger.release(ctl.id, now, grace, grant);
    }

    /// Voids what `sel` names ([`Ledger::revoke`]) and asks the matching
    /// live sessions to close (1008).
    pub fn revoke(&self, sel: &Revoke<'_>, now: u64, grace: u64, unseen_until: u64) -> Revoked {
        let mut g = lock(&self.shared);
        let r = g.ledger.revoke(sel, now, grace, unseen_until);
        for id in &r.close {
            if let Some(ctl) = g.sessions.get(id) {
                ctl.request_close(CloseRequest::Revoked);
            }
        }
        r
    }

    /// Starts a handshake if fewer than `max` are in flight, and fewer than
    /// `per_ip` from `ip` (`None`: a trusted balancer, counted once it names
    /// its client, see [`HandshakeSlot::rebind`]).
    pub fn begin_handshake(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: usize,
        per_ip: usize,
    ) -> Result<HandshakeSlot, Dropped> {
        let n = self.handshakes.fetch_add(1, Ordering::AcqRel);
        // From here the slot's drop gives the count back.
        let mut slot = HandshakeSlot {
            registry: self.clone(),
            ip: None,
        };
        if n >= max {
            return Err(Dropped::HandshakeCapacity);
        }
        if let Some(ip) = ip {
            if !slot.rebind(ip, per_ip) {
                return Err(Dropped::HandshakeCapacityIp);
            }
        }
        Ok(slot)
    }

    /// Live sessions, oldest first.
    pub fn live(&self) -> Vec<Arc<SessionCtl>> {
        lock(&self.shared).sessions.values().cloned().collect()
    }

    /// Tickets remembered (for tests and metrics).
    pub fn remembered(&self) -> usize {
        lock(&self.shared).ledger.remembered()
    }
}

/// One handshake in flight, counted in all and, once its client IP is
/// known, per IP; released on drop.
pub struct HandshakeSlot {
    registry: Arc<Registry>,
    ip: Option<IpAddr>,
}

impl HandshakeSlot {
    /// Counts this handshake against `ip` instead of the IP it was counted
    /// against (if any); false (and counted against none) if `ip` already
    /// has `per_ip` in flight.
    pub fn rebind(&mut self, ip: IpAddr, per_ip: usize) -> bool {
        if self.ip == Some(ip) {
            return true;
        }
        let mut g = lock(&self.registry.shared);
        if let Some(old) = self.ip.take() {
            g.ledger.let_go_handshake(old);
        }
        if !g.ledger.hold_handshake(ip, per_ip) {
            return false;
        }
        self.ip = Some(ip);
        true
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            lock(&self.registry.shared).ledger.let_go_handshake(ip);
        }
        self.registry.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-VM serialisation across all cores: each `vncproxy` call resets the
/// VM's one VNC password, so "vncproxy → websocket → RFB login" of two
/// consoles of one VM must not interleave (docs/proxmox.md §10, §12).
#[derive(Default)]
pub struct VmGates {
    inner: Mutex<HashMap<String, Gate>>,
}

#[derive(Default)]
struct Gate {
    held: bool,
    waiters: Vec<Waker>,
}

impl VmGates {
    /// Waits until no other console of `vm` is logging in, then holds the
    /// gate until the returned guard drops.
    pub fn acquire(self: &Arc<Self>, vm: String) -> impl Future<Output = VmGuard> + '_ {
        let mut vm = Some(vm);
        poll_fn(move |cx| {
            let mut map = lock(&self.inner);
            let key = vm.as_deref().unwrap_or_default();
            let gate = map.entry(key.to_string()).or_default();
            if !gate.held {
                gate.held = true;
                return Poll::Ready(VmGuard {
                    gates: self.clone(),
                    vm: vm.take().unwrap_or_default(),
                });
            }
            if !gate.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                gate.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// The held gate of one VM.
pub struct VmGuard {
    gates: Arc<VmGates>,
    vm: String,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.gates.inner);
        if let Some(gate) = map.remove(&self.vm) {
            // Wake every waiter (any thread): one wins, the rest wait again;
            // a waiter that gave up (timeout) cannot strand the others.
            for w in gate.waiters {
                w.wake();
            }
        }
    }
}
