//! Running a real Baton process — an origin or an edge — for a test.
//!
//! Both roles take the same core command line (`--rtmp`, `--http`, `--api`,
//! `--pid-file`, `--control-dir`), serve `/healthz` on the API listener and
//! are stopped, upgraded and killed the same way, so one launcher serves
//! both: a [`Role`] only picks the binary, the temp dir prefix, the log and
//! PID file names and the labels in messages. Failover tests start origins
//! and edges side by side and get identical process control for each.
//!
//! [`Node::start`] (alias [`Origin::start`]) picks free loopback ports,
//! gives the process its own temp dir (PID file, control sockets, log),
//! clears inherited `BATON_*` variables so the developer's environment
//! cannot change a test, captures stderr to `origin.log` / `edge.log` in
//! that dir, and returns once `GET /healthz` answers 200. [`NodeBuilder`]
//! covers the rest: extra flags or environment, fixed ports (to start a
//! second process on the same ones), not waiting for health (bad-config
//! tests), and for edges the upstream flags ([`NodeBuilder::origin`],
//! [`NodeBuilder::origin_dns`], [`NodeBuilder::dns_server`], ...).
//!
//! Process control for lifecycle and failover tests: [`Node::signal`]
//! records when a signal was sent and [`Node::wait_exit`] returns the exit
//! status with the time since that signal; [`Node::freeze`] / [`Node::thaw`]
//! stop and resume the process (SIGSTOP / SIGCONT: a hung server whose
//! sockets stay open). Processes started by the node itself (upgrade
//! successors) are found through `/proc` (their command line names this
//! node's temp dir) and killed on drop, so no test leaks a server. On a
//! panicking drop the log tail is printed (and with `BATON_TESTS_KEEP=1`
//! the temp dir is kept); `BATON_TESTS_LOG=1` prints every node's whole log
//! when it is dropped.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::binaries::{edge_bin, origin_bin};
use crate::http::{self, HttpResponse};

/// How long [`NodeBuilder::start`] waits for `/healthz`.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which Baton binary a [`Node`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Origin,
    Edge,
}

impl Role {
    /// `origin` / `edge`: used in file names and messages.
    pub fn label(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Edge => "edge",
        }
    }

    /// The binary under test for this role (built if missing).
    pub fn binary(self) -> PathBuf {
        match self {
            Role::Origin => origin_bin(),
            Role::Edge => edge_bin(),
        }
    }

    fn dir_prefix(self) -> String {
        format!("baton-{}-", self.label())
    }
}

/// An origin is a [`Node`] started with [`Role::Origin`]; existing tests
/// use this name.
pub type Origin = Node;
/// The builder of [`Origin::builder`].
pub type OriginBuilder = NodeBuilder;
/// An edge: a [`Node`] started with [`Role::Edge`] (see
/// [`Node::edge_builder`]; note that `Edge::builder()` is the origin
/// builder, as for any alias of `Node`).
pub type Edge = Node;

/// The three listening addresses of a node.
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

/// Options for starting a node; see [`Node::builder`] and
/// [`Node::edge_builder`].
#[derive(Debug, Clone, Default)]
pub struct NodeBuilder {
    role: Role,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ports: Option<Ports>,
    dir: Option<PathBuf>,
    binary: Option<PathBuf>,
}

impl NodeBuilder {
    /// A builder for `role` with no extra flags.
    pub fn new(role: Role) -> Self {
        NodeBuilder {
            role,
            ..NodeBuilder::default()
        }
    }

    pub fn role(&self) -> Role {
        self.role
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

    /// Run this binary instead of `target/<profile>/baton-origin` (or
    /// `baton-edge`), e.g. a copy that an upgrade test replaces.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Edge: pull from / forward to `origin`
    /// (`--origin RTMP_ADDR,api=API_ADDR`). Repeatable, in preference order.
    pub fn origin(self, origin: &Node) -> Self {
        self.origin_addr(origin.rtmp_addr(), Some(origin.api_addr()))
    }

    /// Edge: `--origin RTMP[,api=API]` for an address that need not be a
    /// running [`Node`] (e.g. a [`crate::proxy::FaultProxy`] in front of
    /// one, or a port nobody listens on).
    pub fn origin_addr(self, rtmp: SocketAddr, api: Option<SocketAddr>) -> Self {
        self.edge_only("--origin");
        let value = match api {
            Some(api) => format!("{rtmp},api={api}"),
            None => rtmp.to_string(),
        };
        self.arg("--origin").arg(value)
    }

    /// Edge: `--origin-dns NAME:PORT[,api-port=N]`: discover origins by
    /// resolving `name` (A records) on every (re)connection.
    pub fn origin_dns(self, name: &str, rtmp_port: u16, api_port: Option<u16>) -> Self {
        self.edge_only("--origin-dns");
        let value = match api_port {
            Some(api) => format!("{name}:{rtmp_port},api-port={api}"),
            None => format!("{name}:{rtmp_port}"),
        };
        self.arg("--origin-dns").arg(value)
    }

    /// Edge: `--dns-server IP:PORT`: the nameserver to query instead of the
    /// system's (a [`crate::dns::TestDns`]).
    pub fn dns_server(self, addr: SocketAddr) -> Self {
        self.edge_only("--dns-server");
        self.arg("--dns-server").arg(addr.to_string())
    }

    /// Edge: `--upstream-stall-timeout`.
    pub fn upstream_stall_timeout(self, value: Duration) -> Self {
        self.duration_flag("--upstream-stall-timeout", value)
    }

    /// Edge: `--upstream-outage-max`.
    pub fn upstream_outage_max(self, value: Duration) -> Self {
        self.duration_flag("--upstream-outage-max", value)
    }

    /// Edge: `--pull-linger`.
    pub fn pull_linger(self, value: Duration) -> Self {
        self.duration_flag("--pull-linger", value)
    }

    /// Edge: `--publish-buffer`.
    pub fn publish_buffer(self, value: Duration) -> Self {
        self.duration_flag("--publish-buffer", value)
    }

    /// `flag NNNms` (the servers' duration syntax).
    fn duration_flag(self, flag: &str, value: Duration) -> Self {
        self.edge_only(flag);
        self.arg(flag).arg(format!("{}ms", value.as_millis()))
    }

    fn edge_only(&self, flag: &str) {
        assert_eq!(
            self.role,
            Role::Edge,
            "{flag} is an edge flag; use Node::edge_builder()"
        );
    }

    /// Start and wait for `/healthz` (fresh ports are retried up to three
    /// times if the process fails to bind them).
    pub async fn start(self) -> Node {
        let attempts = if self.ports.is_some() { 1 } else { 3 };
        for attempt in 1..=attempts {
            let mut node = self.clone().spawn();
            match node.wait_healthy(HEALTHY_TIMEOUT).await {
                Ok(()) => return node,
                Err(why) => {
                    let label = node.role.label();
                    let log = node.log();
                    let bind_race = log.contains("in use") && node.try_exit_status().is_some();
                    if bind_race && attempt < attempts {
                        eprintln!("baton-tests: {label} lost a port race, retrying: {why}");
                        continue;
                    }
                    panic!(
                        "{label} did not become healthy: {why}\ncommand: {:?}\n--- {label} log tail ---\n{}",
                        node.command_line,
                        node.log_tail(60)
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawn without waiting for health (for tests of start-up failures).
    pub fn spawn(self) -> Node {
        let role = self.role;
        let label = role.label();
        let (tempdir, dir) = match self.dir {
            Some(dir) => (None, dir),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&role.dir_prefix())
                    .tempdir()
                    .expect("creating a temp dir");
                let path = t.path().to_path_buf();
                (Some(t), path)
            }
        };
        let ports = self.ports.unwrap_or_else(Ports::free);
        let pid_file = dir.join(format!("{label}.pid"));
        let control_dir = dir.join("control");
        std::fs::create_dir_all(&control_dir).expect("creating the control dir");
        let log_path = unique_log_path(&dir, label);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let binary = self.binary.unwrap_or_else(|| role.binary());
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
        Node {
            role,
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

fn unique_log_path(dir: &Path, label: &str) -> PathBuf {
    let first = dir.join(format!("{label}.log"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| dir.join(format!("{label}-{i}.log")))
        .find(|p| !p.exists())
        .expect("some free log name")
}

fn join_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running (or exited) `baton-origin` or `baton-edge` process.
pub struct Node {
    role: Role,
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

impl Node {
    /// Starts an **origin** with `extra_args` on fresh loopback ports and
    /// waits until it is healthy.
    pub async fn start(extra_args: &[&str]) -> Node {
        Self::builder()
            .args(extra_args.iter().copied())
            .start()
            .await
    }

    /// A builder for an **origin** (the name existing tests use).
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new(Role::Origin)
    }

    /// A builder for an edge; add upstreams with [`NodeBuilder::origin`]
    /// and friends.
    pub fn edge_builder() -> NodeBuilder {
        NodeBuilder::new(Role::Edge)
    }

    /// Starts an edge in front of `origins` (in preference order) with
    /// `extra_args` and waits until it is healthy.
    pub async fn start_edge(origins: &[&Node], extra_args: &[&str]) -> Node {
        let mut builder = Self::edge_builder();
        for origin in origins {
            builder = builder.origin(origin);
        }
        builder.args(extra_args.iter().copied()).start().await
    }

    pub fn role(&self) -> Role {
        self.role
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

    /// The node's temp dir (PID file, control dir and log live here).
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
                "GET {path}: {e:#}\n--- {} log tail ---\n{}",
                self.role.label(),
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

    /// Whether this node publishes `app/name` right now; a node that does
    /// not answer (killed, frozen, exited) does not.
    pub async fn publishes(&self, app: &str, name: &str) -> bool {
        let url = self.api_url("/api/v1/streams");
        let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(1), http::get(&url)).await
        else {
            return false;
        };
        let body = response.json();
        body["streams"].as_array().is_some_and(|streams| {
            streams
                .iter()
                .any(|s| s["app"] == app && s["name"] == name && s["publish"]["active"] == true)
        })
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

    /// Stops the process with SIGSTOP: it keeps its sockets open but
    /// neither reads nor writes (a hung server, or a host that vanished
    /// without closing anything). Unlike [`Node::signal`] this does not
    /// move the reference point of [`Node::wait_exit`]. Dropping a frozen
    /// node still kills it (SIGKILL ends a stopped process).
    pub fn freeze(&mut self) {
        signal_pid(self.pid(), Signal::SIGSTOP)
            .unwrap_or_else(|e| panic!("kill -STOP {}: {e}", self.pid()));
    }

    /// Resumes a [`Node::freeze`]d process (SIGCONT).
    pub fn thaw(&mut self) {
        signal_pid(self.pid(), Signal::SIGCONT)
            .unwrap_or_else(|e| panic!("kill -CONT {}: {e}", self.pid()));
    }

    /// When the last [`Node::signal`] was sent.
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

    /// [`Node::wait_exit`] that panics (with the log tail) on timeout.
    pub async fn expect_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        match self.wait_exit(limit).await {
            Some(exit) => exit,
            None => panic!(
                "{label} (pid {}) still running {limit:?} after waiting\n--- {label} log tail ---\n{}",
                self.pid(),
                self.log_tail(40),
                label = self.role.label(),
            ),
        }
    }

    /// Other live processes whose command line mentions this node's temp
    /// dir: upgrade successors it started.
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

impl Drop for Node {
    fn drop(&mut self) {
        let label = self.role.label();
        let others = self.descendants();
        self.kill();
        for pid in others {
            let _ = signal_pid(pid, Signal::SIGKILL);
        }
        if std::env::var_os("BATON_TESTS_LOG").is_some() && !std::thread::panicking() {
            eprintln!(
                "--- {label} log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {label} log tail ({}, pid {}) ---\n{}\n--- end of {label} log ---",
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
