//! Test support for the Proxmox side: a real QEMU (VNC with `password=on`, QMP and a
//! human monitor on unix sockets) and the `pve-emu` emulator binary (docs/proxmox.md §11).
//!
//! `pve-emu` is a separate workspace package, so `CARGO_BIN_EXE_pve-emu` is not
//! available here: the test command must build it first, e.g.
//! `cargo build -p pve-emu && cargo test`. The binary is looked up as
//! `$PVE_EMU_BIN`, else next to the test executable's target dir (`target/debug/pve-emu`),
//! else `$CARGO_TARGET_DIR/debug/pve-emu`, else `<manifest>/target/debug/pve-emu`.
//! QEMU comes from `apt-get install -y --no-install-recommends qemu-system-x86`.
//! Independent of the rest of `tests/common`.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use tempfile::TempDir;

/// The token id the helpers configure by default.
pub const TOKEN_ID: &str = "relay@pve!console";
/// Its secret.
pub const TOKEN_SECRET: &str = "0b9a4c52-7d1e-4f0a-9c3b-5e6f7a8b9c0d";

/// Whether `qemu-system-x86_64` can be run here.
pub fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A daemonized QEMU with its sockets in a temp dir; killed (by pid) on drop.
pub struct Qemu {
    dir: TempDir,
    pid: u32,
    /// `-name` given to QEMU (ServerInit says `QEMU (<name>)`).
    pub name: String,
}

impl Qemu {
    /// `qemu-system-x86_64 -display none -nic none -m 64 -S -vnc unix:…,password=on
    /// -qmp unix:…,server=on,wait=off -monitor unix:…,server=on,wait=off -name NAME
    /// -daemonize -pidfile …`, then waits for the three sockets.
    pub fn start(name: &str) -> io::Result<Qemu> {
        let dir = tempfile::Builder::new().prefix("pve-qemu-").tempdir()?;
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let out = Command::new("qemu-system-x86_64")
            .args(["-display", "none", "-nic", "none", "-m", "64", "-S"])
            .args(["-vnc", &format!("unix:{},password=on", p("vnc.sock"))])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", p("qmp.sock")),
            ])
            .args([
                "-monitor",
                &format!("unix:{},server=on,wait=off", p("mon.sock")),
            ])
            .args(["-name", name, "-daemonize", "-pidfile", &p("qemu.pid")])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "qemu failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let pid: u32 = std::fs::read_to_string(dir.path().join("qemu.pid"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::other("bad qemu pidfile"))?;
        let q = Qemu {
            dir,
            pid,
            name: name.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for s in [q.vnc_socket(), q.qmp_socket(), q.monitor_socket()] {
            while !s.exists() {
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!("{} did not appear", s.display())));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(q)
    }

    /// The temp dir holding the sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// VNC unix socket (password=on).
    pub fn vnc_socket(&self) -> PathBuf {
        self.dir.path().join("vnc.sock")
    }
    /// QMP unix socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }
    /// Human monitor unix socket (`(qemu)` prompt).
    pub fn monitor_socket(&self) -> PathBuf {
        self.dir.path().join("mon.sock")
    }
    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// `--vnc-socket/--qmp-socket/--monitor-socket VMID=…` arguments for pve-emu.
    pub fn emu_args(&self, vmid: u32) -> Vec<String> {
        let s = |p: PathBuf| format!("{vmid}={}", p.display());
        vec![
            "--vnc-socket".into(),
            s(self.vnc_socket()),
            "--qmp-socket".into(),
            s(self.qmp_socket()),
            "--monitor-socket".into(),
            s(self.monitor_socket()),
        ]
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        // let it go before the temp dir (and its sockets) disappear
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        let deadline = Instant::now() + Duration::from_secs(2);
        while proc.exists() && Instant::now() < deadline {
            if std::fs::read_to_string(proc.join("stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
            {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Where the pve-emu binary is (see the module docs). Panics with a hint if missing.
pub fn emu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PVE_EMU_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    // <target>/debug/deps/<test-exe> → <target>/debug/pve-emu
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("pve-emu"));
        }
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(manifest.join(t).join("debug").join("pve-emu"));
    }
    candidates.push(manifest.join("target").join("debug").join("pve-emu"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("pve-emu binary not found (tried {candidates:?}); run `cargo build -p pve-emu` first")
        })
}

/// A running `pve-emu`; killed on drop.
pub struct PveEmu {
    /// Its listen address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of its certificate, `AB:CD:...` uppercase.
    pub fingerprint: String,
    child: Child,
    tls: Arc<ClientConfig>,
}

impl PveEmu {
    /// Starts `pve-emu --listen 127.0.0.1:0 ARGS...` and parses its first stdout line.
    pub fn start<S: AsRef<str>>(args: &[S]) -> io::Result<PveEmu> {
        let mut cmd = Command::new(emu_binary());
        if !args.iter().any(|a| a.as_ref() == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args.iter().map(|a| a.as_ref()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(r.read_line(&mut line).map(|_| line));
            // keep draining so the emulator never blocks on stdout
            let _ = io::copy(&mut r, &mut io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(l)) => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "pve-emu did not start: {other:?}"
                )));
            }
        };
        // "pve-emu listening on ADDR fingerprint FP"
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            ["pve-emu", "listening", "on", addr, "fingerprint", fp] => {
                addr.parse::<SocketAddr>().ok().map(|a| (a, fp.to_string()))
            }
            _ => None,
        };
        let Some((addr, fingerprint)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "unexpected pve-emu line {line:?}"
            )));
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                fingerprint: fingerprint.clone(),
                provider,
            }))
            .with_no_client_auth();
        Ok(PveEmu {
            addr,
            fingerprint,
            child,
            tls: Arc::new(tls),
        })
    }

    /// An emulator accepting [`TOKEN_ID`]/[`TOKEN_SECRET`], backed by `qemu` as `vmid`,
    /// with a short 401 delay (`--auth-delay-ms 300`) unless `extra` sets one.
    pub fn with_qemu(qemu: &Qemu, vmid: u32, extra: &[&str]) -> io::Result<PveEmu> {
        let mut args = vec!["--token".to_string(), format!("{TOKEN_ID}={TOKEN_SECRET}")];
        if !extra.contains(&"--auth-delay-ms") {
            args.extend(["--auth-delay-ms".to_string(), "300".to_string()]);
        }
        args.extend(qemu.emu_args(vmid));
        args.extend(extra.iter().map(|s| s.to_string()));
        PveEmu::start(&args)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The fingerprint as lowercase hex without colons.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint.replace(':', "").to_ascii_lowercase()
    }

    /// A rustls client config pinning this emulator's certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// A TLS connection to the emulator (pinned).
    pub fn connect(&self) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let conn = ClientConnection::new(Arc::clone(&self.tls), name).map_err(io::Error::other)?;
        Ok(StreamOwned::new(conn, tcp))
    }

    /// `GET /emu/stats` (no auth) as JSON. Panics on failure (test helper).
    pub fn stats(&self) -> serde_json::Value {
        self.try_stats().expect("GET /emu/stats")
    }

    /// `GET /emu/stats`, reporting errors.
    pub fn try_stats(&self) -> io::Result<serde_json::Value> {
        let mut s = self.connect()?;
        s.write_all(b"GET /emu/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut resp = Vec::new();
        match s.read_to_end(&mut resp) {
            Ok(_) => {}
            // tolerate a TCP close without close_notify once the body is in
            Err(e) if !resp.is_empty() && e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        let at = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other("no HTTP head"))?;
        serde_json::from_slice(&resp[at + 4..]).map_err(io::Error::other)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PveEmu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts exactly the certificate with the given SHA-256 fingerprint (signatures are
/// still verified).
#[derive(Debug)]
pub struct PinVerifier {
    /// `AB:CD:...` uppercase.
    pub fingerprint: String,
    /// Crypto provider for the signature checks.
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
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
        if fp.join(":") == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "pve-emu fingerprint mismatch".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
