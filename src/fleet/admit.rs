//! Admission in fleet mode (glue). This relay does every check of its own
//! (src/admission's screen and verify: route, draining, rate, upgrade,
//! Origin, ticket signature, audience, IP binding, upstream); then the one
//! store round trip decides single use, the reconnect grant, revoke and the
//! limits, instead of this relay's ledger; the session is then counted in
//! the ledger too (for close requests, `/sessions`, the drain) and its
//! guard releases it in the store when it drops. When the store cannot
//! answer, `on_store_error` decides: 503, or this relay's own ledger.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::store::{Fleet, IO_TIMEOUT};
use super::{Admit as StoreAdmit, AdmitArgs, Event, OnStoreError};
use crate::admission::ledger_request;
use crate::config::{Config, VmLimit};
use crate::error::Refusal;
use crate::http::RequestHead;
use crate::registry::{vm_key, Admission, Admit, CloseRequest, JtiHash, Registry};

/// How long a handshake waits for the store before it counts as down.
pub const STORE_WAIT: Duration = Duration::from_millis(2 * IO_TIMEOUT.as_millis() as u64);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn limit(v: Option<usize>) -> u64 {
    v.map_or(0, |n| n as u64)
}

/// Decides a request with the store's one round trip (or by
/// `on_store_error`).
pub async fn admit(
    fleet: &Arc<Fleet>,
    registry: &Arc<Registry>,
    head: &RequestHead,
    at: Admit,
    cfg: &Config,
) -> Result<Admission, Refusal> {
    let verified = registry.check(head, at, cfg)?;
    let r = ledger_request(&verified.claims, at, cfg);
    let c = &verified.claims;
    let limits = &cfg.limits;
    let sid = registry.reserve_id();
    let cap = limits.max_session.as_secs();
    let life = c.max_session.map_or(cap, |m| m.min(cap));
    let args = AdmitArgs {
        now_ms: now_ms(),
        jti: JtiHash(c.replay_key()),
        sid,
        client: at.client.to_string(),
        time_failed: r.time.is_err(),
        deadline: at.now.saturating_add(life),
        keep_ms: c.exp.saturating_add(r.leeway).saturating_mul(1000),
        grace_ms: r.grace.saturating_mul(1000),
        lease_ms: fleet.cfg.lease.as_millis() as u64,
        max_sessions: limit(limits.max_sessions),
        max_per_user: limit(limits.max_sessions_per_user),
        max_per_vm: limit(limits.max_sessions_per_vm),
        replace: limits.on_vm_limit == VmLimit::Replace,
        sub: c.sub.clone(),
        vm: vm_key(c),
        upstream: c.upstream.clone(),
    };
    let time = r.time.err();
    let mut release = args.release(fleet.member(&args));
    let answer = monoio::time::timeout(STORE_WAIT, fleet.admit(args)).await;
    match answer {
        Ok(Ok(StoreAdmit::Admitted {
            reconnect,
            deadline,
            ..
        })) => {
            release.deadline = deadline;
            let f = fleet.clone();
            let hook = Box::new(move |grant: bool| {
                release.now_ms = now_ms();
                release.grant = grant;
                f.release(release);
            });
            Ok(registry.attach(verified, sid, at, cfg, deadline, reconnect, hook))
        }
        Ok(Ok(StoreAdmit::Denied(d))) => Err(d.refusal(time)),
        Ok(Err(_)) | Err(_) => {
            if answer.is_err() {
                // No answer in time: a store that stopped answering.
                fleet.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            match fleet.cfg.on_store_error {
                OnStoreError::Refuse => Err(Refusal::StoreUnavailable),
                OnStoreError::Local => registry.book(verified, at, cfg),
            }
        }
    }
}

/// What the relay does with an event from the fleet: `revoke` closes
/// this relay's matching sessions (1008) and voids their local grants
/// (`grace` and `unseen_until` as for a local revoke); `replace` closes
/// the named session if it is this relay's (4001). The sessions asked to
/// close.
pub fn handle_event(
    registry: &Registry,
    node: &str,
    ev: &Event,
    now: u64,
    grace: u64,
    unseen_until: u64,
) -> u64 {
    match ev {
        Event::Revoke(sel) => {
            registry
                .revoke(&sel.as_revoke(), now, grace, unseen_until)
                .sessions
        }
        Event::Replace(m) => match super::parse_member(m) {
            Some((n, sid)) if n == node => u64::from(registry.close(sid, CloseRequest::Replaced)),
            _ => 0,
        },
    }
}

/// The events handler for [`Fleet::start`]: applies events to `registry`;
/// `node` is set once the fleet started; `times` gives (now, grace,
/// unseen_until) for a revoke.
pub fn handler(
    registry: Arc<Registry>,
    node: Arc<std::sync::OnceLock<String>>,
    times: impl Fn() -> (u64, u64, u64) + Send + Sync + 'static,
) -> super::store::EventHandler {
    Box::new(move |ev| {
        let (now, grace, unseen) = times();
        let node = node.get().map(String::as_str).unwrap_or("");
        handle_event(&registry, node, &ev, now, grace, unseen);
    })
}
