//! The audit trail: one JSON line when a session starts, one when it ends
//! (session id, SHA-256 of the `jti` — never the ticket —, `sub`,
//! upstream and VM, console kind, client IP, bytes each way, duration,
//! close code and reason), and one per refused handshake with its reason
//! and client IP, rate-limited so a flood cannot fill the disk.
//!
//! Output: stdout (default), stderr, or a file opened for append and
//! reopened on SIGHUP (for logrotate). Lines go through a bounded queue to a
//! writer thread (src/log.rs [`Writer`]): a stalled reader drops and counts lines,
//! it never stalls a worker.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::log::{json_line, Sink, Writer, V};

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Output {
    pub fn parse(s: &str, base: &Path) -> Output {
        match s {
            "stdout" | "-" => Output::Stdout,
            "stderr" => Output::Stderr,
            p => Output::File(if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                base.join(p)
            }),
        }
    }
}

struct Window {
    second: u64,
    written: u32,
    suppressed: u64,
}

pub struct Audit {
    writer: Writer,
    refused_per_second: Mutex<u32>,
    window: Mutex<Window>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open(out: &Output) -> std::io::Result<Sink> {
    Ok(match out {
        Output::Stdout => Sink::Stdout,
        Output::Stderr => Sink::Stderr,
        Output::File(p) => Sink::File(OpenOptions::new().create(true).append(true).open(p)?),
    })
}

impl Audit {
    pub fn new(out: &Output, refused_per_second: u32) -> std::io::Result<Audit> {
        Ok(Audit {
            writer: Writer::spawn(1, open(out)?)?,
            refused_per_second: Mutex::new(refused_per_second),
            window: Mutex::new(Window {
                second: 0,
                written: 0,
                suppressed: 0,
            }),
        })
    }

    /// Reopens the output (SIGHUP), e.g. after logrotate moved the file.
    pub fn reopen(&self, out: &Output, refused_per_second: u32) -> std::io::Result<()> {
        let sink = open(out)?;
        self.writer.set_sink(sink);
        *lock(&self.refused_per_second) = refused_per_second;
        Ok(())
    }

    fn write(&self, line: String) {
        self.writer.send(line);
    }

    /// Waits (at most `timeout`) until every line queued so far is written:
    /// before a normal exit, so the last `session_end` lines are not lost.
    pub fn flush(&self, timeout: Duration) {
        self.writer.flush(timeout);
    }

    /// A session event: always written.
    pub fn event(&self, event: &str, fields: &[(&str, V<'_>)]) {
        self.write(json_line(&[("event", V::S(event))], fields));
    }

    /// A refused handshake: at most `refused_per_second` lines a second;
    /// the next line written says how many were suppressed before it.
    pub fn refused(&self, now_secs: u64, fields: &[(&str, V<'_>)]) {
        let limit = *lock(&self.refused_per_second);
        let suppressed = {
            let mut w = lock(&self.window);
            if w.second != now_secs {
                w.second = now_secs;
                w.written = 0;
            }
            if limit > 0 && w.written >= limit {
                w.suppressed += 1;
                return;
            }
            w.written += 1;
            std::mem::take(&mut w.suppressed)
        };
        if suppressed > 0 {
            self.write(json_line(
                &[("event", V::S("refused_suppressed"))],
                &[("count", V::N(suppressed))],
            ));
        }
        self.write(json_line(&[("event", V::S("refused"))], fields));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_rate_limited_with_a_count_of_what_was_dropped() {
        let dir = std::env::temp_dir().join(format!("nexor-audit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("audit.log");
        let _ = std::fs::remove_file(&path);
        let a = Audit::new(&Output::File(path.clone()), 3).unwrap();
        for _ in 0..10 {
            a.refused(100, &[("reason", V::S("expired"))]);
        }
        a.refused(101, &[("reason", V::S("bad_signature"))]);
        a.event("session_start", &[("sid", V::S("0-1"))]);
        a.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("\"reason\":\"expired\""))
                .count(),
            3
        );
        assert!(
            lines[3].contains("\"event\":\"refused_suppressed\"")
                && lines[3].contains("\"count\":7")
        );
        assert!(lines[4].contains("bad_signature"));
        assert!(
            lines[5].starts_with("{\"ts\":") && lines[5].contains("\"event\":\"session_start\"")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
