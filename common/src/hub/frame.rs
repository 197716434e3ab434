//! A frame as the hub stores it: the publisher's [`MediaFrame`] plus its
//! wire encodings, each computed at most once and then shared.
//!
//! This is where "encode once, share the bytes with every player" is kept:
//! the first RTMP player to need a frame chunks it, the first HTTP-FLV
//! player frames it as a tag, and every other player of the stream writes
//! the very same `Bytes` (a reference-count bump, never a payload copy).

use std::sync::OnceLock;

use bytes::Bytes;

use crate::flv;
use crate::media::MediaFrame;
use crate::rtmp::chunk::encode_standalone;
use crate::rtmp::session::{frame_message, OUT_CHUNK_SIZE, PLAY_STREAM_ID};

#[derive(Debug)]
pub struct SharedFrame {
    pub frame: MediaFrame,
    rtmp: OnceLock<Bytes>,
    flv: OnceLock<Bytes>,
}

impl SharedFrame {
    pub fn new(frame: MediaFrame) -> Self {
        SharedFrame {
            frame,
            rtmp: OnceLock::new(),
            flv: OnceLock::new(),
        }
    }

    /// The frame as RTMP chunks for a player on [`PLAY_STREAM_ID`] with our
    /// [`OUT_CHUNK_SIZE`]: a fmt-0 first chunk, so it does not depend on what
    /// was written before it on the connection.
    pub fn rtmp_chunks(&self) -> &Bytes {
        self.rtmp
            .get_or_init(|| encode_rtmp(&self.frame, PLAY_STREAM_ID))
    }

    /// The frame as one complete FLV tag.
    pub fn flv_tag(&self) -> &Bytes {
        self.flv.get_or_init(|| flv::encode_tag(&self.frame))
    }

    pub fn wire_len(&self) -> usize {
        self.frame.payload.len()
    }
}

/// A frame as standalone RTMP chunks (fmt-0 first chunk, [`OUT_CHUNK_SIZE`])
/// on message stream `stream_id`, on the conventional chunk stream for its
/// kind. Shared encodings use [`PLAY_STREAM_ID`]; a player on another
/// stream id gets its own.
pub fn encode_rtmp(frame: &MediaFrame, stream_id: u32) -> Bytes {
    encode_standalone(OUT_CHUNK_SIZE, &frame_message(stream_id, frame))
}
