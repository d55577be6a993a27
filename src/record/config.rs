//! What `[recording]` and `[upstreams.X] record` configure
//! (docs/recording.md). The pure config parse (src/config/mod.rs,
//! `recording`) reads them; errors name the key (`recording.max_bytes`, …).
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
use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
    use crate::config::{parse, Config, ErrorKind};
    use std::path::Path;

    const KEY: &str = "+Zk/OZaZj71MopmacevP/LMU28iqsoxSXd0O+BzYJv0=";

    fn text(upstreams: &str, recording: &str) -> String {
        format!(
            "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n{upstreams}\n{recording}\n"
        )
    }

    #[test]
    fn defaults_units_and_relative_dir() {
        let ups = "[upstreams.d]\nkind = \"demo\"\nrecord = \"always\"\n[upstreams.t]\nkind = \"demo\"\nrecord = \"ticket\"\n[upstreams.u]\nkind = \"demo\"";
        let c =
            Config::from_toml(&text(ups, "[recording]\ndir = \"rec\""), Path::new("/srv")).unwrap();
        let s = c.recording.store.as_ref().unwrap();
        assert_eq!(s.dir, Path::new("/srv/rec"));
        assert_eq!((s.max_bytes, s.required), (512 << 20, false));
        assert!(c.recording.wanted("d", false));
        assert!(!c.recording.wanted("t", false) && !c.recording.wanted("u", false));
        assert!(c.recording.wanted("u", true));
        let c = Config::from_toml(
            &text(
                ups,
                "[recording]\ndir = \"/r\"\nmax_bytes = \"64KiB\"\nrequired = true",
            ),
            Path::new("/srv"),
        )
        .unwrap();
        let s = c.recording.store.unwrap();
        assert_eq!(
            (s.dir.as_path(), s.max_bytes, s.required),
            (Path::new("/r"), 64 << 10, true)
        );
        // No [recording]: nothing recorded, unless an upstream says always.
        let c =
            Config::from_toml(&text("[upstreams.u]\nkind = \"demo\"", ""), Path::new("/")).unwrap();
        assert!(c.recording.store.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let demo = "[upstreams.d]\nkind = \"demo\"";
        let cases: [(&str, &str, &str, ErrorKind); 7] = [
            (
                demo,
                "[recording]\nmax_bytes = \"1MiB\"",
                "recording.dir",
                ErrorKind::Required,
            ),
            (
                demo,
                "[recording]\ndir = 3",
                "recording.dir",
                ErrorKind::WrongType {
                    expected: "a string",
                    found: "an integer",
                },
            ),
            (
                demo,
                "[recording]\ndir = \"/r\"\nmax_bytes = \"1 PB\"",
                "recording.max_bytes",
                ErrorKind::Size,
            ),
            (
                demo,
                "[recording]\ndir = \"/r\"\nmax_bytes = 0",
                "recording.max_bytes",
                ErrorKind::NotZero,
            ),
            (
                demo,
                "[recording]\ndir = \"/r\"\nfoo = 1",
                "recording.foo",
                ErrorKind::UnknownKey,
            ),
            (
                "[upstreams.d]\nkind = \"demo\"\nrecord = \"sometimes\"",
                "[recording]\ndir = \"/r\"",
                "upstreams.d.record",
                ErrorKind::OneOf(&["ticket", "always"]),
            ),
            (
                "[upstreams.d]\nkind = \"demo\"\nrecord = \"always\"",
                "",
                "upstreams.d.record",
                ErrorKind::Rule("\"always\" needs a [recording] dir"),
            ),
        ];
        for (ups, rec, key, kind) in cases {
            let e = parse(&text(ups, rec)).unwrap_err();
            assert_eq!((e.key.as_str(), e.kind), (key, kind), "{ups} {rec}");
        }
    }
}
