//! Planned moves through the edge: an origin upgraded (SIGUSR2) and then
//! its new generation drained (SIGQUIT) while a publisher on edge A and
//! players on edge B stream through it. The origin asks its clients to
//! reconnect (Enhanced RTMP v2 `NetConnection.Connect.ReconnectRequest`);
//! the edges open the next upstream first, switch, then close the old
//! one (make-before-break), so the players' longest stall stays within
//! the stream's own jitter, nothing is lost or repeated, and each drained
//! generation exits by itself as soon as the edges have left it.

use std::time::{Duration, Instant};

use baton_tests::feed::{Feed, Watcher};
use baton_tests::findings::Findings;
use baton_tests::play::{flv_player, rtmp_player};
use baton_tests::tls::{edge_tls_origins, start_tls_origin, TestPki};
use baton_tests::{eventually, pid_alive, signal_pid, Node, Signal};

const APP: &str = "live";
const STREAM: &str = "planned";

/// The origin publishing the stream.
async fn holder(origins: &[Node]) -> Option<usize> {
    for (i, origin) in origins.iter().enumerate() {
        if origin.publishes(APP, STREAM).await {
            return Some(i);
        }
    }
    None
}

const ORIGIN_ARGS: [&str; 4] = ["--grace-start-wait", "300ms", "--grace-final-wait", "200ms"];

/// The 100 ms bound is on what a move adds to the players' gaps; their
/// steady gaps are the write budget (`--write-coalesce`, 80 ms by
/// default), so the edges serving them run with the 20 ms budget the
/// bound was set for.
const WRITE_BUDGET: [&str; 2] = ["--write-coalesce", "20ms"];

/// One planned-move test at a time (each measures stalls of tens of ms).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_then_drain_of_the_origin_is_make_before_break() {
    let _serial = SERIAL.lock().await;
    let o1 = Node::start(&ORIGIN_ARGS).await;
    let o2 = Node::start(&ORIGIN_ARGS).await;
    let edge_a = Node::start_edge(&[&o1, &o2], &WRITE_BUDGET).await;
    let edge_b = Node::start_edge(&[&o1, &o2], &WRITE_BUDGET).await;
    planned_case(&[o1, o2], &edge_a, &edge_b).await;
}

/// The same with TLS between the edges and the origins: the RTMPS
/// listener is handed to the new generation, and the drains wait for the
/// edges' TLS connections as for plain ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_then_drain_over_tls_is_make_before_break() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new("baton planned test CA");
    let (o1, rtmps1) = start_tls_origin(&pki, &ORIGIN_ARGS).await;
    let (o2, rtmps2) = start_tls_origin(&pki, &ORIGIN_ARGS).await;
    let edge = edge_tls_origins(
        Node::edge_builder().args(WRITE_BUDGET),
        &[(&o1, rtmps1), (&o2, rtmps2)],
        &pki,
    );
    let edge_a = edge.clone().start().await;
    let edge_b = edge.start().await;
    let origins = [o1, o2];
    planned_case(&origins, &edge_a, &edge_b).await;
    // The edges' upstreams were RTMPS, on both generations of the origin.
    for origin in &origins {
        let log = origin.log();
        let tls_upstreams = log
            .lines()
            .filter(|l| l.contains("tls=true") && l.contains("started"))
            .count();
        println!("origin: {tls_upstreams} TLS publish/play starts");
        assert!(
            tls_upstreams > 0,
            "no RTMPS upstream reached an origin:\n{}",
            origin.log_tail(30)
        );
        assert!(
            !log.contains("TLS handshake failed"),
            "{}",
            origin.log_tail(30)
        );
    }
}

async fn planned_case(origins: &[Node], edge_a: &Node, edge_b: &Node) {
    let feed = Feed::standard();
    feed.attach("edge-a", &edge_a.rtmp_url(APP, STREAM))
        .await
        .expect("publishing to edge A");
    let first = eventually(Duration::from_secs(10), || holder(origins))
        .await
        .expect("an origin publishes the stream");
    let watchers = vec![
        Watcher::rtmp("B rtmp", rtmp_player(&edge_b.rtmp_url(APP, STREAM)).await),
        Watcher::flv("B flv", flv_player(&edge_b.flv_url(APP, STREAM)).await),
    ];
    for w in &watchers {
        w.wait_frames(60, Duration::from_secs(10))
            .await
            .unwrap_or_else(|seen| panic!("{} got nothing: {seen:?}", w.label));
    }
    let mut findings = Findings::default();

    // 1. Smooth upgrade of the holder: its clients move to the new
    //    generation on the same address.
    let old_pid = origins[first].pid();
    let fault = Instant::now();
    signal_pid(old_pid, Signal::SIGUSR2).expect("SIGUSR2");
    let new_pid = eventually(Duration::from_secs(10), || async {
        origins[first].pid_from_file().filter(|p| *p != old_pid)
    })
    .await
    .expect("the upgrade names a new generation in the PID file");
    let old_exited = eventually(Duration::from_secs(10), || async {
        (!pid_alive(old_pid)).then_some(Instant::now())
    })
    .await;
    findings.check(old_exited.is_some(), || {
        format!("the upgraded generation (pid {old_pid}) did not exit once the edges moved")
    });
    if let Some(at) = old_exited {
        println!("old generation exited {:?} after SIGUSR2", at - fault);
    }
    for w in &watchers {
        findings.check(
            w.wait_frames(90, Duration::from_secs(10)).await.is_ok(),
            || format!("{} stopped after the upgrade", w.label),
        );
    }

    // 2. Graceful drain of the new generation: the stream moves to the
    //    other origin.
    let drain = Instant::now();
    signal_pid(new_pid, Signal::SIGQUIT).expect("SIGQUIT");
    let drained = eventually(Duration::from_secs(15), || async {
        (!pid_alive(new_pid)).then_some(Instant::now())
    })
    .await;
    findings.check(drained.is_some(), || {
        format!("the drained generation (pid {new_pid}) did not exit once the edges moved")
    });
    if let Some(at) = drained {
        println!("drained generation exited {:?} after SIGQUIT", at - drain);
    }
    let now_on = eventually(Duration::from_secs(10), || holder(origins)).await;
    findings.check(now_on == Some(1 - first), || {
        format!("after the drain the stream is on {now_on:?}, not the other origin")
    });
    for w in &watchers {
        findings.check(
            w.wait_frames(90, Duration::from_secs(10)).await.is_ok(),
            || format!("{} stopped after the drain", w.label),
        );
        findings.continuous(w, fault, "across the upgrade and the drain");
        let seen = w.seen();
        println!("{}: longest stall {:?}", w.label, seen.max_stall);
        findings.check(!w.is_ended(), || format!("{} was disconnected", w.label));
        findings.check(seen.max_stall <= Duration::from_millis(100), || {
            format!("{} stalled {:?} (bound 100 ms)", w.label, seen.max_stall)
        });
    }
    // The moves were planned ones, not failovers after a loss.
    for (name, edge) in [("A", &edge_a), ("B", &edge_b)] {
        let metrics = edge.api_get("/metrics").await.text();
        let count = |metric: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(metric))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
                + 0.0
        };
        let planned = count("baton_edge_planned_moves_total");
        let failures = count("baton_edge_upstream_failures_total");
        println!("edge {name}: {planned} planned moves, {failures} upstream failures");
        findings.check(planned >= 2.0 && failures == 0.0, || {
            format!(
                "edge {name} moved by failure, not by plan: {planned} planned, {failures} failures"
            )
        });
    }
    let link = feed.link("edge-a");
    findings.check(link.as_ref().is_some_and(|l| l.live), || {
        format!("the publisher's connection did not survive: {link:?}")
    });
    if !findings.is_empty() {
        eprintln!(
            "--- edge A ---\n{}\n--- edge B ---\n{}\n--- origin {} ---\n{}",
            edge_a.log_tail(40),
            edge_b.log_tail(40),
            first + 1,
            origins[first].log_tail(60)
        );
    }
    findings.assert_none(edge_b);
    feed.stop().await;
}
