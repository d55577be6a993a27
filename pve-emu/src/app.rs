//! Configuration (command line), shared state and the one-shot backend port table
//! (ports 5900..=5999 per emulator, docs/proxmox.md §3.1, §3.3).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::stats::SharedStats;
use crate::ticket::Signer;
use crate::tls::Identity;

/// Fault injection switches (`--fault ...`).
#[derive(Default, Clone, Debug)]
pub struct Faults {
    /// Tickets minted 60 s in the past.
    pub expired_ticket: bool,
    /// Tickets bound to another authid.
    pub foreign_ticket: bool,
    /// The response's `port` differs from the listening one.
    pub wrong_port: bool,
    /// Backend gives up after 1 s instead of 10 s.
    pub late_backend: bool,
    /// Close the websocket after relaying this many bytes downstream.
    pub mid_stream_close: Option<u64>,
    /// vncproxy/termproxy answer 500.
    pub api_500: bool,
    /// vncproxy/termproxy never answer.
    pub api_hang: bool,
    /// termproxy writes this many bytes of [`crate::backend::burst_byte`]
    /// right after its `OK`, as fast as the socket takes them (a console
    /// that bursts before the browser reads).
    pub burst: Option<u64>,
}

/// Everything given on the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// PEM certificate file (else self-signed).
    pub cert: Option<String>,
    /// PEM key file.
    pub key: Option<String>,
    /// API tokens: (authid `user@realm!tokenid`, secret).
    pub tokens: Vec<(String, String)>,
    /// Delay of failed authentication.
    pub auth_delay: Duration,
    /// `--format old`: pre-2026-04 responses and tickets.
    pub old_format: bool,
    /// `port` as a JSON string.
    pub port_as_string: bool,
    /// Only this node name is served (None: any).
    pub node: Option<String>,
    /// QEMU VNC unix sockets by VMID.
    pub vnc_sockets: HashMap<u32, PathBuf>,
    /// QEMU QMP unix sockets by VMID.
    pub qmp_sockets: HashMap<u32, PathBuf>,
    /// QEMU human monitor unix sockets by VMID (termproxy backend).
    pub monitor_sockets: HashMap<u32, PathBuf>,
    /// Injected faults.
    pub faults: Faults,
    /// How long a one-shot backend waits for its websocket.
    pub backend_timeout: Duration,
}

pub const USAGE: &str = "\
usage: pve-emu [options]
  --listen ADDR              listen address (default 127.0.0.1:8006; port 0 = any)
  --cert FILE --key FILE     PEM certificate/key (default: self-signed localhost/127.0.0.1)
  --token 'USER@REALM!ID=SECRET'   accepted API token (repeatable)
  --auth-delay-ms N          delay of 401 answers (default 3000)
  --format new|old           response/ticket format (default new, see docs/proxmox.md §3.1)
  --port-as-string           `port` as a JSON string
  --node NAME                serve only this node name (default: any)
  --vnc-socket VMID=PATH     QEMU VNC unix socket (else a built-in RFB server)
  --qmp-socket VMID=PATH     QEMU QMP unix socket (set_password/expire_password)
  --monitor-socket VMID=PATH QEMU monitor unix socket (termproxy backend; else echo)
  --backend-timeout-ms N     one-shot backend accept limit (default 10000)
  --fault F                  expired-ticket | foreign-ticket | wrong-port | late-backend |
                             mid-stream-close=BYTES | api-500 | api-hang |
                             burst=BYTES (termproxy sends BYTES of a pattern after OK)
                             (repeatable)";

fn vm_path(v: &str) -> Result<(u32, PathBuf), String> {
    let (id, p) = v
        .split_once('=')
        .ok_or(format!("expected VMID=PATH, got {v}"))?;
    let id = id.parse().map_err(|_| format!("bad VMID in {v}"))?;
    Ok((id, PathBuf::from(p)))
}

impl Config {
    /// Parses the command line (without argv\[0\]).
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let mut c = Config {
            listen: "127.0.0.1:8006".parse().map_err(|_| "addr")?,
            cert: None,
            key: None,
            tokens: Vec::new(),
            auth_delay: Duration::from_millis(3000),
            old_format: false,
            port_as_string: false,
            node: None,
            vnc_sockets: HashMap::new(),
            qmp_sockets: HashMap::new(),
            monitor_sockets: HashMap::new(),
            faults: Faults::default(),
            backend_timeout: Duration::from_secs(10),
        };
        let mut explicit_timeout = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut val = || -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().ok_or(format!("{flag} needs a value")),
                }
            };
            match flag {
                "--help" | "-h" => return Err(USAGE.to_string()),
                "--listen" => c.listen = val()?.parse().map_err(|e| format!("--listen: {e}"))?,
                "--cert" => c.cert = Some(val()?),
                "--key" => c.key = Some(val()?),
                "--token" => {
                    let v = val()?;
                    let (id, secret) = v
                        .rsplit_once('=')
                        .ok_or("--token wants USER@REALM!TOKENID=SECRET")?;
                    if !id.contains('@') || !id.contains('!') {
                        return Err(format!("--token: bad token id {id}"));
                    }
                    c.tokens.push((id.to_string(), secret.to_string()));
                }
                "--auth-delay-ms" => {
                    c.auth_delay = Duration::from_millis(
                        val()?.parse().map_err(|_| "--auth-delay-ms: number")?,
                    )
                }
                "--format" => {
                    c.old_format = match val()?.as_str() {
                        "new" => false,
                        "old" => true,
                        o => return Err(format!("--format new|old, got {o}")),
                    }
                }
                "--port-as-string" => c.port_as_string = true,
                "--node" => c.node = Some(val()?),
                "--vnc-socket" => {
                    let (id, p) = vm_path(&val()?)?;
                    c.vnc_sockets.insert(id, p);
                }
                "--qmp-socket" => {
                    let (id, p) = vm_path(&val()?)?;
                    c.qmp_sockets.insert(id, p);
                }
                "--monitor-socket" => {
                    let (id, p) = vm_path(&val()?)?;
                    c.monitor_sockets.insert(id, p);
                }
                "--backend-timeout-ms" => {
                    explicit_timeout = true;
                    c.backend_timeout = Duration::from_millis(
                        val()?.parse().map_err(|_| "--backend-timeout-ms: number")?,
                    )
                }
                "--fault" => {
                    let v = val()?;
                    let f = &mut c.faults;
                    match v.split_once('=') {
                        Some(("mid-stream-close", n)) => {
                            f.mid_stream_close =
                                Some(n.parse().map_err(|_| "mid-stream-close=BYTES")?)
                        }
                        Some(("burst", n)) => f.burst = Some(n.parse().map_err(|_| "burst=BYTES")?),
                        _ => match v.as_str() {
                            "expired-ticket" => f.expired_ticket = true,
                            "foreign-ticket" => f.foreign_ticket = true,
                            "wrong-port" => f.wrong_port = true,
                            "late-backend" => f.late_backend = true,
                            "api-500" => f.api_500 = true,
                            "api-hang" => f.api_hang = true,
                            o => return Err(format!("unknown fault {o}")),
                        },
                    }
                }
                o => return Err(format!("unknown option {o}\n{USAGE}")),
            }
        }
        if c.faults.late_backend && !explicit_timeout {
            c.backend_timeout = Duration::from_secs(1);
        }
        Ok(c)
    }
}

/// Which console a one-shot port serves.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotKind {
    /// RFB (qemu or lxc vncproxy).
    Vnc,
    /// termproxy.
    Term,
}

/// A one-shot backend port created by a vncproxy/termproxy POST.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Unique id (to tell a re-used port apart at expiry).
    pub id: u64,
    /// The listening port.
    pub port: u16,
    /// The port the ticket is bound to (differs under `--fault wrong-port`).
    pub ticket_port: u16,
    /// VNC or terminal.
    pub kind: SlotKind,
    /// `lxc` (else qemu).
    pub lxc: bool,
    /// VMID.
    pub vmid: u32,
    /// The VNC password set over QMP (or checked by the built-in RFB server).
    pub vnc_password: String,
    /// `websocket=1` was given (else the real backend speaks TLS: unusable).
    pub websocket: bool,
    /// Claimed by a websocket already.
    pub active: bool,
}

/// Shared emulator state.
pub struct App {
    /// Configuration.
    pub cfg: Config,
    /// TLS identity.
    pub identity: Identity,
    /// Ticket signer.
    pub signer: Signer,
    /// Counters.
    pub stats: SharedStats,
    slots: Mutex<(u64, HashMap<u16, Slot>)>,
    /// Serialises QMP conversations.
    pub qmp_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl App {
    /// New state.
    pub fn new(cfg: Config, identity: Identity, signer: Signer) -> App {
        App {
            cfg,
            identity,
            signer,
            stats: SharedStats::new(),
            slots: Mutex::new((0, HashMap::new())),
            qmp_lock: Mutex::new(()),
        }
    }

    /// Allocates the lowest free port in 5900..=5999 and arms its accept timer.
    /// `make` fills the slot given (id, port). None when all 100 ports are taken.
    pub fn allocate(self: &Arc<Self>, make: impl FnOnce(u64, u16) -> Slot) -> Option<Slot> {
        let slot = {
            let mut g = lock(&self.slots);
            let port = (5900u16..=5999).find(|p| !g.1.contains_key(p))?;
            g.0 += 1;
            let slot = make(g.0, port);
            g.1.insert(port, slot.clone());
            slot
        };
        let app = Arc::clone(self);
        let (id, port, timeout) = (slot.id, slot.port, self.cfg.backend_timeout);
        thread::spawn(move || {
            thread::sleep(timeout);
            let mut g = lock(&app.slots);
            if g.1.get(&port).is_some_and(|s| s.id == id && !s.active) {
                g.1.remove(&port);
                drop(g);
                // what the task log would say: "connection timed out"
                app.stats.add("backends_expired", 1);
            }
        });
        Some(slot)
    }

    /// Claims a pending port for a websocket (the TCP connect of pveproxy).
    pub fn claim(&self, port: u16) -> Option<Slot> {
        let mut g = lock(&self.slots);
        let s = g.1.get_mut(&port)?;
        if s.active {
            return None;
        }
        s.active = true;
        Some(s.clone())
    }

    /// Frees a port after its session ended.
    pub fn release(&self, slot: &Slot) {
        let mut g = lock(&self.slots);
        if g.1.get(&slot.port).is_some_and(|s| s.id == slot.id) {
            g.1.remove(&slot.port);
        }
    }
}
