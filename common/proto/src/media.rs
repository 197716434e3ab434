//! The media model shared by every protocol Baton speaks.
//!
//! A [`MediaFrame`] is one audio, video or script-data message on the
//! publisher's own timeline. Its payload is exactly the body of an RTMP
//! audio/video/data message, which is also exactly the body of an FLV tag, so
//! the same `Bytes` travel from the publisher's socket to every player
//! without being re-encoded. Classification (keyframe, sequence header,
//! codec) is read from the first bytes of the payload, covering legacy FLV
//! codec ids (AVC, HEVC by the common id 12, AAC) and Enhanced RTMP's
//! FourCC video header.

use bytes::Bytes;

/// What a frame carries; the numeric values are the RTMP message type ids
/// and FLV tag types, which agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
    /// Script data, e.g. `onMetaData`.
    Data,
}

impl MediaKind {
    /// RTMP message type id == FLV tag type.
    pub fn type_id(self) -> u8 {
        match self {
            MediaKind::Audio => 8,
            MediaKind::Video => 9,
            MediaKind::Data => 18,
        }
    }

    pub fn from_type_id(type_id: u8) -> Option<Self> {
        match type_id {
            8 => Some(MediaKind::Audio),
            9 => Some(MediaKind::Video),
            18 => Some(MediaKind::Data),
            _ => None,
        }
    }
}

/// One audio, video or data message with its timestamp in milliseconds on
/// the publisher's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// Video codecs Baton recognises (for the API and for GOP handling; payloads
/// of any codec are forwarded untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Avc,
    Hevc,
    Av1,
    Vp9,
    Other(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Mp3,
    Opus,
    Other(u8),
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::Avc => "H264",
            VideoCodec::Hevc => "H265",
            VideoCodec::Av1 => "AV1",
            VideoCodec::Vp9 => "VP9",
            VideoCodec::Other(_) => "other",
        }
    }
}

impl AudioCodec {
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Aac => "AAC",
            AudioCodec::Mp3 => "MP3",
            AudioCodec::Opus => "Opus",
            AudioCodec::Other(_) => "other",
        }
    }
}

/// The AMF0 encoding of the string `onMetaData`.
const ON_METADATA: &[u8] = b"\x02\x00\x0aonMetaData";
/// Enhanced RTMP: bit 7 of the first video byte marks the extended header.
const VIDEO_EX_HEADER: u8 = 0x80;
const FOURCC_AVC1: u32 = u32::from_be_bytes(*b"avc1");
const FOURCC_HVC1: u32 = u32::from_be_bytes(*b"hvc1");
const FOURCC_AV01: u32 = u32::from_be_bytes(*b"av01");
const FOURCC_VP09: u32 = u32::from_be_bytes(*b"vp09");

impl MediaFrame {
    pub fn new(kind: MediaKind, timestamp: u32, payload: Bytes) -> Self {
        MediaFrame {
            kind,
            timestamp,
            payload,
        }
    }

    pub fn is_video(&self) -> bool {
        self.kind == MediaKind::Video
    }

    pub fn is_audio(&self) -> bool {
        self.kind == MediaKind::Audio
    }

    /// An `onMetaData` script-data frame (AMF0 string `onMetaData` first).
    pub fn is_metadata(&self) -> bool {
        self.kind == MediaKind::Data && self.payload.starts_with(ON_METADATA)
    }

    /// A video frame a decoder can start on (FLV frame type 1), excluding
    /// sequence headers, which are configuration rather than pictures.
    pub fn is_keyframe(&self) -> bool {
        if self.kind != MediaKind::Video || self.is_sequence_header() {
            return false;
        }
        match self.payload.first() {
            Some(&b) if b & VIDEO_EX_HEADER != 0 => (b >> 4) & 0x07 == 1,
            Some(&b) => b >> 4 == 1,
            None => false,
        }
    }

    /// A codec configuration record: AVC/HEVC decoder configuration, an
    /// Enhanced RTMP `SequenceStart`, or an AAC AudioSpecificConfig.
    pub fn is_sequence_header(&self) -> bool {
        let p = &self.payload;
        match self.kind {
            MediaKind::Video => match p.first() {
                Some(&b) if b & VIDEO_EX_HEADER != 0 => b & 0x0f == 0,
                Some(&b) => matches!(b & 0x0f, 7 | 12) && p.get(1) == Some(&0),
                None => false,
            },
            MediaKind::Audio => p.first().map(|b| b >> 4) == Some(10) && p.get(1) == Some(&0),
            MediaKind::Data => false,
        }
    }

    pub fn video_codec(&self) -> Option<VideoCodec> {
        if self.kind != MediaKind::Video {
            return None;
        }
        let b = *self.payload.first()?;
        if b & VIDEO_EX_HEADER != 0 {
            let fourcc = u32::from_be_bytes(self.payload.get(1..5)?.try_into().ok()?);
            return Some(match fourcc {
                FOURCC_AVC1 => VideoCodec::Avc,
                FOURCC_HVC1 => VideoCodec::Hevc,
                FOURCC_AV01 => VideoCodec::Av1,
                FOURCC_VP09 => VideoCodec::Vp9,
                other => VideoCodec::Other(other),
            });
        }
        Some(match b & 0x0f {
            7 => VideoCodec::Avc,
            12 => VideoCodec::Hevc,
            other => VideoCodec::Other(u32::from(other)),
        })
    }

    pub fn audio_codec(&self) -> Option<AudioCodec> {
        if self.kind != MediaKind::Audio {
            return None;
        }
        Some(match self.payload.first()? >> 4 {
            10 => AudioCodec::Aac,
            2 | 14 => AudioCodec::Mp3,
            13 => AudioCodec::Opus,
            other => AudioCodec::Other(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(bytes: &'static [u8]) -> MediaFrame {
        MediaFrame::new(MediaKind::Video, 0, Bytes::from_static(bytes))
    }

    #[test]
    fn classifies_avc() {
        assert!(video(&[0x17, 0, 0, 0, 0]).is_sequence_header());
        assert!(!video(&[0x17, 0, 0, 0, 0]).is_keyframe());
        assert!(video(&[0x17, 1, 0, 0, 0]).is_keyframe());
        assert!(!video(&[0x27, 1, 0, 0, 0]).is_keyframe());
        assert_eq!(video(&[0x27, 1]).video_codec(), Some(VideoCodec::Avc));
    }

    #[test]
    fn classifies_enhanced_rtmp_hevc() {
        // ex header, frame type 1 (key), packet type 0 (SequenceStart)
        assert!(video(&[0x90, b'h', b'v', b'c', b'1']).is_sequence_header());
        // packet type 1 (CodedFrames), key
        let key = video(&[0x91, b'h', b'v', b'c', b'1', 0, 0, 0]);
        assert!(key.is_keyframe());
        assert_eq!(key.video_codec(), Some(VideoCodec::Hevc));
        // inter frame
        assert!(!video(&[0xa1, b'h', b'v', b'c', b'1']).is_keyframe());
    }

    #[test]
    fn classifies_aac() {
        let hdr = MediaFrame::new(
            MediaKind::Audio,
            0,
            Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
        );
        assert!(hdr.is_sequence_header());
        let raw = MediaFrame::new(MediaKind::Audio, 0, Bytes::from_static(&[0xaf, 1, 0x21]));
        assert!(!raw.is_sequence_header());
        assert_eq!(raw.audio_codec(), Some(AudioCodec::Aac));
    }

    #[test]
    fn empty_payloads_are_harmless() {
        let empty = MediaFrame::new(MediaKind::Video, 0, Bytes::new());
        assert!(!empty.is_keyframe());
        assert!(!empty.is_sequence_header());
        assert_eq!(empty.video_codec(), None);
    }
}
