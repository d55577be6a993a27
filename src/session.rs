//! One client connection, start to close:
//!
//! ```text
//! [PROXY] → Tls → Head → client IP → Ticket → policy → Upstream → 101 → Relay → Closed
//! ```
//!
//! Every step before the 101 can refuse with the exact status of
//! docs/design.md §2; the upstream is connected before the browser hears 101.
//! Each session logs one line at start and one at its end; refusals log
//! their reason and the client address. Tickets are never logged: the
//! audit key is the SHA-256 of the `jti`.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::io::AsyncReadRentExt;
use monoio::net::TcpStream;

use crate::client_addr::{self, ProxyHeader};
use crate::config::{Config, OriginPolicy};
use crate::error::Refusal;
use crate::http::{self, HeadLimits, RequestHead};
use crate::log::V;
use crate::registry::{HandshakeSlot, Request};
use crate::relay::{self, Leg, Meter, Settings};
use crate::state::{unix_now, Live, State};
use crate::ticket::{self, Claims, Console};
use crate::transport::Stream;
use crate::upstream;
use crate::ws::handshake::{self, HandshakeError, Upgrade};

/// What every session on one worker thread shares.
pub struct Worker {
    pub id: usize,
    pub state: Arc<State>,
    /// Sessions started on this worker, for session ids.
    pub started: Cell<u64>,
}

fn head_limits(cfg: &Config) -> HeadLimits {
    HeadLimits {
        max_head: cfg.limits.max_head,
        max_headers: cfg.limits.max_headers,
    }
}

impl Worker {
    async fn refuse(&self, stream: &mut Stream, client: IpAddr, r: Refusal) {
        self.state
            .metrics
            .worker(self.id)
            .refused(r.label(), r.status());
        self.state.audit.refused(
            unix_now(),
            &[
                ("status", V::N(r.status() as u64)),
                ("reason", V::S(r.label())),
                ("client", V::S(&client.to_string())),
            ],
        );
        let body = http::refusal(r.status(), r.headers(), &r.body());
        let _ = monoio::time::timeout(relay::CLOSE_GRACE, async {
            let _ = stream.write_all(body).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }

    /// A connection dropped without an HTTP answer.
    fn dropped(&self, client: IpAddr, reason: &'static str) {
        self.state.metrics.worker(self.id).refused(reason, 0);
        self.state.audit.refused(
            unix_now(),
            &[
                ("status", V::N(0)),
                ("reason", V::S(reason)),
                ("client", V::S(&client.to_string())),
            ],
        );
    }
}

/// Serves one accepted TCP connection to its end.
pub async fn handle(worker: Rc<Worker>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let live = worker.state.live();
    let cfg = live.cfg.clone();
    let registry = &worker.state.registry;
    // A trusted balancer or proxy is not counted as one client: its
    // connections count against the client it names, once read.
    let trusted = client_addr::proxy_header_trusted(peer.ip(), &cfg.server.trusted_proxies);
    let per_ip = cfg.limits.max_handshakes_per_ip;
    let tcp_ip = (!trusted).then(|| client_addr::canonical(peer.ip()));
    let mut slot = match registry.begin_handshake(tcp_ip, cfg.limits.max_handshakes, per_ip) {
        Ok(slot) => slot,
        Err(reason) => return worker.dropped(peer.ip(), reason),
    };
    // Slowloris guard: PROXY header, TLS and the request head within the deadline.
    let head = monoio::time::timeout(
        cfg.limits.handshake_timeout,
        read_head(&live, tcp, peer, &mut slot),
    )
    .await;
    let (mut stream, head, early, peer_ip) = match head {
        Err(_) => return worker.dropped(peer.ip(), "handshake_timeout"),
        Ok(Err((ip, reason))) => return worker.dropped(ip, reason),
        Ok(Ok(Err((mut stream, ip, e)))) => {
            return worker.refuse(&mut stream, ip, Refusal::Head(e)).await
        }
        Ok(Ok(Ok(parts))) => parts,
    };
    let client = client_addr::client_ip(
        peer_ip,
        &head,
        &cfg.server.trusted_proxies,
        cfg.server.client_ip_header,
    );
    if !slot.rebind(client, per_ip) {
        return worker.dropped(client, "handshake_capacity_ip");
    }
    if let Some(page) = &live.page {
        let (path, _) = http::split_target(&head.target);
        if path != cfg.server.path && head.method == "GET" {
            if let Some(r) = page.get(path) {
                let resp = http::page_response(&r, &page.csp());
                let _ = monoio::time::timeout(relay::CLOSE_GRACE, async {
                    let _ = stream.write_all(resp).await;
                    let _ = stream.shutdown().await;
                })
                .await;
                return;
            }
        }
    }
    let (upgrade, claims) = match admit(worker.state.as_ref(), &cfg, &head, client) {
        Ok(v) => v,
        Err(r) => return worker.refuse(&mut stream, client, r).await,
    };
    let Some(up) = cfg.upstreams.get(&claims.upstream) else {
        return worker
            .refuse(&mut stream, client, Refusal::UnknownUpstream)
            .await;
    };
    let now = unix_now();
    let policy = &cfg.tickets.policy;
    let grace = cfg.tickets.reconnect_grace.as_secs();
    let admitted = registry.admit(
        Request {
            claims: &claims,
            time: claims.check_time(policy, now),
            client,
            now,
            leeway: policy.leeway,
            grace,
        },
        &cfg.limits,
    );
    let admitted = match admitted {
        Ok(a) => a,
        Err(d) => return worker.refuse(&mut stream, client, Refusal::Policy(d)).await,
    };
    let ctl = admitted.ctl;
    let n = worker.started.get() + 1;
    worker.started.set(n);
    let sid = format!("{}-{n}", worker.id);
    // Recording: opened before the upstream, so `required` refuses cleanly.
    let (recording, recording_error) = match open_recording(&cfg, &claims, up, &ctl.vm, &sid).await
    {
        Ok(r) => (r.map(Rc::new), None),
        Err(e) => {
            crate::log::warn(
                "recording unavailable",
                &[("sid", V::S(&sid)), ("error", V::S(&e))],
            );
            if cfg.recording.store.as_ref().is_some_and(|s| s.required) {
                registry.release(&ctl, unix_now(), grace, true);
                return worker
                    .refuse(&mut stream, client, Refusal::RecordingUnavailable)
                    .await;
            }
            (None, Some(e))
        }
    };
    let offered = upgrade.selected_protocol();
    let t_connect = Instant::now();
    let dial = upstream::Dial {
        connectors: &live.connectors,
        gates: &registry.gates,
        limits: head_limits(&cfg),
        max_frame: cfg.limits.max_frame,
    };
    let opened = upstream::open(&claims.upstream, up, &dial, offered, &claims).await;
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            // The console never opened: the client may retry with the same ticket.
            registry.release(&ctl, unix_now(), grace, true);
            return worker
                .refuse(&mut stream, client, Refusal::Upstream(e))
                .await;
        }
    };
    let protocol = match opened.mode {
        relay::Mode::Frames => opened.protocol.as_deref(),
        relay::Mode::Bytes | relay::Mode::Proxmox => offered,
    };
    let (res, _) = stream
        .write_all(handshake::response_101(&upgrade.key, protocol))
        .await;
    if res.is_err() {
        registry.release(&ctl, unix_now(), grace, true);
        return worker.dropped(client, "browser_gone_before_101");
    }
    drop(slot);
    let mut opened = opened;
    let mut early = early;
    if upstream::proxmox::write_frames(&mut stream, &opened.to_browser, false)
        .await
        .is_err()
    {
        registry.release(&ctl, unix_now(), grace, true);
        return worker.dropped(client, "browser_gone_after_101");
    }
    if let Some(r) = &recording {
        r.tap_payload_down(&opened.to_browser);
    }
    if let Some(phase) = opened.pending.take() {
        // Proxmox VNC: the relay is the browser's RFB server until ClientInit.
        let done = upstream::proxmox::finish_browser(
            phase,
            &mut stream,
            std::mem::take(&mut early),
            &mut opened.stream,
            cfg.limits.max_frame,
            cfg.limits.handshake_timeout,
        )
        .await;
        match done {
            Ok((browser_left, upstream_left)) => {
                early = browser_left;
                opened.early = upstream_left;
            }
            Err(reason) => {
                registry.release(&ctl, unix_now(), grace, true);
                let _ = stream.shutdown().await;
                return worker.dropped(client, reason);
            }
        }
    }

    let console = match claims.console {
        Console::Vnc => "vnc",
        Console::Term => "term",
    };
    let (br, bw) = stream.into_split();
    let (ur, uw) = opened.stream.into_split();
    let phase = RelayPhase {
        sid,
        console,
        client: client.to_string(),
        connect_time: t_connect.elapsed(),
        settings: Settings {
            max_frame: cfg.limits.max_frame,
            ping_interval: cfg.server.ping_interval,
            pong_timeout: cfg.server.pong_timeout,
            lifetime: Some(admitted.lifetime),
            idle_timeout: cfg.limits.idle_timeout,
        },
        grace,
        mode: opened.mode,
        browser: Leg {
            reader: br,
            writer: bw,
            early,
        },
        upstream: Leg {
            reader: ur,
            writer: uw,
            early: opened.early,
        },
        ctl,
        recording,
        recording_error,
    };
    // The relay phase is its own task, so everything the handshake held
    // (head, ticket, config, upstream dial) is freed for the session's life.
    // Behind the panic net: a panic ends this session, not the worker.
    crate::task::spawn(relay_phase(worker.clone(), phase));
}

/// A session's registry slots, released when the relay phase ends, even
/// by a panic unwinding through it: no slot (VM, user, live ticket) leaks
/// and a drain never waits for a session that is gone. A panic grants no
/// reconnect.
struct Slots {
    worker: Rc<Worker>,
    ctl: Arc<crate::registry::SessionCtl>,
    grace: u64,
    grant: Option<bool>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let grant = self.grant.unwrap_or(false);
        self.worker
            .state
            .registry
            .release(&self.ctl, unix_now(), self.grace, grant);
    }
}

/// What a session keeps once it relays.
struct RelayPhase {
    sid: String,
    console: &'static str,
    client: String,
    connect_time: std::time::Duration,
    settings: Settings,
    grace: u64,
    mode: relay::Mode,
    browser: Leg,
    upstream: Leg,
    ctl: Arc<crate::registry::SessionCtl>,
    /// The console's recording, if it is recorded (docs/recording.md).
    recording: Option<Rc<crate::record::Recording>>,
    /// Why a wanted recording is missing.
    recording_error: Option<String>,
}

/// Relays a session to its end, with its audit lines and metrics.
async fn relay_phase(worker: Rc<Worker>, p: RelayPhase) {
    let ctl = p.ctl;
    let mut slots = Slots {
        worker: worker.clone(),
        ctl: ctl.clone(),
        grace: p.grace,
        grant: None,
    };
    let jti_hash = ctl.jti_hash.to_string();
    let counters = worker.state.metrics.worker(worker.id);
    counters.opened(&ctl.upstream, p.console, p.connect_time);
    worker.state.audit.event(
        "session_start",
        &[
            ("sid", V::S(&p.sid)),
            ("jti_sha256", V::S(&jti_hash)),
            ("sub", V::S(&ctl.sub)),
            ("upstream", V::S(&ctl.upstream)),
            ("vm", V::S(&ctl.vm)),
            ("console", V::S(p.console)),
            ("client", V::S(&p.client)),
            ("reconnect", V::B(ctl.reconnect)),
            ("connect_ms", V::N(p.connect_time.as_millis() as u64)),
        ]
        .into_iter()
        .chain(p.recording.as_ref().map(|r| ("recording", V::S(r.name()))))
        .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let meter = Meter {
        metrics: worker.state.metrics.clone(),
        core: worker.id,
        recording: p.recording.clone(),
    };
    let out = relay::run(
        p.browser,
        p.upstream,
        p.mode,
        p.settings,
        Some(ctl.clone()),
        Some(meter),
    )
    .await;
    #[cfg(debug_assertions)]
    if let Some(d) = crate::upstream::demo::fault::session_end_delay() {
        monoio::time::sleep(d).await;
    }
    let duration = started.elapsed();
    let recorded = match &p.recording {
        Some(r) => Some(r.close().await),
        None => None,
    };
    counters.ended(&ctl.upstream, p.console, out.code, duration);
    // Failures only: a close from a peer, a deliberate end by the relay
    // and a console that really closed carry no error.
    let error = out.error.as_ref().map(|e| {
        counters.session_error(e.class);
        e.to_string()
    });
    worker.state.audit.event(
        "session_end",
        &[
            ("sid", V::S(&p.sid)),
            ("jti_sha256", V::S(&jti_hash)),
            ("sub", V::S(&ctl.sub)),
            ("upstream", V::S(&ctl.upstream)),
            ("vm", V::S(&ctl.vm)),
            ("client", V::S(&p.client)),
            ("code", V::N(out.code as u64)),
            ("reason", V::S(out.reason)),
            ("by", V::S(out.by.as_str())),
            ("bytes_up", V::N(out.bytes_up)),
            ("bytes_down", V::N(out.bytes_down)),
            ("console", V::S(p.console)),
            ("duration_ms", V::N(duration.as_millis() as u64)),
        ]
        .into_iter()
        .chain(error.as_deref().map(|e| ("error", V::S(e))))
        .chain(recording_fields(
            recorded.as_ref(),
            p.recording_error.as_deref(),
        ))
        .collect::<Vec<_>>(),
    );
    // Last (as `slots` drops): the drain exits once no session is live,
    // and must not lose the line above.
    slots.grant = Some(crate::registry::grant_allowed(out.code, out.by.as_str()));
}

// ---- recording (docs/recording.md) ----

/// Opens the session's recording if the ticket or the upstream asks for
/// one: Ok(None) when not recorded, Err(why) when wanted but impossible.
async fn open_recording(
    cfg: &Config,
    claims: &Claims,
    up: &crate::config::Upstream,
    vm: &str,
    sid: &str,
) -> Result<Option<crate::record::Recording>, String> {
    use crate::config::Upstream;
    use crate::record::writer::{Framing, Kind, Spec};
    if !cfg.recording.wanted(&claims.upstream, claims.record) {
        return Ok(None);
    }
    let Some(store) = &cfg.recording.store else {
        return Err("recording_not_configured".into());
    };
    let proxmox = matches!(up, Upstream::Proxmox(_));
    let kind = match claims.console {
        Console::Term => Kind::Cast { termproxy: proxmox },
        // The relay makes the browser's RFB handshake itself for Proxmox.
        Console::Vnc => Kind::Vnc {
            handshake: !proxmox,
        },
    };
    let raw = matches!(up, Upstream::Tcp { .. } | Upstream::Demo);
    let ext = match claims.console {
        Console::Term => crate::record::CAST_EXT,
        Console::Vnc => crate::record::VNC_EXT,
    };
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let spec = Spec {
        dir: store.dir.clone(),
        name: crate::record::file_name(micros / 1_000_000, &claims.sub, vm, sid, ext),
        kind,
        max_bytes: store.max_bytes,
        unix_micros: micros,
        title: format!("{} on {vm} ({sid})", claims.sub),
        up: if raw {
            Framing::Raw
        } else {
            Framing::ClientFrames
        },
    };
    crate::record::writer::open(spec).await.map(Some)
}

/// The `session_end` audit fields of a recording.
fn recording_fields<'a>(
    s: Option<&'a crate::record::Summary>,
    error: Option<&'a str>,
) -> Vec<(&'static str, V<'a>)> {
    let mut f = Vec::new();
    if let Some(s) = s {
        f.push(("recording", V::S(&s.file)));
        if let Some(h) = &s.sha256 {
            f.push(("recording_sha256", V::S(h)));
        }
        f.push(("recording_bytes", V::N(s.bytes)));
        if let Some(why) = s.truncated {
            f.push(("recording_truncated", V::B(true)));
            f.push(("recording_truncated_reason", V::S(why)));
        }
        if let Some(e) = &s.error {
            f.push(("recording_error", V::S(e)));
        }
    } else if let Some(e) = error {
        f.push(("recording_error", V::S(e)));
    }
    f
}

type Head = (Stream, RequestHead, Vec<u8>, IpAddr);
type HeadResult = Result<Result<Head, (Stream, IpAddr, http::HeadError)>, (IpAddr, &'static str)>;

/// Reads exactly `n` more bytes onto `buf`.
async fn read_more(tcp: &mut TcpStream, buf: Vec<u8>, n: usize) -> Result<Vec<u8>, &'static str> {
    let mut more = Vec::with_capacity(n);
    let (res, b) = tcp.read_exact(more).await;
    more = b;
    res.map_err(|_| "closed_in_proxy_header")?;
    let mut buf = buf;
    buf.extend_from_slice(&more);
    Ok(buf)
}

/// The PROXY protocol header, read without consuming a byte past it (the
/// TLS handshake follows): 8 bytes tell v1 from v2; v2 gives its length;
/// v1 is read up to its CRLF.
async fn read_proxy_header(tcp: &mut TcpStream, peer: IpAddr) -> Result<IpAddr, &'static str> {
    let mut buf = read_more(tcp, Vec::new(), 8).await?;
    loop {
        match client_addr::parse(&buf) {
            Ok(Some((ProxyHeader::Proxied { source }, _))) => {
                return Ok(client_addr::canonical(source.ip()))
            }
            Ok(Some((ProxyHeader::Local, _))) => return Ok(peer),
            Err(e) => return Err(e.label()),
            Ok(None) => {
                let want = if buf[0] == b'P' {
                    1
                } else if buf.len() < 16 {
                    16 - buf.len()
                } else {
                    16 + u16::from_be_bytes([buf[14], buf[15]]) as usize - buf.len()
                };
                buf = read_more(tcp, buf, want.max(1)).await?;
            }
        }
    }
}

/// PROXY header (if configured), TLS (if configured), then the request
/// head. Bytes after the head (a client may send its first frames at once)
/// are returned, not lost.
async fn read_head(
    live: &Live,
    mut tcp: TcpStream,
    peer: SocketAddr,
    slot: &mut HandshakeSlot,
) -> HeadResult {
    let mut ip = client_addr::canonical(peer.ip());
    if live.cfg.server.proxy_protocol {
        // Only a balancer may say who the client is: from anyone else a
        // PROXY header would let the client choose its own address.
        if !client_addr::proxy_header_trusted(ip, &live.cfg.server.trusted_proxies) {
            return Err((ip, "proxy_untrusted"));
        }
        ip = read_proxy_header(&mut tcp, ip).await.map_err(|r| (ip, r))?;
        if !slot.rebind(ip, live.cfg.limits.max_handshakes_per_ip) {
            return Err((ip, "handshake_capacity_ip"));
        }
    }
    let mut stream = match &live.tls {
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(s) => Stream::Tls(Box::new(s)),
            Err(_) => return Err((ip, "tls_handshake_failed")),
        },
        None => Stream::Tcp(tcp),
    };
    let limits = head_limits(&live.cfg);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return Err((ip, "closed_before_head")),
            Err(_) => return Err((ip, "read_error_before_head")),
            Ok(_) => {}
        }
        match http::parse_request(&buf, limits) {
            Ok(None) => continue,
            Ok(Some((head, n))) => {
                let early = buf.split_off(n);
                return Ok(Ok((stream, head, early, ip)));
            }
            Err(e) => return Ok(Err((stream, ip, e))),
        }
    }
}

/// Is `origin` allowed? Without a list, the Origin's host must be the
/// Host header's (default ports ignored); no Origin is fine for
/// non-browser clients unless `require_origin`.
pub fn origin_allowed(policy: &OriginPolicy, origin: Option<&str>, host: &str) -> bool {
    let Some(origin) = origin else {
        return !policy.require;
    };
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if !policy.allowed.is_empty() {
        return policy.allowed.contains(&o);
    }
    let Some((scheme, authority)) = o.split_once("://") else {
        return false; // "null" (sandboxed or file:// pages) and garbage
    };
    let default = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return false,
    };
    let host = host.trim().to_ascii_lowercase();
    authority.trim_end_matches(default) == host.trim_end_matches(default)
}

/// Everything decided on the head: route, rate, upgrade, origin, ticket.
fn admit(
    state: &State,
    cfg: &Config,
    head: &RequestHead,
    client: IpAddr,
) -> Result<(Upgrade, Claims), Refusal> {
    let (path, query) = http::split_target(&head.target);
    if path != cfg.server.path {
        return Err(Refusal::NotFound);
    }
    if state.draining() {
        return Err(Refusal::Draining);
    }
    let registry = &state.registry;
    if let Some(per_sec) = cfg.limits.handshakes_per_ip {
        if !registry.allow_handshake(client, unix_now(), per_sec) {
            return Err(Refusal::RateLimited);
        }
    }
    let upgrade = handshake::check_upgrade(head).map_err(Refusal::Handshake)?;
    if !origin_allowed(
        &cfg.server.origins,
        upgrade.origin.as_deref(),
        &upgrade.host,
    ) {
        return Err(Refusal::Origin);
    }
    let mut from_query = query
        .into_iter()
        .flat_map(|q| http::query_values(q, "ticket"));
    let q1 = from_query.next();
    if from_query.next().is_some() {
        return Err(Refusal::Handshake(HandshakeError::DuplicateTicket));
    }
    let token = match (q1, upgrade.ticket.as_deref()) {
        (Some(_), Some(_)) => return Err(Refusal::Handshake(HandshakeError::DuplicateTicket)),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(Refusal::NoTicket),
    };
    // Signature and claims now; time checks in the registry, which knows
    // whether a reconnect grant lets an expired ticket through.
    let t = &cfg.tickets;
    let claims = ticket::verify_signature(token, &t.keys).map_err(Refusal::Ticket)?;
    claims.check_audience(&t.policy).map_err(Refusal::Ticket)?;
    if let Some(bound) = &claims.ip {
        let ok = bound
            .parse::<IpAddr>()
            .is_ok_and(|ip| client_addr::canonical(ip) == client);
        if !ok {
            return Err(Refusal::WrongIp);
        }
    }
    Ok((upgrade, claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules() {
        let open = OriginPolicy::default();
        assert!(origin_allowed(&open, None, "relay.example"));
        assert!(origin_allowed(
            &open,
            Some("https://relay.example"),
            "relay.example"
        ));
        assert!(origin_allowed(
            &open,
            Some("https://Relay.Example:443"),
            "relay.example"
        ));
        assert!(origin_allowed(
            &open,
            Some("http://127.0.0.1:8080"),
            "127.0.0.1:8080"
        ));
        assert!(!origin_allowed(
            &open,
            Some("https://evil.example"),
            "relay.example"
        ));
        assert!(!origin_allowed(&open, Some("null"), "relay.example"));
        assert!(!origin_allowed(
            &open,
            Some("https://relay.example:8443"),
            "relay.example"
        ));
        let strict = OriginPolicy {
            allowed: vec!["https://portal.example".into()],
            require: true,
        };
        assert!(!origin_allowed(&strict, None, "relay.example"));
        assert!(origin_allowed(
            &strict,
            Some("https://portal.example/"),
            "relay.example"
        ));
        assert!(!origin_allowed(
            &strict,
            Some("https://relay.example"),
            "relay.example"
        ));
    }
}
