//! The glue phase of the config (src/config/mod.rs has the pure one): reads
//! the secret files, resolves host names once, counts the CPUs for
//! `workers = 0` and takes relative paths from the config file's directory.
//!
//! Its errors name the key, the file (a path is not a secret) and the I/O
//! error kind; never what a file holds.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use super::{
    Admin, Config, ConfigError, ErrorKind, HostPort, Parsed, ParsedKey, ParsedProxmox,
    ParsedUpstream, Proxmox, Secret, SecretSource, Site, Tickets, TlsFiles, Trust, Upstream,
    UrlParts, WsUrl,
};
use crate::ticket::KeyRing;

/// Largest secret file read: a key or token is far smaller, and a path
/// such as `/dev/zero` must not read forever.
const MAX_SECRET_FILE: u64 = 64 << 10;

impl Config {
    /// Reads, parses and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: String::new(),
            at: None,
            kind: ErrorKind::CannotRead(e.kind()),
            file: Some(path.to_path_buf()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base)
    }
}

/// Completes a [`Parsed`] config: relative paths are taken from `base`.
pub fn resolve(p: Parsed, base: &Path) -> Result<Config, ConfigError> {
    let mut server = p.server;
    if server.workers == 0 {
        server.workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
    }
    server.tls = server.tls.map(|t| TlsFiles {
        cert: rel(base, &t.cert),
        key: rel(base, &t.key),
    });
    server.console_assets = server.console_assets.map(|a| rel(base, &a));
    let token = match p.admin.token {
        Some(s) => Some(secret(s, base, super::check_admin_token)?),
        None => None,
    };
    let admin = Admin {
        listen: p.admin.listen,
        host: p.admin.host,
        token,
    };
    let mut audit = p.audit;
    if let crate::audit::Output::File(f) = &audit.output {
        audit.output = crate::audit::Output::File(rel(base, f));
    }
    let mut keys = Vec::new();
    for k in p.tickets.keys {
        keys.push(match k {
            ParsedKey::Inline(k) => k,
            ParsedKey::File { id, path, site } => {
                let text = read_secret(&path, base, &site)?;
                super::ticket_key(&id, &text).map_err(|k| site.error(k))?
            }
        });
    }
    let tickets = Tickets {
        keys: KeyRing::new(keys),
        policy: p.tickets.policy,
        reconnect_grace: p.tickets.reconnect_grace,
    };
    let mut upstreams = BTreeMap::new();
    for (name, u) in p.upstreams {
        upstreams.insert(name, upstream(u, base)?);
    }
    let fleet = match p.fleet {
        Some(mut f) => {
            f.relay_id.get_or_insert_with(default_relay_id);
            if let Some(super::fleet::FleetCa::File { path, site }) = &f.ca {
                let p = rel(base, path);
                let pem = std::fs::read(&p).map_err(|e| ConfigError {
                    key: site.key.clone(),
                    at: site.at,
                    kind: ErrorKind::CannotRead(e.kind()),
                    file: Some(p.clone()),
                })?;
                f.ca = Some(super::fleet::FleetCa::Pem(pem));
            }
            Some(f)
        }
        None => None,
    };
    let mut recording = p.recording;
    if let Some(store) = &mut recording.store {
        store.dir = rel(base, &store.dir);
    }
    Ok(Config {
        server,
        admin,
        audit,
        tickets,
        limits: p.limits,
        upstreams,
        fleet,
        recording,
    })
}

/// The host name: `[fleet] relay_id`'s default (characters outside
/// `A-Z a-z 0-9 . _ -` left out; "relay" if none is left).
pub fn default_relay_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if name.is_empty() {
        "relay".into()
    } else {
        name
    }
}

fn upstream(u: ParsedUpstream, base: &Path) -> Result<Upstream, ConfigError> {
    Ok(match u {
        ParsedUpstream::Ws {
            url,
            trust,
            connect_timeout,
        } => Upstream::Ws {
            url: ws_url(url)?,
            trust: trust_in(trust, base),
            connect_timeout,
        },
        ParsedUpstream::Tcp {
            addr,
            connect_timeout,
        } => Upstream::Tcp {
            addr: lookup(&addr)?,
            connect_timeout,
        },
        ParsedUpstream::Demo => Upstream::Demo,
        ParsedUpstream::Proxmox(p) => {
            let ParsedProxmox {
                api,
                nodes,
                token_id,
                token_secret,
                trust,
                connect_timeout,
                force_shared,
            } = *p;
            let mut resolved = BTreeMap::new();
            for (node, url) in nodes {
                resolved.insert(node, ws_url(url)?);
            }
            Upstream::Proxmox(Box::new(Proxmox {
                api: ws_url(api)?,
                nodes: resolved,
                token_id,
                token_secret: secret(token_secret, base, super::check_token_secret)?,
                trust: trust_in(trust, base),
                connect_timeout,
                force_shared,
            }))
        }
    })
}

fn trust_in(t: Trust, base: &Path) -> Trust {
    match t {
        Trust::CaFile(f) => Trust::CaFile(rel(base, &f)),
        other => other,
    }
}

fn ws_url(u: UrlParts) -> Result<WsUrl, ConfigError> {
    Ok(WsUrl {
        addr: lookup(&u.host)?,
        tls: u.tls,
        host: u.host.host,
        port: u.host.port,
        path: u.path,
    })
}

/// Resolves once, at load time: a name that does not resolve is a config
/// error, so no worker ever blocks on DNS while serving consoles.
fn lookup(hp: &HostPort) -> Result<SocketAddr, ConfigError> {
    (hp.host.as_str(), hp.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| hp.site.error(ErrorKind::Unresolvable))
}

/// An inline secret as is; a file's, read and checked with `check`.
fn secret(
    s: SecretSource,
    base: &Path,
    check: fn(&str) -> Result<(), ErrorKind>,
) -> Result<Secret, ConfigError> {
    match s {
        SecretSource::Inline(s) => Ok(s),
        SecretSource::File { path, site } => {
            let text = read_secret(&path, base, &site)?;
            check(&text).map_err(|k| site.error(k))?;
            Ok(Secret(text))
        }
    }
}

/// Reads a secret file (trimmed); the error names the key and the file,
/// never the content.
fn read_secret(path: &Path, base: &Path, site: &Site) -> Result<String, ConfigError> {
    let p = rel(base, path);
    let failed = |kind: std::io::ErrorKind| ConfigError {
        key: site.key.clone(),
        at: site.at,
        kind: ErrorKind::CannotRead(kind),
        file: Some(p.clone()),
    };
    let mut text = String::new();
    std::fs::File::open(&p)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_string(&mut text))
        .map_err(|e| failed(e.kind()))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(failed(std::io::ErrorKind::FileTooLarge));
    }
    Ok(text.trim().to_string())
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
