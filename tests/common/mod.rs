//! Test harness: the real `nexor-relay` binary on port 0 with a config in a
//! temp dir, real rustls on both sides, real upstream servers on loopback.
//! Every child process and server thread ends when its owner drops.
#![allow(dead_code)]

pub mod pve;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nexor_relay::http::{self, HeadLimits};
use nexor_relay::ticket::{self, Claims, Console, Key};
use nexor_relay::ws::frame::{FrameHeader, OpCode, MAX_HEADER};
use nexor_relay::ws::{handshake, mask};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub const KEY_ID: &str = "k1";
pub const KEY_B64: &str = "+Zk/OZaZj71MopmacevP/LMU28iqsoxSXd0O+BzYJv0=";
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- certificates -------------------------------------------------------------

pub struct Certs {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub leaf_pem: String,
    pub leaf_der: CertificateDer<'static>,
    pub key_pem: String,
}

/// A test CA and a leaf for localhost/127.0.0.1, made once per test binary.
pub fn certs() -> &'static Certs {
    static C: OnceLock<Certs> = OnceLock::new();
    C.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nexor test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        Certs {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().clone(),
            key_pem: leaf_key.serialize_pem(),
        }
    })
}

pub fn leaf_fingerprint() -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(certs().leaf_der.as_ref());
    d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_tls() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs().ca_der.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub fn server_tls() -> Arc<rustls::ServerConfig> {
    let key = rustls_pemfile::private_key(&mut certs().key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let key: PrivateKeyDer<'static> = key;
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certs().leaf_der.clone()], key)
            .unwrap(),
    )
}

// ---- a stream that is plain or TLS --------------------------------------------

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    ServerTls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    pub fn connect(addr: SocketAddr, tls: bool) -> Conn {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        if tls {
            let name = ServerName::try_from("localhost").unwrap();
            let c = rustls::ClientConnection::new(client_tls(), name).unwrap();
            Conn::Tls(Box::new(rustls::StreamOwned::new(c, tcp)))
        } else {
            Conn::Plain(tcp)
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
            Conn::ServerTls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::ServerTls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::ServerTls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::ServerTls(s) => s.flush(),
        }
    }
}

// ---- the relay under test -------------------------------------------------------

/// Builds and starts a relay.
pub struct RelayBuilder {
    pub tls: bool,
    pub server: String,
    pub tickets: String,
    pub limits: String,
    pub admin: String,
    pub upstreams: String,
    /// Environment for the relay process only (debug-build test faults).
    pub env: Vec<(String, String)>,
}

impl RelayBuilder {
    pub fn new(tls: bool) -> RelayBuilder {
        RelayBuilder {
            tls,
            server: String::new(),
            tickets: String::new(),
            limits: String::new(),
            admin: String::new(),
            upstreams: String::new(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for this relay process only.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn server(mut self, s: &str) -> Self {
        self.server.push_str(s);
        self.server.push('\n');
        self
    }

    pub fn tickets(mut self, s: &str) -> Self {
        self.tickets.push_str(s);
        self.tickets.push('\n');
        self
    }

    pub fn admin(mut self, s: &str) -> Self {
        self.admin.push_str(s);
        self.admin.push('\n');
        self
    }

    pub fn limits(mut self, s: &str) -> Self {
        self.limits.push_str(s);
        self.limits.push('\n');
        self
    }

    pub fn upstream(mut self, name: &str, body: &str) -> Self {
        self.upstreams
            .push_str(&format!("[upstreams.{name}]\n{body}\n"));
        self
    }

    pub fn start(self) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n{}",
            self.server
        );
        if self.tls {
            std::fs::write(dir.path().join("cert.pem"), &certs().leaf_pem).unwrap();
            std::fs::write(dir.path().join("key.pem"), &certs().key_pem).unwrap();
            cfg.push_str("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
        }
        cfg.push_str(&format!(
            "[tickets]\nkeys = [{{ id = \"{KEY_ID}\", secret = \"{KEY_B64}\" }}]\nmax_ttl = \"120s\"\nleeway = \"5s\"\n{}",
            self.tickets
        ));
        cfg.push_str(&format!("[limits]\n{}", self.limits));
        if self.admin.contains("listen") {
            cfg.push_str(&format!("[admin]\n{}", self.admin));
        } else {
            cfg.push_str(&format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
                self.admin
            ));
        }
        cfg.push_str(&self.upstreams);
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, &cfg).unwrap();
        Relay::spawn(dir, &path, self.tls, &self.env)
    }
}

pub struct Relay {
    pub addr: SocketAddr,
    /// The admin listener, if on.
    pub admin: Option<SocketAddr>,
    /// The config file (rewrite it, then `signal("HUP")` to reload).
    pub config: std::path::PathBuf,
    pub tls: bool,
    child: Child,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    /// Every ticket handed out, checked against the logs at drop.
    secrets: Mutex<Vec<String>>,
}

impl Relay {
    fn spawn(
        dir: tempfile::TempDir,
        config: &std::path::Path,
        tls: bool,
        env: &[(String, String)],
    ) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexor-relay"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("serve")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nexor-relay");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        // Audit lines (stdout) go to the same buffer as the logs (stderr).
        let audit_sink = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut l = audit_sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let sink = logs.clone();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"msg\":\"listening\"") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("relay did not start: {}", logs.lock().unwrap());
            }
        };
        let field = |name: &str| {
            line.split(&format!("\"{name}\":\""))
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        let addr = field("addr").parse().unwrap();
        let admin = field("admin").parse().ok();
        Relay {
            addr,
            admin,
            config: config.to_path_buf(),
            tls,
            child,
            logs,
            _dir: dir,
            secrets: Mutex::new(vec![KEY_B64.to_string(), KEY_B64[..20].to_string()]),
        }
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) to the relay.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the relay to exit; its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// An admin request; returns status and body.
    pub fn admin_request(&self, method: &str, target: &str, token: Option<&str>) -> (u16, String) {
        let mut c = TcpStream::connect(self.admin.expect("admin listener")).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            c,
            "{method} {target} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\n\r\n",
            self.admin.expect("admin listener")
        )
        .unwrap();
        let (status, head, rest) = read_response_head(&mut c);
        (status, read_body(&mut c, &head, rest))
    }

    /// Waits until no session is live (admin `/sessions`): a session's
    /// slots are released right after its `session_end` audit line.
    pub fn wait_released(&self) {
        let t = Instant::now();
        loop {
            let (status, body) = self.admin_request("GET", "/sessions", None);
            assert_eq!(status, 200, "{body}");
            if body.trim() == "[]" {
                return;
            }
            assert!(t.elapsed() < IO_TIMEOUT, "sessions still live: {body}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// True while the relay process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn key() -> Key {
        Key::from_secret_b64(KEY_ID, KEY_B64).unwrap()
    }

    pub fn claims(upstream: &str, console: Console) -> Claims {
        let n = now();
        Claims {
            exp: n + 60,
            iat: n,
            nbf: None,
            jti: format!("test-{:016x}", rand_u64()),
            sub: "customer-42".into(),
            aud: None,
            upstream: upstream.into(),
            node: None,
            vmid: None,
            guest: None,
            console,
            ip: None,
            max_session: None,
            mode: Default::default(),
            record: false,
        }
    }

    /// A fresh valid ticket for `upstream`.
    pub fn ticket(&self, upstream: &str) -> String {
        self.sign(&Self::claims(upstream, Console::Vnc))
    }

    /// Registers a secret the relay's output must never contain.
    pub fn add_secret(&self, s: &str) {
        self.secrets.lock().unwrap().push(s.to_string());
    }

    /// Signs with another key (rotation tests); the ticket is scanned for in the logs too.
    pub fn sign_with(&self, claims: &Claims, key: &Key) -> String {
        let t = ticket::mint(claims, key);
        self.secrets.lock().unwrap().push(t.clone());
        t
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let t = ticket::mint(claims, &Self::key());
        self.secrets.lock().unwrap().push(t.clone());
        t
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "wss"
        } else {
            "ws"
        }
    }

    pub fn url(&self, target: &str) -> String {
        format!("{}://localhost:{}{target}", self.scheme(), self.addr.port())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let t = Instant::now();
        while t.elapsed() < IO_TIMEOUT {
            if self.logs().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(self.addr, self.tls)
    }

    /// Opens a WebSocket with tungstenite (a client this team did not write).
    pub fn ws(
        &self,
        target: &str,
        protocols: &[&str],
    ) -> Result<
        (
            tungstenite::WebSocket<Conn>,
            tungstenite::handshake::client::Response,
        ),
        tungstenite::Error,
    > {
        use tungstenite::client::IntoClientRequest;
        let mut req = self.url(target).into_client_request().unwrap();
        if !protocols.is_empty() {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                protocols.join(", ").parse().unwrap(),
            );
        }
        match tungstenite::client::client(req, self.conn()) {
            Ok(v) => Ok(v),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("blocking socket interrupted")
            }
        }
    }

    /// Sends raw request bytes; returns the status, the head and the stream.
    pub fn raw(&self, request: &[u8]) -> (u16, String, Conn, Vec<u8>) {
        let mut c = self.conn();
        c.write_all(request).unwrap();
        c.flush().unwrap();
        let (status, head, rest) = read_response_head(&mut c);
        (status, head, c, rest)
    }

    /// An upgrade request for `target` with extra header lines.
    pub fn upgrade_request(&self, target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            self.addr.port()
        )
        .into_bytes()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("relay logs:\n{}", self.logs());
            return;
        }
        // No ticket or key material may ever reach a log line.
        let logs = self.logs();
        for s in self.secrets.lock().unwrap().iter() {
            assert!(
                !logs.contains(s.as_str()),
                "a secret appeared in the relay's logs"
            );
            if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() > 20) {
                assert!(
                    !logs.contains(sig),
                    "a ticket signature appeared in the relay's logs"
                );
            }
        }
    }
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Reads an HTTP response head; returns status, head text, bytes after it.
pub fn read_response_head(c: &mut impl Read) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((head, n))) = http::parse_response(&buf, HeadLimits::default()) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            return (head.status, text, buf[n..].to_vec());
        }
        let n = c.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            panic!(
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the body of a refusal (Content-Length) after its head.
pub fn read_body(c: &mut impl Read, head: &str, mut rest: Vec<u8>) -> String {
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut chunk = [0u8; 1024];
    while rest.len() < len {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "short body");
        rest.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(rest).unwrap()
}

// ---- raw frames -----------------------------------------------------------------------

/// Writes one frame; masked with a random key if `masked`.
pub fn write_frame(w: &mut impl Write, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
    w.write_all(&frame_bytes(fin, opcode, payload, masked))
        .unwrap();
    w.flush().unwrap();
}

pub fn frame_bytes(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let key = masked.then(mask::random_key);
    let h = FrameHeader {
        fin,
        rsv: 0,
        opcode: OpCode::from_u8(opcode),
        mask: key,
        len: payload.len() as u64,
    };
    let mut hb = [0u8; MAX_HEADER];
    let n = h.encode(&mut hb);
    let mut out = hb[..n].to_vec();
    let mut p = payload.to_vec();
    if let Some(k) = key {
        mask::apply(&mut p, k, 0);
    }
    out.extend_from_slice(&p);
    out
}

/// A frame as read: header, and payload unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// Reads one frame; `pending` holds bytes already read past earlier frames.
pub fn read_frame(r: &mut impl Read, pending: &mut Vec<u8>) -> io::Result<Frame> {
    let mut chunk = vec![0u8; 65536];
    loop {
        if let Ok(Some((h, hl))) = FrameHeader::parse(pending) {
            let total = hl + h.len as usize;
            if pending.len() >= total {
                let mut payload = pending[hl..total].to_vec();
                if let Some(k) = h.mask {
                    mask::apply(&mut payload, k, 0);
                }
                pending.drain(..total);
                return Ok(Frame {
                    fin: h.fin,
                    opcode: h.opcode.as_u8(),
                    masked: h.mask.is_some(),
                    payload,
                });
            }
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The close code in a close frame's payload.
pub fn close_code(f: &Frame) -> Option<u16> {
    (f.opcode == 8 && f.payload.len() >= 2)
        .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]))
}

// ---- upstream servers ---------------------------------------------------------------

/// Runs `serve` on each connection accepted on a loopback port, in its own
/// thread, until dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start<F>(serve: F) -> Server
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let serve = Arc::new(serve);
        thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false).unwrap();
                        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        let serve = serve.clone();
                        thread::spawn(move || serve(tcp));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { addr, stop }
    }

    /// A tungstenite echo server; selects `binary` when offered; TLS with
    /// the test certificate when `tls`.
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    pub fn ws_echo(tls: bool) -> Server {
        Server::start(move |tcp| {
            let conn = if tls {
                let c = rustls::ServerConnection::new(server_tls()).unwrap();
                Conn::ServerTls(Box::new(rustls::StreamOwned::new(c, tcp)))
            } else {
                Conn::Plain(tcp)
            };
            let cb = |req: &tungstenite::handshake::server::Request,
                      mut resp: tungstenite::handshake::server::Response| {
                let offered = req
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap_or("").to_string())
                    .unwrap_or_default();
                assert!(
                    !offered.contains("nexor.ticket"),
                    "the ticket reached the upstream"
                );
                if offered.split(',').any(|p| p.trim() == "binary") {
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
                }
                Ok(resp)
            };
            let Ok(mut ws) = tungstenite::accept_hdr(conn, cb) else {
                return;
            };
            loop {
                match ws.read() {
                    Ok(m @ (tungstenite::Message::Binary(_) | tungstenite::Message::Text(_))) => {
                        if ws.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(tungstenite::Message::Close(_)) => {
                        let _ = ws.flush();
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    }

    pub fn tcp_echo() -> Server {
        Server::start(|mut tcp| {
            let mut buf = vec![0u8; 65536];
            loop {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }

    /// Accepts and says nothing, holding the connection.
    pub fn silent() -> Server {
        Server::start(|tcp| {
            thread::sleep(Duration::from_secs(30));
            drop(tcp);
        })
    }

    /// A hand-driven WebSocket upstream: does the server handshake (offered
    /// protocol echoed), then hands the socket to the test.
    pub fn ws_manual() -> (Server, mpsc::Receiver<(TcpStream, Vec<u8>)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let s = Server::start(move |mut tcp| {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, n) = loop {
                let n = tcp.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Ok(Some(v)) = http::parse_request(&buf, HeadLimits::default()) {
                    break v;
                }
            };
            let up = handshake::check_upgrade(&head).unwrap();
            let proto = up.selected_protocol();
            tcp.write_all(&handshake::response_101(&up.key, proto))
                .unwrap();
            let _ = tx.lock().unwrap().send((tcp, buf[n..].to_vec()));
        });
        (s, rx)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A loopback port nobody listens on.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect()
}

// ---- optional tools: skip with one line -------------------------------------------------

/// Whether an optional test dependency is present: `python` (the `websockets` and `jwt`
/// packages), `qemu`, `pve-emu` (built by `cargo build -p pve-emu`), `chromium` (with
/// node and playwright-core), `novnc` (the npm assets), `nginx`, `haproxy`, `redis-server`.
/// `NEXOR_TEST_HIDE=qemu,nginx` (or `all`) makes tools look missing, to test the skip path.
pub fn have(tool: &str) -> bool {
    let hidden = std::env::var("NEXOR_TEST_HIDE").unwrap_or_default();
    if hidden.split(',').any(|h| h == tool || h == "all") {
        return false;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let in_path = |bin: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(bin).is_file())
    };
    let runs = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    match tool {
        "python" => runs(Command::new("python3").args(["-c", "import websockets, jwt"])),
        "qemu" => pve::qemu_available(),
        "pve-emu" => pve::emu_binary().is_file(),
        "chromium" => {
            std::path::Path::new("/usr/bin/chromium").is_file()
                && in_path("node")
                && root
                    .join("tests/browser/node_modules/playwright-core")
                    .is_dir()
        }
        "novnc" => ["novnc/core/rfb.js", "xterm/lib/xterm.js"]
            .iter()
            .all(|f| root.join("tests/browser/assets").join(f).is_file()),
        "nginx" | "haproxy" | "redis-server" => in_path(tool),
        // A writable sysctl (root): the upgrade test sets it for its run.
        "tcp_migrate_req" => std::fs::OpenOptions::new()
            .write(true)
            .open(MIGRATE_REQ)
            .is_ok(),
        other => panic!("unknown optional tool {other:?}"),
    }
}

/// The sysctl that lets the kernel move connections still queued on a
/// closing SO_REUSEPORT listener to another listener of its group.
pub const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// `net.ipv4.tcp_migrate_req = 1` while it lives, the old value after: what
/// the README asks of an operator who upgrades in place, for one test.
pub struct MigrateReq(String);

impl MigrateReq {
    pub fn on() -> MigrateReq {
        let old = std::fs::read_to_string(MIGRATE_REQ).expect("read tcp_migrate_req");
        std::fs::write(MIGRATE_REQ, "1").expect("set tcp_migrate_req");
        MigrateReq(old.trim().to_string())
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        let _ = std::fs::write(MIGRATE_REQ, &self.0);
    }
}

/// True when the calling test must skip because one of `tools` is missing: prints ONE line,
/// `SKIP <test>: <tools> not found (run scripts/test to install)`, to stderr and appends it
/// to the file named by `NEXOR_SKIP_LOG` (scripts/test sets it and fails when it is not
/// empty, so the full suite never passes by skipping). Use: `if skip_without(&[..]) { return; }`.
pub fn skip_without(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return false;
    }
    let test = thread::current().name().unwrap_or("?").to_string();
    let line = format!(
        "SKIP {test}: {} not found (run scripts/test to install)",
        missing.join(", ")
    );
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(io::stderr(), "{line}");
    if let Some(path) = std::env::var_os("NEXOR_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("NEXOR_SKIP_LOG is writable");
        writeln!(f, "{line}").expect("NEXOR_SKIP_LOG is writable");
    }
    true
}
