//! Process-wide state: what every worker, the admin listener and the
//! signal handler share. Below `server`, `session` and `admin`; above the
//! shared registry (src/registry: the admission ledger behind its lock) and
//! the pure cores (`admission`, `config`, ...).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

use crate::audit::Audit;
use crate::config::Config;
use crate::fleet::store::Fleet;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::transport::TlsAcceptor;
use crate::upstream::Connectors;

/// What new connections are served with; swapped whole on SIGHUP.
pub struct Live {
    pub cfg: Arc<Config>,
    pub tls: Option<TlsAcceptor>,
    pub connectors: Connectors,
    /// The console page, when `console_page` is on.
    pub page: Option<Arc<crate::page::Page>>,
}

impl Live {
    pub fn build(cfg: Config, tls: Option<Arc<ServerConfig>>) -> Result<Live, String> {
        let connectors = Connectors::build(&cfg)?;
        let page = match cfg.server.console_page {
            true => Some(Arc::new(crate::page::Page::new(
                &cfg.server.path,
                cfg.server.console_assets.as_deref(),
            )?)),
            false => None,
        };
        Ok(Live {
            cfg: Arc::new(cfg),
            tls: tls.map(TlsAcceptor::from),
            connectors,
            page,
        })
    }
}

/// Process-wide state shared by the workers, the admin listener and the
/// signal handler.
pub struct State {
    live: RwLock<Arc<Live>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    /// Set when a drain handed the console port to a successor
    /// (src/server.rs `drain`).
    handed_over: AtomicBool,
    /// Fleet mode (`[fleet]`): the shared store. Started once; a reload
    /// does not change it.
    pub fleet: Option<Arc<Fleet>>,
    /// `reconnect_grace`, `max_ttl` and `leeway` (s) of the running config,
    /// for revokes heard from the fleet.
    ticket_times: Arc<[AtomicU64; 3]>,
}

fn ticket_times(cfg: &Config) -> [u64; 3] {
    let t = &cfg.tickets;
    [
        t.reconnect_grace.as_secs(),
        t.policy.max_ttl,
        t.policy.leeway,
    ]
}

impl State {
    pub fn new(live: Live, registry: Registry, metrics: Metrics, audit: Audit) -> State {
        let registry = Arc::new(registry);
        let times = Arc::new(ticket_times(&live.cfg).map(AtomicU64::new));
        let fleet = live.cfg.fleet.clone().and_then(|cfg| {
            let node = Arc::new(std::sync::OnceLock::new());
            let t = times.clone();
            let handler = crate::fleet::admit::handler(registry.clone(), node.clone(), move || {
                let [grace, max_ttl, leeway] = [0, 1, 2].map(|i| t[i].load(Ordering::Relaxed));
                let now = unix_now();
                (now, grace, now + max_ttl + 2 * leeway + grace)
            });
            match Fleet::start(cfg, handler) {
                Ok(f) => {
                    let _ = node.set(f.node.clone());
                    Some(f)
                }
                Err(e) => {
                    // Serving without the fleet would break its single use.
                    crate::log::error("fleet: not started", &[("error", crate::log::V::S(&e))]);
                    std::process::exit(1)
                }
            }
        });
        State {
            live: RwLock::new(Arc::new(live)),
            registry,
            metrics: Arc::new(metrics),
            audit: Arc::new(audit),
            handed_over: AtomicBool::new(false),
            fleet,
            ticket_times: times,
        }
    }

    /// New sessions are served with `live` from now on (SIGHUP); live
    /// sessions keep what they started with.
    pub fn replace_live(&self, live: Live) {
        for (a, v) in self.ticket_times.iter().zip(ticket_times(&live.cfg)) {
            a.store(v, Ordering::Relaxed);
        }
        let running = self.fleet.as_ref().map(|f| &f.cfg);
        if running != live.cfg.fleet.as_ref() {
            crate::log::warn(
                "reload: [fleet] changed; it needs a restart, the running one is kept",
                &[],
            );
        }
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    /// The draining relay gave its console port to a successor.
    pub fn set_handed_over(&self, yes: bool) {
        self.handed_over.store(yes, Ordering::Relaxed);
    }

    /// The current config, certificates and connectors.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether new upgrades get 503. Not after a handover: the listeners are
    /// shut, and a handshake they accepted just before is served, not refused.
    pub fn draining(&self) -> bool {
        self.metrics.draining.load(Ordering::Relaxed) && !self.handed_over.load(Ordering::Relaxed)
    }
}

/// Seconds since the Unix epoch: the clock of the ticket and admission
/// checks, read here in the glue and passed down to the pure cores.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (fleet leases).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
