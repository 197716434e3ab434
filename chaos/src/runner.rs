//! Running one scenario: start the topology and the clients, apply the
//! fault schedule, stop, account for every frame, write the report.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::clients::{Player, Publisher};
use crate::netns::{self, LinkFault};
use crate::process::{alive, rss_kib, Proc};
use crate::progress::{FaultCounters, Progress};
use crate::report::{self, MemorySample, Report, Window, WindowReport};
use crate::scenario::{Action, Protocol, PublisherKind, Scenario, Target};
use crate::topology::{LinkState, NetMode, Topology, APP};

const EXIT_WAIT: Duration = Duration::from_secs(15);

/// `--mode`: which network the topology runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// netns when root and `ip netns` works (and, for delay faults, the
    /// kernel has sch_netem), else loopback.
    Auto,
    /// Network namespaces, faults with tc (mode 2).
    Netns,
    /// 127.0.0.x addresses and proxies (mode 1).
    Loopback,
}

/// How a scenario runs: on which network, why, or why not at all.
enum Decision {
    Run(NetMode, Option<String>),
    Skip(String),
}

fn decide(choice: ModeChoice, scenario: &Scenario) -> anyhow::Result<Decision> {
    let delays = scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, Action::Delay { .. }));
    let no_delay = "this kernel has no sch_netem, which delay faults need in netns mode";
    Ok(match choice {
        ModeChoice::Loopback => Decision::Run(NetMode::Loopback, None),
        ModeChoice::Netns => {
            if !netns::available() {
                bail!("--mode netns needs root and working `ip netns`, veth, bridge and HTB (iproute2)");
            }
            if delays && !netns::netem_available() {
                Decision::Skip(format!("{no_delay} (run it with --mode loopback)"))
            } else {
                Decision::Run(NetMode::Netns, None)
            }
        }
        ModeChoice::Auto => {
            if !netns::available() {
                Decision::Run(
                    NetMode::Loopback,
                    Some("auto: not root, or no working `ip netns`, veth, bridge or HTB".into()),
                )
            } else if delays && !netns::netem_available() {
                Decision::Run(NetMode::Loopback, Some(format!("auto: {no_delay}")))
            } else {
                Decision::Run(NetMode::Netns, None)
            }
        }
    })
}

/// Runs `scenario`, writing logs and `report.json` under `out/<name>/`.
pub async fn run(
    scenario: &Scenario,
    out: &Path,
    seed: Option<u64>,
    progress: bool,
    choice: ModeChoice,
) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let dir = out.join(&scenario.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let (mode, mode_note) = match decide(choice, scenario)? {
        Decision::Run(mode, note) => (mode, note),
        Decision::Skip(why) => {
            let report = Report::skipped(scenario, &why, &dir);
            write_report(&report, &dir)?;
            return Ok(report);
        }
    };
    let tool_start = (Instant::now(), rss_kib(std::process::id()));
    let mut topo = Topology::start(&scenario.topology, &dir, mode).await?;

    let mut publishers = Vec::new();
    for p in &scenario.publishers {
        let url = match p.via {
            Target::Edge(i) => format!("rtmp://{}/{APP}/{}", topo.edges[i].addrs.rtmp, p.stream),
            Target::Origin(i) => {
                format!("rtmp://{}/{APP}/{}", topo.origins[i].addrs.rtmp, p.stream)
            }
            Target::Holder => bail!("publisher {} via origin:holder", p.name),
        };
        publishers.push(match p.kind {
            PublisherKind::Synthetic => Publisher::start(&p.name, &p.stream, url, p.fps, p.gop),
            PublisherKind::Ffmpeg => Publisher::start_ffmpeg(&p.name, &p.stream, url, p.gop),
        });
    }
    for p in &scenario.publishers {
        if topo
            .holder(&p.stream, Duration::from_secs(10))
            .await
            .is_none()
        {
            bail!(
                "no origin publishes {} 10 s after the publisher started",
                p.stream
            );
        }
    }
    let mut players = Vec::new();
    for p in &scenario.players {
        let edge = &topo.edges[p.edge];
        let url = match p.protocol {
            Protocol::Rtmp | Protocol::Ffmpeg => {
                format!("rtmp://{}/{APP}/{}", edge.addrs.rtmp, p.stream)
            }
            Protocol::Flv => format!("http://{}/{APP}/{}.flv", edge.addrs.http, p.stream),
        };
        players.push(Player::start(&p.name, p.protocol, url, p.reconnect));
    }
    let warm = Instant::now() + Duration::from_secs(10);
    while players.iter().any(|p| p.received() < 30) {
        if Instant::now() >= warm {
            let slow: Vec<&str> = players
                .iter()
                .filter(|p| p.received() < 30)
                .map(|p| p.name.as_str())
                .collect();
            bail!("players {slow:?} got fewer than 30 frames in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t0 = Instant::now();
    let mut windows = vec![Window {
        label: "before any fault".into(),
        start: t0,
        end: t0,
        detail: String::new(),
        error: None,
    }];
    let holder_stream = scenario.publishers[0].stream.clone();
    let counters = Arc::new(FaultCounters::default());
    let ticker = progress.then(|| {
        let logs: Vec<_> = players
            .iter()
            .map(|p| (p.name.clone(), p.log.clone()))
            .collect();
        let mut tracker = Progress::new(logs, t0, scenario.duration.0, scenario.expect.clone());
        let counters = counters.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!("{}", tracker.snapshot(Instant::now(), &counters).line());
            }
        })
    });
    for (n, fault) in scenario.faults.iter().enumerate() {
        tokio::time::sleep_until(t0 + fault.at.0).await;
        let start = Instant::now();
        if let Some(last) = windows.last_mut() {
            last.end = start;
        }
        if progress {
            eprintln!("soak fault {}: {}", n + 1, fault.action.label());
        }
        let result = apply(&mut topo, &publishers, &holder_stream, &fault.action).await;
        counters.applied.fetch_add(1, Ordering::Relaxed);
        let (detail, error) = match result {
            Ok(d) => (format!("{d} ({} ms)", start.elapsed().as_millis()), None),
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                (String::new(), Some(format!("{e:#}")))
            }
        };
        windows.push(Window {
            label: fault.action.label(),
            start,
            end: start,
            detail,
            error,
        });
    }
    tokio::time::sleep_until(t0 + scenario.duration.0).await;
    if let Some(t) = ticker {
        t.abort();
    }
    let end = Instant::now();
    if let Some(last) = windows.last_mut() {
        last.end = end;
    }
    let mut pub_logs = Vec::new();
    for p in publishers {
        let name = p.name.clone();
        let stream = p.stream.clone();
        pub_logs.push((name, stream, p.stop().await));
    }
    // Frames written just before the stop get time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let play_logs: Vec<_> = players
        .into_iter()
        .map(|p| (p.name.clone(), p.stop()))
        .collect();
    let tool = |at: Instant, rss: Option<u64>, event: &str| {
        rss.map(|rss_kib| MemorySample {
            process: "baton-chaos".into(),
            pid: std::process::id(),
            event: event.into(),
            at_ms: signed_ms(at, t0),
            rss_kib,
        })
    };
    let mut memory: Vec<MemorySample> = tool(tool_start.0, tool_start.1, "start")
        .into_iter()
        .collect();
    for p in topo.edges.iter_mut().chain(topo.origins.iter_mut()) {
        p.note_rss("end");
    }
    for p in topo.origins.iter().chain(topo.edges.iter()) {
        memory.extend(p.memory.iter().map(|s| MemorySample {
            process: p.name.clone(),
            pid: s.pid,
            event: s.event.to_owned(),
            at_ms: signed_ms(s.at, t0),
            rss_kib: s.rss_kib,
        }));
    }
    memory.extend(tool(Instant::now(), rss_kib(std::process::id()), "end"));
    drop(topo);

    let mut reports: Vec<WindowReport> = windows
        .iter()
        .map(|w| WindowReport {
            label: w.label.clone(),
            at_ms: w.start.saturating_duration_since(t0).as_millis() as u64,
            detail: w.detail.clone(),
            error: w.error.clone(),
            players: Vec::new(),
            publishers: Vec::new(),
        })
        .collect();
    let mut totals = Vec::new();
    for (spec, (name, log)) in scenario.players.iter().zip(&play_logs) {
        let sent = pub_logs
            .iter()
            .find(|(_, s, _)| *s == spec.stream)
            .map(|(_, _, l)| l.sent.clone())
            .unwrap_or_default();
        let per = report::player_windows(name, spec.disrupted, log, &sent, &windows);
        totals.push(report::total(&per));
        for (r, s) in reports.iter_mut().zip(per) {
            r.players.push(s);
        }
    }
    for (spec, (name, _, log)) in scenario.publishers.iter().zip(&pub_logs) {
        for (r, s) in reports.iter_mut().zip(report::publisher_windows(
            name,
            spec.disrupted,
            log,
            &windows,
        )) {
            r.publishers.push(s);
        }
    }
    let violations = report::violations(&scenario.expect, &reports, &totals);
    let passed = violations.is_empty();
    let report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        mode: mode.label().into(),
        mode_note,
        result: if passed { "pass" } else { "fail" }.into(),
        seed,
        wall_ms: wall.elapsed().as_millis() as u64,
        passed,
        violations,
        windows: reports,
        totals,
        memory,
        logs: dir.display().to_string(),
    };
    write_report(&report, &dir)?;
    Ok(report)
}

fn write_report(report: &Report, dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    let path: PathBuf = dir.join("report.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
}

/// `at - t0` in ms, negative before `t0`.
fn signed_ms(at: Instant, t0: Instant) -> i64 {
    if at >= t0 {
        at.duration_since(t0).as_millis() as i64
    } else {
        -(t0.duration_since(at).as_millis() as i64)
    }
}

fn resolve(topo: &Topology, target: &Target, holder: Option<usize>) -> anyhow::Result<Node> {
    Ok(match *target {
        Target::Origin(i) => Node::Origin(i),
        Target::Edge(i) => Node::Edge(i),
        Target::Holder => Node::Origin(holder.with_context(|| {
            format!(
                "no origin holds the stream (of {} origins)",
                topo.origins.len()
            )
        })?),
    })
}

#[derive(Clone, Copy)]
enum Node {
    Origin(usize),
    Edge(usize),
}

fn proc_mut(topo: &mut Topology, node: Node) -> &mut Proc {
    match node {
        Node::Origin(i) => &mut topo.origins[i],
        Node::Edge(i) => &mut topo.edges[i],
    }
}

/// Applies one fault and returns what it did.
async fn apply(
    topo: &mut Topology,
    publishers: &[Publisher],
    stream: &str,
    action: &Action,
) -> anyhow::Result<String> {
    let holder = if action_needs_holder(action) {
        topo.holder(stream, Duration::from_secs(5)).await
    } else {
        None
    };
    match action {
        Action::Kill { target } | Action::Term { target } | Action::Quit { target } => {
            let sig = match action {
                Action::Kill { .. } => Signal::SIGKILL,
                Action::Term { .. } => Signal::SIGTERM,
                _ => Signal::SIGQUIT,
            };
            let node = resolve(topo, target, holder)?;
            let p = proc_mut(topo, node);
            let pid = p.signal(sig)?;
            let took = p.wait_gone(EXIT_WAIT).await?;
            Ok(format!(
                "{} pid {pid} exited after {} ms",
                p.name,
                took.as_millis()
            ))
        }
        Action::Stop { target, hold } => {
            let node = resolve(topo, target, holder)?;
            let p = proc_mut(topo, node);
            let pid = p.signal(Signal::SIGSTOP)?;
            tokio::time::sleep(hold.0).await;
            crate::process::signal(pid, Signal::SIGCONT)?;
            Ok(format!("{} pid {pid} stopped, continued", p.name))
        }
        Action::Start { target } => {
            let node = resolve(topo, target, holder)?;
            let p = proc_mut(topo, node);
            p.start().await?;
            Ok(format!("{} started", p.name))
        }
        Action::Upgrade { target } => {
            let node = resolve(topo, target, holder)?;
            upgrade(proc_mut(topo, node)).await
        }
        Action::RollingUpgrade { gap } => {
            let mut done = Vec::new();
            for i in 0..topo.origins.len() {
                done.push(upgrade(&mut topo.origins[i]).await?);
                tokio::time::sleep(gap.0).await;
            }
            Ok(done.join("; "))
        }
        Action::RollingRestart { gap } => {
            let mut done = Vec::new();
            for i in 0..topo.origins.len() {
                let p = &mut topo.origins[i];
                let pid = p.signal(Signal::SIGQUIT)?;
                let took = p.wait_gone(EXIT_WAIT).await?;
                p.start().await?;
                done.push(format!("{} drained in {} ms", p.name, took.as_millis()));
                let _ = pid;
                tokio::time::sleep(gap.0).await;
            }
            Ok(done.join("; "))
        }
        Action::Blackhole { target, hold } => {
            link_fault(topo, target, holder, LinkFault::Blackhole, hold.0).await
        }
        Action::Delay {
            target,
            delay,
            hold,
        } => link_fault(topo, target, holder, LinkFault::Delay(delay.0), hold.0).await,
        Action::Throttle {
            target,
            bytes_per_sec,
            hold,
        } => {
            link_fault(
                topo,
                target,
                holder,
                LinkFault::Throttle(*bytes_per_sec),
                hold.0,
            )
            .await
        }
        Action::Loss {
            target,
            percent,
            hold,
        } => link_fault(topo, target, holder, LinkFault::Loss(*percent), hold.0).await,
        Action::Reset { target } => {
            let i = origin_index(topo, target, holder)?;
            topo.reset_link(i).await?;
            Ok(format!("origin{i}: every connection reset"))
        }
        Action::DnsAdd { target } => {
            let i = origin_index(topo, target, holder)?;
            topo.set_in_dns(i, true)
        }
        Action::DnsRemove { target } => {
            let i = origin_index(topo, target, holder)?;
            topo.set_in_dns(i, false)
        }
        Action::Flap {
            target,
            down,
            up,
            hold,
        } => {
            let node = resolve(topo, target, holder)?;
            let p = proc_mut(topo, node);
            let until = Instant::now() + hold.0;
            let mut cycles = 0;
            while Instant::now() < until {
                p.signal(Signal::SIGKILL)?;
                p.wait_gone(EXIT_WAIT).await?;
                tokio::time::sleep(down.0).await;
                p.start().await?;
                cycles += 1;
                tokio::time::sleep(up.0).await;
            }
            Ok(format!("{} killed and restarted {cycles} times", p.name))
        }
        Action::PublisherReconnect { publisher } => {
            let p = publishers
                .iter()
                .find(|p| &p.name == publisher)
                .with_context(|| format!("no publisher {publisher}"))?;
            p.reconnect_from_zero();
            Ok(format!("{publisher} reconnecting"))
        }
    }
}

fn action_needs_holder(action: &Action) -> bool {
    action.target() == Some(&Target::Holder)
}

fn origin_index(topo: &Topology, target: &Target, holder: Option<usize>) -> anyhow::Result<usize> {
    match resolve(topo, target, holder)? {
        Node::Origin(i) => Ok(i),
        Node::Edge(_) => bail!("network faults apply to origins"),
    }
}

/// Puts `fault` on the origin's link for `hold`, then back to normal.
async fn link_fault(
    topo: &Topology,
    target: &Target,
    holder: Option<usize>,
    fault: LinkFault,
    hold: Duration,
) -> anyhow::Result<String> {
    let i = origin_index(topo, target, holder)?;
    if let Err(e) = topo.set_link(i, LinkState::Fault(fault)) {
        let _ = topo.set_link(i, LinkState::Normal);
        return Err(e);
    }
    tokio::time::sleep(hold).await;
    topo.set_link(i, LinkState::Normal)?;
    Ok(format!(
        "origin{i}: {fault:?} ({}), then normal",
        topo.mode.label()
    ))
}

/// SIGUSR2, then wait for the new generation (PID file) to be healthy and
/// the old one to exit.
async fn upgrade(p: &mut Proc) -> anyhow::Result<String> {
    let old = p.signal(Signal::SIGUSR2)?;
    let start = Instant::now();
    let new = loop {
        match p.pid() {
            Some(pid) if pid != old => break pid,
            _ => {}
        }
        if start.elapsed() > EXIT_WAIT {
            bail!("{}: no new generation {EXIT_WAIT:?} after SIGUSR2", p.name);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    p.wait_healthy(Duration::from_secs(10)).await?;
    p.note_rss("start");
    while alive(old) {
        p.reap();
        if start.elapsed() > EXIT_WAIT {
            bail!(
                "{}: old generation {old} still running after {EXIT_WAIT:?}",
                p.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(format!(
        "{} pid {old} -> {new}, old exited after {} ms",
        p.name,
        start.elapsed().as_millis()
    ))
}
