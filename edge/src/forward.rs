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
use baton_common::kick::Kick;
use baton_common::rtmp::client_session::ClientEvent;
use baton_common::rtmp::session::RECONNECT_REQUEST;
use baton_common::serve::auth::{upstream_query, Action};
use baton_common::serve::TIMELINE_PARAM;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::locate::Purpose;
use crate::retry::OriginPicker;
use crate::settings::OriginAddr;
use crate::status::StatusCell;
use crate::streams::EdgeCore;
use crate::upstream::{fail_on_error, is_unauthorized, Upstream, MOVE_POLL};

const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A prepared next upstream: where, and the connection (publish accepted).
type Prepared = Result<(OriginAddr, Upstream), String>;
/// Most items taken from the hub per write.
const MAX_BATCH: usize = 256;

/// Why a forward session ended.
enum SessionEnd {
    /// The local publish ended (after its last frame went upstream).
    PublishEnded,
    Failed(String),
    /// The origin refused the publisher's credentials.
    Unauthorized(String),
}

pub async fn run(
    core: Arc<EdgeCore>,
    key: StreamKey,
    timeline: String,
    status: StatusCell,
    client_query: Option<String>,
    disconnect: Kick,
) {
    let mut forward = Forward {
        client_query,
        disconnect,
        subscriber: relay_subscriber(&core, &key, None),
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
    /// The publisher's query, passed on to the origins (their
    /// authorization).
    client_query: Option<String>,
    /// Ends the publisher's connection (an origin refused its credentials).
    disconnect: Kick,
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
            // The session may move (planned) to another origin: what fails
            // is the one it is on then.
            let Some(mut origin) = picker.next(&ranked).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match self.session(&mut origin, &mut picker).await {
                SessionEnd::PublishEnded => return "the publisher left",
                SessionEnd::Unauthorized(error) => {
                    // Not the origin's failure: every origin shares the
                    // settings. The publisher goes, as if refused here.
                    tracing::error!(stream = %self.key, origin = %origin.rtmp, error, "the origin refused the forwarded publish: not authorized (do the edge's and the origins' auth settings differ?); disconnecting the publisher");
                    metrics::counter!("baton_edge_upstream_unauthorized_total", "direction" => "forward").increment(1);
                    self.status.lost(&error);
                    self.disconnect
                        .kick("the origin refused the forwarded publish: not authorized");
                    return "the origin refused the publish: not authorized";
                }
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
        self.subscriber = relay_subscriber(&self.core, &self.key, resume);
        // The log is kept: if the next origin fails before anything new
        // was sent, the next rewind must reach back as far as this one.
    }

    /// Open `origin` and publish there under this publish's timeline id.
    async fn open(
        core: &EdgeCore,
        key: &StreamKey,
        timeline: &str,
        client_query: Option<&str>,
        origin: OriginAddr,
    ) -> anyhow::Result<Upstream> {
        let stall = core.settings.upstream_stall_timeout;
        let mut upstream =
            Upstream::open(&core.origin_tls, origin, key, stall, SETUP_TIMEOUT).await?;
        let client = upstream_query(&core.auth, Action::Publish, key, client_query)
            .map(|q| format!("{q}&"))
            .unwrap_or_default();
        let name = format!("{}?{client}{TIMELINE_PARAM}={timeline}", key.stream);
        upstream.publish(&name, SETUP_TIMEOUT).await?;
        Ok(upstream)
    }

    async fn session(&mut self, current: &mut OriginAddr, picker: &mut OriginPicker) -> SessionEnd {
        let mut origin = *current;
        let opened = Self::open(
            &self.core,
            &self.key,
            &self.timeline,
            self.client_query.as_deref(),
            origin,
        )
        .await;
        let mut upstream = match opened {
            Ok(upstream) => upstream,
            Err(error) if is_unauthorized(&error) => {
                return SessionEnd::Unauthorized(format!("{error:#}"))
            }
            Err(error) => return SessionEnd::Failed(format!("{error:#}")),
        };
        tracing::info!(stream = %self.key, origin = %origin.rtmp, "forwarding the publish");
        self.status.serving(origin.rtmp);
        picker.succeeded();
        let mut items = Vec::with_capacity(MAX_BATCH);
        // A make-before-break move under way (see `prepare_move`).
        let mut next: Option<oneshot::Receiver<Prepared>> = None;
        loop {
            if let Some(prepared) = next.as_mut().and_then(|rx| rx.try_recv().ok()) {
                next = None;
                match prepared {
                    Ok((to, new_upstream)) => {
                        tracing::info!(stream = %self.key, from = %origin.rtmp, to = %to.rtmp, "publish moved to the next upstream (make-before-break)");
                        // Send the new origin what the old one may not have
                        // passed on yet, then end the old publish politely.
                        self.rewind();
                        let old = std::mem::replace(&mut upstream, new_upstream);
                        old.unpublish(&self.key.stream).await;
                        origin = to;
                        *current = to;
                        self.status.serving(origin.rtmp);
                        metrics::counter!("baton_edge_planned_moves_total", "direction" => "forward").increment(1);
                    }
                    Err(error) => {
                        tracing::warn!(stream = %self.key, error, "the planned move failed; staying until this upstream ends");
                    }
                }
            }
            tokio::select! {
                biased;
                ready = upstream.readable() => {
                    if let Err(error) = ready {
                        return SessionEnd::Failed(format!("{error:#}"));
                    }
                    let events = match upstream.poll_ready() {
                        Ok(events) => events,
                        Err(error) => return SessionEnd::Failed(format!("{error:#}")),
                    };
                    for event in events {
                        if let Err(error) = fail_on_error(&event) {
                            return SessionEnd::Failed(format!("{error:#}"));
                        }
                        if let ClientEvent::Status { code, tc_url, .. } = &event {
                            if code == RECONNECT_REQUEST && next.is_none() {
                                let here = tc_url.is_some();
                                tracing::info!(stream = %self.key, origin = %origin.rtmp, same_address = here, "origin asks to reconnect (upgrade or drain); preparing the next upstream");
                                if !here {
                                    self.core.origins.set_draining(origin.rtmp, true);
                                }
                                next = Some(self.prepare_move(origin, here));
                            }
                        }
                    }
                }
                batch = self.subscriber.next_batch(&mut items, MAX_BATCH) => {
                    if let Err(error) = batch {
                        // Past the ring's bound during an outage: the hub
                        // skipped whole GOPs (counted); start over at the
                        // current GOP.
                        tracing::warn!(stream = %self.key, %error, "publish buffer outrun; continuing from the current keyframe");
                        self.subscriber = relay_subscriber(&self.core, &self.key, None);
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
                _ = tokio::time::sleep(MOVE_POLL), if next.is_some() => {}
            }
            if let Err(error) = upstream.ping_if_quiet() {
                return SessionEnd::Failed(format!("{error:#}"));
            }
            if let Err(error) = upstream.flush().await {
                return SessionEnd::Failed(format!("{error:#}"));
            }
        }
    }

    /// Start opening the next upstream in the background (the same
    /// address when a new generation serves it, else the best other
    /// origin); ready once the publish there was accepted.
    fn prepare_move(&self, from: OriginAddr, same_address: bool) -> oneshot::Receiver<Prepared> {
        let target = if same_address {
            Some(from)
        } else {
            self.core
                .origins
                .rank(&self.key, Purpose::Publish)
                .into_iter()
                .find(|o| o.rtmp != from.rtmp)
        };
        let (tx, rx) = oneshot::channel();
        let Some(target) = target else {
            let _ = tx.send(Err("no other origin to move to".into()));
            return rx;
        };
        let (core, key, timeline) = (self.core.clone(), self.key.clone(), self.timeline.clone());
        let client_query = self.client_query.clone();
        tokio::spawn(async move {
            let result = Self::open(&core, &key, &timeline, client_query.as_deref(), target)
                .await
                .map(|upstream| (target, upstream))
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(result);
        });
        rx
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

/// The forward's cursor on the edge's source: a relay, woken by every
/// push (the origin coalesces for its own players, if any).
fn relay_subscriber(core: &EdgeCore, key: &StreamKey, resume: Option<u32>) -> Subscriber {
    let mut subscriber = core.hub.subscribe_resuming(key, resume);
    subscriber.set_immediate();
    subscriber
}
