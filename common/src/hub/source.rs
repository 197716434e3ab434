//! One live stream ("source"): its publisher, its cached headers and GOP,
//! and the bounded ring of frames every player reads from.
//!
//! The ring is the only queue on the fan-out path. Players are cursors into
//! it (sequence numbers), so a frame is stored once however many players
//! there are, and "the player's queue" is the span between its cursor and
//! the head. The ring keeps the current GOP (so a new player starts on a
//! keyframe) plus at most the configured backlog before it; a player whose
//! cursor falls off the back, or whose backlog exceeds the bound, is moved
//! forward to a keyframe by [`super::subscriber::Subscriber`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use super::frame::SharedFrame;
use super::wakeup::Wakeup;
use super::{HubConfig, StreamKey};
use crate::media::{AudioCodec, MediaFrame, MediaKind, VideoCodec};
use crate::memory::{Charge, Pool};
use crate::splice::{Splicer, Verdict};

/// Over the memory budget a source keeps no more than this many frames
/// before its GOP start (or, without one, in all)...
pub const LIVE_EDGE_FRAMES: usize = 64;
/// ...and no more than this many bytes: what a player at the live edge
/// may not have read yet (a write window and a scheduling delay).
pub const LIVE_EDGE_BYTES: usize = 1024 * 1024;

/// What players read from a source, in order.
#[derive(Debug, Clone)]
pub enum HubItem {
    Frame(Arc<SharedFrame>),
    /// The publisher went away; players stay attached and wait for the next.
    Unpublished,
    /// A publisher (re)started the stream.
    Published,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub item: HubItem,
    /// Payload bytes of every entry before this one since the source began;
    /// the difference of two offsets is the backlog in bytes between them.
    pub offset: u64,
}

/// Who is publishing a source, for the API and logs.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub client_id: u64,
    pub peer: SocketAddr,
    /// The publish's timeline id, announced to players (an edge passes
    /// its publisher's id on to the origin, so it survives failovers).
    pub timeline: String,
}

#[derive(Debug)]
pub(crate) struct SourceState {
    pub publisher: Option<PublisherInfo>,
    pub ring: VecDeque<Entry>,
    /// Sequence number of `ring[0]`.
    pub base_seq: u64,
    /// Payload bytes pushed since the source began (the next entry's offset).
    pub total_bytes: u64,
    /// Where a new player starts: the last keyframe, while the GOP cache
    /// holds it.
    pub gop_start: Option<u64>,
    pub metadata: Option<Arc<SharedFrame>>,
    pub video_header: Option<Arc<SharedFrame>>,
    pub audio_header: Option<Arc<SharedFrame>>,
    pub has_video: bool,
    pub video_codec: Option<VideoCodec>,
    pub audio_codec: Option<AudioCodec>,
    pub players: usize,
    /// Set when the source has neither publisher nor players.
    pub idle_since: Option<Instant>,
    pub published_at: Option<Instant>,
    pub rate_in: RateMeter,
    /// Keeps the players' timeline continuous across publishers.
    pub splicer: Splicer,
    /// The ring's payload bytes in the process's memory ledger.
    pub memory: Charge,
}

impl SourceState {
    pub fn head_seq(&self) -> u64 {
        self.base_seq + self.ring.len() as u64
    }

    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        let index = seq.checked_sub(self.base_seq)?;
        self.ring.get(usize::try_from(index).ok()?)
    }

    /// The latest keyframe of the current publish whose timestamp is at
    /// most `ts`, if the ring still holds one: where a player that already
    /// has everything up to `ts` (an edge re-attaching after a failover)
    /// resumes without a gap. Never reaches back past the publish start.
    pub fn keyframe_at_or_before(&self, ts: u32) -> Option<u64> {
        self.publisher.as_ref()?;
        for (index, entry) in self.ring.iter().enumerate().rev() {
            match &entry.item {
                HubItem::Frame(f) if f.frame.is_keyframe() && f.frame.timestamp <= ts => {
                    return Some(self.base_seq + index as u64);
                }
                HubItem::Published | HubItem::Unpublished => return None,
                HubItem::Frame(_) => {}
            }
        }
        None
    }

    /// Payload bytes of the ring.
    pub fn held_bytes(&self) -> usize {
        self.ring
            .front()
            .map_or(0, |front| (self.total_bytes - front.offset) as usize)
    }

    /// Payload bytes of the ring before the GOP start (0 without one:
    /// then players may be reading any of it).
    pub fn backlog_bytes(&self) -> usize {
        match (
            self.gop_start.and_then(|s| self.entry(s)),
            self.ring.front(),
        ) {
            (Some(gop), Some(front)) => (gop.offset - front.offset) as usize,
            _ => 0,
        }
    }

    /// The headers a player needs before its first picture.
    pub fn headers(&self) -> impl Iterator<Item = HubItem> + '_ {
        [&self.metadata, &self.video_header, &self.audio_header]
            .into_iter()
            .flatten()
            .map(|f| HubItem::Frame(f.clone()))
    }

    fn update_idle(&mut self, now: Instant) {
        if self.publisher.is_none() && self.players == 0 {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }
}

/// Bitrate over roughly the last second, updated as bytes pass.
#[derive(Debug)]
pub(crate) struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    last_kbps: u64,
}

impl RateMeter {
    fn new(now: Instant) -> Self {
        RateMeter {
            window_start: now,
            window_bytes: 0,
            last_kbps: 0,
        }
    }

    fn add(&mut self, bytes: usize, now: Instant) {
        self.window_bytes += bytes as u64;
        let elapsed = now.duration_since(self.window_start);
        if elapsed.as_millis() >= 1000 {
            self.last_kbps = self.window_bytes * 8 / elapsed.as_millis().max(1) as u64;
            self.window_start = now;
            self.window_bytes = 0;
        }
    }

    pub fn kbps(&self, now: Instant) -> u64 {
        // A stalled stream reads as zero rather than its last rate.
        if now.duration_since(self.window_start).as_secs() >= 3 {
            0
        } else {
            self.last_kbps
        }
    }
}

/// A live stream. Shared by the hub map, the publisher handle and every
/// subscriber; freed when the hub reaps it after it has been idle.
#[derive(Debug)]
pub struct Source {
    pub id: u64,
    pub key: StreamKey,
    pub created_at: SystemTime,
    pub(crate) config: Arc<HubConfig>,
    pub(crate) state: Mutex<SourceState>,
    pub(crate) wakeup: Arc<Wakeup>,
    /// Whether pushes wake players through the coalescing timer.
    coalescing: bool,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    /// (when, bytes_out then, kbps) of the last outbound rate sample: the
    /// outbound rate is sampled when stats are read, so the hot path only
    /// adds to an atomic.
    out_sample: Mutex<(Instant, u64, u64)>,
}

/// A snapshot of a source for the API.
#[derive(Debug, Clone)]
pub struct SourceStats {
    pub id: u64,
    pub key: StreamKey,
    pub publisher: Option<PublisherInfo>,
    pub players: usize,
    pub video_codec: Option<VideoCodec>,
    pub audio_codec: Option<AudioCodec>,
    pub kbps_in: u64,
    pub kbps_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub created_at: SystemTime,
    pub published_for: Option<std::time::Duration>,
    pub cached_frames: usize,
    /// Players written by the source's flusher right now (see
    /// [`super::direct`]).
    pub parked_players: usize,
}

impl Source {
    pub(crate) fn new(id: u64, key: StreamKey, config: Arc<HubConfig>) -> Self {
        let now = Instant::now();
        let (wakeup, coalescing) = Wakeup::new(config.write_coalesce);
        Source {
            id,
            key,
            created_at: SystemTime::now(),
            config,
            state: Mutex::new(SourceState {
                publisher: None,
                ring: VecDeque::new(),
                base_seq: 0,
                total_bytes: 0,
                gop_start: None,
                metadata: None,
                video_header: None,
                audio_header: None,
                has_video: false,
                video_codec: None,
                audio_codec: None,
                players: 0,
                idle_since: Some(now),
                published_at: None,
                rate_in: RateMeter::new(now),
                splicer: Splicer::new(),
                memory: Charge::new(Pool::Streams),
            }),
            wakeup,
            coalescing,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            out_sample: Mutex::new((now, 0, 0)),
        }
    }

    /// The state lock. A panic while holding it cannot leave the ring
    /// half-updated in a way later readers trip on, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SourceState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Players attached now (edges watch this to end idle pulls).
    pub fn player_count(&self) -> usize {
        self.lock().players
    }

    /// The current publish's timeline id.
    pub fn timeline(&self) -> Option<String> {
        self.lock().publisher.as_ref().map(|p| p.timeline.clone())
    }

    pub fn is_publishing(&self) -> bool {
        self.lock().publisher.is_some()
    }

    /// Whether players are woken once per latency budget (and may park;
    /// see [`super::direct`]) rather than at every push.
    pub fn coalescing(&self) -> bool {
        self.coalescing
    }

    /// Park a player: the flusher writes it from now on (see
    /// [`super::direct`]). The id unparks it.
    pub fn park_direct(&self, player: Arc<dyn super::DirectPlayer>) -> u64 {
        self.wakeup.direct.park(player)
    }

    pub fn unpark_direct(&self, id: u64) {
        self.wakeup.direct.unpark(id);
    }

    pub fn add_bytes_out(&self, bytes: u64) {
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Outbound kbps over the interval since the previous sample (at least
    /// a second; a shorter interval returns the previous figure).
    fn kbps_out(&self, now: Instant) -> u64 {
        let bytes_out = self.bytes_out.load(Ordering::Relaxed);
        let mut sample = self.out_sample.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed_ms = now.duration_since(sample.0).as_millis() as u64;
        if elapsed_ms >= 1000 {
            let kbps = bytes_out.saturating_sub(sample.1) * 8 / elapsed_ms;
            *sample = (now, bytes_out, kbps);
        }
        sample.2
    }

    pub fn stats(&self) -> SourceStats {
        let now = Instant::now();
        let kbps_out = self.kbps_out(now);
        let parked_players = self.wakeup.direct.len();
        let state = self.lock();
        SourceStats {
            id: self.id,
            key: self.key.clone(),
            publisher: state.publisher.clone(),
            players: state.players,
            video_codec: state.video_codec,
            audio_codec: state.audio_codec,
            kbps_in: state.rate_in.kbps(now),
            kbps_out,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            created_at: self.created_at,
            published_for: state.published_at.map(|t| now.duration_since(t)),
            cached_frames: state.ring.len(),
            parked_players,
        }
    }

    pub(crate) fn begin_publish(&self, publisher: PublisherInfo) -> bool {
        let mut state = self.lock();
        if state.publisher.is_some() {
            return false;
        }
        state.splicer.new_session(Some(publisher.timeline.clone()));
        state.publisher = Some(publisher);
        state.published_at = Some(Instant::now());
        state.idle_since = None;
        Self::append(&mut state, &self.config, HubItem::Published, 0);
        drop(state);
        self.wakeup.now();
        true
    }

    pub(crate) fn end_publish(&self) {
        let mut state = self.lock();
        state.publisher = None;
        state.published_at = None;
        // Nothing of the old GOP is served to players joining later. The
        // headers stay: the splicer passes a new publisher's headers only
        // when they change, which then replaces them here.
        state.gop_start = None;
        Self::append(&mut state, &self.config, HubItem::Unpublished, 0);
        state.update_idle(Instant::now());
        drop(state);
        self.wakeup.now();
    }

    /// Accept one frame from the publisher: cache what players need to
    /// start, append it to the ring, wake the players.
    pub(crate) fn push(&self, frame: MediaFrame) {
        let len = frame.payload.len();
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.rate_in.add(len, Instant::now());
        // One timeline for players across publishers (see `splice`): a
        // republished stream continues where the last one ended, frames a
        // re-attaching edge sends again are not stored twice.
        let frame = match state.splicer.push(frame) {
            Verdict::Deliver(frame) => frame,
            Verdict::Drop(reason) => {
                metrics::counter!("baton_splice_dropped_total", "reason" => reason.as_str())
                    .increment(1);
                return;
            }
        };
        let is_keyframe = frame.is_keyframe();
        let shared = Arc::new(SharedFrame::new(frame));
        let frame = &shared.frame;
        match frame.kind {
            MediaKind::Video => {
                state.has_video = true;
                if let Some(codec) = frame.video_codec() {
                    state.video_codec = Some(codec);
                }
                if frame.is_sequence_header() {
                    state.video_header = Some(shared.clone());
                }
            }
            MediaKind::Audio => {
                if let Some(codec) = frame.audio_codec() {
                    state.audio_codec = Some(codec);
                }
                if frame.is_sequence_header() {
                    state.audio_header = Some(shared.clone());
                }
            }
            MediaKind::Data => {
                if frame.is_metadata() {
                    state.metadata = Some(shared.clone());
                }
            }
        }
        let seq = state.head_seq();
        if is_keyframe && self.config.gop_cache {
            state.gop_start = Some(seq);
        }
        Self::append(&mut state, &self.config, HubItem::Frame(shared), len);
        drop(state);
        self.wakeup.data(self.coalescing, len);
    }

    fn append(state: &mut SourceState, config: &HubConfig, item: HubItem, len: usize) {
        let offset = state.total_bytes;
        state.ring.push_back(Entry { item, offset });
        state.total_bytes += len as u64;
        Self::evict(state, config);
        let held = state.held_bytes();
        state.memory.set(held);
    }

    /// Drop entries no player may still need: everything before the GOP
    /// start beyond the backlog bound. A GOP larger than the GOP cache limit
    /// stops being cached (players then join at the next keyframe).
    fn evict(state: &mut SourceState, config: &HubConfig) {
        let gop_len = state
            .gop_start
            .map(|start| state.head_seq().saturating_sub(start));
        if let Some(gop_frames) = gop_len {
            let gop_bytes = state
                .gop_start
                .and_then(|s| state.entry(s))
                .map_or(0, |e| state.total_bytes - e.offset);
            if gop_frames > config.gop_cache_max_frames as u64
                || gop_bytes > config.gop_cache_max_bytes as u64
            {
                tracing::debug!(
                    gop_frames,
                    gop_bytes,
                    "GOP exceeds the cache limit; not cached"
                );
                state.gop_start = None;
            }
        }
        let keep_from = state.gop_start.unwrap_or(u64::MAX);
        // Over the memory budget no source keeps a backlog before its GOP
        // beyond what players at the live edge may not have read yet (see
        // `crate::memory`).
        let (max_frames, max_bytes) = if crate::memory::over_budget() {
            (
                config.max_queue_frames.min(LIVE_EDGE_FRAMES),
                config.max_queue_bytes.min(LIVE_EDGE_BYTES),
            )
        } else {
            (config.max_queue_frames, config.max_queue_bytes)
        };
        while let Some(front) = state.ring.front() {
            let over_frames = state.ring.len() > max_frames;
            let over_bytes = state.total_bytes - front.offset > max_bytes as u64;
            if state.base_seq >= keep_from || !(over_frames || over_bytes) {
                break;
            }
            state.ring.pop_front();
            state.base_seq += 1;
        }
    }

    /// (ring bytes, of which before the GOP start) for the memory governor.
    pub fn memory_use(&self) -> (usize, usize) {
        let state = self.lock();
        (state.held_bytes(), state.backlog_bytes())
    }

    /// Memory shedding: drop the frames before the GOP start, all but
    /// the live edge. Returns the bytes let go.
    pub fn trim_backlog(&self) -> usize {
        let mut state = self.lock();
        let keep_from = state.gop_start.unwrap_or(u64::MAX);
        Self::shed_to_live_edge(&mut state, keep_from)
    }

    /// Memory shedding: drop the GOP cache too (new players start at the
    /// next keyframe), all but the live edge. Returns the bytes let go.
    pub fn drop_cache(&self) -> usize {
        let mut state = self.lock();
        state.gop_start = None;
        Self::shed_to_live_edge(&mut state, u64::MAX)
    }

    /// Pop entries before `keep_from` until the ring is down to what
    /// players at the live edge may not have read yet: at most
    /// [`LIVE_EDGE_FRAMES`] frames and [`LIVE_EDGE_BYTES`] bytes (or one
    /// entry). Returns the bytes let go.
    fn shed_to_live_edge(state: &mut SourceState, keep_from: u64) -> usize {
        let before = state.held_bytes();
        while state.base_seq < keep_from
            && state.ring.len() > 1
            && (state.ring.len() > LIVE_EDGE_FRAMES || state.held_bytes() > LIVE_EDGE_BYTES)
        {
            state.ring.pop_front();
            state.base_seq += 1;
        }
        let held = state.held_bytes();
        state.memory.set(held);
        before - held
    }

    pub(crate) fn add_player(&self) {
        let mut state = self.lock();
        state.players += 1;
        state.idle_since = None;
    }

    pub(crate) fn remove_player(&self) {
        let mut state = self.lock();
        state.players = state.players.saturating_sub(1);
        state.update_idle(Instant::now());
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.wakeup.close();
    }
}
