//! Driving publishers and players in tests: one [`FramePlayer`] trait over
//! the real RTMP client and the raw HTTP-FLV player, collectors that read
//! until a given frame index (with deadlines), and paced publishing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use baton_common::media::MediaFrame;
use baton_common::rtmp::client::{ClientError, RtmpPlayer, RtmpPublisher};
use baton_common::rtmp::client_session::ClientEvent;
use tokio::sync::watch;

use crate::check::frame_summary;
use crate::flv_player::FlvPlayer;
use crate::synth::{frame_index, Synth};

/// Anything that yields media frames until the stream ends.
pub trait FramePlayer {
    /// The next frame; `Ok(None)` when the connection or body ended.
    fn next_media(&mut self) -> impl Future<Output = anyhow::Result<Option<MediaFrame>>> + Send;
}

impl FramePlayer for RtmpPlayer {
    async fn next_media(&mut self) -> anyhow::Result<Option<MediaFrame>> {
        Ok(self.next_frame().await?)
    }
}

impl FramePlayer for FlvPlayer {
    async fn next_media(&mut self) -> anyhow::Result<Option<MediaFrame>> {
        self.next_frame().await
    }
}

/// Reads frames until one carries index `last` (included); `Err` with what
/// was read if the stream ends first or `limit` passes.
pub async fn read_until_index<P: FramePlayer>(
    player: &mut P,
    last: u32,
    limit: Duration,
) -> anyhow::Result<Vec<MediaFrame>> {
    let mut frames = Vec::new();
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match player.next_media().await? {
                None => bail!("stream ended"),
                Some(frame) => {
                    let done = frame_index(&frame) == Some(last);
                    frames.push(frame);
                    if done {
                        return Ok(());
                    }
                }
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => Ok(frames),
        Ok(Err(e)) => Err(e.context(format!(
            "before frame {last} arrived; got {}: {}",
            frames.len(),
            frame_summary(&frames)
        ))),
        Err(_) => Err(anyhow!(
            "frame {last} did not arrive within {limit:?}; got {}: {}",
            frames.len(),
            frame_summary(&frames)
        )),
    }
}

/// Reads frames until the index announced on `last` (set by the publisher
/// once it has sent its final frame) has arrived.
pub async fn read_until_announced<P: FramePlayer>(
    player: &mut P,
    mut last: watch::Receiver<Option<u32>>,
    limit: Duration,
) -> anyhow::Result<Vec<MediaFrame>> {
    let mut frames: Vec<MediaFrame> = Vec::new();
    let mut newest: Option<u32> = None;
    let mut announcer_gone = false;
    let outcome = tokio::time::timeout(limit, async {
        loop {
            let target = *last.borrow_and_update();
            if let (Some(target), Some(newest)) = (target, newest) {
                if newest >= target {
                    return Ok(());
                }
            }
            if announcer_gone && target.is_none() {
                bail!("the publisher went away without announcing its last frame");
            }
            tokio::select! {
                frame = player.next_media() => match frame? {
                    None => bail!("stream ended"),
                    Some(frame) => {
                        if let Some(i) = frame_index(&frame) {
                            newest = Some(i);
                        }
                        frames.push(frame);
                    }
                },
                changed = last.changed(), if !announcer_gone => {
                    announcer_gone = changed.is_err();
                }
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => Ok(frames),
        Ok(Err(e)) => Err(e.context(format!("got {}: {}", frames.len(), frame_summary(&frames)))),
        Err(_) => Err(anyhow!(
            "the announced last frame did not arrive within {limit:?}; got {}: {}",
            frames.len(),
            frame_summary(&frames)
        )),
    }
}

/// `RtmpPublisher::connect` bounded by 10 s, panicking on failure.
pub async fn publisher(url: &str) -> RtmpPublisher {
    match tokio::time::timeout(Duration::from_secs(10), RtmpPublisher::connect(url)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => panic!("publishing {url}: {e}"),
        Err(_) => panic!("publishing {url}: no NetStream.Publish.Start within 10 s"),
    }
}

/// `RtmpPlayer::connect` bounded by 10 s, panicking on failure.
pub async fn rtmp_player(url: &str) -> RtmpPlayer {
    match tokio::time::timeout(Duration::from_secs(12), RtmpPlayer::connect(url)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => panic!("playing {url}: {e}"),
        Err(_) => panic!("playing {url}: no NetStream.Play.Start within 12 s"),
    }
}

/// `FlvPlayer::connect` bounded by 12 s, asserting a 200.
pub async fn flv_player(url: &str) -> FlvPlayer {
    let player = FlvPlayer::connect_within(url, Duration::from_secs(12))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(player.status, 200, "GET {url}: status {}", player.status);
    player
}

/// Sends `frames` and flushes.
pub async fn send_all(
    publisher: &mut RtmpPublisher,
    frames: &[MediaFrame],
) -> Result<(), ClientError> {
    for frame in frames {
        publisher.send(frame).await?;
    }
    publisher.flush().await
}

/// Sends `frames` one by one, flushing and sleeping `pace` after each.
pub async fn send_paced(
    publisher: &mut RtmpPublisher,
    frames: &[MediaFrame],
    pace: Duration,
) -> Result<(), ClientError> {
    for frame in frames {
        publisher.send(frame).await?;
        publisher.flush().await?;
        tokio::time::sleep(pace).await;
    }
    Ok(())
}

/// Publishes `synth` frames every `pace` until `stop` is set, then
/// announces the index of the last frame sent on `last` and returns every
/// frame sent. At least `min_frames` are sent.
pub async fn publish_until(
    publisher: &mut RtmpPublisher,
    synth: &mut Synth,
    pace: Duration,
    min_frames: usize,
    stop: Arc<AtomicBool>,
    last: watch::Sender<Option<u32>>,
) -> anyhow::Result<Vec<MediaFrame>> {
    let mut sent = Vec::new();
    while sent.len() < min_frames || !stop.load(Ordering::SeqCst) {
        let frame = synth.next_frame();
        publisher
            .send(&frame)
            .await
            .with_context(|| format!("sending frame {}", sent.len()))?;
        publisher.flush().await.context("flushing")?;
        sent.push(frame);
        tokio::time::sleep(pace).await;
    }
    let last_index = sent.last().and_then(frame_index);
    let _ = last.send(last_index);
    Ok(sent)
}

/// Reads events until an onStatus with `code`; returns the media frames
/// seen before it. `Err` if the connection ends or `limit` passes.
pub async fn await_status(
    player: &mut RtmpPlayer,
    code: &str,
    limit: Duration,
) -> anyhow::Result<Vec<MediaFrame>> {
    let mut frames = Vec::new();
    let mut statuses = Vec::new();
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match player.next_event().await? {
                None => bail!("connection closed"),
                Some(ClientEvent::Status { code: got, .. }) => {
                    let done = got == code;
                    statuses.push(got);
                    if done {
                        return Ok(());
                    }
                }
                Some(ClientEvent::Media { frame, .. }) => frames.push(frame),
                Some(_) => {}
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => Ok(frames),
        Ok(Err(e)) => Err(e.context(format!("waiting for {code}; statuses seen: {statuses:?}"))),
        Err(_) => Err(anyhow!(
            "no {code} within {limit:?}; statuses seen: {statuses:?}, {} media frames",
            frames.len()
        )),
    }
}

/// Reads until the server closes the connection (EOF or error) and
/// returns how many frames came before; `Err` if still open after `limit`.
pub async fn await_disconnect<P: FramePlayer>(
    player: &mut P,
    limit: Duration,
) -> anyhow::Result<usize> {
    let mut frames = 0;
    tokio::time::timeout(limit, async {
        loop {
            match player.next_media().await {
                Ok(Some(_)) => frames += 1,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await
    .map_err(|_| anyhow!("still connected after {limit:?} ({frames} frames meanwhile)"))?;
    Ok(frames)
}
