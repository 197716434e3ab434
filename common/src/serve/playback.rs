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
use crate::kick::Kick;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use tokio::time::Instant;

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

/// Which stop signal fired.
enum Stop {
    CloseAll,
    Kicked,
    ClosePlayers,
}

/// The stop signals (shutdown, kick, drain), waited on for the whole play.
/// A `FuturesUnordered` polls only the signals that were woken, so the
/// wake-up a batch of frames causes does not poll (and lock) every token.
type StopSignals = FuturesUnordered<Pin<Box<dyn Future<Output = Stop> + Send + Sync>>>;

fn stop_signal(
    signal: impl Future<Output = ()> + Send + Sync + 'static,
    stop: Stop,
) -> Pin<Box<dyn Future<Output = Stop> + Send + Sync>> {
    Box::pin(async move {
        signal.await;
        stop
    })
}

pub struct Playback {
    subscriber: Subscriber,
    stops: StopSignals,
    kick: Kick,
    play_wait_timeout: Duration,
    /// End the play at the first unpublish (see
    /// [`super::StreamDirectory::unpublish_ends_play`]).
    unpublish_ends_play: bool,
    /// When the stream lost (or never had) its publisher.
    unpublished_since: Option<Instant>,
    closing_since: Option<Instant>,
}

impl Playback {
    pub fn new(ctx: &ServerContext, subscriber: Subscriber, kick: Kick) -> Self {
        let published = subscriber.source().is_publishing();
        Playback {
            subscriber,
            stops: [
                stop_signal(
                    ctx.shutdown.close_all.clone().cancelled_owned(),
                    Stop::CloseAll,
                ),
                stop_signal(kick.kicked_owned(), Stop::Kicked),
                stop_signal(
                    ctx.shutdown.close_players.clone().cancelled_owned(),
                    Stop::ClosePlayers,
                ),
            ]
            .into_iter()
            .collect(),
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

    /// Waits for the next items and appends them to `items` (the caller
    /// keeps one buffer for the life of the play: no allocation per batch).
    pub async fn next(&mut self, items: &mut Vec<HubItem>) -> Result<Step, SubscribeError> {
        let start = items.len();
        loop {
            let wait_deadline = self.unpublished_since.map(|t| t + self.play_wait_timeout);
            let closing_deadline = self.closing_since.map(|t| t + KEYFRAME_BOUNDARY_WAIT);
            tokio::select! {
                biased;
                Some(stop) = self.stops.next(), if !self.stops.is_empty() => match stop {
                    Stop::CloseAll => return Ok(Step::Stop("server shutting down")),
                    Stop::Kicked => return Ok(Step::Stop(self.kick.reason())),
                    Stop::ClosePlayers => {
                        self.closing_since.get_or_insert_with(Instant::now);
                        continue;
                    }
                },
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
