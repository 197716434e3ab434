//! Long-running media for lifecycle and upgrade tests: a real-time
//! publisher that can feed several origin processes at once, and watchers
//! that record, frame by frame, what a long-lived player received.
//!
//! During a smooth upgrade a publisher stays on the old generation until
//! it reconnects, while new players land on the new one. [`Feed`] models an
//! encoder that does exactly that: one synthetic stream, paced by its own
//! timestamps, sent to every attached RTMP connection ("link"); a new link
//! (e.g. to the new generation) gets the headers at once and frames from
//! the next keyframe on, so every process gets the same frames with the
//! same indices. When a server closes a link the feed records when and why
//! and carries on with the others.
//!
//! [`Watcher`] plays one connection in the background and keeps the
//! evidence a lifecycle assertion needs: index gaps, the longest silence
//! between frames, the time of the last frame, and when and how the
//! connection ended (EOF, error, a properly terminated HTTP-FLV body).
//!
//! For failover tests (an edge switching origins under a player) [`Seen`]
//! also keeps continuity per track ([`TrackSeen`]): duplicated frame
//! indices (a replayed GOP), timestamp regressions (a timeline not
//! spliced), frames missing and when that was noticed (so a test can
//! require "nothing lost after the fault"), and the longest stall, the
//! wall-clock gap between any two consecutive frames the player received.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_common::media::{MediaFrame, MediaKind};
use baton_common::rtmp::client::{ClientError, RtmpPlayer, RtmpPublisher};
use baton_common::rtmp::client_session::ClientEvent;
use tokio::sync::{mpsc, watch};

use crate::flv_player::FlvPlayer;
use crate::play::send_all;
use crate::synth::{frame_index, Synth, SynthConfig};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One attached publisher connection, as the feed saw it.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub label: String,
    pub attached: Instant,
    /// Frames sent on this link.
    pub frames: u64,
    /// When sending failed (the server closed it) and the error; `None`
    /// while it is live or if the feed closed it itself.
    pub closed: Option<(Instant, String)>,
    /// Whether it is still attached.
    pub live: bool,
}

#[derive(Debug, Default)]
struct FeedState {
    links: Vec<LinkInfo>,
    /// Media frames generated so far.
    generated: u64,
    /// Indices of the keyframes generated, ascending.
    keyframes: Vec<u32>,
    last_index: Option<u32>,
}

struct NewLink {
    label: String,
    publisher: RtmpPublisher,
}

/// A synthetic stream published in real time to any number of links; see
/// the module docs.
pub struct Feed {
    state: Arc<Mutex<FeedState>>,
    attach_tx: mpsc::UnboundedSender<NewLink>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    headers: Vec<MediaFrame>,
}

impl Feed {
    /// Starts generating `config` frames in real time (nothing is sent
    /// until a link is attached).
    pub fn start(config: SynthConfig) -> Feed {
        let synth = Synth::new(config);
        let headers = synth.headers();
        let state = Arc::new(Mutex::new(FeedState::default()));
        let (attach_tx, attach_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_feed(synth, state.clone(), attach_rx, stop_rx));
        Feed {
            state,
            attach_tx,
            stop,
            task,
            headers,
        }
    }

    /// 30 fps with audio, a keyframe every 15 video frames (0.5 s).
    pub fn standard() -> Feed {
        Self::start(SynthConfig {
            gop: 15,
            ..SynthConfig::default()
        })
    }

    /// Publishes to `url` (NetStream.Publish.Start within 10 s), sends the
    /// headers and attaches the connection: it gets every frame from the
    /// next keyframe on.
    pub async fn attach(&self, label: &str, url: &str) -> Result<(), ClientError> {
        let mut publisher = match tokio::time::timeout(
            Duration::from_secs(10),
            RtmpPublisher::connect(url),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    during: "attaching a feed link",
                    timeout: Duration::from_secs(10),
                })
            }
        };
        send_all(&mut publisher, &self.headers).await?;
        {
            let mut state = lock(&self.state);
            state.links.push(LinkInfo {
                label: label.to_owned(),
                attached: Instant::now(),
                frames: 0,
                closed: None,
                live: true,
            });
        }
        self.attach_tx
            .send(NewLink {
                label: label.to_owned(),
                publisher,
            })
            .map_err(|_| ClientError::Closed("attaching to a stopped feed"))?;
        Ok(())
    }

    /// The link called `label`, as last seen.
    pub fn link(&self, label: &str) -> Option<LinkInfo> {
        lock(&self.state)
            .links
            .iter()
            .rev()
            .find(|l| l.label == label)
            .cloned()
    }

    pub fn links(&self) -> Vec<LinkInfo> {
        lock(&self.state).links.clone()
    }

    /// Index of the last frame generated.
    pub fn last_index(&self) -> Option<u32> {
        lock(&self.state).last_index
    }

    /// Whether frame `index` was a keyframe.
    pub fn is_keyframe(&self, index: u32) -> bool {
        lock(&self.state).keyframes.binary_search(&index).is_ok()
    }

    /// Media frames generated so far.
    pub fn generated(&self) -> u64 {
        lock(&self.state).generated
    }

    /// Waits (at most `limit`) until the link `label` was closed by the
    /// server; returns when.
    pub async fn wait_link_closed(&self, label: &str, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((at, _)) = self.link(label).and_then(|l| l.closed) {
                return Some(at);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops publishing: every live link is closed politely (FCUnpublish,
    /// deleteStream, TCP shutdown). Returns the links.
    pub async fn stop(self) -> Vec<LinkInfo> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        lock(&self.state).links.clone()
    }
}

async fn run_feed(
    mut synth: Synth,
    state: Arc<Mutex<FeedState>>,
    mut attach_rx: mpsc::UnboundedReceiver<NewLink>,
    mut stop: watch::Receiver<bool>,
) {
    struct Live {
        label: String,
        publisher: RtmpPublisher,
        waiting_for_key: bool,
    }
    let mut links: Vec<Live> = Vec::new();
    let started = tokio::time::Instant::now();
    let base = u64::from(synth.config.start_ms);
    loop {
        let frame = synth.next_frame();
        let due = started + Duration::from_millis(u64::from(frame.timestamp) - base);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        while let Ok(new) = attach_rx.try_recv() {
            links.push(Live {
                label: new.label,
                publisher: new.publisher,
                waiting_for_key: true,
            });
        }
        let index = frame_index(&frame);
        {
            let mut s = lock(&state);
            s.generated += 1;
            s.last_index = index;
            if frame.is_keyframe() {
                if let Some(i) = index {
                    s.keyframes.push(i);
                }
            }
        }
        let mut closed = Vec::new();
        for (i, link) in links.iter_mut().enumerate() {
            if link.waiting_for_key {
                if !frame.is_keyframe() {
                    continue;
                }
                link.waiting_for_key = false;
            }
            let result = match link.publisher.send(&frame).await {
                Ok(()) => link.publisher.flush().await,
                Err(e) => Err(e),
            };
            let mut s = lock(&state);
            let info = s.links.iter_mut().rev().find(|l| l.label == link.label);
            match result {
                Ok(()) => {
                    if let Some(info) = info {
                        info.frames += 1;
                    }
                }
                Err(e) => {
                    if let Some(info) = info {
                        info.closed = Some((Instant::now(), e.to_string()));
                        info.live = false;
                    }
                    closed.push(i);
                }
            }
        }
        for i in closed.into_iter().rev() {
            links.remove(i);
        }
    }
    for link in links {
        let label = link.label.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), link.publisher.close()).await;
        let mut s = lock(&state);
        if let Some(info) = s.links.iter_mut().rev().find(|l| l.label == label) {
            info.live = false;
        }
    }
}

/// Continuity of one track (audio or video) as a player received it;
/// only frames carrying a synthetic index count (not sequence headers or
/// metadata).
#[derive(Debug, Clone, Default)]
pub struct TrackSeen {
    /// Indexed frames received on this track (duplicates included).
    pub frames: u64,
    pub last_index: Option<u32>,
    pub last_timestamp: Option<u32>,
    /// Indices received again after they had been received once.
    pub duplicates: Vec<u32>,
    /// Where the timestamp went backwards: the previous timestamp on this
    /// track, the new one, the index of the frame that carried it and when
    /// it arrived.
    pub timestamp_regressions: Vec<TimestampRegression>,
}

/// A timestamp lower than the previous one on the same track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampRegression {
    pub previous: u32,
    pub timestamp: u32,
    pub index: u32,
    pub at: Instant,
}

/// Frames never received: indices `first..=last` were skipped when a
/// frame with a higher index arrived at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    pub first: u32,
    pub last: u32,
    pub at: Instant,
}

impl Missing {
    pub fn count(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }
}

/// What a [`Watcher`] has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Media frames (including headers).
    pub frames: u64,
    /// Frames carrying a synthetic index.
    pub indexed: u64,
    pub first_index: Option<u32>,
    pub last_index: Option<u32>,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    /// (previous index, index received) wherever they are not consecutive.
    pub index_gaps: Vec<(u32, u32)>,
    /// Longest time between two indexed frames, and when it ended.
    pub max_silence: Duration,
    pub max_silence_at: Option<Instant>,
    /// The longest stall: the longest wall-clock time between two
    /// consecutive media frames of any kind (headers included), and when
    /// it ended.
    pub max_stall: Duration,
    pub max_stall_at: Option<Instant>,
    /// When the last media frame of any kind arrived.
    pub last_frame_at: Option<Instant>,
    /// Continuity of the video and audio tracks.
    pub video: TrackSeen,
    pub audio: TrackSeen,
    /// Indices skipped (never received), in the order noticed. Unlike
    /// `index_gaps` a replay (going back) is not listed here, and a replay
    /// that fills a hole does not remove it.
    pub missing: Vec<Missing>,
    /// Received indices as sorted, disjoint, inclusive ranges (one range
    /// when nothing was lost), to tell duplicates from late frames.
    received: Vec<(u32, u32)>,
    /// RTMP onStatus codes received, in order.
    pub statuses: Vec<String>,
    /// When and how the connection ended: "eof" or the error.
    pub ended: Option<(Instant, String)>,
    /// HTTP-FLV: whether the chunked body was terminated properly (the
    /// server ended the response rather than dropping the connection).
    pub body_terminated: Option<bool>,
}

impl Seen {
    /// Time from `since` to the end of the connection.
    pub fn ended_after(&self, since: Instant) -> Option<Duration> {
        self.ended
            .as_ref()
            .map(|(at, _)| at.saturating_duration_since(since))
    }

    /// Duplicated indices on both tracks.
    pub fn duplicates(&self) -> u64 {
        (self.video.duplicates.len() + self.audio.duplicates.len()) as u64
    }

    /// Timestamp regressions on both tracks.
    pub fn timestamp_regressions(&self) -> u64 {
        (self.video.timestamp_regressions.len() + self.audio.timestamp_regressions.len()) as u64
    }

    /// Skips noticed at or after `since` (e.g. the moment of a fault).
    pub fn missing_since(&self, since: Instant) -> Vec<Missing> {
        self.missing
            .iter()
            .filter(|m| m.at >= since)
            .copied()
            .collect()
    }

    /// Frames never received, in total.
    pub fn missing_frames(&self) -> u64 {
        self.missing.iter().map(Missing::count).sum()
    }

    /// What a failover test requires of a player from `since` on, as a
    /// list of violations (empty when continuous): no duplicated index and
    /// no timestamp regression on either track (over the whole
    /// connection) and no frame missing after `since`.
    pub fn continuity_violations(&self, since: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (name, track) in [("video", &self.video), ("audio", &self.audio)] {
            if !track.duplicates.is_empty() {
                out.push(format!(
                    "{} duplicated {name} frame(s): {:?}",
                    track.duplicates.len(),
                    abbreviate(&track.duplicates)
                ));
            }
            if !track.timestamp_regressions.is_empty() {
                let r: Vec<(u32, u32, u32)> = track
                    .timestamp_regressions
                    .iter()
                    .map(|r| (r.previous, r.timestamp, r.index))
                    .collect();
                out.push(format!(
                    "{} {name} timestamp regression(s) (previous ms, ms, index): {:?}",
                    r.len(),
                    abbreviate(&r)
                ));
            }
        }
        let missing = self.missing_since(since);
        if !missing.is_empty() {
            let ranges: Vec<(u32, u32)> = missing.iter().map(|m| (m.first, m.last)).collect();
            out.push(format!(
                "{} frame(s) missing after the fault: {:?}",
                missing.iter().map(Missing::count).sum::<u64>(),
                abbreviate(&ranges)
            ));
        }
        out
    }

    /// One line for a test's output: frames, the longest stall, and
    /// duplicates / regressions / missing frames per track.
    pub fn continuity_summary(&self) -> String {
        let mut line = format!(
            "{} frames ({} indexed, {}..{}), longest stall {:?}",
            self.frames,
            self.indexed,
            self.first_index.map_or("-".into(), |i| i.to_string()),
            self.last_index.map_or("-".into(), |i| i.to_string()),
            self.max_stall
        );
        for (name, track) in [("video", &self.video), ("audio", &self.audio)] {
            let _ = write!(
                line,
                "; {name}: {} frames, {} duplicated, {} timestamp regressions",
                track.frames,
                track.duplicates.len(),
                track.timestamp_regressions.len()
            );
        }
        let _ = write!(line, "; {} missing", self.missing_frames());
        line
    }

    fn record(&mut self, frame: &MediaFrame, now: Instant) {
        self.frames += 1;
        if let Some(last) = self.last_frame_at {
            let stall = now.saturating_duration_since(last);
            if stall > self.max_stall {
                self.max_stall = stall;
                self.max_stall_at = Some(now);
            }
        }
        self.last_frame_at = Some(now);
        let Some(index) = frame_index(frame) else {
            return;
        };
        self.indexed += 1;
        if let Some(prev) = self.last_index {
            if index != prev.wrapping_add(1) {
                self.index_gaps.push((prev, index));
            }
        } else {
            self.first_index = Some(index);
            self.first_at = Some(now);
        }
        if let Some(last) = self.last_at {
            let silence = now.duration_since(last);
            if silence > self.max_silence {
                self.max_silence = silence;
                self.max_silence_at = Some(now);
            }
        }
        self.last_index = Some(index);
        self.last_at = Some(now);
        self.record_continuity(frame, index, now);
    }

    fn record_continuity(&mut self, frame: &MediaFrame, index: u32, now: Instant) {
        let duplicate = self.received.iter().any(|&(a, b)| a <= index && index <= b);
        if !duplicate {
            if let Some(highest) = self.received.last().map(|&(_, b)| b) {
                if index > highest.saturating_add(1) {
                    self.missing.push(Missing {
                        first: highest + 1,
                        last: index - 1,
                        at: now,
                    });
                }
            }
            insert_index(&mut self.received, index);
        }
        let track = match frame.kind {
            MediaKind::Video => &mut self.video,
            MediaKind::Audio => &mut self.audio,
            MediaKind::Data => return,
        };
        track.frames += 1;
        if duplicate {
            track.duplicates.push(index);
        }
        if let Some(previous) = track.last_timestamp {
            if frame.timestamp < previous {
                track.timestamp_regressions.push(TimestampRegression {
                    previous,
                    timestamp: frame.timestamp,
                    index,
                    at: now,
                });
            }
        }
        track.last_index = Some(index);
        track.last_timestamp = Some(frame.timestamp);
    }
}

/// Adds `index` (not yet present) to sorted, disjoint, inclusive ranges,
/// merging neighbours.
fn insert_index(ranges: &mut Vec<(u32, u32)>, index: u32) {
    // First range starting after `index`.
    let pos = ranges.partition_point(|&(a, _)| a <= index);
    let joins_prev = pos > 0 && ranges[pos - 1].1.checked_add(1) == Some(index);
    let joins_next = pos < ranges.len() && index.checked_add(1) == Some(ranges[pos].0);
    match (joins_prev, joins_next) {
        (true, true) => {
            ranges[pos - 1].1 = ranges[pos].1;
            ranges.remove(pos);
        }
        (true, false) => ranges[pos - 1].1 = index,
        (false, true) => ranges[pos].0 = index,
        (false, false) => ranges.insert(pos, (index, index)),
    }
}

/// The first and last few items of a long list, for messages.
fn abbreviate<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.len() <= 12 {
        format!("{items:?}")
    } else {
        format!(
            "{:?} ... {:?} ({} in all)",
            &items[..6],
            &items[items.len() - 6..],
            items.len()
        )
    }
}

/// One media frame as a [`Watcher`] received it, in arrival order (see
/// [`Watcher::received`]): for checks about particular frames, e.g. that
/// the first video frame of a new publisher is a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub kind: MediaKind,
    /// The synthetic index, if the frame carries one (not for headers).
    pub index: Option<u32>,
    pub timestamp: u32,
    pub keyframe: bool,
    pub at: Instant,
}

impl Received {
    fn of(frame: &MediaFrame, at: Instant) -> Received {
        Received {
            kind: frame.kind,
            index: frame_index(frame),
            timestamp: frame.timestamp,
            keyframe: frame.is_keyframe(),
            at,
        }
    }
}

/// A player read in the background; see the module docs.
pub struct Watcher {
    pub label: String,
    seen: Arc<Mutex<Seen>>,
    /// Every media frame received (kept apart from `seen`, which is
    /// cloned on every poll).
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Watches an RTMP player (statuses are recorded too).
    pub fn rtmp(label: impl Into<String>, mut player: RtmpPlayer) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (seen.clone(), received.clone());
        let task = tokio::spawn(async move {
            let end = loop {
                match player.next_event().await {
                    Ok(Some(ClientEvent::Media { frame, .. })) => {
                        let now = Instant::now();
                        lock(&r).push(Received::of(&frame, now));
                        lock(&s).record(&frame, now)
                    }
                    Ok(Some(ClientEvent::Status { code, .. })) => lock(&s).statuses.push(code),
                    Ok(Some(_)) => {}
                    Ok(None) => break "eof".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            lock(&s).ended = Some((Instant::now(), end));
        });
        Watcher {
            label: label.into(),
            seen,
            received,
            task,
        }
    }

    /// Watches an HTTP-FLV player.
    pub fn flv(label: impl Into<String>, mut player: FlvPlayer) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (seen.clone(), received.clone());
        let task = tokio::spawn(async move {
            let end = loop {
                match player.next_frame().await {
                    Ok(Some(frame)) => {
                        let now = Instant::now();
                        lock(&r).push(Received::of(&frame, now));
                        lock(&s).record(&frame, now)
                    }
                    Ok(None) => break "eof".to_owned(),
                    Err(e) => break format!("{e:#}"),
                }
            };
            let mut seen = lock(&s);
            seen.body_terminated = Some(player.body_terminated());
            seen.ended = Some((Instant::now(), end));
        });
        Watcher {
            label: label.into(),
            seen,
            received,
            task,
        }
    }

    pub fn seen(&self) -> Seen {
        lock(&self.seen).clone()
    }

    /// Every media frame received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.received).clone()
    }

    pub fn is_ended(&self) -> bool {
        lock(&self.seen).ended.is_some()
    }

    /// Waits until at least `n` more indexed frames arrived (`Err` with
    /// what was seen after `limit`).
    pub async fn wait_frames(&self, n: u64, limit: Duration) -> Result<Seen, Seen> {
        let target = self.seen().indexed + n;
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if seen.indexed >= target {
                return Ok(seen);
            }
            if seen.ended.is_some() || Instant::now() >= deadline {
                return Err(seen);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the connection ended (`None` after `limit`).
    pub async fn wait_end(&self, limit: Duration) -> Option<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if seen.ended.is_some() {
                return Some(seen);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Closes the player's connection (the client leaves; the socket is
    /// closed when this returns) and returns what it had seen.
    pub async fn leave(mut self) -> Seen {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.seen()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stream_is_continuous() {
        let mut synth = Synth::standard();
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let headers = synth.headers();
        let media = synth.frames(200);
        for (i, f) in headers.iter().chain(&media).enumerate() {
            seen.record(f, t0 + Duration::from_millis(i as u64 * 10));
        }
        assert!(seen.continuity_violations(t0).is_empty(), "{seen:?}");
        assert_eq!(seen.received, vec![(0, 199)]);
        assert!(seen.video.frames > 0 && seen.audio.frames > 0);
        assert_eq!(seen.video.frames + seen.audio.frames, 200);
        assert_eq!(seen.max_stall, Duration::from_millis(10));
    }

    #[test]
    fn replays_losses_and_stalls_are_counted() {
        let all = Synth::standard().frames(100);
        let mut seen = Seen::default();
        let t0 = Instant::now();
        // Frames 10 ms apart, starting `pause` after the last one.
        let feed = |seen: &mut Seen, fs: &[MediaFrame], mut at: Instant, pause: u64| {
            at += Duration::from_millis(pause);
            for f in fs {
                seen.record(f, at);
                at += Duration::from_millis(10);
            }
            at - Duration::from_millis(10)
        };
        let fault = feed(&mut seen, &all[..50], t0, 0);
        // A replay of 40..50 (both tracks go back in time once), then
        // after a 700 ms stall a jump over 60..70.
        let at = feed(&mut seen, &all[40..60], fault, 10);
        let end = feed(&mut seen, &all[70..], at, 710);
        assert_eq!(seen.duplicates(), 10);
        assert!(!seen.video.duplicates.is_empty() && !seen.audio.duplicates.is_empty());
        assert_eq!(seen.video.timestamp_regressions.len(), 1);
        assert_eq!(seen.audio.timestamp_regressions.len(), 1);
        assert_eq!(seen.missing_frames(), 10);
        assert_eq!(seen.missing_since(fault).len(), 1);
        assert_eq!(seen.missing_since(end).len(), 0);
        assert_eq!(seen.max_stall, Duration::from_millis(710));
        // duplicates and regressions per track, and the loss
        assert_eq!(seen.continuity_violations(fault).len(), 5, "{seen:?}");
        assert_eq!(seen.continuity_violations(end).len(), 4);
        assert!(!seen.continuity_summary().contains('\n'));
    }

    #[test]
    fn a_regression_is_reported_on_its_own_track_only() {
        let mut all = Synth::standard().frames(20);
        let audio = (3..20)
            .find(|&i| all[i].kind == MediaKind::Audio)
            .expect("some audio frame");
        all[audio].timestamp = 0;
        let mut seen = Seen::default();
        let t0 = Instant::now();
        for f in &all {
            seen.record(f, t0);
        }
        assert_eq!(seen.audio.timestamp_regressions.len(), 1);
        assert_eq!(seen.audio.timestamp_regressions[0].index, audio as u32);
        assert!(seen.video.timestamp_regressions.is_empty());
        assert_eq!(seen.duplicates(), 0);
        assert_eq!(seen.missing_frames(), 0);
    }

    #[test]
    fn index_ranges_merge() {
        let mut r = Vec::new();
        for i in [5, 7, 6, 1, 3, 2, 9] {
            insert_index(&mut r, i);
        }
        assert_eq!(r, vec![(1, 3), (5, 7), (9, 9)]);
        insert_index(&mut r, 4);
        insert_index(&mut r, 8);
        assert_eq!(r, vec![(1, 9)]);
        insert_index(&mut r, u32::MAX);
        insert_index(&mut r, 0);
        assert_eq!(r, vec![(0, 9), (u32::MAX, u32::MAX)]);
    }
}
