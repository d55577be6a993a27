//! Why a connection got no 101: one enum with the side at fault, mapped in
//! one place to the HTTP status of docs/design.md §2, a stable label for logs and
//! metrics, and a one-line body that leaks nothing (no upstream address, no
//! credential, no ticket).

use std::fmt;

use crate::http::HeadError;
use crate::registry::Denial;
use crate::ticket::TicketError;
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
    Handshake(&'static str),
    /// The upstream closed before its handshake finished.
    Closed,
    /// Proxmox refused (API status, ticket, login): the label says which.
    Api(&'static str),
}

impl UpstreamError {
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "upstream_connect",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Tls => "upstream_tls",
            UpstreamError::Handshake(l) => l,
            UpstreamError::Closed => "upstream_closed_early",
            UpstreamError::Api(l) => l,
        }
    }
}

/// A refused connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Head(HeadError),
    /// Path other than the console path.
    NotFound,
    Handshake(HandshakeError),
    /// No ticket in the query or the subprotocols.
    NoTicket,
    Ticket(TicketError),
    /// A valid ticket naming an upstream this relay does not have.
    UnknownUpstream,
    /// `Origin` not allowed (or missing with `require_origin`).
    Origin,
    /// The ticket's `ip` is not the client's.
    WrongIp,
    /// Too many handshakes from this client IP this second.
    RateLimited,
    /// Single use, reconnect grant, session limits.
    Policy(Denial),
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
            Refusal::NoTicket => 401,
            Refusal::Ticket(t) => t.status(),
            Refusal::UnknownUpstream | Refusal::Origin | Refusal::WrongIp => 403,
            Refusal::RateLimited => 429,
            Refusal::Draining | Refusal::RecordingUnavailable => 503,
            Refusal::Policy(d) => d.status(),
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
            Refusal::Origin => "origin_not_allowed",
            Refusal::WrongIp => "ticket_ip_mismatch",
            Refusal::RateLimited => "handshake_rate",
            Refusal::Draining => "draining",
            Refusal::RecordingUnavailable => "recording_unavailable",
            Refusal::Policy(d) => d.label(),
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
            Refusal::Origin => "origin not allowed".into(),
            Refusal::WrongIp => "ticket refused: bound to another client".into(),
            Refusal::RateLimited => "too many connection attempts, retry shortly".into(),
            Refusal::Draining => "relay shutting down, reconnect".into(),
            Refusal::RecordingUnavailable => "console recording unavailable, retry later".into(),
            Refusal::Policy(Denial::Replay) => "ticket refused: already used".into(),
            Refusal::Policy(Denial::Revoked) => "ticket refused: revoked".into(),
            Refusal::Policy(Denial::Time(t)) => format!("ticket refused: {t}"),
            Refusal::Policy(Denial::CacheFull) => "relay busy, retry shortly".into(),
            Refusal::Policy(_) => "too many console sessions".into(),
            Refusal::Upstream(UpstreamError::Timeout) => "console did not answer in time".into(),
            Refusal::Upstream(_) => "console unavailable".into(),
        }
    }

    /// Extra response headers the status calls for.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Handshake(HandshakeError::BadVersion) => &[("Sec-WebSocket-Version", "13")],
            Refusal::Handshake(HandshakeError::NoUpgrade) => &[("Upgrade", "websocket")],
            Refusal::RateLimited | Refusal::Policy(Denial::CacheFull) => &[("Retry-After", "1")],
            _ => &[],
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.label())
    }
}
