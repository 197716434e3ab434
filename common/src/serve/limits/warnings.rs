//! Rate-limited, summarized warnings for what one client can trigger as
//! often as it likes (refused connections, idle and handshake timeouts,
//! protocol errors): the first occurrence of a reason in an interval is
//! logged in full by the caller, the rest are counted, and when the
//! interval is over one line says how many there were and which peer
//! caused most ("refused 4123 connections (per-ip-connections) in the
//! last 10s, top peer 127.0.0.2 (4100)"). A flood then costs a couple of
//! lines per reason per interval instead of one per connection.
//!
//! [`Summarizer`] is the sans-IO bookkeeping (the caller passes the time);
//! [`note`] and [`spawn_flusher`] are the process-wide instance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The interval of the process-wide summaries.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Distinct peers remembered per reason and interval (for the top peer);
/// later peers are counted, not named.
const MAX_PEERS: usize = 1024;

#[derive(Debug)]
struct Window {
    started: Instant,
    /// Occurrences after the first (which the caller logged).
    suppressed: u64,
    peers: HashMap<IpAddr, u64>,
}

/// One summary line due: `count` occurrences of `reason` not logged one
/// by one during `over`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub reason: &'static str,
    pub count: u64,
    pub over: Duration,
    pub top_peer: Option<(IpAddr, u64)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} more: {} in the last {}s",
            self.count,
            self.reason,
            self.over.as_secs()
        )?;
        if let Some((peer, n)) = self.top_peer {
            write!(f, ", top peer {peer} ({n})")?;
        }
        Ok(())
    }
}

/// Per-reason windows; see the module docs.
#[derive(Debug)]
pub struct Summarizer {
    interval: Duration,
    windows: HashMap<&'static str, Window>,
    /// Summaries of windows that ended when their reason came up again,
    /// reported by the next [`Summarizer::flush`].
    pending: Vec<Summary>,
}

fn summary_of(reason: &'static str, window: Window, now: Instant) -> Summary {
    let top_peer = window
        .peers
        .iter()
        .max_by_key(|(ip, n)| (**n, std::cmp::Reverse(**ip)))
        .map(|(ip, n)| (*ip, *n));
    Summary {
        reason,
        count: window.suppressed,
        over: now.saturating_duration_since(window.started),
        top_peer,
    }
}

impl Summarizer {
    pub fn new(interval: Duration) -> Self {
        Summarizer {
            interval,
            windows: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Records one occurrence. True: the caller logs it in full (the
    /// first of its reason in this interval); false: it was counted.
    pub fn note(&mut self, reason: &'static str, peer: IpAddr, now: Instant) -> bool {
        if let Some(window) = self.windows.get_mut(reason) {
            if now.saturating_duration_since(window.started) < self.interval {
                window.suppressed += 1;
                if window.peers.len() < MAX_PEERS || window.peers.contains_key(&peer) {
                    *window.peers.entry(peer).or_default() += 1;
                }
                return false;
            }
        }
        let fresh = Window {
            started: now,
            suppressed: 0,
            peers: HashMap::new(),
        };
        if let Some(ended) = self.windows.insert(reason, fresh) {
            if ended.suppressed > 0 {
                self.pending.push(summary_of(reason, ended, now));
            }
        }
        true
    }

    /// The summaries of windows that are over (and had suppressed
    /// occurrences); their reasons start afresh.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let mut out = std::mem::take(&mut self.pending);
        let interval = self.interval;
        let ended: Vec<&'static str> = self
            .windows
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.started) >= interval)
            .map(|(reason, _)| *reason)
            .collect();
        for reason in ended {
            if let Some(window) = self.windows.remove(reason) {
                if window.suppressed > 0 {
                    out.push(summary_of(reason, window, now));
                }
            }
        }
        out
    }
}

fn global() -> MutexGuard<'static, Summarizer> {
    static GLOBAL: OnceLock<Mutex<Summarizer>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| Mutex::new(Summarizer::new(INTERVAL)))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Records an occurrence of `reason` caused by `peer`; true when the
/// caller should log this one in full (see the module docs):
///
/// ```ignore
/// if warnings::note("rtmp handshake timeout", peer.ip()) {
///     tracing::warn!(%peer, "...");
/// }
/// ```
pub fn note(reason: &'static str, peer: IpAddr) -> bool {
    global().note(reason, peer, Instant::now())
}

/// Logs the summaries that are due, once a second, until the runtime ends.
pub fn spawn_flusher() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let due = global().flush(Instant::now());
            for summary in due {
                tracing::warn!(
                    reason = summary.reason,
                    count = summary.count,
                    top_peer = summary.top_peer.map(|(ip, _)| ip.to_string()),
                    "{summary}"
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_in_full_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(Duration::from_secs(10));
        assert!(s.note("refused", ip("10.0.0.1"), t0));
        for i in 0..4123u32 {
            let peer = if i < 4100 { "10.0.0.2" } else { "10.0.0.3" };
            assert!(!s.note(
                "refused",
                ip(peer),
                t0 + Duration::from_millis(u64::from(i))
            ));
        }
        // Another reason has its own window.
        assert!(s.note("timeout", ip("10.0.0.1"), t0));
        assert!(s.flush(t0 + Duration::from_secs(5)).is_empty());
        let due = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].reason, "refused");
        assert_eq!(due[0].count, 4123);
        assert_eq!(due[0].top_peer, Some((ip("10.0.0.2"), 4100)));
        assert!(due[0]
            .to_string()
            .contains("4123 more: refused in the last 10s, top peer 10.0.0.2 (4100)"));
        // The next occurrence is logged in full again.
        assert!(s.note("refused", ip("10.0.0.2"), t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_window_ended_by_a_late_note_is_still_reported() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(Duration::from_secs(10));
        assert!(s.note("x", ip("10.0.0.1"), t0));
        assert!(!s.note("x", ip("10.0.0.1"), t0 + Duration::from_secs(1)));
        assert!(s.note("x", ip("10.0.0.1"), t0 + Duration::from_secs(12)));
        let due = s.flush(t0 + Duration::from_secs(12));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 1);
    }

    #[test]
    fn peers_are_bounded() {
        let t0 = Instant::now();
        let mut s = Summarizer::new(Duration::from_secs(10));
        s.note("x", ip("10.0.0.1"), t0);
        for i in 0..5000u32 {
            s.note("x", IpAddr::from(std::net::Ipv4Addr::from(i)), t0);
        }
        assert!(s.windows["x"].peers.len() <= MAX_PEERS);
        assert_eq!(s.flush(t0 + Duration::from_secs(10))[0].count, 5000);
    }
}
