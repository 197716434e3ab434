//! The soak's progress line: one short line every few seconds however many
//! players run (a line per player is unreadable with hundreds of them).
//!
//! It says how far the run is, how many faults were applied (and failed),
//! how many players receive right now, the disconnects and frames so far,
//! the worst stall and whose it is, and how many players already broke an
//! expectation. Player logs are scanned incrementally (each frame once),
//! so a long soak with many players costs the same per line at the end as
//! at the start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::clients::{lock, PlayLog};
use crate::scenario::Expect;

/// Counters the fault loop updates and the progress line reads.
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub applied: AtomicUsize,
    pub failed: AtomicUsize,
}

/// What is known about one player so far.
struct Track {
    name: String,
    log: Arc<Mutex<PlayLog>>,
    /// Frames already scanned.
    scanned: usize,
    last_frame: Option<Instant>,
    worst_stall: Duration,
    frames: u64,
    disconnects: u64,
}

/// Everything one progress line says; [`Snapshot::line`] formats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub total: Duration,
    pub faults_applied: usize,
    pub faults_failed: usize,
    pub players_ok: usize,
    pub players: usize,
    pub disconnects: u64,
    pub frames: u64,
    /// The longest stall so far and whose.
    pub worst: Option<(Duration, String)>,
    /// Players over `max_stall` or `max_disconnects` so far.
    pub violating: usize,
}

impl Snapshot {
    pub fn line(&self) -> String {
        let worst = self.worst.as_ref().map_or("-".to_owned(), |(d, who)| {
            format!("{}ms ({who})", d.as_millis())
        });
        let failed = if self.faults_failed > 0 {
            format!(" ({} failed)", self.faults_failed)
        } else {
            String::new()
        };
        let violated = if self.violating == 0 && self.faults_failed == 0 {
            "none".to_owned()
        } else {
            format!("{} player(s)", self.violating)
        };
        format!(
            "soak {:.0}s/{:.0}s | faults {}{failed} | players ok {}/{} | disc {} | frames {} | worst stall {worst} | violated: {violated}",
            self.elapsed.as_secs_f64(),
            self.total.as_secs_f64(),
            self.faults_applied,
            self.players_ok,
            self.players,
            self.disconnects,
            self.frames,
        )
    }
}

/// Follows every player's log; see the module docs.
pub struct Progress {
    tracks: Vec<Track>,
    t0: Instant,
    total: Duration,
    expect: Expect,
}

impl Progress {
    pub fn new(
        players: Vec<(String, Arc<Mutex<PlayLog>>)>,
        t0: Instant,
        total: Duration,
        expect: Expect,
    ) -> Progress {
        let tracks = players
            .into_iter()
            .map(|(name, log)| Track {
                name,
                log,
                scanned: 0,
                last_frame: None,
                worst_stall: Duration::ZERO,
                frames: 0,
                disconnects: 0,
            })
            .collect();
        Progress {
            tracks,
            t0,
            total,
            expect,
        }
    }

    /// Scans what arrived since the last call and sums up at `now`.
    pub fn snapshot(&mut self, now: Instant, faults: &FaultCounters) -> Snapshot {
        let max_stall = self.expect.max_stall.0;
        let mut s = Snapshot {
            elapsed: now.saturating_duration_since(self.t0),
            total: self.total,
            faults_applied: faults.applied.load(Ordering::Relaxed),
            faults_failed: faults.failed.load(Ordering::Relaxed),
            players_ok: 0,
            players: self.tracks.len(),
            disconnects: 0,
            frames: 0,
            worst: None,
            violating: 0,
        };
        for t in &mut self.tracks {
            {
                let log = lock(&t.log);
                for a in log.frames.iter().skip(t.scanned) {
                    if a.at >= self.t0 {
                        if let Some(prev) = t.last_frame {
                            let gap = a.at.saturating_duration_since(prev.max(self.t0));
                            t.worst_stall = t.worst_stall.max(gap);
                        }
                        t.frames += 1;
                    }
                    t.last_frame = Some(a.at);
                }
                t.scanned = log.frames.len();
                t.disconnects = log.ends.iter().filter(|(at, _)| *at >= self.t0).count() as u64;
            }
            // Silence up to now is a stall in progress.
            let silent =
                now.saturating_duration_since(t.last_frame.unwrap_or(self.t0).max(self.t0));
            let worst = t.worst_stall.max(silent);
            if silent <= max_stall {
                s.players_ok += 1;
            }
            if worst > max_stall || t.disconnects > self.expect.max_disconnects {
                s.violating += 1;
            }
            s.disconnects += t.disconnects;
            s.frames += t.frames;
            if s.worst.as_ref().is_none_or(|(d, _)| worst > *d) {
                s.worst = Some((worst, t.name.clone()));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::Arrival;
    use crate::dur::Dur;
    use baton_common::media::MediaKind;

    fn frame(at: Instant, index: u32) -> Arrival {
        Arrival {
            at,
            index: Some(index),
            kind: MediaKind::Video,
            timestamp: index * 33,
            conn: 0,
        }
    }

    #[test]
    fn one_short_line_for_many_players_with_the_worst_stall_named() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut players = Vec::new();
        for i in 0..200u32 {
            let mut log = PlayLog::default();
            for f in 0..10u32 {
                // Player 7 goes silent for 900 ms between its 5th and 6th frame.
                let extra = if i == 7 && f >= 5 { 900 } else { 0 };
                log.frames.push(frame(at(u64::from(f) * 100 + extra), f));
            }
            if i == 3 {
                log.ends.push((at(500), "reset".into()));
            }
            players.push((format!("player-{i}"), Arc::new(Mutex::new(log))));
        }
        let expect = Expect {
            max_stall: Dur::ms(800),
            ..Expect::default()
        };
        let mut p = Progress::new(players, t0, Duration::from_secs(60), expect);
        let faults = FaultCounters::default();
        faults.applied.store(4, Ordering::Relaxed);
        let s = p.snapshot(at(1000), &faults);
        assert_eq!(s.players, 200);
        assert_eq!(s.frames, 2000);
        assert_eq!(s.disconnects, 1);
        // Player 7's last frame came at 1800 ms: still fine at 1000 ms.
        assert_eq!(
            s.worst,
            Some((Duration::from_millis(1000), "player-7".into()))
        );
        assert_eq!(s.violating, 2, "player 7 stalled, player 3 disconnected");
        assert_eq!(s.players_ok, 200);
        let line = s.line();
        assert!(line.len() < 200, "{line}");
        assert!(line.contains("faults 4"), "{line}");
        assert!(line.contains("players ok 200/200"), "{line}");
        assert!(line.contains("(player-7)"), "{line}");
        // Later, everyone has been silent for more than max_stall; the
        // frames already scanned are not counted twice.
        let later = p.snapshot(at(3000), &faults);
        assert_eq!(later.frames, 2000);
        assert_eq!(later.players_ok, 0);
        assert_eq!(later.violating, 200);
    }
}
