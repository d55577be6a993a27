//! Log lines on stderr: one JSON object per line, so that journald, Loki or
//! `jq` read them without a parser of ours. Values are built by callers from
//! labels, counts and addresses only; secrets never get here.
//!
//! No worker ever waits for a reader: log and audit lines go through a bounded
//! queue ([`Writer`], [`QUEUE_LINES`] lines) to a writer thread per stream. When
//! the reader stalls (a full stdout/stderr pipe, a slow disk) and the queue is
//! full, lines are dropped and counted (`nexor_log_lines_dropped_total{stream}`);
//! once a write gets through again, the writer adds one line saying how many were
//! dropped. [`flush`] (at exit) waits, boundedly, until what was queued is written.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A JSON value in a log line.
pub enum V<'a> {
    S(&'a str),
    N(u64),
    B(bool),
}

/// Queues `{"ts":..,"level":..,"msg":..,k:v,..}` for stderr (one write); never blocks.
pub fn line(level: &str, msg: &str, fields: &[(&str, V<'_>)]) {
    let out = json_line(&[("level", V::S(level)), ("msg", V::S(msg))], fields);
    match log_writer() {
        Some(w) => w.send(out),
        // No thread could be started: write in place rather than lose the line.
        None => {
            let _ = std::io::stderr().lock().write_all(out.as_bytes());
        }
    }
}

/// Lines a stream's queue holds before new ones are dropped (a few MB at most).
pub const QUEUE_LINES: usize = 8192;

/// How long [`flush`] waits for a stalled reader before giving up.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The streams, as the metric labels them.
pub const STREAMS: [&str; 2] = ["log", "audit"];
static DROPPED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Lines dropped since start, per [`STREAMS`] entry.
pub fn dropped() -> [(&'static str, u64); 2] {
    [0, 1].map(|i| (STREAMS[i], DROPPED[i].load(Ordering::Relaxed)))
}

/// Where a stream's writer thread writes.
pub enum Sink {
    Stdout,
    Stderr,
    File(File),
}

/// How long a writer lets lines gather after a write (see [`Writer::spawn`]).
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Writes and empties `batch`; false if the write failed.
fn flush_batch(sink: &mut Sink, batch: &mut Vec<u8>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let ok = sink.write(batch).is_ok();
    batch.clear();
    batch.shrink_to(64 * 1024);
    ok
}

impl Sink {
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(line),
            Sink::Stderr => std::io::stderr().lock().write_all(line),
            Sink::File(f) => f.write_all(line),
        }
    }
}

enum Msg {
    Line(String),
    Sink(Sink),
    Flush(mpsc::Sender<()>),
}

/// A bounded queue to one writer thread. Sending never blocks: a full queue
/// drops the line and counts it.
pub struct Writer {
    tx: SyncSender<Msg>,
    stream: usize,
}

impl Writer {
    /// Starts the writer thread for `stream` (an index into [`STREAMS`]).
    pub fn spawn(stream: usize, sink: Sink) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(queue_lines());
        std::thread::Builder::new()
            .name(format!("nexor-{}-writer", STREAMS[stream]))
            .spawn(move || {
                let mut sink = sink;
                let mut reported = DROPPED[stream].load(Ordering::Relaxed);
                let mut batch = Vec::with_capacity(64 * 1024);
                loop {
                    let first = match rx.recv_timeout(Duration::from_millis(500)) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    // Everything queued now goes out in one write.
                    let mut wrote = true;
                    let mut lines = false;
                    for msg in first
                        .into_iter()
                        .chain(std::iter::from_fn(|| rx.try_recv().ok()))
                    {
                        match msg {
                            Msg::Line(l) => {
                                batch.extend_from_slice(l.as_bytes());
                                lines = true;
                            }
                            Msg::Sink(s) => {
                                wrote &= flush_batch(&mut sink, &mut batch);
                                sink = s;
                            }
                            Msg::Flush(done) => {
                                wrote &= flush_batch(&mut sink, &mut batch);
                                let _ = done.send(());
                            }
                        }
                    }
                    wrote &= flush_batch(&mut sink, &mut batch);
                    // The reader is back (a write got through): say once what was lost.
                    let now = DROPPED[stream].load(Ordering::Relaxed);
                    if wrote && now > reported {
                        let _ = sink.write(dropped_line(stream, now - reported).as_bytes());
                        reported = now;
                    }
                    if lines {
                        // Let lines gather: one wake-up and one write per
                        // pause, not per line (a worker's send wakes this
                        // thread only while it waits in `recv`).
                        std::thread::sleep(BATCH_PAUSE);
                    }
                }
            })?;
        Ok(Writer { tx, stream })
    }

    /// Queues `line`; drops and counts it when the queue is full.
    pub fn send(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            DROPPED[self.stream].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Replaces the sink after the lines queued before it are written (SIGHUP reopen).
    /// Waits for room, at most [`FLUSH_TIMEOUT`] (the signal thread, never a worker).
    pub fn set_sink(&self, sink: Sink) {
        let _ = self.send_waiting(Msg::Sink(sink));
    }

    /// Waits until every line queued before this call is written, at most
    /// `timeout` (a reader that never returns must not keep the process alive).
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = mpsc::channel();
        let start = std::time::Instant::now();
        if self.send_waiting(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout.saturating_sub(start.elapsed()));
        }
    }

    fn send_waiting(&self, mut msg: Msg) -> Result<(), ()> {
        let start = std::time::Instant::now();
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => return Err(()),
                Err(TrySendError::Full(m)) if start.elapsed() < FLUSH_TIMEOUT => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(()),
            }
        }
    }
}

/// [`QUEUE_LINES`]; debug builds take `NEXOR_TEST_LOG_QUEUE=N` so a test can fill
/// the queue with a few hundred lines (tests/ops.rs).
fn queue_lines() -> usize {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("NEXOR_TEST_LOG_QUEUE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    QUEUE_LINES
}

/// The one line that reports a gap, in the stream's own shape.
fn dropped_line(stream: usize, count: u64) -> String {
    let total = DROPPED[stream].load(Ordering::Relaxed);
    let fields = [
        ("stream", V::S(STREAMS[stream])),
        ("count", V::N(count)),
        ("total", V::N(total)),
    ];
    if STREAMS[stream] == "audit" {
        json_line(&[("event", V::S("lines_dropped"))], &fields)
    } else {
        json_line(
            &[
                ("level", V::S("warn")),
                ("msg", V::S("log lines dropped: the reader stalled")),
            ],
            &fields,
        )
    }
}

fn log_writer() -> Option<&'static Writer> {
    static W: OnceLock<Option<Writer>> = OnceLock::new();
    W.get_or_init(|| Writer::spawn(0, Sink::Stderr).ok())
        .as_ref()
}

/// Waits (at most `timeout`) until the log lines queued so far are written.
pub fn flush(timeout: Duration) {
    if let Some(w) = log_writer() {
        w.flush(timeout);
    }
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
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`): log timestamps and
/// recording file names, without a date crate.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
