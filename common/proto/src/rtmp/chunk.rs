//! The RTMP chunk stream: messages are cut into chunks of at most the
//! negotiated chunk size, chunks of different chunk streams interleave, and
//! headers are compressed against the previous header on the same chunk
//! stream (formats 0-3). This module turns bytes into whole messages and
//! back, sans-IO.
//!
//! The decoder is the first thing that touches ingest bytes, so it is built
//! to be both hostile-input safe (every count and size bounded, typed errors,
//! no panics) and cheap: it only consumes whole chunks, a message that fits
//! in one chunk is split off the input without copying, and larger messages
//! are assembled into one buffer per message.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size accepted from a peer; larger (or 0) is a protocol error.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest message accepted by default (the 24-bit length field cannot
/// exceed this anyway; [`ChunkDecoder::set_max_message_len`] lowers it).
pub const MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;
/// Most chunk streams that may have a partially received message at once.
pub const MAX_PARTIAL_MESSAGES: usize = 64;
/// Most distinct chunk stream ids a peer may use on one connection (real
/// clients use fewer than ten).
pub const MAX_CHUNK_STREAMS: usize = 256;
/// Most bytes held in partially received messages across all chunk streams.
pub const MAX_BUFFERED_BYTES: usize = 2 * MAX_MESSAGE_LEN as usize;

/// Largest value of the 24-bit timestamp and length fields; a timestamp
/// field of this value means "see the extended timestamp".
const EXTENDED_TIMESTAMP_MARK: u32 = 0x00FF_FFFF;
const MAX_WIRE_MESSAGE_LEN: usize = 0x00FF_FFFF;
const MIN_CSID: u32 = 2;
const MAX_CSID: u32 = 65_599;
/// Up-front reservation cap for a multi-chunk message; it grows as chunks
/// actually arrive, so a lying length field cannot reserve memory.
const MAX_UPFRONT_RESERVATION: usize = 64 * 1024;

/// One complete message as carried by the chunk stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size {0}: must be between 1 and {MAX_CHUNK_SIZE}")]
    InvalidChunkSize(u32),
    #[error("message on chunk stream {csid} is {length} bytes long, over the {max}-byte limit")]
    MessageTooLong { csid: u32, length: u32, max: u32 },
    #[error(
        "chunk stream {csid} starts with a format {fmt} chunk; the first chunk must be format 0"
    )]
    MissingFirstHeader { csid: u32, fmt: u8 },
    #[error("too many chunk streams have partial messages in flight")]
    TooManyPartialMessages,
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams in use")]
    TooManyChunkStreams,
    #[error("partial messages would hold more bytes than allowed")]
    TooMuchBuffered,
}

/// Header state of one chunk stream on the receiving side.
#[derive(Debug)]
struct DecoderStream {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last explicit header carried an extended timestamp field.
    extended: bool,
    extended_value: u32,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    data: BytesMut,
    remaining: u32,
}

/// What the fields of one chunk header say, before it is applied.
#[derive(Debug, Clone, Copy)]
struct ChunkHeader {
    fmt: u8,
    csid: u32,
    /// Bytes of basic + message header + extended timestamp.
    len: usize,
    /// Timestamp (fmt 0) or delta (fmt 1/2); None for fmt 3.
    time_field: Option<u32>,
    extended: bool,
    length: Option<u32>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
}

/// Reassembles messages from the peer's chunk stream.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    max_message_len: u32,
    streams: HashMap<u32, DecoderStream>,
    partial_messages: usize,
    buffered_bytes: usize,
    /// Bounds in force (lowered for a peer not trusted yet, see
    /// [`ChunkDecoder::set_limits`]).
    max_partial_messages: usize,
    max_buffered_bytes: usize,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDecoder {
    pub fn new() -> Self {
        ChunkDecoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message_len: MAX_MESSAGE_LEN,
            streams: HashMap::new(),
            partial_messages: 0,
            buffered_bytes: 0,
            max_partial_messages: MAX_PARTIAL_MESSAGES,
            max_buffered_bytes: MAX_BUFFERED_BYTES,
        }
    }

    /// Sets every bound at once (each capped at the protocol maximum): a
    /// server keeps a peer small until it has connected, so a socket that
    /// never says who it is cannot make the process hold megabytes.
    pub fn set_limits(&mut self, max_message_len: u32, max_partial: usize, max_buffered: usize) {
        self.max_message_len = max_message_len.min(MAX_MESSAGE_LEN);
        self.max_partial_messages = max_partial.min(MAX_PARTIAL_MESSAGES);
        self.max_buffered_bytes = max_buffered.min(MAX_BUFFERED_BYTES);
    }

    /// Bytes held in partial messages now.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Applies the peer's Set Chunk Size to the chunks that follow it.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::InvalidChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Lowers (or restores) the largest message length accepted.
    pub fn set_max_message_len(&mut self, max: u32) {
        self.max_message_len = max.min(MAX_MESSAGE_LEN);
    }

    /// Drops the partial message on `csid` (the peer's Abort message).
    pub fn abort(&mut self, csid: u32) {
        if let Some(partial) = self.streams.get_mut(&csid).and_then(|s| s.partial.take()) {
            self.release(&partial);
        }
    }

    /// Consumes whole chunks from `buf` until a message completes.
    /// `Ok(None)`: the rest of `buf` is an incomplete chunk; call again
    /// with more bytes appended.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let Some(header) = self.parse_header(buf)? else {
                return Ok(None);
            };
            let Some(chunk_payload) = self.chunk_payload_len(&header)? else {
                return Ok(None);
            };
            if buf.len() < header.len + chunk_payload {
                return Ok(None);
            }
            buf.advance(header.len);
            if let Some(message) = self.apply_chunk(&header, buf, chunk_payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Reads the header at the front of `buf` without consuming it.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<ChunkHeader>, ChunkError> {
        let Some((fmt, csid, basic_len)) = parse_basic_header(buf) else {
            return Ok(None);
        };
        let stream = self.streams.get(&csid);
        if stream.is_none() && fmt != 0 {
            return Err(ChunkError::MissingFirstHeader { csid, fmt });
        }
        let fields_len = match fmt {
            0 => 11,
            1 => 7,
            2 => 3,
            _ => 0,
        };
        let Some(fields) = buf.get(basic_len..basic_len + fields_len) else {
            return Ok(None);
        };
        let mut header = ChunkHeader {
            fmt,
            csid,
            len: basic_len + fields_len,
            time_field: None,
            extended: false,
            length: None,
            type_id: None,
            stream_id: None,
        };
        if fmt <= 2 {
            read_message_header_fields(fields, &mut header);
        }
        let after_fields = buf.get(header.len..).unwrap_or_default();
        if header.time_field == Some(EXTENDED_TIMESTAMP_MARK) {
            let Some(value) = read_u32_be(after_fields) else {
                return Ok(None);
            };
            header.time_field = Some(value);
            header.extended = true;
            header.len += 4;
        } else if let Some(stream) = stream.filter(|s| fmt == 3 && s.extended) {
            // Per spec the extended timestamp repeats in format 3 chunks;
            // some encoders omit it. Like SRS: consume the 4 bytes only if
            // they equal the stored value.
            let Some(value) = read_u32_be(after_fields) else {
                return Ok(None);
            };
            if value == stream.extended_value {
                header.len += 4;
            }
        }
        Ok(Some(header))
    }

    /// How many payload bytes the chunk with this header carries; checks
    /// the message length. `None` is impossible here but kept total.
    fn chunk_payload_len(&self, header: &ChunkHeader) -> Result<Option<usize>, ChunkError> {
        let stream = self.streams.get(&header.csid);
        let continuing = header.fmt == 3 && stream.is_some_and(|s| s.partial.is_some());
        let remaining = if continuing {
            stream
                .and_then(|s| s.partial.as_ref())
                .map_or(0, |p| p.remaining)
        } else {
            let length = match (header.length, stream) {
                (Some(length), _) => length,
                (None, Some(stream)) => stream.length,
                (None, None) => return Ok(None),
            };
            if length > self.max_message_len {
                return Err(ChunkError::MessageTooLong {
                    csid: header.csid,
                    length,
                    max: self.max_message_len,
                });
            }
            length
        };
        Ok(Some(remaining.min(self.chunk_size) as usize))
    }

    /// Applies a parsed header and its payload (at the front of `buf`).
    fn apply_chunk(
        &mut self,
        header: &ChunkHeader,
        buf: &mut BytesMut,
        chunk_payload: usize,
    ) -> Result<Option<RawMessage>, ChunkError> {
        if !self.streams.contains_key(&header.csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyChunkStreams);
        }
        let continuing = header.fmt == 3
            && self
                .streams
                .get(&header.csid)
                .is_some_and(|s| s.partial.is_some());
        if continuing {
            return self.continue_message(header.csid, buf, chunk_payload);
        }
        self.abort(header.csid); // a new header replaces any partial message
        let stream = self
            .streams
            .entry(header.csid)
            .or_insert_with(|| DecoderStream {
                timestamp: 0,
                delta: 0,
                length: 0,
                type_id: 0,
                stream_id: 0,
                extended: false,
                extended_value: 0,
                partial: None,
            });
        apply_header_to_stream(header, stream);
        self.start_message(header.csid, buf, chunk_payload)
    }

    fn start_message(
        &mut self,
        csid: u32,
        buf: &mut BytesMut,
        chunk_payload: usize,
    ) -> Result<Option<RawMessage>, ChunkError> {
        let Some(stream) = self.streams.get(&csid) else {
            return Ok(None);
        };
        let length = stream.length as usize;
        if chunk_payload >= length {
            // Copied into an allocation of its own rather than sliced out of
            // the socket read buffer: frames outlive reads (GOP cache, ring),
            // and a slice would pin the whole read buffer for each of them.
            let payload = Bytes::copy_from_slice(buf.get(..length).unwrap_or_default());
            buf.advance(length);
            return Ok(Some(message_from(csid, stream, payload)));
        }
        if self.partial_messages >= self.max_partial_messages {
            return Err(ChunkError::TooManyPartialMessages);
        }
        self.reserve_buffered(chunk_payload)?;
        let mut data = BytesMut::with_capacity(length.min(MAX_UPFRONT_RESERVATION));
        data.extend_from_slice(buf.get(..chunk_payload).unwrap_or_default());
        buf.advance(chunk_payload);
        self.partial_messages += 1;
        if let Some(stream) = self.streams.get_mut(&csid) {
            stream.partial = Some(Partial {
                data,
                remaining: (length - chunk_payload) as u32,
            });
        }
        Ok(None)
    }

    fn continue_message(
        &mut self,
        csid: u32,
        buf: &mut BytesMut,
        chunk_payload: usize,
    ) -> Result<Option<RawMessage>, ChunkError> {
        self.reserve_buffered(chunk_payload)?;
        let Some(stream) = self.streams.get_mut(&csid) else {
            return Ok(None);
        };
        let Some(partial) = stream.partial.as_mut() else {
            return Ok(None);
        };
        partial
            .data
            .extend_from_slice(buf.get(..chunk_payload).unwrap_or_default());
        buf.advance(chunk_payload);
        partial.remaining = partial.remaining.saturating_sub(chunk_payload as u32);
        if partial.remaining > 0 {
            return Ok(None);
        }
        let Some(done) = stream.partial.take() else {
            return Ok(None);
        };
        let message = message_from(csid, stream, Bytes::new());
        self.release(&done);
        Ok(Some(RawMessage {
            payload: done.data.freeze(),
            ..message
        }))
    }

    fn reserve_buffered(&mut self, bytes: usize) -> Result<(), ChunkError> {
        let total = self.buffered_bytes + bytes;
        if total > self.max_buffered_bytes {
            return Err(ChunkError::TooMuchBuffered);
        }
        self.buffered_bytes = total;
        Ok(())
    }

    fn release(&mut self, partial: &Partial) {
        self.partial_messages = self.partial_messages.saturating_sub(1);
        self.buffered_bytes = self.buffered_bytes.saturating_sub(partial.data.len());
    }
}

fn message_from(csid: u32, stream: &DecoderStream, payload: Bytes) -> RawMessage {
    RawMessage {
        csid,
        timestamp: stream.timestamp,
        type_id: stream.type_id,
        stream_id: stream.stream_id,
        payload,
    }
}

/// Timestamp bookkeeping shared with FFmpeg and SRS: a format 0 header sets
/// the absolute time and also counts as the delta a later format 3 message
/// reuses; format 1/2 add their delta; format 3 starting a new message
/// adds the previous delta.
fn apply_header_to_stream(header: &ChunkHeader, stream: &mut DecoderStream) {
    match (header.fmt, header.time_field) {
        (0, Some(timestamp)) => {
            stream.timestamp = timestamp;
            stream.delta = timestamp;
        }
        (_, Some(delta)) => {
            stream.timestamp = stream.timestamp.wrapping_add(delta);
            stream.delta = delta;
        }
        (_, None) => stream.timestamp = stream.timestamp.wrapping_add(stream.delta),
    }
    if let Some(time) = header.time_field {
        stream.extended = header.extended;
        stream.extended_value = if header.extended { time } else { 0 };
    }
    if let Some(length) = header.length {
        stream.length = length;
    }
    if let Some(type_id) = header.type_id {
        stream.type_id = type_id;
    }
    if let Some(stream_id) = header.stream_id {
        stream.stream_id = stream_id;
    }
}

/// (fmt, csid, bytes used) of the basic header, or None if incomplete.
fn parse_basic_header(buf: &[u8]) -> Option<(u8, u32, usize)> {
    let first = *buf.first()?;
    let fmt = first >> 6;
    match first & 0x3f {
        0 => Some((fmt, 64 + u32::from(*buf.get(1)?), 2)),
        1 => {
            let low = u32::from(*buf.get(1)?);
            let high = u32::from(*buf.get(2)?);
            Some((fmt, 64 + low + high * 256, 3))
        }
        csid => Some((fmt, u32::from(csid), 1)),
    }
}

fn read_message_header_fields(fields: &[u8], header: &mut ChunkHeader) {
    header.time_field = read_u24_be(fields);
    if header.fmt <= 1 {
        header.length = fields.get(3..).and_then(read_u24_be);
        header.type_id = fields.get(6).copied();
    }
    if header.fmt == 0 {
        // The message stream id is the one little-endian field of RTMP.
        header.stream_id = fields
            .get(7..11)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
    }
}

fn read_u24_be(bytes: &[u8]) -> Option<u32> {
    let [high, mid, low]: [u8; 3] = bytes.get(..3)?.try_into().ok()?;
    Some(u32::from_be_bytes([0, high, mid, low]))
}

fn read_u32_be(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// What the encoder last told the peer about one chunk stream.
#[derive(Debug, Clone, Copy)]
struct EncoderStream {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderFormat {
    Full,
    SameStream { delta: u32 },
    SameShape { delta: u32 },
    Repeat { delta: u32 },
}

/// Cuts messages into chunks with per-chunk-stream header compression.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    compress_headers: bool,
    streams: HashMap<u32, EncoderStream>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compress_headers: true,
            streams: HashMap::new(),
        }
    }

    /// With compression off every message starts with a format 0 header,
    /// so this encoder's output can be freely interleaved (message by
    /// message) with [`encode_standalone`] bytes on the same chunk streams.
    pub fn set_header_compression(&mut self, enabled: bool) {
        self.compress_headers = enabled;
        self.streams.clear();
    }

    /// Takes effect for the next message; send Set Chunk Size first. Sizes
    /// outside 1..=MAX_CHUNK_SIZE are clamped.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Forgets the header state of `csid`, so its next message is sent with
    /// a full header (needed if other bytes were written on that csid).
    pub fn reset_stream(&mut self, csid: u32) {
        self.streams.remove(&csid);
    }

    /// Appends `msg` as chunks. Messages that cannot be represented (csid
    /// outside 2..=65599, payload over 16 MiB - 1) are dropped with a
    /// warning: they can only come from a bug on our side.
    pub fn encode(&mut self, msg: &RawMessage, out: &mut BytesMut) {
        if !is_encodable(msg) {
            return;
        }
        let format = self.choose_format(msg);
        write_message(self.chunk_size, msg, format, out);
        let delta = match format {
            HeaderFormat::Full => msg.timestamp,
            HeaderFormat::SameStream { delta }
            | HeaderFormat::SameShape { delta }
            | HeaderFormat::Repeat { delta } => delta,
        };
        self.streams.insert(
            msg.csid,
            EncoderStream {
                timestamp: msg.timestamp,
                delta,
                length: msg.payload.len() as u32,
                type_id: msg.type_id,
                stream_id: msg.stream_id,
            },
        );
    }

    fn choose_format(&self, msg: &RawMessage) -> HeaderFormat {
        if !self.compress_headers {
            return HeaderFormat::Full;
        }
        let Some(prev) = self.streams.get(&msg.csid) else {
            return HeaderFormat::Full;
        };
        if prev.stream_id != msg.stream_id || msg.timestamp < prev.timestamp {
            return HeaderFormat::Full;
        }
        let delta = msg.timestamp - prev.timestamp;
        if prev.length != msg.payload.len() as u32 || prev.type_id != msg.type_id {
            HeaderFormat::SameStream { delta }
        } else if prev.delta != delta {
            HeaderFormat::SameShape { delta }
        } else {
            HeaderFormat::Repeat { delta }
        }
    }
}

/// Encode a whole message as fmt0 first chunk + fmt3 continuations, with no
/// dependency on any previous message's header state. The origin encodes
/// each media frame once with this and writes the same bytes to every RTMP
/// player (all players use the same chunk size and message stream id), so
/// it is correct at any position in a connection's output as long as that
/// csid is used only for standalone messages (never by a stateful
/// [`ChunkEncoder`] on the same connection, or reset it with
/// [`ChunkEncoder::reset_stream`]).
pub fn encode_standalone(chunk_size: u32, msg: &RawMessage) -> Bytes {
    if !is_encodable(msg) {
        return Bytes::new();
    }
    let mut out = BytesMut::with_capacity(encoded_len_upper_bound(chunk_size, msg));
    write_message(
        chunk_size.clamp(1, MAX_CHUNK_SIZE),
        msg,
        HeaderFormat::Full,
        &mut out,
    );
    out.freeze()
}

fn is_encodable(msg: &RawMessage) -> bool {
    let ok = (MIN_CSID..=MAX_CSID).contains(&msg.csid) && msg.payload.len() <= MAX_WIRE_MESSAGE_LEN;
    if !ok {
        tracing::warn!(
            csid = msg.csid,
            len = msg.payload.len(),
            "dropping an RTMP message that cannot be chunked"
        );
    }
    ok
}

fn encoded_len_upper_bound(chunk_size: u32, msg: &RawMessage) -> usize {
    let chunks = msg.payload.len() / chunk_size.max(1) as usize + 1;
    msg.payload.len() + 18 + chunks * 7
}

fn write_message(chunk_size: u32, msg: &RawMessage, format: HeaderFormat, out: &mut BytesMut) {
    let time_value = match format {
        HeaderFormat::Full => msg.timestamp,
        HeaderFormat::SameStream { delta }
        | HeaderFormat::SameShape { delta }
        | HeaderFormat::Repeat { delta } => delta,
    };
    let extended = time_value >= EXTENDED_TIMESTAMP_MARK;
    let time_field = time_value.min(EXTENDED_TIMESTAMP_MARK);
    out.reserve(encoded_len_upper_bound(chunk_size, msg));

    let fmt = match format {
        HeaderFormat::Full => 0,
        HeaderFormat::SameStream { .. } => 1,
        HeaderFormat::SameShape { .. } => 2,
        HeaderFormat::Repeat { .. } => 3,
    };
    put_basic_header(out, fmt, msg.csid);
    if fmt <= 2 {
        put_u24(out, time_field);
    }
    if fmt <= 1 {
        put_u24(out, msg.payload.len() as u32);
        out.put_u8(msg.type_id);
    }
    if fmt == 0 {
        out.put_u32_le(msg.stream_id);
    }
    if extended {
        out.put_u32(time_value);
    }

    let mut chunks = msg.payload.chunks(chunk_size as usize);
    if let Some(first) = chunks.next() {
        out.put_slice(first);
    }
    for chunk in chunks {
        put_basic_header(out, 3, msg.csid);
        if extended {
            out.put_u32(time_value);
        }
        out.put_slice(chunk);
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt_bits = fmt << 6;
    match csid {
        0..=63 => out.put_u8(fmt_bits | csid as u8),
        64..=319 => {
            out.put_u8(fmt_bits);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            let value = csid - 64;
            out.put_u8(fmt_bits | 1);
            out.put_u8((value & 0xff) as u8);
            out.put_u8((value >> 8) as u8);
        }
    }
}

fn put_u24(out: &mut BytesMut, value: u32) {
    out.put_slice(&value.to_be_bytes()[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl ChunkDecoder {
        fn new_with_chunk_size(size: u32) -> Self {
            let mut decoder = ChunkDecoder::new();
            decoder.set_chunk_size(size).unwrap();
            decoder
        }
    }

    fn decode_all(decoder: &mut ChunkDecoder, bytes: &[u8]) -> Result<Vec<RawMessage>, ChunkError> {
        let mut buf = BytesMut::from(bytes);
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode(&mut buf)? {
            messages.push(message);
        }
        Ok(messages)
    }

    fn raw(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> RawMessage {
        RawMessage {
            csid,
            timestamp,
            type_id,
            stream_id,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn decodes_single_fmt0_chunk() {
        let bytes = [
            0x03, // fmt 0, csid 3
            0x00, 0x00, 0x10, // timestamp 16
            0x00, 0x00, 0x03, // length 3
            0x14, // type 20
            0x01, 0x00, 0x00, 0x00, // stream id 1, little endian
            b'a', b'b', b'c',
        ];
        let messages = decode_all(&mut ChunkDecoder::new(), &bytes).unwrap();
        assert_eq!(messages, vec![raw(3, 16, 20, 1, b"abc")]);
    }

    #[test]
    fn waits_for_whole_chunks_without_consuming() {
        let bytes = [
            0x03, 0, 0, 0x10, 0, 0, 3, 0x14, 1, 0, 0, 0, b'a', b'b', b'c',
        ];
        let mut decoder = ChunkDecoder::new();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert_eq!(buf.len(), cut, "incomplete chunk left in place");
        }
    }

    #[test]
    fn decodes_fmt1_fmt2_fmt3_with_accumulating_deltas() {
        let mut bytes = vec![0x04, 0, 0, 100, 0, 0, 2, 8, 1, 0, 0, 0, 0xaa, 0xbb]; // fmt0 ts 100
        bytes.extend_from_slice(&[0x44, 0, 0, 20, 0, 0, 1, 9, 0xcc]); // fmt1 delta 20, len 1, video
        bytes.extend_from_slice(&[0x84, 0, 0, 30, 0xdd]); // fmt2 delta 30
        bytes.extend_from_slice(&[0xc4, 0xee]); // fmt3: new message, delta 30 again
        let messages = decode_all(&mut ChunkDecoder::new(), &bytes).unwrap();
        assert_eq!(
            messages,
            vec![
                raw(4, 100, 8, 1, &[0xaa, 0xbb]),
                raw(4, 120, 9, 1, &[0xcc]),
                raw(4, 150, 9, 1, &[0xdd]),
                raw(4, 180, 9, 1, &[0xee]),
            ]
        );
    }

    #[test]
    fn fmt3_continuation_adds_no_time() {
        let mut decoder = ChunkDecoder::new();
        decoder.set_chunk_size(2).unwrap();
        let mut bytes = vec![0x05, 0, 0, 7, 0, 0, 5, 9, 1, 0, 0, 0, 1, 2];
        bytes.extend_from_slice(&[0xc5, 3, 4]);
        bytes.extend_from_slice(&[0xc5, 5]);
        let messages = decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(messages, vec![raw(5, 7, 9, 1, &[1, 2, 3, 4, 5])]);
    }

    #[test]
    fn decodes_two_and_three_byte_csids() {
        let mut bytes = vec![0x00, 0x00, 0, 0, 1, 0, 0, 1, 8, 0, 0, 0, 0, 0x11]; // csid 64
        bytes.extend_from_slice(&[0x00, 0xff, 0, 0, 2, 0, 0, 1, 8, 0, 0, 0, 0, 0x22]); // csid 319
        bytes.extend_from_slice(&[0x01, 0x00, 0x01, 0, 0, 3, 0, 0, 1, 8, 0, 0, 0, 0, 0x33]); // csid 320
        bytes.extend_from_slice(&[0x01, 0xff, 0xff, 0, 0, 4, 0, 0, 1, 8, 0, 0, 0, 0, 0x44]); // 65599
        let messages = decode_all(&mut ChunkDecoder::new(), &bytes).unwrap();
        let csids: Vec<u32> = messages.iter().map(|m| m.csid).collect();
        assert_eq!(csids, vec![64, 319, 320, 65_599]);
        for (csid, ts) in [(64, 1), (319, 2), (320, 3), (65_599, 4)] {
            let mut out = BytesMut::new();
            ChunkEncoder::new().encode(&raw(csid, ts, 8, 0, &[0]), &mut out);
            assert_eq!(
                decode_all(&mut ChunkDecoder::new(), &out).unwrap()[0].csid,
                csid
            );
        }
    }

    #[test]
    fn extended_timestamp_in_fmt0_and_fmt3_repeated() {
        let mut decoder = ChunkDecoder::new();
        decoder.set_chunk_size(2).unwrap();
        let mut bytes = vec![0x06, 0xff, 0xff, 0xff, 0, 0, 3, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&0x0100_0000u32.to_be_bytes());
        bytes.extend_from_slice(&[1, 2]);
        bytes.push(0xc6);
        bytes.extend_from_slice(&0x0100_0000u32.to_be_bytes()); // repeated ext ts
        bytes.push(3);
        let messages = decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(messages, vec![raw(6, 0x0100_0000, 9, 1, &[1, 2, 3])]);
    }

    #[test]
    fn extended_timestamp_in_fmt3_omitted() {
        let mut decoder = ChunkDecoder::new();
        decoder.set_chunk_size(2).unwrap();
        let mut bytes = vec![0x06, 0xff, 0xff, 0xff, 0, 0, 7, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&0x0100_0000u32.to_be_bytes());
        bytes.extend_from_slice(&[1, 2]);
        bytes.extend_from_slice(&[0xc6, 3, 4]); // no repeated ext ts
        bytes.extend_from_slice(&[0xc6, 5, 6]);
        bytes.extend_from_slice(&[0xc6, 7]);
        // A 1-byte last chunk cannot be told apart from a repeated extended
        // timestamp until 4 bytes follow its basic header: it waits...
        assert_eq!(decode_all(&mut decoder, &bytes).unwrap(), vec![]);
        // ...and completes as soon as the next chunk arrives.
        bytes.extend_from_slice(&[0x04, 0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0, 0xee]);
        let messages = decode_all(&mut ChunkDecoder::new_with_chunk_size(2), &bytes).unwrap();
        assert_eq!(
            messages,
            vec![
                raw(6, 0x0100_0000, 9, 1, &[1, 2, 3, 4, 5, 6, 7]),
                raw(4, 0, 8, 1, &[0xee])
            ]
        );
    }

    #[test]
    fn extended_delta_in_fmt1_and_fmt3_new_message() {
        let mut bytes = vec![0x07, 0, 0, 10, 0, 0, 1, 8, 1, 0, 0, 0, 0xa1];
        bytes.extend_from_slice(&[0x47, 0xff, 0xff, 0xff, 0, 0, 1, 8]);
        bytes.extend_from_slice(&0x0200_0000u32.to_be_bytes());
        bytes.push(0xa2);
        bytes.push(0xc7);
        bytes.extend_from_slice(&0x0200_0000u32.to_be_bytes());
        bytes.push(0xa3);
        let messages = decode_all(&mut ChunkDecoder::new(), &bytes).unwrap();
        let times: Vec<u32> = messages.iter().map(|m| m.timestamp).collect();
        assert_eq!(times, vec![10, 10 + 0x0200_0000, 10 + 2 * 0x0200_0000]);
        let payloads: Vec<u8> = messages.iter().map(|m| m.payload[0]).collect();
        assert_eq!(payloads, vec![0xa1, 0xa2, 0xa3]);
    }

    #[test]
    fn timestamps_wrap() {
        let mut bytes = vec![0x04, 0xff, 0xff, 0xff, 0, 0, 1, 8, 1, 0, 0, 0];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&[0x84, 0, 0, 5, 2]);
        let messages = decode_all(&mut ChunkDecoder::new(), &bytes).unwrap();
        assert_eq!(messages[1].timestamp, 4);
    }

    #[test]
    fn interleaved_chunk_streams() {
        let mut decoder = ChunkDecoder::new();
        decoder.set_chunk_size(2).unwrap();
        let mut bytes = vec![0x04, 0, 0, 1, 0, 0, 4, 8, 1, 0, 0, 0, b'a', b'b'];
        bytes.extend_from_slice(&[0x06, 0, 0, 2, 0, 0, 3, 9, 1, 0, 0, 0, b'x', b'y']);
        bytes.extend_from_slice(&[0xc4, b'c', b'd']);
        bytes.extend_from_slice(&[0xc6, b'z']);
        let messages = decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(
            messages,
            vec![raw(4, 1, 8, 1, b"abcd"), raw(6, 2, 9, 1, b"xyz")]
        );
    }

    #[test]
    fn chunk_size_change_mid_stream() {
        let mut decoder = ChunkDecoder::new();
        let mut big = vec![0x04, 0, 0, 1, 0, 0, 200, 8, 1, 0, 0, 0];
        big.extend_from_slice(&[7u8; 128]);
        big.push(0xc4);
        big.extend_from_slice(&[7u8; 72]);
        let first = decode_all(&mut decoder, &big).unwrap();
        assert_eq!(first[0].payload.len(), 200);

        decoder.set_chunk_size(300).unwrap();
        let mut single = vec![0x04, 0, 0, 2, 0, 0, 200, 8, 1, 0, 0, 0];
        single.extend_from_slice(&[9u8; 200]);
        let second = decode_all(&mut decoder, &single).unwrap();
        assert_eq!(second[0].payload, Bytes::from(vec![9u8; 200]));
    }

    #[test]
    fn rejects_bad_chunk_sizes() {
        let mut decoder = ChunkDecoder::new();
        assert_eq!(
            decoder.set_chunk_size(0),
            Err(ChunkError::InvalidChunkSize(0))
        );
        assert_eq!(
            decoder.set_chunk_size(MAX_CHUNK_SIZE + 1),
            Err(ChunkError::InvalidChunkSize(MAX_CHUNK_SIZE + 1))
        );
        assert_eq!(decoder.set_chunk_size(MAX_CHUNK_SIZE), Ok(()));
    }

    #[test]
    fn rejects_too_long_message() {
        let mut decoder = ChunkDecoder::new();
        decoder.set_max_message_len(1000);
        let bytes = [0x04, 0, 0, 1, 0, 0x03, 0xe9, 8, 1, 0, 0, 0];
        assert_eq!(
            decode_all(&mut decoder, &bytes),
            Err(ChunkError::MessageTooLong {
                csid: 4,
                length: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn rejects_compressed_header_on_unknown_csid() {
        for first in [0x44u8, 0x84, 0xc4] {
            let bytes = [first, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(
                decode_all(&mut ChunkDecoder::new(), &bytes),
                Err(ChunkError::MissingFirstHeader {
                    csid: 4,
                    fmt: first >> 6
                })
            );
        }
    }

    #[test]
    fn bounds_partial_messages_in_flight() {
        let mut decoder = ChunkDecoder::new();
        let mut bytes = Vec::new();
        for csid_low in 0..=MAX_PARTIAL_MESSAGES as u8 {
            bytes.extend_from_slice(&[0x00, csid_low, 0, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0]);
            bytes.extend_from_slice(&[0u8; 128]);
        }
        assert_eq!(
            decode_all(&mut decoder, &bytes),
            Err(ChunkError::TooManyPartialMessages)
        );
    }

    #[test]
    fn abort_drops_partial_message() {
        let mut decoder = ChunkDecoder::new();
        let mut bytes = vec![0x04, 0, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 128]);
        assert!(decode_all(&mut decoder, &bytes).unwrap().is_empty());
        decoder.abort(4);
        assert_eq!(decoder.partial_messages, 0);
        // A fmt3 chunk now starts a new 256-byte message.
        let mut next = vec![0xc4];
        next.extend_from_slice(&[1u8; 128]);
        next.push(0xc4);
        next.extend_from_slice(&[1u8; 128]);
        let messages = decode_all(&mut decoder, &next).unwrap();
        assert_eq!(messages[0].payload, Bytes::from(vec![1u8; 256]));
    }

    #[test]
    fn encoder_compresses_headers() {
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        encoder.encode(&raw(4, 0, 8, 1, &[1, 2]), &mut out);
        assert_eq!(out.len(), 12 + 2);
        out.clear();
        encoder.encode(&raw(4, 20, 8, 1, &[3, 4, 5]), &mut out);
        assert_eq!(&out[..], &[0x44, 0, 0, 20, 0, 0, 3, 8, 3, 4, 5]);
        out.clear();
        encoder.encode(&raw(4, 50, 8, 1, &[3, 4, 5]), &mut out);
        assert_eq!(&out[..], &[0x84, 0, 0, 30, 3, 4, 5]);
        out.clear();
        encoder.encode(&raw(4, 80, 8, 1, &[6, 7, 8]), &mut out);
        assert_eq!(&out[..], &[0xc4, 6, 7, 8]);

        encoder.set_header_compression(false);
        out.clear();
        encoder.encode(&raw(4, 110, 8, 1, &[6, 7, 8]), &mut out);
        assert_eq!(out[0], 0x04);
        assert_eq!(out.len(), 12 + 3);
    }

    #[test]
    fn encoder_repeats_extended_timestamp_in_continuations() {
        let msg = raw(6, 0x0123_4567, 9, 1, &[0u8; 300]);
        let bytes = encode_standalone(128, &msg);
        let ext = 0x0123_4567u32.to_be_bytes();
        assert_eq!(&bytes[1..4], &[0xff, 0xff, 0xff]);
        assert_eq!(&bytes[12..16], &ext);
        let second = 16 + 128;
        assert_eq!(bytes[second], 0xc6);
        assert_eq!(&bytes[second + 1..second + 5], &ext);
        assert_eq!(
            decode_all(&mut ChunkDecoder::new(), &bytes).unwrap(),
            vec![msg]
        );
    }

    fn arb_message() -> impl Strategy<Value = RawMessage> {
        (
            prop_oneof![Just(2u32), Just(3), Just(4), Just(6), Just(64), Just(400)],
            prop_oneof![
                0u32..100_000,
                Just(0x00FF_FFFE),
                Just(0x00FF_FFFF),
                any::<u32>()
            ],
            prop_oneof![Just(8u8), Just(9), Just(20)],
            prop_oneof![Just(0u32), Just(1), any::<u32>()],
            prop::collection::vec(any::<u8>(), 0..700),
        )
            .prop_map(
                |(csid, timestamp, type_id, stream_id, payload)| RawMessage {
                    csid,
                    timestamp,
                    type_id,
                    stream_id,
                    payload: Bytes::from(payload),
                },
            )
    }

    /// Feeds `bytes` to a decoder in pieces of the given sizes.
    fn decode_in_pieces(
        decoder: &mut ChunkDecoder,
        bytes: &[u8],
        pieces: &[usize],
    ) -> Vec<RawMessage> {
        let mut buf = BytesMut::new();
        let mut rest = bytes;
        let mut messages = Vec::new();
        let mut sizes = pieces.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(message) = decoder.decode(&mut buf).unwrap() {
                messages.push(message);
            }
        }
        assert!(buf.is_empty());
        messages
    }

    proptest! {
        #[test]
        fn stateful_encoder_round_trips(
            messages in prop::collection::vec(arb_message(), 1..20),
            chunk_size in 1u32..400,
            pieces in prop::collection::vec(1usize..500, 1..8),
        ) {
            let mut encoder = ChunkEncoder::new();
            encoder.set_chunk_size(chunk_size);
            let mut out = BytesMut::new();
            for message in &messages {
                encoder.encode(message, &mut out);
            }
            let mut decoder = ChunkDecoder::new();
            decoder.set_chunk_size(chunk_size).unwrap();
            prop_assert_eq!(decode_in_pieces(&mut decoder, &out, &pieces), messages);
        }

        #[test]
        fn standalone_round_trips_after_stateful_traffic(
            stateful in prop::collection::vec(arb_message(), 0..6),
            standalone in prop::collection::vec(arb_message(), 1..10),
            chunk_size in 1u32..400,
        ) {
            // Stateful messages on a csid the standalone ones never use, the
            // way a compressing encoder may be mixed with shared media bytes.
            let mut encoder = ChunkEncoder::new();
            encoder.set_chunk_size(chunk_size);
            let mut out = BytesMut::new();
            let mut expected = Vec::new();
            for message in &stateful {
                let message = RawMessage { csid: 3, ..message.clone() };
                encoder.encode(&message, &mut out);
                expected.push(message);
            }
            for message in &standalone {
                let message = RawMessage { csid: 7, ..message.clone() };
                out.extend_from_slice(&encode_standalone(chunk_size, &message));
                expected.push(message);
            }
            let mut decoder = ChunkDecoder::new();
            decoder.set_chunk_size(chunk_size).unwrap();
            prop_assert_eq!(decode_in_pieces(&mut decoder, &out, &[4096]), expected);
        }

        #[test]
        fn uncompressed_encoder_interleaves_with_standalone_on_same_csid(
            messages in prop::collection::vec((arb_message(), any::<bool>()), 1..16),
            chunk_size in 1u32..400,
        ) {
            // How the server session and the hub's shared frame bytes meet
            // on one player connection.
            let mut encoder = ChunkEncoder::new();
            encoder.set_header_compression(false);
            encoder.set_chunk_size(chunk_size);
            let mut out = BytesMut::new();
            let mut expected = Vec::new();
            for (message, shared) in &messages {
                let message = RawMessage { csid: 5, ..message.clone() };
                if *shared {
                    out.extend_from_slice(&encode_standalone(chunk_size, &message));
                } else {
                    encoder.encode(&message, &mut out);
                }
                expected.push(message);
            }
            let mut decoder = ChunkDecoder::new();
            decoder.set_chunk_size(chunk_size).unwrap();
            prop_assert_eq!(decode_in_pieces(&mut decoder, &out, &[777]), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            chunk_size in 1u32..300,
        ) {
            let mut decoder = ChunkDecoder::new();
            decoder.set_chunk_size(chunk_size).unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }
}
