//! Baton's wire protocols as sans-IO state machines.
//!
//! Bytes go in, events and bytes come out; nothing here owns a socket, a
//! clock or a random source (callers pass seeds in). The crate graph keeps
//! it so: this crate does not depend on tokio, and the fuzz targets in
//! `common/fuzz` build against it alone.
//!
//! - [`media`]: the frame model every protocol shares;
//! - [`amf0`]: the AMF0 codec RTMP commands and FLV metadata use;
//! - [`flv`]: FLV tags (muxing for HTTP-FLV, a reader for tests and tools);
//! - [`rtmp`]: handshake, chunk stream, messages, and the server and client
//!   sessions built on one shared connection core.

pub mod amf0;
pub mod flv;
pub mod media;
pub mod rtmp;
