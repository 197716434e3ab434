//! A connection-churn load loop for lifecycle and upgrade tests.
//!
//! A smooth upgrade is only smooth if nobody connecting during it notices,
//! so the upgrade tests run [`LoadLoop`] across the hand-overs: it opens
//! new connections at a steady rate, alternating an RTMP player (TCP
//! connect, handshake, connect, createStream, play, read a few frames,
//! close) and an HTTP-FLV player (GET, status 200, FLV header and one tag,
//! close), and records every attempt that failed (refused, reset, closed,
//! timed out, wrong status) with when it started and when it failed, so a
//! test can assert zero failures or print how many a fallback costs.
//!
//! Attempts run concurrently (each bounded by
//! [`LoadConfig::attempt_timeout`]); the loop never bursts to catch up if
//! the machine falls behind, and [`LoadReport`] says what rate it reached.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_common::rtmp::client::{ClientError, RtmpPlayer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::flv_player::FlvPlayer;

/// What to load and how hard.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `rtmp://host:port/app/stream` to play.
    pub rtmp_url: String,
    /// `http://host:port/app/stream.flv` to GET.
    pub flv_url: String,
    /// New connections per second (alternating RTMP and HTTP).
    pub rate: u32,
    /// Media frames an RTMP attempt reads before closing.
    pub rtmp_frames: usize,
    /// Bound on one whole attempt (connect to close).
    pub attempt_timeout: Duration,
}

impl LoadConfig {
    /// 200 connections/s, 3 frames per RTMP attempt, 8 s per attempt.
    pub fn new(rtmp_url: impl Into<String>, flv_url: impl Into<String>) -> Self {
        LoadConfig {
            rtmp_url: rtmp_url.into(),
            flv_url: flv_url.into(),
            rate: 200,
            rtmp_frames: 3,
            attempt_timeout: Duration::from_secs(8),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Rtmp,
    Http,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Rtmp => "rtmp",
            Proto::Http => "http",
        })
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// ECONNREFUSED on connect.
    Refused,
    /// ECONNRESET / EPIPE / ECONNABORTED at any point.
    Reset,
    /// The server closed the connection (EOF) before the attempt was done.
    Closed,
    /// The attempt did not finish within the attempt timeout.
    Timeout,
    /// A protocol-level refusal: RTMP error status, HTTP status not 200.
    Status,
    /// Anything else (protocol errors...).
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub proto: Proto,
    pub kind: FailureKind,
    /// When the attempt started.
    pub started: Instant,
    /// When it failed.
    pub failed: Instant,
    /// Start relative to the loop's start.
    pub offset: Duration,
    /// Which step failed ("connect/play", "read frames", "GET", ...).
    pub stage: &'static str,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:.3}s {} {} after {:?} during {}: {}",
            self.offset.as_secs_f64(),
            self.proto,
            self.kind,
            self.failed.duration_since(self.started),
            self.stage,
            self.error
        )
    }
}

/// What a finished loop did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub started: Instant,
    pub elapsed: Duration,
    pub attempted: u64,
    pub succeeded: u64,
    pub rtmp_attempted: u64,
    pub http_attempted: u64,
    pub failures: Vec<Failure>,
    /// Durations of successful attempts, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// Attempts started per second.
    pub fn rate(&self) -> f64 {
        self.attempted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Failures per kind.
    pub fn by_kind(&self) -> BTreeMap<(Proto, FailureKind), usize> {
        let mut map = BTreeMap::new();
        for f in &self.failures {
            *map.entry((f.proto, f.kind)).or_insert(0) += 1;
        }
        map
    }

    /// The `p`-th percentile (0..=100) of successful attempt durations.
    pub fn latency(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let i = ((self.latencies.len() - 1) as f64 * p / 100.0).round() as usize;
        self.latencies.get(i).copied()
    }

    /// Failures that started within `window` around `at` (either side).
    pub fn failures_near(&self, at: Instant, window: Duration) -> Vec<&Failure> {
        self.failures
            .iter()
            .filter(|f| {
                let d = if f.started > at {
                    f.started - at
                } else {
                    at - f.started
                };
                d <= window
            })
            .collect()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "load: {} attempts ({} rtmp, {} http) in {:.1}s = {:.0}/s; {} ok, {} failed",
            self.attempted,
            self.rtmp_attempted,
            self.http_attempted,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.succeeded,
            self.failed()
        )?;
        if let (Some(p50), Some(p99), Some(max)) =
            (self.latency(50.0), self.latency(99.0), self.latency(100.0))
        {
            writeln!(
                f,
                "load: attempt duration p50 {p50:?}, p99 {p99:?}, max {max:?}"
            )?;
        }
        for ((proto, kind), n) in self.by_kind() {
            writeln!(f, "load: {n} {proto} {kind}")?;
        }
        const SHOWN: usize = 40;
        for failure in self.failures.iter().take(SHOWN) {
            writeln!(f, "load failure: {failure}")?;
        }
        if self.failures.len() > SHOWN {
            writeln!(f, "load: ... {} more failures", self.failures.len() - SHOWN)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Shared {
    failures: Mutex<Vec<Failure>>,
    latencies: Mutex<Vec<Duration>>,
    attempted: AtomicU64,
    succeeded: AtomicU64,
    rtmp: AtomicU64,
    http: AtomicU64,
}

/// A running load loop; see the module docs.
pub struct LoadLoop {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl LoadLoop {
    /// Starts opening connections now.
    pub fn start(config: LoadConfig) -> LoadLoop {
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(false);
        let started = Instant::now();
        let task = tokio::spawn(drive(config, shared.clone(), stop_rx, started));
        LoadLoop {
            shared,
            stop,
            task,
            started,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// (attempted, succeeded, failed) so far.
    pub fn counts(&self) -> (u64, u64, usize) {
        (
            self.shared.attempted.load(Ordering::SeqCst),
            self.shared.succeeded.load(Ordering::SeqCst),
            lock(&self.shared.failures).len(),
        )
    }

    /// Failures recorded so far.
    pub fn failures(&self) -> Vec<Failure> {
        lock(&self.shared.failures).clone()
    }

    /// Stops starting attempts, waits for those in flight (each is bounded
    /// by the attempt timeout) and reports.
    pub async fn stop(self) -> LoadReport {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let elapsed = self.started.elapsed();
        let mut failures = lock(&self.shared.failures).clone();
        failures.sort_by_key(|f| f.started);
        let mut latencies = lock(&self.shared.latencies).clone();
        latencies.sort();
        LoadReport {
            started: self.started,
            elapsed,
            attempted: self.shared.attempted.load(Ordering::SeqCst),
            succeeded: self.shared.succeeded.load(Ordering::SeqCst),
            rtmp_attempted: self.shared.rtmp.load(Ordering::SeqCst),
            http_attempted: self.shared.http.load(Ordering::SeqCst),
            failures,
            latencies,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn drive(
    config: LoadConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    started: Instant,
) {
    let period = Duration::from_secs(1) / config.rate.max(1);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let config = Arc::new(config);
    let mut in_flight = JoinSet::new();
    let mut rtmp_next = true;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {
                let proto = if rtmp_next { Proto::Rtmp } else { Proto::Http };
                rtmp_next = !rtmp_next;
                shared.attempted.fetch_add(1, Ordering::SeqCst);
                match proto {
                    Proto::Rtmp => shared.rtmp.fetch_add(1, Ordering::SeqCst),
                    Proto::Http => shared.http.fetch_add(1, Ordering::SeqCst),
                };
                let (config, shared) = (config.clone(), shared.clone());
                in_flight.spawn(async move { attempt(proto, &config, &shared, started).await });
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn attempt(proto: Proto, config: &LoadConfig, shared: &Shared, loop_started: Instant) {
    let started = Instant::now();
    let stage = Arc::new(Mutex::new("connect"));
    let work = {
        let stage = stage.clone();
        async move {
            match proto {
                Proto::Rtmp => rtmp_attempt(config, &stage).await,
                Proto::Http => http_attempt(config, &stage).await,
            }
        }
    };
    let outcome = match tokio::time::timeout(config.attempt_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err((
            FailureKind::Timeout,
            format!("not done within {:?}", config.attempt_timeout),
        )),
    };
    match outcome {
        Ok(()) => {
            shared.succeeded.fetch_add(1, Ordering::SeqCst);
            lock(&shared.latencies).push(started.elapsed());
        }
        Err((kind, error)) => lock(&shared.failures).push(Failure {
            proto,
            kind,
            started,
            failed: Instant::now(),
            offset: started.duration_since(loop_started),
            stage: *lock(&stage),
            error,
        }),
    }
}

type AttemptResult = Result<(), (FailureKind, String)>;

async fn rtmp_attempt(config: &LoadConfig, stage: &Mutex<&'static str>) -> AttemptResult {
    *lock(stage) = "connect/handshake/play";
    let mut player = RtmpPlayer::connect(&config.rtmp_url)
        .await
        .map_err(classify_client)?;
    *lock(stage) = "read frames";
    for _ in 0..config.rtmp_frames {
        match player.next_frame().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err((FailureKind::Closed, "EOF before enough frames".into())),
            Err(e) => return Err(classify_client(e)),
        }
    }
    Ok(())
}

async fn http_attempt(config: &LoadConfig, stage: &Mutex<&'static str>) -> AttemptResult {
    *lock(stage) = "GET";
    let mut player = FlvPlayer::connect(&config.flv_url)
        .await
        .map_err(classify_anyhow)?;
    if player.status != 200 {
        return Err((
            FailureKind::Status,
            format!("HTTP status {}", player.status),
        ));
    }
    *lock(stage) = "read FLV header and a tag";
    match player.next_frame().await {
        Ok(Some(_)) => {}
        Ok(None) => return Err((FailureKind::Closed, "body ended before a tag".into())),
        Err(e) => return Err(classify_anyhow(e)),
    }
    match player.file_header() {
        Some(h) if h.starts_with(b"FLV") => Ok(()),
        other => Err((FailureKind::Other, format!("bad FLV file header {other:?}"))),
    }
}

fn classify_io(e: &io::Error) -> FailureKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => FailureKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => FailureKind::Reset,
        io::ErrorKind::UnexpectedEof => FailureKind::Closed,
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::Other,
    }
}

fn classify_client(e: ClientError) -> (FailureKind, String) {
    let kind = match &e {
        ClientError::Io(io) => classify_io(io),
        ClientError::Timeout { .. } => FailureKind::Timeout,
        ClientError::Closed(_) => FailureKind::Closed,
        ClientError::Status { .. } => FailureKind::Status,
        _ => FailureKind::Other,
    };
    (kind, e.to_string())
}

fn classify_anyhow(e: anyhow::Error) -> (FailureKind, String) {
    let mut kind = FailureKind::Other;
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            kind = classify_io(io);
            break;
        }
    }
    if kind == FailureKind::Other {
        let text = format!("{e:#}");
        if text.contains("connection closed") {
            kind = FailureKind::Closed;
        }
    }
    (kind, format!("{e:#}"))
}
