//! Configuration: a serde mirror of the TOML (`deny_unknown_fields`), then a
//! typed, validated [`Config`] whose errors name the key at fault.
//!
//! [`Config::from_toml`] is pure apart from reading the files the TOML names
//! (`secret_file`, `ca_file`, certificates are read by `tls`); relative paths
//! are relative to the config file's directory. Durations are strings with a
//! unit (`"250ms"`, `"30s"`, `"5m"`, `"8h"`, `"1d"`); sizes are bytes or
//! strings with a unit (`"64KiB"`, `"1MiB"`). `config/relay.toml` documents
//! every key and its default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ticket::{Key, KeyRing, Policy};

/// A config error: the dotted key at fault (or "" for the whole file) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: one_line(&key.into()),
            message: one_line(&message.into()),
        }
    }
}

/// Escapes control characters: an error (which may quote a value from the
/// file) is always one line, in a terminal and in a log.
fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// ---- the serde mirror -------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    audit: RawAudit,
    tickets: Option<RawTickets>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    /// Parsed by src/record/config.rs.
    recording: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    workers: Option<usize>,
    path: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ping_interval: Option<String>,
    pong_timeout: Option<String>,
    allowed_origins: Option<Vec<String>>,
    require_origin: Option<bool>,
    proxy_protocol: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    client_ip_header: Option<String>,
    drain_timeout: Option<String>,
    console_page: Option<bool>,
    console_assets: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    host: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    output: Option<String>,
    refused_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTickets {
    keys: Vec<RawKey>,
    max_ttl: Option<String>,
    leeway: Option<String>,
    audience: Option<String>,
    reconnect_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame: Option<Size>,
    handshake_timeout: Option<String>,
    max_head: Option<Size>,
    max_headers: Option<usize>,
    max_sessions: Option<usize>,
    max_sessions_per_vm: Option<usize>,
    max_sessions_per_user: Option<usize>,
    on_vm_limit: Option<String>,
    max_session: Option<String>,
    idle_timeout: Option<String>,
    handshakes_per_ip: Option<u32>,
    max_handshakes: Option<usize>,
    max_handshakes_per_ip: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    kind: String,
    url: Option<String>,
    addr: Option<String>,
    ca_file: Option<PathBuf>,
    fingerprint: Option<String>,
    connect_timeout: Option<String>,
    api: Option<String>,
    token_id: Option<String>,
    token_secret: Option<String>,
    token_secret_file: Option<PathBuf>,
    nodes: Option<BTreeMap<String, String>>,
    force_shared: Option<bool>,
    /// "ticket" (default) or "always": src/record/config.rs.
    record: Option<String>,
}

// ---- the validated config ---------------------------------------------------

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub audit: AuditConfig,
    pub tickets: Tickets,
    pub limits: Limits,
    pub upstreams: BTreeMap<String, Upstream>,
    /// `[recording]` and the upstreams' `record` (docs/recording.md).
    pub recording: crate::record::config::Recording,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// Worker threads, one runtime and one `SO_REUSEPORT` listener each.
    pub workers: usize,
    /// The console endpoint's path.
    pub path: String,
    pub tls: Option<TlsFiles>,
    /// Keepalive pings on both legs; `None` turns them off ("0s").
    pub ping_interval: Option<Duration>,
    /// A pinged leg that sends nothing for this long is dead (its session
    /// ends at once); `None` turns it off ("0"). Default twice ping_interval.
    pub pong_timeout: Option<Duration>,
    pub origins: OriginPolicy,
    /// Expect a PROXY protocol v1/v2 header on every connection.
    pub proxy_protocol: bool,
    /// Peers whose PROXY header and `client_ip_header` are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The one header that names the client, read only from a trusted
    /// proxy; `None` when `trusted_proxies` is empty.
    pub client_ip_header: Option<ClientIpHeader>,
    /// On SIGTERM, how long live sessions may continue before 1001.
    pub drain_timeout: Duration,
    /// Serve the console page at `/` (demo and first tries).
    pub console_page: bool,
    /// Local copies of noVNC and xterm.js for the page (`novnc/`, `xterm/`).
    pub console_assets: Option<PathBuf>,
}

/// `[admin]`: the loopback listener for metrics, health and revoke.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `None` when `listen = "off"`.
    pub listen: Option<SocketAddr>,
    /// Another `Host` the admin listener answers to (a name for a
    /// non-loopback listener), besides its own address.
    pub host: Option<String>,
    /// Bearer token required on every admin request, if set.
    pub token: Option<Secret>,
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub output: crate::audit::Output,
    /// Refusal lines per second at most (0 = no limit).
    pub refused_per_second: u32,
}

/// Which `Origin`s may open a console.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Exact origins (`scheme://host[:port]`, lowercase). Empty: the
    /// Origin's host must equal the Host header's.
    pub allowed: Vec<String>,
    /// Refuse requests without an Origin (non-browser clients).
    pub require: bool,
}

/// Certificate chain and private key, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[tickets]`.
#[derive(Debug)]
pub struct Tickets {
    pub keys: KeyRing,
    pub policy: Policy,
    /// How long after a session drops its client may reconnect with the
    /// same ticket (noVNC's auto-reconnect), even past `exp`.
    pub reconnect_grace: Duration,
}

/// `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame payload accepted from either leg (1009 beyond).
    pub max_frame: u64,
    /// From accept to a complete request head (TLS included).
    pub handshake_timeout: Duration,
    pub max_head: usize,
    pub max_headers: usize,
    /// Live sessions on this relay (all cores); `None` = no limit.
    pub max_sessions: Option<usize>,
    /// Live sessions per VM (`upstream/node/vmid`).
    pub max_sessions_per_vm: Option<usize>,
    pub max_sessions_per_user: Option<usize>,
    pub on_vm_limit: VmLimit,
    /// Cap on a session's lifetime (and the lifetime of tickets without
    /// `max_session`); then close 4002.
    pub max_session: Duration,
    /// No data frames either way for this long: close 4003. `None` = off.
    pub idle_timeout: Option<Duration>,
    /// Handshakes per client IP per second (429 beyond); `None` = off.
    pub handshakes_per_ip: Option<u32>,
    /// Handshakes in progress at once (all cores); beyond, connections are
    /// dropped before TLS.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one client IP (the TCP peer, or
    /// the PROXY source once read); beyond, dropped before TLS.
    pub max_handshakes_per_ip: usize,
}

/// `[server] client_ip_header`: which header a trusted proxy names the
/// client in. Only that one is read; the others are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`: the rightmost hop that is not a trusted proxy.
    XForwardedFor,
    /// `Forwarded: for=…` (RFC 7239): the rightmost hop not trusted.
    Forwarded,
    /// `CF-Connecting-IP`: one address (Cloudflare).
    CfConnectingIp,
    /// `X-Real-IP`: one address (nginx `proxy_set_header X-Real-IP`).
    XRealIp,
}

impl ClientIpHeader {
    /// The config value, which is also the header name (lowercase).
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
            ClientIpHeader::CfConnectingIp => "cf-connecting-ip",
            ClientIpHeader::XRealIp => "x-real-ip",
        }
    }

    pub fn parse(s: &str) -> Option<ClientIpHeader> {
        [
            ClientIpHeader::XForwardedFor,
            ClientIpHeader::Forwarded,
            ClientIpHeader::CfConnectingIp,
            ClientIpHeader::XRealIp,
        ]
        .into_iter()
        .find(|h| h.name() == s.trim().to_ascii_lowercase())
    }
}

/// What a new session does when its VM is at `max_sessions_per_vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmLimit {
    /// Refuse it with 429.
    Reject,
    /// Admit it and close the VM's oldest session with 4001.
    Replace,
}

/// An IP network, `10.0.0.0/8` or `::1/128` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP network"))?;
        // `::ffff:10.0.0.0/104` means 10.0.0.0/8: clients are compared as IPv4.
        let (addr, mapped) = match addr {
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (std::net::IpAddr::V4(v4), true),
                None => (addr, false),
            },
            v4 => (v4, false),
        };
        let max = if addr.is_ipv4() && !mapped { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("`{s}`: bad prefix length"))?,
            None => max,
        };
        let prefix = match mapped {
            true if prefix < 96 => {
                return Err(format!(
                    "`{s}`: an IPv4-mapped network needs a prefix of at least 96"
                ))
            }
            true => prefix - 96,
            false => prefix,
        };
        Ok(Cidr { addr, prefix })
    }

    /// True if `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `[upstreams.<name>]`.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A WebSocket console endpoint; frames pass through unchanged.
    Ws {
        url: WsUrl,
        trust: Trust,
        connect_timeout: Duration,
    },
    /// A raw TCP console bridged WebSocket ↔ TCP.
    Tcp {
        addr: SocketAddr,
        connect_timeout: Duration,
    },
    /// The built-in test-pattern screen and echo terminal.
    Demo,
    /// A Proxmox VE node or cluster (docs/proxmox.md).
    Proxmox(Box<Proxmox>),
}

/// A secret string (an API token): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `kind = "proxmox"`.
#[derive(Debug, Clone)]
pub struct Proxmox {
    /// The API entry point (`https://host:8006`).
    pub api: WsUrl,
    /// Nodes reached directly, by node name; others go through `api`.
    pub nodes: BTreeMap<String, WsUrl>,
    /// `user@realm!tokenid`.
    pub token_id: String,
    pub token_secret: Secret,
    pub trust: Trust,
    /// API call, websocket and console login, each (then 504).
    pub connect_timeout: Duration,
    /// Force the browser's RFB shared flag to 1 so one viewer cannot
    /// disconnect the others (docs/proxmox.md §6.4).
    pub force_shared: bool,
}

impl Proxmox {
    /// Where a console of `node` is opened: the POST and its websocket go
    /// to the same host (docs/proxmox.md §2.3).
    pub fn endpoint(&self, node: &str) -> &WsUrl {
        self.nodes.get(node).unwrap_or(&self.api)
    }
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Origin-form request target, `/` at least.
    pub path: String,
    /// The address dialled, resolved when the config loads.
    pub addr: SocketAddr,
}

impl WsUrl {
    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// How a `wss://` upstream's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The Mozilla root set (webpki-roots), with hostname check.
    SystemRoots,
    /// Only roots from this PEM file, with hostname check.
    CaFile(PathBuf),
    /// The leaf certificate's SHA-256 must be this (no chain, no hostname).
    Fingerprint([u8; 32]),
}

// ---- defaults ---------------------------------------------------------------

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_PATH: &str = "/console";
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(120);
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_FRAME: u64 = 1 << 20;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEAD: usize = 8 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 32;
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(8 * 3600);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_MAX_HANDSHAKES: usize = 4096;
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 64;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_REFUSED_PER_SECOND: u32 = 50;

// ---- parsing helpers --------------------------------------------------------

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"8h"`, `"1d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. \"30s\", \"5m\", \"8h\")"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "" => return Err(format!("`{s}` needs a unit (ms, s, m, h, d)")),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

fn parse_size(s: &Size) -> Result<u64, String> {
    let text = match s {
        Size::Bytes(n) => return Ok(*n),
        Size::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (use bytes or e.g. \"64KiB\", \"1MiB\")"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn duration_or(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        Some(s) => parse_duration(s).map_err(|m| ConfigError::new(key, m)),
        None => Ok(default),
    }
}

/// Parses a SHA-256 fingerprint: 64 hex digits, `:` separators allowed, any case.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("expected the SHA-256 of the certificate: 64 hex digits, `:` allowed".into());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Parses a `ws://` / `wss://` URL and resolves its host.
pub fn parse_ws_url(s: &str) -> Result<WsUrl, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err("must start with ws:// or wss://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the path must be printable, without a fragment".into());
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed `[` in host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port `{p}`"))?,
            None if after.is_empty() => default_port,
            None => return Err("junk after `]`".into()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("bad port `{p}`"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let addr = resolve(&host, port)?;
    Ok(WsUrl {
        tls,
        host,
        port,
        path: path.to_string(),
        addr,
    })
}

/// Resolves once, at load time: a name that does not resolve is a config
/// error, so no worker ever blocks on DNS while serving consoles.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

fn parse_host_port(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (h, p) = s.rsplit_once(':').ok_or("expected host:port")?;
    let port = p.parse().map_err(|_| format!("bad port `{p}`"))?;
    resolve(h.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Keeps secrets out of a parser message: serde quotes the value it could
/// not use ("invalid type: string \"…\"") — blanked — and names keys in
/// backticks, cut to [`MAX_SHOWN_KEY`] characters (a secret pasted where a
/// key name belongs must not be shown either).
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let (mut in_value, mut in_key, mut key_len) = (false, false, 0);
    for c in msg.chars() {
        match c {
            '"' if !in_key => {
                out.push_str(if in_value { "…\"" } else { "\"" });
                in_value = !in_value;
            }
            '`' if !in_value => {
                if in_key && key_len > MAX_SHOWN_KEY {
                    out.push('…');
                }
                out.push('`');
                in_key = !in_key;
                key_len = 0;
            }
            _ if in_value => {}
            _ if in_key => {
                key_len += 1;
                if key_len <= MAX_SHOWN_KEY {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Characters of an unknown key's name shown in an error.
const MAX_SHOWN_KEY: usize = 24;

/// Every key name the config has: shown in full in parser messages.
const KNOWN_KEYS: &[&str] = &[
    "server",
    "admin",
    "audit",
    "tickets",
    "limits",
    "upstreams",
    "kind",
    "addr",
    "allowed_origins",
    "api",
    "audience",
    "ca_file",
    "client_ip_header",
    "connect_timeout",
    "console_assets",
    "console_page",
    "drain_timeout",
    "fingerprint",
    "force_shared",
    "handshake_timeout",
    "handshakes_per_ip",
    "host",
    "id",
    "idle_timeout",
    "keys",
    "leeway",
    "listen",
    "max_frame",
    "max_handshakes",
    "max_handshakes_per_ip",
    "max_head",
    "max_headers",
    "max_session",
    "max_sessions",
    "max_sessions_per_user",
    "max_sessions_per_vm",
    "max_ttl",
    "nodes",
    "on_vm_limit",
    "output",
    "path",
    "ping_interval",
    "pong_timeout",
    "proxy_protocol",
    "reconnect_grace",
    "refused_per_second",
    "require_origin",
    "secret",
    "secret_file",
    "tls_cert",
    "tls_key",
    "token",
    "token_file",
    "token_id",
    "token_secret",
    "token_secret_file",
    "trusted_proxies",
    "url",
    "workers",
];

/// Longest run of other characters a parser message may show whole.
const MAX_SHOWN_RUN: usize = 15;

/// Cuts every run of non-space characters longer than [`MAX_SHOWN_RUN`]
/// that is not a known key name (punctuation around it aside): whatever a
/// parser message quotes — an unknown key name with backticks inside, say —
/// no secret (16 characters of an admin token, more of the others) comes
/// out whole, while the expected key names stay readable.
fn cut_long_words(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for (n, word) in msg.split(' ').enumerate() {
        if n > 0 {
            out.push(' ');
        }
        let bare = word.trim_matches(|c: char| "`'\",.;:()[]".contains(c));
        if word.chars().count() <= MAX_SHOWN_RUN || KNOWN_KEYS.contains(&bare) {
            out.push_str(word);
        } else {
            out.extend(word.chars().take(MAX_SHOWN_RUN - 3));
            out.push('…');
        }
    }
    out
}

/// `ca_file` or `fingerprint` (not both), or the system roots.
fn trust_of(
    ca_file: Option<PathBuf>,
    fingerprint: Option<String>,
    base: &Path,
    fingerprint_key: &str,
) -> Result<Trust, ConfigError> {
    Ok(match (ca_file, fingerprint) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                fingerprint_key,
                "use either ca_file or fingerprint",
            ))
        }
        (Some(f), None) => Trust::CaFile(rel(base, &f)),
        (None, Some(fp)) => Trust::Fingerprint(
            parse_fingerprint(&fp).map_err(|m| ConfigError::new(fingerprint_key, m))?,
        ),
        (None, None) => Trust::SystemRoots,
    })
}

/// Reads a secret from a file (trimmed); the error names the key, not the content.
fn secret_file(key: &str, base: &Path, f: &Path) -> Result<String, ConfigError> {
    let p = rel(base, f);
    std::fs::read_to_string(&p)
        .map(|t| t.trim().to_string())
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", p.display())))
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

// ---- validation -------------------------------------------------------------

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base)
    }

    /// Validates TOML text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // Not toml's Display: it quotes the source line, which may hold
            // a secret. The message names the key; the span gives the line.
            let at = match e.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                    format!("line {line}, column {col}: ")
                }
                None => String::new(),
            };
            ConfigError::new(
                "",
                format!(
                    "{at}{}",
                    cut_long_words(&redact_quoted(e.message().replace('\n', " ").trim()))
                ),
            )
        })?;
        let server = Self::server(raw.server, base)?;
        let admin = Self::admin(raw.admin, base)?;
        let audit = AuditConfig {
            output: crate::audit::Output::parse(
                raw.audit.output.as_deref().unwrap_or("stdout"),
                base,
            ),
            refused_per_second: raw
                .audit
                .refused_per_second
                .unwrap_or(DEFAULT_REFUSED_PER_SECOND),
        };
        let tickets = Self::tickets(raw.tickets, base)?;
        let limits = Self::limits(raw.limits)?;
        let modes: Vec<(String, Option<String>)> = (raw.upstreams.iter())
            .map(|(n, u)| (n.clone(), u.record.clone()))
            .collect();
        let recording = crate::record::config::parse(raw.recording.as_ref(), &modes, base)
            .map_err(|e| ConfigError::new(e.key, e.message))?;
        let mut upstreams = BTreeMap::new();
        for (name, u) in raw.upstreams {
            let up = Self::upstream(&name, u, base)?;
            upstreams.insert(name, up);
        }
        if upstreams.is_empty() {
            return Err(ConfigError::new(
                "upstreams",
                "at least one [upstreams.<name>] is required",
            ));
        }
        Ok(Config {
            server,
            admin,
            audit,
            tickets,
            limits,
            upstreams,
            recording,
        })
    }

    fn server(raw: RawServer, base: &Path) -> Result<Server, ConfigError> {
        let listen_s = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s.parse().map_err(|_| {
            ConfigError::new("server.listen", format!("`{listen_s}` is not an ip:port"))
        })?;
        let workers = match raw.workers {
            Some(0) | None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            Some(n) if n > 1024 => return Err(ConfigError::new("server.workers", "at most 1024")),
            Some(n) => n,
        };
        let path = raw.path.unwrap_or_else(|| DEFAULT_PATH.to_string());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(ConfigError::new(
                "server.path",
                "must start with `/` and hold no `?`, `#` or space",
            ));
        }
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(c), Some(k)) => Some(TlsFiles {
                cert: rel(base, &c),
                key: rel(base, &k),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "server.tls_key",
                    "required with server.tls_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "server.tls_cert",
                    "required with server.tls_key",
                ))
            }
        };
        let ping = duration_or(
            "server.ping_interval",
            &raw.ping_interval,
            DEFAULT_PING_INTERVAL,
        )?;
        let ping_interval = if ping.is_zero() {
            None
        } else if ping < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "server.ping_interval",
                "at least 1s (or \"0s\" for off)",
            ));
        } else {
            Some(ping)
        };
        let pong_timeout = match raw.pong_timeout.as_deref().map(str::trim) {
            None => ping_interval.map(|p| p * 2),
            Some("0") => None,
            Some(t) => {
                let d =
                    parse_duration(t).map_err(|m| ConfigError::new("server.pong_timeout", m))?;
                (!d.is_zero()).then_some(d)
            }
        };
        let mut allowed = Vec::new();
        for (i, o) in raw
            .allowed_origins
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if !(o.starts_with("https://") || o.starts_with("http://"))
                || o.matches('/').count() != 2
            {
                return Err(ConfigError::new(
                    format!("server.allowed_origins[{i}]"),
                    "an origin is scheme://host[:port], e.g. \"https://portal.example.com\"",
                ));
            }
            allowed.push(o);
        }
        let mut trusted_proxies = Vec::new();
        for (i, c) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            trusted_proxies.push(
                Cidr::parse(c)
                    .map_err(|m| ConfigError::new(format!("server.trusted_proxies[{i}]"), m))?,
            );
        }
        let client_ip_header = match (raw.client_ip_header.as_deref(), trusted_proxies.is_empty()) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    "server.client_ip_header",
                    "needs server.trusted_proxies: the header is read only from those peers",
                ))
            }
            (None, true) => None,
            (None, false) => Some(ClientIpHeader::XForwardedFor),
            (Some(h), false) => Some(ClientIpHeader::parse(h).ok_or_else(|| {
                ConfigError::new(
                    "server.client_ip_header",
                    format!(
                        "`{h}`: \"x-forwarded-for\", \"forwarded\", \"cf-connecting-ip\" or \"x-real-ip\""
                    ),
                )
            })?),
        };
        let proxy_protocol = raw.proxy_protocol.unwrap_or(false);
        if proxy_protocol && trusted_proxies.is_empty() {
            return Err(ConfigError::new(
                "server.trusted_proxies",
                "required with proxy_protocol = true: a PROXY header is believed only from these peers (the balancers)",
            ));
        }
        Ok(Server {
            listen,
            workers,
            path,
            tls,
            ping_interval,
            pong_timeout,
            origins: OriginPolicy {
                allowed,
                require: raw.require_origin.unwrap_or(false),
            },
            proxy_protocol,
            trusted_proxies,
            client_ip_header,
            drain_timeout: duration_or(
                "server.drain_timeout",
                &raw.drain_timeout,
                DEFAULT_DRAIN_TIMEOUT,
            )?,
            console_page: raw.console_page.unwrap_or(false),
            console_assets: raw.console_assets.map(|p| rel(base, &p)),
        })
    }

    fn admin(raw: RawAdmin, base: &Path) -> Result<Admin, ConfigError> {
        let listen = match raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
            "off" => None,
            l => Some(l.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "admin.listen",
                    format!("`{l}` is not an ip:port (or \"off\")"),
                )
            })?),
        };
        let token = match (raw.token, raw.token_file) {
            (Some(t), None) => Some(t),
            (None, Some(f)) => Some(secret_file("admin.token_file", base, &f)?),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "admin.token",
                    "use either token or token_file",
                ))
            }
        };
        if token
            .as_ref()
            .is_some_and(|t| t.len() < 16 || t.chars().any(|c| c.is_whitespace()))
        {
            return Err(ConfigError::new(
                "admin.token",
                "at least 16 characters, no spaces",
            ));
        }
        let host = match raw.host {
            Some(h)
                if h.is_empty()
                    || h.len() > 255
                    || !h
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c)) =>
            {
                return Err(ConfigError::new(
                    "admin.host",
                    "a host name or host:port, as clients send it in `Host`",
                ))
            }
            h => h.map(|h| h.to_ascii_lowercase()),
        };
        Ok(Admin {
            listen,
            host,
            token: token.map(Secret),
        })
    }

    fn tickets(raw: Option<RawTickets>, base: &Path) -> Result<Tickets, ConfigError> {
        let raw = raw.ok_or_else(|| {
            ConfigError::new("tickets", "the [tickets] section with keys is required")
        })?;
        if raw.keys.is_empty() {
            return Err(ConfigError::new(
                "tickets.keys",
                "at least one key is required; make a secret with `openssl rand -base64 32`",
            ));
        }
        let mut keys = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            let at = format!("tickets.keys[{i}]");
            // A `kid` travels in every ticket header: keep it a plain token.
            let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if k.id.is_empty() || k.id.len() > 64 || !k.id.chars().all(plain) {
                return Err(ConfigError::new(
                    format!("{at}.id"),
                    "1 to 64 characters from A-Z a-z 0-9 . _ -",
                ));
            }
            let secret = match (k.secret, k.secret_file) {
                (Some(s), None) => s,
                (None, Some(f)) => secret_file(&format!("{at}.secret_file"), base, &f)?,
                _ => {
                    return Err(ConfigError::new(
                        &at,
                        "exactly one of `secret` or `secret_file`",
                    ))
                }
            };
            let key = Key::from_secret_b64(&k.id, &secret).map_err(|e| {
                let field = if e == crate::ticket::KeyError::EmptyId {
                    "id"
                } else {
                    "secret"
                };
                ConfigError::new(format!("{at}.{field}"), e.to_string())
            })?;
            if key.is_well_known() {
                return Err(ConfigError::new(
                    format!("{at}.secret"),
                    format!(
                        "key `{}` is a published sample (all one byte, a counting run, or an example from these docs): anybody could sign tickets with it; make one with `openssl rand -base64 32`",
                        k.id
                    ),
                ));
            }
            if keys.iter().any(|o: &Key| o.id() == key.id()) {
                return Err(ConfigError::new(
                    format!("{at}.id"),
                    format!("duplicate key id `{}`", k.id),
                ));
            }
            keys.push(key);
        }
        let max_ttl = duration_or("tickets.max_ttl", &raw.max_ttl, DEFAULT_MAX_TTL)?;
        if max_ttl.is_zero() {
            return Err(ConfigError::new("tickets.max_ttl", "must be above zero"));
        }
        let leeway = duration_or("tickets.leeway", &raw.leeway, DEFAULT_LEEWAY)?;
        let audience = match raw.audience {
            Some(a) if a.trim().is_empty() => {
                return Err(ConfigError::new("tickets.audience", "must not be empty"))
            }
            a => a,
        };
        let reconnect_grace = duration_or(
            "tickets.reconnect_grace",
            &raw.reconnect_grace,
            DEFAULT_RECONNECT_GRACE,
        )?;
        Ok(Tickets {
            keys: KeyRing::new(keys),
            policy: Policy {
                max_ttl: max_ttl.as_secs(),
                leeway: leeway.as_secs(),
                audience,
            },
            reconnect_grace,
        })
    }

    fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
        let max_frame = match &raw.max_frame {
            Some(s) => parse_size(s).map_err(|m| ConfigError::new("limits.max_frame", m))?,
            None => DEFAULT_MAX_FRAME,
        };
        if !(125..=(1 << 30)).contains(&max_frame) {
            return Err(ConfigError::new(
                "limits.max_frame",
                "between 125 bytes and 1GiB",
            ));
        }
        let max_head = match &raw.max_head {
            Some(s) => parse_size(s).map_err(|m| ConfigError::new("limits.max_head", m))? as usize,
            None => DEFAULT_MAX_HEAD,
        };
        if !(1024..=(64 << 10)).contains(&max_head) {
            return Err(ConfigError::new(
                "limits.max_head",
                "between 1KiB and 64KiB",
            ));
        }
        let max_headers = raw.max_headers.unwrap_or(DEFAULT_MAX_HEADERS);
        if !(8..=128).contains(&max_headers) {
            return Err(ConfigError::new("limits.max_headers", "between 8 and 128"));
        }
        let handshake_timeout = duration_or(
            "limits.handshake_timeout",
            &raw.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        if handshake_timeout.is_zero() {
            return Err(ConfigError::new(
                "limits.handshake_timeout",
                "must be above zero",
            ));
        }
        let nonzero = |v: Option<usize>| v.filter(|&n| n > 0);
        let on_vm_limit = match raw.on_vm_limit.as_deref() {
            None | Some("reject") => VmLimit::Reject,
            Some("replace") => VmLimit::Replace,
            Some(o) => {
                return Err(ConfigError::new(
                    "limits.on_vm_limit",
                    format!("`{o}`: \"reject\" or \"replace\""),
                ))
            }
        };
        let max_session = duration_or("limits.max_session", &raw.max_session, DEFAULT_MAX_SESSION)?;
        if max_session.is_zero() {
            return Err(ConfigError::new("limits.max_session", "must be above zero"));
        }
        let idle = duration_or(
            "limits.idle_timeout",
            &raw.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        )?;
        Ok(Limits {
            max_frame,
            handshake_timeout,
            max_head,
            max_headers,
            max_sessions: nonzero(raw.max_sessions),
            max_sessions_per_vm: nonzero(raw.max_sessions_per_vm),
            max_sessions_per_user: nonzero(raw.max_sessions_per_user),
            on_vm_limit,
            max_session,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            handshakes_per_ip: raw.handshakes_per_ip.filter(|&n| n > 0),
            max_handshakes: raw
                .max_handshakes
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_HANDSHAKES),
            max_handshakes_per_ip: raw
                .max_handshakes_per_ip
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_HANDSHAKES_PER_IP),
        })
    }

    fn upstream(name: &str, u: RawUpstream, base: &Path) -> Result<Upstream, ConfigError> {
        let at = format!("upstreams.{name}");
        if name.is_empty() || name.len() > 128 {
            return Err(ConfigError::new(&at, "names are 1 to 128 characters"));
        }
        let key = |k: &str| format!("{at}.{k}");
        let not_for = |k: &str, set: bool| {
            if set {
                Err(ConfigError::new(
                    key(k),
                    format!("not valid for kind \"{}\"", u.kind),
                ))
            } else {
                Ok(())
            }
        };
        let connect_timeout = duration_or(
            &key("connect_timeout"),
            &u.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        match u.kind.as_str() {
            "ws" | "tcp" | "demo"
                if u.api.is_some()
                    || u.token_id.is_some()
                    || u.token_secret.is_some()
                    || u.token_secret_file.is_some()
                    || u.nodes.is_some()
                    || u.force_shared.is_some() =>
            {
                let k = [
                    ("api", u.api.is_some()),
                    ("token_id", u.token_id.is_some()),
                    ("token_secret", u.token_secret.is_some()),
                    ("token_secret_file", u.token_secret_file.is_some()),
                    ("nodes", u.nodes.is_some()),
                    ("force_shared", u.force_shared.is_some()),
                ]
                .into_iter()
                .find(|(_, set)| *set)
                .map_or("api", |(k, _)| k);
                Err(ConfigError::new(
                    key(k),
                    format!("not valid for kind \"{}\"", u.kind),
                ))
            }
            "ws" => {
                not_for("addr", u.addr.is_some())?;
                let s = u
                    .url
                    .as_deref()
                    .ok_or_else(|| ConfigError::new(key("url"), "required for kind \"ws\""))?;
                let url = parse_ws_url(s).map_err(|m| ConfigError::new(key("url"), m))?;
                let trust = trust_of(u.ca_file, u.fingerprint, base, &key("fingerprint"))?;
                if !url.tls && trust != Trust::SystemRoots {
                    return Err(ConfigError::new(
                        key("url"),
                        "ca_file/fingerprint need a wss:// URL",
                    ));
                }
                Ok(Upstream::Ws {
                    url,
                    trust,
                    connect_timeout,
                })
            }
            "tcp" => {
                not_for("url", u.url.is_some())?;
                not_for("ca_file", u.ca_file.is_some())?;
                not_for("fingerprint", u.fingerprint.is_some())?;
                let s = u
                    .addr
                    .as_deref()
                    .ok_or_else(|| ConfigError::new(key("addr"), "required for kind \"tcp\""))?;
                let addr = parse_host_port(s).map_err(|m| ConfigError::new(key("addr"), m))?;
                Ok(Upstream::Tcp {
                    addr,
                    connect_timeout,
                })
            }
            "demo" => {
                not_for("url", u.url.is_some())?;
                not_for("addr", u.addr.is_some())?;
                not_for("ca_file", u.ca_file.is_some())?;
                not_for("fingerprint", u.fingerprint.is_some())?;
                not_for("connect_timeout", u.connect_timeout.is_some())?;
                Ok(Upstream::Demo)
            }
            "proxmox" => {
                not_for("url", u.url.is_some())?;
                not_for("addr", u.addr.is_some())?;
                let api_url = |k: String, v: &str| -> Result<WsUrl, ConfigError> {
                    let rest = v
                        .trim()
                        .trim_end_matches('/')
                        .strip_prefix("https://")
                        .ok_or_else(|| {
                            ConfigError::new(
                                &k,
                                "an https:// URL of a node, e.g. \"https://pve1.example:8006\"",
                            )
                        })?;
                    if rest.contains('/') {
                        return Err(ConfigError::new(&k, "scheme, host and port only (no path)"));
                    }
                    // Without a port, pveproxy's 8006 (not https' 443).
                    let has_port = rest.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.ends_with('[') && p.parse::<u16>().is_ok() && !rest.ends_with(']')
                    });
                    let with_port = if has_port {
                        rest.to_string()
                    } else {
                        format!("{rest}:8006")
                    };
                    parse_ws_url(&format!("wss://{with_port}/"))
                        .map_err(|m| ConfigError::new(&k, m))
                };
                let api = api_url(
                    key("api"),
                    u.api.as_deref().ok_or_else(|| {
                        ConfigError::new(key("api"), "required for kind \"proxmox\"")
                    })?,
                )?;
                let mut nodes = BTreeMap::new();
                for (node, url) in u.nodes.unwrap_or_default() {
                    nodes.insert(node.clone(), api_url(key(&format!("nodes.{node}")), &url)?);
                }
                let token_id = u.token_id.ok_or_else(|| {
                    ConfigError::new(key("token_id"), "required for kind \"proxmox\"")
                })?;
                let valid_id = token_id
                    .split_once('@')
                    .and_then(|(user, rest)| {
                        rest.split_once('!').map(|(realm, tok)| (user, realm, tok))
                    })
                    .is_some_and(|(user, realm, tok)| {
                        !user.is_empty()
                            && !realm.is_empty()
                            && !tok.is_empty()
                            && !token_id.contains(['=', ' ', '\n', ':'])
                    });
                if !valid_id {
                    return Err(ConfigError::new(
                        key("token_id"),
                        "expected user@realm!tokenid",
                    ));
                }
                let secret = match (u.token_secret, u.token_secret_file) {
                    (Some(s), None) => s,
                    (None, Some(f)) => secret_file(&key("token_secret_file"), base, &f)?,
                    _ => {
                        return Err(ConfigError::new(
                            key("token_secret"),
                            "exactly one of token_secret or token_secret_file",
                        ))
                    }
                };
                if secret.is_empty() || secret.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ConfigError::new(
                        key("token_secret"),
                        "must be non-empty, without spaces",
                    ));
                }
                let trust = trust_of(u.ca_file, u.fingerprint, base, &key("fingerprint"))?;
                Ok(Upstream::Proxmox(Box::new(Proxmox {
                    api,
                    nodes,
                    token_id,
                    token_secret: Secret(secret),
                    trust,
                    connect_timeout,
                    force_shared: u.force_shared.unwrap_or(true),
                })))
            }
            other => Err(ConfigError::new(
                key("kind"),
                format!("unknown kind \"{other}\" (ws, tcp, demo, proxmox)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "oneXZRCfi6j3Vry/VM6mIWTg8JeXRZGu55wYzKyy2kA=";

    fn load(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n{extra}\n[upstreams.lab]\nkind = \"tcp\"\naddr = \"127.0.0.1:5901\"\n"
        );
        Config::from_toml(&text, Path::new("/nonexistent"))
    }

    #[test]
    fn the_issue_example_works_and_defaults_apply() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8443\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\npath = \"/console\"\n\
[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\nmax_ttl = \"120s\"\n\
[upstreams.lab]\nkind = \"tcp\"\naddr = \"127.0.0.1:5901\"\n[upstreams.any]\nkind = \"ws\"\nurl = \"ws://127.0.0.1:9001/\"\n"
        );
        let c = Config::from_toml(&text, Path::new("/etc/nexor")).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(
            c.server.tls.as_ref().unwrap().cert,
            Path::new("/etc/nexor/cert.pem")
        );
        assert_eq!(c.server.ping_interval, Some(Duration::from_secs(25)));
        assert_eq!(c.server.pong_timeout, Some(Duration::from_secs(50)));
        assert_eq!(c.tickets.policy.max_ttl, 120);
        assert_eq!(c.limits.max_frame, 1 << 20);
        assert!(matches!(c.upstreams["lab"], Upstream::Tcp { .. }));
        match &c.upstreams["any"] {
            Upstream::Ws { url, trust, .. } => {
                assert_eq!((url.tls, url.port, url.path.as_str()), (false, 9001, "/"));
                assert_eq!(url.host_header(), "127.0.0.1:9001");
                assert_eq!(*trust, Trust::SystemRoots);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"", "server.listen"),
            ("[server]\ntls_cert = \"c.pem\"", "server.tls_key"),
            ("[server]\nping_interval = \"10\"", "server.ping_interval"),
            ("[server]\npong_timeout = \"10\"", "server.pong_timeout"),
            ("[server]\npong_timeout = \"soon\"", "server.pong_timeout"),
            ("[server]\npath = \"console\"", "server.path"),
            ("[limits]\nmax_frame = \"1 parsec\"", "limits.max_frame"),
            (
                "[limits]\nhandshake_timeout = \"5 fortnights\"",
                "limits.handshake_timeout",
            ),
            ("[upstreams.x]\nkind = \"ws\"", "upstreams.x.url"),
            (
                "[upstreams.x]\nkind = \"ws\"\nurl = \"http://a/\"",
                "upstreams.x.url",
            ),
            (
                "[upstreams.x]\nkind = \"ws\"\nurl = \"wss://127.0.0.1/\"\nfingerprint = \"abc\"",
                "upstreams.x.fingerprint",
            ),
            (
                "[upstreams.x]\nkind = \"tcp\"\naddr = \"127.0.0.1\"",
                "upstreams.x.addr",
            ),
            (
                "[upstreams.x]\nkind = \"demo\"\naddr = \"127.0.0.1:1\"",
                "upstreams.x.addr",
            ),
            ("[upstreams.x]\nkind = \"ftp\"", "upstreams.x.kind"),
        ];
        for (extra, key) in cases {
            let e = load(extra).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = load("[server]\nlisten_addr = \"1.2.3.4:5\"").unwrap_err();
        assert!(e.message.contains("listen_addr"), "{e}");
        let e = load("[limits]\nmax_frames = 5").unwrap_err();
        assert!(e.message.contains("max_frames"), "{e}");
    }

    #[test]
    fn secrets_never_reach_errors_or_debug() {
        let c = load("").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(KEY) && !dbg.contains("oneXZRCf"), "{dbg}");
        let short = "[tickets]\nkeys = [{ id = \"k1\", secret = \"c2hvcnQ=\" }]\n[upstreams.d]\nkind = \"demo\"\n";
        let e = Config::from_toml(short, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "tickets.keys[0].secret");
        assert!(!e.to_string().contains("c2hvcnQ"), "{e}");
    }

    #[test]
    fn ipv4_mapped_networks_match_ipv4_clients() {
        let c = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(c, Cidr::parse("10.0.0.0/8").unwrap());
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::ffff:10.0.0.0/64").is_err());
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.1").unwrap(),
            Cidr::parse("10.0.0.1").unwrap()
        );
    }

    #[test]
    fn a_secret_in_the_wrong_key_is_not_shown() {
        let text = format!("[tickets]\nkeys = \"{KEY}\"\n[upstreams.d]\nkind = \"demo\"\n");
        let e = Config::from_toml(&text, Path::new("/")).unwrap_err();
        assert!(!e.to_string().contains("oneXZRCf"), "{e}");
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn durations_sizes_and_fingerprints() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert!(
            parse_duration("5").is_err()
                && parse_duration("s").is_err()
                && parse_duration("-1s").is_err()
        );
        assert_eq!(parse_size(&Size::Text("64KiB".into())), Ok(65536));
        assert_eq!(parse_size(&Size::Bytes(7)), Ok(7));
        let fp = "AB:cd:".repeat(16);
        assert_eq!(parse_fingerprint(&fp).unwrap()[..3], [0xab, 0xcd, 0xab]);
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn pong_timeout_defaults_to_twice_the_ping_interval_and_can_be_off() {
        let p = |extra: &str| load(extra).unwrap().server;
        assert_eq!(p("").pong_timeout, Some(Duration::from_secs(50)));
        let s = p("[server]\nping_interval = \"10s\"");
        assert_eq!(s.pong_timeout, Some(Duration::from_secs(20)));
        let s = p("[server]\npong_timeout = \"7s\"");
        assert_eq!(s.pong_timeout, Some(Duration::from_secs(7)));
        assert_eq!(p("[server]\npong_timeout = \"0\"").pong_timeout, None);
        assert_eq!(p("[server]\npong_timeout = \"0s\"").pong_timeout, None);
        // No pings, nothing to time out.
        assert_eq!(p("[server]\nping_interval = \"0s\"").pong_timeout, None);
        let e = load("[server]\npong_timeout = \"-3s\"").unwrap_err();
        assert!(e.to_string().contains("server.pong_timeout"), "{e}");
    }

    #[test]
    fn no_well_known_key_can_sign_tickets() {
        let samples = [
            // The bytes 0..31: the README, config/relay.toml and test example.
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            // The second example key of the tests and fuzz targets.
            "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKT",
            // All-zero, and all one byte.
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "//////////////////////////////////////////8=",
        ];
        for secret in samples {
            let text = format!(
                "[tickets]\nkeys = [{{ id = \"portal-1\", secret = \"{secret}\" }}]\n[upstreams.d]\nkind = \"demo\"\n"
            );
            let e = Config::from_toml(&text, Path::new("/")).unwrap_err();
            assert_eq!(e.key, "tickets.keys[0].secret", "{secret}");
            assert!(e.message.contains("`portal-1`"), "names the key id: {e}");
            assert!(e.message.contains("openssl rand -base64 32"), "{e}");
            assert!(!e.to_string().contains(&secret[..12]), "{e}");
        }
        // A second key that is a sample is refused too, named by its id.
        let text = format!(
            "[tickets]\nkeys = [{{ id = \"new\", secret = \"{KEY}\" }}, {{ id = \"old\", secret = \"{}\" }}]\n[upstreams.d]\nkind = \"demo\"\n",
            samples[0]
        );
        let e = Config::from_toml(&text, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "tickets.keys[1].secret");
        assert!(e.message.contains("`old`"), "{e}");
        assert!(load("").is_ok(), "a random key loads");
    }

    #[test]
    fn client_ip_header_and_proxy_protocol_need_trusted_proxies() {
        let c = load("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]").unwrap();
        assert_eq!(
            c.server.client_ip_header,
            Some(ClientIpHeader::XForwardedFor)
        );
        assert_eq!(load("").unwrap().server.client_ip_header, None);
        for (v, h) in [
            ("forwarded", ClientIpHeader::Forwarded),
            ("CF-Connecting-IP", ClientIpHeader::CfConnectingIp),
            ("x-real-ip", ClientIpHeader::XRealIp),
        ] {
            let c = load(&format!(
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"{v}\""
            ))
            .unwrap();
            assert_eq!(c.server.client_ip_header, Some(h));
        }
        let e = load(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"true-client-ip\"",
        )
        .unwrap_err();
        assert_eq!(e.key, "server.client_ip_header");
        let e = load("[server]\nclient_ip_header = \"x-forwarded-for\"").unwrap_err();
        assert_eq!(e.key, "server.client_ip_header");
        let e = load("[server]\nproxy_protocol = true").unwrap_err();
        assert_eq!(e.key, "server.trusted_proxies");
        assert!(load("[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.1\"]").is_ok());
        assert_eq!(load("").unwrap().limits.max_handshakes_per_ip, 64);
        let e = load("[admin]\nhost = \"a b\"").unwrap_err();
        assert_eq!(e.key, "admin.host");
    }
}
