//! Forwarding a publisher connected to the edge to one origin, and to the
//! next one when that origin fails, without the publisher noticing.
//!
//! The publisher publishes into the edge's hub like on an origin (so the
//! edge's own players get it directly); the forward is a cursor on that
//! source that sends every frame upstream, announcing the publish's
//! timeline id (`?baton_timeline=`) so every origin it lands on continues
//! the same timeline. The hub's ring is the publish buffer: when an origin
//! fails, the forward re-subscribes from the keyframe at or before the
//! frame it sent `publish_buffer` ago (what the lost origin may not have
//! passed on) and sends from there to the next origin; pulling edges drop
//! what they already had. A publisher that outlasts the ring during a long
//! outage loses its oldest whole GOPs, counted by the hub's slow-reader
//! policy (`baton_player_skips_total`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use baton_common::hub::{HubItem, StreamKey, Subscriber};
use baton_common::rtmp::client_session::ClientEvent;
use baton_common::serve::TIMELINE_PARAM;
use tokio::time::Instant;

use crate::locate::Purpose;
use crate::retry::OriginPicker;
use crate::settings::OriginAddr;
use crate::status::StatusCell;
use crate::streams::EdgeCore;
use crate::upstream::{fail_on_error, Upstream};

const SETUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most items taken from the hub per write.
const MAX_BATCH: usize = 256;

/// Why a forward session ended.
enum SessionEnd {
    /// The local publish ended (after its last frame went upstream).
    PublishEnded,
    Failed(String),
}

pub async fn run(core: Arc<EdgeCore>, key: StreamKey, timeline: String, status: StatusCell) {
    let mut forward = Forward {
        subscriber: core.hub.subscribe_resuming(&key, None),
        core,
        key,
        timeline,
        status,
        sent: VecDeque::new(),
    };
    let reason = forward.run().await;
    tracing::info!(stream = %forward.key, reason, "forward ended");
}

struct Forward {
    core: Arc<EdgeCore>,
    key: StreamKey,
    timeline: String,
    status: StatusCell,
    subscriber: Subscriber,
    /// (when, timestamp) of frames sent upstream within `publish_buffer`.
    sent: VecDeque<(Instant, u32)>,
}

impl Forward {
    async fn run(&mut self) -> &'static str {
        let mut picker = OriginPicker::new();
        loop {
            if !self.still_ours() {
                return "the publish ended";
            }
            if self.core.shutdown.close_all.is_cancelled() {
                return "edge shutting down";
            }
            let ranked = self.core.origins.rank(&self.key, Purpose::Publish);
            let Some(origin) = picker.next(&ranked).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match self.session(origin, &mut picker).await {
                SessionEnd::PublishEnded => return "the publisher left",
                SessionEnd::Failed(error) => {
                    tracing::warn!(stream = %self.key, origin = %origin.rtmp, error, "forward failed; moving to the next origin");
                    self.core.origins.report_failure(origin.rtmp, &error);
                    self.status.lost(&error);
                    metrics::counter!("baton_edge_upstream_failures_total", "direction" => "forward").increment(1);
                    self.rewind();
                }
            }
        }
    }

    /// The local source is still published by the publish this forward
    /// was started for.
    fn still_ours(&self) -> bool {
        self.subscriber.source().timeline().as_deref() == Some(self.timeline.as_str())
    }

    /// Re-subscribe from the keyframe at or before the frame sent
    /// `publish_buffer` ago (the oldest the lost origin may have dropped).
    fn rewind(&mut self) {
        let horizon = Instant::now()
            .checked_sub(self.core.settings.publish_buffer)
            .unwrap_or_else(Instant::now);
        let resume = self
            .sent
            .iter()
            .rev()
            .find(|(at, _)| *at <= horizon)
            .or(self.sent.front())
            .map(|(_, ts)| *ts);
        self.subscriber = self.core.hub.subscribe_resuming(&self.key, resume);
        self.sent.clear();
    }

    async fn session(&mut self, origin: OriginAddr, picker: &mut OriginPicker) -> SessionEnd {
        let stall = self.core.settings.upstream_stall_timeout;
        let mut upstream = match Upstream::open(origin, &self.key, stall, SETUP_TIMEOUT).await {
            Ok(upstream) => upstream,
            Err(error) => return SessionEnd::Failed(format!("{error:#}")),
        };
        let name = format!("{}?{TIMELINE_PARAM}={}", self.key.stream, self.timeline);
        if let Err(error) = upstream.publish(&name, SETUP_TIMEOUT).await {
            return SessionEnd::Failed(format!("{error:#}"));
        }
        tracing::info!(stream = %self.key, origin = %origin.rtmp, "forwarding the publish");
        self.status.serving(origin.rtmp);
        picker.succeeded();
        let mut items = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                biased;
                ready = upstream.readable() => {
                    if let Err(error) = ready {
                        return SessionEnd::Failed(format!("{error:#}"));
                    }
                    match upstream.poll_ready() {
                        Ok(events) => {
                            for event in events {
                                if let Err(error) = self.on_event(&event, origin) {
                                    return SessionEnd::Failed(format!("{error:#}"));
                                }
                            }
                        }
                        Err(error) => return SessionEnd::Failed(format!("{error:#}")),
                    }
                }
                batch = self.subscriber.next_batch(&mut items, MAX_BATCH) => {
                    if let Err(error) = batch {
                        // Past the ring's bound during an outage: the hub
                        // skipped whole GOPs (counted); start over at the
                        // current GOP.
                        tracing::warn!(stream = %self.key, %error, "publish buffer outrun; continuing from the current keyframe");
                        self.subscriber = self.core.hub.subscribe_resuming(&self.key, None);
                        continue;
                    }
                    for item in items.drain(..) {
                        match item {
                            HubItem::Frame(frame) => {
                                if let Err(error) = upstream.send(&frame.frame).await {
                                    return SessionEnd::Failed(format!("{error:#}"));
                                }
                                self.note_sent(frame.frame.timestamp);
                            }
                            HubItem::Unpublished => {
                                let _ = upstream.flush().await;
                                upstream.unpublish(&self.key.stream).await;
                                return SessionEnd::PublishEnded;
                            }
                            HubItem::Published => {}
                        }
                    }
                }
            }
            if let Err(error) = upstream.ping_if_quiet() {
                return SessionEnd::Failed(format!("{error:#}"));
            }
            if let Err(error) = upstream.flush().await {
                return SessionEnd::Failed(format!("{error:#}"));
            }
        }
    }

    fn on_event(&self, event: &ClientEvent, origin: OriginAddr) -> anyhow::Result<()> {
        if let ClientEvent::Status { code, .. } = event {
            if code == "NetConnection.Connect.ReconnectRequest" {
                tracing::info!(stream = %self.key, origin = %origin.rtmp, "origin asks to reconnect (drain or upgrade)");
                self.core.origins.set_draining(origin.rtmp, true);
            }
        }
        fail_on_error(event)
    }

    fn note_sent(&mut self, timestamp: u32) {
        let now = Instant::now();
        self.sent.push_back((now, timestamp));
        // Keep one entry older than the buffer (the rewind point).
        let horizon = now.checked_sub(self.core.settings.publish_buffer);
        while let (Some(horizon), Some(&(second, _))) = (horizon, self.sent.get(1)) {
            if second <= horizon {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }
}
