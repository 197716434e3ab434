//! Pulling one stream from the origins into the edge's hub, for as long
//! as the edge has players for it (plus `pull_linger`).
//!
//! The pull owns the local publish of the stream: players on the edge see
//! one publisher that never leaves while any origin can serve it. Each
//! upstream (a new origin after a failure, the same origin after a
//! republish) is a new session of the [`Splicer`], which keeps the
//! players' timeline continuous: nothing lost, nothing twice. When an
//! upstream fails the next origin is asked at once, with `?baton_resume=`
//! set to the last delivered timestamp so it replays from a keyframe at or
//! before it. Players are held through an outage up to
//! `upstream_outage_max`, then the stream ends cleanly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_common::hub::{PublishError, Publisher, PublisherInfo, StreamKey};
use baton_common::rtmp::client_session::ClientEvent;
use baton_common::serve::RESUME_PARAM;
use baton_common::splice::{Splicer, Verdict};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::locate::Purpose;
use crate::retry::OriginPicker;
use crate::settings::OriginAddr;
use crate::status::StatusCell;
use crate::streams::EdgeCore;
use crate::upstream::Upstream;

/// How often the pull looks at its clocks (linger, outage) while waiting.
const TICK: Duration = Duration::from_millis(100);
/// Bound on connecting to an origin and creating a stream.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared parts of a running pull.
#[derive(Clone)]
pub struct PullHandle {
    pub status: StatusCell,
    pub stop: CancellationToken,
    /// The local publish, once the first frame arrived; the directory
    /// refuses a local publisher of the same stream while it is held.
    pub publisher: Arc<Mutex<Option<Publisher>>>,
}

impl PullHandle {
    pub fn new() -> Self {
        PullHandle {
            status: StatusCell::new(crate::status::Direction::Pull),
            stop: CancellationToken::new(),
            publisher: Arc::new(Mutex::new(None)),
        }
    }

    pub fn is_delivering(&self) -> bool {
        self.publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// Why an upstream session ended.
enum SessionEnd {
    /// The pull is over (no players, stopped, outage too long).
    Done(&'static str),
    /// The origin failed: mark it and move on at once.
    Failed(String),
    /// The origin is fine but has no such stream: ask again.
    NotThere,
}

pub async fn run(core: Arc<EdgeCore>, key: StreamKey, handle: PullHandle) {
    let mut pull = Pull {
        core,
        key,
        handle,
        splicer: Splicer::new(),
        idle_since: None,
        outage_since: Some(Instant::now()),
        local_timeline: format!("{:016x}", rand::random::<u64>()),
    };
    let reason = pull.run().await;
    tracing::info!(stream = %pull.key, reason, "pull ended");
    // Dropping the local publish ends the stream for the edge's players.
    pull.handle
        .publisher
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
}

struct Pull {
    core: Arc<EdgeCore>,
    key: StreamKey,
    handle: PullHandle,
    splicer: Splicer,
    /// Since when the edge has no player of the stream.
    idle_since: Option<Instant>,
    /// Since when no upstream serves the stream (`None` while one does).
    outage_since: Option<Instant>,
    /// Timeline id of the edge's own (spliced) publish.
    local_timeline: String,
}

impl Pull {
    async fn run(&mut self) -> &'static str {
        let mut picker = OriginPicker::new();
        loop {
            if let Some(reason) = self.check_clocks() {
                return reason;
            }
            let origin = match self.choose(&mut picker).await {
                Some(origin) => origin,
                None => {
                    tokio::time::sleep(TICK).await;
                    continue;
                }
            };
            let end = self.session(origin).await;
            self.outage_since.get_or_insert_with(Instant::now);
            match end {
                SessionEnd::Done(reason) => return reason,
                SessionEnd::NotThere => {}
                SessionEnd::Failed(error) => {
                    tracing::warn!(stream = %self.key, origin = %origin.rtmp, error, "upstream failed; moving on");
                    self.core.origins.report_failure(origin.rtmp, &error);
                    self.handle.status.lost(&error);
                    metrics::counter!("baton_edge_upstream_failures_total", "direction" => "pull")
                        .increment(1);
                    continue;
                }
            }
            picker.succeeded();
        }
    }

    /// Where to look: an origin that publishes the stream now (asked over
    /// the API), else the rendezvous order, skipping those already tried.
    async fn choose(&self, picker: &mut OriginPicker) -> Option<OriginAddr> {
        let ranked = self.core.origins.rank(&self.key, Purpose::Pull);
        let holders = self.core.origins.holders(&self.key).await;
        let mut ordered: Vec<OriginAddr> = ranked
            .iter()
            .filter(|o| holders.contains(&o.rtmp))
            .copied()
            .collect();
        ordered.extend(ranked.iter().filter(|o| !holders.contains(&o.rtmp)));
        let stop = self.handle.stop.clone();
        tokio::select! {
            origin = picker.next(&ordered) => origin,
            _ = stop.cancelled() => None,
        }
    }

    /// Linger, outage and stop: the reasons to end the pull.
    fn check_clocks(&mut self) -> Option<&'static str> {
        if self.handle.stop.is_cancelled() || self.core.shutdown.close_all.is_cancelled() {
            return Some("stopped");
        }
        let players = self
            .core
            .hub
            .source(&self.key)
            .map_or(0, |s| s.player_count());
        let now = Instant::now();
        if players == 0 {
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) >= self.core.settings.pull_linger {
                return Some("no players for pull_linger");
            }
        } else {
            self.idle_since = None;
        }
        let outage = self
            .outage_since
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        if self.handle.is_delivering() && outage >= self.core.settings.upstream_outage_max {
            tracing::warn!(stream = %self.key, ?outage, "no origin served the stream for upstream_outage_max; ending it");
            metrics::counter!("baton_edge_outages_ended_total").increment(1);
            return Some("no origin within upstream_outage_max");
        }
        if !self.handle.is_delivering() && outage >= self.core.play_wait_timeout {
            return Some("no origin has the stream");
        }
        None
    }

    async fn session(&mut self, origin: OriginAddr) -> SessionEnd {
        let stall = self.core.settings.upstream_stall_timeout;
        let mut upstream = match Upstream::open(origin, &self.key, stall, SETUP_TIMEOUT).await {
            Ok(upstream) => upstream,
            Err(error) => return SessionEnd::Failed(format!("{error:#}")),
        };
        let name = match self.splicer.resume_point() {
            Some(ts) => format!("{}?{RESUME_PARAM}={ts}", self.key.stream),
            None => self.key.stream.clone(),
        };
        if let Err(error) = upstream.play(&name).await {
            return SessionEnd::Failed(format!("{error:#}"));
        }
        tracing::debug!(stream = %self.key, origin = %origin.rtmp, play = name, "pulling");
        loop {
            if let Some(reason) = self.check_clocks() {
                return SessionEnd::Done(reason);
            }
            let event = match upstream.next_event(Some(Instant::now() + TICK)).await {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(error) => return SessionEnd::Failed(format!("{error:#}")),
            };
            match event {
                ClientEvent::Media { frame, .. } => {
                    if let Err(end) = self.deliver(frame, origin) {
                        return end;
                    }
                }
                ClientEvent::Status {
                    code,
                    timeline,
                    level,
                    description,
                    ..
                } => match code.as_str() {
                    "NetStream.Play.Start" | "NetStream.Play.PublishNotify" => {
                        tracing::info!(stream = %self.key, origin = %origin.rtmp, code, timeline = timeline.as_deref(), "upstream serves the stream");
                        self.splicer.new_session(timeline);
                        self.handle.status.serving(origin.rtmp);
                        self.outage_since = None;
                    }
                    "NetStream.Play.UnpublishNotify" => {
                        tracing::info!(stream = %self.key, origin = %origin.rtmp, "upstream publisher left; holding players");
                        self.handle.status.lost("upstream publisher left");
                        self.outage_since.get_or_insert_with(Instant::now);
                    }
                    "NetConnection.Connect.ReconnectRequest" => {
                        tracing::info!(stream = %self.key, origin = %origin.rtmp, "origin asks to reconnect (drain or upgrade)");
                        self.core.origins.set_draining(origin.rtmp, true);
                    }
                    _ if level == "error" => {
                        tracing::debug!(stream = %self.key, origin = %origin.rtmp, code, description, "origin has no such stream");
                        return SessionEnd::NotThere;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// One upstream frame through the splicer into the local publish
    /// (claimed at the first delivered frame).
    fn deliver(
        &mut self,
        frame: baton_common::media::MediaFrame,
        origin: OriginAddr,
    ) -> Result<(), SessionEnd> {
        let verdict = self.splicer.push(frame);
        self.handle.status.lock().splice = self.splicer.stats();
        let Verdict::Deliver(frame) = verdict else {
            return Ok(());
        };
        let mut publisher = self
            .handle
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if publisher.is_none() {
            let info = PublisherInfo {
                client_id: 0,
                peer: origin.rtmp,
                timeline: self.local_timeline.clone(),
            };
            match self.core.hub.publish(self.key.clone(), info) {
                Ok(claimed) => *publisher = Some(claimed),
                Err(PublishError::AlreadyPublishing(_)) => {
                    return Err(SessionEnd::Done("a local publisher holds the stream"));
                }
            }
        }
        if let Some(publisher) = publisher.as_ref() {
            publisher.push(frame);
        }
        Ok(())
    }
}
