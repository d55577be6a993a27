//! Admission in fleet mode (glue): the local checks are done (route,
//! origin, ticket signature, audience, IP binding); this awaits the one
//! store round trip that decides single use, the reconnect grant and the
//! limits, then records the session in this relay's registry (for close
//! requests, `/sessions` and the drain). When the store cannot answer,
//! `on_store_error` decides: 503, or this relay's own registry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::store::{Fleet, IO_TIMEOUT};
use super::{Admit, AdmitArgs, Event, OnStoreError, ReleaseArgs};
use crate::config::{Limits, VmLimit};
use crate::registry::{
    vm_key, Admitted, CloseRequest, Denial, JtiHash, Registry, Request, SessionCtl,
};

/// How long a handshake waits for the store before it counts as down.
pub const STORE_WAIT: Duration = Duration::from_millis(2 * IO_TIMEOUT.as_millis() as u64);

/// A session the store admitted: what its release needs.
#[derive(Debug, Clone)]
pub struct FleetSession {
    args: ReleaseArgs,
}

impl FleetSession {
    /// The session ended: its leases go, and its ticket gets a reconnect
    /// grant if `grant` ([`crate::registry::grant_allowed`]) and it was
    /// neither replaced nor revoked.
    pub fn release(&self, fleet: &Fleet, ctl: &SessionCtl, now_ms: u64, grant: bool) {
        let grant = grant
            && !matches!(
                ctl.requested(),
                Some(CloseRequest::Replaced | CloseRequest::Revoked)
            );
        let mut args = self.args.clone();
        args.now_ms = now_ms;
        args.grant = grant;
        fleet.release(args);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn limit(v: Option<usize>) -> u64 {
    v.map_or(0, |n| n as u64)
}

/// Admits through the store (one round trip), or by `on_store_error`.
pub async fn admit(
    fleet: &Fleet,
    registry: &Registry,
    r: Request<'_>,
    limits: &Limits,
) -> Result<(Admitted, Option<FleetSession>), Denial> {
    let c = r.claims;
    let sid = registry.reserve_id();
    let cap = limits.max_session.as_secs();
    let life = c.max_session.map_or(cap, |m| m.min(cap));
    let now = now_ms();
    let args = AdmitArgs {
        now_ms: now,
        jti: JtiHash(c.replay_key()),
        sid,
        client: r.client.to_string(),
        time_failed: r.time.is_err(),
        deadline: r.now.saturating_add(life),
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
    let member = fleet.member(&args);
    let release = ReleaseArgs {
        now_ms: now,
        jti: args.jti,
        member,
        sid,
        grant: false,
        grace_ms: args.grace_ms,
        sub: args.sub.clone(),
        vm: args.vm.clone(),
        client: args.client.clone(),
        deadline: args.deadline,
        keep_ms: args.keep_ms,
    };
    let answer = monoio::time::timeout(STORE_WAIT, fleet.admit(args)).await;
    match answer {
        Ok(Ok(Admit::Admitted {
            reconnect,
            deadline,
            ..
        })) => {
            let mut release = release;
            release.deadline = deadline;
            let a = registry.attach(r, sid, deadline, reconnect);
            Ok((a, Some(FleetSession { args: release })))
        }
        Ok(Ok(Admit::Denied(d))) => Err(d.denial(r.time.err())),
        Ok(Err(_)) | Err(_) => {
            if answer.is_err() {
                // No answer in time: the store thread is stuck on a store
                // that stopped answering; counted like any failure.
                fleet.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            match fleet.cfg.on_store_error {
                OnStoreError::Refuse => Err(Denial::StoreUnavailable),
                OnStoreError::Local => registry.admit(r, limits).map(|a| (a, None)),
            }
        }
    }
}

/// What the relay does with an event from the fleet: `revoke` closes
/// this relay's matching sessions (1008) and voids their local grants
/// (`grace` and `unseen_until` as for a local revoke); `replace` closes
/// the named session if it is this relay's (4001).
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
/// `times` gives (now, grace, unseen_until) for a revoke.
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
