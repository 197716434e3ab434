//! ffmpeg and ffprobe as independent clients: a real H.264 + AAC FLV
//! fixture generated at test time (no binary files in the repository), an
//! ffmpeg publisher that loops it in real time, and ffprobe queries parsed
//! from JSON. Every call is bounded (see [`crate::tools`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::binaries::profile_dir;
use crate::tools::{self, Background, ToolOutput};

/// Seconds of media in the fixture.
pub const FIXTURE_SECONDS: u32 = 10;
/// Frames per second (and GOP length in frames: one keyframe a second).
pub const FIXTURE_FPS: u32 = 30;

/// Where fixtures are cached between runs (`target/tmp/baton-tests`).
pub fn fixture_dir() -> PathBuf {
    let base = profile_dir()
        .parent()
        .map(|target| target.join("tmp"))
        .unwrap_or_else(std::env::temp_dir);
    base.join("baton-tests")
}

/// A 10 s 640x360 30 fps H.264 (GOP 30) + AAC FLV made by ffmpeg's lavfi
/// sources; generated once and cached under [`fixture_dir`].
pub async fn fixture_flv() -> PathBuf {
    static FIXTURE: OnceCell<PathBuf> = OnceCell::const_new();
    FIXTURE
        .get_or_init(|| async {
            let dir = fixture_dir();
            std::fs::create_dir_all(&dir).expect("creating the fixture dir");
            let path = dir.join(format!("testsrc2-{FIXTURE_SECONDS}s-h264-aac.flv"));
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > 100_000) {
                return path;
            }
            let partial = dir.join(format!("partial-{}.flv", std::process::id()));
            let output = tools::run("ffmpeg", fixture_args(&partial), Duration::from_secs(120))
                .await
                .unwrap_or_else(|e| panic!("generating the fixture: {e}"));
            assert!(
                output.success(),
                "ffmpeg could not generate the fixture ({}):\n{}",
                output.status,
                output.stderr
            );
            std::fs::rename(&partial, &path).expect("moving the fixture into place");
            path
        })
        .await
        .clone()
}

fn fixture_args(out: &Path) -> Vec<String> {
    let secs = FIXTURE_SECONDS.to_string();
    let gop = FIXTURE_FPS.to_string();
    [
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=640x360:rate={FIXTURE_FPS}"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        "-f",
        "flv",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(out.to_string_lossy().into_owned()))
    .collect()
}

/// `ffmpeg -re -stream_loop -1 -i FILE -c copy -f flv URL` in the
/// background (killed on drop; its output goes to `log`).
pub fn publish_loop(file: &Path, rtmp_url: &str, log: impl Into<PathBuf>) -> Background {
    publish_loop_with(file, &[], rtmp_url, log)
}

/// [`publish_loop`] with output options before the URL (e.g. RTMPS's
/// `-tls_verify 1 -ca_file CA`).
pub fn publish_loop_with(
    file: &Path,
    output_options: &[&str],
    rtmp_url: &str,
    log: impl Into<PathBuf>,
) -> Background {
    let file = file.to_string_lossy();
    let mut args = vec![
        "-hide_banner",
        "-nostdin",
        "-v",
        "warning",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        &file,
        "-c",
        "copy",
    ];
    args.extend_from_slice(output_options);
    args.extend_from_slice(&["-f", "flv", rtmp_url]);
    Background::spawn("ffmpeg", args, log)
}

/// `ffprobe -v error -show_entries stream=codec_name,codec_type -of json URL`
/// → the (codec_type, codec_name) pairs.
pub async fn stream_codecs(url: &str, limit: Duration) -> Result<Vec<(String, String)>, String> {
    let out = ffprobe(
        &[
            "-show_entries",
            "stream=codec_name,codec_type",
            "-of",
            "json",
            url,
        ],
        limit,
    )
    .await?;
    let json = out.json();
    Ok(json["streams"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .map(|s| {
                    (
                        s["codec_type"].as_str().unwrap_or_default().to_owned(),
                        s["codec_name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The first `count` video frames ffprobe decodes from `url`, as the JSON
/// objects of `-show_frames` (fields key_frame, pict_type, pts_time...).
pub async fn first_video_frames(
    url: &str,
    count: u32,
    limit: Duration,
) -> Result<Vec<Value>, String> {
    let interval = format!("%+#{count}");
    let out = ffprobe(
        &[
            "-select_streams",
            "v:0",
            "-show_frames",
            "-read_intervals",
            &interval,
            "-show_entries",
            "frame=key_frame,pict_type,pts_time,pkt_dts_time",
            "-of",
            "json",
            url,
        ],
        limit,
    )
    .await?;
    Ok(out.json()["frames"].as_array().cloned().unwrap_or_default())
}

/// `ffprobe -v error ARGS`, which must exit 0.
pub async fn ffprobe(args: &[&str], limit: Duration) -> Result<ToolOutput, String> {
    let mut all = vec!["-hide_banner", "-v", "error"];
    all.extend_from_slice(args);
    let out = tools::run("ffprobe", &all, limit).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(format!(
            "ffprobe {all:?} failed ({}):\n{}",
            out.status, out.stderr
        ))
    }
}

/// `ffmpeg -v error ARGS` (any exit status is returned).
pub async fn ffmpeg(args: &[&str], limit: Duration) -> Result<ToolOutput, String> {
    let mut all = vec!["-hide_banner", "-nostdin", "-v", "error"];
    all.extend_from_slice(args);
    tools::run("ffmpeg", &all, limit).await
}
