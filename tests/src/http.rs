//! A deliberately small HTTP/1.1 client over raw TCP.
//!
//! The tests want to see exactly what the origin put on the wire (status
//! line, headers, chunked framing), so this is not a general client: one
//! request per connection (`Connection: close`), `http://host:port/path`
//! URLs only, bodies read by `Content-Length`, `Transfer-Encoding: chunked`
//! or to EOF. The response-head parser and the de-chunker are shared with
//! [`crate::flv_player`].

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on any single HTTP exchange made through [`request`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order of appearance.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

/// First value of header `name` in `headers` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `http://host:port/path?query` → ("host:port", "/path?query").
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((authority.to_owned(), path.to_owned()))
}

pub async fn get(url: &str) -> anyhow::Result<HttpResponse> {
    request("GET", url, None).await
}

pub async fn head(url: &str) -> anyhow::Result<HttpResponse> {
    request("HEAD", url, None).await
}

pub async fn delete(url: &str) -> anyhow::Result<HttpResponse> {
    request("DELETE", url, None).await
}

pub async fn post(url: &str, body: &[u8]) -> anyhow::Result<HttpResponse> {
    request("POST", url, Some(body)).await
}

/// One request on a fresh connection, bounded by [`REQUEST_TIMEOUT`].
pub async fn request(method: &str, url: &str, body: Option<&[u8]>) -> anyhow::Result<HttpResponse> {
    request_with_headers(method, url, &[], body).await
}

/// [`request`] with extra request headers (e.g. `Authorization`).
pub async fn request_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(REQUEST_TIMEOUT, request_inner(method, url, headers, body))
        .await
        .map_err(|_| anyhow!("{method} {url}: no complete response within {REQUEST_TIMEOUT:?}"))?
}

async fn request_inner(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> anyhow::Result<HttpResponse> {
    let (authority, path) = split_url(url)?;
    let mut stream = TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let head = read_head(&mut stream, &mut buf).await?;
    let body = if method == "HEAD" || head.status == 204 || head.status == 304 {
        Vec::new()
    } else {
        read_body(&mut stream, &mut buf, &head.headers).await?
    };
    Ok(HttpResponse {
        status: head.status,
        headers: head.headers,
        body,
    })
}

/// Status and headers of a response.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// Reads until the end of the response head; bytes after it stay in `buf`.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> anyhow::Result<ResponseHead> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            return parse_head(&head);
        }
        if buf.len() > MAX_HEAD {
            bail!("response head larger than {MAX_HEAD} bytes");
        }
        if stream.read_buf(buf).await? == 0 {
            bail!(
                "connection closed before the end of the response head (got {:?})",
                String::from_utf8_lossy(buf)
            );
        }
    }
}

fn parse_head(head: &[u8]) -> anyhow::Result<ResponseHead> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header line {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok(ResponseHead { status, headers })
}

async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    headers: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    let chunked =
        header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut dechunker = Dechunker::default();
        let mut out = BytesMut::new();
        loop {
            if dechunker.feed(buf, &mut out)? {
                return Ok(out.to_vec());
            }
            if stream.read_buf(buf).await? == 0 {
                bail!("connection closed inside a chunked body");
            }
        }
    }
    if let Some(len) = header(headers, "content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        while buf.len() < len {
            if stream.read_buf(buf).await? == 0 {
                bail!("connection closed after {} of {len} body bytes", buf.len());
            }
        }
        return Ok(buf.split_to(len).to_vec());
    }
    while stream.read_buf(buf).await? != 0 {}
    Ok(buf.split().to_vec())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoder that is strict about
/// the framing (sizes in hex, CRLF after each chunk).
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    /// Number of data chunks seen (a test can assert on the framing).
    pub chunks: usize,
}

impl Dechunker {
    /// Moves decoded body bytes from `input` to `out`. Returns true once
    /// the terminating zero-size chunk (and trailer) has been read.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> anyhow::Result<bool> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = find(input, b"\r\n") else {
                        if input.len() > 1024 {
                            bail!("chunk size line too long");
                        }
                        return Ok(false);
                    };
                    let line = input.split_to(end + 2);
                    let text = std::str::from_utf8(&line[..end]).context("chunk size not UTF-8")?;
                    let hex = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size line {text:?}"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        self.chunks += 1;
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(input.len());
                    out.extend_from_slice(&input.split_to(n));
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        bail!("chunk data not followed by CRLF: {:02x?}", &input[..2]);
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(end) = find(input, b"\r\n") else {
                        return Ok(false);
                    };
                    input.advance(end + 2);
                    if end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_arbitrary_splits() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..wire.len() {
            let mut d = Dechunker::default();
            let mut input = BytesMut::new();
            let mut out = BytesMut::new();
            let mut done = false;
            for piece in wire.chunks(split) {
                input.extend_from_slice(piece);
                done = d.feed(&mut input, &mut out).expect("valid framing");
            }
            assert!(done, "split {split}");
            assert_eq!(&out[..], b"hello world");
            assert_eq!(d.chunks, 2);
        }
    }

    #[test]
    fn rejects_bad_framing() {
        let mut d = Dechunker::default();
        let mut input = BytesMut::from(&b"3\r\nabcXY"[..]);
        assert!(d.feed(&mut input, &mut BytesMut::new()).is_err());
        let mut d = Dechunker::default();
        let mut input = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.feed(&mut input, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn parses_heads_and_urls() {
        let head =
            parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nX: a:b\r\n\r\n")
                .expect("valid head");
        assert_eq!(head.status, 404);
        assert_eq!(header(&head.headers, "content-type"), Some("text/plain"));
        assert_eq!(header(&head.headers, "x"), Some("a:b"));
        assert_eq!(
            split_url("http://127.0.0.1:80/a/b.flv?x=1").expect("url"),
            ("127.0.0.1:80".to_owned(), "/a/b.flv?x=1".to_owned())
        );
    }
}
