//! Players written by their source's flusher, not by their own tasks.
//!
//! A player that keeps up spends most of its per-window cost outside the
//! write itself: its task is woken, scheduled and polled, it re-arms its
//! stop signals, its read half and a wake-up registration, and only then
//! writes. With thousands of players on one stream that is thousands of
//! task wake-ups per window for thousands of writes that never block.
//!
//! So a player whose socket took everything it was given may *park*
//! here: it registers a [`DirectPlayer`] and its task sleeps on what only
//! it can handle (its socket's input, a kick, shutdown). When the budget
//! runs out, the flusher walks the parked players and each one takes its
//! frames and writes them without blocking, in the flusher's own task:
//! one wake-up per source per window instead of one per player.
//!
//! Whatever a parked write cannot do at once goes back to the player's
//! task ([`DirectPlayer::hand_back`]): a write the socket did not take
//! whole, a publish/unpublish event, a batch at its size limit, a skip
//! policy error, any stop signal. The task then continues exactly where
//! the parked writes stopped, so bytes stay in order and nothing is
//! delivered twice. The hub knows nothing of sockets: the serving layer
//! implements the trait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A parked player, as its source's flusher sees it.
pub trait DirectPlayer: Send + Sync {
    /// Take what is pending and write it without blocking; hand the
    /// player back to its task for anything that cannot be done so.
    fn write_round(&self);
    /// Something the player's own task must see now (a publish event,
    /// the source closing): stop writing here and wake the task.
    fn hand_back(&self);
    /// Start loading what [`Self::write_round`] will read (see
    /// [`prefetch_object`]); the flusher calls it a few players ahead.
    fn prefetch(&self) {}
}

/// Ask the CPU to start loading every cache line of `value`. A round
/// touches thousands of players once each, so each one's state is cold:
/// loaded a few players ahead, it is there by the time the round gets to
/// it instead of stalling the round once per player.
pub fn prefetch_object<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = (value as *const T).cast::<i8>();
        for offset in (0..std::mem::size_of::<T>()).step_by(64) {
            // A prefetch is only a hint: it never faults nor reads into
            // anything; the address is inside `value` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The parked players of one source.
#[derive(Default)]
pub(crate) struct DirectPlayers {
    inner: Mutex<Registry>,
}

/// Ordered by id, that is by when each player parked: mostly the order
/// its connection was accepted in, so a round walks the kernel's socket
/// objects roughly in the order they were allocated (fewer TLB misses
/// than a hash map's arbitrary order).
#[derive(Default)]
struct Registry {
    next_id: u64,
    players: BTreeMap<u64, Arc<dyn DirectPlayer>>,
}

impl std::fmt::Debug for DirectPlayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPlayers")
            .field("parked", &self.lock().players.len())
            .finish()
    }
}

impl DirectPlayers {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn park(&self, player: Arc<dyn DirectPlayer>) -> u64 {
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        registry.players.insert(id, player);
        id
    }

    pub(crate) fn unpark(&self, id: u64) {
        self.lock().players.remove(&id);
    }

    /// The players parked now, into `out` (the flusher's reused buffer):
    /// they are written after the lock is released.
    pub(crate) fn snapshot(&self, out: &mut Vec<Arc<dyn DirectPlayer>>) {
        out.extend(self.lock().players.values().cloned());
    }

    /// Hand every parked player back to its task.
    pub(crate) fn hand_back_all(&self) {
        let mut players = Vec::new();
        self.snapshot(&mut players);
        for player in players {
            player.hand_back();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().players.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counting {
        rounds: AtomicUsize,
        hand_backs: AtomicUsize,
    }

    impl DirectPlayer for Counting {
        fn write_round(&self) {
            self.rounds.fetch_add(1, Ordering::Relaxed);
        }
        fn hand_back(&self) {
            self.hand_backs.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn parked_players_are_listed_until_unparked() {
        let players = DirectPlayers::default();
        let a = Arc::new(Counting::default());
        let b = Arc::new(Counting::default());
        let id_a = players.park(a.clone());
        let _id_b = players.park(b.clone());
        assert_eq!(players.len(), 2);
        players.hand_back_all();
        assert_eq!(a.hand_backs.load(Ordering::Relaxed), 1);
        assert_eq!(b.hand_backs.load(Ordering::Relaxed), 1);
        players.unpark(id_a);
        let mut round = Vec::new();
        players.snapshot(&mut round);
        assert_eq!(round.len(), 1);
        round[0].write_round();
        assert_eq!(b.rounds.load(Ordering::Relaxed), 1);
        assert_eq!(a.rounds.load(Ordering::Relaxed), 0);
    }
}
