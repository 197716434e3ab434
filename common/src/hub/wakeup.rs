//! How a source wakes its players, with write coalescing done once per
//! source instead of once per player.
//!
//! Without coalescing every push wakes every waiting player. With a
//! coalescing window, the first push after a flush arms a single per-source
//! timer; when it fires, all players wake once and each takes everything
//! that arrived in the window in one write. Players never sleep on their
//! own timers, so a batch costs each player one wake-up, and the added
//! latency is bounded by the window. Events that change what a player must
//! do (publish, unpublish) wake everyone at once.
//!
//! Relays (an edge pulling from an origin, an edge forwarding a publish)
//! are not players: they wait on [`Wakeup::immediate`], woken by every
//! push, so coalescing is applied once, at the node that serves the
//! viewers, and an edge hop adds no coalescing window of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    /// What players wait on.
    pub players: Notify,
    /// What relays wait on: every push.
    pub immediate: Notify,
    /// Arms the flush timer.
    flush_requested: Notify,
    flush_pending: AtomicBool,
    closed: AtomicBool,
}

impl Wakeup {
    /// A wake-up policy with a coalescing `window`; zero (or no tokio
    /// runtime to run the timer on) means every push wakes players at once.
    pub fn new(window: Duration) -> (Arc<Self>, bool) {
        let wakeup = Arc::new(Wakeup::default());
        let coalescing = !window.is_zero()
            && tokio::runtime::Handle::try_current().is_ok_and(|handle| {
                let flusher = wakeup.clone();
                handle.spawn(async move { flusher.run_flusher(window).await });
                true
            });
        (wakeup, coalescing)
    }

    async fn run_flusher(&self, window: Duration) {
        loop {
            self.flush_requested.notified().await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(window).await;
            self.flush_pending.store(false, Ordering::Release);
            self.players.notify_waiters();
        }
    }

    /// New data: wake players now, or at the end of the window.
    pub fn data(&self, coalescing: bool) {
        self.immediate.notify_waiters();
        if !coalescing {
            self.players.notify_waiters();
        } else if !self.flush_pending.swap(true, Ordering::AcqRel) {
            self.flush_requested.notify_one();
        }
    }

    /// Something players must see at once.
    pub fn now(&self) {
        self.players.notify_waiters();
        self.immediate.notify_waiters();
    }

    /// The source is gone: stop the flusher.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush_requested.notify_one();
    }
}
