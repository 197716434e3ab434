//! The publish bitrate cap: a publisher whose average inbound rate over
//! the last `publish_bitrate_window` is above `max_publish_kbps` is over
//! the cap (a keyframe burst is not: only a sustained rate counts, and
//! never before one whole window has passed). Sans-IO: the connection
//! reports bytes and the time; it disconnects with the reason.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots the window is divided into.
const SLOTS: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitrateCap {
    pub max_kbps: u64,
    pub window: Duration,
}

/// Over the cap: the average rate over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    pub kbps: u64,
    pub max_kbps: u64,
    pub window: Duration,
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publishing at {} kbps over {:?}, above max_publish_kbps {}",
            self.kbps, self.window, self.max_kbps
        )
    }
}

/// One publisher's rate over the window.
#[derive(Debug)]
pub struct BitrateWatch {
    cap: BitrateCap,
    started: Instant,
    slot_len: Duration,
    /// (slot start, bytes), oldest first, spanning at most the window.
    slots: VecDeque<(Instant, u64)>,
    in_window: u64,
}

impl BitrateWatch {
    pub fn new(cap: BitrateCap, now: Instant) -> Self {
        let window = cap.window.max(Duration::from_millis(SLOTS.into()));
        BitrateWatch {
            cap: BitrateCap { window, ..cap },
            started: now,
            slot_len: window / SLOTS,
            slots: VecDeque::with_capacity(SLOTS as usize + 1),
            in_window: 0,
        }
    }

    /// `bytes` arrived at `now`; `Err` once the sustained rate is over the cap.
    pub fn record(&mut self, bytes: u64, now: Instant) -> Result<(), OverCap> {
        match self.slots.back_mut() {
            Some((start, n)) if now.saturating_duration_since(*start) < self.slot_len => {
                *n += bytes
            }
            _ => self.slots.push_back((now, bytes)),
        }
        self.in_window += bytes;
        let window = self.cap.window;
        while let Some((start, n)) = self.slots.front().copied() {
            if now.saturating_duration_since(start) <= window {
                break;
            }
            self.slots.pop_front();
            self.in_window -= n;
        }
        if now.saturating_duration_since(self.started) < window {
            return Ok(());
        }
        let kbps = self.in_window.saturating_mul(8) / window.as_millis().max(1) as u64;
        if kbps > self.cap.max_kbps {
            return Err(OverCap {
                kbps,
                max_kbps: self.cap.max_kbps,
                window,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: BitrateCap = BitrateCap {
        max_kbps: 1000,
        window: Duration::from_secs(2),
    };

    /// Feed `kbps` in 10 ms steps from `from_ms` to `to_ms`; when the
    /// watch objected.
    fn feed(
        watch: &mut BitrateWatch,
        t0: Instant,
        kbps: u64,
        from_ms: u64,
        to_ms: u64,
    ) -> Option<u64> {
        (from_ms..to_ms).step_by(10).find_map(|ms| {
            let bytes = kbps * 1000 / 8 / 100;
            watch
                .record(bytes, t0 + Duration::from_millis(ms))
                .err()
                .map(|_| ms)
        })
    }

    #[test]
    fn under_the_cap_runs_forever_and_a_burst_is_not_sustained() {
        let t0 = Instant::now();
        let mut watch = BitrateWatch::new(CAP, t0);
        assert_eq!(feed(&mut watch, t0, 900, 0, 10_000), None);
        // A 500 ms burst at twice the cap within a window averaging below it.
        assert_eq!(feed(&mut watch, t0, 500, 10_000, 12_000), None);
        assert_eq!(feed(&mut watch, t0, 2000, 12_000, 12_500), None);
        assert_eq!(feed(&mut watch, t0, 200, 12_500, 20_000), None);
    }

    #[test]
    fn sustained_over_the_cap_is_refused_after_one_window() {
        let t0 = Instant::now();
        let mut watch = BitrateWatch::new(CAP, t0);
        let at = feed(&mut watch, t0, 5000, 0, 10_000).expect("over the cap");
        assert!((2000..2100).contains(&at), "objected at {at} ms");
        let over = watch.record(0, t0 + Duration::from_millis(at)).unwrap_err();
        assert!(over.kbps > 4000 && over.kbps <= 5100, "{over}");
    }
}
