//! nexor-bench: the load generator and peer harness of nexor-relay.
//!
//! One command runs four scenarios (`bulk`, `echo`, `idle`, `churn`) against
//! the relay on io_uring and on epoll, nginx and websockify, all on the same
//! built-in upstreams in the same run, and reports every figure as a ratio
//! against the peers: the relay's own CPU time (user + system, all threads)
//! is the cost measure. See BENCHMARKING.md at the workspace root.
//!
//! Three more scenarios run only when named: `soak` (many checked TLS
//! sessions of four shapes for minutes: sessions lost, bytes verified, peak
//! RSS), `control` (the relay's CPU for a burst of empty pongs vs the
//! same pongs paced) and `fleet` (TLS churn with `[fleet]` on a local
//! redis-server vs without: sessions per CPU-s in three saturating rounds,
//! and the handshake's percentiles at 2 loops).
//!
//! ```text
//! nexor-bench [all|bulk|echo|idle|churn|soak|control|fleet]... [--peers a,b] [--sessions N]
//!             [--seconds S] [--minutes M] [--rate R] [--idle-big N] [--concurrency C]
//!             [--quick] [--out DIR] [--relay PATH] [--no-pin] [--no-install]
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
use peers::{Peer, PeerEnv, PeerKind, Placement, Up};
use report::Row;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: nexor-bench [all|bulk|echo|idle|churn|soak|control|fleet]... [options]
  (`all` is bulk, echo, idle and churn; soak, control and fleet run when named)
  --peers LIST        comma list of relay-uring,relay-epoll,relay-fleet,nginx,websockify,direct
                      (default: all; relay-fleet runs in the fleet scenario only)
  --sessions N        sessions of every selected variant (defaults: bulk 50, echo 1000 (tcp 100),
                      idle 10000 TLS / 200 tcp, churn concurrency 32)
  --seconds S         measuring window of bulk/echo/churn (default 5; echo 8)
  --rate R            echo messages per second per session (default 10)
  --size B            echo message size (default 64)
  --idle-big N        plaintext idle sessions through relay-uring (default 100000; 0 skips)
  --hold S            seconds idle sessions are held before the check (default 5)
  --quick             small sizes (a smoke test in about a minute)
  --out DIR           results folder (default bench/results)
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
    seconds: Option<f64>,
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
    fleet_unix: bool,
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
        seconds: None,
        rate: 10.0,
        size: 64,
        idle_big: 100_000,
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
        fleet_unix: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "all" => o
                .scenarios
                .extend(["bulk", "echo", "idle", "churn"].map(String::from)),
            "bulk" | "echo" | "idle" | "churn" | "soak" | "control" | "fleet" => {
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
            "--seconds" => o.seconds = Some(val()?.parse()?),
            "--rate" => o.rate = val()?.parse()?,
            "--size" => o.size = val()?.parse()?,
            "--idle-big" => o.idle_big = val()?.parse()?,
            "--hold" => o.hold = val()?.parse()?,
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
            "--fleet-unix" => o.fleet_unix = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios
            .extend(["bulk", "echo", "idle", "churn"].map(String::from));
    }
    if let Some(s) = o.scenarios.iter().find(|s| {
        !["bulk", "echo", "idle", "churn", "soak", "control", "fleet"].contains(&s.as_str())
    }) {
        bail!("unknown scenario {s}");
    }
    if o.quick {
        o.idle_big = o.idle_big.min(5000);
    }
    if o.per == 0 || o.max_msg == 0 || o.burst == 0 || o.period <= 0.0 {
        bail!("--per, --max-msg, --burst and --period must be above zero");
    }
    Ok(o)
}

/// One variant of a scenario, measured on each of its peers.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: &'static str,
    pub variant: &'static str,
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
    let p = |scenario, variant, tls, up, peers: &[PeerKind], n, secs| Plan {
        scenario,
        variant,
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
                let (n, t) = (q(50, 10), secs(5.0));
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
                v.push(p(
                    "echo",
                    "ws",
                    false,
                    Up::WsEcho,
                    &[Direct, RelayUring, RelayEpoll, Nginx],
                    q(1000, 200),
                    t,
                ));
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
                        "idle wss: {tls_n} sessions, not 10000: RLIMIT_NOFILE hard limit {}",
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
                let t = secs(5.0);
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
    std::fs::write(
        o.out.join("latest.json"),
        serde_json::to_string_pretty(&report::json(&rows, &meta))?,
    )?;
    std::fs::write(o.out.join("latest.svg"), report::svg(&rows, &meta))?;
    std::fs::write(o.out.join("latest.md"), &table)?;
    println!(
        "wrote {0}/latest.json, {0}/latest.svg, {0}/latest.md (logs: {1})",
        o.out.display(),
        dir.display()
    );
    Ok(())
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
    let mut rows = Vec::new();
    for plan in plans(o, IDLE_ADDRS) {
        for &kind in &plan.peers {
            let label = format!("{} {} {}", plan.scenario, plan.variant, kind.name());
            eprint!("[{:>5.0}s] {label:<32} ", t0.elapsed().as_secs_f64());
            let res = run_one(&plan, kind, &env, &minter, &connector, o).await;
            let row = match res {
                Ok((m, driver)) => Row::new(&plan, kind, driver, m, None),
                Err(e) => Row::new(
                    &plan,
                    kind,
                    None,
                    Default::default(),
                    Some(format!("{e:#}")),
                ),
            };
            eprintln!("{}", row.brief());
            rows.push(row);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    report::derive(&mut rows);
    Ok(rows)
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
            "churn" | "fleet" => load::churn(&peer, &dial, plan.up, plan.n, plan.secs).await,
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
