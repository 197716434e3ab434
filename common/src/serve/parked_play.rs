//! A player parked with its source's flusher (see `hub::direct`): while
//! it keeps up, the flusher takes its frames and writes them to its
//! socket without blocking, and the player's task sleeps. RTMP and
//! HTTP-FLV plays park alike; only the framing ([`Encoding`]) differs.
//!
//! Only plain-TCP plays park (TLS needs the task to drive the session's
//! record layer); the task parks after a write the socket took whole,
//! and gets everything back ([`ParkedPlay::take`]) at the first thing
//! only it can handle. What the flusher took but could not finish stays
//! in [`Parked`] in order: unsent bytes first, then items it did not
//! write, so the task continues the byte stream exactly where the
//! flusher stopped.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use nix::sys::socket::{sendmsg, MsgFlags};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clients::ClientEntry;
use crate::hub::{encode_rtmp, DirectPlayer, HubItem, SubscribeError};

use super::playback::Playback;
use super::rtmp::MAX_IOVECS;
use super::ServerContext;

/// What a parked play owns while the flusher writes it.
pub(super) struct Parked {
    pub playback: Playback,
    pub writer: OwnedWriteHalf,
    /// `writer`'s descriptor, kept here so that a round does not load it
    /// from the socket's own allocation (a cold cache line per player,
    /// 3 % of the flusher's time at 4000 players).
    fd: RawFd,
    /// Items taken from the hub that the task must handle (in order,
    /// after `unsent`).
    pub items: Vec<HubItem>,
    /// Bytes of frames taken that the socket did not accept yet.
    pub unsent: Vec<Bytes>,
    /// The hub's skip policy ended the play, or the socket failed.
    pub error: Option<ParkedError>,
}

pub(super) enum ParkedError {
    Subscribe(SubscribeError),
    Write(io::Error),
}

/// How a parked play's frames become bytes on its socket.
#[derive(Clone, Copy)]
pub(super) enum Encoding {
    Rtmp {
        stream_id: u32,
        /// The play's message stream is the one the hub pre-encodes for.
        shared_bytes: bool,
    },
    /// FLV tags as the body of an HTTP response: one chunk per batch
    /// when `chunked`, else the raw tags (a close-delimited body).
    Flv { chunked: bool },
}

/// See [`ParkedPlay::unreported_bytes`]: about two seconds of a 1 Mbit/s
/// stream, so the API's per-client bytes lag by at most that much.
const REPORT_BYTES_EVERY: u64 = 256 * 1024;

pub(super) struct ParkedPlay {
    state: Mutex<Option<Parked>>,
    /// Whether the flusher still writes this play.
    active: AtomicBool,
    /// Bytes written by rounds and not yet added to the client's
    /// counter: adding them at every round touched the client entry, a
    /// cold cache line per player per round; they are added once
    /// [`REPORT_BYTES_EVERY`] accumulate, and when the play leaves the
    /// flusher. The source's and the process's totals stay exact.
    unreported_bytes: AtomicU64,
    pub handed_back: Notify,
    entry: Arc<ClientEntry>,
    encoding: Encoding,
    /// Where HTTP chunk headers are written (reused: its buffer comes
    /// back once the last batch's bytes are written and dropped).
    chunk_headers: Mutex<BytesMut>,
}

impl ParkedPlay {
    pub fn new(parked: Parked, entry: Arc<ClientEntry>, encoding: Encoding) -> Self {
        ParkedPlay {
            state: Mutex::new(Some(parked)),
            active: AtomicBool::new(true),
            unreported_bytes: AtomicU64::new(0),
            handed_back: Notify::new(),
            entry,
            encoding,
            chunk_headers: Mutex::new(BytesMut::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Parked>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Back to the task: everything, once (None if already taken).
    pub fn take(&self) -> Option<Parked> {
        self.active.store(false, Ordering::Release);
        let parked = self.lock().take();
        self.report_bytes();
        parked
    }

    fn release(&self) {
        self.active.store(false, Ordering::Release);
        self.report_bytes();
        self.handed_back.notify_one();
    }

    /// Adds what rounds wrote to the client's own counter.
    fn report_bytes(&self) {
        let bytes = self.unreported_bytes.swap(0, Ordering::Relaxed);
        if bytes > 0 {
            self.entry.add_own_bytes_out(bytes);
        }
    }

    /// Counts bytes a round wrote.
    fn count_written(&self, source: &crate::hub::Source, bytes: u64) {
        source.add_bytes_out(bytes);
        crate::clients::count_total_bytes_out(bytes);
        let unreported = self.unreported_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if unreported >= REPORT_BYTES_EVERY {
            self.report_bytes();
        }
    }

    /// One round's work; false when the task must take over.
    ///
    /// Stop signals are not looked at here (each look takes a lock, per
    /// player per round): the task waits on them while parked and takes
    /// the play back at once, which stops the rounds ([`Self::take`]).
    fn write(&self, parked: &mut Parked) -> bool {
        if !parked.unsent.is_empty() || !parked.items.is_empty() || parked.error.is_some() {
            return false;
        }
        match parked.playback.take_round(&mut parked.items) {
            Err(error) => {
                parked.error = Some(ParkedError::Subscribe(error));
                return false;
            }
            Ok(false) => return false,
            Ok(true) => {}
        }
        if parked.items.is_empty() {
            return true;
        }
        self.encode(&mut parked.items, &mut parked.unsent);
        // `parked.writer`, borrowed here with `parked`, keeps `fd` open.
        match write_now(parked.fd, &mut parked.unsent) {
            Ok(written) => {
                self.count_written(parked.playback.source(), written);
                parked.unsent.is_empty()
            }
            Err(error) => {
                parked.error = Some(ParkedError::Write(error));
                false
            }
        }
    }
}

impl Drop for ParkedPlay {
    fn drop(&mut self) {
        self.report_bytes();
    }
}

impl ParkedPlay {
    /// Move the frames of `items` into `out` as this play's bytes.
    fn encode(&self, items: &mut Vec<HubItem>, out: &mut Vec<Bytes>) {
        match self.encoding {
            Encoding::Rtmp {
                stream_id,
                shared_bytes,
            } => {
                for item in items.drain(..) {
                    if let HubItem::Frame(frame) = item {
                        out.push(if shared_bytes {
                            frame.rtmp_chunks().clone()
                        } else {
                            encode_rtmp(&frame.frame, stream_id)
                        });
                    }
                }
            }
            Encoding::Flv { chunked } => {
                let mut headers = self.chunk_headers.lock().unwrap_or_else(|p| p.into_inner());
                encode_flv(None, items, out, chunked, &mut headers);
            }
        }
    }
}

/// Move the FLV tags of `items` into `out` (after `prefix`), as one HTTP
/// chunk when `chunked` (its header written into `chunk_headers`).
pub(super) fn encode_flv(
    prefix: Option<Bytes>,
    items: &mut Vec<HubItem>,
    out: &mut Vec<Bytes>,
    chunked: bool,
    chunk_headers: &mut BytesMut,
) {
    let header_at = out.len();
    let mut len = 0;
    for part in prefix
        .into_iter()
        .chain(items.drain(..).filter_map(|item| match item {
            HubItem::Frame(frame) => Some(frame.flv_tag().clone()),
            _ => None,
        }))
    {
        len += part.len();
        out.push(part);
    }
    if chunked && len > 0 {
        out.insert(header_at, chunk_header(chunk_headers, len));
        out.push(Bytes::from_static(b"\r\n"));
    }
}

/// `{len:x}\r\n`, written into `buffer`.
pub(super) fn chunk_header(buffer: &mut BytesMut, len: usize) -> Bytes {
    let mut digits = [0u8; 16];
    let mut rest = len;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[rest & 15];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    buffer.reserve(digits.len() + 2);
    buffer.put_slice(&digits[start..]);
    buffer.put_slice(b"\r\n");
    buffer.split().freeze()
}

impl DirectPlayer for ParkedPlay {
    fn write_round(&self) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        // The task is taking it back: nothing to do here.
        let Ok(mut guard) = self.state.try_lock() else {
            return;
        };
        let Some(parked) = guard.as_mut() else {
            return;
        };
        if !self.write(parked) {
            drop(guard);
            self.release();
        }
    }

    fn hand_back(&self) {
        self.release();
    }

    fn prefetch(&self) {
        crate::hub::prefetch_object(self);
    }
}

/// Why a parked play's task woke.
pub(super) enum Woke<T> {
    /// The flusher handed the play back.
    HandedBack,
    /// A stop signal or the reconnect request: the play loop handles it.
    Signal,
    /// The player sent something (or closed, or failed): what the
    /// protocol's input future returned.
    Input(T),
}

/// Park a play that keeps up with its source's flusher until something
/// only its task can handle: the flusher handing it back, a stop signal
/// (shutdown, drain, kick, and the reconnect request while
/// `watch_reconnect`), or `input` from the player completing. Returns
/// what the play owns again, and why it woke.
pub(super) async fn park<T>(
    parked: Parked,
    entry: Arc<ClientEntry>,
    encoding: Encoding,
    ctx: &ServerContext,
    watch_reconnect: Option<CancellationToken>,
    input: impl Future<Output = T>,
) -> anyhow::Result<(Parked, Woke<T>)> {
    let source = parked.playback.source().clone();
    let catch_up = parked.playback.missed_a_wakeup();
    let kick = entry.kick.clone();
    let play = Arc::new(ParkedPlay::new(parked, entry, encoding));
    let unpark = UnparkOnDrop {
        source: &source,
        id: source.park_direct(play.clone()),
    };
    if catch_up {
        play.write_round();
    }
    let woke = tokio::select! {
        _ = play.handed_back.notified() => Woke::HandedBack,
        _ = ctx.shutdown.close_all.cancelled() => Woke::Signal,
        _ = ctx.shutdown.close_players.cancelled() => Woke::Signal,
        _ = kick.kicked() => Woke::Signal,
        _ = cancelled_opt(watch_reconnect.as_ref()) => Woke::Signal,
        input = input => Woke::Input(input),
    };
    drop(unpark);
    let parked = play
        .take()
        .ok_or_else(|| anyhow::anyhow!("a parked play's state was taken twice"))?;
    Ok((parked, woke))
}

impl Parked {
    /// A play to park, with the task's buffers (taken from the caller;
    /// [`Parked::restore`] gives them back).
    pub fn new(
        playback: Playback,
        writer: OwnedWriteHalf,
        items: &mut Vec<HubItem>,
        unsent: &mut Vec<Bytes>,
    ) -> Self {
        Parked {
            playback,
            fd: writer.as_ref().as_raw_fd(),
            writer,
            items: std::mem::take(items),
            unsent: std::mem::take(unsent),
            error: None,
        }
    }

    /// Back to the task: the play, its socket and the flusher's error.
    /// `items` gets what the flusher handed back unhandled (for
    /// [`Playback::settle`]), `unsent` what it left unwritten (to write
    /// first).
    pub fn restore(
        self,
        items: &mut Vec<HubItem>,
        unsent: &mut Vec<Bytes>,
    ) -> (Playback, OwnedWriteHalf, anyhow::Result<()>) {
        *items = self.items;
        *unsent = self.unsent;
        let error = match self.error {
            Some(ParkedError::Subscribe(error)) => Err(anyhow::anyhow!("{error}")),
            Some(ParkedError::Write(error)) => {
                Err(anyhow::Error::new(error).context("write failed"))
            }
            None => Ok(()),
        };
        (self.playback, self.writer, error)
    }
}

/// Unparks a play however its task leaves the park (also when the task
/// is dropped): a registry entry would otherwise keep the play, its
/// socket and its source alive.
struct UnparkOnDrop<'a> {
    source: &'a Arc<crate::hub::Source>,
    id: u64,
}

impl Drop for UnparkOnDrop<'_> {
    fn drop(&mut self) {
        self.source.unpark_direct(self.id);
    }
}

async fn cancelled_opt(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Write `segments` as far as the socket takes them now, removing what
/// was written (a partly written segment keeps its tail). Bytes written.
fn write_now(fd: RawFd, segments: &mut Vec<Bytes>) -> io::Result<u64> {
    let mut written = 0u64;
    while !segments.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = segments.len().min(MAX_IOVECS);
        for (slot, part) in slices.iter_mut().zip(segments.iter()) {
            *slot = IoSlice::new(part);
        }
        // The socket's own sendmsg, not tokio's `try_write_vectored`:
        // that looks at (and on a full socket clears) the readiness tokio
        // keeps for the socket, one more cold cache line per player per
        // round. Not clearing it is safe: the task's next write finds the
        // socket full itself and only then waits for readiness. And
        // sendmsg, not writev: writev goes through the VFS write path
        // (`vfs_writev`, 3.4 % of the flusher's samples at 4000 players,
        // against SRS's 0.9 %), which a socket does not need.
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let n = match sendmsg::<()>(fd, &slices[..count], &[], flags, None) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(io::Error::from(errno)),
        };
        written += n as u64;
        consume(segments, n);
    }
    Ok(written)
}

/// Drop the first `n` bytes of `segments`.
fn consume(segments: &mut Vec<Bytes>, mut n: usize) {
    let mut whole = 0;
    for segment in segments.iter_mut() {
        if n >= segment.len() {
            n -= segment.len();
            whole += 1;
        } else {
            *segment = segment.slice(n..);
            break;
        }
    }
    segments.drain(..whole);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_headers_are_lowercase_hex_sizes() {
        let mut buffer = BytesMut::new();
        assert_eq!(&chunk_header(&mut buffer, 0)[..], b"0\r\n");
        assert_eq!(&chunk_header(&mut buffer, 0x1a2f)[..], b"1a2f\r\n");
        assert_eq!(
            &chunk_header(&mut buffer, usize::MAX)[..],
            b"ffffffffffffffff\r\n"
        );
    }

    #[test]
    fn consume_keeps_the_tail_of_a_partly_written_segment() {
        let mut segments = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defg"),
            Bytes::from_static(b"h"),
        ];
        consume(&mut segments, 5);
        assert_eq!(
            segments,
            vec![Bytes::from_static(b"fg"), Bytes::from_static(b"h")]
        );
        consume(&mut segments, 3);
        assert!(segments.is_empty());
    }

    #[tokio::test]
    async fn write_now_stops_at_a_full_socket_and_keeps_the_rest_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let (_read, writer) = client.into_split();
        // Far more than the socket buffers hold, in numbered segments.
        let total: usize = 64 * 1024 * 256;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut segments: Vec<Bytes> = Bytes::from(data.clone())
            .chunks(7000)
            .map(Bytes::copy_from_slice)
            .collect();
        let fd = writer.as_ref().as_raw_fd();
        let written = write_now(fd, &mut segments).expect("write") as usize;
        assert!(written > 0 && written < total, "wrote {written} of {total}");
        let left: usize = segments.iter().map(|s| s.len()).sum();
        assert_eq!(written + left, total);
        // What was kept is exactly the tail.
        let mut tail = Vec::new();
        for s in &segments {
            tail.extend_from_slice(s);
        }
        assert_eq!(&tail[..], &data[written..]);
        // And the peer reads the head in order.
        use tokio::io::AsyncReadExt;
        let mut head = vec![0u8; written];
        server.read_exact(&mut head).await.expect("read");
        assert_eq!(&head[..], &data[..written]);
    }
}
