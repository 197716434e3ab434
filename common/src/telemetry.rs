//! Telemetry shared by every Baton binary: log setup (tracing), the
//! Prometheus recorder behind the `metrics` macros, and the process's own
//! resource figures (RSS, CPU) read from /proc.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Install the global tracing subscriber. `filter` uses EnvFilter syntax
/// ("info", "info,baton_origin=debug"); an invalid filter falls back to
/// "info" with a warning rather than refusing to start.
pub fn init_logging(filter: &str) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    if let Some(error) = bad {
        tracing::warn!(filter, %error, "invalid log filter; using \"info\"");
    }
}

/// Install the Prometheus recorder; the handle renders `/metrics`.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    Ok(handle)
}

/// The process's resident memory and CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub rss_kb: u64,
    pub cpu_seconds: f64,
}

/// Read RSS and CPU time of this process (zeros where /proc is missing).
pub fn process_stats() -> ProcessStats {
    process_stats_of("self")
}

/// Read RSS and CPU time of `pid` ("self" for this process).
pub fn process_stats_of(pid: &str) -> ProcessStats {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 (1-based) of the whole line.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / clock_ticks_per_second())
        })
        .unwrap_or(0.0);
    ProcessStats {
        rss_kb,
        cpu_seconds,
    }
}

/// Hand memory the allocator holds but no longer uses back to the OS.
///
/// glibc keeps freed memory in its arenas; after a burst of short-lived
/// streams that can be hundreds of MiB of resident memory serving nobody.
/// The hub calls this after freeing sources, so memory stays flat however
/// many streams come and go. A no-op on other allocators.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has
    // no preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_stats() {
        let stats = process_stats();
        assert!(stats.rss_kb > 0);
        assert!(stats.cpu_seconds >= 0.0);
    }
}
