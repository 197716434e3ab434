//! `baton-bench table`: the side-by-side markdown table of fan-out runs.
//!
//! Reads the JSON reports written by `fanout --json` and renders one row
//! per run. Each row whose protocol the baseline (e.g. `nginx-rtmp`) also
//! ran gets the ratios to it: server CPU seconds per delivered gigabyte and
//! players that could play (below 1.0 is cheaper, above 1.0 is more
//! players). A row without a baseline peer says so.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::stats::Report;

pub fn load(paths: &[PathBuf]) -> Result<Vec<Report>> {
    paths
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    }
}

/// Renders the markdown table comparing `reports` with the runs labelled
/// `baseline`.
pub fn render(reports: &[Report], baseline: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| server | protocol | players ok / asked | Gbit/s | server CPU-s | CPU-s per GB | max gap per player p50 / p99 / max (ms) | all gaps p99 (ms) | violations ts / first frame | client CPU | CPU-s/GB vs {baseline} | players vs {baseline} |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let peer = reports
            .iter()
            .find(|b| b.label == baseline && b.protocol == r.protocol);
        let (cpu_ratio, players_ratio) = match peer {
            _ if r.label == baseline => ("baseline".to_string(), "baseline".to_string()),
            Some(b) => (
                ratio(r.server_cpu_s_per_gb, b.server_cpu_s_per_gb),
                ratio(Some(r.players_ok() as f64), Some(b.players_ok() as f64)),
            ),
            None => (format!("no {baseline} peer"), format!("no {baseline} peer")),
        };
        let g = r.max_gap_per_player_ms;
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} | {:.3} | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} | {} / {} | {:.0}% | {} | {} |",
            r.label,
            r.protocol,
            r.players_ok(),
            r.players_requested,
            r.steady_throughput_gbps,
            opt(r.server_cpu_s, 2),
            opt(r.server_cpu_s_per_gb, 3),
            g.p50,
            g.p99,
            g.max,
            r.gap_ms.p99,
            r.ts_violations,
            r.first_frame_violations,
            100.0 * r.client_cpu_s / r.elapsed_s.max(1e-9),
            cpu_ratio,
            players_ratio,
        );
    }
    out
}

impl Report {
    /// Players that connected and played until the end of the run.
    pub fn players_ok(&self) -> u64 {
        self.players_connected
            .saturating_sub(self.players_disconnected_early)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, protocol: &str, ok: u64, cpu_per_gb: f64) -> Report {
        Report {
            label: label.into(),
            protocol: protocol.into(),
            players_requested: 1000,
            players_connected: ok,
            server_cpu_s: Some(1.0),
            server_cpu_s_per_gb: Some(cpu_per_gb),
            elapsed_s: 20.0,
            ..Report::default()
        }
    }

    #[test]
    fn ratios_against_the_baseline() {
        let reports = [
            report("baton", "rtmp", 1000, 1.0),
            report("nginx-rtmp", "rtmp", 500, 4.0),
            report("baton", "http-flv", 1000, 0.5),
        ];
        let table = render(&reports, "nginx-rtmp");
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 5);
        assert!(rows[2].ends_with("| 0.25 | 2.00 |"), "{}", rows[2]);
        assert!(rows[3].ends_with("| baseline | baseline |"), "{}", rows[3]);
        assert!(rows[4].contains("no nginx-rtmp peer"), "{}", rows[4]);
    }
}
