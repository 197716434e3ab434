//! Synthetic H.264/AAC-shaped media for publishers that run without ffmpeg.
//!
//! The payloads carry correct FLV video/audio tag headers (so servers
//! classify sequence headers, keyframes and inter frames exactly as they
//! would real ones) around pseudo-random filler: an AVC sequence header
//! (`0x17 0x00` + an AVCDecoderConfigurationRecord), keyframes
//! (`0x17 0x01`, one IDR NAL unit), inter frames (`0x27 0x01`, one non-IDR
//! NAL unit), an AAC sequence header (`0xaf 0x00 0x12 0x10`) and raw AAC
//! frames (`0xaf 0x01`). Nothing here decodes to a picture; it is shaped
//! traffic.

use std::time::Duration;

use baton_common::media::{MediaFrame, MediaKind};
use bytes::{BufMut, Bytes, BytesMut};

/// 44.1 kHz AAC-LC frames of 1024 samples: about 43 per second.
pub const AAC_SAMPLE_RATE: u64 = 44_100;
const AAC_FRAME_SAMPLES: u64 = 1024;

/// An AVC sequence header for 1280x720 High profile (real SPS/PPS bytes).
pub fn avc_sequence_header() -> Bytes {
    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut b = BytesMut::with_capacity(16 + SPS.len() + PPS.len());
    b.put_slice(&[0x17, 0x00, 0x00, 0x00, 0x00]);
    // configurationVersion, profile, compatibility, level, lengthSize 4, 1 SPS.
    b.put_slice(&[0x01, SPS[1], SPS[2], SPS[3], 0xff, 0xe1]);
    b.put_u16(SPS.len() as u16);
    b.put_slice(SPS);
    b.put_u8(1);
    b.put_u16(PPS.len() as u16);
    b.put_slice(PPS);
    b.freeze()
}

/// AAC-LC, 44.1 kHz, stereo AudioSpecificConfig.
pub fn aac_sequence_header() -> Bytes {
    Bytes::from_static(&[0xaf, 0x00, 0x12, 0x10])
}

/// Deterministic filler (xorshift), so payloads are not trivially
/// compressible and differ between frames.
fn filler(out: &mut BytesMut, len: usize, seed: u64) {
    let mut x = seed | 1;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.put_u8(x as u8);
    }
}

/// A video frame of `size` bytes in total (minimum 10): a keyframe with one
/// IDR NAL unit, or an inter frame with one non-IDR slice.
pub fn avc_frame(keyframe: bool, size: usize, seed: u64) -> Bytes {
    let size = size.max(10);
    let nal_len = size - 9;
    let mut b = BytesMut::with_capacity(size);
    b.put_u8(if keyframe { 0x17 } else { 0x27 });
    b.put_slice(&[0x01, 0x00, 0x00, 0x00]); // NALU packet, composition time 0
    b.put_u32(nal_len as u32);
    b.put_u8(if keyframe { 0x65 } else { 0x41 });
    filler(&mut b, nal_len - 1, seed);
    b.freeze()
}

/// A raw AAC frame of `size` bytes in total (minimum 3).
pub fn aac_frame(size: usize, seed: u64) -> Bytes {
    let size = size.max(3);
    let mut b = BytesMut::with_capacity(size);
    b.put_slice(&[0xaf, 0x01]);
    filler(&mut b, size - 2, seed);
    b.freeze()
}

/// Shape of a real-time synthetic stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    pub fps: u32,
    /// Keyframe every this many video frames.
    pub gop_frames: u32,
    pub key_bytes: usize,
    pub inter_bytes: usize,
    pub audio_bytes: usize,
}

impl StreamShape {
    /// 30 fps, a keyframe every 2 s, audio at 64 kbit/s (or a tenth of the
    /// total if that is smaller), keyframes ten times the size of inter
    /// frames, adding up to `bitrate` bits per second.
    pub fn for_bitrate(bitrate: u64) -> Self {
        let fps = 30u32;
        let gop_frames = 60u32;
        let audio_bps = 64_000.min(bitrate / 10);
        let audio_fps = AAC_SAMPLE_RATE as f64 / AAC_FRAME_SAMPLES as f64;
        let audio_bytes = (audio_bps as f64 / 8.0 / audio_fps).round() as usize;
        let video_bytes_per_gop =
            (bitrate - audio_bps) as f64 / 8.0 * f64::from(gop_frames) / f64::from(fps);
        // One keyframe worth ten inter frames plus gop_frames-1 inter frames.
        let inter = video_bytes_per_gop / f64::from(gop_frames - 1 + 10);
        StreamShape {
            fps,
            gop_frames,
            key_bytes: (inter * 10.0) as usize,
            inter_bytes: inter as usize,
            audio_bytes,
        }
    }
}

/// The frames of a synthetic stream in timestamp order, each with the
/// offset from the start at which a real-time publisher sends it. Starts
/// with both sequence headers.
#[derive(Debug)]
pub struct SyntheticStream {
    shape: StreamShape,
    headers_sent: u8,
    video_n: u64,
    audio_n: u64,
    key: Bytes,
    inter: Bytes,
    audio: Bytes,
}

impl SyntheticStream {
    pub fn new(shape: StreamShape) -> Self {
        SyntheticStream {
            shape,
            headers_sent: 0,
            video_n: 0,
            audio_n: 0,
            key: avc_frame(true, shape.key_bytes, 1),
            inter: avc_frame(false, shape.inter_bytes, 2),
            audio: aac_frame(shape.audio_bytes, 3),
        }
    }

    fn video_ms(&self) -> u64 {
        self.video_n * 1000 / u64::from(self.shape.fps)
    }

    fn audio_ms(&self) -> u64 {
        self.audio_n * AAC_FRAME_SAMPLES * 1000 / AAC_SAMPLE_RATE
    }
}

impl Iterator for SyntheticStream {
    type Item = (Duration, MediaFrame);

    fn next(&mut self) -> Option<Self::Item> {
        match self.headers_sent {
            0 => {
                self.headers_sent = 1;
                let f = MediaFrame::new(MediaKind::Video, 0, avc_sequence_header());
                return Some((Duration::ZERO, f));
            }
            1 => {
                self.headers_sent = 2;
                let f = MediaFrame::new(MediaKind::Audio, 0, aac_sequence_header());
                return Some((Duration::ZERO, f));
            }
            _ => {}
        }
        let (v, a) = (self.video_ms(), self.audio_ms());
        let (ms, frame) = if v <= a {
            // Frame index within its GOP; 0 is the keyframe.
            let key = self.video_n.rem_euclid(u64::from(self.shape.gop_frames)) == 0;
            let payload = if key { &self.key } else { &self.inter };
            self.video_n += 1;
            (
                v,
                MediaFrame::new(MediaKind::Video, v as u32, payload.clone()),
            )
        } else {
            self.audio_n += 1;
            (
                a,
                MediaFrame::new(MediaKind::Audio, a as u32, self.audio.clone()),
            )
        };
        Some((Duration::from_millis(ms), frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_classify_like_real_ones() {
        let v = |p: Bytes| MediaFrame::new(MediaKind::Video, 0, p);
        assert!(v(avc_sequence_header()).is_sequence_header());
        assert!(v(avc_frame(true, 5000, 1)).is_keyframe());
        let inter = v(avc_frame(false, 1000, 1));
        assert!(!inter.is_keyframe() && !inter.is_sequence_header());
        assert_eq!(inter.payload.len(), 1000);
        let a = MediaFrame::new(MediaKind::Audio, 0, aac_sequence_header());
        assert!(a.is_sequence_header());
        let raw = MediaFrame::new(MediaKind::Audio, 0, aac_frame(186, 1));
        assert!(!raw.is_sequence_header() && raw.payload.len() == 186);
    }

    #[test]
    fn stream_matches_its_bitrate() {
        let shape = StreamShape::for_bitrate(1_000_000);
        let mut bytes = 0usize;
        let mut last = Duration::ZERO;
        let mut keys = 0;
        let mut audio = 0;
        for (at, f) in SyntheticStream::new(shape).take_while(|(at, _)| at.as_secs() < 10) {
            assert!(at >= last, "frames in time order");
            last = at;
            bytes += f.payload.len();
            keys += usize::from(f.is_keyframe());
            audio += usize::from(f.is_audio());
        }
        let bps = bytes as f64 * 8.0 / 10.0;
        assert!((900_000.0..1_100_000.0).contains(&bps), "{bps}");
        assert_eq!(keys, 5);
        assert!((425..=435).contains(&audio), "{audio}");
    }
}
