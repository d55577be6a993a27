//! Walking the TOML tree for the pure phase (src/config/mod.rs): each value
//! with its key path and position, typed reads whose errors are an
//! [`ErrorKind`] at that place, and tables that refuse unknown keys.
//! toml_edit gives the tree with the spans of keys and values; its error
//! messages are never used.

use std::path::PathBuf;
use std::time::Duration;

use toml_edit::{ArrayOfTables, Item, Table, Value};

use super::{parse_duration, parse_size, ConfigError, ErrorKind, Pos, Site};

/// Longest name from the file shown in a key path; longer names, and names
/// with characters other than `A-Z a-z 0-9 _ -`, show as [`HIDDEN_NAME`]
/// (the position still says where): a secret pasted where a key belongs is
/// not printed back.
pub const MAX_SHOWN_NAME: usize = 32;

/// Stands for a name from the file that is not shown (see [`MAX_SHOWN_NAME`]).
pub const HIDDEN_NAME: &str = "…";

/// A name from the file as a key path shows it.
fn shown(name: &str) -> &str {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.is_empty() && name.len() <= MAX_SHOWN_NAME && name.chars().all(plain) {
        name
    } else {
        HIDDEN_NAME
    }
}

pub(super) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        shown(name).to_string()
    } else {
        format!("{path}.{}", shown(name))
    }
}

/// The text, for the line and column of a byte offset.
pub(super) struct Src {
    text: String,
    line_starts: Vec<usize>,
}

impl Src {
    pub(super) fn new(text: &str) -> Src {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Src {
            text: text.to_string(),
            line_starts,
        }
    }

    pub(super) fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Node<'a> {
    Value(&'a Value),
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
}

impl<'a> Node<'a> {
    fn of(item: &'a Item) -> Option<Node<'a>> {
        match item {
            Item::None => None,
            Item::Value(v) => Some(Node::Value(v)),
            Item::Table(t) => Some(Node::Table(t)),
            Item::ArrayOfTables(a) => Some(Node::Tables(a)),
        }
    }

    fn start(self) -> Option<usize> {
        match self {
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
            Node::Tables(a) => a.span(),
        }
        .map(|s| s.start)
    }

    fn type_name(self) -> &'static str {
        match self {
            Node::Value(Value::String(_)) => "a string",
            Node::Value(Value::Integer(_)) => "an integer",
            Node::Value(Value::Float(_)) => "a float",
            Node::Value(Value::Boolean(_)) => "a boolean",
            Node::Value(Value::Datetime(_)) => "a date-time",
            Node::Value(Value::Array(_)) | Node::Tables(_) => "an array",
            Node::Value(Value::InlineTable(_)) | Node::Table(_) => "a table",
        }
    }
}

/// A value and where it is: its key path and position.
#[derive(Clone)]
pub(super) struct Field<'a> {
    pub(super) src: &'a Src,
    pub(super) path: String,
    pub(super) at: Option<usize>,
    pub(super) node: Node<'a>,
}

impl<'a> Field<'a> {
    pub(super) fn site(&self) -> Site {
        Site {
            key: self.path.clone(),
            at: self.at.map(|o| self.src.pos(o)),
        }
    }

    pub(super) fn err(&self, kind: ErrorKind) -> ConfigError {
        self.site().error(kind)
    }

    pub(super) fn wrong(&self, expected: &'static str) -> ConfigError {
        self.err(ErrorKind::WrongType {
            expected,
            found: self.node.type_name(),
        })
    }

    pub(super) fn str(&self) -> Result<&'a str, ConfigError> {
        match self.node {
            Node::Value(Value::String(s)) => Ok(s.value()),
            _ => Err(self.wrong("a string")),
        }
    }

    pub(super) fn bool(&self) -> Result<bool, ConfigError> {
        match self.node {
            Node::Value(Value::Boolean(b)) => Ok(*b.value()),
            _ => Err(self.wrong("a boolean")),
        }
    }

    /// A whole number from 0 to `T::MAX`.
    pub(super) fn uint<T: TryFrom<i64> + Into<u64>>(&self, max: T) -> Result<T, ConfigError> {
        match self.node {
            Node::Value(Value::Integer(i)) => {
                T::try_from(*i.value()).map_err(|_| self.err(ErrorKind::Whole { max: max.into() }))
            }
            _ => Err(self.wrong("an integer")),
        }
    }

    pub(super) fn count(&self) -> Result<usize, ConfigError> {
        self.uint(u32::MAX).map(|n| n as usize)
    }

    pub(super) fn duration(&self) -> Result<Duration, ConfigError> {
        parse_duration(self.str()?).map_err(|k| self.err(k))
    }

    pub(super) fn size(&self) -> Result<u64, ConfigError> {
        match self.node {
            Node::Value(Value::String(s)) => parse_size(s.value()).map_err(|k| self.err(k)),
            Node::Value(Value::Integer(_)) => self.uint(u64::MAX),
            _ => Err(self.wrong("a size")),
        }
    }

    pub(super) fn path_buf(&self) -> Result<PathBuf, ConfigError> {
        self.str().map(PathBuf::from)
    }

    /// The elements of an array (or of an array of tables).
    pub(super) fn array(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        let item = |i: usize, node: Node<'a>| Field {
            src: self.src,
            path: format!("{}[{i}]", self.path),
            at: node.start().or(self.at),
            node,
        };
        match self.node {
            Node::Value(Value::Array(a)) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, v)| item(i, Node::Value(v)))
                .collect()),
            Node::Tables(a) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, t)| item(i, Node::Table(t)))
                .collect()),
            _ => Err(self.wrong("an array")),
        }
    }

    pub(super) fn strings(&self) -> Result<Vec<(Field<'a>, &'a str)>, ConfigError> {
        self.array()?
            .into_iter()
            .map(|f| f.str().map(|s| (f.clone(), s)))
            .collect()
    }

    /// A table whose keys must be among `known` (`None`: any name, as in
    /// `[upstreams]`); the first other key is refused, naming it.
    pub(super) fn table(&self, known: Option<&[&str]>) -> Result<Tbl<'a>, ConfigError> {
        let mut entries = Vec::new();
        let mut add = |name: &'a str, key_at: Option<usize>, node: Node<'a>| {
            let f = Field {
                src: self.src,
                path: join(&self.path, name),
                at: node.start().or(key_at).or(self.at),
                node,
            };
            if known.is_some_and(|k| !k.contains(&name)) {
                let at = key_at.or(f.at).map(|o| self.src.pos(o));
                return Err(ConfigError::new(f.path, at, ErrorKind::UnknownKey));
            }
            entries.push((name, f));
            Ok(())
        };
        match self.node {
            Node::Table(t) => {
                for (name, item) in t.iter() {
                    let key_at = t.key(name).and_then(|k| k.span()).map(|s| s.start);
                    if let Some(node) = Node::of(item) {
                        add(name, key_at, node)?;
                    }
                }
            }
            Node::Value(Value::InlineTable(t)) => {
                for (name, v) in t.iter() {
                    let key_at = t.key(name).and_then(|k| k.span()).map(|s| s.start);
                    add(name, key_at, Node::Value(v))?;
                }
            }
            _ => return Err(self.wrong("a table")),
        }
        Ok(Tbl {
            src: self.src,
            path: self.path.clone(),
            at: self.at,
            entries,
        })
    }
}

/// A table's entries, in file order.
pub(super) struct Tbl<'a> {
    src: &'a Src,
    pub(super) path: String,
    at: Option<usize>,
    pub(super) entries: Vec<(&'a str, Field<'a>)>,
}

impl<'a> Tbl<'a> {
    pub(super) fn empty(src: &'a Src, path: &str) -> Tbl<'a> {
        Tbl {
            src,
            path: path.to_string(),
            at: None,
            entries: Vec::new(),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Field<'a>> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// `f` of the value, if the key is there.
    pub(super) fn opt<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Field<'a>) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        self.get(name).map(f).transpose()
    }

    /// The value, or a [`ErrorKind::Required`] (or `RequiredFor`) error.
    pub(super) fn need(&self, name: &str, kind: ErrorKind) -> Result<&Field<'a>, ConfigError> {
        self.get(name).ok_or_else(|| self.err_at(name, kind))
    }

    /// An error about key `name` of this table, placed at the table.
    pub(super) fn err_at(&self, name: &str, kind: ErrorKind) -> ConfigError {
        ConfigError::new(
            join(&self.path, name),
            self.at.map(|o| self.src.pos(o)),
            kind,
        )
    }

    /// An error about key `name`, placed at its value if it is there.
    pub(super) fn err_on(&self, name: &str, kind: ErrorKind) -> ConfigError {
        match self.get(name) {
            Some(f) => f.err(kind),
            None => self.err_at(name, kind),
        }
    }

    pub(super) fn sub(&self, name: &str, known: &[&str]) -> Result<Tbl<'a>, ConfigError> {
        match self.get(name) {
            Some(f) => f.table(Some(known)),
            None => Ok(Tbl::empty(self.src, &join(&self.path, name))),
        }
    }
}
