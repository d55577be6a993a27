//! `kind = "ws"`: a WebSocket console endpoint (`ws://` or `wss://`), e.g.
//! QEMU's `-vnc websocket=`. The relay is an RFC 6455 client here, offers
//! exactly the subprotocol it selected for the browser and no extension,
//! and checks the 101 (accept key, protocol echo, no extension).

use crate::transport::TlsConnector;
use monoio::net::TcpStream;

use super::Opened;
use crate::config::WsUrl;
use crate::error::{UpgradeAnswer, UpstreamError};
use crate::http::{parse_response, HeadLimits, ResponseHead};
use crate::relay::Mode;
use crate::transport::Stream;
use crate::ws::handshake::{check_response, client_key, client_request, ResponseError};

pub async fn open(
    url: &WsUrl,
    connector: Option<&TlsConnector>,
    protocol: Option<&str>,
    limits: HeadLimits,
) -> Result<Opened, UpstreamError> {
    let tcp = TcpStream::connect_addr(url.addr)
        .await
        .map_err(|_| UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match (url.tls, connector) {
        (false, _) => Stream::Tcp(tcp),
        (true, Some(c)) => {
            let name = crate::tls::server_name(&url.host).map_err(|_| UpstreamError::Tls)?;
            let tls = c.connect(name, tcp).await.map_err(|_| UpstreamError::Tls)?;
            Stream::Tls(Box::new(tls))
        }
        (true, None) => return Err(UpstreamError::Tls),
    };
    let key = client_key();
    let req = client_request(&url.host_header(), &url.path, &key, protocol, &[]);
    let (res, _) = stream.write_all(req).await;
    res.map_err(|_| UpstreamError::Closed)?;

    let (head, early) = read_upgrade_answer(&mut stream, limits).await?;
    let selected = check_response(&head, &key, protocol).map_err(|e| {
        UpstreamError::Handshake(match e {
            ResponseError::Status(_) => UpgradeAnswer::Refused,
            ResponseError::NotWebSocket => UpgradeAnswer::NotWebSocket,
            ResponseError::BadAccept => UpgradeAnswer::BadAccept,
            ResponseError::BadProtocol => UpgradeAnswer::BadProtocol,
            ResponseError::Extension => UpgradeAnswer::Extension,
        })
    })?;
    Ok(Opened {
        stream,
        early,
        protocol: selected,
        mode: Mode::Frames,
        pending: None,
        to_browser: Vec::new(),
    })
}

/// Reads the answer to an upgrade request: its head, and the bytes after
/// it (the upstream's first frames, kept for the pump).
pub async fn read_upgrade_answer(
    stream: &mut Stream,
    limits: HeadLimits,
) -> Result<(ResponseHead, Vec<u8>), UpstreamError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return Err(UpstreamError::Closed);
        }
        match parse_response(&buf, limits) {
            Ok(None) => continue,
            Err(_) => return Err(UpstreamError::Handshake(UpgradeAnswer::BadResponse)),
            Ok(Some((head, n))) => return Ok((head, buf.split_off(n))),
        }
    }
}
