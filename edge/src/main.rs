//! `baton-edge`: the process every client will talk to, in front of the
//! origins. It arrives with the edge issue (on-demand pull, publish
//! forwarding, failover with spliced timelines); until then the binary
//! exists so the workspace, packaging and CLI shape are in place, and it
//! says plainly that it does not serve yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "baton-edge",
    version,
    about = "Baton edge (not implemented yet): will pull from origins and survive origin loss"
)]
struct Cli {
    /// PID file naming the serving generation (as for baton-origin).
    #[arg(long, env = "BATON_PID_FILE")]
    pid_file: Option<PathBuf>,
    /// Origins to pull from (host:port of their RTMP listeners).
    #[arg(long, env = "BATON_ORIGINS", value_delimiter = ',')]
    origins: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "baton-edge: the edge is not implemented yet (origins given: {}); run baton-origin directly",
        cli.origins.len()
    );
    ExitCode::from(2)
}
