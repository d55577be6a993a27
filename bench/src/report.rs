//! Results: rows, derived ratios, the targets, the printed table, JSON and
//! a hand-written SVG chart.

use crate::load::{Metrics, PCTS};
use crate::peers::{PeerKind, Placement};
use crate::{Opts, Plan};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// One peer measured on one scenario variant.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub variant: String,
    pub tls: bool,
    pub peer: String,
    pub driver: Option<String>,
    pub m: Metrics,
    pub error: Option<String>,
}

impl Row {
    pub fn new(
        p: &Plan,
        k: PeerKind,
        driver: Option<String>,
        m: Metrics,
        error: Option<String>,
    ) -> Self {
        Row {
            scenario: p.scenario.into(),
            variant: p.variant.clone(),
            tls: p.tls,
            peer: k.name().into(),
            driver,
            m,
            error,
        }
    }

    fn get(&self, k: &str) -> Option<f64> {
        self.m.get(k).copied().filter(|v| v.is_finite())
    }

    /// Paired echo: the fraction of the offered message rate delivered,
    /// if below 95 % (the load could not be driven: not a valid run).
    pub fn short_of_offered(&self) -> Option<f64> {
        let f = self.get("msgs_per_s")? / self.get("offered_msgs_per_s")?;
        (f < 0.95).then_some(f)
    }

    /// The headline figure of the row, as text.
    pub fn brief(&self) -> String {
        if let Some(e) = &self.error {
            return format!("FAILED: {e}");
        }
        let g = |k: &str| self.get(k).unwrap_or(f64::NAN);
        let errs = match self.get("errors") {
            Some(e) if e > 0.0 => format!(", {e:.0} errors"),
            _ => String::new(),
        };
        let s = match self.scenario.as_str() {
            "bulk" => format!(
                "{:.2} GiB in {:.1} s ({:.2} GiB/s), {:.2} CPU-s, {:.3} CPU-s/GiB",
                g("gib"),
                g("seconds"),
                g("gib_per_s"),
                g("cpu_s"),
                g("cpu_s_per_gib")
            ),
            "echo" => format!(
                "{:.0} msgs/s, rtt p50 {:.0} p99 {:.0} p99.9 {:.0} us{}, {:.0} msgs/CPU-s",
                g("msgs_per_s"),
                g("p50_us"),
                g("p99_us"),
                g("p99.9_us"),
                self.get("added_p50_us")
                    .map(|a| format!(
                        "; added p50 {a:.0} p99 {:.0} p99.9 {:.0} us ({:.0} % of ticks faster than direct)",
                        g("added_p99_us"),
                        g("added_p99.9_us"),
                        g("added_negative_frac") * 100.0
                    ))
                    .unwrap_or_default(),
                g("msgs_per_cpu_s")
            )
            .replace(", NaN msgs/CPU-s", "")
                + &self
                    .short_of_offered()
                    .map(|f| {
                        format!(
                            " [SATURATED: {:.0} % of the offered {:.0} msgs/s]",
                            f * 100.0,
                            g("offered_msgs_per_s")
                        )
                    })
                    .unwrap_or_default(),
            "idle" => format!(
                "{:.0} sessions in {:.1} s, {:.1} KiB/session ({:.0} -> {:.0} MiB, {:.0} processes)",
                g("sessions"),
                g("open_s"),
                g("kib_per_session"),
                g("mem_before_mib"),
                g("mem_after_mib"),
                g("processes")
            ),
            "soak" => format!(
                "{:.0} sessions ({:.0} at once) in {:.0} s: {:.0} lost, {:.2} GiB verified, \
relay peak RSS {:.0} MiB (from {:.0}), {:.2} CPU-s, audit {:.0} session_end / {:.0} not clean",
                g("sessions"),
                g("concurrent"),
                g("seconds"),
                g("lost"),
                g("gib"),
                g("peak_rss_mib"),
                g("rss_before_mib"),
                g("cpu_s"),
                g("audit_session_end"),
                g("audit_bad")
            ),
            "control" => format!(
                "{:.0} pongs x {:.0}: burst {:.2} CPU-s ({:.2} s), paced {:.2} CPU-s ({:.2} s): \
burst/paced {:.2}",
                g("pongs"),
                g("rounds"),
                g("burst_cpu_s"),
                g("burst_wall_s"),
                g("paced_cpu_s"),
                g("paced_wall_s"),
                g("burst_over_paced")
            ),
            "fleet" => format!(
                "{:.0} sessions/s, {:.2} CPU-s, {:.0} sessions/CPU-s, handshake p50 {:.2} p99 {:.2} ms{}{}",
                g("sessions_per_s"),
                g("cpu_s"),
                g("sessions_per_cpu_s"),
                g("hs_p50_us") / 1000.0,
                g("hs_p99_us") / 1000.0,
                self.get("store_cpu_s")
                    .map(|c| format!(
                        ", redis {c:.2} CPU-s ({:.0} sessions/CPU-s with it)",
                        g("sessions_per_cpu_s_with_store")
                    ))
                    .unwrap_or_default(),
                match (self.get("fleet_vs_off"), self.get("added_hs_p99_ms")) {
                    (Some(r), Some(a)) => format!("; vs off: {r:.2}x per CPU-s, p99 {a:+.2} ms"),
                    _ => String::new(),
                }
            ),
            _ => format!(
                "{:.0} sessions/s, {:.2} CPU-s, {:.0} sessions/CPU-s{}",
                g("sessions_per_s"),
                g("cpu_s"),
                g("sessions_per_cpu_s"),
                self.get("resumed_frac")
                    .map(|f| format!(", {:.1} % resumed", f * 100.0))
                    .unwrap_or_default()
            ),
        };
        s + &errs
    }
}

/// The figure compared with nginx (`true`: lower is better).
fn headline(scenario: &str) -> (&'static str, bool) {
    match scenario {
        "bulk" => ("cpu_s_per_gib", true),
        "echo" => ("added_p99_us", true),
        "idle" => ("kib_per_session", true),
        _ => ("sessions_per_s", false),
    }
}

/// Work per CPU-second compared with websockify (idle: memory, inverted).
fn work(scenario: &str) -> (&'static str, bool) {
    match scenario {
        "bulk" => ("gib_per_cpu_s", false),
        "echo" => ("msgs_per_cpu_s", false),
        "idle" => ("kib_per_session", true),
        _ => ("sessions_per_cpu_s", false),
    }
}

fn find<'a>(rows: &'a [Row], s: &str, v: &str, peer: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.scenario == s && r.variant == v && r.peer == peer && r.error.is_none())
}

/// Adds derived figures: ratios vs nginx and work ratios vs websockify (the
/// paired echo measures its added latency itself, per tick).
pub fn derive(rows: &mut [Row]) {
    let snapshot = rows.to_vec();
    for r in rows
        .iter_mut()
        .filter(|r| r.scenario == "fleet" && r.peer == "relay-fleet")
    {
        if let Some(off) = find(&snapshot, "fleet", &r.variant, "relay-uring") {
            if let (Some(a), Some(b)) = (r.get("sessions_per_cpu_s"), off.get("sessions_per_cpu_s"))
            {
                r.m.insert("fleet_vs_off".into(), a / b);
            }
            if let (Some(a), Some(b)) = (r.get("hs_p99_us"), off.get("hs_p99_us")) {
                r.m.insert("added_hs_p99_ms".into(), (a - b) / 1000.0);
            }
        }
    }
    let snapshot = rows.to_vec();
    for r in rows.iter_mut().filter(|r| r.peer != "direct") {
        let (k, _) = headline(&r.scenario);
        if let (Some(a), Some(n)) = (
            r.get(k),
            find(&snapshot, &r.scenario, &r.variant, "nginx").and_then(|n| n.get(k)),
        ) {
            if n != 0.0 {
                r.m.insert("vs_nginx".into(), a / n);
            }
        }
        let (k, inv) = work(&r.scenario);
        if let (Some(a), Some(w)) = (
            r.get(k),
            find(&snapshot, &r.scenario, &r.variant, "websockify").and_then(|n| n.get(k)),
        ) {
            if a != 0.0 && w != 0.0 {
                r.m.insert("x_websockify".into(), if inv { w / a } else { a / w });
            }
        }
    }
}

/// One row of the targets table.
pub struct Target {
    pub what: String,
    pub peer: String,
    /// The figure compared with the goal (a ratio, mostly).
    pub measured: Option<f64>,
    /// The raw values behind it.
    pub detail: String,
    pub goal: String,
    pub met: bool,
    /// Counted toward issue 15's targets (relay-uring, the default driver);
    /// other rows are shown for information.
    pub counted: bool,
}

/// Tolerance of "io_uring at least as good as epoll": within this, equal.
pub const DRIVER_TOLERANCE: f64 = 0.05;

fn fmt_v(v: f64, unit: &str) -> String {
    format!("{} {unit}", fmt_num(v)).trim_end().to_string()
}

/// Evaluates issue 15's targets (counted on relay-uring, the default
/// driver; relay-epoll shown beside it) and, marked `info`, the older ones.
pub fn targets(rows: &[Row]) -> Vec<Target> {
    let mut t = Vec::new();
    // peer / nginx on `key`, same scenario and variant.
    let mut vs_nginx =
        |what: &str, s: &str, v: &str, key: &str, unit: &str, goal: f64, le: bool| {
            for peer in ["relay-uring", "relay-epoll"] {
                let a = find(rows, s, v, peer).and_then(|r| r.get(key));
                let n = find(rows, s, v, "nginx").and_then(|r| r.get(key));
                let (Some(a), Some(n)) = (a, n) else {
                    continue; // not run (peer left out or failed: see the rows)
                };
                let ratio = (n > 0.0).then(|| a / n);
                t.push(Target {
                    what: what.to_string(),
                    peer: peer.into(),
                    measured: ratio,
                    detail: format!("{} / {}", fmt_v(a, unit), fmt_v(n, unit)),
                    goal: format!("{} {goal}x nginx", if le { "<=" } else { ">=" }),
                    // A saturated run (`what` says so) meets nothing.
                    met: !what.contains("SATURATED")
                        && ratio.is_some_and(|r| if le { r <= goal } else { r >= goal }),
                    counted: peer == "relay-uring",
                });
            }
        };
    let mut echo_variants: Vec<&str> = rows
        .iter()
        .filter(|r| r.scenario == "echo" && r.variant.starts_with("ws-"))
        .map(|r| r.variant.as_str())
        .collect();
    echo_variants.dedup();
    for v in &echo_variants {
        let short = rows
            .iter()
            .filter(|r| r.scenario == "echo" && r.variant == *v)
            .filter_map(Row::short_of_offered)
            .fold(None, |a: Option<f64>, f| Some(a.map_or(f, |a| a.min(f))));
        let note = short
            .map(|f| {
                format!(
                    " [SATURATED: {:.0} % of the offered rate delivered, not valid]",
                    f * 100.0
                )
            })
            .unwrap_or_default();
        for (p, key) in [("p50", "added_p50_us"), ("p99", "added_p99_us")] {
            vs_nginx(
                &format!("echo {v} (paired): added latency {p}{note}"),
                "echo",
                v,
                key,
                "us",
                0.8,
                true,
            );
        }
    }
    vs_nginx(
        "idle ws (plaintext): memory per session",
        "idle",
        "ws",
        "kib_per_session",
        "KiB",
        0.5,
        true,
    );
    vs_nginx(
        "idle wss (TLS): memory per session",
        "idle",
        "wss",
        "kib_per_session",
        "KiB",
        0.5,
        true,
    );
    vs_nginx(
        "churn wss (full handshakes): sessions/s",
        "churn",
        "wss",
        "sessions_per_s",
        "/s",
        1.2,
        false,
    );
    vs_nginx(
        "churn wss (full handshakes): sessions per CPU-s",
        "churn",
        "wss",
        "sessions_per_cpu_s",
        "",
        1.2,
        false,
    );
    vs_nginx(
        "churn-resume wss: sessions/s",
        "churn-resume",
        "wss",
        "sessions_per_s",
        "/s",
        2.0,
        false,
    );
    vs_nginx(
        "churn-resume wss: sessions per CPU-s",
        "churn-resume",
        "wss",
        "sessions_per_cpu_s",
        "",
        2.0,
        false,
    );
    vs_nginx(
        "bulk ws-down (plaintext): CPU-s per GiB",
        "bulk",
        "ws-down",
        "cpu_s_per_gib",
        "",
        0.5,
        true,
    );
    vs_nginx(
        "bulk ws-up (plaintext): CPU-s per GiB",
        "bulk",
        "ws-up",
        "cpu_s_per_gib",
        "",
        0.5,
        true,
    );
    vs_nginx(
        "bulk wss-down (TLS): CPU-s per GiB",
        "bulk",
        "wss-down",
        "cpu_s_per_gib",
        "",
        0.7,
        true,
    );

    // io_uring at least as good as epoll: every variant both ran, on its
    // main figure, as io_uring's relative cost (lower is better).
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        let key = (r.scenario.as_str(), r.variant.as_str());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let (metric, lower, unit, label) = match r.scenario.as_str() {
            "bulk" => ("cpu_s_per_gib", true, "", "CPU-s per GiB"),
            "echo" => ("added_p99_us", true, "us", "added p99"),
            "idle" => ("kib_per_session", true, "KiB", "memory per session"),
            "churn" | "churn-resume" => ("sessions_per_cpu_s", false, "", "sessions per CPU-s"),
            _ => continue,
        };
        let u = find(rows, key.0, key.1, "relay-uring").and_then(|r| r.get(metric));
        let e = find(rows, key.0, key.1, "relay-epoll").and_then(|r| r.get(metric));
        let (Some(u), Some(e)) = (u, e) else { continue };
        let rel = if lower {
            (e > 0.0).then(|| u / e)
        } else {
            (u > 0.0).then(|| e / u)
        };
        t.push(Target {
            what: format!(
                "io_uring vs epoll, {} {}: {label}, io_uring's relative cost",
                key.0, key.1
            ),
            peer: "relay-uring / relay-epoll".into(),
            measured: rel,
            detail: format!("{} / {}", fmt_v(u, unit), fmt_v(e, unit)),
            goal: format!(
                "<= {:.2} (within {:.0} % counts as equal)",
                1.0 + DRIVER_TOLERANCE,
                DRIVER_TOLERANCE * 100.0
            ),
            met: rel.is_some_and(|x| x <= 1.0 + DRIVER_TOLERANCE),
            counted: true,
        });
    }

    // Information: the fraction of TLS handshakes that resumed.
    for (s, goal) in [("churn", "0 (full handshakes)"), ("churn-resume", "info")] {
        for peer in ["relay-uring", "relay-epoll", "nginx"] {
            let Some(f) = find(rows, s, "wss", peer).and_then(|r| r.get("resumed_frac")) else {
                continue;
            };
            t.push(Target {
                what: format!("{s} wss: fraction of handshakes resumed"),
                peer: peer.into(),
                measured: Some(f),
                detail: String::new(),
                goal: goal.into(),
                met: s != "churn" || f == 0.0,
                counted: false,
            });
        }
    }

    // Older targets (before issue 15), kept for information.
    let mut old = |what: &str, s: &str, v: &str, key: &str, le: Option<f64>, ge: Option<f64>| {
        for peer in ["relay-uring", "relay-epoll"] {
            let Some(ratio) = find(rows, s, v, peer).and_then(|r| r.get(key)) else {
                continue;
            };
            let (goal, met) = match (le, ge) {
                (Some(x), _) => (format!("<= {x}"), ratio <= x),
                (_, Some(x)) => (format!(">= {x}"), ratio >= x),
                _ => unreachable!(),
            };
            t.push(Target {
                what: what.to_string(),
                peer: peer.into(),
                measured: Some(ratio),
                detail: String::new(),
                goal,
                met,
                counted: false,
            });
        }
    };
    old(
        "bulk tcp: GiB per CPU-s x websockify",
        "bulk",
        "tcp-down",
        "x_websockify",
        None,
        Some(20.0),
    );
    old(
        "echo tcp: msgs per CPU-s x websockify",
        "echo",
        "tcp",
        "x_websockify",
        None,
        Some(20.0),
    );
    old(
        "idle tcp: memory/session, websockify / relay",
        "idle",
        "tcp",
        "x_websockify",
        None,
        Some(20.0),
    );
    old(
        "churn tcp: sessions per CPU-s x websockify",
        "churn",
        "tcp",
        "x_websockify",
        None,
        Some(20.0),
    );
    old(
        "control frames: relay CPU, pong burst / paced",
        "control",
        "pongs",
        "burst_over_paced",
        Some(1.0),
        None,
    );
    for r in rows
        .iter()
        .filter(|r| r.scenario == "fleet" && r.peer == "relay-fleet" && r.error.is_none())
    {
        if r.variant == "latency" {
            let added = r.get("added_hs_p99_ms");
            t.push(Target {
                what: "fleet TLS handshake, 2 loops: added p99 (ms)".into(),
                peer: r.peer.clone(),
                measured: added,
                detail: String::new(),
                goal: "<= 1".into(),
                met: added.is_some_and(|x| x <= 1.0),
                counted: false,
            });
        } else {
            let ratio = r.get("fleet_vs_off");
            t.push(Target {
                what: format!(
                    "fleet churn TLS {}: sessions per CPU-s, [fleet] on / off",
                    r.variant
                ),
                peer: r.peer.clone(),
                measured: ratio,
                detail: String::new(),
                goal: ">= 0.85".into(),
                met: ratio.is_some_and(|x| x >= 0.85),
                counted: false,
            });
        }
    }
    for peer in ["relay-uring", "relay-epoll"] {
        if let Some(r) = find(rows, "soak", "wss", peer) {
            let lost = r.get("lost").unwrap_or(f64::NAN);
            let bad = r.get("audit_bad").unwrap_or(f64::NAN);
            t.push(Target {
                what: format!(
                    "soak: {:.0} sessions, {lost:.0} lost, {bad:.0} audit lines not clean",
                    r.get("sessions").unwrap_or(0.0)
                ),
                peer: peer.into(),
                measured: None,
                detail: String::new(),
                goal: "0 lost".into(),
                met: lost == 0.0 && bad == 0.0,
                counted: false,
            });
        }
        if let Some(r) = find(rows, "idle", "ws-max", peer) {
            let n = r.get("sessions").unwrap_or(0.0);
            let e = r.get("errors").unwrap_or(f64::NAN);
            t.push(Target {
                what: format!("idle plaintext: {n:.0} sessions held, {e:.0} errors"),
                peer: peer.into(),
                measured: None,
                detail: String::new(),
                goal: "100000, 0 errors".into(),
                met: n >= 100_000.0 && e == 0.0,
                counted: false,
            });
        }
    }
    t
}

/// The targets as a Markdown table, with a count of the counted ones met.
pub fn targets_md(rows: &[Row]) -> String {
    let ts = targets(rows);
    let mut s = String::new();
    let _ = writeln!(s, "| target | peer | measured | goal | |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for t in &ts {
        let measured = match (t.measured, t.detail.is_empty()) {
            (Some(m), true) => format!("{m:.2}"),
            (Some(m), false) => format!("{m:.2} ({})", t.detail),
            (None, _) => "-".into(),
        };
        let status = match (t.counted, t.met) {
            (true, true) => "met",
            (true, false) => "**MISSED**",
            (false, true) => "info (met)",
            (false, false) => "info (missed)",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {measured} | {} | {status} |",
            t.what, t.peer, t.goal
        );
    }
    let counted: Vec<&Target> = ts.iter().filter(|t| t.counted).collect();
    let _ = writeln!(
        s,
        "\nIssue 15 targets met: {} of {} (counted on relay-uring, the default driver; ratios \
         are relay / nginx of the same run; `info` rows are not counted).",
        counted.iter().filter(|t| t.met).count(),
        counted.len()
    );
    s
}

/// Date and machine of the run.
pub struct Meta {
    pub date: String,
    /// UTC start of the run, `2026-12-06T2300Z`: its results folder.
    pub stamp: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub mem_gib: f64,
    pub pinned: bool,
    pub opts: String,
}

impl Meta {
    pub fn collect(o: &Opts, place: Placement) -> Self {
        let sh = |c: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_string();
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = mem
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        Meta {
            date: sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
            stamp: o.stamp.clone(),
            cpu,
            cores: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            mem_gib: kib / 1048576.0,
            pinned: place.peer_cpu.is_some(),
            opts: format!(
                "{:?} (hold {} s, echo {} msg/s x {} B per session, paired echo at most 2000 round trips/s in all)",
                std::env::args().skip(1).collect::<Vec<_>>(),
                o.hold,
                o.rate,
                o.size
            ),
        }
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

/// The Markdown table printed at the end (and kept in BENCHMARKING.md).
pub fn table(rows: &[Row], meta: &Meta) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Run {} on {} ({} cores, {:.0} GiB, Linux {}), {}; args {}\n",
        meta.date,
        meta.cpu,
        meta.cores,
        meta.mem_gib,
        meta.kernel,
        if meta.pinned {
            "peers pinned to CPU 0, generator to CPU 1"
        } else {
            "unpinned"
        },
        meta.opts
    );
    let _ = writeln!(
        s,
        "| scenario | variant | peer | result | vs nginx | x websockify |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in rows {
        let peer = match &r.driver {
            Some(d) => format!("{} ({d})", r.peer),
            None => r.peer.clone(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.variant,
            peer,
            r.brief(),
            fmt_ratio(r.get("vs_nginx")),
            fmt_ratio(r.get("x_websockify"))
        );
    }
    let _ = writeln!(s, "\n{}", targets_md(rows));
    s
}

/// The README's benchmark block: a header line and the targets.
pub fn readme_block(rows: &[Row], meta: &Meta, results: &str) -> String {
    format!(
        "Generated by `bench/run` (all scenarios, defaults) at {} on {} ({} cores, Linux {}, {}); \
         every row and the chart: [{results}/results.md]({results}/results.md).\n\n{}",
        meta.date,
        meta.cpu,
        meta.cores,
        meta.kernel,
        if meta.pinned {
            "peers on CPU 0, generator on CPU 1"
        } else {
            "unpinned"
        },
        targets_md(rows)
    )
}

/// Replaces what lies between `<!-- bench:begin -->` and `<!-- bench:end -->`
/// in `path` with `block`; false if the markers are not there.
pub fn update_readme(path: &std::path::Path, block: &str) -> anyhow::Result<bool> {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let text = std::fs::read_to_string(path)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        return Ok(false);
    };
    if e < b {
        return Ok(false);
    }
    let out = format!(
        "{}{BEGIN}\n{}\n{}",
        &text[..b],
        block.trim_end(),
        &text[e..]
    );
    std::fs::write(path, out)?;
    Ok(true)
}

/// Everything as JSON.
pub fn json(rows: &[Row], meta: &Meta) -> Value {
    json!({
        "date": meta.date,
        "machine": { "cpu": meta.cpu, "cores": meta.cores, "kernel": meta.kernel, "mem_gib": meta.mem_gib },
        "pinned": meta.pinned,
        "args": meta.opts,
        "rows": rows.iter().map(|r| json!({
            "scenario": r.scenario, "variant": r.variant, "tls": r.tls, "peer": r.peer,
            "driver": r.driver, "metrics": r.m, "error": r.error,
        })).collect::<Vec<_>>(),
        "targets": targets(rows).iter().map(|t| json!({
            "what": t.what, "peer": t.peer, "measured": t.measured, "detail": t.detail,
            "goal": t.goal, "met": t.met, "counted": t.counted,
        })).collect::<Vec<_>>(),
    })
}

const COLORS: [(&str, &str); 5] = [
    ("direct", "#888888"),
    ("relay-uring", "#1f77b4"),
    ("relay-epoll", "#7fb3e0"),
    ("nginx", "#2ca02c"),
    ("websockify", "#d62728"),
];

fn color(peer: &str) -> &'static str {
    COLORS
        .iter()
        .find(|c| c.0 == peer)
        .map(|c| c.1)
        .unwrap_or("#000")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A log-scale axis from the data's range, as (lo, hi) decades.
fn decades(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in vals.filter(|v| *v > 0.0) {
        lo = lo.min(v.log10().floor());
        hi = hi.max(v.log10().ceil());
    }
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo, hi + 1.0)
    } else {
        (lo, hi)
    }
}

fn y_axis(s: &mut String, x: f64, y: f64, h: f64, lo: f64, hi: f64) {
    let mut d = lo;
    while d <= hi + 1e-9 {
        let yy = y + h - (d - lo) / (hi - lo) * h;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            x + 10000.0_f64.min(400.0),
            x - 4.0,
            yy + 3.0,
            fmt_num(10f64.powf(d))
        );
        d += 1.0;
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A grouped bar panel at (x, y), log scale.
fn bars(s: &mut String, x: f64, y: f64, title: &str, groups: &[(String, Vec<(String, f64)>)]) {
    let (w, h) = (400.0, 200.0);
    let _ = writeln!(
        s,
        r#"<text x="{x}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        y - 8.0,
        esc(title)
    );
    let (lo, hi) = decades(groups.iter().flat_map(|g| g.1.iter().map(|b| b.1)));
    y_axis(s, x, y, h, lo, hi);
    let gw = w / groups.len().max(1) as f64;
    for (gi, (label, bs)) in groups.iter().enumerate() {
        let gx = x + gi as f64 * gw;
        let bw = (gw - 10.0) / bs.len().max(1) as f64;
        for (bi, (peer, v)) in bs.iter().enumerate() {
            if *v <= 0.0 {
                continue;
            }
            let frac = ((v.log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
            let bh = frac * h;
            let bx = gx + 5.0 + bi as f64 * bw;
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} {}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="8" text-anchor="middle">{}</text>"#,
                y + h - bh,
                bw - 2.0,
                color(peer),
                esc(label),
                peer,
                fmt_num(*v),
                bx + bw / 2.0 - 1.0,
                y + h - bh - 2.0,
                fmt_num(*v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            gx + gw / 2.0,
            y + h + 14.0,
            esc(label)
        );
    }
}

fn group_bars(rows: &[Row], scenario: &str, key: &str) -> Vec<(String, Vec<(String, f64)>)> {
    let mut out: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.scenario.starts_with(scenario) && r.error.is_none())
    {
        let Some(v) = r.get(key) else { continue };
        // `churn-resume wss` groups as `resume wss`.
        let label = match r.scenario.strip_prefix(scenario) {
            Some(rest) if !rest.is_empty() => {
                format!("{} {}", rest.trim_start_matches('-'), r.variant)
            }
            _ => r.variant.clone(),
        };
        match out.iter_mut().find(|g| g.0 == label) {
            Some(g) => g.1.push((r.peer.clone(), v)),
            None => out.push((label, vec![(r.peer.clone(), v)])),
        }
    }
    out
}

/// The chart: echo latency percentiles per peer, and bars for bulk CPU/GiB,
/// idle memory/session and churn sessions/s (log scales).
pub fn svg(rows: &[Row], meta: &Meta) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="700" font-family="sans-serif">
<rect width="1000" height="700" fill="white"/>
<text x="20" y="24" font-size="15" font-weight="bold">nexor-relay benchmark, {} ({}, {} cores)</text>"#,
        esc(&meta.date),
        esc(&meta.cpu),
        meta.cores
    );
    // Legend.
    for (i, (p, c)) in COLORS.iter().enumerate() {
        let x = 20.0 + i as f64 * 130.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="36" width="12" height="12" fill="{c}"/><text x="{}" y="46" font-size="11">{p}</text>"#,
            x + 16.0
        );
    }
    // Echo latency percentiles (ws variant).
    let (x, y, w, h) = (70.0, 90.0, 400.0, 200.0);
    let lat: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == "echo" && r.variant.starts_with("ws-") && r.error.is_none())
        .collect();
    // The largest paired variant solid, the others dashed.
    let n_of = |r: &Row| r.get("tuples").unwrap_or(0.0);
    let big = lat.iter().map(|r| n_of(r)).fold(0.0, f64::max);
    let variants: Vec<&str> = {
        let mut v: Vec<&str> = lat.iter().map(|r| r.variant.as_str()).collect();
        v.dedup();
        v
    };
    let _ = writeln!(
        s,
        r#"<text x="{x}" y="{}" font-size="13" font-weight="bold">paired echo round trip (us) by percentile, {} (largest solid)</text>"#,
        y - 8.0,
        esc(&variants.join(", "))
    );
    let (lo, hi) = decades(
        lat.iter()
            .flat_map(|r| PCTS.iter().filter_map(|p| r.get(&format!("p{p}_us")))),
    );
    y_axis(&mut s, x, y, h, lo, hi);
    for (i, p) in PCTS.iter().enumerate() {
        let xx = x + 20.0 + i as f64 * (w - 40.0) / (PCTS.len() - 1) as f64;
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{}" font-size="10" text-anchor="middle">p{p}</text>"#,
            y + h + 14.0
        );
    }
    for r in &lat {
        let pts: Vec<String> = PCTS
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = r.get(&format!("p{p}_us"))?;
                let xx = x + 20.0 + i as f64 * (w - 40.0) / (PCTS.len() - 1) as f64;
                let yy = y + h - ((v.max(1.0).log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * h;
                Some(format!("{xx:.1},{yy:.1}"))
            })
            .collect();
        let dash = if n_of(r) < big {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}><title>{} {}</title></polyline>"#,
            pts.join(" "),
            color(&r.peer),
            r.peer,
            r.variant
        );
    }
    bars(
        &mut s,
        560.0,
        90.0,
        "bulk: relay CPU-seconds per GiB (lower is better)",
        &group_bars(rows, "bulk", "cpu_s_per_gib"),
    );
    bars(
        &mut s,
        70.0,
        400.0,
        "idle: memory per session, KiB (lower is better)",
        &group_bars(rows, "idle", "kib_per_session"),
    );
    bars(
        &mut s,
        560.0,
        400.0,
        "churn (full / resumed TLS): sessions per second (higher is better)",
        &group_bars(rows, "churn", "sessions_per_s"),
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="680" font-size="10">log scales; bars carry their values; details in latest.json</text>"#
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_block_is_replaced_between_the_markers_only() {
        let dir = std::env::temp_dir().join(format!("nexor-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("README.md");
        std::fs::write(
            &p,
            "a\n<!-- bench:begin -->\nold\ntable\n<!-- bench:end -->\nb\n",
        )
        .unwrap();
        assert!(update_readme(&p, "new\n").unwrap());
        assert!(update_readme(&p, "newer\n").unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "a\n<!-- bench:begin -->\nnewer\n<!-- bench:end -->\nb\n"
        );
        std::fs::write(&p, "no markers\n").unwrap();
        assert!(!update_readme(&p, "x").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
