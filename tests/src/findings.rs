//! Violations a test collects and reports together at its end, with the
//! origin's log tail: a test of several promises shows every broken one,
//! not just the first.

use crate::origin::Origin;

#[derive(Debug, Default)]
pub struct Findings(Vec<String>);

impl Findings {
    /// Record `what` unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FINDING: {what}");
            self.0.push(what);
        }
    }

    /// Fail the test if anything was recorded, showing the origin's log.
    #[track_caller]
    pub fn assert_none(&self, origin: &Origin) {
        assert!(
            self.0.is_empty(),
            "{} violation(s):\n- {}\n--- origin log tail ---\n{}",
            self.0.len(),
            self.0.join("\n- "),
            origin.log_tail(80)
        );
    }
}
