//! rustls configurations (ring provider): the browser-facing server, the
//! `wss://` upstream client with its three trust modes, and the self-signed
//! certificate `demo` makes at start.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::Trust;

/// The crypto library under rustls. aws-lc-rs by default (its assembly
/// for X25519, P-256 and SHA-384 roughly halves a handshake's CPU against
/// ring's, BENCHMARKING.md "TLS"); `NEXOR_TLS_PROVIDER=ring` picks ring,
/// the lever that measurement compares. ring stays the relay's HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    AwsLc,
    Ring,
}

impl Provider {
    pub fn current() -> Provider {
        static P: std::sync::OnceLock<Provider> = std::sync::OnceLock::new();
        *P.get_or_init(|| match std::env::var("NEXOR_TLS_PROVIDER").as_deref() {
            Ok("ring") => Provider::Ring,
            _ => Provider::AwsLc,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::AwsLc => "aws-lc-rs",
            Provider::Ring => "ring",
        }
    }
}

fn base_provider() -> CryptoProvider {
    match Provider::current() {
        Provider::AwsLc => rustls::crypto::aws_lc_rs::default_provider(),
        Provider::Ring => ring_provider::default_provider(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(base_provider())
}

/// Makes [`Provider::current`] the process's rustls default, for what
/// builds its own configs (the Redis client of fleet mode): with both
/// providers compiled in, rustls cannot pick one by itself. Call once at
/// start; a later call is a no-op.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default(base_provider());
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no certificate in PEM",
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no private key in PEM"))
}

/// The browser-facing provider: its suites with AES-128-GCM first. Its
/// SHA-256 runs on the CPU's SHA extensions where ring's SHA-384 has no
/// hardware path (BENCHMARKING.md, "TLS").
fn server_provider() -> Arc<CryptoProvider> {
    let mut p = base_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        }
    });
    Arc::new(p)
}

fn server_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // Browsers offer h2 first; a WebSocket upgrade needs HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption: a browser that reconnects (noVNC after a drop, a reload)
    // skips the certificate signature and key exchange. Stateless tickets,
    // so nothing per client is stored; one ticket per handshake (a resumed
    // handshake hands out the next). BENCHMARKING.md, churn-resume.
    cfg.ticketer = ticketer()?;
    // The server's suite order, not the client's (which puts AES-256 first).
    cfg.ignore_client_order = true;
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}

/// The process's ticket keys (rustls rotates them every 6 hours and keeps
/// the previous ones), shared by every config a reload builds, so that a
/// SIGHUP does not void the tickets browsers hold. Another relay of a
/// fleet has other keys: there a ticket costs a full handshake, no error.
fn ticketer() -> io::Result<Arc<dyn rustls::server::ProducesTickets>> {
    static KEYS: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> =
        std::sync::OnceLock::new();
    if let Some(t) = KEYS.get() {
        return Ok(t.clone());
    }
    let t = match Provider::current() {
        Provider::AwsLc => rustls::crypto::aws_lc_rs::Ticketer::new(),
        Provider::Ring => ring_provider::Ticketer::new(),
    }
    .map_err(io::Error::other)?;
    Ok(KEYS.get_or_init(|| t).clone())
}

/// The browser-facing TLS config from PEM files. Errors say which file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(cert).map_err(|e| format!("server.tls_cert {}: {e}", cert.display()))?;
    let key_der = read_key(key).map_err(|e| format!("server.tls_key {}: {e}", key.display()))?;
    server_from(certs, key_der).map_err(|e| format!("server.tls_cert/tls_key: {e}"))
}

/// A self-signed certificate for `localhost`/127.0.0.1/::1, made now.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: [u8; 32],
    pub config: Arc<ServerConfig>,
}

/// Makes a fresh self-signed certificate (P-256) for the demo.
pub fn self_signed() -> Result<SelfSigned, String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let der = ck.cert.der().clone();
    let fingerprint = Sha256::digest(der.as_ref()).into();
    let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = server_from(vec![der], key).map_err(|e| e.to_string())?;
    Ok(SelfSigned {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        fingerprint,
        config,
    })
}

/// Lowercase hex with `:` separators, as `openssl x509 -fingerprint` and
/// Proxmox print it.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The client config for a `wss://` upstream.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let cfg = match trust {
        Trust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(path).map_err(|e| format!("{}: {e}", path.display()))? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafCheck {
                mode: LeafMode::Pin(*fp),
                algs: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    let mut cfg = cfg;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Checks only the leaf certificate, by SHA-256 of its DER, as Proxmox
/// pins node certificates (docs/proxmox.md §8) — or, for `nexor-relay
/// fingerprint`, records it. The handshake signature is verified either
/// way, so only the holder of that certificate's key passes.
#[derive(Debug)]
struct LeafCheck {
    mode: LeafMode,
    algs: WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
enum LeafMode {
    Pin([u8; 32]),
    Record(Arc<std::sync::Mutex<Option<[u8; 32]>>>),
}

impl ServerCertVerifier for LeafCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        match &self.mode {
            // A certificate is public: a plain comparison leaks nothing.
            LeafMode::Pin(want) if got == *want => Ok(ServerCertVerified::assertion()),
            LeafMode::Pin(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            LeafMode::Record(seen) => {
                if let Ok(mut s) = seen.lock() {
                    *s = Some(got);
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The `ServerName` for SNI and hostname checks: an IP literal or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("`{host}`: {e}"))
}

/// Reads a server's leaf certificate fingerprint (for `nexor-relay
/// fingerprint https://host:8006`): what to pin in `fingerprint`. Trusts
/// nothing: it only reports what the server presents, for a person to
/// compare with the server's own `pvenode cert info`.
pub fn fetch_fingerprint(url: &str) -> Result<[u8; 32], String> {
    use std::io::Write;
    let rest = url
        .trim()
        .trim_end_matches('/')
        .strip_prefix("https://")
        .ok_or("expected https://host[:port]")?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !rest.ends_with(']') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?)
        }
        _ => (rest, 8006),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Arc::new(LeafCheck {
        mode: LeafMode::Record(seen.clone()),
        algs: provider().signature_verification_algorithms,
    });
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = server_name(host)?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut tcp =
        std::net::TcpStream::connect((host, port)).map_err(|e| format!("{host}:{port}: {e}"))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("TLS: {e}"))?;
    }
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    let _ = tcp.flush();
    let fp = *seen.lock().map_err(|_| "lock")?;
    fp.ok_or_else(|| "the server sent no certificate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// Runs a handshake in memory between a client and the browser-facing
    /// config, moving TLS bytes until neither has any to send, then lets
    /// the client read what the server sent after it (the tickets).
    fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> ClientConnection {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(client.clone(), name).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        for _ in 0..20 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                break;
            }
        }
        assert!(!c.is_handshaking(), "handshake did not finish");
        c
    }

    /// A browser that reconnects resumes, also after a reload built a new
    /// config (the ticket keys are the process's; rustls' per-config
    /// session cache alone would not resume there), and the server picks
    /// AES-128-GCM even when the client lists AES-256 first.
    #[test]
    fn a_reconnecting_client_resumes_with_aes_128() {
        let provider = Provider::current();
        let ss = self_signed().unwrap();
        let trust = Trust::Fingerprint(ss.fingerprint);
        // One client config, as a browser keeps its session cache.
        let client = client_config(&trust).unwrap();
        let first = handshake(&client, &ss.config);
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert_eq!(
            first.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "{provider:?}"
        );
        // SIGHUP: the same certificate, a config built anew.
        let certs: Vec<_> = rustls_pemfile::certs(&mut ss.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut ss.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let reloaded = server_from(certs, key).unwrap();
        let second = handshake(&client, &reloaded);
        assert_eq!(
            second.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "the reconnect resumes on the reloaded config"
        );
    }
}
