//! What every player connection does between the hub and its socket,
//! whatever the protocol: take batches from its [`Subscriber`], honour
//! kicks and shutdown, bound how long it waits for a publisher, and at a
//! drain deadline stop cleanly at a keyframe boundary.
//!
//! The protocol glue (RTMP, HTTP-FLV) only turns the items into bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::{HubItem, SubscribeError, Subscriber};

use super::settings::Republish;
use super::ServerContext;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Most items taken from the hub for one write.
const MAX_BATCH: usize = 256;
/// At a drain deadline, how long a player may wait for a keyframe boundary.
const KEYFRAME_BOUNDARY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum Step {
    /// Items to write, in order, were appended to the caller's buffer.
    /// `then_stop` is set when the connection must end right after writing
    /// them.
    Items {
        then_stop: Option<&'static str>,
    },
    Stop(&'static str),
}

/// A stop signal, waited on for the whole play: registered once, not again
/// for every batch.
type StopSignal = Pin<Box<WaitForCancellationFutureOwned>>;

pub struct Playback {
    subscriber: Subscriber,
    close_all: StopSignal,
    kicked: StopSignal,
    close_players: StopSignal,
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
            close_all: Box::pin(ctx.shutdown.close_all.clone().cancelled_owned()),
            kicked: Box::pin(kick.cancelled_owned()),
            close_players: Box::pin(ctx.shutdown.close_players.clone().cancelled_owned()),
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

    /// Waits for the next items and appends them to `items` (the caller
    /// keeps one buffer for the life of the play: no allocation per batch).
    pub async fn next(&mut self, items: &mut Vec<HubItem>) -> Result<Step, SubscribeError> {
        let start = items.len();
        loop {
            let wait_deadline = self.unpublished_since.map(|t| t + self.play_wait_timeout);
            let closing_deadline = self.closing_since.map(|t| t + KEYFRAME_BOUNDARY_WAIT);
            tokio::select! {
                biased;
                _ = self.close_all.as_mut() => return Ok(Step::Stop("server shutting down")),
                _ = self.kicked.as_mut() => return Ok(Step::Stop("kicked through the API")),
                _ = self.close_players.as_mut(), if self.closing_since.is_none() => {
                    self.closing_since = Some(Instant::now());
                    continue;
                }
                _ = sleep_until_opt(wait_deadline) => return Ok(Step::Stop("no publisher within play_wait_timeout")),
                _ = sleep_until_opt(closing_deadline) => return Ok(Step::Stop("drain deadline")),
                result = self.subscriber.next_batch(items, start + MAX_BATCH) => result?,
            }
            if self.unpublish_ends_play && !self.is_waiting_for_publisher() {
                if let Some(at) = items[start..]
                    .iter()
                    .position(|i| matches!(i, HubItem::Unpublished))
                {
                    items.truncate(start + at + 1);
                    return Ok(Step::Items {
                        then_stop: Some("stream ended upstream"),
                    });
                }
            }
            for item in &items[start..] {
                match item {
                    HubItem::Unpublished => self.unpublished_since = Some(Instant::now()),
                    HubItem::Published => self.unpublished_since = None,
                    HubItem::Frame(_) => {}
                }
            }
            if self.closing_since.is_some() {
                if let Some(at) = items[start..]
                    .iter()
                    .position(|i| matches!(i, HubItem::Frame(f) if f.frame.is_keyframe()))
                {
                    items.truncate(start + at);
                    return Ok(Step::Items {
                        then_stop: Some("drain deadline (at a keyframe boundary)"),
                    });
                }
            }
            return Ok(Step::Items { then_stop: None });
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
