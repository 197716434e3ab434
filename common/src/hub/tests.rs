//! Hub behaviour: keyframe-first joins, shared bytes, ordering, the
//! slow-player policy, unpublish/republish and idle reaping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::media::{MediaFrame, MediaKind};

fn publisher_info() -> PublisherInfo {
    PublisherInfo {
        client_id: 1,
        peer: SocketAddr::from(([127, 0, 0, 1], 5000)),
        timeline: "t".into(),
    }
}

fn key() -> StreamKey {
    StreamKey::new("live", "test")
}

fn video_header() -> MediaFrame {
    MediaFrame::new(
        MediaKind::Video,
        0,
        Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
    )
}
fn audio_header() -> MediaFrame {
    MediaFrame::new(
        MediaKind::Audio,
        0,
        Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
    )
}
fn keyframe(ts: u32) -> MediaFrame {
    MediaFrame::new(
        MediaKind::Video,
        ts,
        Bytes::from(vec![0x17, 1, 0, 0, 0, 9, 9, 9]),
    )
}
fn inter(ts: u32) -> MediaFrame {
    MediaFrame::new(
        MediaKind::Video,
        ts,
        Bytes::from(vec![0x27, 1, 0, 0, 0, 8, 8]),
    )
}
fn audio(ts: u32) -> MediaFrame {
    MediaFrame::new(MediaKind::Audio, ts, Bytes::from(vec![0xaf, 1, 7, 7]))
}

fn frames(items: &[HubItem]) -> Vec<MediaFrame> {
    items
        .iter()
        .filter_map(|i| match i {
            HubItem::Frame(f) => Some(f.frame.clone()),
            _ => None,
        })
        .collect()
}

fn drain(sub: &mut Subscriber) -> Vec<HubItem> {
    let mut out = Vec::new();
    sub.try_batch(&mut out, usize::MAX).unwrap();
    out
}

#[test]
fn late_player_starts_with_headers_then_the_last_keyframe() {
    let hub = Hub::new(HubConfig::default());
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    publisher.push(video_header());
    publisher.push(audio_header());
    publisher.push(keyframe(0));
    publisher.push(inter(33));
    publisher.push(keyframe(66));
    publisher.push(audio(70));
    publisher.push(inter(100));

    let mut player = hub.subscribe(&key());
    let got = frames(&drain(&mut player));
    assert_eq!(got[0], video_header());
    assert_eq!(got[1], audio_header());
    assert_eq!(got[2], keyframe(66));
    assert_eq!(&got[3..], &[audio(70), inter(100)]);
}

#[test]
fn every_player_gets_every_frame_once_in_order_with_shared_bytes() {
    let hub = Hub::new(HubConfig::default());
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    publisher.push(video_header());
    publisher.push(keyframe(0));
    let mut a = hub.subscribe(&key());
    let mut b = hub.subscribe(&key());
    for ts in 1..100 {
        publisher.push(inter(ts * 33));
    }
    let items_a = drain(&mut a);
    let items_b = drain(&mut b);
    let got_a = frames(&items_a);
    assert_eq!(got_a.len(), 2 + 99);
    assert_eq!(got_a, frames(&items_b));
    let timestamps: Vec<u32> = got_a[1..].iter().map(|f| f.timestamp).collect();
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]));
    // The same allocation serves both players, and its encodings too.
    for (x, y) in items_a.iter().zip(&items_b) {
        if let (HubItem::Frame(x), HubItem::Frame(y)) = (x, y) {
            assert!(Arc::ptr_eq(x, y));
            assert_eq!(x.flv_tag().as_ptr(), y.flv_tag().as_ptr());
            assert_eq!(x.rtmp_chunks().as_ptr(), y.rtmp_chunks().as_ptr());
        }
    }
}

#[test]
fn second_publisher_is_refused_until_the_first_leaves() {
    let hub = Hub::new(HubConfig::default());
    let first = hub.publish(key(), publisher_info()).unwrap();
    assert_eq!(
        hub.publish(key(), publisher_info()).unwrap_err(),
        PublishError::AlreadyPublishing(key())
    );
    drop(first);
    assert!(hub.publish(key(), publisher_info()).is_ok());
}

#[test]
fn slow_player_skips_whole_gops_and_is_counted() {
    let config = HubConfig {
        max_queue_frames: 10,
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    publisher.push(video_header());
    publisher.push(keyframe(0));
    let mut slow = hub.subscribe(&key());
    // Falls 30 frames behind; a keyframe is at ts 1000.
    for ts in 1..20 {
        publisher.push(inter(ts));
    }
    publisher.push(keyframe(1000));
    for ts in 1001..1005 {
        publisher.push(inter(ts));
    }
    let got = frames(&drain(&mut slow));
    // Headers again, then the keyframe, then what followed: nothing between.
    assert_eq!(got[0], video_header());
    assert_eq!(got[1], keyframe(1000));
    assert_eq!(got.len(), 2 + 4);
    assert!(slow.frames_dropped() > 0);
}

#[test]
fn player_that_keeps_falling_behind_is_disconnected() {
    let config = HubConfig {
        max_queue_frames: 4,
        max_player_skips: 2,
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    let mut slow = hub.subscribe(&key());
    let mut result = Ok(());
    for round in 0..5 {
        publisher.push(keyframe(round * 100));
        for ts in 1..10 {
            publisher.push(inter(round * 100 + ts));
        }
        let mut out = Vec::new();
        result = slow.try_batch(&mut out, 1);
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(SubscribeError::TooSlow { .. })));
}

#[test]
fn players_stay_through_unpublish_and_get_the_next_publisher() {
    let hub = Hub::new(HubConfig::default());
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    publisher.push(video_header());
    publisher.push(keyframe(5000));
    let mut player = hub.subscribe(&key());
    drop(publisher);
    let items = drain(&mut player);
    assert!(matches!(items.last(), Some(HubItem::Unpublished)));

    // A player joining now gets nothing of the old timeline.
    let mut late = hub.subscribe(&key());
    assert!(drain(&mut late).is_empty());

    // A new publisher (another timeline) restarting at 0: players that
    // stayed continue one timeline (one frame interval after the last)
    // without the unchanged header again; the late joiner gets the header
    // with the first keyframe.
    let next = PublisherInfo {
        timeline: "t2".into(),
        ..publisher_info()
    };
    let publisher = hub.publish(key(), next).unwrap();
    publisher.push(video_header());
    publisher.push(keyframe(0));
    let spliced = MediaFrame {
        timestamp: 5000 + 33,
        ..keyframe(0)
    };
    let items = drain(&mut player);
    assert!(matches!(items.first(), Some(HubItem::Published)));
    assert_eq!(frames(&items), vec![spliced.clone()]);
    let items = drain(&mut late);
    assert!(matches!(items.first(), Some(HubItem::Published)));
    assert_eq!(frames(&items), vec![video_header(), spliced]);
}

#[test]
fn idle_sources_are_freed_after_the_timeout_and_not_before() {
    let config = HubConfig {
        source_idle_timeout: Duration::from_millis(100),
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    let player = hub.subscribe(&key());
    let later = Instant::now() + Duration::from_secs(10);
    assert_eq!(hub.reap_idle(later), 0, "in use");
    drop(publisher);
    assert_eq!(hub.reap_idle(later), 0, "player still attached");
    drop(player);
    assert_eq!(hub.reap_idle(Instant::now()), 0, "not idle long enough");
    assert_eq!(
        hub.reap_idle(Instant::now() + Duration::from_millis(150)),
        1
    );
    assert_eq!(hub.source_count(), 0);
}

#[test]
fn ring_stays_bounded_without_players() {
    let config = HubConfig {
        max_queue_frames: 50,
        gop_cache_max_frames: 100,
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    for gop in 0..20u32 {
        publisher.push(keyframe(gop * 1000));
        for ts in 1..30 {
            publisher.push(inter(gop * 1000 + ts));
        }
    }
    // One GOP (30 frames) plus at most the backlog bound before it.
    assert!(publisher.source().stats().cached_frames <= 50 + 30);
    // A GOP that never ends stops being cached instead of growing.
    for ts in 0..500 {
        publisher.push(inter(100_000 + ts));
    }
    assert!(publisher.source().stats().cached_frames <= 51);
}

#[tokio::test]
async fn waiting_player_wakes_on_push() {
    let hub = Hub::new(HubConfig::default());
    let mut player = hub.subscribe(&key());
    let hub2 = hub.clone();
    let pusher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let publisher = hub2.publish(key(), publisher_info()).unwrap();
        publisher.push(keyframe(0));
        publisher
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), player.next_batch(&mut out, 16))
        .await
        .expect("woken")
        .unwrap();
    assert!(!out.is_empty());
    drop(pusher.await.unwrap());
}

#[test]
fn without_gop_cache_a_player_gets_the_headers_once_with_the_next_keyframe() {
    let config = HubConfig {
        gop_cache: false,
        ..HubConfig::default()
    };
    let hub = Hub::new(config);
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    publisher.push(video_header());
    publisher.push(audio_header());
    publisher.push(keyframe(0));
    publisher.push(inter(33));
    let mut player = hub.subscribe(&key());
    publisher.push(audio(40));
    publisher.push(inter(66));
    publisher.push(keyframe(100));
    publisher.push(inter(133));
    let got = frames(&drain(&mut player));
    assert_eq!(
        got,
        vec![video_header(), audio_header(), keyframe(100), inter(133)]
    );
}

#[test]
fn memory_shedding_keeps_the_live_edge_and_the_ledger_follows() {
    let hub = Hub::new(HubConfig::default());
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    let mut player = hub.subscribe(&key());
    for gop in 0..4u32 {
        publisher.push(keyframe(gop * 1000));
        for ts in 1..100 {
            publisher.push(inter(gop * 1000 + ts));
        }
    }
    // The player is at the live edge, a few frames behind.
    let mut out = Vec::new();
    player.try_batch(&mut out, 100_000).unwrap();
    for ts in 3100..3110 {
        publisher.push(inter(ts));
    }
    let source = publisher.source().clone();
    let (held, backlog) = source.memory_use();
    assert!(backlog > 0 && held > backlog, "{held} {backlog}");
    assert_eq!(source.lock().memory.amount(), held);

    // The backlog goes, all but the live edge; the GOP stays.
    let freed = source.trim_backlog();
    let (held_after, _) = source.memory_use();
    assert_eq!(held - freed, held_after);
    assert_eq!(source.lock().memory.amount(), held_after);
    let gop_frames = 100 + 10;
    assert_eq!(source.stats().cached_frames, gop_frames);

    // Dropping the cache keeps the newest frames a player at the live
    // edge may not have read yet.
    source.drop_cache();
    assert_eq!(source.stats().cached_frames, source::LIVE_EDGE_FRAMES);
    assert!(source.lock().gop_start.is_none());
    // The player still gets the frames it had not read, in order, with
    // no skip.
    let mut out = Vec::new();
    player.try_batch(&mut out, 10_000).unwrap();
    let got: Vec<u32> = frames(&out).iter().map(|f| f.timestamp).collect();
    assert_eq!(got, (3100..3110).collect::<Vec<u32>>());
    assert_eq!(player.frames_dropped(), 0);
}

/// A player that comes back from a write and finds a frame that arrived
/// meanwhile waits for its next wake-up instead of writing it at once:
/// otherwise slow write rounds would double its writes.
#[tokio::test(start_paused = true)]
async fn a_player_takes_frames_once_per_window() {
    let budget = Duration::from_millis(80);
    let hub = Hub::new(HubConfig {
        write_coalesce: budget,
        ..HubConfig::default()
    });
    let publisher = hub.publish(key(), publisher_info()).unwrap();
    publisher.push(keyframe(0));
    let mut player = hub.subscribe(&key());
    let mut out = Vec::new();
    // Joining takes the cached GOP at once.
    player.next_batch(&mut out, 256).await.unwrap();
    assert!(!out.is_empty());
    out.clear();

    let window = tokio::time::Instant::now();
    publisher.push(inter(33));
    player.next_batch(&mut out, 256).await.unwrap();
    assert_eq!(window.elapsed(), budget, "woken at the end of the window");
    // A frame pushed after the wake-up, before the player looks again.
    publisher.push(inter(66));
    out.clear();
    let next = tokio::time::Instant::now();
    player.next_batch(&mut out, 256).await.unwrap();
    assert_eq!(frames(&out), vec![inter(66)]);
    assert_eq!(next.elapsed(), budget, "not taken before the next wake-up");
}
