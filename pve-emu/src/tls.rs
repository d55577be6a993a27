//! The TLS side: certificate (generated or loaded), fingerprint, and a blocking TLS
//! connection that can be read by one thread while another writes (needed by the
//! websocket proxy, which pumps both directions at once).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The certificate the emulator serves.
pub struct Identity {
    /// rustls config built from it.
    pub config: Arc<ServerConfig>,
    /// `AB:CD:...` SHA-256 of the leaf DER.
    pub fingerprint: String,
    /// Leaf (or given chain) PEM, returned as `cert` by vncproxy.
    pub cert_pem: String,
}

/// Builds the identity: self-signed for localhost/127.0.0.1, or the given PEM files.
pub fn identity(cert: Option<&str>, key: Option<&str>) -> Result<Identity, String> {
    let (cert_pem, key_pem) = match (cert, key) {
        (Some(c), Some(k)) => (
            std::fs::read_to_string(c).map_err(|e| format!("reading {c}: {e}"))?,
            std::fs::read_to_string(k).map_err(|e| format!("reading {k}: {e}"))?,
        ),
        (None, None) => {
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .map_err(|e| format!("rcgen: {e}"))?;
            (ck.cert.pem(), ck.key_pair.serialize_pem())
        }
        _ => return Err("--cert and --key go together".into()),
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let leaf = certs.first().ok_or("no certificate in PEM")?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("key PEM: {e}"))?
        .ok_or("no private key in PEM")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let fingerprint = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls config: {e}"))?;
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
        cert_pem,
    })
}

/// A server TLS connection over a blocking socket, usable from two threads:
/// one calls [`TlsConn::read_more`], the other [`TlsConn::write_all`].
/// Lock order is always `wsock` then `conn`.
pub struct TlsConn {
    conn: Mutex<ServerConnection>,
    wsock: Mutex<TcpStream>,
    rsock: Mutex<TcpStream>,
    raw: TcpStream,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn drain_tls(conn: &mut ServerConnection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

impl TlsConn {
    /// Wraps an accepted TCP stream.
    pub fn new(config: Arc<ServerConfig>, sock: TcpStream) -> io::Result<TlsConn> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsConn {
            conn: Mutex::new(conn),
            wsock: Mutex::new(sock.try_clone()?),
            rsock: Mutex::new(sock.try_clone()?),
            raw: sock,
        })
    }

    /// Reads more plaintext into `buf`. `Ok(false)` on EOF (TCP or close_notify).
    /// `deadline`: give up with `TimedOut` at that instant (None: block forever).
    /// Only one thread may call this at a time.
    pub fn read_more(&self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> io::Result<bool> {
        let mut rsock = lock(&self.rsock);
        let mut raw = vec![0u8; 32 * 1024];
        let before = buf.len();
        loop {
            // plaintext already decrypted?
            {
                let mut c = lock(&self.conn);
                match drain_plain(&mut c, buf) {
                    Ok(true) if buf.len() > before => return Ok(true),
                    Ok(true) => {}
                    Ok(false) => return Ok(buf.len() > before),
                    Err(e) => return Err(e),
                }
            }
            match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    rsock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                }
                None => rsock.set_read_timeout(None)?,
            }
            let n = match rsock.read(&mut raw) {
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(io::ErrorKind::TimedOut.into())
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(false);
            }
            let mut w = lock(&self.wsock);
            let out = {
                let mut c = lock(&self.conn);
                let mut rd = &raw[..n];
                let mut eof = false;
                while !rd.is_empty() {
                    c.read_tls(&mut rd)?;
                    if let Err(e) = c.process_new_packets() {
                        // send the alert, then fail
                        let alert = drain_tls(&mut c).unwrap_or_default();
                        let _ = w.write_all(&alert);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    if !drain_plain(&mut c, buf)? {
                        eof = true;
                    }
                }
                let out = drain_tls(&mut c)?;
                if eof {
                    w.write_all(&out)?;
                    return Ok(buf.len() > before);
                }
                out
            };
            w.write_all(&out)?;
        }
    }

    /// Encrypts and writes all of `data` (whole call is atomic w.r.t. other writers).
    ///
    /// rustls takes at most its buffer limit (64 KiB) of plaintext before
    /// that is written out, so larger writes go in turns: hand rustls what
    /// it takes, write the records to the socket, repeat.
    pub fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let mut w = lock(&self.wsock);
        loop {
            let (taken, out) = {
                let mut c = lock(&self.conn);
                let n = c.writer().write(data)?;
                (n, drain_tls(&mut c)?)
            };
            if taken == 0 && out.is_empty() && !data.is_empty() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[taken..];
            w.write_all(&out)?;
            if data.is_empty() {
                return w.flush();
            }
        }
    }

    /// Sends close_notify and shuts the TCP write side; lets queued bytes reach the
    /// peer (reads what the peer still sends for up to `linger`), then shuts both ways.
    pub fn close(&self, linger: Duration) {
        {
            let mut w = lock(&self.wsock);
            let out = {
                let mut c = lock(&self.conn);
                c.send_close_notify();
                drain_tls(&mut c).unwrap_or_default()
            };
            let _ = w.write_all(&out);
        }
        let _ = self.raw.shutdown(Shutdown::Write);
        if !linger.is_zero() {
            let end = Instant::now() + linger;
            if let Ok(mut r) = self.raw.try_clone() {
                let mut sink = [0u8; 4096];
                loop {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() || r.set_read_timeout(Some(left)).is_err() {
                        break;
                    }
                    match r.read(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
        }
        let _ = self.raw.shutdown(Shutdown::Both);
    }

    /// Drops the TCP connection at once (no close_notify): used on framing violations.
    pub fn abort(&self) {
        let _ = self.raw.shutdown(Shutdown::Both);
    }
}

/// Moves decrypted plaintext into `buf`. `Ok(false)` once the peer sent close_notify.
fn drain_plain(c: &mut ServerConnection, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match c.reader().read(&mut tmp) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}
