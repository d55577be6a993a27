//! Config errors: a position, the dotted key path and an [`ErrorKind`]
//! with a fixed message. Nothing else goes in: not the TOML parser's
//! message (it quotes the source line), not the value at fault. So no
//! secret from the file can reach an error, a log line or `check-config`'s
//! output, whatever the input (the `config` fuzz target checks it).

use std::fmt;
use std::path::PathBuf;

use crate::ticket::KeyError;

/// A place in the config file, 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// Why the config was refused. `Copy`, so it cannot hold text from the
/// file: its data are numbers and strings fixed in this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not TOML (the position says where).
    Syntax,
    /// A key this table does not have.
    UnknownKey,
    /// The value has the wrong TOML type.
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    /// A required key is missing.
    Required,
    /// Required for this kind of upstream.
    RequiredFor(&'static str),
    /// Not valid for this kind of upstream.
    NotForKind(&'static str),
    /// Not a duration (`"250ms"`, `"30s"`, `"5m"`, `"8h"`, `"1d"`).
    Duration,
    /// A duration beyond what the relay can count.
    DurationTooLong,
    /// Not a size (bytes or `"64KiB"`, `"1MiB"`).
    Size,
    /// A size beyond what the relay can count.
    SizeTooLarge,
    /// An integer outside `0..=max`.
    Whole { max: u64 },
    /// Zero where only a positive value makes sense.
    NotZero,
    /// A string outside a fixed set.
    OneOf(&'static [&'static str]),
    /// A rule of this key, explained.
    Rule(&'static str),
    /// A ticket key the ticket module refused (never carries the secret).
    Key(KeyError),
    /// A ticket key anybody can know.
    WellKnownKey,
    /// Glue: a file (named in [`ConfigError::file`]) could not be read.
    CannotRead(std::io::ErrorKind),
    /// Glue: a host name that does not resolve.
    Unresolvable,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Syntax => {
                f.write_str("not valid TOML here (a syntax error, or a key or table given twice)")
            }
            ErrorKind::UnknownKey => f.write_str("unknown field (config/relay.toml lists every key)"),
            ErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::Required => f.write_str("required"),
            ErrorKind::RequiredFor(kind) => write!(f, "required for kind \"{kind}\""),
            ErrorKind::NotForKind(kind) => write!(f, "not valid for kind \"{kind}\""),
            ErrorKind::Duration => f.write_str(
                "not a duration: a whole number and a unit (ms, s, m, h, d), e.g. \"30s\"",
            ),
            ErrorKind::DurationTooLong => f.write_str("duration too long"),
            ErrorKind::Size => f.write_str(
                "not a size: bytes, or a whole number and a unit (B, KiB, MiB, GiB), e.g. \"64KiB\"",
            ),
            ErrorKind::SizeTooLarge => f.write_str("size too large"),
            ErrorKind::Whole { max } => write!(f, "expected a whole number from 0 to {max}"),
            ErrorKind::NotZero => f.write_str("must be above zero"),
            ErrorKind::OneOf(allowed) => {
                f.write_str("expected one of ")?;
                for (i, a) in allowed.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "\"{a}\"")?;
                }
                Ok(())
            }
            ErrorKind::Rule(rule) => f.write_str(rule),
            ErrorKind::Key(e) => write!(f, "{e}"),
            ErrorKind::WellKnownKey => f.write_str(
                "the secret is a published sample (all one byte, a counting run, or an example from these docs): anybody could sign tickets with it; make one with `openssl rand -base64 32`",
            ),
            ErrorKind::CannotRead(e) => write!(f, "cannot read the file: {e}"),
            ErrorKind::Unresolvable => f.write_str("the host name does not resolve to an address"),
        }
    }
}

/// A config error: where, which key, what kind.
///
/// Display: `line 3, column 10: server.listen: expected an ip:port, …`.
/// `key` is "" for the whole file (a syntax error, an unreadable file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key path (`upstreams.lab.addr`, `tickets.keys[0].secret`).
    /// Names from the file (an upstream, an unknown key) appear as written
    /// when they are plain (see [`super::HIDDEN_NAME`]).
    pub key: String,
    /// Where in the file, when the error has a place.
    pub at: Option<Pos>,
    pub kind: ErrorKind,
    /// Glue only: the file that could not be read (a path is not a secret).
    pub file: Option<PathBuf>,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, at: Option<Pos>, kind: ErrorKind) -> ConfigError {
        ConfigError {
            key: key.into(),
            at,
            kind,
            file: None,
        }
    }

    /// The explanation alone, without position and key.
    pub fn message(&self) -> String {
        match (self.kind, &self.file) {
            (ErrorKind::CannotRead(e), Some(p)) => {
                // One line whatever the path holds.
                let path: String = p
                    .display()
                    .to_string()
                    .chars()
                    .flat_map(|c| {
                        let esc: Vec<char> = if c.is_control() {
                            c.escape_default().collect()
                        } else {
                            vec![c]
                        };
                        esc
                    })
                    .collect();
                format!("cannot read {path}: {e}")
            }
            (kind, _) => kind.to_string(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.at {
            write!(f, "line {}, column {}: ", p.line, p.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message())
    }
}

impl std::error::Error for ConfigError {}
