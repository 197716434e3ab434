//! The process supervisor both roles run around their servers (the part
//! Pingora calls a `Server`): obtaining listeners
//! (bind, or adopt from the running generation), the main event loop of
//! signals and control requests, and the smooth upgrade on both sides.
//!
//! Old side: SIGUSR2 or an `upgrade` request starts the successor with
//! `BATON_UPGRADE_FROM`, keeps accepting until the successor says Ready,
//! then stops accepting and drains (deadline `upgrade_drain_max`). New side:
//! take the listeners over the control socket, start serving, write the PID
//! file, say Ready. If the successor fails at any point the old process
//! carries on untouched and the `upgrade` command reports why.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::handover::{
    bind_listener, control_socket_path, dup_fd, into_tokio, report_failure, request_upgrade,
    send_ready, take_listeners, upgrade_source_from_env, BindError, ControlCall, ControlRequest,
    ControlResponse, ControlServer, ListenerDesc, PidFile, Role, SuccessorCommand, Upgrader,
    DEFAULT_BACKLOG, UPGRADE_FROM_ENV,
};
use crate::hub::Hub;
use crate::lifecycle::{DrainPlan, ProcessSignal, Shutdown, Signals};
use anyhow::{anyhow, bail, Context as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::settings::Settings;
use super::tls::ServerTls;
use super::{api, http_flv, rtmp, ServerContext, StreamDirectory};

/// How long a fast exit waits for connections to close.
const FAST_EXIT_BUDGET: Duration = Duration::from_millis(700);

/// A successor that cannot even load its settings still tells the running
/// generation why, so `baton-{role} upgrade` prints the reason.
pub fn report_startup_failure(reason: &str) {
    let Some(from) = upgrade_source_from_env() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let _ = runtime.block_on(report_failure(&from, std::process::id(), reason));
}

/// `baton-{role} upgrade --pid-file PATH`.
pub fn run_upgrade_command(
    role: Role,
    pid_file: &Path,
    control_dir: Option<PathBuf>,
    timeout: Duration,
) -> ExitCode {
    let pid = match PidFile::read(pid_file) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            eprintln!(
                "baton-{role} upgrade: {} names no process",
                pid_file.display()
            );
            return ExitCode::from(1);
        }
        Err(error) => {
            eprintln!(
                "baton-{role} upgrade: cannot read {}: {error}",
                pid_file.display()
            );
            return ExitCode::from(1);
        }
    };
    let dir = control_dir.unwrap_or_else(std::env::temp_dir);
    let path = control_socket_path(&dir, role, pid);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("baton-{role} upgrade: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(request_upgrade(&path, timeout)) {
        Ok(new_pid) => {
            println!("upgraded: PID {pid} handed over to PID {new_pid}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("baton-{role} upgrade: PID {pid} did not upgrade: {error}");
            ExitCode::from(1)
        }
    }
}

/// Listeners this process serves on, plus duplicates kept for a
/// successor until this process hands over.
struct Listeners {
    std: Vec<(ListenerDesc, std::net::TcpListener)>,
}

fn bind_all(settings: &Settings, role: Role) -> anyhow::Result<Listeners> {
    let mut std = Vec::new();
    for (name, addr) in listener_addrs(settings) {
        let listener = bind_listener(addr, settings.reuseport, DEFAULT_BACKLOG)
            .map_err(|e| bind_error(e, name, settings, role))?;
        std.push((
            ListenerDesc {
                name: name.to_string(),
                addr,
            },
            listener,
        ));
    }
    Ok(Listeners { std })
}

/// Every listener by its hand-over name; the TLS ones only when set.
fn listener_addrs(settings: &Settings) -> Vec<(&'static str, SocketAddr)> {
    let tls = [("rtmps", settings.tls.rtmps), ("https", settings.tls.https)];
    [
        ("rtmp", settings.rtmp),
        ("http", settings.http),
        ("api", settings.api),
    ]
    .into_iter()
    .chain(
        tls.into_iter()
            .filter_map(|(name, addr)| Some((name, addr?))),
    )
    .collect()
}

/// Listeners a new generation may add in an upgrade (bound afresh when
/// the running one has none to hand over).
fn optional_listener(name: &str) -> bool {
    matches!(name, "rtmps" | "https")
}

fn bind_error(error: BindError, name: &str, settings: &Settings, role: Role) -> anyhow::Error {
    if error.is_addr_in_use() {
        let running = settings
            .pid_file
            .as_deref()
            .and_then(PidFile::running)
            .map(|pid| format!("; a baton-{role} is running as PID {pid} — upgrade it with `baton-{role} upgrade --pid-file {}`",
                settings.pid_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default()))
            .unwrap_or_default();
        anyhow!(
            "cannot listen for {name} on {}: address already in use{running}",
            error.addr()
        )
    } else {
        anyhow!("cannot listen for {name}: {error}")
    }
}

/// Successor side: take the predecessor's listeners. With `reuseport`
/// the descriptors are not used: this process binds its own sockets next
/// to the old ones (the fallback, which may reset queued connections).
async fn adopt(
    from: &Path,
    settings: &Settings,
    role: Role,
) -> anyhow::Result<(Listeners, u64, Vec<PathBuf>)> {
    let mut inherited = take_listeners(from, std::process::id())
        .await
        .with_context(|| format!("cannot take the listeners from {}", from.display()))?;
    let mut std = Vec::new();
    for (name, addr) in listener_addrs(settings) {
        let listener = if settings.reuseport || (optional_listener(name) && !inherited.has(name)) {
            bind_listener(addr, settings.reuseport, DEFAULT_BACKLOG)
                .map_err(|e| bind_error(e, name, settings, role))?
        } else {
            let got = inherited
                .take(name)
                .ok_or_else(|| anyhow!("the running {role} has no {name} listener to hand over"))?;
            if got.desc.addr != addr {
                bail!(
                    "the running {role}'s {name} listener is on {}, the new config says {addr}; \
                     listen addresses cannot change in an upgrade",
                    got.desc.addr
                );
            }
            got.into_std()
                .with_context(|| format!("inherited {name} listener"))?
        };
        std.push((
            ListenerDesc {
                name: name.to_string(),
                addr,
            },
            listener,
        ));
    }
    Ok((Listeners { std }, inherited.generation(), inherited.older))
}

/// Builds a role's [`StreamDirectory`] once the hub and lifecycle exist.
pub type DirectoryFactory = Box<dyn FnOnce(&Hub, &Shutdown) -> Arc<dyn StreamDirectory> + Send>;

/// What a binary plugs into the process: its role and its directory.
pub struct Service {
    pub role: Role,
    pub directory: DirectoryFactory,
}

/// Run a node until it exits.
pub async fn run(settings: Settings, service: Service) -> anyhow::Result<()> {
    let pid = std::process::id();
    let role = service.role;
    let upgrade_from = upgrade_source_from_env();
    match &upgrade_from {
        Some(from) => match start(settings, service, Some(from.clone())).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = report_failure(from, pid, &format!("{error:#}")).await;
                Err(error)
            }
        },
        None => {
            if let Some(pid_file) = &settings.pid_file {
                if let Some(running) = PidFile::running(pid_file).filter(|p| *p != pid) {
                    bail!(
                        "a baton-{role} is already running as PID {running} (pid file {}); \
                         to replace it without dropping clients run `baton-{role} upgrade --pid-file {}`",
                        pid_file.display(),
                        pid_file.display()
                    );
                }
            }
            start(settings, service, None).await
        }
    }
}

async fn start(
    settings: Settings,
    service: Service,
    upgrade_from: Option<PathBuf>,
) -> anyhow::Result<()> {
    let pid = std::process::id();
    let role = service.role;
    let metrics = crate::telemetry::install_metrics()?;
    // The certificate first: a node (or a successor) with a broken one
    // does not start, and the running generation keeps serving.
    let tls = ServerTls::from_settings(&settings.tls).context("TLS")?;
    let (listeners, generation, older) = match &upgrade_from {
        Some(from) => adopt(from, &settings, role).await?,
        None => (bind_all(&settings, role)?, 1, Vec::new()),
    };
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let (control_server, control_rx) = ControlServer::bind(&settings.control_dir, role, pid)
        .with_context(|| {
            format!(
                "cannot bind the control socket in {}",
                settings.control_dir.display()
            )
        })?;

    let hub = Hub::new(settings.hub.clone());
    let shutdown = Shutdown::new();
    let streams = (service.directory)(&hub, &shutdown);
    let ctx = Arc::new(ServerContext::new(
        role,
        settings.clone(),
        hub.clone(),
        streams,
        shutdown,
        metrics,
        generation,
        older,
    ));
    let handover_copies = start_servers(&ctx, listeners, tls.as_ref())?;
    match &tls {
        Some(tls) => tls.spawn_watcher(settings.tls.watch_interval, ctx.shutdown.close_all.clone()),
        None => super::tls::ignore_hangup(ctx.shutdown.close_all.clone()),
    }
    let reaper = hub.spawn_reaper();
    let governor = super::limits::governor::spawn(ctx.clone());
    let warnings = super::limits::warnings::spawn_flusher();

    if let Some(from) = &upgrade_from {
        send_ready(from, pid).await.with_context(|| {
            format!(
                "the running {role} refused the hand-over ({})",
                from.display()
            )
        })?;
    }
    if let Some(pid_file) = &settings.pid_file {
        PidFile::write_atomic(pid_file, pid)
            .with_context(|| format!("cannot write the pid file {}", pid_file.display()))?;
    }
    tracing::info!(
        pid,
        generation,
        rtmp = %settings.rtmp,
        http = %settings.http,
        api = %settings.api,
        upgraded_from = upgrade_from.as_ref().map(|p| p.display().to_string()),
        "{role} serving: publish to rtmp://{}/live/STREAM, play rtmp://{}/live/STREAM or http://{}/live/STREAM.flv",
        settings.rtmp, settings.rtmp, settings.http
    );

    print_banner(&settings, role, generation);
    crate::sdnotify::ready();
    let main_loop = MainLoop {
        ctx: ctx.clone(),
        upgrader: Upgrader::new(control_server.path()),
        handover_copies: Some(handover_copies),
        drain: None,
        successor: SuccessorCommand::current_process().map_err(|e| e.to_string()),
    };
    main_loop.run(&mut signals, control_rx).await;

    reaper.abort();
    governor.abort();
    warnings.abort();
    if let Some(pid_file) = &settings.pid_file {
        let _ = PidFile::remove_if_ours(pid_file, pid);
    }
    drop(control_server);
    tracing::info!(pid, generation, %role, "exited");
    Ok(())
}

/// Where to publish and play, on stdout for whoever started us.
fn print_banner(settings: &Settings, role: Role, generation: u64) {
    let show = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    };
    let (rtmp, http, api) = (show(settings.rtmp), show(settings.http), show(settings.api));
    println!(
        "baton-{role} {} (generation {generation}, pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    println!(
        "  publish:  rtmp://{rtmp}/live/STREAM   (OBS: server rtmp://{rtmp}/live, key STREAM)"
    );
    println!("  play:     rtmp://{rtmp}/live/STREAM");
    println!("            http://{http}/live/STREAM.flv");
    if let Some(rtmps) = settings.tls.rtmps {
        println!("  tls:      rtmps://{}/live/STREAM", show(rtmps));
    }
    if let Some(https) = settings.tls.https {
        println!("            https://{}/live/STREAM.flv", show(https));
    }
    println!("  api:      http://{api}/api/v1/summaries   metrics: http://{api}/metrics");
    println!(
        "  stop:     Ctrl-C (fast), kill -QUIT {} (graceful), kill -USR2 {} (upgrade)",
        std::process::id(),
        std::process::id()
    );
}

fn start_servers(
    ctx: &Arc<ServerContext>,
    listeners: Listeners,
    tls: Option<&ServerTls>,
) -> anyhow::Result<Vec<(ListenerDesc, OwnedFd)>> {
    let mut copies = Vec::new();
    for (desc, listener) in listeners.std {
        let copy = dup_fd(&listener).with_context(|| format!("dup {} listener", desc.name))?;
        let listener = into_tokio(listener).with_context(|| format!("{} listener", desc.name))?;
        let ctx = ctx.clone();
        match desc.name.as_str() {
            "rtmp" => tokio::spawn(rtmp::serve(listener, ctx)),
            "http" => tokio::spawn(http_flv::serve(listener, ctx)),
            "rtmps" | "https" => {
                let tls =
                    tls.ok_or_else(|| anyhow!("{} listener without TLS settings", desc.name))?;
                match desc.name.as_str() {
                    "rtmps" => tokio::spawn(rtmp::serve_tls(listener, ctx, tls.rtmps.clone())),
                    _ => tokio::spawn(http_flv::serve_tls(listener, ctx, tls.https.clone())),
                }
            }
            _ => tokio::spawn(api::serve(listener, ctx)),
        };
        copies.push((desc, copy));
    }
    Ok(copies)
}

/// What an upgrade attempt came to, reported back to the main loop.
struct UpgradeOutcome {
    result: Result<u32, String>,
    responder: Option<crate::handover::Responder>,
}

struct MainLoop {
    ctx: Arc<ServerContext>,
    upgrader: Upgrader,
    /// Duplicates of the listeners for a successor; dropped at hand-over.
    handover_copies: Option<Vec<(ListenerDesc, OwnedFd)>>,
    drain: Option<JoinHandle<()>>,
    /// This binary's path and arguments, captured at start-up (the file at
    /// that path may be replaced by the time an upgrade runs: that is the
    /// point).
    successor: Result<SuccessorCommand, String>,
}

impl MainLoop {
    async fn run(mut self, signals: &mut Signals, mut control: mpsc::Receiver<ControlCall>) {
        let (upgrade_tx, mut upgrade_rx) = mpsc::channel::<UpgradeOutcome>(4);
        loop {
            tokio::select! {
                signal = signals.recv() => {
                    tracing::info!(?signal, "signal received");
                    match signal {
                        // force_grace_quit makes the first SIGTERM a drain;
                        // one during a drain (a second SIGTERM) exits at once.
                        ProcessSignal::Terminate if self.ctx.settings.force_grace_quit && self.drain.is_none() => self.graceful("SIGTERM (force_grace_quit)"),
                        ProcessSignal::Terminate | ProcessSignal::Interrupt => {
                            self.fast_exit().await;
                            return;
                        }
                        ProcessSignal::Quit => self.graceful("SIGQUIT"),
                        ProcessSignal::Upgrade => self.start_upgrade(None, &upgrade_tx),
                    }
                }
                Some(call) = control.recv() => self.on_control(call, &upgrade_tx),
                _ = self.ctx.shutdown.stop_accepting.cancelled(), if self.handover_copies.is_some() => {
                    // The listeners' last copies: closing them is what makes
                    // new connections refused rather than queued forever.
                    self.handover_copies = None;
                }
                Some(outcome) = upgrade_rx.recv() => self.on_upgrade_outcome(outcome),
                _ = wait_opt(&mut self.drain) => return,
            }
        }
    }

    async fn fast_exit(&mut self) {
        crate::sdnotify::stopping();
        if let Some(drain) = self.drain.take() {
            drain.abort();
        }
        self.ctx
            .shutdown
            .fast_exit(&self.ctx.clients, FAST_EXIT_BUDGET)
            .await;
    }

    fn graceful(&mut self, reason: &'static str) {
        if self.drain.is_some() {
            tracing::info!(
                reason,
                "already draining; signal ignored (SIGTERM or SIGINT exits at once)"
            );
            return;
        }
        crate::sdnotify::stopping();
        let settings = &self.ctx.settings;
        let plan = DrainPlan {
            accept_for: settings.grace_start_wait,
            final_wait: settings.grace_final_wait,
            deadline: settings.drain_timeout,
            reason,
            successor_serves: false,
        };
        self.start_drain(plan);
    }

    fn start_drain(&mut self, plan: DrainPlan) {
        let ctx = self.ctx.clone();
        self.drain = Some(tokio::spawn(async move {
            ctx.shutdown.drain(&plan, &ctx.clients).await;
        }));
    }

    fn on_control(&mut self, call: ControlCall, upgrade_tx: &mpsc::Sender<UpgradeOutcome>) {
        let ControlCall { request, responder } = call;
        match request {
            ControlRequest::Upgrade => self.start_upgrade(Some(responder), upgrade_tx),
            ControlRequest::TakeListeners { pid } => self.give_listeners(pid, responder),
            ControlRequest::Ready { pid } => {
                let verdict = self.upgrader.on_ready(pid);
                match verdict {
                    crate::handover::ReadyVerdict::Rejected(reason) => {
                        tracing::warn!(successor = pid, reason, "hand-over refused");
                        responder.reply_err(reason);
                    }
                    // A successor we did not spawn (started by hand with
                    // BATON_UPGRADE_FROM) is handed over to all the same.
                    crate::handover::ReadyVerdict::External
                    | crate::handover::ReadyVerdict::Spawned => {
                        self.hand_over(pid);
                        responder.reply(ControlResponse::Ok);
                    }
                }
            }
            ControlRequest::Failed { pid, reason } => {
                tracing::warn!(successor = pid, reason, "successor failed to start");
                self.upgrader.on_failed(pid, &reason);
                responder.reply(ControlResponse::Ok);
            }
            ControlRequest::Stats => {
                let stats = api::local_summary(&self.ctx);
                responder.reply(ControlResponse::Stats { stats });
            }
        }
    }

    fn give_listeners(&mut self, pid: u32, responder: crate::handover::Responder) {
        let Some(copies) = &self.handover_copies else {
            responder.reply_err("this generation has handed over already and is draining");
            return;
        };
        let mut descs = Vec::new();
        let mut fds = Vec::new();
        for (desc, fd) in copies {
            match fd.try_clone() {
                Ok(dup) => {
                    descs.push(desc.clone());
                    fds.push(dup);
                }
                Err(error) => {
                    responder.reply_err(format!(
                        "cannot duplicate the {} listener: {error}",
                        desc.name
                    ));
                    return;
                }
            }
        }
        tracing::info!(
            successor = pid,
            listeners = descs.len(),
            "handing listeners to the successor"
        );
        let older = self.ctx.older_generations().clone();
        responder.reply_with_fds(
            ControlResponse::Listeners {
                listeners: descs,
                generation: self.ctx.generation,
                older,
            },
            fds,
        );
    }

    fn start_upgrade(
        &mut self,
        responder: Option<crate::handover::Responder>,
        upgrade_tx: &mpsc::Sender<UpgradeOutcome>,
    ) {
        if self.drain.is_some() || self.handover_copies.is_none() {
            let reason = "this generation is draining; upgrade the serving generation instead";
            tracing::warn!(reason, "upgrade refused");
            if let Some(r) = responder {
                r.reply_err(reason);
            }
            return;
        }
        let command = match &self.successor {
            Ok(cmd) => cmd
                .clone()
                .env(UPGRADE_FROM_ENV, self.upgrader.control_path()),
            Err(error) => {
                let reason = format!("cannot find this binary's path: {error}");
                tracing::error!(reason, "upgrade refused");
                if let Some(r) = responder {
                    r.reply_err(reason);
                }
                return;
            }
        };
        tracing::info!(exe = %command.exe.display(), "upgrade: starting the successor");
        let upgrader = self.upgrader.clone();
        let tx = upgrade_tx.clone();
        tokio::spawn(async move {
            let result = upgrader
                .spawn_and_wait(&command)
                .await
                .map_err(|e| e.to_string());
            let _ = tx.send(UpgradeOutcome { result, responder }).await;
        });
    }

    fn on_upgrade_outcome(&mut self, outcome: UpgradeOutcome) {
        match outcome.result {
            Ok(pid) => {
                self.hand_over(pid);
                if let Some(r) = outcome.responder {
                    r.reply(ControlResponse::Upgraded { pid });
                }
            }
            Err(reason) => {
                tracing::error!(reason, "upgrade failed; this generation keeps serving");
                if let Some(r) = outcome.responder {
                    r.reply_err(reason);
                }
            }
        }
    }

    /// The successor serves: stop accepting, drain, exit.
    fn hand_over(&mut self, successor: u32) {
        if self.handover_copies.take().is_none() {
            return;
        }
        tracing::info!(
            successor,
            "upgrade: successor is serving; this generation stops accepting and drains"
        );
        // Name the successor in the PID file before anyone is told the
        // upgrade happened, so `kill -USR2 $(cat pidfile)` never reaches a
        // draining generation.
        if let Some(pid_file) = &self.ctx.settings.pid_file {
            if let Err(error) = PidFile::write_atomic(pid_file, successor) {
                tracing::error!(%error, pid_file = %pid_file.display(), "cannot name the successor in the pid file");
            }
        }
        let plan = DrainPlan {
            accept_for: Duration::ZERO,
            final_wait: Duration::ZERO,
            deadline: Some(self.ctx.settings.upgrade_drain_max),
            reason: "upgrade hand-over",
            successor_serves: true,
        };
        if let Some(drain) = self.drain.take() {
            drain.abort();
        }
        self.start_drain(plan);
    }
}

async fn wait_opt(task: &mut Option<JoinHandle<()>>) {
    match task {
        Some(handle) => {
            let _ = handle.await;
        }
        None => std::future::pending().await,
    }
}

/// Subcommands every node binary has besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Ask the running node (named by its PID file) to start a new
    /// generation from the binary now at its path and hand it the
    /// listening sockets. Exits 0 once the new generation serves.
    Upgrade {
        /// PID file of the running node.
        #[arg(long)]
        pid_file: PathBuf,
        /// Directory of the control sockets (as the node's --control-dir).
        #[arg(long, env = "BATON_CONTROL_DIR")]
        control_dir: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "60s")]
        timeout: crate::config::HumanDuration,
    },
    /// Print `token=...&expires=...` for a signed publish or play URL
    /// (see auth_token_secret).
    Sign(super::auth::SignArgs),
}

/// A node binary's `main` after argument parsing: run a subcommand, or
/// resolve the settings (exit 2 with the reason if they are invalid, and
/// tell a waiting predecessor why), start the runtime and serve until the
/// lifecycle says exit.
pub fn main(
    role: Role,
    command: Option<NodeCommand>,
    resolve: impl FnOnce() -> anyhow::Result<(Settings, Service)>,
) -> ExitCode {
    if let Some(NodeCommand::Sign(args)) = &command {
        return super::auth::run_sign_command(args);
    }
    if let Some(NodeCommand::Upgrade {
        pid_file,
        control_dir,
        timeout,
    }) = command
    {
        return run_upgrade_command(role, &pid_file, control_dir, timeout.get());
    }
    let (settings, service) = match resolve() {
        Ok(resolved) => resolved,
        Err(error) => {
            eprintln!("baton-{role}: {error:#}");
            report_startup_failure(&format!("{error:#}"));
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton-{role}: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(settings, service));
    // Connection tasks still running are dropped, not awaited: the
    // lifecycle already closed or drained them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting with an error");
            eprintln!("baton-{role}: {error:#}");
            ExitCode::from(1)
        }
    }
}
