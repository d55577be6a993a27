//! Fleet-mode helpers for tests/fleet.rs (included there with `#[path]`): a real `redis-server` on a free
//! loopback port (stopped and started again on the same port), HAProxy
//! balancing round robin over N relays with the PROXY protocol, and relays
//! with a `[fleet]` table. Every process is stopped by its pid on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Relay, RelayBuilder};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on {addr}");
}

/// `redis-server` on 127.0.0.1:<port>, no persistence (or AOF with
/// `appendfsync always` when `aof`), in a temp dir.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    aof: bool,
    /// TLS only (`--tls-port`), with the test CA's leaf for 127.0.0.1.
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(aof: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("nexor-redis-")
            .tempdir()
            .unwrap();
        let mut r = RedisServer {
            port: free_port(),
            dir,
            aof,
            tls: false,
            child: None,
        };
        r.start_again();
        r
    }

    /// TLS only: `rediss://`, the certificate of tests/common/mod.rs
    /// `certs()` (the test CA's `ca.pem` is in `dir`).
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("nexor-redis-tls-")
            .tempdir()
            .unwrap();
        let c = crate::common::certs();
        std::fs::write(dir.path().join("ca.pem"), &c.ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &c.leaf_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &c.key_pem).unwrap();
        let mut r = RedisServer {
            port: free_port(),
            dir,
            aof: false,
            tls: true,
            child: None,
        };
        r.start_again();
        r
    }

    /// Starts it (again) on the same port and dir.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut cmd = Command::new("redis-server");
        if self.tls {
            let d = self.dir.path();
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(d.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(d.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--protected-mode", "yes"]);
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start redis-server"));
        wait_listening(self.addr(), "redis-server");
        // Listening is not loaded: wait for PING (an AOF is read first).
        let t = Instant::now();
        loop {
            if let Ok(mut c) = self.try_con() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "redis-server not ready"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the store vanishes (what it held is gone without AOF).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn try_con(&self) -> redis::RedisResult<redis::Connection> {
        let c = if self.tls {
            let ca = std::fs::read(self.dir.path().join("ca.pem")).unwrap();
            // Both rustls providers are compiled in (as in the relay).
            nexor_relay::tls::install_default_provider();
            redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )?
        } else {
            redis::Client::open(self.url())?
        };
        let con = c.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(con)
    }

    /// A client connection for checks.
    pub fn con(&self) -> redis::Connection {
        self.try_con().expect("connect to redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay in a fleet: `[fleet]` with this store, PROXY protocol from
/// loopback (HAProxy), TLS. `extra_fleet`: more `[fleet]` lines; `tickets`,
/// `limits`: lines for those tables.
pub fn fleet_relay(
    redis: &RedisServer,
    relay_id: &str,
    extra_fleet: &str,
    tickets: &str,
    limits: &str,
    upstreams: &[(&str, String)],
) -> Relay {
    let mut b = RelayBuilder::new(true)
        .server("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .tickets(tickets)
        .limits(limits);
    let fleet = format!(
        "[fleet]\nredis = \"{}\"\nrelay_id = \"{relay_id}\"\n{extra_fleet}\n",
        redis.url()
    );
    // The builder writes the upstream tables last: the `[fleet]` table
    // follows the last one.
    let n = upstreams.len();
    for (i, (name, body)) in upstreams.iter().enumerate() {
        let body = if i + 1 == n {
            format!("{body}\n{fleet}")
        } else {
            body.clone()
        };
        b = b.upstream(name, &body);
    }
    b.start()
}

/// HAProxy in `mode tcp`: TLS passes through, round robin over the relays,
/// PROXY v2 to each, a dead relay taken out by its health check (and a
/// connection that cannot reach one sent to the next).
pub struct FleetHaproxy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl FleetHaproxy {
    pub fn start(relays: &[SocketAddr]) -> FleetHaproxy {
        let dir = tempfile::Builder::new()
            .prefix("nexor-haproxy-fleet-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let servers: String = relays
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!(
                    "    server relay-{} {a} send-proxy-v2 check inter 300ms fall 1 rise 1\n",
                    i + 1
                )
            })
            .collect();
        let text = format!(
            "global\n    pidfile {pid}\n    maxconn 4000\n\n\
defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
    timeout client-fin 5s\n    timeout server-fin 5s\n    retries 3\n    option redispatch\n\n\
frontend consoles\n    bind 127.0.0.1:{port}\n    default_backend fleet\n\n\
backend fleet\n    balance roundrobin\n{servers}",
            pid = dir.path().join("haproxy.pid").display()
        );
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, text).unwrap();
        let mut child = Command::new(haproxy_bin())
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut g = log.lock().unwrap();
                    g.push_str(&l);
                    g.push('\n');
                }
            });
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, "haproxy");
        FleetHaproxy {
            port,
            dir,
            child,
            log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FleetHaproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("haproxy output:\n{}", self.logs());
        }
    }
}

fn haproxy_bin() -> PathBuf {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/sbin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("haproxy"))
}
