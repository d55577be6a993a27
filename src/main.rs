//! The `nexor-relay` command: parses the CLI, loads the config, and hands
//! over to `server::serve`. See `nexor-relay help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nexor_relay::config::{parse_duration, Config};
use nexor_relay::state::unix_now as now;
use nexor_relay::ticket::{self, Claims, Console, Guest};
use nexor_relay::{server, tls};

const HELP: &str = "\
nexor-relay — console relay for VMNexor (noVNC / xterm.js ⇄ VM consoles)

USAGE:
  nexor-relay serve -c FILE            run the relay with a config file
  nexor-relay demo [--listen ADDR] [--assets DIR]
                                       relay + built-in demo console + console page, self-signed TLS
  nexor-relay check-config -c FILE     validate a config; errors name the key
  nexor-relay ticket mint -c FILE --upstream NAME [--console vnc|term] [--sub ID]
        [--ttl 60s] [--kid ID] [--jti ID] [--node N --vmid N --guest qemu|lxc]
        [--ip ADDR] [--aud ID] [--max-session SECS] [--mode control|view]
        [--record true]
                                       print a signed ticket (JWT HS256)
  nexor-relay ticket inspect [-c FILE] TOKEN
                                       decode a ticket; with -c also verify it
  nexor-relay replay FILE [--listen ADDR] [--assets DIR]
                                       play a recording (.cast or .vncrec) in a browser:
                                       prints the page's URL (default 127.0.0.1:8090)
  nexor-relay fingerprint https://host:8006
                                       print the SHA-256 of a server's certificate, to pin
  nexor-relay --version
";

fn main() -> ExitCode {
    nexor_relay::tls::install_default_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nexor-relay: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--flag value` options and positional arguments.
struct Args {
    opts: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Args {
    fn parse(args: &[String], flags: &[&str]) -> Result<Args> {
        let mut opts = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a.starts_with('-') && a.len() > 1 {
                let name = a.trim_start_matches('-');
                let name = if name == "c" { "config" } else { name };
                if !flags.contains(&name) {
                    bail!("unknown option `{a}` (see `nexor-relay help`)");
                }
                let v = it.next().ok_or_else(|| anyhow!("`{a}` needs a value"))?;
                opts.push((name.to_string(), v.clone()));
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { opts, positional })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn config(&self) -> Result<Config> {
        let path = self
            .get("config")
            .ok_or_else(|| anyhow!("`-c FILE` is required"))?;
        Config::load(&PathBuf::from(path)).map_err(|e| anyhow!("{path}: {e}"))
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            print!("{HELP}");
            return Ok(ExitCode::from(2));
        }
    };
    match cmd {
        "serve" => {
            let a = Args::parse(rest, &["config"])?;
            let cfg = a.config()?;
            serve(a.get("config").map(PathBuf::from), cfg, None)
        }
        "check-config" => {
            let a = Args::parse(rest, &["config"])?;
            let cfg = a.config()?;
            if let Some(t) = &cfg.server.tls {
                tls::server_config(&t.cert, &t.key).map_err(|e| anyhow!(e))?;
            }
            nexor_relay::upstream::Connectors::build(&cfg).map_err(|e| anyhow!(e))?;
            println!(
                "config ok: listen {} ({}), {} worker(s), path {}, {} key(s), upstreams: {}",
                cfg.server.listen,
                if cfg.server.tls.is_some() {
                    "wss"
                } else {
                    "ws"
                },
                cfg.server.workers,
                cfg.server.path,
                cfg.tickets.keys.len(),
                cfg.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        "ticket" => match rest.split_first() {
            Some((sub, rest)) if sub == "mint" => mint(rest),
            Some((sub, rest)) if sub == "inspect" => inspect(rest),
            _ => bail!("`ticket mint` or `ticket inspect`"),
        },
        "demo" => demo(rest),
        "replay" => replay(rest),
        "fingerprint" => match rest {
            [url] => {
                let fp = tls::fetch_fingerprint(url).map_err(|e| anyhow!("{url}: {e}"))?;
                println!("{}", tls::fingerprint_hex(&fp));
                Ok(ExitCode::SUCCESS)
            }
            _ => bail!("fingerprint https://host:8006"),
        },
        "--version" | "-V" | "version" => {
            println!("nexor-relay {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}` (see `nexor-relay help`)"),
    }
}

/// `replay FILE`: serves the recording until killed (docs/recording.md).
fn replay(rest: &[String]) -> Result<ExitCode> {
    let a = Args::parse(rest, &["listen", "assets"])?;
    let [file] = a.positional.as_slice() else {
        bail!("replay FILE [--listen ADDR] [--assets DIR]");
    };
    let listen = a
        .get("listen")
        .unwrap_or("127.0.0.1:8090")
        .parse()
        .map_err(|_| anyhow!("--listen: an ip:port"))?;
    let opts = nexor_relay::record::replay::Options {
        file: PathBuf::from(file),
        listen,
        assets: a.get("assets").map(PathBuf::from),
    };
    let (addr, serve) = nexor_relay::record::replay::bind(&opts).map_err(|e| anyhow!(e))?;
    // Written once, errors ignored: whoever started us may stop reading.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "replay: http://{addr}/\n        http://{addr}/?speed=4   (speed 0 = as fast as possible)"
    );
    let _ = out.flush();
    serve();
    Ok(ExitCode::SUCCESS)
}

type Banner = Box<dyn FnOnce(std::net::SocketAddr)>;

fn serve(path: Option<PathBuf>, cfg: Config, banner: Option<Banner>) -> Result<ExitCode> {
    let tls = match &cfg.server.tls {
        Some(t) => Some(tls::server_config(&t.cert, &t.key).map_err(|e| anyhow!(e))?),
        None => None,
    };
    serve_with(path, cfg, tls, banner)
}

fn serve_with(
    path: Option<PathBuf>,
    cfg: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    banner: Option<Banner>,
) -> Result<ExitCode> {
    server::serve(path, cfg, tls, |addr| {
        if let Some(b) = banner {
            b(addr)
        }
    })
    .map_err(|e| anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mint(rest: &[String]) -> Result<ExitCode> {
    let a = Args::parse(
        rest,
        &[
            "config",
            "upstream",
            "console",
            "sub",
            "ttl",
            "kid",
            "jti",
            "node",
            "vmid",
            "guest",
            "ip",
            "aud",
            "max-session",
            "mode",
            "record",
        ],
    )?;
    let cfg = a.config()?;
    let keys = &cfg.tickets.keys;
    let key = match a.get("kid") {
        Some(k) => keys
            .get(k)
            .ok_or_else(|| anyhow!("--kid {k}: no such key in [tickets] keys"))?,
        None => keys
            .first()
            .ok_or_else(|| anyhow!("no ticket key configured"))?,
    };
    let upstream = a
        .get("upstream")
        .ok_or_else(|| anyhow!("--upstream NAME is required"))?;
    if !cfg.upstreams.contains_key(upstream) {
        bail!("--upstream {upstream}: no such upstream in the config");
    }
    let max_ttl = cfg.tickets.policy.max_ttl;
    let ttl = match a.get("ttl") {
        Some(t) => parse_duration(t)
            .map_err(|e| anyhow!("--ttl: {e}"))?
            .as_secs(),
        None => max_ttl.min(60),
    };
    let iat = now();
    let num = |name: &str| -> Result<Option<u64>> {
        a.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .with_context(|| format!("--{name} must be a number"))
            })
            .transpose()
    };
    let claims = Claims {
        exp: iat + ttl,
        iat,
        nbf: None,
        jti: a
            .get("jti")
            .map(str::to_string)
            .unwrap_or_else(|| random_hex(16)),
        sub: a.get("sub").unwrap_or("cli").to_string(),
        aud: a.get("aud").map(str::to_string),
        upstream: upstream.to_string(),
        node: a.get("node").map(str::to_string),
        vmid: num("vmid")?,
        guest: match a.get("guest") {
            None => None,
            Some("qemu") => Some(Guest::Qemu),
            Some("lxc") => Some(Guest::Lxc),
            Some(g) => bail!("--guest {g}: qemu or lxc"),
        },
        console: match a.get("console").unwrap_or("vnc") {
            "vnc" => Console::Vnc,
            "term" => Console::Term,
            c => bail!("--console {c}: vnc or term"),
        },
        ip: a.get("ip").map(str::to_string),
        max_session: num("max-session")?,
        mode: match a.get("mode").unwrap_or("control") {
            "control" => ticket::Mode::Control,
            "view" => ticket::Mode::View,
            m => bail!("--mode {m}: control or view"),
        },
        record: match a.get("record") {
            None | Some("false") => false,
            Some("true") => true,
            Some(r) => bail!("--record {r}: true or false"),
        },
    };
    let token = ticket::mint(&claims, key);
    // Never print a ticket the relay itself would refuse.
    ticket::verify_signature(&token, keys)
        .map_err(|e| anyhow!("the claims given make an invalid ticket: {e}"))?;
    claims
        .check_time(&cfg.tickets.policy, iat)
        .map_err(|e| anyhow!("the claims given make an invalid ticket: {e}"))?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn inspect(rest: &[String]) -> Result<ExitCode> {
    let a = Args::parse(rest, &["config"])?;
    let token = match a.positional.as_slice() {
        [t] if t == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s.trim().to_string()
        }
        [t] => t.trim().to_string(),
        _ => bail!("ticket inspect [-c FILE] TOKEN (or - for stdin)"),
    };
    let (header, payload) = match ticket::decode_unverified(&token) {
        Ok(v) => v,
        Err(e) => {
            println!("invalid: {e} ({}, HTTP {})", e.label(), e.status());
            return Ok(ExitCode::from(1));
        }
    };
    println!("header:  {header}");
    println!("claims:  {}", serde_json::to_string_pretty(&payload)?);
    if let (Some(exp), Some(iat)) = (payload["exp"].as_u64(), payload["iat"].as_u64()) {
        let n = now();
        println!(
            "times:   issued {}s ago, {}",
            n.saturating_sub(iat),
            if exp > n {
                format!("expires in {}s", exp - n)
            } else {
                format!("expired {}s ago", n - exp)
            }
        );
    }
    if a.get("config").is_none() {
        println!("signature: not checked (pass -c FILE to verify)");
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = a.config()?;
    match ticket::verify(&token, &cfg.tickets.keys, &cfg.tickets.policy, now()) {
        Ok(c) if !cfg.upstreams.contains_key(&c.upstream) => {
            println!("invalid: upstream `{}` is not configured (403)", c.upstream);
            Ok(ExitCode::from(1))
        }
        Ok(_) => {
            println!("valid");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("invalid: {e} ({}, HTTP {})", e.label(), e.status());
            Ok(ExitCode::from(1))
        }
    }
}

/// How long the demo's printed tickets stay valid.
const DEMO_TICKET_TTL: Duration = Duration::from_secs(3600);

fn demo(rest: &[String]) -> Result<ExitCode> {
    let a = Args::parse(rest, &["listen", "workers", "assets"])?;
    let listen = a.get("listen").unwrap_or("127.0.0.1:8443");
    let workers = a.get("workers").unwrap_or("0");
    let secret = {
        let mut k = [0u8; 32];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k);
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k)
    };
    // A local copy of noVNC and xterm.js for the console page, else CDN.
    let assets = a
        .get("assets")
        .map(str::to_string)
        .or_else(|| std::env::var("NEXOR_CONSOLE_ASSETS").ok())
        .map(|p| format!("console_assets = {p:?}\n"))
        .unwrap_or_default();
    let toml = format!(
        "[server]\nlisten = \"{listen}\"\nworkers = {workers}\nconsole_page = true\n{assets}[tickets]\nkeys = [{{ id = \"demo\", secret = \"{secret}\" }}]\n\
max_ttl = \"{}s\"\n[admin]\nlisten = \"off\"\n[audit]\noutput = \"stderr\"\n[upstreams.demo]\nkind = \"demo\"\n",
        DEMO_TICKET_TTL.as_secs()
    );
    let cfg =
        Config::from_toml(&toml, std::path::Path::new(".")).map_err(|e| anyhow!("demo: {e}"))?;
    let cert = tls::self_signed().map_err(|e| anyhow!("demo certificate: {e}"))?;
    let key = cfg
        .tickets
        .keys
        .first()
        .ok_or_else(|| anyhow!("demo key"))?
        .clone();
    let fingerprint = tls::fingerprint_hex(&cert.fingerprint);
    let path = cfg.server.path.clone();
    let banner = Box::new(move |addr: std::net::SocketAddr| {
        let iat = now();
        let t = |console| {
            ticket::mint(
                &Claims {
                    exp: iat + DEMO_TICKET_TTL.as_secs(),
                    iat,
                    nbf: None,
                    jti: random_hex(16),
                    sub: "demo".into(),
                    aud: None,
                    upstream: "demo".into(),
                    node: None,
                    vmid: None,
                    guest: None,
                    console,
                    ip: None,
                    max_session: None,
                    mode: Default::default(),
                    record: false,
                },
                &key,
            )
        };
        let (vnc, term) = (t(Console::Vnc), t(Console::Term));
        println!("nexor-relay demo is running on wss://{addr}{path} (self-signed certificate)");
        println!("  certificate SHA-256: {fingerprint}");
        println!("  open in a browser (accept the certificate warning), valid 1 h:");
        println!("    screen:   https://{addr}/#console=vnc&ticket={vnc}");
        println!("    terminal: https://{addr}/#console=term&ticket={term}");
        println!("  or with any WebSocket client:");
        println!("  VNC console (test pattern), valid 1 h:");
        println!("    wss://{addr}{path}?ticket={vnc}");
        println!("  terminal (line echo), valid 1 h:");
        println!("    wss://{addr}{path}?ticket={term}");
        println!("  try: websocat -k --binary 'wss://{addr}{path}?ticket=<terminal ticket>'");
        println!("  stop with Ctrl-C");
    });
    serve_with(None, cfg, Some(cert.config), Some(banner))
}
