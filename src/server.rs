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
//! * Upgrades (two relays on one host): the new relay starts beside the old
//!   one on the same console port (`SO_REUSEPORT`); its admin listener waits
//!   for the port (src/admin.rs [`crate::admin::spawn`]). When the draining
//!   relay sees another process listening on its console port, it hands new
//!   connections over instead of answering 503: it shuts its listeners, so the
//!   kernel gives every new connection to the successor ([`drain`]).
//!
//! Panics: every task of a session runs behind the panic net of
//! src/task.rs, so a panic ends that task, not the worker. A runtime that
//! a panic escapes anyway leaves what its tasks held open, so its worker is
//! then marked dead and its listener shut (see [`AliveGuard`]). Each
//! worker's `WorkerMetrics::alive` is set while its runtime runs and
//! cleared by a drop guard when the thread ends for any reason, so
//! `/healthz` fails if a worker died.

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::state::{Live, State};
use crate::task::{install_panic_hook, spawn};

/// Pending connections per listener before the kernel refuses more.
const BACKLOG: i32 = 4096;
/// io_uring submission queue entries per worker.
const URING_ENTRIES: u32 = 1024;

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
    install_panic_hook();
    let nofile = raise_nofile();
    let audit = Audit::new(&cfg.audit.output, cfg.audit.refused_per_second)
        .map_err(|e| format!("audit.output: {e}"))?;
    let (listen, workers, admin) = (cfg.server.listen, cfg.server.workers, cfg.admin.listen);
    let state = Arc::new(State::new(
        Live::build(cfg, tls)?,
        Registry::new(crate::state::unix_now),
        Metrics::new(workers),
        audit,
    ));
    let listeners = bind(listen, workers).map_err(|e| format!("server.listen {listen}: {e}"))?;
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    // Duplicates of the listening sockets, to hand the port over when draining.
    let mut handover: Vec<std::net::TcpListener> = listeners
        .iter()
        .filter_map(|l| l.try_clone().ok())
        .collect();
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
        .map(|(a, _)| a.to_string())
        .unwrap_or_else(|| "off".into());
    let admin_pending = admin_addr.is_some_and(|(_, bound)| !bound);
    log::info(
        "listening",
        &[
            ("addr", V::S(&local.to_string())),
            ("tls", V::B(live.tls.is_some())),
            ("workers", V::N(threads.len() as u64)),
            ("path", V::S(&live.cfg.server.path)),
            ("admin", V::S(&admin_s)),
            ("admin_pending", V::B(admin_pending)),
            ("nofile", V::N(nofile.unwrap_or(0))),
        ],
    );
    drop(live);
    on_ready(local);
    let mut draining = false;
    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGHUP => {
                // A panic while reloading keeps the old config, like any
                // other reload failure; the process serves on.
                if catch_unwind(AssertUnwindSafe(|| reload(&state, path.as_ref()))).is_err() {
                    state.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    log::error("config reload failed; keeping the running config", &[]);
                }
            }
            _ if draining => {
                log::warn(
                    "second stop signal: exiting now",
                    &[("sessions", V::N(state.registry.live().len() as u64))],
                );
                exit(&state, 1, Duration::from_secs(1));
            }
            _ => {
                draining = true;
                let state = state.clone();
                let handover = std::mem::take(&mut handover);
                let _ = std::thread::Builder::new()
                    .name("nexor-drain".into())
                    .spawn(move || {
                        if catch_unwind(AssertUnwindSafe(|| drain(&state, handover))).is_err() {
                            // Asked to stop: stop, without the grace.
                            exit(&state, 1, Duration::from_secs(1));
                        }
                    });
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
            state.replace_live(new);
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
///
/// When another process listens on the same console port (a new relay started
/// for an upgrade), new connections are handed to it instead: the listeners
/// (`handover`, duplicates of the workers' sockets) are shut, which takes them
/// out of the `SO_REUSEPORT` group, so the kernel sends every new connection to
/// the successor. Connections already queued on a shut listener are reset by
/// Linux unless `net.ipv4.tcp_migrate_req = 1` (then it moves them to the
/// successor); set that sysctl for a handover that cannot lose one.
fn drain(state: &State, handover: Vec<std::net::TcpListener>) {
    let timeout = state.live().cfg.server.drain_timeout;
    let successor = handover
        .first()
        .and_then(|l| l.local_addr().ok())
        .is_some_and(|a| listeners_on_port(a.port()) > handover.len());
    state.set_handed_over(successor);
    state.metrics.draining.store(true, Ordering::Relaxed);
    if successor {
        for l in &handover {
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
    }
    log::info(
        "draining",
        &[
            ("sessions", V::N(state.registry.live().len() as u64)),
            ("timeout_ms", V::N(timeout.as_millis() as u64)),
            ("handed_over", V::B(successor)),
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
    exit(state, 0, log::FLUSH_TIMEOUT);
}

/// Exits once the queued audit and log lines are written (the last `session_end`
/// lines must not be lost), waiting at most `flush` for each stalled reader.
fn exit(state: &State, code: i32, flush: Duration) -> ! {
    state.audit.flush(flush);
    log::flush(flush);
    std::process::exit(code);
}

/// TCP sockets in LISTEN state on `port` in this network namespace, every process
/// counted (/proc/net/tcp and tcp6); 0 where /proc cannot be read.
#[allow(clippy::disallowed_methods)] // glue: reads /proc, once, at SIGTERM
fn listeners_on_port(port: u16) -> usize {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|l| {
                    let mut f = l.split_whitespace();
                    let local = f.nth(1).unwrap_or("");
                    let state = f.nth(1).unwrap_or("");
                    local.ends_with(&want) && state == "0A"
                })
                .count()
        })
        .sum()
}

/// io_uring setup flags of every worker's ring (see [`uring_flags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringFlags {
    pub coop_taskrun: bool,
    pub taskrun_flag: bool,
    pub single_issuer: bool,
    pub defer_taskrun: bool,
}

/// The ring's setup flags: the default, or `NEXOR_URING_FLAGS` (a comma
/// list of `coop`, `taskrun`, `single`, `defer`, or `none`), the lever
/// BENCHMARKING.md measures. An unknown word is ignored with a warning.
pub fn uring_flags() -> UringFlags {
    let spec = std::env::var("NEXOR_URING_FLAGS");
    parse_uring_flags(spec.as_deref().unwrap_or(DEFAULT_URING_FLAGS))
}

/// What BENCHMARKING.md ("io_uring setup flags") measured best.
const DEFAULT_URING_FLAGS: &str = "coop,single,defer";

fn parse_uring_flags(spec: &str) -> UringFlags {
    let mut f = UringFlags {
        coop_taskrun: false,
        taskrun_flag: false,
        single_issuer: false,
        defer_taskrun: false,
    };
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "coop" => f.coop_taskrun = true,
            "taskrun" => f.taskrun_flag = true,
            "single" => f.single_issuer = true,
            // The kernel takes DEFER_TASKRUN only with SINGLE_ISSUER.
            "defer" => (f.defer_taskrun, f.single_issuer) = (true, true),
            "none" => {}
            _ => log::warn(
                "NEXOR_URING_FLAGS: unknown flag ignored",
                &[("flag", V::S(word))],
            ),
        }
    }
    f
}

/// The worker's runtime: io_uring with [`uring_flags`]; io_uring without
/// flags where the kernel refuses them (before 6.1); epoll where io_uring
/// is unavailable (or `MONOIO_FORCE_LEGACY_DRIVER=1`). Called on the
/// worker's own thread: with SINGLE_ISSUER only that thread may submit.
type Runtime = FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

fn runtime() -> std::io::Result<Runtime> {
    let f = uring_flags();
    let mut urb = io_uring::IoUring::builder();
    if f.coop_taskrun {
        urb.setup_coop_taskrun();
    }
    if f.taskrun_flag {
        urb.setup_taskrun_flag();
    }
    if f.single_issuer {
        urb.setup_single_issuer();
    }
    if f.defer_taskrun {
        urb.setup_defer_taskrun();
    }
    let flagged = RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .build();
    match flagged {
        Ok(rt) => Ok(rt),
        Err(e) if f != parse_uring_flags("none") => {
            log::warn(
                "io_uring refused the setup flags: running without them",
                &[("error", V::S(&e.to_string()))],
            );
            RuntimeBuilder::<FusionDriver>::new()
                .enable_timer()
                .with_entries(URING_ENTRIES)
                .build()
        }
        Err(e) => Err(e),
    }
}

fn worker_main(
    id: usize,
    listener: std::net::TcpListener,
    state: Arc<State>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    // Cleared when this thread ends, however it ends (unwinding included).
    let _alive = AliveGuard {
        metrics: state.metrics.clone(),
        id,
        listener: listener.try_clone().ok(),
    };
    crate::task::enter_worker(state.metrics.clone(), id);
    let rt = runtime();
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
    state.metrics.worker(id).set_driver(driver);
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
        state
            .metrics
            .worker(id)
            .alive
            .store(true, Ordering::Relaxed);
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
                spawn(session::handle(worker.clone(), tcp, peer));
            }
            Err(_) if worker.state.metrics.draining.load(Ordering::Relaxed) => {
                // Handed over (the listener was shut): nothing more to accept;
                // this worker's sessions run on until the drain ends them.
                monoio::time::sleep(Duration::from_secs(3600)).await;
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

/// Marks a worker alive while its thread runs; clears the mark when the
/// thread ends, normally or by unwinding, so `/healthz` reports it.
///
/// It also shuts the worker's listening socket down (through a duplicate
/// of its descriptor): a runtime that unwound does not close what its
/// tasks held, and a listener left open would keep taking its share of
/// the `SO_REUSEPORT` group's connections with no one to accept them.
/// Shut down, it leaves the group, and the kernel gives new connections to
/// the workers that live.
pub struct AliveGuard {
    pub metrics: Arc<Metrics>,
    pub id: usize,
    pub listener: Option<std::net::TcpListener>,
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.metrics
            .worker(self.id)
            .alive
            .store(false, Ordering::Relaxed);
        if let Some(l) = &self.listener {
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
        if std::thread::panicking() {
            log::error(
                "worker thread died; its sessions are gone and /healthz fails",
                &[("worker", V::N(self.id as u64))],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_worker_is_not_alive() {
        let metrics = Arc::new(Metrics::new(2));
        let m = metrics.clone();
        let t = std::thread::spawn(move || {
            let _alive = AliveGuard {
                metrics: m,
                id: 1,
                listener: None,
            };
            _alive
                .metrics
                .worker(1)
                .alive
                .store(true, Ordering::Relaxed);
            panic!("the worker dies");
        });
        assert!(t.join().is_err());
        metrics.worker(0).alive.store(true, Ordering::Relaxed);
        assert!(!metrics.worker(1).alive.load(Ordering::Relaxed));
        let (status, body) = crate::admin::health(&metrics);
        assert_eq!(status, 503);
        assert_eq!(body, "worker 1 not running\n");
        metrics.worker(1).alive.store(true, Ordering::Relaxed);
        assert_eq!(crate::admin::health(&metrics), (200, "ok\n".to_string()));
    }
}
