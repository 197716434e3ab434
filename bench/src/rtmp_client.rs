//! The RTMP client the benches use: Baton's own, from `baton-common`.
//!
//! Re-exported in one place so that every bench talks RTMP through the same
//! path and a different client could be swapped in for comparison.

pub use baton_common::rtmp::client::{RtmpPlayer, RtmpPublisher};
