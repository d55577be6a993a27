//! Fleet mode: single use, reconnect grants, session limits and revoke shared
//! by every relay of a fleet through one Redis (or Valkey) store.
//!
//! This file is the pure part: key names, the arguments each Lua script
//! takes, the decoding of its replies, and the pub/sub events. No socket,
//! clock or file: `store.rs` is the glue (a thread of its own with the
//! client library, so a worker never blocks on the store), `admit.rs` the
//! admission through it; src/config/fleet.rs parses the `[fleet]` table.
//!
//! What lives in the store (`P` = `key_prefix`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P t:<jti sha256>` | hash | a used ticket: `live` (the member holding it), `le` (that session's lease end, ms), `ip`, `dl` (lifetime deadline, s), `gr` (reconnect grant until, ms), `rv` (revoked), `ku` (kept at least until, ms: `exp + leeway`), `sub`, `vm`; expires when no longer usable |
//! | `P vm:<vm>`, `P user:<sub>`, `P all` | sorted set | live sessions as leases: member → lease end (ms) |
//! | `P s:<node>` | hash | one relay process's live sessions: id → JSON (`/sessions?fleet=1`) |
//! | `P nodes` | sorted set | relay processes → lease end (ms) |
//! | `P ix:sub:<sub>`, `P ix:vm:<vm>` | set | jti hashes by user and by VM, for revokes |
//! | channel `P events` | pub/sub | `revoke <kind> <value>`, `replace <member>` |
//!
//! A member (one session) is `<start ms, 13 digits>|<node>|<id>`, so the
//! oldest session of a VM sorts first; a node is `<relay_id>#<incarnation>`,
//! so a restarted relay never mistakes the leases of its dead predecessor
//! for its own. Every count is a lease that the relay holding the session
//! renews every `lease / 3`: the sessions of a relay that died stop
//! counting after `lease`, and the ticket of a session whose lease lapsed
//! may reconnect (same IP, within `reconnect_grace` after the lapse) on any
//! relay.

// Glue: admission through the store, and the client library on threads of
// its own.
#[allow(clippy::disallowed_methods)]
pub mod admit;
#[allow(clippy::disallowed_methods)]
pub mod oneshot;
#[allow(clippy::disallowed_methods)]
pub mod store;

use crate::error::Refusal;
use crate::registry::JtiHash;

pub use crate::config::fleet::{FleetCa, FleetConfig, OnStoreError, RedisUrl};

/// The admission script (src/fleet/script.lua).
pub const ADMIT_LUA: &str = include_str!("script.lua");
/// A session ended (src/fleet/release.lua).
pub const RELEASE_LUA: &str = include_str!("release.lua");
/// Leases of one relay renewed (src/fleet/renew.lua).
pub const RENEW_LUA: &str = include_str!("renew.lua");
/// Revoke by jti, user or VM (src/fleet/revoke.lua).
pub const REVOKE_LUA: &str = include_str!("revoke.lua");
/// Every relay's live sessions (src/fleet/list.lua).
pub const LIST_LUA: &str = include_str!("list.lua");
/// A relay's live sessions written again after the store came back
/// (src/fleet/resync.lua).
pub const RESYNC_LUA: &str = include_str!("resync.lua");

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn ticket(&self, h: &JtiHash) -> String {
        format!("{}t:{h}", self.prefix)
    }

    pub fn vm(&self, vm: &str) -> String {
        format!("{}vm:{vm}", self.prefix)
    }

    pub fn user(&self, sub: &str) -> String {
        format!("{}user:{sub}", self.prefix)
    }

    pub fn all(&self) -> String {
        format!("{}all", self.prefix)
    }

    pub fn sessions(&self, node: &str) -> String {
        format!("{}s:{node}", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    pub fn by_sub(&self, sub: &str) -> String {
        format!("{}ix:sub:{sub}", self.prefix)
    }

    pub fn by_vm(&self, vm: &str) -> String {
        format!("{}ix:vm:{vm}", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// `SCAN MATCH` pattern of the tickets whose hash starts with `hex`
    /// (lowercase hex digits only, checked by the caller).
    pub fn ticket_pattern(&self, hex: &str) -> String {
        format!("{}t:{hex}*", glob_escape(&self.prefix))
    }
}

/// Escapes Redis glob characters (`*?[]\`).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One relay process in the fleet: `<relay_id>#<incarnation, 16 hex>`.
pub fn node_name(relay_id: &str, incarnation: u64) -> String {
    format!("{relay_id}#{incarnation:016x}")
}

/// One session in the fleet: `<start ms, 13 digits>|<node>|<id>`.
pub fn member(start_ms: u64, node: &str, sid: u64) -> String {
    format!("{start_ms:013}|{node}|{sid}")
}

/// The node and session id of a member, if well formed.
pub fn parse_member(m: &str) -> Option<(&str, u64)> {
    let mut it = m.splitn(3, '|');
    let _start = it.next()?;
    let node = it.next()?;
    let sid = it.next()?.parse().ok()?;
    Some((node, sid))
}

/// What a revoke selects, as it travels between relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Jti(JtiHash),
    /// 16 to 63 lowercase hex digits.
    JtiPrefix(String),
    Sub(String),
    Vm(String),
}

impl Selector {
    /// The local registry's form of the same selector.
    pub fn as_revoke(&self) -> crate::registry::Revoke<'_> {
        use crate::registry::Revoke;
        match self {
            Selector::Jti(h) => Revoke::JtiHash(*h),
            Selector::JtiPrefix(p) => Revoke::JtiPrefix(p),
            Selector::Sub(s) => Revoke::Sub(s),
            Selector::Vm(v) => Revoke::Vm(v),
        }
    }

    /// From the local registry's form.
    pub fn from_revoke(r: &crate::registry::Revoke<'_>) -> Selector {
        use crate::registry::Revoke;
        match r {
            Revoke::JtiHash(h) => Selector::Jti(*h),
            Revoke::JtiPrefix(p) => Selector::JtiPrefix(p.to_string()),
            Revoke::Sub(s) => Selector::Sub(s.to_string()),
            Revoke::Vm(v) => Selector::Vm(v.to_string()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Selector::Jti(_) => "jti",
            Selector::JtiPrefix(_) => "jti_prefix",
            Selector::Sub(_) => "sub",
            Selector::Vm(_) => "vm",
        }
    }

    fn value(&self) -> String {
        match self {
            Selector::Jti(h) => h.to_string(),
            Selector::JtiPrefix(p) | Selector::Sub(p) | Selector::Vm(p) => p.clone(),
        }
    }
}

/// A message on the events channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Close the matching sessions (1008) and void their grants.
    Revoke(Selector),
    /// The session `member` was replaced by a newer one of its VM (4001).
    Replace(String),
}

impl Event {
    pub fn encode(&self) -> String {
        match self {
            Event::Revoke(s) => format!("revoke {} {}", s.kind(), s.value()),
            Event::Replace(m) => format!("replace {m}"),
        }
    }

    /// Decodes a message; None for anything malformed (ignored).
    pub fn decode(msg: &[u8]) -> Option<Event> {
        let msg = std::str::from_utf8(msg).ok()?;
        let (what, rest) = msg.split_once(' ')?;
        match what {
            "replace" => parse_member(rest).map(|_| Event::Replace(rest.to_string())),
            "revoke" => {
                let (kind, value) = rest.split_once(' ')?;
                if value.is_empty() {
                    return None;
                }
                let sel = match kind {
                    "jti" => Selector::Jti(JtiHash::parse(value)?),
                    "jti_prefix" => {
                        let ok = (16..64).contains(&value.len())
                            && value
                                .bytes()
                                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                        if !ok {
                            return None;
                        }
                        Selector::JtiPrefix(value.to_string())
                    }
                    "sub" => Selector::Sub(value.to_string()),
                    "vm" => Selector::Vm(value.to_string()),
                    _ => return None,
                };
                Some(Event::Revoke(sel))
            }
            _ => None,
        }
    }
}

/// Everything the admission script needs for one handshake.
#[derive(Debug, Clone)]
pub struct AdmitArgs {
    pub now_ms: u64,
    pub jti: JtiHash,
    pub sid: u64,
    pub client: String,
    /// The ticket's time check failed now (expired, not yet valid...): a
    /// first use is refused, a reconnect grant may still apply.
    pub time_failed: bool,
    /// Lifetime deadline (unix s) if this is a first use.
    pub deadline: u64,
    /// `exp + leeway` in ms: a used ticket is remembered at least this long.
    pub keep_ms: u64,
    pub grace_ms: u64,
    pub lease_ms: u64,
    /// 0 = off.
    pub max_sessions: u64,
    pub max_per_user: u64,
    pub max_per_vm: u64,
    pub replace: bool,
    pub sub: String,
    pub vm: String,
    pub upstream: String,
}

/// The session record `/sessions?fleet=1` lists (no secrets): what the
/// store keeps for each live session of a relay.
#[derive(serde::Serialize)]
struct Record<'a> {
    relay: &'a str,
    node: &'a str,
    id: u64,
    member: String,
    jti_sha256: String,
    sub: &'a str,
    upstream: &'a str,
    vm: &'a str,
    client: &'a str,
    started: u64,
    reconnect: bool,
    /// Only when written again (resync): the ticket's entry needs them.
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_ms: Option<u64>,
}

fn record<'a>(a: &'a AdmitArgs, relay_id: &'a str, node: &'a str, reconnect: bool) -> Record<'a> {
    Record {
        relay: relay_id,
        node,
        id: a.sid,
        member: member(a.now_ms, node, a.sid),
        jti_sha256: a.jti.to_string(),
        sub: &a.sub,
        upstream: &a.upstream,
        vm: &a.vm,
        client: &a.client,
        started: a.now_ms / 1000,
        reconnect,
        deadline: None,
        keep_ms: None,
    }
}

/// The session record `/sessions?fleet=1` lists (no secrets).
pub fn session_json(a: &AdmitArgs, relay_id: &str, node: &str, reconnect: bool) -> String {
    serde_json::to_string(&record(a, relay_id, node, reconnect)).unwrap_or_default()
}

/// The record a relay writes again into a store that came back (src/fleet/
/// resync.lua), with the ticket's lifetime `deadline` and `keep_ms`.
pub fn resync_json(
    a: &AdmitArgs,
    relay_id: &str,
    node: &str,
    reconnect: bool,
    deadline: u64,
) -> String {
    let mut r = record(a, relay_id, node, reconnect);
    r.deadline = Some(deadline);
    r.keep_ms = Some(a.keep_ms);
    serde_json::to_string(&r).unwrap_or_default()
}

impl AdmitArgs {
    /// KEYS of the admission script.
    pub fn keys(&self, k: &Keys, node: &str) -> Vec<String> {
        vec![
            k.ticket(&self.jti),
            k.vm(&self.vm),
            k.user(&self.sub),
            k.all(),
            k.sessions(node),
            k.nodes(),
            k.by_sub(&self.sub),
            k.by_vm(&self.vm),
        ]
    }

    /// ARGV of the admission script. The session record is written as a
    /// first use; the script sets `reconnect` itself.
    pub fn argv(&self, k: &Keys, relay_id: &str, node: &str) -> Vec<String> {
        let b = |v: bool| if v { "1" } else { "0" }.to_string();
        vec![
            self.now_ms.to_string(),
            member(self.now_ms, node, self.sid),
            self.client.clone(),
            b(self.time_failed),
            self.deadline.to_string(),
            self.keep_ms.to_string(),
            self.grace_ms.to_string(),
            self.lease_ms.to_string(),
            self.max_sessions.to_string(),
            self.max_per_user.to_string(),
            self.max_per_vm.to_string(),
            b(self.replace),
            session_json(self, relay_id, node, false),
            k.events(),
            self.sid.to_string(),
            node.to_string(),
            self.sub.clone(),
            self.vm.clone(),
            self.jti.to_string(),
        ]
    }
}

/// The admission script's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Admitted {
        reconnect: bool,
        /// The session's lifetime deadline (unix s), fixed at first use.
        deadline: u64,
        /// Older sessions of the VM asked to close (4001).
        replaced: u64,
    },
    /// Refused: the [`Refusal`] kind, without the time error (the caller
    /// has it).
    Denied(Deny),
}

/// Why the store refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    Used,
    Revoked,
    /// The ticket's time check (the caller's error applies).
    Time,
    VmLimit,
    UserLimit,
    GlobalLimit,
}

impl Deny {
    /// The refusal; `time` is the ticket's own time error.
    pub fn refusal(self, time: Option<crate::ticket::TicketError>) -> Refusal {
        match self {
            Deny::Used => Refusal::Replay,
            Deny::Revoked => Refusal::Revoked,
            Deny::Time => time.map_or(Refusal::Replay, Refusal::Ticket),
            Deny::VmLimit => Refusal::VmLimit,
            Deny::UserLimit => Refusal::UserLimit,
            Deny::GlobalLimit => Refusal::GlobalLimit,
        }
    }
}

/// A reply item as the scripts return them: Redis integers and strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Int(i64),
    Str(String),
}

impl Item {
    fn int(&self) -> Option<i64> {
        match self {
            Item::Int(i) => Some(*i),
            Item::Str(s) => s.parse().ok(),
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Item::Str(s) => Some(s),
            Item::Int(_) => None,
        }
    }
}

/// Decodes the admission script's reply: `{"ok", reconnect, deadline,
/// replaced}` or `{"deny", reason}`.
pub fn decode_admit(items: &[Item]) -> Option<Admit> {
    match items.first()?.str()? {
        "ok" => Some(Admit::Admitted {
            reconnect: items.get(1)?.int()? == 1,
            deadline: u64::try_from(items.get(2)?.int()?).ok()?,
            replaced: u64::try_from(items.get(3)?.int()?).ok()?,
        }),
        "deny" => Some(Admit::Denied(match items.get(1)?.str()? {
            "used" => Deny::Used,
            "revoked" => Deny::Revoked,
            "time" => Deny::Time,
            "vm" => Deny::VmLimit,
            "user" => Deny::UserLimit,
            "global" => Deny::GlobalLimit,
            _ => return None,
        })),
        _ => None,
    }
}

impl AdmitArgs {
    /// The release of this admission (`member` its entry in the store),
    /// without a grant: a session that ends or an admission undone.
    pub fn release(&self, member: String) -> ReleaseArgs {
        ReleaseArgs {
            now_ms: self.now_ms,
            jti: self.jti,
            member,
            sid: self.sid,
            grant: false,
            grace_ms: self.grace_ms,
            sub: self.sub.clone(),
            vm: self.vm.clone(),
            client: self.client.clone(),
            deadline: self.deadline,
            keep_ms: self.keep_ms,
        }
    }
}

/// A session ended.
#[derive(Debug, Clone)]
pub struct ReleaseArgs {
    pub now_ms: u64,
    pub jti: JtiHash,
    pub member: String,
    pub sid: u64,
    /// A reconnect grant is due ([`crate::registry::grant_allowed`], and
    /// neither replaced nor revoked).
    pub grant: bool,
    pub grace_ms: u64,
    pub sub: String,
    pub vm: String,
    /// For a store that lost the ticket meanwhile (restarted empty): the
    /// entry is written again.
    pub client: String,
    pub deadline: u64,
    pub keep_ms: u64,
}

impl ReleaseArgs {
    pub fn keys(&self, k: &Keys, node: &str) -> Vec<String> {
        vec![
            k.ticket(&self.jti),
            k.vm(&self.vm),
            k.user(&self.sub),
            k.all(),
            k.sessions(node),
        ]
    }

    pub fn argv(&self) -> Vec<String> {
        vec![
            self.now_ms.to_string(),
            self.member.clone(),
            self.sid.to_string(),
            if self.grant { "1" } else { "0" }.to_string(),
            self.grace_ms.to_string(),
            self.client.clone(),
            self.deadline.to_string(),
            self.keep_ms.to_string(),
            self.sub.clone(),
            self.vm.clone(),
        ]
    }
}

/// Revoke arguments: KEYS and ARGV of the revoke script for `sel` (a jti
/// prefix is first expanded into the full hashes found, `hashes`).
pub fn revoke_call(
    k: &Keys,
    sel: &Selector,
    hashes: &[JtiHash],
    now_ms: u64,
    grace_ms: u64,
    unseen_until_ms: u64,
) -> (Vec<String>, Vec<String>) {
    let (keys, list) = match sel {
        Selector::Jti(h) => (vec![k.ticket(h)], vec![h.to_string()]),
        Selector::JtiPrefix(_) => (
            hashes.iter().map(|h| k.ticket(h)).collect(),
            hashes.iter().map(|h| h.to_string()).collect(),
        ),
        Selector::Sub(s) => (vec![k.by_sub(s)], Vec::new()),
        Selector::Vm(v) => (vec![k.by_vm(v)], Vec::new()),
    };
    let mut argv = vec![
        match sel {
            Selector::Jti(_) => "jti",
            Selector::JtiPrefix(_) => "list",
            Selector::Sub(_) | Selector::Vm(_) => "index",
        }
        .to_string(),
        now_ms.to_string(),
        grace_ms.to_string(),
        unseen_until_ms.to_string(),
        k.prefix.clone(),
        k.events(),
        Event::Revoke(sel.clone()).encode(),
    ];
    argv.extend(list);
    (keys, argv)
}

/// What a fleet-wide revoke did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Live sessions in the fleet asked to close.
    pub sessions: u64,
    pub grants: u64,
    pub barred: bool,
}

/// Decodes the revoke script's reply `{sessions, grants, barred}`.
pub fn decode_revoke(items: &[Item]) -> Option<Revoked> {
    Some(Revoked {
        sessions: u64::try_from(items.first()?.int()?).ok()?,
        grants: u64::try_from(items.get(1)?.int()?).ok()?,
        barred: items.get(2)?.int()? == 1,
    })
}

/// Lowercase hex of 16..=64 digits: a `jti_sha256` selector or prefix.
pub fn is_hash_prefix(s: &str) -> bool {
    (16..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The store thread's state, as `nexor_fleet_store_up` shows it.
pub const METRIC_UP: &str = "nexor_fleet_store_up";
pub const METRIC_ERRORS: &str = "nexor_fleet_store_errors_total";
pub const METRIC_RTT: &str = "nexor_fleet_store_rtt_seconds";
/// Refusal label of a handshake refused because the store is unreachable
/// under `on_store_error = "refuse"` (503).
pub const REFUSED_LABEL: &str = "fleet_store_unavailable";

#[cfg(test)]
mod tests;
