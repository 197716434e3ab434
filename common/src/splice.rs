//! One continuous timeline for players out of successive upstream
//! sessions: the edge's pull across origin failovers (and, in time, a
//! player across a publisher reconnect).
//!
//! Every time the upstream changes (a new origin, the same origin's new
//! generation, a republish upstream) the frames that follow are a new
//! *session*. The splicer decides, per session, how its timestamps relate
//! to what players already got:
//!
//! - **Same timeline** (the upstream announces the timeline id being
//!   delivered: Baton origins name each publish's timeline in
//!   `NetStream.Play.Start`, and an edge forwarding a publisher keeps its
//!   id across origins): the new upstream replays its
//!   cache from a keyframe at or before the last delivered frame; every
//!   frame whose timestamp was already delivered on its track is dropped,
//!   and delivery goes on with the next one, mid-GOP if need be (the
//!   decoder has the references). Nothing lost, nothing twice.
//! - **Unrelated timeline** (another or no id: a publisher that reconnected
//!   straight to an origin and restarted at 0): wait for a keyframe, then
//!   shift the session by one offset for all tracks so it continues from
//!   the last delivered timestamp plus one frame interval. Audio and video
//!   move together (mpegts.js drops audio that goes backwards).
//!
//! Per track, a delivered timestamp never goes backwards or repeats.
//! Metadata and sequence headers are delivered only when they change.
//!
//! Sans-IO and clock-free: frames in, verdicts out.

use bytes::Bytes;

use crate::media::{MediaFrame, MediaKind};

/// Frame interval assumed until the stream shows its own.
const DEFAULT_INTERVAL_MS: u32 = 33;
/// Largest plausible video frame interval; longer gaps are pauses.
const MAX_INTERVAL_MS: u32 = 1000;
/// A continuing session whose first new frame on a track comes this much
/// after the last delivered one skipped frames players never got.
const RESUME_GAP_MS: u32 = 500;

/// What to do with one upstream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver this (possibly re-timestamped) frame.
    Deliver(MediaFrame),
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The same timeline, and players already have this frame.
    AlreadyDelivered,
    /// Metadata or a sequence header identical to the one delivered.
    UnchangedHeader,
    /// An unrelated timeline resumes at a keyframe; this came before it.
    BeforeKeyframe,
    /// A rebased frame that would not move its track forward.
    WouldRegress,
}

impl DropReason {
    /// For metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::AlreadyDelivered => "already_delivered",
            DropReason::UnchangedHeader => "unchanged_header",
            DropReason::BeforeKeyframe => "before_keyframe",
            DropReason::WouldRegress => "would_regress",
        }
    }
}

/// How the current session relates to what was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    /// Nothing seen yet: its first frames decide.
    Opening,
    /// Unrelated: waiting for a keyframe to rebase on.
    AwaitingKeyframe,
    /// Delivering with `offset` added to upstream timestamps; `rebased`
    /// when this session was shifted (so an old timestamp is a regression
    /// to drop, not a duplicate).
    Delivering { offset: i64, rebased: bool },
}

/// Counts for the API and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    pub sessions: u64,
    pub continued: u64,
    pub rebased: u64,
    pub delivered: u64,
    pub already_delivered: u64,
    pub unchanged_headers: u64,
    pub before_keyframe: u64,
    pub would_regress: u64,
    /// Sessions of the same timeline that resumed later than the next
    /// frame players needed: the new upstream no longer had it (a player
    /// further behind than the publish buffer when its origin failed).
    pub resume_gaps: u64,
    /// The longest such gap, in media milliseconds.
    pub longest_resume_gap_ms: u64,
}

/// Per-track state of what players were given.
#[derive(Debug, Default)]
struct Delivered {
    video: Option<u32>,
    audio: Option<u32>,
    data: Option<u32>,
    /// Greatest timestamp delivered on any track.
    max: Option<u32>,
    metadata: Option<Bytes>,
    video_header: Option<Bytes>,
    audio_header: Option<Bytes>,
    has_video: bool,
    /// Last sensible video frame interval.
    interval: Option<u32>,
}

impl Delivered {
    fn last(&self, kind: MediaKind) -> Option<u32> {
        match kind {
            MediaKind::Video => self.video,
            MediaKind::Audio => self.audio,
            MediaKind::Data => self.data,
        }
    }

    fn record(&mut self, frame: &MediaFrame) {
        let ts = frame.timestamp;
        match frame.kind {
            MediaKind::Video => {
                if let Some(prev) = self.video {
                    let delta = ts.wrapping_sub(prev);
                    if delta > 0 && delta <= MAX_INTERVAL_MS && !frame.is_sequence_header() {
                        self.interval = Some(delta);
                    }
                }
                self.video = Some(ts);
                self.has_video = true;
            }
            MediaKind::Audio => self.audio = Some(ts),
            MediaKind::Data => self.data = Some(ts),
        }
        self.max = Some(self.max.map_or(ts, |m| m.max(ts)));
    }

    /// Where the last delivered header of `frame`'s kind is kept, if it is
    /// a header at all.
    fn header_slot(&mut self, frame: &MediaFrame) -> Option<&mut Option<Bytes>> {
        if frame.is_metadata() {
            Some(&mut self.metadata)
        } else if frame.is_sequence_header() {
            Some(match frame.kind {
                MediaKind::Video => &mut self.video_header,
                _ => &mut self.audio_header,
            })
        } else {
            None
        }
    }
}

/// Splices successive upstream sessions into one timeline.
#[derive(Debug)]
pub struct Splicer {
    delivered: Delivered,
    session: Session,
    /// Timeline id the session's upstream announced.
    session_timeline: Option<String>,
    /// Timeline id of what is being delivered, and the offset it runs at.
    delivered_timeline: Option<(String, i64)>,
    /// Per track (video, audio, data): whether this session has passed
    /// what was delivered before it. Only until then are frames compared
    /// with the delivered timestamps: after, the upstream's own order
    /// stands (a publisher's equal timestamps are not ours to drop).
    caught_up: [bool; 3],
    stats: SpliceStats,
}

fn track(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Video => 0,
        MediaKind::Audio => 1,
        MediaKind::Data => 2,
    }
}

impl Default for Splicer {
    fn default() -> Self {
        Self::new()
    }
}

impl Splicer {
    pub fn new() -> Self {
        Splicer {
            delivered: Delivered::default(),
            session: Session::Opening,
            session_timeline: None,
            delivered_timeline: None,
            caught_up: [false; 3],
            stats: SpliceStats::default(),
        }
    }

    /// A new upstream session starts (another connection, or the upstream
    /// re-published) on the timeline the upstream announced, if any; its
    /// frames follow.
    pub fn new_session(&mut self, timeline: Option<String>) {
        self.session = Session::Opening;
        self.session_timeline = timeline;
        self.caught_up = [false; 3];
        self.stats.sessions += 1;
    }

    pub fn stats(&self) -> SpliceStats {
        self.stats
    }

    /// The greatest timestamp delivered so far: an upstream asked to resume
    /// after it (`?baton_resume=`) replays from a keyframe at or before it.
    pub fn resume_point(&self) -> Option<u32> {
        let offset = self.delivered_timeline.as_ref().map_or(0, |(_, o)| *o);
        let max = self.delivered.max?;
        u32::try_from(i64::from(max) - offset).ok()
    }

    /// Whether a later session of the same timeline would continue it
    /// (players have a timeline and it has an id).
    pub fn has_timeline(&self) -> bool {
        self.delivered_timeline.is_some()
    }

    pub fn push(&mut self, frame: MediaFrame) -> Verdict {
        if self.session == Session::Opening {
            self.open_session();
        }
        let (offset, rebased) = match self.session {
            Session::Delivering { offset, rebased } => (offset, rebased),
            Session::Opening | Session::AwaitingKeyframe => {
                if let Some(verdict) = self.header_while_awaiting(&frame) {
                    return verdict;
                }
                if !self.starts_rebase(&frame) {
                    self.stats.before_keyframe += 1;
                    return Verdict::Drop(DropReason::BeforeKeyframe);
                }
                let base = self
                    .delivered
                    .max
                    .map_or(0, |m| i64::from(m) + i64::from(self.interval()));
                let offset = base - i64::from(frame.timestamp);
                self.session = Session::Delivering {
                    offset,
                    rebased: true,
                };
                self.delivered_timeline = self.session_timeline.clone().map(|id| (id, offset));
                self.stats.rebased += 1;
                (offset, true)
            }
        };
        self.deliver(frame, offset, rebased)
    }

    /// Decides how a session relates to the delivered timeline, on its
    /// first frame.
    fn open_session(&mut self) {
        if self.delivered.max.is_none() {
            // Nothing delivered yet: this session is the timeline.
            self.session = Session::Delivering {
                offset: 0,
                rebased: false,
            };
            self.delivered_timeline = self.session_timeline.clone().map(|id| (id, 0));
            return;
        }
        match (&self.session_timeline, &self.delivered_timeline) {
            (Some(id), Some((delivered, offset))) if id == delivered => {
                self.session = Session::Delivering {
                    offset: *offset,
                    rebased: false,
                };
                self.stats.continued += 1;
            }
            _ => self.session = Session::AwaitingKeyframe,
        }
    }

    /// While waiting for a keyframe, headers that changed still go out
    /// (at the last delivered time), so the keyframe decodes.
    fn header_while_awaiting(&mut self, frame: &MediaFrame) -> Option<Verdict> {
        let at = self.delivered.max.unwrap_or(frame.timestamp);
        let slot = self.delivered.header_slot(frame)?;
        if slot.as_ref() == Some(&frame.payload) {
            self.stats.unchanged_headers += 1;
            return Some(Verdict::Drop(DropReason::UnchangedHeader));
        }
        *slot = Some(frame.payload.clone());
        let out = MediaFrame {
            timestamp: at,
            ..frame.clone()
        };
        self.stats.delivered += 1;
        Some(Verdict::Deliver(out))
    }

    /// Whether an unrelated session resumes on this frame: a video
    /// keyframe, or any audio frame of a stream without video.
    fn starts_rebase(&self, frame: &MediaFrame) -> bool {
        match frame.kind {
            MediaKind::Video => frame.is_keyframe(),
            MediaKind::Audio => !self.delivered.has_video,
            MediaKind::Data => false,
        }
    }

    fn interval(&self) -> u32 {
        self.delivered.interval.unwrap_or(DEFAULT_INTERVAL_MS)
    }

    fn deliver(&mut self, frame: MediaFrame, offset: i64, rebased: bool) -> Verdict {
        let shifted = i64::from(frame.timestamp) + offset;
        let Ok(timestamp) = u32::try_from(shifted) else {
            self.stats.would_regress += 1;
            return Verdict::Drop(DropReason::WouldRegress);
        };
        if let Some(slot) = self.delivered.header_slot(&frame) {
            if slot.as_ref() == Some(&frame.payload) {
                self.stats.unchanged_headers += 1;
                return Verdict::Drop(DropReason::UnchangedHeader);
            }
            *slot = Some(frame.payload.clone());
            // Headers carry no picture: never let one move time backwards.
            let at = timestamp.max(self.delivered.max.unwrap_or(0));
            self.stats.delivered += 1;
            return Verdict::Deliver(MediaFrame {
                timestamp: at,
                ..frame
            });
        }
        let track = track(frame.kind);
        if !self.caught_up[track] {
            if let Some(last) = self.delivered.last(frame.kind) {
                if timestamp <= last {
                    if !rebased {
                        self.stats.already_delivered += 1;
                        return Verdict::Drop(DropReason::AlreadyDelivered);
                    }
                    self.stats.would_regress += 1;
                    return Verdict::Drop(DropReason::WouldRegress);
                }
                let gap = timestamp - last;
                if !rebased && frame.kind == MediaKind::Video && gap > RESUME_GAP_MS {
                    self.stats.resume_gaps += 1;
                    self.stats.longest_resume_gap_ms =
                        self.stats.longest_resume_gap_ms.max(u64::from(gap));
                }
            }
            self.caught_up[track] = true;
        }
        let out = MediaFrame { timestamp, ..frame };
        self.delivered.record(&out);
        self.stats.delivered += 1;
        Verdict::Deliver(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amf0::{self, Amf0Value};

    fn metadata(width: f64) -> MediaFrame {
        MediaFrame::new(
            MediaKind::Data,
            0,
            amf0::encode_all(&[
                Amf0Value::string("onMetaData"),
                Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(width))]),
            ]),
        )
    }

    fn is_metadata(frame: &MediaFrame) -> bool {
        frame.kind == MediaKind::Data
    }

    fn avc_header() -> MediaFrame {
        MediaFrame::new(
            MediaKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
        )
    }

    fn aac_header() -> MediaFrame {
        MediaFrame::new(
            MediaKind::Audio,
            0,
            Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
        )
    }

    /// Video frame `n` (keyframe every 10) at 40 ms per frame from `base`,
    /// its payload naming `n`.
    fn video(n: u32, base: u32) -> MediaFrame {
        let kind = if n.is_multiple_of(10) { 0x17 } else { 0x27 };
        let mut payload = vec![kind, 1, 0, 0, 0];
        payload.extend_from_slice(&n.to_be_bytes());
        MediaFrame::new(MediaKind::Video, base + n * 40, Bytes::from(payload))
    }

    fn audio(n: u32, base: u32) -> MediaFrame {
        let mut payload = vec![0xaf, 1];
        payload.extend_from_slice(&n.to_be_bytes());
        MediaFrame::new(MediaKind::Audio, base + n * 40 + 5, Bytes::from(payload))
    }

    /// Metadata + headers + frames `from..to` (video and audio interleaved).
    fn session(from: u32, to: u32, base: u32) -> Vec<MediaFrame> {
        let mut frames = vec![metadata(1280.0), avc_header(), aac_header()];
        for n in from..to {
            frames.push(video(n, base));
            frames.push(audio(n, base));
        }
        frames
    }

    fn run(splicer: &mut Splicer, frames: Vec<MediaFrame>) -> Vec<MediaFrame> {
        frames
            .into_iter()
            .filter_map(|f| match splicer.push(f) {
                Verdict::Deliver(f) => Some(f),
                Verdict::Drop(_) => None,
            })
            .collect()
    }

    fn index(frame: &MediaFrame) -> Option<u32> {
        let p = &frame.payload;
        let start = match frame.kind {
            MediaKind::Video if !frame.is_sequence_header() => 5,
            MediaKind::Audio if !frame.is_sequence_header() => 2,
            _ => return None,
        };
        Some(u32::from_be_bytes(
            p.get(start..start + 4)?.try_into().ok()?,
        ))
    }

    fn assert_monotonic(frames: &[MediaFrame]) {
        for kind in [MediaKind::Video, MediaKind::Audio] {
            let ts: Vec<u32> = frames
                .iter()
                .filter(|f| f.kind == kind && !f.is_sequence_header())
                .map(|f| f.timestamp)
                .collect();
            assert!(
                ts.windows(2).all(|w| w[0] < w[1]),
                "{kind:?} not increasing: {ts:?}"
            );
        }
    }

    #[test]
    fn same_timeline_skips_what_was_delivered_and_continues_mid_gop() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        let first = run(&mut s, session(0, 25, 1000));
        assert_eq!(first.len(), 3 + 50);
        // The new origin replays from keyframe 20 (its cache) onwards.
        s.new_session(Some("A".into()));
        let second = run(&mut s, session(20, 40, 1000));
        let video: Vec<u32> = second
            .iter()
            .filter(|f| f.is_video())
            .filter_map(index)
            .collect();
        assert_eq!(
            video,
            (25..40).collect::<Vec<_>>(),
            "resumes with frame 25, mid-GOP"
        );
        assert!(
            second.iter().all(|f| !f.is_sequence_header()),
            "unchanged headers are not re-sent"
        );
        assert_eq!(second.iter().filter(|f| is_metadata(f)).count(), 0);
        let mut all = first;
        all.extend(second);
        assert_monotonic(&all);
        assert_eq!(s.stats().continued, 1);
        assert_eq!(s.stats().already_delivered, 10);
    }

    #[test]
    fn unrelated_timeline_is_rebased_at_a_keyframe_for_both_tracks() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        let first = run(&mut s, session(0, 25, 50_000));
        let last_ts = first.iter().map(|f| f.timestamp).max().unwrap();
        s.new_session(Some("B".into()));
        // A new publisher from 0 whose cache starts mid-GOP at frame 3.
        let mut frames = vec![metadata(640.0), avc_header(), aac_header()];
        for n in 3..30 {
            frames.push(video(n, 0));
            frames.push(audio(n, 0));
        }
        let second = run(&mut s, frames);
        let first_video = second
            .iter()
            .find(|f| f.is_video() && !f.is_sequence_header())
            .unwrap();
        assert_eq!(index(first_video), Some(10), "resumes at the keyframe");
        assert_eq!(
            first_video.timestamp,
            50_000 + 24 * 40 + 5 + 40,
            "last delivered (audio) + one interval"
        );
        assert!(first_video.timestamp > last_ts);
        assert!(is_metadata(&second[0]), "the changed metadata is delivered");
        assert!(
            second.iter().all(|f| !f.is_sequence_header()),
            "identical headers are not re-sent"
        );
        let mut all = first;
        all.extend(second);
        assert_monotonic(&all);
        assert_eq!(s.stats().rebased, 1);
    }

    #[test]
    fn a_rebased_timeline_continues_across_later_sessions_of_itself() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        let mut all = run(&mut s, session(0, 15, 10_000));
        s.new_session(Some("B".into()));
        all.extend(run(&mut s, session(0, 15, 0)));
        let before = all.len();
        s.new_session(Some("B".into()));
        // B again (its edge moved to another origin): replay from 10.
        all.extend(run(&mut s, session(10, 20, 0)));
        let added: Vec<u32> = all[before..]
            .iter()
            .filter(|f| f.is_video())
            .filter_map(index)
            .collect();
        assert_eq!(added, (15..20).collect::<Vec<_>>());
        assert_monotonic(&all);
        assert_eq!(s.stats().continued, 1);
        assert_eq!(s.stats().rebased, 1);
        // The resume point is on B's own clock.
        assert_eq!(s.resume_point(), Some(19 * 40 + 5));
    }

    #[test]
    fn changed_headers_are_delivered_before_the_keyframe() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        run(&mut s, session(0, 5, 0));
        s.new_session(Some("C".into()));
        let new_header = MediaFrame::new(
            MediaKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 2]),
        );
        let out = run(
            &mut s,
            vec![metadata(1920.0), new_header.clone(), video(0, 0)],
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].payload, new_header.payload);
        assert!(out[1].timestamp <= out[2].timestamp);
    }

    #[test]
    fn a_same_timeline_resume_past_what_players_had_is_counted() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        run(&mut s, session(0, 25, 0));
        // The new upstream starts at frame 50 (its cache no longer has 25..).
        s.new_session(Some("A".into()));
        let out = run(&mut s, session(50, 60, 0));
        assert_eq!(
            out.iter().filter(|f| f.is_video()).filter_map(index).next(),
            Some(50)
        );
        assert_eq!(s.stats().resume_gaps, 1);
        assert_eq!(s.stats().longest_resume_gap_ms, (50 - 24) * 40);
    }

    #[test]
    fn within_a_session_the_publishers_own_order_stands() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        let frames = vec![audio(1, 0), audio(1, 0), video(0, 0), video(0, 0)];
        assert_eq!(
            run(&mut s, frames).len(),
            4,
            "equal timestamps are not ours to drop"
        );
    }

    #[test]
    fn a_session_without_a_timeline_id_is_unrelated() {
        let mut s = Splicer::new();
        s.new_session(Some("A".into()));
        run(&mut s, session(0, 5, 0));
        s.new_session(None);
        let out = run(&mut s, (0..12).map(|n| video(n, 0)).collect());
        let first = out.iter().find_map(index);
        assert_eq!(first, Some(0), "rebased at keyframe 0");
        assert!(out[0].timestamp > 4 * 40);
    }
}
