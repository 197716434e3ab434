//! RTMP for Baton's servers and tools: the sans-IO layers of
//! [`baton_proto::rtmp`] re-exported, plus [`client`], the thin tokio glue
//! that drives a [`client_session::ClientSession`] over a TCP socket.

pub use baton_proto::rtmp::*;

pub mod client;
