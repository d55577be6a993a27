//! Prometheus metrics. Every name is declared once, here; each worker
//! counts into its own cache-line-aligned block (no sharing on the data
//! path), and the blocks are merged when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub const SESSIONS_LIVE: &str = "nexor_sessions_live";
pub const SESSIONS_OPENED: &str = "nexor_sessions_opened_total";
pub const SESSIONS_CLOSED: &str = "nexor_sessions_closed_total";

/// The `code` label of [`SESSIONS_CLOSED`]: the codes the relay gives
/// meaning to, and `other` for the rest — a browser's close frame carries
/// any code from 3000 to 4999, and must not mint label values (series).
pub fn close_code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1006 => "1006",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        4001 => "4001",
        4002 => "4002",
        4003 => "4003",
        _ => "other",
    }
}
pub const SESSIONS_REFUSED: &str = "nexor_sessions_refused_total";
pub const BYTES: &str = "nexor_bytes_total";
pub const SESSION_DURATION: &str = "nexor_session_duration_seconds";
pub const UPSTREAM_CONNECT: &str = "nexor_upstream_connect_seconds";
pub const WORKER_INFO: &str = "nexor_worker_info";
pub const DRAINING: &str = "nexor_draining";
pub const RELOADS: &str = "nexor_config_reloads_total";
pub const BUILD_INFO: &str = "nexor_build_info";
pub const SESSION_ERRORS: &str = "nexor_session_errors_total";
pub const SESSION_PANICS: &str = "nexor_session_panics_total";
pub const WORKERS_ALIVE: &str = "nexor_workers_alive";
pub const LOG_DROPPED: &str = "nexor_log_lines_dropped_total";

/// The classes a session that ended without a close frame from either
/// peer is counted under (the audit's `error` field starts with one).
/// A fixed list, so no peer can mint label values; anything else counts
/// as `other`.
pub const ERROR_CLASSES: &[&str] = &[
    "browser_eof",
    "browser_reset",
    "browser_tls",
    "browser_write",
    "browser_protocol",
    "browser_pong_timeout",
    "upstream_eof",
    "upstream_reset",
    "upstream_tls",
    "upstream_write",
    "upstream_protocol",
    "upstream_pong_timeout",
    "panic",
    "other",
];

/// Bucket bounds (seconds) of the session duration histogram.
const DURATION_BUCKETS: [f64; 10] = [
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4.0 * 3600.0,
    8.0 * 3600.0,
    24.0 * 3600.0,
];
/// Bucket bounds (seconds) of the upstream connect histogram.
const CONNECT_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];

/// A histogram with fixed buckets; observations are atomic adds.
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    /// Sum in microseconds (integer, so it can be atomic).
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Session counters by label, touched at session start and end only.
#[derive(Default)]
struct Labelled {
    opened: BTreeMap<(String, &'static str), u64>,
    ended: BTreeMap<(String, &'static str), u64>,
    closed: BTreeMap<&'static str, u64>,
    refused: BTreeMap<(&'static str, u16), u64>,
    errors: BTreeMap<&'static str, u64>,
}

/// One worker's counters.
#[repr(align(128))]
pub struct WorkerMetrics {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    labelled: Mutex<Labelled>,
    duration: Histogram<10>,
    connect: Histogram<10>,
    driver: Mutex<&'static str>,
    /// Session tasks that panicked (each ended its session, not the worker).
    pub panics: AtomicU64,
    /// Set while the worker thread runs its runtime; cleared if it exits
    /// or dies (`/healthz` then fails).
    pub alive: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerMetrics {
    fn new() -> WorkerMetrics {
        WorkerMetrics {
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            labelled: Mutex::new(Labelled::default()),
            duration: Histogram::new(DURATION_BUCKETS),
            connect: Histogram::new(CONNECT_BUCKETS),
            driver: Mutex::new("unknown"),
            panics: AtomicU64::new(0),
            alive: AtomicBool::new(false),
        }
    }

    /// A session ended without a close frame from either peer; `class` is
    /// one of [`ERROR_CLASSES`] (anything else counts as `other`).
    pub fn session_error(&self, class: &str) {
        let class = ERROR_CLASSES
            .iter()
            .copied()
            .find(|c| *c == class)
            .unwrap_or("other");
        *lock(&self.labelled).errors.entry(class).or_default() += 1;
    }

    /// A session task panicked.
    pub fn session_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_driver(&self, d: &'static str) {
        *lock(&self.driver) = d;
    }

    pub fn opened(&self, upstream: &str, console: &'static str, connect: Duration) {
        *lock(&self.labelled)
            .opened
            .entry((upstream.to_string(), console))
            .or_default() += 1;
        self.connect.observe(connect);
    }

    pub fn ended(&self, upstream: &str, console: &'static str, code: u16, duration: Duration) {
        let mut l = lock(&self.labelled);
        *l.ended.entry((upstream.to_string(), console)).or_default() += 1;
        *l.closed.entry(close_code_label(code)).or_default() += 1;
        drop(l);
        self.duration.observe(duration);
    }

    pub fn refused(&self, reason: &'static str, status: u16) {
        *lock(&self.labelled)
            .refused
            .entry((reason, status))
            .or_default() += 1;
    }

    #[inline]
    pub fn add_bytes(&self, up: u64, down: u64) {
        if up > 0 {
            self.bytes_up.fetch_add(up, Ordering::Relaxed);
        }
        if down > 0 {
            self.bytes_down.fetch_add(down, Ordering::Relaxed);
        }
    }
}

/// All workers' counters plus process-wide state.
pub struct Metrics {
    pub workers: Vec<WorkerMetrics>,
    pub draining: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Metrics {
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers.max(1)).map(|_| WorkerMetrics::new()).collect(),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    pub fn worker(&self, id: usize) -> &WorkerMetrics {
        &self.workers[id.min(self.workers.len() - 1)]
    }

    /// The Prometheus text exposition (format 0.0.4), cores merged.
    pub fn render(&self) -> String {
        let mut opened: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut ended: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut closed: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut refused: BTreeMap<(&'static str, u16), u64> = BTreeMap::new();
        let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (mut up, mut down, mut panics, mut alive) = (0u64, 0u64, 0u64, 0u64);
        for c in &self.workers {
            let l = lock(&c.labelled);
            for (k, v) in &l.opened {
                *opened.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &l.ended {
                *ended.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &l.closed {
                *closed.entry(*k).or_default() += v;
            }
            for (k, v) in &l.refused {
                *refused.entry(*k).or_default() += v;
            }
            for (k, v) in &l.errors {
                *errors.entry(*k).or_default() += v;
            }
            up += c.bytes_up.load(Ordering::Relaxed);
            down += c.bytes_down.load(Ordering::Relaxed);
            panics += c.panics.load(Ordering::Relaxed);
            alive += c.alive.load(Ordering::Relaxed) as u64;
        }
        let mut o = String::with_capacity(4096);
        head(&mut o, BUILD_INFO, "gauge", "Version of the running relay.");
        let _ = writeln!(
            o,
            "{BUILD_INFO}{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        head(
            &mut o,
            WORKER_INFO,
            "gauge",
            "One per worker thread, with the I/O driver it runs.",
        );
        for (i, c) in self.workers.iter().enumerate() {
            let _ = writeln!(
                o,
                "{WORKER_INFO}{{worker=\"{i}\",driver=\"{}\"}} 1",
                lock(&c.driver)
            );
        }
        head(
            &mut o,
            SESSIONS_LIVE,
            "gauge",
            "Console sessions relaying now.",
        );
        for (k, v) in &opened {
            let e = ended.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "{SESSIONS_LIVE}{{upstream=\"{}\",console=\"{}\"}} {}",
                esc(&k.0),
                k.1,
                v.saturating_sub(e)
            );
        }
        head(
            &mut o,
            SESSIONS_OPENED,
            "counter",
            "Sessions that got a 101.",
        );
        for (k, v) in &opened {
            let _ = writeln!(
                o,
                "{SESSIONS_OPENED}{{upstream=\"{}\",console=\"{}\"}} {v}",
                esc(&k.0),
                k.1
            );
        }
        head(
            &mut o,
            SESSIONS_CLOSED,
            "counter",
            "Sessions ended, by close code.",
        );
        for (k, v) in &closed {
            let _ = writeln!(o, "{SESSIONS_CLOSED}{{code=\"{k}\"}} {v}");
        }
        head(
            &mut o,
            SESSIONS_REFUSED,
            "counter",
            "Connections refused before the 101, by reason and status.",
        );
        for ((reason, status), v) in &refused {
            let _ = writeln!(
                o,
                "{SESSIONS_REFUSED}{{reason=\"{reason}\",status=\"{status}\"}} {v}"
            );
        }
        head(
            &mut o,
            SESSION_ERRORS,
            "counter",
            "Sessions that ended without a close frame from either peer, by error class.",
        );
        for class in ERROR_CLASSES {
            let v = errors.get(class).copied().unwrap_or(0);
            let _ = writeln!(o, "{SESSION_ERRORS}{{class=\"{class}\"}} {v}");
        }
        head(
            &mut o,
            SESSION_PANICS,
            "counter",
            "Session tasks that panicked (the session ended with 1011; the worker went on).",
        );
        let _ = writeln!(o, "{SESSION_PANICS} {panics}");
        head(
            &mut o,
            WORKERS_ALIVE,
            "gauge",
            "Worker threads running their runtime.",
        );
        let _ = writeln!(o, "{WORKERS_ALIVE} {alive}");
        head(
            &mut o,
            BYTES,
            "counter",
            "Bytes relayed (browser to upstream: up).",
        );
        let _ = writeln!(
            o,
            "{BYTES}{{direction=\"up\"}} {up}\n{BYTES}{{direction=\"down\"}} {down}"
        );
        let hist = |o: &mut String,
                    name: &str,
                    help: &str,
                    pick: &dyn Fn(&WorkerMetrics) -> &Histogram<10>| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
            let bounds = pick(&self.workers[0]).bounds;
            let mut cum = 0u64;
            for (i, b) in bounds.iter().enumerate() {
                cum += self
                    .workers
                    .iter()
                    .map(|c| pick(c).counts[i].load(Ordering::Relaxed))
                    .sum::<u64>();
                let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}");
            }
            let count: u64 = self
                .workers
                .iter()
                .map(|c| pick(c).count.load(Ordering::Relaxed))
                .sum();
            let sum: u64 = self
                .workers
                .iter()
                .map(|c| pick(c).sum_us.load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
                sum as f64 / 1e6
            );
        };
        hist(&mut o, SESSION_DURATION, "Session lifetimes.", &|c| {
            &c.duration
        });
        hist(
            &mut o,
            UPSTREAM_CONNECT,
            "Time to open the upstream leg (connect, handshake, login).",
            &|c| &c.connect,
        );
        head(
            &mut o,
            DRAINING,
            "gauge",
            "1 while shutting down (new upgrades get 503).",
        );
        let _ = writeln!(
            o,
            "{DRAINING} {}",
            self.draining.load(Ordering::Relaxed) as u8
        );
        head(
            &mut o,
            LOG_DROPPED,
            "counter",
            "Log and audit lines dropped because their reader stalled and the queue was full.",
        );
        for (stream, n) in crate::log::dropped() {
            let _ = writeln!(o, "{LOG_DROPPED}{{stream=\"{stream}\"}} {n}");
        }
        head(&mut o, RELOADS, "counter", "SIGHUP reloads, by result.");
        let _ = writeln!(
            o,
            "{RELOADS}{{result=\"ok\"}} {}\n{RELOADS}{{result=\"failed\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        o
    }
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (upstream names come from the config).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_cores_at_render() {
        let m = Metrics::new(2);
        m.worker(0).set_driver("io_uring");
        m.worker(1).set_driver("epoll");
        m.worker(0).opened("pve", "vnc", Duration::from_millis(3));
        m.worker(1).opened("pve", "vnc", Duration::from_millis(30));
        m.worker(1)
            .ended("pve", "vnc", 1000, Duration::from_secs(5));
        m.worker(0).refused("expired", 401);
        m.worker(0).add_bytes(10, 20);
        m.worker(1).add_bytes(1, 2);
        m.worker(0).session_error("upstream_tls");
        m.worker(1).session_error("upstream_tls");
        m.worker(1).session_error("a label a peer made up");
        m.worker(1).session_panic();
        m.worker(0).alive.store(true, Ordering::Relaxed);
        let t = m.render();
        for line in [
            "nexor_sessions_live{upstream=\"pve\",console=\"vnc\"} 1",
            "nexor_sessions_opened_total{upstream=\"pve\",console=\"vnc\"} 2",
            "nexor_sessions_closed_total{code=\"1000\"} 1",
            "nexor_sessions_refused_total{reason=\"expired\",status=\"401\"} 1",
            "nexor_bytes_total{direction=\"up\"} 11",
            "nexor_bytes_total{direction=\"down\"} 22",
            "nexor_worker_info{worker=\"1\",driver=\"epoll\"} 1",
            "nexor_upstream_connect_seconds_bucket{le=\"0.005\"} 1",
            "nexor_upstream_connect_seconds_bucket{le=\"0.05\"} 2",
            "nexor_upstream_connect_seconds_count 2",
            "nexor_session_duration_seconds_bucket{le=\"10\"} 1",
            "nexor_session_errors_total{class=\"upstream_tls\"} 2",
            "nexor_session_errors_total{class=\"other\"} 1",
            "nexor_session_errors_total{class=\"browser_eof\"} 0",
            "nexor_session_panics_total 1",
            "nexor_workers_alive 1",
        ] {
            assert!(t.contains(line), "missing {line}\n{t}");
        }
    }

    #[test]
    fn close_code_labels_are_bucketed() {
        let m = Metrics::new(1);
        for code in [1000, 1001, 1006, 1008, 1009, 1011, 4001, 4002, 4003] {
            m.worker(0).ended("d", "vnc", code, Duration::from_secs(1));
            assert_eq!(close_code_label(code), code.to_string());
        }
        // A browser picks its close code: 3000..=4999 all land in `other`.
        for code in [1002, 1003, 1005, 3000, 3999, 4000, 4004, 4321, 4999] {
            m.worker(0).ended("d", "vnc", code, Duration::from_secs(1));
        }
        let t = m.render();
        assert!(
            t.contains("nexor_sessions_closed_total{code=\"other\"} 9"),
            "{t}"
        );
        assert!(
            t.contains("nexor_sessions_closed_total{code=\"4003\"} 1"),
            "{t}"
        );
        assert_eq!(t.matches("nexor_sessions_closed_total{").count(), 10, "{t}");
        assert!(!t.contains("code=\"4321\""), "{t}");
    }
}
