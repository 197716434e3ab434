//! FLV container: the muxing HTTP-FLV playback needs, and a small sans-IO
//! tag reader for tests, benches and (later) the edge.
//!
//! An FLV tag body is byte-for-byte an RTMP audio/video/data message body,
//! so muxing is only framing: an 11-byte tag header in front of the shared
//! payload and the 4-byte previous-tag-size behind it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::media::{MediaFrame, MediaKind};

/// Length of the FLV file header plus the first PreviousTagSize0 field.
pub const FILE_HEADER_LEN: usize = 13;
const TAG_HEADER_LEN: usize = 11;
const PREVIOUS_TAG_SIZE_LEN: usize = 4;
/// Tags larger than this are refused by the reader (bounded memory). The
/// 24-bit size field allows up to 16 MiB; real tags, even 4K keyframes,
/// stay well below 8 MiB.
pub const MAX_TAG_BODY_LEN: usize = 8 * 1024 * 1024;

/// The FLV file header (signature, version 1, flags) followed by
/// PreviousTagSize0.
pub fn file_header(has_audio: bool, has_video: bool) -> Bytes {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    Bytes::copy_from_slice(&[b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0])
}

/// One complete tag (header, body, previous tag size) in one buffer, ready
/// to be shared by every HTTP-FLV player of a stream.
pub fn encode_tag(frame: &MediaFrame) -> Bytes {
    let body_len = frame.payload.len();
    let mut out = BytesMut::with_capacity(TAG_HEADER_LEN + body_len + PREVIOUS_TAG_SIZE_LEN);
    out.put_u8(frame.kind.type_id());
    put_u24(&mut out, body_len as u32);
    put_u24(&mut out, frame.timestamp & 0x00ff_ffff);
    out.put_u8((frame.timestamp >> 24) as u8);
    put_u24(&mut out, 0);
    out.extend_from_slice(&frame.payload);
    out.put_u32((TAG_HEADER_LEN + body_len) as u32);
    out.freeze()
}

fn put_u24(out: &mut BytesMut, value: u32) {
    out.put_u8((value >> 16) as u8);
    out.put_u8((value >> 8) as u8);
    out.put_u8(value as u8);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    #[error("not an FLV stream (signature {0:02x?})")]
    BadSignature([u8; 3]),
    #[error("FLV tag body of {0} bytes exceeds the {MAX_TAG_BODY_LEN} byte limit")]
    TagTooLarge(usize),
}

/// Incremental FLV reader: feed bytes, take frames. Unknown tag types are
/// skipped.
#[derive(Debug, Default)]
pub struct FlvReader {
    header_done: bool,
}

impl FlvReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the next complete frame from `buf`, consuming its bytes, or
    /// `Ok(None)` when more input is needed.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<MediaFrame>, FlvError> {
        if !self.header_done {
            if buf.len() < FILE_HEADER_LEN {
                return Ok(None);
            }
            if &buf[..3] != b"FLV" {
                return Err(FlvError::BadSignature([buf[0], buf[1], buf[2]]));
            }
            let header_len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
            let skip = header_len.max(9) + PREVIOUS_TAG_SIZE_LEN;
            if buf.len() < skip {
                return Ok(None);
            }
            buf.advance(skip);
            self.header_done = true;
        }
        loop {
            if buf.len() < TAG_HEADER_LEN {
                return Ok(None);
            }
            let tag_type = buf[0] & 0x1f;
            let body_len = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) as usize;
            if body_len > MAX_TAG_BODY_LEN {
                return Err(FlvError::TagTooLarge(body_len));
            }
            let total = TAG_HEADER_LEN + body_len + PREVIOUS_TAG_SIZE_LEN;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let timestamp = u32::from_be_bytes([buf[7], buf[4], buf[5], buf[6]]);
            let mut tag = buf.split_to(total);
            tag.advance(TAG_HEADER_LEN);
            tag.truncate(body_len);
            if let Some(kind) = MediaKind::from_type_id(tag_type) {
                return Ok(Some(MediaFrame::new(kind, timestamp, tag.freeze())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tag_layout_matches_the_spec() {
        let frame = MediaFrame::new(
            MediaKind::Video,
            0x0123_4567,
            Bytes::from_static(&[0x17, 1, 2]),
        );
        let tag = encode_tag(&frame);
        assert_eq!(
            &tag[..],
            &[9, 0, 0, 3, 0x23, 0x45, 0x67, 0x01, 0, 0, 0, 0x17, 1, 2, 0, 0, 0, 14]
        );
    }

    #[test]
    fn reader_rejects_other_formats_and_huge_tags() {
        let mut not_flv = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            FlvReader::new().next_frame(&mut not_flv),
            Err(FlvError::BadSignature(_))
        ));
        let mut huge = BytesMut::from(&file_header(true, true)[..]);
        huge.extend_from_slice(&[9, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            FlvReader::new().next_frame(&mut huge),
            Err(FlvError::TagTooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn reader_reads_back_what_the_muxer_wrote(
            frames in proptest::collection::vec((0u8..3, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            split in 1usize..64,
        ) {
            let frames: Vec<MediaFrame> = frames.into_iter().map(|(k, ts, body)| {
                let kind = [MediaKind::Audio, MediaKind::Video, MediaKind::Data][k as usize];
                MediaFrame::new(kind, ts, Bytes::from(body))
            }).collect();
            let mut stream = BytesMut::from(&file_header(true, true)[..]);
            for f in &frames {
                stream.extend_from_slice(&encode_tag(f));
            }
            // Feed in small pieces to exercise partial input.
            let mut reader = FlvReader::new();
            let mut pending = BytesMut::new();
            let mut read = Vec::new();
            for piece in stream.chunks(split) {
                pending.extend_from_slice(piece);
                while let Some(f) = reader.next_frame(&mut pending).unwrap() {
                    read.push(f);
                }
            }
            prop_assert_eq!(read, frames);
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut reader = FlvReader::new();
            while let Ok(Some(_)) = reader.next_frame(&mut buf) {}
        }
    }
}
