//! Input hygiene and API protection, end to end on real processes:
//! publisher timestamps sanitized per track, names validated, HTTP-FLV of
//! an unpublished stream answered 404 at once without a phantom source
//! (origin and edge), the API's bearer token, readable RTMP errors before a
//! close, and the probes answering through a drain.

use std::time::{Duration, Instant};

use baton_common::amf0::Amf0Value;
use baton_common::media::{MediaFrame, MediaKind};
use baton_common::rtmp::chunk::RawMessage;
use baton_common::rtmp::client::{ClientError, RtmpPlayer, RtmpPublisher};
use baton_common::rtmp::message::{type_id, RtmpMessage};
use baton_tests::http::{self, HttpResponse};
use baton_tests::play::{
    flv_player, publisher, read_until_index, rtmp_player, send_all, send_paced,
};
use baton_tests::raw_rtmp::RawRtmp;
use baton_tests::synth::{frame_index, Synth};
use baton_tests::{eventually, within, Node, Origin, Signal};

const APP: &str = "live";
const READ_LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-token-0123456789abcdef";

fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Per track, timestamps never go backwards.
fn assert_monotonic_per_track(who: &str, frames: &[MediaFrame]) {
    for kind in [MediaKind::Video, MediaKind::Audio] {
        let ts: Vec<u32> = frames
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.timestamp)
            .collect();
        if let Some(at) = ts.windows(2).position(|w| w[1] < w[0]) {
            panic!(
                "{who}: {kind:?} timestamps go backwards at {at}: {:?}",
                &ts[at.saturating_sub(3)..(at + 4).min(ts.len())]
            );
        }
    }
}

/// A synthetic stream whose timestamps go through every pathology the
/// outside probe found: stuck at 0, a backward jump, +1 h, a wrap to near
/// 2^32, then sane again.
fn pathological_frames(synth: &mut Synth) -> Vec<MediaFrame> {
    let mut frames = synth.gops(6);
    let n = frames.len();
    let sixth = n / 6;
    for (i, frame) in frames.iter_mut().enumerate() {
        let phase = i / sixth;
        frame.timestamp = match phase {
            0 => frame.timestamp,
            1 => 0,                                                  // stuck at 0
            2 => frame.timestamp - 2_000,                            // backward
            3 => frame.timestamp + 3_600_000,                        // +1 h
            4 => frame.timestamp.wrapping_add(u32::MAX - 1_000_000), // near 2^32
            _ => frame.timestamp,
        };
    }
    frames
}

/// 1. Pathological timestamps are corrected per track at ingest: RTMP and
///    FLV players get monotonic timestamps and every frame; the
///    corrections are counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pathological_timestamps_reach_players_monotonic() {
    let origin = Origin::start(&[]).await;
    let url = origin.rtmp_url(APP, "clock");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let first = synth.gop();
    let mut publisher = publisher(&url).await;
    send_all(&mut publisher, &headers).await.expect("headers");
    send_all(&mut publisher, &first).await.expect("first GOP");
    let mut rtmp = rtmp_player(&url).await;
    let mut flv = flv_player(&origin.flv_url(APP, "clock")).await;
    let sent = pathological_frames(&mut synth);
    let last = sent.iter().rev().find_map(frame_index).expect("indexed");
    let (published, r, f) = tokio::join!(
        send_paced(&mut publisher, &sent, Duration::from_millis(2)),
        read_until_index(&mut rtmp, last, READ_LIMIT),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    published.expect("publishing");
    let r = r.expect("RTMP player frames");
    let f = f.expect("FLV player frames");
    assert_monotonic_per_track("RTMP player", &r);
    assert_monotonic_per_track("FLV player", &f);
    let indexes = |frames: &[MediaFrame]| frames.iter().filter_map(frame_index).count();
    assert!(
        indexes(&r) >= sent.len(),
        "RTMP player missed frames: {} of {}",
        indexes(&r),
        sent.len()
    );
    let metrics = origin.api_get("/metrics").await.text();
    for reason in ["stuck", "backward", "jump"] {
        let n = metric(
            &metrics,
            "baton_timestamp_corrections_total",
            &format!("reason=\"{reason}\""),
        );
        eprintln!("baton_timestamp_corrections_total{{reason={reason}}} = {n:?}");
        assert!(
            n.is_some_and(|n| n >= 1.0),
            "no {reason} correction counted"
        );
    }
    let log = origin.log();
    let logged = log.matches("publisher timestamp corrected").count();
    eprintln!("corrections logged: {logged} for {} frames", sent.len());
    assert!(
        (3..=20).contains(&logged),
        "corrections must be logged once per event, not per frame: {logged} lines"
    );
    publisher.close().await.ok();
}

/// 1b. `--timestamp-correction off` passes timestamps as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_correction_off_passes_timestamps_as_sent() {
    let origin = Origin::start(&["--timestamp-correction", "off"]).await;
    let url = origin.rtmp_url(APP, "raw");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut frames = synth.gops(2);
    for f in frames.iter_mut().skip(20) {
        f.timestamp = 0;
    }
    let mut publisher = publisher(&url).await;
    send_all(&mut publisher, &headers).await.expect("headers");
    let mut rtmp = rtmp_player(&url).await;
    let last = frames.iter().rev().find_map(frame_index).expect("indexed");
    let (published, got) = tokio::join!(
        send_paced(&mut publisher, &frames, Duration::from_millis(2)),
        read_until_index(&mut rtmp, last, READ_LIMIT),
    );
    published.expect("publishing");
    let got = got.expect("frames");
    assert_eq!(
        got.last().map(|f| f.timestamp),
        Some(0),
        "off rewrote timestamps"
    );
}

/// 1c. ffprobe over RTMP gets packets of a real H.264/AAC stream whose
///     publisher sends every timestamp as 0 (it got none in 9 s before).
#[cfg(feature = "interop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_reads_a_stream_stuck_at_zero() {
    use baton_common::flv::FlvReader;
    use baton_tests::ffmpeg;
    use bytes::BytesMut;

    let origin = Origin::start(&[]).await;
    let url = origin.rtmp_url(APP, "zero");
    let fixture = ffmpeg::fixture_flv().await;
    let mut buf = BytesMut::from(&std::fs::read(&fixture).expect("fixture")[..]);
    let mut reader = FlvReader::new();
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = reader.next_frame(&mut buf) {
        frames.push(frame);
    }
    assert!(frames.len() > 300, "fixture frames: {}", frames.len());
    let mut publisher = publisher(&url).await;
    let publish = tokio::spawn(async move {
        let started = Instant::now();
        for frame in frames {
            let due = Duration::from_millis(u64::from(frame.timestamp));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let zero = MediaFrame {
                timestamp: 0,
                ..frame
            };
            if publisher.send(&zero).await.is_err() || publisher.flush().await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = Instant::now();
    let out = ffmpeg::ffprobe(
        &[
            "-show_packets",
            "-show_entries",
            "packet=codec_type,dts",
            "-read_intervals",
            "%+#60",
            "-of",
            "json",
            &url,
        ],
        Duration::from_secs(9),
    )
    .await
    .expect("ffprobe over RTMP");
    let packets = out.json()["packets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    eprintln!(
        "ffprobe: {} packets in {:?} from a publisher stuck at timestamp 0",
        packets.len(),
        asked.elapsed()
    );
    assert!(packets.len() >= 30, "ffprobe got {} packets", packets.len());
    let video_dts: Vec<i64> = packets
        .iter()
        .filter(|p| p["codec_type"] == "video")
        .filter_map(|p| p["dts"].as_i64())
        .collect();
    assert!(
        video_dts.windows(2).all(|w| w[1] >= w[0]) && video_dts.first() != video_dts.last(),
        "video dts not advancing: {video_dts:?}"
    );
    publish.abort();
}

/// 2. Bad names: RTMP publish gets NetStream.Publish.BadName, play
///    StreamNotFound, HTTP-FLV 400; nothing shows up in the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_everywhere() {
    let origin = Origin::start(&["--play-wait-timeout", "1s"]).await;
    for name in ["a%00", "a b", "..", &"x".repeat(129)] {
        let url = origin.rtmp_url(APP, name);
        match within(
            Duration::from_secs(5),
            "bad publish",
            RtmpPublisher::connect(&url),
        )
        .await
        {
            Err(ClientError::Status { code, description }) => {
                assert_eq!(code, "NetStream.Publish.BadName", "{name:?}: {description}");
                assert!(description.contains("Invalid name"), "{description}");
            }
            Err(other) => panic!("publish {name:?}: expected BadName, got {other}"),
            Ok(_) => panic!("publish {name:?} was accepted"),
        }
        match within(
            Duration::from_secs(5),
            "bad play",
            RtmpPlayer::connect(&url),
        )
        .await
        {
            Err(ClientError::Status { code, .. }) => {
                assert_eq!(code, "NetStream.Play.StreamNotFound", "{name:?}")
            }
            Err(other) => panic!("play {name:?}: expected StreamNotFound, got {other}"),
            Ok(_) => panic!("play {name:?} was accepted"),
        }
    }
    for path in [
        "/live/..%2F..%2Fetc.flv",
        "/live/%00.flv",
        "/live/../x.flv",
        "/li%20ve/x.flv",
    ] {
        let response = http::get(&format!("http://{}{path}", origin.http_addr()))
            .await
            .expect("GET");
        assert!(
            response.status == 400 || response.status == 404,
            "GET {path}: {} {}",
            response.status,
            response.text()
        );
    }
    let response = http::get(&format!("http://{}/live/a%00b.flv", origin.http_addr()))
        .await
        .expect("GET");
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("invalid name"),
        "{}",
        response.text()
    );
    assert!(
        origin.streams().await.is_empty(),
        "bad names created sources: {:?}",
        origin.streams().await
    );
}

/// 3. HTTP-FLV of an unpublished stream: 404 at once, no source; with a
///    configured play wait it waits (see data_plane.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flv_of_an_unpublished_stream_is_404_at_once() {
    let origin = Origin::start(&[]).await;
    let started = Instant::now();
    let response = http::get(&origin.flv_url(APP, "nobody"))
        .await
        .expect("GET");
    let took = started.elapsed();
    eprintln!("origin: 404 after {took:?}");
    assert_eq!(response.status, 404, "{}", response.text());
    assert!(took < Duration::from_millis(500), "404 after {took:?}");
    assert!(
        origin.streams().await.is_empty(),
        "a phantom source was made"
    );
}

/// 3a. With the default (no wait for unpublished streams), an HTTP-FLV
///     player of a live stream still waits for the next publisher when
///     this one leaves: a republish from timestamp 0 continues its play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flv_players_still_wait_through_a_republish() {
    let origin = Origin::start(&[]).await;
    let url = origin.rtmp_url(APP, "again");
    let mut first = Synth::standard();
    let mut publisher1 = publisher(&url).await;
    send_all(&mut publisher1, &first.headers())
        .await
        .expect("headers");
    send_all(&mut publisher1, &first.gop()).await.expect("GOP");
    let mut flv = flv_player(&origin.flv_url(APP, "again")).await;
    publisher1.close().await.expect("unpublishing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = Synth::starting_at(10_000);
    let mut publisher2 = publisher(&url).await;
    send_all(&mut publisher2, &second.headers())
        .await
        .expect("headers");
    let sent = second.gops(2);
    let last = sent.iter().rev().find_map(frame_index).expect("indexed");
    let (published, got) = tokio::join!(
        send_paced(&mut publisher2, &sent, Duration::from_millis(3)),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    published.expect("republishing");
    let got = got.expect("the FLV player got the republished stream");
    assert_monotonic_per_track("FLV player across a republish", &got);
}

/// 3b. On an edge: a stream no origin has is 404 once the origins said
///     so; one an origin has is pulled on demand and played.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_http_flv_locates_on_origins_before_answering() {
    let origin = Origin::start(&[]).await;
    let edge = Node::start_edge(&[&origin], &[]).await;
    let started = Instant::now();
    let response = http::get(&edge.flv_url(APP, "nobody")).await.expect("GET");
    let took = started.elapsed();
    eprintln!("edge: 404 after {took:?}");
    assert_eq!(response.status, 404, "{}", response.text());
    assert!(took < Duration::from_millis(1500), "404 after {took:?}");
    assert!(
        edge.streams().await.is_empty(),
        "a phantom source on the edge"
    );

    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut publisher = publisher(&origin.rtmp_url(APP, "there")).await;
    send_all(&mut publisher, &headers).await.expect("headers");
    let gop = synth.gop();
    send_all(&mut publisher, &gop).await.expect("GOP");
    let seen = eventually(Duration::from_secs(5), || async {
        origin.publishes(APP, "there").await.then_some(())
    })
    .await;
    assert!(seen.is_some(), "the origin never listed the publish");
    let mut flv = flv_player(&edge.flv_url(APP, "there")).await;
    let more = synth.gops(2);
    let last = more.iter().rev().find_map(frame_index).expect("indexed");
    let (sent, got) = tokio::join!(
        send_paced(&mut publisher, &more, Duration::from_millis(5)),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    sent.expect("publishing");
    got.expect("the edge pulled the stream on demand");
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn api(node: &Node, method: &str, path: &str, auth: bool) -> HttpResponse {
    let url = node.api_url(path);
    let headers: Vec<(&str, String)> = if auth {
        vec![("Authorization", bearer())]
    } else {
        vec![]
    };
    http::request_with_headers(method, &url, &headers, None)
        .await
        .expect("API request")
}

/// 4. The API: writes need the token (403 without one configured, 401
///    with a wrong one); no CORS on API answers; a non-loopback API
///    refuses to start without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_writes_need_the_token_and_answers_have_no_cors() {
    let open = Origin::start(&[]).await;
    let r = api(&open, "DELETE", "/api/v1/clients/1", false).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("--api-token"), "{}", r.text());
    let r = api(&open, "GET", "/api/v1/streams", false).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "CORS on the API"
    );

    let locked = Origin::start(&["--api-token", TOKEN]).await;
    let r = api(&locked, "DELETE", "/api/v1/clients/987654", false).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = api(&locked, "DELETE", "/api/v1/clients/987654", true).await;
    assert_eq!(
        r.status,
        404,
        "authorized DELETE of an unknown client: {}",
        r.text()
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(api(&locked, "GET", path, false).await.status, 200, "{path}");
    }
    assert!(!locked.log().contains(TOKEN), "the token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_api_needs_a_token() {
    let ports = baton_tests::Ports::free();
    let public = baton_tests::Ports {
        api: format!("0.0.0.0:{}", ports.api.port())
            .parse()
            .expect("addr"),
        ..ports
    };
    let mut node = Origin::builder().ports(public).spawn();
    let (status, _) = node.expect_exit(Duration::from_secs(10)).await;
    let log = node.log();
    eprintln!("non-loopback API without a token: exit {status}");
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("--api-token"), "{log}");

    // With a token, reads of /api need it too (probes stay open).
    drop(node);
    let node = Origin::builder()
        .ports(public)
        .arg("--api-token")
        .arg(TOKEN)
        .start()
        .await;
    let url = format!("http://127.0.0.1:{}/api/v1/streams", ports.api.port());
    let r = http::request_with_headers("GET", &url, &[], None)
        .await
        .expect("GET");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = http::request_with_headers("GET", &url, &[("Authorization", bearer())], None)
        .await
        .expect("GET");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(node);
}

/// 4b. An edge reaches token-protected origin APIs with its token: its
///     lookup finds the stream, so HTTP-FLV on the edge plays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_uses_its_origin_api_token() {
    let ports = baton_tests::Ports::free();
    let origin = Origin::builder()
        .ports(baton_tests::Ports {
            api: format!("0.0.0.0:{}", ports.api.port()).parse().unwrap(),
            ..ports
        })
        .arg("--api-token")
        .arg(TOKEN)
        .start()
        .await;
    let edge = Node::edge_builder()
        .origin_addr(origin.rtmp_addr(), Some(ports.api))
        .arg("--origin-api-token")
        .arg(TOKEN)
        .start()
        .await;
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut publisher = publisher(&origin.rtmp_url(APP, "locked")).await;
    send_all(&mut publisher, &headers).await.expect("headers");
    send_all(&mut publisher, &synth.gop()).await.expect("GOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut flv = flv_player(&edge.flv_url(APP, "locked")).await;
    let more = synth.gops(2);
    let last = more.iter().rev().find_map(frame_index).expect("indexed");
    let (sent, got) = tokio::join!(
        send_paced(&mut publisher, &more, Duration::from_millis(5)),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    sent.expect("publishing");
    got.expect("edge playback through a token-protected origin API");
    let r = http::get(&edge.flv_url(APP, "absent")).await.expect("GET");
    assert_eq!(r.status, 404, "{}", r.text());
}

/// 4c. /healthz, /readyz and /metrics answer through a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_through_a_drain() {
    let mut origin =
        Origin::start(&["--grace-start-wait", "300ms", "--grace-final-wait", "2s"]).await;
    origin.signal(Signal::SIGQUIT);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(origin.is_running());
    assert_eq!(origin.api_get("/healthz").await.status, 200);
    assert_eq!(origin.api_get("/readyz").await.status, 503);
    let metrics = origin.api_get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("baton_draining 1"),
        "{}",
        metrics.text()
    );
    let (status, _) = origin.expect_exit(Duration::from_secs(10)).await;
    assert!(status.success());
}

async fn raw_connected(origin: &Origin) -> RawRtmp {
    let mut raw = RawRtmp::tcp(origin.rtmp_addr()).await.expect("connect");
    raw.handshake().await.expect("handshake");
    raw
}

/// Reads until an `_error` or error onStatus; returns (name, code,
/// description), then checks the server closed the connection.
async fn farewell(raw: &mut RawRtmp) -> (String, String, String) {
    let reply = within(Duration::from_secs(5), "the error reply", async {
        loop {
            match raw.read_message().await.expect("reading") {
                None => panic!("closed without an error reply"),
                Some(RtmpMessage::Command { name, args, .. })
                    if name == "_error" || name == "onStatus" =>
                {
                    let info = args.first().cloned().unwrap_or(Amf0Value::Null);
                    let text = |k: &str| {
                        info.get(k)
                            .and_then(Amf0Value::as_str)
                            .unwrap_or("")
                            .to_owned()
                    };
                    return (name, text("code"), text("description"));
                }
                Some(_) => {}
            }
        }
    })
    .await;
    raw.wait_closed(Duration::from_secs(5))
        .await
        .expect("closed after the reply");
    reply
}

/// 5. Protocol errors get a readable answer before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_explained_before_the_close() {
    let origin = Origin::start(&[]).await;

    let mut raw = raw_connected(&origin).await;
    raw.send(RtmpMessage::command(
        0,
        "play",
        3.0,
        Amf0Value::Null,
        vec![Amf0Value::string("x")],
    ))
    .await
    .expect("play");
    let (name, code, description) = farewell(&mut raw).await;
    eprintln!("play before connect: {name} {code} {description:?}");
    assert_eq!(
        (name.as_str(), code.as_str()),
        ("_error", "NetConnection.Call.Failed")
    );
    assert!(description.contains("before connect"), "{description}");

    let mut raw = raw_connected(&origin).await;
    let tc_url = format!("rtmp://{}/live", origin.rtmp_addr());
    raw.connect_app(APP, &tc_url).await.expect("connect");
    raw.send(RtmpMessage::SetChunkSize(0))
        .await
        .expect("chunk size");
    let (name, code, description) = farewell(&mut raw).await;
    eprintln!("chunk size 0: {name} {code} {description:?}");
    assert_eq!(name, "onStatus");
    assert!(description.contains("chunk size"), "{description}");

    let mut raw = raw_connected(&origin).await;
    raw.connect_app(APP, &tc_url).await.expect("connect");
    let mut payload = vec![0x02, 0x00, 0x04];
    payload.extend_from_slice(b"play");
    payload.push(0x00);
    payload.extend_from_slice(&7.0f64.to_be_bytes());
    payload.extend(std::iter::repeat_n([0x03u8, 0x00, 0x01, b'a'], 64).flatten());
    payload.push(0x05);
    payload.extend(std::iter::repeat_n([0x00u8, 0x00, 0x09], 64).flatten());
    raw.send_raw_message(&RawMessage {
        csid: 3,
        timestamp: 0,
        type_id: type_id::COMMAND_AMF0,
        stream_id: 0,
        payload: payload.into(),
    })
    .await
    .expect("deep command");
    let (name, code, description) = farewell(&mut raw).await;
    eprintln!("deep AMF0: {name} {code} {description:?}");
    assert_eq!(
        (name.as_str(), code.as_str()),
        ("_error", "NetConnection.Call.Failed")
    );
    assert!(origin.is_healthy().await);
}
