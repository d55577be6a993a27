//! Thread-per-core serving: one monoio runtime per worker (`FusionDriver`:
//! io_uring, or epoll where io_uring is unavailable or
//! `MONOIO_FORCE_LEGACY_DRIVER=1`), each with its own `SO_REUSEPORT`
//! listener, so the kernel spreads connections and no lock is shared on
//! the data path.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use monoio::{FusionDriver, FusionRuntime, RuntimeBuilder};
use monoio_rustls::TlsAcceptor;
use rustls::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::log::{self, V};
use crate::registry::Registry;
use crate::session::{self, Worker};
use crate::upstream::Connectors;

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

/// Serves until the process is stopped. Logs `listening` with the bound
/// address once every worker is running.
pub fn serve(
    cfg: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let nofile = raise_nofile();
    let connectors = Connectors::build(&cfg)?;
    let registry = Arc::new(Registry::new());
    let listeners = bind(cfg.server.listen, cfg.server.workers)
        .map_err(|e| format!("server.listen {}: {e}", cfg.server.listen))?;
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for (id, l) in listeners.into_iter().enumerate() {
        let cfg = cfg.clone();
        let tls = tls.clone();
        let connectors = connectors.clone();
        let registry = registry.clone();
        let ready = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("nexor-w{id}"))
            .spawn(move || worker_main(id, l, cfg, tls, connectors, registry, ready))
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
    log::info(
        "listening",
        &[
            ("addr", V::S(&local.to_string())),
            ("tls", V::B(tls.is_some())),
            ("workers", V::N(threads.len() as u64)),
            ("path", V::S(&cfg.server.path)),
            ("nofile", V::N(nofile.unwrap_or(0))),
        ],
    );
    on_ready(local);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn worker_main(
    id: usize,
    listener: std::net::TcpListener,
    cfg: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    connectors: Connectors,
    registry: Arc<Registry>,
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
            cfg,
            tls: tls.map(TlsAcceptor::from),
            connectors,
            registry,
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
