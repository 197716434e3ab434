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

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_common::media::MediaFrame;
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

    fn record(&mut self, frame: &MediaFrame, now: Instant) {
        self.frames += 1;
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
    }
}

/// A player read in the background; see the module docs.
pub struct Watcher {
    pub label: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Watches an RTMP player (statuses are recorded too).
    pub fn rtmp(label: impl Into<String>, mut player: RtmpPlayer) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let end = loop {
                match player.next_event().await {
                    Ok(Some(ClientEvent::Media { frame, .. })) => {
                        lock(&s).record(&frame, Instant::now())
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
            task,
        }
    }

    /// Watches an HTTP-FLV player.
    pub fn flv(label: impl Into<String>, mut player: FlvPlayer) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let end = loop {
                match player.next_frame().await {
                    Ok(Some(frame)) => lock(&s).record(&frame, Instant::now()),
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
            task,
        }
    }

    pub fn seen(&self) -> Seen {
        lock(&self.seen).clone()
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
