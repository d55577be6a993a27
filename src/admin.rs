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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::http::{self, HeadLimits, Headers};
use crate::log::{self, V};
use crate::metrics::Metrics;
use crate::registry::CloseRequest;
use crate::server::State;

/// How long an admin client may take to send its request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the admin listener and serves it on a thread; returns its address.
pub fn spawn(addr: SocketAddr, state: Arc<State>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("nexor-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = state.clone();
                let _ = std::thread::Builder::new()
                    .name("nexor-admin-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || serve(conn, &state));
            }
        })?;
    Ok(local)
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
        .cores
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

fn serve(mut conn: TcpStream, state: &State) {
    let _ = conn.set_read_timeout(Some(ADMIN_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match http::parse_request(&buf, HeadLimits::default()) {
            Ok(Some((h, _))) => break h,
            Ok(None) => {}
            Err(_) => return respond(&mut conn, 400, "text/plain", "bad request\n"),
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let live = state.live();
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
            let body = state.metrics.render();
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
        ("GET", "/sessions") => {
            let list: Vec<serde_json::Value> = state
                .registry
                .live()
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id,
                        "jti_sha256": crate::session::hex(&c.jti_hash),
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
            let jti_hash: Option<String> = match *key {
                "jti" => Some(crate::session::hex(&Sha256::digest(value.as_bytes()))),
                "jti_sha256" => Some(value.to_ascii_lowercase()),
                "sub" | "vm" => None,
                _ => {
                    return respond(
                        &mut conn,
                        400,
                        "text/plain",
                        "exactly one of jti, jti_sha256, sub, vm\n",
                    )
                }
            };
            let mut n = 0u64;
            for c in state.registry.live() {
                let hit = match (*key, &jti_hash) {
                    ("sub", _) => c.sub == *value,
                    ("vm", _) => c.vm == *value,
                    (_, Some(h)) => {
                        h.len() >= 16 && crate::session::hex(&c.jti_hash).starts_with(h.as_str())
                    }
                    _ => false,
                };
                if hit {
                    c.request_close(CloseRequest::Revoked);
                    n += 1;
                }
            }
            log::info("revoked", &[("selector", V::S(key)), ("sessions", V::N(n))]);
            respond(
                &mut conn,
                200,
                "application/json",
                &format!("{{\"revoked\":{n}}}"),
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
}
