//! Certificates for the TLS peers and the generator's TLS client.

use anyhow::Result;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Writes a self-signed ECDSA P-256 certificate for `localhost`/127.0.0.1
/// (rcgen), returning the cert and key paths; every TLS peer uses the same.
pub fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    Ok((cert, key))
}

/// Accepts any server certificate without checking its signatures: the
/// generator must not spend the CPU a browser would (it would skew churn
/// toward the generator's own limit), and the peers are ours.
#[derive(Debug)]
struct NoVerify(Vec<SignatureScheme>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// The generator's TLS client: TLS 1.3/1.2, ALPN http/1.1, no resumption
/// (every churn session is a full handshake: rustls 0.23's `ClientConfig`
/// resumes by default, with an in-memory store of 256 server names, so it
/// is switched off here), no certificate checks.
pub fn client_config() -> Result<Arc<ClientConfig>> {
    build(Resumption::disabled())
}

/// The same client with resumption on, as a browser has it: an in-memory
/// store (TLS 1.3 tickets, TLS 1.2 session ids or tickets). One of these
/// per `churn-resume` loop: each loop is one browser reconnecting.
pub fn client_config_resuming() -> Result<Arc<ClientConfig>> {
    build(Resumption::in_memory_sessions(16))
}

fn build(resumption: Resumption) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(schemes)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = resumption;
    Ok(Arc::new(cfg))
}

/// The certificate and server config of the soak's TLS upstream (one per
/// run; the relay pins its SHA-256 fingerprint).
struct Upstream {
    fingerprint: String,
    config: Arc<rustls::ServerConfig>,
}

fn upstream() -> Result<&'static Upstream> {
    static U: OnceLock<Upstream> = OnceLock::new();
    if let Some(u) = U.get() {
        return Ok(u);
    }
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let der = ck.cert.der().clone();
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![der], key)?;
    Ok(U.get_or_init(|| Upstream {
        fingerprint,
        config: Arc::new(config),
    }))
}

/// SHA-256 of the TLS upstream's certificate (`AA:BB:...`).
pub fn upstream_fingerprint() -> Result<String> {
    Ok(upstream()?.fingerprint.clone())
}

/// The TLS upstream's acceptor.
pub fn upstream_acceptor() -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(upstream().expect("upstream cert").config.clone())
}
