//! `baton-origin`: the process that owns live streams.
//!
//! This file is the process's skeleton: parse settings, obtain listeners
//! (bind them, or adopt them from the running generation during a smooth
//! upgrade), start the RTMP, HTTP-FLV and API servers, then turn signals
//! and control-socket requests into the lifecycle: fast exit, graceful
//! drain, or hand-over to a successor.

mod accept;
mod api;
mod generations;
mod http_flv;
mod playback;
mod rtmp_server;
mod settings;
mod stall;
mod tag_batch;
mod telemetry;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_common::clients::ClientRegistry;
use baton_common::config::HumanDuration;
use baton_common::hub::Hub;
use baton_common::lifecycle::Shutdown;
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusHandle;

use settings::{Settings, SettingsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "baton-origin",
    version,
    about = "Baton origin: RTMP ingest, RTMP and HTTP-FLV playback, graceful exits and smooth upgrades",
    after_help = "Signals: SIGTERM/SIGINT fast exit; SIGQUIT graceful exit; SIGUSR2 smooth upgrade.\n\
                  Every setting can also be given in the TOML file (--config) under its long name \
                  with '_' for '-', or as the BATON_* environment variable shown."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask the running origin (named by its PID file) to start a new
    /// generation from the binary now at its path and hand it the
    /// listening sockets. Exits 0 once the new generation serves.
    Upgrade {
        /// PID file of the running origin.
        #[arg(long)]
        pid_file: PathBuf,
        /// Directory of the control sockets (as the origin's --control-dir).
        #[arg(long, env = "BATON_CONTROL_DIR")]
        control_dir: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "60s")]
        timeout: HumanDuration,
    },
}

/// Everything the servers share.
pub struct OriginContext {
    pub settings: Settings,
    pub hub: Hub,
    pub clients: ClientRegistry,
    pub shutdown: Shutdown,
    pub metrics: PrometheusHandle,
    /// 1 for a fresh start, predecessor + 1 after an upgrade.
    pub generation: u64,
    pub started: Instant,
    older_generations: Mutex<Vec<PathBuf>>,
}

impl OriginContext {
    pub fn server_id(&self) -> String {
        format!("baton-origin-{}-g{}", std::process::id(), self.generation)
    }

    /// Control sockets of older generations still draining, newest first.
    pub fn older_generations(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.older_generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Upgrade {
        pid_file,
        control_dir,
        timeout,
    }) = cli.command
    {
        return upgrade::run_upgrade_command(&pid_file, control_dir, timeout.get());
    }
    let settings = match Settings::resolve(&cli.settings) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("baton-origin: {error}");
            upgrade::report_startup_failure(&error.to_string());
            return ExitCode::from(2);
        }
    };
    baton_common::telemetry::init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton-origin: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(upgrade::run(settings));
    // Connection tasks still running are dropped, not awaited: the
    // lifecycle already closed or drained them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting with an error");
            eprintln!("baton-origin: {error:#}");
            ExitCode::from(1)
        }
    }
}
