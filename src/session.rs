//! One client connection, start to close:
//!
//! ```text
//! Tls → Head → Ticket → Upstream → 101 → Relay → Closed
//! ```
//!
//! Every step before the 101 can refuse with the exact status of
//! DESIGN.md §2; the upstream is connected before the browser hears 101.
//! Each session logs one line at start and one at its end; refusals log
//! their reason and the client address. Tickets are never logged: the
//! audit key is the SHA-256 of the `jti`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use monoio::buf::IoBufMut;
use monoio::net::TcpStream;
use monoio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::Refusal;
use crate::http::{self, HeadLimits, RequestHead};
use crate::log::{self, V};
use crate::relay::{self, Leg, Settings};
use crate::ticket::{self, Claims, Console};
use crate::transport::Stream;
use crate::upstream::{self, Connectors};
use crate::ws::handshake::{self, HandshakeError, Upgrade};

/// What every session on one worker thread shares.
pub struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub tls: Option<TlsAcceptor>,
    pub connectors: Connectors,
    /// Sessions started on this worker, for session ids.
    pub started: Cell<u64>,
}

impl Worker {
    fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_head: self.cfg.limits.max_head,
            max_headers: self.cfg.limits.max_headers,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves one accepted TCP connection to its end.
pub async fn handle(worker: Rc<Worker>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let peer_s = peer.ip().to_string();
    let deadline = worker.cfg.limits.handshake_timeout;
    // Slowloris guard: TLS and the whole request head within the deadline.
    let head = monoio::time::timeout(deadline, read_head(&worker, tcp)).await;
    let (mut stream, head, early) = match head {
        Err(_) => return refused_quietly(&peer_s, "handshake_timeout"),
        Ok(Err(Quiet(reason))) => return refused_quietly(&peer_s, reason),
        Ok(Ok(Err((mut stream, e)))) => {
            return refuse(&mut stream, &peer_s, Refusal::Head(e)).await
        }
        Ok(Ok(Ok(parts))) => parts,
    };
    let (upgrade, claims) = match admit(&worker, &head) {
        Ok(v) => v,
        Err(r) => return refuse(&mut stream, &peer_s, r).await,
    };
    let Some(up) = worker.cfg.upstreams.get(&claims.upstream) else {
        return refuse(&mut stream, &peer_s, Refusal::UnknownUpstream).await;
    };
    let offered = upgrade.selected_protocol();
    let t_connect = Instant::now();
    let opened = upstream::open(
        &claims.upstream,
        up,
        &worker.connectors,
        offered,
        claims.console,
        worker.head_limits(),
    )
    .await;
    let opened = match opened {
        Ok(o) => o,
        Err(e) => return refuse(&mut stream, &peer_s, Refusal::Upstream(e)).await,
    };
    let protocol = match opened.mode {
        relay::Mode::Frames => opened.protocol.as_deref(),
        relay::Mode::Bytes => offered,
    };
    let (res, _) = stream
        .write_all(handshake::response_101(&upgrade.key, protocol))
        .await;
    if res.is_err() {
        return refused_quietly(&peer_s, "browser_gone_before_101");
    }

    let n = worker.started.get() + 1;
    worker.started.set(n);
    let sid = format!("{}-{n}", worker.id);
    let jti_hash = hex(&claims.replay_key()[..16]);
    let console = match claims.console {
        Console::Vnc => "vnc",
        Console::Term => "term",
    };
    log::info(
        "session start",
        &[
            ("sid", V::S(&sid)),
            ("jti_sha256", V::S(&jti_hash)),
            ("sub", V::S(&claims.sub)),
            ("upstream", V::S(&claims.upstream)),
            ("console", V::S(console)),
            ("client", V::S(&peer_s)),
            ("connect_ms", V::N(t_connect.elapsed().as_millis() as u64)),
        ],
    );
    let started = Instant::now();
    let (br, bw) = stream.into_split();
    let (ur, uw) = opened.stream.into_split();
    let settings = Settings {
        max_frame: worker.cfg.limits.max_frame,
        ping_interval: worker.cfg.server.ping_interval,
    };
    let out = relay::run(
        Leg {
            reader: br,
            writer: bw,
            early,
        },
        Leg {
            reader: ur,
            writer: uw,
            early: opened.early,
        },
        opened.mode,
        settings,
    )
    .await;
    log::info(
        "session end",
        &[
            ("sid", V::S(&sid)),
            ("jti_sha256", V::S(&jti_hash)),
            ("sub", V::S(&claims.sub)),
            ("upstream", V::S(&claims.upstream)),
            ("client", V::S(&peer_s)),
            ("code", V::N(out.code as u64)),
            ("reason", V::S(out.reason)),
            ("by", V::S(out.by.as_str())),
            ("bytes_up", V::N(out.bytes_up)),
            ("bytes_down", V::N(out.bytes_down)),
            ("duration_ms", V::N(started.elapsed().as_millis() as u64)),
        ],
    );
}

/// A connection dropped without an HTTP answer (no TLS, no head).
struct Quiet(&'static str);

type Head = (Stream, RequestHead, Vec<u8>);

/// TLS (if configured), then the request head. Bytes after the head (a
/// client may send its first frames at once) are returned, not lost.
async fn read_head(
    worker: &Worker,
    tcp: TcpStream,
) -> Result<Result<Head, (Stream, http::HeadError)>, Quiet> {
    let mut stream = match &worker.tls {
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(s) => Stream::ServerTls(Box::new(s)),
            Err(_) => return Err(Quiet("tls_handshake_failed")),
        },
        None => Stream::Tcp(tcp),
    };
    let limits = worker.head_limits();
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(2048.min(limits.max_head));
        }
        let (filled, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream.read(buf.slice_mut(filled..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return Err(Quiet("closed_before_head")),
            Err(_) => return Err(Quiet("read_error_before_head")),
            Ok(_) => {}
        }
        match http::parse_request(&buf, limits) {
            Ok(None) => continue,
            Ok(Some((head, n))) => {
                let early = buf.split_off(n);
                return Ok(Ok((stream, head, early)));
            }
            Err(e) => return Ok(Err((stream, e))),
        }
    }
}

/// Routing, the upgrade, and the ticket: everything decided on the head.
fn admit(worker: &Worker, head: &RequestHead) -> Result<(Upgrade, Claims), Refusal> {
    let (path, query) = http::split_target(&head.target);
    if path != worker.cfg.server.path {
        return Err(Refusal::NotFound);
    }
    let upgrade = handshake::check_upgrade(head).map_err(Refusal::Handshake)?;
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
    let t = &worker.cfg.tickets;
    let claims = ticket::verify(token, &t.keys, &t.policy, unix_now()).map_err(Refusal::Ticket)?;
    Ok((upgrade, claims))
}

async fn refuse(stream: &mut Stream, peer: &str, r: Refusal) {
    log::info(
        "refused",
        &[
            ("status", V::N(r.status() as u64)),
            ("reason", V::S(r.label())),
            ("client", V::S(peer)),
        ],
    );
    let body = http::refusal(r.status(), r.headers(), &r.body());
    let _ = monoio::time::timeout(relay::CLOSE_GRACE, async {
        let _ = stream.write_all(body).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn refused_quietly(peer: &str, reason: &'static str) {
    log::info(
        "dropped",
        &[("reason", V::S(reason)), ("client", V::S(peer))],
    );
}
