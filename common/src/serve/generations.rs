//! Counting the whole service across process generations.
//!
//! After a smooth upgrade, older generations keep serving their clients
//! while they drain. SRS's design loses sight of them; here the newest
//! generation asks each older one (over its control socket) for its own
//! summary and reports them all, so `/api/v1/summaries` shows the service,
//! not just one process. Generations that no longer answer have exited and
//! are forgotten.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::handover::{query_stats, GenerationSummary};
use serde_json::{json, Value};

use super::api::local_summary;
use super::ServerContext;

/// Summaries of the older generations that still answer, newest first.
pub async fn older_summaries(ctx: &ServerContext) -> Vec<GenerationSummary> {
    let paths: Vec<PathBuf> = ctx.older_generations().clone();
    let mut alive = Vec::new();
    let mut summaries = Vec::new();
    for path in paths {
        match query_stats(&path).await {
            Ok(stats) => {
                summaries.push(stats);
                alive.push(path);
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "older generation gone");
            }
        }
    }
    *ctx.older_generations() = alive;
    summaries
}

pub async fn summaries(ctx: &ServerContext) -> Value {
    let local = local_summary(ctx);
    let mut generations = vec![local.clone()];
    generations.extend(older_summaries(ctx).await);
    let sum = |field: fn(&GenerationSummary) -> u64| -> u64 { generations.iter().map(field).sum() };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "code": 0,
        "server": ctx.server_id(),
        "data": {
            "ok": true,
            "now_ms": now_ms,
            "self": {
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "generation": ctx.generation,
                "mem_kbyte": local.mem_kbyte,
                "cpu_seconds": local.cpu_seconds,
                "srs_uptime": ctx.started.elapsed().as_secs(),
                "uptime_ms": local.uptime_ms,
            },
            "service": {
                "generations": generations.len(),
                "clients": sum(|g| g.clients),
                "publishers": sum(|g| g.publishers),
                "players": sum(|g| g.players),
                "streams": sum(|g| g.streams),
                "bytes_in": sum(|g| g.bytes_in),
                "bytes_out": sum(|g| g.bytes_out),
            },
            "generations": generations,
        }
    })
}
