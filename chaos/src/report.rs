//! From raw client logs to verdicts: the run is cut into windows (before
//! the first fault, then one per fault until the next), and for every
//! player and window the report says what was sent and received, lost,
//! duplicated, out of order, timestamp regressions, disconnects, the
//! longest stall and how long until frames published after the fault
//! reached the player. The same data is written as JSON and printed as a
//! one-screen summary; expectation failures make the run fail.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use baton_common::media::MediaKind;
use serde::Serialize;
use tokio::time::Instant;

use crate::clients::{Arrival, PlayLog, PubLog};
use crate::scenario::Expect;

/// A stretch of the run: before the first fault, or from one fault's start
/// to the next one's.
#[derive(Debug, Clone)]
pub struct Window {
    pub label: String,
    pub start: Instant,
    pub end: Instant,
    /// What applying the fault did (PIDs, how long it took).
    pub detail: String,
    /// The fault could not be applied.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PlayerStats {
    pub player: String,
    pub disrupted: bool,
    pub disconnects: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub regressions: u64,
    /// Lines a real decoder (ffmpeg player) complained with.
    pub decoder_errors: u64,
    pub longest_stall_ms: u64,
    /// From the fault to the first frame published after it arriving.
    pub recover_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherStats {
    pub publisher: String,
    pub disrupted: bool,
    pub sent: u64,
    pub disconnects: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub label: String,
    pub at_ms: u64,
    pub detail: String,
    pub error: Option<String>,
    pub players: Vec<PlayerStats>,
    pub publishers: Vec<PublisherStats>,
}

/// The resident memory of one process (an origin, an edge, the tool) at
/// one moment of the run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemorySample {
    pub process: String,
    pub pid: u32,
    /// `start`, `exit` (just before a signal that ends it) or `end`.
    pub event: String,
    /// From the moment every player received (negative: before).
    pub at_ms: i64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    /// "loopback" (mode 1: 127.0.0.x addresses and proxies), "netns"
    /// (mode 2: network namespaces, faults with tc), "none" when skipped.
    pub mode: String,
    /// Why this mode (when `--mode auto` did not pick netns).
    pub mode_note: Option<String>,
    /// "pass", "fail" or "skipped" (the scenario cannot run in the mode
    /// asked for; `violations` says why).
    pub result: String,
    pub seed: Option<u64>,
    pub wall_ms: u64,
    pub passed: bool,
    pub violations: Vec<String>,
    pub windows: Vec<WindowReport>,
    pub totals: Vec<PlayerStats>,
    /// Resident memory of every process at its start, before it was made
    /// to exit, and at the end of the run.
    pub memory: Vec<MemorySample>,
    pub logs: String,
}

impl Report {
    /// A scenario that did not run, and why.
    pub fn skipped(
        scenario: &crate::scenario::Scenario,
        why: &str,
        dir: &std::path::Path,
    ) -> Report {
        Report {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            mode: "none".into(),
            mode_note: None,
            result: "skipped".into(),
            seed: None,
            wall_ms: 0,
            passed: false,
            violations: vec![format!("skipped: {why}")],
            windows: Vec::new(),
            totals: Vec::new(),
            memory: Vec::new(),
            logs: dir.display().to_string(),
        }
    }

    pub fn is_skipped(&self) -> bool {
        self.result == "skipped"
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// One process generation's memory: (pid, RSS at start, last RSS and its
/// event).
type Generation<'a> = (u32, Option<u64>, Option<(u64, &'a str)>);

/// One line of memory per process: `name start→end` for each generation
/// (PID), in MiB; a generation that ended during the run shows its RSS
/// just before the signal.
pub fn memory_lines(samples: &[MemorySample]) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    for s in samples {
        if !names.contains(&s.process.as_str()) {
            names.push(&s.process);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mut gens: Vec<Generation<'_>> = Vec::new();
            for s in samples.iter().filter(|s| s.process == name) {
                match gens.iter_mut().find(|g| g.0 == s.pid) {
                    Some(g) if s.event == "start" => g.1 = g.1.or(Some(s.rss_kib)),
                    Some(g) => g.2 = Some((s.rss_kib, &s.event)),
                    None if s.event == "start" => gens.push((s.pid, Some(s.rss_kib), None)),
                    None => gens.push((s.pid, None, Some((s.rss_kib, &s.event)))),
                }
            }
            let parts: Vec<String> = gens
                .iter()
                .map(|(_, start, last)| {
                    let start = start.map_or("?".to_owned(), mib);
                    match last {
                        Some((kib, "end")) => format!("{start}→{}", mib(*kib)),
                        Some((kib, event)) => format!("{start}→{} ({event})", mib(*kib)),
                        None => format!("{start}→?"),
                    }
                })
                .collect();
            format!("{name} {}", parts.join(", "))
        })
        .collect()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The window `at` falls in; `None` before the first or after the end
/// of the run (clients stopping are not faults).
fn window_of(windows: &[Window], at: Instant) -> Option<usize> {
    if windows.is_empty() || at < windows[0].start {
        return None;
    }
    windows.iter().position(|w| at < w.end)
}

/// One player's statistics per window. `sent` is the publisher's log of
/// the player's stream; the run ends at the last window's end.
pub fn player_windows(
    name: &str,
    disrupted: bool,
    log: &PlayLog,
    sent: &[(Instant, u32)],
    windows: &[Window],
) -> Vec<PlayerStats> {
    let mut out: Vec<PlayerStats> = windows
        .iter()
        .map(|_| PlayerStats {
            player: name.to_owned(),
            disrupted,
            ..PlayerStats::default()
        })
        .collect();
    let Some(end) = windows.last().map(|w| w.end) else {
        return out;
    };
    let mut seen: HashSet<u32> = HashSet::new();
    let mut highest: Option<u32> = None;
    let mut last_ts: HashMap<(u32, bool), u32> = HashMap::new();
    let mut prev: Option<Instant> = None;
    for a in &log.frames {
        let w = window_of(windows, a.at);
        if let (Some(w), Some(p)) = (w, prev) {
            let gap = ms(a.at.saturating_duration_since(p));
            out[w].longest_stall_ms = out[w].longest_stall_ms.max(gap);
        }
        prev = Some(a.at);
        account(a, w, &mut out, &mut seen, &mut highest, &mut last_ts);
    }
    // Silence until the end counts as a stall too (a player that stopped
    // receiving stalls until the end of the run).
    let last_w = out.len() - 1;
    let tail_from = prev.unwrap_or(windows[0].start).max(windows[0].start);
    out[last_w].longest_stall_ms = out[last_w]
        .longest_stall_ms
        .max(ms(end.saturating_duration_since(tail_from)));
    if let Some(first) = log.frames.iter().filter_map(|a| a.index).min() {
        for &(at, i) in sent {
            let w = match window_of(windows, at) {
                Some(w) => {
                    out[w].sent += 1;
                    w
                }
                None if at < windows[0].start => 0,
                None => last_w,
            };
            if i >= first && !seen.contains(&i) {
                out[w].lost += 1;
            }
        }
    }
    for (at, _) in &log.ends {
        if let Some(w) = window_of(windows, *at) {
            out[w].disconnects += 1;
        }
    }
    // A real decoder's complaints carry no time: counted over the run.
    out[last_w].decoder_errors = log.decoder_errors.len() as u64;
    // Both logs are in time order: binary searches, not scans from the
    // start per window (a soak has hundreds of windows and millions of
    // frames per player).
    for (w, window) in windows.iter().enumerate().skip(1) {
        let first_sent = sent.partition_point(|(at, _)| *at < window.start);
        let Some(&(_, first_after)) = sent.get(first_sent) else {
            continue;
        };
        let from = log.frames.partition_point(|a| a.at < window.start);
        out[w].recover_ms = log.frames[from..]
            .iter()
            .find(|a| a.index.is_some_and(|i| i >= first_after))
            .map(|a| ms(a.at.saturating_duration_since(window.start)));
    }
    out
}

fn account(
    a: &Arrival,
    w: Option<usize>,
    out: &mut [PlayerStats],
    seen: &mut HashSet<u32>,
    highest: &mut Option<u32>,
    last_ts: &mut HashMap<(u32, bool), u32>,
) {
    let Some(index) = a.index else {
        // A real decoder's picture (ffmpeg player): no index to account
        // for, but its timestamps must only go forward.
        if a.kind == MediaKind::Video {
            let regression = last_ts
                .insert((a.conn, true), a.timestamp)
                .is_some_and(|previous| a.timestamp <= previous);
            if let Some(w) = w {
                out[w].received += 1;
                out[w].regressions += u64::from(regression);
            }
        }
        return;
    };
    let track = match a.kind {
        MediaKind::Video => true,
        MediaKind::Audio => false,
        MediaKind::Data => return,
    };
    let duplicate = !seen.insert(index);
    let late = !duplicate && highest.is_some_and(|h| index < h);
    *highest = Some(highest.map_or(index, |h| h.max(index)));
    let regression = last_ts
        .insert((a.conn, track), a.timestamp)
        .is_some_and(|previous| a.timestamp < previous);
    if let Some(w) = w {
        let s = &mut out[w];
        s.received += 1;
        s.duplicated += u64::from(duplicate);
        s.out_of_order += u64::from(late);
        s.regressions += u64::from(regression);
    }
}

/// Sums (and maxima) over the windows.
pub fn total(windows: &[PlayerStats]) -> PlayerStats {
    let mut t = windows.first().cloned().unwrap_or_default();
    for s in windows.iter().skip(1) {
        t.disconnects += s.disconnects;
        t.sent += s.sent;
        t.received += s.received;
        t.lost += s.lost;
        t.duplicated += s.duplicated;
        t.out_of_order += s.out_of_order;
        t.regressions += s.regressions;
        t.decoder_errors += s.decoder_errors;
        t.longest_stall_ms = t.longest_stall_ms.max(s.longest_stall_ms);
        t.recover_ms = match (t.recover_ms, s.recover_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    t
}

pub fn publisher_windows(
    name: &str,
    disrupted: bool,
    log: &PubLog,
    windows: &[Window],
) -> Vec<PublisherStats> {
    let mut out: Vec<PublisherStats> = windows
        .iter()
        .map(|_| PublisherStats {
            publisher: name.to_owned(),
            disrupted,
            ..PublisherStats::default()
        })
        .collect();
    for &(at, _) in &log.sent {
        if let Some(w) = window_of(windows, at) {
            out[w].sent += 1;
        }
    }
    for (at, _) in &log.disconnects {
        if let Some(w) = window_of(windows, *at) {
            out[w].disconnects += 1;
        }
    }
    out
}

/// What broke the expectations (empty: passed).
pub fn violations(
    expect: &Expect,
    windows: &[WindowReport],
    totals: &[PlayerStats],
) -> Vec<String> {
    let mut v = Vec::new();
    for w in windows {
        if let Some(e) = &w.error {
            v.push(format!("fault {:?} could not be applied: {e}", w.label));
        }
        for p in w.publishers.iter().filter(|p| !p.disrupted) {
            if p.disconnects > expect.max_publisher_disconnects {
                v.push(format!(
                    "publisher {} disconnected {} time(s) during {:?}",
                    p.publisher, p.disconnects, w.label
                ));
            }
        }
    }
    let stall = ms(expect.max_stall.0);
    for t in totals.iter().filter(|t| !t.disrupted) {
        let mut check = |what: &str, value: u64, bound: u64| {
            if value > bound {
                v.push(format!("{}: {what} {value} > {bound}", t.player));
            }
        };
        check("disconnects", t.disconnects, expect.max_disconnects);
        check("lost frames", t.lost, expect.max_lost);
        check("duplicated frames", t.duplicated, expect.max_duplicated);
        check(
            "out-of-order frames",
            t.out_of_order,
            expect.max_out_of_order,
        );
        check(
            "timestamp regressions",
            t.regressions,
            expect.max_regressions,
        );
        check("longest stall (ms)", t.longest_stall_ms, stall);
        check("decoder errors", t.decoder_errors, 0);
        if t.received == 0 {
            v.push(format!("{}: received nothing", t.player));
        }
    }
    v
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

const HEAD: &str =
    "  player          disc   sent   recv  lost  dup  ooo  regr  stall_ms  recover_ms";

fn row(s: &PlayerStats) -> String {
    format!(
        "  {:<14}{} {:>4} {:>6} {:>6} {:>5} {:>4} {:>4} {:>5} {:>9} {:>11}",
        s.player,
        if s.disrupted { "*" } else { " " },
        s.disconnects,
        s.sent,
        s.received,
        s.lost,
        s.duplicated,
        s.out_of_order,
        s.regressions,
        s.longest_stall_ms,
        opt(s.recover_ms)
    )
}

impl Report {
    /// The one-screen summary: a table per fault, totals, the verdict.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if self.is_skipped() {
            let _ = writeln!(
                out,
                "SKIP {}: {}",
                self.scenario,
                self.violations.join("; ")
            );
            return out;
        }
        let _ = writeln!(
            out,
            "=== {} ({}{}, {:.1}s{}) ===",
            self.scenario,
            self.mode,
            self.mode_note
                .as_ref()
                .map_or(String::new(), |n| format!(" — {n}")),
            self.wall_ms as f64 / 1000.0,
            self.seed.map_or(String::new(), |s| format!(", seed {s}"))
        );
        for w in &self.windows {
            let _ = writeln!(
                out,
                "[+{:.1}s] {}{}{}",
                w.at_ms as f64 / 1000.0,
                w.label,
                if w.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", w.detail)
                },
                w.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" — FAILED: {e}"))
            );
            let _ = writeln!(out, "{HEAD}");
            for p in &w.players {
                let _ = writeln!(out, "{}", row(p));
            }
            for p in &w.publishers {
                if p.disconnects > 0 {
                    let _ = writeln!(
                        out,
                        "  publisher {} disconnected {} time(s){}",
                        p.publisher,
                        p.disconnects,
                        if p.disrupted { " (expected)" } else { "" }
                    );
                }
            }
        }
        let _ = writeln!(out, "[total]\n{HEAD}");
        for t in &self.totals {
            let _ = writeln!(out, "{}", row(t));
        }
        let _ = writeln!(
            out,
            "  (* = its own edge or publisher is faulted: reported, not checked)"
        );
        let memory = memory_lines(&self.memory);
        if !memory.is_empty() {
            let _ = writeln!(out, "[memory] RSS MiB, start→end per generation");
            for chunk in memory.chunks(3) {
                let _ = writeln!(out, "  {}", chunk.join(" | "));
            }
        }
        if self.passed {
            let _ = writeln!(out, "PASS {}", self.scenario);
        } else {
            let _ = writeln!(out, "FAIL {}:", self.scenario);
            for v in &self.violations {
                let _ = writeln!(out, "  - {v}");
            }
            let _ = writeln!(out, "  logs: {}", self.logs);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(at: Instant, index: u32, ts: u32) -> Arrival {
        Arrival {
            at,
            index: Some(index),
            kind: MediaKind::Video,
            timestamp: ts,
            conn: 0,
        }
    }

    #[test]
    fn windows_count_losses_duplicates_regressions_and_stalls() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let windows = vec![
            Window {
                label: "before".into(),
                start: at(0),
                end: at(1000),
                detail: String::new(),
                error: None,
            },
            Window {
                label: "kill".into(),
                start: at(1000),
                end: at(1600),
                detail: String::new(),
                error: None,
            },
        ];
        // 20 frames sent every 100 ms; the player misses 12, gets 14
        // twice (with a timestamp going back) and stalls 400 ms after the
        // fault.
        let sent: Vec<(Instant, u32)> = (0..20).map(|i| (at(i * 100), i as u32)).collect();
        let mut log = PlayLog::default();
        for i in 0..10u32 {
            log.frames
                .push(arrival(at(u64::from(i) * 100 + 5), i, i * 100));
        }
        log.frames.push(arrival(at(1005), 10, 1000));
        log.frames.push(arrival(at(1405), 11, 1100));
        for i in [13u32, 14, 14, 15, 16, 17, 18, 19] {
            let ts = if i == 14 && log.frames.last().is_some_and(|a| a.index == Some(14)) {
                1300
            } else {
                i * 100
            };
            log.frames
                .push(arrival(at(1400 + u64::from(i - 12) * 20), i, ts));
        }
        let stats = player_windows("p", false, &log, &sent, &windows);
        assert_eq!(
            stats[0].lost + stats[0].duplicated + stats[0].regressions,
            0
        );
        assert_eq!(stats[0].received, 10);
        assert_eq!(stats[0].sent, 10);
        assert_eq!(stats[1].lost, 1);
        assert_eq!(stats[1].duplicated, 1);
        assert_eq!(stats[1].regressions, 1);
        assert_eq!(stats[1].longest_stall_ms, 400);
        assert_eq!(stats[1].recover_ms, Some(5));
        let t = total(&stats);
        assert_eq!((t.lost, t.duplicated, t.received), (1, 1, 20));
        let expect = Expect::default();
        let report = Report {
            scenario: "unit".into(),
            description: String::new(),
            mode: "loopback".into(),
            mode_note: None,
            result: "fail".into(),
            seed: None,
            wall_ms: 2000,
            passed: false,
            violations: violations(&expect, &[], std::slice::from_ref(&t)),
            windows: vec![],
            totals: vec![t],
            memory: vec![],
            logs: String::new(),
        };
        assert_eq!(report.violations.len(), 4, "{:?}", report.violations);
        let summary = report.summary();
        assert!(summary.contains("FAIL unit"), "{summary}");
        assert!(summary.lines().count() < 25);
    }

    #[test]
    fn memory_is_one_line_per_process_with_every_generation() {
        let sample = |process: &str, pid: u32, event: &str, rss_kib: u64| MemorySample {
            process: process.into(),
            pid,
            event: event.into(),
            at_ms: 0,
            rss_kib,
        };
        let samples = vec![
            sample("baton-chaos", 1, "start", 10240),
            sample("origin0", 10, "start", 6144),
            sample("origin1", 11, "start", 6144),
            sample("origin0", 10, "exit", 8192),
            sample("origin0", 12, "start", 5120),
            sample("origin0", 12, "end", 7168),
            sample("origin1", 11, "end", 6656),
            sample("baton-chaos", 1, "end", 20480),
        ];
        assert_eq!(
            memory_lines(&samples),
            vec![
                "baton-chaos 10.0→20.0".to_owned(),
                "origin0 6.0→8.0 (exit), 5.0→7.0".to_owned(),
                "origin1 6.0→6.5".to_owned(),
            ]
        );
    }
}
