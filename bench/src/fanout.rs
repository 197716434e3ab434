//! `baton-bench fanout`: many players on one stream, measured.
//!
//! Opens N players on one RTMP or HTTP-FLV URL at a fixed connection rate,
//! lets each read the stream until the run's deadline, and reports how many
//! could play, what was delivered, and how smoothly: per-player worst gap
//! between video frame arrivals, timestamp order, and whether each player's
//! first picture was decodable. Given the server's PID it also reports the
//! CPU time the server spent during the run.
//!
//! HTTP-FLV players are raw TCP with the streaming parser in
//! [`crate::flv_reader`] (a thousand players must fit on one core), or TLS
//! over it for `https://` (rustls, ring; `--ca FILE` is the trusted CA), to
//! measure what TLS costs the server per player; RTMP players use Baton's
//! own client, which decodes every message.
//!
//! Everything runs on one thread (tokio current-thread runtime with a
//! `LocalSet`), so the bench is pinned to one core and shared counters are
//! plain `Cell`s.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_rustls::TlsConnector;

use crate::flv_reader::HttpFlvReader;
use crate::rtmp_client::RtmpPlayer;
use crate::stats::{gbps, FrameInfo, Outcome, PlayerResult, PlayerTracker, Report, RunInfo};
use crate::sys;
use crate::wallstamp;

/// Socket read buffer per HTTP-FLV player.
const READ_BUF_LEN: usize = 32 * 1024;
/// From the end of the ramp to the steady window (and, for lateness, from
/// the last frames counted to the end of the run).
const STEADY_SETTLE: Duration = Duration::from_secs(1);

/// The next read of a player reading every `every`, after the one due
/// `at`; a player that fell behind its cadence reads again a period later.
fn next_tick(at: Instant, every: Duration) -> Instant {
    (at + every).max(Instant::now())
}

/// Where the players connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `rtmp://host[:port]/app/stream`, handed to the RTMP client as is.
    Rtmp(String),
    /// `http://host[:port]/path` or `https://...`.
    HttpFlv {
        /// `host:port` to connect to.
        addr: String,
        /// Value of the `Host` header.
        host: String,
        path: String,
        /// `https://`.
        tls: bool,
    },
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        if url.starts_with("rtmp://") {
            return Ok(Target::Rtmp(url.to_string()));
        }
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => bail!("unsupported URL {url:?}: expected rtmp://host:port/app/stream or http(s)://host:port/app/stream.flv"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url:?}");
        }
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        Ok(Target::HttpFlv {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            tls,
        })
    }

    pub fn protocol(&self) -> &'static str {
        match self {
            Target::Rtmp(_) => "rtmp",
            Target::HttpFlv { tls: false, .. } => "http-flv",
            Target::HttpFlv { tls: true, .. } => "https-flv",
        }
    }
}

/// Options of `baton-bench fanout`.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub url: String,
    pub players: u64,
    pub duration: Duration,
    /// New connections per second.
    pub ramp: f64,
    pub connect_timeout: Duration,
    pub label: String,
    /// Server processes whose CPU time (with descendants) is measured.
    pub server_pids: Vec<u32>,
    pub json: Option<PathBuf>,
    pub quiet: bool,
    /// PEM CA certificates trusted by `https://` players.
    pub ca: Option<PathBuf>,
    /// Players read every this long once playing; zero reads on arrival.
    pub read_every: Duration,
    /// Between reads, RTMP players are not woken by arrivals.
    pub unwoken: bool,
    /// Only every this many players decode; the others drain (plain TCP).
    pub decode_every: u64,
}

/// Live counters shared by all players, for progress lines and the
/// post-ramp throughput.
#[derive(Debug, Default)]
struct Counters {
    bytes: Cell<u64>,
    connected: Cell<u64>,
    failed: Cell<u64>,
    ended: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

/// `--unwoken` players' `SO_RCVLOWAT` between reads: far more than a read
/// period brings, so arrivals never wake them.
const UNWOKEN_LOWAT: i32 = 8 * 1024 * 1024;
/// How long an `--unwoken` player waits, at its tick, for the readiness
/// that lowering the mark signals.
const UNWOKEN_SIGNAL_WAIT: Duration = Duration::from_millis(5);

/// What every player of a run shares.
struct PlayerCtx {
    target: Target,
    deadline: Instant,
    connect_timeout: Duration,
    counters: Counters,
    /// Stop as soon as a keyframe arrived (for `probe`).
    stop_at_keyframe: bool,
    /// For `https://`: the client and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Read cadence once playing; zero reads on arrival.
    read_every: Duration,
    /// See [`FanoutOptions::unwoken`].
    unwoken: bool,
    /// Stamped frames sent in this wall-clock span (ns) count for lateness.
    late_window: Option<(u64, u64)>,
    /// Bytes read in this span count as the player's window bytes.
    byte_window: Option<(Instant, Instant)>,
}

impl PlayerCtx {
    /// Counts `n` bytes a player just read.
    fn count_read(&self, tracker: &mut PlayerTracker, n: u64) {
        bump(&self.counters.bytes, n);
        if let Some((from, until)) = self.byte_window {
            let now = Instant::now();
            if now >= from && now < until {
                tracker.window_bytes += n;
            }
        }
    }
}

/// The TLS client of `https://` players: trusts only `ca`, checks the
/// URL's host (name or IP) in the certificate.
fn tls_client(
    target: &Target,
    ca: Option<&Path>,
) -> Result<Option<(TlsConnector, ServerName<'static>)>> {
    let Target::HttpFlv {
        host, tls: true, ..
    } = target
    else {
        return Ok(None);
    };
    let Some(ca) = ca else {
        bail!("https:// players need --ca FILE (the CA that signed the server's certificate)");
    };
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)
            .context("adding the CA")?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host.as_str(),
    };
    let name = ServerName::try_from(name.trim_matches(['[', ']']).to_string())
        .with_context(|| format!("{name:?} as a TLS server name"))?;
    Ok(Some((TlsConnector::from(Arc::new(config)), name)))
}

/// Runs the fan-out and returns its report (also printed and, if asked,
/// written as JSON). Must run inside a `LocalSet`.
pub async fn run(opts: FanoutOptions) -> Result<Report> {
    let target = Target::parse(&opts.url)?;
    let protocol = target.protocol().to_string();
    match sys::raise_nofile_limit() {
        // A few descriptors are the runtime's and stdio's.
        Ok(limit) if limit < opts.players + 16 => eprintln!(
            "warning: open-files limit {limit} is below {} players; raise it (ulimit -n)",
            opts.players
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot read the open-files limit: {e}"),
    }
    let start = Instant::now();
    let start_ns = wallstamp::now_ns();
    let deadline = start + opts.duration;
    let tls = tls_client(&target, opts.ca.as_deref())?;
    // The steady window starts a second after the ramp is due to end.
    let ramp_time = Duration::from_secs_f64(opts.players as f64 / opts.ramp);
    let window_start = (start + ramp_time + STEADY_SETTLE).min(deadline);
    let wall = |at: Instant| {
        start_ns.saturating_add(u64::try_from((at - start).as_nanos()).unwrap_or(u64::MAX))
    };
    // Frames sent later than this may still sit in a player's socket.
    let late_until = deadline
        .checked_sub(opts.read_every + STEADY_SETTLE)
        .unwrap_or(start)
        .max(window_start);
    let ctx = Rc::new(PlayerCtx {
        target,
        deadline,
        connect_timeout: opts.connect_timeout,
        counters: Counters::default(),
        stop_at_keyframe: false,
        tls,
        read_every: opts.read_every,
        unwoken: opts.unwoken,
        late_window: Some((wall(window_start), wall(late_until))),
        byte_window: Some((window_start, late_until)),
    });
    let cpu_before = match opts.server_pids.as_slice() {
        [] => None,
        pids => Some(sys::trees_cpu(pids).context("reading the server's CPU time")?),
    };
    let client_cpu_before = sys::self_cpu();

    if !opts.quiet {
        tokio::task::spawn_local(progress(ctx.clone(), start));
    }
    let interval = Duration::from_secs_f64(1.0 / opts.ramp);
    let mut handles = Vec::with_capacity(usize::try_from(opts.players).unwrap_or(0));
    for i in 0..opts.players {
        let at = start + interval.mul_f64(i as f64);
        if at >= deadline {
            break;
        }
        sleep_until(at).await;
        let decodes = i % opts.decode_every == 0;
        handles.push(tokio::task::spawn_local(play(ctx.clone(), !decodes)));
    }
    let ramp_done = Instant::now();
    let bytes_at_ramp = ctx.counters.bytes.get();
    let started = handles.len() as u64;
    if started < opts.players {
        eprintln!(
            "warning: only {started} of {} players fit in {:?} at {}/s",
            opts.players, opts.duration, opts.ramp
        );
    }

    sleep_until(window_start).await;
    let window_bytes_before = ctx.counters.bytes.get();
    let window_cpu_before = match opts.server_pids.as_slice() {
        [] => None,
        pids => sys::trees_cpu(pids).ok(),
    };
    sleep_until(deadline).await;
    let steady_bytes = ctx.counters.bytes.get() - bytes_at_ramp;
    let window_bytes = ctx.counters.bytes.get() - window_bytes_before;
    let window_cpu = window_cpu_before.and_then(|before| {
        Some(
            sys::trees_cpu(&opts.server_pids)
                .ok()?
                .saturating_sub(before),
        )
    });
    let server_cpu = match (&cpu_before, opts.server_pids.as_slice()) {
        (Some(before), pids) => Some(
            sys::trees_cpu(pids)
                .context("the server exited during the run")?
                .saturating_sub(*before),
        ),
        (None, _) => None,
    };
    let elapsed = start.elapsed();

    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(r) => results.push(r),
            Err(e) => bail!("a player task panicked: {e}"),
        }
    }
    let client_cpu = sys::self_cpu().saturating_sub(client_cpu_before);
    let run = RunInfo {
        label: opts.label.clone(),
        url: opts.url.clone(),
        protocol,
        players_requested: started,
        duration: opts.duration,
        elapsed,
        steady_bytes,
        steady_elapsed: deadline.saturating_duration_since(ramp_done),
        server_cpu,
        client_cpu,
        read_every: opts.read_every,
        window: deadline.saturating_duration_since(window_start),
        window_bytes,
        window_cpu,
        late_until_ns: wall(late_until),
    };
    let report = Report::build(&run, &mut results);
    print!("{report}");
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// How long a probe waits before trying again after a refused play.
const PROBE_RETRY: Duration = Duration::from_millis(100);

/// Plays `url` with one player until a keyframe arrives; fails after
/// `timeout`. Scripts use it to wait until a stream is live, so a play
/// refused because the stream is not published yet (an HTTP-FLV 404) is
/// tried again until then.
pub async fn probe(url: &str, timeout: Duration) -> Result<()> {
    let target = Target::parse(url)?;
    let tls = tls_client(&target, None)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        let ctx = Rc::new(PlayerCtx {
            target: target.clone(),
            deadline,
            connect_timeout: timeout,
            counters: Counters::default(),
            stop_at_keyframe: true,
            tls: tls.clone(),
            read_every: Duration::ZERO,
            unwoken: false,
            late_window: None,
            byte_window: None,
        });
        let result = play(ctx, false).await;
        match &result.outcome {
            Outcome::Failed(_) if Instant::now() + PROBE_RETRY < deadline => {
                tokio::time::sleep(PROBE_RETRY).await;
            }
            Outcome::Failed(e) => bail!("{url}: {e}"),
            _ => break result,
        }
    };
    match result.tracker.first_keyframe_at {
        Some(at) => {
            println!(
                "{url}: keyframe after {:.0} ms",
                at.saturating_duration_since(result.started).as_secs_f64() * 1000.0
            );
            Ok(())
        }
        None => bail!(
            "{url}: no keyframe within {timeout:?} ({} frames)",
            result.tracker.video_frames + result.tracker.audio_frames
        ),
    }
}

async fn progress(ctx: Rc<PlayerCtx>, start: Instant) {
    let mut last_bytes = 0;
    let mut tick = start;
    loop {
        tick += Duration::from_secs(1);
        if tick > ctx.deadline {
            return;
        }
        sleep_until(tick).await;
        let c = &ctx.counters;
        let bytes = c.bytes.get();
        eprintln!(
            "[{:>5.1}s] connected {} failed {} ended early {} | {:.3} Gbit/s",
            tick.duration_since(start).as_secs_f64(),
            c.connected.get(),
            c.failed.get(),
            c.ended.get(),
            gbps(bytes - last_bytes, Duration::from_secs(1))
        );
        last_bytes = bytes;
    }
}

/// One player, whichever the protocol; a `drain` player discards what it
/// reads undecoded (over TLS it decodes all the same).
async fn play(ctx: Rc<PlayerCtx>, drain: bool) -> PlayerResult {
    let started = Instant::now();
    let mut result = PlayerResult {
        outcome: Outcome::Completed,
        started: started.into_std(),
        connect_time: None,
        tracker: PlayerTracker::new(),
    };
    result.tracker.late_window = ctx.late_window;
    let outcome = match &ctx.target {
        Target::HttpFlv {
            addr, host, path, ..
        } => play_http(&ctx, addr, host, path, drain, &mut result).await,
        Target::Rtmp(url) => play_rtmp(&ctx, url, drain, &mut result).await,
    };
    let c = &ctx.counters;
    match &outcome {
        Outcome::Failed(_) => bump(&c.failed, 1),
        Outcome::EndedEarly(_) => bump(&c.ended, 1),
        Outcome::Completed => {}
    }
    result.outcome = outcome;
    result
}

async fn play_http(
    ctx: &PlayerCtx,
    addr: &str,
    host: &str,
    path: &str,
    drain: bool,
    result: &mut PlayerResult,
) -> Outcome {
    let connect_deadline = ctx.deadline.min(Instant::now() + ctx.connect_timeout);
    let mut stream = match timeout_at(connect_deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Failed(format!("connect: {e}")),
        Err(_) => return Outcome::Failed("connect: timed out".into()),
    };
    let Some((connector, name)) = &ctx.tls else {
        let session = http_session(
            ctx,
            &mut stream,
            host,
            path,
            connect_deadline,
            drain,
            result,
        );
        return match session.await {
            Outcome::Completed if drain => drain_socket(ctx, &stream, &mut result.tracker).await,
            outcome => outcome,
        };
    };
    let handshake = connector.connect(name.clone(), stream);
    match timeout_at(connect_deadline, handshake).await {
        Ok(Ok(mut tls)) => {
            http_session(ctx, &mut tls, host, path, connect_deadline, false, result).await
        }
        Ok(Err(e)) => Outcome::Failed(format!("TLS handshake: {e}")),
        Err(_) => Outcome::Failed("TLS handshake: timed out".into()),
    }
}

/// Request and read the FLV body on a connected stream (TCP or TLS); with
/// `head_only`, return once the response head is in.
async fn http_session<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &PlayerCtx,
    stream: &mut S,
    host: &str,
    path: &str,
    connect_deadline: Instant,
    head_only: bool,
    result: &mut PlayerResult,
) -> Outcome {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-bench\r\nAccept: */*\r\n\r\n"
    );
    if let Err(e) = async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await
    }
    .await
    {
        return Outcome::Failed(format!("sending request: {e}"));
    }
    let mut reader = HttpFlvReader::new();
    let mut buf = vec![0u8; READ_BUF_LEN];
    let counters = &ctx.counters;
    let tracker = &mut result.tracker;
    let mut connected = false;
    // Until the response head arrives this is the connect deadline, then
    // the end of the run: one timer per player, not one per read.
    let end = tokio::time::sleep_until(connect_deadline);
    tokio::pin!(end);
    // Reading on a cadence (after the first keyframe): when the next read
    // is due, and whether the socket is being drained right now.
    let periodic = !ctx.read_every.is_zero();
    let mut next_read: Option<Instant> = None;
    let mut draining = false;
    loop {
        let read = if draining {
            match read_now(stream, &mut buf).await {
                None => {
                    draining = false;
                    continue;
                }
                Some(r) => r,
            }
        } else if let Some(at) = next_read {
            tokio::select! {
                biased;
                _ = &mut end => break,
                _ = sleep_until(at) => {}
            }
            next_read = Some(next_tick(at, ctx.read_every));
            draining = true;
            continue;
        } else {
            tokio::select! {
                biased;
                _ = &mut end => break,
                r = stream.read(&mut buf) => r,
            }
        };
        let n = match read {
            Ok(0) if connected => {
                return Outcome::EndedEarly("server closed the connection".into())
            }
            Ok(0) => {
                return Outcome::Failed("server closed the connection before responding".into())
            }
            Ok(n) => n,
            Err(e) if connected => return Outcome::EndedEarly(format!("read: {e}")),
            Err(e) => return Outcome::Failed(format!("read: {e}")),
        };
        let now = std::time::Instant::now();
        let read_ns = wallstamp::now_ns();
        tracker.bytes += n as u64;
        ctx.count_read(tracker, n as u64);
        let pushed = reader.push(&buf[..n], &mut |info: FrameInfo| {
            tracker.on_frame_read(&info, now, read_ns)
        });
        match pushed {
            Ok(outcome) => {
                if outcome.head_done && !connected {
                    connected = true;
                    end.as_mut().reset(ctx.deadline);
                    result.connect_time = Some(now.saturating_duration_since(result.started));
                    bump(&counters.connected, 1);
                    if head_only {
                        tracker.drained = true;
                        return Outcome::Completed;
                    }
                }
                if outcome.body_done {
                    return Outcome::EndedEarly("server ended the response".into());
                }
            }
            Err(e) if connected => return Outcome::EndedEarly(e.to_string()),
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        if ctx.stop_at_keyframe && tracker.first_keyframe_at.is_some() {
            break;
        }
        if periodic && next_read.is_none() && tracker.first_keyframe_at.is_some() {
            next_read = Some(Instant::now() + ctx.read_every);
        }
    }
    if connected {
        Outcome::Completed
    } else {
        Outcome::Failed("no HTTP response: timed out".into())
    }
}

async fn play_rtmp(ctx: &PlayerCtx, url: &str, drain: bool, result: &mut PlayerResult) -> Outcome {
    let connect_deadline = ctx.deadline.min(Instant::now() + ctx.connect_timeout);
    let mut player = match timeout_at(connect_deadline, RtmpPlayer::connect(url)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Outcome::Failed(format!("{e}")),
        Err(_) => return Outcome::Failed("connect/play: timed out".into()),
    };
    let counters = &ctx.counters;
    let tracker = &mut result.tracker;
    result.connect_time = Some(result.started.elapsed());
    bump(&counters.connected, 1);
    let mut last_bytes = player.bytes_received();
    ctx.count_read(tracker, last_bytes);
    if drain {
        tracker.drained = true;
        tracker.bytes = last_bytes;
        return drain_socket(ctx, player.socket(), tracker).await;
    }
    let end = tokio::time::sleep_until(ctx.deadline);
    tokio::pin!(end);
    let mut next_read: Option<Instant> = None;
    let outcome = loop {
        if let Some(at) = next_read {
            // Reading on a cadence: wait for the tick, then take every
            // frame the socket holds.
            tokio::select! {
                biased;
                _ = &mut end => break Outcome::Completed,
                _ = sleep_until(at) => {}
            }
            next_read = Some(next_tick(at, ctx.read_every));
            if ctx.unwoken {
                // Lowering the mark makes the kernel signal what is
                // queued (tcp_set_rcvlowat); wait for that signal (there
                // is none when nothing arrived: then read nothing).
                if let Err(e) = sys::set_recv_lowat(player.socket(), 1) {
                    break Outcome::EndedEarly(format!("SO_RCVLOWAT: {e}"));
                }
                let _ = tokio::time::timeout(UNWOKEN_SIGNAL_WAIT, player.socket().readable()).await;
            }
            let now = std::time::Instant::now();
            let read_ns = wallstamp::now_ns();
            let drained = loop {
                match player.try_next_frame() {
                    Ok(Some(frame)) => {
                        tracker.on_frame_read(&FrameInfo::from_media(&frame), now, read_ns)
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(Outcome::EndedEarly(format!("{e}"))),
                }
            };
            let bytes = player.bytes_received();
            ctx.count_read(tracker, bytes.saturating_sub(last_bytes));
            last_bytes = bytes;
            if let Some(outcome) = drained {
                break outcome;
            }
            if let Err(e) = player.write_pending().await {
                break Outcome::EndedEarly(format!("{e}"));
            }
            if ctx.unwoken {
                if let Err(e) = sys::set_recv_lowat(player.socket(), UNWOKEN_LOWAT) {
                    break Outcome::EndedEarly(format!("SO_RCVLOWAT: {e}"));
                }
            }
            continue;
        }
        let frame = tokio::select! {
            biased;
            _ = &mut end => break Outcome::Completed,
            f = player.next_frame() => f,
        };
        match frame {
            Ok(Some(frame)) => {
                tracker.on_frame_read(
                    &FrameInfo::from_media(&frame),
                    std::time::Instant::now(),
                    wallstamp::now_ns(),
                );
                let bytes = player.bytes_received();
                ctx.count_read(tracker, bytes.saturating_sub(last_bytes));
                last_bytes = bytes;
                if ctx.stop_at_keyframe && tracker.first_keyframe_at.is_some() {
                    break Outcome::Completed;
                }
                if !ctx.read_every.is_zero() && tracker.first_keyframe_at.is_some() {
                    next_read = Some(Instant::now() + ctx.read_every);
                    if ctx.unwoken {
                        if let Err(e) = sys::set_recv_lowat(player.socket(), UNWOKEN_LOWAT) {
                            break Outcome::EndedEarly(format!("SO_RCVLOWAT: {e}"));
                        }
                    }
                }
            }
            Ok(None) => break Outcome::EndedEarly("stream ended".into()),
            Err(e) => break Outcome::EndedEarly(format!("{e}")),
        }
    };
    tracker.bytes = player.bytes_received();
    outcome
}

/// A drainer's life once playing: on its cadence (or on arrival), discard
/// whatever the socket holds without copying it, counting the bytes.
async fn drain_socket(ctx: &PlayerCtx, socket: &TcpStream, tracker: &mut PlayerTracker) -> Outcome {
    let end = tokio::time::sleep_until(ctx.deadline);
    tokio::pin!(end);
    let mut next_read = Instant::now() + ctx.read_every;
    loop {
        if ctx.read_every.is_zero() {
            tokio::select! {
                biased;
                _ = &mut end => return Outcome::Completed,
                r = socket.readable() => if let Err(e) = r {
                    return Outcome::EndedEarly(format!("read: {e}"));
                },
            }
        } else {
            tokio::select! {
                biased;
                _ = &mut end => return Outcome::Completed,
                _ = sleep_until(next_read) => {}
            }
            next_read = next_tick(next_read, ctx.read_every);
        }
        match sys::discard_queued(socket) {
            Ok(Some(n)) => {
                tracker.bytes += n;
                ctx.count_read(tracker, n);
            }
            Ok(None) => return Outcome::EndedEarly("server closed the connection".into()),
            Err(e) => return Outcome::EndedEarly(format!("read: {e}")),
        }
    }
}

/// One read if data is there now, without waiting (`None`: nothing yet).
/// Works for plain and TLS streams alike.
async fn read_now<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Option<std::io::Result<usize>> {
    use std::future::Future;
    use std::task::Poll;
    let mut read = std::pin::pin!(stream.read(buf));
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("rtmp://127.0.0.1:1935/live/bench").expect("rtmp"),
            Target::Rtmp("rtmp://127.0.0.1:1935/live/bench".into())
        );
        assert_eq!(
            Target::parse("http://127.0.0.1:18080/live/bench.flv").expect("http"),
            Target::HttpFlv {
                addr: "127.0.0.1:18080".into(),
                host: "127.0.0.1:18080".into(),
                path: "/live/bench.flv".into(),
                tls: false,
            }
        );
        assert_eq!(
            Target::parse("http://localhost/a.flv").expect("http"),
            Target::HttpFlv {
                addr: "localhost:80".into(),
                host: "localhost".into(),
                path: "/a.flv".into(),
                tls: false,
            }
        );
        assert_eq!(
            Target::parse("https://localhost/a.flv").expect("https"),
            Target::HttpFlv {
                addr: "localhost:443".into(),
                host: "localhost".into(),
                path: "/a.flv".into(),
                tls: true,
            }
        );
        assert!(Target::parse("ftp://x/y").is_err());
        assert!(Target::parse("http:///y").is_err());
    }
}
