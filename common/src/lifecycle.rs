//! How a Baton process stops: the fast exit, the graceful drain, and the
//! signals that ask for them. Shared by the origin and the edge.
//!
//! Every listener and connection holds a [`Shutdown`] handle and watches
//! its tokens; the process's main loop turns signals into calls of
//! [`Shutdown::fast_exit`] or [`Shutdown::drain`]. The model is SRS's
//! (SIGTERM fast, SIGQUIT graceful with `grace_start_wait` and
//! `grace_final_wait`, `force_grace_quit`) with what SRS lacks: the process
//! closes its clients itself on a fast exit, reacts to signals at once
//! rather than on a one-second poll, and a drain can have a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::clients::ClientRegistry;

/// The tokens connections watch. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Client listeners stop accepting (graceful drain step 2, or hand-over).
    pub stop_accepting: CancellationToken,
    /// The API listener stops accepting: at a fast exit, or once a
    /// successor took the listeners. Through a plain drain `/healthz`,
    /// `/readyz` (503) and `/metrics` keep answering until the exit.
    pub stop_api: CancellationToken,
    /// Players end at their next keyframe boundary (drain deadline).
    pub close_players: CancellationToken,
    /// Every connection closes now (fast exit, or after players at the
    /// drain deadline).
    pub close_all: CancellationToken,
    /// A drain began: clients that can reconnect (Enhanced RTMP's
    /// reconnect request) are asked to, so they leave before the deadline
    /// rather than at it.
    pub reconnect: CancellationToken,
    /// Whether they may reconnect to the same address (an upgrade's new
    /// generation serves it) or should go elsewhere (a plain drain).
    reconnect_here: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

/// One graceful drain, fully described.
#[derive(Debug, Clone)]
pub struct DrainPlan {
    /// Keep accepting this long after readiness turns off.
    pub accept_for: Duration,
    /// After the last client left, wait this long before exiting.
    pub final_wait: Duration,
    /// Disconnect whoever is left at this point (none: wait forever).
    pub deadline: Option<Duration>,
    /// For the log: "SIGQUIT", "upgrade hand-over", ...
    pub reason: &'static str,
    /// A successor serves the same listeners (an upgrade): clients asked
    /// to reconnect may come back to the same address, and the API
    /// listener stops accepting too (the successor answers there).
    pub successor_serves: bool,
}

/// How long players get to reach a keyframe boundary at the drain deadline
/// before publishers are closed too.
const PLAYER_CLOSE_GRACE: Duration = Duration::from_millis(2500);

impl Shutdown {
    pub fn new() -> Self {
        let shutdown = Shutdown::default();
        shutdown.ready.store(true, Ordering::SeqCst);
        shutdown
    }

    /// False once a drain or exit began (`/readyz` answers 503).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// See [`Shutdown::reconnect`]: whether the same address still serves.
    pub fn reconnect_here(&self) -> bool {
        self.reconnect_here.load(Ordering::SeqCst)
    }

    /// Close everything now: stop accepting, tell every connection to end,
    /// and wait (at most `budget`) for them to be gone.
    pub async fn fast_exit(&self, clients: &ClientRegistry, budget: Duration) {
        let started = Instant::now();
        self.ready.store(false, Ordering::SeqCst);
        self.draining.store(true, Ordering::SeqCst);
        let count = clients.count();
        tracing::info!(
            clients = count,
            "fast exit: closing listeners and every client"
        );
        self.stop_accepting.cancel();
        self.stop_api.cancel();
        self.close_players.cancel();
        self.close_all.cancel();
        let gone = tokio::time::timeout(budget, clients.wait_empty())
            .await
            .is_ok();
        tracing::info!(
            closed = count,
            left = clients.count(),
            all_gone = gone,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fast exit: clients closed"
        );
    }

    /// The graceful drain: readiness off, keep accepting for
    /// `plan.accept_for`, stop accepting, serve the remaining clients until
    /// they leave (or the deadline), then wait `plan.final_wait`.
    pub async fn drain(&self, plan: &DrainPlan, clients: &ClientRegistry) {
        let started = Instant::now();
        self.ready.store(false, Ordering::SeqCst);
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!("baton_draining").set(1.0);
        tracing::info!(
            reason = plan.reason,
            clients = clients.count(),
            accept_for_ms = plan.accept_for.as_millis() as u64,
            deadline = ?plan.deadline,
            "graceful drain: not ready; still accepting"
        );
        tokio::time::sleep(plan.accept_for).await;
        self.stop_accepting.cancel();
        if plan.successor_serves {
            self.stop_api.cancel();
        }
        // Only now: a client that reconnects at once must not land on
        // this process's listeners again.
        self.reconnect_here
            .store(plan.successor_serves, Ordering::SeqCst);
        self.reconnect.cancel();
        let counts = clients.role_counts();
        tracing::info!(
            publishers = counts.publishers,
            players = counts.players,
            pending = counts.pending,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "graceful drain: listeners closed; serving existing clients"
        );

        let deadline = plan.deadline.map(|d| started + d);
        self.wait_for_clients(clients, started, deadline).await;
        if clients.count() > 0 {
            self.close_at_deadline(clients, started).await;
        }

        tracing::info!(
            final_wait_ms = plan.final_wait.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "graceful drain: no clients left; final wait"
        );
        tokio::time::sleep(plan.final_wait).await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "graceful drain: done"
        );
    }

    /// Wait for the registry to empty, logging what is left at a falling
    /// rate (1 s, 2 s, 4 s ... at most once a minute).
    async fn wait_for_clients(
        &self,
        clients: &ClientRegistry,
        started: Instant,
        deadline: Option<Instant>,
    ) {
        let mut log_every = Duration::from_secs(1);
        let mut next_log = Instant::now() + log_every;
        loop {
            if clients.count() == 0 {
                return;
            }
            let mut wake = next_log;
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline {
                    return;
                }
                wake = wake.min(deadline);
            }
            let _ = tokio::time::timeout_at(wake, clients.wait_empty()).await;
            if Instant::now() >= next_log && clients.count() > 0 {
                let counts = clients.role_counts();
                tracing::info!(
                    publishers = counts.publishers,
                    players = counts.players,
                    pending = counts.pending,
                    elapsed_s = started.elapsed().as_secs(),
                    "graceful drain: waiting for clients to leave"
                );
                log_every = (log_every * 2).min(Duration::from_secs(60));
                next_log = Instant::now() + log_every;
            }
        }
    }

    /// The drain deadline: players first (each at a keyframe boundary where
    /// it can), publishers last.
    async fn close_at_deadline(&self, clients: &ClientRegistry, started: Instant) {
        let counts = clients.role_counts();
        tracing::warn!(
            publishers = counts.publishers,
            players = counts.players,
            elapsed_s = started.elapsed().as_secs(),
            "drain deadline reached: disconnecting players, then publishers"
        );
        self.close_players.cancel();
        let players_gone = async {
            let mut rx = clients.watch_count();
            loop {
                if clients.role_counts().players == 0 {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(PLAYER_CLOSE_GRACE, players_gone).await;
        self.close_all.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), clients.wait_empty()).await;
        tracing::info!(
            left = clients.count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drain deadline: clients disconnected"
        );
    }
}

/// The signals a Baton process acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessSignal {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
    /// SIGQUIT: graceful exit.
    Quit,
    /// SIGUSR2: start a new generation (smooth upgrade).
    Upgrade,
}

/// Receives the process signals as they arrive (no polling interval).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    pub async fn recv(&mut self) -> ProcessSignal {
        tokio::select! {
            _ = self.term.recv() => ProcessSignal::Terminate,
            _ = self.int.recv() => ProcessSignal::Interrupt,
            _ = self.quit.recv() => ProcessSignal::Quit,
            _ = self.usr2.recv() => ProcessSignal::Upgrade,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::{ClientRole, Transport};
    use std::net::SocketAddr;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_clients_then_final_wait() {
        let shutdown = Shutdown::new();
        let clients = ClientRegistry::new();
        let guard = clients.register(peer(), Transport::Rtmp);
        let plan = DrainPlan {
            accept_for: Duration::from_millis(2300),
            final_wait: Duration::from_millis(3200),
            deadline: None,
            reason: "test",
            successor_serves: false,
        };
        let started = tokio::time::Instant::now();
        let drain = {
            let (s, c, p) = (shutdown.clone(), clients.clone(), plan.clone());
            tokio::spawn(async move { s.drain(&p, &c).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!shutdown.is_ready());
        assert!(!shutdown.stop_accepting.is_cancelled());
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert!(shutdown.stop_accepting.is_cancelled());
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!drain.is_finished(), "a client is still connected");
        drop(guard);
        drain.await.unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(2400 + 100_000 + 3200));
        assert!(elapsed < Duration::from_millis(2400 + 100_000 + 3300));
        assert!(!shutdown.close_all.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_deadline_closes_players_then_publishers() {
        let shutdown = Shutdown::new();
        let clients = ClientRegistry::new();
        let publisher = clients.register(peer(), Transport::Rtmp);
        publisher.set_role(ClientRole::Publisher, None);
        let player = clients.register(peer(), Transport::HttpFlv);
        player.set_role(ClientRole::Player, None);
        // Connections as the origin runs them: a player leaves on
        // close_players, a publisher only on close_all.
        let s = shutdown.clone();
        let player_task = tokio::spawn(async move {
            s.close_players.cancelled().await;
            drop(player);
        });
        let s = shutdown.clone();
        let publisher_task = tokio::spawn(async move {
            s.close_all.cancelled().await;
            drop(publisher);
        });
        let plan = DrainPlan {
            accept_for: Duration::ZERO,
            final_wait: Duration::ZERO,
            deadline: Some(Duration::from_secs(10)),
            reason: "test",
            successor_serves: false,
        };
        let started = tokio::time::Instant::now();
        shutdown.drain(&plan, &clients).await;
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(11));
        assert_eq!(clients.count(), 0);
        player_task.await.unwrap();
        publisher_task.await.unwrap();
    }
}
