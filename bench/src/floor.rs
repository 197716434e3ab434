//! `baton-bench floor`: the cost floor of an HTTP-FLV fan-out, to run
//! beside the servers in `fanout-peers.sh`.
//!
//! A bare tokio fan-out with nothing a media server needs: it makes the
//! synthetic stamped stream itself (no ingest, no protocol state), frames
//! every frame as an FLV tag once, and each player's task writes each tag
//! the moment it arrives (`write_all`, no coalescing, no GOP cache, no
//! limits, no API). A server's CPU per GB above this line is what its
//! features and design cost; below it, only fewer and larger writes can
//! take it.
//!
//! A player that falls a whole broadcast buffer behind is disconnected
//! (and counted in the log): the floor keeps no per-player queue.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use baton_common::flv;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::{sleep_until, timeout, Instant};

use crate::synth::{StreamShape, SyntheticStream};
use crate::wallstamp;

/// Tags a player may lag behind before it is cut: about 6 s of the
/// synthetic stream (73 frames a second).
const BROADCAST_FRAMES: usize = 512;
/// The longest request head read, and how long it may take.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const RESPONSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nConnection: close\r\nCache-Control: no-cache\r\n\r\n";

#[derive(Debug, Clone)]
pub struct FloorOptions {
    pub listen: SocketAddr,
    /// Bits per second of the synthetic stream, audio included.
    pub bitrate: u64,
}

/// One frame as every player writes it.
#[derive(Clone)]
struct Tag {
    bytes: Bytes,
    keyframe: bool,
}

/// Serves until killed. Must run inside a `LocalSet`.
pub async fn run(opts: FloorOptions) -> Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let (tags, _) = broadcast::channel::<Tag>(BROADCAST_FRAMES);
    let headers: Rc<RefCell<Vec<Bytes>>> = Rc::default();
    tokio::task::spawn_local(generate(opts.bitrate, tags.clone(), headers.clone()));
    eprintln!(
        "floor: http://{}/live/bench.flv ({} kbit/s, every path plays it)",
        opts.listen,
        opts.bitrate / 1000
    );
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (tags, headers) = (tags.subscribe(), headers.borrow().clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = play(socket, tags, headers).await {
                eprintln!("floor: player {peer}: {e:#}");
            }
        });
    }
}

/// The stream in real time, stamped like `publish --stamp`.
async fn generate(bitrate: u64, tags: broadcast::Sender<Tag>, headers: Rc<RefCell<Vec<Bytes>>>) {
    let start = Instant::now();
    let mut seq = 0u64;
    for (at, frame) in SyntheticStream::new(StreamShape::for_bitrate(bitrate)) {
        sleep_until(start + at).await;
        let stamped = wallstamp::stamp(&frame, seq, wallstamp::now_ns());
        seq += u64::from(stamped.is_some());
        let frame = stamped.as_ref().unwrap_or(&frame);
        let bytes = flv::encode_tag(frame);
        if frame.is_sequence_header() {
            headers.borrow_mut().push(bytes);
            continue;
        }
        // No receivers yet is fine: the stream runs regardless.
        let _ = tags.send(Tag {
            bytes,
            keyframe: frame.is_keyframe(),
        });
    }
}

/// One player: read its request head, answer with the FLV header and the
/// sequence headers, then every tag from the next keyframe on.
async fn play(
    mut socket: TcpStream,
    mut tags: broadcast::Receiver<Tag>,
    headers: Vec<Bytes>,
) -> Result<()> {
    timeout(REQUEST_TIMEOUT, read_request_head(&mut socket))
        .await
        .context("request head timed out")??;
    socket.set_nodelay(true).context("TCP_NODELAY")?;
    socket.write_all(RESPONSE_HEAD).await?;
    socket.write_all(&flv::file_header(true, true)).await?;
    for header in &headers {
        socket.write_all(header).await?;
    }
    let mut started = false;
    loop {
        let tag = match tags.recv().await {
            Ok(tag) => tag,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                anyhow::bail!("disconnected: {n} frames behind the broadcast buffer")
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        started |= tag.keyframe;
        if started {
            socket.write_all(&tag.bytes).await?;
        }
    }
}

async fn read_request_head(socket: &mut TcpStream) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(head.len() < MAX_REQUEST_HEAD, "request head over 8 KiB");
        let n = socket.read(&mut buf).await.context("reading the request")?;
        anyhow::ensure!(n > 0, "closed before the end of the request head");
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}
