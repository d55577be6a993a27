//! The `[fleet]` table (fleet mode, src/fleet). Pure: the host-name default
//! of `relay_id` is filled in by the glue (src/fleet/store.rs
//! `default_relay_id`).
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

/// The Redis URL. Its password never leaves this type in `Debug` or
/// `Display` (`redis://user:***@host:6379/0`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks the form (the client library's URL parser): `redis://`,
    /// `rediss://` (TLS), `valkey://`, `valkeys://`, `redis+unix://`,
    /// `unix://`.
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let s = s.trim();
        if redis::parse_redis_url(s).is_none() || redis::Client::open(s).is_err() {
            return Err(format!(
                "`{}` is not a Redis URL (redis://host:6379/0, rediss://… for TLS, redis+unix:///path)",
                RedisUrl(s.to_string())
            ));
        }
        Ok(RedisUrl(s.to_string()))
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
    /// None: the host name (filled in by the glue).
    pub relay_id: Option<String>,
    pub on_store_error: OnStoreError,
    pub lease: Duration,
    pub key_prefix: String,
}

pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
pub const DEFAULT_PREFIX: &str = "nexor:";

/// A `[fleet]` error: the dotted key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for FleetConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn err(key: &str, message: impl Into<String>) -> FleetConfigError {
    FleetConfigError {
        key: format!("fleet.{key}"),
        message: message.into(),
    }
}

/// A relay id: 1 to 64 of `A-Z a-z 0-9 . _ -` (it is part of key names
/// and of the members `|` separates).
pub fn valid_relay_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn string<'a>(t: &'a toml::Table, key: &str) -> Result<Option<&'a str>, FleetConfigError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(key, "expected a string")),
    }
}

impl FleetConfig {
    /// Parses the `[fleet]` table. `audience`: whether `[tickets]
    /// audience` is set (`on_store_error = "local"` needs it).
    pub fn parse(v: &toml::Value, audience: bool) -> Result<FleetConfig, FleetConfigError> {
        let toml::Value::Table(t) = v else {
            return Err(FleetConfigError {
                key: "fleet".into(),
                message: "expected a table".into(),
            });
        };
        for k in t.keys() {
            if !matches!(
                k.as_str(),
                "redis" | "relay_id" | "on_store_error" | "lease" | "key_prefix"
            ) {
                return Err(err(
                    k,
                    "unknown key (redis, relay_id, on_store_error, lease, key_prefix)",
                ));
            }
        }
        let redis = string(t, "redis")?.ok_or_else(|| {
            err(
                "redis",
                "required: the store's URL, e.g. \"redis://127.0.0.1:6379/0\"",
            )
        })?;
        let redis = RedisUrl::parse(redis).map_err(|m| err("redis", m))?;
        let relay_id = match string(t, "relay_id")? {
            Some(id) if valid_relay_id(id) => Some(id.to_string()),
            Some(_) => return Err(err("relay_id", "1 to 64 of A-Z a-z 0-9 . _ -")),
            None => None,
        };
        let on_store_error = match string(t, "on_store_error")? {
            None | Some("refuse") => OnStoreError::Refuse,
            Some("local") => OnStoreError::Local,
            Some(other) => {
                return Err(err(
                    "on_store_error",
                    format!("`{other}`: \"refuse\" or \"local\""),
                ))
            }
        };
        if on_store_error == OnStoreError::Local && !audience {
            return Err(err(
                "on_store_error",
                "\"local\" requires [tickets] audience: without it a ticket could be used once on every relay while the store is down",
            ));
        }
        let lease = match string(t, "lease")? {
            Some(s) => super::parse_duration(s).map_err(|m| err("lease", m))?,
            None => DEFAULT_LEASE,
        };
        if lease < Duration::from_secs(1) || lease > Duration::from_secs(3600) {
            return Err(err("lease", "between 1s and 1h"));
        }
        let key_prefix = string(t, "key_prefix")?.unwrap_or(DEFAULT_PREFIX);
        if key_prefix.len() > 64 || key_prefix.chars().any(|c| c.is_control() || c == ' ') {
            return Err(err(
                "key_prefix",
                "at most 64 characters, no spaces or control characters",
            ));
        }
        Ok(FleetConfig {
            redis,
            relay_id,
            on_store_error,
            lease,
            key_prefix: key_prefix.to_string(),
        })
    }
}
