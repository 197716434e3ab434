//! The connection core both ends of RTMP share once the handshake is done:
//! decoding whole messages from the chunk stream, obeying the peer's
//! protocol control (Set Chunk Size, Abort, Window Acknowledgement Size),
//! answering pings, acknowledging received bytes per the peer's window,
//! and encoding what we send. The server and client sessions differ only
//! in the commands they speak; everything here is written once.

use bytes::{Bytes, BytesMut};

use crate::rtmp::chunk::{ChunkDecoder, ChunkEncoder, RawMessage};
use crate::rtmp::message::{RtmpMessage, UserControlEvent};
use crate::rtmp::session::{SessionError, DEFAULT_WINDOW_ACK_SIZE};

/// Decoder, encoder and acknowledgement state of one connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) decoder: ChunkDecoder,
    pub(crate) outbox: Outbox,
    pub(crate) acks: AckCounter,
}

impl Link {
    /// `header_compression`: whether our chunk headers may refer to the
    /// previous message on the same chunk stream (servers turn it off so
    /// shared, pre-encoded media can be interleaved with session output).
    pub(crate) fn new(header_compression: bool) -> Self {
        let mut outbox = Outbox::new();
        outbox.set_header_compression(header_compression);
        Link {
            decoder: ChunkDecoder::new(),
            outbox,
            acks: AckCounter::new(),
        }
    }

    /// The next whole message that is not protocol control, with its
    /// message stream id; control messages are applied on the way.
    pub(crate) fn next_message(
        &mut self,
        input: &mut BytesMut,
    ) -> Result<Option<(u32, RtmpMessage)>, SessionError> {
        while let Some(raw) = self.decoder.decode(input)? {
            let (type_id, stream_id) = (raw.type_id, raw.stream_id);
            let payload = raw.payload.clone();
            let message = RtmpMessage::parse(raw).map_err(|source| SessionError::Message {
                type_id,
                stream_id,
                source,
                command: command_header(type_id, &payload),
            })?;
            match message {
                RtmpMessage::SetChunkSize(size) => self.decoder.set_chunk_size(size)?,
                RtmpMessage::Abort { csid } => self.decoder.abort(csid),
                RtmpMessage::WindowAckSize(size) => self.acks.set_window(size),
                RtmpMessage::UserControl(UserControlEvent::PingRequest(time)) => {
                    self.outbox
                        .send(RtmpMessage::UserControl(UserControlEvent::PingResponse(
                            time,
                        )));
                }
                other => return Ok(Some((stream_id, other))),
            }
        }
        Ok(None)
    }

    /// Records `bytes` consumed from the peer and sends an Acknowledgement
    /// when a window boundary was crossed.
    pub(crate) fn count_received(&mut self, bytes: usize) {
        if let Some(sequence) = self.acks.add(bytes) {
            self.outbox.send(RtmpMessage::Acknowledgement { sequence });
        }
    }
}

/// The name and transaction id of an AMF0 command whose later values do
/// not decode (they come first, so a too-deep object after them leaves them
/// readable).
fn command_header(type_id: u8, payload: &[u8]) -> Option<(String, f64)> {
    if type_id != crate::rtmp::message::type_id::COMMAND_AMF0 {
        return None;
    }
    let mut rest = payload;
    let name = crate::amf0::decode(&mut rest).ok()?;
    let transaction_id = crate::amf0::decode(&mut rest).ok()?;
    Some((name.as_str()?.to_owned(), transaction_id.as_f64()?))
}

/// Counts received bytes and says when an Acknowledgement is due.
#[derive(Debug)]
pub(crate) struct AckCounter {
    received: u64,
    acked: u64,
    window: u32,
}

impl AckCounter {
    pub(crate) fn new() -> Self {
        AckCounter {
            received: 0,
            acked: 0,
            window: DEFAULT_WINDOW_ACK_SIZE,
        }
    }

    pub(crate) fn set_window(&mut self, window: u32) {
        if window > 0 {
            self.window = window;
        }
    }

    /// Records `bytes` more received; returns the sequence number to
    /// acknowledge if a window boundary was crossed.
    pub(crate) fn add(&mut self, bytes: usize) -> Option<u32> {
        self.received += bytes as u64;
        if self.received - self.acked < u64::from(self.window) {
            return None;
        }
        self.acked = self.received;
        // The sequence number is the byte count modulo 2^32.
        Some(self.received as u32)
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }
}

/// Encodes outgoing messages into a pending output buffer.
#[derive(Debug)]
pub(crate) struct Outbox {
    encoder: ChunkEncoder,
    out: BytesMut,
}

impl Outbox {
    pub(crate) fn new() -> Self {
        Outbox {
            encoder: ChunkEncoder::new(),
            out: BytesMut::new(),
        }
    }

    pub(crate) fn set_header_compression(&mut self, enabled: bool) {
        self.encoder.set_header_compression(enabled);
    }

    /// Encodes `message`; a Set Chunk Size switches the encoder right after
    /// it, so it applies to the messages that follow.
    pub(crate) fn send(&mut self, message: RtmpMessage) {
        let new_chunk_size = match message {
            RtmpMessage::SetChunkSize(size) => Some(size),
            _ => None,
        };
        self.encoder.encode(&message.into_raw(), &mut self.out);
        if let Some(size) = new_chunk_size {
            self.encoder.set_chunk_size(size);
        }
    }

    pub(crate) fn send_raw(&mut self, raw: &RawMessage) {
        self.encoder.encode(raw, &mut self.out);
    }

    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub(crate) fn chunk_size(&self) -> u32 {
        self.encoder.chunk_size()
    }

    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    pub(crate) fn take(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.out.len()
    }
}
