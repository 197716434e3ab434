//! Publisher timestamps made sane where they enter Baton, per track, so
//! players never see a clock that runs backwards, stands still or leaps
//! an hour (a player given the same timestamp forever, or one from 2^32
//! ms away, stalls or drops everything after it).
//!
//! One [`TimestampSanitizer`] per publish connection. Per track (video,
//! audio) it compares each frame's timestamp with the previous one of the
//! same track. Three pathologies are corrected, each by continuing from the
//! last delivered timestamp plus the track's observed frame interval:
//!
//! - **backward**: the timestamp is lower than the previous one (a clock
//!   reset, a 2^32 wrap forced early, garbage);
//! - **stuck**: the same timestamp on more than [`STUCK_REPEATS`] frames in
//!   a row (an encoder sending 0 forever);
//! - **jump**: a step forward that exceeds the time that passed between
//!   the two frames' arrival by more than [`MAX_FORWARD_JUMP_MS`] (a pause
//!   whose timestamps follow the wall clock is not a jump).
//!
//! After a correction the track keeps the shift, so the frames that follow
//! continue smoothly from the corrected one. A track whose timestamps never
//! go backwards, never stand still for more than [`STUCK_REPEATS`] repeats
//! and never outrun their arrival by that much passes bit-exact: a
//! well-behaved publisher is never touched. Audio and video are separate
//! tracks (small negative differences between them are normal
//! interleaving, not an error). Sequence headers, metadata and other data
//! are only kept from going backwards on their track; they never start an
//! event.
//!
//! The reference is SRS's `time_jitter` (`full`: start at zero and force a
//! mixed-stream monotonic clock with a 250 ms tolerance, which rewrites
//! well-behaved streams too; `zero`: only start at zero; `off`). Baton's
//! [`TimestampPolicy::Correct`] is `full` without rewriting healthy
//! streams and without the start at zero (the edge's timelines and
//! `baton_resume` rely on a publisher's own timestamps; a republish is
//! already continued by [`crate::splice`]); [`TimestampPolicy::Off`] is
//! `off`. SRS's `zero` has no equivalent.
//!
//! Sans-IO and clock-free: the caller passes each frame's arrival time.

use serde::{Deserialize, Serialize};

use crate::media::{MediaFrame, MediaKind};

/// Equal timestamps tolerated on a track before it is stuck (a header and
/// its keyframe, two audio frames in one millisecond).
pub const STUCK_REPEATS: u32 = 3;
/// How far a step may run ahead of the arrival clock before it is a jump.
pub const MAX_FORWARD_JUMP_MS: i64 = 10_000;
/// Largest step taken as a frame interval.
const MAX_INTERVAL_MS: u32 = 1_000;
/// Intervals assumed until a track shows its own.
const DEFAULT_VIDEO_INTERVAL_MS: u32 = 33;
const DEFAULT_AUDIO_INTERVAL_MS: u32 = 23;

/// What is done with publishers' timestamps (`timestamp_correction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampPolicy {
    /// Correct backward, stuck and jumping timestamps per track; leave
    /// well-behaved tracks untouched.
    #[default]
    Correct,
    /// Pass timestamps as the publisher sent them.
    Off,
}

/// Which pathology a correction fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pathology {
    Backward,
    Stuck,
    Jump,
}

impl Pathology {
    /// For metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Pathology::Backward => "backward",
            Pathology::Stuck => "stuck",
            Pathology::Jump => "jump",
        }
    }
}

/// The start of a correction event (reported once; the frames that follow
/// in the same event are corrected silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    pub kind: MediaKind,
    pub pathology: Pathology,
    /// What the publisher sent, and what the previous frame had.
    pub received: u32,
    pub previous: u32,
    /// What players get instead.
    pub delivered: u32,
}

impl Correction {
    /// Log the event (once per event, not per frame) and count it
    /// (`baton_timestamp_corrections_total{reason}`).
    pub fn report(&self) {
        metrics::counter!("baton_timestamp_corrections_total", "reason" => self.pathology.as_str())
            .increment(1);
        tracing::warn!(
            track = ?self.kind,
            reason = self.pathology.as_str(),
            received = self.received,
            previous = self.previous,
            delivered = self.delivered,
            "publisher timestamp corrected; the track continues from the last timestamp plus its frame interval"
        );
    }
}

/// One track's clock.
#[derive(Debug, Default)]
struct Track {
    /// Last media timestamp received, and when (arrival ms).
    last_in: Option<(u32, u64)>,
    /// Last timestamp delivered on this track (headers included).
    last_out: Option<u32>,
    /// Added (wrapping) to received timestamps; 0 until a correction.
    shift: u32,
    interval: Option<u32>,
    /// Consecutive media frames with the previous frame's timestamp.
    repeats: u32,
    stuck: bool,
}

/// `a < b` on the u32 clock, across a wrap (RTMP timestamps are mod 2^32).
fn before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

impl Track {
    fn clamp(&mut self, ts: u32) -> u32 {
        let out = ts.wrapping_add(self.shift);
        let out = match self.last_out {
            Some(last) if before(out, last) => last,
            _ => out,
        };
        self.last_out = Some(out);
        out
    }

    fn media(
        &mut self,
        ts: u32,
        arrival_ms: u64,
        default_interval: u32,
    ) -> (u32, Option<Pathology>) {
        let Some((prev, prev_arrival)) = self.last_in.replace((ts, arrival_ms)) else {
            return (self.clamp(ts), None);
        };
        let step = i64::from(ts.wrapping_sub(prev) as i32);
        let elapsed = i64::try_from(arrival_ms.saturating_sub(prev_arrival)).unwrap_or(i64::MAX);
        self.repeats = if step == 0 { self.repeats + 1 } else { 0 };
        let pathology = if step < 0 {
            Some(Pathology::Backward)
        } else if step == 0 && self.repeats > STUCK_REPEATS {
            Some(Pathology::Stuck)
        } else if step.saturating_sub(elapsed) > MAX_FORWARD_JUMP_MS {
            Some(Pathology::Jump)
        } else {
            None
        };
        let Some(pathology) = pathology else {
            if step > 0 && step <= i64::from(MAX_INTERVAL_MS) {
                self.interval = Some(step as u32);
            }
            if step > 0 {
                self.stuck = false;
            }
            return (self.clamp(ts), None);
        };
        let interval = self.interval.unwrap_or(default_interval);
        let out = self
            .last_out
            .unwrap_or(prev.wrapping_add(self.shift))
            .wrapping_add(interval);
        self.shift = out.wrapping_sub(ts);
        self.last_out = Some(out);
        let new_event = !(pathology == Pathology::Stuck && self.stuck);
        self.stuck = pathology == Pathology::Stuck;
        (out, new_event.then_some(pathology))
    }
}

/// Per-track timestamp correction for one publish (see the module doc).
#[derive(Debug)]
pub struct TimestampSanitizer {
    policy: TimestampPolicy,
    video: Track,
    audio: Track,
    data: Track,
    rewritten: u64,
}

impl TimestampSanitizer {
    pub fn new(policy: TimestampPolicy) -> Self {
        TimestampSanitizer {
            policy,
            video: Track::default(),
            audio: Track::default(),
            data: Track::default(),
            rewritten: 0,
        }
    }

    /// Frames whose timestamp was changed so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Correct `frame`'s timestamp in place; `arrival_ms` is when it
    /// arrived (any monotonic millisecond clock). Returns the correction
    /// that starts an event, once per event.
    pub fn sanitize(&mut self, frame: &mut MediaFrame, arrival_ms: u64) -> Option<Correction> {
        if self.policy == TimestampPolicy::Off {
            return None;
        }
        let received = frame.timestamp;
        let header = frame.is_sequence_header() || frame.is_metadata();
        let (track, default_interval) = match frame.kind {
            MediaKind::Video => (&mut self.video, DEFAULT_VIDEO_INTERVAL_MS),
            MediaKind::Audio => (&mut self.audio, DEFAULT_AUDIO_INTERVAL_MS),
            MediaKind::Data => (&mut self.data, 0),
        };
        let previous = track.last_in.map_or(received, |(ts, _)| ts);
        let (delivered, pathology) = if header || frame.kind == MediaKind::Data {
            (track.clamp(received), None)
        } else {
            track.media(received, arrival_ms, default_interval)
        };
        if delivered != received {
            self.rewritten += 1;
            frame.timestamp = delivered;
        }
        pathology.map(|pathology| Correction {
            kind: frame.kind,
            pathology,
            received,
            previous,
            delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(ts: u32, key: bool) -> MediaFrame {
        let tag = if key { 0x17 } else { 0x27 };
        MediaFrame::new(MediaKind::Video, ts, Bytes::from(vec![tag, 1, 0, 0, 0, 9]))
    }

    fn audio(ts: u32) -> MediaFrame {
        MediaFrame::new(MediaKind::Audio, ts, Bytes::from_static(&[0xaf, 1, 7]))
    }

    fn avc_header(ts: u32) -> MediaFrame {
        MediaFrame::new(
            MediaKind::Video,
            ts,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
        )
    }

    /// Runs frames through a sanitizer, arrival = the frame's own time
    /// order (`step_ms` apart); returns the delivered timestamps and events.
    fn run(frames: Vec<MediaFrame>, step_ms: u64) -> (Vec<u32>, Vec<Correction>) {
        let mut s = TimestampSanitizer::new(TimestampPolicy::Correct);
        let mut out = Vec::new();
        let mut events = Vec::new();
        for (i, mut f) in frames.into_iter().enumerate() {
            events.extend(s.sanitize(&mut f, i as u64 * step_ms));
            out.push(f.timestamp);
        }
        (out, events)
    }

    fn assert_monotonic(ts: &[u32]) {
        for w in ts.windows(2) {
            assert!(w[1] >= w[0], "went backwards: {ts:?}");
        }
    }

    #[test]
    fn a_well_behaved_stream_passes_bit_exact() {
        // Interleaved A/V with small negative differences between tracks,
        // a header and keyframe at the same time, a pause that follows the
        // wall clock, and a legitimate 2^32 wrap.
        let mut frames = vec![avc_header(0), video(0, true), audio(0)];
        let mut t = 0u32;
        for n in 1..200u32 {
            t += 33;
            frames.push(video(t, n % 30 == 0));
            frames.push(audio(t - 10));
        }
        let mut s = TimestampSanitizer::new(TimestampPolicy::Correct);
        let mut arrival = 0;
        for mut f in frames.clone() {
            arrival = u64::from(f.timestamp).max(arrival);
            let before = f.clone();
            assert_eq!(s.sanitize(&mut f, arrival), None);
            assert_eq!(f, before);
        }
        // A 5 s pause that the arrival clock shows too.
        let mut f = video(t + 5_000, true);
        assert_eq!(s.sanitize(&mut f, arrival + 5_000), None);
        assert_eq!(f.timestamp, t + 5_000);
        // Near the 2^32 wrap.
        let mut s = TimestampSanitizer::new(TimestampPolicy::Correct);
        for (i, ts) in [u32::MAX - 40, u32::MAX - 7, 26, 59]
            .into_iter()
            .enumerate()
        {
            let mut f = video(ts, i == 0);
            assert_eq!(s.sanitize(&mut f, i as u64 * 33), None);
            assert_eq!(f.timestamp, ts);
        }
        assert_eq!(s.rewritten(), 0);
    }

    #[test]
    fn a_backward_jump_continues_from_the_last_plus_the_interval() {
        let frames = [0, 40, 80, 120, 5, 45, 85]
            .map(|t| video(t, false))
            .to_vec();
        let (out, events) = run(frames, 40);
        assert_eq!(out, vec![0, 40, 80, 120, 160, 200, 240]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].pathology, Pathology::Backward);
        assert_eq!(
            (events[0].received, events[0].previous, events[0].delivered),
            (5, 120, 160)
        );
    }

    #[test]
    fn a_stuck_clock_is_one_event_and_advances_by_the_interval() {
        let mut frames: Vec<MediaFrame> = [0, 40, 80].map(|t| video(t, false)).to_vec();
        frames.extend((0..20).map(|_| video(80, false)));
        frames.push(video(120, false));
        let (out, events) = run(frames, 40);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].pathology, Pathology::Stuck);
        // Three repeats pass; then +40 per frame.
        assert_eq!(&out[..7], &[0, 40, 80, 80, 80, 80, 120]);
        assert_monotonic(&out);
        // The clock moving again continues from the shifted timeline.
        let n = out.len();
        assert_eq!(out[n - 1], out[n - 2] + 40);
    }

    #[test]
    fn stuck_at_zero_from_the_start_uses_the_default_interval() {
        let frames: Vec<MediaFrame> = (0..10).map(|i| video(0, i == 0)).collect();
        let (out, events) = run(frames, 33);
        assert_eq!(out, vec![0, 0, 0, 0, 33, 66, 99, 132, 165, 198]);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn an_hour_forward_is_a_jump_but_a_real_pause_is_not() {
        let frames = [0, 40, 80, 3_600_080, 3_600_120]
            .map(|t| video(t, false))
            .to_vec();
        let (out, events) = run(frames, 40);
        assert_eq!(out, vec![0, 40, 80, 120, 160]);
        assert_eq!(events[0].pathology, Pathology::Jump);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn a_wrap_to_near_2_32_is_corrected() {
        let frames = [0, 40, 80, u32::MAX - 100, u32::MAX - 60, 20]
            .map(|t| video(t, false))
            .to_vec();
        let (out, events) = run(frames, 40);
        assert_eq!(out, vec![0, 40, 80, 120, 160, 241]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].pathology, Pathology::Backward);
    }

    #[test]
    fn tracks_are_independent_and_headers_never_go_back() {
        let mut s = TimestampSanitizer::new(TimestampPolicy::Correct);
        let mut seq = |f: MediaFrame, at: u64| {
            let mut f = f;
            let e = s.sanitize(&mut f, at);
            (f.timestamp, e.map(|e| (e.kind, e.pathology)))
        };
        assert_eq!(seq(video(1000, true), 0), (1000, None));
        assert_eq!(seq(audio(990), 0), (990, None));
        assert_eq!(seq(audio(1013), 23), (1013, None));
        // Audio resets; video does not.
        assert_eq!(
            seq(audio(0), 46),
            (1036, Some((MediaKind::Audio, Pathology::Backward)))
        );
        assert_eq!(seq(video(1033, false), 46), (1033, None));
        // A header at 0 mid-stream is held at the track's last time.
        assert_eq!(seq(avc_header(0), 50), (1033, None));
        assert_eq!(seq(video(1066, false), 80), (1066, None));
    }

    #[test]
    fn off_passes_everything() {
        let mut s = TimestampSanitizer::new(TimestampPolicy::Off);
        for ts in [100, 0, 0, 0, 0, 0, u32::MAX] {
            let mut f = video(ts, false);
            assert_eq!(s.sanitize(&mut f, 0), None);
            assert_eq!(f.timestamp, ts);
        }
    }
}
