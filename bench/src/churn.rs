//! `baton-bench churn`: publish and unpublish many distinct streams.
//!
//! Workers publish `churn-0`, `churn-1`, … each with an AVC and an AAC
//! sequence header, one keyframe and a few inter frames with audio in
//! between (synthetic payloads of 1–5 KB, see [`crate::synth`]), then close.
//! It checks that a server survives a high rate of short-lived sources and,
//! with `--pid`, that it gives their memory back: the server's RSS is
//! sampled before, during and after the run, and after the run the tool
//! polls the server's API until it reports no streams left.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_common::media::{MediaFrame, MediaKind};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::rtmp_client::RtmpPublisher;
use crate::synth;
use crate::sys;

/// Frame payload sizes: a 5 KB keyframe, 1 KB inter frames.
const KEY_BYTES: usize = 5 * 1024;
const INTER_BYTES: usize = 1024;
const AUDIO_BYTES: usize = 200;
/// One stream's publish session may take at most this long.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How many distinct error texts are kept.
const MAX_ERROR_KINDS: usize = 20;

#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// `rtmp://host:port/app`; stream names are appended.
    pub url: String,
    pub streams: u64,
    /// Index of the first stream name (`churn-{first}`), so that several
    /// rounds publish distinct names.
    pub first: u64,
    pub parallel: usize,
    /// Video frames per stream after the sequence headers: one keyframe,
    /// the rest inter frames.
    pub frames: u32,
    /// Base URL of the server's HTTP API, for the stream count.
    pub api: Option<String>,
    /// Server PID whose RSS is sampled.
    pub pid: Option<u32>,
    /// How often RSS and progress are printed.
    pub interval: Duration,
    /// How long to wait after the run for the server to free the streams.
    pub settle: Duration,
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct RssSample {
    at_s: f64,
    done: u64,
    rss_kib: u64,
}

#[derive(Debug, Serialize)]
struct ChurnReport {
    url: String,
    streams: u64,
    done: u64,
    errors: u64,
    elapsed_s: f64,
    streams_per_s: f64,
    rss_before_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    streams_after: Option<u64>,
    rss_samples: Vec<RssSample>,
    error_kinds: BTreeMap<String, u64>,
}

struct Shared {
    next: Cell<u64>,
    done: Cell<u64>,
    errors: Cell<u64>,
    error_kinds: RefCell<BTreeMap<String, u64>>,
    frames: Vec<MediaFrame>,
}

/// The frames every churn stream publishes.
fn stream_frames(video_frames: u32) -> Vec<MediaFrame> {
    let mut out = vec![
        MediaFrame::new(MediaKind::Video, 0, synth::avc_sequence_header()),
        MediaFrame::new(MediaKind::Audio, 0, synth::aac_sequence_header()),
    ];
    let audio = synth::aac_frame(AUDIO_BYTES, 7);
    for i in 0..video_frames.max(1) {
        let ts = i * 33;
        let payload: Bytes = if i == 0 {
            synth::avc_frame(true, KEY_BYTES, u64::from(i))
        } else {
            synth::avc_frame(false, INTER_BYTES, u64::from(i))
        };
        out.push(MediaFrame::new(MediaKind::Video, ts, payload));
        out.push(MediaFrame::new(MediaKind::Audio, ts, audio.clone()));
    }
    out
}

/// Publishes one stream from connect to close.
async fn publish_one(url: &str, frames: &[MediaFrame]) -> Result<()> {
    let mut publisher = RtmpPublisher::connect(url)
        .await
        .context("connect/publish")?;
    for f in frames {
        publisher.send(f).await.context("send")?;
    }
    publisher.flush().await.context("flush")?;
    publisher.close().await.context("close")?;
    Ok(())
}

async fn worker(base: Rc<str>, shared: Rc<Shared>, first: u64, total: u64) {
    loop {
        let i = shared.next.get();
        if i >= total {
            return;
        }
        shared.next.set(i + 1);
        let url = format!("{base}/churn-{}", first + i);
        let result = match timeout(STREAM_TIMEOUT, publish_one(&url, &shared.frames)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("timed out after {STREAM_TIMEOUT:?}")),
        };
        shared.done.set(shared.done.get() + 1);
        if let Err(e) = result {
            shared.errors.set(shared.errors.get() + 1);
            let mut kinds = shared.error_kinds.borrow_mut();
            let key = format!("{e:#}");
            if kinds.len() < MAX_ERROR_KINDS || kinds.contains_key(&key) {
                *kinds.entry(key).or_default() += 1;
            }
        }
    }
}

/// Runs the churn; must run inside a `LocalSet`.
pub async fn run(opts: ChurnOptions) -> Result<()> {
    if !opts.url.starts_with("rtmp://") {
        bail!(
            "churn needs an rtmp://host:port/app URL, got {:?}",
            opts.url
        );
    }
    let base: Rc<str> = opts.url.trim_end_matches('/').into();
    // Closed sockets linger a little; allow for more than `parallel`.
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
    let rss = |pid: Option<u32>| pid.and_then(|p| sys::rss_kib(p).ok());
    let rss_before = rss(opts.pid);
    if let Some(kib) = rss_before {
        println!("server RSS before: {}", fmt_kib(kib));
    }
    if let Some(api) = &opts.api {
        match stream_count(api).await {
            Ok(n) => println!("streams before: {n}"),
            Err(e) => println!("stream count unavailable: {e:#}"),
        }
    }
    let shared = Rc::new(Shared {
        next: Cell::new(0),
        done: Cell::new(0),
        errors: Cell::new(0),
        error_kinds: RefCell::new(BTreeMap::new()),
        frames: stream_frames(opts.frames),
    });
    let start = Instant::now();
    let workers: Vec<_> = (0..opts.parallel.max(1))
        .map(|_| {
            tokio::task::spawn_local(worker(
                base.clone(),
                shared.clone(),
                opts.first,
                opts.streams,
            ))
        })
        .collect();

    let mut samples = Vec::new();
    let mut rss_peak = rss_before;
    let mut last_done = 0;
    let mut next_report = start + opts.interval;
    while !workers.iter().all(|w| w.is_finished()) {
        sleep(Duration::from_millis(20)).await;
        if Instant::now() < next_report {
            continue;
        }
        next_report += opts.interval;
        let done = shared.done.get();
        let now_rss = rss(opts.pid);
        rss_peak = rss_peak.max(now_rss);
        let at_s = start.elapsed().as_secs_f64();
        eprintln!(
            "[{at_s:>6.1}s] {done}/{} streams, {} errors, {:.0} streams/s{}",
            opts.streams,
            shared.errors.get(),
            (done - last_done) as f64 / opts.interval.as_secs_f64(),
            now_rss
                .map(|k| format!(", server RSS {}", fmt_kib(k)))
                .unwrap_or_default()
        );
        last_done = done;
        if let Some(rss_kib) = now_rss {
            samples.push(RssSample {
                at_s,
                done,
                rss_kib,
            });
        }
    }
    for w in workers {
        w.await.context("a churn worker panicked")?;
    }
    let elapsed = start.elapsed();
    let done = shared.done.get();
    let errors = shared.errors.get();
    println!(
        "churn: {done} streams ({errors} errors) in {:.1} s: {:.0} streams/s",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for (kind, n) in shared.error_kinds.borrow().iter() {
        println!("  {n} x {kind}");
    }

    // Give the server time to tear the sources down, then measure.
    let mut streams_after = None;
    if let Some(api) = &opts.api {
        let settle_start = Instant::now();
        let settle_until = settle_start + opts.settle;
        loop {
            match stream_count(api).await {
                Ok(n) => {
                    streams_after = Some(n);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    println!("stream count unavailable: {e:#}");
                    break;
                }
            }
            if Instant::now() >= settle_until {
                break;
            }
            sleep(Duration::from_millis(500)).await;
        }
        if let Some(n) = streams_after {
            println!(
                "streams after: {n} ({:.1} s after the last close)",
                settle_start.elapsed().as_secs_f64()
            );
        }
        // The server gives freed memory back shortly after the sources
        // leave its map (the hub reaper trims on the next tick too).
        sleep(Duration::from_secs(2)).await;
    } else if opts.pid.is_some() {
        sleep(opts.settle.min(Duration::from_secs(5))).await;
    }
    let rss_after = rss(opts.pid);
    rss_peak = rss_peak.max(rss_after);
    if let (Some(before), Some(peak), Some(after)) = (rss_before, rss_peak, rss_after) {
        println!(
            "server RSS: before {}, peak {}, after {} ({:+.1} MiB)",
            fmt_kib(before),
            fmt_kib(peak),
            fmt_kib(after),
            (after as f64 - before as f64) / 1024.0
        );
    }
    if let Some(path) = &opts.json {
        let report = ChurnReport {
            url: opts.url.clone(),
            streams: opts.streams,
            done,
            errors,
            elapsed_s: elapsed.as_secs_f64(),
            streams_per_s: done as f64 / elapsed.as_secs_f64().max(1e-9),
            rss_before_kib: rss_before,
            rss_peak_kib: rss_peak,
            rss_after_kib: rss_after,
            streams_after,
            rss_samples: samples,
            error_kinds: shared.error_kinds.borrow().clone(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Stream count from `GET {api}/api/v1/summaries`.
async fn stream_count(api: &str) -> Result<u64> {
    let json = http_get_json(api, "/api/v1/summaries").await?;
    find_streams(&json).with_context(|| format!("no \"streams\" count in {json}"))
}

/// The value of a field named `streams` (a number, or an array's length):
/// Baton's `data.service.streams` (all generations), else `data.streams`,
/// else the shallowest one found.
fn find_streams(v: &Value) -> Option<u64> {
    fn count(v: &Value) -> Option<u64> {
        match v {
            Value::Number(n) => n.as_u64(),
            Value::Array(a) => Some(a.len() as u64),
            _ => None,
        }
    }
    for known in ["/data/service/streams", "/data/streams"] {
        if let Some(n) = v.pointer(known).and_then(count) {
            return Some(n);
        }
    }
    let mut level = vec![v];
    while !level.is_empty() {
        let mut next = Vec::new();
        for node in level {
            match node {
                Value::Object(map) => {
                    if let Some(n) = map.get("streams").and_then(count) {
                        return Some(n);
                    }
                    next.extend(map.values());
                }
                Value::Array(items) => next.extend(items),
                _ => {}
            }
        }
        level = next;
    }
    None
}

/// A minimal HTTP/1.0 GET (so the body is close-delimited or has a
/// length, never chunked) returning the parsed JSON body.
async fn http_get_json(base: &str, path: &str) -> Result<Value> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("API URL {base:?} must start with http://"))?
        .trim_end_matches('/');
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n");
    let fetch = async {
        let mut stream = TcpStream::connect(authority).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream
            .take(16 * 1024 * 1024)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = timeout(Duration::from_secs(5), fetch)
        .await
        .context("API timed out")?
        .with_context(|| format!("GET {base}{path}"))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP head")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET {base}{path}: status {status}");
    }
    serde_json::from_slice(&response[split + 4..]).context("API body is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_stream_counts() {
        assert_eq!(find_streams(&json!({"data": {"streams": 3}})), Some(3));
        let baton = json!({"data": {"generations": [{"streams": 7}], "self": {},
            "service": {"streams": 2}}});
        assert_eq!(find_streams(&baton), Some(2));
        assert_eq!(find_streams(&json!({"streams": 0, "x": 1})), Some(0));
        assert_eq!(
            find_streams(&json!({"a": {"b": {"streams": [1, 2]}}})),
            Some(2)
        );
        assert_eq!(find_streams(&json!({"clients": 4})), None);
        assert_eq!(
            find_streams(&json!({"data": {"streams": 5}, "streams": 9})),
            Some(5)
        );
    }

    #[test]
    fn churn_frames_are_well_formed() {
        let frames = stream_frames(5);
        assert_eq!(frames.len(), 2 + 10);
        assert!(frames[0].is_sequence_header() && frames[0].is_video());
        assert!(frames[1].is_sequence_header() && frames[1].is_audio());
        assert!(frames[2].is_keyframe() && frames[2].payload.len() == KEY_BYTES);
        assert!(frames[4].is_video() && !frames[4].is_keyframe());
        assert_eq!(frames[10].timestamp, 4 * 33);
    }
}
