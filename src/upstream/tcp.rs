//! `kind = "tcp"`: a raw TCP console (a QEMU VNC port, a serial console
//! server). The relay bridges WebSocket ↔ TCP like websockify.

use std::net::SocketAddr;

use monoio::net::TcpStream;

use super::Opened;
use crate::error::UpstreamError;
use crate::relay::Mode;
use crate::transport::Stream;

pub async fn open(addr: SocketAddr) -> Result<Opened, UpstreamError> {
    let tcp = TcpStream::connect_addr(addr)
        .await
        .map_err(|_| UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    Ok(Opened {
        stream: Stream::Tcp(tcp),
        early: Vec::new(),
        protocol: None,
        mode: Mode::Bytes,
        pending: None,
        to_browser: Vec::new(),
    })
}
