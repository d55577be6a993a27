//! Manual end-to-end check of pve-emu against a real QEMU, without the relay.
//!
//! `cargo build -p pve-emu --examples && cargo run -p pve-emu --example check`
//! (needs `qemu-system-x86_64`). It starts QEMU (VNC with password=on, QMP, monitor)
//! in a temp dir, starts `target/debug/pve-emu`, then:
//! 1. POST qemu vncproxy with a token, open the vncwebsocket (offering `binary`),
//!    do RFB 3.8 VNC auth with DES and read ServerInit (`QEMU (emu-check)`, 640x480);
//! 2. POST qemu termproxy, send `user:ticket\n`, expect `OK`, send `1:80:24:` and
//!    `0:12:info status\n`, read the monitor's answer;
//! 3. a few negative checks (401 shape and delay, 400 on unknown parameters,
//!    GET without Upgrade);
//!
//! and prints what it saw plus `/emu/stats`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn std::error::Error>>;
type Tls = StreamOwned<ClientConnection, TcpStream>;

const TOKEN_ID: &str = "relay@pve!console";
const SECRET: &str = "6c4a1f3e-0000-4000-8000-123456789abc";

/// Accepts exactly the certificate with this SHA-256 fingerprint.
#[derive(Debug)]
struct Pin(String, Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        let fp: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        if fp.join(":") == self.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("fingerprint mismatch".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

struct Emu {
    addr: String,
    cfg: Arc<ClientConfig>,
}

impl Emu {
    fn connect(&self) -> Res<Tls> {
        let tcp = TcpStream::connect(&self.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
        let conn =
            ClientConnection::new(Arc::clone(&self.cfg), ServerName::try_from("localhost")?)?;
        Ok(StreamOwned::new(conn, tcp))
    }

    /// One request on a fresh connection; returns (status line, headers, body).
    fn request(&self, head: &str, body: &str) -> Res<(String, String, Vec<u8>)> {
        let mut s = self.connect()?;
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let (status, headers, rest) = read_head(&mut s)?;
        let len = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut body = rest;
        match len {
            Some(n) => {
                while body.len() < n {
                    let mut b = [0u8; 4096];
                    let k = s.read(&mut b)?;
                    if k == 0 {
                        break;
                    }
                    body.extend_from_slice(&b[..k]);
                }
            }
            None => {
                let _ = s.read_to_end(&mut body);
            }
        }
        Ok((status, headers, body))
    }

    fn post(&self, path: &str, body: &str) -> Res<Value> {
        let head = format!(
            "POST /api2/json{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: PVEAPIToken={TOKEN_ID}={SECRET}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (status, _, b) = self.request(&head, body)?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("{path}: {status} {}", String::from_utf8_lossy(&b)).into());
        }
        Ok(serde_json::from_slice::<Value>(&b)?["data"].clone())
    }

    fn stats(&self) -> Res<Value> {
        let (_, _, b) = self.request(
            "GET /emu/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "",
        )?;
        Ok(serde_json::from_slice(&b)?)
    }
}

fn read_head(s: &mut impl Read) -> Res<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
            return Ok((
                status.to_string(),
                headers.to_string(),
                buf[p + 4..].to_vec(),
            ));
        }
        let n = s.read(&mut b)?;
        if n == 0 {
            return Err(format!(
                "EOF before end of head: {:?}",
                String::from_utf8_lossy(&buf)
            )
            .into());
        }
        buf.extend_from_slice(&b[..n]);
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A minimal websocket client over the TLS stream.
struct Ws {
    s: Tls,
    buf: Vec<u8>,
    frames: usize,
}

impl Ws {
    fn open(emu: &Emu, kind: &str, vmid: u32, port: &Value, ticket: &str) -> Res<Ws> {
        let port = port
            .as_u64()
            .map(|p| p.to_string())
            .or_else(|| port.as_str().map(String::from))
            .ok_or("port")?;
        let mut s = emu.connect()?;
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        write!(
            s,
            "GET /api2/json/nodes/pve1/{kind}/{vmid}/vncwebsocket?port={port}&vncticket={} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: binary\r\nAuthorization: PVEAPIToken={TOKEN_ID}={SECRET}\r\n\r\n",
            pct(ticket)
        )?;
        let (status, headers, rest) = read_head(&mut s)?;
        println!("  upgrade: {status} | {}", headers.replace("\r\n", " | "));
        if status != "HTTP/1.1 101 Switching Protocols" {
            return Err("no 101".into());
        }
        Ok(Ws {
            s,
            buf: rest,
            frames: 0,
        })
    }

    fn send(&mut self, payload: &[u8]) -> Res<()> {
        let m = [0x11u8, 0x22, 0x33, 0x44];
        let mut f = vec![0x82u8];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&m);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        self.s.write_all(&f)?;
        Ok(())
    }

    /// Reads binary frames until `n` payload bytes are buffered; returns them.
    fn read_bytes(&mut self, n: usize, data: &mut Vec<u8>) -> Res<Vec<u8>> {
        while data.len() < n {
            self.read_frame(data)?;
        }
        Ok(data.drain(..n).collect())
    }

    fn read_frame(&mut self, data: &mut Vec<u8>) -> Res<()> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(a) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    if b0 != 0x82 || b1 & 0x80 != 0 {
                        return Err(
                            format!("unexpected server frame header {b0:02x} {b1:02x}").into()
                        );
                    }
                    data.extend_from_slice(&self.buf[at..at + len]);
                    self.buf.drain(..at + len);
                    self.frames += 1;
                    return Ok(());
                }
            }
            let mut b = [0u8; 16384];
            let k = self.s.read(&mut b)?;
            if k == 0 {
                return Err("websocket EOF".into());
            }
            self.buf.extend_from_slice(&b[..k]);
        }
    }
}

fn des_response(password: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let c = des::Des::new(GenericArray::from_slice(&key));
    let mut out = challenge.to_vec();
    for half in out.chunks_mut(8) {
        c.encrypt_block(GenericArray::from_mut_slice(half));
    }
    out
}

fn vnc_check(emu: &Emu) -> Res<()> {
    println!("== VNC: POST qemu/100/vncproxy websocket=1");
    let d = emu.post("/nodes/pve1/qemu/100/vncproxy", "websocket=1")?;
    let pw = d["password"].as_str().ok_or("password")?;
    let ticket = d["ticket"].as_str().ok_or("ticket")?;
    println!(
        "  user={} port={} password={pw:?} ticket={ticket:.40}... upid={}",
        d["user"], d["port"], d["upid"]
    );
    let mut ws = Ws::open(emu, "qemu", 100, &d["port"], ticket)?;
    let mut data = Vec::new();
    let ver = ws.read_bytes(12, &mut data)?;
    println!("  server version {:?}", String::from_utf8_lossy(&ver));
    ws.send(b"RFB 003.008\n")?;
    let n = ws.read_bytes(1, &mut data)?[0] as usize;
    let types = ws.read_bytes(n, &mut data)?;
    println!("  security types {types:?}");
    ws.send(&[2])?;
    let ch = ws.read_bytes(16, &mut data)?;
    ws.send(&des_response(pw.as_bytes(), &ch))?;
    let r = ws.read_bytes(4, &mut data)?;
    println!("  SecurityResult {r:?}");
    if r != [0, 0, 0, 0] {
        let l = ws.read_bytes(4, &mut data)?;
        let reason = ws.read_bytes(
            u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize,
            &mut data,
        )?;
        return Err(format!("auth failed: {}", String::from_utf8_lossy(&reason)).into());
    }
    ws.send(&[1])?;
    let si = ws.read_bytes(24, &mut data)?;
    let (w, h) = (
        u16::from_be_bytes([si[0], si[1]]),
        u16::from_be_bytes([si[2], si[3]]),
    );
    let name = ws.read_bytes(
        u32::from_be_bytes([si[20], si[21], si[22], si[23]]) as usize,
        &mut data,
    )?;
    println!(
        "  ServerInit {w}x{h} name {:?} ({} server frames so far)",
        String::from_utf8_lossy(&name),
        ws.frames
    );
    // a full update request: 640x480x4 bytes must arrive in random-sized frames
    ws.send(&[3, 0, 0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0])?;
    let hdr = ws.read_bytes(4, &mut data)?;
    println!(
        "  FramebufferUpdate header {hdr:?} (frames so far {})",
        ws.frames
    );
    Ok(())
}

fn term_check(emu: &Emu) -> Res<()> {
    println!("== termproxy: POST qemu/100/termproxy");
    let d = emu.post("/nodes/pve1/qemu/100/termproxy", "")?;
    let (user, ticket) = (
        d["user"].as_str().ok_or("user")?,
        d["ticket"].as_str().ok_or("ticket")?,
    );
    println!(
        "  response keys {:?}",
        d.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())
    );
    let mut ws = Ws::open(emu, "qemu", 100, &d["port"], ticket)?;
    ws.send(format!("{user}:{ticket}\n").as_bytes())?;
    let mut data = Vec::new();
    let ok = ws.read_bytes(2, &mut data)?;
    println!("  auth answer {:?}", String::from_utf8_lossy(&ok));
    ws.send(b"1:80:24:")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&data).contains("(qemu)") && Instant::now() < deadline {
        ws.read_frame(&mut data)?;
    }
    println!("  banner {:?}", String::from_utf8_lossy(&data));
    data.clear();
    let cmd = b"info status\n";
    ws.send(
        format!("0:{}:", cmd.len())
            .into_bytes()
            .iter()
            .chain(cmd)
            .copied()
            .collect::<Vec<_>>()
            .as_slice(),
    )?;
    while !String::from_utf8_lossy(&data).contains("VM status")
        || !String::from_utf8_lossy(&data).ends_with("(qemu) ")
    {
        if Instant::now() > deadline {
            break;
        }
        ws.read_frame(&mut data)?;
    }
    println!("  reply {:?}", String::from_utf8_lossy(&data));
    Ok(())
}

fn negative_checks(emu: &Emu) -> Res<()> {
    println!("== negative checks");
    let t = Instant::now();
    let (status, headers, body) = emu.request(
        "POST /api2/json/nodes/pve1/qemu/100/vncproxy HTTP/1.1\r\nHost: x\r\nAuthorization: PVEAPIToken=relay@pve!console=wrong\r\nContent-Length: 0\r\n\r\n",
        "",
    )?;
    println!(
        "  bad token: {status:?} after {:?}, body {} bytes, headers: {}",
        t.elapsed(),
        body.len(),
        headers.replace("\r\n", " | ")
    );
    let (status, _, body) = emu.request(
        &format!("POST /api2/json/nodes/pve1/lxc/100/vncproxy HTTP/1.1\r\nHost: x\r\nAuthorization: PVEAPIToken={TOKEN_ID}={SECRET}\r\nContent-Length: 30\r\n\r\n"),
        "websocket=1&generate-password=1",
    )?;
    println!(
        "  lxc generate-password: {status:?} {}",
        String::from_utf8_lossy(&body)
    );
    let d = emu.post("/nodes/pve1/qemu/100/vncproxy", "websocket=1")?;
    let port = d["port"].to_string();
    let (status, _, body) = emu.request(
        &format!("GET /api2/json/nodes/pve1/qemu/100/vncwebsocket?port={port}&vncticket={} HTTP/1.1\r\nHost: x\r\nAuthorization: PVEAPIToken={TOKEN_ID}={SECRET}\r\nConnection: close\r\n\r\n", pct(d["ticket"].as_str().unwrap_or(""))),
        "",
    )?;
    println!(
        "  GET without Upgrade: {status:?} {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = emu.request(
        &format!("GET /api2/json/nodes/pve1/qemu/100/vncwebsocket?port={port}&vncticket={} HTTP/1.1\r\nHost: x\r\nAuthorization: PVEAPIToken={TOKEN_ID}={SECRET}\r\nConnection: close\r\n\r\n", d["ticket"].as_str().unwrap_or("")),
        "",
    )?;
    println!(
        "  unencoded ticket: {status:?} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

fn main() -> Res<()> {
    let dir = std::env::temp_dir().join(format!("pve-emu-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let st = Command::new("qemu-system-x86_64")
        .args([
            "-display",
            "none",
            "-nic",
            "none",
            "-m",
            "64",
            "-S",
            "-name",
            "emu-check",
        ])
        .args(["-vnc", &format!("unix:{},password=on", p("vnc.sock"))])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", p("qmp.sock")),
        ])
        .args([
            "-monitor",
            &format!("unix:{},server=on,wait=off", p("mon.sock")),
        ])
        .args(["-daemonize", "-pidfile", &p("qemu.pid")])
        .status()?;
    if !st.success() {
        return Err("qemu failed".into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or("exe dir")?
        .join("pve-emu");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--auth-delay-ms", "3000"])
        .args(["--token", &format!("{TOKEN_ID}={SECRET}")])
        .args(["--vnc-socket", &format!("100={}", p("vnc.sock"))])
        .args(["--qmp-socket", &format!("100={}", p("qmp.sock"))])
        .args(["--monitor-socket", &format!("100={}", p("mon.sock"))])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
    print!("{line}");
    let mut parts = line.split_whitespace();
    let addr = parts.nth(3).ok_or("addr")?.to_string();
    let fp = parts.nth(1).ok_or("fp")?.to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pin(fp, provider)))
        .with_no_client_auth();
    let emu = Emu {
        addr,
        cfg: Arc::new(cfg),
    };
    let r = vnc_check(&emu)
        .and_then(|_| term_check(&emu))
        .and_then(|_| negative_checks(&emu));
    if let Err(e) = &r {
        println!("FAILED: {e}");
    }
    std::thread::sleep(Duration::from_millis(200));
    match emu.stats() {
        Ok(s) => println!("== stats\n{s}"),
        Err(e) => println!("stats: {e}"),
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(pid) = std::fs::read_to_string(dir.join("qemu.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    r
}
