//! Running a real `baton-origin` for a test.
//!
//! [`Origin::start`] picks free loopback ports, gives the process its own
//! temp dir (PID file, control sockets, log), clears inherited `BATON_*`
//! variables so the developer's environment cannot change a test, captures
//! stderr to `origin.log` in that dir, and returns once `GET /healthz`
//! answers 200. [`OriginBuilder`] covers the rest: extra flags or
//! environment, fixed ports (to start a second process on the same ones),
//! not waiting for health (bad-config tests).
//!
//! Process control for lifecycle tests: [`Origin::signal`] records when a
//! signal was sent and [`Origin::wait_exit`] returns the exit status with
//! the time since that signal. Processes started by the origin itself
//! (upgrade successors) are found through the PID file and `/proc` (their
//! command line names this origin's temp dir) and killed on drop, so no
//! test leaks a server. On a panicking drop the log tail is printed (and
//! with `BATON_TESTS_KEEP=1` the temp dir is kept); `BATON_TESTS_LOG=1`
//! prints every origin's whole log when it is dropped.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::binaries::origin_bin;
use crate::http::{self, HttpResponse};

/// How long [`Origin::start`] waits for `/healthz`.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(10);

/// The three listening addresses of an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
}

impl Ports {
    /// Three currently free loopback ports (bound to port 0, then released).
    pub fn free() -> Ports {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
            .collect();
        let addr = |i: usize| listeners[i].local_addr().expect("local_addr");
        Ports {
            rtmp: addr(0),
            http: addr(1),
            api: addr(2),
        }
    }
}

/// Options for starting an origin; see [`Origin::builder`].
#[derive(Debug, Clone, Default)]
pub struct OriginBuilder {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ports: Option<Ports>,
    dir: Option<PathBuf>,
    binary: Option<PathBuf>,
}

impl OriginBuilder {
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

    /// Sets an environment variable for the process (after the inherited
    /// `BATON_*` ones were removed).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Listen on these addresses instead of fresh free ports.
    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = Some(ports);
        self
    }

    /// Use `dir` (which must exist) for the PID file, control sockets and
    /// log instead of a fresh temp dir, e.g. to start a process that finds
    /// another one's PID file.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Run this binary instead of `target/<profile>/baton-origin` (e.g. a
    /// copy that an upgrade test replaces).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Start and wait for `/healthz` (fresh ports are retried up to three
    /// times if the process fails to bind them).
    pub async fn start(self) -> Origin {
        let attempts = if self.ports.is_some() { 1 } else { 3 };
        for attempt in 1..=attempts {
            let mut origin = self.clone().spawn();
            match origin.wait_healthy(HEALTHY_TIMEOUT).await {
                Ok(()) => return origin,
                Err(why) => {
                    let log = origin.log();
                    let bind_race = log.contains("in use") && origin.try_exit_status().is_some();
                    if bind_race && attempt < attempts {
                        eprintln!("baton-tests: origin lost a port race, retrying: {why}");
                        continue;
                    }
                    panic!(
                        "origin did not become healthy: {why}\ncommand: {:?}\n--- origin log tail ---\n{}",
                        origin.command_line,
                        origin.log_tail(60)
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawn without waiting for health (for tests of start-up failures).
    pub fn spawn(self) -> Origin {
        let (tempdir, dir) = match self.dir {
            Some(dir) => (None, dir),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("baton-origin-")
                    .tempdir()
                    .expect("creating a temp dir");
                let path = t.path().to_path_buf();
                (Some(t), path)
            }
        };
        let ports = self.ports.unwrap_or_else(Ports::free);
        let pid_file = dir.join("origin.pid");
        let control_dir = dir.join("control");
        std::fs::create_dir_all(&control_dir).expect("creating the control dir");
        let log_path = unique_log_path(&dir);
        let log = File::create(&log_path).expect("creating the origin log file");
        let binary = self.binary.unwrap_or_else(origin_bin);
        let mut cmd = Command::new(&binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BATON_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut args: Vec<OsString> = vec![
            "--rtmp".into(),
            ports.rtmp.to_string().into(),
            "--http".into(),
            ports.http.to_string().into(),
            "--api".into(),
            ports.api.to_string().into(),
            "--pid-file".into(),
            pid_file.clone().into(),
            "--control-dir".into(),
            control_dir.clone().into(),
        ];
        args.extend(self.args);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file handle"))
            .stderr(log);
        let command_line = format!("{} {}", binary.display(), join_args(&args));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        Origin {
            child,
            _tempdir: tempdir,
            dir,
            ports,
            pid_file,
            control_dir,
            log_path,
            command_line,
            signalled_at: None,
            exit: None,
        }
    }
}

fn unique_log_path(dir: &Path) -> PathBuf {
    let first = dir.join("origin.log");
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| dir.join(format!("origin-{i}.log")))
        .find(|p| !p.exists())
        .expect("some free log name")
}

fn join_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running (or exited) `baton-origin` process.
pub struct Origin {
    child: Child,
    _tempdir: Option<tempfile::TempDir>,
    dir: PathBuf,
    ports: Ports,
    pid_file: PathBuf,
    control_dir: PathBuf,
    log_path: PathBuf,
    command_line: String,
    signalled_at: Option<Instant>,
    exit: Option<ExitStatus>,
}

impl Origin {
    /// Starts an origin with `extra_args` on fresh loopback ports and waits
    /// until it is healthy.
    pub async fn start(extra_args: &[&str]) -> Origin {
        Self::builder()
            .args(extra_args.iter().copied())
            .start()
            .await
    }

    pub fn builder() -> OriginBuilder {
        OriginBuilder::default()
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    pub fn rtmp_addr(&self) -> SocketAddr {
        self.ports.rtmp
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.ports.http
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.ports.api
    }

    /// `rtmp://127.0.0.1:PORT/{app}/{stream}`
    pub fn rtmp_url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://{}/{app}/{stream}", self.ports.rtmp)
    }

    /// `http://127.0.0.1:PORT/{app}/{stream}.flv`
    pub fn flv_url(&self, app: &str, stream: &str) -> String {
        format!("http://{}/{app}/{stream}.flv", self.ports.http)
    }

    /// `http://127.0.0.1:PORT` of the API listener.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.ports.api)
    }

    /// `api_base() + path` (path starts with '/').
    pub fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base())
    }

    /// PID of the process this handle started.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The PID the PID file names now, if it exists and parses.
    pub fn pid_from_file(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn control_dir(&self) -> &Path {
        &self.control_dir
    }

    /// The origin's temp dir (PID file, control dir and log live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The command line the process was started with.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Everything the process (and any successor sharing its stderr) wrote.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// GET `path` on the API.
    pub async fn api_get(&self, path: &str) -> HttpResponse {
        http::get(&self.api_url(path)).await.unwrap_or_else(|e| {
            panic!(
                "GET {path}: {e:#}\n--- origin log tail ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// GET `path` on the API, asserting 200 and a JSON body.
    pub async fn api_json(&self, path: &str) -> Value {
        let response = self.api_get(path).await;
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        response.json()
    }

    /// `/api/v1/clients` → the `clients` array.
    pub async fn clients(&self) -> Vec<Value> {
        let body = self.api_json("/api/v1/clients").await;
        body["clients"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/v1/clients has no clients array: {body}"))
            .clone()
    }

    /// `/api/v1/streams` → the `streams` array.
    pub async fn streams(&self) -> Vec<Value> {
        let body = self.api_json("/api/v1/streams").await;
        body["streams"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/v1/streams has no streams array: {body}"))
            .clone()
    }

    /// The stream named `name` in `/api/v1/streams`, if listed.
    pub async fn stream(&self, app: &str, name: &str) -> Option<Value> {
        self.streams()
            .await
            .into_iter()
            .find(|s| s["app"] == app && s["name"] == name)
    }

    /// Whether `GET /healthz` answers 200 right now.
    pub async fn is_healthy(&self) -> bool {
        let url = self.api_url("/healthz");
        let probe = tokio::time::timeout(Duration::from_secs(2), http::get(&url));
        matches!(probe.await, Ok(Ok(r)) if r.status == 200)
    }

    /// Polls `/healthz` until it answers 200; `Err` if the process exits
    /// first or `limit` passes.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!(
                    "the process exited with {status} before /healthz answered"
                ));
            }
            if self.is_healthy().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("/healthz did not answer 200 within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` to the process and remembers when.
    pub fn signal(&mut self, signal: Signal) {
        self.signalled_at = Some(Instant::now());
        signal_pid(self.pid(), signal)
            .unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid()));
    }

    /// When the last [`Origin::signal`] was sent.
    pub fn signalled_at(&self) -> Option<Instant> {
        self.signalled_at
    }

    /// The exit status if the process has exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Waits up to `limit` for the process to exit; returns its status and
    /// the time since the last signal (or since this call, if none was
    /// sent). Polls every 10 ms, so the duration is accurate to ~10 ms.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let called = Instant::now();
        let since = self.signalled_at.unwrap_or(called);
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some((status, since.elapsed()));
            }
            if called.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Origin::wait_exit`] that panics (with the log tail) on timeout.
    pub async fn expect_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        match self.wait_exit(limit).await {
            Some(exit) => exit,
            None => panic!(
                "origin (pid {}) still running {limit:?} after waiting\n--- origin log tail ---\n{}",
                self.pid(),
                self.log_tail(40)
            ),
        }
    }

    /// Other live processes whose command line mentions this origin's
    /// temp dir: upgrade successors it started.
    pub fn descendants(&self) -> Vec<u32> {
        let own = self.pid();
        let needle = self.dir.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != own)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .filter(|pid| {
                // Not a zombie.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        !s.rsplit(')')
                            .next()
                            .unwrap_or_default()
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

/// Sends `signal` to `pid`.
pub fn signal_pid(pid: u32, signal: Signal) -> nix::Result<()> {
    kill(Pid::from_raw(pid as i32), signal)
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let others = self.descendants();
        self.kill();
        for pid in others {
            let _ = signal_pid(pid, Signal::SIGKILL);
        }
        if std::env::var_os("BATON_TESTS_LOG").is_some() && !std::thread::panicking() {
            eprintln!(
                "--- origin log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "--- origin log tail ({}, pid {}) ---\n{}\n--- end of origin log ---",
                self.log_path.display(),
                self.child.id(),
                self.log_tail(80)
            );
            if std::env::var_os("BATON_TESTS_KEEP").is_some() {
                if let Some(dir) = self._tempdir.take() {
                    eprintln!("kept {}", dir.keep().display());
                }
            }
        }
    }
}
