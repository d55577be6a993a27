//! nexor-relay: a console relay between browsers (noVNC, xterm.js) and VM consoles.
//!
//! ```text
//! browser ──wss + ticket──▶ nexor-relay ──ws / tcp / demo──▶ console
//!
//! one connection:  Tls → Head → Ticket → Upstream → 101 → Relay → Closed
//! ```
//!
//! Imports go one way (tests/layout.rs checks it):
//!
//! ```text
//! main → server → {session, admin} → state → {relay, upstream, task, transport, tls}
//!                                         → registry (the admission ledger's lock, session
//!                                           controls, handshake slots)
//!                                         → pure cores: admission, http, ws, ticket,
//!                                           client_addr, preamble, demo (+ config's parse)
//! ```
//!
//! The pure cores work on byte slices and a `now` passed in: no socket,
//! clock, DNS or file (clippy.toml's disallowed-methods, denied below).
//! Sockets, TLS, timers and threads are thin glue around them.
#![forbid(unsafe_code)]

pub mod admin;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod admission;
pub mod audit;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod client_addr;
#[deny(clippy::disallowed_methods)] // pure but for config/resolve.rs (clippy.toml)
pub mod config;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod demo;
pub mod error;
#[deny(clippy::disallowed_methods)] // pure but for fleet::store (the store's threads)
pub mod fleet;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod http;
pub mod log;
pub mod metrics;
pub mod page;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod preamble;
/// Console recordings: pure encoders (denied the clock and files in
/// src/record/mod.rs) with the writer thread and replay as glue.
pub mod record;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod registry;
pub mod relay;
pub mod server;
pub mod session;
pub mod state;
pub mod task;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod ticket;
pub mod tls;
pub mod transport;
pub mod upstream;
#[deny(clippy::disallowed_methods)] // pure: no clock, DNS or files (clippy.toml)
pub mod ws;
