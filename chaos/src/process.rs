//! One Baton process of a topology (an origin or an edge) that can be
//! signalled, stopped, started again on the same addresses and upgraded,
//! and that never outlives the tool.
//!
//! Each process gets its own loopback address (127.0.0.x), a short working
//! dir under /tmp (control sockets have a path length limit) and a log in
//! the run's output dir. Upgrade successors are started by the process
//! itself; they are found by their command line (which names the working
//! dir) and the PID file, and are killed with the rest on drop.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The bearer token of every API the tool starts (and asks).
pub const API_TOKEN: &str = "baton-chaos-api-token-not-a-secret";

/// Where a process listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
}

impl Addrs {
    /// Fixed ports on `ip` (netns mode: each process has its own address).
    pub fn at(ip: std::net::IpAddr, (rtmp, http, api): (u16, u16, u16)) -> Addrs {
        Addrs {
            rtmp: SocketAddr::new(ip, rtmp),
            http: SocketAddr::new(ip, http),
            api: SocketAddr::new(ip, api),
        }
    }

    /// Three free ports on `ip` (bound to port 0, then released).
    pub fn free(ip: std::net::IpAddr) -> anyhow::Result<Addrs> {
        let bind = || -> anyhow::Result<std::net::TcpListener> {
            std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))
        };
        let (a, b, c) = (bind()?, bind()?, bind()?);
        Ok(Addrs {
            rtmp: a.local_addr()?,
            http: b.local_addr()?,
            api: c.local_addr()?,
        })
    }
}

/// The resident memory of one process at one moment.
#[derive(Debug, Clone)]
pub struct RssSample {
    pub pid: u32,
    /// `start` (healthy after a start or an upgrade), `exit` (just before
    /// a signal that ends it), `end` (the end of the run).
    pub event: &'static str,
    pub at: tokio::time::Instant,
    pub rss_kib: u64,
}

/// Resident set size of `pid` in KiB (`VmRSS`), if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A Baton process; see the module docs.
pub struct Proc {
    pub name: String,
    binary: PathBuf,
    pub addrs: Addrs,
    args: Vec<String>,
    dir: PathBuf,
    pid_file: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// `ip netns exec NS` in front of the binary (mode 2).
    netns: Option<String>,
    /// Resident memory at every start, before every exit, at the end.
    pub memory: Vec<RssSample>,
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z')
    })
}

pub fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("kill -{sig} {pid}"))
}

impl Proc {
    /// Prepares (does not start) `binary` with the shared flags and `extra`.
    pub fn new(
        name: &str,
        binary: &Path,
        addrs: Addrs,
        work: &Path,
        log_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Proc> {
        let dir = work.join(name);
        let control = dir.join("control");
        std::fs::create_dir_all(&control)
            .with_context(|| format!("creating {}", control.display()))?;
        let pid_file = dir.join("pid");
        let mut args: Vec<String> = vec![
            "--rtmp".into(),
            addrs.rtmp.to_string(),
            "--http".into(),
            addrs.http.to_string(),
            "--api".into(),
            addrs.api.to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
            "--control-dir".into(),
            control.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        Ok(Proc {
            name: name.to_owned(),
            binary: binary.to_owned(),
            addrs,
            args,
            dir,
            pid_file,
            log_path: log_dir.join(format!("{name}.log")),
            child: None,
            netns: None,
            memory: Vec::new(),
        })
    }

    /// Spawns the process (its log is appended to) and waits for `/healthz`.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.reap();
        if let Some(pid) = self.pid() {
            bail!("{} is still running (pid {pid})", self.name);
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BATON_") {
                cmd.env_remove(&key);
            }
        }
        // An API off loopback (network namespaces) needs a bearer token;
        // edges send their own to the origins' APIs.
        cmd.env("BATON_API_TOKEN", API_TOKEN);
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(15)).await?;
        self.note_rss("start");
        Ok(())
    }

    /// Runs the process inside network namespace `ns` from its next start.
    pub fn in_netns(&mut self, ns: &str) {
        self.netns = Some(ns.to_owned());
    }

    /// Records the current generation's resident memory as `event`.
    pub fn note_rss(&mut self, event: &'static str) {
        if let Some(pid) = self.pid() {
            if let Some(rss_kib) = rss_kib(pid) {
                self.memory.push(RssSample {
                    pid,
                    event,
                    at: tokio::time::Instant::now(),
                    rss_kib,
                });
            }
        }
    }

    /// Polls `/healthz` until 200 (bounded).
    pub async fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.healthy().await {
                return Ok(());
            }
            self.reap();
            if self.pid().is_none() {
                bail!(
                    "{} exited before it was healthy; log tail:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if Instant::now() >= deadline {
                bail!("{} not healthy within {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn healthy(&self) -> bool {
        let url = format!("http://{}/healthz", self.addrs.api);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), baton_tests::http::get(&url)).await,
            Ok(Ok(r)) if r.status == 200
        )
    }

    /// Collects the exit status of the direct child, if it exited.
    pub fn reap(&mut self) {
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
            }
        }
    }

    /// The PID to signal: the newest generation named by the PID file if
    /// alive, else the child we started if alive.
    pub fn pid(&mut self) -> Option<u32> {
        self.reap();
        let from_file = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|&p| alive(p) && self.owns(p));
        from_file.or_else(|| self.child.as_ref().map(Child::id).filter(|&p| alive(p)))
    }

    /// Whether `pid` runs with this process's working dir on its command line.
    fn owns(&self, pid: u32) -> bool {
        let needle = self.dir.display().to_string();
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
    }

    /// Every live process of this node (all generations).
    pub fn all_pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| p != std::process::id() && alive(p) && self.owns(p))
            .collect()
    }

    /// Signals the current generation; returns its PID. Its memory is
    /// recorded first if the signal ends it (or starts its successor).
    pub fn signal(&mut self, sig: Signal) -> anyhow::Result<u32> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        if matches!(
            sig,
            Signal::SIGKILL | Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGUSR2
        ) {
            self.note_rss("exit");
        }
        signal(pid, sig)?;
        Ok(pid)
    }

    /// Waits until no process of this node is left (bounded).
    pub async fn wait_gone(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            self.reap();
            if self.pid().is_none() && self.all_pids().is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= limit {
                bail!("{} still running after {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs every generation and reaps the child.
    pub fn kill_all(&mut self) {
        for pid in self.all_pids() {
            let _ = signal(pid, Signal::SIGCONT);
            let _ = signal(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_all();
    }
}
