//! Admission, decided in one pure function: [`admit`] takes the request
//! head, the client's address, `now` and the config, and answers with every
//! status of docs/design.md §2 the relay decides itself (all but the
//! upstream's 502/504), or with the session it admits.
//!
//! ```text
//! route (404) → draining (503) → per-IP rate (429) → upgrade (400/426)
//!   → Origin (403) → one ticket (400/401) → signature, audience (401/403)
//!   → ip binding (403) → known upstream (403)
//!   → ledger: revoked / replay / reconnect grant (403), time (401),
//!             cache full (503), global / user / VM limits (429, or replace)
//! ```
//!
//! The [`Ledger`] is the state those decisions read and write, as plain
//! data with `now` passed in:
//!
//! * the replay cache: a ticket (`jti`) opens one session; after it drops
//!   abnormally ([`grant_allowed`]: the browser vanished without a close,
//!   or the relay's own drain), the same client IP may reconnect with it
//!   within `reconnect_grace` (even past `exp`), one live session at a
//!   time, until the session's lifetime deadline. A revoke voids grants and
//!   bars the `jti` until `exp` + `reconnect_grace`. Entries live until the
//!   ticket can no longer be used;
//! * live sessions by VM (`upstream/node/vmid`), by user (`sub`) and in
//!   total, for the limits; with `on_vm_limit = "replace"` the VM's oldest
//!   session is named in [`Session::replaced`] for the caller to close (4001);
//! * handshake counters: per client IP per second, and in flight per client IP.
//!
//! [`admit`] is three steps: [`screen`] (route, draining, rate: ledger),
//! [`verify`] (the head and the ticket: no ledger) and [`book`] (ledger).
//! No lock, waker or clock here: src/registry holds the ledger behind one
//! mutex taken for the two ledger steps, asks the sessions the ledger
//! names to close, and releases a session's slots when its guard drops.
//! Tests: src/admission/tests.rs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::IpAddr;

use crate::client_addr;
use crate::config::{Config, Limits, OriginPolicy, Upstream, VmLimit};
use crate::error::Refusal;
use crate::http::{self, RequestHead};
use crate::ticket::{self, Claims, TicketError};
use crate::ws::frame::close;
use crate::ws::handshake::{self, HandshakeError, Upgrade};

#[cfg(test)]
mod tests;

/// Tickets remembered at once. A flood of distinct valid tickets needs the
/// portal's key; this only bounds memory (~150 B an entry) if it leaks.
pub const MAX_TICKETS: usize = 1 << 20;
/// Per-IP rate entries kept before stale ones are swept.
const MAX_RATE_ENTRIES: usize = 1 << 16;

/// A live session's number, unique for the ledger's life.
pub type SessionId = u64;

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

/// The VM identity of docs/design.md §2: `upstream/node/vmid`.
pub fn vm_key(c: &Claims) -> String {
    format!(
        "{}/{}/{}",
        c.upstream,
        c.node.as_deref().unwrap_or(""),
        c.vmid.map(|v| v.to_string()).unwrap_or_default()
    )
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

/// Is `origin` allowed? Without a list, the Origin's host must be the
/// Host header's (default ports ignored); no Origin is fine for
/// non-browser clients unless `require_origin`.
pub fn origin_allowed(policy: &OriginPolicy, origin: Option<&str>, host: &str) -> bool {
    let Some(origin) = origin else {
        return !policy.require;
    };
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if !policy.allowed.is_empty() {
        return policy.allowed.contains(&o);
    }
    let Some((scheme, authority)) = o.split_once("://") else {
        return false; // "null" (sandboxed or file:// pages) and garbage
    };
    let default = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return false,
    };
    let host = host.trim().to_ascii_lowercase();
    authority.trim_end_matches(default) == host.trim_end_matches(default)
}

/// What [`admit`] knows besides the head and the config.
#[derive(Debug, Clone, Copy)]
pub struct Admit {
    /// The client's address (src/client_addr.rs decided it).
    pub client: IpAddr,
    /// Unix seconds.
    pub now: u64,
    /// The relay is draining: every upgrade gets 503.
    pub draining: bool,
}

/// An admitted request: what the session needs to dial and answer.
#[derive(Debug)]
pub struct Admitted {
    pub upgrade: Upgrade,
    pub claims: Claims,
    pub session: Session,
}

/// A session the ledger counts as live until [`Ledger::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub jti_hash: JtiHash,
    /// [`vm_key`] of its claims.
    pub vm: String,
    /// Admitted on a reconnect grant.
    pub reconnect: bool,
    /// Seconds left until the session's lifetime deadline.
    pub lifetime: u64,
    /// Sessions of the same VM it replaces: the caller asks them to close
    /// with 4001 (they no longer count against the VM).
    pub replaced: Vec<SessionId>,
}

/// Decides one upgrade request: `Ok` counts the session in `ledger`, and
/// the caller must [`Ledger::release`] it when it ends. Three steps, so a
/// shared ledger is locked for the two short ones only (src/registry runs
/// the same three): [`screen`], [`verify`], [`book`].
pub fn admit(
    head: &RequestHead,
    at: Admit,
    cfg: &Config,
    ledger: &mut Ledger,
) -> Result<Admitted, Refusal> {
    let query = screen(head, at, cfg, ledger)?;
    let verified = verify(head, query, at, cfg)?;
    book(verified, at, cfg, ledger)
}

/// Step 1, before any work on the request: the route (404), draining
/// (503) and the per-IP handshake rate (429: every attempt counts, so a
/// flood of bad tickets is slowed before their signatures are checked).
/// The request's query.
pub fn screen<'h>(
    head: &'h RequestHead,
    at: Admit,
    cfg: &Config,
    ledger: &mut Ledger,
) -> Result<Option<&'h str>, Refusal> {
    let (path, query) = http::split_target(&head.target);
    if path != cfg.server.path {
        return Err(Refusal::NotFound);
    }
    if at.draining {
        return Err(Refusal::Draining);
    }
    if let Some(per_sec) = cfg.limits.handshakes_per_ip {
        if !ledger.rate(at.client, at.now, per_sec) {
            return Err(Refusal::RateLimited);
        }
    }
    Ok(query)
}

/// A request whose upgrade and ticket passed [`verify`].
#[derive(Debug)]
pub struct Verified {
    pub upgrade: Upgrade,
    pub claims: Claims,
}

/// Step 2, no ledger: the upgrade (400/426), the Origin (403), one ticket
/// (400/401), its signature and audience (401/403), its IP binding (403)
/// and upstream (403). The time check waits for [`book`], which knows
/// whether a reconnect grant lets an expired ticket through.
pub fn verify(
    head: &RequestHead,
    query: Option<&str>,
    at: Admit,
    cfg: &Config,
) -> Result<Verified, Refusal> {
    let upgrade = handshake::check_upgrade(head).map_err(Refusal::Handshake)?;
    if !origin_allowed(
        &cfg.server.origins,
        upgrade.origin.as_deref(),
        &upgrade.host,
    ) {
        return Err(Refusal::Origin);
    }
    let token = one_ticket(query, upgrade.ticket.as_deref())?;
    let t = &cfg.tickets;
    let claims = ticket::verify_signature(token, &t.keys).map_err(Refusal::Ticket)?;
    claims.check_audience(&t.policy).map_err(Refusal::Ticket)?;
    if let Some(bound) = &claims.ip {
        let ok = bound
            .parse::<IpAddr>()
            .is_ok_and(|ip| client_addr::canonical(ip) == at.client);
        if !ok {
            return Err(Refusal::WrongIp);
        }
    }
    match cfg.upstreams.get(&claims.upstream) {
        None => return Err(Refusal::UnknownUpstream),
        Some(Upstream::Proxmox(_)) => match (claims.node.as_deref(), claims.vmid) {
            (Some(node), Some(vmid)) if valid_vm(node, vmid) => {}
            (Some(_), Some(_)) => return Err(Refusal::BadVm),
            _ => return Err(Refusal::NoVm),
        },
        Some(_) => {}
    }
    Ok(Verified { upgrade, claims })
}

/// A Proxmox `node` is a DNS-style name label (`[A-Za-z0-9-]{1,63}`), a VM
/// id is 100..=999999999. Checked at admission, before the ticket is used
/// and before any API call, so a claim can never reshape the API path
/// (which percent-encodes its segments as well).
pub fn valid_vm(node: &str, vmid: u64) -> bool {
    (1..=63).contains(&node.len())
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && (100..=999_999_999).contains(&vmid)
}

/// Step 3, the ledger ([`Ledger::open`]): revoked, used or granted (403),
/// the ticket's time for a new one (401), the cache (503), the limits (429
/// or replace).
pub fn book(
    v: Verified,
    at: Admit,
    cfg: &Config,
    ledger: &mut Ledger,
) -> Result<Admitted, Refusal> {
    let session = ledger.open(ledger_request(&v.claims, at, cfg), &cfg.limits)?;
    Ok(Admitted {
        upgrade: v.upgrade,
        claims: v.claims,
        session,
    })
}

/// What the ledger (or the fleet store, src/fleet) decides a verified
/// ticket on: its time check now, the client, the leeway and the grace.
pub fn ledger_request<'a>(claims: &'a Claims, at: Admit, cfg: &Config) -> Request<'a> {
    let t = &cfg.tickets;
    Request {
        claims,
        time: claims.check_time(&t.policy, at.now),
        client: at.client,
        now: at.now,
        leeway: t.policy.leeway,
        grace: t.reconnect_grace.as_secs(),
    }
}

/// The one ticket of a request: `ticket=` in the query or the
/// `nexor.ticket.` subprotocol, never both or twice.
fn one_ticket<'a>(query: Option<&'a str>, protocol: Option<&'a str>) -> Result<&'a str, Refusal> {
    let mut from_query = query
        .into_iter()
        .flat_map(|q| http::query_values(q, "ticket"));
    let q1 = from_query.next();
    if from_query.next().is_some() {
        return Err(Refusal::Handshake(HandshakeError::DuplicateTicket));
    }
    match (q1, protocol) {
        (Some(_), Some(_)) => Err(Refusal::Handshake(HandshakeError::DuplicateTicket)),
        (Some(t), None) | (None, Some(t)) => Ok(t),
        (None, None) => Err(Refusal::NoTicket),
    }
}

/// What [`Ledger::open`] needs to decide.
pub struct Request<'a> {
    pub claims: &'a Claims,
    /// The ticket's time check now (`exp`, `iat`, `nbf`, `max_ttl`).
    pub time: Result<(), TicketError>,
    pub client: IpAddr,
    pub now: u64,
    pub leeway: u64,
    /// `reconnect_grace`, seconds.
    pub grace: u64,
}

struct TicketEntry {
    live: Option<SessionId>,
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

/// A live session as the ledger counts it.
struct LiveEntry {
    jti_hash: JtiHash,
    sub: String,
    vm: String,
    /// Replaced or revoked: its end grants no reconnect.
    closing: Option<CloseRequest>,
}

/// The replay cache, the session counts and the handshake counters.
pub struct Ledger {
    /// Tickets remembered at most ([`MAX_TICKETS`]).
    max_tickets: usize,
    tickets: HashMap<JtiHash, TicketEntry>,
    purge: BinaryHeap<Reverse<(u64, JtiHash)>>,
    live: BTreeMap<SessionId, LiveEntry>,
    per_vm: HashMap<String, BTreeSet<SessionId>>,
    per_user: HashMap<String, usize>,
    next_id: SessionId,
    rates: HashMap<IpAddr, (u64, u32)>,
    /// Handshakes in flight per client IP.
    in_flight: HashMap<IpAddr, usize>,
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Live sessions asked to close.
    pub sessions: u64,
    /// Reconnect grants voided.
    pub grants: u64,
    /// A `jti` not seen yet is barred.
    pub barred: bool,
    /// The live sessions to close with 1008 (the caller asks them).
    pub close: Vec<SessionId>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::with_ticket_cap(MAX_TICKETS)
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A ledger that remembers at most `cap` tickets (503 beyond).
    pub fn with_ticket_cap(cap: usize) -> Ledger {
        Ledger {
            max_tickets: cap,
            tickets: HashMap::new(),
            purge: BinaryHeap::new(),
            live: BTreeMap::new(),
            per_vm: HashMap::new(),
            per_user: HashMap::new(),
            next_id: 0,
            rates: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// Counts a handshake from `ip` in the second `now`; false if over
    /// `per_sec`.
    pub fn rate(&mut self, ip: IpAddr, now: u64, per_sec: u32) -> bool {
        if self.rates.len() >= MAX_RATE_ENTRIES {
            self.rates.retain(|_, (sec, _)| *sec == now);
        }
        let e = self.rates.entry(ip).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 <= per_sec
    }

    /// Counts one more handshake in flight from `ip`, unless it already
    /// has `per_ip`.
    pub fn hold_handshake(&mut self, ip: IpAddr, per_ip: usize) -> bool {
        let n = self.in_flight.entry(ip).or_default();
        if *n >= per_ip {
            if *n == 0 {
                self.in_flight.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// A handshake from `ip` counted by [`Ledger::hold_handshake`] ended.
    pub fn let_go_handshake(&mut self, ip: IpAddr) {
        if let Some(n) = self.in_flight.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&ip);
            }
        }
    }

    /// Handshakes in flight from `ip`.
    pub fn handshakes_from(&self, ip: IpAddr) -> usize {
        self.in_flight.get(&ip).copied().unwrap_or(0)
    }

    /// Counts a session of a ticket whose signature, audience and binding
    /// were checked, or says why not.
    pub fn open(&mut self, r: Request<'_>, limits: &Limits) -> Result<Session, Refusal> {
        self.purge(r.now);
        let key = JtiHash(r.claims.replay_key());
        let cap = limits.max_session.as_secs();
        let (deadline, reconnect) = match self.tickets.get(&key) {
            Some(e) if e.revoked => return Err(Refusal::Revoked),
            Some(e) if e.live.is_some() => return Err(Refusal::Replay),
            Some(e) => match e.dropped_at {
                Some(at)
                    if e.client == r.client
                        && r.now <= at.saturating_add(r.grace)
                        && r.now < e.deadline =>
                {
                    (e.deadline, true)
                }
                _ => return Err(Refusal::Replay),
            },
            None => {
                r.time.map_err(Refusal::Ticket)?;
                if self.tickets.len() >= self.max_tickets {
                    return Err(Refusal::CacheFull);
                }
                let life = r.claims.max_session.map_or(cap, |m| m.min(cap));
                (r.now.saturating_add(life), false)
            }
        };
        if limits.max_sessions.is_some_and(|m| self.live.len() >= m) {
            return Err(Refusal::GlobalLimit);
        }
        if limits
            .max_sessions_per_user
            .is_some_and(|m| self.per_user.get(&r.claims.sub).copied().unwrap_or(0) >= m)
        {
            return Err(Refusal::UserLimit);
        }
        let vm = vm_key(r.claims);
        let mut replaced = Vec::new();
        if let Some(max) = limits.max_sessions_per_vm {
            let ids = self.per_vm.entry(vm.clone()).or_default();
            if ids.len() >= max && limits.on_vm_limit == VmLimit::Reject {
                if ids.is_empty() {
                    self.per_vm.remove(&vm);
                }
                return Err(Refusal::VmLimit);
            }
            // Replace: the oldest sessions of this VM go (4001); they no
            // longer count, even before their tasks have closed them.
            while ids.len() >= max {
                let Some(oldest) = ids.pop_first() else { break };
                if let Some(e) = self.live.get_mut(&oldest) {
                    e.closing.get_or_insert(CloseRequest::Replaced);
                }
                replaced.push(oldest);
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        // The ticket is remembered: a new one passed the cap check above.
        self.count_in(id, key, &r, &vm, deadline);
        Ok(Session {
            id,
            jti_hash: key,
            vm,
            reconnect,
            lifetime: deadline.saturating_sub(r.now),
            replaced,
        })
    }

    /// Session `id` is live and counted (relay, user, VM), and its ticket
    /// remembered as in use by it from `r.client` until `deadline`, unless
    /// the replay cache is full and the ticket new (only possible for a
    /// session the fleet store admitted: [`Ledger::open`] refused it before).
    fn count_in(&mut self, id: SessionId, key: JtiHash, r: &Request<'_>, vm: &str, deadline: u64) {
        self.live.insert(
            id,
            LiveEntry {
                jti_hash: key,
                sub: r.claims.sub.clone(),
                vm: vm.to_string(),
                closing: None,
            },
        );
        self.per_vm.entry(vm.to_string()).or_default().insert(id);
        *self.per_user.entry(r.claims.sub.clone()).or_default() += 1;
        if self.tickets.len() >= self.max_tickets && !self.tickets.contains_key(&key) {
            return;
        }
        let exp_until = r.claims.exp.saturating_add(r.leeway);
        let entry = self.tickets.entry(key).or_insert(TicketEntry {
            live: None,
            client: r.client,
            sub: r.claims.sub.clone(),
            vm: vm.to_string(),
            revoked: false,
            dropped_at: None,
            deadline,
            exp_until,
            keep_until: exp_until,
        });
        entry.live = Some(id);
        entry.dropped_at = None;
        entry.client = r.client;
        entry.deadline = deadline;
    }

    /// A session id not used yet: fleet mode names the session in the store
    /// first, then [`Ledger::attach`]es it under this id.
    pub fn reserve_id(&mut self) -> SessionId {
        self.next_id += 1;
        self.next_id
    }

    /// Counts a session the fleet store admitted (src/fleet: the store
    /// decided single use, the grant and the limits) under `id`, with the
    /// store's lifetime `deadline` (unix s) and `reconnect` flag: live,
    /// counted, its ticket remembered as in use (so a fallback to this
    /// ledger while the store is down still knows it).
    pub fn attach(
        &mut self,
        id: SessionId,
        r: Request<'_>,
        deadline: u64,
        reconnect: bool,
    ) -> Session {
        self.purge(r.now);
        let key = JtiHash(r.claims.replay_key());
        let vm = vm_key(r.claims);
        self.count_in(id, key, &r, &vm, deadline);
        Session {
            id,
            jti_hash: key,
            vm,
            reconnect,
            lifetime: deadline.saturating_sub(r.now),
            replaced: Vec::new(),
        }
    }

    /// Live session `id` is being closed (a replace heard from the fleet):
    /// its end grants no reconnect.
    pub fn closing(&mut self, id: SessionId, why: CloseRequest) {
        if let Some(e) = self.live.get_mut(&id) {
            e.closing.get_or_insert(why);
        }
    }

    /// Session `id` ended at `now`. Its ticket gets a reconnect grant until
    /// `now + grace` when `grant` ([`grant_allowed`]; a session that never
    /// relayed passes true: the client may retry with the same ticket) and
    /// the session was neither replaced nor revoked.
    pub fn release(&mut self, id: SessionId, now: u64, grace: u64, grant: bool) {
        let Some(s) = self.live.remove(&id) else {
            return;
        };
        if let Some(ids) = self.per_vm.get_mut(&s.vm) {
            ids.remove(&id);
            if ids.is_empty() {
                self.per_vm.remove(&s.vm);
            }
        }
        if let Some(n) = self.per_user.get_mut(&s.sub) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&s.sub);
            }
        }
        let grant = grant && s.closing.is_none();
        if let Some(e) = self.tickets.get_mut(&s.jti_hash) {
            if e.live == Some(id) {
                let grant = grant && !e.revoked;
                e.live = None;
                e.dropped_at = grant.then_some(now);
                if grant {
                    e.keep_until = e.keep_until.max(now.saturating_add(grace));
                }
                self.purge.push(Reverse((e.keep_until, s.jti_hash)));
            }
        }
    }

    /// Voids what `sel` names: live sessions are named for a close (1008),
    /// pending reconnect grants are voided, and the matched tickets are
    /// refused until `exp` + `grace`. A full `jti` hash not seen yet is
    /// barred until `unseen_until` (the latest `exp` a ticket valid now
    /// can have, plus the grace).
    pub fn revoke(&mut self, sel: &Revoke<'_>, now: u64, grace: u64, unseen_until: u64) -> Revoked {
        self.purge(now);
        let mut out = Revoked::default();
        for (id, s) in self.live.iter_mut() {
            if sel.matches(&s.jti_hash, &s.sub, &s.vm) {
                s.closing.get_or_insert(CloseRequest::Revoked);
                out.sessions += 1;
                out.close.push(*id);
            }
        }
        let mut hit = false;
        for (key, e) in self.tickets.iter_mut() {
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
                self.purge.push(Reverse((e.keep_until, *key)));
            }
        }
        if let (Revoke::JtiHash(key), false) = (sel, hit) {
            if self.tickets.len() < self.max_tickets {
                self.tickets.insert(
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
                self.purge.push(Reverse((unseen_until, *key)));
                out.barred = true;
            }
        }
        out
    }

    /// Live sessions.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Tickets remembered.
    pub fn remembered(&self) -> usize {
        self.tickets.len()
    }

    /// Forgets the tickets kept until before `now` (a grant is open
    /// through `dropped_at + grace` inclusive, so kept through it).
    fn purge(&mut self, now: u64) {
        while let Some(Reverse((until, key))) = self.purge.peek().copied() {
            if until >= now {
                break;
            }
            self.purge.pop();
            if let Some(e) = self.tickets.get(&key) {
                if e.live.is_none() && e.keep_until < now {
                    self.tickets.remove(&key);
                }
            }
        }
    }
}
