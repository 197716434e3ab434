//! The edge, end to end: real origins and edges on loopback, a real-time
//! publisher on edge A, players on edge B (and on A), and faults applied
//! to the origin that holds the stream. What every test requires of every
//! client: no disconnect, no duplicated frame (by the index in its
//! payload), no timestamp regression on either track, no frame missing
//! after the fault; each prints its players' longest stall.

use std::time::{Duration, Instant};

use baton_tests::feed::{Feed, Watcher};
use baton_tests::findings::Findings;
use baton_tests::play::{flv_player, rtmp_player};
use baton_tests::{eventually, Node, Signal};

const APP: &str = "live";

/// Two origins, and edges A and B in front of both.
struct Topology {
    origins: Vec<Node>,
    edge_a: Node,
    edge_b: Node,
}

async fn topology(edge_args: &[&str]) -> Topology {
    let o1 = Node::start(&[]).await;
    let o2 = Node::start(&[]).await;
    let edge_a = Node::start_edge(&[&o1, &o2], edge_args).await;
    let edge_b = Node::start_edge(&[&o1, &o2], edge_args).await;
    Topology {
        origins: vec![o1, o2],
        edge_a,
        edge_b,
    }
}

impl Topology {
    /// Index of the origin publishing `stream` (within 10 s).
    async fn holder(&self, stream: &str) -> usize {
        let found = eventually(Duration::from_secs(10), || async {
            for (i, origin) in self.origins.iter().enumerate() {
                if origin.publishes(APP, stream).await {
                    return Some(i);
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no origin publishes {stream}\n--- edge A log ---\n{}",
                self.edge_a.log_tail(40)
            )
        })
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
}

/// Publisher on edge A; RTMP and HTTP-FLV players on edge B and an RTMP
/// player on edge A, all receiving.
async fn stream_through_edges(t: &Topology, stream: &str) -> (Feed, Vec<Watcher>) {
    let feed = Feed::standard();
    feed.attach("edge-a", &t.edge_a.rtmp_url(APP, stream))
        .await
        .unwrap_or_else(|e| panic!("publishing to edge A: {e}{}", t.logs()));
    t.holder(stream).await;
    let watchers = vec![
        Watcher::rtmp("B rtmp", rtmp_player(&t.edge_b.rtmp_url(APP, stream)).await),
        Watcher::flv("B flv", flv_player(&t.edge_b.flv_url(APP, stream)).await),
        Watcher::rtmp("A rtmp", rtmp_player(&t.edge_a.rtmp_url(APP, stream)).await),
    ];
    for w in &watchers {
        if let Err(seen) = w.wait_frames(60, Duration::from_secs(10)).await {
            panic!(
                "{} got no frames before the fault: {seen:?}{}",
                w.label,
                t.logs()
            );
        }
    }
    (feed, watchers)
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
        let seen = w.seen();
        findings.check(!w.is_ended(), || {
            format!("{} was disconnected {what}: {:?}", w.label, seen.ended)
        });
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
    let link = feed.link("edge-a");
    findings.check(
        link.as_ref().is_some_and(|l| l.live && l.closed.is_none()),
        || format!("the publisher's connection to edge A did not survive {what}: {link:?}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_sigkill_is_invisible_to_players_and_publisher() {
    let mut t = topology(&["--upstream-stall-timeout", "1s"]).await;
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
        Duration::from_millis(250),
        "after the origin's SIGKILL",
    )
    .await;
    let other = 1 - holder;
    let moved = t.holder("kill").await;
    findings.check(moved == other, || {
        format!("the stream is on origin {moved}, not the survivor")
    });
    if !findings.is_empty() {
        eprintln!("{}", t.logs());
    }
    findings.assert_none(&t.edge_b);
    feed.stop().await;
}
