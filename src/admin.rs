//! The admin listener (loopback by default; optional bearer token):
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text, all cores merged |
//! | `GET /healthz` | 200 while every worker thread runs; 503 naming the dead ones |
//! | `GET /readyz` | 200, or 503 while draining |
//! | `GET /sessions` | live sessions as JSON (no secrets) |
//! | `POST /sessions/revoke?jti=…` / `jti_sha256=…` / `sub=…` / `vm=…` | closes the matching sessions with 1008 on every core; `{"revoked": n}` |
//!
//! Plain blocking std threads: admin traffic is a scrape every few
//! seconds, far from the data path.
//!
//! Against CSRF and DNS rebinding (a web page making the operator's browser
//! talk to this listener): a request whose `Host` is neither the address it
//! reached (or `localhost:port` on loopback) nor `[admin] host` is refused,
//! and so is any request carrying an `Origin` (browsers send one on every
//! POST and cross-origin fetch; scrapers and curl do not). At most
//! [`MAX_CONNECTIONS`] at once; a request must arrive whole within
//! [`ADMIN_TIMEOUT`] and its answer leave within as long.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::http::{self, HeadLimits, Headers};
use crate::log::{self, V};
use crate::metrics::Metrics;
use crate::registry::{JtiHash, Revoke};
use crate::state::State;

/// How long an admin client may take to send its whole request, and to
/// take its answer.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 16;

/// Gives an admin connection's place back when its thread ends.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a relay whose admin port is taken tries to bind it again.
pub const REBIND_EVERY: Duration = Duration::from_millis(200);

/// Binds the admin listener and serves it on a thread; returns its address
/// and whether it is bound yet.
///
/// Two relays on one host (an upgrade: the new one starts beside the old one,
/// sharing the console port through `SO_REUSEPORT`, then the old one gets
/// SIGTERM): the admin port is NOT shared, so a scrape or health check always
/// reaches one whole relay. When the configured port is taken
/// (`EADDRINUSE`, a fixed port), the new relay starts anyway, serves
/// consoles, logs one line, and binds the admin port in the background every
/// [`REBIND_EVERY`] until the old relay has exited; it logs again when it has
/// the port. Meanwhile `/metrics`, `/readyz` and `/sessions` answer for the
/// old, draining relay. Any other bind error fails the start as before.
pub fn spawn(addr: SocketAddr, state: Arc<State>) -> std::io::Result<(SocketAddr, bool)> {
    let (listener, bound) = match TcpListener::bind(addr) {
        Ok(l) => (Some(l), true),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            log::warn(
                "admin.listen is in use (an older relay still running?): \
                 serving consoles, binding the admin port once it is free",
                &[("admin", V::S(&addr.to_string()))],
            );
            (None, false)
        }
        Err(e) => return Err(e),
    };
    let local = match &listener {
        Some(l) => l.local_addr()?,
        None => addr,
    };
    std::thread::Builder::new()
        .name("nexor-admin".into())
        .spawn(move || {
            let listener = match listener {
                Some(l) => l,
                None => loop {
                    std::thread::sleep(REBIND_EVERY);
                    match TcpListener::bind(addr) {
                        Ok(l) => {
                            log::info(
                                "admin listening (the port was freed)",
                                &[("admin", V::S(&addr.to_string()))],
                            );
                            break l;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                        Err(e) => {
                            log::error(
                                "admin.listen: giving up",
                                &[
                                    ("admin", V::S(&addr.to_string())),
                                    ("error", V::S(&e.to_string())),
                                ],
                            );
                            return;
                        }
                    }
                },
            };
            let open = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed without an answer
                }
                let place = Place(open.clone());
                let state = state.clone();
                let _ = std::thread::Builder::new()
                    .name("nexor-admin-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _place = place;
                        serve(conn, &state)
                    });
            }
        })?;
    Ok((local, bound))
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        http::reason(status),
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}

/// `/healthz`: 200 `ok` while every worker runs its runtime; 503 naming
/// each worker that does not (a thread that died, or one not started yet).
pub fn health(metrics: &Metrics) -> (u16, String) {
    let dead: Vec<String> = metrics
        .workers
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.alive.load(Ordering::Relaxed))
        .map(|(i, _)| i.to_string())
        .collect();
    match dead.len() {
        0 => (200, "ok\n".into()),
        1 => (503, format!("worker {} not running\n", dead[0])),
        _ => (503, format!("workers {} not running\n", dead.join(", "))),
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes `%XX` and `+` in a query value.
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Is `host` (the `Host` header) one this listener answers to? Its own
/// address (`local`, as `ip:port`), `localhost:port` when that is a
/// loopback address, or the configured `[admin] host` (with or without
/// the port). A DNS-rebinding page's requests carry its own name.
pub fn host_allowed(host: &str, local: SocketAddr, configured: Option<&str>) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let port = local.port();
    let ip = crate::client_addr::canonical(local.ip());
    let own = SocketAddr::new(ip, port).to_string();
    if host == own || host == local.to_string() {
        return true;
    }
    if ip.is_loopback() && host == format!("localhost:{port}") {
        return true;
    }
    configured.is_some_and(|c| host == c || host == format!("{c}:{port}"))
}

fn serve(mut conn: TcpStream, state: &State) {
    let _ = conn.set_write_timeout(Some(ADMIN_TIMEOUT));
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match http::parse_request(&buf, HeadLimits::default()) {
            Ok(Some((h, _))) => break h,
            Ok(None) => {}
            Err(_) => return respond(&mut conn, 400, "text/plain", "bad request\n"),
        }
        // One deadline for the whole request: a byte now and then does not
        // extend it.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let live = state.live();
    let host = head.one("host").ok().flatten().unwrap_or("");
    let local = match conn.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    if !host_allowed(host, local, live.cfg.admin.host.as_deref()) {
        return respond(&mut conn, 403, "text/plain", "unknown host\n");
    }
    if head.all("origin").next().is_some() {
        return respond(
            &mut conn,
            403,
            "text/plain",
            "requests from web pages are refused\n",
        );
    }
    if let Some(token) = &live.cfg.admin.token {
        let want = format!("Bearer {}", token.expose());
        let got = head.one("authorization").ok().flatten().unwrap_or("");
        if !same(got.as_bytes(), want.as_bytes()) {
            return respond(&mut conn, 401, "text/plain", "admin token required\n");
        }
    }
    let (path, query) = http::split_target(&head.target);
    match (head.method.as_str(), path) {
        ("GET", "/metrics") => {
            let mut body = state.metrics.render();
            if let Some(f) = &state.fleet {
                f.stats.render(&mut body);
            }
            respond(&mut conn, 200, "text/plain; version=0.0.4", &body)
        }
        ("GET", "/healthz") => {
            let (status, body) = health(&state.metrics);
            respond(&mut conn, status, "text/plain", &body)
        }
        ("GET", "/readyz") => {
            if state.metrics.draining.load(Ordering::Relaxed) {
                respond(&mut conn, 503, "text/plain", "draining\n")
            } else {
                respond(&mut conn, 200, "text/plain", "ready\n")
            }
        }
        ("GET", "/sessions") if query.is_some_and(|q| q.split('&').any(|p| p == "fleet=1")) => {
            // Every relay's sessions, from the store.
            let Some(fleet) = &state.fleet else {
                return respond(&mut conn, 404, "text/plain", "fleet mode is off\n");
            };
            match fleet.list() {
                Ok(list) => respond(
                    &mut conn,
                    200,
                    "application/json",
                    &serde_json::Value::Array(list).to_string(),
                ),
                Err(_) => respond(&mut conn, 503, "text/plain", "fleet store unavailable\n"),
            }
        }
        ("GET", "/sessions") => {
            let list: Vec<serde_json::Value> = state
                .registry
                .live()
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id,
                        "jti_sha256": c.jti_hash.to_string(),
                        "sub": c.sub,
                        "upstream": c.upstream,
                        "vm": c.vm,
                        "client": c.client.to_string(),
                        "started": c.started_unix,
                        "reconnect": c.reconnect,
                    })
                })
                .collect();
            respond(
                &mut conn,
                200,
                "application/json",
                &serde_json::Value::Array(list).to_string(),
            )
        }
        ("POST", "/sessions/revoke") => {
            let q = query.unwrap_or("");
            let pairs: Vec<(&str, String)> = q
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k, pct_decode(v)))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            let [(key, value)] = pairs.as_slice() else {
                return respond(
                    &mut conn,
                    400,
                    "text/plain",
                    "exactly one of jti, jti_sha256, sub, vm\n",
                );
            };
            let lower = value.to_ascii_lowercase();
            let sel = match *key {
                "jti" => Revoke::JtiHash(JtiHash(Sha256::digest(value.as_bytes()).into())),
                "jti_sha256" => match JtiHash::parse(&lower) {
                    Some(h) => Revoke::JtiHash(h),
                    None if lower.len() >= 16 && lower.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        Revoke::JtiPrefix(&lower)
                    }
                    None => {
                        return respond(
                            &mut conn,
                            400,
                            "text/plain",
                            "jti_sha256: 16 to 64 hex digits\n",
                        )
                    }
                },
                "sub" => Revoke::Sub(value),
                "vm" => Revoke::Vm(value),
                _ => {
                    return respond(
                        &mut conn,
                        400,
                        "text/plain",
                        "exactly one of jti, jti_sha256, sub, vm\n",
                    )
                }
            };
            // A ticket valid now expires by now + max_ttl + leeway (its iat
            // is at most leeway ahead); a revoked jti is barred until then
            // plus the reconnect grace.
            let t = &live.cfg.tickets;
            let grace = t.reconnect_grace.as_secs();
            let now = crate::state::unix_now();
            let unseen_until = now
                .saturating_add(t.policy.max_ttl)
                .saturating_add(2 * t.policy.leeway)
                .saturating_add(grace);
            let r = state.registry.revoke(&sel, now, grace, unseen_until);
            // Fleet mode: the store bars the tickets for every relay and
            // tells them all (this one included) to close their sessions.
            let fleet = state.fleet.as_ref().map(|f| {
                f.revoke(
                    crate::fleet::Selector::from_revoke(&sel),
                    crate::state::unix_ms(),
                    grace * 1000,
                    unseen_until * 1000,
                )
            });
            let sessions = match &fleet {
                Some(Ok(f)) => f.sessions.max(r.sessions),
                _ => r.sessions,
            };
            log::info(
                "revoked",
                &[
                    ("selector", V::S(key)),
                    ("sessions", V::N(sessions)),
                    ("grants", V::N(r.grants)),
                    ("fleet", V::B(matches!(fleet, Some(Ok(_))))),
                ],
            );
            if let Some(Err(_)) = fleet {
                return respond(
                    &mut conn,
                    503,
                    "application/json",
                    &format!(
                        "{{\"revoked\":{sessions},\"error\":\"fleet store unavailable: revoked on this relay only\"}}"
                    ),
                );
            }
            respond(
                &mut conn,
                200,
                "application/json",
                &format!("{{\"revoked\":{sessions}}}"),
            )
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/sessions" | "/sessions/revoke") => {
            respond(&mut conn, 405, "text/plain", "method not allowed\n")
        }
        _ => respond(&mut conn, 404, "text/plain", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_query_values() {
        assert_eq!(super::pct_decode("pve1%2Fpve-a%2F101"), "pve1/pve-a/101");
        assert_eq!(super::pct_decode("a+b%zz%"), "a b%zz%");
        assert!(
            super::same(b"abc", b"abc")
                && !super::same(b"abc", b"abd")
                && !super::same(b"ab", b"abc")
        );
    }

    #[test]
    fn admin_hosts() {
        use super::host_allowed;
        let lo = "127.0.0.1:9477".parse().unwrap();
        assert!(host_allowed("127.0.0.1:9477", lo, None));
        assert!(host_allowed("LOCALHOST:9477", lo, None));
        assert!(!host_allowed("localhost:9478", lo, None));
        assert!(!host_allowed("evil.example:9477", lo, None));
        assert!(!host_allowed("", lo, None));
        let lan = "10.0.0.5:9477".parse().unwrap();
        assert!(!host_allowed("localhost:9477", lan, None));
        assert!(host_allowed("10.0.0.5:9477", lan, None));
        assert!(host_allowed(
            "relay-admin.internal",
            lan,
            Some("relay-admin.internal")
        ));
        assert!(host_allowed(
            "relay-admin.internal:9477",
            lan,
            Some("relay-admin.internal")
        ));
        let v6 = "[::1]:9477".parse().unwrap();
        assert!(host_allowed("[::1]:9477", v6, None));
        assert!(crate::registry::JtiHash::parse(&"ab".repeat(32)).is_some());
        assert!(crate::registry::JtiHash::parse(&"zz".repeat(32)).is_none());
    }
}
