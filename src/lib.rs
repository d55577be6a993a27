//! nexor-relay: a console relay between browsers (noVNC, xterm.js) and VM consoles.
//!
//! ```text
//! browser ──wss + ticket──▶ nexor-relay ──ws / tcp / demo──▶ console
//!
//! one connection:  Tls → Head → Ticket → Upstream → 101 → Relay → Closed
//! ```
//!
//! The protocol logic is pure code over byte slices and a `now` passed in
//! (`http`, `ws`, `ticket`, `config`, `demo`); sockets, TLS, timers and threads
//! are thin glue (`server`, `session`, `upstream`, `relay`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
#[deny(clippy::disallowed_methods)] // pure but for config/resolve.rs (clippy.toml)
pub mod config;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod demo;
pub mod error;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod http;
pub mod log;
pub mod metrics;
pub mod page;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod preamble;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod proxy;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod registry;
pub mod relay;
pub mod server;
pub mod session;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod ticket;
pub mod tls;
pub mod transport;
pub mod upstream;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod ws;
