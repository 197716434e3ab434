//! RTMP as sans-IO layers: [`handshake`], [`chunk`] (the chunk stream),
//! [`message`] (typed messages), [`link`] (what both ends of a connection
//! do alike: decode, answer protocol control, acknowledge), and the two
//! ends built on it, [`session`] (server) and [`client_session`].

pub mod chunk;
pub mod client_session;
pub mod handshake;
pub(crate) mod link;
pub mod message;
pub mod session;
