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
//! Panics: monoio polls every task on its worker thread and catches no
//! panic (monoio 0.2.4 `task/harness.rs`, `poll_future`), so one panicking
//! task would unwind the whole runtime and every session on it. Every task
//! of a session must therefore be started with [`spawn`], not
//! `monoio::spawn`: its [`CatchPanic`] net ends only that task, counts it
//! (`nexor_session_panics_total`) and logs where it happened; the worker
//! goes on. A task's sockets close as the net drops it, so the session's
//! other tasks see their legs end. (The relay pump also catches a panic in
//! its pure core itself and closes the browser leg with 1011; this net is
//! the outer one, for everything else.) A runtime that a panic escapes
//! anyway leaves what its tasks held open, so its worker is then marked
//! dead and its listener shut (see [`AliveGuard`]). Each worker's
//! `Core::alive` is set while its runtime runs and cleared by a drop guard
//! when the thread ends for any reason, so `/healthz` fails if a worker
//! died.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
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
    /// Set when a drain handed the console port to a successor ([`drain`]).
    handed_over: AtomicBool,
}

impl State {
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
    let state = Arc::new(State {
        live: RwLock::new(Arc::new(Live::build(cfg, tls)?)),
        registry: Arc::new(Registry::new()),
        metrics: Arc::new(Metrics::new(workers)),
        audit: Arc::new(audit),
        handed_over: AtomicBool::new(false),
    });
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
    state.handed_over.store(successor, Ordering::Relaxed);
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
    WORKER.with(|w| *w.borrow_mut() = Some((state.metrics.clone(), id)));
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
        state.metrics.core(id).alive.store(true, Ordering::Relaxed);
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
            .core(self.id)
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

// ---- the panic net ----------------------------------------------------------

thread_local! {
    /// This worker's counters, for [`spawn`]'s net (unset off the workers).
    static WORKER: std::cell::RefCell<Option<(Arc<Metrics>, usize)>> =
        const { std::cell::RefCell::new(None) };
    /// How many [`CatchPanic`] polls are running on this thread; inside
    /// one, the panic hook leaves the log line to the net.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic on this thread happened (set by the hook).
    static LAST_PANIC: Cell<Option<String>> = const { Cell::new(None) };
}

/// Installs the process's panic hook, in place of Rust's default one.
///
/// The default hook prints the panic *message*, and a message can hold
/// data: `unwrap()` on an error prints the error's `Debug`, a bad string
/// slice prints the whole string (a request head, a ticket, a token).
/// Secrets must never reach a log line, so this hook prints only the
/// thread's name and the source location (`file:line:column`), never the
/// message, as one JSON log line. Inside a [`CatchPanic`] it prints
/// nothing and leaves the location to the net, which logs one line for
/// the session it ended. `RUST_BACKTRACE` has no effect here.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown".into());
        let caught = CATCHING.try_with(|c| c.get() > 0).unwrap_or(false);
        if caught && LAST_PANIC.try_with(|l| l.set(Some(at.clone()))).is_ok() {
            return;
        }
        let thread = std::thread::current();
        log::error(
            "panic",
            &[
                ("thread", V::S(thread.name().unwrap_or("unnamed"))),
                ("location", V::S(&at)),
            ],
        );
        // The thread (maybe the process) ends next: let the line out first.
        log::flush(Duration::from_secs(1));
    }));
}

/// A caught panic: where it happened, when the hook of
/// [`install_panic_hook`] saw it. The message is dropped unread.
#[derive(Debug)]
pub struct Panicked {
    pub location: Option<String>,
}

/// Polls a future inside `catch_unwind`: a panic ends this future (it is
/// dropped at once, its own drop panics caught too) and resolves to
/// `Err(Panicked)`; the task polling it, and the thread, go on.
///
/// A panic may leave the state the future shared (an `Rc<RefCell<_>>`)
/// half-updated; what is shared by one session's tasks belongs to that
/// session alone, and the other tasks of a session see its sockets close.
pub struct CatchPanic<F: Future> {
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> CatchPanic<F> {
    pub fn new(fut: F) -> Self {
        CatchPanic {
            inner: Some(Box::pin(fut)),
        }
    }
}

struct Catching;

impl Catching {
    fn enter() -> Catching {
        let outer = CATCHING.with(|c| c.replace(c.get() + 1)) == 0;
        if outer {
            // A location an inner catch left untaken is not this poll's.
            LAST_PANIC.with(|l| l.take());
        }
        Catching
    }
}

/// Where the panic just caught on this thread happened (`file:line:col`),
/// taken: for code that catches a panic itself inside a task started with
/// [`spawn`] (the hook stays quiet there) and logs its own line.
pub fn take_panic_location() -> Option<String> {
    LAST_PANIC.try_with(|l| l.take()).ok().flatten()
}

impl Drop for Catching {
    fn drop(&mut self) {
        let _ = CATCHING.try_with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Drops a value, catching a panic in its `Drop`.
fn drop_caught<T>(v: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(v)));
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.inner.as_mut() else {
            return Poll::Pending; // done already: never polled again
        };
        let _catching = Catching::enter();
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                this.inner = None;
                Poll::Ready(Ok(v))
            }
            Err(payload) => {
                drop_caught(this.inner.take());
                drop_caught(payload);
                let location = take_panic_location();
                Poll::Ready(Err(Panicked { location }))
            }
        }
    }
}

impl<F: Future> Drop for CatchPanic<F> {
    fn drop(&mut self) {
        if let Some(f) = self.inner.take() {
            let _catching = Catching::enter();
            drop_caught(f);
        }
    }
}

/// Counts and logs a task's panic on this thread's worker.
fn report(p: &Panicked) {
    let worker = WORKER
        .try_with(|w| {
            w.borrow().as_ref().map(|(m, id)| {
                m.core(*id).session_panic();
                *id
            })
        })
        .ok()
        .flatten();
    let mut fields = vec![("location", V::S(p.location.as_deref().unwrap_or("unknown")))];
    if let Some(id) = worker {
        fields.push(("worker", V::N(id as u64)));
    }
    log::error(
        "session task panicked: that task ended, the worker goes on",
        &fields,
    );
}

/// `monoio::spawn` behind the panic net: use it for every task of a
/// session (the handshake, the relay phase, pumps, demo backends). A
/// panic in the task is counted on this worker
/// (`nexor_session_panics_total`), logged with its location only, and
/// ends that task alone; the task's sockets close as it is dropped.
pub fn spawn<F>(fut: F) -> monoio::task::JoinHandle<()>
where
    F: Future<Output = ()> + 'static,
{
    monoio::spawn(async move {
        if let Err(p) = CatchPanic::new(fut).await {
            report(&p);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    #[test]
    fn a_panicking_task_ends_alone_and_is_counted() {
        let metrics = Arc::new(Metrics::new(2));
        let m = metrics.clone();
        // A thread of its own, like a worker (the context is thread-local).
        let healthy_done = std::thread::spawn(move || {
            WORKER.with(|w| *w.borrow_mut() = Some((m, 1)));
            let done = Rc::new(RefCell::new(Vec::new()));
            let d = done.clone();
            runtime().block_on(async move {
                let healthy = spawn({
                    let d = d.clone();
                    async move {
                        for i in 0..5u32 {
                            monoio::time::sleep(Duration::from_millis(5)).await;
                            d.borrow_mut().push(i);
                        }
                    }
                });
                let bad = spawn(async {
                    monoio::time::sleep(Duration::from_millis(7)).await;
                    let v: Vec<u8> = Vec::new();
                    let i = v.len() + 3;
                    let _ = v[i]; // panics: index out of bounds
                });
                // Panics in a future's drop are caught too.
                struct Boom;
                impl Drop for Boom {
                    fn drop(&mut self) {
                        panic!("drop");
                    }
                }
                let bad_drop = spawn(async {
                    let _b = Boom;
                    monoio::time::sleep(Duration::from_millis(3)).await;
                });
                bad.await;
                bad_drop.await;
                healthy.await;
            });
            let v = done.borrow().clone();
            v
        })
        .join()
        .expect("the worker thread survives");
        assert_eq!(healthy_done, vec![0, 1, 2, 3, 4]);
        assert_eq!(metrics.core(1).panics.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.core(0).panics.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn catch_panic_gives_the_output_or_the_panic() {
        runtime().block_on(async {
            assert_eq!(CatchPanic::new(async { 7 }).await.unwrap(), 7);
            let r = CatchPanic::new(async {
                if Instant::now().elapsed() < Duration::from_secs(3600) {
                    panic!("x");
                }
                7
            })
            .await;
            assert!(r.is_err());
        });
    }

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
            _alive.metrics.core(1).alive.store(true, Ordering::Relaxed);
            panic!("the worker dies");
        });
        assert!(t.join().is_err());
        metrics.core(0).alive.store(true, Ordering::Relaxed);
        assert!(!metrics.core(1).alive.load(Ordering::Relaxed));
        let (status, body) = crate::admin::health(&metrics);
        assert_eq!(status, 503);
        assert_eq!(body, "worker 1 not running\n");
        metrics.core(1).alive.store(true, Ordering::Relaxed);
        assert_eq!(crate::admin::health(&metrics), (200, "ok\n".to_string()));
    }
}
