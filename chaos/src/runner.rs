//! Running one scenario: start the topology and the clients, apply the
//! fault schedule, stop, account for every frame, write the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::clients::{lock, Player, Publisher};
use crate::process::{alive, Proc};
use crate::proxy::Mode;
use crate::report::{self, Report, Window, WindowReport};
use crate::scenario::{Action, Protocol, PublisherKind, Scenario, Target};
use crate::topology::{Topology, APP};

const EXIT_WAIT: Duration = Duration::from_secs(15);

/// Runs `scenario`, writing logs and `report.json` under `out/<name>/`.
pub async fn run(
    scenario: &Scenario,
    out: &Path,
    seed: Option<u64>,
    progress: bool,
) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let dir = out.join(&scenario.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut topo = Topology::start(&scenario.topology, &dir).await?;

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
    let ticker = progress.then(|| {
        let logs: Vec<_> = players
            .iter()
            .map(|p| (p.name.clone(), p.log.clone()))
            .collect();
        let total = scenario.duration.0;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                // One short line, O(players): each log keeps its worst gap.
                let (mut frames, mut disconnects, mut worst) = (0usize, 0usize, (Duration::ZERO, ""));
                for (name, log) in &logs {
                    let l = lock(log);
                    frames += l.frames.len();
                    disconnects += l.ends.len();
                    if l.worst_gap > worst.0 {
                        worst = (l.worst_gap, name.as_str());
                    }
                }
                let line = format!(
                    "soak {:>5.0}s/{:.0}s | {} players, {frames} frames, {disconnects} disconnects, worst stall {}ms ({})",
                    t0.elapsed().as_secs_f64(),
                    total.as_secs_f64(),
                    logs.len(),
                    worst.0.as_millis(),
                    worst.1,
                );
                eprintln!("{line}");
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
        let (detail, error) = match result {
            Ok(d) => (format!("{d} ({} ms)", start.elapsed().as_millis()), None),
            Err(e) => (String::new(), Some(format!("{e:#}"))),
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
    let report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        mode: "loopback".into(),
        seed,
        wall_ms: wall.elapsed().as_millis() as u64,
        passed: violations.is_empty(),
        violations,
        windows: reports,
        totals,
        logs: dir.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    let path: PathBuf = dir.join("report.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(report)
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
            net(topo, target, holder, Mode::Blackhole, hold.0).await
        }
        Action::Delay {
            target,
            delay,
            hold,
        } => net(topo, target, holder, Mode::Delay(delay.0), hold.0).await,
        Action::Throttle {
            target,
            bytes_per_sec,
            hold,
        } => net(topo, target, holder, Mode::Throttle(*bytes_per_sec), hold.0).await,
        Action::Reset { target } => {
            net(
                topo,
                target,
                holder,
                Mode::Reset,
                Duration::from_millis(100),
            )
            .await
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

async fn net(
    topo: &Topology,
    target: &Target,
    holder: Option<usize>,
    mode: Mode,
    hold: Duration,
) -> anyhow::Result<String> {
    let Node::Origin(i) = resolve(topo, target, holder)? else {
        bail!("network faults apply to origins");
    };
    topo.links[i].set_mode(mode);
    tokio::time::sleep(hold).await;
    topo.links[i].set_mode(Mode::Forward);
    Ok(format!("origin{i}: {mode:?}, then forwarding"))
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
