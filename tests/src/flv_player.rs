//! An HTTP-FLV player over raw TCP: it sends a GET, parses the response
//! head, de-chunks `Transfer-Encoding: chunked` (strictly) and feeds the
//! body to [`FlvReader`], so a test sees the frames exactly as the origin
//! framed them, plus the status and headers of the response.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use baton_common::flv::{FlvReader, FILE_HEADER_LEN};
use baton_common::media::MediaFrame;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{header, read_head, split_url, Dechunker};

#[derive(Debug)]
enum Framing {
    Chunked(Dechunker),
    Length(usize),
    ToEof,
}

/// The player's connection: TCP, or TLS over TCP (HTTPS).
trait PlayerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PlayerIo for T {}

pub struct FlvPlayer {
    stream: Box<dyn PlayerIo>,
    local: SocketAddr,
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    framing: Framing,
    /// Raw bytes from the socket not yet de-chunked.
    raw: BytesMut,
    /// De-chunked body bytes not yet parsed as FLV.
    body: BytesMut,
    reader: FlvReader,
    /// The first 13 body bytes (FLV header + PreviousTagSize0), once seen.
    file_header: Option<Vec<u8>>,
    body_bytes: u64,
    eof: bool,
}

impl FlvPlayer {
    /// Connects, sends `GET`, and returns once the response head is read.
    /// Any status is returned (check [`FlvPlayer::status`]).
    pub async fn connect(url: &str) -> anyhow::Result<FlvPlayer> {
        Self::connect_version(url, "HTTP/1.1").await
    }

    /// [`FlvPlayer::connect`] as an HTTP/1.0 client (no chunked body).
    pub async fn connect_http10(url: &str) -> anyhow::Result<FlvPlayer> {
        Self::connect_version(url, "HTTP/1.0").await
    }

    async fn connect_version(url: &str, version: &str) -> anyhow::Result<FlvPlayer> {
        let (authority, path) = split_url(url)?;
        let stream = TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Self::request_version(Box::new(stream), local, &authority, &path, version).await
    }

    /// `GET` over HTTPS: `url` is `https://ADDR/PATH`, the certificate is
    /// verified against `ca` for `name`.
    pub async fn connect_tls(
        url: &str,
        name: &str,
        ca: &std::path::Path,
    ) -> anyhow::Result<FlvPlayer> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("not an https:// URL: {url}"))?;
        let (authority, path) = split_url(&format!("http://{rest}"))?;
        let addr: SocketAddr = authority
            .parse()
            .context("https:// URLs here need IP:PORT")?;
        let stream = crate::tls::connect(addr, name, ca).await?;
        let local = stream.get_ref().0.local_addr()?;
        Self::request(Box::new(stream), local, &authority, &path).await
    }

    async fn request(
        stream: Box<dyn PlayerIo>,
        local: SocketAddr,
        authority: &str,
        path: &str,
    ) -> anyhow::Result<FlvPlayer> {
        Self::request_version(stream, local, authority, path, "HTTP/1.1").await
    }

    async fn request_version(
        mut stream: Box<dyn PlayerIo>,
        local: SocketAddr,
        authority: &str,
        path: &str,
        version: &str,
    ) -> anyhow::Result<FlvPlayer> {
        let req = format!(
            "GET {path} {version}\r\nHost: {authority}\r\nUser-Agent: baton-tests\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut raw = BytesMut::with_capacity(64 * 1024);
        let head = read_head(&mut stream, &mut raw).await?;
        let chunked = header(&head.headers, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let framing = if chunked {
            Framing::Chunked(Dechunker::default())
        } else if let Some(len) = header(&head.headers, "content-length") {
            Framing::Length(len.parse().context("bad Content-Length")?)
        } else {
            Framing::ToEof
        };
        Ok(FlvPlayer {
            stream,
            local,
            status: head.status,
            headers: head.headers,
            framing,
            raw,
            body: BytesMut::new(),
            reader: FlvReader::new(),
            file_header: None,
            body_bytes: 0,
            eof: false,
        })
    }

    /// [`FlvPlayer::connect`] bounded by `limit`.
    pub async fn connect_within(url: &str, limit: Duration) -> anyhow::Result<FlvPlayer> {
        tokio::time::timeout(limit, Self::connect(url))
            .await
            .with_context(|| format!("GET {url}: no response head within {limit:?}"))?
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The 13-byte FLV file header (with PreviousTagSize0) once received.
    pub fn file_header(&self) -> Option<&[u8]> {
        self.file_header.as_deref()
    }

    /// Whether the chunked body was properly terminated (zero-size chunk).
    pub fn body_terminated(&self) -> bool {
        matches!(&self.framing, Framing::Chunked(d) if d.is_done())
    }

    /// The next FLV tag as a frame; `Ok(None)` once the body or the
    /// connection has ended.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<MediaFrame>> {
        loop {
            if self.file_header.is_none() && self.body.len() >= FILE_HEADER_LEN {
                self.file_header = Some(self.body[..FILE_HEADER_LEN].to_vec());
            }
            if let Some(frame) = self.reader.next_frame(&mut self.body)? {
                return Ok(Some(frame));
            }
            if self.eof {
                return Ok(None);
            }
            self.fill().await?;
        }
    }

    /// [`FlvPlayer::next_frame`] bounded by `limit`: `Err` on timeout.
    pub async fn next_frame_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<MediaFrame>> {
        tokio::time::timeout(limit, self.next_frame())
            .await
            .with_context(|| format!("no FLV tag within {limit:?}"))?
    }

    /// Reads frames until `stop` returns true for one (included) or
    /// `limit` passes; returns everything read.
    pub async fn frames_until(
        &mut self,
        limit: Duration,
        mut stop: impl FnMut(&MediaFrame) -> bool,
    ) -> anyhow::Result<Vec<MediaFrame>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.next_frame()).await {
                Err(_) => bail!(
                    "stop condition not met within {limit:?}; got {} frames: {}",
                    frames.len(),
                    crate::check::frame_summary(&frames)
                ),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => bail!(
                    "body ended before the stop condition; got {} frames: {}",
                    frames.len(),
                    crate::check::frame_summary(&frames)
                ),
                Ok(Ok(Some(frame))) => {
                    let done = stop(&frame);
                    frames.push(frame);
                    if done {
                        return Ok(frames);
                    }
                }
            }
        }
    }

    /// Reads the rest of the body as raw bytes (for error responses).
    pub async fn body_to_end(&mut self, limit: Duration) -> anyhow::Result<Vec<u8>> {
        tokio::time::timeout(limit, async {
            while !self.eof {
                self.fill().await?;
            }
            anyhow::Ok(self.body.split().to_vec())
        })
        .await
        .with_context(|| format!("body did not end within {limit:?}"))?
    }

    /// Body bytes received so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Reads more from the socket and de-chunks it into `self.body`.
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.decode_raw()? {
            return Ok(());
        }
        if self.stream.read_buf(&mut self.raw).await? == 0 {
            // The connection ended (possibly inside a chunk: see
            // `body_terminated`).
            self.eof = true;
        }
        self.decode_raw()?;
        Ok(())
    }

    /// Moves what can be decoded from `raw` to `body`; true if any bytes
    /// were added or the body ended.
    fn decode_raw(&mut self) -> anyhow::Result<bool> {
        let before = self.body.len();
        match &mut self.framing {
            Framing::Chunked(d) => {
                if d.feed(&mut self.raw, &mut self.body)? {
                    self.eof = true;
                }
            }
            Framing::Length(left) => {
                let n = (*left).min(self.raw.len());
                self.body.extend_from_slice(&self.raw.split_to(n));
                *left -= n;
                if *left == 0 {
                    self.eof = true;
                }
            }
            Framing::ToEof => {
                let all = self.raw.split();
                self.body.extend_from_slice(&all);
            }
        }
        let added = self.body.len() - before;
        self.body_bytes += added as u64;
        Ok(added > 0 || self.eof)
    }
}
