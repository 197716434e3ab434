//! What to shed when the counted memory (see `crate::memory`) is over
//! `memory_budget`: a sans-IO plan the governor carries out.
//!
//! Order, stopping as soon as the projected use is at most 90% of the
//! budget (so the governor does not act again at the next push):
//! 1. Backlogs: the frames a source keeps before its last keyframe, for
//!    slow players and edges resuming; players at the live edge do not
//!    need them. Largest first.
//! 2. Then the largest consumer of all, one at a time: a source's GOP
//!    cache (its whole ring: new players then start at the next keyframe,
//!    players reading it skip to it) or an RTMP connection's buffered
//!    input (the connection is closed).

/// A source's counted bytes, as the governor saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceUse {
    pub id: u64,
    /// Bytes of its ring.
    pub held: usize,
    /// Of those, the bytes before its GOP start.
    pub backlog: usize,
}

/// A connection's counted input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionUse {
    pub id: u64,
    pub input: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedAction {
    /// Drop the source's frames before its GOP start.
    TrimBacklog { source: u64, frees: usize },
    /// Drop the source's whole ring.
    DropCache { source: u64, frees: usize },
    /// Close the connection.
    Disconnect { client: u64, frees: usize },
}

impl ShedAction {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ShedAction::TrimBacklog { .. } => "trim-backlog",
            ShedAction::DropCache { .. } => "drop-gop-cache",
            ShedAction::Disconnect { .. } => "disconnect",
        }
    }

    pub fn frees(&self) -> usize {
        match *self {
            ShedAction::TrimBacklog { frees, .. }
            | ShedAction::DropCache { frees, .. }
            | ShedAction::Disconnect { frees, .. } => frees,
        }
    }
}

/// What the plan aims for: 90% of the budget.
pub fn target(budget: usize) -> usize {
    budget / 10 * 9
}

/// The actions that bring `used` within the budget (none if it is).
pub fn plan(
    used: usize,
    budget: usize,
    sources: &[SourceUse],
    connections: &[ConnectionUse],
) -> Vec<ShedAction> {
    let mut actions = Vec::new();
    if used <= budget {
        return actions;
    }
    let goal = target(budget);
    let mut projected = used;
    let mut by_backlog: Vec<SourceUse> =
        sources.iter().copied().filter(|s| s.backlog > 0).collect();
    by_backlog.sort_by(|a, b| b.backlog.cmp(&a.backlog).then(a.id.cmp(&b.id)));
    for source in by_backlog {
        if projected <= goal {
            return actions;
        }
        projected = projected.saturating_sub(source.backlog);
        actions.push(ShedAction::TrimBacklog {
            source: source.id,
            frees: source.backlog,
        });
    }
    let mut consumers: Vec<ShedAction> = sources
        .iter()
        .filter(|s| s.held > s.backlog)
        .map(|s| ShedAction::DropCache {
            source: s.id,
            frees: s.held - s.backlog,
        })
        .chain(
            connections
                .iter()
                .filter(|c| c.input > 0)
                .map(|c| ShedAction::Disconnect {
                    client: c.id,
                    frees: c.input,
                }),
        )
        .collect();
    consumers.sort_by_key(|action| std::cmp::Reverse(action.frees()));
    for action in consumers {
        if projected <= goal {
            break;
        }
        projected = projected.saturating_sub(action.frees());
        actions.push(action);
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn source(id: u64, held_mib: usize, backlog_mib: usize) -> SourceUse {
        SourceUse {
            id,
            held: held_mib * MIB,
            backlog: backlog_mib * MIB,
        }
    }

    #[test]
    fn nothing_within_budget() {
        assert!(plan(100 * MIB, 100 * MIB, &[source(1, 100, 50)], &[]).is_empty());
    }

    #[test]
    fn backlogs_first_largest_first_until_90_percent() {
        let sources = [source(1, 20, 10), source(2, 40, 30), source(3, 10, 5)];
        let actions = plan(110 * MIB, 100 * MIB, &sources, &[]);
        // 110 - 30 = 80 <= 90: one trim, of the largest backlog.
        assert_eq!(
            actions,
            vec![ShedAction::TrimBacklog {
                source: 2,
                frees: 30 * MIB
            }]
        );
    }

    #[test]
    fn then_the_largest_consumer_cache_or_connection() {
        let sources = [source(1, 30, 0), source(2, 2, 0)];
        let connections = [
            ConnectionUse {
                id: 7,
                input: 32 * MIB,
            },
            ConnectionUse { id: 8, input: MIB },
        ];
        let actions = plan(120 * MIB, 100 * MIB, &sources, &connections);
        assert_eq!(
            actions,
            vec![ShedAction::Disconnect {
                client: 7,
                frees: 32 * MIB
            }]
        );
        let actions = plan(150 * MIB, 100 * MIB, &sources, &connections);
        assert_eq!(
            actions.iter().map(ShedAction::label).collect::<Vec<_>>(),
            ["disconnect", "drop-gop-cache"]
        );
        // The small source is spared while bigger consumers cover it.
        assert!(!actions.contains(&ShedAction::DropCache {
            source: 2,
            frees: 2 * MIB
        }));
    }
}
