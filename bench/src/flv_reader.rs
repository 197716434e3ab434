//! A streaming, zero-copy HTTP-FLV reader for the load tool.
//!
//! A player at 1 Mbit/s times a thousand players is a gigabit per second of
//! parsing on one core, so this reader never buffers a tag: it is a byte
//! state machine fed straight from the socket's read buffer. It parses the
//! HTTP response head, removes `Transfer-Encoding: chunked` framing when the
//! server uses it (Baton, via hyper) or takes the close-delimited body as is
//! (nginx-http-flv and friends), walks the FLV file header and tags, and for
//! each complete tag reports only what the measurements need: its type,
//! timestamp, size and the first bytes of its body, from which keyframes and
//! sequence headers are recognised.
//!
//! It is sans-IO: [`HttpFlvReader::push`] takes bytes and calls back once per
//! complete tag, so the caller can stamp each tag with the wall-clock time of
//! the read that completed it.

use std::fmt;

use crate::stats::{FrameInfo, FrameKind};

/// Longest HTTP response head accepted.
const MAX_HEAD_LEN: usize = 16 * 1024;
/// Longest chunk-size line accepted (hex digits plus extensions).
const MAX_CHUNK_LINE_LEN: usize = 256;
/// Tags larger than this are treated as a corrupt stream.
const MAX_TAG_BODY_LEN: u32 = 16 * 1024 * 1024;
const FLV_HEADER_LEN: usize = 9;
const TAG_HEADER_LEN: usize = 11;
/// Body bytes kept per tag for classification (Enhanced RTMP needs 5)
/// and for a send stamp.
const PREFIX_LEN: usize = crate::wallstamp::PREFIX_NEEDED;

/// Why an HTTP-FLV stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The server answered with something other than `200`.
    Status(u16, String),
    /// The response head was not HTTP or was too long.
    BadHead(String),
    /// The chunked framing was malformed.
    BadChunk(String),
    /// The body is not FLV or a tag is malformed.
    BadFlv(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Status(code, reason) => write!(f, "HTTP status {code} {reason}"),
            ReadError::BadHead(m) => write!(f, "bad HTTP response head: {m}"),
            ReadError::BadChunk(m) => write!(f, "bad chunked encoding: {m}"),
            ReadError::BadFlv(m) => write!(f, "bad FLV: {m}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// What [`HttpFlvReader::push`] learned from one batch of bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// The response head has been fully parsed (status 200).
    pub head_done: bool,
    /// The body ended (last chunk of a chunked body); the stream is over.
    pub body_done: bool,
}

/// The HTTP layer: head, then a chunked or raw body.
#[derive(Debug)]
enum HttpState {
    Head(Vec<u8>),
    Raw,
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Inside a chunk with this many data bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data; the number of bytes seen of it.
    ChunkDataEnd(u8),
    /// After the zero-size chunk: trailers up to the empty line.
    Trailers(Vec<u8>),
    Done,
}

/// The FLV layer.
#[derive(Debug)]
enum FlvState {
    FileHeader {
        buf: [u8; FLV_HEADER_LEN],
        have: usize,
    },
    /// Skipping the rest of an extended file header and PreviousTagSize0.
    SkipHeader(u64),
    TagHeader {
        buf: [u8; TAG_HEADER_LEN],
        have: usize,
    },
    Body(TagInProgress),
    PrevTagSize(u8),
}

#[derive(Debug, Clone, Copy)]
struct TagInProgress {
    tag_type: u8,
    timestamp: u32,
    size: u32,
    remaining: u32,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
}

/// Incremental HTTP-FLV response reader; see the module documentation.
#[derive(Debug)]
pub struct HttpFlvReader {
    http: HttpState,
    flv: FlvState,
}

impl Default for HttpFlvReader {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpFlvReader {
    /// A reader expecting an HTTP response head first.
    pub fn new() -> Self {
        HttpFlvReader {
            http: HttpState::Head(Vec::with_capacity(512)),
            flv: FlvState::FileHeader {
                buf: [0; FLV_HEADER_LEN],
                have: 0,
            },
        }
    }

    /// Whether the HTTP head has been parsed and the body is being read.
    pub fn in_body(&self) -> bool {
        !matches!(self.http, HttpState::Head(_))
    }

    /// Feeds `data`, calling `on_tag` for each tag completed by it.
    pub fn push(
        &mut self,
        mut data: &[u8],
        on_tag: &mut impl FnMut(FrameInfo),
    ) -> Result<PushOutcome, ReadError> {
        let mut outcome = PushOutcome {
            head_done: self.in_body(),
            body_done: matches!(self.http, HttpState::Done),
        };
        while !data.is_empty() {
            match &mut self.http {
                HttpState::Head(head) => {
                    let used = take_head(head, data)?;
                    data = &data[used..];
                    if let Some(chunked) = head_complete(head)? {
                        self.http = if chunked {
                            HttpState::ChunkSize(Vec::with_capacity(16))
                        } else {
                            HttpState::Raw
                        };
                        outcome.head_done = true;
                    }
                }
                HttpState::Raw => {
                    feed_flv(&mut self.flv, data, on_tag)?;
                    data = &[];
                }
                HttpState::ChunkSize(line) => {
                    let (used, size) = take_chunk_line(line, data)?;
                    data = &data[used..];
                    match size {
                        None => {}
                        Some(0) => self.http = HttpState::Trailers(Vec::new()),
                        Some(n) => self.http = HttpState::ChunkData(n),
                    }
                }
                HttpState::ChunkData(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    feed_flv(&mut self.flv, &data[..n], on_tag)?;
                    data = &data[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.http = HttpState::ChunkDataEnd(0);
                    }
                }
                HttpState::ChunkDataEnd(seen) => {
                    let expected = if *seen == 0 { b'\r' } else { b'\n' };
                    if data[0] != expected {
                        return Err(ReadError::BadChunk(
                            "chunk data not followed by CRLF".into(),
                        ));
                    }
                    data = &data[1..];
                    *seen += 1;
                    if *seen == 2 {
                        self.http = HttpState::ChunkSize(Vec::with_capacity(16));
                    }
                }
                HttpState::Trailers(buf) => {
                    // Trailers end with an empty line; with no trailers that
                    // is the CRLF right after the last-chunk line.
                    let mut i = 0;
                    let mut done = false;
                    while i < data.len() {
                        buf.push(data[i]);
                        i += 1;
                        if buf == b"\r\n" || buf.ends_with(b"\r\n\r\n") {
                            done = true;
                            break;
                        }
                        if buf.len() > MAX_HEAD_LEN {
                            return Err(ReadError::BadChunk("trailers too long".into()));
                        }
                    }
                    data = &data[i..];
                    if done {
                        self.http = HttpState::Done;
                    }
                }
                HttpState::Done => {
                    // Bytes after the end of the body: ignore.
                    data = &[];
                }
            }
        }
        outcome.body_done = matches!(self.http, HttpState::Done);
        Ok(outcome)
    }
}

/// Appends head bytes up to and including the blank line; returns how many
/// bytes of `data` were used.
fn take_head(head: &mut Vec<u8>, data: &[u8]) -> Result<usize, ReadError> {
    for (i, &b) in data.iter().enumerate() {
        head.push(b);
        if head.ends_with(b"\r\n\r\n") {
            return Ok(i + 1);
        }
        if head.len() > MAX_HEAD_LEN {
            return Err(ReadError::BadHead(format!(
                "longer than {MAX_HEAD_LEN} bytes"
            )));
        }
    }
    Ok(data.len())
}

/// Once the head is complete, checks the status and returns whether the
/// body is chunked; `None` while the head is incomplete.
fn head_complete(head: &[u8]) -> Result<Option<bool>, ReadError> {
    if !head.ends_with(b"\r\n\r\n") {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::BadHead(format!("status line {status_line:?}")));
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ReadError::BadHead(format!("status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    if code != 200 {
        return Err(ReadError::Status(code, reason));
    }
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value
                    .split(',')
                    .any(|v| v.trim().eq_ignore_ascii_case("chunked"))
            {
                chunked = true;
            }
        }
    }
    Ok(Some(chunked))
}

/// Reads a chunk-size line; returns bytes used and the size once the line is
/// complete.
fn take_chunk_line(line: &mut Vec<u8>, data: &[u8]) -> Result<(usize, Option<u64>), ReadError> {
    for (i, &b) in data.iter().enumerate() {
        line.push(b);
        if line.ends_with(b"\r\n") {
            let text = std::str::from_utf8(&line[..line.len() - 2])
                .map_err(|_| ReadError::BadChunk("non-UTF-8 chunk size line".into()))?;
            let hex = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| ReadError::BadChunk(format!("chunk size {hex:?}")))?;
            return Ok((i + 1, Some(size)));
        }
        if line.len() > MAX_CHUNK_LINE_LEN {
            return Err(ReadError::BadChunk("chunk size line too long".into()));
        }
    }
    Ok((data.len(), None))
}

/// Runs the FLV state machine over body bytes.
fn feed_flv(
    state: &mut FlvState,
    mut data: &[u8],
    on_tag: &mut impl FnMut(FrameInfo),
) -> Result<(), ReadError> {
    while !data.is_empty() {
        match state {
            FlvState::FileHeader { buf, have } => {
                let n = (FLV_HEADER_LEN - *have).min(data.len());
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                data = &data[n..];
                if *have == FLV_HEADER_LEN {
                    if &buf[..3] != b"FLV" {
                        return Err(ReadError::BadFlv(format!("signature {:02x?}", &buf[..3])));
                    }
                    let header_len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
                    let extra = u64::from(header_len.saturating_sub(FLV_HEADER_LEN as u32));
                    *state = FlvState::SkipHeader(extra + 4);
                }
            }
            FlvState::SkipHeader(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                data = &data[n..];
                *left -= n as u64;
                if *left == 0 {
                    *state = FlvState::TagHeader {
                        buf: [0; TAG_HEADER_LEN],
                        have: 0,
                    };
                }
            }
            FlvState::TagHeader { buf, have } => {
                let n = (TAG_HEADER_LEN - *have).min(data.len());
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                data = &data[n..];
                if *have == TAG_HEADER_LEN {
                    let tag_type = buf[0] & 0x1f;
                    let size = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]);
                    let timestamp = u32::from_be_bytes([buf[7], buf[4], buf[5], buf[6]]);
                    if size > MAX_TAG_BODY_LEN {
                        return Err(ReadError::BadFlv(format!("tag body of {size} bytes")));
                    }
                    let tag = TagInProgress {
                        tag_type,
                        timestamp,
                        size,
                        remaining: size,
                        prefix: [0; PREFIX_LEN],
                        prefix_len: 0,
                    };
                    if size == 0 {
                        on_tag(classify(&tag));
                        *state = FlvState::PrevTagSize(4);
                    } else {
                        *state = FlvState::Body(tag);
                    }
                }
            }
            FlvState::Body(tag) => {
                let n = (tag.remaining as usize).min(data.len());
                if tag.prefix_len < PREFIX_LEN {
                    let k = (PREFIX_LEN - tag.prefix_len).min(n);
                    tag.prefix[tag.prefix_len..tag.prefix_len + k].copy_from_slice(&data[..k]);
                    tag.prefix_len += k;
                }
                tag.remaining -= n as u32;
                data = &data[n..];
                if tag.remaining == 0 {
                    on_tag(classify(tag));
                    *state = FlvState::PrevTagSize(4);
                }
            }
            FlvState::PrevTagSize(left) => {
                let n = usize::from(*left).min(data.len());
                data = &data[n..];
                *left -= n as u8;
                if *left == 0 {
                    *state = FlvState::TagHeader {
                        buf: [0; TAG_HEADER_LEN],
                        have: 0,
                    };
                }
            }
        }
    }
    Ok(())
}

fn classify(tag: &TagInProgress) -> FrameInfo {
    let prefix = &tag.prefix[..tag.prefix_len];
    let kind = match tag.tag_type {
        8 => FrameKind::Audio,
        9 => FrameKind::Video,
        _ => FrameKind::Data,
    };
    FrameInfo::classify(kind, tag.timestamp, tag.size as usize, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_common::flv::{encode_tag, file_header};
    use baton_common::media::{MediaFrame, MediaKind};
    use bytes::Bytes;

    fn sample_stream() -> Vec<u8> {
        let frames = [
            MediaFrame::new(
                MediaKind::Data,
                0,
                Bytes::from_static(b"\x02\x00\x0aonMetaData"),
            ),
            MediaFrame::new(
                MediaKind::Video,
                0,
                Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2]),
            ),
            MediaFrame::new(
                MediaKind::Audio,
                0,
                Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
            ),
            MediaFrame::new(MediaKind::Video, 40, Bytes::from(vec![0x17; 3000])),
            MediaFrame::new(
                MediaKind::Audio,
                0x0100_0023,
                Bytes::from_static(&[0xaf, 1, 9]),
            ),
            MediaFrame::new(
                MediaKind::Video,
                0x0100_0040,
                Bytes::from_static(&[0x27, 1]),
            ),
            MediaFrame::new(MediaKind::Video, 0x0100_0041, Bytes::from_static(&[0x27])),
        ];
        let mut out = file_header(true, true).to_vec();
        for f in &frames {
            out.extend_from_slice(&encode_tag(f));
        }
        out
    }

    fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for c in body.chunks(chunk) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn read_all(input: &[u8], split: usize) -> (Vec<FrameInfo>, PushOutcome) {
        let mut reader = HttpFlvReader::new();
        let mut tags = Vec::new();
        let mut last = PushOutcome::default();
        for piece in input.chunks(split) {
            last = reader
                .push(piece, &mut |t| tags.push(t))
                .expect("valid stream");
        }
        (tags, last)
    }

    fn check(tags: &[FrameInfo]) {
        assert_eq!(tags.len(), 7);
        assert_eq!(tags[0].kind, FrameKind::Data);
        assert!(tags[1].seq_header && !tags[1].keyframe);
        assert!(tags[2].seq_header && tags[2].kind == FrameKind::Audio);
        assert!(tags[3].keyframe && tags[3].size == 3000 && tags[3].timestamp == 40);
        assert_eq!(tags[4].timestamp, 0x0100_0023);
        assert!(!tags[5].keyframe && !tags[5].seq_header);
        assert!(!tags[6].keyframe && !tags[6].seq_header);
    }

    #[test]
    fn chunked_body_split_anywhere() {
        let input = chunked(&sample_stream(), 700);
        for split in [1, 2, 3, 7, 64, 1000, input.len()] {
            let (tags, outcome) = read_all(&input, split);
            check(&tags);
            assert!(outcome.head_done && outcome.body_done);
        }
    }

    #[test]
    fn close_delimited_body() {
        let mut input = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        input.extend_from_slice(&sample_stream());
        for split in [1, 5, 4096] {
            let (tags, outcome) = read_all(&input, split);
            check(&tags);
            assert!(outcome.head_done && !outcome.body_done);
        }
    }

    #[test]
    fn raw_flv_without_http() {
        let mut reader = HttpFlvReader {
            http: HttpState::Raw,
            ..HttpFlvReader::new()
        };
        let mut tags = Vec::new();
        reader
            .push(&sample_stream(), &mut |t| tags.push(t))
            .expect("valid");
        check(&tags);
    }

    #[test]
    fn rejects_errors() {
        let mut reader = HttpFlvReader::new();
        let err = reader
            .push(b"HTTP/1.1 404 Not Found\r\n\r\n", &mut |_| {})
            .unwrap_err();
        assert_eq!(err, ReadError::Status(404, "Not Found".into()));

        let mut reader = HttpFlvReader::new();
        let err = reader.push(b"SSH-2.0-x\r\n\r\n", &mut |_| {}).unwrap_err();
        assert!(matches!(err, ReadError::BadHead(_)));

        let mut reader = HttpFlvReader::new();
        let err = reader
            .push(b"HTTP/1.1 200 OK\r\n\r\nNOTFLV...", &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, ReadError::BadFlv(_)));

        let mut reader = HttpFlvReader::new();
        let err = reader
            .push(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                &mut |_| {},
            )
            .unwrap_err();
        assert!(matches!(err, ReadError::BadChunk(_)));
    }

    #[test]
    fn huge_head_is_refused() {
        let mut reader = HttpFlvReader::new();
        let junk = vec![b'a'; MAX_HEAD_LEN + 10];
        assert!(reader.push(&junk, &mut |_| {}).is_err());
    }
}
