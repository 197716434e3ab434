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
use tokio_util::sync::CancellationToken;

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
    /// The stop signals' tokens, for a cheap look without polling.
    close_all: CancellationToken,
    close_players: CancellationToken,
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
            close_all: ctx.shutdown.close_all.clone(),
            close_players: ctx.shutdown.close_players.clone(),
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
            return Ok(self.settle(items, start));
        }
    }

    /// What the items appended to `items` since `start` mean for the
    /// play: publisher events noted, the batch cut where the play must
    /// end (an unpublish that ends it, a keyframe boundary at a drain).
    pub fn settle(&mut self, items: &mut Vec<HubItem>, start: usize) -> Step {
        if self.unpublish_ends_play && !self.is_waiting_for_publisher() {
            if let Some(at) = items[start..]
                .iter()
                .position(|i| matches!(i, HubItem::Unpublished))
            {
                items.truncate(start + at + 1);
                return Step::Items {
                    then_stop: Some("stream ended upstream"),
                };
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
                return Step::Items {
                    then_stop: Some("drain deadline (at a keyframe boundary)"),
                };
            }
        }
        Step::Items { then_stop: None }
    }

    /// Whether this play may be parked with its source's flusher (see
    /// `hub::direct`): playing a coalesced stream, caught up, with no
    /// publisher wait or drain in progress, and not a relay.
    pub fn can_park(&self) -> bool {
        self.unpublished_since.is_none()
            && self.closing_since.is_none()
            && !self.subscriber.is_immediate()
            && !self.subscriber.has_more_now()
            && self.subscriber.source().coalescing()
            && !self.stop_pending()
    }

    /// A stop signal fired that this play has not handled yet.
    pub fn stop_pending(&self) -> bool {
        self.close_all.is_cancelled() || self.close_players.is_cancelled() || self.kick.is_kicked()
    }

    /// See [`Subscriber::missed_a_wakeup`].
    pub fn missed_a_wakeup(&self) -> bool {
        self.subscriber.missed_a_wakeup()
    }

    /// A parked play's take, without waiting: appends what is pending to
    /// `items` and says whether it is plain frames the flusher may write
    /// (false: the items are the play's own task's to handle, through
    /// [`Playback::settle`]).
    pub fn take_round(&mut self, items: &mut Vec<HubItem>) -> Result<bool, SubscribeError> {
        let start = items.len();
        self.subscriber.take_round(items, start + MAX_BATCH)?;
        Ok(items.len() < start + MAX_BATCH
            && items[start..]
                .iter()
                .all(|i| matches!(i, HubItem::Frame(_))))
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
