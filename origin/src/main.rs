//! `baton-origin`: the process that owns live streams.
//!
//! Everything between accepting a socket and exiting is the shared serving
//! layer (`baton_common::serve`); an origin is that layer with its hub as
//! the stream directory (see `streams.rs`): a publish lands in the hub, a
//! player reads from it.

mod streams;

use std::process::ExitCode;

use baton_common::handover::Role;
use baton_common::serve::process::{self, NodeCommand};
use baton_common::serve::settings::{Settings, SettingsArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "baton-origin",
    version,
    about = "Baton origin: RTMP ingest, RTMP and HTTP-FLV playback, graceful exits and smooth upgrades",
    after_help = "Signals: SIGTERM/SIGINT fast exit; SIGQUIT graceful exit; SIGUSR2 smooth upgrade; SIGHUP reloads the TLS certificate.\n\
                  Every setting can also be given in the TOML file (--config) under its long name \
                  with '_' for '-', or as the BATON_* environment variable shown."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    #[command(flatten)]
    settings: SettingsArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::main(Role::Origin, cli.command, || {
        let settings = Settings::resolve(&cli.settings)?;
        Ok((settings, streams::service()))
    })
}
