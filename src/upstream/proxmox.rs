//! `kind = "proxmox"`: a VM console on Proxmox VE, opened with the relay's
//! API token so the browser never sees Proxmox's credentials or tickets
//! (docs/proxmox.md, to the byte).
//!
//! ```text
//! 1 POST /api2/json/nodes/{node}/{qemu|lxc}/{vmid}/{vncproxy|termproxy}
//!        Authorization: PVEAPIToken=user@realm!id=secret     → port, ticket[, password, user]
//! 2 GET  …/vncwebsocket?port=P&vncticket=<pct(ticket)>   (same host, Sec-WebSocket-Protocol: binary)
//! 3 login upstream: RFB 3.8 VNC auth with the one-shot password (DES)
//!                   or termproxy's `user:ticket\n` → `OK`
//! 4 101 to the browser; VNC: RFB security None toward the browser
//! 5 splice
//! ```
//!
//! Steps 1-3 happen before the browser's 101, so every failure is a clean
//! 502 (Proxmox refused) or 504 (too slow), and for VNC they run under the
//! VM's gate (each vncproxy resets the VM's one password).

use std::sync::Arc;
use std::time::Duration;

use crate::transport::TlsConnector;
use monoio::net::TcpStream;

use super::Opened;
use crate::config::{Proxmox, WsUrl};
use crate::error::{BrowserPhaseError, ProxmoxError, UpstreamError};
use crate::http::{parse_response, HeadLimits, Headers};
use crate::preamble::rfb::VncPreamble;
use crate::preamble::term::TermPreamble;
use crate::registry::VmGates;
use crate::relay::core::{Decoder, Walk};
use crate::relay::viewonly::{ViewFilter, Violation};
use crate::relay::Mode;
use crate::ticket::{Claims, Console, Guest};
use crate::transport::Stream;
use crate::ws::frame::{FrameError, FrameHeader, OpCode, Sender, MAX_HEADER};
use crate::ws::handshake::{check_response, client_key, client_request};
use crate::ws::mask;

/// pveproxy's `$max_payload_size`: client frames above it kill the connection.
pub const PVE_MAX_PAYLOAD: u64 = 128 * 1024;
/// The largest API answer read (a vncproxy answer is ~2 KiB with its CA).
const MAX_API_RESPONSE: usize = 256 * 1024;

/// What step 1 returns (docs/proxmox.md §3.1, §5.1).
#[derive(Debug, PartialEq, Eq)]
pub struct ConsoleTicket {
    pub port: u16,
    /// The vncticket (new format: `password:PVEVNC:…`).
    pub ticket: String,
    pub password: Option<String>,
    pub user: Option<String>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters: Proxmox
/// tickets carry `+ / = : & # %` (docs/proxmox.md §1).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses the JSON answer of vncproxy/termproxy: `port` as number or
/// string; `password` if present; `ticket` never split on `:`.
pub fn parse_console_ticket(body: &[u8]) -> Result<ConsoleTicket, ProxmoxError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| ProxmoxError::BadJson)?;
    let d = v.get("data").ok_or(ProxmoxError::NoData)?;
    let port = match d.get("port") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| (1..=65535).contains(p))
    .ok_or(ProxmoxError::BadPort)? as u16;
    let ticket = d
        .get("ticket")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or(ProxmoxError::NoTicket)?;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Ok(ConsoleTicket {
        port,
        ticket: ticket.to_string(),
        password: s("password"),
        user: s("user"),
    })
}

fn guest_path(c: &Claims) -> &'static str {
    match c.guest {
        Some(Guest::Lxc) => "lxc",
        _ => "qemu",
    }
}

/// A TLS connection to a pveproxy endpoint.
async fn dial(ep: &WsUrl, connector: &TlsConnector) -> Result<Stream, UpstreamError> {
    let tcp = TcpStream::connect_addr(ep.addr)
        .await
        .map_err(|_| UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let name = crate::tls::server_name(&ep.host).map_err(|_| UpstreamError::Tls)?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|_| UpstreamError::Tls)?;
    Ok(Stream::Tls(Box::new(tls)))
}

fn auth_header(px: &Proxmox) -> String {
    format!("PVEAPIToken={}={}", px.token_id, px.token_secret.expose())
}

/// The body length a Proxmox API answer announces. It comes off the
/// network: anything past [`MAX_API_RESPONSE`] is refused here, so the
/// offsets computed from it (`head + len`) cannot overflow.
fn body_len(value: Option<&str>) -> Result<Option<usize>, UpstreamError> {
    let Some(v) = value else { return Ok(None) };
    match v.trim().parse::<u64>() {
        Ok(len) if len <= MAX_API_RESPONSE as u64 => Ok(Some(len as usize)),
        Ok(_) => Err(UpstreamError::Proxmox(ProxmoxError::ResponseTooLarge)),
        Err(_) => Err(UpstreamError::Proxmox(ProxmoxError::BadResponse)),
    }
}

/// Reads one HTTP response to EOF or Content-Length (pveproxy's 401 has
/// neither body nor length: read to EOF, docs/proxmox.md §12).
async fn read_response(stream: &mut Stream) -> Result<(u16, Vec<u8>), UpstreamError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut head: Option<(u16, usize, Option<usize>)> = None;
    loop {
        if let Some((status, n, Some(len))) = head {
            if buf.len() >= n + len {
                return Ok((status, buf[n..n + len].to_vec()));
            }
        }
        if buf.len() >= MAX_API_RESPONSE {
            return Err(UpstreamError::Proxmox(ProxmoxError::ResponseTooLarge));
        }
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        let eof = !matches!(res, Ok(n) if n > 0);
        if head.is_none() {
            match parse_response(&buf, HeadLimits::default()) {
                Ok(Some((h, n))) => {
                    if h.all("transfer-encoding").next().is_some() {
                        return Err(UpstreamError::Proxmox(ProxmoxError::ChunkedResponse));
                    }
                    let len = body_len(h.one("content-length").ok().flatten())?;
                    head = Some((h.status, n, len));
                    continue;
                }
                Ok(None) if !eof => continue,
                _ => return Err(UpstreamError::Proxmox(ProxmoxError::BadResponse)),
            }
        }
        if eof {
            return match head {
                Some((status, n, None)) => Ok((status, buf[n..].to_vec())),
                Some((status, n, Some(len))) if buf.len() >= n + len => {
                    Ok((status, buf[n..n + len].to_vec()))
                }
                _ => Err(UpstreamError::Closed),
            };
        }
    }
}

/// Step 1: `POST …/vncproxy` or `…/termproxy` with the token.
pub async fn console_ticket(
    px: &Proxmox,
    ep: &WsUrl,
    connector: &TlsConnector,
    c: &Claims,
    node: &str,
    vmid: u64,
) -> Result<ConsoleTicket, UpstreamError> {
    let guest = guest_path(c);
    let (what, body) = match (c.console, guest) {
        // Old versions return a usable `password` only with generate-password
        // (docs/proxmox.md §3.1); the LXC endpoint refuses that parameter (§12).
        (Console::Vnc, "qemu") => ("vncproxy", "websocket=1&generate-password=1"),
        (Console::Vnc, _) => ("vncproxy", "websocket=1"),
        (Console::Term, _) => ("termproxy", ""),
    };
    let req = format!(
        "POST /api2/json/nodes/{}/{guest}/{vmid}/{what} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        pct(node),
        ep.host_header(),
        auth_header(px),
        body.len()
    );
    let mut stream = dial(ep, connector).await?;
    let (res, _) = stream.write_all(req.into_bytes()).await;
    res.map_err(|_| UpstreamError::Closed)?;
    let (status, body) = read_response(&mut stream).await?;
    match status {
        200 => parse_console_ticket(&body).map_err(UpstreamError::Proxmox),
        401 => Err(UpstreamError::Proxmox(ProxmoxError::Api401)),
        403 => Err(UpstreamError::Proxmox(ProxmoxError::Api403)),
        500..=599 => Err(UpstreamError::Proxmox(ProxmoxError::Api5xx)),
        _ => Err(UpstreamError::Proxmox(ProxmoxError::ApiStatus)),
    }
}

/// Step 2: the websocket, to the same host, offering only `binary`.
async fn websocket(
    px: &Proxmox,
    ep: &WsUrl,
    connector: &TlsConnector,
    c: &Claims,
    node: &str,
    vmid: u64,
    t: &ConsoleTicket,
) -> Result<(Stream, Vec<u8>), UpstreamError> {
    let path = format!(
        "/api2/json/nodes/{}/{}/{vmid}/vncwebsocket?port={}&vncticket={}",
        pct(node),
        guest_path(c),
        t.port,
        pct(&t.ticket)
    );
    let key = client_key();
    let auth = auth_header(px);
    let req = client_request(
        &ep.host_header(),
        &path,
        &key,
        Some("binary"),
        &[("Authorization", &auth)],
    );
    let mut stream = dial(ep, connector).await?;
    let (res, _) = stream.write_all(req).await;
    res.map_err(|_| UpstreamError::Closed)?;
    let (head, early) =
        match super::ws::read_upgrade_answer(&mut stream, HeadLimits::default()).await {
            Ok(v) => v,
            // pveproxy closes without an answer when nothing listens on the port.
            Err(UpstreamError::Closed) => {
                return Err(UpstreamError::Proxmox(ProxmoxError::WebsocketClosed))
            }
            Err(_) => return Err(UpstreamError::Proxmox(ProxmoxError::BadResponse)),
        };
    match check_response(&head, &key, Some("binary")) {
        Ok(_) => Ok((stream, early)),
        Err(_) if head.status == 401 => Err(UpstreamError::Proxmox(ProxmoxError::Websocket401)),
        Err(_) => Err(UpstreamError::Proxmox(ProxmoxError::WebsocketRefused)),
    }
}

/// Writes `payload` as frames of at most [`PVE_MAX_PAYLOAD`]: masked
/// (toward pveproxy) or not (toward the browser).
pub async fn write_frames(stream: &mut Stream, payload: &[u8], masked: bool) -> Result<(), ()> {
    if payload.is_empty() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(payload.len() + 16);
    for chunk in payload.chunks(PVE_MAX_PAYLOAD as usize) {
        let key = masked.then(mask::random_key);
        let h = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: key,
            len: chunk.len() as u64,
        };
        let mut hb = [0u8; MAX_HEADER];
        let n = h.encode(&mut hb);
        out.extend_from_slice(&hb[..n]);
        let at = out.len();
        out.extend_from_slice(chunk);
        if let Some(k) = key {
            mask::apply(&mut out[at..], k, 0);
        }
    }
    stream.write_all(out).await.0.map(|_| ()).map_err(|_| ())
}

/// What one read of a WebSocket leg yielded during a preamble.
#[derive(Default)]
pub struct Incoming {
    /// Data payload bytes (unmasked), in order.
    pub data: Vec<u8>,
    /// The latest ping payload to answer.
    pub ping: Option<Vec<u8>>,
    pub close: bool,
}

/// Reads one leg's frames while a preamble runs, with the relay core's
/// own frame walk ([`Decoder`]); hands over at a frame boundary so the
/// pump's tracker starts clean.
pub struct FrameReader {
    decoder: Decoder,
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new(from: Sender, max_frame: u64, early: Vec<u8>) -> FrameReader {
        FrameReader {
            decoder: Decoder::new(from, max_frame),
            buf: early,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.decoder.at_boundary()
    }

    /// Unconsumed bytes (an incomplete next frame), for the pump.
    pub fn into_leftover(self) -> Vec<u8> {
        self.buf
    }

    /// Processes buffered bytes, reading more first if nothing whole is
    /// buffered. `Err` on EOF (`None`) or a protocol violation.
    pub async fn next(&mut self, stream: &mut Stream) -> Result<Incoming, Option<FrameError>> {
        loop {
            let mut inc = Incoming::default();
            loop {
                match self.decoder.walk(&mut self.buf) {
                    Walk::Error(e) => return Err(Some(e)),
                    // Payloads come unmasked, headers dropped.
                    Walk::Data(r) => inc.data.extend_from_slice(&self.buf[r]),
                    // Never from a Decoder: it has no view filter.
                    Walk::Header { .. } | Walk::Own { .. } | Walk::Violation(_) => {}
                    Walk::Control {
                        payload_at,
                        end,
                        header,
                        ..
                    } => {
                        let mut p = self.buf[payload_at..end].to_vec();
                        if let Some(k) = header.mask {
                            mask::apply(&mut p, k, 0);
                        }
                        match header.opcode {
                            OpCode::Ping => inc.ping = Some(p),
                            OpCode::Close => inc.close = true,
                            _ => {}
                        }
                    }
                    Walk::Read { consumed } => {
                        self.buf.drain(..consumed);
                        break;
                    }
                }
            }
            if !inc.data.is_empty() || inc.ping.is_some() || inc.close {
                return Ok(inc);
            }
            let (res, b) = stream.read_more(std::mem::take(&mut self.buf)).await;
            self.buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return Err(None);
            }
        }
    }
}

/// The part of a VNC login that needs the browser: after the 101, the
/// relay is the RFB server (security None) until the browser's ClientInit.
pub struct BrowserPhase {
    pub vnc: VncPreamble,
    /// Held upstream frames not yet parsed, and the upstream reader state.
    pub upstream: FrameReader,
    /// Bytes for the browser right after the 101 (the RFB greeting).
    pub to_browser: Vec<u8>,
}

/// Steps 1-3, before the browser's 101. VNC logins hold the VM's gate
/// from the POST to the end of the RFB login.
pub async fn open(
    px: &Proxmox,
    connector: &TlsConnector,
    c: &Claims,
    max_frame: u64,
    gates: &Arc<VmGates>,
) -> Result<Opened, UpstreamError> {
    let (Some(node), Some(vmid)) = (c.node.as_deref(), c.vmid) else {
        return Err(UpstreamError::Proxmox(ProxmoxError::TicketWithoutVm));
    };
    // Admission refused these already (401); checked again before the path is built.
    if !crate::admission::valid_vm(node, vmid) {
        return Err(UpstreamError::Proxmox(ProxmoxError::TicketBadVm));
    }
    let _gate = match c.console {
        Console::Vnc => Some(gates.acquire(crate::registry::vm_key(c)).await),
        Console::Term => None,
    };
    let ep = px.endpoint(node);
    let t = console_ticket(px, ep, connector, c, node, vmid).await?;
    let (mut ws, early) = websocket(px, ep, connector, c, node, vmid, &t).await?;
    let mut reader = FrameReader::new(Sender::Server, max_frame.max(PVE_MAX_PAYLOAD), early);
    match c.console {
        Console::Vnc => {
            let password = t.password.as_deref().unwrap_or(&t.ticket);
            // A viewer never takes the console for itself (shared flag 1).
            let shared = px.force_shared || c.mode == crate::ticket::Mode::View;
            let mut vnc = VncPreamble::new(password.as_bytes(), shared);
            let mut to_browser = Vec::new();
            vnc.start(&mut to_browser);
            while !(vnc.upstream_authenticated() && reader.at_boundary()) {
                let inc = reader
                    .next(&mut ws)
                    .await
                    .map_err(|_| UpstreamError::Proxmox(ProxmoxError::VncUpstreamClosed))?;
                if inc.close {
                    return Err(UpstreamError::Proxmox(ProxmoxError::VncUpstreamClosed));
                }
                let mut to_up = Vec::new();
                vnc.on_upstream(&inc.data, &mut to_up, &mut to_browser)
                    .map_err(|e| UpstreamError::Proxmox(ProxmoxError::Login(e)))?;
                write_frames(&mut ws, &to_up, true)
                    .await
                    .map_err(|_| UpstreamError::Closed)?;
            }
            Ok(Opened {
                stream: ws,
                early: Vec::new(),
                protocol: Some("binary".into()),
                mode: Mode::Proxmox,
                pending: Some(BrowserPhase {
                    vnc,
                    upstream: reader,
                    to_browser,
                }),
                to_browser: Vec::new(),
            })
        }
        Console::Term => {
            let user = t.user.as_deref().unwrap_or(&px.token_id);
            let mut term = TermPreamble::new(user, &t.ticket)
                .map_err(|e| UpstreamError::Proxmox(ProxmoxError::Login(e)))?;
            let mut to_up = Vec::new();
            term.start(&mut to_up);
            write_frames(&mut ws, &to_up, true)
                .await
                .map_err(|_| UpstreamError::Closed)?;
            let mut to_browser = Vec::new();
            while !(term.is_done() && reader.at_boundary()) {
                let inc = match reader.next(&mut ws).await {
                    Ok(i) if !i.close => i,
                    _ => {
                        // termproxy refuses a login by closing (docs/proxmox.md §5.2).
                        let e = term
                            .on_upstream_eof()
                            .err()
                            .map_or(ProxmoxError::TermAuthFailed, ProxmoxError::Login);
                        return Err(UpstreamError::Proxmox(e));
                    }
                };
                let mut to_up = Vec::new();
                term.on_upstream(&inc.data, &mut to_up, &mut to_browser)
                    .map_err(|e| UpstreamError::Proxmox(ProxmoxError::Login(e)))?;
            }
            Ok(Opened {
                stream: ws,
                early: reader.into_leftover(),
                protocol: Some("binary".into()),
                mode: Mode::Proxmox,
                pending: None,
                to_browser,
            })
        }
    }
}

/// Step 4 for VNC, after the 101: greet the browser as an RFB server and
/// read its security choice and ClientInit; returns the bytes left over on
/// each leg for the pump. A view-only session's messages after ClientInit
/// go through `view` (whose state the pump then takes over); one it
/// cannot follow gets the browser a 1008 close.
pub async fn finish_browser(
    mut phase: BrowserPhase,
    browser: &mut Stream,
    browser_early: Vec<u8>,
    upstream: &mut Stream,
    max_frame: u64,
    timeout: Duration,
    mut view: Option<&mut ViewFilter>,
) -> Result<(Vec<u8>, Vec<u8>), BrowserPhaseError> {
    let work = async {
        write_frames(browser, &phase.to_browser, false)
            .await
            .map_err(|_| BrowserPhaseError::BrowserGone)?;
        let mut reader = FrameReader::new(Sender::Client, max_frame, browser_early);
        while !(phase.vnc.is_done() && reader.at_boundary()) {
            let inc = reader.next(browser).await.map_err(|e| match e {
                Some(e) => BrowserPhaseError::BrowserFrame(e),
                None => BrowserPhaseError::BrowserEof,
            })?;
            if inc.close {
                return Err(BrowserPhaseError::BrowserClosed);
            }
            if let Some(p) = inc.ping {
                let mut f = [0u8; crate::ws::frame::MAX_CONTROL_FRAME];
                let n = crate::ws::frame::write_control(&mut f, OpCode::Pong, &p, None);
                browser
                    .write_all(f[..n].to_vec())
                    .await
                    .0
                    .map_err(|_| BrowserPhaseError::BrowserGone)?;
            }
            let (mut up, mut br) = (Vec::new(), Vec::new());
            let was_done = phase.vnc.is_done();
            phase
                .vnc
                .on_browser(&inc.data, &mut up, &mut br)
                .map_err(BrowserPhaseError::Rfb)?;
            if let Some(f) = view.as_deref_mut() {
                // ClientInit leads what the preamble lets through first.
                let init = usize::from(!was_done && phase.vnc.is_done()).min(up.len());
                let mut kept = up[..init].to_vec();
                if f.feed(&up[init..], &mut kept).is_err() {
                    let mut c = [0u8; crate::ws::frame::MAX_CONTROL_FRAME];
                    let n = crate::ws::frame::write_close(
                        &mut c,
                        crate::ws::frame::close::POLICY,
                        Violation::LABEL,
                        None,
                    );
                    let _ = browser.write_all(c[..n].to_vec()).await;
                    return Err(BrowserPhaseError::ViewOnly);
                }
                up = kept;
            }
            write_frames(upstream, &up, true)
                .await
                .map_err(|_| BrowserPhaseError::UpstreamGone)?;
            write_frames(browser, &br, false)
                .await
                .map_err(|_| BrowserPhaseError::BrowserGone)?;
        }
        Ok(reader.into_leftover())
    };
    let browser_left = monoio::time::timeout(timeout, work)
        .await
        .map_err(|_| BrowserPhaseError::Timeout)??;
    Ok((browser_left, phase.upstream.into_leftover()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_from_the_network_never_overflows() {
        assert!(matches!(body_len(None), Ok(None)));
        assert!(matches!(body_len(Some(" 42 ")), Ok(Some(42))));
        for huge in ["18446744073709551615", "262145", "1048577000"] {
            assert!(matches!(
                body_len(Some(huge)),
                Err(UpstreamError::Proxmox(ProxmoxError::ResponseTooLarge))
            ));
        }
        assert!(matches!(
            body_len(Some("-1")),
            Err(UpstreamError::Proxmox(ProxmoxError::BadResponse))
        ));
    }

    #[test]
    fn proxmox_claims_are_node_names_and_vm_ids() {
        use crate::admission::valid_vm;
        assert!(valid_vm("pve-a", 100) && valid_vm(&"a".repeat(63), 999_999_999));
        for (node, vmid) in [
            ("pve-a", 99),
            ("pve-a", 1_000_000_000),
            ("", 101),
            (&*"a".repeat(64), 101),
            ("..", 101),
            ("pve-a/qemu/1", 101),
            ("pve%2Fa", 101),
            ("pve_a", 101),
            ("pve a", 101),
            ("pvé", 101),
        ] {
            assert!(!valid_vm(node, vmid), "{node:?} {vmid}");
        }
    }

    #[test]
    fn percent_encodes_ticket_characters() {
        assert_eq!(
            pct("Xy7!a:`Q:PVEVNC:6630A1B2::a+b/c="),
            "Xy7%21a%3A%60Q%3APVEVNC%3A6630A1B2%3A%3Aa%2Bb%2Fc%3D"
        );
        assert_eq!(pct("pve-a_1.x~"), "pve-a_1.x~");
        assert_eq!(pct("&#% "), "%26%23%25%20");
    }

    #[test]
    fn parses_both_answer_formats() {
        let new = br#"{"data":{"user":"relay@pve!console","ticket":"Xy7!a:`Q:PVEVNC:6630A1B2::sig","password":"Xy7!a:`Q","port":5900,"upid":"UPID:x","cert":"-----BEGIN"}}"#;
        let t = parse_console_ticket(new).unwrap();
        assert_eq!(t.port, 5900);
        assert_eq!(t.password.as_deref(), Some("Xy7!a:`Q"));
        assert_eq!(
            t.ticket, "Xy7!a:`Q:PVEVNC:6630A1B2::sig",
            "never split on ':'"
        );
        let old = br#"{"data":{"user":"root@pam","ticket":"PVEVNC:6630A1B2::sig","port":"5901","upid":"x"}}"#;
        let t = parse_console_ticket(old).unwrap();
        assert_eq!((t.port, t.password), (5901, None));
        assert_eq!(
            parse_console_ticket(br#"{"data":{"ticket":"x","port":"abc"}}"#),
            Err(ProxmoxError::BadPort)
        );
        assert_eq!(
            parse_console_ticket(br#"{"data":{"port":5900}}"#),
            Err(ProxmoxError::NoTicket)
        );
        assert_eq!(parse_console_ticket(b"<html>"), Err(ProxmoxError::BadJson));
        assert_eq!(
            parse_console_ticket(br#"{"data":null}"#),
            Err(ProxmoxError::BadPort)
        );
    }
}
