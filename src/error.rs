//! Why a connection got no 101, or no answer at all: enums with the side at
//! fault, mapped in one place to the HTTP status of docs/design.md §2, a
//! stable label for logs, metrics and audit lines, and a one-line body that
//! leaks nothing (no upstream address, no credential, no ticket).

use std::fmt;

use crate::client_addr::ProxyError;
use crate::http::HeadError;
use crate::preamble::PreambleError;
use crate::ticket::TicketError;
use crate::ws::frame::FrameError;
use crate::ws::handshake::HandshakeError;

/// Why the upstream leg could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP connect failed (refused, unreachable).
    Connect,
    /// No connection, or no answer to the upgrade, within `connect_timeout`.
    Timeout,
    /// TLS handshake failed (certificate not trusted, pin mismatch, ...).
    Tls,
    /// The upstream answered the upgrade with something other than a valid 101.
    Handshake(UpgradeAnswer),
    /// The upstream closed before its handshake finished.
    Closed,
    /// Proxmox refused (API status, ticket, login), or the ticket's VM
    /// claims cannot name a Proxmox guest.
    Proxmox(ProxmoxError),
}

/// What was wrong with a `ws` upstream's answer to the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeAnswer {
    /// Not an HTTP response head.
    BadResponse,
    /// A status other than 101.
    Refused,
    NotWebSocket,
    BadAccept,
    /// A subprotocol the relay did not offer.
    BadProtocol,
    /// An extension the relay did not offer.
    Extension,
}

impl UpgradeAnswer {
    pub fn label(self) -> &'static str {
        match self {
            UpgradeAnswer::BadResponse => "upstream_bad_response",
            UpgradeAnswer::Refused => "upstream_refused_upgrade",
            UpgradeAnswer::NotWebSocket => "upstream_not_websocket",
            UpgradeAnswer::BadAccept => "upstream_bad_accept",
            UpgradeAnswer::BadProtocol => "upstream_bad_protocol",
            UpgradeAnswer::Extension => "upstream_extension",
        }
    }
}

/// A Proxmox console that could not be opened (docs/proxmox.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxmoxError {
    /// The ticket has no `node` or `vmid`.
    TicketWithoutVm,
    /// `node` is not a node name or `vmid` not a VM id.
    TicketBadVm,
    /// vncproxy/termproxy answered 401, 403, 5xx or another non-200.
    Api401,
    Api403,
    Api5xx,
    ApiStatus,
    /// The API answer is not JSON, has no `data`, no usable port or ticket.
    BadJson,
    NoData,
    BadPort,
    NoTicket,
    ResponseTooLarge,
    BadResponse,
    ChunkedResponse,
    /// pveproxy closed the websocket without an answer (nothing listens).
    WebsocketClosed,
    Websocket401,
    WebsocketRefused,
    /// The VNC server closed during the login.
    VncUpstreamClosed,
    /// termproxy closed without a refusal the preamble could name.
    TermAuthFailed,
    /// The VNC or termproxy login failed.
    Login(PreambleError),
}

impl ProxmoxError {
    pub fn label(&self) -> &'static str {
        match self {
            ProxmoxError::TicketWithoutVm => "ticket_without_vm",
            ProxmoxError::TicketBadVm => "ticket_bad_vm",
            ProxmoxError::Api401 => "proxmox_api_401",
            ProxmoxError::Api403 => "proxmox_api_403",
            ProxmoxError::Api5xx => "proxmox_api_5xx",
            ProxmoxError::ApiStatus => "proxmox_api_status",
            ProxmoxError::BadJson => "proxmox_bad_json",
            ProxmoxError::NoData => "proxmox_no_data",
            ProxmoxError::BadPort => "proxmox_bad_port",
            ProxmoxError::NoTicket => "proxmox_no_ticket",
            ProxmoxError::ResponseTooLarge => "proxmox_response_too_large",
            ProxmoxError::BadResponse => "proxmox_bad_response",
            ProxmoxError::ChunkedResponse => "proxmox_chunked_response",
            ProxmoxError::WebsocketClosed => "proxmox_websocket_closed",
            ProxmoxError::Websocket401 => "proxmox_websocket_401",
            ProxmoxError::WebsocketRefused => "proxmox_websocket_refused",
            ProxmoxError::VncUpstreamClosed => "vnc_upstream_closed",
            ProxmoxError::TermAuthFailed => "term_auth_failed",
            ProxmoxError::Login(e) => e.label(),
        }
    }
}

impl UpstreamError {
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "upstream_connect",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Tls => "upstream_tls",
            UpstreamError::Handshake(a) => a.label(),
            UpstreamError::Closed => "upstream_closed_early",
            UpstreamError::Proxmox(p) => p.label(),
        }
    }
}

/// Why the relay's half of a Proxmox VNC login with the browser (after the
/// 101, before the pump) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserPhaseError {
    /// A write to the browser failed.
    BrowserGone,
    /// The browser sent a close frame.
    BrowserClosed,
    /// The browser's connection ended.
    BrowserEof,
    /// The browser broke RFC 6455.
    BrowserFrame(FrameError),
    /// The browser broke RFB.
    Rfb(PreambleError),
    /// A write upstream failed.
    UpstreamGone,
    /// Not done within `handshake_timeout`.
    Timeout,
    /// A view-only browser sent what a viewer may not (closed with 1008).
    ViewOnly,
}

impl BrowserPhaseError {
    pub fn label(&self) -> &'static str {
        match self {
            BrowserPhaseError::BrowserGone => "browser_gone",
            BrowserPhaseError::BrowserClosed => "browser_closed_in_preamble",
            BrowserPhaseError::BrowserEof => "closed",
            BrowserPhaseError::BrowserFrame(e) => e.label(),
            BrowserPhaseError::Rfb(e) => e.label(),
            BrowserPhaseError::UpstreamGone => "upstream_gone",
            BrowserPhaseError::ViewOnly => "view_only_violation",
            BrowserPhaseError::Timeout => "preamble_timeout",
        }
    }
}

/// A connection dropped without an HTTP answer (audit status 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// `max_handshakes` in flight.
    HandshakeCapacity,
    /// `max_handshakes_per_ip` in flight from this client.
    HandshakeCapacityIp,
    /// No complete head within `handshake_timeout` (slowloris).
    HandshakeTimeout,
    /// A PROXY header expected from a peer not in `trusted_proxies`.
    ProxyUntrusted,
    Proxy(ProxyError),
    ClosedInProxyHeader,
    TlsHandshakeFailed,
    ClosedBeforeHead,
    ReadErrorBeforeHead,
    /// The 101 could not be written.
    BrowserGoneBefore101,
    /// The upstream's first bytes could not be written after the 101.
    BrowserGoneAfter101,
    /// The Proxmox VNC login with the browser failed.
    BrowserPhase(BrowserPhaseError),
}

impl Dropped {
    pub fn label(&self) -> &'static str {
        match self {
            Dropped::HandshakeCapacity => "handshake_capacity",
            Dropped::HandshakeCapacityIp => "handshake_capacity_ip",
            Dropped::HandshakeTimeout => "handshake_timeout",
            Dropped::ProxyUntrusted => "proxy_untrusted",
            Dropped::Proxy(e) => e.label(),
            Dropped::ClosedInProxyHeader => "closed_in_proxy_header",
            Dropped::TlsHandshakeFailed => "tls_handshake_failed",
            Dropped::ClosedBeforeHead => "closed_before_head",
            Dropped::ReadErrorBeforeHead => "read_error_before_head",
            Dropped::BrowserGoneBefore101 => "browser_gone_before_101",
            Dropped::BrowserGoneAfter101 => "browser_gone_after_101",
            Dropped::BrowserPhase(e) => e.label(),
        }
    }
}

/// A refused connection: every status of docs/design.md §2 the relay
/// answers before a 101 (src/admission decides all but the upstream's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Head(HeadError),
    /// Path other than the console path.
    NotFound,
    Handshake(HandshakeError),
    /// No ticket in the query or the subprotocols.
    NoTicket,
    /// A bad ticket: signature, claims, audience, or (new tickets) time.
    Ticket(TicketError),
    /// A valid ticket naming an upstream this relay does not have.
    UnknownUpstream,
    /// A ticket for a Proxmox upstream without `node` or `vmid` (401).
    NoVm,
    /// A ticket for a Proxmox upstream whose `node` is not a node name or
    /// whose `vmid` is not a VM id (401).
    BadVm,
    /// `Origin` not allowed (or missing with `require_origin`).
    Origin,
    /// The ticket's `ip` is not the client's.
    WrongIp,
    /// Too many handshakes from this client IP this second.
    RateLimited,
    /// The ticket was used and no reconnect grant applies.
    Replay,
    /// The ticket (its `jti`, `sub` or VM) was revoked: refused until its
    /// `exp` + `reconnect_grace`.
    Revoked,
    VmLimit,
    UserLimit,
    GlobalLimit,
    /// The replay cache is full.
    CacheFull,
    /// Fleet mode: the shared store is unreachable and `on_store_error =
    /// "refuse"` (503).
    StoreUnavailable,
    /// The relay is shutting down.
    Draining,
    /// `[recording] required` and the session's recording could not be
    /// opened (docs/recording.md).
    RecordingUnavailable,
    Upstream(UpstreamError),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Head(_) => 400,
            Refusal::NotFound => 404,
            Refusal::Handshake(h) => h.status(),
            Refusal::NoTicket | Refusal::NoVm | Refusal::BadVm => 401,
            Refusal::Ticket(t) => t.status(),
            Refusal::UnknownUpstream | Refusal::Origin | Refusal::WrongIp => 403,
            Refusal::Replay | Refusal::Revoked => 403,
            Refusal::RateLimited => 429,
            Refusal::VmLimit | Refusal::UserLimit | Refusal::GlobalLimit => 429,
            Refusal::Draining
            | Refusal::CacheFull
            | Refusal::StoreUnavailable
            | Refusal::RecordingUnavailable => 503,
            Refusal::Upstream(UpstreamError::Timeout) => 504,
            Refusal::Upstream(_) => 502,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Head(h) => h.label(),
            Refusal::NotFound => "not_found",
            Refusal::Handshake(h) => h.label(),
            Refusal::NoTicket => "no_ticket",
            Refusal::Ticket(t) => t.label(),
            Refusal::UnknownUpstream => "unknown_upstream",
            Refusal::NoVm => "ticket_without_vm",
            Refusal::BadVm => "ticket_bad_vm",
            Refusal::Origin => "origin_not_allowed",
            Refusal::WrongIp => "ticket_ip_mismatch",
            Refusal::RateLimited => "handshake_rate",
            Refusal::Replay => "ticket_used",
            Refusal::Revoked => "ticket_revoked",
            Refusal::VmLimit => "vm_session_limit",
            Refusal::UserLimit => "user_session_limit",
            Refusal::GlobalLimit => "global_session_limit",
            Refusal::CacheFull => "ticket_cache_full",
            Refusal::StoreUnavailable => "fleet_store_unavailable",
            Refusal::Draining => "draining",
            Refusal::RecordingUnavailable => "recording_unavailable",
            Refusal::Upstream(u) => u.label(),
        }
    }

    /// The response body: what a person debugging a portal needs, nothing
    /// an attacker could use.
    pub fn body(&self) -> String {
        match self {
            Refusal::Head(_) => "malformed request".into(),
            Refusal::NotFound => "not found".into(),
            Refusal::Handshake(HandshakeError::NoUpgrade) => "websocket upgrade required".into(),
            Refusal::Handshake(HandshakeError::BadVersion) => {
                "websocket version 13 required".into()
            }
            Refusal::Handshake(h) => format!("bad websocket handshake: {}", h.label()),
            Refusal::NoTicket => "ticket required".into(),
            Refusal::Ticket(t) => format!("ticket refused: {t}"),
            Refusal::UnknownUpstream => "ticket refused: unknown upstream".into(),
            Refusal::NoVm => "ticket refused: no node or vmid".into(),
            Refusal::BadVm => "ticket refused: bad node or vmid".into(),
            Refusal::Origin => "origin not allowed".into(),
            Refusal::WrongIp => "ticket refused: bound to another client".into(),
            Refusal::RateLimited => "too many connection attempts, retry shortly".into(),
            Refusal::Draining => "relay shutting down, reconnect".into(),
            Refusal::RecordingUnavailable => "console recording unavailable, retry later".into(),
            Refusal::Replay => "ticket refused: already used".into(),
            Refusal::Revoked => "ticket refused: revoked".into(),
            Refusal::CacheFull => "relay busy, retry shortly".into(),
            Refusal::StoreUnavailable => "relay cannot check tickets now, retry shortly".into(),
            Refusal::VmLimit | Refusal::UserLimit | Refusal::GlobalLimit => {
                "too many console sessions".into()
            }
            Refusal::Upstream(UpstreamError::Timeout) => "console did not answer in time".into(),
            Refusal::Upstream(_) => "console unavailable".into(),
        }
    }

    /// Extra response headers the status calls for.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Handshake(HandshakeError::BadVersion) => &[("Sec-WebSocket-Version", "13")],
            Refusal::Handshake(HandshakeError::NoUpgrade) => &[("Upgrade", "websocket")],
            Refusal::RateLimited | Refusal::CacheFull | Refusal::StoreUnavailable => {
                &[("Retry-After", "1")]
            }
            _ => &[],
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.label())
    }
}
