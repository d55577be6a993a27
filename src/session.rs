//! One client connection, start to close, as a forward-only sequence of
//! stages, each a small function below, in this order:
//!
//! ```text
//! handshake slot → [PROXY header] → [TLS] → request head → client IP
//!   → (console page) → admit → dial upstream → 101 → preamble → relay
//! ```
//!
//! Every stage before the 101 can refuse with the exact status of
//! docs/design.md §2 (src/admission decides all but the upstream's), or
//! drop the connection without an answer ([`Dropped`]); the upstream is
//! connected before the browser hears 101. The session's ledger slots are
//! held by its [`Admission`] and released when it drops, whichever stage
//! ends it. Each session logs one line at start and one at its end;
//! refusals log their reason and the client address. Tickets are never
//! logged: the audit key is the SHA-256 of the `jti`.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRentExt;
use monoio::net::TcpStream;

use crate::client_addr::{self, ProxyHeader};
use crate::config::Config;
use crate::error::{Dropped, Refusal};
use crate::http::{self, HeadError, HeadLimits, RequestHead};
use crate::log::V;
use crate::registry::{Admission, Admit, HandshakeSlot, SessionCtl, Slots};
use crate::relay::viewonly::{View, ViewFilter};
use crate::relay::{self, Leg, Meter, Settings};
use crate::state::{unix_now, Live, State};
use crate::ticket::{self, Claims, Console};
use crate::transport::Stream;
use crate::upstream::{self, Opened};
use crate::ws::handshake;

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
    /// The next session id on this worker (`worker-n`), taken once a
    /// connection is admitted (a recording is named after it).
    fn next_sid(&self) -> String {
        let n = self.started.get() + 1;
        self.started.set(n);
        format!("{}-{n}", self.id)
    }

    /// Answers a refusal, counted and audited.
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
    fn dropped(&self, client: IpAddr, why: Dropped) {
        let reason = why.label();
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
    let cfg = &live.cfg;
    let mut slot = match handshake_slot(&worker.state, cfg, peer.ip()) {
        Ok(slot) => slot,
        Err(why) => return worker.dropped(peer.ip(), why),
    };
    // Slowloris guard: PROXY header, TLS and the request head within the deadline.
    let arrived = monoio::time::timeout(
        cfg.limits.handshake_timeout,
        arrive(&live, tcp, peer, &mut slot),
    )
    .await;
    let Arrived {
        mut stream,
        head,
        early,
        peer: peer_ip,
    } = match arrived {
        Err(_) => return worker.dropped(peer.ip(), Dropped::HandshakeTimeout),
        Ok(Err((ip, why))) => return worker.dropped(ip, why),
        Ok(Ok(a)) => a,
    };
    let head = match head {
        Ok(head) => head,
        Err(e) => return worker.refuse(&mut stream, peer_ip, Refusal::Head(e)).await,
    };
    let client = match client_ip(cfg, peer_ip, &head, &mut slot) {
        Ok(ip) => ip,
        Err((ip, why)) => return worker.dropped(ip, why),
    };
    if serve_page(&live, &mut stream, &head).await {
        return;
    }
    let admission = match admit(&worker.state, cfg, &head, client).await {
        Ok(a) => a,
        Err(r) => return worker.refuse(&mut stream, client, r).await,
    };
    drop(head);
    let sid = worker.next_sid();
    let ready = match connect(
        &worker.state,
        &live,
        &mut stream,
        admission,
        early,
        slot,
        &sid,
    )
    .await
    {
        Ok(ready) => ready,
        Err(Stop::Refuse(r)) => return worker.refuse(&mut stream, client, r).await,
        Err(Stop::Drop(why)) => return worker.dropped(client, why),
    };
    let phase = RelayPhase::new(sid, cfg, client, ready, stream);
    // The relay phase is its own task, so everything the handshake held
    // (head, ticket, config, upstream dial) is freed for the session's life.
    // Behind the panic net: a panic ends this session, not the worker.
    crate::task::spawn(relay_phase(worker.clone(), phase));
}

/// Stage: a handshake slot, before anything is read. A trusted balancer
/// or proxy is not counted as one client: its connections count against
/// the client it names, once read.
fn handshake_slot(state: &State, cfg: &Config, peer: IpAddr) -> Result<HandshakeSlot, Dropped> {
    let trusted = client_addr::proxy_header_trusted(peer, &cfg.server.trusted_proxies);
    let tcp_ip = (!trusted).then(|| client_addr::canonical(peer));
    state.registry.begin_handshake(
        tcp_ip,
        cfg.limits.max_handshakes,
        cfg.limits.max_handshakes_per_ip,
    )
}

/// What arrived before the deadline: the stream (TLS or not), the request
/// head or why it is malformed, the bytes after the head (a client may send
/// its first frames at once) and the peer's address (the PROXY source when
/// configured).
struct Arrived {
    stream: Stream,
    head: Result<RequestHead, HeadError>,
    early: Vec<u8>,
    peer: IpAddr,
}

/// Stages: PROXY header (if configured), TLS (if configured), then the
/// request head.
async fn arrive(
    live: &Live,
    mut tcp: TcpStream,
    peer: SocketAddr,
    slot: &mut HandshakeSlot,
) -> Result<Arrived, (IpAddr, Dropped)> {
    let mut ip = client_addr::canonical(peer.ip());
    if live.cfg.server.proxy_protocol {
        ip = proxy_header(live, &mut tcp, ip, slot).await?;
    }
    let mut stream = match &live.tls {
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(s) => Stream::Tls(Box::new(s)),
            Err(_) => return Err((ip, Dropped::TlsHandshakeFailed)),
        },
        None => Stream::Tcp(tcp),
    };
    let (head, early) = read_head(&mut stream, head_limits(&live.cfg))
        .await
        .map_err(|why| (ip, why))?;
    Ok(Arrived {
        stream,
        head,
        early,
        peer: ip,
    })
}

/// Stage: the PROXY header's source, counted against its handshake slots.
/// Only a balancer may say who the client is: from anyone else a PROXY
/// header would let the client choose its own address.
async fn proxy_header(
    live: &Live,
    tcp: &mut TcpStream,
    peer: IpAddr,
    slot: &mut HandshakeSlot,
) -> Result<IpAddr, (IpAddr, Dropped)> {
    if !client_addr::proxy_header_trusted(peer, &live.cfg.server.trusted_proxies) {
        return Err((peer, Dropped::ProxyUntrusted));
    }
    let ip = read_proxy_header(tcp, peer)
        .await
        .map_err(|why| (peer, why))?;
    if !slot.rebind(ip, live.cfg.limits.max_handshakes_per_ip) {
        return Err((ip, Dropped::HandshakeCapacityIp));
    }
    Ok(ip)
}

/// Reads exactly `n` more bytes onto `buf`.
async fn read_more(tcp: &mut TcpStream, buf: Vec<u8>, n: usize) -> Result<Vec<u8>, Dropped> {
    let mut more = Vec::with_capacity(n);
    let (res, b) = tcp.read_exact(more).await;
    more = b;
    res.map_err(|_| Dropped::ClosedInProxyHeader)?;
    let mut buf = buf;
    buf.extend_from_slice(&more);
    Ok(buf)
}

/// The PROXY protocol header, read without consuming a byte past it (the
/// TLS handshake follows): 8 bytes tell v1 from v2; v2 gives its length;
/// v1 is read up to its CRLF.
async fn read_proxy_header(tcp: &mut TcpStream, peer: IpAddr) -> Result<IpAddr, Dropped> {
    let mut buf = read_more(tcp, Vec::new(), 8).await?;
    loop {
        match client_addr::parse(&buf) {
            Ok(Some((ProxyHeader::Proxied { source }, _))) => {
                return Ok(client_addr::canonical(source.ip()))
            }
            Ok(Some((ProxyHeader::Local, _))) => return Ok(peer),
            Err(e) => return Err(Dropped::Proxy(e)),
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

/// Stage: the request head, and the bytes after it (not lost).
async fn read_head(
    stream: &mut Stream,
    limits: HeadLimits,
) -> Result<(Result<RequestHead, HeadError>, Vec<u8>), Dropped> {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return Err(Dropped::ClosedBeforeHead),
            Err(_) => return Err(Dropped::ReadErrorBeforeHead),
            Ok(_) => {}
        }
        match http::parse_request(&buf, limits) {
            Ok(None) => continue,
            Ok(Some((head, n))) => {
                let early = buf.split_off(n);
                return Ok((Ok(head), early));
            }
            Err(e) => return Ok((Err(e), Vec::new())),
        }
    }
}

/// Stage: the client's address (src/client_addr.rs: a trusted proxy's
/// forwarding header, or the peer), counted against its handshake slots.
fn client_ip(
    cfg: &Config,
    peer: IpAddr,
    head: &RequestHead,
    slot: &mut HandshakeSlot,
) -> Result<IpAddr, (IpAddr, Dropped)> {
    let client = client_addr::client_ip(
        peer,
        head,
        &cfg.server.trusted_proxies,
        cfg.server.client_ip_header,
    );
    if !slot.rebind(client, cfg.limits.max_handshakes_per_ip) {
        return Err((client, Dropped::HandshakeCapacityIp));
    }
    Ok(client)
}

/// Stage: the console page and its assets, when on (`GET` of a path other
/// than the console's). True if it answered.
async fn serve_page(live: &Live, stream: &mut Stream, head: &RequestHead) -> bool {
    let Some(page) = &live.page else {
        return false;
    };
    let (path, _) = http::split_target(&head.target);
    if path == live.cfg.server.path || head.method != "GET" {
        return false;
    }
    let Some(r) = page.get(path) else {
        return false;
    };
    let resp = http::page_response(&r, &page.csp());
    let _ = monoio::time::timeout(relay::CLOSE_GRACE, async {
        let _ = stream.write_all(resp).await;
        let _ = stream.shutdown().await;
    })
    .await;
    true
}

/// Stage: every decision on the head (src/admission), the clock read here.
/// In fleet mode the ledger's decision is the store's (src/fleet/admit.rs:
/// one round trip, awaited).
async fn admit(
    state: &State,
    cfg: &Config,
    head: &RequestHead,
    client: IpAddr,
) -> Result<Admission, Refusal> {
    let at = Admit {
        client,
        now: unix_now(),
        draining: state.draining(),
    };
    match &state.fleet {
        Some(fleet) => crate::fleet::admit::admit(fleet, &state.registry, head, at, cfg).await,
        None => state.registry.admit(head, at, cfg),
    }
}

/// Why a connection that was admitted ends before it relays.
enum Stop {
    /// Answered with an HTTP status (the upstream's 502/504).
    Refuse(Refusal),
    /// Closed without an answer (after the 101, or the browser is gone).
    Drop(Dropped),
}

/// An admitted session whose console is open and whose browser has its 101.
struct Ready {
    admission: Admission,
    opened: Opened,
    /// The browser's bytes after the preamble, for the pump.
    early: Vec<u8>,
    /// View-only tickets: the filter of the browser's stream, already fed
    /// what the preamble passed on.
    view: Option<ViewFilter>,
    recording: RecordingStart,
    /// From admission to ready.
    connect_time: Duration,
}

/// Stages: dial, 101, preamble. On a failure `admission` drops here, so
/// its slots are released (the ticket may be retried at once) before the
/// caller answers; the handshake slot is let go after the 101.
async fn connect(
    state: &State,
    live: &Live,
    stream: &mut Stream,
    admission: Admission,
    early: Vec<u8>,
    slot: HandshakeSlot,
    sid: &str,
) -> Result<Ready, Stop> {
    let t_connect = Instant::now();
    let recording = record_stage(&live.cfg, &admission, sid)
        .await
        .map_err(Stop::Refuse)?;
    let opened = dial(state, live, &admission).await.map_err(Stop::Refuse)?;
    upgrade(stream, &admission, &opened)
        .await
        .map_err(|()| Stop::Drop(Dropped::BrowserGoneBefore101))?;
    drop(slot);
    let (opened, early, view) = preamble(stream, opened, early, &admission.claims, &live.cfg)
        .await
        .map_err(Stop::Drop)?;
    if let Some(r) = &recording.file {
        r.tap_payload_down(&opened.to_browser);
    }
    Ok(Ready {
        admission,
        opened,
        early,
        view,
        recording,
        connect_time: t_connect.elapsed(),
    })
}

/// Stage: the upstream leg, before the browser's 101.
async fn dial(state: &State, live: &Live, a: &Admission) -> Result<Opened, Refusal> {
    let cfg = &live.cfg;
    let name = &a.claims.upstream;
    // Admission checked it in this same `cfg`.
    let up = cfg.upstreams.get(name).ok_or(Refusal::UnknownUpstream)?;
    let dial = upstream::Dial {
        connectors: &live.connectors,
        gates: &state.registry.gates,
        limits: head_limits(cfg),
        max_frame: cfg.limits.max_frame,
    };
    upstream::open(name, up, &dial, a.upgrade.selected_protocol(), &a.claims)
        .await
        .map_err(Refusal::Upstream)
}

/// Stage: the 101, with the subprotocol the upstream selected (frames) or
/// the one the relay selected (bytes, Proxmox).
async fn upgrade(stream: &mut Stream, a: &Admission, opened: &Opened) -> Result<(), ()> {
    let protocol = match opened.mode {
        relay::Mode::Frames => opened.protocol.as_deref(),
        relay::Mode::Bytes | relay::Mode::Proxmox => a.upgrade.selected_protocol(),
    };
    let (res, _) = stream
        .write_all(handshake::response_101(&a.upgrade.key, protocol))
        .await;
    res.map(|_| ()).map_err(|_| ())
}

/// Stage: what the browser hears before the pump: the upstream's first
/// bytes (termproxy), and for Proxmox VNC the relay's RFB server side until
/// the browser's ClientInit. Returns the bytes left over on each leg.
async fn preamble(
    stream: &mut Stream,
    mut opened: Opened,
    mut early: Vec<u8>,
    claims: &Claims,
    cfg: &Config,
) -> Result<(Opened, Vec<u8>, Option<ViewFilter>), Dropped> {
    if upstream::proxmox::write_frames(stream, &opened.to_browser, false)
        .await
        .is_err()
    {
        return Err(Dropped::BrowserGoneAfter101);
    }
    // View-only: the browser's stream is filtered from its first message.
    let mut view = (claims.mode == ticket::Mode::View)
        .then(|| ViewFilter::new(View::of(opened.mode, claims.console)));
    if let Some(phase) = opened.pending.take() {
        let done = upstream::proxmox::finish_browser(
            phase,
            stream,
            std::mem::take(&mut early),
            &mut opened.stream,
            cfg.limits.max_frame,
            cfg.limits.handshake_timeout,
            view.as_mut(),
        )
        .await;
        match done {
            Ok((browser_left, upstream_left)) => {
                early = browser_left;
                opened.early = upstream_left;
            }
            Err(e) => {
                let _ = stream.shutdown().await;
                return Err(Dropped::BrowserPhase(e));
            }
        }
    }
    Ok((opened, early, view))
}

/// What a session keeps once it relays.
struct RelayPhase {
    sid: String,
    console: &'static str,
    /// The ticket's `mode`: "control" or "view".
    access: &'static str,
    client: String,
    connect_time: Duration,
    settings: Settings,
    mode: relay::Mode,
    browser: Leg,
    upstream: Leg,
    /// Released (with the grant the outcome allows) when the phase ends.
    slots: Slots,
    recording: RecordingStart,
}

impl RelayPhase {
    /// Stage: the two legs and the session's settings; the head, ticket
    /// and upstream dial are let go here.
    fn new(sid: String, cfg: &Config, client: IpAddr, ready: Ready, stream: Stream) -> RelayPhase {
        let Ready {
            admission,
            opened,
            early,
            view,
            recording,
            connect_time,
        } = ready;
        let Admission {
            claims, mut slots, ..
        } = admission;
        slots.relaying();
        let console = match claims.console {
            Console::Vnc => "vnc",
            Console::Term => "term",
        };
        let (br, bw) = stream.into_split();
        let (ur, uw) = opened.stream.into_split();
        RelayPhase {
            sid,
            console,
            access: claims.mode.as_str(),
            client: client.to_string(),
            connect_time,
            settings: Settings {
                max_frame: cfg.limits.max_frame,
                ping_interval: cfg.server.ping_interval,
                pong_timeout: cfg.server.pong_timeout,
                lifetime: Some(slots.lifetime()),
                idle_timeout: cfg.limits.idle_timeout,
                view,
            },
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
            slots,
            recording,
        }
    }
}

/// Stage: relays a session to its end, with its audit lines and metrics.
async fn relay_phase(worker: Rc<Worker>, p: RelayPhase) {
    let mut slots = p.slots;
    let ctl: Arc<SessionCtl> = slots.ctl().clone();
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
            ("mode", V::S(p.access)),
            ("client", V::S(&p.client)),
            ("reconnect", V::B(ctl.reconnect)),
            ("connect_ms", V::N(p.connect_time.as_millis() as u64)),
        ]
        .into_iter()
        .chain(
            p.recording
                .file
                .as_ref()
                .map(|r| ("recording", V::S(r.name()))),
        )
        .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let meter = Meter {
        metrics: worker.state.metrics.clone(),
        core: worker.id,
        recording: p.recording.file.clone(),
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
    let recorded = match &p.recording.file {
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
            ("mode", V::S(p.access)),
            ("duration_ms", V::N(duration.as_millis() as u64)),
        ]
        .into_iter()
        .chain(error.as_deref().map(|e| ("error", V::S(e))))
        .chain(recording_fields(
            recorded.as_ref(),
            p.recording.error.as_deref(),
        ))
        .collect::<Vec<_>>(),
    );
    // Last (as `slots` drops): the drain exits once no session is live,
    // and must not lose the line above.
    slots.set_outcome(out.code, out.by.as_str());
}

// ---- recording (docs/recording.md) ----

/// A session's recording as it starts: the open file, or why a wanted
/// one is missing.
#[derive(Default)]
struct RecordingStart {
    file: Option<Rc<crate::record::Recording>>,
    error: Option<String>,
}

/// Stage: the recording, opened before the upstream so that `required`
/// refuses with a clean 503 (`recording_unavailable`) before the 101.
async fn record_stage(cfg: &Config, a: &Admission, sid: &str) -> Result<RecordingStart, Refusal> {
    match open_recording(cfg, &a.claims, &a.slots.ctl().vm, sid).await {
        Ok(file) => Ok(RecordingStart {
            file: file.map(Rc::new),
            error: None,
        }),
        Err(e) => {
            crate::log::warn(
                "recording unavailable",
                &[("sid", V::S(sid)), ("error", V::S(&e))],
            );
            if cfg.recording.store.as_ref().is_some_and(|s| s.required) {
                return Err(Refusal::RecordingUnavailable);
            }
            Ok(RecordingStart {
                file: None,
                error: Some(e),
            })
        }
    }
}

/// Opens the session's recording if the ticket or the upstream asks for
/// one: Ok(None) when not recorded, Err(why) when wanted but impossible.
async fn open_recording(
    cfg: &Config,
    claims: &Claims,
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
    let up = cfg.upstreams.get(&claims.upstream);
    let proxmox = matches!(up, Some(Upstream::Proxmox(_)));
    let kind = match claims.console {
        Console::Term => Kind::Cast { termproxy: proxmox },
        // The relay makes the browser's RFB handshake itself for Proxmox.
        Console::Vnc => Kind::Vnc {
            handshake: !proxmox,
        },
    };
    let raw = matches!(up, Some(Upstream::Tcp { .. } | Upstream::Demo));
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
