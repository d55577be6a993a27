//! The little state shared by all cores, behind one lock touched only at
//! handshake, session start and session end (never on the data path):
//!
//! * the replay cache: a ticket (`jti`) opens one session; after it drops
//!   abnormally ([`grant_allowed`]: the browser vanished without a close,
//!   or the relay's own drain), the same client IP may reconnect with it
//!   within `reconnect_grace` (even past `exp`), one live session at a
//!   time, until the session's lifetime deadline. A revoke voids grants and
//!   bars the `jti` until `exp` + `reconnect_grace`. Entries live until the
//!   ticket can no longer be used;
//! * live sessions by VM (`upstream/node/vmid`), by user (`sub`) and in
//!   total, for the limits, with the VM's oldest session replaced (4001)
//!   when `on_vm_limit = "replace"`;
//! * each live session's [`SessionCtl`]: another core (or the admin API)
//!   asks a session to close by setting its code and waking its task;
//! * handshake counters: per client IP per second, and in flight (in all
//!   and per client IP).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::config::{Limits, VmLimit};
use crate::ticket::{Claims, TicketError};
use crate::ws::frame::close;

/// Tickets remembered at once. A flood of distinct valid tickets needs the
/// portal's key; this only bounds memory (~150 B an entry) if it leaks.
pub const MAX_TICKETS: usize = 1 << 20;
/// Per-IP rate entries kept before stale ones are swept.
const MAX_RATE_ENTRIES: usize = 1 << 16;

/// Why a session is asked to close from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// A newer session of the same VM took its place (4001).
    Replaced,
    /// The admin revoked it (1008).
    Revoked,
    /// The relay is shutting down (1001).
    Shutdown,
}

impl CloseRequest {
    pub fn code(self) -> u16 {
        match self {
            CloseRequest::Replaced => close::REPLACED,
            CloseRequest::Revoked => close::POLICY,
            CloseRequest::Shutdown => close::GOING_AWAY,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloseRequest::Replaced => "replaced",
            CloseRequest::Revoked => "revoked",
            CloseRequest::Shutdown => "shutdown",
        }
    }

    fn to_u32(self) -> u32 {
        match self {
            CloseRequest::Replaced => 1,
            CloseRequest::Revoked => 2,
            CloseRequest::Shutdown => 3,
        }
    }

    fn from_u32(v: u32) -> Option<CloseRequest> {
        match v {
            1 => Some(CloseRequest::Replaced),
            2 => Some(CloseRequest::Revoked),
            3 => Some(CloseRequest::Shutdown),
            _ => None,
        }
    }
}

/// SHA-256 of a ticket's `jti`: the key the relay remembers, audits,
/// lists and revokes by. The `jti` itself is never kept or shown. Its
/// `Display` (and `Debug`) is the lowercase hex of the hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JtiHash(pub [u8; 32]);

impl JtiHash {
    /// 64 hex digits (either case), as `/sessions` lists them.
    pub fn parse(hex: &str) -> Option<JtiHash> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(JtiHash(out))
    }

    /// Is `p` (lowercase hex) a prefix of the hash in hex? No allocation:
    /// a revoke walks every remembered ticket under the lock.
    pub fn has_hex_prefix(&self, p: &str) -> bool {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        p.len() <= 64
            && p.bytes().enumerate().all(|(i, c)| {
                let b = self.0[i / 2];
                HEX[usize::from(if i % 2 == 0 { b >> 4 } else { b & 15 })] == c
            })
    }
}

impl std::fmt::Display for JtiHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for JtiHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A live session as the rest of the relay sees it.
#[derive(Debug)]
pub struct SessionCtl {
    pub id: u64,
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

impl SessionCtl {
    /// Asks the session to close; the first request wins. Safe from any thread.
    pub fn request_close(&self, why: CloseRequest) {
        if self
            .request
            .compare_exchange(0, why.to_u32(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(w) = lock(&self.waker).take() {
                w.wake();
            }
        }
    }

    pub fn requested(&self) -> Option<CloseRequest> {
        CloseRequest::from_u32(self.request.load(Ordering::Acquire))
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

/// The VM identity of docs/design.md §2: `upstream/node/vmid`.
pub fn vm_key(c: &Claims) -> String {
    format!(
        "{}/{}/{}",
        c.upstream,
        c.node.as_deref().unwrap_or(""),
        c.vmid.map(|v| v.to_string()).unwrap_or_default()
    )
}

/// Why the registry refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The ticket was used and no reconnect grant applies (403).
    Replay,
    /// The ticket (its `jti`, `sub` or VM) was revoked: refused until its
    /// `exp` + `reconnect_grace` (403).
    Revoked,
    /// A new ticket that is not valid now (401): expired, not yet valid...
    Time(TicketError),
    VmLimit,
    UserLimit,
    GlobalLimit,
    /// The replay cache is full (503).
    CacheFull,
}

impl Denial {
    pub fn status(self) -> u16 {
        match self {
            Denial::Replay | Denial::Revoked => 403,
            Denial::Time(e) => e.status(),
            Denial::VmLimit | Denial::UserLimit | Denial::GlobalLimit => 429,
            Denial::CacheFull => 503,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Denial::Replay => "ticket_used",
            Denial::Revoked => "ticket_revoked",
            Denial::Time(e) => e.label(),
            Denial::VmLimit => "vm_session_limit",
            Denial::UserLimit => "user_session_limit",
            Denial::GlobalLimit => "global_session_limit",
            Denial::CacheFull => "ticket_cache_full",
        }
    }
}

/// An admitted session.
#[derive(Debug)]
pub struct Admitted {
    pub ctl: Arc<SessionCtl>,
    /// Time left until the session's lifetime deadline.
    pub lifetime: Duration,
}

struct TicketEntry {
    live: Option<u64>,
    client: IpAddr,
    /// The ticket's `sub` and VM, for revokes of sessions already gone.
    sub: String,
    vm: String,
    /// Revoked by the admin: refused until `keep_until`.
    revoked: bool,
    /// When its last session dropped, if a reconnect grant is open.
    dropped_at: Option<u64>,
    /// The session lifetime deadline (unix seconds), fixed at first use.
    deadline: u64,
    /// `exp + leeway`: a used ticket is remembered at least this long.
    exp_until: u64,
    keep_until: u64,
}

#[derive(Default)]
struct Inner {
    tickets: HashMap<JtiHash, TicketEntry>,
    purge: BinaryHeap<Reverse<(u64, JtiHash)>>,
    live: BTreeMap<u64, Arc<SessionCtl>>,
    per_vm: HashMap<String, BTreeSet<u64>>,
    per_user: HashMap<String, usize>,
    next_id: u64,
    rates: HashMap<IpAddr, (u64, u32)>,
    /// Handshakes in flight per client IP.
    in_flight: HashMap<IpAddr, usize>,
}

/// The shared registry (one per process).
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    handshakes: AtomicUsize,
    /// Proxmox VNC logins, one at a time per VM.
    pub gates: Arc<VmGates>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these maps half-updated in a way that
    // matters more than refusing every later console would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Registry::admit`] needs to decide.
pub struct Request<'a> {
    pub claims: &'a Claims,
    /// The ticket's time check now (`exp`, `iat`, `nbf`, `max_ttl`).
    pub time: Result<(), TicketError>,
    pub client: IpAddr,
    pub now: u64,
    pub leeway: u64,
    pub grace: u64,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Admits a session or says why not.
    pub fn admit(&self, r: Request<'_>, limits: &Limits) -> Result<Admitted, Denial> {
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        purge(inner, r.now);
        let key = JtiHash(r.claims.replay_key());
        let cap = limits.max_session.as_secs();
        let (deadline, reconnect) = match inner.tickets.get(&key) {
            Some(e) if e.revoked => return Err(Denial::Revoked),
            Some(e) if e.live.is_some() => return Err(Denial::Replay),
            Some(e) => match e.dropped_at {
                Some(at) if e.client == r.client && r.now <= at + r.grace && r.now < e.deadline => {
                    (e.deadline, true)
                }
                _ => return Err(Denial::Replay),
            },
            None => {
                r.time.map_err(Denial::Time)?;
                if inner.tickets.len() >= MAX_TICKETS {
                    return Err(Denial::CacheFull);
                }
                let life = r.claims.max_session.map_or(cap, |m| m.min(cap));
                (r.now.saturating_add(life), false)
            }
        };
        if limits.max_sessions.is_some_and(|m| inner.live.len() >= m) {
            return Err(Denial::GlobalLimit);
        }
        if limits
            .max_sessions_per_user
            .is_some_and(|m| inner.per_user.get(&r.claims.sub).copied().unwrap_or(0) >= m)
        {
            return Err(Denial::UserLimit);
        }
        let vm = vm_key(r.claims);
        if let Some(max) = limits.max_sessions_per_vm {
            let ids = inner.per_vm.entry(vm.clone()).or_default();
            while ids.len() >= max {
                if limits.on_vm_limit == VmLimit::Reject {
                    return Err(Denial::VmLimit);
                }
                // Replace: the oldest session of this VM goes (4001); it no
                // longer counts, even before its task has closed it.
                let Some(oldest) = ids.pop_first() else { break };
                if let Some(ctl) = inner.live.get(&oldest) {
                    ctl.request_close(CloseRequest::Replaced);
                }
            }
        }
        inner.next_id += 1;
        let ctl = Arc::new(SessionCtl {
            id: inner.next_id,
            jti_hash: key,
            sub: r.claims.sub.clone(),
            vm: vm.clone(),
            upstream: r.claims.upstream.clone(),
            client: r.client,
            started_unix: r.now,
            reconnect,
            request: AtomicU32::new(0),
            waker: Mutex::new(None),
        });
        inner.live.insert(ctl.id, ctl.clone());
        inner.per_vm.entry(vm).or_default().insert(ctl.id);
        *inner.per_user.entry(ctl.sub.clone()).or_default() += 1;
        let exp_until = r.claims.exp.saturating_add(r.leeway);
        let entry = inner.tickets.entry(key).or_insert(TicketEntry {
            live: None,
            client: r.client,
            sub: r.claims.sub.clone(),
            vm: vm_key(r.claims),
            revoked: false,
            dropped_at: None,
            deadline,
            exp_until,
            keep_until: exp_until,
        });
        entry.live = Some(ctl.id);
        entry.dropped_at = None;
        Ok(Admitted {
            ctl,
            lifetime: Duration::from_secs(deadline.saturating_sub(r.now)),
        })
    }

    /// A session ended. Its ticket gets a reconnect grant when `grant` (see
    /// [`grant_allowed`]; a session that never reached its 101 passes true)
    /// and the session was neither replaced nor revoked.
    pub fn release(&self, ctl: &SessionCtl, now: u64, grace: u64, grant: bool) {
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        inner.live.remove(&ctl.id);
        if let Some(ids) = inner.per_vm.get_mut(&ctl.vm) {
            ids.remove(&ctl.id);
            if ids.is_empty() {
                inner.per_vm.remove(&ctl.vm);
            }
        }
        if let Some(n) = inner.per_user.get_mut(&ctl.sub) {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&ctl.sub);
            }
        }
        let grant = grant
            && !matches!(
                ctl.requested(),
                Some(CloseRequest::Replaced | CloseRequest::Revoked)
            );
        if let Some(e) = inner.tickets.get_mut(&ctl.jti_hash) {
            if e.live == Some(ctl.id) {
                let grant = grant && !e.revoked;
                e.live = None;
                e.dropped_at = grant.then_some(now);
                if grant {
                    e.keep_until = e.keep_until.max(now + grace);
                }
                inner.purge.push(Reverse((e.keep_until, ctl.jti_hash)));
            }
        }
    }

    /// Counts a handshake from `ip` in the current second; false if over
    /// `per_sec`.
    pub fn allow_handshake(&self, ip: IpAddr, now: u64, per_sec: u32) -> bool {
        let mut g = lock(&self.inner);
        if g.rates.len() >= MAX_RATE_ENTRIES {
            g.rates.retain(|_, (sec, _)| *sec == now);
        }
        let e = g.rates.entry(ip).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= per_sec
    }

    /// Starts a handshake if fewer than `max` are in flight, and fewer than
    /// `per_ip` from `ip` (`None`: a trusted balancer, counted once it names
    /// its client, see [`HandshakeSlot::rebind`]). The refusal's label.
    pub fn begin_handshake(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: usize,
        per_ip: usize,
    ) -> Result<HandshakeSlot, &'static str> {
        let n = self.handshakes.fetch_add(1, Ordering::AcqRel);
        // From here the slot's drop gives the count back.
        let mut slot = HandshakeSlot {
            registry: self.clone(),
            ip: None,
        };
        if n >= max {
            return Err("handshake_capacity");
        }
        if let Some(ip) = ip {
            if !slot.rebind(ip, per_ip) {
                return Err("handshake_capacity_ip");
            }
        }
        Ok(slot)
    }

    /// Voids what `sel` names: live sessions are asked to close (1008),
    /// pending reconnect grants are voided, and the matched tickets are
    /// refused until `exp` + `grace`. A full `jti` hash not seen yet is
    /// barred until `unseen_until` (the latest `exp` a ticket valid now
    /// can have, plus the grace).
    pub fn revoke(&self, sel: &Revoke<'_>, now: u64, grace: u64, unseen_until: u64) -> Revoked {
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        purge(inner, now);
        let mut out = Revoked::default();
        for c in inner.live.values() {
            if sel.matches(&c.jti_hash, &c.sub, &c.vm) {
                c.request_close(CloseRequest::Revoked);
                out.sessions += 1;
            }
        }
        let mut hit = false;
        for (key, e) in inner.tickets.iter_mut() {
            if !sel.matches(key, &e.sub, &e.vm) {
                continue;
            }
            hit = true;
            if e.dropped_at.take().is_some() {
                out.grants += 1;
            }
            if !e.revoked {
                e.revoked = true;
                e.keep_until = e.keep_until.max(e.exp_until.saturating_add(grace));
                inner.purge.push(Reverse((e.keep_until, *key)));
            }
        }
        if let (Revoke::JtiHash(key), false) = (sel, hit) {
            if inner.tickets.len() < MAX_TICKETS {
                inner.tickets.insert(
                    *key,
                    TicketEntry {
                        live: None,
                        client: IpAddr::from([0, 0, 0, 0]),
                        sub: String::new(),
                        vm: String::new(),
                        revoked: true,
                        dropped_at: None,
                        deadline: 0,
                        exp_until: unseen_until,
                        keep_until: unseen_until,
                    },
                );
                inner.purge.push(Reverse((unseen_until, *key)));
                out.barred = true;
            }
        }
        out
    }

    /// Live sessions, oldest first.
    pub fn live(&self) -> Vec<Arc<SessionCtl>> {
        lock(&self.inner).live.values().cloned().collect()
    }

    /// Tickets remembered (for tests and metrics).
    pub fn remembered(&self) -> usize {
        lock(&self.inner).tickets.len()
    }
}

/// What a revoke matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke<'a> {
    /// The SHA-256 of one `jti` (from `jti=` or a full `jti_sha256=`).
    JtiHash(JtiHash),
    /// A hex prefix of the hash, 16 digits at least (lowercase).
    JtiPrefix(&'a str),
    Sub(&'a str),
    Vm(&'a str),
}

impl Revoke<'_> {
    fn matches(&self, jti_hash: &JtiHash, sub: &str, vm: &str) -> bool {
        match self {
            Revoke::JtiHash(h) => h == jti_hash,
            Revoke::JtiPrefix(p) => p.len() >= 16 && jti_hash.has_hex_prefix(p),
            Revoke::Sub(s) => !s.is_empty() && sub == *s,
            Revoke::Vm(v) => !v.is_empty() && vm == *v,
        }
    }
}

/// What a revoke did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Live sessions asked to close.
    pub sessions: u64,
    /// Reconnect grants voided.
    pub grants: u64,
    /// A `jti` not seen yet is barred.
    pub barred: bool,
}

/// May the ticket of a session that ended with `code`, closed by `by`
/// (`"browser"`, `"upstream"`, `"relay"`), reconnect within the grace?
/// Only after an abnormal end: the browser vanished without a close frame
/// (1006: a network cut, noVNC's auto-reconnect case), or the relay's own
/// drain (1001 from the relay). A clean close (1000), a browser's 1001
/// (tab closed), replace (4001), revoke (1008), lifetime (4002), idle
/// (4003), errors and upstream ends grant nothing.
pub fn grant_allowed(code: u16, by: &str) -> bool {
    code == 1006 || (code == close::GOING_AWAY && by == "relay")
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
        let mut g = lock(&self.registry.inner);
        if let Some(old) = self.ip.take() {
            uncount(&mut g.in_flight, old);
        }
        let n = g.in_flight.entry(ip).or_default();
        if *n >= per_ip {
            if *n == 0 {
                g.in_flight.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.ip = Some(ip);
        true
    }
}

fn uncount(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = map.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            uncount(&mut lock(&self.registry.inner).in_flight, ip);
        }
        self.registry.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

fn purge(inner: &mut Inner, now: u64) {
    while let Some(Reverse((until, key))) = inner.purge.peek().copied() {
        if until > now {
            break;
        }
        inner.purge.pop();
        if let Some(e) = inner.tickets.get(&key) {
            if e.live.is_none() && e.keep_until <= now {
                inner.tickets.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::Console;

    fn claims(jti: &str, sub: &str, vmid: u64) -> Claims {
        Claims {
            exp: 1060,
            iat: 1000,
            nbf: None,
            jti: jti.into(),
            sub: sub.into(),
            aud: None,
            upstream: "pve".into(),
            node: Some("n1".into()),
            vmid: Some(vmid),
            guest: None,
            console: Console::Vnc,
            ip: None,
            max_session: None,
            record: false,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_frame: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            max_head: 8192,
            max_headers: 32,
            max_sessions: None,
            max_sessions_per_vm: None,
            max_sessions_per_user: None,
            on_vm_limit: VmLimit::Reject,
            max_session: Duration::from_secs(3600),
            idle_timeout: None,
            handshakes_per_ip: None,
            max_handshakes: 10,
            max_handshakes_per_ip: 10,
        }
    }

    fn req<'a>(c: &'a Claims, ip: &str, now: u64) -> Request<'a> {
        let time = if now >= c.exp {
            Err(TicketError::Expired)
        } else {
            Ok(())
        };
        Request {
            claims: c,
            time,
            client: ip.parse().unwrap(),
            now,
            leeway: 0,
            grace: 30,
        }
    }

    #[test]
    fn single_use_then_reconnect_grant_for_the_same_ip_only() {
        let reg = Registry::new();
        let l = limits();
        let c = claims("jti-0123456789abcdef", "u1", 100);
        let a = reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap();
        assert!(!a.ctl.reconnect);
        assert_eq!(a.lifetime, Duration::from_secs(3600));
        // Live: no second session, from anywhere.
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1001), &l).unwrap_err(),
            Denial::Replay
        );
        reg.release(&a.ctl, 1010, 30, true);
        // Another IP: refused. Same IP within grace, past exp: admitted.
        assert_eq!(
            reg.admit(req(&c, "2.2.2.2", 1020), &l).unwrap_err(),
            Denial::Replay
        );
        let b = reg.admit(req(&c, "1.1.1.1", 1039), &l).unwrap();
        assert!(b.ctl.reconnect);
        assert_eq!(
            b.lifetime,
            Duration::from_secs(3600 - 39),
            "the deadline is kept"
        );
        reg.release(&b.ctl, 1040, 30, true);
        // Within the new grace and past exp: still the one grant.
        let d = reg.admit(req(&c, "1.1.1.1", 1065), &l).unwrap();
        reg.release(&d.ctl, 1066, 30, true);
        // After the grace (1066 + 30), past exp: forgotten, so just expired.
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1097), &l).unwrap_err(),
            Denial::Time(TicketError::Expired)
        );
        assert_eq!(reg.remembered(), 0);
    }

    #[test]
    fn replaced_and_revoked_sessions_get_no_grant() {
        let reg = Registry::new();
        let l = limits();
        let c = claims("jti-aaaaaaaaaaaaaaaa", "u1", 100);
        let a = reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap();
        a.ctl.request_close(CloseRequest::Revoked);
        reg.release(&a.ctl, 1001, 30, true);
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1002), &l).unwrap_err(),
            Denial::Replay
        );
    }

    #[test]
    fn vm_user_and_global_limits() {
        let reg = Registry::new();
        let mut l = limits();
        l.max_sessions_per_vm = Some(1);
        let a = reg
            .admit(
                req(&claims("jti-1111111111111111", "u1", 7), "1.1.1.1", 1000),
                &l,
            )
            .unwrap();
        let e = reg
            .admit(
                req(&claims("jti-2222222222222222", "u2", 7), "1.1.1.1", 1000),
                &l,
            )
            .unwrap_err();
        assert_eq!((e, e.status()), (Denial::VmLimit, 429));
        // Another VM is fine.
        reg.admit(
            req(&claims("jti-3333333333333333", "u2", 8), "1.1.1.1", 1000),
            &l,
        )
        .unwrap();
        l.on_vm_limit = VmLimit::Replace;
        let b = reg
            .admit(
                req(&claims("jti-4444444444444444", "u3", 7), "1.1.1.1", 1000),
                &l,
            )
            .unwrap();
        assert_eq!(a.ctl.requested(), Some(CloseRequest::Replaced));
        assert_eq!(b.ctl.requested(), None);
        reg.release(&a.ctl, 1001, 30, true);
        assert_eq!(reg.live().len(), 2);
        let mut l = limits();
        l.max_sessions_per_user = Some(1);
        let e = reg
            .admit(
                req(&claims("jti-5555555555555555", "u3", 9), "1.1.1.1", 1000),
                &l,
            )
            .unwrap_err();
        assert_eq!(e, Denial::UserLimit);
        l.max_sessions = Some(2);
        l.max_sessions_per_user = None;
        let e = reg
            .admit(
                req(&claims("jti-6666666666666666", "u9", 9), "1.1.1.1", 1000),
                &l,
            )
            .unwrap_err();
        assert_eq!(e, Denial::GlobalLimit);
    }

    #[test]
    fn ticket_lifetime_is_capped_by_config() {
        let reg = Registry::new();
        let l = limits();
        let mut c = claims("jti-7777777777777777", "u1", 1);
        c.max_session = Some(60);
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap().lifetime,
            Duration::from_secs(60)
        );
        let mut c = claims("jti-8888888888888888", "u1", 2);
        c.max_session = Some(999_999);
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap().lifetime,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn handshake_rate_and_slots() {
        let reg = Arc::new(Registry::new());
        let ip: IpAddr = "9.9.9.9".parse().unwrap();
        assert!(reg.allow_handshake(ip, 5, 2) && reg.allow_handshake(ip, 5, 2));
        assert!(!reg.allow_handshake(ip, 5, 2));
        assert!(reg.allow_handshake(ip, 6, 2), "a new second");
        let a = reg.begin_handshake(None, 2, 9).unwrap();
        let _b = reg.begin_handshake(None, 2, 9).unwrap();
        assert_eq!(
            reg.begin_handshake(None, 2, 9).err(),
            Some("handshake_capacity")
        );
        drop(a);
        assert!(reg.begin_handshake(None, 2, 9).is_ok());
    }

    #[test]
    fn handshake_slots_per_ip() {
        let reg = Arc::new(Registry::new());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..3)
            .map(|_| reg.begin_handshake(Some(a), 100, 3).unwrap())
            .collect();
        assert_eq!(
            reg.begin_handshake(Some(a), 100, 3).err(),
            Some("handshake_capacity_ip")
        );
        let mut other = reg.begin_handshake(Some(b), 100, 3).unwrap();
        // A balancer's connection, counted once its PROXY header names `a`.
        let mut via_lb = reg.begin_handshake(None, 100, 3).unwrap();
        assert!(!via_lb.rebind(a, 3));
        assert!(via_lb.rebind(b, 3));
        // Moving `other` to `a` fails; it then counts against nobody.
        assert!(!other.rebind(a, 3));
        drop(held);
        assert!(other.rebind(a, 3));
        drop((other, via_lb));
        assert!(lock(&reg.inner).in_flight.is_empty());
        assert_eq!(reg.handshakes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn grants_only_after_an_abnormal_end() {
        for (code, by, grant) in [
            (1006, "browser", true),
            (1006, "relay", true),
            (1001, "relay", true),
            (1001, "browser", false),
            (1000, "browser", false),
            (1000, "upstream", false),
            (4001, "relay", false),
            (1008, "relay", false),
            (4002, "relay", false),
            (4003, "relay", false),
            (1011, "upstream", false),
            (1009, "browser", false),
        ] {
            assert_eq!(grant_allowed(code, by), grant, "{code} by {by}");
        }
        let reg = Registry::new();
        let l = limits();
        let c = claims("jti-cccccccccccccccc", "u1", 100);
        let a = reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap();
        reg.release(&a.ctl, 1001, 30, grant_allowed(1000, "browser"));
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1002), &l).unwrap_err(),
            Denial::Replay
        );
    }

    #[test]
    fn revoke_voids_grants_and_bars_the_jti() {
        let h = JtiHash([0xabu8; 32]);
        assert!(h.has_hex_prefix("abababababababab") && h.has_hex_prefix(&"ab".repeat(32)));
        assert!(!h.has_hex_prefix("abababababababac") && !h.has_hex_prefix(&"ab".repeat(33)));
        let reg = Registry::new();
        let l = limits();
        for sel in ["jti", "sub", "vm"] {
            let c = claims(&format!("jti-{sel}-dddddddddddddd"), &format!("u-{sel}"), 7);
            let a = reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap();
            reg.release(&a.ctl, 1001, 30, true);
            let vm = vm_key(&c);
            let s = match sel {
                "jti" => Revoke::JtiHash(JtiHash(c.replay_key())),
                "sub" => Revoke::Sub(&c.sub),
                _ => Revoke::Vm(&vm),
            };
            let r = reg.revoke(&s, 1002, 30, 2000);
            assert_eq!((r.sessions, r.grants), (0, 1), "{sel}");
            assert_eq!(
                reg.admit(req(&c, "1.1.1.1", 1003), &l).unwrap_err(),
                Denial::Revoked,
                "{sel}"
            );
        }
        // A jti revoked before its first use: refused until the bar ends.
        let c = claims("jti-eeeeeeeeeeeeeeee", "u1", 8);
        let r = reg.revoke(&Revoke::JtiHash(JtiHash(c.replay_key())), 1000, 30, 1200);
        assert!(r.barred);
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1001), &l).unwrap_err(),
            Denial::Revoked
        );
        // A live session: asked to close, and its end grants nothing.
        let c = claims("jti-ffffffffffffffff", "u2", 9);
        let a = reg.admit(req(&c, "1.1.1.1", 1000), &l).unwrap();
        let r = reg.revoke(
            &Revoke::JtiPrefix(&JtiHash(c.replay_key()).to_string()[..16]),
            1001,
            30,
            2000,
        );
        assert_eq!(r.sessions, 1);
        assert_eq!(a.ctl.requested(), Some(CloseRequest::Revoked));
        reg.release(&a.ctl, 1002, 30, true);
        // Past exp + leeway, still barred until exp + grace (1060 + 30).
        assert_eq!(
            reg.admit(req(&c, "1.1.1.1", 1080), &l).unwrap_err(),
            Denial::Revoked
        );
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
