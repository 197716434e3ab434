//! No client can hurt the others: the attacks an outside probe ran
//! against a node, now bounded, while an honest publisher and two honest
//! players (RTMP and HTTP-FLV, from 127.0.0.1) keep streaming.
//!
//! Attackers bind their sockets to 127.0.0.2, so per-address limits tell
//! them apart from the honest clients on loopback. Each test checks the
//! bound itself (connections held, refusals counted, log lines written,
//! resident memory from /proc/PID/status, the disconnect reason on the
//! wire) and that the honest players never went more than 200 ms without
//! a frame during the attack. The figures are printed (`--nocapture`).
//! Tests run one at a time: they measure a process's CPU and memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_common::media::{MediaFrame, MediaKind};
use baton_common::rtmp::client::RtmpPublisher;
use baton_common::rtmp::message::RtmpMessage;
use baton_tests::feed::{Feed, Watcher};
use baton_tests::play::{flv_player, rtmp_player};
use baton_tests::raw_rtmp::RawRtmp;
use baton_tests::{http, Origin};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const APP: &str = "live";
const ATTACKER: &str = "127.0.0.2";
/// The longest an honest player may go without a frame during an attack
/// (`BATON_LIMITS_MAX_GAP_MS` overrides it on a machine too busy for it:
/// the tests start their servers at the priority they run at).
fn max_gap() -> Duration {
    std::env::var("BATON_LIMITS_MAX_GAP_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(200), Duration::from_millis)
}
const MIB: usize = 1024 * 1024;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TCP connection to `addr` from the attacker's address.
async fn attacker_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ATTACKER}:0").parse().expect("address"))?;
    socket.connect(addr).await
}

/// The sum of a Prometheus metric's samples whose line contains every
/// one of `labels` (e.g. `reason="per-ip-connections"`).
async fn metric(node: &Origin, name: &str, labels: &[&str]) -> f64 {
    let text = http::get(&node.api_url("/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Peak resident memory and CPU use of a process while a sampler runs.
#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    rss_mib: f64,
    /// CPU seconds per second over the busiest half second (1.0 = one core).
    cpu_cores: f64,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Peak>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let pid = pid.to_string();
            let mut mark = (
                Instant::now(),
                baton_common::telemetry::process_stats_of(&pid).cpu_seconds,
            );
            let mut peak = Peak::default();
            while !flag.load(Ordering::Relaxed) {
                let now = baton_common::telemetry::process_stats_of(&pid);
                peak.rss_mib = peak.rss_mib.max(now.rss_kb as f64 / 1024.0);
                // CPU over half-second intervals; the busiest counts.
                let wall = mark.0.elapsed().as_secs_f64();
                if wall >= 0.5 {
                    peak.cpu_cores = peak.cpu_cores.max((now.cpu_seconds - mark.1) / wall);
                    mark = (Instant::now(), now.cpu_seconds);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

fn rss_mib(node: &Origin) -> f64 {
    baton_common::telemetry::process_stats_of(&node.pid().to_string()).rss_kb as f64 / 1024.0
}

/// An honest publisher (30 fps with audio) and an RTMP and an HTTP-FLV
/// player of its stream, all from 127.0.0.1.
struct Honest {
    _feed: Feed,
    players: Vec<Watcher>,
}

impl Honest {
    async fn start(node: &Origin) -> Honest {
        let feed = Feed::standard();
        feed.attach("honest", &node.rtmp_url(APP, "honest"))
            .await
            .expect("honest publisher");
        let mut players = vec![
            Watcher::rtmp("rtmp", rtmp_player(&node.rtmp_url(APP, "honest")).await),
            Watcher::flv("flv", flv_player(&node.flv_url(APP, "honest")).await),
        ];
        for player in &mut players {
            player
                .wait_frames(10, Duration::from_secs(10))
                .await
                .unwrap_or_else(|seen| panic!("{} got no frames: {seen:?}", player.label));
        }
        Honest {
            _feed: feed,
            players,
        }
    }

    /// The longest time any player went without a frame between `from`
    /// and `to` (the edges count: silence at the end is a gap too).
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        self.gaps(from, to)
            .into_iter()
            .map(|(_, gap, _)| gap)
            .max()
            .unwrap_or_default()
    }

    /// Per player: its longest gap between `from` and `to` and when it
    /// ended (after `from`).
    fn gaps(&self, from: Instant, to: Instant) -> Vec<(String, Duration, Duration)> {
        self.players
            .iter()
            .map(|player| {
                let mut last = from;
                let mut longest = (Duration::ZERO, Duration::ZERO);
                for frame in player.received() {
                    if frame.at < from {
                        continue;
                    }
                    if frame.at > to {
                        break;
                    }
                    if frame.at - last > longest.0 {
                        longest = (frame.at - last, frame.at - from);
                    }
                    last = frame.at;
                }
                if to.saturating_duration_since(last) > longest.0 {
                    longest = (to - last, to - from);
                }
                (player.label.clone(), longest.0, longest.1)
            })
            .collect()
    }

    fn assert_played_through(&self, from: Instant, to: Instant, what: &str) -> Duration {
        let gap = self.longest_gap(from, to);
        println!(
            "{what}: honest players' longest gaps (player, gap, ended at): {:?}",
            self.gaps(from, to)
        );
        for player in &self.players {
            assert!(
                !player.is_ended(),
                "{} ended during {what}: {:?}",
                player.label,
                player.seen().ended
            );
        }
        assert!(
            gap <= max_gap(),
            "an honest player went {gap:?} without a frame during {what}"
        );
        gap
    }
}

/// Opens `count` idle connections to `addr` from the attacker's address,
/// `parallel` at a time; returns the sockets that connected.
async fn flood(addr: SocketAddr, count: usize, parallel: usize) -> Vec<TcpStream> {
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if set.len() >= parallel {
            if let Some(Ok(Ok(stream))) = set.join_next().await {
                out.push(stream);
            }
        }
        set.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), attacker_connect(addr))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok(Ok(stream)) = done {
            out.push(stream);
        }
    }
    out
}

/// Runs `work` on a thread and runtime of its own, so the attacker's
/// tasks do not delay the honest clients' (whose frame arrival times are
/// what the tests measure).
async fn apart<F, Fut, T>(work: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("attacker runtime");
        let _ = tx.send(runtime.block_on(work()));
    });
    rx.await.expect("the attacker thread panicked")
}

/// [`flood`] apart; the sockets come back as std sockets.
async fn flood_apart(addr: SocketAddr, count: usize, parallel: usize) -> Vec<std::net::TcpStream> {
    apart(move || async move {
        flood(addr, count, parallel)
            .await
            .into_iter()
            .filter_map(|s| s.into_std().ok())
            .collect()
    })
    .await
}

/// Of these connections, how many the server still holds open (no byte,
/// no close within `wait`).
async fn still_open(streams: Vec<std::net::TcpStream>, wait: Duration) -> usize {
    let mut set = JoinSet::new();
    for stream in streams {
        let Ok(mut stream) = TcpStream::from_std(stream) else {
            continue;
        };
        set.spawn(async move {
            let mut buf = [0u8; 64];
            tokio::time::timeout(wait, stream.read(&mut buf))
                .await
                .is_err()
        });
    }
    let mut open = 0;
    while let Some(done) = set.join_next().await {
        if done.unwrap_or(false) {
            open += 1;
        }
    }
    open
}

fn log_lines(node: &Origin) -> usize {
    node.log().lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_flood_from_one_address_is_refused_past_its_limit_while_honest_clients_play() {
    let _serial = SERIAL.lock().await;
    const PER_IP: usize = 300;
    // A burst large enough that the connection limit, not the rate,
    // binds first (the rate refuses what comes after).
    let node = Origin::start(&[
        "--per-ip-max-connections",
        &PER_IP.to_string(),
        "--per-ip-accept-burst",
        "400",
    ])
    .await;
    let honest = Honest::start(&node).await;
    // The same measure with no attack, for comparison on a busy machine.
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet_gap = honest.longest_gap(quiet, Instant::now());
    let lines_before = log_lines(&node);
    let sampler = Sampler::start(node.pid());
    let max_clients = Arc::new(Mutex::new(0f64));
    let watching = Arc::new(AtomicBool::new(true));
    let watch_task = {
        let (max_clients, watching) = (max_clients.clone(), watching.clone());
        let api = node.api_url("/metrics");
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                if let Ok(r) = http::get(&api).await {
                    let clients = r
                        .text()
                        .lines()
                        .find_map(|l| l.strip_prefix("baton_clients ")?.trim().parse::<f64>().ok())
                        .unwrap_or(0.0);
                    let mut max = max_clients.lock().unwrap();
                    *max = max.max(clients);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let attack_start = Instant::now();
    let (rtmp, http_conns) = tokio::join!(
        flood_apart(node.rtmp_addr(), 3000, 200),
        flood_apart(node.http_addr(), 1500, 100)
    );
    let attempted = rtmp.len() + http_conns.len();
    let flood_took = attack_start.elapsed();
    // New honest clients from another address get in while the flood's
    // connections are held.
    let late_rtmp = Watcher::rtmp(
        "late rtmp",
        rtmp_player(&node.rtmp_url(APP, "honest")).await,
    );
    let late_flv = Watcher::flv("late flv", flv_player(&node.flv_url(APP, "honest")).await);
    for late in [&late_rtmp, &late_flv] {
        late.wait_frames(10, Duration::from_secs(5))
            .await
            .unwrap_or_else(|seen| {
                panic!("{} could not play during the flood: {seen:?}", late.label)
            });
    }
    // An HTTP client over the limit gets a short answer, not silence.
    let mut over = attacker_connect(node.http_addr()).await.expect("connect");
    let _ = over
        .write_all(b"GET /live/honest.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), over.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let streams: Vec<_> = rtmp.into_iter().chain(http_conns).collect();
    let held = apart(move || still_open(streams, Duration::from_millis(500))).await;
    let attack_end = Instant::now();
    watching.store(false, Ordering::Relaxed);
    let _ = watch_task.await;
    let peak = sampler.stop().await;
    let gap = honest.longest_gap(attack_start, attack_end);

    let refused = metric(&node, "baton_connections_refused_total", &[]).await;
    let refused_per_ip = metric(
        &node,
        "baton_connections_refused_total",
        &["reason=\"per-ip-"],
    )
    .await;
    // Summaries are written at the end of their 10 s window.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let lines = log_lines(&node) - lines_before;
    let max_clients = *max_clients.lock().unwrap();
    println!(
        "flood: {attempted} connections from {ATTACKER} in {flood_took:?}; {held} held (per-ip limit {PER_IP}), \
         {refused} refused ({refused_per_ip} by per-ip limits); max clients seen {max_clients}; \
         honest players' longest gap {gap:?} (3 s without attack: {quiet_gap:?}); server peak RSS {:.1} MiB, CPU {:.2} cores; \
         {lines} log lines for the whole flood; HTTP over the limit got {:?}",
        peak.rss_mib,
        peak.cpu_cores,
        answer.lines().next().unwrap_or("")
    );
    honest.assert_played_through(attack_start, attack_end, "the connection flood");
    assert!(
        held <= PER_IP,
        "{held} attacker connections held, limit {PER_IP}"
    );
    assert!(
        refused as usize >= attempted - PER_IP,
        "{refused} refused of {attempted}"
    );
    // 2 honest players + 1 publisher + 2 late players on top of the limit.
    assert!(
        max_clients <= (PER_IP + 5) as f64,
        "{max_clients} clients at once"
    );
    assert!(
        answer.starts_with("HTTP/1.1 429"),
        "over the limit: {answer:?}"
    );
    assert!(
        lines <= 60,
        "{lines} log lines for the flood:\n{}",
        node.log_tail(80)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_is_exact() {
    let _serial = SERIAL.lock().await;
    const MAX: usize = 60;
    let node = Origin::start(&[
        "--max-connections",
        &MAX.to_string(),
        "--per-ip-exempt",
        "none",
        "--per-ip-max-connections",
        "0",
        "--per-ip-accept-rate",
        "0",
    ])
    .await;
    let (rtmp, http_conns) = tokio::join!(
        flood_apart(node.rtmp_addr(), 300, 150),
        flood_apart(node.http_addr(), 300, 150)
    );
    let attempted = rtmp.len() + http_conns.len();
    let streams: Vec<_> = rtmp.into_iter().chain(http_conns).collect();
    let held = apart(move || still_open(streams, Duration::from_millis(1500))).await;
    let refused = metric(
        &node,
        "baton_connections_refused_total",
        &["reason=\"max-connections\""],
    )
    .await;
    println!("max_connections {MAX}: {attempted} attempted, {held} held, {refused} refused");
    assert_eq!(held, MAX, "connections held with max_connections {MAX}");
    assert_eq!(refused as usize, attempted - MAX);
}

/// A chunk header (type 0) starting a message of `len` bytes on `csid`.
fn message_start(csid: u8, len: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(csid);
    b.put_slice(&[0, 0, 0]);
    b.put_uint(len.min(0xff_ffff) as u64, 3);
    b.put_u8(9);
    b.put_u32_le(1);
    b.to_vec()
}

/// Handshake, optionally `connect`, then partial messages of `per_message`
/// bytes on `messages` chunk streams (none completed); returns how many
/// payload bytes the server took before it closed the connection or
/// `limit` passed.
async fn partial_messages(
    addr: SocketAddr,
    connect: bool,
    messages: u8,
    per_message: usize,
    limit: Duration,
) -> usize {
    let run = async {
        let Ok(stream) = attacker_connect(addr).await else {
            return 0;
        };
        let mut raw = RawRtmp::from_stream(stream);
        if raw.handshake().await.is_err() {
            return 0;
        }
        if connect && raw.connect_app(APP, "rtmp://x/live").await.is_err() {
            return 0;
        }
        if raw
            .send(RtmpMessage::SetChunkSize(16 * MIB as u32))
            .await
            .is_err()
        {
            return 0;
        }
        let piece = vec![0x27u8; 256 * 1024];
        let mut sent = 0;
        for csid in 0..messages {
            if raw
                .write_raw(&message_start(3 + csid, 16 * MIB - 1))
                .await
                .is_err()
            {
                return sent;
            }
            let mut this = 0;
            while this < per_message {
                if raw.write_raw(&piece).await.is_err() {
                    return sent;
                }
                this += piece.len();
                sent += piece.len();
            }
        }
        sent
    };
    tokio::time::timeout(limit, run).await.unwrap_or(usize::MAX)
}

/// 20 publishers of 1 MiB video frames, 5 a second each (40 Mbit/s, under
/// the default bitrate cap; 100 MiB/s in all) for `secs` (a keyframe, then
/// inter frames: the GOP grows until it is too large to cache, then the
/// backlog bound applies); returns the frames sent.
async fn big_publishers(node: &Origin, secs: u64) -> u64 {
    const FPS: u32 = 5;
    let urls: Vec<String> = (0..20)
        .map(|i| node.rtmp_url(APP, &format!("big{i}")))
        .collect();
    apart(move || async move {
        let mut set = JoinSet::new();
        for url in urls {
            set.spawn(async move {
                let Ok(mut publisher) = RtmpPublisher::connect(&url).await else {
                    return 0u64;
                };
                let mut payload = vec![0u8; MIB];
                payload[..2].copy_from_slice(&[0x17, 1]);
                let keyframe = Bytes::copy_from_slice(&payload);
                payload[0] = 0x27;
                let inter = Bytes::from(payload);
                let mut sent = 0u64;
                let started = Instant::now();
                let mut ts = 0u32;
                while started.elapsed() < Duration::from_secs(secs) {
                    let payload = if sent == 0 { &keyframe } else { &inter };
                    let frame = MediaFrame::new(MediaKind::Video, ts, payload.clone());
                    if publisher.send(&frame).await.is_err() || publisher.flush().await.is_err() {
                        break;
                    }
                    sent += 1;
                    ts += 1000 / FPS;
                    // Paced: the point is the memory the frames take, not
                    // how much a debug build on a shared machine can copy.
                    let due = Duration::from_millis(u64::from(ts));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                sent
            });
        }
        let mut frames = 0;
        while let Some(r) = set.join_next().await {
            frames += r.unwrap_or(0);
        }
        frames
    })
    .await
}

/// `count` connections sending partial messages (see
/// [`partial_messages`]) at once; what each got written.
async fn partial_attack(
    addr: SocketAddr,
    count: usize,
    connect: bool,
    messages: u8,
    per_message: usize,
    limit: Duration,
) -> Vec<usize> {
    apart(move || async move {
        let mut set = JoinSet::new();
        for _ in 0..count {
            set.spawn(partial_messages(
                addr,
                connect,
                messages,
                per_message,
                limit,
            ));
        }
        let mut taken = Vec::new();
        while let Some(r) = set.join_next().await {
            taken.push(r.unwrap_or(0));
        }
        taken
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_attacks_keep_resident_memory_bounded() {
    let _serial = SERIAL.lock().await;
    let node = Origin::start(&["--memory-budget", "64MiB", "--max-publish-kbps", "0"]).await;
    let honest = Honest::start(&node).await;
    let baseline = rss_mib(&node);
    let mut gaps = Vec::new();

    // 1. Before `connect`: large partial messages are refused outright.
    let start = Instant::now();
    let sampler = Sampler::start(node.pid());
    let pre_connect_taken = partial_attack(
        node.rtmp_addr(),
        16,
        false,
        4,
        4 * MIB,
        Duration::from_secs(10),
    )
    .await;
    let pre_connect = sampler.stop().await;
    gaps.push(("partial messages before connect", start, Instant::now()));

    // 2. After `connect`: 16 connections try to make the server hold
    // 30 MiB of partial messages each (480 MiB).
    let start = Instant::now();
    let sampler = Sampler::start(node.pid());
    partial_attack(
        node.rtmp_addr(),
        16,
        true,
        2,
        15 * MIB,
        Duration::from_secs(8),
    )
    .await;
    let post_connect = sampler.stop().await;
    gaps.push(("partial messages after connect", start, Instant::now()));
    let disconnects = metric(&node, "baton_memory_shed_total", &["action=\"disconnect\""]).await;

    // 3. 20 publishers of 1 MiB frames.
    let start = Instant::now();
    let sampler = Sampler::start(node.pid());
    let counting = Arc::new(AtomicBool::new(true));
    let counted_task = {
        let (counting, api) = (counting.clone(), node.api_url("/metrics"));
        tokio::spawn(async move {
            let mut max = 0f64;
            while counting.load(Ordering::Relaxed) {
                if let Ok(r) = http::get(&api).await {
                    let now: f64 = r
                        .text()
                        .lines()
                        .filter(|l| l.starts_with("baton_memory_counted_bytes{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    max = max.max(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            max / MIB as f64
        })
    };
    let frames = big_publishers(&node, 6).await;
    let publishers = sampler.stop().await;
    counting.store(false, Ordering::Relaxed);
    let counted_mib = counted_task.await.unwrap_or_default();
    gaps.push(("20 publishers of 1 MiB frames", start, Instant::now()));
    let shed = metric(&node, "baton_memory_shed_total", &[]).await;

    let longest: Vec<Duration> = gaps
        .iter()
        .map(|(_, from, to)| honest.longest_gap(*from, *to))
        .collect();
    println!(
        "memory (budget 64 MiB, baseline RSS {baseline:.1} MiB): before connect peak RSS {:.1} MiB \
         (bytes each peer got written before the close, socket buffers included: {:?}); \
         after connect 16x30 MiB partials: peak RSS {:.1} MiB, {disconnects} connections shed; \
         20 publishers of 1 MiB frames ({frames} frames sent): peak RSS {:.1} MiB, peak counted {counted_mib:.1} MiB, CPU {:.2} cores; \
         {shed} shed actions in all; honest players' longest gaps per phase {longest:?}",
        pre_connect.rss_mib,
        pre_connect_taken,
        post_connect.rss_mib,
        publishers.rss_mib,
        publishers.cpu_cores,
    );
    for (what, from, to) in gaps {
        honest.assert_played_through(from, to, what);
    }
    assert!(
        pre_connect.rss_mib < baseline + 32.0,
        "before connect: {pre_connect:?}"
    );
    assert!(disconnects >= 1.0, "nothing was shed for partial messages");
    // A shed connection's own line says the governor closed it.
    let log = node.log();
    assert!(
        log.contains("reason=\"shed by the memory governor"),
        "no disconnect line names the governor:\n{}",
        node.log_tail(40)
    );
    assert!(
        !log.contains("kicked through the API"),
        "a shed connection blamed the API:\n{}",
        node.log_tail(40)
    );
    assert!(
        post_connect.rss_mib < baseline + 160.0,
        "after connect: {post_connect:?}"
    );
    assert!(
        publishers.rss_mib < baseline + 200.0,
        "1 MiB publishers: {publishers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publisher_over_the_bitrate_cap_is_disconnected_with_a_reason() {
    let _serial = SERIAL.lock().await;
    let node = Origin::start(&[
        "--max-publish-kbps",
        "2000",
        "--publish-bitrate-window",
        "2s",
    ])
    .await;
    let honest = Honest::start(&node).await;
    let start = Instant::now();
    let stream = attacker_connect(node.rtmp_addr()).await.expect("connect");
    let mut raw = RawRtmp::from_stream(stream);
    raw.handshake().await.expect("handshake");
    raw.connect_app(APP, &format!("rtmp://{}/{APP}", node.rtmp_addr()))
        .await
        .expect("connect");
    let id = raw.create_stream().await.expect("createStream");
    assert_eq!(
        raw.publish(id, "heavy").await.expect("publish"),
        "NetStream.Publish.Start"
    );
    // 40 KB frames at 30 a second: about 9.8 Mbit/s.
    let mut frame = vec![0x27u8; 40_000];
    frame[0] = 0x17;
    let mut cut_after = None;
    for n in 0..300u32 {
        let message = RtmpMessage::Video {
            stream_id: id,
            timestamp: n * 33,
            payload: Bytes::copy_from_slice(&frame),
        };
        if raw.send(message).await.is_err() {
            cut_after = Some(start.elapsed());
            break;
        }
        frame[0] = 0x27;
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let code = raw
        .await_status()
        .await
        .unwrap_or_else(|e| format!("no status: {e:#}"));
    let cut_after = cut_after.unwrap_or(start.elapsed());
    honest.assert_played_through(start, Instant::now(), "an over-cap publisher");
    let counted = metric(
        &node,
        "baton_publishers_disconnected_total",
        &["max-publish-kbps"],
    )
    .await;
    let log = node.log();
    println!("over-cap publisher: cut after {cut_after:?} with {code}; counted {counted}");
    assert_eq!(code, "NetStream.Publish.Rejected");
    assert!(
        cut_after < Duration::from_secs(6),
        "cut after {cut_after:?}"
    );
    assert_eq!(counted, 1.0);
    assert!(
        log.contains("over max_publish_kbps") && log.contains("above max_publish_kbps 2000"),
        "{}",
        node.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_streams_refuses_the_next_stream() {
    let _serial = SERIAL.lock().await;
    // The honest stream and one more.
    let node = Origin::start(&["--max-streams", "2"]).await;
    let honest = Honest::start(&node).await;
    let start = Instant::now();
    let _second = RtmpPublisher::connect(&node.rtmp_url(APP, "second"))
        .await
        .expect("the second stream");

    let mut raw = RawRtmp::tcp(node.rtmp_addr()).await.expect("connect");
    raw.handshake().await.expect("handshake");
    raw.connect_app(APP, &format!("rtmp://{}/{APP}", node.rtmp_addr()))
        .await
        .expect("connect");
    let id = raw.create_stream().await.expect("createStream");
    let publish = raw.publish(id, "third").await.expect("publish answer");
    let play = http::get(&node.flv_url(APP, "fourth")).await.expect("GET");
    honest.assert_played_through(start, Instant::now(), "refused streams");
    let refused = metric(&node, "baton_streams_refused_total", &["max-streams"]).await;
    println!(
        "max_streams 2: third publish {publish}, HTTP play of a fourth {}, {refused} refused",
        play.status
    );
    assert_eq!(publish, "NetStream.Publish.Rejected");
    // An HTTP-FLV play of an unpublished stream makes no source at all: a
    // 404 at once, before max_streams is even asked.
    assert_eq!(play.status, 404);
    assert_eq!(refused, 1.0);
    // The streams that exist still play.
    let player = Watcher::rtmp(
        "second player",
        rtmp_player(&node.rtmp_url(APP, "honest")).await,
    );
    player
        .wait_frames(5, Duration::from_secs(5))
        .await
        .expect("an existing stream still plays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_applies_the_same_limits() {
    let _serial = SERIAL.lock().await;
    const PER_IP: usize = 50;
    let origin = Origin::start(&[]).await;
    let edge = Origin::start_edge(
        &[&origin],
        &[
            "--per-ip-max-connections",
            &PER_IP.to_string(),
            "--per-ip-accept-burst",
            "100",
        ],
    )
    .await;
    // The honest stream is published to the edge and played from it.
    let honest = Honest::start(&edge).await;
    let start = Instant::now();
    let (rtmp, http_conns) = tokio::join!(
        flood_apart(edge.rtmp_addr(), 400, 100),
        flood_apart(edge.http_addr(), 400, 100)
    );
    let attempted = rtmp.len() + http_conns.len();
    let late = Watcher::flv("late flv", flv_player(&edge.flv_url(APP, "honest")).await);
    late.wait_frames(10, Duration::from_secs(5))
        .await
        .unwrap_or_else(|seen| panic!("no late player through the edge: {seen:?}"));
    let streams: Vec<_> = rtmp.into_iter().chain(http_conns).collect();
    let held = apart(move || still_open(streams, Duration::from_millis(500))).await;
    let end = Instant::now();
    let refused = metric(
        &edge,
        "baton_connections_refused_total",
        &["reason=\"per-ip-"],
    )
    .await;
    println!(
        "edge flood: {attempted} attempted, {held} held (per-ip limit {PER_IP}), {refused} refused"
    );
    honest.assert_played_through(start, end, "a connection flood on the edge");
    assert!(held <= PER_IP, "{held} held on the edge, limit {PER_IP}");
    assert!(
        refused as usize >= attempted - PER_IP,
        "{refused} refused of {attempted}"
    );
}

/// The outside probe's flood replayed against a node with the default
/// limits: 19,000 idle connections from one address (they held 18,023
/// slots before the limits existed, and every new client was reset until
/// the handshake timeout freed them). Heavy (19,000 sockets in this
/// process): `cargo test -p baton-tests --test limits -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn the_probes_flood_with_default_limits() {
    let _serial = SERIAL.lock().await;
    let node = Origin::start(&[]).await;
    let honest = Honest::start(&node).await;
    let lines_before = log_lines(&node);
    let sampler = Sampler::start(node.pid());
    let start = Instant::now();
    let (rtmp, http_conns) = tokio::join!(
        flood_apart(node.rtmp_addr(), 12_000, 300),
        flood_apart(node.http_addr(), 7_000, 200)
    );
    let attempted = rtmp.len() + http_conns.len();
    let flood_took = start.elapsed();
    let late = Watcher::rtmp(
        "late rtmp",
        rtmp_player(&node.rtmp_url(APP, "honest")).await,
    );
    late.wait_frames(10, Duration::from_secs(5))
        .await
        .unwrap_or_else(|seen| panic!("no new honest player during the flood: {seen:?}"));
    let streams: Vec<_> = rtmp.into_iter().chain(http_conns).collect();
    let held = apart(move || still_open(streams, Duration::from_millis(500))).await;
    let end = Instant::now();
    let peak = sampler.stop().await;
    let gap = honest.longest_gap(start, end);
    let refused = metric(&node, "baton_connections_refused_total", &[]).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let lines = log_lines(&node) - lines_before;
    println!(
        "probe flood (default limits): {attempted} connections from {ATTACKER} in {flood_took:?}; \
         {held} held, {refused} refused; honest players' longest gap {gap:?}; \
         server peak RSS {:.1} MiB, CPU {:.2} cores; {lines} log lines",
        peak.rss_mib, peak.cpu_cores
    );
    assert!(held <= limits_default_per_ip(), "{held} held");
    assert!(lines <= 60, "{lines} log lines");
    honest.assert_played_through(start, end, "the probe's flood");
}

/// `per_ip_max_connections`' default.
fn limits_default_per_ip() -> usize {
    baton_common::serve::limits::DEFAULT_PER_IP_MAX_CONNECTIONS
}
