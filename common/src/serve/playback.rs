//! What every player connection does between the hub and its socket,
//! whatever the protocol: take batches from its [`Subscriber`], honour
//! kicks and shutdown, bound how long it waits for a publisher, and at a
//! drain deadline stop cleanly at a keyframe boundary.
//!
//! The protocol glue (RTMP, HTTP-FLV) only turns the items into bytes.

use std::sync::Arc;
use std::time::Duration;

use crate::hub::{HubItem, SubscribeError, Subscriber};
use crate::lifecycle::Shutdown;

use super::settings::Republish;
use super::ServerContext;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most items taken from the hub for one write.
const MAX_BATCH: usize = 256;
/// At a drain deadline, how long a player may wait for a keyframe boundary.
const KEYFRAME_BOUNDARY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum Step {
    /// Items to write, in order. `then_stop` is set when the connection
    /// must end right after writing them.
    Items {
        items: Vec<HubItem>,
        then_stop: Option<&'static str>,
    },
    Stop(&'static str),
}

pub struct Playback {
    subscriber: Subscriber,
    shutdown: Shutdown,
    kick: CancellationToken,
    play_wait_timeout: Duration,
    /// End the play at the first unpublish (see
    /// [`super::StreamDirectory::unpublish_ends_play`]).
    unpublish_ends_play: bool,
    /// When the stream lost (or never had) its publisher.
    unpublished_since: Option<Instant>,
    closing_since: Option<Instant>,
}

impl Playback {
    pub fn new(ctx: &ServerContext, subscriber: Subscriber, kick: CancellationToken) -> Self {
        let published = subscriber.source().is_publishing();
        Playback {
            subscriber,
            shutdown: ctx.shutdown.clone(),
            kick,
            play_wait_timeout: ctx.settings.play_wait_timeout,
            unpublish_ends_play: ctx.streams.unpublish_ends_play()
                || ctx.settings.republish == Republish::End,
            unpublished_since: (!published).then(Instant::now),
            closing_since: None,
        }
    }

    pub fn source(&self) -> &Arc<crate::hub::Source> {
        self.subscriber.source()
    }

    /// Whether the play ends when the publisher leaves (rather than
    /// waiting for the next one, whose frames continue the timeline).
    pub fn ends_at_unpublish(&self) -> bool {
        self.unpublish_ends_play
    }

    pub fn is_waiting_for_publisher(&self) -> bool {
        self.unpublished_since.is_some()
    }

    pub async fn next(&mut self) -> Result<Step, SubscribeError> {
        let mut items = Vec::new();
        loop {
            let wait_deadline = self.unpublished_since.map(|t| t + self.play_wait_timeout);
            let closing_deadline = self.closing_since.map(|t| t + KEYFRAME_BOUNDARY_WAIT);
            tokio::select! {
                biased;
                _ = self.shutdown.close_all.cancelled() => return Ok(Step::Stop("server shutting down")),
                _ = self.kick.cancelled() => return Ok(Step::Stop("kicked through the API")),
                _ = self.shutdown.close_players.cancelled(), if self.closing_since.is_none() => {
                    self.closing_since = Some(Instant::now());
                    continue;
                }
                _ = sleep_until_opt(wait_deadline) => return Ok(Step::Stop("no publisher within play_wait_timeout")),
                _ = sleep_until_opt(closing_deadline) => return Ok(Step::Stop("drain deadline")),
                result = self.subscriber.next_batch(&mut items, MAX_BATCH) => result?,
            }
            if self.unpublish_ends_play && !self.is_waiting_for_publisher() {
                if let Some(at) = items.iter().position(|i| matches!(i, HubItem::Unpublished)) {
                    items.truncate(at + 1);
                    return Ok(Step::Items {
                        items,
                        then_stop: Some("stream ended upstream"),
                    });
                }
            }
            for item in &items {
                match item {
                    HubItem::Unpublished => self.unpublished_since = Some(Instant::now()),
                    HubItem::Published => self.unpublished_since = None,
                    HubItem::Frame(_) => {}
                }
            }
            if self.closing_since.is_some() {
                if let Some(at) = items
                    .iter()
                    .position(|i| matches!(i, HubItem::Frame(f) if f.frame.is_keyframe()))
                {
                    items.truncate(at);
                    return Ok(Step::Items {
                        items,
                        then_stop: Some("drain deadline (at a keyframe boundary)"),
                    });
                }
            }
            return Ok(Step::Items {
                items,
                then_stop: None,
            });
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
