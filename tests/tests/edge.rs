//! The edge, end to end: real origins and edges on loopback, a real-time
//! publisher on edge A, players on edge B (and on A), and faults applied
//! to the origin that holds the stream. What every test requires of every
//! client: no disconnect, no duplicated frame (by the index in its
//! payload), no timestamp regression on either track, no frame missing
//! after the fault; each prints its players' longest stall.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use baton_common::media::MediaKind;
use baton_tests::dns::TestDns;
use baton_tests::feed::{Feed, Received, Watcher};
use baton_tests::findings::Findings;
use baton_tests::play::{flv_player, rtmp_player};
use baton_tests::proxy::{FaultProxy, Mode};
use baton_tests::tls::{edge_tls_origins, start_tls_origin, TestPki};
use baton_tests::{eventually, Node, NodeBuilder, Ports, Signal, SynthConfig};

const APP: &str = "live";

/// One failover test at a time: each measures stalls of a few tens of
/// milliseconds, which two cores running seven topologies at once would
/// swamp (the machine's jitter, not the edge's).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The stall timeout every test gives its edges: a quiet upstream has
/// failed after this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest stall a player may see when the holder hangs or its network
/// breaks: the stall timeout plus half a second to move.
const HANG_STALL_BOUND: Duration = Duration::from_millis(1500);
/// The longest stall a player may see when the holder dies (its kernel
/// resets the connections, so the edge knows at once).
const KILL_STALL_BOUND: Duration = Duration::from_millis(250);

/// Two origins, and edges A and B in front of both.
struct Topology {
    origins: Vec<Node>,
    edge_a: Node,
    edge_b: Node,
    /// The test CA when edges reach the origins over TLS.
    _pki: Option<TestPki>,
}

/// Two fresh origins, and edges A and B in front of both with `edge_args`.
async fn topology(edge_args: &[&str]) -> Topology {
    let origins = vec![Node::start(&[]).await, Node::start(&[]).await];
    let edge = origins
        .iter()
        .fold(Node::edge_builder(), |edge, origin| edge.origin(origin))
        .args(edge_args.iter().copied());
    Topology::start(origins, edge).await
}

/// As [`topology`], but the edges reach the origins over RTMPS, verifying
/// their certificates against a test CA.
async fn tls_topology(edge_args: &[&str]) -> Topology {
    let pki = TestPki::new("baton edge test CA");
    let (o1, rtmps1) = start_tls_origin(&pki, &[]).await;
    let (o2, rtmps2) = start_tls_origin(&pki, &[]).await;
    let edge = edge_tls_origins(Node::edge_builder(), &[(&o1, rtmps1), (&o2, rtmps2)], &pki);
    let origins = vec![o1, o2];
    let mut t = Topology::start(origins, edge.args(edge_args.iter().copied())).await;
    t._pki = Some(pki);
    t
}

impl Topology {
    /// Edges A and B, both started from `edge`, in front of `origins`.
    async fn start(origins: Vec<Node>, edge: NodeBuilder) -> Topology {
        let edge_a = edge.clone().start().await;
        let edge_b = edge.start().await;
        Topology {
            origins,
            edge_a,
            edge_b,
            _pki: None,
        }
    }

    /// Whether origin `i` publishes `stream` now; false if its API does not
    /// answer within a second (a frozen or dead origin).
    async fn publishes(&self, i: usize, stream: &str) -> bool {
        self.origins[i].publishes(APP, stream).await
    }

    /// Waits (at most `limit`) until exactly origin `i` publishes `stream`.
    async fn only_holder_within(&self, i: usize, stream: &str, limit: Duration) -> bool {
        eventually(limit, || async {
            for j in 0..self.origins.len() {
                if self.publishes(j, stream).await != (i == j) {
                    return None;
                }
            }
            Some(())
        })
        .await
        .is_some()
    }

    /// Index of the origin publishing `stream` (within 10 s).
    async fn holder(&self, stream: &str) -> usize {
        let found = eventually(Duration::from_secs(10), || async {
            for i in 0..self.origins.len() {
                if self.publishes(i, stream).await {
                    return Some(i);
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|| panic!("no origin publishes {stream}{}", self.logs()))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, o) in self.origins.iter().enumerate() {
            out += &format!("\n--- origin {} log ---\n{}", i + 1, o.log_tail(30));
        }
        out += &format!("\n--- edge A log ---\n{}", self.edge_a.log_tail(40));
        out += &format!("\n--- edge B log ---\n{}", self.edge_b.log_tail(40));
        out
    }

    /// Fails the test if anything was found (with every log), else stops
    /// the publisher.
    async fn finish(&self, findings: Findings, feed: Feed) {
        if !findings.is_empty() {
            eprintln!("{}", self.logs());
        }
        findings.assert_none(&self.edge_b);
        feed.stop().await;
    }
}

/// Edge flags with the stall timeout every test uses, plus `extra`.
fn edge_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--upstream-stall-timeout", "1s"];
    args.extend_from_slice(extra);
    args
}

/// Waits until every watcher got `frames` frames (panicking with the logs
/// after 10 s).
async fn all_receiving(t: &Topology, watchers: &[Watcher], frames: u64, when: &str) {
    for w in watchers {
        if let Err(seen) = w.wait_frames(frames, Duration::from_secs(10)).await {
            panic!("{} got no frames {when}: {seen:?}{}", w.label, t.logs());
        }
    }
}

/// RTMP and HTTP-FLV players of `stream` on edge B.
async fn players_on_b(t: &Topology, stream: &str) -> Vec<Watcher> {
    vec![
        Watcher::rtmp("B rtmp", rtmp_player(&t.edge_b.rtmp_url(APP, stream)).await),
        Watcher::flv("B flv", flv_player(&t.edge_b.flv_url(APP, stream)).await),
    ]
}

/// Publisher on edge A; RTMP and HTTP-FLV players on edge B and an RTMP
/// player on edge A (last), all receiving.
async fn stream_through_edges(t: &Topology, stream: &str) -> (Feed, Vec<Watcher>) {
    let feed = Feed::standard();
    feed.attach("edge-a", &t.edge_a.rtmp_url(APP, stream))
        .await
        .unwrap_or_else(|e| panic!("publishing to edge A: {e}{}", t.logs()));
    t.holder(stream).await;
    let mut watchers = players_on_b(t, stream).await;
    watchers.push(Watcher::rtmp(
        "A rtmp",
        rtmp_player(&t.edge_a.rtmp_url(APP, stream)).await,
    ));
    all_receiving(t, &watchers, 60, "before the fault").await;
    (feed, watchers)
}

/// Prints `w`'s longest stall and records it if above `max_stall`.
fn check_stall(
    findings: &mut Findings,
    w: &Watcher,
    fault: Instant,
    max_stall: Duration,
    what: &str,
) {
    let seen = w.seen();
    let stall_after = seen.max_stall_at.is_some_and(|at| at >= fault);
    println!(
        "{}: longest stall {:?} ({}) {what}",
        w.label,
        seen.max_stall,
        if stall_after {
            "after the fault"
        } else {
            "before the fault"
        }
    );
    findings.check(seen.max_stall <= max_stall, || {
        format!(
            "{} stalled {:?} {what} (bound {max_stall:?})",
            w.label, seen.max_stall
        )
    });
}

/// Records unless `feed`'s link `label` is still attached and unbroken.
fn check_link(findings: &mut Findings, feed: &Feed, label: &str, what: &str) {
    let link = feed.link(label);
    findings.check(
        link.as_ref().is_some_and(|l| l.live && l.closed.is_none()),
        || format!("the publisher's connection {label} did not survive {what}: {link:?}"),
    );
}

/// After the fault: every player keeps receiving (at least `frames` more
/// within `limit`), continuously, and its longest stall since the fault
/// stays within `max_stall`; the publisher's link to edge A is intact.
async fn check_after_fault(
    findings: &mut Findings,
    feed: &Feed,
    watchers: &[Watcher],
    fault: Instant,
    max_stall: Duration,
    what: &str,
) {
    for w in watchers {
        let more = w.wait_frames(150, Duration::from_secs(15)).await;
        findings.check(more.is_ok(), || {
            format!("{} stopped receiving {what}", w.label)
        });
        findings.continuous(w, fault, what);
        findings.check(!w.is_ended(), || {
            format!("{} was disconnected {what}: {:?}", w.label, w.seen().ended)
        });
        check_stall(findings, w, fault, max_stall, what);
    }
    check_link(findings, feed, "edge-a", what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_sigkill_is_invisible_to_players_and_publisher() {
    let _serial = SERIAL.lock().await;
    origin_sigkill_case(topology(&edge_args(&[])).await).await;
}

/// The same with TLS between the edges and the origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_sigkill_over_tls_is_invisible_to_players_and_publisher() {
    let _serial = SERIAL.lock().await;
    origin_sigkill_case(tls_topology(&edge_args(&[])).await).await;
}

async fn origin_sigkill_case(mut t: Topology) {
    let (feed, watchers) = stream_through_edges(&t, "kill").await;
    let holder = t.holder("kill").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault = Instant::now();
    t.origins[holder].signal(Signal::SIGKILL);
    let mut findings = Findings::default();
    check_after_fault(
        &mut findings,
        &feed,
        &watchers,
        fault,
        KILL_STALL_BOUND,
        "after the origin's SIGKILL",
    )
    .await;
    let other = 1 - holder;
    let moved = t.holder("kill").await;
    findings.check(moved == other, || {
        format!("the stream is on origin {moved}, not the survivor")
    });
    t.finish(findings, feed).await;
}

/// The holder hangs (SIGSTOP: sockets open, nothing read or written) for
/// 7 s: the edges find it silent within the stall timeout and move; when
/// it comes back nothing is played twice and it no longer holds the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_origin_is_invisible_to_players_and_publisher() {
    let _serial = SERIAL.lock().await;
    let mut t = topology(&edge_args(&[])).await;
    let (feed, watchers) = stream_through_edges(&t, "freeze").await;
    let holder = t.holder("freeze").await;
    let other = 1 - holder;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault = Instant::now();
    t.origins[holder].freeze();
    let mut findings = Findings::default();
    check_after_fault(
        &mut findings,
        &feed,
        &watchers,
        fault,
        HANG_STALL_BOUND,
        "while the holder is frozen",
    )
    .await;
    findings.check(t.publishes(other, "freeze").await, || {
        format!(
            "origin {} does not publish the stream while origin {} is frozen",
            other + 1,
            holder + 1
        )
    });
    tokio::time::sleep_until((fault + Duration::from_secs(7)).into()).await;
    t.origins[holder].thaw();
    let thawed = Instant::now();
    check_after_fault(
        &mut findings,
        &feed,
        &watchers,
        fault,
        HANG_STALL_BOUND,
        "after the frozen holder was thawed",
    )
    .await;
    findings.check(
        t.only_holder_within(other, "freeze", Duration::from_secs(10))
            .await,
        || {
            format!(
                "10 s after the thaw not only origin {} publishes the stream",
                other + 1
            )
        },
    );
    println!("thawed {:?} after the freeze", thawed - fault);
    t.finish(findings, feed).await;
}

/// The network between the edges and the holder breaks (a blackhole: no
/// FIN, no RST, nothing arrives) while both processes are fine and the
/// holder's API still answers: the edges find the media path silent and
/// move; when the network heals nothing is played twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackholed_origin_is_invisible_to_players_and_publisher() {
    let _serial = SERIAL.lock().await;
    let origins = vec![Node::start(&[]).await, Node::start(&[]).await];
    let proxies: Vec<FaultProxy> = origins
        .iter()
        .map(|o| FaultProxy::start(o.rtmp_addr()))
        .collect();
    let edge = origins
        .iter()
        .zip(&proxies)
        .fold(Node::edge_builder(), |edge, (origin, proxy)| {
            edge.origin_addr(proxy.listen_addr(), Some(origin.api_addr()))
        })
        .upstream_stall_timeout(STALL_TIMEOUT);
    let t = Topology::start(origins, edge).await;
    let (feed, watchers) = stream_through_edges(&t, "cut").await;
    let holder = t.holder("cut").await;
    let other = 1 - holder;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault = Instant::now();
    proxies[holder].set_mode(Mode::Blackhole);
    let mut findings = Findings::default();
    check_after_fault(
        &mut findings,
        &feed,
        &watchers,
        fault,
        HANG_STALL_BOUND,
        "while the holder is blackholed",
    )
    .await;
    findings.check(t.publishes(other, "cut").await, || {
        format!(
            "origin {} does not publish the stream while origin {} is cut off",
            other + 1,
            holder + 1
        )
    });
    proxies[holder].set_mode(Mode::Forward);
    check_after_fault(
        &mut findings,
        &feed,
        &watchers,
        fault,
        HANG_STALL_BOUND,
        "after the network healed",
    )
    .await;
    t.finish(findings, feed).await;
}

/// Every origin dies: players on edge B are held (connected, silent) for
/// `--upstream-outage-max` (3 s), then the stream ends cleanly: the RTMP
/// player gets NetStream.Play.UnpublishNotify and EOF, the HTTP-FLV body
/// is terminated. The publisher on edge A stays connected (the edge keeps
/// buffering its frames) and edge A's own player keeps playing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_origin_beyond_outage_max_ends_players_cleanly() {
    let _serial = SERIAL.lock().await;
    const OUTAGE_MAX: Duration = Duration::from_secs(3);
    let mut t = topology(&edge_args(&["--upstream-outage-max", "3s"])).await;
    let (feed, watchers) = stream_through_edges(&t, "gone").await;
    let (on_b, on_a) = watchers.split_at(2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault = Instant::now();
    for origin in &mut t.origins {
        origin.signal(Signal::SIGKILL);
    }
    let mut findings = Findings::default();
    let what = "after every origin was killed";
    for w in on_b {
        let Some(seen) = w.wait_end(OUTAGE_MAX + Duration::from_secs(3)).await else {
            findings.check(false, || {
                format!(
                    "{} still connected {:?} after the kill",
                    w.label,
                    fault.elapsed()
                )
            });
            continue;
        };
        let ended = seen.ended_after(fault).unwrap_or_default();
        let how = seen.ended.as_ref().map(|(_, how)| how.as_str());
        println!("{}: ended ({how:?}) {ended:?} after the kill", w.label);
        findings.check(ended >= Duration::from_millis(2900), || {
            format!(
                "{} ended ({how:?}) {ended:?} after the kill, before upstream_outage_max ({OUTAGE_MAX:?})",
                w.label
            )
        });
        findings.check(ended <= Duration::from_millis(4500), || {
            format!(
                "{} ended only {ended:?} after the kill (bound 4.5 s)",
                w.label
            )
        });
        findings.check(how == Some("eof"), || {
            format!("{} did not end with EOF: {how:?}", w.label)
        });
        if w.label.contains("rtmp") {
            findings.check(
                seen.statuses
                    .iter()
                    .any(|s| s == "NetStream.Play.UnpublishNotify"),
                || {
                    format!(
                        "{} got no NetStream.Play.UnpublishNotify: {:?}",
                        w.label, seen.statuses
                    )
                },
            );
        } else {
            findings.check(seen.body_terminated == Some(true), || {
                format!(
                    "{}: the HTTP-FLV body was not terminated properly ({:?})",
                    w.label, seen.body_terminated
                )
            });
        }
        findings.continuous(w, fault, what);
        check_stall(&mut findings, w, fault, HANG_STALL_BOUND, what);
    }
    for w in on_a {
        let more = w.wait_frames(150, Duration::from_secs(10)).await;
        findings.check(more.is_ok(), || {
            format!(
                "{} (the publisher is on edge A) stopped receiving {what}",
                w.label
            )
        });
        findings.continuous(w, fault, what);
        findings.check(!w.is_ended(), || {
            format!("{} was disconnected {what}: {:?}", w.label, w.seen().ended)
        });
        check_stall(&mut findings, w, fault, HANG_STALL_BOUND, what);
    }
    check_link(&mut findings, &feed, "edge-a", what);
    t.finish(findings, feed).await;
}

/// Index of the second publisher's first frame in the
/// publisher-reconnect test.
const NEW_PUBLISHER_BASE: u32 = 1_000_000;

/// The publisher talks to origins directly: it leaves origin 1 (its
/// timestamps were ~100 s) and a second later comes back on origin 2 with
/// timestamps from 0. Players on edge B stay connected, their timestamps
/// never go back on either track, the first video frame of the new
/// publisher they get is a keyframe, and from there nothing is lost or
/// played twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publisher_reconnecting_to_another_origin_from_zero_is_spliced() {
    let _serial = SERIAL.lock().await;
    /// Longest stall allowed: the second the publisher was away, plus two
    /// to find it on the other origin.
    const SWITCH_STALL_BOUND: Duration = Duration::from_secs(3);
    let t = topology(&edge_args(&[])).await;
    let first = Feed::start(SynthConfig {
        gop: 15,
        start_ms: 100_000,
        ..SynthConfig::default()
    });
    first
        .attach("origin-1", &t.origins[0].rtmp_url(APP, "again"))
        .await
        .unwrap_or_else(|e| panic!("publishing to origin 1: {e}{}", t.logs()));
    assert!(
        t.only_holder_within(0, "again", Duration::from_secs(10))
            .await
    );
    let watchers = players_on_b(&t, "again").await;
    all_receiving(&t, &watchers, 60, "from the first publisher").await;
    first.stop().await;
    let left = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Feed::start(SynthConfig {
        gop: 15,
        start_ms: 0,
        first_index: NEW_PUBLISHER_BASE,
        ..SynthConfig::default()
    });
    second
        .attach("origin-2", &t.origins[1].rtmp_url(APP, "again"))
        .await
        .unwrap_or_else(|e| panic!("publishing to origin 2: {e}{}", t.logs()));
    let back = Instant::now();
    let mut findings = Findings::default();
    let what = "after the publisher moved to origin 2";
    for w in &watchers {
        let reached = eventually(Duration::from_secs(15), || async {
            let seen = w.seen();
            (seen.last_index >= Some(NEW_PUBLISHER_BASE) || seen.ended.is_some()).then_some(())
        })
        .await;
        let got_new = reached.is_some() && w.seen().last_index >= Some(NEW_PUBLISHER_BASE);
        findings.check(got_new, || {
            format!(
                "{} got nothing from the new publisher within 15 s ({:?})",
                w.label,
                w.seen().ended
            )
        });
        if !got_new {
            continue;
        }
        let more = w.wait_frames(150, Duration::from_secs(15)).await;
        findings.check(more.is_ok(), || {
            format!("{} stopped receiving {what}", w.label)
        });
        let received = w.received();
        let new_from = received
            .iter()
            .position(|r| r.index >= Some(NEW_PUBLISHER_BASE))
            .expect("a new frame was seen");
        let new = &received[new_from..];
        println!(
            "{}: first new frame {:?} after the publisher came back",
            w.label,
            new[0].at.saturating_duration_since(back)
        );
        let first_video = new
            .iter()
            .find(|r| r.index.is_some() && r.kind == MediaKind::Video);
        findings.check(first_video.is_some_and(|r| r.keyframe), || {
            format!(
                "{}: the new publisher's first video frame is not a keyframe: {first_video:?}",
                w.label
            )
        });
        let old_after: Vec<&Received> = new
            .iter()
            .filter(|r| r.index.is_some_and(|i| i < NEW_PUBLISHER_BASE))
            .collect();
        findings.check(old_after.is_empty(), || {
            format!(
                "{}: {} frame(s) of the old publisher after the new one's: {:?}",
                w.label,
                old_after.len(),
                &old_after[..old_after.len().min(4)]
            )
        });
        // Duplicates and regressions over the whole connection; frames
        // missing only after the new publisher's first frame arrived (the
        // old one's last frames and the jump in indices are expected).
        findings.continuous(w, new[0].at + Duration::from_nanos(1), what);
        findings.check(!w.is_ended(), || {
            format!("{} was disconnected {what}: {:?}", w.label, w.seen().ended)
        });
        check_stall(&mut findings, w, left, SWITCH_STALL_BOUND, what);
    }
    check_link(&mut findings, &second, "origin-2", what);
    t.finish(findings, second).await;
}

/// The name the DNS test's edges resolve.
const ORIGINS_NAME: &str = "origins.baton.test";

/// Three ports free on both 127.0.0.1 and 127.0.0.2 (an origin on each,
/// found by one DNS name and port).
fn ports_free_on_both() -> (Ports, Ports) {
    for _ in 0..50 {
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
            .collect();
        let on = |ip: [u8; 4], i: usize| {
            let port = held[i].local_addr().expect("local_addr").port();
            SocketAddr::from((Ipv4Addr::from(ip), port))
        };
        let both = |ip| Ports {
            rtmp: on(ip, 0),
            http: on(ip, 1),
            api: on(ip, 2),
        };
        let (one, two) = (both([127, 0, 0, 1]), both([127, 0, 0, 2]));
        if [two.rtmp, two.http, two.api]
            .iter()
            .all(|addr| TcpListener::bind(addr).is_ok())
        {
            return (one, two);
        }
    }
    panic!("no three ports free on both 127.0.0.1 and 127.0.0.2 in 50 tries")
}

/// The edges know no origin but a DNS name: at first it names origin 1
/// only; then origin 2 (another IP, same ports) is added to the answer
/// (TTL 1 s) and, two seconds later, origin 1 is killed. The stream moves
/// to origin 2, which the edges only know from DNS, as invisibly as with
/// configured origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origins_found_through_dns_take_over() {
    let _serial = SERIAL.lock().await;
    let dns = TestDns::start().await;
    dns.set_a(ORIGINS_NAME, vec![Ipv4Addr::new(127, 0, 0, 1)], 1);
    let (ports1, ports2) = ports_free_on_both();
    let origins = vec![
        Node::builder().ports(ports1).start().await,
        Node::builder().ports(ports2).start().await,
    ];
    let edge = Node::edge_builder()
        .origin_dns(ORIGINS_NAME, ports1.rtmp.port(), Some(ports1.api.port()))
        .dns_server(dns.addr())
        .upstream_stall_timeout(STALL_TIMEOUT);
    let mut t = Topology::start(origins, edge).await;
    let (feed, watchers) = stream_through_edges(&t, "dns").await;
    let mut findings = Findings::default();
    findings.check(
        t.only_holder_within(0, "dns", Duration::from_secs(2)).await,
        || "the stream is not on origin 1, the only one in DNS".to_owned(),
    );
    dns.set_a(
        ORIGINS_NAME,
        vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
        1,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, edge) in [("A", &t.edge_a), ("B", &t.edge_b)] {
        let upstreams = edge.api_json("/api/v1/upstreams").await;
        let known = upstreams["data"]["origins"].to_string();
        println!("edge {name} origins 2 s after the DNS change: {known}");
        findings.check(known.contains(&ports2.rtmp.to_string()), || {
            format!(
                "edge {name} does not list origin 2 ({}) 2 s after DNS named it (TTL 1 s): {known}",
                ports2.rtmp
            )
        });
    }
    let fault = Instant::now();
    t.origins[0].signal(Signal::SIGKILL);
    check_after_fault(
        &mut findings,
        &feed,
        &watchers,
        fault,
        HANG_STALL_BOUND,
        "after origin 1's SIGKILL",
    )
    .await;
    findings.check(
        t.only_holder_within(1, "dns", Duration::from_secs(5)).await,
        || "the stream did not move to origin 2 (found through DNS)".to_owned(),
    );
    println!("DNS queries answered: {}", dns.queries());
    t.finish(findings, feed).await;
}

/// ffmpeg on both ends, which shares no code with Baton: it publishes real
/// H.264 + AAC to edge A and plays from edge B while the holder is killed.
#[cfg(feature = "interop")]
mod interop {
    use super::*;
    use baton_tests::{ffmpeg, tools};

    /// Seconds of media the ffmpeg player reads.
    const PLAY_SECONDS: &str = "12";

    /// Lines of an ffmpeg player's stderr that mean it saw a broken
    /// stream (decoding errors, non-monotonic timestamps).
    fn complaints(stderr: &str) -> Vec<&str> {
        stderr
            .lines()
            .filter(|line| {
                let lower = line.to_ascii_lowercase();
                lower.contains("error") || line.contains("DTS") || lower.contains("non monoton")
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ffmpeg_publisher_and_player_do_not_notice_an_origin_sigkill() {
        let _serial = SERIAL.lock().await;
        assert!(
            tools::available("ffmpeg"),
            "the interop tests need ffmpeg on PATH"
        );
        let fixture = ffmpeg::fixture_flv().await;
        let mut t = topology(&edge_args(&[])).await;
        let log = t.edge_a.dir().join("ffmpeg-publish.log");
        let mut publisher = ffmpeg::publish_loop(&fixture, &t.edge_a.rtmp_url(APP, "ff"), log);
        let holder = t.holder("ff").await;
        let url = t.edge_b.rtmp_url(APP, "ff");
        let player = tokio::spawn(async move {
            tools::run(
                "ffmpeg",
                [
                    "-hide_banner",
                    "-nostdin",
                    "-v",
                    "warning",
                    "-i",
                    &url,
                    "-t",
                    PLAY_SECONDS,
                    "-f",
                    "null",
                    "-",
                ],
                Duration::from_secs(40),
            )
            .await
        });
        // Our own player next to ffmpeg's, to measure the stall (the
        // frames carry no synthetic index, so only the stall is checked).
        let watcher = Watcher::rtmp("B rtmp", rtmp_player(&t.edge_b.rtmp_url(APP, "ff")).await);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let fault = Instant::now();
        t.origins[holder].signal(Signal::SIGKILL);
        let played = player.await.expect("the player task");
        let mut findings = Findings::default();
        findings.check(!watcher.is_ended(), || {
            format!(
                "{} was disconnected: {:?}",
                watcher.label,
                watcher.seen().ended
            )
        });
        check_stall(
            &mut findings,
            &watcher,
            fault,
            KILL_STALL_BOUND,
            "after the origin's SIGKILL",
        );
        let publisher_exit = publisher.try_exit_status();
        findings.check(publisher_exit.is_none(), || {
            format!(
                "the ffmpeg publisher exited after the kill ({publisher_exit:?}):\n{}",
                publisher.log()
            )
        });
        match &played {
            Ok(out) => {
                println!(
                    "ffmpeg player: {} after {:?}, {} complaint line(s)",
                    out.status,
                    out.elapsed,
                    complaints(&out.stderr).len()
                );
                let bad = complaints(&out.stderr);
                findings.check(out.success() && bad.is_empty(), || {
                    format!(
                        "the ffmpeg player on edge B exited with {} and complained {:?}\n--- ffmpeg player stderr ---\n{}",
                        out.status, bad, out.stderr
                    )
                });
            }
            Err(e) => findings.check(false, || format!("the ffmpeg player: {e}")),
        }
        let moved = t.holder("ff").await;
        findings.check(moved == 1 - holder, || {
            format!("the stream is on origin {}, not the survivor", moved + 1)
        });
        if !findings.is_empty() {
            eprintln!(
                "{}\n--- ffmpeg publisher ---\n{}",
                t.logs(),
                publisher.log()
            );
        }
        findings.assert_none(&t.edge_b);
        publisher.stop().await;
    }
}
