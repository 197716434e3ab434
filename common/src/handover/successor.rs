//! Starting the next generation from the running one.
//!
//! On an `upgrade` request (or SIGUSR2) the running process spawns its
//! successor with [`UPGRADE_FROM_ENV`] pointing at its own control socket,
//! then waits — while its accept loops keep running — until the successor
//! says `ready` on that socket. Only then does the old process stop
//! accepting. If the successor exits first, or is not ready in time (it is
//! then killed), nothing changes for the old process and the operator gets
//! the reason.
//!
//! The successor's stdout/stderr are inherited, not piped: it must outlive
//! this process, and a pipe would break (EPIPE) the moment we exit. A
//! successor that fails during start-up reports the reason with
//! [`report_failure`](super::control::report_failure) instead, which lands
//! in the [`UpgradeError`].

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::control::UPGRADE_FROM_ENV;

/// How long a successor may take to become ready by default.
pub const DEFAULT_SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(30);
/// How many given-up successor PIDs are remembered (their late `ready` is
/// refused).
const ABANDONED_MEMORY: usize = 16;

/// What to run as the successor.
#[derive(Debug, Clone)]
pub struct SuccessorCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment (the rest is inherited).
    pub envs: Vec<(OsString, OsString)>,
    pub timeout: Duration,
}

impl SuccessorCommand {
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        SuccessorCommand {
            exe: exe.into(),
            args: Vec::new(),
            envs: Vec::new(),
            timeout: DEFAULT_SUCCESSOR_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The running binary's path with this process's arguments: what an
    /// in-place binary upgrade re-executes. Call it at start-up and keep it:
    /// once the binary on disk is replaced, the kernel reports our own image
    /// as `"<path> (deleted)"`; that suffix is stripped here so the new file
    /// at the same path is run.
    pub fn current_process() -> io::Result<Self> {
        let exe = std::env::current_exe()?;
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(stripped) => PathBuf::from(stripped),
            None => exe,
        };
        Ok(Self::new(exe).args(std::env::args_os().skip(1)))
    }
}

/// Why an upgrade attempt failed. The old process is unaffected.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade to PID {pid} is already in progress")]
    InProgress { pid: u32 },
    #[error("cannot start successor {}: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("successor PID {pid} exited before it was ready ({status}){}", suffix(.reason))]
    Exited {
        pid: u32,
        status: ExitStatus,
        reason: Option<String>,
    },
    #[error("successor PID {pid} was not ready within {after:?} and was killed{}", suffix(.reason))]
    Timeout {
        pid: u32,
        after: Duration,
        reason: Option<String>,
    },
    #[error("cannot wait for successor PID {pid}: {source}")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

fn suffix(reason: &Option<String>) -> String {
    match reason {
        Some(r) => format!(": {r}"),
        None => String::new(),
    }
}

/// What to do with a `ready` request; see [`Upgrader::on_ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyVerdict {
    /// The successor we spawned is serving: reply `ok`, stop accepting,
    /// drain. [`Upgrader::spawn_and_wait`] returns its PID.
    Spawned,
    /// A successor we did not spawn (started by hand with
    /// `BATON_UPGRADE_FROM`) took our listeners and serves: reply `ok`,
    /// stop accepting, drain.
    External,
    /// Refuse: reply `err` with this reason and keep accepting. The
    /// successor must exit.
    Rejected(String),
}

impl ReadyVerdict {
    /// Whether this process should stop accepting and drain.
    pub fn hand_over(&self) -> bool {
        !matches!(self, ReadyVerdict::Rejected(_))
    }
}

#[derive(Debug, Default)]
struct State {
    pending: Option<Pending>,
    abandoned: Vec<u32>,
}

#[derive(Debug)]
struct Pending {
    pid: u32,
    ready_tx: oneshot::Sender<()>,
    failure: Option<String>,
}

impl State {
    fn abandon(&mut self, pid: u32) -> Option<Pending> {
        let pending = self.pending.take_if(|p| p.pid == pid)?;
        if self.abandoned.len() >= ABANDONED_MEMORY {
            self.abandoned.remove(0);
        }
        self.abandoned.push(pid);
        Some(pending)
    }
}

/// Spawns successors and matches their `ready`/`failed` requests. Cheap to
/// clone; share one per process between the main loop (which routes
/// `ready`/`failed` requests to [`on_ready`](Self::on_ready) /
/// [`on_failed`](Self::on_failed)) and the task running
/// [`spawn_and_wait`](Self::spawn_and_wait).
#[derive(Debug, Clone)]
pub struct Upgrader {
    control_path: PathBuf,
    state: Arc<Mutex<State>>,
}

impl Upgrader {
    /// `control_path`: this process's control socket, passed to successors.
    pub fn new(control_path: impl Into<PathBuf>) -> Self {
        Upgrader {
            control_path: control_path.into(),
            state: Arc::default(),
        }
    }

    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this short lock leaves consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The PID of the successor being waited for, if any.
    pub fn in_progress(&self) -> Option<u32> {
        self.lock().pending.as_ref().map(|p| p.pid)
    }

    /// Routes a `ready` request from `pid`; reply and act as the verdict
    /// says.
    pub fn on_ready(&self, pid: u32) -> ReadyVerdict {
        let mut state = self.lock();
        if state.abandoned.contains(&pid) {
            return ReadyVerdict::Rejected(format!(
                "PID {pid} was too late: the upgrade to it was abandoned"
            ));
        }
        match state.pending.take_if(|p| p.pid == pid) {
            Some(pending) => {
                // The waiting task sees `pending` gone and reports success
                // even if the send races with its timeout.
                let _ = pending.ready_tx.send(());
                ReadyVerdict::Spawned
            }
            None => match &state.pending {
                Some(other) => ReadyVerdict::Rejected(format!(
                    "an upgrade to PID {} is in progress; PID {pid} is not it",
                    other.pid
                )),
                None => ReadyVerdict::External,
            },
        }
    }

    /// Routes a `failed` request: remembers the reason for the pending
    /// upgrade's error. Returns whether it was about our successor.
    pub fn on_failed(&self, pid: u32, reason: &str) -> bool {
        match self.lock().pending.as_mut() {
            Some(p) if p.pid == pid => {
                p.failure = Some(reason.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Spawns the successor and waits until it is ready (its PID), exits,
    /// or times out (it is killed). The caller keeps accepting meanwhile and
    /// stops only on success (or as soon as [`on_ready`](Self::on_ready)
    /// says so). Dropping the future kills a successor that is not ready.
    pub async fn spawn_and_wait(&self, cmd: &SuccessorCommand) -> Result<u32, UpgradeError> {
        let mut command = Command::new(&cmd.exe);
        command
            .args(&cmd.args)
            .envs(cmd.envs.iter().map(|(k, v)| (k, v)))
            .env(UPGRADE_FROM_ENV, &self.control_path)
            .stdin(Stdio::null());

        let (ready_tx, ready_rx) = oneshot::channel();
        let (pid, child) = {
            let mut state = self.lock();
            if let Some(p) = &state.pending {
                return Err(UpgradeError::InProgress { pid: p.pid });
            }
            let child = command.spawn().map_err(|source| UpgradeError::Spawn {
                exe: cmd.exe.clone(),
                source,
            })?;
            let Some(pid) = child.id() else {
                // Only possible if it was already reaped, which cannot
                // happen before we wait on it.
                return Err(UpgradeError::Wait {
                    pid: 0,
                    source: io::Error::other("successor has no PID"),
                });
            };
            state.pending = Some(Pending {
                pid,
                ready_tx,
                failure: None,
            });
            (pid, child)
        };
        tracing::info!(pid, exe = %cmd.exe.display(), "started successor; waiting for it to be ready");
        let mut guard = ChildGuard {
            upgrader: self,
            pid,
            child: Some(child),
        };

        let exited = match guard.child.as_mut() {
            Some(child) => tokio::select! {
                _ = ready_rx => None,
                status = child.wait() => Some(status),
                _ = tokio::time::sleep(cmd.timeout) => None,
            },
            None => None,
        };

        // Decide under the lock: if `on_ready` took the pending entry the
        // successor is in charge, whatever woke us up.
        let abandoned = self.lock().abandon(pid);
        let Some(pending) = abandoned else {
            guard.release();
            tracing::info!(pid, "successor is ready");
            return Ok(pid);
        };
        match exited {
            Some(Ok(status)) => {
                guard.child = None;
                let mut reason = pending.failure;
                if reason.is_none() {
                    reason = Some("no reason reported; see its log".to_owned());
                }
                Err(UpgradeError::Exited {
                    pid,
                    status,
                    reason,
                })
            }
            Some(Err(source)) => {
                if let Some(child) = guard.child.as_mut() {
                    let _ = child.start_kill();
                }
                Err(UpgradeError::Wait { pid, source })
            }
            None => {
                if let Some(mut child) = guard.child.take() {
                    // SIGKILL and reap, so that it is gone when we return.
                    if let Err(e) = child.kill().await {
                        tracing::warn!(pid, error = %e, "cannot kill successor");
                    }
                }
                Err(UpgradeError::Timeout {
                    pid,
                    after: cmd.timeout,
                    reason: pending.failure,
                })
            }
        }
    }
}

/// Kills and forgets a successor that is not ready when the wait ends
/// abnormally (future dropped); hands a ready one to a reaper task.
struct ChildGuard<'a> {
    upgrader: &'a Upgrader,
    pid: u32,
    child: Option<Child>,
}

impl ChildGuard<'_> {
    /// The successor is in charge: keep it running and reap it eventually.
    fn release(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = self.pid;
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) => tracing::info!(pid, %status, "successor exited"),
                    Err(e) => tracing::warn!(pid, error = %e, "cannot wait for successor"),
                }
            });
        }
    }
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.upgrader.lock();
        if state.abandon(self.pid).is_some() {
            drop(state);
            if let Some(child) = self.child.as_mut() {
                // Tokio reaps dropped children in the background.
                let _ = child.start_kill();
            }
        }
    }
}
