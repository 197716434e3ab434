//! `baton-bench`: load tools for Baton and its peers.
//!
//! - `fanout`: N players on one RTMP or HTTP-FLV stream; delivery,
//!   smoothness (video arrival gaps), correctness checks, server CPU.
//! - `probe`: wait until a stream is playable (for scripts).
//! - `churn`: publish and unpublish many short-lived streams; server RSS.
//! - `publish`: a real-time synthetic publisher (no ffmpeg needed).
//! - `table`: the markdown comparison of `fanout --json` reports.
//!
//! Everything runs on a tokio current-thread runtime so that the load can
//! be pinned to one core (`taskset -c 1 baton-bench …`) and measured
//! against a server pinned to another.

mod churn;
mod fanout;
mod floor;
mod flv_reader;
mod latency;
mod publish;
mod rtmp_client;
mod stats;
mod synth;
mod sys;
mod table;
mod units;
mod wallstamp;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    version,
    about = "Load tools for Baton: fan-out, churn, synthetic publishing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open many players on one stream and measure delivery and smoothness.
    Fanout {
        /// rtmp://host:port/app/stream, http://host:port/app/stream.flv or https://...
        #[arg(long)]
        url: String,
        /// For https:// URLs: PEM file of the CA that signed the server's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Number of players.
        #[arg(long, default_value_t = 1000)]
        players: u64,
        /// Length of the run, from the first connection (e.g. 30s, 2m).
        #[arg(long, default_value = "30s", value_parser = units::parse_duration)]
        duration: Duration,
        /// New connections per second (e.g. 2000/s).
        #[arg(long, default_value = "2000/s", value_parser = units::parse_rate)]
        ramp: f64,
        /// Give up on a player that is not playing after this long.
        #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
        connect_timeout: Duration,
        /// Name of the system under test, for reports and tables.
        #[arg(long, default_value = "server")]
        label: String,
        /// PID of the server; its CPU time (children included) during the
        /// run is reported. Repeatable.
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// No per-second progress lines on stderr.
        #[arg(long)]
        quiet: bool,
        /// Each player reads its socket once per this period (after its
        /// first keyframe), like a client behind a real round trip; 0
        /// reads on arrival.
        #[arg(long, default_value = "0s", value_parser = units::parse_duration)]
        read_every: Duration,
        /// With --read-every (RTMP players): the kernel does not wake a
        /// player's thread for each arrival between its reads
        /// (`SO_RCVLOWAT` raised between reads): on loopback that wake-up
        /// is charged to the *server's* core, where on a real network it
        /// happens on the viewer's machine.
        #[arg(long)]
        unwoken: bool,
        /// Only every K-th player decodes what it reads (and so measures
        /// lateness, losses and first-keyframe time); the others drain
        /// their socket without copying it (`recv` with `MSG_TRUNC`) and
        /// are behind when they received under 90 % of the decoders'
        /// bytes. Lets one client core hold a load that saturates a
        /// server core. 1: every player decodes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        decode_every: u64,
    },
    /// Exit 0 once one player has received a keyframe from URL.
    Probe {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
        timeout: Duration,
    },
    /// Publish and unpublish many distinct streams (churn-0, churn-1, …).
    Churn {
        /// rtmp://host:port/app
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100_000)]
        streams: u64,
        /// Index of the first stream name, for distinct names across rounds.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Streams published concurrently.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Video frames per stream (one keyframe, the rest inter frames).
        #[arg(long, default_value_t = 5)]
        frames: u32,
        /// Server API base URL for the stream count, e.g. http://127.0.0.1:1985
        #[arg(long)]
        api: Option<String>,
        /// Server PID whose RSS is sampled.
        #[arg(long)]
        pid: Option<u32>,
        /// Progress/RSS sampling interval.
        #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
        interval: Duration,
        /// After the run, wait up to this long for the stream count to reach 0.
        #[arg(long, default_value = "30s", value_parser = units::parse_duration)]
        settle: Duration,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Publish a synthetic 30 fps H.264/AAC-shaped stream in real time.
    Publish {
        /// rtmp://host:port/app/stream
        #[arg(long)]
        url: String,
        /// Total bitrate, e.g. 1000k or 2.5M.
        #[arg(long, default_value = "1000k", value_parser = units::parse_bitrate)]
        bitrate: u64,
        /// How long to publish; 0 publishes until interrupted.
        #[arg(long, default_value = "30s", value_parser = units::parse_duration)]
        duration: Duration,
        /// Stamp each audio/video frame with its wall-clock send time, so
        /// `fanout` players report how late frames reach them.
        #[arg(long)]
        stamp: bool,
    },
    /// The cost floor of an HTTP-FLV fan-out: a bare tokio server that
    /// makes the stamped synthetic stream itself and writes every frame
    /// to every player as it comes (for `fanout-peers.sh`'s `floor`).
    Floor {
        /// Address to serve HTTP-FLV on (every path plays the stream).
        #[arg(long, default_value = "127.0.0.1:18090")]
        http: std::net::SocketAddr,
        /// Total bitrate, e.g. 1080k.
        #[arg(long, default_value = "1080k", value_parser = units::parse_bitrate)]
        bitrate: u64,
        /// Tags are written in batches once the oldest is this old (Baton's
        /// `write_coalesce` default); 0 writes every frame on its own.
        #[arg(long, default_value = "80ms", value_parser = units::parse_duration)]
        budget: Duration,
    },
    /// Publish stamped frames and measure their delivery latency through
    /// one or more play URLs (same process, same clock).
    Latency {
        /// rtmp://host:port/app/stream to publish to. Repeatable, with
        /// distinct stream names; a play URL follows the publish URL with
        /// its stream name.
        #[arg(long, required = true)]
        publish: Vec<String>,
        /// [NAME=]rtmp://host:port/app/stream to play from. Repeatable.
        #[arg(long = "play", required = true, value_parser = latency::PlayTarget::parse)]
        plays: Vec<latency::PlayTarget>,
        /// Players per play URL.
        #[arg(long, default_value_t = 10)]
        players: u64,
        /// Measurement window: frames sent during it count.
        #[arg(long, default_value = "20s", value_parser = units::parse_duration)]
        duration: Duration,
        /// From the players' start to the window (connect, pull, GOP burst).
        #[arg(long, default_value = "3s", value_parser = units::parse_duration)]
        warmup: Duration,
        /// Total bitrate of the synthetic stream.
        #[arg(long, default_value = "1000k", value_parser = units::parse_bitrate)]
        bitrate: u64,
        #[arg(long, default_value = "run")]
        label: String,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Render fan-out JSON reports as a markdown comparison table.
    Table {
        /// Label of the runs the others are compared with.
        #[arg(long, default_value = "nginx-rtmp")]
        baseline: String,
        /// Also write the table to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Reports written by `fanout --json`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Fanout {
            url,
            ca,
            players,
            duration,
            ramp,
            connect_timeout,
            label,
            server_pids,
            json,
            quiet,
            read_every,
            unwoken,
            decode_every,
        } => {
            fanout::run(fanout::FanoutOptions {
                read_every,
                unwoken,
                decode_every,
                url,
                players,
                duration,
                ramp,
                connect_timeout,
                label,
                server_pids,
                json,
                quiet,
                ca,
            })
            .await?;
        }
        Command::Probe { url, timeout } => fanout::probe(&url, timeout).await?,
        Command::Churn {
            url,
            streams,
            first,
            parallel,
            frames,
            api,
            pid,
            interval,
            settle,
            json,
        } => {
            churn::run(churn::ChurnOptions {
                url,
                streams,
                first,
                parallel,
                frames,
                api,
                pid,
                interval,
                settle,
                json,
            })
            .await?;
        }
        Command::Floor {
            http,
            bitrate,
            budget,
        } => {
            floor::run(floor::FloorOptions {
                listen: http,
                bitrate,
                budget,
            })
            .await?;
        }
        Command::Publish {
            url,
            bitrate,
            duration,
            stamp,
        } => {
            publish::run(publish::PublishOptions {
                url,
                bitrate,
                duration: (!duration.is_zero()).then_some(duration),
                stamp,
            })
            .await?;
        }
        Command::Latency {
            publish,
            plays,
            players,
            duration,
            warmup,
            bitrate,
            label,
            json,
        } => {
            latency::run(latency::LatencyOptions {
                publish,
                plays,
                players,
                duration,
                warmup,
                bitrate,
                label,
                json,
            })
            .await?;
        }
        Command::Table {
            baseline,
            out,
            reports,
        } => {
            let table = table::render(&table::load(&reports)?, &baseline);
            print!("{table}");
            if let Some(path) = out {
                std::fs::write(&path, &table)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
