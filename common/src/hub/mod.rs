//! The stream hub: one source per `app/stream`, one publisher at a time,
//! any number of players, shared by the origin and (later) the edge.
//!
//! The hub owns the whole life of a source: created on the first publish or
//! play, kept while anyone uses it, and freed by [`Hub::reap_idle`] once it
//! has had neither publisher nor players for `source_idle_timeout`. Freed
//! means removed from the map, which drops its ring, GOP and headers (the
//! last `Arc` goes with the last subscriber). Players receive the
//! publisher's own timestamps and the very same encoded bytes; nothing in
//! the hub is per-player except a cursor.

mod direct;
mod frame;
mod source;
mod subscriber;
pub mod timestamps;
mod wakeup;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use direct::{prefetch_object, DirectPlayer};
pub use frame::{encode_rtmp, SharedFrame};
pub use source::{HubItem, PublisherInfo, Source, SourceStats};
pub use subscriber::{SubscribeError, Subscriber};

use crate::media::MediaFrame;

/// `app/stream`, the identity of a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub app: String,
    pub stream: String,
}

impl StreamKey {
    pub fn new(app: impl Into<String>, stream: impl Into<String>) -> Self {
        StreamKey {
            app: app.into(),
            stream: stream.into(),
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.stream)
    }
}

/// Bounds and policies of the hub. Every queue on the fan-out path is
/// bounded by these numbers.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Keep the frames since the last keyframe so new players start at once.
    pub gop_cache: bool,
    pub gop_cache_max_frames: usize,
    pub gop_cache_max_bytes: usize,
    /// How far (frames / payload bytes) a player may fall behind the live
    /// head before it is skipped forward to a keyframe.
    pub max_queue_frames: usize,
    pub max_queue_bytes: usize,
    /// Skips within a minute after which a player is disconnected.
    pub max_player_skips: usize,
    /// How long a source with no publisher and no players is kept.
    pub source_idle_timeout: Duration,
    /// Write latency budget: players are woken (one timer per source) once
    /// the oldest frame they have not been given is this old, or sooner
    /// once a full write's worth is pending, or once it and a small slack
    /// have passed since the last write (see `wakeup`), so each write
    /// carries everything since the last. Zero wakes players on every
    /// frame.
    pub write_coalesce: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            gop_cache: true,
            gop_cache_max_frames: 8192,
            gop_cache_max_bytes: 32 * 1024 * 1024,
            max_queue_frames: 1024,
            max_queue_bytes: 16 * 1024 * 1024,
            max_player_skips: 8,
            source_idle_timeout: Duration::from_secs(3),
            write_coalesce: Duration::from_millis(80),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("stream {0} is already being published")]
    AlreadyPublishing(StreamKey),
}

#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    config: Arc<HubConfig>,
    sources: Mutex<HashMap<StreamKey, Arc<Source>>>,
    next_source_id: AtomicU64,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("sources", &self.source_count())
            .finish()
    }
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Hub {
            inner: Arc::new(HubInner {
                config: Arc::new(config),
                sources: Mutex::new(HashMap::new()),
                next_source_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    fn sources(&self) -> MutexGuard<'_, HashMap<StreamKey, Arc<Source>>> {
        self.inner
            .sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn source_or_create(&self, key: &StreamKey) -> Arc<Source> {
        let mut sources = self.sources();
        if let Some(source) = sources.get(key) {
            return source.clone();
        }
        let id = self.inner.next_source_id.fetch_add(1, Ordering::Relaxed);
        let source = Arc::new(Source::new(id, key.clone(), self.inner.config.clone()));
        sources.insert(key.clone(), source.clone());
        metrics::counter!("baton_sources_created_total").increment(1);
        metrics::gauge!("baton_streams").set(sources.len() as f64);
        tracing::debug!(stream = %key, source_id = id, "source created");
        source
    }

    /// Claim the stream for a publisher. Fails if another publisher holds it.
    pub fn publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
    ) -> Result<Publisher, PublishError> {
        let source = self.source_or_create(&key);
        if !source.begin_publish(publisher) {
            return Err(PublishError::AlreadyPublishing(key));
        }
        Ok(Publisher { source })
    }

    /// Attach a player. The source is created if it does not exist yet, so
    /// a player may wait for a publisher (the caller bounds that wait).
    pub fn subscribe(&self, key: &StreamKey) -> Subscriber {
        Subscriber::join(self.source_or_create(key), None)
    }

    /// Attach a player that already has the stream up to timestamp
    /// `resume_after` (an edge re-attaching after a failover): it starts at
    /// the latest cached keyframe at or before that point, so it misses
    /// nothing, and drops what it already has itself. Without such a
    /// keyframe it starts like any player.
    pub fn subscribe_resuming(&self, key: &StreamKey, resume_after: Option<u32>) -> Subscriber {
        Subscriber::join(self.source_or_create(key), resume_after)
    }

    pub fn source(&self, key: &StreamKey) -> Option<Arc<Source>> {
        self.sources().get(key).cloned()
    }

    pub fn source_by_id(&self, id: u64) -> Option<Arc<Source>> {
        self.sources().values().find(|s| s.id == id).cloned()
    }

    pub fn source_count(&self) -> usize {
        self.sources().len()
    }

    /// Every source now (for the memory governor).
    pub fn sources_snapshot(&self) -> Vec<Arc<Source>> {
        self.sources().values().cloned().collect()
    }

    pub fn stats(&self) -> Vec<SourceStats> {
        let sources: Vec<Arc<Source>> = self.sources().values().cloned().collect();
        let mut stats: Vec<SourceStats> = sources.iter().map(|s| s.stats()).collect();
        stats.sort_by_key(|s| s.id);
        stats
    }

    /// Free every source idle for longer than `source_idle_timeout`.
    /// Returns how many were freed.
    pub fn reap_idle(&self, now: Instant) -> usize {
        let timeout = self.inner.config.source_idle_timeout;
        let mut sources = self.sources();
        let before = sources.len();
        sources.retain(|key, source| {
            let idle_since = source.lock().idle_since;
            let expired = idle_since.is_some_and(|t| now.duration_since(t) >= timeout);
            if expired {
                tracing::debug!(stream = %key, source_id = source.id, "source freed after idle timeout");
            }
            !expired
        });
        let freed = before - sources.len();
        shrink_if_mostly_empty(&mut sources);
        if freed > 0 {
            metrics::counter!("baton_sources_freed_total").increment(freed as u64);
            metrics::gauge!("baton_streams").set(sources.len() as f64);
        }
        freed
    }

    /// Run [`Hub::reap_idle`] periodically until the returned task is
    /// aborted or the runtime ends.
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        let period = (self.inner.config.source_idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Trim again on the tick after a reap: what the freed sources
            // held (their tasks, the last frames in flight) is released a
            // little after they leave the map.
            let mut trim_again = false;
            loop {
                ticker.tick().await;
                let freed = hub.reap_idle(Instant::now()) > 0;
                if freed || trim_again {
                    crate::telemetry::release_free_memory();
                }
                trim_again = freed;
            }
        })
    }
}

/// Give back a map's table once it is mostly empty, so a burst of streams
/// or clients does not keep its peak-sized table for the process's life.
pub(crate) fn shrink_if_mostly_empty<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 8 {
        map.shrink_to(map.len() * 2);
    }
}

/// The right to publish one source. Dropping it ends the publish: players
/// get [`HubItem::Unpublished`] and the source may become idle.
#[derive(Debug)]
pub struct Publisher {
    source: Arc<Source>,
}

impl Publisher {
    pub fn push(&self, frame: MediaFrame) {
        self.source.push(frame);
    }

    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.source.end_publish();
    }
}

#[cfg(test)]
mod tests;
