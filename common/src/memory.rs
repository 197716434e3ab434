//! The process-wide memory ledger: the bytes an untrusted client can make
//! this process hold, counted where they are held, against one budget
//! (`memory_budget`).
//!
//! Counted (each with an atomic, updated where the bytes are taken or let
//! go, so reading the total is one load per pool):
//! * [`Pool::Streams`]: every source's ring in the hub: the payload bytes
//!   of the frames it keeps (GOP cache plus the backlog for slow players;
//!   headers are frames of the ring too). Encoded copies made for players
//!   (`SharedFrame::rtmp_chunks` / `flv_tag`, at most one per wire format)
//!   are not counted.
//! * [`Pool::ConnectionInput`]: per RTMP connection, the bytes read from
//!   the socket and not yet decoded plus the chunk decoder's partial
//!   messages.
//!
//! Not counted: HTTP request buffers (hyper, capped at 64 KiB per
//! connection), socket buffers (the kernel's), frames in flight between
//! the ring and a socket write, and fixed per-connection overhead (task,
//! registry entry): those are bounded by `max_connections`.
//!
//! The ledger only counts and answers "over budget?"; what to shed is
//! decided by `serve::limits::shedding` and done by its governor.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Where counted bytes are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Sources' rings (GOP caches and backlogs).
    Streams,
    /// RTMP connections' undecoded input and partial messages.
    ConnectionInput,
}

static STREAMS: AtomicUsize = AtomicUsize::new(0);
static CONNECTION_INPUT: AtomicUsize = AtomicUsize::new(0);
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

fn counter(pool: Pool) -> &'static AtomicUsize {
    match pool {
        Pool::Streams => &STREAMS,
        Pool::ConnectionInput => &CONNECTION_INPUT,
    }
}

/// Sets the process's budget (the node does this once at start).
pub fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

pub fn budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Bytes counted in `pool` now.
pub fn held(pool: Pool) -> usize {
    counter(pool).load(Ordering::Relaxed)
}

/// Bytes counted in every pool now.
pub fn used() -> usize {
    held(Pool::Streams).saturating_add(held(Pool::ConnectionInput))
}

/// Whether the counted bytes exceed the budget.
pub fn over_budget() -> bool {
    used() > budget()
}

/// An amount held in one pool by one owner (a source, a connection): set
/// it as the amount changes; dropping it gives the amount back.
#[derive(Debug)]
pub struct Charge {
    pool: Pool,
    amount: usize,
}

impl Charge {
    pub fn new(pool: Pool) -> Self {
        Charge { pool, amount: 0 }
    }

    /// The owner now holds `amount` bytes.
    pub fn set(&mut self, amount: usize) {
        let counter = counter(self.pool);
        if amount > self.amount {
            counter.fetch_add(amount - self.amount, Ordering::Relaxed);
        } else if amount < self.amount {
            counter.fetch_sub(self.amount - amount, Ordering::Relaxed);
        }
        self.amount = amount;
    }

    pub fn amount(&self) -> usize {
        self.amount
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_moves_the_pool_and_gives_back_on_drop() {
        // Other tests of this process may hold stream bytes; the
        // connection pool is only charged here.
        let before = held(Pool::ConnectionInput);
        let mut charge = Charge::new(Pool::ConnectionInput);
        charge.set(1000);
        assert!(held(Pool::ConnectionInput) >= before + 1000);
        charge.set(400);
        assert_eq!(charge.amount(), 400);
        drop(charge);
        assert!(held(Pool::ConnectionInput) <= before + 1000);
    }
}
