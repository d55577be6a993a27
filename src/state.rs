//! Process-wide state: what every worker, the admin listener and the
//! signal handler share. Below `server`, `session` and `admin`; above the
//! shared registry (src/registry: the admission ledger behind its lock) and
//! the pure cores (`admission`, `config`, ...).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

use crate::audit::Audit;
use crate::config::Config;
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
}

impl State {
    pub fn new(live: Live, registry: Registry, metrics: Metrics, audit: Audit) -> State {
        State {
            live: RwLock::new(Arc::new(live)),
            registry: Arc::new(registry),
            metrics: Arc::new(metrics),
            audit: Arc::new(audit),
            handed_over: AtomicBool::new(false),
        }
    }

    /// New sessions are served with `live` from now on (SIGHUP); live
    /// sessions keep what they started with.
    pub fn replace_live(&self, live: Live) {
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
