//! `baton-bench publish`: a real-time synthetic RTMP publisher.
//!
//! Pushes the [`crate::synth`] stream (30 fps video with a keyframe every
//! 2 s, ~43 fps AAC-shaped audio) at a chosen bitrate, pacing each frame to
//! its timestamp, for tests and benches that should not need ffmpeg. The
//! fan-out benches themselves publish a real H.264/AAC file with ffmpeg.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::{sleep_until, Instant};

use crate::rtmp_client::RtmpPublisher;
use crate::synth::{StreamShape, SyntheticStream};
use crate::wallstamp;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub url: String,
    /// Bits per second, audio included.
    pub bitrate: u64,
    /// Stop after this long; `None` publishes until interrupted.
    pub duration: Option<Duration>,
    /// Stamp every audio/video frame with its wall-clock send time
    /// ([`crate::wallstamp`]), for `fanout`'s lateness figures.
    pub stamp: bool,
}

pub async fn run(opts: PublishOptions) -> Result<()> {
    let shape = StreamShape::for_bitrate(opts.bitrate);
    let mut publisher = RtmpPublisher::connect(&opts.url)
        .await
        .with_context(|| format!("publishing to {}", opts.url))?;
    eprintln!(
        "publishing {} at {} kbit/s: keyframes {} B, inter frames {} B, audio frames {} B",
        opts.url,
        opts.bitrate / 1000,
        shape.key_bytes,
        shape.inter_bytes,
        shape.audio_bytes
    );
    let start = Instant::now();
    let (mut frames, mut bytes, mut late, mut seq) = (0u64, 0u64, 0u64, 0u64);
    for (at, frame) in SyntheticStream::new(shape) {
        if opts.duration.is_some_and(|d| at >= d) {
            break;
        }
        let due = start + at;
        if Instant::now() > due + Duration::from_millis(100) {
            late += 1;
        }
        sleep_until(due).await;
        let stamped = if opts.stamp {
            wallstamp::stamp(&frame, seq, wallstamp::now_ns())
        } else {
            None
        };
        seq += u64::from(stamped.is_some());
        publisher
            .send(stamped.as_ref().unwrap_or(&frame))
            .await
            .context("sending a frame")?;
        publisher.flush().await.context("flushing")?;
        frames += 1;
        bytes += frame.payload.len() as u64;
    }
    publisher.close().await.context("closing the stream")?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "published {frames} frames, {bytes} payload bytes in {secs:.1} s ({:.0} kbit/s), {late} frames sent over 100 ms late",
        bytes as f64 * 8.0 / secs.max(1e-9) / 1000.0
    );
    Ok(())
}
