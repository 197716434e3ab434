//! Data-plane end-to-end tests: a real `baton-origin` on loopback, the
//! project's RTMP client and a raw HTTP-FLV player, synthetic media whose
//! frames carry their index.
//!
//! They pin down what a viewer sees: the GOP-cache start (headers, then the
//! last keyframe), every later frame exactly once with the publisher's
//! timestamps and bytes, identical fan-out, the publish/play status codes,
//! unpublish/republish, and that hostile or stuck clients cost only their
//! own connection. No ffmpeg here (see interop.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_common::amf0::Amf0Value;
use baton_common::media::{MediaFrame, MediaKind};
use baton_common::rtmp::chunk::RawMessage;
use baton_common::rtmp::client::{ClientError, RtmpPlayer, RtmpPublisher};
use baton_common::rtmp::message::RtmpMessage;
use baton_tests::check::{assert_playback, frame_summary, last_keyframe};
use baton_tests::http;
use baton_tests::play::{
    await_disconnect, flv_player, publish_until, publisher, read_until_announced, read_until_index,
    rtmp_player, send_all, send_paced,
};
use baton_tests::raw_rtmp::{Closed, RawRtmp};
use baton_tests::synth::{frame_index, Synth, SynthConfig};
use baton_tests::{eventually, within, FlvPlayer, Origin};
use bytes::{BufMut, BytesMut};
use serde_json::Value;
use tokio::sync::watch;

const APP: &str = "live";
const READ_LIMIT: Duration = Duration::from_secs(20);
const API_TOKEN: &str = "data-plane-token-0123456789";

fn last_index(frames: &[MediaFrame]) -> u32 {
    frames
        .iter()
        .rev()
        .find_map(frame_index)
        .expect("some indexed frame")
}

/// Waits until the origin has ingested at least `frames` frames of the
/// stream (so a player joining now sees them in the GOP cache).
async fn wait_ingested(origin: &Origin, stream: &str, frames: usize) {
    let seen = eventually(Duration::from_secs(10), || async {
        let s = origin.stream(APP, stream).await?;
        (s["frames"].as_u64()? >= frames as u64).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the origin did not report {frames} frames ingested for {stream}: {:?}",
        origin.stream(APP, stream).await
    );
}

/// Waits until `/api/v1/streams` reports `players` players on the stream.
async fn wait_players(origin: &Origin, stream: &str, players: u64) {
    let seen = eventually(Duration::from_secs(10), || async {
        let s = origin.stream(APP, stream).await?;
        (s["players"].as_u64()? == players).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the stream never reported {players} players: {:?}",
        origin.stream(APP, stream).await
    );
}

fn client_ids(clients: &[Value], kind: &str) -> Vec<u64> {
    clients
        .iter()
        .filter(|c| c["type"] == kind)
        .filter_map(|c| c["id"].as_u64())
        .collect()
}

/// 1. Players joining mid-GOP start with the headers and the last
///    keyframe, then get every later frame once, in order, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiners_start_at_the_cached_keyframe_and_miss_nothing() {
    let origin = Origin::start(&[]).await;
    let url = origin.rtmp_url(APP, "join");
    // The publisher's clock starts far from 0: players must see these
    // timestamps unchanged (no rebasing to the join point or to 0).
    let mut synth = Synth::new(SynthConfig {
        start_ms: 123_456,
        ..SynthConfig::default()
    });
    let headers = synth.headers();
    let mut publisher = publisher(&url).await;

    // Two whole GOPs and half of a third: the join point is mid-GOP.
    let mut sent = synth.gops(2);
    sent.extend(synth.frames(40));
    assert!(!sent.last().expect("frames").is_keyframe());
    send_all(&mut publisher, &headers)
        .await
        .expect("sending headers");
    send_all(&mut publisher, &sent)
        .await
        .expect("sending the first GOPs");
    wait_ingested(&origin, "join", headers.len() + sent.len()).await;
    let join_at = last_keyframe(&sent).expect("a keyframe was sent");
    assert!(join_at > 0, "the join keyframe is the second GOP's");

    let mut rtmp = rtmp_player(&url).await;
    let mut flv = flv_player(&origin.flv_url(APP, "join")).await;
    assert_eq!(flv.header("content-type"), Some("video/x-flv"));

    // Keep publishing (paced) while both play.
    let more = synth.gops(3);
    let last = last_index(&more);
    let publishing = async {
        send_paced(&mut publisher, &more, Duration::from_millis(3))
            .await
            .expect("publishing while players play");
    };
    let (_, rtmp_frames, flv_frames) = tokio::join!(
        publishing,
        read_until_index(&mut rtmp, last, READ_LIMIT),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    sent.extend(more);
    let rtmp_frames = rtmp_frames.expect("RTMP player frames");
    let flv_frames = flv_frames.expect("HTTP-FLV player frames");

    let r = assert_playback("RTMP player", &rtmp_frames, &headers, &sent);
    let f = assert_playback("HTTP-FLV player", &flv_frames, &headers, &sent);
    assert_eq!(
        r.start, join_at,
        "RTMP player must start at the last cached keyframe"
    );
    assert_eq!(
        f.start, join_at,
        "HTTP-FLV player must start at the last cached keyframe"
    );
    assert_eq!(
        r.start + r.media_frames,
        sent.len(),
        "RTMP player got every frame up to the last"
    );
    assert_eq!(
        f.start + f.media_frames,
        sent.len(),
        "FLV player got every frame up to the last"
    );
    let header = flv.file_header().expect("FLV file header received");
    assert_eq!(&header[..4], b"FLV\x01", "FLV signature and version");
    assert_eq!(
        header[4] & 0x05,
        0x05,
        "FLV header flags announce audio and video"
    );
    publisher.close().await.expect("closing the publisher");
}

/// 2. Forty players (20 RTMP, 20 HTTP-FLV, one of them an HTTP/1.0
///    client, which gets a close-delimited body) joining at the same point
///    get identical frame sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_gives_every_player_the_same_frames() {
    const EACH: usize = 20;
    let origin = Origin::start(&[]).await;
    let url = origin.rtmp_url(APP, "fan");
    let flv_url = origin.flv_url(APP, "fan");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut publisher = publisher(&url).await;
    let mut sent = synth.gop();
    sent.extend(synth.frames(10));
    send_all(&mut publisher, &headers).await.expect("headers");
    send_all(&mut publisher, &sent).await.expect("first GOP");
    wait_ingested(&origin, "fan", headers.len() + sent.len()).await;

    let more = synth.gops(2);
    let last = last_index(&more);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..EACH {
        let url = url.clone();
        tasks.spawn(async move {
            let mut p = rtmp_player(&url).await;
            let frames = read_until_index(&mut p, last, READ_LIMIT).await;
            (format!("RTMP player {i}"), frames)
        });
        let flv_url = flv_url.clone();
        tasks.spawn(async move {
            let mut p = if i == 0 {
                let p = FlvPlayer::connect_http10(&flv_url)
                    .await
                    .expect("HTTP/1.0 play");
                assert_eq!(p.status, 200);
                assert_eq!(
                    p.header("transfer-encoding"),
                    None,
                    "no chunking for HTTP/1.0"
                );
                p
            } else {
                flv_player(&flv_url).await
            };
            let frames = read_until_index(&mut p, last, READ_LIMIT).await;
            (format!("FLV player {i}"), frames)
        });
    }
    wait_players(&origin, "fan", 2 * EACH as u64).await;
    // Half, then every player that kept up is written by the stream's
    // flusher (parked), and the other half reaches them from there.
    let (first_half, second_half) = more.split_at(more.len() / 2);
    send_paced(&mut publisher, first_half, Duration::from_millis(3))
        .await
        .expect("publishing to 40 players");
    let parked = eventually(Duration::from_secs(10), || async {
        let s = origin.stream(APP, "fan").await?;
        (s["parked_players"].as_u64()? == 2 * EACH as u64).then_some(())
    })
    .await;
    assert!(
        parked.is_some(),
        "players that keep up are parked: {:?}",
        origin.stream(APP, "fan").await
    );
    send_paced(&mut publisher, second_half, Duration::from_millis(3))
        .await
        .expect("publishing to 40 parked players");
    sent.extend(more);

    let mut reference: Option<(String, Vec<MediaFrame>)> = None;
    let mut count = 0;
    while let Some(joined) = within(
        Duration::from_secs(30),
        "fan-out players",
        tasks.join_next(),
    )
    .await
    {
        let (who, frames) = joined.expect("player task panicked");
        let frames = frames.unwrap_or_else(|e| panic!("{who}: {e:#}"));
        let check = assert_playback(&who, &frames, &headers, &sent);
        assert_eq!(
            check.start + check.media_frames,
            sent.len(),
            "{who} got everything"
        );
        match &reference {
            None => reference = Some((who, frames)),
            Some((first, expected)) => assert!(
                &frames == expected,
                "{who} received a different sequence than {first}"
            ),
        }
        count += 1;
    }
    assert_eq!(count, 2 * EACH);
}

/// 3. A second publisher of the same name is refused with
///    NetStream.Publish.BadName; the first one and its players carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_gets_bad_name_and_the_first_is_unaffected() {
    let origin = Origin::start(&[]).await;
    let url = origin.rtmp_url(APP, "taken");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut first = publisher(&url).await;
    let mut sent = synth.gop();
    send_all(&mut first, &headers).await.expect("headers");
    send_all(&mut first, &sent).await.expect("first GOP");
    wait_ingested(&origin, "taken", headers.len() + sent.len()).await;
    let mut player = rtmp_player(&url).await;
    let mut flv = flv_player(&origin.flv_url(APP, "taken")).await;

    let second = within(
        Duration::from_secs(12),
        "second publish",
        RtmpPublisher::connect(&url),
    )
    .await;
    match second {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, "NetStream.Publish.BadName"),
        Err(other) => {
            panic!("second publisher: expected NetStream.Publish.BadName, got error {other}")
        }
        Ok(_) => panic!("second publisher of the same name was accepted"),
    }

    let more = synth.gops(2);
    let last = last_index(&more);
    let (published, rtmp_frames, flv_frames) = tokio::join!(
        send_paced(&mut first, &more, Duration::from_millis(2)),
        read_until_index(&mut player, last, READ_LIMIT),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    published.expect("the first publisher keeps publishing after the refused one");
    sent.extend(more);
    let r = assert_playback(
        "RTMP player",
        &rtmp_frames.expect("RTMP frames"),
        &headers,
        &sent,
    );
    let f = assert_playback(
        "FLV player",
        &flv_frames.expect("FLV frames"),
        &headers,
        &sent,
    );
    assert_eq!((r.start, f.start), (0, 0));
    let stream = origin.stream(APP, "taken").await.expect("stream listed");
    assert_eq!(stream["publish"]["active"], true);
    assert!(origin.is_healthy().await);
}

/// 4. Unpublished streams: RTMP play fails with StreamNotFound after the
///    play wait, HTTP-FLV GET with a 404 text body after the wait, HEAD at
///    once; published: HEAD 200 video/x-flv and GET with CORS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_streams_are_not_found_after_the_play_wait() {
    let origin = Origin::start(&["--play-wait-timeout", "1s"]).await;
    let url = origin.rtmp_url(APP, "nobody");
    let flv_url = origin.flv_url(APP, "nobody");

    let started = Instant::now();
    let result = within(
        Duration::from_secs(8),
        "play of an unpublished stream",
        RtmpPlayer::connect(&url),
    )
    .await;
    let waited = started.elapsed();
    match result {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, "NetStream.Play.StreamNotFound"),
        Err(other) => panic!("expected NetStream.Play.StreamNotFound, got error {other}"),
        Ok(_) => panic!("play of an unpublished stream succeeded"),
    }
    assert!(
        waited >= Duration::from_millis(800) && waited <= Duration::from_millis(2500),
        "StreamNotFound after {waited:?}, expected after the 1 s play wait"
    );

    let started = Instant::now();
    let response = http::get(&flv_url)
        .await
        .expect("GET of an unpublished stream");
    let waited = started.elapsed();
    assert_eq!(response.status, 404, "GET unpublished: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/")),
        "404 content type: {:?}",
        response.header("content-type")
    );
    assert!(!response.body.is_empty(), "404 has a text body");
    assert!(
        waited >= Duration::from_millis(800) && waited <= Duration::from_millis(2500),
        "HTTP-FLV 404 after {waited:?}, expected after the 1 s play wait"
    );

    let started = Instant::now();
    let response = http::head(&flv_url)
        .await
        .expect("HEAD of an unpublished stream");
    assert_eq!(response.status, 404);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "HEAD answers at once"
    );

    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut publisher = publisher(&origin.rtmp_url(APP, "somebody")).await;
    let sent = synth.gop();
    send_all(&mut publisher, &headers).await.expect("headers");
    send_all(&mut publisher, &sent).await.expect("a GOP");
    wait_ingested(&origin, "somebody", headers.len() + sent.len()).await;
    let live_url = origin.flv_url(APP, "somebody");

    let response = http::head(&live_url)
        .await
        .expect("HEAD of a published stream");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("video/x-flv"));
    assert!(response.body.is_empty());

    let mut flv = flv_player(&live_url).await;
    assert_eq!(flv.header("content-type"), Some("video/x-flv"));
    assert_eq!(
        flv.header("access-control-allow-origin"),
        Some("*"),
        "CORS header on GET"
    );
    assert_eq!(flv.header("transfer-encoding"), Some("chunked"));
    let frames = read_until_index(&mut flv, last_index(&sent), READ_LIMIT)
        .await
        .expect("FLV frames of the published stream");
    assert_playback("FLV player", &frames, &headers, &sent);
}

/// 5. Players waiting for a stream that gets published within the play
///    wait receive it from its first keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_players_get_a_stream_published_later() {
    let origin = Origin::start(&["--play-wait-timeout", "8s"]).await;
    let url = origin.rtmp_url(APP, "later");
    let flv_url = origin.flv_url(APP, "later");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let sent = synth.gops(2);
    let last = last_index(&sent);

    let rtmp_task = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut p = rtmp_player(&url).await;
            read_until_index(&mut p, last, READ_LIMIT).await
        })
    };
    let flv_task = tokio::spawn(async move {
        let mut p = flv_player(&flv_url).await;
        read_until_index(&mut p, last, READ_LIMIT).await
    });
    // Both are connected and waiting before anything is published.
    let waiting = eventually(Duration::from_secs(5), || async {
        (origin.clients().await.len() >= 2).then_some(())
    })
    .await;
    assert!(
        waiting.is_some(),
        "the two players never showed up in /api/v1/clients"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut publisher = publisher(&url).await;
    send_all(&mut publisher, &headers).await.expect("headers");
    send_paced(&mut publisher, &sent, Duration::from_millis(3))
        .await
        .expect("publishing");

    let rtmp_frames = within(READ_LIMIT, "RTMP waiting player", rtmp_task)
        .await
        .expect("RTMP player task")
        .expect("RTMP player frames");
    let flv_frames = within(READ_LIMIT, "FLV waiting player", flv_task)
        .await
        .expect("FLV player task")
        .expect("FLV player frames");
    let r = assert_playback("RTMP player", &rtmp_frames, &headers, &sent);
    let f = assert_playback("FLV player", &flv_frames, &headers, &sent);
    assert_eq!(
        (r.start, f.start),
        (0, 0),
        "waiting players start at the first keyframe"
    );
    assert_eq!(r.media_frames, sent.len());
    assert_eq!(f.media_frames, sent.len());
}

/// 6. When the publisher leaves, RTMP players get UnpublishNotify and stay;
///    a republish reaches them from its first keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_survive_unpublish_and_receive_the_republished_stream() {
    let origin = Origin::start(&["--play-wait-timeout", "10s"]).await;
    let url = origin.rtmp_url(APP, "again");
    let mut first = Synth::standard();
    let headers1 = first.headers();
    let sent1 = first.gops(2);
    let mut publisher1 = publisher(&url).await;
    send_all(&mut publisher1, &headers1).await.expect("headers");
    send_all(&mut publisher1, &sent1[..10])
        .await
        .expect("first frames");
    let mut player = rtmp_player(&url).await;
    let (published, frames) = tokio::join!(
        send_paced(&mut publisher1, &sent1[10..], Duration::from_millis(2)),
        read_until_index(&mut player, last_index(&sent1), READ_LIMIT),
    );
    published.expect("first publish");
    assert_playback(
        "RTMP player (first publish)",
        &frames.expect("first frames"),
        &headers1,
        &sent1,
    );

    publisher1.close().await.expect("unpublishing");
    // The player stays, hearing nothing (a legacy player such as ffmpeg
    // would end its play at an UnpublishNotify; Enhanced RTMP clients
    // that announced reconnect support are told, see the edge tests).
    let gap = tokio::time::timeout(Duration::from_millis(500), player.next_event()).await;
    assert!(
        gap.is_err(),
        "while no one publishes the player gets nothing: {gap:?}"
    );

    // Republish: new frame indexes, timestamps restart at 0. The player
    // that stayed gets one continuous timeline (`republish = "splice"`,
    // the default): the new publisher's frames shifted by one offset to
    // continue one frame interval after the last one it had, starting at
    // a keyframe, the unchanged headers not repeated.
    let last_before = sent1.last().map_or(0, |f| f.timestamp);
    let mut second = Synth::starting_at(100_000);
    let headers2 = second.headers();
    let sent2 = second.gops(2);
    let mut publisher2 = publisher(&url).await;
    send_all(&mut publisher2, &headers2)
        .await
        .expect("republish headers");
    let (published, frames) = tokio::join!(
        send_paced(&mut publisher2, &sent2, Duration::from_millis(2)),
        read_until_index(&mut player, last_index(&sent2), READ_LIMIT),
    );
    published.expect("republish");
    let frames = frames.expect("republished frames");
    assert!(
        frames.iter().all(|f| !f.is_sequence_header()),
        "unchanged headers repeated: {}",
        frame_summary(&frames)
    );
    let media: Vec<&MediaFrame> = frames
        .iter()
        .filter(|f| f.kind != MediaKind::Data)
        .collect();
    let first = media.first().expect("republished media");
    assert!(first.is_keyframe(), "the republish resumes at a keyframe");
    assert_eq!(
        frame_index(first),
        frame_index(&sent2[0]),
        "from its first keyframe"
    );
    let offset = i64::from(first.timestamp) - i64::from(sent2[0].timestamp);
    assert!(
        i64::from(first.timestamp) > i64::from(last_before),
        "the timeline continues after the first publisher's last frame ({last_before} ms): {}",
        frame_summary(&frames)
    );
    assert_eq!(media.len(), sent2.len(), "every republished frame once");
    for (got, sent) in media.iter().zip(&sent2) {
        assert_eq!(
            (got.kind, i64::from(got.timestamp), &got.payload),
            (sent.kind, i64::from(sent.timestamp) + offset, &sent.payload),
            "republished frames arrive shifted by one offset, bytes unchanged"
        );
    }
    publisher2.close().await.expect("closing");
}

/// Asserts the server closes `conn` quickly: well before the handshake
/// timeout, so the close is the answer to the violation, not to idleness.
async fn expect_closed(name: &str, origin: &Origin, conn: &mut RawRtmp) {
    let started = Instant::now();
    match conn.wait_closed(VIOLATION_CLOSE_LIMIT).await {
        Ok(Closed::Eof) | Ok(Closed::Error(_)) => {}
        Err(e) => panic!("{name}: {e} (origin log tail:\n{})", origin.log_tail(20)),
    }
    eprintln!("{name}: closed after {:?}", started.elapsed());
    assert!(
        origin.is_healthy().await,
        "{name}: the origin is no longer healthy"
    );
}

/// A connect command whose command object contains an unknown AMF0 marker.
fn malformed_connect() -> RawMessage {
    let mut body = BytesMut::new();
    body.put_u8(0x02);
    body.put_u16(7);
    body.put_slice(b"connect");
    body.put_u8(0x00);
    body.put_f64(1.0);
    body.put_u8(0x03);
    body.put_u16(3);
    body.put_slice(b"app");
    body.put_u8(0x99); // no such AMF0 marker
    body.put_slice(b"\x00\x04live");
    RawMessage {
        csid: 3,
        timestamp: 0,
        type_id: 20,
        stream_id: 0,
        payload: body.freeze(),
    }
}

/// Deterministic pseudo-random bytes.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fmt-0 chunk header on `csid` (2..=63) declaring a video message of
/// `length` bytes.
fn chunk_header(csid: u8, length: u32) -> Vec<u8> {
    let mut h = vec![csid & 0x3f, 0, 0, 0];
    h.extend_from_slice(&length.to_be_bytes()[1..]);
    h.push(9);
    h.extend_from_slice(&1u32.to_le_bytes());
    h
}

/// Protocol violations must be answered by closing within this; the
/// handshake timeout of the bad-input test is twice as long.
const VIOLATION_CLOSE_LIMIT: Duration = Duration::from_millis(1500);

/// 7. Hostile input closes only the offending connection: the healthy
///    publisher's players get every frame and the process stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let origin = Origin::start(&["--handshake-timeout", "3s"]).await;
    let addr = origin.rtmp_addr();
    let url = origin.rtmp_url(APP, "healthy");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut healthy = publisher(&url).await;
    send_all(&mut healthy, &headers).await.expect("headers");
    let first = synth.frames(1);
    send_all(&mut healthy, &first)
        .await
        .expect("first keyframe");
    wait_ingested(&origin, "healthy", headers.len() + 1).await;
    let mut rtmp = rtmp_player(&url).await;
    let mut flv = flv_player(&origin.flv_url(APP, "healthy")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (last_tx, last_rx) = watch::channel(None);
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let sent = publish_until(
                &mut healthy,
                &mut synth,
                Duration::from_millis(8),
                100,
                stop,
                last_tx,
            )
            .await;
            (healthy, sent)
        })
    };
    let rtmp_task = {
        let rx = last_rx.clone();
        tokio::spawn(
            async move { read_until_announced(&mut rtmp, rx, Duration::from_secs(40)).await },
        )
    };
    let flv_task = tokio::spawn(async move {
        read_until_announced(&mut flv, last_rx, Duration::from_secs(40)).await
    });

    // A connection that announces a 16 MiB message before it even
    // connected is closed at once (a peer is kept to 64 KiB messages until
    // `connect`), without the server waiting for (or allocating) them.
    let liar_started = Instant::now();
    let mut liar = RawRtmp::tcp(addr).await.expect("connect");
    liar.handshake().await.expect("handshake");
    let mut lie = chunk_header(6, 0x00ff_ffff);
    lie.extend_from_slice(&[0x17, 0x01, 0, 0, 0]);
    liar.write_raw(&lie)
        .await
        .expect("writing the lying header");
    let liar_task = tokio::spawn(async move {
        let closed = liar.wait_closed(Duration::from_secs(8)).await;
        (closed, liar_started.elapsed())
    });

    // Garbage instead of a handshake.
    let mut conn = RawRtmp::tcp(addr).await.expect("connect");
    let mut junk = vec![0x47];
    junk.extend(garbage(1536 + 100, 7));
    let _ = conn.write_raw(&junk).await;
    expect_closed("garbage handshake", &origin, &mut conn).await;

    // Set Chunk Size 0, and 0x7fffffff (over the 16 MiB limit).
    for size in [0u32, 0x7fff_ffff] {
        let mut conn = RawRtmp::tcp(addr).await.expect("connect");
        conn.handshake().await.expect("handshake");
        let _ = conn.send(RtmpMessage::SetChunkSize(size)).await;
        let _ = conn.write_raw(&garbage(300, u64::from(size) + 1)).await;
        expect_closed(&format!("Set Chunk Size {size:#x}"), &origin, &mut conn).await;
    }

    // Partial messages beyond the buffering bound: three 16 MiB - 1 byte
    // messages on different chunk streams, 12 MiB of each sent.
    {
        let mut conn = RawRtmp::tcp(addr).await.expect("connect");
        conn.handshake().await.expect("handshake");
        const CHUNK: usize = 4 * 1024 * 1024;
        let _ = conn.send(RtmpMessage::SetChunkSize(CHUNK as u32)).await;
        let body = garbage(CHUNK, 3);
        'attack: for csid in [10u8, 11, 12] {
            for part in 0..3 {
                let mut bytes = if part == 0 {
                    chunk_header(csid, 0x00ff_ffff)
                } else {
                    vec![0xc0 | csid]
                };
                bytes.extend_from_slice(&body);
                if conn.write_raw(&bytes).await.is_err() {
                    break 'attack; // already closed by the server
                }
            }
        }
        expect_closed("36 MiB of partial messages", &origin, &mut conn).await;
    }

    // connect with malformed AMF0.
    let mut conn = RawRtmp::tcp(addr).await.expect("connect");
    conn.handshake().await.expect("handshake");
    let _ = conn.send_raw_message(&malformed_connect()).await;
    expect_closed("connect with malformed AMF0", &origin, &mut conn).await;

    // publish (and play) before connect.
    for command in ["publish", "play"] {
        let mut conn = RawRtmp::tcp(addr).await.expect("connect");
        conn.handshake().await.expect("handshake");
        let _ = conn
            .send(RtmpMessage::command(
                1,
                command,
                0.0,
                Amf0Value::Null,
                vec![Amf0Value::string("healthy"), Amf0Value::string("live")],
            ))
            .await;
        expect_closed(&format!("{command} before connect"), &origin, &mut conn).await;
    }

    let (liar_closed, liar_after) = within(
        Duration::from_secs(10),
        "lying-length connection",
        liar_task,
    )
    .await
    .expect("liar task");
    if let Err(e) = liar_closed {
        panic!(
            "lying message length then stall: {e}\n{}",
            origin.log_tail(20)
        );
    }
    assert!(
        liar_after < Duration::from_millis(2500),
        "the lying connection was closed only after {liar_after:?}, by the handshake timeout"
    );

    stop.store(true, Ordering::SeqCst);
    let (healthy, sent) = within(Duration::from_secs(10), "healthy publisher", publishing)
        .await
        .expect("publisher task");
    let mut sent_all = first;
    sent_all.extend(sent.expect("the healthy publisher was never disturbed"));
    let rtmp_frames = within(Duration::from_secs(45), "healthy RTMP player", rtmp_task)
        .await
        .expect("RTMP task")
        .expect("healthy RTMP player frames");
    let flv_frames = within(Duration::from_secs(45), "healthy FLV player", flv_task)
        .await
        .expect("FLV task")
        .expect("healthy FLV player frames");
    let r = assert_playback("healthy RTMP player", &rtmp_frames, &headers, &sent_all);
    let f = assert_playback("healthy FLV player", &flv_frames, &headers, &sent_all);
    assert_eq!(r.start + r.media_frames, sent_all.len());
    assert_eq!(f.start + f.media_frames, sent_all.len());
    healthy
        .close()
        .await
        .expect("closing the healthy publisher");
    assert!(origin.is_healthy().await, "the origin survived all of it");
    let clients = origin.clients().await;
    assert!(
        clients.len() <= 3,
        "hostile connections left entries in /api/v1/clients: {clients:?}"
    );
}

/// 8. A player that never reads is disconnected (write timeout / skip
///    limit) and removed from the client list; healthy players are not
///    affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_never_reads_is_disconnected() {
    let origin = Origin::start(&["--player-write-timeout", "2s", "--max-queue-frames", "64"]).await;
    let url = origin.rtmp_url(APP, "stuck");
    let mut synth = Synth::new(SynthConfig {
        video_size: 16_000,
        audio_size: 400,
        ..SynthConfig::default()
    });
    let headers = synth.headers();
    let mut healthy = publisher(&url).await;
    send_all(&mut healthy, &headers).await.expect("headers");
    let first = synth.frames(1);
    send_all(&mut healthy, &first)
        .await
        .expect("first keyframe");
    wait_ingested(&origin, "stuck", headers.len() + 1).await;

    let mut rtmp = rtmp_player(&url).await;
    let mut flv = flv_player(&origin.flv_url(APP, "stuck")).await;
    let mut stuck = RawRtmp::tcp_with_recv_buffer(origin.rtmp_addr(), 4096)
        .await
        .expect("connect");
    stuck
        .start_player(APP, "stuck")
        .await
        .expect("the stuck player starts playing");
    let stuck_peer = stuck.local_addr().to_string();
    let listed = eventually(Duration::from_secs(5), || async {
        origin
            .clients()
            .await
            .into_iter()
            .find(|c| c["peer"] == stuck_peer.as_str())
    })
    .await
    .expect("the stuck player is listed in /api/v1/clients");
    assert_eq!(listed["type"], "rtmp-play");

    let stop = Arc::new(AtomicBool::new(false));
    let (last_tx, last_rx) = watch::channel(None);
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let sent = publish_until(
                &mut healthy,
                &mut synth,
                Duration::from_millis(8),
                100,
                stop,
                last_tx,
            )
            .await;
            (healthy, sent)
        })
    };
    let rtmp_task = {
        let rx = last_rx.clone();
        tokio::spawn(
            async move { read_until_announced(&mut rtmp, rx, Duration::from_secs(40)).await },
        )
    };
    let flv_task = tokio::spawn(async move {
        read_until_announced(&mut flv, last_rx, Duration::from_secs(40)).await
    });

    let started = Instant::now();
    let gone = eventually(Duration::from_secs(20), || async {
        let clients = origin.clients().await;
        (!clients.iter().any(|c| c["peer"] == stuck_peer.as_str())).then_some(())
    })
    .await;
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    assert!(
        gone.is_some(),
        "the never-reading player is still listed after 20 s of publishing:\n{}",
        origin.log_tail(20)
    );
    eprintln!("never-reading player removed after {took:?}");

    // Its socket is closed by the server (what was buffered drains first).
    let closed = stuck.wait_closed(Duration::from_secs(5)).await;
    assert!(
        closed.is_ok(),
        "the never-reading player's socket is still open: {closed:?}"
    );

    let (healthy, sent) = within(Duration::from_secs(10), "publisher", publishing)
        .await
        .expect("publisher task");
    let mut sent_all = first;
    sent_all.extend(sent.expect("publishing"));
    let total_bytes: usize = sent_all.iter().map(|f| f.payload.len()).sum();
    assert!(
        total_bytes > 2_000_000,
        "published only {total_bytes} bytes"
    );
    let rtmp_frames = within(Duration::from_secs(45), "healthy RTMP player", rtmp_task)
        .await
        .expect("RTMP task")
        .expect("healthy RTMP frames");
    let flv_frames = within(Duration::from_secs(45), "healthy FLV player", flv_task)
        .await
        .expect("FLV task")
        .expect("healthy FLV frames");
    let r = assert_playback("healthy RTMP player", &rtmp_frames, &headers, &sent_all);
    let f = assert_playback("healthy FLV player", &flv_frames, &headers, &sent_all);
    assert_eq!(r.start + r.media_frames, sent_all.len());
    assert_eq!(f.start + f.media_frames, sent_all.len());
    healthy.close().await.expect("closing");
}

/// 9. The API lists the stream with its codecs and players, kicks a client
///    by id, and answers bad requests with JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_lists_streams_and_clients_and_kicks_players() {
    let origin = Origin::start(&["--api-token", API_TOKEN]).await;
    // Writes need the token (reads on a loopback API do not).
    let delete = |path: String| {
        let url = origin.api_url(&path);
        async move {
            http::request_with_headers(
                "DELETE",
                &url,
                &[("Authorization", format!("Bearer {API_TOKEN}"))],
                None,
            )
            .await
        }
    };
    let url = origin.rtmp_url(APP, "api");
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut publisher = publisher(&url).await;
    let sent = synth.gop();
    send_all(&mut publisher, &headers).await.expect("headers");
    send_all(&mut publisher, &sent).await.expect("a GOP");
    wait_ingested(&origin, "api", headers.len() + sent.len()).await;
    let mut rtmp = rtmp_player(&url).await;
    let mut flv = flv_player(&origin.flv_url(APP, "api")).await;
    let last = last_index(&sent);
    read_until_index(&mut rtmp, last, READ_LIMIT)
        .await
        .expect("RTMP frames");
    read_until_index(&mut flv, last, READ_LIMIT)
        .await
        .expect("FLV frames");
    wait_players(&origin, "api", 2).await;

    let stream = origin.stream(APP, "api").await.expect("stream listed");
    assert_eq!(stream["publish"]["active"], true, "{stream}");
    assert_eq!(stream["video"]["codec"], "H264", "{stream}");
    assert_eq!(stream["audio"]["codec"], "AAC", "{stream}");
    assert_eq!(stream["players"], 2, "{stream}");
    let id = stream["id"].as_u64().expect("numeric stream id");
    let one = origin.api_json(&format!("/api/v1/streams/{id}")).await;
    assert_eq!(one["stream"]["name"], "api", "{one}");
    let listing = origin.api_json("/api/v1/streams").await;
    assert_eq!(listing["code"], 0);
    // One stream by name (what an edge asks to locate a stream).
    let named = origin
        .api_json(&format!("/api/v1/streams?app={APP}&name=api"))
        .await;
    let named = named["streams"].as_array().expect("a list");
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0]["id"], id, "{named:?}");
    let none = origin
        .api_json(&format!("/api/v1/streams?app={APP}&name=absent"))
        .await;
    assert_eq!(none["streams"], serde_json::json!([]), "{none}");

    let summaries = origin.api_json("/api/v1/summaries").await;
    let service = &summaries["data"]["service"];
    assert_eq!(service["publishers"], 1, "{summaries}");
    assert_eq!(service["players"], 2, "{summaries}");
    assert_eq!(service["streams"], 1, "{summaries}");

    let clients = origin.clients().await;
    assert_eq!(client_ids(&clients, "rtmp-publish").len(), 1, "{clients:?}");
    let rtmp_ids = client_ids(&clients, "rtmp-play");
    let flv_ids = client_ids(&clients, "flv-play");
    assert_eq!(rtmp_ids.len(), 1, "{clients:?}");
    assert_eq!(flv_ids.len(), 1, "{clients:?}");
    let flv_entry = clients
        .iter()
        .find(|c| c["type"] == "flv-play")
        .expect("flv client");
    assert_eq!(flv_entry["peer"], flv.local_addr().to_string().as_str());

    // Kick the RTMP player, then the FLV player.
    for (kind, id) in [("rtmp-play", rtmp_ids[0]), ("flv-play", flv_ids[0])] {
        let response = delete(format!("/api/v1/clients/{id}"))
            .await
            .expect("DELETE");
        assert_eq!(
            response.status,
            200,
            "DELETE {kind} {id}: {}",
            response.text()
        );
        assert_eq!(response.json()["code"], 0);
        let gone = eventually(Duration::from_secs(5), || async {
            (!origin.clients().await.iter().any(|c| c["id"] == id)).then_some(())
        })
        .await;
        assert!(gone.is_some(), "kicked {kind} {id} still listed");
    }
    await_disconnect(&mut rtmp, Duration::from_secs(5))
        .await
        .expect("the kicked RTMP player's connection is closed");
    await_disconnect(&mut flv, Duration::from_secs(5))
        .await
        .expect("the kicked FLV player's connection is closed");
    wait_players(&origin, "api", 0).await;

    let response = delete("/api/v1/clients/987654321".into())
        .await
        .expect("DELETE");
    assert_eq!(response.status, 404, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json()["code"], 404);
    let response = delete("/api/v1/clients/not-a-number".into())
        .await
        .expect("DELETE");
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.json()["code"], 400);
    let response = http::post(&origin.api_url("/api/v1/streams"), b"{}")
        .await
        .expect("POST");
    assert_eq!(
        response.status,
        401,
        "a write without the token: {}",
        response.text()
    );
    let response = http::request_with_headers(
        "POST",
        &origin.api_url("/api/v1/streams"),
        &[("Authorization", format!("Bearer {API_TOKEN}"))],
        Some(b"{}"),
    )
    .await
    .expect("POST");
    assert_eq!(response.status, 405, "{}", response.text());
    assert_eq!(response.json()["code"], 405);
    let response = http::get(&origin.api_url("/api/v1/streams/987654321"))
        .await
        .expect("GET");
    assert_eq!(response.status, 404, "{}", response.text());

    // The publisher was not touched by the kicks.
    let more = synth.frames(5);
    send_all(&mut publisher, &more)
        .await
        .expect("publishing after the kicks");
    assert_eq!(client_ids(&origin.clients().await, "rtmp-publish").len(), 1);
    publisher.close().await.expect("closing");
}

/// Health, readiness and versions answer while serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_versions() {
    let origin = Origin::start(&[]).await;
    let health = origin.api_get("/healthz").await;
    assert_eq!(health.status, 200);
    let ready = origin.api_get("/readyz").await;
    assert_eq!(ready.status, 200);
    let versions = origin.api_json("/api/v1/versions").await;
    assert_eq!(versions["code"], 0);
    assert!(versions["data"]["version"].is_string(), "{versions}");
    let metrics = origin.api_get("/metrics").await;
    assert_eq!(metrics.status, 200);
}
