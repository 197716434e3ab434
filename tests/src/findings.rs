//! Violations a test collects and reports together at its end, with the
//! origin's log tail: a test of several promises shows every broken one,
//! not just the first.

use std::time::{Duration, Instant};

use crate::feed::Watcher;
use crate::node::Node;

#[derive(Debug, Default)]
pub struct Findings(Vec<String>);

impl Findings {
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Record `what` unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FINDING: {what}");
            self.0.push(what);
        }
    }

    /// Record unless `watcher` receives `frames` more frames within
    /// `limit` and has no gap in the frame indices it saw.
    pub async fn still_served(
        &mut self,
        watcher: &Watcher,
        frames: u64,
        limit: Duration,
        when: &str,
    ) {
        let more = watcher.wait_frames(frames, limit).await;
        self.check(more.is_ok(), || {
            format!("{} not served {when}: {:?}", watcher.label, more.err())
        });
        let seen = watcher.seen();
        self.check(seen.index_gaps.is_empty(), || {
            format!(
                "{} has index gaps {when}: {:?}",
                watcher.label, seen.index_gaps
            )
        });
    }

    /// Record every continuity violation of `watcher` (see
    /// [`crate::feed::Seen::continuity_violations`]: duplicates and
    /// timestamp regressions on either track, frames missing after
    /// `fault`), and print its continuity summary with the longest stall.
    pub fn continuous(&mut self, watcher: &Watcher, fault: Instant, when: &str) {
        let seen = watcher.seen();
        eprintln!("{} {when}: {}", watcher.label, seen.continuity_summary());
        for violation in seen.continuity_violations(fault) {
            self.check(false, || format!("{} {when}: {violation}", watcher.label));
        }
    }

    /// Fail the test if anything was recorded, showing the node's log
    /// (an origin's or an edge's).
    #[track_caller]
    pub fn assert_none(&self, origin: &Node) {
        assert!(
            self.0.is_empty(),
            "{} violation(s):\n- {}\n--- {} log tail ---\n{}",
            self.0.len(),
            self.0.join("\n- "),
            origin.role().label(),
            origin.log_tail(80)
        );
    }
}
