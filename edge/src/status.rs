//! What the API shows of each upstream (a pull or a forward): which
//! origin, since when, how many moves, the splice counters.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use baton_common::splice::SpliceStats;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Pull,
    Forward,
}

#[derive(Debug)]
pub struct UpstreamStatus {
    pub direction: Direction,
    pub origin: Option<SocketAddr>,
    /// When the current origin started serving (or being served).
    pub since: Option<(Instant, SystemTime)>,
    /// Times the stream moved to another origin (or reconnected).
    pub moves: u64,
    /// Since when no origin serves the stream, if none does.
    pub outage_since: Option<Instant>,
    pub last_error: Option<String>,
    pub splice: SpliceStats,
}

/// Shared between the task that runs an upstream and the API.
#[derive(Debug, Clone)]
pub struct StatusCell(Arc<Mutex<UpstreamStatus>>);

impl StatusCell {
    pub fn new(direction: Direction) -> Self {
        StatusCell(Arc::new(Mutex::new(UpstreamStatus {
            direction,
            origin: None,
            since: None,
            moves: 0,
            outage_since: Some(Instant::now()),
            last_error: None,
            splice: SpliceStats::default(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, UpstreamStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `origin` now serves the stream; a different origin than before
    /// (or the same after a loss) counts as a move.
    pub fn serving(&self, origin: SocketAddr) {
        let mut status = self.lock();
        if status.origin.is_some() {
            status.moves += 1;
        }
        status.origin = Some(origin);
        status.since = Some((Instant::now(), SystemTime::now()));
        status.outage_since = None;
    }

    pub fn lost(&self, error: &str) {
        let mut status = self.lock();
        status.last_error = Some(error.to_owned());
        status.outage_since.get_or_insert_with(Instant::now);
    }

    pub fn to_json(&self, key: &str) -> Value {
        let status = self.lock();
        json!({
            "stream": key,
            "direction": match status.direction { Direction::Pull => "pull", Direction::Forward => "forward" },
            "origin": status.origin.map(|o| o.to_string()),
            "since_ms": status.since.map(|(_, wall)| wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)),
            "serving_for_ms": status.since.map(|(t, _)| t.elapsed().as_millis() as u64),
            "moves": status.moves,
            "outage_ms": status.outage_since.map(|t| t.elapsed().as_millis() as u64),
            "last_error": status.last_error,
            "splice": {
                "sessions": status.splice.sessions,
                "continued": status.splice.continued,
                "rebased": status.splice.rebased,
                "delivered": status.splice.delivered,
                "already_delivered": status.splice.already_delivered,
                "unchanged_headers": status.splice.unchanged_headers,
                "before_keyframe": status.splice.before_keyframe,
                "would_regress": status.splice.would_regress,
                "resume_gaps": status.splice.resume_gaps,
                "longest_resume_gap_ms": status.splice.longest_resume_gap_ms,
            },
        })
    }
}
