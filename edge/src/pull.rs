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
use baton_common::rtmp::session::RECONNECT_REQUEST;
use baton_common::serve::auth::{upstream_query, Action};
use baton_common::serve::{RELAY_PARAM, RESUME_PARAM};
use baton_common::splice::{Splicer, Verdict};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::locate::Purpose;
use crate::retry::OriginPicker;
use crate::settings::OriginAddr;
use crate::status::StatusCell;
use crate::streams::EdgeCore;
use crate::upstream::{fail_on_error, Upstream, MOVE_POLL};

/// How often the pull looks at its clocks (linger, outage) while waiting.
const TICK: Duration = Duration::from_millis(100);
/// Bound on connecting to an origin and creating a stream.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);
/// While the upstream has no publisher, how often to ask the origins
/// whether the stream is published elsewhere.
const RELOCATE_EVERY: Duration = Duration::from_millis(300);

/// A prepared next upstream: where, the connection (its Play.Start
/// consumed), and the timeline it announced.
type Prepared = Result<(OriginAddr, Upstream, Option<String>), String>;

/// A make-before-break move under way: where it goes (if anywhere) and
/// the prepared upstream once it serves the stream.
struct PendingMove {
    target: Option<OriginAddr>,
    ready: oneshot::Receiver<Prepared>,
}

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

pub async fn run(
    core: Arc<EdgeCore>,
    key: StreamKey,
    handle: PullHandle,
    client_query: Option<String>,
) {
    let mut pull = Pull {
        core,
        key,
        handle,
        client_query,
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
    /// The query of the player that started the pull, passed on to the
    /// origins (their authorization).
    client_query: Option<String>,
}

impl Pull {
    async fn run(&mut self) -> &'static str {
        let mut picker = OriginPicker::new();
        loop {
            if let Some(reason) = self.check_clocks() {
                return reason;
            }
            let Some(mut origin) = self.choose(&mut picker).await else {
                tokio::time::sleep(TICK).await;
                continue;
            };
            // The session may move (planned) to another origin: what fails
            // is the one it is on then.
            let end = self.session(&mut origin).await;
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
            // The outage bound holds while waiting to retry, too.
            _ = sleep_until_opt(self.outage_deadline()) => None,
        }
    }

    /// When the players are to be let go if no origin serves by then.
    fn outage_deadline(&self) -> Option<Instant> {
        let since = self.outage_since?;
        let bound = if self.handle.is_delivering() {
            self.core.settings.upstream_outage_max
        } else {
            self.core.play_wait_timeout
        };
        Some(since + bound)
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
        if self
            .outage_deadline()
            .is_some_and(|deadline| now >= deadline)
        {
            if !self.handle.is_delivering() {
                return Some("no origin has the stream");
            }
            let outage = self.outage_since.map(|t| now.duration_since(t));
            tracing::warn!(stream = %self.key, ?outage, "no origin served the stream for upstream_outage_max; ending it");
            metrics::counter!("baton_edge_outages_ended_total").increment(1);
            return Some("no origin within upstream_outage_max");
        }
        None
    }

    /// Open `origin` and ask it to play the stream from the last delivered
    /// timestamp on (it replays from a keyframe at or before it).
    async fn open(&self, origin: OriginAddr) -> anyhow::Result<Upstream> {
        let stall = self.core.settings.upstream_stall_timeout;
        // Within the outage bound: a blackholed origin must not hold the
        // players past it.
        let setup = self.outage_deadline().map_or(SETUP_TIMEOUT, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), SETUP_TIMEOUT)
        });
        let mut upstream =
            Upstream::open(&self.core.origin_tls, origin, &self.key, stall, setup).await?;
        upstream.play(&self.play_name()).await?;
        Ok(upstream)
    }

    /// `stream?{client's query}&baton_relay=1[&baton_resume=TS]`.
    fn play_name(&self) -> String {
        let client = upstream_query(
            &self.core.auth,
            Action::Play,
            &self.key,
            self.client_query.as_deref(),
        )
        .map(|q| format!("{q}&"))
        .unwrap_or_default();
        match self.splicer.resume_point() {
            Some(ts) => format!(
                "{}?{client}{RELAY_PARAM}=1&{RESUME_PARAM}={ts}",
                self.key.stream
            ),
            None => format!("{}?{client}{RELAY_PARAM}=1", self.key.stream),
        }
    }

    async fn session(&mut self, current: &mut OriginAddr) -> SessionEnd {
        let mut origin = *current;
        let mut upstream = match self.open(origin).await {
            Ok(upstream) => upstream,
            Err(error) => return SessionEnd::Failed(format!("{error:#}")),
        };
        tracing::debug!(stream = %self.key, origin = %origin.rtmp, "pulling");
        // A make-before-break move under way: the next upstream, handed
        // over once it serves the stream.
        let mut next: Option<PendingMove> = None;
        let mut last_relocate = Instant::now();
        loop {
            if let Some(reason) = self.check_clocks() {
                return SessionEnd::Done(reason);
            }
            if let Some(prepared) = next.as_mut().and_then(|m| m.ready.try_recv().ok()) {
                next = None;
                match prepared {
                    Ok(prepared) => upstream = self.adopt(prepared, &mut origin, current),
                    Err(error) => {
                        tracing::warn!(stream = %self.key, error, "the planned move failed; staying until this upstream ends");
                    }
                }
            }
            if self.outage_since.is_some() && last_relocate.elapsed() >= RELOCATE_EVERY {
                // The publisher left this origin: if it is publishing
                // elsewhere now, go there.
                last_relocate = Instant::now();
                let holders = self.core.origins.holders(&self.key).await;
                let move_goes_there = next
                    .as_ref()
                    .and_then(|m| m.target)
                    .is_some_and(|t| holders.contains(&t.rtmp));
                if move_goes_there {
                    // The publisher moved where our prepared upstream
                    // already waits: it is about to serve, so a lookup
                    // and a new connection would only be slower.
                    tracing::debug!(stream = %self.key, origin = %origin.rtmp, ?holders, "publisher moved; waiting for the prepared upstream");
                } else if !holders.is_empty() && !holders.contains(&origin.rtmp) {
                    tracing::info!(stream = %self.key, origin = %origin.rtmp, ?holders, "the stream is published on another origin now");
                    return SessionEnd::NotThere;
                }
            }
            // During a planned move, not a whole tick: waiting one on an
            // old upstream whose publisher left delayed the hand-over by up
            // to 100 ms (players stalled ~105 ms instead of ~45).
            let wait = if next.is_some() { MOVE_POLL } else { TICK };
            let event = match upstream.next_event(Some(Instant::now() + wait)).await {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(error) => {
                    // A drained origin may close the old upstream a moment
                    // before the prepared one announces the stream: that
                    // is still a planned move, so wait for it.
                    let Some(pending) = next.take().filter(|m| m.target.is_some()) else {
                        return SessionEnd::Failed(format!("{error:#}"));
                    };
                    tracing::info!(stream = %self.key, origin = %origin.rtmp, error = %format!("{error:#}"), "the old upstream ended first; waiting for the prepared one");
                    let prepared = tokio::select! {
                        prepared = pending.ready => prepared,
                        () = self.handle.stop.cancelled() => return SessionEnd::Done("stopped"),
                        () = self.core.shutdown.close_all.cancelled() => return SessionEnd::Done("stopped"),
                    };
                    match prepared {
                        Ok(Ok(prepared)) => {
                            upstream = self.adopt(prepared, &mut origin, current);
                            continue;
                        }
                        Ok(Err(why)) => {
                            return SessionEnd::Failed(format!(
                                "{error:#}; the planned move failed too: {why}"
                            ))
                        }
                        Err(_) => return SessionEnd::Failed(format!("{error:#}")),
                    }
                }
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
                    tc_url,
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
                    RECONNECT_REQUEST if next.is_none() => {
                        let here = tc_url.is_some();
                        tracing::info!(stream = %self.key, origin = %origin.rtmp, same_address = here, "origin asks to reconnect (upgrade or drain); preparing the next upstream");
                        if !here {
                            self.core.origins.set_draining(origin.rtmp, true);
                        }
                        next = Some(self.prepare_move(origin, here).await);
                    }
                    _ if level == "error" && code.ends_with(".Unauthorized") => {
                        tracing::warn!(stream = %self.key, origin = %origin.rtmp, code, description, "the origin refused the play: not authorized; ending the pull");
                        metrics::counter!("baton_edge_upstream_unauthorized_total", "direction" => "pull").increment(1);
                        return SessionEnd::Done("the origin refused the play: not authorized");
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

    /// Switch to a prepared upstream that serves the stream: the splicer
    /// starts a new session so nothing is repeated or skipped.
    fn adopt(
        &mut self,
        (to, upstream, timeline): (OriginAddr, Upstream, Option<String>),
        origin: &mut OriginAddr,
        current: &mut OriginAddr,
    ) -> Upstream {
        tracing::info!(stream = %self.key, from = %origin.rtmp, to = %to.rtmp, timeline = timeline.as_deref(), "moved to the next upstream (make-before-break)");
        *origin = to;
        *current = to;
        self.splicer.new_session(timeline);
        self.handle.status.serving(to.rtmp);
        self.outage_since = None;
        metrics::counter!("baton_edge_planned_moves_total", "direction" => "pull").increment(1);
        upstream
    }

    /// Start opening the next upstream in the background: the same
    /// address (a new generation serves it) or the best other origin.
    /// Ready once it announces the stream (Play.Start).
    async fn prepare_move(&self, from: OriginAddr, same_address: bool) -> PendingMove {
        let target = if same_address {
            Some(from)
        } else {
            let holders = self.core.origins.holders(&self.key).await;
            let ranked = self.core.origins.rank(&self.key, Purpose::Pull);
            ranked
                .iter()
                .filter(|o| o.rtmp != from.rtmp)
                .find(|o| holders.contains(&o.rtmp))
                .or_else(|| ranked.iter().find(|o| o.rtmp != from.rtmp))
                .copied()
        };
        let (tx, rx) = oneshot::channel();
        let Some(target) = target else {
            let _ = tx.send(Err("no other origin to move to".into()));
            return PendingMove {
                target: None,
                ready: rx,
            };
        };
        let stall = self.core.settings.upstream_stall_timeout;
        let (key, name) = (self.key.clone(), self.play_name());
        let tls = self.core.origin_tls.clone();
        let limit = self.core.play_wait_timeout;
        tokio::spawn(async move {
            let result = async {
                let mut upstream = Upstream::open(&tls, target, &key, stall, SETUP_TIMEOUT).await?;
                upstream.play(&name).await?;
                tokio::time::timeout(limit, async {
                    loop {
                        match upstream.next_event(None).await? {
                            Some(ClientEvent::Status { code, timeline, .. })
                                if code == "NetStream.Play.Start" =>
                            {
                                return Ok::<_, anyhow::Error>(timeline);
                            }
                            Some(event) => fail_on_error(&event)?,
                            None => {}
                        }
                    }
                })
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{} did not serve the stream within {limit:?}", target.rtmp)
                })?
                .map(|timeline| (target, upstream, timeline))
            }
            .await
            .map_err(|e: anyhow::Error| format!("{e:#}"));
            let _ = tx.send(result);
        });
        PendingMove {
            target: Some(target),
            ready: rx,
        }
    }

    /// One upstream frame through the splicer into the local publish
    /// (claimed at the first delivered frame).
    fn deliver(
        &mut self,
        frame: baton_common::media::MediaFrame,
        origin: OriginAddr,
    ) -> Result<(), SessionEnd> {
        let gaps_before = self.splicer.stats().resume_gaps;
        let verdict = self.splicer.push(frame);
        let stats = self.splicer.stats();
        if stats.resume_gaps > gaps_before {
            // A stated drop: the player was further behind than the new
            // upstream still had (the publish buffer), so the frames in
            // between are gone. Logged and counted, never silent.
            tracing::warn!(stream = %self.key, origin = %origin.rtmp, longest_gap_ms = stats.longest_resume_gap_ms, "the new upstream resumed after a gap: frames older than it still had are lost");
            metrics::counter!("baton_edge_resume_gaps_total").increment(1);
        }
        self.handle.status.lock().splice = stats;
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
