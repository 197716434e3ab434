//! External programs with hard time limits: ffmpeg and ffprobe for the
//! interop tests, and the origin's own `upgrade` subcommand. A program that
//! hangs is killed and the test fails with what it printed, instead of
//! blocking CI.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::binaries::origin_bin;

/// What a finished program did.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The stdout as JSON; panics with both streams if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "output is not JSON ({e})\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `program args...` with stdin closed; `Err` (after killing it) if
/// it has not finished within `limit`.
pub async fn run<I, S>(
    program: impl AsRef<OsStr>,
    args: I,
    limit: Duration,
) -> Result<ToolOutput, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program.as_ref());
    cmd.args(args);
    run_command(cmd, limit).await
}

/// Runs a prepared command (stdin closed, output captured, killed on
/// timeout).
pub async fn run_command(mut cmd: Command, limit: Duration) -> Result<ToolOutput, String> {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(ToolOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        }),
        Ok(Err(e)) => Err(format!("waiting for {cmd:?}: {e}")),
        // Dropping the future drops the child, which kills it.
        Err(_) => Err(format!("{cmd:?} did not finish within {limit:?} (killed)")),
    }
}

/// `baton-origin upgrade --pid-file PATH --control-dir DIR`, bounded.
pub async fn origin_upgrade(
    pid_file: &Path,
    control_dir: &Path,
    limit: Duration,
) -> Result<ToolOutput, String> {
    node_upgrade(&origin_bin(), pid_file, control_dir, limit).await
}

/// `BINARY upgrade --pid-file .. --control-dir ..` of either role.
pub async fn node_upgrade(
    binary: &Path,
    pid_file: &Path,
    control_dir: &Path,
    limit: Duration,
) -> Result<ToolOutput, String> {
    let mut cmd = Command::new(binary);
    cmd.arg("upgrade")
        .arg("--pid-file")
        .arg(pid_file)
        .arg("--control-dir")
        .arg(control_dir);
    run_command(cmd, limit).await
}

/// Whether `program -version` runs (ffmpeg, ffprobe).
pub fn available(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A long-running background program (e.g. an ffmpeg publisher) whose
/// stderr goes to a file; killed on drop.
pub struct Background {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Background {
    /// Spawns `program args...`, stderr and stdout appended to `log`.
    pub fn spawn<I, S>(program: impl AsRef<OsStr>, args: I, log: impl Into<PathBuf>) -> Background
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = log.into();
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let out = file.try_clone().expect("cloning a file handle");
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Background {
            child,
            log,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The exit status if it has exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Kills it and waits (bounded) for it to go.
    pub async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        self.log()
    }
}
