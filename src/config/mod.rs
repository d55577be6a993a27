//! Configuration, in two phases (docs/design.md):
//!
//! 1. [`parse`] (this file, walking the TOML tree with walk.rs) is pure:
//!    TOML text in, a validated [`Parsed`] out, with no clock, DNS or file
//!    access (src/lib.rs denies them here). It checks all that needs
//!    neither: types, unknown keys, durations, sizes, enums, URL syntax,
//!    networks, inline secrets, ranges and the rules across keys.
//! 2. [`resolve`] (resolve.rs, glue) reads the secret files (`*_file`),
//!    resolves host names once, picks the worker count and takes relative
//!    paths from the config file's directory, giving the [`Config`] the
//!    relay runs with. Certificates and CA files are read by `tls`.
//!
//! [`Config::load`] and [`Config::from_toml`] do both. Errors
//! ([`ConfigError`], error.rs) hold a position, the key path and an
//! [`ErrorKind`] with a fixed message: never the parser's message or a value
//! from the file, so no secret can appear in one.
//!
//! Durations are strings with a unit (`"250ms"`, `"30s"`, `"5m"`, `"8h"`,
//! `"1d"`); sizes are bytes or strings with a unit (`"64KiB"`, `"1MiB"`).
//! `config/relay.toml` documents every key and its default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::record::config::{Recording, RecordingConfig};
use crate::ticket::{Key, KeyRing, Policy};

mod error;
pub mod fleet;
#[allow(clippy::disallowed_methods)] // glue: files and DNS (clippy.toml)
mod resolve;
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write secret files
mod tests;
mod walk;

pub use error::{ConfigError, ErrorKind, Pos};
pub use resolve::{default_relay_id, resolve};
use walk::{join, Field, Node, Src, Tbl};
pub use walk::{HIDDEN_NAME, MAX_SHOWN_NAME};

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
    /// `[fleet]`: shared state on a Redis store (None: this relay alone).
    pub fleet: Option<fleet::FleetConfig>,
    /// `[recording]` and the upstreams' `record` (docs/recording.md).
    pub recording: Recording,
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
    pub fn parse(s: &str) -> Result<Cidr, ErrorKind> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| ErrorKind::Rule("not an IP network, e.g. \"10.0.0.0/8\" or \"::1\""))?;
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
                .ok_or(ErrorKind::Rule("bad prefix length"))?,
            None => max,
        };
        let prefix = match mapped {
            true if prefix < 96 => {
                return Err(ErrorKind::Rule(
                    "an IPv4-mapped network needs a prefix of at least 96",
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

// ---- the parsed config (before the glue) ------------------------------------

/// Where a value sits in the file, kept for the glue's errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The dotted key path.
    pub key: String,
    pub at: Option<Pos>,
}

impl Site {
    pub(crate) fn error(&self, kind: ErrorKind) -> ConfigError {
        ConfigError::new(self.key.clone(), self.at, kind)
    }
}

/// A secret given in the file (already checked) or in a file the glue reads.
#[derive(Debug, Clone)]
pub enum SecretSource {
    Inline(Secret),
    /// The path as written (relative to the config file's directory).
    File {
        path: PathBuf,
        site: Site,
    },
}

/// A host and port, not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
    /// The key that named it.
    pub site: Site,
}

/// A `ws://` or `wss://` URL, its host not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub tls: bool,
    pub host: HostPort,
    /// Origin-form request target, `/` at least.
    pub path: String,
}

/// The config after the pure phase: everything checked that needs no clock,
/// DNS or file. Paths are as written; [`resolve`] makes them relative to the
/// config file's directory.
#[derive(Debug)]
pub struct Parsed {
    /// `workers` is 0 when the file asks for one per CPU ([`resolve`] counts).
    pub server: Server,
    pub admin: ParsedAdmin,
    pub audit: AuditConfig,
    pub tickets: ParsedTickets,
    pub limits: Limits,
    pub upstreams: BTreeMap<String, ParsedUpstream>,
    /// `relay_id` is None when the file leaves it to the host name.
    pub fleet: Option<fleet::FleetConfig>,
    /// `dir` as written ([`resolve`] makes it absolute).
    pub recording: Recording,
}

/// `[admin]` before its `token_file` is read.
#[derive(Debug, Clone)]
pub struct ParsedAdmin {
    pub listen: Option<SocketAddr>,
    pub host: Option<String>,
    pub token: Option<SecretSource>,
}

/// `[tickets]` before the `secret_file`s are read.
#[derive(Debug)]
pub struct ParsedTickets {
    pub keys: Vec<ParsedKey>,
    pub policy: Policy,
    pub reconnect_grace: Duration,
}

/// One `[tickets] keys` entry.
#[derive(Debug)]
pub enum ParsedKey {
    /// `secret = "…"`, decoded and checked.
    Inline(Key),
    /// `secret_file = "…"`: the glue reads and checks it.
    File {
        id: String,
        path: PathBuf,
        site: Site,
    },
}

/// `[upstreams.<name>]` before host names are resolved and files read.
#[derive(Debug, Clone)]
pub enum ParsedUpstream {
    Ws {
        url: UrlParts,
        trust: Trust,
        connect_timeout: Duration,
    },
    Tcp {
        addr: HostPort,
        connect_timeout: Duration,
    },
    Demo,
    Proxmox(Box<ParsedProxmox>),
}

/// `kind = "proxmox"` before resolving.
#[derive(Debug, Clone)]
pub struct ParsedProxmox {
    pub api: UrlParts,
    pub nodes: BTreeMap<String, UrlParts>,
    pub token_id: String,
    pub token_secret: SecretSource,
    pub trust: Trust,
    pub connect_timeout: Duration,
    pub force_shared: bool,
}

impl Config {
    /// Parses and resolves TOML text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        resolve(parse(text)?, base)
    }
}

// ---- value syntax -----------------------------------------------------------

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"8h"`, `"1d"`.
pub fn parse_duration(s: &str) -> Result<Duration, ErrorKind> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| match num.is_empty() {
        true => ErrorKind::Duration,
        false => ErrorKind::DurationTooLong,
    })?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(ErrorKind::Duration),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or(ErrorKind::DurationTooLong)
}

/// Parses a size: `"64KiB"`, `"1MiB"`, `"512B"`, `"512"`.
pub fn parse_size(text: &str) -> Result<u64, ErrorKind> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| match num.is_empty() {
        true => ErrorKind::Size,
        false => ErrorKind::SizeTooLarge,
    })?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(ErrorKind::Size),
    };
    n.checked_mul(mult).ok_or(ErrorKind::SizeTooLarge)
}

/// Parses a SHA-256 fingerprint: 64 hex digits, `:` separators allowed, any case.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ErrorKind> {
    const BAD: ErrorKind =
        ErrorKind::Rule("expected the SHA-256 of the certificate: 64 hex digits, `:` allowed");
    let hex: Vec<u8> = s.bytes().filter(|c| *c != b':').collect();
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(BAD);
    }
    let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]);
    }
    Ok(out)
}

/// Parses a `ws://` / `wss://` URL (its host is resolved by the glue).
/// `site` is the key that names it, for the glue's errors.
pub fn parse_ws_url(s: &str, site: Site) -> Result<UrlParts, ErrorKind> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err(ErrorKind::Rule("must start with ws:// or wss://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(ErrorKind::Rule("credentials in the URL are not supported"));
    }
    if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ErrorKind::Rule(
            "the path must be printable, without a fragment",
        ));
    }
    let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })?;
    Ok(UrlParts {
        tls,
        host: HostPort { host, port, site },
        path: path.to_string(),
    })
}

const BAD_PORT: ErrorKind = ErrorKind::Rule("bad port: a number from 0 to 65535");

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `default` when no port.
fn split_host_port(authority: &str, default: u16) -> Result<(String, u16), ErrorKind> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or(ErrorKind::Rule("unclosed `[` in host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| BAD_PORT)?,
            None if after.is_empty() => default,
            None => return Err(ErrorKind::Rule("junk after `]`")),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| BAD_PORT)?),
            None => (authority, default),
        }
    };
    if host.is_empty() {
        return Err(ErrorKind::Rule("no host"));
    }
    if host.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ErrorKind::Rule(
            "the host must be printable, without spaces",
        ));
    }
    Ok((host.to_string(), port))
}

/// A `[tcp]` upstream's `addr`: `ip:port` or `host:port`, port required.
fn parse_host_port(s: &str, site: Site) -> Result<HostPort, ErrorKind> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(HostPort {
            host: a.ip().to_string(),
            port: a.port(),
            site,
        });
    }
    if !s.contains(':') || s.ends_with(']') {
        return Err(ErrorKind::Rule("expected host:port"));
    }
    let (host, port) = split_host_port(s, 0)?;
    Ok(HostPort { host, port, site })
}

/// The rule for `[admin] token`, inline or read from `token_file`.
pub(crate) fn check_admin_token(t: &str) -> Result<(), ErrorKind> {
    if t.len() < 16 || t.chars().any(char::is_whitespace) {
        return Err(ErrorKind::Rule("at least 16 characters, no spaces"));
    }
    Ok(())
}

/// The rule for a Proxmox `token_secret`, inline or from its file.
pub(crate) fn check_token_secret(s: &str) -> Result<(), ErrorKind> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ErrorKind::Rule("must be non-empty, without spaces"));
    }
    Ok(())
}

/// A ticket key from its id and base64 secret, as the config accepts it.
pub(crate) fn ticket_key(id: &str, secret: &str) -> Result<Key, ErrorKind> {
    let key = Key::from_secret_b64(id, secret).map_err(ErrorKind::Key)?;
    if key.is_well_known() {
        return Err(ErrorKind::WellKnownKey);
    }
    Ok(key)
}

// ---- key names ---------------------------------------------------------------

/// Every key name the config has (tables included).
pub const KEY_NAMES: &[&str] = &[
    "server",
    "admin",
    "audit",
    "tickets",
    "limits",
    "upstreams",
    "fleet",
    "redis",
    "relay_id",
    "on_store_error",
    "lease",
    "key_prefix",
    "recording",
    "dir",
    "max_bytes",
    "required",
    "record",
    "listen",
    "workers",
    "path",
    "tls_cert",
    "tls_key",
    "ping_interval",
    "pong_timeout",
    "allowed_origins",
    "require_origin",
    "proxy_protocol",
    "trusted_proxies",
    "client_ip_header",
    "drain_timeout",
    "console_page",
    "console_assets",
    "host",
    "token",
    "token_file",
    "output",
    "refused_per_second",
    "keys",
    "max_ttl",
    "leeway",
    "audience",
    "reconnect_grace",
    "id",
    "secret",
    "secret_file",
    "max_frame",
    "handshake_timeout",
    "max_head",
    "max_headers",
    "max_sessions",
    "max_sessions_per_vm",
    "max_sessions_per_user",
    "on_vm_limit",
    "max_session",
    "idle_timeout",
    "handshakes_per_ip",
    "max_handshakes",
    "max_handshakes_per_ip",
    "kind",
    "url",
    "addr",
    "ca_file",
    "fingerprint",
    "connect_timeout",
    "api",
    "token_id",
    "token_secret",
    "token_secret_file",
    "nodes",
    "force_shared",
];

// ---- the pure phase ---------------------------------------------------------

/// Parses and validates config text: pure (no clock, DNS or files). Paths
/// stay as written; [`resolve`] does the rest.
pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
    let src = Src::new(text);
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        // Not the parser's message: it quotes the line, which may hold a secret.
        ConfigError::new("", e.span().map(|s| src.pos(s.start)), ErrorKind::Syntax)
    })?;
    let root = Field {
        src: &src,
        path: String::new(),
        at: None,
        node: Node::Table(doc.as_table()),
    };
    let top = root.table(Some(&[
        "server",
        "admin",
        "audit",
        "tickets",
        "limits",
        "upstreams",
        "fleet",
        "recording",
    ]))?;
    let server = server(&top.sub(
        "server",
        &[
            "listen",
            "workers",
            "path",
            "tls_cert",
            "tls_key",
            "ping_interval",
            "pong_timeout",
            "allowed_origins",
            "require_origin",
            "proxy_protocol",
            "trusted_proxies",
            "client_ip_header",
            "drain_timeout",
            "console_page",
            "console_assets",
        ],
    )?)?;
    let admin = admin(&top.sub("admin", &["listen", "host", "token", "token_file"])?)?;
    let audit_t = top.sub("audit", &["output", "refused_per_second"])?;
    let audit = AuditConfig {
        output: crate::audit::Output::parse(
            audit_t.opt("output", Field::str)?.unwrap_or("stdout"),
            Path::new(""),
        ),
        refused_per_second: audit_t
            .opt("refused_per_second", |f| f.uint(u32::MAX))?
            .unwrap_or(DEFAULT_REFUSED_PER_SECOND),
    };
    let tickets = match top.get("tickets") {
        Some(f) => Some(tickets(&f.table(Some(&[
            "keys",
            "max_ttl",
            "leeway",
            "audience",
            "reconnect_grace",
        ]))?)?),
        None => None,
    };
    let limits = limits(&top.sub(
        "limits",
        &[
            "max_frame",
            "handshake_timeout",
            "max_head",
            "max_headers",
            "max_sessions",
            "max_sessions_per_vm",
            "max_sessions_per_user",
            "on_vm_limit",
            "max_session",
            "idle_timeout",
            "handshakes_per_ip",
            "max_handshakes",
            "max_handshakes_per_ip",
        ],
    )?)?;
    let mut upstreams = BTreeMap::new();
    let mut record_always = Vec::new();
    if let Some(f) = top.get("upstreams") {
        for (name, u) in &f.table(None)?.entries {
            upstreams.insert(name.to_string(), upstream(name, u)?);
            if let Some(r) = u.table(None)?.get("record") {
                match r.str()? {
                    "ticket" => {}
                    "always" => record_always.push((name.to_string(), r.clone())),
                    _ => return Err(r.err(ErrorKind::OneOf(RECORD_MODES))),
                }
            }
        }
    }
    let recording = recording(&top, record_always)?;
    let tickets = tickets.ok_or_else(|| {
        top.err_at(
            "tickets",
            ErrorKind::Rule("the [tickets] section with keys is required"),
        )
    })?;
    if upstreams.is_empty() {
        return Err(top.err_on(
            "upstreams",
            ErrorKind::Rule("at least one [upstreams.<name>] is required"),
        ));
    }
    let fleet = match top.get("fleet") {
        Some(f) => Some(fleet::parse(
            &f.table(Some(fleet::KEYS))?,
            tickets.policy.audience.is_some(),
        )?),
        None => None,
    };
    Ok(Parsed {
        server,
        admin,
        audit,
        tickets,
        limits,
        upstreams,
        fleet,
        recording,
    })
}

/// Values of `[upstreams.X] record`.
const RECORD_MODES: &[&str] = &["ticket", "always"];

/// `[recording]`, and the upstreams whose `record` is `"always"` (which
/// need it).
fn recording(top: &Tbl, always: Vec<(String, Field)>) -> Result<Recording, ConfigError> {
    let store = match top.get("recording") {
        None => None,
        Some(f) => {
            let t = f.table(Some(&["dir", "max_bytes", "required"]))?;
            let max_bytes = match t.get("max_bytes") {
                Some(f) => match f.size()? {
                    0 => return Err(f.err(ErrorKind::NotZero)),
                    n => n,
                },
                None => crate::record::config::DEFAULT_MAX_BYTES,
            };
            Some(RecordingConfig {
                dir: t.need("dir", ErrorKind::Required)?.path_buf()?,
                max_bytes,
                required: t.opt("required", Field::bool)?.unwrap_or(false),
            })
        }
    };
    if store.is_none() {
        if let Some((_, f)) = always.first() {
            return Err(f.err(ErrorKind::Rule("\"always\" needs a [recording] dir")));
        }
    }
    Ok(Recording {
        store,
        always: always.into_iter().map(|(n, _)| n).collect(),
    })
}

fn server(t: &Tbl) -> Result<Server, ConfigError> {
    let listen = match t.get("listen") {
        Some(f) => f.str()?.parse().map_err(|_| {
            f.err(ErrorKind::Rule(
                "expected an ip:port, e.g. \"0.0.0.0:8443\"",
            ))
        })?,
        None => SocketAddr::from(([0, 0, 0, 0], 8443)),
    };
    let workers = match t.get("workers") {
        Some(f) => match f.count()? {
            n if n > 1024 => return Err(f.err(ErrorKind::Rule("at most 1024 (0: one per CPU)"))),
            n => n,
        },
        None => 0,
    };
    let path = match t.get("path") {
        Some(f) => {
            let p = f.str()?;
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                return Err(f.err(ErrorKind::Rule(
                    "must start with `/` and hold no `?`, `#` or space",
                )));
            }
            p.to_string()
        }
        None => DEFAULT_PATH.to_string(),
    };
    let tls = match (t.get("tls_cert"), t.get("tls_key")) {
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: c.path_buf()?,
            key: k.path_buf()?,
        }),
        (None, None) => None,
        (Some(c), None) => {
            return Err(ConfigError::new(
                join(&t.path, "tls_key"),
                c.site().at,
                ErrorKind::Rule("required with server.tls_cert"),
            ))
        }
        (None, Some(k)) => {
            return Err(ConfigError::new(
                join(&t.path, "tls_cert"),
                k.site().at,
                ErrorKind::Rule("required with server.tls_key"),
            ))
        }
    };
    let ping = t
        .opt("ping_interval", Field::duration)?
        .unwrap_or(DEFAULT_PING_INTERVAL);
    let ping_interval = if ping.is_zero() {
        None
    } else if ping < Duration::from_secs(1) {
        return Err(t.err_on(
            "ping_interval",
            ErrorKind::Rule("at least 1s (or \"0s\" for off)"),
        ));
    } else {
        Some(ping)
    };
    let pong_timeout = match t.get("pong_timeout") {
        None => ping_interval.map(|p| p * 2),
        Some(f) if f.str()?.trim() == "0" => None,
        Some(f) => Some(f.duration()?).filter(|d| !d.is_zero()),
    };
    let mut allowed = Vec::new();
    for (f, o) in t
        .opt("allowed_origins", Field::strings)?
        .unwrap_or_default()
    {
        let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
        if !(o.starts_with("https://") || o.starts_with("http://")) || o.matches('/').count() != 2 {
            return Err(f.err(ErrorKind::Rule(
                "an origin is scheme://host[:port], e.g. \"https://portal.example.com\"",
            )));
        }
        allowed.push(o);
    }
    let mut trusted_proxies = Vec::new();
    for (f, c) in t
        .opt("trusted_proxies", Field::strings)?
        .unwrap_or_default()
    {
        trusted_proxies.push(Cidr::parse(c).map_err(|k| f.err(k))?);
    }
    let client_ip_header = match (t.get("client_ip_header"), trusted_proxies.is_empty()) {
        (Some(f), true) => {
            return Err(f.err(ErrorKind::Rule(
                "needs server.trusted_proxies: the header is read only from those peers",
            )))
        }
        (None, true) => None,
        (None, false) => Some(ClientIpHeader::XForwardedFor),
        (Some(f), false) => Some(ClientIpHeader::parse(f.str()?).ok_or_else(|| {
            f.err(ErrorKind::OneOf(&[
                "x-forwarded-for",
                "forwarded",
                "cf-connecting-ip",
                "x-real-ip",
            ]))
        })?),
    };
    let proxy_protocol = t.opt("proxy_protocol", Field::bool)?.unwrap_or(false);
    if proxy_protocol && trusted_proxies.is_empty() {
        return Err(t.err_on(
            "trusted_proxies",
            ErrorKind::Rule(
                "required with proxy_protocol = true: a PROXY header is believed only from these peers (the balancers)",
            ),
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
            require: t.opt("require_origin", Field::bool)?.unwrap_or(false),
        },
        proxy_protocol,
        trusted_proxies,
        client_ip_header,
        drain_timeout: t
            .opt("drain_timeout", Field::duration)?
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        console_page: t.opt("console_page", Field::bool)?.unwrap_or(false),
        console_assets: t.opt("console_assets", Field::path_buf)?,
    })
}

fn admin(t: &Tbl) -> Result<ParsedAdmin, ConfigError> {
    let listen = match t.get("listen") {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9477))),
        Some(f) => match f.str()? {
            "off" => None,
            l => Some(
                l.parse()
                    .map_err(|_| f.err(ErrorKind::Rule("expected an ip:port (or \"off\")")))?,
            ),
        },
    };
    let token = match (t.get("token"), t.get("token_file")) {
        (Some(f), None) => {
            let tok = f.str()?;
            check_admin_token(tok).map_err(|k| f.err(k))?;
            Some(SecretSource::Inline(Secret(tok.to_string())))
        }
        (None, Some(f)) => Some(SecretSource::File {
            path: f.path_buf()?,
            site: f.site(),
        }),
        (None, None) => None,
        (Some(f), Some(_)) => return Err(f.err(ErrorKind::Rule("use either token or token_file"))),
    };
    let host = match t.get("host") {
        None => None,
        Some(f) => {
            let h = f.str()?;
            if h.is_empty()
                || h.len() > 255
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
            {
                return Err(f.err(ErrorKind::Rule(
                    "a host name or host:port, as clients send it in `Host`",
                )));
            }
            Some(h.to_ascii_lowercase())
        }
    };
    Ok(ParsedAdmin {
        listen,
        host,
        token,
    })
}

fn tickets(t: &Tbl) -> Result<ParsedTickets, ConfigError> {
    let list = t.need("keys", ErrorKind::Required)?.array()?;
    if list.is_empty() {
        return Err(t.err_on(
            "keys",
            ErrorKind::Rule(
                "at least one key is required; make a secret with `openssl rand -base64 32`",
            ),
        ));
    }
    let mut keys = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for f in &list {
        let k = f.table(Some(&["id", "secret", "secret_file"]))?;
        let id_f = k.need("id", ErrorKind::Required)?;
        let id = id_f.str()?;
        // A `kid` travels in every ticket header: keep it a plain token.
        let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if id.is_empty() || id.len() > 64 || !id.chars().all(plain) {
            return Err(id_f.err(ErrorKind::Rule("1 to 64 characters from A-Z a-z 0-9 . _ -")));
        }
        if ids.contains(&id) {
            return Err(id_f.err(ErrorKind::Rule(
                "duplicate key id: an earlier key has the same id",
            )));
        }
        ids.push(id);
        keys.push(match (k.get("secret"), k.get("secret_file")) {
            (Some(s), None) => ParsedKey::Inline(ticket_key(id, s.str()?).map_err(|e| s.err(e))?),
            (None, Some(p)) => ParsedKey::File {
                id: id.to_string(),
                path: p.path_buf()?,
                site: p.site(),
            },
            _ => return Err(f.err(ErrorKind::Rule("exactly one of `secret` or `secret_file`"))),
        });
    }
    let max_ttl = t
        .opt("max_ttl", Field::duration)?
        .unwrap_or(DEFAULT_MAX_TTL);
    if max_ttl.is_zero() {
        return Err(t.err_on("max_ttl", ErrorKind::NotZero));
    }
    let leeway = t.opt("leeway", Field::duration)?.unwrap_or(DEFAULT_LEEWAY);
    let audience = match t.get("audience") {
        None => None,
        Some(f) if f.str()?.trim().is_empty() => {
            return Err(f.err(ErrorKind::Rule("must not be empty")))
        }
        Some(f) => Some(f.str()?.to_string()),
    };
    Ok(ParsedTickets {
        keys,
        policy: Policy {
            max_ttl: max_ttl.as_secs(),
            leeway: leeway.as_secs(),
            audience,
        },
        reconnect_grace: t
            .opt("reconnect_grace", Field::duration)?
            .unwrap_or(DEFAULT_RECONNECT_GRACE),
    })
}

fn limits(t: &Tbl) -> Result<Limits, ConfigError> {
    let max_frame = t
        .opt("max_frame", Field::size)?
        .unwrap_or(DEFAULT_MAX_FRAME);
    if !(125..=(1 << 30)).contains(&max_frame) {
        return Err(t.err_on("max_frame", ErrorKind::Rule("between 125 bytes and 1GiB")));
    }
    let max_head = t
        .opt("max_head", Field::size)?
        .unwrap_or(DEFAULT_MAX_HEAD as u64);
    if !(1024..=(64 << 10)).contains(&max_head) {
        return Err(t.err_on("max_head", ErrorKind::Rule("between 1KiB and 64KiB")));
    }
    let max_headers = t
        .opt("max_headers", Field::count)?
        .unwrap_or(DEFAULT_MAX_HEADERS);
    if !(8..=128).contains(&max_headers) {
        return Err(t.err_on("max_headers", ErrorKind::Rule("between 8 and 128")));
    }
    let handshake_timeout = t
        .opt("handshake_timeout", Field::duration)?
        .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    if handshake_timeout.is_zero() {
        return Err(t.err_on("handshake_timeout", ErrorKind::NotZero));
    }
    let nonzero = |name: &str| -> Result<Option<usize>, ConfigError> {
        Ok(t.opt(name, Field::count)?.filter(|&n| n > 0))
    };
    let on_vm_limit = match t.get("on_vm_limit") {
        None => VmLimit::Reject,
        Some(f) => match f.str()? {
            "reject" => VmLimit::Reject,
            "replace" => VmLimit::Replace,
            _ => return Err(f.err(ErrorKind::OneOf(&["reject", "replace"]))),
        },
    };
    let max_session = t
        .opt("max_session", Field::duration)?
        .unwrap_or(DEFAULT_MAX_SESSION);
    if max_session.is_zero() {
        return Err(t.err_on("max_session", ErrorKind::NotZero));
    }
    let idle = t
        .opt("idle_timeout", Field::duration)?
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    Ok(Limits {
        max_frame,
        handshake_timeout,
        max_head: max_head as usize,
        max_headers,
        max_sessions: nonzero("max_sessions")?,
        max_sessions_per_vm: nonzero("max_sessions_per_vm")?,
        max_sessions_per_user: nonzero("max_sessions_per_user")?,
        on_vm_limit,
        max_session,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        handshakes_per_ip: t
            .opt("handshakes_per_ip", |f| f.uint(u32::MAX))?
            .filter(|&n| n > 0),
        max_handshakes: nonzero("max_handshakes")?.unwrap_or(DEFAULT_MAX_HANDSHAKES),
        max_handshakes_per_ip: nonzero("max_handshakes_per_ip")?
            .unwrap_or(DEFAULT_MAX_HANDSHAKES_PER_IP),
    })
}

/// `ca_file` or `fingerprint` (not both), or the system roots.
fn trust_of(t: &Tbl) -> Result<Trust, ConfigError> {
    Ok(match (t.get("ca_file"), t.get("fingerprint")) {
        (Some(_), Some(f)) => {
            return Err(f.err(ErrorKind::Rule("use either ca_file or fingerprint")))
        }
        (Some(c), None) => Trust::CaFile(c.path_buf()?),
        (None, Some(f)) => Trust::Fingerprint(parse_fingerprint(f.str()?).map_err(|k| f.err(k))?),
        (None, None) => Trust::SystemRoots,
    })
}

/// The kinds of upstream, as `kind = "…"` names them.
const KINDS: &[&str] = &["ws", "tcp", "demo", "proxmox"];

/// Keys only a Proxmox upstream has.
const PROXMOX_ONLY: &[&str] = &[
    "api",
    "token_id",
    "token_secret",
    "token_secret_file",
    "nodes",
    "force_shared",
];

fn upstream(name: &str, u: &Field) -> Result<ParsedUpstream, ConfigError> {
    if name.is_empty() || name.len() > 128 {
        return Err(u.err(ErrorKind::Rule("names are 1 to 128 characters")));
    }
    let t = u.table(Some(&[
        "kind",
        "url",
        "addr",
        "ca_file",
        "fingerprint",
        "connect_timeout",
        "api",
        "token_id",
        "token_secret",
        "token_secret_file",
        "nodes",
        "force_shared",
        "record",
    ]))?;
    let kind_f = t.need("kind", ErrorKind::Required)?;
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| *k == kind_f.str().unwrap_or_default())
        .ok_or_else(|| match kind_f.str() {
            Ok(_) => kind_f.err(ErrorKind::OneOf(KINDS)),
            Err(e) => e,
        })?;
    let not_for = |keys: &[&str]| match keys.iter().find(|k| t.has(k)) {
        Some(k) => Err(t.err_on(k, ErrorKind::NotForKind(kind))),
        None => Ok(()),
    };
    let connect_timeout = t
        .opt("connect_timeout", Field::duration)?
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    match kind {
        "ws" => {
            not_for(PROXMOX_ONLY)?;
            not_for(&["addr"])?;
            let f = t.need("url", ErrorKind::RequiredFor(kind))?;
            let url = parse_ws_url(f.str()?, f.site()).map_err(|k| f.err(k))?;
            let trust = trust_of(&t)?;
            if !url.tls && trust != Trust::SystemRoots {
                return Err(f.err(ErrorKind::Rule("ca_file/fingerprint need a wss:// URL")));
            }
            Ok(ParsedUpstream::Ws {
                url,
                trust,
                connect_timeout,
            })
        }
        "tcp" => {
            not_for(PROXMOX_ONLY)?;
            not_for(&["url", "ca_file", "fingerprint"])?;
            let f = t.need("addr", ErrorKind::RequiredFor(kind))?;
            let addr = parse_host_port(f.str()?, f.site()).map_err(|k| f.err(k))?;
            Ok(ParsedUpstream::Tcp {
                addr,
                connect_timeout,
            })
        }
        "demo" => {
            not_for(PROXMOX_ONLY)?;
            not_for(&["url", "addr", "ca_file", "fingerprint", "connect_timeout"])?;
            Ok(ParsedUpstream::Demo)
        }
        _ => proxmox(&t, connect_timeout).map(|p| ParsedUpstream::Proxmox(Box::new(p))),
    }
}

/// A Proxmox node's `https://host[:port]`, as the `wss://` URL the relay uses.
fn api_url(f: &Field) -> Result<UrlParts, ConfigError> {
    let rest = f
        .str()?
        .trim()
        .trim_end_matches('/')
        .strip_prefix("https://")
        .ok_or_else(|| {
            f.err(ErrorKind::Rule(
                "an https:// URL of a node, e.g. \"https://pve1.example:8006\"",
            ))
        })?;
    if rest.contains('/') {
        return Err(f.err(ErrorKind::Rule("scheme, host and port only (no path)")));
    }
    if rest.contains('@') {
        return Err(f.err(ErrorKind::Rule("credentials in the URL are not supported")));
    }
    // Without a port, pveproxy's 8006 (not https' 443).
    let (host, port) = split_host_port(rest, 8006).map_err(|k| f.err(k))?;
    Ok(UrlParts {
        tls: true,
        host: HostPort {
            host,
            port,
            site: f.site(),
        },
        path: "/".to_string(),
    })
}

fn proxmox(t: &Tbl, connect_timeout: Duration) -> Result<ParsedProxmox, ConfigError> {
    let kind = "proxmox";
    if let Some(k) = ["url", "addr"].into_iter().find(|k| t.has(k)) {
        return Err(t.err_on(k, ErrorKind::NotForKind(kind)));
    }
    let api = api_url(t.need("api", ErrorKind::RequiredFor(kind))?)?;
    let mut nodes = BTreeMap::new();
    if let Some(f) = t.get("nodes") {
        for (node, url) in &f.table(None)?.entries {
            nodes.insert(node.to_string(), api_url(url)?);
        }
    }
    let id_f = t.need("token_id", ErrorKind::RequiredFor(kind))?;
    let token_id = id_f.str()?;
    let valid_id = token_id
        .split_once('@')
        .and_then(|(user, rest)| rest.split_once('!').map(|(realm, tok)| (user, realm, tok)))
        .is_some_and(|(user, realm, tok)| {
            !user.is_empty()
                && !realm.is_empty()
                && !tok.is_empty()
                && !token_id.contains(['=', ' ', '\n', ':'])
        });
    if !valid_id {
        return Err(id_f.err(ErrorKind::Rule("expected user@realm!tokenid")));
    }
    let token_secret = match (t.get("token_secret"), t.get("token_secret_file")) {
        (Some(f), None) => {
            let s = f.str()?;
            check_token_secret(s).map_err(|k| f.err(k))?;
            SecretSource::Inline(Secret(s.to_string()))
        }
        (None, Some(f)) => SecretSource::File {
            path: f.path_buf()?,
            site: f.site(),
        },
        _ => {
            return Err(t.err_on(
                "token_secret",
                ErrorKind::Rule("exactly one of token_secret or token_secret_file"),
            ))
        }
    };
    Ok(ParsedProxmox {
        api,
        nodes,
        token_id: token_id.to_string(),
        token_secret,
        trust: trust_of(t)?,
        connect_timeout,
        force_shared: t.opt("force_shared", Field::bool)?.unwrap_or(true),
    })
}
