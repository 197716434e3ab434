//! Clients that account for every frame.
//!
//! A [`Publisher`] sends the synthetic stream of `baton_tests::synth` in
//! real time (every frame carries its index) and logs when each frame was
//! written; after a disconnect it reconnects and resumes at the next
//! keyframe, and on request it reconnects with timestamps starting from 0
//! again (indices continue, so players can still account for frames). A
//! [`Player`] (RTMP or HTTP-FLV) logs every frame it receives with its
//! arrival time, so the report can cut the run into per-fault windows and
//! say, for each, what was lost, duplicated, reordered or stalled.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_common::media::{MediaFrame, MediaKind};
use baton_common::rtmp::client::{RtmpPlayer, RtmpPublisher};
use baton_common::rtmp::client_session::ClientEvent;
use baton_tests::synth::{frame_index, Synth, SynthConfig};
use baton_tests::FlvPlayer;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::scenario::Protocol;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(300);

/// What a publisher did.
#[derive(Debug, Default, Clone)]
pub struct PubLog {
    /// (written at, index) of every media frame written.
    pub sent: Vec<(Instant, u32)>,
    /// Connections that ended under the publisher (not by its own choice).
    pub disconnects: Vec<(Instant, String)>,
    pub connects: u32,
}

pub struct Publisher {
    pub name: String,
    pub stream: String,
    pub log: Arc<Mutex<PubLog>>,
    reconnect: mpsc::UnboundedSender<()>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn start(name: &str, stream: &str, url: String, fps: u32, gop: u32) -> Publisher {
        let log = Arc::new(Mutex::new(PubLog::default()));
        let (reconnect, reconnect_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let config = SynthConfig {
            fps,
            gop,
            ..SynthConfig::default()
        };
        let task = tokio::spawn(publish(url, config, log.clone(), reconnect_rx, stop_rx));
        Publisher {
            name: name.to_owned(),
            stream: stream.to_owned(),
            log,
            reconnect,
            stop,
            task,
        }
    }

    /// A real encoder: ffmpeg encoding a test pattern and a tone (H.264
    /// and AAC, keyframe every `gop` frames) in real time to `url`. Its
    /// frames carry no index; the log records when ffmpeg exited on its
    /// own (a disconnect: edges never close a publisher).
    pub fn start_ffmpeg(name: &str, stream: &str, url: String, gop: u32) -> Publisher {
        let log = Arc::new(Mutex::new(PubLog::default()));
        let (reconnect, _ignored) = mpsc::unbounded_channel();
        let (stop, mut stop_rx) = watch::channel(false);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let gop = gop.to_string();
            let spawned = tokio::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
                .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
                .args(["-f", "lavfi", "-i", "sine=frequency=440"])
                .args([
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-tune",
                    "zerolatency",
                ])
                .args(["-g", &gop, "-c:a", "aac", "-f", "flv", &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    lock(&task_log)
                        .disconnects
                        .push((Instant::now(), format!("cannot start ffmpeg: {e}")));
                    return;
                }
            };
            lock(&task_log).connects += 1;
            tokio::select! {
                status = child.wait() => {
                    let why = status.map_or_else(|e| e.to_string(), |s| format!("ffmpeg exited: {s}"));
                    lock(&task_log).disconnects.push((Instant::now(), why));
                }
                _ = stop_rx.changed() => {
                    let _ = child.kill().await;
                }
            }
        });
        Publisher {
            name: name.to_owned(),
            stream: stream.to_owned(),
            log,
            reconnect,
            stop,
            task,
        }
    }

    /// Drop the connection and come back with timestamps from 0.
    pub fn reconnect_from_zero(&self) {
        let _ = self.reconnect.send(());
    }

    /// Stops and closes politely (bounded).
    pub async fn stop(self) -> PubLog {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
        let log = lock(&self.log).clone();
        log
    }
}

async fn publish(
    url: String,
    config: SynthConfig,
    log: Arc<Mutex<PubLog>>,
    mut reconnect: mpsc::UnboundedReceiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut synth = Synth::new(config.clone());
    // Wall-clock time of timestamp `pace_base`.
    let mut pace_start = Instant::now();
    let mut pace_base = u64::from(config.start_ms);
    'connect: loop {
        if *stop.borrow() {
            return;
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, RtmpPublisher::connect(&url)).await;
        let mut conn = match connected {
            Ok(Ok(c)) => c,
            _ => {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(RETRY) => continue 'connect,
                }
            }
        };
        lock(&log).connects += 1;
        let mut headers = synth.headers();
        for h in &mut headers {
            h.timestamp = synth_next_ts(&synth);
        }
        let mut sent_headers = Ok(());
        for h in &headers {
            if let Err(e) = conn.send(h).await {
                sent_headers = Err(e);
                break;
            }
        }
        if let Err(e) = sent_headers {
            lock(&log).disconnects.push((Instant::now(), e.to_string()));
            continue 'connect;
        }
        let mut waiting_for_key = true;
        loop {
            let frame = synth.next_frame();
            let due = pace_start
                + Duration::from_millis(u64::from(frame.timestamp).saturating_sub(pace_base));
            tokio::select! {
                _ = stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                    return;
                }
                Some(()) = reconnect.recv() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                    synth = Synth::new(SynthConfig {
                        first_index: synth.next_index(),
                        start_ms: 0,
                        ..config.clone()
                    });
                    pace_start = Instant::now();
                    pace_base = 0;
                    continue 'connect;
                }
                _ = tokio::time::sleep_until(due) => {}
            }
            if waiting_for_key {
                if !(frame.kind == MediaKind::Video && frame.is_keyframe()) {
                    continue;
                }
                waiting_for_key = false;
            }
            let result = match conn.send(&frame).await {
                Ok(()) => conn.flush().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if let Some(i) = frame_index(&frame) {
                        lock(&log).sent.push((Instant::now(), i));
                    }
                }
                Err(e) => {
                    lock(&log).disconnects.push((Instant::now(), e.to_string()));
                    continue 'connect;
                }
            }
        }
    }
}

/// The timestamp the synth's next frame will carry (headers go with it).
fn synth_next_ts(synth: &Synth) -> u32 {
    let mut probe = synth.clone();
    probe.next_frame().timestamp
}

/// One frame as a player received it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    /// Synthetic index (none for headers and metadata).
    pub index: Option<u32>,
    pub kind: MediaKind,
    pub timestamp: u32,
    /// Which connection of this player (0, 1, ... after reconnects).
    pub conn: u32,
}

#[derive(Debug, Default, Clone)]
pub struct PlayLog {
    pub frames: Vec<Arrival>,
    /// When each connection ended and why.
    pub ends: Vec<(Instant, String)>,
    pub connects: u32,
    /// What a real decoder (ffmpeg) complained about.
    pub decoder_errors: Vec<String>,
    /// The longest gap between two arrivals so far, kept as frames arrive
    /// so a progress line never scans the whole log.
    pub worst_gap: Duration,
}

impl PlayLog {
    /// Note a frame that arrived `arrival.at` (taken before the log was
    /// locked, so waiting for the lock never looks like a stall).
    pub fn push(&mut self, arrival: Arrival) {
        if let Some(last) = self.frames.last() {
            self.worst_gap = self
                .worst_gap
                .max(arrival.at.saturating_duration_since(last.at));
        }
        self.frames.push(arrival);
    }
}

pub struct Player {
    pub name: String,
    pub log: Arc<Mutex<PlayLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Player {
    pub fn start(name: &str, protocol: Protocol, url: String, reconnect: bool) -> Player {
        let log = Arc::new(Mutex::new(PlayLog::default()));
        let task = tokio::spawn(play(protocol, url, reconnect, log.clone()));
        Player {
            name: name.to_owned(),
            log,
            task,
        }
    }

    /// Audio and video frames received so far (decoded pictures for an
    /// ffmpeg player).
    pub fn received(&self) -> usize {
        lock(&self.log)
            .frames
            .iter()
            .filter(|a| a.kind != MediaKind::Data)
            .count()
    }

    pub fn stop(self) -> PlayLog {
        self.task.abort();
        let log = lock(&self.log).clone();
        log
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(log: &Mutex<PlayLog>, frame: &MediaFrame, conn: u32) {
    let at = Instant::now();
    lock(log).push(Arrival {
        at,
        index: frame_index(frame),
        kind: frame.kind,
        timestamp: frame.timestamp,
        conn,
    });
}

async fn play(protocol: Protocol, url: String, reconnect: bool, log: Arc<Mutex<PlayLog>>) {
    let first_deadline = Instant::now() + Duration::from_secs(15);
    let mut conn: u32 = 0;
    loop {
        let connected_once = lock(&log).connects > 0;
        let outcome: Result<String, String> = match protocol {
            Protocol::Rtmp => {
                match tokio::time::timeout(CONNECT_TIMEOUT, RtmpPlayer::connect(&url)).await {
                    Ok(Ok(mut p)) => {
                        lock(&log).connects += 1;
                        Ok(loop {
                            match p.next_event().await {
                                Ok(Some(ClientEvent::Media { frame, .. })) => {
                                    record(&log, &frame, conn)
                                }
                                Ok(Some(_)) => {}
                                Ok(None) => break "eof".to_owned(),
                                Err(e) => break e.to_string(),
                            }
                        })
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("connect timed out".to_owned()),
                }
            }
            Protocol::Ffmpeg => ffmpeg_play(&url, conn, &log).await,
            Protocol::Flv => match FlvPlayer::connect_within(&url, CONNECT_TIMEOUT).await {
                Ok(mut p) if p.status == 200 => {
                    lock(&log).connects += 1;
                    Ok(loop {
                        match p.next_frame().await {
                            Ok(Some(frame)) => record(&log, &frame, conn),
                            Ok(None) => break "eof".to_owned(),
                            Err(e) => break format!("{e:#}"),
                        }
                    })
                }
                Ok(p) => Err(format!("HTTP {}", p.status)),
                Err(e) => Err(format!("{e:#}")),
            },
        };
        match outcome {
            Ok(end) => {
                lock(&log).ends.push((Instant::now(), end));
                conn += 1;
                if !reconnect {
                    return;
                }
            }
            Err(_) if !connected_once && Instant::now() < first_deadline => {}
            Err(_) if connected_once && reconnect => {}
            Err(e) => {
                lock(&log)
                    .ends
                    .push((Instant::now(), format!("connect: {e}")));
                return;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One ffmpeg decoding `url` until it ends: every decoded picture is an
/// arrival (timestamp = its DTS in ms), every stderr line a decoder error.
async fn ffmpeg_play(url: &str, conn: u32, log: &Arc<Mutex<PlayLog>>) -> Result<String, String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i", url])
        .args(["-map", "0:v", "-f", "framecrc", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start ffmpeg: {e}"))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("ffmpeg without pipes".to_owned());
    };
    lock(log).connects += 1;
    let errors_log = log.clone();
    let errors = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.trim().is_empty() {
                lock(&errors_log).decoder_errors.push(line);
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with('#') {
            continue;
        }
        let Some(dts) = line
            .split(',')
            .nth(1)
            .and_then(|f| f.trim().parse::<i64>().ok())
        else {
            continue;
        };
        let at = Instant::now();
        lock(log).push(Arrival {
            at,
            index: None,
            kind: MediaKind::Video,
            timestamp: u32::try_from(dts.max(0)).unwrap_or(u32::MAX),
            conn,
        });
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let _ = errors.await;
    Ok(format!("ffmpeg exited: {status}"))
}
