//! What crosses the edge, and what it refuses: Enhanced RTMP tags (FourCC
//! HEVC, multitrack, packet types the edge does not know) reach players
//! byte for byte through two edges and an origin, starting on the
//! ex-header keyframe; an "origin" that answers with garbage is treated as
//! a failed origin (logged, counted, skipped), never a crash, and the
//! stream is served from the healthy one.

use std::time::Duration;

use baton_common::media::{MediaFrame, MediaKind};
use baton_tests::play::{publisher, rtmp_player, send_all};
use baton_tests::{eventually, Node};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "live";

/// Frame `n` of an Enhanced RTMP HEVC stream with audio: every 10th video
/// frame a keyframe (ex header, `hvc1`, CodedFrames), every 7th a
/// multitrack tag (packet type 6), every 11th a packet type the edge does
/// not know (0x0e); the payload ends with `n` so every frame is unique.
fn ex_frames(n: u32) -> Vec<MediaFrame> {
    let ts = n * 40;
    let mut video = Vec::new();
    let first = if n.is_multiple_of(10) {
        0x91 // ex header, key frame, CodedFrames
    } else if n.is_multiple_of(7) {
        0xa6 // inter frame, Multitrack
    } else if n.is_multiple_of(11) {
        0xae // inter frame, unknown packet type 14
    } else {
        0xa1 // inter frame, CodedFrames
    };
    video.push(first);
    video.extend_from_slice(b"hvc1");
    video.extend_from_slice(&[0, 0, 0]);
    video.extend_from_slice(&[0x55; 300]);
    video.extend_from_slice(&n.to_be_bytes());
    let mut audio = vec![0xaf, 0x01, 0x21, 0x10];
    audio.extend_from_slice(&n.to_be_bytes());
    vec![
        MediaFrame::new(MediaKind::Video, ts, Bytes::from(video)),
        MediaFrame::new(MediaKind::Audio, ts + 3, Bytes::from(audio)),
    ]
}

fn headers() -> Vec<MediaFrame> {
    let mut hevc = vec![0x90]; // ex header, key frame, SequenceStart
    hevc.extend_from_slice(b"hvc1");
    hevc.extend_from_slice(&[0x01, 0x02, 0x03, 0x04]);
    vec![
        MediaFrame::new(MediaKind::Video, 0, Bytes::from(hevc)),
        MediaFrame::new(
            MediaKind::Audio,
            0,
            Bytes::from_static(&[0xaf, 0x00, 0x12, 0x10]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enhanced_rtmp_tags_cross_two_edges_byte_for_byte() {
    let origin = Node::start(&[]).await;
    let edge_a = Node::start_edge(&[&origin], &[]).await;
    let edge_b = Node::start_edge(&[&origin], &[]).await;
    let mut pub_ = publisher(&edge_a.rtmp_url(APP, "hevc")).await;
    send_all(&mut pub_, &headers()).await.expect("headers");
    let mut sent: Vec<MediaFrame> = Vec::new();
    for n in 0..30 {
        let frames = ex_frames(n);
        send_all(&mut pub_, &frames).await.expect("frames");
        sent.extend(frames);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut player = rtmp_player(&edge_b.rtmp_url(APP, "hevc")).await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 80 {
            match tokio::time::timeout(Duration::from_secs(5), player.next_frame()).await {
                Ok(Ok(Some(frame))) => got.push(frame),
                _ => break,
            }
        }
        got
    });
    for n in 30..80 {
        let frames = ex_frames(n);
        send_all(&mut pub_, &frames).await.expect("frames");
        sent.extend(frames);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let got = reader.await.expect("reader");
    let media: Vec<&MediaFrame> = got
        .iter()
        .filter(|f| f.kind != MediaKind::Data && !f.is_sequence_header())
        .collect();
    assert!(
        media.len() >= 40,
        "only {} frames through two edges",
        media.len()
    );
    let headers_seen: Vec<&MediaFrame> = got.iter().filter(|f| f.is_sequence_header()).collect();
    assert_eq!(
        headers_seen.iter().map(|f| &f.payload).collect::<Vec<_>>(),
        headers().iter().map(|f| &f.payload).collect::<Vec<_>>(),
        "the ex-header sequence start and AAC config arrive unchanged"
    );
    let first_video = media.iter().find(|f| f.is_video()).expect("video");
    assert!(
        first_video.is_keyframe(),
        "the player starts on the ex-header keyframe"
    );
    let start = sent
        .iter()
        .position(|f| f.payload == media[0].payload && f.kind == media[0].kind)
        .expect("the first frame the player got was sent");
    for (i, frame) in media.iter().enumerate() {
        let expected = &sent[start + i];
        assert_eq!(
            (frame.kind, frame.timestamp, &frame.payload),
            (expected.kind, expected.timestamp, &expected.payload),
            "frame {i} differs from what was published"
        );
    }
}

/// A TCP server that answers every connection with garbage where an RTMP
/// handshake should be.
async fn garbage_origin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&[0x03; 1]).await;
                let _ = socket.write_all(&[0xab; 8000]).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_sending_garbage_is_a_failed_origin_not_a_crash() {
    let garbage = garbage_origin().await;
    let good = Node::start(&[]).await;
    let garbage_arg = format!("{garbage}");
    let good_arg = format!("{},api={}", good.rtmp_addr(), good.api_addr());
    // Rendezvous ranks the garbage origin first for about half of the
    // streams (ports are random): publish until at least four streams were
    // served and one of them tried the garbage origin first.
    let edge = Node::edge_builder()
        .args(["--origin", &garbage_arg, "--origin", &good_arg])
        .start()
        .await;
    let tried_garbage = |log: &str| {
        log.contains("malformed data from origin") || log.contains("RTMP handshake failed")
    };
    let mut published = 0;
    let mut served = 0;
    for i in 0..32 {
        if published >= 4 && tried_garbage(&edge.log()) {
            break;
        }
        let stream = format!("g{i}");
        let mut pub_ = publisher(&edge.rtmp_url(APP, &stream)).await;
        let mut synth = baton_tests::Synth::new(baton_tests::SynthConfig::default());
        send_all(&mut pub_, &synth.headers())
            .await
            .expect("headers");
        for _ in 0..60 {
            let f = synth.next_frame();
            send_all(&mut pub_, &[f]).await.expect("frame");
        }
        published += 1;
        if eventually(Duration::from_secs(5), || async {
            good.publishes(APP, &stream).await.then_some(())
        })
        .await
        .is_some()
        {
            served += 1;
        }
    }
    assert_eq!(
        served,
        published,
        "every publish reached the healthy origin\n{}",
        edge.log_tail(40)
    );
    let log = edge.log();
    assert!(
        log.contains("malformed data from origin") || log.contains("RTMP handshake failed"),
        "the garbage origin's failure is logged with its reason\n{}",
        edge.log_tail(40)
    );
    let health = edge.api_json("/api/v1/upstreams").await;
    let origins = health["data"]["origins"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let bad = origins
        .iter()
        .find(|o| o["rtmp"] == garbage_arg.as_str())
        .expect("the garbage origin is listed");
    assert!(bad["failures"].as_u64().unwrap_or(0) >= 1, "{bad}");
    assert!(edge.is_healthy().await, "the edge still runs");
}
