//! `baton-bench latency`: frame delivery latency through a chain of nodes.
//!
//! One process publishes the [`crate::synth`] stream to one or more URLs and
//! plays it back from one or more URLs (an origin, an edge in front of it,
//! …); a play URL gets the stream of the publish URL with the same stream
//! name (the last path segment), so several paths (origin direct, one edge,
//! two edges) are measured in one run under the same conditions. Every
//! audio and video frame (not the sequence headers) carries, inside its
//! filler, a marker, a sequence number and the sender's monotonic send time
//! in nanoseconds since the tool started; each player subtracts that from
//! the frame's arrival time on the same clock. Publisher and players share
//! one process and one clock, so no clock synchronisation is involved.
//!
//! Players join after the publisher, then a warm-up passes (connections,
//! the edge's on-demand pull, the GOP-cache burst a new player receives);
//! only frames *sent* inside the measurement window that follows are
//! counted, so the burst of cached frames a joining player gets (sent up to
//! a GOP earlier) never counts as latency. Frames of the window that never
//! arrived are reported as missing.
//!
//! Stamps are written right before the frame is handed to the socket, so the
//! latency includes the publisher's write, every node's receive, relay and
//! write (and write coalescing, `--write-coalesce`), and the player's read
//! and RTMP decode.

use std::cell::Cell;
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_common::media::{MediaFrame, MediaKind};
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::rtmp_client::{RtmpPlayer, RtmpPublisher};
use crate::stats::{percentile, Millis};
use crate::synth::{StreamShape, SyntheticStream};

/// Marks a stamped payload.
const MAGIC: [u8; 4] = *b"BLAT";
/// Marker, sequence number (u64) and send time in ns (u64), big-endian.
pub const STAMP_LEN: usize = 4 + 8 + 8;
/// Stamps go after the FLV video tag header, composition time and NAL
/// length (and the NAL header byte): `0x17 0x01 cts(3) len(4) nal(1)`.
const VIDEO_STAMP_AT: usize = 10;
/// ... and after the AAC tag header `0xaf 0x01`.
const AUDIO_STAMP_AT: usize = 2;
/// Players keep reading this long after the window, for frames in flight.
const DRAIN: Duration = Duration::from_secs(1);

/// Where a frame's stamp goes; `None` for sequence headers, data and
/// frames too small to hold one.
fn stamp_offset(frame: &MediaFrame) -> Option<usize> {
    let at = match frame.kind {
        MediaKind::Video if !frame.is_sequence_header() => VIDEO_STAMP_AT,
        MediaKind::Audio if !frame.is_sequence_header() => AUDIO_STAMP_AT,
        _ => return None,
    };
    (frame.payload.len() >= at + STAMP_LEN).then_some(at)
}

/// A copy of `frame` carrying `seq` and `sent_ns` (unchanged if it cannot
/// hold a stamp).
pub fn stamp(frame: &MediaFrame, seq: u64, sent_ns: u64) -> MediaFrame {
    let Some(at) = stamp_offset(frame) else {
        return frame.clone();
    };
    let payload = splice_stamp(&frame.payload, at, MAGIC, seq, sent_ns);
    MediaFrame::new(frame.kind, frame.timestamp, payload)
}

/// `payload` with `magic`, `seq` and `sent_ns` (the [`STAMP_LEN`] bytes
/// every bench stamp has) written over the bytes at `at`; the caller
/// checked that they fit.
pub(crate) fn splice_stamp(
    payload: &[u8],
    at: usize,
    magic: [u8; 4],
    seq: u64,
    sent_ns: u64,
) -> bytes::Bytes {
    let mut b = BytesMut::with_capacity(payload.len());
    b.put_slice(&payload[..at]);
    b.put_slice(&magic);
    b.put_u64(seq);
    b.put_u64(sent_ns);
    b.put_slice(&payload[at + STAMP_LEN..]);
    b.freeze()
}

/// The `(seq, sent_ns)` a stamped frame carries.
pub fn read_stamp(frame: &MediaFrame) -> Option<(u64, u64)> {
    let at = stamp_offset(frame)?;
    let s = &frame.payload[at..at + STAMP_LEN];
    if s[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(s[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(s[12..20].try_into().ok()?);
    Some((seq, sent))
}

/// One URL the stream is played back from, with a name for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayTarget {
    pub name: String,
    pub url: String,
}

impl PlayTarget {
    /// `NAME=rtmp://…` or a bare URL (named by itself).
    pub fn parse(s: &str) -> Result<PlayTarget, String> {
        let (name, url) = match s.split_once('=') {
            Some((name, url)) if !name.contains("://") => (name.to_string(), url.to_string()),
            _ => (s.to_string(), s.to_string()),
        };
        if !url.starts_with("rtmp://") {
            return Err(format!(
                "{url:?}: latency players speak RTMP (rtmp://host:port/app/stream)"
            ));
        }
        Ok(PlayTarget { name, url })
    }
}

#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Publish URLs, each with a distinct stream name.
    pub publish: Vec<String>,
    pub plays: Vec<PlayTarget>,
    /// Players per play URL.
    pub players: u64,
    /// Measurement window: frames sent during it are counted.
    pub duration: Duration,
    /// From the players' start to the window's start.
    pub warmup: Duration,
    pub bitrate: u64,
    pub label: String,
    pub json: Option<PathBuf>,
}

/// Latency through one play URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    /// The publish URL whose stream this plays.
    pub publish: String,
    pub players: u64,
    pub players_failed: u64,
    pub players_ended_early: u64,
    /// Stamped frames sent in the window, times the players that played.
    pub frames_expected: u64,
    pub frames_received: u64,
    /// Expected frames that did not arrive before the drain ended.
    pub frames_missing: u64,
    /// Every stamped frame of the window, audio and video.
    pub all_ms: Millis,
    pub video_ms: Millis,
    pub audio_ms: Millis,
    /// Per player: its p99; percentiles over the players (p50/p99/max).
    pub player_p99_ms: Millis,
    pub errors: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    pub label: String,
    pub publish: Vec<String>,
    pub bitrate: u64,
    pub window_s: f64,
    /// Stamped frames each publisher sent in the window.
    pub frames_sent: Vec<u64>,
    pub targets: Vec<TargetReport>,
}

fn ms3(m: &Millis) -> String {
    format!("p50 {:.2} / p99 {:.2} / max {:.2} ms", m.p50, m.p99, m.max)
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== latency: {}, {} kbit/s, {:.0} s window",
            self.label,
            self.bitrate / 1000,
            self.window_s,
        )?;
        for (url, sent) in self.publish.iter().zip(&self.frames_sent) {
            writeln!(
                f,
                "publishing to {url}: {sent} stamped frames sent in the window"
            )?;
        }
        for t in &self.targets {
            writeln!(
                f,
                "{} ({}): {} players ({} failed, {} ended early), {} / {} frames ({} missing)",
                t.name,
                t.url,
                t.players,
                t.players_failed,
                t.players_ended_early,
                t.frames_received,
                t.frames_expected,
                t.frames_missing
            )?;
            writeln!(f, "  all frames: {}", ms3(&t.all_ms))?;
            writeln!(f, "  video:      {}", ms3(&t.video_ms))?;
            writeln!(f, "  audio:      {}", ms3(&t.audio_ms))?;
            writeln!(f, "  per-player p99: {}", ms3(&t.player_p99_ms))?;
            for e in &t.errors {
                writeln!(f, "  error: {e}")?;
            }
        }
        Ok(())
    }
}

/// The stream name of an RTMP URL: its last path segment, query removed.
fn stream_name(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// Timeline every task of the run shares.
struct Clock {
    start: Instant,
    window_start_ns: Cell<u64>,
    window_end_ns: Cell<u64>,
    /// The publisher stops here (after the players' drain).
    publish_until: Cell<Option<Instant>>,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn in_window(&self, sent_ns: u64) -> bool {
        (self.window_start_ns.get()..self.window_end_ns.get()).contains(&sent_ns)
    }
}

/// What one player measured.
#[derive(Debug, Default)]
struct PlayerSamples {
    failed: Option<String>,
    ended_early: Option<String>,
    video_us: Vec<u32>,
    audio_us: Vec<u32>,
}

fn micros(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

async fn play(
    url: String,
    clock: Rc<Clock>,
    connect_by: Instant,
    stop_at: Instant,
) -> PlayerSamples {
    let mut out = PlayerSamples::default();
    let mut player = match timeout_at(connect_by, RtmpPlayer::connect(&url)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            out.failed = Some(e.to_string());
            return out;
        }
        Err(_) => {
            out.failed = Some("connect/play timed out".into());
            return out;
        }
    };
    let end = sleep_until(stop_at);
    tokio::pin!(end);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut end => break,
            f = player.next_frame() => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => {
                out.ended_early = Some("stream ended".into());
                break;
            }
            Err(e) => {
                out.ended_early = Some(e.to_string());
                break;
            }
        };
        let arrived = clock.now_ns();
        let Some((_, sent)) = read_stamp(&frame) else {
            continue;
        };
        if !clock.in_window(sent) {
            continue;
        }
        let lat = micros(arrived.saturating_sub(sent));
        match frame.kind {
            MediaKind::Video => out.video_us.push(lat),
            _ => out.audio_us.push(lat),
        }
    }
    out
}

/// Publishes the stamped synthetic stream until the clock's
/// `publish_until` (set once the players start); counts the
/// stamped frames sent inside the window into `sent_in_window`.
async fn publish(
    url: String,
    bitrate: u64,
    clock: Rc<Clock>,
    ready: tokio::sync::oneshot::Sender<()>,
    sent_in_window: Rc<Cell<u64>>,
) -> Result<()> {
    let shape = StreamShape::for_bitrate(bitrate);
    let mut publisher = RtmpPublisher::connect(&url)
        .await
        .with_context(|| format!("publishing to {url}"))?;
    let _ = ready.send(());
    let start = Instant::now();
    let mut seq = 0u64;
    for (at, frame) in SyntheticStream::new(shape) {
        let due = start + at;
        if clock.publish_until.get().is_some_and(|until| due >= until) {
            break;
        }
        sleep_until(due).await;
        let sent = clock.now_ns();
        let stamped = stamp(&frame, seq, sent);
        if stamp_offset(&stamped).is_some() {
            seq += 1;
            if clock.in_window(sent) {
                sent_in_window.set(sent_in_window.get() + 1);
            }
        }
        publisher.send(&stamped).await.context("sending a frame")?;
        publisher.flush().await.context("flushing")?;
    }
    publisher.close().await.context("closing the stream")?;
    Ok(())
}

pub async fn run(opts: LatencyOptions) -> Result<LatencyReport> {
    if opts.plays.is_empty() {
        bail!("nothing to play: give --play URL at least once");
    }
    let clock = Rc::new(Clock {
        start: Instant::now(),
        window_start_ns: Cell::new(u64::MAX),
        window_end_ns: Cell::new(u64::MAX),
        publish_until: Cell::new(None),
    });
    // The window is fixed once the players start; until then nothing counts.
    // Which publisher each play URL follows, by stream name.
    let mut follows = Vec::with_capacity(opts.plays.len());
    for target in &opts.plays {
        let name = stream_name(&target.url);
        match opts.publish.iter().position(|p| stream_name(p) == name) {
            Some(i) => follows.push(i),
            None if opts.publish.len() == 1 => follows.push(0),
            None => bail!(
                "{}: no --publish URL has its stream name {name:?}",
                target.url
            ),
        }
    }
    let mut publishers = Vec::new();
    for url in &opts.publish {
        let sent_in_window = Rc::new(Cell::new(0u64));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_local(publish(
            url.clone(),
            opts.bitrate,
            clock.clone(),
            ready_tx,
            sent_in_window.clone(),
        ));
        publishers.push((task, ready_rx, sent_in_window));
    }
    let mut running = Vec::new();
    for (task, ready_rx, sent_in_window) in publishers {
        if ready_rx.await.is_err() {
            // The publisher ended before it was publishing: report its error.
            task.await.context("publisher task")??;
            bail!("a publisher stopped before publishing");
        }
        running.push((task, sent_in_window));
    }
    // Let the first keyframe reach the first node before players ask for it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let players_start = Instant::now();
    let window_start = players_start + opts.warmup;
    let window_end = window_start + opts.duration;
    let ns =
        |at: Instant| u64::try_from(at.duration_since(clock.start).as_nanos()).unwrap_or(u64::MAX);
    clock.window_start_ns.set(ns(window_start));
    clock.window_end_ns.set(ns(window_end));
    let stop_at = window_end + DRAIN;
    clock.publish_until.set(Some(stop_at));
    let mut handles = Vec::new();
    for target in &opts.plays {
        let mut per_target = Vec::new();
        for _ in 0..opts.players {
            per_target.push(tokio::task::spawn_local(play(
                target.url.clone(),
                clock.clone(),
                window_start,
                stop_at,
            )));
        }
        handles.push((target.clone(), per_target));
    }

    let mut targets = Vec::new();
    for ((target, per_target), &publisher) in handles.into_iter().zip(&follows) {
        let mut t = TargetReport {
            name: target.name.clone(),
            url: target.url.clone(),
            publish: opts.publish[publisher].clone(),
            ..TargetReport::default()
        };
        let mut all = Vec::new();
        let mut video = Vec::new();
        let mut audio = Vec::new();
        let mut player_p99 = Vec::new();
        let mut errors = std::collections::BTreeMap::<String, u64>::new();
        for h in per_target {
            let mut s = h.await.context("a player task panicked")?;
            t.players += 1;
            if let Some(e) = s.failed {
                t.players_failed += 1;
                *errors.entry(format!("failed: {e}")).or_default() += 1;
                continue;
            }
            if let Some(e) = s.ended_early.take() {
                t.players_ended_early += 1;
                *errors.entry(format!("ended early: {e}")).or_default() += 1;
            }
            let mut mine: Vec<u32> = s.video_us.iter().chain(&s.audio_us).copied().collect();
            mine.sort_unstable();
            player_p99.push(percentile(&mine, 99.0));
            t.frames_received += mine.len() as u64;
            all.extend_from_slice(&mine);
            video.append(&mut s.video_us);
            audio.append(&mut s.audio_us);
        }
        t.all_ms = Millis::from_micros(&mut all);
        t.video_ms = Millis::from_micros(&mut video);
        t.audio_ms = Millis::from_micros(&mut audio);
        t.player_p99_ms = Millis::from_micros(&mut player_p99);
        t.errors = errors
            .into_iter()
            .map(|(e, n)| format!("{n} x {e}"))
            .collect();
        targets.push(t);
    }
    let mut frames_sent = Vec::new();
    for (task, sent_in_window) in running {
        task.await.context("publisher task")??;
        frames_sent.push(sent_in_window.get());
    }
    for (t, &publisher) in targets.iter_mut().zip(&follows) {
        let played = t.players - t.players_failed;
        t.frames_expected = frames_sent[publisher] * played;
        t.frames_missing = t.frames_expected.saturating_sub(t.frames_received);
    }
    let report = LatencyReport {
        label: opts.label.clone(),
        publish: opts.publish.clone(),
        bitrate: opts.bitrate,
        window_s: opts.duration.as_secs_f64(),
        frames_sent,
        targets,
    };
    print!("{report}");
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{aac_frame, aac_sequence_header, avc_frame, avc_sequence_header};

    #[test]
    fn stamps_round_trip_and_keep_the_frame_shape() {
        let key = MediaFrame::new(MediaKind::Video, 40, avc_frame(true, 5000, 1));
        let s = stamp(&key, 7, 123_456_789);
        assert_eq!(s.payload.len(), 5000);
        assert!(s.is_keyframe());
        assert_eq!(s.timestamp, 40);
        assert_eq!(read_stamp(&s), Some((7, 123_456_789)));
        assert_eq!(read_stamp(&key), None);
        let a = MediaFrame::new(MediaKind::Audio, 0, aac_frame(186, 1));
        assert_eq!(read_stamp(&stamp(&a, 1, 2)), Some((1, 2)));
        for header in [
            MediaFrame::new(MediaKind::Video, 0, avc_sequence_header()),
            MediaFrame::new(MediaKind::Audio, 0, aac_sequence_header()),
        ] {
            assert_eq!(stamp(&header, 1, 2).payload, header.payload);
            assert_eq!(read_stamp(&header), None);
        }
    }

    #[test]
    fn play_targets() {
        let t = PlayTarget::parse("edge=rtmp://127.0.0.1:1/live/s").expect("named");
        assert_eq!(
            (t.name.as_str(), t.url.as_str()),
            ("edge", "rtmp://127.0.0.1:1/live/s")
        );
        let t = PlayTarget::parse("rtmp://h:1/a/s?x=1").expect("bare");
        assert_eq!(t.name, t.url);
        assert!(PlayTarget::parse("http://h/a.flv").is_err());
        assert_eq!(stream_name("rtmp://h:1/live/s-o?token=x"), "s-o");
        assert_eq!(stream_name("rtmp://h:1/live/s-e"), "s-e");
    }
}
