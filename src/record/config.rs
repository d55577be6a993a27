//! `[recording]` and `[upstreams.X] record`, parsed from the TOML value
//! (docs/recording.md). Errors name the key (`recording.max_bytes`, …);
//! src/config wraps them in its `ConfigError`.
//!
//! ```toml
//! [recording]
//! dir = "/var/lib/nexor-relay/recordings"
//! max_bytes = "512MiB"     # per recording; past it the recording stops, marked truncated
//! required = false         # true: a session whose recording cannot be opened is refused (503)
//!
//! [upstreams.pve]
//! record = "always"        # or "ticket" (default): only tickets with "record": true
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Default cap of one recording file.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// `[recording]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingConfig {
    /// Where recordings are written (`NAME.part` until closed).
    pub dir: PathBuf,
    /// Per recording; past it the recording stops, marked truncated.
    pub max_bytes: u64,
    /// A session whose recording cannot be opened is refused (503).
    pub required: bool,
}

/// What the relay records: the store (if configured) and the upstreams
/// that record every session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recording {
    pub store: Option<RecordingConfig>,
    /// Upstreams with `record = "always"`.
    pub always: BTreeSet<String>,
}

impl Recording {
    /// Whether a session on `upstream` is recorded (ticket claim `record`).
    pub fn wanted(&self, upstream: &str, claim: bool) -> bool {
        claim || self.always.contains(upstream)
    }
}

/// A config error: the key at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> KeyError {
    KeyError {
        key: key.into(),
        message: message.into(),
    }
}

/// A size: bytes, or a string with a unit (`"512MiB"`).
fn size(key: &str, v: &toml::Value) -> Result<u64, KeyError> {
    let text = match v {
        toml::Value::Integer(n) if *n > 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim(),
        _ => return Err(err(key, "a size: bytes or e.g. \"512MiB\"")),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| err(key, format!("`{text}` is not a size (e.g. \"512MiB\")")))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(err(
                key,
                format!("`{text}`: unknown unit `{other}` (B, KiB, MiB, GiB, TiB)"),
            ))
        }
    };
    match n.checked_mul(mult) {
        Some(0) => Err(err(key, "must be more than 0")),
        Some(b) => Ok(b),
        None => Err(err(key, format!("`{text}` is too large"))),
    }
}

/// Parses `[recording]` (`table`, absent: no store) and each upstream's
/// `record` (`modes`: name → value). Relative `dir`s are taken from `base`.
pub fn parse(
    table: Option<&toml::Value>,
    modes: &[(String, Option<String>)],
    base: &Path,
) -> Result<Recording, KeyError> {
    let store = match table {
        None => None,
        Some(toml::Value::Table(t)) => {
            for k in t.keys() {
                if !matches!(k.as_str(), "dir" | "max_bytes" | "required") {
                    return Err(err(
                        &format!("recording.{k}"),
                        "unknown key (dir, max_bytes, required)",
                    ));
                }
            }
            let dir = match t.get("dir") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => base.join(s.trim()),
                Some(_) => return Err(err("recording.dir", "a directory path (a string)")),
                None => return Err(err("recording.dir", "required in [recording]")),
            };
            let max_bytes = match t.get("max_bytes") {
                Some(v) => size("recording.max_bytes", v)?,
                None => DEFAULT_MAX_BYTES,
            };
            let required = match t.get("required") {
                Some(toml::Value::Boolean(b)) => *b,
                Some(_) => return Err(err("recording.required", "true or false")),
                None => false,
            };
            Some(RecordingConfig {
                dir,
                max_bytes,
                required,
            })
        }
        Some(_) => return Err(err("recording", "must be a table: [recording]")),
    };
    let mut always = BTreeSet::new();
    for (name, mode) in modes {
        let key = format!("upstreams.{name}.record");
        match mode.as_deref() {
            None | Some("ticket") => {}
            Some("always") => {
                if store.is_none() {
                    return Err(err(&key, "\"always\" needs [recording] dir"));
                }
                always.insert(name.clone());
            }
            Some(other) => {
                return Err(err(
                    &key,
                    format!("unknown value \"{other}\" (\"ticket\" or \"always\")"),
                ))
            }
        }
    }
    Ok(Recording { store, always })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Value {
        let v: toml::Value = toml::from_str(text).unwrap();
        v["recording"].clone()
    }

    #[test]
    fn defaults_and_units() {
        let r = parse(
            Some(&table("[recording]\ndir = \"rec\"")),
            &[],
            Path::new("/etc/nexor"),
        )
        .unwrap();
        assert_eq!(
            r.store,
            Some(RecordingConfig {
                dir: PathBuf::from("/etc/nexor/rec"),
                max_bytes: 512 << 20,
                required: false,
            })
        );
        let r = parse(
            Some(&table(
                "[recording]\ndir = \"/r\"\nmax_bytes = \"64KiB\"\nrequired = true",
            )),
            &[("pve".into(), Some("always".into())), ("d".into(), None)],
            Path::new("/"),
        )
        .unwrap();
        let s = r.store.as_ref().unwrap();
        assert_eq!((s.max_bytes, s.required), (64 << 10, true));
        assert!(r.wanted("pve", false) && !r.wanted("d", false) && r.wanted("d", true));
        let r = parse(
            Some(&table("[recording]\ndir = \"/r\"\nmax_bytes = 4096")),
            &[],
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(r.store.unwrap().max_bytes, 4096);
    }

    #[test]
    fn config_reads_recording_and_upstream_record() {
        let key = "+Zk/OZaZj71MopmacevP/LMU28iqsoxSXd0O+BzYJv0=";
        let text = format!(
            "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{key}\" }}]\n\
[upstreams.d]\nkind = \"demo\"\nrecord = \"always\"\n[upstreams.t]\nkind = \"tcp\"\naddr = \"127.0.0.1:1\"\n\
[recording]\ndir = \"rec\"\nrequired = true\n"
        );
        let c = crate::config::Config::from_toml(&text, Path::new("/srv")).unwrap();
        let s = c.recording.store.as_ref().unwrap();
        assert_eq!((s.dir.as_path(), s.required), (Path::new("/srv/rec"), true));
        assert!(c.recording.wanted("d", false) && !c.recording.wanted("t", false));
        let bad = text.replace("required = true", "max_bytes = \"lots\"");
        let e = crate::config::Config::from_toml(&bad, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "recording.max_bytes");
        let none = text.replace("[recording]\ndir = \"rec\"\nrequired = true\n", "");
        let e = crate::config::Config::from_toml(&none, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "upstreams.d.record");
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(String, Option<String>)], &'a str);
        let cases: &[Case] = &[
            ("[recording]\nmax_bytes = \"1MiB\"", &[], "recording.dir"),
            ("[recording]\ndir = 3", &[], "recording.dir"),
            (
                "[recording]\ndir = \"/r\"\nmax_bytes = \"1 PB\"",
                &[],
                "recording.max_bytes",
            ),
            (
                "[recording]\ndir = \"/r\"\nmax_bytes = 0",
                &[],
                "recording.max_bytes",
            ),
            (
                "[recording]\ndir = \"/r\"\nrequired = \"yes\"",
                &[],
                "recording.required",
            ),
            ("[recording]\ndir = \"/r\"\nfoo = 1", &[], "recording.foo"),
        ];
        for (text, modes, key) in cases {
            let e = parse(Some(&table(text)), modes, Path::new("/")).unwrap_err();
            assert_eq!(e.key, *key, "{text}: {e:?}");
        }
        let e = parse(None, &[("x".into(), Some("always".into()))], Path::new("/")).unwrap_err();
        assert_eq!(e.key, "upstreams.x.record");
        let e = parse(
            Some(&table("[recording]\ndir = \"/r\"")),
            &[("x".into(), Some("sometimes".into()))],
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.key, "upstreams.x.record");
    }
}
