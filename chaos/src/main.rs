//! `baton-chaos`: builds a topology of real Baton processes (origins and
//! edges on their own loopback addresses, a fault-injecting proxy in front
//! of every origin), drives real publishers and players through the edges,
//! applies faults on a schedule and checks what every client saw, frame by
//! frame. See `chaos/README.md`.
//!
//! Modules: [`scenario`] (the TOML format), [`topology`] / [`process`] /
//! [`proxy`] / [`netns`] (the processes and the network: loopback and
//! proxies, or network namespaces and tc), [`clients`] (publishers and
//! players that log every frame), [`runner`] (the schedule), [`report`]
//! (windows, verdicts, summary, memory), [`soak`] (seeded random
//! schedules), [`progress`] (the soak's progress line).

mod clients;
mod dur;
mod netns;
mod process;
mod progress;
mod proxy;
mod report;
mod runner;
mod scenario;
mod soak;
mod topology;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::dur::Dur;
use crate::runner::ModeChoice;
use crate::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "baton-chaos",
    about = "Fault injection against real Baton processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files in turn; exit 1 if any expectation fails.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where logs and report.json go (one dir per scenario).
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
        /// CI form: a final table of every scenario and the wall time.
        #[arg(long)]
        ci: bool,
        /// Network: namespaces (netns), 127.0.0.x and proxies (loopback),
        /// or netns when possible (auto).
        #[arg(long, value_enum, default_value = "auto")]
        mode: ModeChoice,
    },
    /// List the scenarios in a directory.
    List {
        #[arg(default_value = "chaos/scenarios")]
        dir: PathBuf,
    },
    /// A random schedule that the seed reproduces, with a progress line.
    Soak {
        #[arg(long, default_value = "1h")]
        duration: Dur,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
        /// Print the generated scenario as TOML instead of running it.
        #[arg(long)]
        print: bool,
        /// Streams published (one publisher each, alternating edges).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Players in all, spread over the streams, both edges, RTMP and FLV.
        #[arg(long, default_value_t = 3)]
        players: usize,
        /// Network: see `run --mode`.
        #[arg(long, value_enum, default_value = "auto")]
        mode: ModeChoice,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baton-chaos: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C or SIGTERM drops the command: the topology's destructors
    // kill every process and remove the namespaces.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = command(cli.command) => outcome,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; cleaned up")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("baton-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Waits for SIGINT or SIGTERM; names it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// `Ok(passed)`.
async fn command(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Run {
            files,
            out,
            ci,
            mode,
        } => run_files(&files, &out, ci, mode).await,
        Command::List { dir } => {
            list(&dir)?;
            Ok(true)
        }
        Command::Soak {
            duration,
            seed,
            out,
            print,
            publishers,
            players,
            mode,
        } => {
            let s = soak::scenario_with(
                seed,
                duration.0,
                soak::Load {
                    publishers,
                    players,
                },
            );
            if print {
                print!(
                    "{}",
                    toml::to_string(&s).context("serialising the schedule")?
                );
                return Ok(true);
            }
            eprintln!(
                "soak: seed {seed}, {duration}, {} faults scheduled",
                s.faults.len()
            );
            let report = runner::run(&s, &out, Some(seed), true, mode).await?;
            print!("{}", report.summary());
            Ok(report.passed)
        }
    }
}

async fn run_files(
    files: &[PathBuf],
    out: &Path,
    ci: bool,
    mode: ModeChoice,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let scenarios: Vec<Scenario> = files
        .iter()
        .map(|f| Scenario::load(f))
        .collect::<anyhow::Result<_>>()?;
    let mut results = Vec::new();
    for s in &scenarios {
        eprintln!("--- {}: {}", s.name, s.description);
        let t = Instant::now();
        match runner::run(s, out, None, false, mode).await {
            Ok(report) => {
                print!("{}", report.summary());
                let worst = report
                    .totals
                    .iter()
                    .filter(|t| !t.disrupted)
                    .map(|t| t.longest_stall_ms)
                    .max()
                    .unwrap_or_default();
                let (verdict, note) = if report.is_skipped() {
                    ("SKIP", report.violations.join("; "))
                } else if report.passed {
                    ("PASS", String::new())
                } else {
                    ("FAIL", String::new())
                };
                results.push((
                    s.name.clone(),
                    verdict,
                    report.mode.clone(),
                    worst,
                    t.elapsed(),
                    note,
                ));
            }
            Err(e) => {
                println!("ERROR {}: {e:#}", s.name);
                results.push((
                    s.name.clone(),
                    "FAIL",
                    String::new(),
                    0,
                    t.elapsed(),
                    format!("{e:#}"),
                ));
            }
        }
    }
    let passed = results.iter().all(|r| r.1 != "FAIL");
    if ci || results.len() > 1 {
        println!("\n=== chaos suite: {} scenario(s) ===", results.len());
        println!(
            "  {:<28} {:<6} {:<8} {:>14} {:>8}",
            "scenario", "result", "mode", "worst stall ms", "wall s"
        );
        for (name, verdict, mode, stall, wall, err) in &results {
            println!(
                "  {name:<28} {verdict:<6} {mode:<8} {stall:>14} {:>8.1}{}",
                wall.as_secs_f64(),
                if err.is_empty() {
                    String::new()
                } else {
                    format!("  {err}")
                }
            );
        }
        println!(
            "{} in {:.1}s",
            if passed { "PASS" } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(passed)
}

fn list(dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for f in files {
        match Scenario::load(&f) {
            Ok(s) => println!(
                "{:<28} {:>5}  {} fault(s)  {}",
                s.name,
                s.duration.to_string(),
                s.faults.len(),
                s.description
            ),
            Err(e) => println!("{:<28} INVALID: {e:#}", f.display()),
        }
    }
    Ok(())
}
