//! Per-player measurements and their aggregation into a fan-out report.
//!
//! Every player, whatever its protocol, turns what it receives into
//! [`FrameInfo`]s stamped with their wall-clock arrival and feeds them to a
//! [`PlayerTracker`], which counts frames and bytes, checks that timestamps
//! never go backwards on a track, checks that the first picture a player
//! gets is decodable (a keyframe, possibly after sequence headers), and
//! records the gaps between consecutive video frame arrivals once the first
//! keyframe has arrived. [`Report::build`] folds the trackers into the
//! numbers the fan-out benchmark publishes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use baton_common::media::{MediaFrame, MediaKind};
use serde::{Deserialize, Serialize};

use crate::wallstamp;

/// Track of a frame, as far as the measurements care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Audio,
    Video,
    Data,
}

/// What is measured about one received frame (its payload is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub kind: FrameKind,
    pub timestamp: u32,
    /// Payload (FLV tag body / RTMP message body) length in bytes.
    pub size: usize,
    pub keyframe: bool,
    pub seq_header: bool,
    /// `(seq, sent_ns)` of a frame stamped by `publish --stamp`.
    pub stamp: Option<(u64, u64)>,
}

/// Enhanced RTMP: bit 7 of the first video byte marks the extended header.
const VIDEO_EX_HEADER: u8 = 0x80;

impl FrameInfo {
    /// Classifies a frame from the first bytes of its body: legacy FLV
    /// video (AVC codec 7, HEVC codec 12), Enhanced RTMP video, and AAC.
    pub fn classify(kind: FrameKind, timestamp: u32, size: usize, prefix: &[u8]) -> Self {
        let (keyframe, seq_header) = match (kind, prefix.first()) {
            (FrameKind::Video, Some(&b)) if b & VIDEO_EX_HEADER != 0 => {
                let seq = b & 0x0f == 0;
                (!seq && (b >> 4) & 0x07 == 1, seq)
            }
            (FrameKind::Video, Some(&b)) => {
                let seq = matches!(b & 0x0f, 7 | 12) && prefix.get(1) == Some(&0);
                (!seq && b >> 4 == 1, seq)
            }
            (FrameKind::Audio, Some(&b)) => (false, b >> 4 == 10 && prefix.get(1) == Some(&0)),
            _ => (false, false),
        };
        FrameInfo {
            kind,
            timestamp,
            size,
            keyframe,
            seq_header,
            stamp: wallstamp::read(kind, prefix),
        }
    }

    /// Classifies a frame decoded by the RTMP client.
    pub fn from_media(frame: &MediaFrame) -> Self {
        let kind = match frame.kind {
            MediaKind::Audio => FrameKind::Audio,
            MediaKind::Video => FrameKind::Video,
            MediaKind::Data => FrameKind::Data,
        };
        FrameInfo {
            kind,
            timestamp: frame.timestamp,
            size: frame.payload.len(),
            keyframe: frame.is_keyframe(),
            seq_header: frame.is_sequence_header(),
            stamp: wallstamp::read(kind, &frame.payload),
        }
    }
}

/// Everything one player measured.
#[derive(Debug, Default)]
pub struct PlayerTracker {
    /// Bytes read from the socket, protocol overhead included.
    pub bytes: u64,
    pub video_frames: u64,
    pub audio_frames: u64,
    pub data_frames: u64,
    /// Timestamps that went backwards on their own track.
    pub ts_violations: u64,
    /// The first picture was not a keyframe.
    pub first_frame_violation: bool,
    first_video_checked: bool,
    /// Arrival of the first keyframe.
    pub first_keyframe_at: Option<Instant>,
    last_video_arrival: Option<Instant>,
    /// Largest gap between consecutive video arrivals after the first
    /// keyframe.
    pub max_gap: Duration,
    /// Every such gap, in microseconds.
    pub gaps_us: Vec<u32>,
    last_audio_ts: Option<u32>,
    last_video_ts: Option<u32>,
    /// Stamped frames sent in `[from, until)` (wall-clock ns) count for
    /// lateness and losses; `None` before the run sets it.
    pub late_window: Option<(u64, u64)>,
    /// Per stamped frame of the window: when the player's read took it
    /// out of the socket minus when the publisher sent it, in µs.
    pub late_us: Vec<u32>,
    /// Stamped frames of the window skipped over (sequence gaps).
    pub frames_lost: u64,
    /// Stamped frames received, any time.
    pub stamped_frames: u64,
    /// Send time of the newest stamped frame received.
    pub newest_sent_ns: u64,
    last_seq: Option<u64>,
    /// A drainer (`fanout --decode-every`): discards what it reads
    /// undecoded, so only its bytes say whether it kept up.
    pub drained: bool,
    /// Bytes read within the run's byte window (the steady window up to
    /// where lateness stops counting).
    pub window_bytes: u64,
}

impl PlayerTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one frame that arrived at `now` and that the player's read
    /// took out of the socket at `read_ns` (wall clock, for stamps).
    pub fn on_frame_read(&mut self, frame: &FrameInfo, now: Instant, read_ns: u64) {
        if let Some((seq, sent)) = frame.stamp {
            self.on_stamp(seq, sent, read_ns);
        }
        self.on_frame(frame, now);
    }

    fn on_stamp(&mut self, seq: u64, sent_ns: u64, read_ns: u64) {
        self.stamped_frames += 1;
        self.newest_sent_ns = self.newest_sent_ns.max(sent_ns);
        let in_window = self
            .late_window
            .is_some_and(|(from, until)| (from..until).contains(&sent_ns));
        match self.last_seq {
            Some(last) if seq <= last => return,
            Some(last) if in_window => self.frames_lost += seq - last - 1,
            _ => {}
        }
        self.last_seq = Some(seq);
        if in_window {
            self.late_us.push(micros(Duration::from_nanos(
                read_ns.saturating_sub(sent_ns),
            )));
        }
    }

    /// Records one frame that arrived at `now`.
    pub fn on_frame(&mut self, frame: &FrameInfo, now: Instant) {
        let last_ts = match frame.kind {
            FrameKind::Audio => {
                self.audio_frames += 1;
                &mut self.last_audio_ts
            }
            FrameKind::Video => {
                self.video_frames += 1;
                &mut self.last_video_ts
            }
            FrameKind::Data => {
                self.data_frames += 1;
                return;
            }
        };
        if let Some(prev) = *last_ts {
            if frame.timestamp < prev {
                self.ts_violations += 1;
            }
        }
        *last_ts = Some(frame.timestamp);

        if frame.kind != FrameKind::Video {
            return;
        }
        if !self.first_video_checked && !frame.seq_header {
            self.first_video_checked = true;
            self.first_frame_violation = !frame.keyframe;
        }
        if let Some(prev) = self.last_video_arrival {
            let gap = now.saturating_duration_since(prev);
            self.max_gap = self.max_gap.max(gap);
            self.gaps_us
                .push(u32::try_from(gap.as_micros()).unwrap_or(u32::MAX));
        }
        if self.first_keyframe_at.is_none() && frame.keyframe {
            self.first_keyframe_at = Some(now);
        }
        if self.first_keyframe_at.is_some() {
            self.last_video_arrival = Some(now);
        }
    }
}

/// How a player's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Never got to play: connection refused, bad status, handshake error…
    Failed(String),
    /// Played until the end of the run.
    Completed,
    /// Played, then lost the stream before the end of the run.
    EndedEarly(String),
}

/// One player's result.
#[derive(Debug)]
pub struct PlayerResult {
    pub outcome: Outcome,
    pub started: Instant,
    /// From starting to connect until playback was confirmed.
    pub connect_time: Option<Duration>,
    pub tracker: PlayerTracker,
}

/// Summary statistics in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Millis {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Millis {
    /// Nearest-rank percentiles of microsecond samples (sorted in place).
    pub fn from_micros(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        Millis {
            p50: ms(percentile(samples, 50.0)),
            p99: ms(percentile(samples, 99.0)),
            max: ms(samples.last().copied().unwrap_or(0)),
        }
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50, self.p99, self.max
        )
    }
}

/// Nearest-rank percentile of sorted samples; 0 when empty.
pub fn percentile(sorted: &[u32], pct: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The fan-out report, printed for people and written as JSON for scripts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Free-form name of the system under test, e.g. `baton` or `nginx-rtmp`.
    pub label: String,
    pub url: String,
    /// `rtmp` or `http-flv`.
    pub protocol: String,
    /// Players started (fewer than asked if the ramp outlasted the run).
    pub players_requested: u64,
    pub players_connected: u64,
    pub players_failed: u64,
    /// Connected, then lost the stream before the end of the run.
    pub players_disconnected_early: u64,
    /// Connected but never received a keyframe.
    pub players_without_keyframe: u64,
    pub duration_s: f64,
    pub elapsed_s: f64,
    pub total_bytes: u64,
    /// Total bytes over the whole run (ramp included).
    pub throughput_gbps: f64,
    /// Bytes per second once the ramp had finished.
    pub steady_throughput_gbps: f64,
    pub video_frames: u64,
    pub audio_frames: u64,
    pub data_frames: u64,
    /// Per player: the largest gap between video frame arrivals; percentiles
    /// over the players.
    pub max_gap_per_player_ms: Millis,
    /// Every gap of every player.
    pub gap_ms: Millis,
    pub ts_violations: u64,
    pub players_with_ts_violations: u64,
    pub first_frame_violations: u64,
    pub connect_ms: Millis,
    /// From starting to connect until the first keyframe arrived.
    pub first_keyframe_ms: Millis,
    /// Players read their sockets every this many ms (0: on arrival).
    #[serde(default)]
    pub read_every_ms: f64,
    /// Stamped frames sent in the steady window: read time minus send
    /// time, over every frame of every player (see `wallstamp`).
    #[serde(default)]
    pub late_ms: Millis,
    /// Per player: its lateness p99; percentiles over the players.
    #[serde(default)]
    pub player_late_p99_ms: Millis,
    /// Stamped frames of the window players never got (sequence gaps).
    #[serde(default)]
    pub frames_lost: u64,
    /// Players whose lateness p99 exceeded `read_every + 500 ms`, or whose
    /// newest frame at the end of the window was older than that.
    #[serde(default)]
    pub players_behind: u64,
    /// Players that drained their socket undecoded (`--decode-every`);
    /// one of them is behind when its window bytes fall under 90 % of
    /// the decoding players' median.
    #[serde(default)]
    pub players_drained: u64,
    /// Server CPU over the steady window only (after the ramp), per GB
    /// delivered in it, and as a share of one core.
    #[serde(default)]
    pub steady_cpu_s_per_gb: Option<f64>,
    #[serde(default)]
    pub steady_cpu_pct: Option<f64>,
    #[serde(default)]
    pub steady_window_s: f64,
    /// CPU seconds the server (process tree) used during the run.
    pub server_cpu_s: Option<f64>,
    /// Server CPU seconds per delivered gigabyte (10^9 bytes).
    pub server_cpu_s_per_gb: Option<f64>,
    /// CPU seconds the load tool itself used: near `elapsed_s` means the
    /// client, not the server, was the bottleneck.
    pub client_cpu_s: f64,
    /// Distinct failure/disconnect reasons with their counts.
    pub errors: BTreeMap<String, u64>,
}

/// Inputs to [`Report::build`] that are not per player.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub label: String,
    pub url: String,
    pub protocol: String,
    pub players_requested: u64,
    pub duration: Duration,
    pub elapsed: Duration,
    /// Bytes received after the ramp and the time they took.
    pub steady_bytes: u64,
    pub steady_elapsed: Duration,
    pub server_cpu: Option<Duration>,
    pub client_cpu: Duration,
    pub read_every: Duration,
    /// The steady window: its length, bytes received and server CPU.
    pub window: Duration,
    pub window_bytes: u64,
    pub window_cpu: Option<Duration>,
    /// Wall-clock ns: stamped frames sent before this should have been read.
    pub late_until_ns: u64,
}

/// Longest error text kept as a key (addresses and counters vary).
const MAX_ERROR_KEY_LEN: usize = 120;

impl Report {
    pub fn build(run: &RunInfo, results: &mut [PlayerResult]) -> Report {
        let mut r = Report {
            label: run.label.clone(),
            url: run.url.clone(),
            protocol: run.protocol.clone(),
            players_requested: run.players_requested,
            duration_s: run.duration.as_secs_f64(),
            elapsed_s: run.elapsed.as_secs_f64(),
            client_cpu_s: run.client_cpu.as_secs_f64(),
            ..Report::default()
        };
        let mut per_player_max = Vec::new();
        let mut all_gaps = Vec::new();
        let mut connect = Vec::new();
        let mut first_key = Vec::new();
        let mut late = Vec::new();
        let mut player_late = Vec::new();
        let behind_ns = u64::try_from((run.read_every + Duration::from_millis(500)).as_nanos())
            .unwrap_or(u64::MAX);
        let mut drained_bytes = Vec::new();
        let mut decoded_bytes = Vec::new();
        for p in results.iter_mut() {
            let t = &mut p.tracker;
            r.total_bytes += t.bytes;
            r.video_frames += t.video_frames;
            r.audio_frames += t.audio_frames;
            r.data_frames += t.data_frames;
            let reason = match &p.outcome {
                Outcome::Failed(e) => {
                    r.players_failed += 1;
                    Some(format!("failed: {e}"))
                }
                Outcome::EndedEarly(e) => {
                    r.players_disconnected_early += 1;
                    Some(format!("ended early: {e}"))
                }
                Outcome::Completed => None,
            };
            if let Some(mut reason) = reason {
                truncate_on_char(&mut reason, MAX_ERROR_KEY_LEN);
                *r.errors.entry(reason).or_default() += 1;
            }
            if matches!(p.outcome, Outcome::Failed(_)) {
                continue;
            }
            r.players_connected += 1;
            r.ts_violations += t.ts_violations;
            r.players_with_ts_violations += u64::from(t.ts_violations > 0);
            r.first_frame_violations += u64::from(t.first_frame_violation);
            if let Some(c) = p.connect_time {
                connect.push(micros(c));
            }
            if t.drained {
                drained_bytes.push(t.window_bytes);
                continue;
            }
            if matches!(p.outcome, Outcome::Completed) {
                decoded_bytes.push(t.window_bytes);
            }
            match t.first_keyframe_at {
                Some(at) => {
                    first_key.push(micros(at.saturating_duration_since(p.started)));
                    per_player_max.push(micros(t.max_gap));
                }
                None => r.players_without_keyframe += 1,
            }
            all_gaps.append(&mut t.gaps_us);
            r.frames_lost += t.frames_lost;
            if t.stamped_frames > 0 {
                t.late_us.sort_unstable();
                let p99 = u64::from(percentile(&t.late_us, 99.0)) * 1000;
                player_late.push(micros(Duration::from_nanos(p99)));
                let stale = t.newest_sent_ns.saturating_add(behind_ns) < run.late_until_ns;
                r.players_behind += u64::from(p99 > behind_ns || stale);
                late.append(&mut t.late_us);
            }
        }
        r.players_drained = drained_bytes.len() as u64;
        r.players_behind += drainers_behind(&mut decoded_bytes, &drained_bytes);
        r.read_every_ms = run.read_every.as_secs_f64() * 1000.0;
        r.late_ms = Millis::from_micros(&mut late);
        r.player_late_p99_ms = Millis::from_micros(&mut player_late);
        r.steady_window_s = run.window.as_secs_f64();
        if let Some(cpu) = run.window_cpu {
            let secs = run.window.as_secs_f64();
            if secs > 0.0 {
                r.steady_cpu_pct = Some(100.0 * cpu.as_secs_f64() / secs);
            }
            if run.window_bytes > 0 {
                r.steady_cpu_s_per_gb = Some(cpu.as_secs_f64() / (run.window_bytes as f64 / 1e9));
            }
        }
        r.max_gap_per_player_ms = Millis::from_micros(&mut per_player_max);
        r.gap_ms = Millis::from_micros(&mut all_gaps);
        r.connect_ms = Millis::from_micros(&mut connect);
        r.first_keyframe_ms = Millis::from_micros(&mut first_key);
        r.throughput_gbps = gbps(r.total_bytes, run.elapsed);
        r.steady_throughput_gbps = if run.steady_elapsed >= Duration::from_secs(1) {
            gbps(run.steady_bytes, run.steady_elapsed)
        } else {
            r.throughput_gbps
        };
        if let Some(cpu) = run.server_cpu {
            r.server_cpu_s = Some(cpu.as_secs_f64());
            if r.total_bytes > 0 {
                r.server_cpu_s_per_gb = Some(cpu.as_secs_f64() / (r.total_bytes as f64 / 1e9));
            }
        }
        r
    }
}

/// Drainers that received under 90 % of what the decoding players did
/// (their median; with no decoder, the best drainer) in the byte window.
fn drainers_behind(decoded: &mut [u64], drained: &[u64]) -> u64 {
    decoded.sort_unstable();
    let reference = match decoded.get(decoded.len() / 2) {
        Some(&median) => median,
        None => drained.iter().copied().max().unwrap_or(0),
    };
    drained
        .iter()
        .filter(|&&bytes| u128::from(bytes) * 10 < u128::from(reference) * 9)
        .count() as u64
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Gigabits per second.
pub fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / secs / 1e9
}

fn truncate_on_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== fan-out: {} ({}) {}",
            self.label, self.protocol, self.url
        )?;
        writeln!(
            f,
            "players: {} requested, {} connected, {} failed, {} disconnected early, {} never got a keyframe",
            self.players_requested,
            self.players_connected,
            self.players_failed,
            self.players_disconnected_early,
            self.players_without_keyframe
        )?;
        writeln!(
            f,
            "delivered: {:.3} GB in {:.1} s: {:.3} Gbit/s average, {:.3} Gbit/s after ramp",
            self.total_bytes as f64 / 1e9,
            self.elapsed_s,
            self.throughput_gbps,
            self.steady_throughput_gbps
        )?;
        writeln!(
            f,
            "frames: {} video + {} audio = {} ({} data)",
            self.video_frames,
            self.audio_frames,
            self.video_frames + self.audio_frames,
            self.data_frames
        )?;
        writeln!(
            f,
            "max video gap per player: {}",
            self.max_gap_per_player_ms
        )?;
        writeln!(f, "all video gaps:           {}", self.gap_ms)?;
        writeln!(f, "connect:                  {}", self.connect_ms)?;
        writeln!(f, "first keyframe:           {}", self.first_keyframe_ms)?;
        writeln!(
            f,
            "violations: {} timestamps going backwards (in {} players), {} players whose first picture was not a keyframe",
            self.ts_violations, self.players_with_ts_violations, self.first_frame_violations
        )?;
        if self.late_ms.max > 0.0 {
            writeln!(
                f,
                "lateness (read − sent, reads every {:.0} ms): {}; per-player p99 {}",
                self.read_every_ms, self.late_ms, self.player_late_p99_ms
            )?;
            writeln!(
                f,
                "players behind: {}, frames lost: {}",
                self.players_behind, self.frames_lost
            )?;
            if self.players_drained > 0 {
                writeln!(
                    f,
                    "players drained undecoded: {} (lateness, losses and keyframes are the others')",
                    self.players_drained
                )?;
            }
        }
        if let (Some(per_gb), Some(pct)) = (self.steady_cpu_s_per_gb, self.steady_cpu_pct) {
            writeln!(
                f,
                "steady window {:.1} s: server CPU {pct:.1}% of a core, {per_gb:.3} s per delivered GB",
                self.steady_window_s
            )?;
        }
        match (self.server_cpu_s, self.server_cpu_s_per_gb) {
            (Some(cpu), Some(per_gb)) => {
                writeln!(f, "server CPU: {cpu:.2} s ({per_gb:.3} s per delivered GB)")?
            }
            (Some(cpu), None) => writeln!(f, "server CPU: {cpu:.2} s")?,
            _ => {}
        }
        writeln!(
            f,
            "client CPU: {:.2} s ({:.0}% of one core)",
            self.client_cpu_s,
            100.0 * self.client_cpu_s / self.elapsed_s.max(1e-9)
        )?;
        for (reason, count) in &self.errors {
            writeln!(f, "  {count} x {reason}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(ts: u32, prefix: &[u8]) -> FrameInfo {
        FrameInfo::classify(FrameKind::Video, ts, 100, prefix)
    }

    #[test]
    fn classification() {
        assert!(video(0, &[0x17, 0]).seq_header);
        assert!(video(0, &[0x17, 1]).keyframe);
        assert!(!video(0, &[0x27, 1]).keyframe);
        assert!(video(0, &[0x1c, 0]).seq_header); // HEVC
        assert!(video(0, &[0x90, b'h']).seq_header); // E-RTMP SequenceStart
        assert!(video(0, &[0x91, b'h']).keyframe); // E-RTMP key CodedFrames
        assert!(!video(0, &[0xa1, b'h']).keyframe);
        let aac = FrameInfo::classify(FrameKind::Audio, 0, 4, &[0xaf, 0, 0x12]);
        assert!(aac.seq_header && !aac.keyframe);
        assert!(!video(0, &[]).keyframe);
    }

    #[test]
    fn tracker_gaps_and_checks() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = PlayerTracker::new();
        t.on_frame(&video(0, &[0x17, 0]), ms(0));
        t.on_frame(&video(0, &[0x17, 1]), ms(1));
        t.on_frame(
            &FrameInfo::classify(FrameKind::Audio, 5, 3, &[0xaf, 1]),
            ms(2),
        );
        t.on_frame(&video(33, &[0x27, 1]), ms(34));
        t.on_frame(&video(66, &[0x27, 1]), ms(134));
        t.on_frame(&video(50, &[0x27, 1]), ms(140)); // backwards
        t.on_frame(
            &FrameInfo::classify(FrameKind::Audio, 4, 3, &[0xaf, 1]),
            ms(141),
        );
        assert!(!t.first_frame_violation);
        assert_eq!(t.ts_violations, 2);
        assert_eq!(t.max_gap, Duration::from_millis(100));
        assert_eq!(t.gaps_us, vec![33_000, 100_000, 6_000]);
        assert_eq!(t.video_frames, 5);
        assert_eq!(t.audio_frames, 2);
    }

    #[test]
    fn lateness_and_losses_count_inside_the_window_only() {
        let now = Instant::now();
        let stamped = |seq: u64, sent: u64| FrameInfo {
            stamp: Some((seq, sent)),
            ..video(0, &[0x27, 1])
        };
        let mut t = PlayerTracker::new();
        t.late_window = Some((1_000_000, 9_000_000));
        t.on_frame_read(&stamped(0, 500_000), now, 2_000_000); // before the window
        t.on_frame_read(&stamped(1, 1_000_000), now, 3_000_000);
        t.on_frame_read(&stamped(4, 2_000_000), now, 3_000_000); // 2 and 3 lost
        t.on_frame_read(&stamped(4, 2_000_000), now, 3_000_000); // repeat: ignored
        t.on_frame_read(&stamped(5, 9_500_000), now, 9_600_000); // after the window
        assert_eq!(t.late_us, vec![2_000, 1_000]);
        assert_eq!(t.frames_lost, 2);
        assert_eq!(t.newest_sent_ns, 9_500_000);
        assert_eq!(t.stamped_frames, 5);
    }

    #[test]
    fn first_picture_must_be_a_keyframe() {
        let now = Instant::now();
        let mut t = PlayerTracker::new();
        t.on_frame(&video(0, &[0x17, 0]), now);
        t.on_frame(&video(0, &[0x27, 1]), now);
        t.on_frame(&video(0, &[0x17, 1]), now);
        assert!(t.first_frame_violation);
        // Gaps only count from the first keyframe on.
        assert!(t.gaps_us.is_empty());
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let m = Millis::from_micros(&mut v);
        assert_eq!((m.p50, m.p99, m.max), (50.0, 99.0, 100.0));
        assert_eq!(Millis::from_micros(&mut []), Millis::default());
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn report_aggregates() {
        let started = Instant::now();
        let mut ok = PlayerTracker::new();
        ok.bytes = 1_000_000_000;
        ok.on_frame(&video(0, &[0x17, 1]), started + Duration::from_millis(10));
        ok.on_frame(&video(33, &[0x27, 1]), started + Duration::from_millis(43));
        let mut results = vec![
            PlayerResult {
                outcome: Outcome::Completed,
                started,
                connect_time: Some(Duration::from_millis(2)),
                tracker: ok,
            },
            PlayerResult {
                outcome: Outcome::Failed("connection refused".into()),
                started,
                connect_time: None,
                tracker: PlayerTracker::new(),
            },
        ];
        let run = RunInfo {
            label: "x".into(),
            url: "http://h/a/s.flv".into(),
            protocol: "http-flv".into(),
            players_requested: 2,
            duration: Duration::from_secs(8),
            elapsed: Duration::from_secs(8),
            steady_bytes: 0,
            steady_elapsed: Duration::ZERO,
            server_cpu: Some(Duration::from_secs(2)),
            client_cpu: Duration::from_secs(1),
            read_every: Duration::ZERO,
            window: Duration::ZERO,
            window_bytes: 0,
            window_cpu: None,
            late_until_ns: 0,
        };
        let r = Report::build(&run, &mut results);
        assert_eq!((r.players_connected, r.players_failed), (1, 1));
        assert_eq!(r.throughput_gbps, 1.0);
        assert_eq!(r.server_cpu_s_per_gb, Some(2.0));
        assert_eq!(r.gap_ms.max, 33.0);
        assert_eq!(r.first_keyframe_ms.max, 10.0);
        assert_eq!(r.errors.get("failed: connection refused"), Some(&1));
        let text = r.to_string();
        assert!(text.contains("1 failed"), "{text}");
        let json = serde_json::to_string(&r).expect("serializes");
        let back: Report = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.players_connected, 1);
    }

    #[test]
    fn drainers_behind_against_the_decoders_median() {
        // Decoders' median 1000: 900 keeps up, 899 does not.
        assert_eq!(drainers_behind(&mut [1000, 10, 2000], &[900, 899, 1500]), 1);
        // No decoder: against the best drainer.
        assert_eq!(drainers_behind(&mut [], &[1000, 950, 100]), 1);
        assert_eq!(drainers_behind(&mut [], &[]), 0);
    }
}
