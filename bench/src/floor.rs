//! `baton-bench floor`: the cost floor of an HTTP-FLV fan-out, to run
//! beside the servers in `fanout-peers.sh`.
//!
//! A bare tokio fan-out with nothing a media server needs: it makes the
//! synthetic stamped stream itself (no ingest, no protocol state), frames
//! every frame as an FLV tag once, gathers the tags of each write budget
//! (`--budget`, 80 ms like Baton's `write_coalesce`; 0: every frame on
//! its own) into one shared batch, and each player's task writes each
//! batch with one vectored write the moment it comes (no GOP cache, no
//! limits, no API, one task per player). A server's CPU per GB above
//! this line, at the same budget, is what its features and design cost.
//!
//! A player that falls a whole broadcast buffer behind is disconnected
//! (and counted in the log): the floor keeps no per-player queue.

use std::cell::RefCell;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
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

/// Batches a player may lag behind before it is cut: over 6 s of the
/// synthetic stream at any budget.
const BROADCAST_BATCHES: usize = 512;
/// The longest request head read, and how long it may take.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tags per vectored write.
const MAX_IOVECS: usize = 64;

const RESPONSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nConnection: close\r\nCache-Control: no-cache\r\n\r\n";

#[derive(Debug, Clone)]
pub struct FloorOptions {
    pub listen: SocketAddr,
    /// Bits per second of the synthetic stream, audio included.
    pub bitrate: u64,
    /// A batch is sent once its oldest tag is this old; zero sends each
    /// tag on its own.
    pub budget: Duration,
}

/// The tags of one budget, as every player writes them.
type Batch = Arc<Vec<Tag>>;

/// One frame as an FLV tag.
struct Tag {
    bytes: Bytes,
    keyframe: bool,
}

/// Serves until killed. Must run inside a `LocalSet`.
pub async fn run(opts: FloorOptions) -> Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let (tags, _) = broadcast::channel::<Batch>(BROADCAST_BATCHES);
    let headers: Rc<RefCell<Vec<Bytes>>> = Rc::default();
    tokio::task::spawn_local(generate(
        opts.bitrate,
        opts.budget,
        tags.clone(),
        headers.clone(),
    ));
    eprintln!(
        "floor: http://{}/live/bench.flv ({} kbit/s, {:?} write budget, every path plays it)",
        opts.listen,
        opts.bitrate / 1000,
        opts.budget
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

/// The stream in real time, stamped like `publish --stamp`, sent in
/// batches once the oldest tag of a batch is `budget` old.
async fn generate(
    bitrate: u64,
    budget: Duration,
    batches: broadcast::Sender<Batch>,
    headers: Rc<RefCell<Vec<Bytes>>>,
) {
    let start = Instant::now();
    let mut seq = 0u64;
    let mut batch = Vec::new();
    let mut batch_due: Option<Instant> = None;
    // No receivers yet is fine: the stream runs regardless.
    let send = |batch: &mut Vec<Tag>| drop(batches.send(Arc::new(std::mem::take(batch))));
    for (at, frame) in SyntheticStream::new(StreamShape::for_bitrate(bitrate)) {
        let due = start + at;
        if let Some(flush_at) = batch_due.filter(|&flush_at| flush_at <= due) {
            sleep_until(flush_at).await;
            send(&mut batch);
            batch_due = None;
        }
        sleep_until(due).await;
        let stamped = wallstamp::stamp(&frame, seq, wallstamp::now_ns());
        seq += u64::from(stamped.is_some());
        let frame = stamped.as_ref().unwrap_or(&frame);
        let bytes = flv::encode_tag(frame);
        if frame.is_sequence_header() {
            headers.borrow_mut().push(bytes);
            continue;
        }
        batch.push(Tag {
            bytes,
            keyframe: frame.is_keyframe(),
        });
        if budget.is_zero() {
            send(&mut batch);
        } else {
            batch_due.get_or_insert(Instant::now() + budget);
        }
    }
}

/// One player: read its request head, answer with the FLV header and the
/// sequence headers, then every tag from the next keyframe on.
async fn play(
    mut socket: TcpStream,
    mut batches: broadcast::Receiver<Batch>,
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
        let batch = match batches.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                anyhow::bail!("disconnected: {n} batches behind the broadcast buffer")
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let from = if started {
            0
        } else {
            match batch.iter().position(|tag| tag.keyframe) {
                Some(keyframe) => keyframe,
                None => continue,
            }
        };
        started = true;
        for tags in batch[from..].chunks(MAX_IOVECS) {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            for (slot, tag) in slices.iter_mut().zip(tags) {
                *slot = IoSlice::new(&tag.bytes);
            }
            write_all_vectored(&mut socket, &mut slices[..tags.len()]).await?;
        }
    }
}

/// Writes every slice, with as few writes as the socket allows.
async fn write_all_vectored(socket: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> Result<()> {
    while !slices.is_empty() {
        let n = socket.write_vectored(slices).await?;
        anyhow::ensure!(n > 0, "the socket took no bytes");
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
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
