//! A synthetic AVC + AAC stream for data-plane tests.
//!
//! The bytes look like FLV/RTMP H.264 and AAC to anything that classifies
//! payloads by their first bytes (the origin's GOP cache and codec
//! detection): AVC sequence header `17 00 ..`, keyframes `17 01 ..`, inter
//! frames `27 01 ..`, AAC sequence header `af 00 12 10`, raw AAC `af 01 ..`.
//! They are not decodable pictures; interop tests use ffmpeg for that.
//!
//! Every non-header frame carries a global index (u32, big-endian) right
//! after its codec header — at byte 5 for video, byte 2 for audio — so a
//! test can say exactly which frames a player got. Filler bytes are derived
//! from the index, so payload corruption is caught by comparing bytes.
//! Timestamps are the publisher's: video at `fps`, AAC at 1024 samples per
//! frame at 48 kHz (~21.3 ms), interleaved in timestamp order.

use baton_common::amf0::{self, Amf0Value};
use baton_common::media::{MediaFrame, MediaKind};
use bytes::{BufMut, Bytes, BytesMut};

/// Offset of the frame index inside a video payload (after the 5-byte AVC
/// video tag header).
pub const VIDEO_INDEX_OFFSET: usize = 5;
/// Offset of the frame index inside an audio payload (after `af 01`).
pub const AUDIO_INDEX_OFFSET: usize = 2;

/// The AVC sequence header (AVCDecoderConfigurationRecord with made-up
/// SPS/PPS; only the first bytes matter to the server).
pub const AVC_SEQUENCE_HEADER: &[u8] = &[
    0x17, 0x00, 0x00, 0x00, 0x00, 0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x04, 0x67, 0x64, 0x00,
    0x1f, 0x01, 0x00, 0x04, 0x68, 0xee, 0x3c, 0x80,
];
/// The AAC sequence header: `af 00` + AudioSpecificConfig (AAC-LC, 44.1 kHz
/// stereo; the value only has to look like a header).
pub const AAC_SEQUENCE_HEADER: &[u8] = &[0xaf, 0x00, 0x12, 0x10];

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub fps: u32,
    /// A keyframe every `gop` video frames.
    pub gop: u32,
    pub audio: bool,
    pub metadata: bool,
    /// Filler bytes in an inter frame (keyframes get 4×).
    pub video_size: usize,
    /// Filler bytes in an audio frame.
    pub audio_size: usize,
    /// First frame index (distinguishes successive publishes).
    pub first_index: u32,
    /// Timestamp of the first frame, in ms.
    pub start_ms: u32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            fps: 30,
            gop: 30,
            audio: true,
            metadata: true,
            video_size: 1000,
            audio_size: 200,
            first_index: 0,
            start_ms: 0,
        }
    }
}

/// Generator of the synthetic stream; see the module docs.
#[derive(Debug, Clone)]
pub struct Synth {
    pub config: SynthConfig,
    video_n: u64,
    audio_n: u64,
    next_index: u32,
}

impl Synth {
    pub fn new(config: SynthConfig) -> Self {
        let next_index = config.first_index;
        Synth {
            config,
            video_n: 0,
            audio_n: 0,
            next_index,
        }
    }

    /// Default settings (30 fps, GOP of 30, with audio and metadata).
    pub fn standard() -> Self {
        Self::new(SynthConfig::default())
    }

    /// Default settings with frames numbered from `first_index`.
    pub fn starting_at(first_index: u32) -> Self {
        Self::new(SynthConfig {
            first_index,
            ..SynthConfig::default()
        })
    }

    /// What a publisher sends first: `onMetaData` (if enabled), the AVC and
    /// (if enabled) the AAC sequence headers, all at the start timestamp.
    pub fn headers(&self) -> Vec<MediaFrame> {
        let ts = self.config.start_ms;
        let mut out = Vec::new();
        if self.config.metadata {
            out.push(self.metadata());
        }
        out.push(MediaFrame::new(
            MediaKind::Video,
            ts,
            Bytes::from_static(AVC_SEQUENCE_HEADER),
        ));
        if self.config.audio {
            out.push(MediaFrame::new(
                MediaKind::Audio,
                ts,
                Bytes::from_static(AAC_SEQUENCE_HEADER),
            ));
        }
        out
    }

    /// `["onMetaData", {...}]` as an AMF0 data frame.
    pub fn metadata(&self) -> MediaFrame {
        let mut props = vec![
            ("width", Amf0Value::Number(640.0)),
            ("height", Amf0Value::Number(360.0)),
            ("framerate", Amf0Value::Number(f64::from(self.config.fps))),
            ("videocodecid", Amf0Value::Number(7.0)),
            ("videodatarate", Amf0Value::Number(800.0)),
            ("encoder", Amf0Value::string("baton-tests synth")),
        ];
        if self.config.audio {
            props.push(("audiocodecid", Amf0Value::Number(10.0)));
            props.push(("audiosamplerate", Amf0Value::Number(48000.0)));
            props.push(("stereo", Amf0Value::Boolean(true)));
        }
        let payload = amf0::encode_all(&[
            Amf0Value::string("onMetaData"),
            Amf0Value::EcmaArray(props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        ]);
        MediaFrame::new(MediaKind::Data, self.config.start_ms, payload)
    }

    fn video_ts(&self) -> u64 {
        u64::from(self.config.start_ms) + self.video_n * 1000 / u64::from(self.config.fps.max(1))
    }

    fn audio_ts(&self) -> u64 {
        u64::from(self.config.start_ms) + self.audio_n * 1024 * 1000 / 48_000
    }

    /// Whether the next video frame will be a keyframe.
    pub fn next_video_is_key(&self) -> bool {
        self.video_n.checked_rem(u64::from(self.config.gop.max(1))) == Some(0)
    }

    /// Index the next frame will carry.
    pub fn next_index(&self) -> u32 {
        self.next_index
    }

    /// The next media frame in timestamp order (video first on ties).
    pub fn next_frame(&mut self) -> MediaFrame {
        let index = self.next_index;
        self.next_index = self.next_index.wrapping_add(1);
        if self.config.audio && self.audio_ts() < self.video_ts() {
            let ts = self.audio_ts() as u32;
            self.audio_n += 1;
            let mut p = BytesMut::with_capacity(AUDIO_INDEX_OFFSET + 4 + self.config.audio_size);
            p.put_slice(&[0xaf, 0x01]);
            p.put_u32(index);
            put_filler(&mut p, index, self.config.audio_size);
            return MediaFrame::new(MediaKind::Audio, ts, p.freeze());
        }
        let key = self.next_video_is_key();
        let ts = self.video_ts() as u32;
        self.video_n += 1;
        let size = if key {
            self.config.video_size * 4
        } else {
            self.config.video_size
        };
        let mut p = BytesMut::with_capacity(VIDEO_INDEX_OFFSET + 4 + size);
        p.put_slice(&[if key { 0x17 } else { 0x27 }, 0x01, 0x00, 0x00, 0x00]);
        p.put_u32(index);
        put_filler(&mut p, index, size);
        MediaFrame::new(MediaKind::Video, ts, p.freeze())
    }

    /// The next `n` frames.
    pub fn frames(&mut self, n: usize) -> Vec<MediaFrame> {
        (0..n).map(|_| self.next_frame()).collect()
    }

    /// Frames up to (not including) the next keyframe after the current
    /// position; at a keyframe boundary that is one whole GOP.
    pub fn gop(&mut self) -> Vec<MediaFrame> {
        let mut out = vec![self.next_frame()];
        loop {
            let peek = self.clone().next_frame();
            if peek.is_keyframe() {
                return out;
            }
            out.push(self.next_frame());
        }
    }

    /// `n` consecutive [`Synth::gop`]s.
    pub fn gops(&mut self, n: usize) -> Vec<MediaFrame> {
        (0..n).flat_map(|_| self.gop()).collect()
    }
}

/// Deterministic filler derived from `index` (xorshift), so any corruption
/// or mix-up of payloads shows up in a byte comparison.
fn put_filler(out: &mut BytesMut, index: u32, len: usize) {
    let mut x = u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.put_u8(x as u8);
    }
}

/// The index a synthetic media frame carries (None for headers, metadata
/// and foreign frames).
pub fn frame_index(frame: &MediaFrame) -> Option<u32> {
    if frame.is_sequence_header() {
        return None;
    }
    let offset = match (frame.kind, frame.payload.first()) {
        (MediaKind::Video, Some(0x17 | 0x27)) if frame.payload.get(1) == Some(&1) => {
            VIDEO_INDEX_OFFSET
        }
        (MediaKind::Audio, Some(0xaf)) if frame.payload.get(1) == Some(&1) => AUDIO_INDEX_OFFSET,
        _ => return None,
    };
    let bytes = frame.payload.get(offset..offset + 4)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Bytes of filler that make a video frame of about `total` bytes.
pub fn video_size_for(total: usize) -> usize {
    total.saturating_sub(VIDEO_INDEX_OFFSET + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_classify_and_carry_their_index() {
        let mut s = Synth::standard();
        let headers = s.headers();
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[0].kind, MediaKind::Data);
        assert!(headers[1].is_sequence_header() && headers[1].is_video());
        assert!(headers[2].is_sequence_header() && headers[2].is_audio());
        let frames = s.frames(200);
        assert!(frames[0].is_keyframe());
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(frame_index(f), Some(i as u32));
        }
        let mut last = 0;
        for f in &frames {
            assert!(f.timestamp >= last, "timestamps ascend");
            last = f.timestamp;
        }
        let keys = frames.iter().filter(|f| f.is_keyframe()).count();
        let video = frames.iter().filter(|f| f.is_video()).count();
        assert_eq!(keys, video.div_ceil(30));
    }

    #[test]
    fn gop_ends_before_the_next_keyframe() {
        let mut s = Synth::standard();
        let g1 = s.gop();
        assert!(g1[0].is_keyframe());
        assert_eq!(g1.iter().filter(|f| f.is_keyframe()).count(), 1);
        assert_eq!(g1.iter().filter(|f| f.is_video()).count(), 30);
        let g2 = s.gop();
        assert!(g2[0].is_keyframe());
        assert_eq!(g2[0].timestamp, 1000);
    }
}
