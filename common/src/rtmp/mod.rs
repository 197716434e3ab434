//! RTMP: sans-IO codecs (handshake, chunk stream, messages, session state
//! machines) plus thin tokio glue for clients.
//!
//! Everything under this module except `client` is pure: bytes in, events
//! and bytes out, no sockets and no clocks, so each layer is unit-tested and
//! fuzzed on its own.

pub mod chunk;
pub mod client;
pub mod client_session;
pub mod handshake;
pub mod message;
pub mod session;
