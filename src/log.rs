//! Log lines on stderr: one JSON object per line, so that journald, Loki or
//! `jq` read them without a parser of ours. Values are built by callers from
//! labels, counts and addresses only; secrets never get here.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// A JSON value in a log line.
pub enum V<'a> {
    S(&'a str),
    N(u64),
    B(bool),
}

/// Writes `{"ts":..,"level":..,"msg":..,k:v,..}` to stderr in one write.
pub fn line(level: &str, msg: &str, fields: &[(&str, V<'_>)]) {
    let out = json_line(&[("level", V::S(level)), ("msg", V::S(msg))], fields);
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// `{"ts":"…",<head>,<fields>}\n` as one string.
pub fn json_line(head: &[(&str, V<'_>)], fields: &[(&str, V<'_>)]) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"ts\":\"");
    out.push_str(&timestamp());
    out.push('"');
    for (k, v) in head.iter().chain(fields) {
        out.push(',');
        quote(&mut out, k);
        out.push(':');
        match v {
            V::S(s) => quote(&mut out, s),
            V::N(n) => {
                let _ = write!(out, "{n}");
            }
            V::B(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
    out.push_str("}\n");
    out
}

pub fn info(msg: &str, fields: &[(&str, V<'_>)]) {
    line("info", msg, fields);
}

pub fn warn(msg: &str, fields: &[(&str, V<'_>)]) {
    line("warn", msg, fields);
}

pub fn error(msg: &str, fields: &[(&str, V<'_>)]) {
    line("error", msg, fields);
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with milliseconds, without a date crate.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_what_json_needs() {
        let mut s = String::new();
        super::quote(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\u000ad\u0001""#);
        let ts = super::timestamp();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z'));
    }
}
