//! Opening the upstream leg, before the browser gets its 101: a failure here
//! is still a clean HTTP status (502, 504).
//!
//! * [`ws`]: a WebSocket console (`ws://`, `wss://`), frames pass through;
//! * [`tcp`]: a raw TCP console, bridged WebSocket ↔ TCP;
//! * [`demo`]: the built-in backends, in-process over a socketpair.
//!
//! Upstreams are dialled per session, never at start: the relay starts even
//! when a console host is down.

pub mod demo;
pub mod proxmox;
pub mod tcp;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;

use crate::transport::TlsConnector;

use crate::config::{Config, Upstream};
use crate::error::UpstreamError;
use crate::http::HeadLimits;
use crate::registry::VmGates;
use crate::relay::Mode;
use crate::ticket::Claims;
use crate::transport::Stream;

/// An opened upstream leg.
pub struct Opened {
    pub stream: Stream,
    /// Bytes read past the upstream's 101 (its first frames).
    pub early: Vec<u8>,
    /// The subprotocol the upstream selected (Frames mode only).
    pub protocol: Option<String>,
    pub mode: Mode,
    /// A login step that needs the browser, after its 101 (Proxmox VNC).
    pub pending: Option<proxmox::BrowserPhase>,
    /// Bytes for the browser right after the 101 (termproxy's first output).
    pub to_browser: Vec<u8>,
}

/// TLS client configs for the `wss://` upstreams, built once at start
/// (reading `ca_file`s) and shared by all workers.
#[derive(Clone, Default)]
pub struct Connectors(Arc<HashMap<String, TlsConnector>>);

impl Connectors {
    pub fn build(cfg: &Config) -> Result<Connectors, String> {
        let mut map = HashMap::new();
        for (name, up) in &cfg.upstreams {
            let trust = match up {
                Upstream::Ws { url, trust, .. } if url.tls => trust,
                Upstream::Proxmox(px) => &px.trust,
                _ => continue,
            };
            let c =
                crate::tls::client_config(trust).map_err(|e| format!("upstreams.{name}: {e}"))?;
            map.insert(name.clone(), TlsConnector::from(c));
        }
        Ok(Connectors(Arc::new(map)))
    }

    pub fn get(&self, name: &str) -> Option<&TlsConnector> {
        self.0.get(name)
    }
}

/// What every upstream dial needs from its worker.
pub struct Dial<'a> {
    pub connectors: &'a Connectors,
    pub gates: &'a Arc<VmGates>,
    pub limits: HeadLimits,
    pub max_frame: u64,
}

/// Opens upstream `name` for a session. `protocol` is the real subprotocol
/// the browser offered and the relay selected (`binary` or none).
pub async fn open(
    name: &str,
    up: &Upstream,
    dial: &Dial<'_>,
    protocol: Option<&str>,
    claims: &Claims,
) -> Result<Opened, UpstreamError> {
    let (connectors, limits) = (dial.connectors, dial.limits);
    match up {
        Upstream::Proxmox(px) => {
            let connector = connectors.get(name).ok_or(UpstreamError::Tls)?;
            match monoio::time::timeout(
                px.connect_timeout,
                proxmox::open(px, connector, claims, dial.max_frame, dial.gates),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(UpstreamError::Timeout),
            }
        }
        Upstream::Ws {
            url,
            connect_timeout,
            ..
        } => {
            let connector = connectors.get(name);
            match monoio::time::timeout(
                *connect_timeout,
                ws::open(url, connector, protocol, limits),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(UpstreamError::Timeout),
            }
        }
        Upstream::Tcp {
            addr,
            connect_timeout,
        } => match monoio::time::timeout(*connect_timeout, tcp::open(*addr)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        },
        Upstream::Demo => demo::open(claims.console),
    }
}
