//! The peers: nexor-relay on io_uring and on epoll, nginx, websockify, and
//! "direct" (no relay: the generator talks to the upstream itself). Each runs
//! in its own process group, pinned to the peer core; CPU and memory are read
//! from /proc for the whole group.

use crate::ticket::{Minter, KID};
use crate::upstream::Upstreams;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    RelayUring,
    RelayEpoll,
    /// relay-uring with `[fleet]` on a local redis-server (scenario `fleet`).
    RelayFleet,
    Nginx,
    Websockify,
    Direct,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::RelayUring => "relay-uring",
            PeerKind::RelayEpoll => "relay-epoll",
            PeerKind::RelayFleet => "relay-fleet",
            PeerKind::Nginx => "nginx",
            PeerKind::Websockify => "websockify",
            PeerKind::Direct => "direct",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::RelayUring,
            Self::RelayEpoll,
            Self::RelayFleet,
            Self::Nginx,
            Self::Websockify,
            Self::Direct,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

/// What a session connects to at the far end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Up {
    WsEcho,
    WsSink,
    WsSource,
    /// Idle WebSocket upstream number i (one per 127.0.0.x address).
    WsIdle(u8),
    TcpEcho,
    TcpSource,
    TcpSink,
    /// Soak: bursts at connect (TCP).
    TcpBurst,
    /// Soak: bursts at connect (TLS WebSocket, 128 KiB frames).
    WssBurst,
}

impl Up {
    /// Upstream name in the relay config and nginx location.
    pub fn name(self) -> String {
        match self {
            Up::WsEcho => "wsecho".into(),
            Up::WsSink => "wssink".into(),
            Up::WsSource => "wssource".into(),
            Up::WsIdle(i) => format!("wsidle{i}"),
            Up::TcpEcho => "tcpecho".into(),
            Up::TcpSource => "tcpsource".into(),
            Up::TcpSink => "tcpsink".into(),
            Up::TcpBurst => "tcpburst".into(),
            Up::WssBurst => "wssburst".into(),
        }
    }
    pub fn direct_path(self) -> &'static str {
        match self {
            Up::WsEcho => "/echo",
            Up::WsSink => "/sink",
            Up::WsSource => "/source",
            _ => "/idle",
        }
    }
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Up::TcpEcho | Up::TcpSource | Up::TcpSink | Up::TcpBurst
        )
    }
    fn addr(self, u: &Upstreams) -> SocketAddr {
        match self {
            Up::TcpEcho => u.tcp_echo,
            Up::TcpSource => u.tcp_source,
            Up::TcpSink => u.tcp_sink,
            Up::TcpBurst => u.tcp_burst,
            Up::WssBurst => u.wss_burst,
            Up::WsIdle(i) => u.ws_idle[i as usize],
            _ => u.ws,
        }
    }
}

/// Process groups alive, for the watchdog.
pub static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Kills every peer process group still registered (watchdog, exit paths).
pub fn kill_all() {
    for g in GROUPS.lock().unwrap().drain(..) {
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
}

/// Where processes run: the peer's CPU (None: unpinned) and the fd limit.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub peer_cpu: Option<usize>,
}

/// A running peer.
pub struct Peer {
    pub kind: PeerKind,
    pub addr: SocketAddr,
    pub tls: bool,
    /// The driver the relay logged, if a relay.
    pub driver: Option<String>,
    /// The relay's log (stderr and the audit lines on stdout).
    pub log: Option<PathBuf>,
    child: Option<Child>,
    pgid: i32,
    /// relay-fleet: its redis-server (own process group, pinned to the
    /// generator's CPU: on another host in production), measured apart.
    store: Option<(Child, i32)>,
}

fn pin_and_group(cmd: &mut Command, cpu: Option<usize>) {
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            if let Some(c) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_connectable(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited at start: {st}");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    bail!("{what} did not listen on {addr} within 15 s")
}

/// Everything a peer start needs.
pub struct PeerEnv<'a> {
    pub dir: &'a Path,
    pub relay_bin: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ups: &'a Upstreams,
    pub minter: &'a Minter,
    pub place: Placement,
    /// relay-fleet talks to its redis-server over a unix socket.
    pub fleet_unix: bool,
}

impl Peer {
    /// Starts `kind`; `tls` picks the browser-leg listener; `tcp_up` is
    /// websockify's fixed target.
    pub fn start(kind: PeerKind, tls: bool, tcp_up: Up, env: &PeerEnv) -> Result<Peer> {
        let mut p = match kind {
            PeerKind::RelayUring | PeerKind::RelayEpoll | PeerKind::RelayFleet => {
                Self::relay(kind, tls, env)?
            }
            PeerKind::Nginx => Self::nginx(tls, env)?,
            PeerKind::Websockify => Self::websockify(tls, tcp_up, env)?,
            PeerKind::Direct => {
                if tls {
                    bail!("direct has no TLS listener")
                }
                Peer {
                    kind,
                    addr: env.ups.ws,
                    tls,
                    driver: None,
                    log: None,
                    child: None,
                    pgid: 0,
                    store: None,
                }
            }
        };
        p.kind = kind;
        Ok(p)
    }

    fn spawn(mut cmd: Command, kind: PeerKind, env: &PeerEnv, log: &str) -> Result<Child> {
        let log = std::fs::File::create(env.dir.join(log))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pin_and_group(&mut cmd, env.place.peer_cpu);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        GROUPS.lock().unwrap().push(child.id() as i32);
        Ok(child)
    }

    fn relay(kind: PeerKind, tls: bool, env: &PeerEnv) -> Result<Peer> {
        let mut c = String::from("[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n");
        // The admin listener on a free port (the default 9477 may be taken).
        let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
        if tls {
            writeln!(c, "tls_cert = {:?}\ntls_key = {:?}", env.cert, env.key)?;
        }
        writeln!(
            c,
            "\n[tickets]\nkeys = [{{ id = \"{KID}\", secret = \"{}\" }}]\n",
            env.minter.secret_b64()
        )?;
        c.push_str(admin);
        // The generator is thousands of clients from eight loopback
        // addresses; a relay in production sees one address per client.
        // The per-IP handshake cap (64 by default) would measure the
        // generator, not the relay.
        c.push_str("[limits]\nmax_handshakes_per_ip = 4096\n");
        let mut ups = vec![
            Up::WsEcho,
            Up::WsSink,
            Up::WsSource,
            Up::TcpEcho,
            Up::TcpSource,
            Up::TcpSink,
            Up::TcpBurst,
        ];
        ups.extend((0..env.ups.ws_idle.len() as u8).map(Up::WsIdle));
        for u in ups {
            let a = u.addr(env.ups);
            if u.is_tcp() {
                writeln!(
                    c,
                    "[upstreams.{}]\nkind = \"tcp\"\naddr = \"{a}\"\n",
                    u.name()
                )?;
            } else {
                writeln!(
                    c,
                    "[upstreams.{}]\nkind = \"ws\"\nurl = \"ws://{a}{}\"\n",
                    u.name(),
                    u.direct_path()
                )?;
            }
        }
        writeln!(
            c,
            "[upstreams.{}]\nkind = \"ws\"\nurl = \"wss://127.0.0.1:{}/\"\nfingerprint = \"{}\"\n",
            Up::WssBurst.name(),
            env.ups.wss_burst.port(),
            env.ups.wss_fingerprint
        )?;
        let mut store = None;
        if kind == PeerKind::RelayFleet {
            let (child, pgid, url) = Self::redis(env)?;
            store = Some((child, pgid));
            writeln!(c, "[fleet]\nredis = \"{url}\"\nrelay_id = \"bench\"\n")?;
        }
        let name = format!("{}-{}", kind.name(), if tls { "tls" } else { "plain" });
        let conf = env.dir.join(format!("{name}.toml"));
        std::fs::write(&conf, c)?;
        let mut cmd = Command::new(env.relay_bin);
        cmd.arg("serve").arg("-c").arg(&conf);
        if kind == PeerKind::RelayEpoll {
            cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
        }
        let logname = format!("{name}.log");
        let mut child = Self::spawn(cmd, kind, env, &logname)?;
        let pgid = child.id() as i32;
        let t0 = Instant::now();
        loop {
            let log = std::fs::read_to_string(env.dir.join(&logname)).unwrap_or_default();
            let addr = log
                .lines()
                .filter(|l| l.contains("\"msg\":\"listening\""))
                .find_map(|l| {
                    l.split("\"addr\":\"")
                        .nth(1)?
                        .split('"')
                        .next()?
                        .parse()
                        .ok()
                });
            if let Some(addr) = addr {
                let driver = log.lines().find_map(|l| {
                    Some(
                        l.split("\"driver\":\"")
                            .nth(1)?
                            .split('"')
                            .next()?
                            .to_string(),
                    )
                });
                return Ok(Peer {
                    kind,
                    addr,
                    tls,
                    driver,
                    log: Some(env.dir.join(&logname)),
                    child: Some(child),
                    pgid,
                    store: store.take(),
                });
            }
            if let Some(st) = child.try_wait()? {
                if let Some((mut r, g)) = store.take() {
                    stop_group(&mut r, g);
                }
                bail!("relay exited at start ({st}): {log}");
            }
            if t0.elapsed() > Duration::from_secs(15) {
                bail!("relay did not log `listening` within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn nginx(tls: bool, env: &PeerEnv) -> Result<Peer> {
        let dir = env.dir.join(if tls { "nginx-tls" } else { "nginx-plain" });
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let ws = env.ups.ws;
        let (ssl, certs) = if tls {
            (
                "ssl ",
                // The shared session cache is the standard production
                // setting (session tickets are on by default): churn-resume
                // measures nginx with it.
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};\n        \
                     ssl_session_cache shared:SSL:10m;\n",
                    env.cert.display(),
                    env.key.display()
                ),
            )
        } else {
            ("", String::new())
        };
        let mut locs = String::new();
        for u in [Up::WsEcho, Up::WsSink, Up::WsSource, Up::WsIdle(0)] {
            writeln!(
                locs,
                "        location /{} {{ proxy_pass http://{ws}{}; }}",
                u.name(),
                u.direct_path()
            )?;
        }
        let d = dir.display();
        let nofile = nofile_hard();
        let conf = format!(
            r#"# nginx as a provider would run it in front of WebSocket consoles.
worker_processes 2;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {nofile}; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} {ssl}reuseport backlog=4096;
        {certs}
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;
        proxy_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
{locs}    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-e")
            .arg(dir.join("error.log"));
        let mut child = Self::spawn(cmd, PeerKind::Nginx, env, "nginx.out")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_connectable(addr, &mut child, "nginx")?;
        let pgid = child.id() as i32;
        Ok(Peer {
            kind: PeerKind::Nginx,
            addr,
            tls,
            driver: None,
            log: None,
            child: Some(child),
            pgid,
            store: None,
        })
    }

    fn websockify(tls: bool, up: Up, env: &PeerEnv) -> Result<Peer> {
        let port = free_port()?;
        let mut cmd = Command::new("websockify");
        if tls {
            cmd.arg("--cert")
                .arg(env.cert)
                .arg("--key")
                .arg(env.key)
                .arg("--ssl-only");
        }
        cmd.arg(format!("127.0.0.1:{port}"))
            .arg(up.addr(env.ups).to_string());
        let mut child = Self::spawn(cmd, PeerKind::Websockify, env, "websockify.log")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_connectable(addr, &mut child, "websockify")?;
        let pgid = child.id() as i32;
        Ok(Peer {
            kind: PeerKind::Websockify,
            addr,
            tls,
            driver: None,
            log: None,
            child: Some(child),
            pgid,
            store: None,
        })
    }

    /// CPU seconds (user + system) of the whole group so far: every live
    /// process's own time plus the leader's reaped children.
    pub fn cpu_secs(&self) -> f64 {
        if self.pgid == 0 {
            return 0.0;
        }
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut ticks = 0u64;
        for (pid, st) in group(self.pgid) {
            ticks += st.utime + st.stime;
            if pid == self.pgid {
                ticks += st.cutime + st.cstime;
            }
        }
        ticks as f64 / tck
    }

    /// Memory of the group in bytes: VmRSS summed, or for websockify
    /// (forked children sharing the parent's pages) Pss summed.
    pub fn mem_bytes(&self) -> u64 {
        if self.pgid == 0 {
            return 0;
        }
        let (file, key) = if self.kind == PeerKind::Websockify {
            ("smaps_rollup", "Pss:")
        } else {
            ("status", "VmRSS:")
        };
        group(self.pgid)
            .into_iter()
            .map(|(pid, _)| kib_field(pid, file, key) * 1024)
            .sum()
    }

    /// Number of processes in the group.
    pub fn processes(&self) -> usize {
        if self.pgid == 0 {
            0
        } else {
            group(self.pgid).len()
        }
    }

    /// Whether the peer's leader is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Stops the whole group (SIGTERM, then SIGKILL after 3 s), and the
    /// store of relay-fleet after it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_group(&mut c, self.pgid);
        }
        if let Some((mut r, g)) = self.store.take() {
            stop_group(&mut r, g);
        }
    }

    /// relay-fleet: CPU seconds of its redis-server so far (0 otherwise).
    pub fn store_cpu_secs(&self) -> f64 {
        let Some((_, g)) = &self.store else {
            return 0.0;
        };
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        group(*g)
            .into_iter()
            .map(|(_, st)| st.utime + st.stime)
            .sum::<u64>() as f64
            / tck
    }

    /// A redis-server for relay-fleet on a free port (or, with
    /// `env.fleet_unix`, a unix socket), no persistence, pinned to the
    /// generator's CPU (1) when pinning: the process, its group and the
    /// URL the relay uses.
    fn redis(env: &PeerEnv) -> Result<(Child, i32, String)> {
        let port = free_port()?;
        let sock = env.dir.join(format!("redis-{port}.sock"));
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(env.dir);
        if env.fleet_unix {
            cmd.arg("--unixsocket").arg(&sock);
        }
        let log = std::fs::File::create(env.dir.join("redis.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pin_and_group(&mut cmd, env.place.peer_cpu.map(|_| 1));
        let mut child = cmd
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let pgid = child.id() as i32;
        GROUPS.lock().unwrap().push(pgid);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(e) = wait_connectable(addr, &mut child, "redis-server") {
            stop_group(&mut child, pgid);
            return Err(e);
        }
        let url = if env.fleet_unix {
            format!("redis+unix://{}", sock.display())
        } else {
            format!("redis://127.0.0.1:{port}/0")
        };
        Ok((child, pgid, url))
    }
}

/// SIGTERM to a process group, SIGKILL after 3 s; reaps its leader.
fn stop_group(c: &mut Child, pgid: i32) {
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = c.wait();
    GROUPS.lock().unwrap().retain(|&g| g != pgid);
}

impl Peer {}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fields of /proc/PID/stat we use.
#[derive(Default)]
pub struct Stat {
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    pub pgrp: i32,
}

/// Parses /proc/PID/stat (fields after the command name).
pub fn stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    // f[0] is field 3 (state); field n is f[n - 3].
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    Some(Stat {
        pgrp: n(5) as i32,
        utime: n(14) as u64,
        stime: n(15) as u64,
        cutime: n(16) as u64,
        cstime: n(17) as u64,
    })
}

/// Every process in group `pgid`, with its stat.
fn group(pgid: i32) -> Vec<(i32, Stat)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(st) = stat(pid) {
            if st.pgrp == pgid {
                out.push((pid, st));
            }
        }
    }
    out
}

/// A `KEY: N kB` field of /proc/PID/FILE, in KiB.
fn kib_field(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's own CPU seconds (the generator, all threads).
pub fn self_cpu_secs() -> f64 {
    let st = stat(std::process::id() as i32).unwrap_or_default();
    (st.utime + st.stime) as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The hard RLIMIT_NOFILE every process here can reach (raising it needs
/// CAP_SYS_RESOURCE, which a container may not have).
pub fn nofile_hard() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_max
}

/// The most sessions one process can hold at two sockets each.
pub fn max_sessions() -> usize {
    (nofile_hard().saturating_sub(100) / 2 / 100 * 100) as usize
}

/// Default relay binary: the workspace's release build.
pub fn default_relay_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/nexor-relay")
}
