//! How a source wakes its players: once the oldest frame they have not
//! been given reaches the write latency budget, or sooner once a full
//! write's worth is pending, decided once per source instead of once per
//! player.
//!
//! Every write to a player's socket costs a syscall and, with
//! `TCP_NODELAY`, a TCP segment through the whole send path, whatever its
//! size; at 1 Mbit/s a write per frame (or per 20 ms) is dozens of small
//! segments per player per second, and that per-segment work, not the
//! bytes, is what fan-out spends its CPU on. So players are not woken per
//! push: the first push after a flush starts the budget (`write_coalesce`,
//! default [`super::HubConfig::default`]); when it runs out, every player
//! wakes once and takes everything that arrived since in one write. A
//! high-bitrate stream does not wait for the clock: once
//! [`FLUSH_BYTES`] are pending the flush happens at once. So a frame waits
//! at most the budget, players never sleep on timers of their own, and a
//! batch costs each player one wake-up and one write. Events that change
//! what a player must do (publish, unpublish) wake everyone at once; a
//! player that joins gets the cached GOP at once (it does not wait for a
//! flush).
//!
//! A player takes frames only when a window ends (or when it has more
//! than one batch left), not whenever it loops back and finds something
//! new: otherwise a player whose write finished after the next frame
//! arrived would write again at once, and the budget would save nothing
//! for it. The [`Wakeup::epoch`] counts the wake-ups for that.
//!
//! Players that keep up do not even wake: they are parked in
//! [`Wakeup::direct`] and the flusher writes them itself, one after
//! another, right after bumping the epoch (see [`super::direct`]).
//!
//! The budget bounds how long a frame waits; it does not by itself bound
//! how far apart a player's writes come, which is what a player shows as
//! a stall: the first push after a flush may come a whole audio frame
//! later, and the next flush a budget after that. So the flush also
//! comes once [`WRITE_GAP_SLACK`] past a budget since the last flush, if
//! anything is pending (see [`flush_deadline`]): at the default 80 ms,
//! writes come at most 90 ms apart while a stream flows, and inter-frame
//! gaps stay under 100 ms with the round's own time.
//!
//! Relays (an edge pulling from an origin, an edge forwarding a publish)
//! are not players: they wait on [`Wakeup::immediate`], woken by every
//! push, so the budget is spent once, at the node that serves the
//! viewers, and an edge hop adds no wait of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::direct::{DirectPlayer, DirectPlayers};

/// Payload bytes pending since the last flush at which players are woken
/// without waiting for the budget: about one maximal loopback/GSO segment,
/// past which a larger write saves nothing more per byte.
pub(crate) const FLUSH_BYTES: usize = 64 * 1024;

/// How much longer than the budget two flushes may be apart while
/// frames are pending. Small, so that gaps stay near the budget; not
/// zero, so that a flush still usually waits for its first frame to be
/// a budget old, which is what keeps writes (and their cost) few.
pub(crate) const WRITE_GAP_SLACK: Duration = Duration::from_millis(10);

/// When players are woken for what is pending: once the oldest pending
/// frame (pushed at `first_push`) is `budget` old, or once
/// `budget` + [`WRITE_GAP_SLACK`] have passed since the last flush,
/// whichever is sooner. After a quiet spell longer than that, a frame
/// goes out at once.
pub(crate) fn flush_deadline<T>(first_push: T, last_flush: Option<T>, budget: Duration) -> T
where
    T: Copy + Ord + std::ops::Add<Duration, Output = T>,
{
    let oldest_due = first_push + budget;
    match last_flush {
        Some(last) => oldest_due.min(last + budget + WRITE_GAP_SLACK),
        None => oldest_due,
    }
}

/// How many players ahead a round prefetches a player's state: far
/// enough for the loads to land (one write takes microseconds), near
/// enough that they are not evicted first.
const PREFETCH_AHEAD: usize = 4;

/// Parked players written between two yields of the flusher, so a round
/// over thousands of players does not hold its worker thread for the
/// whole round.
const ROUND_SLICE: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    /// What players wait on.
    pub players: Notify,
    /// Bumped at every wake-up of the players, before they are notified:
    /// a player takes frames once per change.
    pub epoch: AtomicU64,
    /// What relays wait on: every push.
    pub immediate: Notify,
    /// Players written by the flusher itself.
    pub(crate) direct: DirectPlayers,
    /// Starts the budget (first push after a flush).
    flush_requested: Notify,
    /// Ends it early (enough bytes pending).
    flush_now: Notify,
    flush_pending: AtomicBool,
    /// When the first push after the last flush arrived, in ns since
    /// `clock_start`: the budget counts from it, not from when the
    /// flusher (perhaps still writing the last round) notices it.
    first_push_ns: AtomicU64,
    clock_start: std::sync::OnceLock<tokio::time::Instant>,
    pending_bytes: AtomicUsize,
    closed: AtomicBool,
}

impl Wakeup {
    /// A wake-up policy with a latency `budget`; zero (or no tokio runtime
    /// to run the timer on) means every push wakes players at once.
    pub fn new(budget: Duration) -> (Arc<Self>, bool) {
        let wakeup = Arc::new(Wakeup::default());
        let coalescing = !budget.is_zero()
            && tokio::runtime::Handle::try_current().is_ok_and(|handle| {
                let flusher = wakeup.clone();
                handle.spawn(async move { flusher.run_flusher(budget).await });
                true
            });
        (wakeup, coalescing)
    }

    async fn run_flusher(&self, budget: Duration) {
        let mut round: Vec<Arc<dyn DirectPlayer>> = Vec::new();
        let mut last_flush = None;
        loop {
            self.flush_requested.notified().await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let first_push = self.clock_start()
                + Duration::from_nanos(self.first_push_ns.load(Ordering::Acquire));
            tokio::select! {
                _ = tokio::time::sleep_until(flush_deadline(first_push, last_flush, budget)) => {}
                _ = self.flush_now.notified() => {}
            }
            last_flush = Some(tokio::time::Instant::now());
            self.pending_bytes.store(0, Ordering::Release);
            self.flush_pending.store(false, Ordering::Release);
            self.wake_players();
            self.direct.snapshot(&mut round);
            for index in 0..round.len() {
                if let Some(ahead) = round.get(index + PREFETCH_AHEAD) {
                    ahead.prefetch();
                }
                round[index].write_round();
                if index % ROUND_SLICE == ROUND_SLICE - 1 {
                    tokio::task::yield_now().await;
                }
            }
            round.clear();
        }
    }

    fn clock_start(&self) -> tokio::time::Instant {
        *self.clock_start.get_or_init(tokio::time::Instant::now)
    }

    fn wake_players(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.players.notify_waiters();
    }

    /// New data of `len` payload bytes: wake players now, or when the
    /// budget runs out or enough is pending.
    pub fn data(&self, coalescing: bool, len: usize) {
        self.immediate.notify_waiters();
        if !coalescing {
            self.wake_players();
            return;
        }
        if !self.flush_pending.swap(true, Ordering::AcqRel) {
            let since_start = self.clock_start().elapsed().as_nanos() as u64;
            self.first_push_ns.store(since_start, Ordering::Release);
            self.flush_requested.notify_one();
        }
        let before = self.pending_bytes.fetch_add(len, Ordering::AcqRel);
        if before < FLUSH_BYTES && before + len >= FLUSH_BYTES {
            self.flush_now.notify_one();
        }
    }

    /// Something players must see at once.
    pub fn now(&self) {
        self.wake_players();
        self.direct.hand_back_all();
        self.immediate.notify_waiters();
    }

    /// The source is gone: stop the flusher.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush_requested.notify_one();
        self.direct.hand_back_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn a_flush_waits_for_the_budget_but_never_lets_writes_drift_apart() {
        let budget = Duration::from_millis(80);
        let ms = Duration::from_millis;
        // The first flush: the oldest frame's budget.
        assert_eq!(flush_deadline(ms(5), None, budget), ms(85));
        // A frame right after a flush waits its whole budget.
        assert_eq!(flush_deadline(ms(102), Some(ms(100)), budget), ms(182));
        // One that came an audio frame later does not push the next
        // write past budget + slack from the last one.
        assert_eq!(
            flush_deadline(ms(123), Some(ms(100)), budget),
            ms(180) + WRITE_GAP_SLACK
        );
        // After a quiet spell the new frame is due at once (the deadline
        // has passed).
        assert!(flush_deadline(ms(500), Some(ms(100)), budget) < ms(500));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_come_at_most_budget_plus_slack_apart_while_frames_flow() {
        let budget = Duration::from_millis(80);
        let (wakeup, coalescing) = Wakeup::new(budget);
        assert!(coalescing);
        let epoch = || wakeup.epoch.load(Ordering::Acquire);
        // Frames every 37 ms (video alone, a little under 30 fps), the
        // first just after the start: without the slack rule a flush
        // would often come 80 ms after a frame that came 30 ms after the
        // last flush.
        let start = Instant::now();
        let mut flushes = Vec::new();
        let mut seen = epoch();
        for n in 0..40u64 {
            tokio::time::sleep_until(start + Duration::from_millis(1 + 37 * n)).await;
            wakeup.data(true, 100);
            // Sample the epoch each millisecond until the next frame.
            for _ in 0..37 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if epoch() != seen {
                    seen = epoch();
                    flushes.push(start.elapsed());
                }
            }
        }
        assert!(flushes.len() > 5, "{flushes:?}");
        for pair in flushes.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap <= budget + WRITE_GAP_SLACK + Duration::from_millis(1),
                "writes {gap:?} apart: {flushes:?}"
            );
        }
        wakeup.close();
    }

    #[tokio::test(start_paused = true)]
    async fn players_wake_at_the_budget_or_once_a_full_write_is_pending() {
        let budget = Duration::from_millis(80);
        let (wakeup, coalescing) = Wakeup::new(budget);
        assert!(coalescing);

        // A small frame waits for the budget, counted from the first push.
        let woken = wakeup.players.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let start = Instant::now();
        wakeup.data(true, 1000);
        tokio::time::sleep(Duration::from_millis(30)).await;
        wakeup.data(true, 1000);
        woken.await;
        assert_eq!(start.elapsed(), budget);

        // A full write's worth does not wait.
        let woken = wakeup.players.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let start = Instant::now();
        wakeup.data(true, FLUSH_BYTES / 2);
        wakeup.data(true, FLUSH_BYTES / 2);
        woken.await;
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Without coalescing every push wakes at once.
        let woken = wakeup.players.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        wakeup.data(false, 10);
        woken.await;
        wakeup.close();
    }
}
