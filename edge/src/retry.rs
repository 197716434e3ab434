//! Which origin to try next after a failure, and when: every other origin
//! at once (the first retry never waits), then, once a whole round has
//! failed, `backon`'s exponential backoff with jitter, capped near a
//! second, before the next round. A success starts over.

use std::net::SocketAddr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::settings::OriginAddr;

fn fresh_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

pub struct OriginPicker {
    tried: Vec<SocketAddr>,
    backoff: ExponentialBackoff,
}

impl Default for OriginPicker {
    fn default() -> Self {
        Self::new()
    }
}

impl OriginPicker {
    pub fn new() -> Self {
        OriginPicker {
            tried: Vec::new(),
            backoff: fresh_backoff(),
        }
    }

    /// The first of `ranked` not tried in this round; when all were, wait
    /// the next backoff delay and start a new round. `None` only when no
    /// origin is known at all (after the wait).
    pub async fn next(&mut self, ranked: &[OriginAddr]) -> Option<OriginAddr> {
        if let Some(origin) = ranked.iter().find(|o| !self.tried.contains(&o.rtmp)) {
            self.tried.push(origin.rtmp);
            return Some(*origin);
        }
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(delay).await;
        self.tried.clear();
        let origin = ranked.first().copied()?;
        self.tried.push(origin.rtmp);
        Some(origin)
    }

    /// The current origin works: the next failure starts a fresh round.
    pub fn succeeded(&mut self) {
        self.tried.clear();
        self.backoff = fresh_backoff();
    }
}
