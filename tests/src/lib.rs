//! Shared harness for Baton's end-to-end tests.
//!
//! The tests exercise the real `baton-origin` and `baton-edge` binaries on
//! loopback through real protocols, so this crate holds what every test
//! file needs for that and nothing that would stand in for the server:
//!
//! - [`binaries`]: find (or build once) the binaries under test;
//! - [`node`]: start an origin or an edge ([`Origin`], [`Edge`], both a
//!   [`Node`]) on free loopback ports with its own temp dir, wait for it to
//!   be healthy, signal, freeze and thaw it, time its exit, keep its log;
//!   edges are pointed at origins with [`NodeBuilder::origin`];
//! - [`synth`]: a synthetic AVC/AAC stream whose every frame carries its
//!   index, and [`check`]: assertions that a player got exactly what was
//!   published (keyframe start, no gaps, no duplicates, same bytes);
//! - [`http`]: a tiny HTTP/1.1 client over raw TCP (status, headers, body);
//! - [`flv_player`]: an HTTP-FLV player over raw TCP (de-chunking, FLV tags);
//! - [`play`]: publishing and playing with deadlines, one [`play::FramePlayer`]
//!   trait over the RTMP client and the FLV player;
//! - [`raw_rtmp`]: a low-level RTMP connection for hostile and misbehaving
//!   clients (garbage, bad chunk sizes, a player that never reads);
//! - [`ffmpeg`]: a real H.264/AAC fixture made by ffmpeg, an ffmpeg publisher
//!   and ffprobe queries (the interop tests);
//! - [`feed`]: a real-time publisher feeding several processes at once
//!   (upgrade generations) and watchers recording what long-lived players
//!   received; [`load`]: a connection-churn loop that records every failed
//!   attempt (lifecycle and upgrade tests);
//! - [`proxy`]: a TCP proxy that forwards, blackholes or resets on demand
//!   (a network failing between an edge and an origin);
//! - [`dns`]: a live-editable authoritative nameserver on loopback (DNS
//!   origin discovery for edges);
//! - [`tools`]: external programs (ffmpeg, ffprobe, the upgrade command)
//!   with timeouts, so a hang fails a test instead of blocking CI.
//!
//! Every wait in here is bounded; failures carry the server's log tail.

pub mod binaries;
pub mod check;
pub mod dns;
pub mod feed;
pub mod ffmpeg;
pub mod findings;
pub mod flv_player;
pub mod http;
pub mod load;
pub mod node;
pub mod play;
pub mod proxy;
pub mod raw_rtmp;
pub mod synth;
pub mod tls;
pub mod tools;

pub use check::{assert_playback, frame_summary, PlaybackCheck};
pub use flv_player::FlvPlayer;
pub use nix::sys::signal::Signal;
/// The launcher's former name, kept so `baton_tests::origin::...` paths
/// still resolve.
pub use node as origin;
pub use node::{
    pid_alive, signal_pid, Edge, Node, NodeBuilder, Origin, OriginBuilder, Ports, Role,
};
pub use synth::{frame_index, Synth, SynthConfig};

use std::future::Future;
use std::time::Duration;

/// Awaits `fut` for at most `limit`, panicking with `what` if it takes
/// longer. Tests use this around every network wait.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
