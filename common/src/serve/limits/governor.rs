//! The memory governor: every 100 ms, if the counted memory is over
//! `memory_budget`, carry out the [`super::shedding`] plan: trim the
//! sources, close the connections it names, count and log what was shed,
//! and hand the freed memory back to the OS. Also publishes the ledger
//! as gauges (`baton_memory_counted_bytes{pool}`, `baton_memory_budget_bytes`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{self, Pool};

use super::shedding::{self, ConnectionUse, ShedAction, SourceUse};
use super::warnings;
use crate::serve::ServerContext;

const PERIOD: Duration = Duration::from_millis(100);

pub fn spawn(ctx: Arc<ServerContext>) -> tokio::task::JoinHandle<()> {
    memory::set_budget(usize::try_from(ctx.settings.limits.memory_budget).unwrap_or(usize::MAX));
    metrics::gauge!("baton_memory_budget_bytes").set(memory::budget() as f64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            if n.is_multiple_of(10) {
                metrics::gauge!("baton_memory_counted_bytes", "pool" => "streams")
                    .set(memory::held(Pool::Streams) as f64);
                metrics::gauge!("baton_memory_counted_bytes", "pool" => "connection-input")
                    .set(memory::held(Pool::ConnectionInput) as f64);
            }
            if memory::over_budget() {
                shed(&ctx);
            }
        }
    })
}

fn shed(ctx: &ServerContext) {
    let used = memory::used();
    let budget = memory::budget();
    let sources: HashMap<u64, _> = ctx
        .hub
        .sources_snapshot()
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    let source_use: Vec<SourceUse> = sources
        .values()
        .map(|s| {
            let (held, backlog) = s.memory_use();
            SourceUse {
                id: s.id,
                held,
                backlog,
            }
        })
        .collect();
    let clients = ctx.clients.list();
    let connection_use: Vec<ConnectionUse> = clients
        .iter()
        .map(|c| ConnectionUse {
            id: c.id,
            input: c.input_buffered.load(Ordering::Relaxed) as usize,
        })
        .filter(|c| c.input > 0)
        .collect();
    let actions = shedding::plan(used, budget, &source_use, &connection_use);
    if actions.is_empty() {
        return;
    }
    let mut freed = 0usize;
    for action in &actions {
        metrics::counter!("baton_memory_shed_total", "action" => action.label()).increment(1);
        match *action {
            ShedAction::TrimBacklog { source, .. } => {
                if let Some(s) = sources.get(&source) {
                    freed += s.trim_backlog();
                }
            }
            ShedAction::DropCache { source, .. } => {
                if let Some(s) = sources.get(&source) {
                    freed += s.drop_cache();
                    let peer = s.stats().publisher.map(|p| p.peer.ip());
                    log_shed(action, &format!("stream {}", s.key), peer);
                }
            }
            ShedAction::Disconnect { client, frees } => {
                if let Some(c) = clients.iter().find(|c| c.id == client) {
                    c.kick.kick(
                        "shed by the memory governor (largest buffered input, over memory_budget)",
                    );
                    freed += frees;
                    log_shed(
                        action,
                        &format!("client {} ({})", c.id, c.peer),
                        Some(c.peer.ip()),
                    );
                }
            }
        }
    }
    if warnings::note("memory over budget", IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
        tracing::warn!(
            used,
            budget,
            freed,
            actions = actions.len(),
            "memory over budget: shed the largest consumers"
        );
    }
    crate::telemetry::release_free_memory();
}

fn log_shed(action: &ShedAction, what: &str, peer: Option<IpAddr>) {
    let reason = match action {
        ShedAction::TrimBacklog { .. } => "memory shed: backlog trimmed",
        ShedAction::DropCache { .. } => "memory shed: GOP cache dropped",
        ShedAction::Disconnect { .. } => "memory shed: connection closed (largest buffered input)",
    };
    if warnings::note(reason, peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))) {
        tracing::warn!(frees = action.frees(), "{reason}: {what}");
    }
}
