//! A player's view of a source: a cursor into the source's ring, with the
//! slow-player policy applied as it reads.
//!
//! Policy, stated once: a player whose backlog exceeds the bound
//! (`max_queue_frames` / `max_queue_bytes`), or whose next frame was already
//! evicted, skips forward to the latest keyframe (or, if none is ahead of it,
//! to the live head and waits for the next keyframe), receiving the current
//! sequence headers again before it. Whole GOPs are dropped, never single
//! frames in the middle of one, so the decoder never sees a broken
//! reference chain. Each skip is logged and counted
//! (`baton_player_frames_dropped_total`, `baton_player_skips_total`); a player
//! that needs more than `max_player_skips` skips within a minute is
//! disconnected (`Error::TooSlow`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::source::{HubItem, Source, SourceState};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("player too slow: skipped {skips} times within {window:?}, {frames_dropped} frames dropped in all")]
    TooSlow {
        skips: usize,
        window: Duration,
        frames_dropped: u64,
    },
}

const SKIP_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Subscriber {
    source: Arc<Source>,
    cursor: u64,
    /// Items to deliver before reading the ring (headers at join or skip).
    pending: Vec<HubItem>,
    awaiting_keyframe: bool,
    recent_skips: Vec<Instant>,
    frames_dropped: u64,
    /// A relay (see `wakeup`): woken by every push, not per window.
    immediate: bool,
    /// The source's wake-up count when this player last took frames: it
    /// takes frames again only after the next wake-up, not whenever it
    /// finds new ones (see `wakeup`).
    seen_epoch: u64,
    /// Take frames without waiting: at join (the cached GOP), and when the
    /// last batch stopped at its item limit.
    take_now: bool,
}

impl Subscriber {
    pub(crate) fn join(source: Arc<Source>, resume_after: Option<u32>) -> Self {
        source.add_player();
        let state = source.lock();
        let mut pending: Vec<HubItem> = Vec::new();
        let resume_at = resume_after.and_then(|ts| state.keyframe_at_or_before(ts));
        let (cursor, awaiting_keyframe) = if let Some(seq) = resume_at {
            pending.extend(state.headers());
            (seq, false)
        } else if state.publisher.is_some() {
            let awaiting = state.gop_start.is_none() && state.has_video;
            // A player waiting for a keyframe gets the headers with it.
            if !awaiting {
                pending.extend(state.headers());
            }
            (
                state.gop_start.unwrap_or_else(|| state.head_seq()),
                awaiting,
            )
        } else {
            // Waiting for a publisher: start with its first keyframe, with
            // the headers in force then (a republish does not repeat
            // headers that did not change).
            (state.head_seq(), true)
        };
        drop(state);
        Subscriber {
            source,
            cursor,
            pending,
            awaiting_keyframe,
            recent_skips: Vec::new(),
            frames_dropped: 0,
            immediate: false,
            seen_epoch: 0,
            take_now: true,
        }
    }

    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// This subscriber relays the stream to another node (an edge's pull
    /// or forward): it is woken by every push instead of once per
    /// coalescing window, so only the node serving viewers coalesces.
    pub fn set_immediate(&mut self) {
        self.immediate = true;
    }

    /// The last batch stopped at its size limit: more is ready now.
    pub fn has_more_now(&self) -> bool {
        self.take_now
    }

    pub fn is_immediate(&self) -> bool {
        self.immediate
    }

    /// Whether the source woke its players since this one last took
    /// frames: a player that just parked takes them itself, or it would
    /// wait a whole window more.
    pub fn missed_a_wakeup(&self) -> bool {
        self.source
            .wakeup
            .epoch
            .load(std::sync::atomic::Ordering::Acquire)
            != self.seen_epoch
    }

    /// [`Subscriber::try_batch`] for a parked player written by the
    /// flusher: counts as this wake-up's take.
    pub fn take_round(
        &mut self,
        out: &mut Vec<HubItem>,
        max_items: usize,
    ) -> Result<(), SubscribeError> {
        self.seen_epoch = self
            .source
            .wakeup
            .epoch
            .load(std::sync::atomic::Ordering::Acquire);
        self.try_batch(out, max_items)?;
        self.take_now = out.len() >= max_items;
        Ok(())
    }

    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped
    }

    /// Wait until at least one item is available, then append them to
    /// `out` until it holds `max_items`.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<HubItem>,
        max_items: usize,
    ) -> Result<(), SubscribeError> {
        let source = self.source.clone();
        let before = out.len();
        loop {
            let notified = if self.immediate {
                source.wakeup.immediate.notified()
            } else {
                source.wakeup.players.notified()
            };
            tokio::pin!(notified);
            // Register interest before looking, so a push (or a wake-up)
            // between the look and the wait is not missed.
            notified.as_mut().enable();
            let epoch = source
                .wakeup
                .epoch
                .load(std::sync::atomic::Ordering::Acquire);
            if self.immediate || self.take_now || epoch != self.seen_epoch {
                self.seen_epoch = epoch;
                self.try_batch(out, max_items)?;
                self.take_now = out.len() >= max_items;
                if out.len() > before {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Append whatever is available now to `out`, until it holds
    /// `max_items`.
    pub fn try_batch(
        &mut self,
        out: &mut Vec<HubItem>,
        max_items: usize,
    ) -> Result<(), SubscribeError> {
        let source = self.source.clone();
        let state = source.lock();
        if self.is_lagging(&state) {
            self.skip_forward(&state)?;
        }
        out.append(&mut self.pending);
        let head = state.head_seq();
        while self.cursor < head && out.len() < max_items {
            let Some(entry) = state.entry(self.cursor) else {
                break;
            };
            self.cursor += 1;
            if self.awaiting_keyframe {
                match &entry.item {
                    HubItem::Frame(f)
                        if f.frame.is_keyframe() || (!state.has_video && f.frame.is_audio()) =>
                    {
                        self.awaiting_keyframe = false;
                        out.extend(state.headers());
                        if f.frame.is_sequence_header() {
                            // An audio-only stream's config is among the
                            // headers just sent.
                            continue;
                        }
                    }
                    // Metadata goes out with the headers at the keyframe
                    // (they carry the latest); passing it now as well would
                    // deliver it twice.
                    HubItem::Frame(f) if f.frame.is_metadata() => continue,
                    HubItem::Frame(f) if state.has_video || f.frame.is_video() => {
                        self.frames_dropped += 1;
                        metrics::counter!("baton_player_frames_dropped_total").increment(1);
                        continue;
                    }
                    _ => {}
                }
            }
            out.push(entry.item.clone());
        }
        Ok(())
    }

    fn is_lagging(&self, state: &SourceState) -> bool {
        let config = &self.source.config;
        if self.cursor < state.base_seq {
            return true;
        }
        let backlog_frames = state.head_seq().saturating_sub(self.cursor);
        let backlog_bytes = state
            .entry(self.cursor)
            .map_or(0, |e| state.total_bytes - e.offset);
        backlog_frames > config.max_queue_frames as u64
            || backlog_bytes > config.max_queue_bytes as u64
    }

    fn skip_forward(&mut self, state: &SourceState) -> Result<(), SubscribeError> {
        let now = Instant::now();
        self.recent_skips
            .retain(|t| now.duration_since(*t) < SKIP_WINDOW);
        self.recent_skips.push(now);
        let (target, awaiting) = match state.gop_start {
            Some(gop) if gop > self.cursor => (gop, false),
            _ => (state.head_seq(), state.has_video),
        };
        let dropped = target.saturating_sub(self.cursor);
        self.frames_dropped += dropped;
        metrics::counter!("baton_player_frames_dropped_total").increment(dropped);
        metrics::counter!("baton_player_skips_total").increment(1);
        tracing::warn!(
            stream = %self.source.key,
            dropped,
            skips_last_minute = self.recent_skips.len(),
            "player fell behind the live edge; skipped to a keyframe"
        );
        self.cursor = target;
        self.awaiting_keyframe = awaiting;
        self.pending.clear();
        if !awaiting {
            self.pending.extend(state.headers());
        }
        let max_skips = self.source.config.max_player_skips;
        if self.recent_skips.len() > max_skips {
            metrics::counter!("baton_players_disconnected_slow_total").increment(1);
            return Err(SubscribeError::TooSlow {
                skips: self.recent_skips.len(),
                window: SKIP_WINDOW,
                frames_dropped: self.frames_dropped,
            });
        }
        Ok(())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.source.remove_player();
    }
}
