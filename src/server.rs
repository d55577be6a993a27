//! Thread-per-core serving: one monoio runtime per worker (`FusionDriver`:
//! io_uring, or epoll where io_uring is unavailable or
//! `MONOIO_FORCE_LEGACY_DRIVER=1`), each with its own `SO_REUSEPORT`
//! listener, so the kernel spreads connections and no lock is shared on
//! the data path. The main thread handles signals:
//!
//! * SIGHUP: reload the config (keys, certificates, upstreams, limits) for
//!   new sessions; live sessions keep the config they started with; an
//!   invalid file is refused, logged, and the old config kept.
//! * SIGTERM / SIGINT: drain — new upgrades get 503, `/readyz` 503, live
//!   sessions continue until `drain_timeout`, then close with 1001; exit 0.
//!   A second signal exits at once with status 1.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::transport::TlsAcceptor;
use monoio::net::TcpListener;
use monoio::{FusionDriver, FusionRuntime, RuntimeBuilder};
use rustls::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};

use crate::audit::Audit;
use crate::config::Config;
use crate::log::{self, V};
use crate::metrics::Metrics;
use crate::registry::{CloseRequest, Registry};
use crate::session::{self, Worker};
use crate::upstream::Connectors;

/// Pending connections per listener before the kernel refuses more.
const BACKLOG: i32 = 4096;
/// io_uring submission queue entries per worker.
const URING_ENTRIES: u32 = 1024;

/// What new connections are served with; swapped whole on SIGHUP.
pub struct Live {
    pub cfg: Arc<Config>,
    pub tls: Option<TlsAcceptor>,
    pub connectors: Connectors,
    /// The console page, when `console_page` is on.
    pub page: Option<Arc<crate::page::Page>>,
}

impl Live {
    fn build(cfg: Config, tls: Option<Arc<ServerConfig>>) -> Result<Live, String> {
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
}

impl State {
    /// The current config, certificates and connectors.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn draining(&self) -> bool {
        self.metrics.draining.load(Ordering::Relaxed)
    }
}

/// Raises `RLIMIT_NOFILE` to its hard limit (each console is two sockets)
/// and returns the new soft limit.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some(hard)
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Binds one listener per worker on `addr`. The first decides the port
/// when `addr` has port 0, so every worker shares it.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = listener(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(listener(actual)?);
    }
    Ok(all)
}

/// Serves until a signal ends the process. `path` is re-read on SIGHUP
/// (`None`: the demo, nothing to reload). `on_ready` runs once every
/// worker listens.
pub fn serve(
    path: Option<PathBuf>,
    cfg: Config,
    tls: Option<Arc<ServerConfig>>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let nofile = raise_nofile();
    let audit = Audit::new(&cfg.audit.output, cfg.audit.refused_per_second)
        .map_err(|e| format!("audit.output: {e}"))?;
    let (listen, workers, admin) = (cfg.server.listen, cfg.server.workers, cfg.admin.listen);
    let state = Arc::new(State {
        live: RwLock::new(Arc::new(Live::build(cfg, tls)?)),
        registry: Arc::new(Registry::new()),
        metrics: Arc::new(Metrics::new(workers)),
        audit: Arc::new(audit),
    });
    let listeners = bind(listen, workers).map_err(|e| format!("server.listen {listen}: {e}"))?;
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let admin_addr = match admin {
        Some(a) => Some(
            crate::admin::spawn(a, state.clone()).map_err(|e| format!("admin.listen {a}: {e}"))?,
        ),
        None => None,
    };
    // Block the signals before any thread starts, so only the handler sees them.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for (id, l) in listeners.into_iter().enumerate() {
        let state = state.clone();
        let ready = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("nexor-w{id}"))
            .spawn(move || worker_main(id, l, state, ready))
            .map_err(|e| e.to_string())?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a worker died at start".into()),
        }
    }
    let live = state.live();
    let admin_s = admin_addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    log::info(
        "listening",
        &[
            ("addr", V::S(&local.to_string())),
            ("tls", V::B(live.tls.is_some())),
            ("workers", V::N(threads.len() as u64)),
            ("path", V::S(&live.cfg.server.path)),
            ("admin", V::S(&admin_s)),
            ("nofile", V::N(nofile.unwrap_or(0))),
        ],
    );
    drop(live);
    on_ready(local);
    let mut draining = false;
    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGHUP => reload(&state, path.as_ref()),
            _ if draining => {
                log::warn(
                    "second stop signal: exiting now",
                    &[("sessions", V::N(state.registry.live().len() as u64))],
                );
                std::process::exit(1);
            }
            _ => {
                draining = true;
                let state = state.clone();
                let _ = std::thread::Builder::new()
                    .name("nexor-drain".into())
                    .spawn(move || drain(&state));
            }
        }
    }
    Ok(())
}

/// SIGHUP: read and validate the file, build certificates and upstream
/// TLS, and only then swap; any error keeps the old config.
fn reload(state: &State, path: Option<&PathBuf>) {
    let Some(path) = path else {
        return log::warn("SIGHUP ignored: no config file (demo)", &[]);
    };
    let result = (|| -> Result<Live, String> {
        let cfg = Config::load(path).map_err(|e| e.to_string())?;
        let tls = match &cfg.server.tls {
            Some(t) => Some(crate::tls::server_config(&t.cert, &t.key)?),
            None => None,
        };
        Live::build(cfg, tls)
    })();
    match result {
        Ok(new) => {
            let old = state.live();
            for (what, changed) in [
                (
                    "server.listen",
                    old.cfg.server.listen != new.cfg.server.listen,
                ),
                (
                    "server.workers",
                    old.cfg.server.workers != new.cfg.server.workers,
                ),
                ("admin.listen", old.cfg.admin.listen != new.cfg.admin.listen),
            ] {
                if changed {
                    log::warn(
                        "reload: this key needs a restart; keeping the running value",
                        &[("key", V::S(what))],
                    );
                }
            }
            if let Err(e) = state
                .audit
                .reopen(&new.cfg.audit.output, new.cfg.audit.refused_per_second)
            {
                log::warn(
                    "reload: audit output not reopened",
                    &[("error", V::S(&e.to_string()))],
                );
            }
            let upstreams = new.cfg.upstreams.len() as u64;
            *state.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
            state.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
            log::info("config reloaded", &[("upstreams", V::N(upstreams))]);
        }
        Err(e) => {
            state.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
            log::error(
                "config reload failed; keeping the running config",
                &[("error", V::S(&e))],
            );
        }
    }
}

/// SIGTERM: 503 for new upgrades; live sessions until `drain_timeout`,
/// then 1001; exit 0 when none is left.
fn drain(state: &State) {
    state.metrics.draining.store(true, Ordering::Relaxed);
    let timeout = state.live().cfg.server.drain_timeout;
    log::info(
        "draining",
        &[
            ("sessions", V::N(state.registry.live().len() as u64)),
            ("timeout_ms", V::N(timeout.as_millis() as u64)),
        ],
    );
    let start = Instant::now();
    while start.elapsed() < timeout && !state.registry.live().is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = state.registry.live();
    for c in &left {
        c.request_close(CloseRequest::Shutdown);
    }
    let closing = Instant::now();
    while closing.elapsed() < crate::relay::CLOSE_GRACE + Duration::from_secs(2)
        && !state.registry.live().is_empty()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    log::info(
        "drained",
        &[("closed_at_deadline", V::N(left.len() as u64))],
    );
    std::process::exit(0);
}

fn worker_main(
    id: usize,
    listener: std::net::TcpListener,
    state: Arc<State>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let rt = RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .with_entries(URING_ENTRIES)
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {id}: runtime: {e}")));
            return;
        }
    };
    let driver = match &rt {
        FusionRuntime::Uring(_) => "io_uring",
        FusionRuntime::Legacy(_) => "epoll",
    };
    state.metrics.core(id).set_driver(driver);
    log::info(
        "worker started",
        &[("worker", V::N(id as u64)), ("driver", V::S(driver))],
    );
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("worker {id}: listener: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let worker = Rc::new(Worker {
            id,
            state,
            started: Cell::new(0),
        });
        accept_loop(worker, listener).await;
    });
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                monoio::spawn(session::handle(worker.clone(), tcp, peer));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the
                // kernel keeps the backlog meanwhile.
                log::warn(
                    "accept failed",
                    &[
                        ("worker", V::N(worker.id as u64)),
                        ("error", V::S(&e.to_string())),
                    ],
                );
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
