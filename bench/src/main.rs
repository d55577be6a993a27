//! nexor-bench: the load generator and peer harness of nexor-relay.
//!
//! One command runs five scenarios (`bulk`, `echo`, `idle`, `churn`,
//! `churn-resume`) against the relay on io_uring and on epoll, nginx and
//! websockify, all on the same built-in upstreams in the same run, and
//! reports every figure as a ratio against the peers: the relay's own CPU
//! time (user + system, all threads) is the cost measure. The WebSocket
//! echo is paired: every peer runs at once and each tick sends the same
//! message on one session of each, so the added latency over `direct` is
//! taken per tick. See bench/README.md and BENCHMARKING.md.
//!
//! Three more scenarios run only when named: `soak` (many checked TLS
//! sessions of four shapes for minutes: sessions lost, bytes verified, peak
//! RSS), `control` (the relay's CPU for a burst of empty pongs vs the
//! same pongs paced) and `fleet` (TLS churn with `[fleet]` on a local
//! redis-server vs without: sessions per CPU-s in three saturating rounds,
//! and the handshake's percentiles at 2 loops).
//!
//! ```text
//! nexor-bench [all|bulk|echo|idle|churn|churn-resume|soak|control|fleet]... [--peers a,b]
//!             [--sessions N] [--echo-sessions A,B] [--seconds S] [--minutes M] [--rate R]
//!             [--idle-big N] [--quick] [--out DIR] [--relay PATH] [--no-pin] [--no-install]
//! ```

mod load;
mod peers;
mod report;
mod soak;
mod ticket;
mod tls;
mod upstream;
mod ws;

use anyhow::{bail, Context, Result};
use load::Metrics;
use peers::{Peer, PeerEnv, PeerKind, Placement, Up};
use report::Row;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: nexor-bench [all|bulk|echo|idle|churn|churn-resume|soak|control|fleet]... [options]
  (`all` is bulk, echo, idle, churn and churn-resume; soak, control and fleet run when named)
  --peers LIST        comma list of relay-uring,relay-epoll,relay-fleet,nginx,websockify,direct
                      (default: all; relay-fleet runs in the fleet scenario only)
  --sessions N        sessions of every selected variant (defaults: bulk 50, echo 200 and 1000
                      paired (tcp 100), idle 10000, churn concurrency 32)
  --echo-sessions L   comma list: one paired echo variant `ws-N` per N (default 200,1000)
  --seconds S         measuring window of bulk/echo/churn (default 3 per round; echo 8)
  --repeat N          bulk and churn: N rounds, the peers interleaved (A B C A B C ...),
                      each figure the median of its rounds (default 3; --quick 1)
  --rate R            echo messages per second per session (default 10)
  --size B            echo message size (default 64)
  --idle-big N        also hold N plaintext idle sessions through the relay, spread over
                      5 upstream addresses (variant ws-max, informational; default 0: skipped)
  --hold S            seconds idle sessions are held before the check (default 5; --quick 1)
  --quick             small sizes, 2 s windows, 1 s idle hold (a smoke test, ~2 minutes)
  --out DIR           results folder (default bench/results): each run writes OUT/<UTC time>/
                      results.{json,md,svg} and OUT/latest.*; a full `all` run (no --quick,
                      --peers, --sessions, --echo-sessions or --seconds) also rewrites the
                      table between <!-- bench:begin --> and <!-- bench:end --> in README.md
  --relay PATH        relay binary (default target/release/nexor-relay)
  --no-pin            do not pin peers to CPU 0 and the generator to CPU 1
  --no-install        do not install missing peers (apt nginx, pip websockify)
  --max-minutes M     hard stop for the whole run (default 20)
soak (TLS sessions, a quarter each of tcp echo, ws echo, tcp burst, wss burst):
  --sessions N        concurrent sessions (default 9000: RLIMIT_NOFILE, see BENCHMARKING.md)
  --minutes M         duration (default 2; --seconds also works)
  --period S          mean seconds between an echo session's messages (default 5)
  --max-msg B         largest echo message, sizes log-uniform from 1 B (default 300000)
  --burst B           bytes a burst upstream sends at connect (default 262144)
control (plaintext, one session to the sink):
  --pongs N           empty masked pongs per run (default 400000)
  --per N             pongs per paced batch (default 100)
  --rounds N          burst and paced runs each, alternating (default 5)
fleet (TLS churn, relay-uring vs relay-fleet: [fleet] on a local redis-server; 3 rounds of
       32 loops for sessions per CPU-s, then 2 loops for the handshake's latency):
  --fleet-unix        the relay reaches redis-server over a unix socket (default: TCP loopback)";

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Opts {
    scenarios: Vec<String>,
    peers: Vec<PeerKind>,
    sessions: Option<usize>,
    echo_sessions: Vec<usize>,
    seconds: Option<f64>,
    /// Every scenario of `all` at its defaults: the README table is rewritten.
    pub full: bool,
    /// UTC start, `2026-12-06T2300Z` (the run's results folder).
    pub stamp: String,
    pub rate: f64,
    pub size: usize,
    idle_big: usize,
    pub hold: f64,
    quick: bool,
    out: PathBuf,
    relay: PathBuf,
    pin: bool,
    install: bool,
    max_minutes: f64,
    minutes: Option<f64>,
    period: f64,
    max_msg: usize,
    burst: usize,
    pongs: usize,
    per: usize,
    rounds: usize,
    /// bulk and churn: interleaved rounds per peer, medians reported.
    pub repeat: usize,
    fleet_unix: bool,
}

/// Now in UTC as `2026-12-06T2300Z`.
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        scenarios: Vec::new(),
        peers: vec![
            PeerKind::Direct,
            PeerKind::RelayUring,
            PeerKind::RelayEpoll,
            PeerKind::RelayFleet,
            PeerKind::Nginx,
            PeerKind::Websockify,
        ],
        sessions: None,
        echo_sessions: vec![200, 1000],
        seconds: None,
        full: true,
        stamp: utc_stamp(),
        rate: 10.0,
        size: 64,
        idle_big: 0,
        hold: 5.0,
        quick: false,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        relay: peers::default_relay_bin(),
        pin: true,
        install: true,
        max_minutes: 20.0,
        minutes: None,
        period: 5.0,
        max_msg: 300_000,
        burst: 256 << 10,
        pongs: 400_000,
        per: 100,
        rounds: 5,
        repeat: 3,
        fleet_unix: false,
    };
    let mut hold_set = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "all" => o.scenarios.extend(ALL.map(String::from)),
            "bulk" | "echo" | "idle" | "churn" | "churn-resume" | "soak" | "control" | "fleet" => {
                o.scenarios.push(a.clone())
            }
            "--scenario" => o.scenarios.extend(val()?.split(',').map(String::from)),
            "--peers" => {
                o.peers = val()?
                    .split(',')
                    .map(|p| PeerKind::parse(p).with_context(|| format!("unknown peer {p}")))
                    .collect::<Result<_>>()?
            }
            "--sessions" => o.sessions = Some(val()?.parse()?),
            "--echo-sessions" => {
                o.echo_sessions = val()?
                    .split(',')
                    .map(|n| n.parse::<usize>())
                    .collect::<Result<_, _>>()?;
                o.full = false;
            }
            "--seconds" => o.seconds = Some(val()?.parse()?),
            "--rate" => o.rate = val()?.parse()?,
            "--size" => o.size = val()?.parse()?,
            "--idle-big" => o.idle_big = val()?.parse()?,
            "--hold" => {
                o.hold = val()?.parse()?;
                hold_set = true;
            }
            "--quick" => o.quick = true,
            "--out" => o.out = val()?.into(),
            "--relay" => o.relay = val()?.into(),
            "--no-pin" => o.pin = false,
            "--no-install" => o.install = false,
            "--max-minutes" => o.max_minutes = val()?.parse()?,
            "--minutes" => o.minutes = Some(val()?.parse()?),
            "--period" => o.period = val()?.parse()?,
            "--max-msg" => o.max_msg = val()?.parse()?,
            "--burst" => o.burst = val()?.parse()?,
            "--pongs" => o.pongs = val()?.parse()?,
            "--per" => o.per = val()?.parse()?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--repeat" => o.repeat = val()?.parse::<usize>()?.max(1),
            "--fleet-unix" => o.fleet_unix = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios.extend(ALL.map(String::from));
    }
    if let Some(s) = o
        .scenarios
        .iter()
        .find(|s| !ALL.contains(&s.as_str()) && !["soak", "control", "fleet"].contains(&s.as_str()))
    {
        bail!("unknown scenario {s}");
    }
    let mut named = o.scenarios.clone();
    named.sort();
    named.dedup();
    let mut all = ALL.map(String::from).to_vec();
    all.sort();
    o.full &= named == all
        && !o.quick
        && o.sessions.is_none()
        && o.seconds.is_none()
        && o.echo_sessions.iter().all(|&n| n > 0)
        && o.peers.len() == 6;
    if o.echo_sessions.is_empty() || o.echo_sessions.contains(&0) {
        bail!("--echo-sessions needs session counts above zero");
    }
    if o.quick {
        o.idle_big = o.idle_big.min(5000);
        if !hold_set {
            o.hold = 1.0;
        }
    }
    if o.per == 0 || o.max_msg == 0 || o.burst == 0 || o.period <= 0.0 {
        bail!("--per, --max-msg, --burst and --period must be above zero");
    }
    Ok(o)
}

/// The scenarios of `all`.
const ALL: [&str; 5] = ["bulk", "echo", "idle", "churn", "churn-resume"];

/// One variant of a scenario, measured on each of its peers (one after the
/// other; `paired`: all at once).
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: &'static str,
    pub variant: String,
    pub paired: bool,
    pub tls: bool,
    pub up: Up,
    pub peers: Vec<PeerKind>,
    /// Sessions (churn: concurrency).
    pub n: usize,
    pub secs: f64,
}

fn plans(o: &Opts, idle_addrs: u8) -> Vec<Plan> {
    use PeerKind::*;
    let q = |full: usize, quick: usize| o.sessions.unwrap_or(if o.quick { quick } else { full });
    let secs = |d: f64| o.seconds.unwrap_or(if o.quick { 2.0 } else { d });
    let p = |scenario, variant: &str, tls, up, peers: &[PeerKind], n, secs| Plan {
        scenario,
        variant: variant.to_string(),
        paired: false,
        tls,
        up,
        peers: peers
            .iter()
            .copied()
            .filter(|k| o.peers.contains(k))
            .collect(),
        n,
        secs,
    };
    let mut v = Vec::new();
    for s in &o.scenarios {
        match s.as_str() {
            "bulk" => {
                let (n, t) = (q(50, 10), secs(3.0));
                v.push(p(
                    "bulk",
                    "ws-down",
                    false,
                    Up::WsSource,
                    &[RelayUring, RelayEpoll, Nginx],
                    n,
                    t,
                ));
                v.push(p(
                    "bulk",
                    "ws-up",
                    false,
                    Up::WsSink,
                    &[RelayUring, RelayEpoll, Nginx],
                    n,
                    t,
                ));
                v.push(p(
                    "bulk",
                    "wss-down",
                    true,
                    Up::WsSource,
                    &[RelayUring, RelayEpoll, Nginx],
                    n,
                    t,
                ));
                v.push(p(
                    "bulk",
                    "tcp-down",
                    false,
                    Up::TcpSource,
                    &[RelayUring, RelayEpoll, Websockify],
                    n,
                    t,
                ));
            }
            "echo" => {
                let t = secs(8.0);
                let counts = match (o.sessions, o.quick) {
                    (Some(n), _) => vec![n],
                    (None, true) => vec![200],
                    (None, false) => o.echo_sessions.clone(),
                };
                for n in counts {
                    let mut e = p(
                        "echo",
                        &format!("ws-{n}"),
                        false,
                        Up::WsEcho,
                        &[Direct, RelayUring, RelayEpoll, Nginx],
                        n,
                        t,
                    );
                    e.paired = true;
                    v.push(e);
                }
                v.push(p(
                    "echo",
                    "tcp",
                    false,
                    Up::TcpEcho,
                    &[RelayUring, Websockify],
                    q(100, 50),
                    t,
                ));
            }
            "idle" => {
                // Each session holds two sockets in the relay and two in the
                // generator: RLIMIT_NOFILE caps both.
                let fit = peers::max_sessions();
                let tls_n = q(10_000, 1000).min(fit);
                if tls_n < q(10_000, 1000) {
                    eprintln!(
                        "idle ws, wss: {tls_n} sessions, not 10000: RLIMIT_NOFILE hard limit {}",
                        peers::nofile_hard()
                    );
                }
                v.push(p(
                    "idle",
                    "wss",
                    true,
                    Up::WsIdle(0),
                    &[RelayUring, RelayEpoll, Nginx],
                    tls_n,
                    o.hold,
                ));
                v.push(p(
                    "idle",
                    "ws",
                    false,
                    Up::WsIdle(0),
                    &[RelayUring, RelayEpoll, Nginx],
                    tls_n,
                    o.hold,
                ));
                if o.idle_big > 0 {
                    let n = o.idle_big.min(fit);
                    if n < o.idle_big {
                        eprintln!(
                            "idle ws-max: {n} sessions, not {}: RLIMIT_NOFILE hard limit {}",
                            o.idle_big,
                            peers::nofile_hard()
                        );
                    }
                    v.push(p(
                        "idle",
                        "ws-max",
                        false,
                        Up::WsIdle(idle_addrs),
                        &[RelayUring, RelayEpoll],
                        n,
                        o.hold,
                    ));
                }
                v.push(p(
                    "idle",
                    "tcp",
                    false,
                    Up::TcpEcho,
                    &[RelayUring, Websockify],
                    q(200, 50),
                    o.hold,
                ));
            }
            "churn" => {
                let t = secs(3.0);
                v.push(p(
                    "churn",
                    "wss",
                    true,
                    Up::WsEcho,
                    &[RelayUring, RelayEpoll, Nginx],
                    q(32, 16),
                    t,
                ));
                v.push(p(
                    "churn",
                    "tcp",
                    false,
                    Up::TcpEcho,
                    &[RelayUring, Websockify],
                    q(16, 8),
                    t,
                ));
            }
            "churn-resume" => v.push(p(
                "churn-resume",
                "wss",
                true,
                Up::WsEcho,
                &[RelayUring, RelayEpoll, Nginx],
                q(32, 16),
                secs(3.0),
            )),
            "soak" => {
                // Each session holds two sockets in the relay, and the
                // generator holds both ends' other two (browser leg and
                // upstream leg): RLIMIT_NOFILE caps both.
                let fit = peers::max_sessions() / 4 * 4;
                let want = q(9000, 1000);
                if want > fit {
                    eprintln!(
                        "soak: {fit} sessions, not {want}: RLIMIT_NOFILE hard limit {}",
                        peers::nofile_hard()
                    );
                }
                let t = o
                    .minutes
                    .map(|m| m * 60.0)
                    .or(o.seconds)
                    .unwrap_or(if o.quick { 20.0 } else { 120.0 });
                v.push(p(
                    "soak",
                    "wss",
                    true,
                    Up::WsEcho,
                    &[RelayUring, RelayEpoll],
                    want.min(fit),
                    t,
                ));
            }
            "fleet" => {
                // Cost: saturating churn (32 loops), off and on alternating,
                // three rounds (the machine's noise shows as their spread).
                // Latency: 2 loops, far from saturation, so the handshake's
                // percentiles are its work and the store's round trip, not
                // a queue.
                let t = secs(5.0);
                for variant in ["cpu-1", "cpu-2", "cpu-3"] {
                    v.push(p(
                        "fleet",
                        variant,
                        true,
                        Up::WsEcho,
                        &[RelayUring, RelayFleet],
                        q(32, 16),
                        t,
                    ));
                }
                v.push(p(
                    "fleet",
                    "latency",
                    true,
                    Up::WsEcho,
                    &[RelayUring, RelayFleet],
                    2,
                    t,
                ));
            }
            "control" => v.push(p(
                "control",
                "pongs",
                false,
                Up::WsSink,
                &[RelayUring, RelayEpoll],
                1,
                0.0,
            )),
            _ => unreachable!(),
        }
    }
    v.retain(|p| !p.peers.is_empty());
    v
}

/// Round trips per second the paired echo offers in all (each goes to
/// every peer): what one generator core drives without saturating.
const PAIRED_TICKS: f64 = 2000.0;

/// A paired-echo session's message rate: `--rate`, but at most
/// [`PAIRED_TICKS`] over all sessions (200 sessions: 10/s; 1,000: 2/s), so
/// that the larger variant measures more sessions, not a saturated generator.
fn paired_rate(o: &Opts, sessions: usize) -> f64 {
    o.rate.min(PAIRED_TICKS / sessions.max(1) as f64)
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs a missing peer; returns whether it is there now.
fn ensure(cmd: &str, install: &str, allowed: bool) -> bool {
    if have(cmd) {
        return true;
    }
    if !allowed {
        eprintln!("{cmd} is missing (and --no-install): skipping that peer");
        return false;
    }
    eprintln!("installing {cmd}: {install}");
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{install} >/dev/null 2>&1"))
        .status();
    have(cmd)
}

fn pin_self(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn raise_nofile() {
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            // No CAP_SYS_RESOURCE: go as far as the hard limit.
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
        }
    }
}

fn main() {
    if let Err(e) = real_main() {
        peers::kill_all();
        eprintln!("nexor-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let mut o = parse_opts()?;
    if !o.relay.exists() {
        bail!(
            "no relay binary at {} (cargo build --release --bin nexor-relay)",
            o.relay.display()
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let place = Placement {
        peer_cpu: (o.pin && cores >= 2).then_some(0),
    };
    if place.peer_cpu.is_some() {
        pin_self(1);
    }
    raise_nofile();
    if o.peers.contains(&PeerKind::Nginx)
        && !ensure(
            "nginx",
            "apt-get install -y --no-install-recommends nginx",
            o.install,
        )
    {
        o.peers.retain(|p| *p != PeerKind::Nginx);
    }
    if o.peers.contains(&PeerKind::Websockify)
        && !ensure("websockify", "pip install websockify", o.install)
    {
        o.peers.retain(|p| *p != PeerKind::Websockify);
    }
    if o.scenarios.iter().any(|s| s == "fleet")
        && !ensure(
            "redis-server",
            "apt-get install -y --no-install-recommends redis-server",
            o.install,
        )
    {
        o.peers.retain(|p| *p != PeerKind::RelayFleet);
    }
    let max = Duration::from_secs_f64(o.max_minutes * 60.0);
    std::thread::spawn(move || {
        std::thread::sleep(max);
        eprintln!("nexor-bench: --max-minutes reached; stopping every peer");
        peers::kill_all();
        std::process::exit(3);
    });
    let dir = std::env::temp_dir().join(format!("nexor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&o.out)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(run_all(&o, &dir, place))?;
    let meta = report::Meta::collect(&o, place);
    let table = report::table(&rows, &meta);
    println!("\n{table}");
    let json = serde_json::to_string_pretty(&report::json(&rows, &meta))?;
    let svg = report::svg(&rows, &meta);
    // This run's own folder, named by its UTC start minute.
    let mut run_dir = o.out.join(&meta.stamp);
    let mut k = 1;
    while run_dir.exists() {
        k += 1;
        run_dir = o.out.join(format!("{}-{k}", meta.stamp));
    }
    std::fs::create_dir_all(&run_dir)?;
    for (d, stem) in [(&run_dir, "results"), (&o.out, "latest")] {
        std::fs::write(d.join(format!("{stem}.json")), &json)?;
        std::fs::write(d.join(format!("{stem}.svg")), &svg)?;
        std::fs::write(d.join(format!("{stem}.md")), &table)?;
    }
    println!(
        "wrote {0}/results.{{json,md,svg}} and {1}/latest.* (logs: {2})",
        run_dir.display(),
        o.out.display(),
        dir.display()
    );
    if o.full {
        let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let readme = bench_dir.parent().unwrap_or(&bench_dir).join("README.md");
        // The link in the README, relative to the workspace root.
        let rel = run_dir
            .strip_prefix(&bench_dir)
            .map(|p| format!("bench/{}", p.display()))
            .unwrap_or_else(|_| run_dir.display().to_string());
        match report::update_readme(&readme, &report::readme_block(&rows, &meta, &rel)) {
            Ok(true) => println!("rewrote the benchmark table in {}", readme.display()),
            Ok(false) => eprintln!(
                "{} has no <!-- bench:begin --> ... <!-- bench:end --> block: not rewritten",
                readme.display()
            ),
            Err(e) => eprintln!("README not rewritten: {e:#}"),
        }
    }
    Ok(())
}

/// One round of one peer: its metrics, driver and error.
type Run = (Metrics, Option<String>, Option<String>);

/// Each metric's median over the rounds (the mean of the middle two for an
/// even count).
fn medians<'a>(rounds: impl Iterator<Item = &'a Metrics>) -> Metrics {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for m in rounds {
        for (k, v) in m {
            all.entry(k.clone()).or_default().push(*v);
        }
    }
    all.into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let mid = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            };
            (k, mid)
        })
        .collect()
}

async fn run_all(o: &Opts, dir: &std::path::Path, place: Placement) -> Result<Vec<Row>> {
    const IDLE_ADDRS: u8 = 5;
    upstream::BURST.store(o.burst as u64, std::sync::atomic::Ordering::Relaxed);
    let ups = upstream::start(IDLE_ADDRS)?;
    let (cert, key) = tls::make_cert(dir)?;
    let minter = Arc::new(ticket::Minter::new());
    let connector = tokio_rustls::TlsConnector::from(tls::client_config()?);
    let env = PeerEnv {
        dir,
        relay_bin: &o.relay,
        cert: &cert,
        key: &key,
        ups: &ups,
        minter: &minter,
        place,
        fleet_unix: o.fleet_unix,
    };
    let t0 = Instant::now();
    let plans = plans(o, IDLE_ADDRS);
    // bulk and churn run in interleaved rounds (A B C, A B C, ...): drift of
    // the shared machine then hits every peer alike, and the medians drop
    // the odd round. Paired echo and idle run once.
    let repeat = if o.quick { 1 } else { o.repeat };
    let rounds_of = |p: &Plan| {
        if matches!(p.scenario, "bulk" | "churn" | "churn-resume") {
            repeat
        } else {
            1
        }
    };
    let mut runs: Vec<Vec<Vec<Run>>> = plans
        .iter()
        .map(|p| vec![Vec::new(); p.peers.len()])
        .collect();
    let mut paired_rows: Vec<Vec<Row>> = vec![Vec::new(); plans.len()];
    for round in 0..repeat {
        for (pi, plan) in plans.iter().enumerate() {
            if round >= rounds_of(plan) {
                continue;
            }
            if plan.paired {
                let label = format!(
                    "{} {} ({} at once)",
                    plan.scenario,
                    plan.variant,
                    plan.peers
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                eprintln!("[{:>5.0}s] {label}", t0.elapsed().as_secs_f64());
                for row in run_paired(plan, &env, &minter, &connector, o).await {
                    eprintln!("        {:<24} {}", row.peer, row.brief());
                    paired_rows[pi].push(row);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            for (ki, &kind) in plan.peers.iter().enumerate() {
                let label = format!("{} {} {}", plan.scenario, plan.variant, kind.name());
                let of = rounds_of(plan);
                let r = if of > 1 {
                    format!(" {}/{of}", round + 1)
                } else {
                    String::new()
                };
                eprint!("[{:>5.0}s] {:<36} ", t0.elapsed().as_secs_f64(), label + &r);
                let res = run_one(plan, kind, &env, &minter, &connector, o).await;
                let run = match res {
                    Ok((m, driver)) => (m, driver, None),
                    Err(e) => (Default::default(), None, Some(format!("{e:#}"))),
                };
                let row = Row::new(plan, kind, run.1.clone(), run.0.clone(), run.2.clone());
                eprintln!("{}", row.brief());
                runs[pi][ki].push(run);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut rows = Vec::new();
    for (pi, plan) in plans.iter().enumerate() {
        rows.append(&mut paired_rows[pi]);
        for (ki, &kind) in plan.peers.iter().enumerate() {
            let rs = &runs[pi][ki];
            let row = match rs.iter().find_map(|r| r.2.clone()) {
                Some(e) => Row::new(plan, kind, None, Default::default(), Some(e)),
                None if rs.is_empty() => continue,
                None => {
                    let mut m = medians(rs.iter().map(|r| &r.0));
                    m.insert("rounds".into(), rs.len() as f64);
                    Row::new(plan, kind, rs[0].1.clone(), m, None)
                }
            };
            rows.push(row);
        }
    }
    report::derive(&mut rows);
    Ok(rows)
}

/// A paired plan: every peer started, measured at once, stopped; one row
/// per peer (a peer that does not start gets its error row).
async fn run_paired(
    plan: &Plan,
    env: &PeerEnv<'_>,
    minter: &Arc<ticket::Minter>,
    connector: &tokio_rustls::TlsConnector,
    o: &Opts,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut started = Vec::new();
    for &kind in &plan.peers {
        match Peer::start(kind, plan.tls, plan.up, env) {
            Ok(p) => started.push(p),
            Err(e) => rows.push(Row::new(
                plan,
                kind,
                None,
                Default::default(),
                Some(format!("{e:#}")),
            )),
        }
    }
    let dials: Vec<(&Peer, load::Dial)> = started
        .iter()
        .map(|p| (p, load::Dial::new(p, connector, minter)))
        .collect();
    let limit = Duration::from_secs_f64(plan.secs + 360.0);
    let res = tokio::time::timeout(
        limit,
        load::echo_paired(&dials, plan.n, paired_rate(o, plan.n), o.size, plan.secs),
    )
    .await
    .context("run timed out")
    .and_then(|r| r);
    drop(dials);
    match res {
        Ok(ms) => {
            for (p, m) in started.iter().zip(ms) {
                rows.push(Row::new(plan, p.kind, p.driver.clone(), m, None));
            }
        }
        Err(e) => {
            for p in &started {
                rows.push(Row::new(
                    plan,
                    p.kind,
                    p.driver.clone(),
                    Default::default(),
                    Some(format!("{e:#}")),
                ));
            }
        }
    }
    for mut p in started {
        p.stop();
    }
    // Rows in the plan's peer order.
    rows.sort_by_key(|r| {
        plan.peers
            .iter()
            .position(|k| k.name() == r.peer)
            .unwrap_or(usize::MAX)
    });
    rows
}

async fn run_one(
    plan: &Plan,
    kind: PeerKind,
    env: &PeerEnv<'_>,
    minter: &Arc<ticket::Minter>,
    connector: &tokio_rustls::TlsConnector,
    o: &Opts,
) -> Result<(load::Metrics, Option<String>)> {
    let mut peer = Peer::start(kind, plan.tls, plan.up, env)?;
    let dial = load::Dial::new(&peer, connector, minter);
    let limit = Duration::from_secs_f64(plan.secs + 360.0);
    let fut = async {
        match plan.scenario {
            "bulk" => load::bulk(&peer, &dial, plan.up, plan.n, plan.secs).await,
            "echo" => load::echo(&peer, &dial, plan.up, plan.n, o.rate, o.size, plan.secs).await,
            "churn" | "fleet" => load::churn(&peer, &dial, plan.up, plan.n, plan.secs, false).await,
            "churn-resume" => load::churn(&peer, &dial, plan.up, plan.n, plan.secs, true).await,
            "soak" => {
                let cfg = soak::SoakCfg {
                    secs: plan.secs,
                    period: o.period,
                    max_msg: o.max_msg,
                    burst: o.burst,
                };
                soak::soak(&peer, &dial, plan.n, cfg).await
            }
            "control" => soak::control(&peer, &dial, o.pongs, o.per, o.rounds).await,
            _ => {
                let ups = match plan.up {
                    Up::WsIdle(k) if k > 0 => (0..k).map(Up::WsIdle).collect(),
                    u => vec![u],
                };
                load::idle(&mut peer, &dial, ups, plan.n, plan.secs).await
            }
        }
    };
    let m = tokio::time::timeout(limit, fut)
        .await
        .context("run timed out")??;
    let driver = peer.driver.clone();
    peer.stop();
    Ok((m, driver))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamp_has_the_folder_shape() {
        let s = super::utc_stamp();
        assert_eq!(s.len(), "2026-12-06T2300Z".len(), "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T",
            "{s}"
        );
    }
}
