//! Wall-clock send stamps, so a player in another process can tell how
//! late each frame reached it.
//!
//! `baton-bench publish --stamp` writes into every audio and video frame
//! (not the sequence headers) a marker, a sequence number and the time it
//! hands the frame to its socket, in nanoseconds since the Unix epoch
//! (`CLOCK_REALTIME`): publisher and players run on the same machine, so
//! they read the same clock and no synchronisation is involved. A fan-out
//! player subtracts the stamp from the moment its read took the frame out
//! of the socket; sequence gaps are frames it never got.
//!
//! The stamp sits where [`crate::latency`] puts its own (after the FLV
//! video tag header, composition time, NAL length and NAL header byte;
//! after the AAC tag header), with a different marker: servers pass the
//! payload through untouched, so it reads the same over RTMP and HTTP-FLV.

use std::time::{SystemTime, UNIX_EPOCH};

use baton_common::media::{MediaFrame, MediaKind};

use crate::stats::FrameKind;

/// Marks a wall-clock stamp.
const MAGIC: [u8; 4] = *b"BWCK";
/// Marker, sequence number (u64), send time in ns (u64), big-endian.
use crate::latency::STAMP_LEN;
const VIDEO_STAMP_AT: usize = 10;
const AUDIO_STAMP_AT: usize = 2;
/// Body bytes a reader must keep to find a stamp.
pub const PREFIX_NEEDED: usize = VIDEO_STAMP_AT + STAMP_LEN;

/// Nanoseconds since the Unix epoch now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn offset(kind: FrameKind) -> Option<usize> {
    match kind {
        FrameKind::Video => Some(VIDEO_STAMP_AT),
        FrameKind::Audio => Some(AUDIO_STAMP_AT),
        FrameKind::Data => None,
    }
}

/// A copy of `frame` carrying `seq` and `sent_ns`, or `None` when it
/// cannot hold a stamp (sequence headers, data, tiny frames).
pub fn stamp(frame: &MediaFrame, seq: u64, sent_ns: u64) -> Option<MediaFrame> {
    if frame.is_sequence_header() {
        return None;
    }
    let kind = match frame.kind {
        MediaKind::Video => FrameKind::Video,
        MediaKind::Audio => FrameKind::Audio,
        MediaKind::Data => return None,
    };
    let at = offset(kind)?;
    if frame.payload.len() < at + STAMP_LEN {
        return None;
    }
    let payload = crate::latency::splice_stamp(&frame.payload, at, MAGIC, seq, sent_ns);
    Some(MediaFrame::new(frame.kind, frame.timestamp, payload))
}

/// `(seq, sent_ns)` from the first bytes of a frame body, if stamped.
pub fn read(kind: FrameKind, body_prefix: &[u8]) -> Option<(u64, u64)> {
    let at = offset(kind)?;
    let s = body_prefix.get(at..at + STAMP_LEN)?;
    if s[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(s[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(s[12..20].try_into().ok()?);
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{aac_frame, aac_sequence_header, avc_frame};

    #[test]
    fn stamps_round_trip_and_skip_headers() {
        let v = MediaFrame::new(MediaKind::Video, 33, avc_frame(false, 500, 1));
        let s = stamp(&v, 7, 123_456).expect("fits");
        assert_eq!(s.payload.len(), 500);
        assert!(!s.is_keyframe() && !s.is_sequence_header());
        assert_eq!(read(FrameKind::Video, &s.payload), Some((7, 123_456)));
        assert_eq!(read(FrameKind::Video, &v.payload), None);
        let a = MediaFrame::new(MediaKind::Audio, 0, aac_frame(186, 2));
        let s = stamp(&a, 8, 9).expect("fits");
        assert_eq!(
            read(FrameKind::Audio, &s.payload[..PREFIX_NEEDED]),
            Some((8, 9))
        );
        let h = MediaFrame::new(MediaKind::Audio, 0, aac_sequence_header());
        assert!(stamp(&h, 1, 1).is_none());
        assert_eq!(read(FrameKind::Data, &s.payload), None);
    }
}
