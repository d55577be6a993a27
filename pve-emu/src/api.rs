//! The pveproxy side: one thread per TLS connection, API token authentication,
//! the vncproxy/termproxy POSTs and the vncwebsocket upgrade (docs/proxmox.md §1–§5, §12).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::app::{App, Slot, SlotKind};
use crate::http::{self, ReadResult, Request};
use crate::tls::TlsConn;
use crate::ws;

/// Timeout for request headers and keep-alive idle (pveproxy handle timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Lingering after an error response so the peer reads it before the close.
const LINGER: Duration = Duration::from_millis(500);

/// What to do after a request.
enum Next {
    KeepAlive,
    Close,
    /// The connection was handed over (websocket) or already closed.
    Done,
}

/// Serves one accepted connection until it closes.
pub fn serve(app: Arc<App>, sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let conn = match TlsConn::new(Arc::clone(&app.identity.config), sock) {
        Ok(c) => Arc::new(c),
        Err(_) => return,
    };
    let mut buf = Vec::new();
    loop {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        match http::read_request(&conn, &mut buf, deadline) {
            ReadResult::Closed => {
                conn.close(Duration::ZERO);
                return;
            }
            ReadResult::Error(code, msg) => {
                let _ = conn.write_all(&error_body(code, &msg, None));
                conn.close(LINGER);
                return;
            }
            ReadResult::Request(req) => match handle(&app, &conn, req, &mut buf) {
                Next::KeepAlive => {}
                Next::Close => {
                    conn.close(LINGER);
                    return;
                }
                Next::Done => return,
            },
        }
    }
}

/// A JSON error response (`Connection: close`). `errors`: per-parameter messages.
fn error_body(code: u16, msg: &str, errors: Option<&BTreeMap<String, String>>) -> Vec<u8> {
    let mut body = json!({ "data": null, "message": format!("{msg}\n") });
    if let Some(e) = errors {
        body["errors"] = json!(e);
    }
    let bytes = body.to_string().into_bytes();
    http::response(code, msg, Some(&bytes), false)
}

fn ok_body(data: Value, keep_alive: bool) -> Vec<u8> {
    let bytes = json!({ "data": data }).to_string().into_bytes();
    http::response(200, "OK", Some(&bytes), keep_alive)
}

/// Sends an error and closes.
fn fail(conn: &TlsConn, code: u16, msg: &str) -> Next {
    let _ = conn.write_all(&error_body(code, msg, None));
    Next::Close
}

/// 400 "Parameter verification failed." with per-parameter errors.
fn param_fail(conn: &TlsConn, errors: BTreeMap<String, String>) -> Next {
    let _ = conn.write_all(&error_body(
        400,
        "Parameter verification failed.",
        Some(&errors),
    ));
    Next::Close
}

/// Sleeps the remainder of the 401 delay (3 s minus the time spent on the request).
fn auth_delay(app: &App, req: &Request) {
    let spent = req.start.elapsed();
    if let Some(left) = app.cfg.auth_delay.checked_sub(spent) {
        thread::sleep(left);
    }
}

/// Checks `Authorization: PVEAPIToken=...`; returns the authid.
fn authenticate(app: &App, req: &Request) -> Option<String> {
    for (name, value) in &req.headers {
        if name != "authorization" {
            continue;
        }
        // extract_auth_value: (?:^|\s)PVEAPIToken(?:=| )([^;]*), then uri_unescape
        let mut found = None;
        let mut search = 0;
        while let Some(i) = value[search..].find("PVEAPIToken") {
            let at = search + i;
            let before_ok = at == 0
                || value[..at]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_whitespace);
            let rest = &value[at + "PVEAPIToken".len()..];
            if before_ok && (rest.starts_with('=') || rest.starts_with(' ')) {
                let v = &rest[1..];
                found = Some(v.split(';').next().unwrap_or(""));
                break;
            }
            search = at + 1;
        }
        let Some(raw) = found else { continue };
        let token = percent_decode(raw);
        let Some((id, secret)) = token.rsplit_once('=') else {
            app.stats.token_id("<malformed>");
            return None;
        };
        app.stats.token_id(id);
        if id.is_empty() || secret.is_empty() {
            return None;
        }
        return app
            .cfg
            .tokens
            .iter()
            .find(|(i, s)| i == id && s == secret)
            .map(|(i, _)| i.clone());
    }
    None
}

/// URI::Escape::uri_unescape: `%XX` only (no `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query + body parameters as pveproxy extracts them.
fn params(req: &Request) -> Result<BTreeMap<String, String>, (u16, String)> {
    let mut p = BTreeMap::new();
    if req.method == "POST" || req.method == "PUT" {
        let ct = req
            .header("content-type")
            .unwrap_or("application/x-www-form-urlencoded")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct == "application/json" {
            if !req.body.is_empty() {
                let v: Value = serde_json::from_slice(&req.body)
                    .map_err(|e| (400, format!("failed to parse JSON body: {e}")))?;
                let Value::Object(m) = v else {
                    return Err((400, "JSON body is not an object".into()));
                };
                for (k, v) in m {
                    let s = match v {
                        Value::String(s) => s,
                        Value::Bool(b) => if b { "1" } else { "0" }.to_string(),
                        Value::Number(n) => n.to_string(),
                        Value::Null => continue,
                        other => other.to_string(),
                    };
                    p.insert(k, s);
                }
            }
        } else if ct == "application/x-www-form-urlencoded" {
            http::decode_urlencoded(&String::from_utf8_lossy(&req.body), &mut p);
        } else {
            return Err((415, format!("unsupported content type '{ct}'")));
        }
    }
    if let Some(q) = &req.query {
        http::decode_urlencoded(q, &mut p);
    }
    Ok(p)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Validates the parameter set of an endpoint; returns the per-parameter errors.
fn check_params(
    p: &BTreeMap<String, String>,
    allowed: &[&str],
    path_params: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut errors = BTreeMap::new();
    for (k, v) in p {
        if let Some((_, pv)) = path_params.iter().find(|(n, _)| n == k) {
            if v != pv {
                errors.insert(k.clone(), "duplicate parameter (not allowed)".into());
            }
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            errors.insert(
                k.clone(),
                "property is not defined in schema and the schema does not allow additional properties"
                    .into(),
            );
            continue;
        }
        let bad = match k.as_str() {
            "websocket" | "generate-password" => parse_bool(v).is_none().then(|| {
                format!("type check ('boolean') failed - got '{v}'")
            }),
            "width" => int_range(v, 16, 4096),
            "height" => int_range(v, 16, 2160),
            "port" => int_range(v, 5900, 5999),
            "serial" => (!matches!(v.as_str(), "serial0" | "serial1" | "serial2" | "serial3"))
                .then(|| format!("value '{v}' does not have a value in the enumeration 'serial0, serial1, serial2, serial3'")),
            "vncticket" => (v.len() > 512)
                .then(|| "value may only be 512 characters long".to_string()),
            _ => None,
        };
        if let Some(b) = bad {
            errors.insert(k.clone(), b);
        }
    }
    errors
}

fn int_range(v: &str, min: i64, max: i64) -> Option<String> {
    match v.parse::<i64>() {
        Ok(n) if n < min => Some(format!("value must have a minimum value of {min}")),
        Ok(n) if n > max => Some(format!("value must have a maximum value of {max}")),
        Ok(_) => None,
        Err(_) => Some(format!("type check ('integer') failed - got '{v}'")),
    }
}

fn handle(app: &Arc<App>, conn: &Arc<TlsConn>, req: Request, buf: &mut Vec<u8>) -> Next {
    let keep = req.keep_alive();
    if req.path == "/emu/stats" {
        let body = app.stats.to_json().to_string().into_bytes();
        let _ = conn.write_all(&http::response(200, "OK", Some(&body), keep));
        return if keep { Next::KeepAlive } else { Next::Close };
    }
    app.stats.add("requests", 1);
    let Some(rel) = req.path.strip_prefix("/api2/json") else {
        return fail(conn, 404, "Not found");
    };
    let Some(authid) = authenticate(app, &req) else {
        app.stats.add("auth_failures", 1);
        auth_delay(app, &req);
        let _ = conn.write_all(&http::response(401, "Authentication failed!", None, false));
        return Next::Close;
    };
    let seg: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
    let not_impl = |conn: &TlsConn| {
        fail(
            conn,
            501,
            &format!("Method '{} {}' not implemented", req.method, rel),
        )
    };
    let ["nodes", node, kind @ ("qemu" | "lxc"), vmid, action] = seg.as_slice() else {
        return not_impl(conn);
    };
    let lxc = *kind == "lxc";
    let (method_ok, endpoint) = match *action {
        "vncproxy" => (
            req.method == "POST",
            if lxc { "lxc_vncproxy" } else { "qemu_vncproxy" },
        ),
        "termproxy" => (
            req.method == "POST",
            if lxc {
                "lxc_termproxy"
            } else {
                "qemu_termproxy"
            },
        ),
        "vncwebsocket" => (req.method == "GET", "vncwebsocket"),
        _ => (false, ""),
    };
    if !method_ok {
        return not_impl(conn);
    }
    let p = match params(&req) {
        Ok(p) => p,
        Err((code, msg)) => return fail(conn, code, &msg),
    };
    let allowed: &[&str] = match (*action, lxc) {
        ("vncproxy", false) => &["websocket", "generate-password"],
        ("vncproxy", true) => &["websocket", "width", "height"],
        ("termproxy", false) => &["serial"],
        ("termproxy", true) => &[],
        _ => &["port", "vncticket"],
    };
    let mut errors = check_params(&p, allowed, &[("node", node), ("vmid", vmid)]);
    let vmid_num = vmid
        .parse::<u32>()
        .ok()
        .filter(|v| (100..=999_999_999).contains(v) && !vmid.starts_with('0'));
    if vmid_num.is_none() {
        errors.insert(
            "vmid".into(),
            "invalid format - value does not look like a valid VM ID\n".into(),
        );
    }
    if *action == "vncwebsocket" {
        for k in ["port", "vncticket"] {
            if !p.contains_key(k) {
                errors.insert(
                    k.into(),
                    "property is missing and it is not optional".into(),
                );
            }
        }
    }
    if !errors.is_empty() {
        return param_fail(conn, errors);
    }
    let vmid = vmid_num.unwrap_or(0);
    if let Some(n) = &app.cfg.node {
        if n != node {
            return fail(
                conn,
                500,
                &format!("hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"),
            );
        }
    }
    if endpoint == "vncwebsocket" {
        return websocket(app, conn, &req, &p, &authid, vmid, buf);
    }
    app.stats.post(endpoint);
    if app.cfg.faults.api_hang {
        hang(conn);
        return Next::Done;
    }
    if app.cfg.faults.api_500 {
        return fail(conn, 500, "internal error (injected fault api-500)");
    }
    let term = *action == "termproxy";
    let flag = |k: &str| p.get(k).and_then(|v| parse_bool(v)).unwrap_or(false);
    let websocket = flag("websocket");
    let genpw = flag("generate-password");
    let data = match mint(app, node, vmid, lxc, term, websocket, genpw, &authid) {
        Some(d) => d,
        None => return fail(conn, 500, "unable to find free port (5900-5999)"),
    };
    let _ = conn.write_all(&ok_body(data, keep));
    if keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Allocates the port, makes the ticket and builds the response `data`.
#[allow(clippy::too_many_arguments)]
fn mint(
    app: &Arc<App>,
    node: &str,
    vmid: u32,
    lxc: bool,
    term: bool,
    websocket: bool,
    genpw: bool,
    authid: &str,
) -> Option<Value> {
    let cfg = &app.cfg;
    let old = cfg.old_format;
    let now = http::now_secs();
    let time = if cfg.faults.expired_ticket {
        now - 60
    } else {
        now
    };
    let path = format!("/vms/{vmid}");
    let signer_id = if cfg.faults.foreign_ticket {
        "intruder@pve!other".to_string()
    } else {
        authid.to_string()
    };
    let password = crate::ticket::vnc_password().ok()?;
    let mut vncticket = String::new();
    let slot = app.allocate(|id, port| {
        let ticket_port = if cfg.faults.wrong_port {
            5900 + ((port - 5900 + 50) % 100)
        } else {
            port
        };
        vncticket = app
            .signer
            .assemble(time, &signer_id, &path, (!old).then_some(ticket_port));
        // new: password always; old: only with generate-password (qemu)
        let give_pw = !term && (!old || genpw);
        let vnc_password = if give_pw {
            password.clone()
        } else {
            vncticket.chars().take(8).collect()
        };
        Slot {
            id,
            port,
            ticket_port,
            kind: if term { SlotKind::Term } else { SlotKind::Vnc },
            lxc,
            vmid,
            vnc_password,
            websocket: term || websocket,
            active: false,
        }
    })?;
    let port = if cfg.port_as_string {
        json!(slot.ticket_port.to_string())
    } else {
        json!(slot.ticket_port)
    };
    let pid = 0x000A_0000 + slot.id as u32;
    let upid = format!(
        "UPID:{node}:{pid:08X}:{:08X}:{now:08X}:vncproxy:{vmid}:{authid}:",
        (now as u32).wrapping_mul(7) & 0x0fff_ffff
    );
    if term {
        return Some(json!({ "user": authid, "ticket": vncticket, "port": port, "upid": upid }));
    }
    let mut d = json!({
        "user": authid,
        "port": port,
        "upid": upid,
        "cert": app.identity.cert_pem,
    });
    if old {
        d["ticket"] = json!(vncticket);
        if genpw {
            d["password"] = json!(password);
        }
    } else {
        d["ticket"] = json!(format!("{password}:{vncticket}"));
        d["password"] = json!(password);
    }
    Some(d)
}

/// `--fault api-hang`: never answer; keep reading until the client gives up.
fn hang(conn: &TlsConn) {
    let mut sink = Vec::new();
    let end = Instant::now() + Duration::from_secs(600);
    while Instant::now() < end {
        sink.clear();
        match conn.read_more(&mut sink, Some(end)) {
            Ok(true) => {}
            _ => break,
        }
    }
    conn.close(Duration::ZERO);
}

/// `GET .../vncwebsocket`: ticket check, then upgrade checks, then 101 and the proxy.
fn websocket(
    app: &Arc<App>,
    conn: &Arc<TlsConn>,
    req: &Request,
    p: &BTreeMap<String, String>,
    authid: &str,
    vmid: u32,
    buf: &mut Vec<u8>,
) -> Next {
    app.stats.add("websocket_requests", 1);
    let port_s = p.get("port").cloned().unwrap_or_default();
    let port: u16 = port_s.parse().unwrap_or(0);
    let ticket = p.get("vncticket").cloned().unwrap_or_default();
    let path = format!("/vms/{vmid}");
    let bound_port = (!app.cfg.old_format).then_some(port);
    if !app
        .signer
        .verify(&ticket, authid, &path, bound_port, http::now_secs())
    {
        auth_delay(app, req);
        return fail(conn, 401, "permission denied - invalid PVEVNC ticket");
    }
    let Some(upgrade) = req.header("upgrade").map(str::to_ascii_lowercase) else {
        // the handler's own result: {port} (a string)
        let _ = conn.write_all(&ok_body(json!({ "port": port_s }), req.keep_alive()));
        return if req.keep_alive() {
            Next::KeepAlive
        } else {
            Next::Close
        };
    };
    if upgrade != "websocket" {
        return fail(
            conn,
            500,
            &format!("unable to upgrade to protocol '{upgrade}'"),
        );
    }
    let ver = req.header("sec-websocket-version").unwrap_or("");
    if ver != "13" {
        return fail(conn, 500, &format!("unsupported websocket-version '{ver}'"));
    }
    let Some(key) = req.header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return fail(conn, 500, "missing websocket-key");
    };
    let proto = req.header("sec-websocket-protocol").map(str::to_string);
    if let Some(pr) = &proto {
        app.stats.subprotocol(pr);
    }
    // pveproxy connects TCP to localhost:port first; nothing listening → no 101, closed.
    let Some(slot) = app.claim(port) else {
        app.stats.add("backend_missing", 1);
        conn.close(Duration::ZERO);
        return Next::Done;
    };
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(pr) = &proto {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {pr}\r\n"));
    }
    resp.push_str("\r\n");
    if conn.write_all(resp.as_bytes()).is_err() {
        app.release(&slot);
        conn.abort();
        return Next::Done;
    }
    app.stats.add("websockets_opened", 1);
    let initial = std::mem::take(buf);
    ws::run(app, conn, initial, &slot);
    app.release(&slot);
    app.stats.add("websockets_closed", 1);
    Next::Done
}
