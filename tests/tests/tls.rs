//! TLS end to end: RTMPS and HTTPS-FLV listeners on real origins with a
//! CA and certificates made at test time; ffmpeg (gnutls, verifying
//! against the test CA) publishing and playing over them; an edge that
//! refuses origins whose certificate does not verify (another CA, another
//! name) and serves from the one that does; certificates replaced (file
//! change, SIGHUP, a broken file) under a TLS player that must not notice.

use std::path::Path;
use std::time::{Duration, Instant};

use baton_tests::feed::{Feed, Watcher};
use baton_tests::findings::Findings;
use baton_tests::play::flv_player;
use baton_tests::tls::{free_addr, presented_leaf, CertFiles, TestPki};
use baton_tests::{eventually, FlvPlayer, Node, Signal};

const APP: &str = "live";
/// The names every good test certificate carries.
const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// `--rtmps ADDR --https ADDR --tls-cert .. --tls-key ..` plus `extra`.
fn tls_origin_args(
    rtmps: std::net::SocketAddr,
    https: std::net::SocketAddr,
    cert: &CertFiles,
) -> Vec<String> {
    let mut args = vec![
        "--rtmps".to_string(),
        rtmps.to_string(),
        "--https".to_string(),
        https.to_string(),
    ];
    args.extend(cert.server_args());
    args
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// ffmpeg publishes over RTMPS and plays over HTTPS-FLV and RTMPS, each
/// verifying the origin's certificate against the test CA; a client
/// trusting another CA is refused.
#[cfg(feature = "interop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_rtmps_and_plays_over_https_flv() {
    use baton_tests::ffmpeg::{self, fixture_flv, publish_loop_with};

    let pki = TestPki::new("baton test CA");
    let cert = pki.issue("origin", &NAMES);
    let (rtmps, https) = (free_addr(), free_addr());
    let origin = Node::builder()
        .args(tls_origin_args(rtmps, https, &cert))
        .start()
        .await;
    let ca = pki.ca.display().to_string();
    let file = fixture_flv().await;
    let publish_url = format!("rtmps://localhost:{}/live/tls", rtmps.port());
    let _publisher = publish_loop_with(
        &file,
        &["-tls_verify", "1", "-ca_file", &ca],
        &publish_url,
        origin.dir().join("ffmpeg-publish.log"),
    );
    let published = eventually(Duration::from_secs(10), || async {
        origin.publishes(APP, "tls").await.then_some(())
    })
    .await;
    assert!(
        published.is_some(),
        "ffmpeg did not publish over RTMPS\n{}",
        origin.log_tail(30)
    );

    for url in [
        format!("https://localhost:{}/live/tls.flv", https.port()),
        format!("rtmps://localhost:{}/live/tls", rtmps.port()),
    ] {
        let out = ffmpeg::ffmpeg(
            &[
                "-tls_verify",
                "1",
                "-ca_file",
                &ca,
                "-i",
                &url,
                "-map",
                "0:v",
                "-frames:v",
                "60",
                "-f",
                "framecrc",
                "-",
            ],
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("ffmpeg playing {url}: {e}"));
        let frames = out.stdout.lines().filter(|l| l.starts_with("0,")).count();
        println!("{url}: ffmpeg decoded {frames} video frames");
        assert!(
            out.success() && frames >= 60,
            "ffmpeg over {url}: exit {}, {frames} frames\n{}",
            out.status,
            out.stderr
        );
    }

    // Verification is real: a client trusting another CA is refused (by
    // the client, after the server's side of the handshake is done).
    let stranger = TestPki::new("another CA");
    let stranger_ca = stranger.ca.display().to_string();
    let url = format!("https://localhost:{}/live/tls.flv", https.port());
    let out = ffmpeg::ffmpeg(
        &[
            "-tls_verify",
            "1",
            "-ca_file",
            &stranger_ca,
            "-i",
            &url,
            "-frames:v",
            "1",
            "-f",
            "null",
            "-",
        ],
        Duration::from_secs(10),
    )
    .await
    .expect("running ffmpeg");
    assert!(
        !out.success(),
        "ffmpeg trusting another CA played {url}: {}",
        out.stderr
    );
}

/// An edge in front of an origin with a certificate from another CA and
/// one with a certificate for another name refuses both (logged with the
/// reason, counted, never published to); with a good origin beside them
/// it serves every stream from the good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_refuses_origins_whose_certificate_does_not_verify() {
    let pki = TestPki::new("baton test CA");
    let stranger = TestPki::new("another CA");
    let good_cert = pki.issue("good", &NAMES);
    let foreign_cert = stranger.issue("foreign", &NAMES);
    let misnamed_cert = pki.issue("misnamed", &["origin.elsewhere.test"]);
    let mut origins = Vec::new();
    let mut specs = Vec::new();
    for cert in [&foreign_cert, &misnamed_cert, &good_cert] {
        let (rtmps, https) = (free_addr(), free_addr());
        let origin = Node::builder()
            .args(tls_origin_args(rtmps, https, cert))
            .start()
            .await;
        specs.push(format!("{rtmps},api={},tls", origin.api_addr()));
        origins.push(origin);
    }
    let ca = pki.ca.display().to_string();
    let edge_with = |specs: &[String]| {
        specs
            .iter()
            .fold(Node::edge_builder(), |edge, spec| {
                edge.arg("--origin").arg(spec)
            })
            .args(["--origin-ca", &ca, "--upstream-stall-timeout", "1s"])
    };

    // Only the bad ones: the publish is never forwarded to them.
    let bad_edge = edge_with(&specs[..2]).start().await;
    let feed = Feed::standard();
    feed.attach("bad-edge", &bad_edge.rtmp_url(APP, "refused"))
        .await
        .expect("the edge takes the publish itself");
    let refusals = eventually(Duration::from_secs(10), || async {
        let text = bad_edge.api_get("/metrics").await.text();
        let n = metric(&text, "baton_edge_origin_tls_refusals_total");
        (n >= 2.0).then_some(n)
    })
    .await;
    assert!(
        refusals.is_some(),
        "the edge did not refuse both origins\n{}",
        bad_edge.log_tail(40)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for origin in &origins[..2] {
        assert!(
            !origin.publishes(APP, "refused").await,
            "a publish reached an origin whose certificate does not verify"
        );
    }
    let log = bad_edge.log();
    for reason in ["UnknownIssuer", "not valid for name"] {
        assert!(
            log.contains("origin refused: TLS handshake failed") && log.contains(reason),
            "the edge log does not give the reason {reason}:\n{}",
            bad_edge.log_tail(40)
        );
    }
    feed.stop().await;

    // With the good one beside them: every stream is served, from it.
    let edge = edge_with(&specs).start().await;
    let feed = Feed::standard();
    let streams = ["s1", "s2", "s3", "s4"];
    for stream in streams {
        feed.attach(stream, &edge.rtmp_url(APP, stream))
            .await
            .expect("publishing to the edge");
    }
    let mut findings = Findings::default();
    for stream in streams {
        let watcher = Watcher::flv(stream, flv_player(&edge.flv_url(APP, stream)).await);
        findings.check(
            watcher
                .wait_frames(30, Duration::from_secs(15))
                .await
                .is_ok(),
            || format!("no frames of {stream} through the edge"),
        );
        findings.check(origins[2].publishes(APP, stream).await, || {
            format!("{stream} is not on the good origin")
        });
        for origin in &origins[..2] {
            findings.check(!origin.publishes(APP, stream).await, || {
                format!("{stream} reached an origin whose certificate does not verify")
            });
        }
    }
    findings.assert_none(&edge);
    feed.stop().await;
}

/// The certificate is replaced three ways under an HTTPS-FLV player: the
/// files change (picked up by the watcher), SIGHUP (files changed with
/// their old modification times, so only the signal can reload them), and
/// a broken file (refused, the last good certificate stays). New
/// connections see each new certificate; the player keeps playing
/// without a gap over 200 ms and without a lost or repeated frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_reloads_under_a_playing_tls_player() {
    let pki = TestPki::new("baton test CA");
    let first = pki.issue("origin", &NAMES);
    let (rtmps, https) = (free_addr(), free_addr());
    let mut args = tls_origin_args(rtmps, https, &first);
    args.extend(["--tls-watch-interval".to_string(), "200ms".to_string()]);
    let mut origin = Node::builder().args(args).start().await;
    let ca = pki.ca.clone();
    let sees = |expected: Vec<u8>| {
        let ca = ca.clone();
        async move {
            eventually(Duration::from_secs(5), || async {
                let leaf = presented_leaf(https, "localhost", &ca).await.ok()?;
                (leaf == expected).then_some(())
            })
            .await
            .is_some()
        }
    };
    assert!(
        sees(first.der.clone()).await,
        "the first certificate is not served"
    );

    let feed = Feed::standard();
    feed.attach("origin", &origin.rtmp_url(APP, "reload"))
        .await
        .expect("publishing");
    let url = format!("https://{https}/live/reload.flv");
    let player = FlvPlayer::connect_tls(&url, "localhost", &ca)
        .await
        .expect("HTTPS-FLV player");
    assert_eq!(player.status, 200);
    let watcher = Watcher::flv("https player", player);
    watcher
        .wait_frames(30, Duration::from_secs(10))
        .await
        .expect("the TLS player gets frames");
    let start = Instant::now();
    let mut findings = Findings::default();

    // 1. The files change.
    let second = pki.issue_to(&first.cert, &first.key, &NAMES);
    findings.check(sees(second.der.clone()).await, || {
        "a changed certificate file was not picked up".into()
    });

    // 2. SIGHUP: new files with the old modification times.
    let stamps = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let (cert_time, key_time) = (stamps(&first.cert), stamps(&first.key));
    let third = pki.issue_to(&first.cert, &first.key, &NAMES);
    for (path, time) in [(&first.cert, cert_time), (&first.key, key_time)] {
        if let Some(time) = time {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(time))
                .expect("restoring the modification time");
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_signal = presented_leaf(https, "localhost", &ca).await.ok();
    findings.check(before_signal.as_ref() == Some(&second.der), || {
        "the certificate changed without a change of modification time or a signal".into()
    });
    origin.signal(Signal::SIGHUP);
    findings.check(sees(third.der.clone()).await, || {
        "SIGHUP did not reload the certificate".into()
    });

    // 3. A broken certificate (by file change, then by SIGHUP): refused,
    //    the third stays.
    std::fs::write(&first.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("writing");
    let refused = eventually(Duration::from_secs(5), || async {
        origin
            .log()
            .contains("TLS certificate reload refused")
            .then_some(())
    })
    .await;
    findings.check(refused.is_some(), || {
        "the broken file was not refused in the log".into()
    });
    origin.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_broken = presented_leaf(https, "localhost", &ca).await.ok();
    findings.check(after_broken.as_ref() == Some(&third.der), || {
        "a broken certificate replaced the good one".into()
    });
    findings.check(origin.is_running(), || "the origin died".into());

    // The player never noticed.
    findings.check(
        watcher
            .wait_frames(30, Duration::from_secs(5))
            .await
            .is_ok(),
        || "the TLS player stopped receiving".into(),
    );
    findings.continuous(&watcher, start, "across the reloads");
    let seen = watcher.seen();
    println!(
        "https player: longest stall {:?}, {} frames",
        seen.max_stall, seen.indexed
    );
    findings.check(!watcher.is_ended(), || {
        format!("the TLS player was disconnected: {:?}", seen.ended)
    });
    findings.check(seen.max_stall <= Duration::from_millis(200), || {
        format!("the TLS player stalled {:?} (bound 200 ms)", seen.max_stall)
    });
    let metrics = origin.api_get("/metrics").await.text();
    println!(
        "reloads: {} ok, {} refused",
        metric(&metrics, "baton_tls_reloads_total{result=\"ok\"}"),
        metric(&metrics, "baton_tls_reloads_total{result=\"refused\"}")
    );
    findings.assert_none(&origin);
    feed.stop().await;
}

/// SIGQUIT with a TLS player: `/readyz` turns 503, new TLS connections
/// are still taken during `grace_start_wait` and refused after it, the
/// TLS player keeps playing and the process waits for it, then exits
/// once it and the publisher left, as for plain clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigquit_drains_tls_players_like_plain_ones() {
    let pki = TestPki::new("baton test CA");
    let cert = pki.issue("origin", &NAMES);
    let (rtmps, https) = (free_addr(), free_addr());
    let mut args = tls_origin_args(rtmps, https, &cert);
    args.extend(
        ["--grace-start-wait", "1s", "--grace-final-wait", "300ms"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut origin = Node::builder().args(args).start().await;
    let feed = Feed::standard();
    feed.attach("origin", &origin.rtmp_url(APP, "drain"))
        .await
        .expect("publishing");
    let url = format!("https://{https}/live/drain.flv");
    let player = FlvPlayer::connect_tls(&url, "localhost", &pki.ca)
        .await
        .expect("HTTPS-FLV player");
    let watcher = Watcher::flv("https player", player);
    watcher
        .wait_frames(30, Duration::from_secs(10))
        .await
        .expect("the TLS player gets frames");

    let quit = Instant::now();
    origin.signal(Signal::SIGQUIT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        origin.api_get("/readyz").await.status,
        503,
        "/readyz while draining"
    );
    assert!(
        presented_leaf(https, "localhost", &pki.ca).await.is_ok(),
        "a TLS connection was refused during grace_start_wait"
    );
    let closed = eventually(Duration::from_secs(3), || async {
        presented_leaf(https, "localhost", &pki.ca)
            .await
            .is_err()
            .then(|| quit.elapsed())
    })
    .await;
    println!("TLS listener closed {closed:?} after SIGQUIT");
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(900)),
        "the TLS listener did not close after grace_start_wait: {closed:?}"
    );
    let more = watcher.wait_frames(60, Duration::from_secs(5)).await;
    assert!(more.is_ok(), "the TLS player stopped during the drain");
    assert!(!watcher.is_ended(), "the drain cut the TLS player");
    assert!(
        origin.is_running(),
        "the origin exited with a TLS player on it"
    );

    let left = Instant::now();
    drop(watcher);
    feed.stop().await;
    let (status, _) = origin.expect_exit(Duration::from_secs(5)).await;
    println!("exited {:?} after the last client left", left.elapsed());
    assert!(status.success(), "drain exit status {status}");
}

/// A node whose certificate does not load does not start, and says why;
/// so does one with a TLS listener and no certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_stops_the_start_with_the_reason() {
    let pki = TestPki::new("baton test CA");
    let cert = pki.issue("origin", &NAMES);
    std::fs::write(
        &cert.key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .expect("breaking the key");
    let mut broken = Node::builder()
        .args(tls_origin_args(free_addr(), free_addr(), &cert))
        .spawn();
    let (status, _) = broken.expect_exit(Duration::from_secs(10)).await;
    let log = broken.log();
    assert!(!status.success(), "started with a broken key");
    assert!(
        log.contains("cannot read the private key") && log.contains("origin.key"),
        "the reason is not given:\n{log}"
    );

    let mut keyless = Node::builder()
        .args(["--rtmps", &free_addr().to_string()])
        .spawn();
    let (status, _) = keyless.expect_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(2),
        "a TLS listener without a certificate"
    );
    assert!(
        keyless.log().contains("--tls-cert and --tls-key"),
        "the reason is not given:\n{}",
        keyless.log()
    );
}
