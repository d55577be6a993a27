//! The `[fleet]` table (fleet mode, src/fleet), in the pure phase. The
//! host-name default of `relay_id` is the resolve step's (resolve.rs).
//!
//! ```toml
//! [fleet]
//! redis = "redis://127.0.0.1:6379/0"   # rediss:// for TLS, redis+unix:///path
//! relay_id = "relay-1"                 # unique per relay; default: the host name
//! on_store_error = "refuse"            # or "local" (needs [tickets] audience)
//! lease = "15s"
//! key_prefix = "nexor:"
//! ```

use std::fmt;
use std::time::Duration;

use super::walk::{Field, Tbl};
use super::{ConfigError, ErrorKind, Site};

/// The Redis URL. Its password never leaves this type in `Debug` or
/// `Display` (`redis://user:***@host:6379/0`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks the form (the client library's URL parser): `redis://`,
    /// `rediss://` (TLS), `valkey://`, `valkeys://`, `redis+unix://`,
    /// `unix://`.
    pub fn parse(s: &str) -> Option<RedisUrl> {
        let s = s.trim();
        if redis::parse_redis_url(s).is_none() || redis::Client::open(s).is_err() {
            return None;
        }
        Some(RedisUrl(s.to_string()))
    }

    /// The URL itself, password included: for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.0.starts_with("rediss://") || self.0.starts_with("valkeys://")
    }

    /// The URL with its password (and any `pass=` query value) replaced by
    /// `***`.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        let mut out = match s.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find(['/', '?']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(end);
                match authority.rsplit_once('@') {
                    Some((userinfo, host)) => {
                        let user = userinfo.split_once(':').map_or("", |(u, _)| u);
                        format!("{scheme}://{user}:***@{host}{tail}")
                    }
                    None => s.clone(),
                }
            }
            None => "***".to_string(),
        };
        if let Some(q) = out.find("pass=") {
            let end = out[q..].find('&').map_or(out.len(), |e| q + e);
            out.replace_range(q + 5..end, "***");
        }
        out
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

/// What new handshakes get while the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// 503 (`fleet_store_unavailable`); live sessions go on.
    Refuse,
    /// This relay's own registry decides (tickets must carry its `aud`).
    Local,
}

/// `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    pub redis: RedisUrl,
    /// None: the host name (filled in by src/config/resolve.rs).
    pub relay_id: Option<String>,
    pub on_store_error: OnStoreError,
    pub lease: Duration,
    pub key_prefix: String,
    /// `ca_file`: the only roots a `rediss://` store's certificate is
    /// checked against (default: the Mozilla roots).
    pub ca: Option<FleetCa>,
}

/// `[fleet] ca_file`: its path as written (the pure phase), then its PEM
/// (read by resolve.rs).
#[derive(Clone, PartialEq, Eq)]
pub enum FleetCa {
    File {
        path: std::path::PathBuf,
        site: Site,
    },
    Pem(Vec<u8>),
}

impl fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetCa::File { path, .. } => write!(f, "File({})", path.display()),
            FleetCa::Pem(p) => write!(f, "Pem({} bytes)", p.len()),
        }
    }
}

pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
pub const DEFAULT_PREFIX: &str = "nexor:";

/// A relay id: 1 to 64 of `A-Z a-z 0-9 . _ -` (it is part of key names
/// and of the members `|` separates).
pub fn valid_relay_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The keys of `[fleet]`.
pub(super) const KEYS: &[&str] = &[
    "redis",
    "relay_id",
    "on_store_error",
    "lease",
    "key_prefix",
    "ca_file",
];

/// Parses the `[fleet]` table. `audience`: whether `[tickets] audience`
/// is set (`on_store_error = "local"` needs it).
pub(super) fn parse(t: &Tbl, audience: bool) -> Result<FleetConfig, ConfigError> {
    let f = t.need("redis", ErrorKind::Required)?;
    let redis = RedisUrl::parse(f.str()?).ok_or_else(|| {
        f.err(ErrorKind::Rule(
            "a Redis URL: redis://host:6379/0, rediss://… for TLS, redis+unix:///path",
        ))
    })?;
    let relay_id = match t.get("relay_id") {
        Some(f) if valid_relay_id(f.str()?) => Some(f.str()?.to_string()),
        Some(f) => return Err(f.err(ErrorKind::Rule("1 to 64 characters from A-Z a-z 0-9 . _ -"))),
        None => None,
    };
    let on_store_error = match t.opt("on_store_error", Field::str)? {
        None | Some("refuse") => OnStoreError::Refuse,
        Some("local") => OnStoreError::Local,
        Some(_) => return Err(t.err_on("on_store_error", ErrorKind::OneOf(&["refuse", "local"]))),
    };
    if on_store_error == OnStoreError::Local && !audience {
        return Err(t.err_on(
            "on_store_error",
            ErrorKind::Rule(
                "\"local\" requires [tickets] audience: without it a ticket could be used once on every relay while the store is down",
            ),
        ));
    }
    let lease = t.opt("lease", Field::duration)?.unwrap_or(DEFAULT_LEASE);
    if lease < Duration::from_secs(1) || lease > Duration::from_secs(3600) {
        return Err(t.err_on("lease", ErrorKind::Rule("between 1s and 1h")));
    }
    let key_prefix = t.opt("key_prefix", Field::str)?.unwrap_or(DEFAULT_PREFIX);
    if key_prefix.len() > 64 || key_prefix.chars().any(|c| c.is_control() || c == ' ') {
        return Err(t.err_on(
            "key_prefix",
            ErrorKind::Rule("at most 64 characters, no spaces or control characters"),
        ));
    }
    let ca = match t.get("ca_file") {
        Some(f) if !redis.tls() => {
            return Err(f.err(ErrorKind::Rule(
                "only for a TLS store (rediss:// or valkeys://)",
            )))
        }
        Some(f) => Some(FleetCa::File {
            path: f.path_buf()?,
            site: f.site(),
        }),
        None => None,
    };
    Ok(FleetConfig {
        redis,
        relay_id,
        on_store_error,
        lease,
        key_prefix: key_prefix.to_string(),
        ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[tickets]\nkeys = [{ id = \"k1\", secret = \"+Zk/OZaZj71MopmacevP/LMU28iqsoxSXd0O+BzYJv0=\" }]\n[upstreams.d]\nkind = \"demo\"\n";

    fn parse(text: &str) -> Result<Option<FleetConfig>, String> {
        crate::config::parse(&format!("{text}\n{BASE}"))
            .map(|p| p.fleet)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_defaults_and_errors() {
        assert!(parse("").unwrap().is_none());
        let c = parse("[fleet]\nredis = \"redis://127.0.0.1:6379/0\"")
            .unwrap()
            .unwrap();
        assert_eq!(c.relay_id, None);
        assert_eq!(c.on_store_error, OnStoreError::Refuse);
        assert_eq!(c.lease, Duration::from_secs(15));
        assert_eq!(c.key_prefix, "nexor:");
        assert!(!c.redis.tls());
        let text = "[fleet]\nredis = \"rediss://u:pw@r.example:6380/1\"\nrelay_id = \"relay-1\"\non_store_error = \"local\"\nlease = \"3s\"\nkey_prefix = \"x:\"";
        let full = format!(
            "{}{text}",
            BASE.replace("[tickets]\n", "[tickets]\naudience = \"relay-1\"\n")
        );
        let c = crate::config::parse(&full).unwrap().fleet.unwrap();
        assert_eq!(c.relay_id.as_deref(), Some("relay-1"));
        assert_eq!(c.on_store_error, OnStoreError::Local);
        assert_eq!(c.lease, Duration::from_secs(3));
        assert!(c.redis.tls());
        assert!(c.ca.is_none());
        assert!(!format!("{c:?}").contains("pw@"));
        let c = parse("[fleet]\nredis = \"rediss://h:6380\"\nca_file = \"ca.pem\"")
            .unwrap()
            .unwrap();
        assert!(
            matches!(c.ca, Some(FleetCa::File { ref path, .. }) if path.to_str() == Some("ca.pem"))
        );
        for (text, want) in [
            ("[fleet]", "fleet.redis: required"),
            ("[fleet]\nredis = \"http://x\"", "fleet.redis: a Redis URL"),
            ("[fleet]\nredis = 5", "fleet.redis: expected a string"),
            (
                "[fleet]\nredis = \"redis://h\"\nrelay_id = \"a|b\"",
                "fleet.relay_id: 1 to 64",
            ),
            (
                "[fleet]\nredis = \"redis://h\"\non_store_error = \"maybe\"",
                "fleet.on_store_error: expected one of",
            ),
            (
                "[fleet]\nredis = \"redis://h\"\non_store_error = \"local\"",
                "fleet.on_store_error: \"local\" requires [tickets] audience",
            ),
            (
                "[fleet]\nredis = \"redis://h\"\nlease = \"15\"",
                "fleet.lease: not a duration",
            ),
            (
                "[fleet]\nredis = \"redis://h\"\nlease = \"100ms\"",
                "fleet.lease: between",
            ),
            (
                "[fleet]\nredis = \"redis://h\"\nkey_prefix = \"a b\"",
                "fleet.key_prefix",
            ),
            (
                "[fleet]\nredis = \"redis://h\"\nleas = \"1s\"",
                "fleet.leas: unknown field",
            ),
            ("fleet = 1", "fleet: expected a table"),
            (
                "[fleet]\nredis = \"redis://h\"\nca_file = \"ca.pem\"",
                "fleet.ca_file: only for a TLS store",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        // A password in a refused URL is not shown.
        let e = parse("[fleet]\nredis = \"redis://:s3cret@[bad\"").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
