//! HTTP-FLV plays on plain TCP, streamed without hyper so that they can
//! park with their source's flusher (see [`super::parked_play`]).
//!
//! hyper owns the socket of every response it streams, so a player
//! served through it is a task woken, scheduled and polled per batch; at
//! fan-out that wake, not the write, is most of what a player costs in
//! user space. A play is one `GET` whose response never ends, so this
//! module reads the request head itself. A play request
//! (`GET /{app}/{stream}.flv`) is routed exactly as hyper routes it
//! ([`super::http_flv::route`]: names, authorization, location, limits)
//! and its response is written here: the same headers, the body chunked
//! as hyper chunks it (close-delimited for an HTTP/1.0 client), one chunk
//! per batch. Every other request (the viewer page, `HEAD`, `OPTIONS`,
//! anything malformed or unusual) goes to hyper, with the bytes read so
//! far put back in front of the socket ([`Prefixed`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::clients::{ClientEntry, ClientGuard};
use crate::flv;

use super::http_flv::{route, Routed, Started};
use super::parked_play::{encode_flv, park, Encoding, Parked, Woke};
use super::playback::Step;
use super::rtmp::write_all_segments;
use super::ServerContext;

/// Longest request head read here (hyper's buffer limit on this listener).
const MAX_HEAD: usize = 64 * 1024;
/// Most headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;

/// What the start of a connection turned out to be.
pub(super) enum Head {
    /// A play request (`GET …/{stream}.flv`), parsed.
    Play(Box<Request<()>>),
    /// Anything else: hyper serves it, reading these bytes first.
    Other(Bytes),
    /// The connection ended (or timed out) before a request: why.
    Ended(&'static str),
}

/// Read the request head, bounded in time and size.
pub(super) async fn read_head(
    stream: &mut TcpStream,
    ctx: &ServerContext,
    guard: &ClientGuard,
) -> Head {
    let deadline = tokio::time::Instant::now() + ctx.settings.handshake_timeout;
    let mut buffer = BytesMut::with_capacity(2048);
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)) => read,
            _ = ctx.shutdown.close_all.cancelled() => return Head::Ended("server shutting down"),
            _ = guard.entry().kick.kicked() => return Head::Ended(guard.entry().kick.reason()),
        };
        match read {
            Err(_) => return Head::Ended("no request within handshake_timeout"),
            Ok(Err(_)) => return Head::Ended("connection error"),
            Ok(Ok(0)) if buffer.is_empty() => return Head::Ended("connection closed"),
            Ok(Ok(0)) => return Head::Other(buffer.freeze()),
            Ok(Ok(_)) => {}
        }
        match parse_play_request(&buffer) {
            Parsed::Play(request) => return Head::Play(request),
            Parsed::Partial if buffer.len() < MAX_HEAD => {}
            Parsed::Partial | Parsed::Other => return Head::Other(buffer.freeze()),
        }
    }
}

enum Parsed {
    Play(Box<Request<()>>),
    Partial,
    Other,
}

/// A complete, plain play request, or why not.
fn parse_play_request(buffer: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    }
    let (Some("GET"), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Parsed::Other;
    };
    let file = path.split('?').next().unwrap_or_default();
    if !file.ends_with(".flv") {
        return Parsed::Other;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        // A body or a protocol switch: hyper's to handle.
        let plain = match name.as_str() {
            "content-length" => h.value == b"0",
            "transfer-encoding" | "upgrade" | "expect" => false,
            _ => true,
        };
        if !plain {
            return Parsed::Other;
        }
        request = request.header(h.name, h.value);
    }
    match request.body(()) {
        Ok(request) => Parsed::Play(Box::new(request)),
        Err(_) => Parsed::Other,
    }
}

/// Route a play request and answer it on `stream`: the play streamed
/// (parking while it keeps up), or the complete response. The reason the
/// connection ended and the bytes written.
pub(super) async fn serve_play(
    mut stream: TcpStream,
    request: Box<Request<()>>,
    ctx: Arc<ServerContext>,
    guard: Arc<ClientGuard>,
) -> (&'static str, u64) {
    let chunked = request.version() != Version::HTTP_10;
    match route(*request, ctx.clone(), guard.clone()).await {
        Routed::Response(response) => {
            let written = write_response(&mut stream, response, &ctx).await;
            match written {
                Ok(bytes) => ("connection closed", bytes),
                Err(reason) => (reason, 0),
            }
        }
        Routed::Play(started) => {
            let entry = guard.entry().clone();
            let mut play = DirectPlay {
                ctx,
                entry,
                chunked,
                bytes_out: 0,
            };
            let reason = play.stream(stream, *started).await;
            (reason, play.bytes_out)
        }
    }
}

/// A complete response (a refusal, a 404), then the connection closes.
async fn write_response(
    stream: &mut TcpStream,
    response: Response<super::http_flv::Body>,
    ctx: &ServerContext,
) -> Result<u64, &'static str> {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(value.as_bytes()));
        head.push_str("\r\n");
    }
    if parts.status != StatusCode::NO_CONTENT {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    let segments = [Bytes::from(head), body];
    let limit = ctx.settings.player_write_timeout;
    let written = write_all_segments(stream, &segments, limit)
        .await
        .map_err(|error| write_failure(&error))?;
    let _ = tokio::time::timeout(limit, stream.shutdown()).await;
    Ok(written)
}

fn write_failure(error: &anyhow::Error) -> &'static str {
    if format!("{error:#}").contains("accepted no data") {
        "player accepted no data within player_write_timeout"
    } else {
        "connection error"
    }
}

/// The head of a play's response: what hyper sends for it
/// (`http_flv::flv_response`), and how the body is framed.
fn play_head(chunked: bool) -> Bytes {
    let framing = if chunked {
        "transfer-encoding: chunked\r\n"
    } else {
        ""
    };
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: video/x-flv\r\naccess-control-allow-origin: *\r\ncache-control: no-cache\r\n{framing}connection: close\r\n\r\n"
    ))
}

struct DirectPlay {
    ctx: Arc<ServerContext>,
    entry: Arc<ClientEntry>,
    chunked: bool,
    bytes_out: u64,
}

impl DirectPlay {
    /// Stream `started` until it ends; why it ended.
    async fn stream(&mut self, stream: TcpStream, started: Started) -> &'static str {
        let (mut reader, mut writer) = stream.into_split();
        let Started {
            mut playback,
            first: mut items,
            authorized: _held_for_the_play,
        } = started;
        let source = playback.source().clone();
        let encoding = Encoding::Flv {
            chunked: self.chunked,
        };
        let mut chunk_headers = BytesMut::new();
        let mut segments: Vec<Bytes> = Vec::with_capacity(64);
        segments.push(play_head(self.chunked));
        encode_flv(
            Some(flv::file_header(true, true)),
            &mut items,
            &mut segments,
            self.chunked,
            &mut chunk_headers,
        );
        // What the player sends after its request is read and dropped:
        // reading is how its closing the connection is seen.
        let mut discard = [0u8; 512];
        let mut resumed: Option<Result<Step, crate::hub::SubscribeError>> = None;
        if let Err(reason) = self.write(&mut writer, &mut segments, &source).await {
            return reason;
        }
        loop {
            // After a write the socket took whole: park until the flusher
            // or the player needs this task (not with items handed back
            // still to handle).
            if resumed.is_none() && playback.can_park() {
                let parked = Parked::new(playback, writer, &mut items, &mut segments);
                let input = reader.read(&mut discard);
                let (back, woke) = match park(
                    parked,
                    self.entry.clone(),
                    encoding,
                    &self.ctx,
                    None,
                    input,
                )
                .await
                {
                    Ok(back) => back,
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "play ended");
                        return "connection error";
                    }
                };
                let error;
                (playback, writer, error) = back.restore(&mut items, &mut segments);
                if let Err(error) = error {
                    tracing::warn!(error = format!("{error:#}"), "play ended");
                    return write_failure(&error);
                }
                // Continue the byte stream where the flusher stopped.
                if let Err(reason) = self.write(&mut writer, &mut segments, &source).await {
                    return reason;
                }
                if !items.is_empty() {
                    resumed = Some(Ok(playback.settle(&mut items, 0)));
                }
                if let Woke::Input(Ok(0) | Err(_)) = woke {
                    return "connection closed";
                }
                continue;
            }
            let step = if let Some(step) = resumed.take() {
                step
            } else {
                tokio::select! {
                    step = playback.next(&mut items) => step,
                    read = reader.read(&mut discard) => match read {
                        Ok(0) | Err(_) => return "connection closed",
                        Ok(_) => continue,
                    },
                }
            };
            let then_stop = match step {
                Ok(Step::Items { then_stop }) => then_stop,
                Ok(Step::Stop(reason)) => {
                    tracing::info!(reason, "play ended");
                    return self.finish(&mut writer, reason).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "play ended");
                    return "player too slow";
                }
            };
            encode_flv(
                None,
                &mut items,
                &mut segments,
                self.chunked,
                &mut chunk_headers,
            );
            if let Err(reason) = self.write(&mut writer, &mut segments, &source).await {
                return reason;
            }
            if let Some(reason) = then_stop {
                tracing::info!(reason, "play ended");
                return self.finish(&mut writer, reason).await;
            }
        }
    }

    /// Write and clear `segments`.
    async fn write(
        &mut self,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
        segments: &mut Vec<Bytes>,
        source: &crate::hub::Source,
    ) -> Result<(), &'static str> {
        if segments.is_empty() {
            return Ok(());
        }
        let limit = self.ctx.settings.player_write_timeout;
        let written = write_all_segments(writer, segments, limit)
            .await
            .map_err(|error| write_failure(&error))?;
        segments.clear();
        self.bytes_out += written;
        self.entry.add_bytes_out(written);
        source.add_bytes_out(written);
        Ok(())
    }

    /// End the body (the last chunk) and the connection.
    async fn finish(
        &mut self,
        writer: &mut tokio::net::tcp::OwnedWriteHalf,
        reason: &'static str,
    ) -> &'static str {
        let limit = self.ctx.settings.player_write_timeout;
        if self.chunked {
            let end = [Bytes::from_static(b"0\r\n\r\n")];
            if let Ok(written) = write_all_segments(writer, &end, limit).await {
                self.bytes_out += written;
                self.entry.add_bytes_out(written);
            }
        }
        let _ = tokio::time::timeout(limit, writer.shutdown()).await;
        reason
    }
}

/// A socket with bytes already read from it put back in front.
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn only_plain_play_requests_are_served_here() {
        let play = b"GET /live/a.flv?token=x HTTP/1.1\r\nHost: h\r\n\r\n";
        match parse_play_request(play) {
            Parsed::Play(request) => {
                assert_eq!(request.uri().path(), "/live/a.flv");
                assert_eq!(request.uri().query(), Some("token=x"));
                assert_eq!(request.version(), Version::HTTP_11);
                assert_eq!(request.headers()[header::HOST], "h");
            }
            _ => panic!("a play request"),
        }
        assert!(matches!(
            parse_play_request(b"GET /live/a.flv HTTP/1.0\r\n\r\n"),
            Parsed::Play(r) if r.version() == Version::HTTP_10
        ));
        assert!(matches!(
            parse_play_request(b"GET /live/a.flv HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
        for other in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"HEAD /live/a.flv HTTP/1.1\r\n\r\n",
            b"OPTIONS /live/a.flv HTTP/1.1\r\n\r\n",
            b"GET /live/a.flv HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /live/a.flv HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse_play_request(other), Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[tokio::test]
    async fn a_prefixed_socket_reads_the_prefix_first() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = Prefixed::new(Bytes::from_static(b"GET "), near);
        far.write_all(b"/x HTTP/1.1\r\n").await.expect("write");
        drop(far);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(&all[..], b"GET /x HTTP/1.1\r\n");
    }
}
