//! RFC 6455 WebSocket, sans-io: frame headers and the frame tracker the pump
//! drives ([`frame`]), masking ([`mask`]), and both sides of the opening
//! handshake ([`handshake`]).
//!
//! Extensions are never negotiated on either leg, so RSV bits must be zero
//! everywhere and payloads pass unchanged.

pub mod frame;
pub mod handshake;
pub mod mask;
